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
    CR CR LF, has no PIPELINING and sends one message per connection. The
    wire side (replies, pipelining, TLS switch, dot-stuffed message data) is
    :mod:`mailrelay.smtp.clientprotocol`; the TLS options are
    :mod:`mailrelay.smtp.clienttls`.

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
import re
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from twisted.internet import defer, error
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailrelay.smtp.address import AddressError, validate_mailbox
from mailrelay.smtp.clientprotocol import (
    CHUNK_SIZE, CLOSE_GRACE, CommandTimeout, ConnectFailure, ConnectionLostError, ProtocolError,
    RefusedDestination, ReplyInfo, SMTPClientError, SMTPClientProtocol, SMTPReplyError, TLSFailure,
    normalize_line_endings)
from mailrelay.smtp.clienttls import client_tls_options, ip_version
from mailrelay.smtp.destinations import DestinationPolicy, DestinationRefused

#: The client's public interface (its errors and ReplyInfo are defined in
#: :mod:`mailrelay.smtp.clientprotocol`, with the protocol that raises and makes them).
__all__ = [
    "TLS_POLICIES", "ClientSession", "CommandTimeout", "ConnectFailure", "ConnectionLostError", "MessageOutcome",
    "OutboundMessage", "ProtocolError", "RecipientOutcome", "RefusedDestination", "ReplyInfo", "SMTPClientError",
    "SMTPReplyError", "TLSFailure", "connect", "parse_queue_id",
]

log = Logger()

#: The TLS policies :func:`connect` understands.
TLS_POLICIES = ("none", "opportunistic", "required", "verify", "implicit")

_HELO_NAME = re.compile(r"^[A-Za-z0-9.\-_:\[\]]+$")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


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
    version = ip_version(host)
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
