"""
migrations: the archive's schema, applied from numbered SQL files (issue 18).

JOB
    ``mailrelay/store/sql/NNNN_<name>.sql`` are the schema's deltas, numbered
    from 0001 without gaps.  :func:`apply_migrations` (blocking: call it in a
    thread, e.g. through :class:`mailrelay.store.archivedb.ArchiveDatabase`)
    applies those above the database's version, in order, in ONE transaction
    that first takes a transaction-scoped advisory lock, so several daemons
    starting at once apply each delta exactly once (the others wait, then find
    nothing to do); the version is recorded in the one-row table
    ``schema_version``.  Running it again is a no-op.
    :func:`create_partitions` makes the next days' partitions under the same
    lock (SQL function ``archive_create_partitions`` of 0001).

SECURITY
    The SQL comes only from files shipped in the package; partition names are
    built by the server (``format('%I')``) from a date.

STANDARDS
    PostgreSQL 15 (declarative partitioning, advisory locks).

DIAGNOSTICS
    MigrationError when the database's version is newer than the deltas this
    mailrelay knows (an older daemon against a newer schema) or a delta file
    is misnumbered; psycopg's errors (e.g. a failing delta) pass through after
    the transaction rolled back, so nothing of a failed run remains.

CONFIGURATION
    None.  The lock key is :data:`ADVISORY_LOCK_KEY`, constant across versions.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import psycopg

SQL_DIR = Path(__file__).resolve().parent / "sql"
ADVISORY_LOCK_KEY = 0x6D61696C72656C61  # "mailrela": one key for every schema change
_DELTA_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """The archive's schema cannot be brought to this mailrelay's version."""


def deltas(directory: Path = SQL_DIR) -> list[tuple[int, Path]]:
    """``[(version, path)]`` of the delta files, in order; numbered 1, 2, ... without gaps."""
    found = sorted((int(m.group(1)), p) for p in directory.iterdir()
                   if (m := _DELTA_NAME.match(p.name)))
    for expected, (version, path) in enumerate(found, start=1):
        if version != expected:
            raise MigrationError(f"schema delta {path.name}: expected number {expected:04d}")
    return found


def latest_version(directory: Path = SQL_DIR) -> int:
    known = deltas(directory)
    return known[-1][0] if known else 0


def _lock_and_read_version(conn: psycopg.Connection) -> int:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " one boolean PRIMARY KEY DEFAULT true CHECK (one),"
        " version integer NOT NULL)"
    )
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return row[0] if row else 0


def current_version(conn: psycopg.Connection) -> int:
    """The database's schema version (0: none applied); reads only."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return row[0] if row else 0


def apply_migrations(conn: psycopg.Connection, directory: Path = SQL_DIR) -> list[int]:
    """Apply the deltas above the database's version; return the versions applied ([] if none)."""
    known = deltas(directory)
    latest = known[-1][0] if known else 0
    applied: list[int] = []
    with conn.transaction():
        version = _lock_and_read_version(conn)
        if version > latest:
            raise MigrationError(
                f"the archive database is at schema version {version}, newer than this "
                f"mailrelay knows ({latest}); upgrade mailrelay"
            )
        for number, path in known:
            if number > version:
                conn.execute(path.read_text(encoding="utf-8").encode())  # no params: a script
                applied.append(number)
        if applied:
            conn.execute(
                "INSERT INTO schema_version (one, version) VALUES (true, %s)"
                " ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version",
                (applied[-1],),
            )
    return applied


def create_partitions(conn: psycopg.Connection, first_day: datetime.date, days: int) -> int:
    """Make the partitions of ``days`` UTC days from ``first_day`` (those missing); how many made."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
        row = conn.execute("SELECT archive_create_partitions(%s, %s)", (first_day, days)).fetchone()
    return int(row[0]) if row else 0
