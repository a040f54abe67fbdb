"""
smtpserver: the ESMTP server protocol shared by the submission and bounce listeners.

JOB
    Speaks RFC 5321 to clients and enforces its grammar, order and limits; what
    to accept is decided by an :class:`~mailrelay.smtp.session.SMTPHandler`
    (submission or bounces). Written on ``twisted.internet.protocol.Protocol``
    rather than ``twisted.mail.smtp.ESMTP``, whose PIPELINING, STARTTLS and DATA
    handling have the holes listed in the project's notes. This module holds the
    session's state machine (input, timers, flow control, replies, EHLO/HELO,
    STARTTLS, RSET, NOOP, QUIT, VRFY, HELP, shutdown), the connection limits
    (:class:`ConnectionLimiter`) and the factory; the mail transaction (MAIL,
    RCPT, DATA) is :mod:`mailrelay.smtp.transaction`, AUTH is
    :mod:`mailrelay.smtp.serverauth`, the envelope grammar
    :mod:`mailrelay.smtp.address`, and sessions, replies and limits
    :mod:`mailrelay.smtp.session`.

SECURITY
    Talks to untrusted clients. Message data is read as
    :mod:`mailrelay.smtp.transaction` says (no SMTP smuggling). A NUL in a
    command line gets ``501 5.5.2``. Anything pipelined after STARTTLS is
    discarded and all session state is reset (RFC 3207). Command lines are
    limited (512 octets plus what the advertised extensions add; 12,288 for
    AUTH, RFC 4954); commands run strictly one at a time, in order, while the
    input is buffered (PIPELINING, RFC 2920). Too many errors in a session
    close it.

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
    :class:`~mailrelay.smtp.session.ServerLimits`, filled by the service from
    its configuration section.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailrelay import netio
from mailrelay.smtp.serverauth import AuthCommand
from mailrelay.smtp.session import (
    ALREADY_TLS, BAD_ENCODING, BYE, CLOSE_GRACE, HELP, LINE_TOO_LONG, MAX_AUTH_LINE, MAX_COMMAND_LINE, MAX_ERRORS,
    MAX_PENDING_INPUT, MODE_AUTH, MODE_CLOSED, MODE_COMMAND, MODE_DATA, MODE_SKIP_LINE, NOT_IMPLEMENTED,
    NUL_IN_COMMAND, OK, READY_TLS, SHUTTING_DOWN, STORAGE_UNAVAILABLE, SYNTAX_ERROR, TIMEOUT, TLS_UNAVAILABLE,
    TOO_MANY_CONNECTIONS, TOO_MANY_CONNECTIONS_IN_ALL, TOO_MANY_ERRORS, UNKNOWN_COMMAND, VRFY_REPLY, Reply,
    ServerLimits, Session, SMTPHandler)
from mailrelay.smtp.transaction import MailTransactionCommands

log = Logger()


# -- the protocol ------------------------------------------------------------------


class SMTPServerProtocol(MailTransactionCommands, AuthCommand, protocol.Protocol):
    """One SMTP session. Created by :class:`SMTPServerFactory`."""

    def __init__(self, factory: "SMTPServerFactory", implicit_tls: bool) -> None:
        self.factory = factory
        self.limits = factory.limits
        self.handler = factory.handler
        self.implicit_tls = implicit_tls
        self.session: Session | None = None
        self._buffer = b""
        self._mode = MODE_COMMAND
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
        self._mode = MODE_CLOSED
        for call in (self._idle_call, self._data_call, self._abort_call):
            if call is not None and call.active():
                call.cancel()
        self._data_chunks = []
        self._out = []
        self.factory.connection_closed(self)

    def _close(self) -> None:
        self._flush()
        self._mode = MODE_CLOSED
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
        if self._mode == MODE_CLOSED:
            return
        log.info("{service}: timeout for {peer}", service=self.limits.service_name,
                 peer=self.session.peer_host)
        self._reply(TIMEOUT)
        self._close()

    # -- input ---------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Input alone does not restart the idle timer: only a complete line (or a reply,
        # see _await) does, so a client cannot hold a session by trickling bytes.
        if self._mode == MODE_CLOSED:
            return
        if self._mode == MODE_DATA and not self._buffer:
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
            while self._buffer and not self._busy and not self._replies_backed_up and self._mode != MODE_CLOSED:
                if self._mode == MODE_DATA:
                    data, self._buffer = self._buffer, b""
                    self._data_received(data)
                    continue
                end = self._buffer.find(b"\n")
                limit = MAX_AUTH_LINE if (self._mode == MODE_AUTH or self._buffer[:5].upper() == b"AUTH ") else MAX_COMMAND_LINE
                if end == -1:
                    if len(self._buffer) > limit:
                        self._buffer = b""
                        if self._mode != MODE_SKIP_LINE:
                            self._error(LINE_TOO_LONG)
                            self._mode = MODE_SKIP_LINE if self._mode != MODE_CLOSED else MODE_CLOSED
                    break
                line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
                self._reset_idle_timer()
                if self._mode == MODE_SKIP_LINE:
                    self._mode = MODE_COMMAND
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                if len(line) + 2 > limit:
                    self._auth_state = None
                    if self._mode == MODE_AUTH:
                        self._mode = MODE_COMMAND
                    self._error(LINE_TOO_LONG)
                    continue
                if self._mode == MODE_AUTH:
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
        if self._mode != MODE_CLOSED:
            self._process()
            self._flow_control()

    def stopProducing(self) -> None:
        pass  # the connection is going away: connectionLost cleans up

    def _flow_control(self) -> None:
        """Stop reading from a client whose pipelined input piles up (also because it does not
        read the replies: no command is handled meanwhile)."""
        backlog = len(self._buffer) > MAX_PENDING_INPUT
        if backlog and not self._paused_transport and self._mode != MODE_CLOSED:
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
            if self._mode == MODE_CLOSED:
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
        if self._closing and self.session.transaction is None and self._mode == MODE_COMMAND and not self._busy:
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

    _COMMANDS: dict[str, Callable[["SMTPServerProtocol", str], None]] = {
        "EHLO": do_EHLO, "HELO": do_HELO, "MAIL": MailTransactionCommands.do_MAIL,
        "RCPT": MailTransactionCommands.do_RCPT, "DATA": MailTransactionCommands.do_DATA,
        "RSET": do_RSET, "NOOP": do_NOOP, "QUIT": do_QUIT,
        "VRFY": do_VRFY, "HELP": do_HELP, "STARTTLS": do_STARTTLS, "AUTH": AuthCommand.do_AUTH,
        "EXPN": do_not_implemented, "BDAT": do_not_implemented, "ETRN": do_not_implemented,
        "TURN": do_not_implemented,
    }

    # -- shutdown ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Close now if idle; otherwise after the transaction in progress."""
        if self._mode == MODE_CLOSED:
            return
        self._closing = True
        if self.session is None or (self.session.transaction is None and self._mode == MODE_COMMAND and not self._busy):
            self._reply(SHUTTING_DOWN)
            self._close()

    def abort(self) -> None:
        """Give up on the session: 421 and close."""
        if self._mode != MODE_CLOSED:
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
