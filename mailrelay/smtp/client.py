"""
smtpclient: the outbound ESMTP client of the delivery service.

JOB
    Opens a connection to one mail server (:func:`connect`), greets it, reads
    its extensions, negotiates TLS and authentication according to a policy,
    and then carries any number of messages over it
    (:meth:`ClientSession.send`), returning one outcome per recipient: the RCPT
    rejection, the MAIL rejection, or the final reply to the message data
    (a recipient is never reported accepted unless the server accepted the
    message data). With PIPELINING, MAIL, every RCPT and DATA go in one
    write (RFC 2920); a transaction that ends early is followed by RSET, and
    a 421 reply ends the session (RFC 5321 3.8). Written on
    ``twisted.internet.protocol.Protocol`` rather than ``twisted.mail.smtp``'s
    client, which dot-stuffs per chunk (a smuggling hole), turns CRLF into
    CR CR LF, has no PIPELINING and sends one message per connection.

SECURITY
    Talks to untrusted servers. The message is dot-stuffed in one stateful
    pass over the whole stream, so a "." at the start of any line, including
    the first and one that straddles a write boundary, is doubled; bare CR and
    bare LF are turned into CRLF first, so the server cannot see an end of
    data we did not mean. Envelope addresses and the HELO name may not carry
    CR, LF, NUL, spaces or angle brackets (no command injection). A reply to
    STARTTLS followed by more plaintext is a protocol error (no response
    injection). TLS policies: "none", "opportunistic" (STARTTLS when offered,
    certificate not checked), "required" (STARTTLS must work, certificate not
    checked), "verify" (STARTTLS must work and the certificate must be valid
    for ``tls_hostname``), "implicit" (TLS from the first byte). Credentials are
    only sent over TLS unless the policy is "none". Reply lines are limited to
    4,096 octets and replies to 200 lines; anything that is not an SMTP reply
    aborts the connection. Every wait for the server is bounded by
    ``command_timeout``, which also bounds each stall while the message is
    being written (the message goes out through a push producer, so a peer
    that stops reading is noticed).

STANDARDS
    RFC 5321 (SMTP), RFC 1870 (SIZE), RFC 2920 (PIPELINING), RFC 3207
    (STARTTLS), RFC 8314 (implicit TLS), RFC 4954 (AUTH), RFC 4616 (PLAIN),
    RFC 2034 and RFC 3463 (enhanced status codes), RFC 6152 (8BITMIME),
    RFC 6531 (SMTPUTF8), RFC 6125 via service-identity (certificate names).

DIAGNOSTICS
    Failures of the session as a whole are exceptions, all
    :class:`SMTPClientError`: :class:`ConnectFailure` (:class:`RefusedDestination`
    when the ``destinations`` policy refuses the address), :class:`TLSFailure`,
    :class:`SMTPReplyError` (greeting, EHLO, STARTTLS or AUTH refused; carries
    ``.reply``), :class:`ConnectionLostError` (carries ``.stage``),
    :class:`CommandTimeout` and :class:`ProtocolError`; ``str()`` of each is one
    sentence naming the server. Failures of one message are not exceptions but
    :class:`ReplyInfo` values in the :class:`MessageOutcome`, including the
    synthetic ones made without asking the server (SIZE exceeded, no 8BITMIME,
    no SMTPUTF8, unusable address). Sessions are logged through
    ``twisted.logger`` at debug level.

CONFIGURATION
    Arguments of :func:`connect`: the TLS policy, ``tls_hostname`` (the name
    the certificate must match and SNI; default ``host``), ``trust_root`` (an
    ``IOpenSSLTrustRoot`` or a PEM CA file; default the platform's) for
    "verify" and for "implicit" with ``verify=True``, ``bind_address``,
    ``connect_timeout``, ``command_timeout``, ``auth`` (PLAIN, else LOGIN) and
    ``destinations`` (a :class:`mailrelay.smtp.destinations.DestinationPolicy`: an
    address is checked before connecting to it; a name's addresses as it is
    resolved, the endpoint connecting only to those that pass).

USAGE
    ::

        session = await connect("192.0.2.25", 25, helo_name="relay.example",
                                tls="opportunistic", tls_hostname="mx.example.net")
        try:
            outcome = await session.send(OutboundMessage(sender, [rcpt], content))
        finally:
            await session.quit()
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IPushProducer,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailrelay import netio
from mailrelay.smtp.destinations import DestinationPolicy, DestinationRefused
from mailrelay.smtp.address import AddressError, validate_mailbox

log = Logger()

#: The TLS policies :func:`connect` understands.
TLS_POLICIES = ("none", "opportunistic", "required", "verify", "implicit")
#: The message is written in pieces of this many octets (before dot-stuffing).
CHUNK_SIZE = 64 * 1024
#: Longest reply line accepted, without its CRLF (RFC 5321 says 512; servers vary).
MAX_REPLY_LINE = 4096
#: Most lines in one reply (an EHLO reply has a dozen or two).
MAX_REPLY_LINES = 200
#: Replies the server may send before we ask (e.g. a 421 before closing).
MAX_UNSOLICITED = 5
#: Seconds to wait for an orderly close (TLS close_notify) before aborting.
CLOSE_GRACE = 5.0

_REPLY_LINE = re.compile(rb"^([2-5][0-9][0-9])(?:([ -])(.*))?$", re.DOTALL)
_ENHANCED = re.compile(r"^([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:[ \t]+|$)")
_HELO_NAME = re.compile(r"^[A-Za-z0-9.\-_:\[\]]+$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_NEWLINES = re.compile(rb"\r\n|\r|\n")


# -- values ------------------------------------------------------------------------------


@dataclass
class OutboundMessage:
    """One message to send: envelope and the RFC 5322 message (CRLF line ends)."""

    sender: str
    recipients: list[str]
    content: bytes
    smtputf8: bool = False

    @property
    def is_8bit(self) -> bool:
        """True when any octet of the content is 0x80 or above."""
        return not self.content.isascii()


@dataclass(frozen=True)
class ReplyInfo:
    """A server reply (or a synthetic one): code, enhanced status code or "", text.

    ``text`` is every line of the reply joined with "\\n", without the reply
    code and without the enhanced status code where a line repeats it.
    """

    code: int
    enhanced: str
    text: str

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    def __str__(self) -> str:
        status = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{status} {' '.join(self.text.splitlines())}".rstrip()


@dataclass
class RecipientOutcome:
    """What became of one recipient."""

    recipient: str
    reply: ReplyInfo

    @property
    def accepted(self) -> bool:
        return 200 <= self.reply.code < 300


@dataclass
class MessageOutcome:
    """What became of one message: a reply per recipient, in the order given."""

    recipients: list[RecipientOutcome]
    remote_queue_id: str | None = None

    @property
    def accepted(self) -> list[str]:
        return [r.recipient for r in self.recipients if r.accepted]


# -- errors -------------------------------------------------------------------------------


class SMTPClientError(Exception):
    """A failure of the session as a whole; ``str()`` is a sentence."""


class ConnectFailure(SMTPClientError):
    """No TCP connection: refused, unreachable, no such name, or connect timeout."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot connect to {host} port {port}: {reason}")
        self.host, self.port, self.reason = host, port, reason


class RefusedDestination(ConnectFailure):
    """The ``destinations`` policy does not allow the address (loopback, private...): not connected."""


class TLSFailure(SMTPClientError):
    """TLS was required but not offered, refused, or its handshake or certificate failed."""

    def __init__(self, message: str, reply: ReplyInfo | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class SMTPReplyError(SMTPClientError):
    """The server refused the greeting, EHLO/HELO, STARTTLS, AUTH or RSET stage."""

    def __init__(self, server: str, stage: str, reply: ReplyInfo) -> None:
        if stage == "greeting":
            super().__init__(f"{server} greeted us with {reply} instead of 220")
        else:
            super().__init__(f"{server} answered {stage} with {reply}")
        self.server, self.stage, self.reply = server, stage, reply


class ConnectionLostError(SMTPClientError):
    """The connection closed in the middle of the conversation; ``stage`` says where."""

    def __init__(self, server: str, stage: str, reason: str, reply: ReplyInfo | None = None) -> None:
        said = f" after saying {reply}" if reply is not None else ""
        super().__init__(f"connection to {server} lost{said} during {stage}: {reason}")
        self.server, self.stage, self.reason, self.reply = server, stage, reason, reply


class CommandTimeout(SMTPClientError):
    """No reply (or no progress writing the message) within the command timeout."""

    def __init__(self, server: str, stage: str, timeout: float) -> None:
        super().__init__(f"{server} did not answer within {timeout:g} seconds during {stage}; connection aborted")
        self.server, self.stage, self.timeout = server, stage, timeout


class ProtocolError(SMTPClientError):
    """The server sent something that is not an SMTP reply; the connection is aborted."""


# -- helpers ------------------------------------------------------------------------------


def normalize_line_endings(content: bytes) -> bytes:
    """Turn every bare CR and bare LF into CRLF."""
    crlf = content.count(b"\r\n")
    if content.count(b"\r") == crlf and content.count(b"\n") == crlf:
        return content
    return _NEWLINES.sub(b"\r\n", content)


class DotStuffer:
    """RFC 5321 4.5.2 transparency over a stream fed in pieces of any size.

    The stream is taken to start at the beginning of a line, so a "." as the
    very first octet is doubled too.
    """

    def __init__(self) -> None:
        self._tail = b"\r\n"  # the last two octets seen

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        data = self._tail + chunk
        self._tail = data[-2:]
        # A match needs the "." from ``chunk``, so the doubled dot is always
        # after the two-octet prefix and stripping the prefix is exact.
        return data.replace(b"\r\n.", b"\r\n..")[2:]


def dot_stuff(content: bytes) -> bytes:
    """The whole of ``content`` dot-stuffed (the same as one :class:`DotStuffer` pass)."""
    return DotStuffer().feed(content)


_QUEUE_ID_PATTERNS = [
    re.compile(r"\bqueued as ([A-Za-z0-9][A-Za-z0-9._\-]*)", re.I),                   # Postfix
    re.compile(r"<([^<>\s]+)>(?:\s+\[[^\]]*\])*\s+Queued mail for delivery", re.I),  # Exchange
    re.compile(r"^([A-Za-z0-9]+) Message accepted for delivery", re.I | re.M),      # Sendmail
    re.compile(r"\bOK\s+\d+\s+(\S+)\s+-\s+gsmtp", re.I),                            # Gmail
    re.compile(r"\bid=<?([^\s,;<>]+)>?", re.I),                                      # Exim, others
    re.compile(r"^ok (\d+ qp \d+)$", re.I | re.M),                                   # qmail
]
#: Looser patterns; what they find must look like an id (contain a digit).
_GENERIC_QUEUE_ID_PATTERNS = [
    re.compile(r"^ok:?\s+<?([^\s<>]+)>?", re.I | re.M),                              # "ok <id>"
    re.compile(r"\bqueued\s+<?([A-Za-z0-9][^\s<>]*?)>?(?:\s|$)", re.I),              # "queued <id>"
]


def parse_queue_id(reply: ReplyInfo) -> str | None:
    """The server's queue id from a 2xx reply to the end of data; best effort."""
    if not 200 <= reply.code < 300:
        return None
    for pattern in _QUEUE_ID_PATTERNS:
        match = pattern.search(reply.text)
        if match and match.group(1).rstrip(".,;:"):
            return match.group(1).rstrip(".,;:")
    for pattern in _GENERIC_QUEUE_ID_PATTERNS:
        match = pattern.search(reply.text)
        if match and any(c.isdigit() for c in match.group(1)):
            return match.group(1).rstrip(".,;:")
    return None


#: Recent answers of :func:`_address_problem` (a pure function of the address): a sender
#: or recipient that comes back is not parsed again. Emptied when it reaches the limit.
_ADDRESS_PROBLEMS: dict[str, str | None] = {}
_ADDRESS_PROBLEMS_LIMIT = 4096


def _address_problem(address: str) -> str | None:
    """Why ``address`` cannot go into MAIL/RCPT as it is, or None (remembered)."""
    try:
        return _ADDRESS_PROBLEMS[address]
    except KeyError:
        pass
    problem = _check_address(address)
    if len(_ADDRESS_PROBLEMS) >= _ADDRESS_PROBLEMS_LIMIT:
        _ADDRESS_PROBLEMS.clear()
    _ADDRESS_PROBLEMS[address] = problem
    return problem


def _check_address(address: str) -> str | None:
    """Why ``address`` cannot go into MAIL/RCPT as it is, or None.

    The same rules as the server side (RFC 5321 mailbox syntax: a quoted local part may
    hold spaces and angle brackets), plus no control characters at all.
    """
    if _CONTROL_CHARS.search(address):
        return "it contains a control character"
    if len(address.encode("utf-8", "surrogatepass")) > 254:
        return "it is longer than 254 octets"
    try:
        validate_mailbox(address)
    except AddressError as e:
        return str(e)
    return None


def _is_ip(host: str) -> int:
    """4 or 6 for an IP address literal, 0 for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return 0


def _describe(reason: Failure | BaseException | None) -> str:
    value = reason.value if isinstance(reason, Failure) else reason
    if value is None:
        return "connection closed"
    if isinstance(value, error.ConnectionDone):
        return "connection closed by the server"
    if isinstance(value, error.ConnectionAborted):
        return "connection aborted"
    if isinstance(value, error.ConnectionLost):
        return "connection closed uncleanly (reset)"
    return (str(value).strip() or type(value).__name__).rstrip(".")


def _tls_error_text(value: BaseException) -> str:
    from OpenSSL import SSL
    from service_identity import VerificationError

    if isinstance(value, VerificationError):
        names = []
        for mismatch in value.errors:
            ident = getattr(mismatch, "mismatched_id", None)
            name = getattr(ident, "hostname", None) or getattr(ident, "ip", None) or ident
            names.append(name.decode("ascii", "replace") if isinstance(name, bytes) else str(name))
        return f"the certificate is not valid for {', '.join(names)}"

    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [str(item[-1]) for item in value.args[0] if item]
        if parts:
            return ", ".join(parts)
    return _describe(value)


# -- TLS options --------------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """TLS that accepts any certificate but still sends SNI (opportunistic/required)."""

    _shared_options: Any = None

    def __init__(self, server_name: str | None) -> None:
        from twisted.internet.ssl import CertificateOptions

        if _UnverifiedClientTLS._shared_options is None:  # one SSL context for all of them
            _UnverifiedClientTLS._shared_options = CertificateOptions()
        self._options = _UnverifiedClientTLS._shared_options
        self._sni: bytes | None = None
        if server_name and not _is_ip(server_name):
            try:
                self._sni = server_name.rstrip(".").encode("idna")
            except UnicodeError:
                self._sni = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


def _trust_root(trust_root: Any) -> Any:
    """``trust_root`` as an IOpenSSLTrustRoot: as given, from a PEM file, or platform trust."""
    from twisted.internet import ssl

    if trust_root is None:
        return ssl.platformTrust()
    if isinstance(trust_root, (str, Path)):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        data = Path(trust_root).read_bytes()
        certs = [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
                 for c in x509.load_pem_x509_certificates(data)]
        return ssl.trustRootFromCertificates(certs)
    return trust_root


def client_tls_options(hostname: str, *, verify: bool, trust_root: Any = None) -> Any:
    """A client connection creator for ``hostname``: verifying or not."""
    if verify:
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(hostname.strip("[]"), trustRoot=_trust_root(trust_root))
    return _UnverifiedClientTLS(hostname)


# -- the protocol ---------------------------------------------------------------------------


class _Pending(NamedTuple):
    """A command whose reply is awaited."""

    deferred: defer.Deferred
    stage: str
    tls_options: Any  # set for STARTTLS: TLS starts when its 220 arrives


@implementer(IHandshakeListener)
class SMTPClientProtocol(protocol.Protocol):
    """Reads replies and matches them, in order, with the commands that asked for them.

    Used through :class:`ClientSession`; it knows nothing about transactions.
    """

    def __init__(self, clock: Any, command_timeout: float, server: str, *, implicit_tls: bool = False) -> None:
        self.clock = clock
        self.command_timeout = command_timeout
        self.server = server
        self.stage = "greeting"
        self.closed = False
        self.tls_started = implicit_tls
        self.tls_done = False
        self._buffer = b""
        self._lines: list[tuple[bytes, bytes]] = []
        self._waiters: deque[_Pending] = deque()
        self._unsolicited: deque[ReplyInfo] = deque()
        self._last_unsolicited: ReplyInfo | None = None
        self._timer: Any = None
        self._error: SMTPClientError | None = None
        self._lost_waiters: list[defer.Deferred] = []
        self._handshake_waiters: list[defer.Deferred] = []
        self._close_timer: Any = None
        self._body: _BodyProducer | None = None
        self._lost_exception: SMTPClientError | None = None

    # -- connection ----------------------------------------------------------------

    def handshakeCompleted(self) -> None:
        self.tls_done = True
        waiting, self._handshake_waiters = self._handshake_waiters, []
        self._touch()
        for d in waiting:
            d.callback(None)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.closed = True
        for timer in (self._timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._close_timer = None
        if self._error is not None:
            exc: SMTPClientError = self._error
        elif self.tls_started and not self.tls_done:
            exc = TLSFailure(f"TLS handshake with {self.server} failed: {_tls_error_text(reason.value)}")
            self.stage = "TLS handshake"
        else:
            exc = ConnectionLostError(self.server, self.stage, _describe(reason), self._last_unsolicited)
        self._lost_exception = exc
        waiters = [p.deferred for p in self._waiters] + self._handshake_waiters
        self._waiters.clear()
        self._handshake_waiters = []
        if self._body is not None:
            body, self._body = self._body, None
            waiters.append(body.done)
        for d in waiters:
            if not d.called:
                d.errback(exc)
        lost, self._lost_waiters = self._lost_waiters, []
        for d in lost:
            d.callback(None)

    def when_closed(self) -> defer.Deferred:
        """A Deferred that fires (with None) once the connection is gone."""
        if self.closed:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._lost_waiters.append(d)
        return d

    def close(self) -> defer.Deferred:
        """Orderly close; abort if it takes longer than :data:`CLOSE_GRACE`."""
        if self.closed:
            return defer.succeed(None)
        d = self.when_closed()
        if self._close_timer is None:
            grace = min(CLOSE_GRACE, self.command_timeout)
            self._close_timer = self.clock.callLater(grace, self._abort_transport)
            self.transport.loseConnection()
        return d

    def abort(self, exc: SMTPClientError | None = None) -> defer.Deferred:
        """Drop the connection now; pending commands fail with ``exc`` (if given)."""
        if self.closed:
            return defer.succeed(None)
        if exc is not None and self._error is None:
            self._error = exc
        d = self.when_closed()
        self._abort_transport()
        return d

    def _abort_transport(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abortConnection()

    def _fail(self, exc: SMTPClientError) -> None:
        log.debug("{server}: {error}", server=self.server, error=str(exc))
        self.abort(exc)

    @property
    def failed(self) -> bool:
        return self.closed or self._error is not None

    def lost_exception(self) -> SMTPClientError:
        """What a command on this dead (or dying) connection fails with."""
        return (self._lost_exception or self._error
                or ConnectionLostError(self.server, self.stage, "connection closed"))

    # -- timer ----------------------------------------------------------------------

    def _busy(self) -> bool:
        return bool(self._waiters or self._handshake_waiters) or self._body is not None

    def _touch(self) -> None:
        """Progress was made: restart the timer if something is still awaited, else stop it."""
        if self._busy() and not self.failed:
            if self._timer is not None and self._timer.active():
                self._timer.reset(self.command_timeout)
            else:
                self._timer = self.clock.callLater(self.command_timeout, self._timed_out)
        elif self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.tls_started and not self.tls_done:
            self._fail(TLSFailure(f"TLS handshake with {self.server} did not finish within "
                                  f"{self.command_timeout:g} seconds; connection aborted"))
        else:
            self._fail(CommandTimeout(self.server, self.stage, self.command_timeout))

    # -- commands --------------------------------------------------------------------

    def _waiter(self, stage: str, tls_options: Any = None) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred(canceller=lambda _: self._fail(
            SMTPClientError(f"conversation with {self.server} cancelled during {self.stage}")))
        if self.failed:
            d.errback(self.lost_exception())
            return d
        if not self._waiters:
            self.stage = stage
        if self._unsolicited and not self._waiters:
            reply = self._unsolicited.popleft()
            self._after_reply(reply, tls_options)
            if self.failed:
                self._park(d, stage)
            else:
                d.callback(reply)
            return d
        self._waiters.append(_Pending(d, stage, tls_options))
        self._touch()
        return d

    def _park(self, d: defer.Deferred, stage: str) -> None:
        """Fail ``d`` with the connection's error, now or when the connection is gone."""
        if self.closed:
            d.errback(self.lost_exception())
        else:
            self._waiters.appendleft(_Pending(d, stage, None))

    def expect(self, stage: str) -> defer.Deferred:
        """Wait for the next reply (the greeting)."""
        return self._waiter(stage)

    def command(self, line: bytes, stage: str) -> defer.Deferred:
        """Send one command line; a Deferred of its :class:`ReplyInfo`."""
        return self.pipeline([line], [stage])[0]

    def pipeline(self, lines: list[bytes], stages: list[str]) -> list[defer.Deferred]:
        """Send several command lines in one write (RFC 2920); a Deferred per reply."""
        if not self.failed:
            self.transport.write(b"\r\n".join(lines) + b"\r\n")
            netio.flush(self.transport)  # now, not on the reactor's next turn: we wait for replies
        return [self._waiter(stage) for stage in stages]

    def starttls(self, tls_options: Any) -> defer.Deferred:
        """Send STARTTLS; on 220 the TLS layer starts before the reply is returned."""
        if self.failed:
            return self._waiter("STARTTLS")
        if self._unsolicited or self._waiters:
            self._fail(ProtocolError(f"{self.server} sent replies nobody asked for before STARTTLS"))
            return self._waiter("STARTTLS")
        self.transport.write(b"STARTTLS\r\n")
        netio.flush(self.transport)
        return self._waiter("STARTTLS", tls_options)

    def tls_handshake(self) -> defer.Deferred:
        """Fires when the TLS handshake is complete; fails with TLSFailure."""
        if self.tls_done:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        if self.failed:
            d.errback(self.lost_exception())
        else:
            self.stage = "TLS handshake"
            self._handshake_waiters.append(d)
            self._touch()
        return d

    def send_body(self, content: bytes, stage: str) -> defer.Deferred:
        """Write ``content`` dot-stuffed, with flow control; fires when all is written."""
        self.stage = stage
        producer = _BodyProducer(self, content)
        if self.failed:
            producer.done.errback(self.lost_exception())
            return producer.done
        self._body = producer
        self.transport.registerProducer(producer, True)
        self._touch()
        producer.resumeProducing()
        return producer.done

    def send_data(self, content: bytes) -> defer.Deferred:
        """The message data dot-stuffed and the end of data: a Deferred of the final reply.

        A message of at most CHUNK_SIZE octets goes out with its ending dot in one write;
        a larger one through :meth:`send_body` (flow control), then the dot.
        """
        if len(content) > CHUNK_SIZE or self.failed:
            d = self.send_body(content, "message data")
            d.addCallback(lambda _: self.command(b".", "end of data"))
            return d
        self.stage = "message data"
        self.transport.write(dot_stuff(content) + b".\r\n")
        netio.flush(self.transport)
        return self._waiter("end of data")

    def send_data_then(self, content: bytes, lines: list[bytes], stages: list[str]
                       ) -> tuple[defer.Deferred, list[defer.Deferred]]:
        """A small message's data and dot, then the command lines, in one write (RFC 2920 3.1).

        Returns the Deferred of the end-of-data reply and one per command.
        """
        if self.failed:
            return self._waiter("end of data"), [self._waiter(stage) for stage in stages]
        self.stage = "message data"
        self.transport.write(dot_stuff(content) + b".\r\n" + b"\r\n".join(lines) + b"\r\n")
        netio.flush(self.transport)
        return self._waiter("end of data"), [self._waiter(stage) for stage in stages]

    def _body_progress(self) -> None:
        self._touch()

    def _body_finished(self, producer: "_BodyProducer") -> None:
        if self._body is producer:
            self._body = None
            self.transport.unregisterProducer()
            self._touch()
            producer.done.callback(None)

    # -- replies ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.failed:
            return
        self._buffer += data
        while not self.failed:
            end = self._buffer.find(b"\n")
            if end == -1:
                if len(self._buffer) > MAX_REPLY_LINE + 1:
                    self._fail(ProtocolError(f"{self.server} sent a reply line longer than "
                                             f"{MAX_REPLY_LINE} octets during {self.stage}"))
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_REPLY_LINE:
                self._fail(ProtocolError(f"{self.server} sent a reply line longer than "
                                         f"{MAX_REPLY_LINE} octets during {self.stage}"))
                return
            self._line(line)

    def _line(self, line: bytes) -> None:
        if not self._lines:  # a one-line reply seen before ("250 2.1.0 Ok", "354 ..."): reused
            reply = _ONE_LINE_REPLIES.get(line)
            if reply is not None:
                self._deliver(reply)
                return
        match = _REPLY_LINE.match(line)
        if match is None:
            shown = line[:60].decode("ascii", "backslashreplace")
            self._fail(ProtocolError(f"{self.server} sent something that is not an SMTP reply "
                                     f"during {self.stage}: {shown!r}"))
            return
        code, sep, text = match.group(1), match.group(2) or b" ", match.group(3) or b""
        if self._lines and self._lines[0][0] != code:
            self._fail(ProtocolError(f"{self.server} changed the reply code in the middle of a "
                                     f"multi-line reply during {self.stage}"))
            return
        self._lines.append((code, text))
        if sep == b"-":
            if len(self._lines) >= MAX_REPLY_LINES:
                self._fail(ProtocolError(f"{self.server} sent a reply of more than "
                                         f"{MAX_REPLY_LINES} lines during {self.stage}"))
            return
        lines, self._lines = self._lines, []
        reply = _make_reply(int(code), [t.decode("utf-8", "replace") for _, t in lines])
        if len(lines) == 1 and len(line) <= 100:
            if len(_ONE_LINE_REPLIES) >= _ONE_LINE_REPLIES_LIMIT:
                _ONE_LINE_REPLIES.clear()
            _ONE_LINE_REPLIES[line] = reply
        self._deliver(reply)

    def _deliver(self, reply: ReplyInfo) -> None:
        if not self._waiters:
            if len(self._unsolicited) >= MAX_UNSOLICITED:
                self._fail(ProtocolError(f"{self.server} sent replies nobody asked for"))
                return
            log.debug("{server}: unsolicited reply {reply}", server=self.server, reply=str(reply))
            self._unsolicited.append(reply)
            self._last_unsolicited = reply
            return
        d, stage, tls_options = self._waiters.popleft()
        self._after_reply(reply, tls_options)
        if self.failed:
            self._park(d, stage)
            return
        if self._waiters:
            self.stage = self._waiters[0].stage
        self._touch()
        d.callback(reply)

    def _after_reply(self, reply: ReplyInfo, tls_options: Any) -> None:
        if tls_options is None or reply.code != 220:
            return
        if self._buffer or self._lines or self._unsolicited or self._waiters:
            # RFC 3207 5: nothing may follow the reply to STARTTLS in plaintext.
            self._fail(ProtocolError(f"{self.server} sent plaintext after its reply to STARTTLS "
                                     f"(response injection); connection aborted"))
            return
        self.tls_started = True
        self.transport.startTLS(tls_options)


#: One-line replies already parsed (ReplyInfo is immutable): most replies of a session repeat.
_ONE_LINE_REPLIES: dict[bytes, ReplyInfo] = {}
_ONE_LINE_REPLIES_LIMIT = 1024


def _make_reply(code: int, texts: list[str]) -> ReplyInfo:
    """Build a ReplyInfo, taking the enhanced status code from the first line."""
    enhanced = ""
    match = _ENHANCED.match(texts[0]) if texts else None
    if match and match.group(1) == str(code)[0]:
        enhanced = ".".join(match.group(1, 2, 3))
        prefix = enhanced
        stripped = []
        for text in texts:
            m = _ENHANCED.match(text)
            if m and ".".join(m.group(1, 2, 3)) == prefix:
                text = text[m.end():]
            stripped.append(text)
        texts = stripped
    return ReplyInfo(code, enhanced, "\n".join(texts))


@implementer(IPushProducer)
class _BodyProducer:
    """Writes the message in CHUNK_SIZE pieces while the transport wants more."""

    def __init__(self, proto: SMTPClientProtocol, content: bytes) -> None:
        self.proto = proto
        self.content = content
        self.offset = 0
        self.stuffer = DotStuffer()
        self.paused = False
        self.producing = False
        self.stopped = False
        self.done: defer.Deferred = defer.Deferred()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.producing or self.stopped:
            return
        self.producing = True
        try:
            while not self.paused and not self.stopped and self.offset < len(self.content):
                chunk = self.content[self.offset:self.offset + CHUNK_SIZE]
                self.offset += len(chunk)
                self.proto.transport.write(self.stuffer.feed(chunk))
                self.proto._body_progress()
        finally:
            self.producing = False
        if not self.stopped:
            netio.flush(self.proto.transport)
        if self.offset >= len(self.content) and not self.stopped:
            self.stopped = True
            self.proto._body_finished(self)

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.stopped = True


# -- sessions ---------------------------------------------------------------------------------


class _Prepared(NamedTuple):
    """A transaction's content and commands (see ClientSession._prepare)."""

    content: bytes
    mail: bytes
    rcpts: list[bytes]
    send_to: list[int]
    replies: dict[int, ReplyInfo]


class _Started:
    """A transaction whose MAIL, RCPT and DATA went out with the previous message's data.

    Keeps the replies (or the failure) until :meth:`ClientSession.send` asks for them; a
    failure nobody asks for (the session was dropped) is not reported as unhandled.
    """

    def __init__(self, message: OutboundMessage, prepared: _Prepared, gathered: defer.Deferred) -> None:
        self.message = message
        self.prepared = prepared
        self._result: Any = None
        self._done = False
        self._waiting: defer.Deferred | None = None
        gathered.addBoth(self._fired)

    def _fired(self, result: Any) -> None:
        self._result, self._done = result, True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(result)

    def replies(self) -> defer.Deferred:
        if not self._done:
            self._waiting = defer.Deferred()
            return self._waiting
        if isinstance(self._result, Failure):
            return defer.fail(self._result)
        return defer.succeed(self._result)



class ClientSession:
    """An open, greeted (and, per policy, TLS-protected and authenticated) SMTP session."""

    def __init__(self, proto: SMTPClientProtocol, host: str, port: int, helo_name: str,
                 tls_policy: str) -> None:
        self._proto = proto
        self.remote_host = host
        peer = proto.transport.getPeer()
        self.remote_ip: str | None = getattr(peer, "host", None)
        self.remote_port: int = getattr(peer, "port", port)
        self.helo_name = helo_name
        self.tls_policy = tls_policy
        self.greeting: ReplyInfo | None = None
        self.ehlo_reply: ReplyInfo | None = None
        self.esmtp = False
        self.extensions: dict[str, str] = {}
        self.tls_active = tls_policy == "implicit"
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.authenticated_as: str | None = None
        self.messages_sent = 0
        self._in_transaction = False
        self._started: _Started | None = None   # the next message's commands, already sent

    def __repr__(self) -> str:
        return (f"<ClientSession {self.remote_host} [{self.remote_ip}]:{self.remote_port} "
                f"tls={self.tls_active} sent={self.messages_sent}{' closed' if self.closed else ''}>")

    @property
    def closed(self) -> bool:
        return self._proto.closed or self._proto.failed

    @property
    def server(self) -> str:
        return self._proto.server

    # -- opening ----------------------------------------------------------------------

    async def _open(self, tls_options: Any, auth: tuple[str, str] | None) -> None:
        proto = self._proto
        if self.tls_active:
            await proto.tls_handshake()
            self._note_tls()
        greeting = await proto.expect("greeting")
        self.greeting = greeting
        if greeting.code != 220:
            raise SMTPReplyError(self.server, "greeting", greeting)
        await self._ehlo()
        if self.tls_policy in ("opportunistic", "required", "verify") and not self.tls_active:
            if "STARTTLS" in self.extensions:
                reply = await proto.starttls(tls_options)
                if reply.code != 220:
                    raise TLSFailure(f"{self.server} refused STARTTLS: {reply}", reply)
                await proto.tls_handshake()
                self.tls_active = True
                self._note_tls()
                await self._ehlo()
            elif self.tls_policy != "opportunistic":
                raise TLSFailure(f"TLS is required (policy {self.tls_policy!r}) but {self.server} "
                                 f"does not offer STARTTLS")
        if auth is not None:
            await self._authenticate(*auth)
        log.debug("{server}: session open, tls={tls}, extensions={ext}", server=self.server,
                  tls=self.tls_active, ext=sorted(self.extensions))

    def _note_tls(self) -> None:
        try:
            handle = self._proto.transport.getHandle()
            self.tls_version = handle.get_protocol_version_name()
            self.tls_cipher = handle.get_cipher_name()
        except Exception:  # not an SSL.Connection (never expected), keep going
            pass

    async def _ehlo(self) -> None:
        proto = self._proto
        name = self.helo_name.encode("ascii")
        reply = await proto.command(b"EHLO " + name, "EHLO")
        if reply.code == 250:
            self.esmtp = True
            self.ehlo_reply = reply
            self.extensions = _parse_extensions(reply.text)
            return
        if not reply.is_permanent:
            raise SMTPReplyError(self.server, "EHLO", reply)
        helo = await proto.command(b"HELO " + name, "HELO")
        if helo.code != 250:
            raise SMTPReplyError(self.server, "HELO", helo)
        self.esmtp = False
        self.ehlo_reply = helo
        self.extensions = {}

    async def _authenticate(self, username: str, password: str) -> None:
        if not self.tls_active and self.tls_policy != "none":
            raise SMTPClientError(f"refusing to send credentials to {self.server} without TLS "
                                  f"(policy {self.tls_policy!r}; STARTTLS was not offered)")
        offered = self.extensions.get("AUTH")
        if offered is None:
            raise SMTPClientError(f"{self.server} does not offer AUTH, but credentials are configured")
        mechanisms = offered.upper().split()
        proto = self._proto
        user, secret = username.encode("utf-8"), password.encode("utf-8")
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user + b"\0" + secret)
            reply = await proto.command(b"AUTH PLAIN " + token, "AUTH PLAIN")
        elif "LOGIN" in mechanisms:
            reply = await proto.command(b"AUTH LOGIN", "AUTH LOGIN")
            if reply.code == 334:
                reply = await proto.command(base64.b64encode(user), "AUTH LOGIN (username)")
                if reply.code == 334:
                    reply = await proto.command(base64.b64encode(secret), "AUTH LOGIN (password)")
        else:
            raise SMTPClientError(f"{self.server} offers no AUTH mechanism we support "
                                  f"(PLAIN, LOGIN); it offers: {offered or 'none'}")
        if reply.code == 334:  # a challenge we do not expect: cancel the exchange
            reply = await proto.command(b"*", "AUTH (cancel)")
        if reply.code != 235:
            raise SMTPReplyError(self.server, "AUTH", reply)
        self.authenticated_as = username

    # -- transactions ---------------------------------------------------------------------

    async def send(self, message: OutboundMessage, following: OutboundMessage | None = None) -> MessageOutcome:
        """Send one message; every recipient gets a reply (real or synthetic).

        ``following``: the message the caller will send next on this session (the same
        object). With PIPELINING, its MAIL, RCPT and DATA commands then go in the same write
        as this message's data and end-of-data dot (RFC 2920 3.1: message content may be the
        first "command" of a group), which saves a round trip per message. The caller must
        then call ``send(following)`` next, or :meth:`quit` (which drops the connection: a
        transaction that reached DATA cannot be abandoned otherwise).

        Raises only for a failure of the session (connection lost, timeout,
        protocol error); the session is then closed.
        """
        if self._in_transaction:
            raise SMTPClientError("a transaction is already in progress on this session")
        started = self._started
        if started is not None and started.message is not message:
            self._started = None
            await self.abort()
            raise SMTPClientError(f"a transaction started for another message was abandoned on the "
                                  f"session with {self.server}; connection dropped")
        if self.closed:
            raise self._proto.lost_exception()
        if not message.recipients:
            raise ValueError("OutboundMessage has no recipients")
        self._in_transaction = True
        try:
            return await self._send(message, following)
        finally:
            self._in_transaction = False

    def _refuse_all(self, message: OutboundMessage, reply: ReplyInfo) -> MessageOutcome:
        return MessageOutcome([RecipientOutcome(r, reply) for r in message.recipients])

    def _prepare(self, message: OutboundMessage) -> "MessageOutcome | _Prepared":
        """The commands of a transaction, or the outcome when it is decided without asking."""
        ext = self.extensions
        content = normalize_line_endings(message.content)
        if content and not content.endswith(b"\r\n"):
            content += b"\r\n"
        size = len(content)
        envelope = [message.sender, *message.recipients]
        needs_utf8 = message.smtputf8 or not all(a.isascii() for a in envelope)
        is_8bit = not content.isascii()

        # Decided here, without asking the server.
        problem = _address_problem(message.sender) if message.sender else None
        if problem:
            return self._refuse_all(message, ReplyInfo(
                501, "5.1.7", f"sender address {message.sender!r} cannot be used in SMTP: {problem}"))
        limit = _size_limit(ext)
        if limit and size > limit:
            return self._refuse_all(message, ReplyInfo(
                552, "5.3.4", f"message size {size} exceeds remote limit {limit} (SIZE)"))
        if is_8bit and "8BITMIME" not in ext:
            return self._refuse_all(message, ReplyInfo(
                554, "5.6.3", f"message has 8-bit content but {self.server} does not support "
                              f"8BITMIME; not sent (it would have to be converted)"))
        if needs_utf8 and "SMTPUTF8" not in ext:
            return self._refuse_all(message, ReplyInfo(
                553, "5.6.7", f"message needs SMTPUTF8 (internationalized address or headers) "
                              f"but {self.server} does not support it; not sent"))
        replies: dict[int, ReplyInfo] = {}
        send_to: list[int] = []
        for i, rcpt in enumerate(message.recipients):
            problem = _address_problem(rcpt) or (None if rcpt else "it is empty")
            if problem:
                replies[i] = ReplyInfo(501, "5.1.3", f"recipient address {rcpt!r} cannot be used "
                                                     f"in SMTP: {problem}")
            else:
                send_to.append(i)
        if not send_to:
            return MessageOutcome([RecipientOutcome(r, replies[i])
                                   for i, r in enumerate(message.recipients)])

        params = []
        if "SIZE" in ext:
            params.append(f"SIZE={size}")
        if is_8bit:
            params.append("BODY=8BITMIME")
        if needs_utf8:
            params.append("SMTPUTF8")
        mail = " ".join([f"MAIL FROM:<{message.sender}>", *params]).encode("utf-8")
        rcpts = [f"RCPT TO:<{message.recipients[i]}>".encode("utf-8") for i in send_to]
        return _Prepared(content, mail, rcpts, send_to, replies)

    async def _send(self, message: OutboundMessage, following: OutboundMessage | None = None) -> MessageOutcome:
        proto = self._proto
        ext = self.extensions
        started, self._started = self._started, None
        if started is not None:  # its commands went out with the previous message's data
            prepared = started.prepared
        else:
            prepared = self._prepare(message)
            if isinstance(prepared, MessageOutcome):
                return prepared
        content, mail, rcpts, send_to, replies = prepared

        if started is not None:
            got = await started.replies()
            mail_reply, rcpt_replies, data_reply = got[0], got[1:-1], got[-1]
            if mail_reply.code // 100 != 2:
                if data_reply.code == 354 and not proto.failed:
                    await proto.command(b".", "end of data")  # a broken server: end it at once
                return await self._finish(message, replies, send_to, [mail_reply] * len(send_to))
        elif "PIPELINING" in ext:
            stages = ["MAIL FROM"] + ["RCPT TO"] * len(rcpts) + ["DATA"]
            got = await _gather(proto.pipeline([mail, *rcpts, b"DATA"], stages))
            mail_reply, rcpt_replies, data_reply = got[0], got[1:-1], got[-1]
            if mail_reply.code // 100 != 2:
                if data_reply.code == 354 and not proto.failed:
                    await proto.command(b".", "end of data")  # a broken server: end it at once
                return await self._finish(message, replies, send_to, [mail_reply] * len(send_to))
        else:
            mail_reply = await proto.command(mail, "MAIL FROM")
            if mail_reply.code // 100 != 2:
                return await self._finish(message, replies, send_to, [mail_reply] * len(send_to))
            rcpt_replies = []
            for line in rcpts:
                reply = await proto.command(line, "RCPT TO")
                rcpt_replies.append(reply)
                if reply.code == 421:  # the server is closing: nobody gets the message
                    return await self._finish(message, replies, send_to, [reply] * len(rcpts))
            data_reply = None
            if any(r.code // 100 == 2 for r in rcpt_replies):
                data_reply = await proto.command(b"DATA", "DATA")

        accepted = [j for j, r in enumerate(rcpt_replies) if r.code // 100 == 2]
        if data_reply is not None and data_reply.code == 354 and not accepted:
            # RFC 2920 3.1: DATA was accepted with no valid recipient; send an empty message.
            await proto.command(b".", "end of data")
            return await self._finish(message, replies, send_to, rcpt_replies, reset=True)
        if data_reply is None or data_reply.code != 354:
            final = list(rcpt_replies)
            if data_reply is not None:
                for j in accepted:
                    final[j] = data_reply
            # MAIL was accepted: RSET ends the transaction
            return await self._finish(message, replies, send_to, final, reset=True)

        follow = None
        if (following is not None and "PIPELINING" in ext and len(content) <= CHUNK_SIZE
                and following.recipients):
            follow = self._prepare(following)
        if isinstance(follow, _Prepared):
            lines = [follow.mail, *follow.rcpts, b"DATA"]
            stages = ["MAIL FROM"] + ["RCPT TO"] * len(follow.rcpts) + ["DATA"]
            end_reply, next_replies = proto.send_data_then(content, lines, stages)
            self._started = _Started(following, follow, _gather(next_replies))
        else:
            end_reply = proto.send_data(content)
        end = await end_reply
        final = list(rcpt_replies)
        for j in accepted:
            final[j] = end
        queue_id = None
        if end.code // 100 == 2:
            self.messages_sent += 1
            queue_id = parse_queue_id(end)
        # (no log line here: the caller logs every recipient's outcome)
        return await self._finish(message, replies, send_to, final, queue_id=queue_id)

    async def _finish(self, message: OutboundMessage, replies: dict[int, ReplyInfo], send_to: list[int],
                      sent_replies: list[ReplyInfo], *, reset: bool = False,
                      queue_id: str | None = None) -> MessageOutcome:
        """The outcome; RSET if asked, or close if the server said 421 (RFC 5321 3.8)."""
        if any(r.code == 421 for r in sent_replies):
            await self._proto.close()
        elif reset:
            await self._reset_quietly()
        return self._outcome(message, replies, send_to, sent_replies, queue_id)

    @staticmethod
    def _outcome(message: OutboundMessage, replies: dict[int, ReplyInfo], send_to: list[int],
                 sent_replies: Iterable[ReplyInfo], queue_id: str | None = None) -> MessageOutcome:
        replies = dict(replies)
        for i, reply in zip(send_to, sent_replies):
            replies[i] = reply
        return MessageOutcome([RecipientOutcome(r, replies[i]) for i, r in enumerate(message.recipients)],
                              remote_queue_id=queue_id)

    async def _reset_quietly(self) -> None:
        """RSET after a transaction that ended early; a session that refuses is closed."""
        try:
            await self.reset()
        except SMTPReplyError:
            await self.abort()
        except SMTPClientError:
            pass  # the connection is gone; the outcome is already known

    async def reset(self) -> None:
        """RSET: abandon any transaction. Raises SMTPReplyError unless the reply is 250."""
        if self.closed:
            raise self._proto.lost_exception()
        reply = await self._proto.command(b"RSET", "RSET")
        if reply.code // 100 != 2:
            raise SMTPReplyError(self.server, "RSET", reply)

    async def noop(self) -> ReplyInfo:
        """NOOP: check that the session is still alive."""
        if self.closed:
            raise self._proto.lost_exception()
        return await self._proto.command(b"NOOP", "NOOP")

    # -- closing ------------------------------------------------------------------------

    async def quit(self) -> None:
        """QUIT, then close; never raises. Returns once the connection is gone.

        With a transaction started for a message that was not sent after all (see
        :meth:`send`), the connection is dropped instead: the server discards it.
        """
        proto = self._proto
        if self._started is not None:
            self._started = None
            await self.abort()
            return
        if not proto.failed:
            d = proto.command(b"QUIT", "QUIT")
            d.addTimeout(min(CLOSE_GRACE, proto.command_timeout), proto.clock)
            try:
                await d
            except Exception:
                pass
        await proto.close()

    def abort(self) -> defer.Deferred:
        """Drop the connection at once; the Deferred fires when it is gone."""
        return self._proto.abort(SMTPClientError(f"session with {self.server} aborted"))


def _parse_extensions(text: str) -> dict[str, str]:
    """The EHLO reply's lines after the first, as {KEYWORD: parameters}."""
    extensions: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        keyword = keyword.upper()
        if not keyword:
            continue
        if keyword.startswith("AUTH="):  # pre-RFC 4954 servers: "AUTH=LOGIN PLAIN"
            mechanisms = (keyword[5:] + " " + params).strip()
            if "AUTH" in extensions:
                continue
            keyword, params = "AUTH", mechanisms
        extensions[keyword] = params.strip()
    return extensions


def _size_limit(extensions: dict[str, str]) -> int | None:
    value = extensions.get("SIZE", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return None


def _gather(deferreds: list[defer.Deferred]) -> defer.Deferred:
    """Every reply of a pipelined group, in order (a Deferred of the list).

    When the connection fails part-way, the replies missing after a 421 (the
    server closing, RFC 5321 3.8) are that 421; otherwise the failure is raised.
    (A lighter DeferredList: one callback per reply, the failures consumed.)
    """
    outcomes: list[Any] = [None] * len(deferreds)
    left = [len(deferreds)]

    def cancel(_: defer.Deferred) -> None:  # cancelling the group cancels its commands
        for d in deferreds:
            if not d.called:
                d.cancel()

    done: defer.Deferred = defer.Deferred(canceller=cancel)

    def collect(value: Any, index: int) -> None:
        outcomes[index] = value
        left[0] -= 1
        if not left[0]:
            done.callback(outcomes)

    for index, d in enumerate(deferreds):
        d.addBoth(collect, index)
    return done.addCallback(_replies_of)


def _replies_of(outcomes: list[Any]) -> list[ReplyInfo]:
    replies: list[ReplyInfo] = []
    closing: ReplyInfo | None = None
    for value in outcomes:
        if not isinstance(value, Failure):
            replies.append(value)
            if value.code == 421:
                closing = value
        elif closing is not None:
            replies.append(closing)
        else:
            value.raiseException()
    return replies


# -- connecting ---------------------------------------------------------------------------------


def _endpoint(reactor: Any, host: str, port: int, timeout: float, bind_address: str | None,
              destinations: DestinationPolicy | None = None) -> Any:
    bind = (bind_address, 0) if bind_address else None
    version = _is_ip(host)
    if destinations is not None:
        if version:
            destinations.check(host.strip("[]"))
        else:  # a name: its addresses are checked as they are resolved
            reactor = destinations.reactor(reactor)
    if version == 4:
        return TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
    if version == 6:
        return TCP6ClientEndpoint(reactor, host.strip("[]"), port, timeout=timeout, bindAddress=bind)
    return HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)


async def connect(host: str, port: int, *, helo_name: str, tls: str = "opportunistic",
                  tls_hostname: str | None = None, bind_address: str | None = None,
                  connect_timeout: float = 30, command_timeout: float = 300,
                  auth: tuple[str, str] | None = None, reactor: Any = None,
                  trust_root: Any = None, verify: bool = False,
                  destinations: DestinationPolicy | None = None) -> ClientSession:
    """Connect, greet, negotiate TLS and AUTH; return a session ready for :meth:`send`.

    ``host`` is a name or an IP address (delivery passes the MX's address and
    ``tls_hostname`` = the MX name). ``tls`` is one of :data:`TLS_POLICIES`;
    ``trust_root`` (an ``IOpenSSLTrustRoot`` or a PEM CA file; default the
    platform's) is used by "verify" and by "implicit" with ``verify=True``.
    With ``destinations``, an address that policy refuses is not connected to
    (:class:`RefusedDestination`).
    Raises :class:`SMTPClientError` subclasses; nothing is left open then.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if tls not in TLS_POLICIES:
        raise ValueError(f"tls must be one of {', '.join(TLS_POLICIES)}, not {tls!r}")
    if not _HELO_NAME.match(helo_name or ""):
        raise ValueError(f"helo_name {helo_name!r} is not a host name or address literal")
    name = tls_hostname or host
    server = host if not tls_hostname or tls_hostname == host else f"{tls_hostname} [{host}]"
    if port != 25:
        server = f"{server}:{port}"
    try:
        endpoint = _endpoint(reactor, host, port, connect_timeout, bind_address, destinations)
    except DestinationRefused as e:
        raise RefusedDestination(host, port, e.reason) from None
    tls_options = None
    if tls == "implicit":
        endpoint = wrapClientTLS(client_tls_options(name, verify=verify, trust_root=trust_root), endpoint)
    elif tls != "none":
        tls_options = client_tls_options(name, verify=tls == "verify", trust_root=trust_root)
    proto = SMTPClientProtocol(reactor, command_timeout, server, implicit_tls=tls == "implicit")
    try:
        await connectProtocol(endpoint, proto)
    except (error.ConnectError, error.BindError, error.DNSLookupError, OSError) as e:
        raise ConnectFailure(host, port, _connect_error_text(e)) from None
    session = ClientSession(proto, host, port, helo_name, tls)
    try:
        await session._open(tls_options, auth)
    except BaseException as e:
        if isinstance(e, (SMTPReplyError, TLSFailure)) and not proto.failed and not proto.tls_started:
            proto.transport.write(b"QUIT\r\n")  # polite, but do not wait for the answer
            await proto.close()
        else:
            await proto.abort()
        raise
    return session


def _connect_error_text(e: BaseException) -> str:
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, error.TimeoutError):
        return "connect timeout"
    if isinstance(e, error.DNSLookupError):
        return f"host name lookup failed ({e})"
    text = str(e).strip()
    if text.startswith("An error occurred while connecting: "):
        text = text[len("An error occurred while connecting: "):]
    return text or type(e).__name__
