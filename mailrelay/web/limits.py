"""
httplimits: what the web listener decides from a request's head, before it reads the body.

JOB
    twisted.web's HTTPChannel reads and stores a request's whole body (in memory below
    100 kB, in a temporary file above) before any resource runs, so a resource that
    answers 401 or 413 has already paid for the upload. :class:`GuardedSite` builds
    :class:`GuardedChannel` connections that ask the site's ``admit`` policy as soon as
    the request line and the headers are in, before any byte of the body is read:

    - the policy answers with the endpoint's body limit, or raises :class:`Refusal`
      (e.g. 401 for a missing token, 429 for a throttled client);
    - a ``Content-Length`` above the limit is refused with 413 at once;
    - a body without one (``Transfer-Encoding: chunked``) is counted as it arrives and
      refused with 413 the moment it passes the limit;
    - a refused request gets no ``100 Continue``; its response (written by the site's
      ``refuse``, with ``Connection: close``) goes out at once, the rest of the body is
      read and dropped for at most LINGER_SECONDS (so that closing does not reset the
      connection under the response), then the connection is closed;
    - a request whose head cannot be parsed gets a whole response the same way: 414 for a
      request line over 16 KiB, 431 for a header line over it, 400 for a malformed head or
      headers over 16 KiB in all (HTTPChannel would drop the connection without an answer,
      or write a bare status line and reset the connection under it).

    Bodies within their limit are kept in memory (``getContentFile``), never in a
    temporary file: the limits bound them.

    Time and connections: a request's head and body must arrive within the site's
    ``timeout`` of the connection or of the previous response; input that completes no
    request does not restart the timer (HTTPChannel restarts it on every byte, so one byte
    a minute held a connection for ever). :class:`GuardedSite` counts its connections:
    beyond ``max_connections`` a new one gets 503 (``Retry-After: 1``) and is closed at
    once.

    :class:`FailureThrottle` counts failed authentications per client over a sliding
    window; the web service refuses a client that reached the limit (429 with
    ``Retry-After``) until its oldest counted failure leaves the window.

SECURITY
    Nothing of a refused request's body is stored. A client is an IPv4 address, or
    the /64 of an IPv6 one (one host usually owns a whole /64); addresses are taken from
    the TCP connection, never from headers such as X-Forwarded-For (behind a proxy every
    client is the proxy). The throttle's memory is bounded: MAX_TRACKED_CLIENTS clients
    (the least recently failing is forgotten first), each with at most ``limit`` times.

STANDARDS
    RFC 9110 (413 Content Too Large, 414 URI Too Long, 429 and 431 of RFC 6585, Retry-After, Expect:
    100-continue), RFC 9112 (chunked transfer coding, Connection: close, closing after
    an unread body: section 9.6).

DIAGNOSTICS
    ``web: <client> throttled after <n> failed authentications in <window>s`` when a
    client reaches the limit (once per throttled spell); ``web: <n> connections open, the
    most allowed (max_connections): new ones get 503`` once per episode.

CONFIGURATION
    None of its own: the limits come from the caller (see :mod:`mailrelay.web.api`).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Callable

from twisted.logger import Logger
from twisted.protocols import basic
from twisted.web import http, server
from twisted.web.http_headers import Headers

from mailrelay.clientkey import client_key

log = Logger()

#: Seconds a refused request's connection is kept open (reading and dropping what the
#: client still sends) after the response, before it is closed.
LINGER_SECONDS = 5.0
#: Clients the failure throttle keeps track of at most.
MAX_TRACKED_CLIENTS = 100_000


class Refusal(Exception):
    """A request refused from its head: the status, a message, extra response headers."""

    def __init__(self, code: int, message: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class RequestHead:
    """What is known of a request before its body: the request line and the headers."""

    method: bytes
    path: bytes  # without the query
    headers: Headers
    client: str  # the client's address (see client_key)
    length: int | None  # Content-Length; None for a chunked body


class FailureThrottle:
    """
    Failed authentications per client in a sliding window of ``window`` seconds: once a
    client has ``limit`` of them, :meth:`retry_after` says how long it must wait (until the
    oldest leaves the window). ``limit`` 0 turns the throttle off.
    """

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_TRACKED_CLIENTS) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        times = self._failures.get(client)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[client]
            return None
        return times

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it is not throttled."""
        if self.limit <= 0:
            return None
        now = self._clock()
        times = self._recent(client, now)
        if times is None or len(times) < self.limit:
            return None
        return max(0.0, times[0] + self.window - now)

    def failed(self, client: str) -> None:
        """Count one failed authentication of ``client``."""
        if self.limit <= 0:
            return
        now = self._clock()
        times = self._recent(client, now)
        if times is None:
            times = self._failures[client] = deque(maxlen=self.limit)
            while len(self._failures) > self._max_clients:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(client)
        times.append(now)
        if len(times) == self.limit:
            log.warn("web: {client} throttled after {count} failed authentications in {window:g}s",
                     client=client, count=self.limit, window=self.window)


    def refund(self, client: str) -> None:
        """Take back the latest failure of ``client``: an attempt counted when it started (before
        its outcome was known, so that concurrent attempts cannot pass the limit) succeeded."""
        times = self._failures.get(client)
        if times:
            times.pop()
            if not times:
                del self._failures[client]


#: The policy: the body limit of the request's endpoint (bytes), or raises Refusal.
Admit = Callable[[RequestHead], int]
#: Writes a refusal's response on a request (status, headers, body) and finishes it.
Refuse = Callable[[Any, Refusal], None]


class GuardedRequest(server.Request):
    """A request that counts its body against the limit its head was admitted with."""

    body_limit = 0
    body_received = 0

    def handleContentChunk(self, data: bytes) -> None:
        if self.finished:  # refused: what still arrives is dropped
            return
        self.body_received += len(data)
        if self.body_received > self.body_limit:
            self.channel.refuse(self, too_large(self.body_limit))
            return
        super().handleContentChunk(data)


def too_large(limit: int) -> Refusal:
    return Refusal(413, f"the request body is larger than {limit} bytes, the limit of this endpoint")


class GuardedChannel(http.HTTPChannel):
    """An HTTP/1.1 connection that admits each request from its head (see the module docstring)."""

    site: "GuardedSite"
    _refusing = False
    _linger: Any = None
    _counted = False

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self.site.connection_opened():
            # over the site's cap: a whole answer and a plain close (no lingering: under a
            # flood, refused connections must not hold descriptors)
            self._refusing = True
            self.persistent = False
            self.setTimeout(None)
            body = b"too many connections, try again later\n"
            self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
                                 b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
                                 % (len(body), body))
            self.transport.loseConnection()
            return
        self._counted = True

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        path = self._path.split(b"?", 1)[0]
        head = RequestHead(method=self._command, path=path, headers=request.requestHeaders,
                           client=client_key(getattr(request.getClientAddress(), "host", None)),
                           length=self.length)
        try:
            limit = self.site.admit(head)
            if self.length is not None and self.length > limit:
                raise too_large(limit)
        except Refusal as refusal:
            self.refuse(request, refusal)
            return
        request.body_limit = limit
        super().allHeadersReceived()

    def refuse(self, request: GuardedRequest, refusal: Refusal) -> None:
        """Answer ``request`` with ``refusal`` now, whatever of its body is still to come."""
        self._refusing = True
        self.persistent = False
        request.method, request.uri, request.clientproto = self._command, self._path, self._version
        request.path = request.uri.split(b"?", 1)[0]
        request.args = {}
        request.setHeader(b"connection", b"close")
        self.site.refuse(request, refusal)  # finishing it calls loseConnection below

    # Once refusing, nothing more is parsed: the rest of the connection is dropped.
    def dataReceived(self, data: bytes) -> None:
        # Input alone does not restart the timeout (HTTPChannel's does, on every byte): a
        # request must be whole within the site's timeout of the connection or the previous
        # response, so a client cannot hold a connection by trickling its head or body.
        if not self._refusing:
            basic.LineReceiver.dataReceived(self, data)

    def lineReceived(self, line: bytes) -> None:
        if not self._refusing:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refusing:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self._refusing:
            super().allContentReceived()

    def loseConnection(self) -> None:
        if not self._refusing:
            super().loseConnection()
            return
        if self._linger is not None:
            return
        self._networkProducer.unregisterProducer()
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is not None:  # TCP: the response and a FIN now; reading goes on
            half_close()
            end = self.transport.abortConnection
        else:  # TLS has no half-close: close once the client had time to read the response
            end = self.transport.loseConnection
        self._linger = self.callLater(LINGER_SECONDS, end)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or header line over MAX_LENGTH: answered (LineReceiver would just
        drop the connection)."""
        if not self.requests:
            self._refuse_bare(414, b"URI Too Long", "the request line is too long")
        else:
            self._refuse_bare(431, b"Request Header Fields Too Large", "a header line is too long")

    def _respondToBadRequestAndDisconnect(self) -> None:
        """HTTPChannel's answer to a malformed request or headers over totalHeadersSize: a
        whole response (HTTPChannel writes a bare status line) and the lingering close."""
        self._refuse_bare(400, b"Bad Request", "malformed request, or headers too large")

    def _refuse_bare(self, code: int, reason: bytes, message: str) -> None:
        """An answer before any request object could take it (the head could not be parsed)."""
        if self._refusing:
            return
        self._refusing = True
        self.persistent = False
        body = message.encode() + b"\n"
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (code, reason, len(body), body))
        self.loseConnection()

    def connectionLost(self, reason: Any) -> None:
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        if self._counted:
            self._counted = False
            self.site.connection_closed()
        super().connectionLost(reason)


class GuardedSite(server.Site):
    """A Site whose connections admit each request from its head (see the module docstring)."""

    protocol = GuardedChannel
    requestFactory = GuardedRequest

    def __init__(self, resource: Any, *, admit: Admit, refuse: Refuse, max_connections: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.admit = admit
        self.refuse = refuse
        self.max_connections = max_connections  # 0: no cap
        self.open_connections = 0
        self._full_logged = False

    def connection_opened(self) -> bool:
        """Count a new connection, or return False when the cap is reached (it is then refused)."""
        if self.max_connections and self.open_connections >= self.max_connections:
            if not self._full_logged:  # once per episode: a flood must not flood the log
                self._full_logged = True
                log.warn("web: {n} connections open, the most allowed (max_connections): new ones get 503",
                         n=self.open_connections)
            return False
        self.open_connections += 1
        return True

    def connection_closed(self) -> None:
        """A counted connection ended."""
        self.open_connections -= 1
        if self.open_connections < self.max_connections * 0.9:
            self._full_logged = False

    def getContentFile(self, length: int | None) -> BytesIO:
        """Bodies are bounded by their endpoint's limit: kept in memory, never in a temporary file."""
        return BytesIO()

    def acceptableProtocols(self) -> list[bytes]:
        """HTTP/1.1 only (the guarded channel is an HTTP/1.1 channel; no HTTP/2 over ALPN)."""
        return [b"http/1.1"]
