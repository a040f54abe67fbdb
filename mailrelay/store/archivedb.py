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
        yield db.run_autocommit(work)     # on a connection of its own, no transaction
        db.close()

    :func:`ensure_database` creates a database (the managed PostgreSQL's
    ``mailrelay``) when missing; :func:`describe_conninfo` says where a
    conninfo leads (host or socket, port, database, user) for log lines;
    :func:`with_dbname` names another database in a conninfo.

    Each connection carries a ``statement_timeout`` (so a slow query raises
    ``psycopg.errors.QueryCanceled`` instead of holding a thread forever) and a
    ``connect_timeout``; ``run`` commits when the function returns and rolls
    back when it raises.  ``run_autocommit`` is for the statements that
    refuse a transaction block (``DETACH PARTITION ... CONCURRENTLY``): it
    opens a connection of its own in autocommit mode, in a pool thread, and
    closes it afterwards, so what such work leaves in its session (a session
    advisory lock, a ``SET``) never reaches the pooled connections.  Close the
    pool before stopping a managed PostgreSQL (its fast shutdown would
    otherwise cut the connections).

SECURITY
    The conninfo may hold a password: it is never logged
    (:func:`describe_conninfo` leaves it out).  Queries take their
    values as parameters, never formatted into SQL.

STANDARDS
    PostgreSQL frontend/backend protocol through psycopg 3 (libpq conninfo).

DIAGNOSTICS
    psycopg's exceptions reach the Deferred's errback: ``OperationalError``
    when the server is unreachable (within ``connect_timeout``),
    ``QueryCanceled`` (SQLSTATE 57014) past the statement timeout,
    MigrationError from :mod:`mailrelay.store.migrations`.  After a server
    restart each pooled connection fails once and is then reopened
    (``cp_reconnect``); callers retry. The rollback of a connection the server
    ended is not logged (adbapi would log two tracebacks, ``Rollback failed``,
    for each pooled connection an outage or a restart cuts): the caller's
    error says what happened, once.

CONFIGURATION
    None read here: :mod:`mailrelay.services.archive` passes ``[archive]``
    url / read_url and the timeouts.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger

from mailrelay.configvalues import parse_conninfo
import mailrelay.store.migrations as migrations

T = TypeVar("T")

log = Logger()

STATEMENT_TIMEOUT = 5.0  # seconds
CONNECT_TIMEOUT = 3  # seconds, libpq's granularity (2 is its minimum)
POOL_MIN = 1
POOL_MAX = 4


class _PooledConnection(adbapi.Connection):
    """adbapi's pooled connection, whose rollback on a connection the server ended (an outage, a
    restart, a terminated backend) drops it without logging: adbapi logs a traceback there."""

    def rollback(self) -> None:
        if self._connection.closed or self._connection.broken:
            self._pool.disconnect(self._connection)  # reopened by the next call in this thread
            raise adbapi.ConnectionLost()
        super().rollback()


class _ConnectionPool(adbapi.ConnectionPool):
    """adbapi's pool with :class:`_PooledConnection`, quiet when the rollback after a failed call
    finds the connection lost (the call's own error goes to its caller)."""

    connectionFactory = _PooledConnection

    def _runWithConnection(self, func: Callable[..., T], *args: Any, **kw: Any) -> T:
        conn = self.connectionFactory(self)
        try:
            result = func(conn, *args, **kw)
            conn.commit()
            return result
        except BaseException:
            try:
                conn.rollback()
            except adbapi.ConnectionLost:
                pass
            except BaseException:
                log.failure("archive database: rollback failed")
            raise


class ArchiveDatabase:
    """A psycopg 3 connection pool in threads, with a statement timeout on every connection."""

    def __init__(self, conninfo: str, *, statement_timeout: float = STATEMENT_TIMEOUT,
                 connect_timeout: int = CONNECT_TIMEOUT, pool_max: int = POOL_MAX) -> None:
        self.statement_timeout = statement_timeout
        self.conninfo = conninfo
        self._connect_timeout = max(2, int(connect_timeout))
        self._pool = _ConnectionPool(
            "psycopg", conninfo,
            options=_timeout_option(statement_timeout),
            connect_timeout=self._connect_timeout,
            cp_min=POOL_MIN, cp_max=pool_max, cp_reconnect=True, cp_noisy=False,
        )

    def run(self, work: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        """``work(connection, *args)`` in a pool thread, in a transaction (commit, or rollback)."""
        return self._pool.runWithConnection(work, *args)

    def run_autocommit(self, work: Callable[..., T], *args: Any,
                       statement_timeout: float | None = None) -> defer.Deferred[T]:
        """``work(connection, *args)`` in a pool thread on a new connection in autocommit mode
        (each statement its own transaction), closed when ``work`` ends; its statement timeout
        is ``statement_timeout`` when given, else the pool's."""
        from twisted.internet import reactor, threads

        timeout = self.statement_timeout if statement_timeout is None else statement_timeout
        return threads.deferToThreadPool(reactor, self._pool.threadpool, self._autocommit,
                                         timeout, work, *args)

    def _autocommit(self, statement_timeout: float, work: Callable[..., T], *args: Any) -> T:
        import psycopg

        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=self._connect_timeout,
                             options=_timeout_option(statement_timeout)) as conn:
            return work(conn, *args)

    def migrate(self) -> defer.Deferred[list[int]]:
        """Apply the schema deltas not applied yet (under the advisory lock); the versions applied."""
        return self.run(migrations.apply_migrations)

    def create_partitions(self, first_day: datetime.date, days: int) -> defer.Deferred[int]:
        """Make the missing partitions of ``days`` days from ``first_day``; how many were made."""
        return self.run(migrations.create_partitions, first_day, days)

    def close(self) -> None:
        """Close every connection and stop the threads (waits for running calls)."""
        self._pool.close()


def _timeout_option(statement_timeout: float) -> str:
    """libpq ``options`` setting the session's statement timeout (seconds; 0 = none)."""
    return f"-c statement_timeout={int(statement_timeout * 1000)}"


def with_dbname(conninfo: str, dbname: str) -> str:
    """``conninfo`` (URL or key=value) naming database ``dbname`` instead (key=value form)."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(conninfo, dbname=dbname)


def describe_conninfo(conninfo: str) -> str:
    """Where a conninfo leads, for logs: ``10.0.0.7:5432 db mailrelay user mr`` or
    ``unix:/dir db mailrelay user mr``; never the password."""
    params = parse_conninfo(conninfo)
    hosts = (params.get("host") or params.get("hostaddr") or "").split(",")
    ports = (params.get("port") or "").split(",")
    places = []
    for i, host in enumerate(hosts):
        port = (ports[i] if i < len(ports) else ports[-1]) or "5432"
        if not host:
            places.append("the default socket")
        elif host.startswith(("/", "@")):
            places.append(f"unix:{host}" + ("" if port == "5432" else f" port {port}"))
        else:
            places.append(f"{host}:{port}")
    user = params.get("user") or "(login name)"
    dbname = params.get("dbname") or params.get("user") or "(login name)"
    return f"{','.join(places)} db {dbname} user {user}"


def ensure_database(conninfo: str, dbname: str, *,
                    connect_timeout: int = CONNECT_TIMEOUT) -> defer.Deferred[bool]:
    """Create database ``dbname`` on the server of ``conninfo`` (whose own database must exist,
    e.g. ``postgres``) unless it exists; True when it was created. In a thread, off the reactor."""
    from twisted.internet import threads

    return threads.deferToThread(_ensure_database, conninfo, dbname, max(2, int(connect_timeout)))


def _ensure_database(conninfo: str, dbname: str, connect_timeout: int) -> bool:
    import psycopg
    from psycopg import sql

    with psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        except psycopg.errors.DuplicateDatabase:
            return False  # made by someone else meanwhile
    return True
