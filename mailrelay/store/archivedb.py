"""
archivedb: the archive's PostgreSQL connections, off the reactor (issue 18).

JOB
    :class:`ArchiveDatabase` owns a pool of psycopg 3 connections run by
    ``twisted.enterprise.adbapi`` in its own thread pool: every database call
    happens in a pool thread and returns a Deferred, never blocking the
    reactor::

        db = ArchiveDatabase(conninfo, statement_timeout=5.0)
        applied = yield db.migrate()                     # [1] the first time, then []
        yield db.create_partitions(datetime.date.today(), 3)
        rows = yield db.run(lambda conn: conn.execute("SELECT 1").fetchall())
        db.close()

    Each connection carries a ``statement_timeout`` (so a slow query raises
    ``psycopg.errors.QueryCanceled`` instead of holding a thread forever) and a
    ``connect_timeout``; ``run`` commits when the function returns and rolls
    back when it raises.  Close the pool before stopping a managed
    PostgreSQL (its fast shutdown would otherwise cut the connections).

SECURITY
    The conninfo may hold a password: it is never logged.  Queries take their
    values as parameters, never formatted into SQL.

STANDARDS
    PostgreSQL frontend/backend protocol through psycopg 3 (libpq conninfo).

DIAGNOSTICS
    psycopg's exceptions reach the Deferred's errback: ``OperationalError``
    when the server is unreachable (within ``connect_timeout``),
    ``QueryCanceled`` (SQLSTATE 57014) past the statement timeout,
    MigrationError from :mod:`mailrelay.store.migrations`.  After a server
    restart each pooled connection fails once and is then reopened
    (``cp_reconnect``); callers retry.

CONFIGURATION
    None yet (``[archive] url`` and its timeouts come with the archiver).
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer

from mailrelay.store import migrations

T = TypeVar("T")

STATEMENT_TIMEOUT = 5.0  # seconds
CONNECT_TIMEOUT = 3  # seconds, libpq's granularity (2 is its minimum)
POOL_MIN = 1
POOL_MAX = 4


class ArchiveDatabase:
    """A psycopg 3 connection pool in threads, with a statement timeout on every connection."""

    def __init__(self, conninfo: str, *, statement_timeout: float = STATEMENT_TIMEOUT,
                 connect_timeout: int = CONNECT_TIMEOUT, pool_max: int = POOL_MAX) -> None:
        self.statement_timeout = statement_timeout
        self._pool = adbapi.ConnectionPool(
            "psycopg", conninfo,
            options=f"-c statement_timeout={int(statement_timeout * 1000)}",
            connect_timeout=max(2, int(connect_timeout)),
            cp_min=POOL_MIN, cp_max=pool_max, cp_reconnect=True, cp_noisy=False,
        )

    def run(self, work: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """``work(connection, *args)`` in a pool thread, in a transaction (commit, or rollback)."""
        return self._pool.runWithConnection(work, *args)

    def migrate(self) -> defer.Deferred[list[int]]:
        """Apply the schema deltas not applied yet (under the advisory lock); the versions applied."""
        return self.run(migrations.apply_migrations)

    def create_partitions(self, first_day: datetime.date, days: int) -> defer.Deferred[int]:
        """Make the missing partitions of ``days`` days from ``first_day``; how many were made."""
        return self.run(migrations.create_partitions, first_day, days)

    def close(self) -> None:
        """Close every connection and stop the threads (waits for running calls)."""
        self._pool.close()
