"""
archivemaint: the archive's partitions: listed, dropped past retention, made ahead (issue 18).

JOB
    The archive's tables are partitioned by UTC day (``<table>_pYYYYMMDD``,
    ``store/sql/0001_archive.sql``). Blocking functions, run in a thread
    (:meth:`mailrelay.store.archivedb.ArchiveDatabase.run_autocommit` for
    :func:`maintain`, ``run`` for :func:`list_partitions`)::

        report = maintain(conn, now, retention=45 * 86400, content_retention=7 * 86400)
        partitions = list_partitions(conn)       # [Partition], by table then day
        summaries = summarize(partitions)        # [TableSummary], one per table

    :func:`maintain`, on an autocommit connection, under the migrations'
    advisory lock (:data:`mailrelay.store.migrations.ADVISORY_LOCK_KEY`,
    taken with ``pg_try_advisory_lock``: when another daemon holds it, that
    daemon is migrating or maintaining, and this run does nothing and says
    ``busy``):

    1. finishes a detach an earlier run left half-done (a ``DETACH ...
       CONCURRENTLY`` that was cut: ``DETACH ... FINALIZE``); a table named
       like a partition and no longer attached (a run cut between its
       DETACH and its DROP) is dropped when its day is past retention (and
       left alone otherwise: it is not one this maintenance detached);
    2. drops each partition whose whole day is older than its retention:
       ``messages``, ``recipients`` and ``bounces`` (:data:`RECORD_TABLES`)
       after ``retention``, ``bodies`` (:data:`CONTENT_TABLES`) after
       ``content_retention``; a day is dropped once its end is older than
       ``now - retention``, so a row is kept at least its retention and at
       most a day longer. Each drop is ``ALTER TABLE .. DETACH PARTITION ..
       CONCURRENTLY`` (no lock that stalls the archiver or a search; it waits
       for the transactions using the table) then ``DROP TABLE``; never a
       ``DELETE``;
    3. makes the partitions of today and the next ``days_ahead`` days that
       are missing (``archive_create_partitions``).

    A row that arrives later for a dropped day has no partition
    (check_violation, SQLSTATE 23514): the archiver skips it (it is past
    retention anyway). Only partitions named ``<table>_pYYYYMMDD`` are
    touched; a table attached by hand under another name stays.

SECURITY
    Table names come from the catalog and are quoted as identifiers
    (``psycopg.sql.Identifier``); values are bound parameters.

STANDARDS
    PostgreSQL 15: declarative partitioning, ``DETACH PARTITION ...
    CONCURRENTLY`` / ``FINALIZE``, session advisory locks,
    ``pg_total_relation_size``, ``pg_class.reltuples``.

DIAGNOSTICS
    psycopg's errors pass through (the server unreachable, a statement past
    :data:`MAINTENANCE_STATEMENT_TIMEOUT`); whatever was dropped before the
    error stays dropped, the rest is done by the next run. The session lock
    goes with the connection, which ``run_autocommit`` closes.

CONFIGURATION
    None read here: :mod:`mailrelay.services.archivemaint` passes
    ``[tracking] retention`` and ``content_retention``.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from mailrelay.store.migrations import ADVISORY_LOCK_KEY

#: Tables kept for ``[tracking] retention``, and those kept for ``content_retention``; together
#: every partitioned table of the schema, in the order the status shows them.
RECORD_TABLES: tuple[str, ...] = ("messages", "recipients", "bounces")
CONTENT_TABLES: tuple[str, ...] = ("bodies",)
ARCHIVE_TABLES: tuple[str, ...] = RECORD_TABLES + CONTENT_TABLES

#: The statement timeout of a maintenance run: a DETACH CONCURRENTLY waits for the transactions
#: that use its table (searches and archiver batches, each bounded by the pool's timeout).
MAINTENANCE_STATEMENT_TIMEOUT = 60.0  # seconds

_PARTITION_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")

# Every table named like a day's partition of an archive table, attached or not.
_PARTITIONS_SQL = """
SELECT c.relname, parent.relname, COALESCE(i.inhdetachpending, false),
       COALESCE(pg_total_relation_size(c.oid), 0), c.reltuples::bigint
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = current_schema()
  LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
  LEFT JOIN pg_class parent ON parent.oid = i.inhparent
 WHERE c.relkind = 'r' AND c.relname ~ '_p[0-9]{8}$'
"""


@dataclass(frozen=True)
class Partition:
    """One day's partition of an archive table."""

    table: str  # the partitioned table: messages, recipients, bounces, bodies
    name: str  # <table>_pYYYYMMDD
    day: datetime.date  # the UTC day it holds
    size: int  # bytes on disk with its indexes and TOAST (pg_total_relation_size)
    rows: int  # estimated rows (pg_class.reltuples; 0 before the first ANALYZE)


@dataclass(frozen=True)
class TableSummary:
    """An archive table's partitions in short (``mailrelay archive status``)."""

    table: str
    days: int  # partitions
    oldest: datetime.date | None  # oldest day kept (None: no partition)
    newest: datetime.date | None  # newest day made (ahead of today)
    size: int  # bytes, all partitions
    rows: int  # estimated rows, all partitions


@dataclass(frozen=True)
class MaintenanceReport:
    """What one :func:`maintain` run did."""

    busy: bool = False  # another session held the lock: nothing was done
    dropped: tuple[str, ...] = ()  # partitions dropped (names), detach leftovers included
    created: int = 0  # partitions made


@dataclass(frozen=True)
class _Found:
    partition: Partition
    attached: bool
    detach_pending: bool


def _find(conn: psycopg.Connection) -> list[_Found]:
    found: list[_Found] = []
    for name, parent, pending, size, rows in conn.execute(_PARTITIONS_SQL).fetchall():
        match = _PARTITION_NAME.match(name)
        if not match or match["table"] not in ARCHIVE_TABLES or parent not in (None, match["table"]):
            continue
        try:
            day = datetime.datetime.strptime(match["day"], "%Y%m%d").date()
        except ValueError:
            continue  # not a date: not one of ours
        partition = Partition(match["table"], name, day, int(size), max(0, int(rows)))
        found.append(_Found(partition, parent is not None, bool(pending)))
    found.sort(key=lambda f: (ARCHIVE_TABLES.index(f.partition.table), f.partition.day))
    return found


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    """The archive tables' day partitions (attached ones), by table then day."""
    return [f.partition for f in _find(conn) if f.attached]


def summarize(partitions: list[Partition]) -> list[TableSummary]:
    """One :class:`TableSummary` per archive table (in :data:`ARCHIVE_TABLES` order)."""
    summaries = []
    for table in ARCHIVE_TABLES:
        days = [p for p in partitions if p.table == table]
        summaries.append(TableSummary(
            table, len(days), min((p.day for p in days), default=None),
            max((p.day for p in days), default=None),
            sum(p.size for p in days), sum(p.rows for p in days)))
    return summaries


def first_kept_day(now: datetime.datetime, retention: float) -> datetime.date:
    """The oldest UTC day that still holds rows younger than ``retention`` seconds at ``now``."""
    return (now - datetime.timedelta(seconds=retention)).astimezone(datetime.timezone.utc).date()


def maintain(conn: psycopg.Connection, now: datetime.datetime, retention: float,
             content_retention: float, days_ahead: int = 3) -> MaintenanceReport:
    """Drop the partitions past retention, make today's and the next ``days_ahead`` days';
    ``conn`` must be in autocommit mode (DETACH CONCURRENTLY refuses a transaction block)."""
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()[0]:
        return MaintenanceReport(busy=True)
    conn.execute(sql.SQL("SET statement_timeout = {}").format(
        sql.Literal(int(MAINTENANCE_STATEMENT_TIMEOUT * 1000))))
    keep_from = {table: first_kept_day(now, retention) for table in RECORD_TABLES}
    keep_from.update({table: first_kept_day(now, content_retention) for table in CONTENT_TABLES})
    dropped = []
    for found in _find(conn):
        partition = found.partition
        table, name = sql.Identifier(partition.table), sql.Identifier(partition.name)
        expired = partition.day < keep_from[partition.table]
        if found.detach_pending:  # a DETACH CONCURRENTLY that was cut: finish it
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(table, name))
        elif found.attached:
            if not expired:
                continue
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(table, name))
        if expired:  # detached now, or left detached by a run cut before its DROP
            conn.execute(sql.SQL("DROP TABLE {}").format(name))
            dropped.append(partition.name)
    today = now.astimezone(datetime.timezone.utc).date()
    row = conn.execute("SELECT archive_create_partitions(%s, %s)", (today, days_ahead + 1)).fetchone()
    conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return MaintenanceReport(dropped=tuple(dropped), created=int(row[0]) if row else 0)

