"""
service: assembles the daemon's services from the configuration.

JOB
    :func:`make_service` builds the service tree that ``twistd -n mailrelay``
    runs: the managed Redis (when neither ``redis.url`` nor
    ``redis.sentinels`` is set), the storage (connection to Redis), the
    managed PostgreSQL (service ``postgresql``, when ``archive.url`` is
    empty), the archive (:class:`mailrelay.services.archive.ArchiveService`:
    the archive database's pools; it prepares the schema in the background,
    so no start step waits for PostgreSQL), the archive's partition
    maintenance (:class:`mailrelay.services.archivemaint.ArchiveMaintenance`,
    from the schema's readiness on, every hour), the archiver
    (:class:`mailrelay.services.archiver.ArchiverService`: the event stream
    into the archive, once the schema is ready), delivery
    (when enabled), webhooks (when any is configured), the password checker,
    the submission listeners (STARTTLS and implicit TLS, one connection
    count for both), the bounce listener (when the bounce domain and its
    listen endpoints are set; it matches reports through the archive's
    reads, like the web: Redis, then PostgreSQL at data version 2), the
    web service and last the cluster
    heartbeat. Submission and delivery's notices (DSNs) share one
    :class:`mailrelay.services.inject.Injector`, the one door into the
    queue, made once the storage is ready. Start order is that order,
    each child that has a ``when_ready`` awaited before the next starts;
    stop order is the reverse, each step finishing before the next:
    listeners close first, sessions finish their transaction or get 421,
    acknowledgements decided by the ended sessions are settled, the archiver
    finishes its batch in flight, the partition maintenance stops (a run in
    progress ends), the archive's pools are closed before the managed
    PostgreSQL stops, then Redis is released.

SECURITY
    Trusts the configuration, already validated by :mod:`mailrelay.config`;
    reads no network input itself. It decides what is exposed: listeners are
    opened only for the configured endpoints, once the storage service is
    ready (if Redis does not answer yet, submission answers 451); the
    submission listeners offer AUTH (checked against ``[submission] users``
    or, when none is configured, one generated user whose password is
    written mode 0600 in ``state_dir``), the bounce listener does not. A
    Redis whose data format is newer than this release stops the start
    (:func:`mailrelay.services.cluster.check_data_version_at_start`).

STANDARDS
    None implemented here; it wires RFC 6409 submission with STARTTLS
    (RFC 3207) and implicit TLS (RFC 8314), implemented in
    :mod:`mailrelay.smtp.server` and :mod:`mailrelay.tlsutil`.

DIAGNOSTICS
    Logs (twisted.logger): ``configuration: <warning>`` for each
    :func:`mailrelay.config.config_warnings` line; ``no [submission] users
    configured: user '<name>', password in <path> (mode 0600)``; ``using
    <redis>, key prefix '<prefix>'`` where <redis> is ``managed Redis at
    unix:<socket> (appendfsync <policy>, maxmemory <size> | none)``, ``Redis via Sentinel <host:port,
    ...> (master <name>)`` or ``external Redis at <host:port | unix:path>
    db <n>``; a warning ``Redis is not answering yet (<error>); submission
    answers 451 until it does``; the archive's lines (``archive: writes to
    <where>, reads from <where>``, one warning ``archive database at <where>:
    <error>; the archive waits, mail is accepted and delivered; retrying``,
    ``archive database at <where>: schema version <n> ready ...``, see
    :mod:`mailrelay.services.archive`) and the managed PostgreSQL's
    (:mod:`mailrelay.pgproc`); the partition maintenance's
    (:mod:`mailrelay.services.archivemaint`); the archiver's (``archiver:
    consumer <owner> of group archiver, started``, one warning while the
    archive database does not answer: :mod:`mailrelay.services.archiver`);
    ``mailrelay <version> ready``; ``stopping
    <service> failed`` with the traceback; ``mailrelay stopped``. A failed
    start logs ``mailrelay could not start: <error>`` (critical), stops the
    reactor and exits with status 1. A :class:`mailrelay.config.ConfigError`
    raised while building (state_dir or certificate problems) reaches the
    twistd plugin, which prints ``mailrelay: <error>`` and exits non-zero.

CONFIGURATION
    ``[server]`` hostname, state_dir (created if missing); ``[archive]`` url
    (empty: the managed PostgreSQL; the archive service reads the rest);
    ``[tracking]`` retention, content_retention (the partition maintenance);
    ``[redis]`` url,
    sentinels, master_name, appendfsync, maxmemory (the managed Redis's), key_prefix (logged), timeout (to
    settle acknowledgements at stop); ``[tls]`` cert, key, min_version;
    ``[submission]`` users, listen, listen_tls, max_message_size,
    max_header_size, max_recipients, idle_timeout, data_timeout,
    max_connections_per_ip, max_connections (the bounce listener reuses the
    header, recipient, timeout and per-IP limits); ``[delivery]`` enabled;
    ``[[webhooks]]`` (present or not); ``[bounces]`` domain, listen,
    max_message_size, max_connections, max_stored_bounce_size,
    max_unmatched_bounces. The services read their own keys. Owns no Redis
    data; files in ``state_dir`` are made through :mod:`mailrelay.redisproc`,
    :mod:`mailrelay.pgproc`, :mod:`mailrelay.tlsutil` and :mod:`mailrelay.services.submission`.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from mailrelay import __version__, tlsutil
from mailrelay.services.bounces import BounceHandler, BounceRecorder, load_verp
from mailrelay.services.cluster import ClusterService, check_data_version_at_start
from mailrelay.config import Config, config_warnings, parse_redis_url
from mailrelay.configvalues import format_bytes
from mailrelay.services.delivery import DeliveryService
from mailrelay.services.inject import Injector
from mailrelay.passwords import PasswordChecker
from mailrelay.pgproc import ManagedPostgres
from mailrelay.services.archive import ArchiveService
from mailrelay.services.archivemaint import ArchiveMaintenance
from mailrelay.services.archiver import ArchiverService
from mailrelay.store.archiveread import ArchiveReader
from mailrelay.store.archiveview import ArchiveView
from mailrelay.redisproc import ManagedRedis, find_redis_server, machine_memory
from mailrelay.smtp.server import ConnectionLimiter, ServerLimits, SMTPServerFactory
from mailrelay.store import Storage, connect_redis
from mailrelay.store.interfaces import ArchiveReads, BounceListenerStorage
from mailrelay.services.submission import SMTPListenerService, SubmissionHandler, ensure_first_user
from mailrelay.web.server import WebService, smtp_listener_status
from mailrelay.services.webhooks import WebhookService

log = Logger()


class StorageService(service.Service):
    """Owns the connection to Redis and the :class:`Storage` built on it."""

    name = "storage"

    def __init__(self, config: Config, managed: Any = None) -> None:
        self.config = config
        self.managed = managed
        self.redis: Any = None
        self.storage: Storage | None = None
        self.version_checked = False  # the Redis data format version (mailrelay.services.cluster)
        self.owner: str | None = None  # this daemon's identity (its heartbeat's), set by make_service

    def describe(self) -> str:
        if self.managed is not None:
            limit = format_bytes(self.managed.maxmemory) if self.managed.maxmemory else "none"
            return (f"managed Redis at unix:{self.managed.socket_path} (appendfsync "
                    f"{self.config.redis.appendfsync}, maxmemory {limit})")
        if self.config.redis.sentinels:
            sentinels = ", ".join(f"{h}:{p}" for h, p in self.config.redis.sentinels)
            return f"Redis via Sentinel {sentinels} (master {self.config.redis.master_name})"
        address = parse_redis_url(self.config.redis.url)
        where = f"unix:{address.path}" if address.path else f"{address.host}:{address.port}"
        return f"external Redis at {where} db {address.db}"

    async def when_ready(self) -> None:
        socket_path = None
        if self.managed is not None:
            await self.managed.whenReady()
            socket_path = str(self.managed.socket_path)
        self.redis = connect_redis(self.config, socket_path)
        self.storage = Storage(self.config, self.redis, owner=self.owner)
        log.info("using {redis}, key prefix {prefix!r}", redis=self.describe(),
                 prefix=self.config.redis.key_prefix)
        try:
            await self.storage.start()
        except Exception as e:
            log.warn("Redis is not answering yet ({e}); submission answers 451 until it does", e=e)
        # refuses (the daemon exits) data newer than this release understands
        self.version_checked = await check_data_version_at_start(self.storage)

    def stopService(self) -> defer.Deferred | None:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self.storage is not None:
            # acknowledgements decided by the sessions that just ended: settle them now
            await self.storage.settle_pending(self.config.redis.timeout)
            self.storage.stop()
        if self.redis is not None:
            try:
                await self.redis.disconnect()
            except Exception:
                pass


class MailrelayService(service.MultiService):
    """The daemon: children start in order, each waiting for the previous, and stop in reverse."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self._startup: defer.Deferred | None = None

    def startService(self) -> None:
        service.Service.startService(self)
        self._startup = defer.ensureDeferred(self._start())
        self._startup.addErrback(self._fatal)

    async def _start(self) -> None:
        for child in self:
            child.startService()
            when_ready = getattr(child, "when_ready", None)
            if when_ready is not None:
                await when_ready()
        log.info("mailrelay {version} ready", version=__version__)

    def _fatal(self, failure: Any) -> None:
        from twisted.internet import reactor

        if failure.check(defer.CancelledError):
            return
        log.critical("mailrelay could not start: {error}", error=failure.getErrorMessage())
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.stop()

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._startup is not None and not self._startup.called:
            self._startup.cancel()
        for child in reversed(list(self)):
            if child.running:
                try:
                    await defer.maybeDeferred(child.stopService)
                except Exception:
                    log.failure("stopping {name} failed", name=child.name)
        log.info("mailrelay stopped")


def make_service(config: Config) -> MailrelayService:
    """Build the daemon's service tree from a validated configuration."""
    top = MailrelayService(config)
    for warning in config_warnings(config):
        log.warn("configuration: {warning}", warning=warning)
    state_dir = config.state_dir
    state_dir.mkdir(parents=True, exist_ok=True)

    managed = None
    if not config.redis.url and not config.redis.sentinels:
        executable = find_redis_server()
        managed = ManagedRedis(state_dir, config.redis.appendfsync, executable,
                               maxmemory=config.redis.maxmemory.bytes_of(machine_memory()))
        managed.setName("redis")
        managed.setServiceParent(top)
    storage_service = StorageService(config, managed)
    storage_service.setServiceParent(top)

    # The archive (PostgreSQL): nothing waits for it to start; it stops after everything that
    # uses it (reverse order), and closes its pools before the managed PostgreSQL stops.
    managed_postgres = None
    if not config.archive.url:
        managed_postgres = ManagedPostgres(state_dir)
        managed_postgres.setName("postgresql")
        managed_postgres.setServiceParent(top)
    archive = ArchiveService(config, managed_postgres)
    archive.setServiceParent(top)
    # after the archive, so it stops before the archive closes its pools
    from twisted.internet import reactor  # here: the twistd plugin chose the reactor by now

    ArchiveMaintenance(archive.write, config.tracking.retention, config.tracking.content_retention,
                       reactor, schema_ready=archive.whenSchemaReady).setServiceParent(top)
    # drains the event stream into the archive once its schema is ready; stops before the pools
    archiver = ArchiverService(config, lambda: storage_service.storage, archive)
    archiver.setServiceParent(top)

    if config.tls.cert:
        cert, key = config.tls.cert, config.tls.key
    else:
        cert, key = tlsutil.ensure_self_signed(state_dir, config.hostname)
    tls_options = tlsutil.server_tls_options(cert, key, config.tls.min_version)

    users = dict(config.submission.users)
    if not users:
        username, hashed, path = ensure_first_user(state_dir)
        users[username] = hashed
        log.info("no [submission] users configured: user {user!r}, password in {path} (mode 0600)",
                 user=username, path=str(path.resolve()))

    settings = config.submission
    limits = ServerLimits(
        hostname=config.hostname,
        max_message_size=settings.max_message_size,
        max_header_size=settings.max_header_size,
        max_recipients=settings.max_recipients,
        idle_timeout=settings.idle_timeout,
        data_timeout=settings.data_timeout,
        max_connections_per_ip=settings.max_connections_per_ip,
        max_connections=settings.max_connections,
        service_name="submission",
    )

    # The one door into the queue (mailrelay.services.inject): submitted mail and the notices
    # delivery writes (DSNs) share it; made once the storage is ready, by its first user.
    injectors: list[Injector] = []

    def get_injector() -> Injector:
        from twisted.internet import reactor

        if not injectors:
            assert storage_service.storage is not None
            injectors.append(Injector(config, storage_service.storage, reactor,
                                      on_queued=delivery.wake_soon if delivery is not None else None))
        return injectors[0]

    delivery = None
    if config.delivery.enabled:
        delivery = DeliveryService(config, lambda: storage_service.storage, get_injector=get_injector)
        delivery.setServiceParent(top)

    if config.webhooks:
        # before the listeners: its consumer group must exist before the first events
        WebhookService(config, lambda: storage_service.storage).setServiceParent(top)

    # its threads run the scrypt checks of AUTH; it stops after the listeners
    password_checker = PasswordChecker()
    password_checker.setServiceParent(top)

    def handler_factory() -> SubmissionHandler:
        from twisted.internet import reactor

        assert storage_service.storage is not None
        return SubmissionHandler(config, storage_service.storage, users, reactor, tls_available=True,
                                 password_checker=password_checker, injector=get_injector())

    listeners = SubmissionListeners(limits, handler_factory, tls_options, settings.listen, settings.listen_tls)
    listeners.setServiceParent(top)

    def get_archive(primary: bool = False) -> ArchiveView:
        # one message from Redis while its keys exist, else PostgreSQL; searches from
        # PostgreSQL once the data is at the version that moved the archive there (the cluster
        # service, made last, is bound by the time anything calls this). Reads go to [archive]
        # read_url, or to url for a reader that must not lag (``primary``)
        assert storage_service.storage is not None
        return ArchiveView(storage_service.storage, ArchiveReader(archive.write if primary else archive.read),
                           in_postgres=lambda: cluster.archive_in_postgres())

    if config.bounces.domain and config.bounces.listen:
        bounce_limits = ServerLimits(
            hostname=config.hostname,
            max_message_size=config.bounces.max_message_size,
            max_header_size=settings.max_header_size,
            max_recipients=settings.max_recipients,
            idle_timeout=settings.idle_timeout,
            data_timeout=settings.data_timeout,
            max_connections_per_ip=settings.max_connections_per_ip,
            max_connections=config.bounces.max_connections,
            service_name="bounces",
        )
        # matches reports through the archive's reads: a message whose keys were released
        # (data version 2) is read from PostgreSQL, the primary (a replica could lag by more
        # than [archive] release_after: the report would find no message)
        BounceListener(config, bounce_limits, lambda: storage_service.storage, tls_options,
                       get_archive=lambda: get_archive(primary=True)).setServiceParent(top)

    # after the listeners: /readyz reports them, and the API needs the storage ready
    WebService(config, lambda: storage_service.storage,
               lambda: smtp_listener_status(top, config), get_archive=get_archive,
               archiver=lambda: archiver.state).setServiceParent(top)

    # last: its first heartbeat lists the listeners, and at stop it leaves the cluster first
    cluster = ClusterService(config, lambda: storage_service.storage, top, delivery,
                             version_checked=lambda: storage_service.version_checked)
    cluster.setServiceParent(top)
    storage_service.owner = cluster.owner  # unsettled messages name the daemon by its heartbeat
    return top


class BounceListener(service.MultiService):
    """The inbound listener for the bounce domain (started once Redis is connected)."""

    name = "bounces"

    def __init__(self, config: Config, limits: ServerLimits, get_storage: Callable[[], BounceListenerStorage],
                 tls_options: Any, *, get_archive: Callable[[], ArchiveReads]) -> None:
        super().__init__()
        self.config = config
        self.limits = limits
        self.get_storage = get_storage
        self.get_archive = get_archive
        self.tls_options = tls_options

    def startService(self) -> None:
        service.Service.startService(self)

    async def when_ready(self) -> None:
        from twisted.internet import reactor

        storage = self.get_storage()
        verp = await load_verp(self.config, storage)
        recorder = BounceRecorder(storage, self.config.bounces.max_stored_bounce_size, reactor,
                                  self.config.bounces.max_unmatched_bounces)
        handler = BounceHandler(verp, self.get_archive(), recorder)
        factory = SMTPServerFactory(self.limits, handler, self.tls_options)
        child = SMTPListenerService("bounces", self.config.bounces.listen, factory, tls_mode="STARTTLS")
        child.setServiceParent(self)
        await child.listen()


class SubmissionListeners(service.MultiService):
    """The STARTTLS and implicit-TLS submission listeners (started once Redis is connected)."""

    name = "submission"

    def __init__(self, limits: ServerLimits, handler_factory: Any, tls_options: Any,
                 listen: tuple[str, ...], listen_tls: tuple[str, ...]) -> None:
        super().__init__()
        self.limits = limits
        self.handler_factory = handler_factory
        self.tls_options = tls_options
        self.listen = listen
        self.listen_tls = listen_tls

    def startService(self) -> None:
        service.Service.startService(self)

    async def when_ready(self) -> None:
        handler = self.handler_factory()
        limiter = ConnectionLimiter(self.limits)  # one count for both listeners
        if self.listen:
            factory = SMTPServerFactory(self.limits, handler, self.tls_options, auth_possible=True,
                                        limiter=limiter)
            child = SMTPListenerService("submission", self.listen, factory, tls_mode="STARTTLS")
            child.setServiceParent(self)
            await child.listen()
        if self.listen_tls:
            factory = SMTPServerFactory(self.limits, handler, self.tls_options, implicit_tls=True,
                                        auth_possible=True, limiter=limiter)
            child = SMTPListenerService(
                "submission-tls", self.listen_tls, factory, tls_mode="implicit TLS",
                wrap_tls=lambda f: tlsutil.implicit_tls_factory(self.tls_options, f))
            child.setServiceParent(self)
            await child.listen()

    def stopService(self) -> defer.Deferred:
        return service.MultiService.stopService(self)
