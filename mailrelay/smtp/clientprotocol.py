"""
clientprotocol: the wire side of the outbound SMTP client: replies in, commands and message data out.

JOB
    :class:`SMTPClientProtocol` reads the server's replies (multi-line,
    enhanced status codes: :class:`ReplyInfo`), hands each to the command
    that waits for it, pipelines commands, switches to TLS (STARTTLS or
    implicit) and writes the message data through a push producer, dot-stuffed
    on the way (:class:`DotStuffer`). It knows nothing of envelopes or
    policies: :mod:`mailrelay.smtp.client` drives it. The errors of a session
    (:class:`SMTPClientError` and its kinds) are defined here.

SECURITY
    Talks to untrusted servers. The message is dot-stuffed in one stateful
    pass over the whole stream, so a "." at the start of any line, including
    the first and one that straddles a write boundary, is doubled; bare CR and
    bare LF are turned into CRLF first (:func:`normalize_line_endings`), so
    the server cannot see an end of data we did not mean. A reply to STARTTLS
    followed by more plaintext is a protocol error (no response injection).
    Reply lines are limited to 4,096 octets and replies to 200 lines;
    anything that is not an SMTP reply aborts the connection, and so do more
    than :data:`MAX_UNSOLICITED` replies nobody asked for. Every wait for the
    server is bounded by the command timeout, which also bounds each stall
    while the message is being written (a peer that stops reading is
    noticed). A close waits :data:`CLOSE_GRACE` seconds for TLS close_notify,
    then aborts.

STANDARDS
    RFC 5321 (replies 4.2, transparency 4.5.2), RFC 2920 (PIPELINING), RFC
    3207 (STARTTLS), RFC 8314 (implicit TLS), RFC 2034 and RFC 3463
    (enhanced status codes).

DIAGNOSTICS
    :class:`ProtocolError`, :class:`CommandTimeout`,
    :class:`ConnectionLostError` (with the stage and the last reply) and
    :class:`TLSFailure` (with the handshake's or the certificate's error in
    words); ``str()`` of each is one sentence naming the server. Unsolicited
    replies are logged through ``twisted.logger``.

CONFIGURATION
    None: the command timeout and the TLS options come from
    :func:`mailrelay.smtp.client.connect`.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any, NamedTuple

from twisted.internet import defer, error, protocol
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mailrelay import netio

log = Logger()

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
_NEWLINES = re.compile(rb"\r\n|\r|\n")


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
