"""
archive: the daemon's connections to the archive database, and its schema made ready (issue 18).

JOB
    :class:`ArchiveService` (the twistd service named ``archive``) owns the
    two :class:`mailrelay.store.archivedb.ArchiveDatabase` pools of the
    daemon: ``.write`` on ``[archive] url`` (the archiver, migrations,
    partition maintenance) and ``.read`` on ``read_url`` (or ``url``: the
    API, the status page). With no ``url`` both lead to the database
    ``mailrelay`` of the managed PostgreSQL (:mod:`mailrelay.pgproc`), made
    here when missing; :func:`archive_conninfos` says which (``mailrelay
    archive status`` uses it too).

    Starting it never waits for PostgreSQL: in the background it waits for
    the managed server (if any), creates the database, applies the schema
    migrations and makes the partitions of today and the next days
    (:data:`PARTITION_DAYS` in all), retrying every 2 s, doubling to 30 s,
    until that succeeds; then ``schema_ready`` is true and the Deferreds of
    ``whenSchemaReady()`` fire. Mail is accepted and delivered meanwhile:
    the queue never depends on the archive. ``stopService`` ends the retries
    (a database call already running finishes, within its timeouts) and
    closes both pools; it stops before the managed PostgreSQL, so the server
    never cuts the pools' connections.

        archive = ArchiveService(config, managed_postgres)
        archive.setServiceParent(top)
        yield archive.whenSchemaReady()     # then use archive.write / archive.read

SECURITY
    Connection strings come from the configuration; their passwords are
    never logged (:func:`mailrelay.store.archivedb.describe_conninfo`, and a
    password found in an error message is replaced by ``********``).

STANDARDS
    None (PostgreSQL through :mod:`mailrelay.store.archivedb`).

DIAGNOSTICS
    Logs ``archive: writes to <where>, reads from <where>`` at start, where
    <where> is ``<host>:<port> db <name> user <user>`` or ``unix:<directory>
    db <name> user <user>``; ``archive: created database mailrelay in the
    managed PostgreSQL``; ONE warning while the database cannot be reached or
    prepared, ``archive database at <where>: <error>; the archive waits, mail
    is accepted and delivered; retrying`` (again only if the kind of error
    changes; each further failure is a debug line ``archive database at
    <where> still not ready: <error>; next try in <n>s``); and once ready
    ``archive database at <where>: schema version
    <n> ready (applied <versions> | up to date), <k> partitions made``.

CONFIGURATION
    ``[archive]`` url, read_url, statement_timeout, connect_timeout. Owns no
    Redis data; the tables are those of ``mailrelay/store/sql/`` (applied by
    :mod:`mailrelay.store.migrations`).
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay.config import Config
from mailrelay.configvalues import MASK, parse_conninfo
from mailrelay import pgproc
from mailrelay.pgproc import ManagedPostgres
from mailrelay.store import migrations
from mailrelay.store.archivedb import ArchiveDatabase, describe_conninfo, ensure_database, with_dbname

log = Logger()

MANAGED_DATABASE = "mailrelay"  # the archive's database in the managed PostgreSQL
PARTITION_DAYS = 3  # today and the next days, made at start (maintenance keeps them ahead)
RETRY_START = 2.0  # seconds before the first retry, doubling
RETRY_MAX = 30.0


def archive_conninfos(config: Config, managed_conninfo: str | None = None) -> tuple[str, str]:
    """The archive's (write, read) conninfos: ``[archive] url`` and ``read_url`` (else url); with
    no url, the database ``mailrelay`` of the managed PostgreSQL (``managed_conninfo``, else the
    one under ``state_dir``, running or not)."""
    settings = config.archive
    if managed_conninfo is None and settings.url:
        return settings.url, settings.read_url or settings.url
    managed = with_dbname(managed_conninfo or pgproc.managed_conninfo(config.state_dir), MANAGED_DATABASE)
    return managed, managed


def one_line_error(error: BaseException, conninfo: str) -> str:
    """An exception as one log line, with the conninfo's password (if any) masked."""
    text = " ".join(str(error).split()) or type(error).__name__
    password = parse_conninfo(conninfo).get("password")
    return text.replace(password, MASK) if password else text


class ArchiveService(service.Service):
    """The archive's write and read pools; prepares the schema in the background."""

    name = "archive"

    def __init__(self, config: Config, managed: ManagedPostgres | None = None, *,
                 retry_start: float = RETRY_START, retry_max: float = RETRY_MAX) -> None:
        settings = config.archive
        self.managed = managed
        self.url, self.read_url = archive_conninfos(config, managed.conninfo if managed else None)
        self.connect_timeout = max(2, math.ceil(settings.connect_timeout))
        timeouts: dict[str, Any] = {"statement_timeout": settings.statement_timeout,
                                    "connect_timeout": self.connect_timeout}
        self.write = ArchiveDatabase(self.url, **timeouts)
        self.read = ArchiveDatabase(self.read_url, **timeouts)
        self.schema_ready = False
        self.schema_version: int | None = None
        self.retry_start = retry_start
        self.retry_max = retry_max
        self._waiters: list[defer.Deferred[None]] = []
        self._task: defer.Deferred[None] | None = None
        self._interruptible: defer.Deferred[Any] | None = None  # a sleep or the managed server's readiness
        self._stopping = False

    def describe(self, conninfo: str | None = None) -> str:
        """Where ``conninfo`` (default: the write url) leads, without the password."""
        return describe_conninfo(self.url if conninfo is None else conninfo)

    def whenSchemaReady(self) -> defer.Deferred[None]:
        """Fires once the schema is migrated and today's partitions exist (at once if they do);
        errbacks with CancelledError if the service stops first. Cancelling it is harmless."""
        if self.schema_ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred(lambda waiter: self._forget(waiter))
        self._waiters.append(d)
        return d

    def _forget(self, d: defer.Deferred[None]) -> None:
        if d in self._waiters:
            self._waiters.remove(d)

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        log.info("archive: writes to {write}, reads from {read}", write=self.describe(),
                 read=self.describe(self.read_url))
        self._task = defer.ensureDeferred(self._prepare())
        self._task.addErrback(self._prepare_failed)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._interruptible is not None:
            self._interruptible.cancel()
        if self._task is not None:
            await self._task  # a database call already running ends within its timeouts
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(defer.CancelledError("the archive service stopped"))
        for pool in (self.write, self.read):
            pool.close()

    def _prepare_failed(self, failure: Any) -> None:
        if not failure.check(defer.CancelledError):
            log.failure("archive: preparing the database failed", failure)

    # -- the background preparation ----------------------------------------------------

    async def _interrupt_on_stop(self, d: defer.Deferred[Any]) -> Any:
        self._interruptible = d
        try:
            return await d
        finally:
            self._interruptible = None

    async def _prepare(self) -> None:
        from twisted.internet import reactor

        delay = self.retry_start
        warned: type | None = None
        while not self._stopping:
            try:
                applied, made = await self._prepare_once()
            except defer.CancelledError:
                return
            except Exception as e:
                if self._stopping:
                    return
                if type(e) is not warned:
                    warned = type(e)
                    log.warn("archive database at {where}: {error}; the archive waits, mail is "
                             "accepted and delivered; retrying", where=self.describe(),
                             error=one_line_error(e, self.url))
                else:
                    log.debug("archive database at {where} still not ready: {error}; next try in "
                              "{delay:g}s", where=self.describe(), error=one_line_error(e, self.url),
                              delay=delay)
                try:
                    await self._interrupt_on_stop(task.deferLater(reactor, delay, lambda: None))
                except defer.CancelledError:
                    return
                delay = min(delay * 2, self.retry_max)
                continue
            self.schema_ready = True
            log.info("archive database at {where}: schema version {version} ready ({applied}), "
                     "{made} partitions made", where=self.describe(), version=self.schema_version,
                     applied=f"applied {', '.join(map(str, applied))}" if applied else "up to date",
                     made=made)
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)
            return

    async def _prepare_once(self) -> tuple[list[int], int]:
        """Wait for the managed server, make its database, migrate, make the partitions."""
        if self.managed is not None:
            await self._interrupt_on_stop(self.managed.whenReady())
            if self._stopping:
                raise defer.CancelledError()
            created = await ensure_database(self.managed.conninfo, MANAGED_DATABASE,
                                            connect_timeout=self.connect_timeout)
            if created:
                log.info("archive: created database {db} in the managed PostgreSQL", db=MANAGED_DATABASE)
        applied = await self.write.migrate()
        if self._stopping:
            raise defer.CancelledError()
        self.schema_version = migrations.latest_version()
        today = datetime.datetime.now(datetime.timezone.utc).date()
        made = await self.write.create_partitions(today, PARTITION_DAYS)
        return applied, made
