"""
cli.archive: ``mailrelay archive status``: the archive's lag, database, schema and day partitions.

JOB
    ``mailrelay archive status [--json] [-c FILE]`` shows the archive:

    - where its database is (``[archive] url``; with none, the database
      ``mailrelay`` of the daemon's managed PostgreSQL under ``state_dir``,
      found as the daemon finds it:
      :func:`mailrelay.services.archive.archive_conninfos`), never the password;
    - the archiver's lag, from Redis (the event stream's entries its consumer
      group has not acknowledged, and the age of the oldest:
      :meth:`mailrelay.store.Storage.archive_lag`);
    - the database's schema version beside this mailrelay's, the retention
      settings and, per archive table (messages, recipients, bounces,
      bodies), the days kept (partitions), the oldest and newest day, the
      size on disk (``pg_total_relation_size``: data, indexes, TOAST) and the
      estimated rows (``pg_class.reltuples``, refreshed by autovacuum; 0
      before its first pass); partitions past retention still there (no
      daemon ran the hourly maintenance) are counted.

    ``--json`` prints the same as one JSON object, with every partition. The
    database and Redis are asked at once, and one that cannot be reached
    leaves the other shown (the lag matters most while PostgreSQL is down)::

        $ mailrelay archive status
        database        unix:/var/lib/mailrelay/var/postgresql db mailrelay user mailrelay (managed)
        archive lag     1,204 events not archived yet, the oldest 3s old
        schema version  1 (this mailrelay: 1)
        retention       45d, bodies 7d
        TABLE       DAYS  OLDEST      NEWEST            SIZE        ROWS
        messages      49  2026-10-19  2026-12-06    41.2 GiB  44,102,551
        ...

    The queries run through :class:`mailrelay.store.archivedb.ArchiveDatabase`
    (its statement and connect timeouts: ``[archive]``) and
    :func:`mailrelay.cli.common.run_with_storage`, in a reactor.

SECURITY
    Reads only. The conninfo's password is never printed
    (:func:`mailrelay.store.archivedb.describe_conninfo`) and is masked in an
    error message. Table names come from the catalog (they match
    ``<table>_pYYYYMMDD``).

STANDARDS
    JSON (RFC 8259) with ``--json``; days as ISO 8601 dates.

DIAGNOSTICS
    What could be read on stdout; for each part that could not, one line on
    stderr and exit status 1: ``mailrelay: the daemon's managed PostgreSQL is
    not running (no socket in <dir>)``; ``mailrelay: archive database at
    <where>: <error>`` (unreachable, no such database, timeout); the Redis
    errors of :mod:`mailrelay.cli.common`.

CONFIGURATION
    ``[archive]`` url, read_url (shown), statement_timeout, connect_timeout;
    ``[redis]`` (through :mod:`mailrelay.cli.common`); ``[server]`` state_dir
    (the managed PostgreSQL's and Redis's sockets; a relative state_dir is
    taken from the current directory); ``[tracking]`` retention,
    content_retention (shown, and to count the partitions past them). Owns no
    data.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task

from mailrelay.cli.common import add_config_option, archive_conninfo_or_exit, load_or_exit, run_with_storage
from mailrelay.config import Config
from mailrelay.configvalues import format_bytes, format_duration
from mailrelay.services.archive import archive_conninfos, one_line_error
from mailrelay.store import Storage, migrations
from mailrelay.store.archivedb import ArchiveDatabase, describe_conninfo
from mailrelay.store.archivefeed import ArchiveLag
from mailrelay.store.archivemaint import (CONTENT_TABLES, Partition, TableSummary, first_kept_day,
                                          list_partitions, summarize)
from mailrelay.timefmt import format_age

UTC = datetime.timezone.utc


@dataclass(frozen=True)
class DatabaseStatus:
    """What the archive's database says: its schema version and partitions."""

    schema_version: int  # the database's (0: no schema yet)
    partitions: list[Partition]
    tables: list[TableSummary]
    past_retention: list[str]  # partitions still there past their retention


@dataclass(frozen=True)
class ArchiveStatus:
    """What ``mailrelay archive status`` shows; a part that could not be read is None, with
    the reason in its ``*_error`` (one ``mailrelay: ...`` line)."""

    database: str  # where the url leads (describe_conninfo)
    read_database: str  # where read_url leads
    managed: bool  # the daemon's managed PostgreSQL
    latest_version: int  # this mailrelay's schema version
    retention: float  # seconds
    content_retention: float
    contents: DatabaseStatus | None
    database_error: str | None
    lag: ArchiveLag | None  # None: no archiver group yet (or lag_error)
    lag_error: str | None

    @property
    def errors(self) -> list[str]:
        return [e for e in (self.database_error, self.lag_error) if e]

    def to_json(self) -> dict[str, Any]:
        contents = self.contents
        status: dict[str, Any] = {
            "database": self.database, "read_database": self.read_database, "managed": self.managed,
            "latest_schema_version": self.latest_version,
            "retention_s": self.retention, "content_retention_s": self.content_retention,
            "database_error": self.database_error,
            "lag": None if self.lag is None else {"entries": self.lag.entries,
                                                  "oldest_age_s": self.lag.oldest_age_seconds},
            "lag_error": self.lag_error,
        }
        if contents is not None:
            status.update({
                "schema_version": contents.schema_version,
                "tables": [{"table": t.table, "days": t.days, "oldest": _day(t.oldest), "newest": _day(t.newest),
                            "size_bytes": t.size, "rows_estimate": t.rows} for t in contents.tables],
                "total_size_bytes": sum(t.size for t in contents.tables),
                "past_retention": contents.past_retention,
                "partitions": [{"table": p.table, "name": p.name, "day": _day(p.day), "size_bytes": p.size,
                                "rows_estimate": p.rows} for p in contents.partitions],
            })
        return status


def _day(day: datetime.date | None) -> str | None:
    return day.isoformat() if day is not None else None


def past_retention(partitions: list[Partition], now: datetime.datetime, retention: float,
                   content_retention: float) -> list[str]:
    """The partitions the maintenance would drop at ``now``."""
    keep_records, keep_content = first_kept_day(now, retention), first_kept_day(now, content_retention)
    return [p.name for p in partitions
            if p.day < (keep_content if p.table in CONTENT_TABLES else keep_records)]


def _read(conn: Any) -> tuple[int, list[Partition]]:
    return migrations.current_version(conn), list_partitions(conn)


async def read_database(config: Config) -> DatabaseStatus:
    """The schema version and partitions of the archive's (write) database; SystemExit with the
    one-line reason when it cannot be read."""
    url = archive_conninfo_or_exit(config)
    database = ArchiveDatabase(url, statement_timeout=config.archive.statement_timeout,
                               connect_timeout=math.ceil(config.archive.connect_timeout), pool_max=1)
    try:
        version, partitions = await database.run(_read)
    except Exception as e:
        raise SystemExit(f"mailrelay: archive database at {describe_conninfo(url)}: {one_line_error(e, url)}")
    finally:
        database.close()
    tracking = config.tracking
    return DatabaseStatus(version, partitions, summarize(partitions),
                          past_retention(partitions, datetime.datetime.now(UTC), tracking.retention,
                                         tracking.content_retention))


async def read_lag(config: Config) -> ArchiveLag | None:
    """The archiver's lag from Redis (None: no archiver has made its group yet); SystemExit with
    the one-line reason when Redis cannot be asked."""
    found: list[ArchiveLag | None] = []

    async def ask(storage: Storage) -> None:
        found.append(await storage.bounded(storage.archive_lag()))
    await run_with_storage(config, ask)
    return found[0]


async def _part(read: Any) -> tuple[Any, str | None]:
    """``(result, None)``, or ``(None, the one-line reason)``: one part failing leaves the other."""
    try:
        return await read, None
    except SystemExit as e:
        return None, str(e.code)


async def read_status(config: Config) -> ArchiveStatus:
    """The archive's status: its database (url) and its lag (Redis), read at once."""
    url, read_url = archive_conninfos(config)
    (contents, database_error), (lag, lag_error) = await defer.gatherResults([
        defer.ensureDeferred(_part(read_database(config))),
        defer.ensureDeferred(_part(read_lag(config)))])
    return ArchiveStatus(describe_conninfo(url), describe_conninfo(read_url), not config.archive.url,
                         migrations.latest_version(), config.tracking.retention,
                         config.tracking.content_retention, contents, database_error, lag, lag_error)


def format_lag(lag: ArchiveLag | None) -> str:
    if lag is None:
        return "no archiver has run on this Redis yet"
    if not lag.entries:
        return "none (every event is archived)"
    return (f"{lag.entries:,} event{'' if lag.entries == 1 else 's'} not archived yet, the oldest "
            f"{format_age(lag.oldest_age_seconds)} old")


def format_status(status: ArchiveStatus) -> list[str]:
    """The human form of ``archive status`` (the errors go to stderr)."""
    lines = [f"database        {status.database}" + (" (managed)" if status.managed else "")]
    if status.read_database != status.database:
        lines.append(f"reads from      {status.read_database}")
    if status.lag_error is None:
        lines.append(f"archive lag     {format_lag(status.lag)}")
    contents = status.contents
    if contents is None:
        return lines
    schema = str(contents.schema_version) if contents.schema_version else "none yet (the daemon applies it at start)"
    lines.append(f"schema version  {schema} (this mailrelay: {status.latest_version})")
    lines.append(f"retention       {format_duration(status.retention)}, bodies "
                 f"{format_duration(status.content_retention)}")
    header = ("TABLE", "DAYS", "OLDEST", "NEWEST", "SIZE", "ROWS")
    rows = [(t.table, str(t.days), _day(t.oldest) or "-", _day(t.newest) or "-", format_bytes(t.size),
             f"{t.rows:,}") for t in contents.tables]
    rows.append(("total", "", "", "", format_bytes(sum(t.size for t in contents.tables)),
                 f"{sum(t.rows for t in contents.tables):,}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 4, 5}
    for row in [header, *rows]:
        lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    if contents.past_retention:
        days = sorted({p.day for p in contents.partitions if p.name in contents.past_retention})
        lines.append(f"{len(contents.past_retention)} partitions past retention still there, days {days[0]} to "
                     f"{days[-1]} (a running daemon's hourly maintenance drops them)")
    return lines


async def run_status(config: Config, as_json: bool) -> None:
    status = await read_status(config)
    if as_json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print("\n".join(format_status(status)))
    if status.errors:
        sys.stdout.flush()
        raise SystemExit("\n".join(status.errors))


def cmd_status(args: argparse.Namespace) -> int:
    config = load_or_exit(getattr(args, "config", None))
    task.react(lambda reactor: defer.ensureDeferred(run_status(config, args.json)))
    return 0  # not reached: react exits


def add_archive_parser(sub: Any) -> None:
    """``mailrelay archive status`` (called by mailrelay.cli)."""
    archive = sub.add_parser("archive", help="the archive in PostgreSQL: its lag, partitions and sizes")
    add_config_option(archive)
    actions = archive.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="the archive database, its lag, schema version, partitions "
                                "per table (days kept, oldest and newest day, size, rows)")
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_status)
