"""
scriptedsmtp: a small SMTP server with scripted behaviour, for the test suite.

Listens on 127.0.0.1, port 0. Every reply can be scripted (a reply string, a
callable returning one, or raw bytes sent verbatim); it records each session's
raw reads and command lines and every message received (envelope, MAIL
parameters and the body exactly as it was before dot-stuffing). DATA ends only
at <CRLF>.<CRLF>; un-stuffing removes the first "." of every line that starts
with one.

STARTTLS answered 220 with no ``tls_options`` leaves the server in plaintext: it
answers whatever the client sends (its TLS ClientHello) with ``fake_tls_reply``,
or with nothing if that is None.

Reply strings may hold several lines separated by "\\n" ("250-a\\n250 b"); each
is sent with CRLF.

    server = ScriptedSMTPServer(rcpt_replies={"bad@y.test": "550 5.1.1 No such user"})
    port = server.start()
    ...
    yield server.stop()      # stops listening, aborts what is left, waits
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, Callable, Union

from twisted.internet import defer, protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

ReplySpec = Union[str, bytes, Callable[..., Union[str, bytes, None]], None]

DEFAULT_EXTENSIONS = ("PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")


@dataclass
class ReceivedMessage:
    sender: str
    mail_params: list[str]
    recipients: list[str]
    body: bytes          # after un-dot-stuffing
    raw: bytes           # as received between the DATA reply and ".\r\n"
    tls: bool
    user: str | None


@dataclass
class ScriptedSession:
    reads: list[bytes] = field(default_factory=list)       # raw reads in command mode
    commands_with_data: int = 0    # times commands came in the same read as an end of data
    commands: list[str] = field(default_factory=list)      # command lines, CRLF stripped
    tls: bool = False
    user: str | None = None
    closed: bool = False


class _Protocol(protocol.Protocol):
    def __init__(self, server: "ScriptedSMTPServer", implicit_tls: bool) -> None:
        self.server = server
        self.session = ScriptedSession(tls=implicit_tls)
        self.buffer = b""
        self.mode = "command"
        self.data = b""
        self.scan = 0
        self.auth: tuple[str, int, str | None] | None = None
        self.silent = False
        self.closing = False
        self.reset()

    def reset(self) -> None:
        self.sender: str | None = None
        self.params: list[str] = []
        self.recipients: list[str] = []

    # -- connection

    def connectionMade(self) -> None:
        self.server.sessions.append(self.session)
        self.server._protocols.add(self)
        if self.server.greeting is None:
            self.silent = True
            return
        self.send(self.server.greeting)

    def connectionLost(self, reason: Any = None) -> None:
        self.session.closed = True
        self.server._protocols.discard(self)
        if not self.server._protocols:
            waiting, self.server._waiting = self.server._waiting, []
            for d in waiting:
                d.callback(None)

    def send(self, reply: str | bytes) -> None:
        if self.silent:
            return
        if isinstance(reply, bytes):
            self.transport.write(reply)
        else:
            self.transport.write(("\r\n".join(reply.split("\n")) + "\r\n").encode("utf-8"))

    def answer(self, spec: ReplySpec, default: str, *args: Any) -> str | bytes:
        reply = spec(*args) if callable(spec) else spec
        reply = default if reply is None else reply
        self.send(reply)
        if reply[:3] in ("421", b"421"):  # RFC 5321 3.8: the server closes after a 421
            self.closing = True
            self.transport.loseConnection()
        return reply

    # -- input

    def dataReceived(self, data: bytes) -> None:
        if self.mode == "fake-tls":  # STARTTLS said 220 with no certificate: answer in plaintext
            self.session.reads.append(data)
            if self.server.fake_tls_reply:
                self.transport.write(self.server.fake_tls_reply)
            return
        if self.mode == "command":
            self.session.reads.append(data)
        self.buffer += data
        self.process()

    def process(self) -> None:
        while self.buffer and self.transport is not None and not self.session.closed and not self.closing:
            if self.mode == "data":
                self.data += self.buffer
                self.buffer = b""
                end = self.data.find(b"\r\n.\r\n", self.scan)
                if end == -1:
                    self.scan = max(0, len(self.data) - 4)
                    return
                stream, self.buffer = self.data[:end + 2], self.data[end + 5:]
                self.mode = "command"
                if self.buffer:
                    self.session.reads.append(self.buffer)
                    self.session.commands_with_data += 1
                self.end_of_data(stream)
                continue
            end = self.buffer.find(b"\r\n")
            if end == -1:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
            text = line.decode("utf-8", "replace")
            self.session.commands.append(text)
            self.server.commands.append(text)
            if self.auth is not None:
                self.auth_step(line)
            else:
                self.command(text)

    def command(self, text: str) -> None:
        server = self.server
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb in server.drop_on:
            self.transport.abortConnection()
            self.session.closed = True
            return
        if verb in server.silent_on:
            self.silent = True
            return
        if verb == "EHLO":
            self.reset()
            if server.ehlo_reply is not None:
                return self.send(server.ehlo_reply)
            extensions = list(server.extensions)
            if server.advertise_starttls and not self.session.tls:
                extensions.append("STARTTLS")
            if server.auth is not None:
                extensions.append(f"AUTH {server.auth_mechanisms}")
            lines = [server.hostname] + extensions
            self.send("\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{line}"
                                for i, line in enumerate(lines)))
        elif verb == "HELO":
            self.reset()
            self.send(server.helo_reply)
        elif verb == "STARTTLS":
            reply = self.answer(server.starttls_reply, "220 2.0.0 Ready to start TLS")
            if server.starttls_extra:
                self.transport.write(server.starttls_extra)
            code = reply[:3] if isinstance(reply, str) else reply[:3].decode()
            if code == "220" and server.tls_options is not None:
                self.buffer = b""
                self.transport.startTLS(server.tls_options)
                self.session.tls = True
                self.reset()
            elif code == "220":
                self.mode = "fake-tls"
        elif verb == "AUTH":
            self.do_auth(arg)
        elif verb == "MAIL":
            addr, params = _path(arg, "FROM:")
            reply = self.answer(server.mail_reply, "250 2.1.0 Ok", addr, params)
            if _code(reply) == "2":
                self.sender, self.params, self.recipients = addr, params, []
        elif verb == "RCPT":
            addr, _ = _path(arg, "TO:")
            if self.sender is None:
                return self.send("503 5.5.1 Error: need MAIL command")
            spec = server.rcpt_replies
            if isinstance(spec, dict):
                spec = spec.get(addr)
            reply = self.answer(spec, "250 2.1.5 Ok", addr)
            if _code(reply) == "2":
                self.recipients.append(addr)
        elif verb == "DATA":
            if server.data_reply is None:
                if self.sender is None:
                    return self.send("503 5.5.1 Error: need MAIL command")
                if not self.recipients:
                    return self.send("554 5.5.1 Error: no valid recipients")
            reply = self.answer(server.data_reply, "354 End data with <CR><LF>.<CR><LF>")
            if _code(reply) == "3":
                self.mode, self.data, self.scan = "data", b"\r\n", 0
        elif verb == "RSET":
            self.reset()
            self.send("250 2.0.0 Ok")
        elif verb == "NOOP":
            self.send("250 2.0.0 Ok")
        elif verb == "QUIT":
            self.send("221 2.0.0 Bye")
            self.closing = True
            self.transport.loseConnection()
        else:
            self.send("502 5.5.1 Error: command not implemented")

    def end_of_data(self, stream: bytes) -> None:
        body = stream.replace(b"\r\n.", b"\r\n")[2:]
        if self.sender is None:
            self.send("503 5.5.1 Error: no transaction")
            return
        message = ReceivedMessage(self.sender, self.params, list(self.recipients), body,
                                  stream[2:], self.session.tls, self.session.user)
        self.reset()
        server = self.server
        server.messages.append(message)
        self.answer(server.final_reply, f"250 2.0.0 Ok: queued as Q{len(server.messages)}", message)

    # -- AUTH

    def do_auth(self, arg: str) -> None:
        mechanism, _, initial = arg.partition(" ")
        mechanism = mechanism.upper()
        if self.server.auth is None or mechanism not in self.server.auth_mechanisms.split():
            return self.send("504 5.5.4 Unrecognized authentication type")
        if mechanism == "PLAIN":
            if initial:
                return self.check_plain(initial.encode())
            self.auth = ("PLAIN", 0, None)
            return self.send("334 ")
        self.auth = ("LOGIN", 0, None)
        self.send("334 VXNlcm5hbWU6")

    def auth_step(self, line: bytes) -> None:
        mechanism, step, user = self.auth
        self.auth = None
        if line == b"*":
            return self.send("501 5.7.0 Authentication aborted")
        if mechanism == "PLAIN":
            return self.check_plain(line)
        try:
            value = base64.b64decode(line, validate=True).decode()
        except (binascii.Error, ValueError):
            return self.send("501 5.5.2 Cannot decode response")
        if step == 0:
            self.auth = ("LOGIN", 1, value)
            return self.send("334 UGFzc3dvcmQ6")
        self.check(user, value)

    def check_plain(self, token: bytes) -> None:
        try:
            _, user, password = base64.b64decode(token, validate=True).decode().split("\0")
        except (binascii.Error, ValueError):
            return self.send("501 5.5.2 Cannot decode response")
        self.check(user, password)

    def check(self, user: str | None, password: str) -> None:
        if user is not None and self.server.auth.get(user) == password:
            self.session.user = user
            self.send("235 2.7.0 Authentication successful")
        else:
            self.send("535 5.7.8 Error: authentication failed")


def _code(reply: str | bytes) -> str:
    return reply[:1] if isinstance(reply, str) else reply[:1].decode()


def _path(arg: str, prefix: str) -> tuple[str, list[str]]:
    """``FROM:<a@b> SIZE=1`` -> ("a@b", ["SIZE=1"])."""
    rest = arg[len(prefix):] if arg.upper().startswith(prefix) else arg
    rest = rest.strip()
    if rest.startswith("<") and ">" in rest:
        addr, _, params = rest[1:].partition(">")
    else:
        addr, _, params = rest.partition(" ")
    return addr, params.split()


class ScriptedSMTPServer(protocol.Factory):
    """The scripted server; see the module docstring."""

    noisy = False

    def __init__(self, *, hostname: str = "scripted.test",
                 greeting: str | bytes | None = "220 scripted.test ESMTP scripted",
                 extensions: tuple[str, ...] | list[str] = DEFAULT_EXTENSIONS,
                 ehlo_reply: str | bytes | None = None,
                 helo_reply: str = "250 scripted.test",
                 mail_reply: ReplySpec = None,
                 rcpt_replies: dict[str, str] | ReplySpec = None,
                 data_reply: ReplySpec = None,
                 final_reply: ReplySpec = None,
                 tls_options: Any = None,
                 advertise_starttls: bool | None = None,
                 starttls_reply: ReplySpec = None,
                 starttls_extra: bytes = b"",
                 fake_tls_reply: bytes | None = b"500 5.5.2 Error: command not recognized\r\n",
                 implicit_tls_options: Any = None,
                 auth: dict[str, str] | None = None,
                 auth_mechanisms: str = "PLAIN LOGIN",
                 silent_on: tuple[str, ...] = (),
                 drop_on: tuple[str, ...] = ()) -> None:
        self.hostname = hostname
        self.greeting = greeting
        self.extensions = list(extensions)
        self.ehlo_reply = ehlo_reply
        self.helo_reply = helo_reply
        self.mail_reply = mail_reply
        self.rcpt_replies = rcpt_replies
        self.data_reply = data_reply
        self.final_reply = final_reply
        self.tls_options = tls_options
        self.advertise_starttls = tls_options is not None if advertise_starttls is None else advertise_starttls
        self.starttls_reply = starttls_reply
        self.starttls_extra = starttls_extra
        self.fake_tls_reply = fake_tls_reply
        self.implicit_tls_options = implicit_tls_options
        self.auth = auth
        self.auth_mechanisms = auth_mechanisms
        self.silent_on = {v.upper() for v in silent_on}
        self.drop_on = {v.upper() for v in drop_on}
        self.sessions: list[ScriptedSession] = []
        self.messages: list[ReceivedMessage] = []
        self.commands: list[str] = []
        self.port: int | None = None
        self._listener: Any = None
        self._protocols: set[_Protocol] = set()
        self._waiting: list[defer.Deferred] = []

    def buildProtocol(self, addr: Any) -> _Protocol:
        return _Protocol(self, self.implicit_tls_options is not None)

    def start(self, reactor: Any = None) -> int:
        if reactor is None:
            from twisted.internet import reactor
        factory: protocol.Factory = self
        if self.implicit_tls_options is not None:
            factory = TLSMemoryBIOFactory(self.implicit_tls_options, False, self)
            factory.noisy = False
        self._listener = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self._listener.getHost().port
        return self.port

    def wait_closed(self) -> defer.Deferred:
        """Fires once every connection to this server is closed."""
        if not self._protocols:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening, abort any connection still open, wait until all are gone."""
        if self._listener is not None:
            yield self._listener.stopListening()
            self._listener = None
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.abortConnection()
        yield self.wait_closed()
