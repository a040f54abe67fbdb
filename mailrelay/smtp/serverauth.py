"""
serverauth: the AUTH command of the SMTP server (PLAIN and LOGIN).

JOB
    :class:`AuthCommand`, mixed into
    :class:`mailrelay.smtp.server.SMTPServerProtocol`: the AUTH exchange of
    RFC 4954 with the PLAIN (RFC 4616) and LOGIN mechanisms, initial
    response or challenges, the password checked by the
    :class:`~mailrelay.smtp.session.SMTPHandler` (``authenticate``); on
    success the session's ``user`` is set.

SECURITY
    Credentials come from untrusted clients. AUTH is offered and accepted only
    where the handler says (``auth_offered``: over TLS), never inside a mail
    transaction or twice, and refused with ``421`` and a close when the
    handler throttles the client (``auth_throttled``); a response that is not
    base64, not UTF-8, or a PLAIN message without three fields gets ``501``;
    an authorization identity other than the user fails. A success counts for
    the session it was asked in only (STARTTLS starts a new one). AUTH lines
    are limited to 12,288 octets (:data:`mailrelay.smtp.session.MAX_AUTH_LINE`).

STANDARDS
    RFC 4954 (AUTH), RFC 4616 (PLAIN), the LOGIN mechanism as
    draft-murchison-sasl-login describes it.

DIAGNOSTICS
    Logs each success and failure (service, user, client address) through
    ``twisted.logger``; failures get ``535 5.7.8``.

CONFIGURATION
    None here: what is offered and who may log in is the handler's.
"""

from __future__ import annotations

import base64
import binascii

from twisted.logger import Logger

from mailrelay.smtp.session import (
    ALREADY_AUTHENTICATED, AUTH_ABORTED, AUTH_DECODE_ERROR, AUTH_FAILED, AUTH_IN_TRANSACTION, AUTH_NOT_AVAILABLE,
    AUTH_OK, AUTH_THROTTLED, ENCRYPTION_REQUIRED, MODE_AUTH, MODE_COMMAND, NEED_HELO, UNKNOWN_AUTH_MECHANISM, Reply)

log = Logger()


class AuthCommand:
    """AUTH of :class:`~mailrelay.smtp.server.SMTPServerProtocol`, which this is mixed into: it
    uses the protocol's session, limits, handler, factory and mode, its AUTH state
    (``_auth_state``) and its ``_reply``, ``_error``, ``_await`` and ``_close``."""

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
            self._mode = MODE_AUTH
            self._reply(Reply(334, "", "" if mechanism == "PLAIN" else "VXNlcm5hbWU6"))
            return
        self._auth_state = (mechanism, 0, None)
        self._auth_step(initial.encode())

    def _auth_continue(self, line: bytes) -> None:
        self._mode = MODE_COMMAND
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
            self._mode = MODE_AUTH
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
