"""
cluster: the daemons of a cluster (heartbeats) and the format version of the Redis data.

JOB
    Used by mailrelay.services.cluster, ``mailrelay cluster`` and ``mailrelay migrate``.
    Each daemon records a heartbeat (with what it is doing) every few seconds and drops it
    when it stops; :meth:`ClusterStore.cluster_members` lists the live ones. The data
    carries a format version (DATA_VERSION): a daemon checks it at start
    (:meth:`ClusterStore.check_data_version`), and :meth:`ClusterStore.migrate` runs the
    registered steps (MIGRATIONS) under a lock, refusing while a live daemon does not
    understand the new version yet.

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P cluster``            ZSET   daemon owner ids by last heartbeat (ms, Redis clock);
                                    members older than one heartbeat TTL are pruned.
    ``P cluster:<owner>``    HASH   one live daemon: hostname, pid, version, data_version
                                    (the newest format it understands), started (ms),
                                    beat (ms), interval (s), held (delivery jobs leased),
                                    domains (JSON {domain: jobs}), listeners (JSON list);
                                    expires after three missed heartbeats.
    ``P meta:version``       STRING the data format version (an integer, DATA_VERSION).
    ``P meta:migrating``     STRING lock held by ``mailrelay migrate`` while it runs
                                    (an hour, renewed by long steps as they go).
    An empty database is told from one written before versions existed by the existence
    of the other stores' keys (Keys.data_markers).
    Scripts: data_version.lua, set_version.lua, release_lock.lua, renew_lock.lua,
    heartbeat.lua, leave_cluster.lua, cluster_members.lua.

SECURITY
    A heartbeat names the daemon's host, pid and listeners: whoever reads Redis learns
    the cluster's layout (Redis is trusted). Only one migration runs at a time (the lock
    expires after an hour if its holder died).

STANDARDS
    None beyond Redis scripting.

DIAGNOSTICS
    :class:`~mailrelay.store.errors.DataVersionError` (``... has data format version N,
    newer than this mailrelay understands``; ``... too old for this mailrelay: run
    `mailrelay migrate -c FILE` first``; ``another `mailrelay migrate` is running``; ``live
    daemons do not understand data version N yet``); at start, ``... is new: data format
    version N`` and ``... has data format version N (this mailrelay writes M): run
    `mailrelay migrate` once every daemon runs this release``.

CONFIGURATION
    ``[redis] key_prefix`` (the data examined), ``[redis] timeout``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from twisted.internet import defer
from twisted.logger import Logger

from mailrelay.store.archiverecords import ArchiveBatch
from mailrelay.store.base import StoreBase
from mailrelay.store.errors import DataVersionError, StorageError
from mailrelay.store.events import COMPACT_JSON
from mailrelay.store.scripts import SCRIPTS

if TYPE_CHECKING:
    from mailrelay.store.archivewrite import WriteResult

log = Logger()

CLUSTER_MEMBERS_SCRIPT = SCRIPTS["cluster_members"]
DATA_VERSION_SCRIPT = SCRIPTS["data_version"]

#: The data format version from which the archive lives in PostgreSQL (issue 18): on older data
#: (a rolling upgrade) every archive read goes to Redis, which still holds it whole, and no
#: message's keys are released (mailrelay.store.archiverelease).
ARCHIVE_IN_POSTGRES_VERSION = 2


def archive_in_postgres(version: int | str | None) -> bool:
    """Whether data of format ``version`` (as stored; None: none recorded yet) keeps its archive
    in PostgreSQL."""
    if isinstance(version, str):
        version = int(version) if version.isdigit() else None
    return version is not None and version >= ARCHIVE_IN_POSTGRES_VERSION


HEARTBEAT_SCRIPT = SCRIPTS["heartbeat"]
LEAVE_CLUSTER_SCRIPT = SCRIPTS["leave_cluster"]
RELEASE_LOCK_SCRIPT = SCRIPTS["release_lock"]
RENEW_LOCK_SCRIPT = SCRIPTS["renew_lock"]
SET_VERSION_SCRIPT = SCRIPTS["set_version"]

#: Seconds the migration lock lives unless renewed (a step renews it as it goes).
MIGRATION_LOCK_TTL = 3600


class ArchiveSink(Protocol):
    """Where a migration step writes archive records (the PostgreSQL archive's writer)."""

    async def write(self, batch: ArchiveBatch) -> WriteResult: ...


@dataclass(frozen=True)
class MigrationContext:
    """What a migration step gets: ``report(text)`` for progress lines, ``keep_lock()`` to
    call at least every half hour in a long step (DataVersionError when the lock was
    lost), and ``archive()``, the archive database's writer, opened on first use (None
    when ``mailrelay migrate`` was given none)."""

    report: Callable[[str], None]
    keep_lock: Callable[[], Awaitable[None]]
    archive: Callable[[], Awaitable[ArchiveSink]] | None = None


class ClusterStore(StoreBase):
    """Heartbeats, the live daemons, and the data format version (check and migration)."""

    #: The data format this code reads and writes. A daemon starts on this version or the
    #: one before it (a rolling upgrade across one version step: code of version N must
    #: read and write data of version N-1 as long as it is not migrated), refuses newer
    #: data, and refuses older data until `mailrelay migrate` has run.
    #: Issue 18: becomes 2 (the archive in PostgreSQL, ARCHIVE_IN_POSTGRES_VERSION) once the
    #: archiver is wired into the daemon; the step 1 -> 2 is registered and ready below.
    DATA_VERSION = 2

    #: From this data version on the archive (messages, timelines, bodies, bounces) lives in
    #: PostgreSQL; before it, in Redis (mailrelay.store.archiveexport copies it over).
    ARCHIVE_IN_POSTGRES_VERSION = ARCHIVE_IN_POSTGRES_VERSION

    #: Migration steps, by the version they migrate from: (description, method name). A
    #: step is ``async def step(self, context: MigrationContext) -> None``. It must be
    #: idempotent (it is run again if `mailrelay migrate` was interrupted before the
    #: version was bumped) and must keep the data usable by running daemons of the
    #: previous release. Version 0 is data written before the format had a version.
    MIGRATIONS: dict[int, tuple[str, str]] = {
        0: ("record the data version (data written before data versions existed has the "
            "layout of version 1)", "_migrate_0_to_1"),
        1: ("copy the archive (messages, timelines, bodies, bounces) from Redis into PostgreSQL",
            "_migrate_1_to_2"),
    }

    #: The steps that write the PostgreSQL archive (they need ``archive``).
    ARCHIVE_STEPS: frozenset[int] = frozenset({1})

    DataVersionError = DataVersionError

    async def stored_data_version(self) -> str | None:
        """The data format version as stored (read only; None when none is recorded yet),
        bounded by ``[redis] timeout``. For ``mailrelay cluster``."""
        stored = await self.bounded(self._call("GET", self.keys.data_version))
        return None if stored is None else stored.decode()

    async def data_version(self) -> tuple[int, bool]:
        """
        The stored data format version and whether it was set just now (an empty database
        gets DATA_VERSION). Data without a version is version 0.
        """
        version, created = await self._eval(DATA_VERSION_SCRIPT,
                                             [self.keys.data_version, *self.keys.data_markers()],
                                             [self.DATA_VERSION])
        try:
            return int(version), bool(int(created))
        except ValueError:
            raise self.DataVersionError(
                f"{self.keys.data_version} is {version!r}, not a data format version") from None

    async def check_data_version(self) -> int:
        """
        At a daemon's start: the data version, set on an empty database. Raises
        DataVersionError when it is newer than DATA_VERSION or older than the version
        before it; logs a warning when it is the version before (run `mailrelay migrate`
        once every daemon runs this release).
        """
        version, created = await self._timed(defer.ensureDeferred(self.data_version()), self.timeout)
        where = f"the Redis data under key prefix {self.keys.prefix!r}"
        if created:
            log.info("{where} is new: data format version {v}", where=where, v=version)
        elif version > self.DATA_VERSION:
            raise self.DataVersionError(
                f"{where} has data format version {version}, newer than this mailrelay "
                f"understands ({self.DATA_VERSION}): upgrade mailrelay")
        elif version < self.DATA_VERSION - 1:
            raise self.DataVersionError(
                f"{where} has data format version {version}, too old for this mailrelay "
                f"({self.DATA_VERSION}): run `mailrelay migrate -c FILE` first")
        elif version < self.DATA_VERSION:
            log.warn("{where} has data format version {v} (this mailrelay writes {current}): run "
                     "`mailrelay migrate` once every daemon runs this release", where=where,
                     v=version, current=self.DATA_VERSION)
        return version

    def archive_needed(self, version: int) -> bool:
        """Whether migrating data of ``version`` to DATA_VERSION writes the PostgreSQL archive."""
        return any(step in self.ARCHIVE_STEPS for step in range(version, self.DATA_VERSION))

    async def migrate(self, *, force: bool = False, report: Callable[[str], None] | None = None,
                      archive: Callable[[], Awaitable[ArchiveSink]] | None = None
                      ) -> list[tuple[int, int, str]]:
        """
        Bring the data to DATA_VERSION one registered step at a time; returns the steps
        run as (from, to, description); ``report(text)`` is called before each (and by
        the steps, with their progress). ``archive()`` opens the PostgreSQL archive's
        writer for the steps that write it (ARCHIVE_STEPS), only when one runs. Refuses
        (DataVersionError) when the data is newer, when a step is missing, when another
        migration runs, when a step needs ``archive`` and there is none, or, unless
        ``force``, when a live daemon (heartbeat) does not understand DATA_VERSION yet.
        """
        token = os.urandom(8).hex()
        lock = self.keys.migration_lock
        if not await self.bounded(self._call("SET", lock, token, "NX", "EX", MIGRATION_LOCK_TTL)):
            raise self.DataVersionError(f"another `mailrelay migrate` is running ({lock} is set)")

        async def keep_lock() -> None:
            renewed = await self.bounded(self._eval(RENEW_LOCK_SCRIPT, [lock], [token, MIGRATION_LOCK_TTL]))
            if int(renewed) != 1:
                raise self.DataVersionError(f"the migration lost its lock ({lock}): another "
                                            "`mailrelay migrate` may be running; run it again later")

        context = MigrationContext(report=report or (lambda text: None), keep_lock=keep_lock,
                                   archive=archive)
        try:
            version, created = await self.bounded(defer.ensureDeferred(self.data_version()))
            if created or version == self.DATA_VERSION:
                return []
            if version > self.DATA_VERSION:
                raise self.DataVersionError(
                    f"the data has format version {version}, newer than this mailrelay "
                    f"understands ({self.DATA_VERSION}): upgrade mailrelay")
            if not force:
                behind = [m for m in await self.cluster_members()
                          if m["data_version"] < self.DATA_VERSION]
                if behind:
                    names = ", ".join(f"{m['owner']} (mailrelay {m['version']}, data version "
                                      f"{m['data_version']})" for m in behind)
                    raise self.DataVersionError(
                        f"live daemons do not understand data version {self.DATA_VERSION} "
                        f"yet: {names}; upgrade them first (or use --force)")
            missing = [v for v in range(version, self.DATA_VERSION) if v not in self.MIGRATIONS]
            if missing:
                raise self.DataVersionError(f"no migration step from data version {missing[0]}")
            if archive is None and self.archive_needed(version):
                raise self.DataVersionError(
                    f"migrating data version {version} to {self.DATA_VERSION} writes the archive's "
                    "PostgreSQL database, and none was given")
            done = []
            while version < self.DATA_VERSION:
                description, method = self.MIGRATIONS[version]
                context.report(f"data version {version} -> {version + 1}: {description}")
                await getattr(self, method)(context)
                swapped = await self.bounded(self._eval(
                    SET_VERSION_SCRIPT, [self.keys.data_version], [version, version + 1]))
                if int(swapped) != 1:
                    raise self.DataVersionError(
                        f"the data version changed during the migration from {version}")
                done.append((version, version + 1, description))
                version += 1
            return done
        finally:
            try:
                await self.bounded(self._eval(RELEASE_LOCK_SCRIPT, [lock], [token]))
            except StorageError:
                pass  # the lock expires by itself

    async def _migrate_0_to_1(self, context: MigrationContext) -> None:
        """Version 0 has the layout of version 1: nothing to change."""

    # -- heartbeats --

    async def heartbeat(self, owner: str, info: dict[str, Any], ttl: float) -> tuple[int, int | None]:
        """
        Record that daemon ``owner`` is alive, with ``info`` (str/int values, or JSON-able
        lists and dicts), for ``ttl`` seconds. Returns (Redis time in ms, stored data
        version or None).
        """
        flat: list[Any] = []
        for name, value in info.items():
            if isinstance(value, (list, dict)):
                value = COMPACT_JSON.encode(value)
            flat += [name, value]
        now, version = await self._timed(self._eval(
            HEARTBEAT_SCRIPT, [self.keys.cluster, self.keys.cluster_member(owner), self.keys.data_version],
            [owner, int(ttl * 1000), *flat]), self.timeout)
        return int(now), (int(version) if version not in (b"", "", None) else None)

    async def leave_cluster(self, owner: str) -> None:
        """A daemon that stops: drop its heartbeat at once."""
        await self._timed(self._eval(LEAVE_CLUSTER_SCRIPT,
                                     [self.keys.cluster, self.keys.cluster_member(owner)], [owner]),
                          self.timeout)

    async def cluster_members(self) -> list[dict[str, Any]]:
        """
        The live daemons, by start time: ``[{"owner", "hostname", "pid", "version",
        "data_version", "started_ms", "beat_ms", "age" (seconds since its last heartbeat,
        Redis clock), "uptime" (seconds), "interval" (seconds between heartbeats), "held"
        (delivery jobs leased), "domains" ({domain: jobs}), "listeners" (["submission
        127.0.0.1:2587", ...])}]``. For `mailrelay cluster` and the stats API.
        """
        reply = await self.bounded(self._eval(CLUSTER_MEMBERS_SCRIPT, [self.keys.cluster],
                                             [self.keys.cluster_member_prefix]))
        now = int(reply[0])
        members = []
        for k in range(1, len(reply), 2):
            owner, flat = reply[k].decode(), reply[k + 1]
            fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

            def number(name: str, kind: Any = int) -> Any:
                try:
                    return kind(fields.get(name, "0") or 0)
                except ValueError:
                    return kind(0)

            def loaded(name: str, default: Any) -> Any:
                try:
                    return json.loads(fields[name])
                except (KeyError, ValueError):
                    return default

            beat, started = number("beat"), number("started")
            members.append({
                "owner": owner, "hostname": fields.get("hostname", ""), "pid": number("pid"),
                "version": fields.get("version", ""), "data_version": number("data_version"),
                "started_ms": started, "beat_ms": beat, "age": max(0, now - beat) / 1000,
                "uptime": max(0, now - started) / 1000 if started else 0.0,
                "interval": number("interval", float), "held": number("held"),
                "domains": loaded("domains", {}), "listeners": loaded("listeners", []),
            })
        members.sort(key=lambda m: (m["started_ms"], m["owner"]))
        return members
