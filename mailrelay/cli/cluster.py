"""
cli.cluster: ``mailrelay cluster`` (the live daemons) and ``mailrelay migrate``.

JOB
    ``mailrelay cluster`` prints one line per live daemon sharing this Redis (from the
    heartbeats :mod:`mailrelay.services.cluster` writes: host, version and data format, uptime, age
    of the last heartbeat, delivery jobs held per domain, listeners) and the stored data
    format version. ``mailrelay migrate [--force]`` runs the registered migration steps
    (``Storage.migrate``), or records the version on an empty database.

    The step 1 -> 2 copies the Redis archive into PostgreSQL: for it (and only then)
    ``mailrelay migrate`` opens the archive's database (:class:`MigrationArchive`) as the
    daemon finds it: ``[archive] url``, or with none the daemon's managed PostgreSQL
    through its socket in ``state_dir/postgresql/`` (its database ``mailrelay`` made if
    missing), which a daemon of this release must be running; it applies the schema
    migrations, and writes through mailrelay.store.archivewrite's ArchiveWriter given
    ``[tracking] retention`` and ``content_retention``: it makes the partitions of the
    older days the copy holds and leaves out what is past them.

SECURITY
    Prints host names, process ids and listening addresses read from Redis, each through
    :func:`mailrelay.cli.common.clean` (no control characters reach the terminal).

STANDARDS
    None.

DIAGNOSTICS
    Storage errors and refusals (``migrate`` while live daemons do not understand the new
    format, without ``--force``) as one line on stderr, exit status 1. The archive's:
    ``mailrelay: the daemon's managed PostgreSQL is not running (no socket in DIR)``;
    ``mailrelay: archive database at <where>: <error>; run `mailrelay migrate` again``
    (the copy so far is kept; copying again stores nothing twice). Entries the writer
    skipped because PostgreSQL refused them even made storable are listed at the end
    (``skipped message <id>: <reason>``), those past retention counted (``not copied: N
    past [tracking] retention``).

CONFIGURATION
    ``[redis]`` through :mod:`mailrelay.cli.common`; ``[archive]`` url, connect_timeout,
    statement_timeout (at least :data:`MIGRATION_STATEMENT_TIMEOUT`); ``[tracking]``
    retention, content_retention; ``[server] state_dir`` (the managed PostgreSQL's socket).
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Awaitable, Callable

from mailrelay.cli.common import archive_conninfo_or_exit, clean, load_or_exit, react_with_storage
from mailrelay.config import Config
from mailrelay.pgproc import managed_conninfo
from mailrelay.services.archive import MANAGED_DATABASE, one_line_error
from mailrelay.store import Storage
from mailrelay.store.archivedb import ArchiveDatabase, describe_conninfo, ensure_database
from mailrelay.store.archiverecords import ArchiveBatch
from mailrelay.store.archivewrite import ArchiveWriter, SkippedEntry, WriteResult
from mailrelay.timefmt import format_age

#: The statement timeout of the migration's writes (seconds), when ``[archive]
#: statement_timeout`` is shorter: a batch of 500 messages with their bodies is one COPY.
MIGRATION_STATEMENT_TIMEOUT = 60.0


def format_members(members: list[dict[str, Any]]) -> list[str]:
    """The `mailrelay cluster` table, one line per live daemon."""
    header = ("DAEMON", "VERSION", "UP", "BEAT", "DELIVERING", "LISTENERS")
    rows = []
    for m in members:
        domains = ", ".join(f"{clean(d)} {n}" for d, n in
                            sorted(m["domains"].items(), key=lambda item: (-item[1], item[0])))
        delivering = f"{m['held']} job{'' if m['held'] == 1 else 's'}" + (f" ({domains})" if domains else "")
        rows.append((clean(m["owner"]), f"{clean(m['version'])}/data {m['data_version']}",
                     format_age(m["uptime"]), f"{m['age']:.1f}s ago", delivering,
                     ", ".join(clean(item) for item in m["listeners"]) or "-"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [("  ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + "  " + r[-1]).rstrip()
            for r in [header, *rows]]


async def run_cluster(storage: Storage) -> None:
    members = await storage.cluster_members()
    stored = await storage.stored_data_version()
    for line in format_members(members):
        print(line)
    version = stored if stored is not None else "not recorded yet"
    print(f"{len(members)} live daemon{'' if len(members) == 1 else 's'}; "
          f"data format version {version} (this mailrelay: {storage.DATA_VERSION})")


class MigrationArchive:
    """The PostgreSQL archive as ``mailrelay migrate`` writes it (a MigrationContext's archive):
    ArchiveWriter given the retentions, so the days of the copy that a new archive has no
    partition for are made, and those past retention left out. Failures become one line
    (SystemExit)."""

    def __init__(self, database: ArchiveDatabase, where: str, conninfo: str, config: Config) -> None:
        self.database = database
        self.where = where
        self.conninfo = conninfo
        self.writer = ArchiveWriter(database, retention=config.tracking.retention,
                                    content_retention=config.tracking.content_retention)
        self.skipped: list[SkippedEntry] = []

    @classmethod
    async def open(cls, config: Config) -> MigrationArchive:
        """The archive's database made ready (the managed one's database created, the schema
        migrated), or SystemExit with one line saying why not."""
        connect_timeout = max(2, math.ceil(config.archive.connect_timeout))
        conninfo = archive_conninfo_or_exit(config)
        managed = None if config.archive.url else managed_conninfo(config.state_dir)
        database = ArchiveDatabase(conninfo, connect_timeout=connect_timeout,
                                   statement_timeout=max(config.archive.statement_timeout,
                                                         MIGRATION_STATEMENT_TIMEOUT))
        archive = cls(database, describe_conninfo(conninfo), conninfo, config)
        try:
            await archive.guarded(archive._prepare(managed, connect_timeout))
        except SystemExit:
            database.close()
            raise
        return archive

    async def _prepare(self, managed: str | None, connect_timeout: int) -> None:
        if managed is not None:
            await ensure_database(managed, MANAGED_DATABASE, connect_timeout=connect_timeout)
        await self.database.migrate()

    async def guarded(self, call: Awaitable[Any]) -> Any:
        """``await call``; any failure as one line naming the archive's database (SystemExit)."""
        try:
            return await call
        except Exception as e:
            raise SystemExit(f"mailrelay: archive database at {self.where}: "
                             f"{one_line_error(e, self.conninfo)}; run `mailrelay migrate` again") from e

    async def write(self, batch: ArchiveBatch) -> WriteResult:
        result: WriteResult = await self.guarded(self.writer.write(batch))
        self.skipped += result.skipped
        return result

    def close(self) -> None:
        self.database.close()


async def run_migrate(storage: Storage, force: bool,
                      open_archive: Callable[[], Awaitable[MigrationArchive]]) -> None:
    before, created = await storage.bounded(storage.data_version())
    if created:
        print(f"empty database: data format version {before} recorded")
        return
    opened: list[MigrationArchive] = []

    async def archive() -> MigrationArchive:
        if not opened:
            opened.append(await open_archive())
        return opened[0]

    try:
        steps = await storage.migrate(force=force, report=lambda text: print(text, flush=True),
                                      archive=archive)
    finally:
        for each in opened:
            each.close()
    for each in opened:
        expired = [entry for entry in each.skipped if entry.expired]
        for entry in each.skipped:
            if not entry.expired:
                print(f"skipped {entry.kind} {clean(entry.id)}: {clean(entry.reason)}")
        if expired:
            print(f"not copied: {len(expired):,} past [tracking] retention")
    if steps:
        print(f"migrated from data format version {before} to {steps[-1][1]}")
    else:
        print(f"data format version {before}: nothing to migrate")


def cmd_cluster(args: argparse.Namespace) -> int:
    return react_with_storage(args, run_cluster)


def cmd_migrate(args: argparse.Namespace) -> int:
    config = load_or_exit(getattr(args, "config", None))
    return react_with_storage(args, lambda storage: run_migrate(storage, args.force,
                                                                lambda: MigrationArchive.open(config)),
                              config)


def add_cluster_parsers(sub: Any) -> None:
    """``mailrelay cluster`` and ``mailrelay migrate`` (called by mailrelay.cli)."""
    cluster = sub.add_parser("cluster", help="list the live daemons sharing this Redis")
    cluster.add_argument("-c", "--config", help="TOML configuration file")
    cluster.set_defaults(func=cmd_cluster)
    migrate = sub.add_parser("migrate", help="migrate the Redis data to this release's format")
    migrate.add_argument("-c", "--config", help="TOML configuration file")
    migrate.add_argument("--force", action="store_true",
                         help="migrate even while live daemons do not understand the new format")
    migrate.set_defaults(func=cmd_migrate)
