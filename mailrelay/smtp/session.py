"""
session: what the SMTP server and its handlers share: sessions, transactions, replies, limits.

JOB
    The vocabulary between :mod:`mailrelay.smtp.server` and the services that
    decide what it accepts (submission, bounces): :class:`Session` (one
    client connection), :class:`Transaction` (MAIL, its RCPTs, then DATA),
    the :class:`SMTPHandler` protocol a service implements, :class:`Reply`
    and every constant reply the server and its handlers give (in one
    place, each encoded once), and :class:`ServerLimits` with the RFC 5321
    limits the protocol enforces.

SECURITY
    A :class:`Reply`'s text is the server's own; a multi-line text becomes a
    multi-line reply (``250-``), so a handler must not put a client's bytes
    with CR or LF in it. The limits here (command line, AUTH line, DATA line,
    errors per session, unread input) are what keeps an untrusted client from
    holding memory or a session; :mod:`mailrelay.smtp.server` applies them.

STANDARDS
    RFC 5321 (reply codes, 4.5.3.1 limits), RFC 2034 and RFC 3463 (enhanced
    status codes), RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531
    (SMTPUTF8), RFC 4954 (AUTH line length, 530/535/538 replies).

DIAGNOSTICS
    None: defines values; the server logs.

CONFIGURATION
    :class:`ServerLimits`, filled by the service from its configuration
    section (hostname, message and header sizes, recipients, timeouts,
    connection caps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol as TypingProtocol

from twisted.internet import defer


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


#: What the session's input is: commands, message data, an AUTH exchange, the rest of a
#: line too long to read, or nothing (closed).
MODE_COMMAND, MODE_DATA, MODE_AUTH, MODE_SKIP_LINE, MODE_CLOSED = range(5)
