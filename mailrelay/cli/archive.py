"""
cli.archive: ``mailrelay archive status``: the archive's database, schema and day partitions.

JOB
    ``mailrelay archive status [--json] [-c FILE]`` connects to the archive's
    database (``[archive] url``; with none, the database ``mailrelay`` of the
    daemon's managed PostgreSQL under ``state_dir``, found as the daemon finds
    it: :func:`mailrelay.services.archive.archive_conninfos`) and prints where
    it is (never the password), its schema version beside this mailrelay's,
    the retention settings and, per archive table (messages, recipients,
    bounces, bodies), the days kept (partitions), the oldest and newest day,
    the size on disk (``pg_total_relation_size``: data, indexes, TOAST) and
    the estimated rows (``pg_class.reltuples``, refreshed by autovacuum; 0
    before its first pass). Partitions whose day is past retention and still
    there (the hourly maintenance has not run: no daemon, or the database was
    down) are counted. ``--json`` prints the same as one JSON object, with
    every partition. The archive's lag (entries and seconds behind the event
    stream) is not shown yet.

        $ mailrelay archive status
        database        unix:/var/lib/mailrelay/postgresql db mailrelay user mailrelay (managed)
        schema version  1 (this mailrelay: 1)
        retention       45d, bodies 7d
        TABLE       DAYS  OLDEST      NEWEST      SIZE       ROWS
        messages      49  2026-10-19  2026-12-06  41.2 GiB   44,102,551
        ...

    The queries run through :class:`mailrelay.store.archivedb.ArchiveDatabase`
    (its statement and connect timeouts: ``[archive]``), in a reactor.

SECURITY
    Reads only. The conninfo's password is never printed
    (:func:`mailrelay.store.archivedb.describe_conninfo`) and is masked in an
    error message. Table names come from the catalog and are printed as they
    are (they match ``<table>_pYYYYMMDD``).

STANDARDS
    JSON (RFC 8259) with ``--json``; days as ISO 8601 dates.

DIAGNOSTICS
    One line on stderr and exit status 1: ``mailrelay: the daemon's managed
    PostgreSQL is not running (no socket at <path>)``; ``mailrelay: archive
    database at <where>: <error>`` (unreachable, no such database, timeout).

CONFIGURATION
    ``[archive]`` url, statement_timeout, connect_timeout; ``[server]``
    state_dir (the managed PostgreSQL's socket; a relative state_dir is taken
    from the current directory); ``[tracking]`` retention, content_retention
    (shown, and to count the partitions past them). Owns no data.
"""

from __future__ import annotations

import argparse
import datetime
import json
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task

from mailrelay.cli.common import add_config_option, load_or_exit, open_archive_database
from mailrelay.config import Config
from mailrelay.configvalues import format_bytes, format_duration
from mailrelay.services.archive import archive_conninfos, one_line_error
from mailrelay.store import migrations
from mailrelay.store.archivedb import describe_conninfo
from mailrelay.store.archivemaint import (CONTENT_TABLES, Partition, TableSummary, first_kept_day,
                                          list_partitions, summarize)

UTC = datetime.timezone.utc


@dataclass(frozen=True)
class ArchiveStatus:
    """What ``mailrelay archive status`` shows."""

    database: str  # where the url leads (describe_conninfo)
    read_database: str  # where read_url leads
    managed: bool  # the daemon's managed PostgreSQL
    schema_version: int  # the database's (0: no schema yet)
    latest_version: int  # this mailrelay's
    retention: float  # seconds
    content_retention: float
    partitions: list[Partition]
    tables: list[TableSummary]
    past_retention: list[str]  # partitions still there past their retention

    def to_json(self) -> dict[str, Any]:
        return {
            "database": self.database, "read_database": self.read_database, "managed": self.managed,
            "schema_version": self.schema_version, "latest_schema_version": self.latest_version,
            "retention_s": self.retention, "content_retention_s": self.content_retention,
            "tables": [{"table": t.table, "days": t.days, "oldest": _day(t.oldest), "newest": _day(t.newest),
                        "size_bytes": t.size, "rows_estimate": t.rows} for t in self.tables],
            "total_size_bytes": sum(t.size for t in self.tables),
            "past_retention": self.past_retention,
            "partitions": [{"table": p.table, "name": p.name, "day": _day(p.day), "size_bytes": p.size,
                            "rows_estimate": p.rows} for p in self.partitions],
        }


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


async def read_status(config: Config) -> ArchiveStatus:
    """The archive's status, read from its (write) database; SystemExit with one line if it cannot."""
    url, read_url = archive_conninfos(config)
    managed = not config.archive.url
    database = open_archive_database(config, write=True)
    try:
        version, partitions = await database.run(_read)
    except Exception as e:
        raise SystemExit(f"mailrelay: archive database at {describe_conninfo(url)}: {one_line_error(e, url)}")
    finally:
        database.close()
    tracking = config.tracking
    return ArchiveStatus(
        describe_conninfo(url), describe_conninfo(read_url), managed, version, migrations.latest_version(),
        tracking.retention, tracking.content_retention, partitions, summarize(partitions),
        past_retention(partitions, datetime.datetime.now(UTC), tracking.retention, tracking.content_retention))


def format_status(status: ArchiveStatus) -> list[str]:
    """The human form of ``archive status``."""
    lines = [f"database        {status.database}" + (" (managed)" if status.managed else "")]
    if status.read_database != status.database:
        lines.append(f"reads from      {status.read_database}")
    schema = str(status.schema_version) if status.schema_version else "none yet (the daemon applies it at start)"
    lines.append(f"schema version  {schema} (this mailrelay: {status.latest_version})")
    lines.append(f"retention       {format_duration(status.retention)}, bodies "
                 f"{format_duration(status.content_retention)}")
    header = ("TABLE", "DAYS", "OLDEST", "NEWEST", "SIZE", "ROWS")
    rows = [(t.table, str(t.days), _day(t.oldest) or "-", _day(t.newest) or "-", format_bytes(t.size),
             f"{t.rows:,}") for t in status.tables]
    rows.append(("total", "", "", "", format_bytes(sum(t.size for t in status.tables)),
                 f"{sum(t.rows for t in status.tables):,}"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 4, 5}
    for row in [header, *rows]:
        lines.append("  ".join(v.rjust(w) if i in right else v.ljust(w)
                               for i, (v, w) in enumerate(zip(row, widths))).rstrip())
    if status.past_retention:
        days = sorted({p.day for p in status.partitions if p.name in status.past_retention})
        lines.append(f"{len(status.past_retention)} partitions past retention still there, days {days[0]} to "
                     f"{days[-1]} (a running daemon's hourly maintenance drops them)")
    return lines


async def run_status(config: Config, as_json: bool) -> None:
    status = await read_status(config)
    if as_json:
        print(json.dumps(status.to_json(), indent=2))
    else:
        print("\n".join(format_status(status)))


def cmd_status(args: argparse.Namespace) -> int:
    config = load_or_exit(getattr(args, "config", None))
    task.react(lambda reactor: defer.ensureDeferred(run_status(config, args.json)))
    return 0  # not reached: react exits


def add_archive_parser(sub: Any) -> None:
    """``mailrelay archive status`` (called by mailrelay.cli)."""
    archive = sub.add_parser("archive", help="the archive in PostgreSQL: its partitions and sizes")
    add_config_option(archive)
    actions = archive.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="the archive database, schema version, partitions per "
                                "table (days kept, oldest and newest day, size, rows)")
    add_config_option(status)
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=cmd_status)
