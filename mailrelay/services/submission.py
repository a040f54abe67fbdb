"""
submission: the SMTP endpoint where applications hand over their mail.

JOB
    Accepts mail from authenticated users (SMTP AUTH) and trusted networks,
    and hands it, with the Received field of this hop, to the one door into the
    queue (:mod:`mailrelay.services.inject`, source SUBMISSION), which completes
    it (Message-ID, Date; tag and metadata headers taken out), signs it and
    queues it in Redis; the rate limit (MAIL) and the suppression list (RCPT)
    are the injector's checks too, asked at those stages.
    ``250 2.0.0 Ok: queued as <id>`` is sent only
    once the message and one delivery job per recipient are stored. The jobs
    stay unclaimable until the acknowledgement is settled: confirmed once the
    250 is sent, cancelled (deleted) when the client got 451 instead, so that
    a 451 always means "not delivered" while the daemon lives.

SECURITY
    Clients are untrusted until they authenticate. Never an open relay: RCPT
    without AUTH or a trusted network gets ``530 5.7.0``. AUTH is offered only
    over TLS unless ``require_tls_for_auth = false``. Failed AUTH is throttled
    per client address (IPv6: per /64) for all daemons together, in Redis: a
    check counts as a failure when it starts and is refunded when it succeeds,
    so concurrent attempts get no more checks than the limit; when Redis does
    not answer, AUTH is refused (fail closed). Passwords are checked (scrypt)
    off the reactor thread, two at a time (:mod:`mailrelay.passwords`); an
    unknown user's password is checked against a decoy hash of the same cost,
    so the time of the answer does not tell which users exist.

STANDARDS
    RFC 5321, RFC 6409 (message submission), RFC 3207, RFC 8314, RFC 4954,
    RFC 3848 (Received "with" keywords), RFC 5322 (header fields).

DIAGNOSTICS
    ``451 4.3.0`` Redis did not store the message in time (it is not queued, and what
    Redis stored late is cancelled: ``storage: cancelled <id>``), or the message queued
    earlier with the same Message-ID (``dedupe_window``) is not settled yet;
    ``452 4.3.1`` Redis is full; ``451 4.7.0`` user over its rate limit;
    ``535 5.7.8`` bad credentials; ``421 4.7.0`` too many AUTH failures;
    ``454 4.7.0`` AUTH refused because Redis did not answer the failure count;
    ``550 5.7.1`` From domain not a sender domain (``require_known_domain``);
    ``451 4.3.5`` the sender domain's DKIM key cannot be used now (see :mod:`mailrelay.services.domains`).

CONFIGURATION
    ``[submission]`` listen, listen_tls, users, trusted_networks,
    max_message_size, max_recipients, require_tls_for_auth, idle_timeout,
    data_timeout, max_connections_per_ip, max_connections, max_header_size,
    auth_failures_per_ip; rate_limit_per_user, dedupe_window and require_known_domain are
    applied by :mod:`mailrelay.services.inject`. Redis data: through :mod:`mailrelay.store` only.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
import tomllib
from pathlib import Path
from typing import Any, Mapping

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from mailrelay.mail import message as msg
from mailrelay.smtp import session as smtpsession
from mailrelay.clientkey import client_key
from mailrelay.config import Config, Rate
from mailrelay.services.inject import Draft, Injector, Source
from mailrelay.passwords import PasswordChecker, decoy_hash, hash_password
from mailrelay.smtp.server import SMTPServerFactory
from mailrelay.smtp.session import Reply, Session, Transaction
from mailrelay.store import NewMessage, StorageFull, StorageUnavailable
from mailrelay.store.interfaces import InjectorStorage, SendingLimits

log = Logger()

#: Name of the generated first user, and the file holding its password.
FIRST_USER = "mailrelay"
CREDENTIALS_FILE = "credentials"


def queued_reply(message_id: str) -> Reply:
    return Reply(250, "2.0.0", f"Ok: queued as {message_id}")


def duplicate_reply(message_id: str) -> Reply:
    """[submission] dedupe_window: the id of the message queued earlier with this Message-ID."""
    return Reply(250, "2.0.0", f"Ok: queued as {message_id} (same Message-ID as a message "
                               "already queued: not queued again)")


# -- users -----------------------------------------------------------------------


def ensure_first_user(state_dir: Path) -> tuple[str, str, Path]:
    """
    The generated first user: (username, password hash, credentials path).
    The password is written once to ``state_dir/credentials`` (mode 0600) and
    read back on later starts.
    """
    path = state_dir / CREDENTIALS_FILE
    if path.exists():
        with open(path, "rb") as f:
            data = tomllib.load(f)
        username, password = data["username"], data["password"]
    else:
        username, password = FIRST_USER, secrets.token_urlsafe(18)
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# mailrelay: the generated first SMTP AUTH user (written once).\n"
                    "# Replace it by [submission] users in the configuration.\n"
                    f'username = "{username}"\npassword = "{password}"\n')
    return username, hash_password(password, log_n=12), path


class Authenticator:
    """Checks user passwords off the reactor, remembering recent successes.

    scrypt runs through a :class:`mailrelay.passwords.PasswordChecker` (a few at once,
    the rest queued), and concurrent checks of the same credentials share one
    computation: a burst of sessions of one user on a cold cache costs one scrypt.
    An unknown user's password is checked too, against a decoy hash with the cost of
    the real ones (:func:`mailrelay.passwords.decoy_hash`): the same work, the same time.
    """

    CACHE_SIZE = 1024
    CACHE_SECONDS = 600.0

    def __init__(self, users: Mapping[str, str], checker: PasswordChecker) -> None:
        self.users = dict(users)
        self.checker = checker
        self._decoy = decoy_hash(self.users.values())
        self._key = os.urandom(32)
        self._cache: dict[bytes, float] = {}
        self._pending: dict[bytes, list[defer.Deferred]] = {}  # cache key -> waiters

    def _cache_key(self, username: str, password: bytes) -> bytes:
        return hmac.new(self._key, username.encode() + b"\0" + password, hashlib.sha256).digest()

    async def check(self, username: str, password: bytes) -> bool:
        hashed = self.users.get(username)
        known = hashed is not None
        key = self._cache_key(username, password)
        now = time.monotonic()
        if self._cache.get(key, 0) > now:  # only successes are cached
            return True
        waiters = self._pending.get(key)
        if waiters is not None:  # the same credentials are being checked: share the result
            d: defer.Deferred = defer.Deferred()
            waiters.append(d)
            return await d
        self._pending[key] = waiters = []
        try:
            ok = await self.checker.check(password, hashed if known else self._decoy)
        except Exception as e:
            del self._pending[key]
            for d in waiters:
                d.errback(e)
            raise
        del self._pending[key]
        ok = ok and known
        if ok:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = time.monotonic() + self.CACHE_SECONDS
        for d in waiters:
            d.callback(ok)
        return ok


class AuthThrottle:
    """
    ``[submission] auth_failures_per_ip``, for every daemon on the Redis: a password check
    counts as a failure when it starts (in Redis, :meth:`Storage.claim_auth_check`) and is
    refunded when it succeeds, so concurrent attempts cannot run more checks than the
    limit, and N daemons do not allow N times the attempts. Clients found over the limit
    are remembered here until their window moves, so that their next AUTH is refused
    without a round trip.
    """

    MAX_REMEMBERED = 10_000

    def __init__(self, rate: Rate, storage: SendingLimits, clock: Any) -> None:
        self.rate = rate
        self.storage = storage
        self.clock = clock
        self._blocked_until: dict[str, float] = {}

    def blocked(self, host: str | None) -> bool:
        """Known to be over the limit (the Redis count decides for everyone else)."""
        client = client_key(host)
        until = self._blocked_until.get(client)
        if until is None:
            return False
        if until > self.clock.seconds():
            return True
        del self._blocked_until[client]
        return False

    async def claim(self, host: str | None) -> str | None:
        """A token for one check, or None when the client is over the limit. Raises when
        Redis does not answer (:class:`StorageUnavailable` after ``[redis] timeout``)."""
        client = client_key(host)
        claim = await self.storage.claim_auth_check(client, self.rate.count, self.rate.period)
        if claim.token is None:
            if len(self._blocked_until) >= self.MAX_REMEMBERED:
                self._blocked_until.clear()
            self._blocked_until[client] = self.clock.seconds() + claim.retry_after
        return claim.token

    def refund(self, host: str | None, token: str) -> None:
        """The check ``token`` was claimed for succeeded (not waited for: it only lowers a count)."""
        d = defer.ensureDeferred(self.storage.refund_auth_check(client_key(host), token))
        d.addErrback(lambda f: log.warn("submission: AUTH failure count not refunded: {e}",
                                        e=f.getErrorMessage()))


# -- the handler ---------------------------------------------------------------------


class SubmissionHandler:
    """The submission policy: who may send; what they send goes through the injector."""

    def __init__(self, config: Config, storage: InjectorStorage, users: Mapping[str, str],
                 clock: Any, tls_available: bool, on_queued: Any = None,
                 password_checker: PasswordChecker | None = None, injector: Injector | None = None) -> None:
        self.config = config
        self.settings = config.submission
        self.hostname = config.hostname
        self.storage = storage
        # without a running checker (a handler built only to prepare messages) AUTH answers 451
        self.authenticator = Authenticator(users, password_checker or PasswordChecker())
        self.throttle = AuthThrottle(self.settings.auth_failures_per_ip, storage, clock)
        self.trusted = self.settings.trusted_networks
        self.tls_available = tls_available
        # the one door into the queue (shared with delivery's notices in the daemon)
        self.injector = injector or Injector(config, storage, clock, on_queued=on_queued)

    def is_trusted(self, session: Session) -> bool:
        if not self.trusted or session.peer_host is None:
            return False
        return _in_networks(session.peer_host, self.trusted)

    def auth_offered(self, session: Session) -> bool:
        return session.tls or not self.settings.require_tls_for_auth

    def auth_throttled(self, session: Session) -> bool:
        return self.throttle.blocked(session.peer_host)

    def authenticate(self, session: Session, username: str, password: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self._authenticate(session, username, password))

    async def _authenticate(self, session: Session, username: str, password: bytes) -> bool | Reply:
        try:
            token = await self.throttle.claim(session.peer_host)
        except Exception as e:  # fail closed: no count, no check
            log.warn("submission: AUTH from {peer} refused (454): the failure count in Redis "
                     "is unavailable: {e}", peer=session.peer_host, e=e)
            return smtpsession.AUTH_UNAVAILABLE
        if token is None:
            return smtpsession.AUTH_THROTTLED
        ok = await self.authenticator.check(username, password)
        if ok:
            self.throttle.refund(session.peer_host, token)
        return ok

    def check_sender(self, session: Session, sender: str) -> Reply | None | defer.Deferred:
        return self.injector.check_sender(Source.SUBMISSION, session.user)

    def check_recipient(self, session: Session, recipient: str) -> Reply | None | defer.Deferred:
        if session.user is None and not self.is_trusted(session):
            return smtpsession.AUTH_REQUIRED  # never an open relay
        return self.injector.check_recipient(Source.SUBMISSION, recipient)

    def accept_message(self, session: Session, transaction: Transaction, content: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self._accept(session, transaction, content))

    async def _accept(self, session: Session, transaction: Transaction, content: bytes) -> Reply:
        draft = self.draft(session, transaction, content)
        try:
            result = await self.injector.inject(draft, source=Source.SUBMISSION)
        except StorageFull as e:
            log.error("submission: Redis is full, message {id} refused: {e}", id=draft.id, e=e)
            return smtpsession.STORAGE_FULL
        except StorageUnavailable as e:
            log.warn("submission: message {id} not queued, answered 451: {e}", id=draft.id, e=e)
            return smtpsession.STORAGE_UNAVAILABLE
        if result.refused is not None:
            return result.refused
        message_id = result.id
        if result.duplicate:
            log.info("submission: not queued again: same Message-ID as {id}, user {user}",
                     id=message_id, user=session.user or "-")
            return duplicate_reply(message_id)
        user, n, size = session.user or "-", len(draft.recipients), result.size
        # The line of every message, rendered here: twisted.logger's own formatting of five
        # fields costs more than the rest of the log call (the fields stay in the event).
        text = f"submission: queued {message_id} from <{draft.sender}> for {n} recipient(s), {size} bytes, user {user}"
        log.info(text.replace("{", "{{").replace("}", "}}"), id=message_id, sender=draft.sender,
                 n=n, size=size, user=user)
        return queued_reply(message_id)

    def draft(self, session: Session, transaction: Transaction, content: bytes) -> Draft:
        """The message of a transaction as the injector takes it, with the Received field of this hop."""
        draft = Draft(sender=transaction.sender, recipients=list(transaction.recipients), content=content,
                      user=session.user, client=session.peer_host)
        draft.received = self.received_field(session, transaction, draft.id)
        return draft

    def prepare(self, session: Session, transaction: Transaction, content: bytes) -> NewMessage:
        """The message as it is queued: completed, with its tag, metadata and summary (not signed)."""
        return self.injector.prepare(self.draft(session, transaction, content), Source.SUBMISSION)

    def received_field(self, session: Session, transaction: Transaction, message_id: str) -> msg.HeaderField:
        """The Received: field we prepend (RFC 5321 4.4, RFC 3848 "with" keywords)."""
        protocol = "ESMTP" if session.esmtp else "SMTP"
        if session.tls:
            protocol += "S"
        if session.user is not None:
            protocol += "A"
        helo = _received_helo(session.helo or "unknown")
        client = session.peer_host or "local"
        if ":" in client:
            client = "IPv6:" + client
        text = f"from {helo} ([{client}]) by {self.hostname} (mailrelay) with {protocol} id {message_id}"
        if len(transaction.recipients) == 1:
            text += f" for <{transaction.recipients[0]}>"
        text += "; " + msg.date_now()
        return msg.make_field("Received", text)


@functools.lru_cache(maxsize=4096)
def _in_networks(host: str, networks: tuple[Any, ...]) -> bool:
    """Whether the IP address ``host`` is in one of ``networks`` (False when not an address)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in networks)


@functools.lru_cache(maxsize=1024)
def _received_helo(helo: str) -> str:
    """The EHLO name as shown in Received: printable, no parentheses, at most 100 characters."""
    return "".join(c for c in helo if c.isprintable() and c not in "()")[:100]


# -- the service -----------------------------------------------------------------------


def describe_address(address: Any) -> str:
    if hasattr(address, "port"):
        host = address.host
        return f"[{host}]:{address.port}" if ":" in host else f"{host}:{address.port}"
    return str(getattr(address, "name", address))


class SMTPListenerService(service.Service):
    """Listens on endpoint strings with one factory; closes sessions politely on stop."""

    #: Seconds a transaction in progress may take to finish at shutdown.
    SHUTDOWN_GRACE = 30.0

    def __init__(self, name: str, descriptions: tuple[str, ...], factory: SMTPServerFactory,
                 wrap_tls: Any = None, tls_mode: str = "plain") -> None:
        self.setName(name)
        self.descriptions = descriptions
        self.factory = factory
        self.wrap_tls = wrap_tls
        self.tls_mode = tls_mode
        self.ports: list[Any] = []

    async def listen(self) -> None:
        from twisted.internet import reactor

        outer = self.wrap_tls(self.factory) if self.wrap_tls else self.factory
        for description in self.descriptions:
            port = await endpoints.serverFromString(reactor, description).listen(outer)
            self.ports.append(port)
            log.info("{service} listening on {address} ({mode})", service=self.name,
                     address=describe_address(port.getHost()), mode=self.tls_mode)

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        ports, self.ports = self.ports, []
        await defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports])
        await self.factory.shutdown(self.SHUTDOWN_GRACE)
