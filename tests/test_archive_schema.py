"""The archive's schema (issue 18): migrations under an advisory lock, day partitions, natural
keys, and the thread-pool database access with its statement timeout. Against a real PostgreSQL
(conftest's ``postgres_server``), a fresh database per test where the schema's history matters."""

from __future__ import annotations

import datetime
import threading
from typing import Iterator

import psycopg
import pytest
from psycopg import errors
from twisted.internet import defer
from twisted.trial import unittest

from conftest import new_database
from mailrelay.store import migrations
from mailrelay.store.archivedb import ArchiveDatabase

TABLES = ("messages", "recipients", "bounces", "bodies")


@pytest.fixture
def fresh_db(postgres_server) -> Iterator[str]:
    with new_database(postgres_server, "m") as conninfo:
        yield conninfo


def utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def partitioned_tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT partrelid::regclass::text FROM pg_partitioned_table").fetchall()
    return {r[0] for r in rows}


# -- migrations ------------------------------------------------------------------------------


def test_first_run_applies_every_delta_and_records_the_version(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        assert migrations.current_version(conn) == 0
        assert migrations.apply_migrations(conn) == [1]
        assert migrations.current_version(conn) == migrations.latest_version() == 1
        assert partitioned_tables(conn) == set(TABLES)
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (1,)


def test_second_run_is_a_noop(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        migrations.apply_migrations(conn)
    with psycopg.connect(fresh_db) as conn:  # a later start
        assert migrations.apply_migrations(conn) == []
        assert migrations.current_version(conn) == 1


def test_concurrent_runners_apply_the_deltas_exactly_once(fresh_db: str) -> None:
    runners = 4
    barrier = threading.Barrier(runners)
    results: list[list[int]] = []
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(fresh_db) as conn:
                barrier.wait(10)
                results.append(migrations.apply_migrations(conn))
        except BaseException as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert failures == []
    assert sorted(results) == [[], [], [], [1]]
    with psycopg.connect(fresh_db) as conn:
        assert migrations.current_version(conn) == 1


def test_a_newer_schema_is_refused_and_left_alone(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        migrations.apply_migrations(conn)
        conn.execute("UPDATE schema_version SET version = 99")
        conn.commit()
        with pytest.raises(migrations.MigrationError, match="version 99, newer"):
            migrations.apply_migrations(conn)
        assert migrations.current_version(conn) == 99


# -- partitions and keys ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(pg_database: str) -> str:
    with psycopg.connect(pg_database) as conn:
        migrations.apply_migrations(conn)
    return pg_database


def test_partitions_are_made_once_per_day_and_table(archive: str) -> None:
    today = utc_today()
    with psycopg.connect(archive) as conn:
        assert migrations.create_partitions(conn, today, 3) == 3 * len(TABLES)
        assert migrations.create_partitions(conn, today, 3) == 0
        names = {r[0] for r in conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits"
            " WHERE inhparent = 'messages'::regclass").fetchall()}
        assert names == {f"messages_p{today + datetime.timedelta(days=i):%Y%m%d}" for i in range(3)}
        # the partition got the parent's indexes (search and natural key)
        index_count = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename = %s", (f"messages_p{today:%Y%m%d}",)
        ).fetchone()[0]
        assert index_count == 4  # natural key, newest, by tag, by status


def test_rows_go_to_their_day_and_a_day_without_partition_is_refused(archive: str) -> None:
    today = utc_today()
    now = datetime.datetime.now(datetime.timezone.utc)
    with psycopg.connect(archive) as conn:
        migrations.create_partitions(conn, today, 2)
        where = conn.execute(
            "INSERT INTO messages (id, received_at, tag, metadata, size, status) VALUES (%s, %s,"
            " 'news', '{\"k\": \"v\"}', 2048, 'delivered') RETURNING tableoid::regclass::text", ("m1", now)
        ).fetchone()[0]
        assert where == f"messages_p{today:%Y%m%d}"
        where = conn.execute(
            "INSERT INTO recipients (message_id, received_at, rcpt, recipient, state)"
            " VALUES ('m1', %s, 0, 'a@example.org', 'delivered') RETURNING tableoid::regclass::text",
            (now,),
        ).fetchone()[0]
        assert where == f"recipients_p{today:%Y%m%d}"
        conn.commit()
        with pytest.raises(errors.CheckViolation, match="no partition"):
            conn.execute("INSERT INTO messages (id, received_at, status) VALUES ('old', %s, 'queued')",
                         (now - datetime.timedelta(days=40),))
        conn.rollback()


# -- the thread-pool access ------------------------------------------------------------------


@pytest.fixture
def archive_conninfo(request, archive: str) -> None:
    request.cls.conninfo = archive


@pytest.mark.usefixtures("archive_conninfo")
class ArchiveDatabaseTests(unittest.TestCase):
    timeout = 30
    conninfo = ""

    @defer.inlineCallbacks
    def test_migrate_in_the_pool_is_a_noop_on_a_current_schema(self):
        db = ArchiveDatabase(self.conninfo)
        self.addCleanup(db.close)
        applied = yield db.migrate()
        self.assertEqual(applied, [])
        far = utc_today() + datetime.timedelta(days=100)  # no other test makes this day
        made = yield db.create_partitions(far, 1)
        self.assertEqual(made, len(TABLES))
        made = yield db.create_partitions(far, 1)
        self.assertEqual(made, 0)

    @defer.inlineCallbacks
    def test_a_slow_query_is_cancelled_by_the_statement_timeout(self):
        db = ArchiveDatabase(self.conninfo, statement_timeout=0.2)
        self.addCleanup(db.close)
        with self.assertRaises(errors.QueryCanceled):
            yield db.run(lambda conn: conn.execute("SELECT pg_sleep(5)"))
        # the connection is usable again afterwards
        rows = yield db.run(lambda conn: conn.execute("SELECT 1").fetchall())
        self.assertEqual(rows, [(1,)])

    @defer.inlineCallbacks
    def test_a_connection_the_server_ended_fails_once_unlogged_and_is_reopened(self):
        db = ArchiveDatabase(self.conninfo, pool_max=1)  # one thread, one connection
        self.addCleanup(db.close)
        pid = yield db.run(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with psycopg.connect(self.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        with self.assertRaises(psycopg.OperationalError):
            yield db.run(lambda conn: conn.execute("SELECT 1").fetchall())
        # the caller has the error; adbapi's "Rollback failed" tracebacks are not logged
        self.assertEqual(self.flushLoggedErrors(), [])
        new_pid = yield db.run(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        self.assertNotEqual(new_pid, pid)
