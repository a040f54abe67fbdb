"""
smtpserver: the ESMTP server protocol shared by the submission and bounce listeners.

JOB
    Speaks RFC 5321 to clients and enforces its grammar, order and limits; what
    to accept is decided by an :class:`SMTPHandler` (submission or bounces).
    Written on ``twisted.internet.protocol.Protocol`` rather than
    ``twisted.mail.smtp.ESMTP``, whose PIPELINING, STARTTLS and DATA handling
    have the holes listed in the project's notes.

SECURITY
    Talks to untrusted clients. DATA ends only at ``<CRLF>.<CRLF>``; a bare CR
    or LF in DATA rejects the message (``500 5.5.2``), and so does a NUL
    (``554 5.6.0``: a next hop that drops NUL could see an end of data we did
    not), so nothing is ever re-read as commands (no SMTP smuggling). A NUL in
    a command line gets ``501 5.5.2``. Anything pipelined after STARTTLS
    is discarded and all session state is reset (RFC 3207). Command lines are
    limited (512 octets plus what the advertised extensions add; 12,288 for
    AUTH, RFC 4954); the DATA phase has a size limit, a header size limit, an
    overall deadline and a 1,000-octet line limit; commands run strictly one at
    a time, in order, while the input is buffered (PIPELINING, RFC 2920). Too
    many errors in a session close it.

    Slow clients: each command line must be complete within ``idle_timeout``
    of the previous reply (or of the previous line, for pipelined commands),
    and each line of DATA within ``idle_timeout`` of the one before; partial
    input does not restart the timer (as Postfix's ``smtpd_timeout`` bounds
    each command), so trickling a byte at a time does not hold a session.
    ``data_timeout`` bounds the DATA phase as a whole. Sessions are capped in
    all (``max_connections``, shared by the listeners of one service) and per
    client address; beyond either, ``421 4.7.0`` and the connection is closed
    (refused connections do not count).

    Clients that do not read: the session is its transport's streaming producer,
    so while the replies the client has not read fill the transport's buffer,
    no command is handled, and reading stops once MAX_PENDING_INPUT octets of
    input wait (pipelined commands cannot pile up replies in memory); the idle
    timer runs meanwhile.

STANDARDS
    RFC 5321 (SMTP), RFC 1870 (SIZE), RFC 2920 (PIPELINING), RFC 3207
    (STARTTLS), RFC 8314 (implicit TLS), RFC 4954 (AUTH), RFC 4616 (PLAIN),
    RFC 2034 and RFC 3463 (enhanced status codes), RFC 6152 (8BITMIME),
    RFC 6531 (SMTPUTF8).

DIAGNOSTICS
    Every reply except the greeting and the EHLO/HELO reply carries an
    enhanced status code. Sessions are logged through ``twisted.logger``.

CONFIGURATION
    :class:`ServerLimits`, filled by the service from its configuration section.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol as TypingProtocol

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailrelay import netio
from mailrelay.mail.message import split_header
from mailrelay.metrics import MESSAGES_REJECTED

log = Logger()


class Reply(NamedTuple):
    """One SMTP reply: code, enhanced status code (or ""), text."""

    code: int
    status: str
    text: str

    def encode(self) -> bytes:
        encoded = _ENCODED.get(self)
        if encoded is not None:
            return encoded
        lines = self.text.split("\n")
        prefix = f"{self.code} {self.status} " if self.status else f"{self.code} "
        if len(lines) == 1:
            return (prefix + lines[0] + "\r\n").encode("utf-8", "replace")
        out = []
        for i, line in enumerate(lines):
            sep = "-" if i < len(lines) - 1 else " "
            head = f"{self.code}{sep}{self.status + ' ' if self.status else ''}"
            out.append(head + line + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    def with_text(self, text: str) -> "Reply":
        return self._replace(text=text)


# The replies this server gives, in one place. Handlers reuse them.
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
BYE = Reply(221, "2.0.0", "Bye")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT STARTTLS AUTH")
VRFY_REPLY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
READY_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")

SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, try again later")
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections from your address, try again later")
TOO_MANY_CONNECTIONS_IN_ALL = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
AUTH_THROTTLED = Reply(421, "4.7.0", "Too many failed authentications from your address, try again later")
STORAGE_UNAVAILABLE = Reply(451, "4.3.0", "Temporary storage failure, try again later")
RATE_LIMITED = Reply(451, "4.7.0", "Sending rate limit exceeded, try again later")
STORAGE_FULL = Reply(452, "4.3.1", "Insufficient system storage, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure, try again later")

LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
UNKNOWN_COMMAND = Reply(500, "5.5.2", "Error: command not recognized")
BAD_ENCODING = Reply(500, "5.5.2", "Error: command is not valid UTF-8")
BARE_NEWLINE = Reply(500, "5.5.2", "Error: bare <CR> or <LF> in message data; lines must end with <CR><LF>")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NUL_IN_COMMAND = Reply(501, "5.5.2", "Error: NUL character in command")
BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")
AUTH_DECODE_ERROR = Reply(501, "5.5.2", "Cannot decode authentication response")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Error: bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
ALREADY_TLS = Reply(503, "5.5.1", "Error: TLS already active")
UNKNOWN_AUTH_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_NOT_AVAILABLE = Reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
ENCRYPTION_REQUIRED = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
HEADER_TOO_BIG = Reply(552, "5.3.4", "Message header size exceeds fixed maximum header size")
NUL_IN_DATA = Reply(554, "5.6.0", "Message rejected: NUL character in message data (RFC 5322, RFC 6152)")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
LINE_TOO_LONG_IN_DATA = Reply(554, "5.6.0", "Message rejected: a line is longer than 1000 octets (RFC 5321)")
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")

# The constant replies' bytes, encoded once (Reply.encode looks here first).
_ENCODED: dict[Reply, bytes] = {}
_ENCODED.update({reply: reply.encode() for reply in list(globals().values()) if isinstance(reply, Reply)})


# -- limits --------------------------------------------------------------------

#: RFC 5321 4.5.3.1.4: 512 octets for a command line; SIZE adds 26 (RFC 1870),
#: BODY=8BITMIME 17 (RFC 6152), SMTPUTF8 10 (RFC 6531), AUTH= 500 (RFC 4954).
MAX_COMMAND_LINE = 512 + 26 + 17 + 10 + 500
#: RFC 4954 4: AUTH lines, including initial responses, up to 12,288 octets.
MAX_AUTH_LINE = 12288
#: RFC 5321 4.5.3.1.6: a text line of DATA is at most 1000 octets with CRLF.
MAX_DATA_LINE = 1000
#: RFC 5321 4.5.3.1.1/2/3: local part, domain, path.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
#: Protocol errors before a session is closed (Postfix: smtpd_hard_error_limit).
MAX_ERRORS = 20
#: Seconds a closing session waits for the client's TLS close_notify.
CLOSE_GRACE = 2.0
#: Buffered, unprocessed input that makes us stop reading from a pipelining client.
MAX_PENDING_INPUT = 256 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Per-listener settings of the SMTP server."""

    hostname: str
    max_message_size: int = 10485760
    max_header_size: int = 102400
    max_recipients: int = 100
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    max_connections_per_ip: int = 20
    max_connections: int = 500
    service_name: str = "smtp"


# -- addresses -----------------------------------------------------------------

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_ATEXT_UTF8 = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LOCAL_RE = re.compile(rf"^(?:{_ATEXT_UTF8}+(?:\.{_ATEXT_UTF8}+)*|{_QUOTED})$")
_LABEL = r"(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_PARAM_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?$")


class AddressError(ValueError):
    """An address that RFC 5321 does not allow; the message says why."""


def _closing_bracket(text: str) -> int:
    """The index of the '>' that closes a path starting with '<', skipping quoted strings; -1."""
    i, quoted = 1, False
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    return -1


def parse_path(text: str, *, allow_null: bool) -> tuple[str, str]:
    """
    Split ``<path> params`` into (mailbox, params). Accepts ``<>`` (when
    ``allow_null``), strips an RFC 5321 source route, tolerates a missing
    pair of angle brackets. Raises :class:`AddressError`.
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        i = text.find(">") if '"' not in text else _closing_bracket(text)
        if i == -1:
            raise AddressError("missing '>'")
        path, rest = text[1:i], text[i + 1:]
        if rest and not rest.startswith(" "):
            raise AddressError("garbage after '>'")
    else:
        path, _, rest = text.partition(" ")
    if len(path) + 2 > MAX_PATH:
        raise AddressError("path longer than 256 octets")
    if path.startswith("@"):  # source route: <@a,@b:user@host> (RFC 5321 4.1.2)
        route, sep, path = path.partition(":")
        if not sep:
            raise AddressError("bad source route")
    if path == "":
        if allow_null:
            return "", rest.strip(" ")
        raise AddressError("empty address")
    validate_mailbox(path)
    return path, rest.strip(" ")


def validate_mailbox(mailbox: str) -> None:
    """Check ``local@domain`` against RFC 5321 / RFC 6531; raise AddressError."""
    local, at, domain = mailbox.rpartition("@")
    if not at or not local:
        raise AddressError("address must be local-part@domain")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    if len(domain.encode()) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    if not _LOCAL_RE.match(local):
        raise AddressError("invalid local part")
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal.lower().startswith("ipv6:"):
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            raise AddressError("invalid address literal") from None
    elif not _DOMAIN_RE.match(domain):
        raise AddressError("invalid domain")


def parse_params(text: str) -> dict[str, str | None]:
    """``SIZE=100 BODY=8BITMIME SMTPUTF8`` -> {"SIZE": "100", ...}; raises AddressError."""
    params: dict[str, str | None] = {}
    for item in text.split():
        match = _PARAM_RE.match(item)
        if not match:
            raise AddressError(f"bad parameter {item!r}")
        params[match.group(1).upper()] = match.group(2)
    return params


# -- sessions and handlers -------------------------------------------------------


@dataclass
class Transaction:
    """One mail transaction: MAIL, its RCPTs, then DATA."""

    sender: str
    smtputf8: bool = False
    body_8bit: bool = False
    declared_size: int | None = None
    recipients: list[str] = field(default_factory=list)


@dataclass
class Session:
    """What is known about one client connection."""

    peer_host: str | None
    peer_port: int | None
    local_port: int | None
    tls: bool = False
    helo: str | None = None
    esmtp: bool = False
    user: str | None = None
    transaction: Transaction | None = None
    connected_at: float = field(default_factory=time.time)


class SMTPHandler(TypingProtocol):
    """What a listener decides: who may authenticate, send, and what happens to mail.

    Methods may return a value or a Deferred of it.
    """

    def auth_offered(self, session: Session) -> bool: ...

    def auth_throttled(self, session: Session) -> bool: ...

    def authenticate(self, session: Session, username: str, password: bytes) -> "defer.Deferred[bool | Reply] | bool | Reply":
        """Whether the password is right; a Reply when it was not checked (a 421 ends the session)."""

    def check_sender(self, session: Session, sender: str) -> "Reply | None | defer.Deferred": ...

    def check_recipient(self, session: Session, recipient: str) -> "Reply | None | defer.Deferred": ...

    def accept_message(self, session: Session, transaction: Transaction, content: bytes) -> "defer.Deferred[Reply] | Reply": ...


# -- the protocol ------------------------------------------------------------------

_COMMAND, _DATA, _AUTH, _SKIP_LINE, _CLOSED = range(5)
_END_OF_DATA = b"\r\n.\r\n"


class SMTPServerProtocol(protocol.Protocol):
    """One SMTP session. Created by :class:`SMTPServerFactory`."""

    def __init__(self, factory: "SMTPServerFactory", implicit_tls: bool) -> None:
        self.factory = factory
        self.limits = factory.limits
        self.handler = factory.handler
        self.implicit_tls = implicit_tls
        self.session: Session | None = None
        self._buffer = b""
        self._mode = _COMMAND
        self._busy = False          # a command's reply is pending (Deferred)
        self._in_process = False
        self._paused_transport = False
        self._replies_backed_up = False   # the transport's write buffer is full (pauseProducing)
        self._registered = False          # registered as the transport's producer
        self._errors = 0
        self._closing = False       # shutdown requested: close after the transaction
        self._idle_call = None
        self._data_call = None
        self._abort_call = None
        # DATA phase state
        self._data_chunks: list[bytes] = []
        self._data_size = 0
        self._data_tail = b""
        self._data_overflow = False
        # AUTH exchange state: (mechanism, step, username)
        self._auth_state: tuple[str, int, str | None] | None = None
        self._out: list[bytes] = []  # replies not yet handed to the transport (see _flush)

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        peer: IAddress = self.transport.getPeer()
        host = getattr(self.transport, "getHost", lambda: None)()
        self.session = Session(
            peer_host=getattr(peer, "host", None),
            peer_port=getattr(peer, "port", None),
            local_port=getattr(host, "port", None),
            tls=self.implicit_tls,
        )
        refused = self.factory.connection_opened(self)
        if refused is not None:
            self._reply(refused)
            self._close()
            return
        # The transport pauses us (pauseProducing) while the client does not read our replies.
        self.transport.registerProducer(self, True)
        self._registered = True
        self._reset_idle_timer()
        self._out.append(f"220 {self.limits.hostname} ESMTP mailrelay\r\n".encode())
        self._flush()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._mode = _CLOSED
        for call in (self._idle_call, self._data_call, self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._data_chunks = []
        self._out = []
        self.factory.connection_closed(self)

    def _close(self) -> None:
        self._flush()
        self._mode = _CLOSED
        self._buffer = b""
        if self._registered:  # a TLS transport does not close while a producer is registered
            self._registered = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        # TLS waits for the client's close_notify; a client that never sends it
        # must not hold the session (and a shutdown) open.
        self._abort_call = self.factory.clock.callLater(CLOSE_GRACE, self._abort_transport)

    def _abort_transport(self) -> None:
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    # -- timers -----------------------------------------------------------------

    def _reset_idle_timer(self) -> None:
        """Start the time allowed for the next line: after a reply, or a complete line."""
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self.limits.idle_timeout)
        else:
            self._idle_call = self.factory.clock.callLater(self.limits.idle_timeout, self._timed_out)

    def _timed_out(self) -> None:
        if self._mode == _CLOSED:
            return
        log.info("{service}: timeout for {peer}", service=self.limits.service_name,
                 peer=self.session.peer_host)
        self._reply(TIMEOUT)
        self._close()

    # -- input ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Input alone does not restart the idle timer: only a complete line (or a reply,
        # see _await) does, so a client cannot hold a session by trickling bytes.
        if self._mode == _CLOSED:
            return
        if self._mode == _DATA and not self._buffer:
            self._data_received(data)
        else:
            self._buffer += data
        self._process()

    def _process(self) -> None:
        """Handle buffered input, one command at a time, until a reply is pending."""
        if self._in_process:
            return
        self._in_process = True
        try:
            while self._buffer and not self._busy and not self._replies_backed_up and self._mode != _CLOSED:
                if self._mode == _DATA:
                    data, self._buffer = self._buffer, b""
                    self._data_received(data)
                    continue
                end = self._buffer.find(b"\n")
                limit = MAX_AUTH_LINE if (self._mode == _AUTH or self._buffer[:5].upper() == b"AUTH ") else MAX_COMMAND_LINE
                if end == -1:
                    if len(self._buffer) > limit:
                        self._buffer = b""
                        if self._mode != _SKIP_LINE:
                            self._error(LINE_TOO_LONG)
                            self._mode = _SKIP_LINE if self._mode != _CLOSED else _CLOSED
                    break
                line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
                self._reset_idle_timer()
                if self._mode == _SKIP_LINE:
                    self._mode = _COMMAND
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) + 2 > limit:
                    self._auth_state = None
                    if self._mode == _AUTH:
                        self._mode = _COMMAND
                    self._error(LINE_TOO_LONG)
                    continue
                if self._mode == _AUTH:
                    self._auth_continue(line)
                else:
                    self._command(line)
            self._flow_control()
        finally:
            self._in_process = False
            self._flush()

    # IPushProducer: the transport's write buffer (replies the client has not read yet).

    def pauseProducing(self) -> None:
        # Only commands stop: their input piles up until _flow_control stops reading. The
        # transport's reading is not paused here, since a TLS transport also pauses its
        # producer while its handshake is under way, and the handshake needs to read.
        self._replies_backed_up = True

    def resumeProducing(self) -> None:
        self._replies_backed_up = False
        if self._mode != _CLOSED:
            self._process()
            self._flow_control()

    def stopProducing(self) -> None:
        pass  # the connection is going away: connectionLost cleans up

    def _flow_control(self) -> None:
        """Stop reading from a client whose pipelined input piles up (also because it does not
        read the replies: no command is handled meanwhile)."""
        backlog = len(self._buffer) > MAX_PENDING_INPUT
        if backlog and not self._paused_transport and self._mode != _CLOSED:
            self._paused_transport = True
            self.transport.pauseProducing()
        elif not backlog and self._paused_transport:
            self._paused_transport = False
            self.transport.resumeProducing()

    # -- replies ---------------------------------------------------------------------

    def _reply(self, reply: Reply) -> None:
        """Queue a reply; :meth:`_flush` sends the replies to one batch of input together."""
        self._out.append(reply.encode())

    def _flush(self) -> None:
        """
        Send the queued replies now, in one write. Called when a batch of input has been
        handled (end of :meth:`_process`), and before anything that must follow the replies
        on the wire: STARTTLS, closing, a greeting.
        """
        if self._out and self.transport is not None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out = []
            netio.send(self.transport, data)

    def _error(self, reply: Reply) -> None:
        self._errors += 1
        if self._errors >= MAX_ERRORS:
            self._reply(TOO_MANY_ERRORS)
            self._close()
        else:
            self._reply(reply)

    def _await(self, result: Any, then: Callable[[Any], None]) -> None:
        """Run ``then(result)`` now or, for a Deferred, when it fires, holding input meanwhile."""
        if not isinstance(result, defer.Deferred):
            then(result)
            return
        self._busy = True

        def done(value: Any) -> None:
            self._busy = False
            if self._mode == _CLOSED:
                return
            self._reset_idle_timer()  # the client's time for its next line starts at the reply
            then(value)
            self._after_transaction()
            self._process()

        def failed(failure: Failure) -> None:
            log.failure("{service}: handler failed", failure, service=self.limits.service_name)
            done(STORAGE_UNAVAILABLE)

        result.addCallbacks(done, failed)

    def _after_transaction(self) -> None:
        if self._closing and self.session.transaction is None and self._mode == _COMMAND and not self._busy:
            self._reply(SHUTTING_DOWN)
            self._close()

    # -- commands ---------------------------------------------------------------------

    def _command(self, raw: bytes) -> None:
        if b"\0" in raw:  # valid UTF-8, but no command or argument of RFC 5321's grammar holds it
            self._error(NUL_IN_COMMAND)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._error(BAD_ENCODING)
            return
        verb, _, arg = line.partition(" ")
        method = self._COMMANDS.get(verb.upper())
        if method is None:
            self._error(UNKNOWN_COMMAND)
            return
        method(self, arg)

    def do_EHLO(self, arg: str) -> None:
        self._helo(arg, esmtp=True)

    def do_HELO(self, arg: str) -> None:
        self._helo(arg, esmtp=False)

    def _helo(self, arg: str, esmtp: bool) -> None:
        name = arg.strip()
        if not name or " " in name:
            self._error(SYNTAX_ERROR.with_text("Syntax: EHLO hostname"))
            return
        session = self.session
        session.helo, session.esmtp, session.transaction = name, esmtp, None
        if not esmtp:
            self._reply(Reply(250, "", self.limits.hostname))
            return
        lines = [self.limits.hostname, "PIPELINING", f"SIZE {self.limits.max_message_size}",
                 "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if not session.tls and self.factory.tls_options is not None:
            lines.append("STARTTLS")
        if session.user is None and self.handler.auth_offered(session):
            lines.append("AUTH PLAIN LOGIN")
        self._reply(Reply(250, "", "\n".join(lines)))

    def do_MAIL(self, arg: str) -> None:
        session = self.session
        if session.helo is None:
            return self._error(NEED_HELO)
        if session.transaction is not None:
            return self._error(NESTED_MAIL)
        if arg[:5].upper() != "FROM:":
            return self._error(SYNTAX_ERROR.with_text("Syntax: MAIL FROM:<address>"))
        try:
            sender, rest = parse_path(arg[5:], allow_null=True)
            params = parse_params(rest)
        except AddressError as e:
            return self._error(BAD_SENDER_SYNTAX.with_text(f"Bad sender address syntax: {e}"))
        transaction = Transaction(sender=sender)
        for name, value in params.items():
            if name == "SIZE" and value is not None and value.isdigit():
                transaction.declared_size = int(value)
            elif name == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                transaction.body_8bit = value.upper() == "8BITMIME"
            elif name == "SMTPUTF8" and value is None:
                transaction.smtputf8 = True
            elif name == "AUTH" and value is not None:
                pass  # RFC 4954 5: accepted; we do not relay authorization identities
            else:
                return self._error(UNSUPPORTED_PARAMETER.with_text(f"Unsupported parameter {name}"))
        if not transaction.smtputf8 and not sender.isascii():
            return self._error(NON_ASCII_ADDRESS)
        if transaction.declared_size is not None and transaction.declared_size > self.limits.max_message_size:
            return self._reply(MESSAGE_TOO_BIG)

        def decided(reply: Reply | None) -> None:
            if reply is None:
                session.transaction = transaction
                self._reply(SENDER_OK)
            else:
                self._reply(reply)

        self._await(self.handler.check_sender(session, sender), decided)

    def do_RCPT(self, arg: str) -> None:
        transaction = self.session.transaction
        if transaction is None:
            return self._error(NEED_MAIL)
        if arg[:3].upper() != "TO:":
            return self._error(SYNTAX_ERROR.with_text("Syntax: RCPT TO:<address>"))
        try:
            recipient, rest = parse_path(arg[3:], allow_null=False)
            if parse_params(rest):
                return self._error(UNSUPPORTED_PARAMETER)
        except AddressError as e:
            return self._error(BAD_RECIPIENT_SYNTAX.with_text(f"Bad recipient address syntax: {e}"))
        if not transaction.smtputf8 and not recipient.isascii():
            return self._error(NON_ASCII_ADDRESS)
        if len(transaction.recipients) >= self.limits.max_recipients:
            return self._reply(TOO_MANY_RECIPIENTS)

        def decided(reply: Reply | None) -> None:
            if reply is None:
                if self.session.transaction is transaction:
                    transaction.recipients.append(recipient)
                self._reply(RECIPIENT_OK)
            else:
                self._reply(reply)

        self._await(self.handler.check_recipient(self.session, recipient), decided)

    def do_DATA(self, arg: str) -> None:
        transaction = self.session.transaction
        if arg.strip():
            return self._error(SYNTAX_ERROR.with_text("Syntax: DATA"))
        if transaction is None:
            return self._error(NEED_MAIL)
        if not transaction.recipients:
            return self._error(NEED_RCPT)
        self._mode = _DATA
        self._data_chunks = [b"\r\n"]  # the CRLF that ended the DATA line
        self._data_size = 0
        self._data_tail = b"\r\n"
        self._data_overflow = False
        self._data_call = self.factory.clock.callLater(self.limits.data_timeout, self._timed_out)
        self._reply(START_DATA)

    def _data_received(self, data: bytes) -> None:
        """Collect DATA until <CRLF>.<CRLF>; the stream is kept with a leading CRLF."""
        if b"\n" in data:  # a line was completed: the next one has idle_timeout to arrive
            self._reset_idle_timer()
        window = self._data_tail + data
        found = window.find(_END_OF_DATA)
        if found == -1:
            self._data_size += len(data)
            if self._data_size <= self.limits.max_message_size + MAX_DATA_LINE:
                self._data_chunks.append(data)
            elif not self._data_overflow:
                self._data_overflow = True
                self._data_chunks = []
            self._data_tail = window[-4:]
            return
        end = found + len(_END_OF_DATA) - len(self._data_tail)  # in data
        self._buffer = data[end:] + self._buffer
        self._data_size += end
        if not self._data_overflow:
            self._data_chunks.append(data[:end])
        chunks, self._data_chunks = self._data_chunks, []
        self._mode = _COMMAND
        if self._data_call is not None and self._data_call.active():
            self._data_call.cancel()
        self._end_of_data(chunks)

    def _end_of_data(self, chunks: list[bytes]) -> None:
        transaction, self.session.transaction = self.session.transaction, None
        if self._data_overflow:
            return self._data_reply(MESSAGE_TOO_BIG)
        stream = b"".join(chunks)[:-3]  # ends with CRLF; ".\r\n" dropped
        lines = stream.split(b"\r\n")
        # Every CR must start a CRLF and every LF end one (no smuggling).
        crlf = len(lines) - 1
        if stream.count(b"\r") != crlf or stream.count(b"\n") != crlf:
            self._count_rejected(BARE_NEWLINE)
            return self._error(BARE_NEWLINE)
        if b"\0" in stream:  # RFC 5322 2.1, RFC 2045 2.7/2.8, RFC 6152: no NUL outside BINARYMIME
            return self._data_reply(NUL_IN_DATA)
        content = stream.replace(b"\r\n.", b"\r\n")[2:]  # RFC 5321 4.5.2 transparency
        if len(content) > self.limits.max_message_size:
            return self._data_reply(MESSAGE_TOO_BIG)
        if max(map(len, lines)) + 2 > MAX_DATA_LINE:
            return self._data_reply(LINE_TOO_LONG_IN_DATA)
        if header_size_exceeds(content, self.limits.max_header_size):
            return self._data_reply(HEADER_TOO_BIG)
        self._await(self.handler.accept_message(self.session, transaction, content), self._data_reply)

    def _data_reply(self, reply: Reply) -> None:
        """The reply that ends a DATA phase; refusals are counted for /metrics."""
        if reply.code >= 400:
            self._count_rejected(reply)
        self._reply(reply)

    def _count_rejected(self, reply: Reply) -> None:
        MESSAGES_REJECTED.labels(self.limits.service_name, str(reply.code)).inc()


    def do_RSET(self, arg: str) -> None:
        self.session.transaction = None
        self._reply(OK)

    def do_NOOP(self, arg: str) -> None:
        self._reply(OK)

    def do_QUIT(self, arg: str) -> None:
        self._reply(BYE)
        self._close()

    def do_VRFY(self, arg: str) -> None:
        self._reply(VRFY_REPLY)

    def do_HELP(self, arg: str) -> None:
        self._reply(HELP)

    def do_not_implemented(self, arg: str) -> None:
        self._error(NOT_IMPLEMENTED)

    def do_STARTTLS(self, arg: str) -> None:
        if self.session.tls:
            return self._error(ALREADY_TLS)
        if self.factory.tls_options is None:
            return self._error(TLS_UNAVAILABLE)
        if arg.strip():
            return self._error(SYNTAX_ERROR.with_text("Syntax: STARTTLS"))
        # RFC 3207 4.2: anything pipelined after STARTTLS is discarded, and the
        # session starts over: no HELO, no transaction, no authentication.
        self._buffer = b""
        self._reply(READY_TLS)
        self._flush()  # in the clear, before the handshake
        self.transport.startTLS(self.factory.tls_options)
        old = self.session
        self.session = Session(peer_host=old.peer_host, peer_port=old.peer_port,
                               local_port=old.local_port, tls=True)

    # -- AUTH (RFC 4954) -----------------------------------------------------------------

    def do_AUTH(self, arg: str) -> None:
        session = self.session
        if session.helo is None:
            return self._error(NEED_HELO)
        if not self.handler.auth_offered(session):
            if not session.tls and self.factory.tls_options is not None and self.factory.auth_possible:
                return self._error(ENCRYPTION_REQUIRED)
            return self._error(AUTH_NOT_AVAILABLE)
        if session.user is not None:
            return self._error(ALREADY_AUTHENTICATED)
        if session.transaction is not None:
            return self._error(AUTH_IN_TRANSACTION)
        if self.handler.auth_throttled(session):
            self._reply(AUTH_THROTTLED)
            return self._close()
        mechanism, _, initial = arg.strip().partition(" ")
        mechanism = mechanism.upper()
        if mechanism not in ("PLAIN", "LOGIN"):
            return self._error(UNKNOWN_AUTH_MECHANISM)
        initial = initial.strip()
        if not initial:
            self._auth_state = (mechanism, 0, None)
            self._mode = _AUTH
            self._reply(Reply(334, "", "" if mechanism == "PLAIN" else "VXNlcm5hbWU6"))
            return
        self._auth_state = (mechanism, 0, None)
        self._auth_step(initial.encode())

    def _auth_continue(self, line: bytes) -> None:
        self._mode = _COMMAND
        if line.strip() == b"*":
            self._auth_state = None
            return self._error(AUTH_ABORTED)
        self._auth_step(line.strip())

    def _auth_step(self, response: bytes) -> None:
        mechanism, step, username = self._auth_state
        try:
            decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
        except (binascii.Error, ValueError):
            self._auth_state = None
            return self._error(AUTH_DECODE_ERROR)
        if mechanism == "LOGIN" and step == 0:
            try:
                name = decoded.decode("utf-8")
            except UnicodeDecodeError:
                self._auth_state = None
                return self._error(AUTH_DECODE_ERROR)
            self._auth_state = ("LOGIN", 1, name)
            self._mode = _AUTH
            self._reply(Reply(334, "", "UGFzc3dvcmQ6"))
            return
        if mechanism == "LOGIN":
            password = decoded
        else:
            parts = decoded.split(b"\x00")
            if len(parts) != 3:
                self._auth_state = None
                return self._error(AUTH_DECODE_ERROR)
            authzid, authcid, password = parts
            try:
                username = authcid.decode("utf-8")
                authz = authzid.decode("utf-8")
            except UnicodeDecodeError:
                self._auth_state = None
                return self._error(AUTH_DECODE_ERROR)
            if authz and authz != username:
                self._auth_state = None
                return self._auth_failed(username)
        self._auth_state = None
        session = self.session

        def decided(ok: bool | Reply) -> None:
            if isinstance(ok, Reply):  # not checked: throttled, or the throttle unavailable
                if ok.code == 421:
                    self._reply(ok)
                    return self._close()
                return self._error(ok)
            if ok is True and self.session is session:
                session.user = username
                log.info("{service}: {peer} authenticated as {user}",
                         service=self.limits.service_name, peer=session.peer_host, user=username)
                self._reply(AUTH_OK)
            else:
                self._auth_failed(username)

        self._await(self.handler.authenticate(session, username, password), decided)

    def _auth_failed(self, username: str | None) -> None:
        log.info("{service}: authentication failed for {user!r} from {peer}",
                 service=self.limits.service_name, user=username, peer=self.session.peer_host)
        self._error(AUTH_FAILED)

    _COMMANDS: dict[str, Callable[["SMTPServerProtocol", str], None]] = {
        "EHLO": do_EHLO, "HELO": do_HELO, "MAIL": do_MAIL, "RCPT": do_RCPT,
        "DATA": do_DATA, "RSET": do_RSET, "NOOP": do_NOOP, "QUIT": do_QUIT,
        "VRFY": do_VRFY, "HELP": do_HELP, "STARTTLS": do_STARTTLS, "AUTH": do_AUTH,
        "EXPN": do_not_implemented, "BDAT": do_not_implemented, "ETRN": do_not_implemented,
        "TURN": do_not_implemented,
    }

    # -- shutdown ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; otherwise after the transaction in progress."""
        if self._mode == _CLOSED:
            return
        self._closing = True
        if self.session is None or (self.session.transaction is None and self._mode == _COMMAND and not self._busy):
            self._reply(SHUTTING_DOWN)
            self._close()

    def abort(self) -> None:
        """Give up on the session: 421 and close."""
        if self._mode != _CLOSED:
            self._reply(SHUTTING_DOWN)
            self._close()


class ConnectionLimiter:
    """
    The sessions of one service (its listeners share one limiter), counted in all and per
    client address, against ``max_connections`` and ``max_connections_per_ip``.
    """

    def __init__(self, limits: ServerLimits) -> None:
        self.max_total = limits.max_connections
        self.max_per_ip = limits.max_connections_per_ip
        self.service_name = limits.service_name
        self.total = 0
        self._per_ip: dict[str | None, int] = {}
        self._full_logged = False

    def admit(self, ip: str | None) -> Reply | None:
        """Count a new session and return None, or return the 421 that refuses it."""
        if self.total >= self.max_total:
            if not self._full_logged:  # once per episode: a flood must not flood the log
                self._full_logged = True
                log.warn("{service}: {n} connections open, the most allowed (max_connections): "
                         "new ones get 421 4.7.0", service=self.service_name, n=self.total)
            return TOO_MANY_CONNECTIONS_IN_ALL
        if self._per_ip.get(ip, 0) >= self.max_per_ip:
            return TOO_MANY_CONNECTIONS
        self.total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str | None) -> None:
        """An admitted session ended."""
        self.total -= 1
        if self.total < self.max_total * 0.9:
            self._full_logged = False
        left = self._per_ip.get(ip, 1) - 1
        if left:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)


def header_size_exceeds(content: bytes, limit: int) -> bool:
    """Whether the header of ``content`` (as :func:`mailrelay.mail.message.split_header` reads
    it: up to the blank line, or the first line that is not a field) is over ``limit`` octets."""
    if content.find(b"\r\n\r\n", 0, limit + 2) != -1 or len(content) <= limit:
        return False  # the blank line comes within the limit (the usual case: no split)
    rest = split_header(content)[1]
    return len(content) - len(rest) > limit


class SMTPServerFactory(protocol.Factory):
    """Builds sessions for one kind of listener and keeps track of them."""

    noisy = False

    def __init__(self, limits: ServerLimits, handler: SMTPHandler, tls_options: Any = None,
                 *, implicit_tls: bool = False, auth_possible: bool = False, clock: Any = None,
                 limiter: "ConnectionLimiter | None" = None) -> None:
        from twisted.internet import reactor

        self.limits = limits
        self.handler = handler
        self.tls_options = None if implicit_tls else tls_options
        self.implicit_tls = implicit_tls
        self.auth_possible = auth_possible
        self.clock = clock or reactor
        self.stopping = False
        self.sessions: set[SMTPServerProtocol] = set()
        self.limiter = limiter or ConnectionLimiter(limits)
        self._all_closed: list[defer.Deferred] = []

    def buildProtocol(self, addr: IAddress) -> SMTPServerProtocol:
        return SMTPServerProtocol(self, self.implicit_tls)

    def connection_opened(self, proto: SMTPServerProtocol) -> Reply | None:
        """Admit a new session, or say why not (the session answers that and closes)."""
        if self.stopping:
            return SHUTTING_DOWN
        refused = self.limiter.admit(proto.session.peer_host)
        if refused is None:
            self.sessions.add(proto)
        return refused

    def connection_closed(self, proto: SMTPServerProtocol) -> None:
        if proto in self.sessions:
            self.sessions.discard(proto)
            self.limiter.release(proto.session.peer_host)
        if not self.sessions:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def shutdown(self, grace: float) -> defer.Deferred:
        """Close idle sessions now, busy ones after their transaction or ``grace`` seconds."""
        self.stopping = True
        for proto in list(self.sessions):
            proto.shutdown()
        if not self.sessions:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._all_closed.append(d)
        timer = self.clock.callLater(grace, self._abort_all)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _abort_all(self) -> None:
        for proto in list(self.sessions):
            proto.abort()
