"""The archive's partition maintenance (issue 18, "Retention"): a day's partitions past
``[tracking] retention`` dropped, bodies past ``content_retention`` gone while their messages stay,
the next days' partitions made, two maintainers at once, a cut DETACH finished, and the service
(``archive-maintenance``) on a ``task.Clock``: a run once the schema is ready, then every hour,
one warning while the database is down, and back by itself. Against the session's PostgreSQL,
each test on its own copy of the migrated template database (conftest's ``archive_databases``)."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from twisted.internet import defer, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from conftest import async_test, today_utc
from mailrelay.services.archivemaint import ArchiveMaintenance
from mailrelay.store import migrations
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archivemaint import ARCHIVE_TABLES, CONTENT_TABLES, RECORD_TABLES, list_partitions, maintain

UTC = datetime.timezone.utc
DAY = 86400.0
RETENTION = 45 * DAY
CONTENT_RETENTION = 7 * DAY


def day_name(table: str, day: datetime.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def noon(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(12), UTC)


class Archive:
    """The test's database, read and written with plain SQL (blocking: only between runs)."""

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo

    def partitions(self) -> set[str]:
        with psycopg.connect(self.conninfo) as conn:
            return {p.name for p in list_partitions(conn)}

    def tables(self) -> set[str]:
        """Every table named like a day partition, attached or not."""
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute("SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ '_p[0-9]{8}$'")
            return {name for (name,) in rows}

    def make_days(self, first: datetime.date, days: int) -> None:
        with psycopg.connect(self.conninfo) as conn:
            migrations.create_partitions(conn, first, days)

    def add_message(self, message_id: str, day: datetime.date) -> None:
        """A message received at noon of ``day``, its recipient, a bounce and its body."""
        at = noon(day)
        with psycopg.connect(self.conninfo) as conn:
            conn.execute("INSERT INTO messages (id, received_at, status) VALUES (%s, %s, 'delivered')",
                         (message_id, at))
            conn.execute("INSERT INTO recipients (message_id, received_at, rcpt, recipient, state)"
                         " VALUES (%s, %s, 0, 'to@example.org', 'delivered')", (message_id, at))
            conn.execute("INSERT INTO bounces (id, received_at, message_id, type) VALUES (%s, %s, %s, 'HardBounce')",
                         (f"b{message_id}", at, message_id))
            conn.execute("INSERT INTO bodies (message_id, received_at, body) VALUES (%s, %s, %s)",
                         (message_id, at, b"x" * 100))

    def ids(self, table: str) -> set[str]:
        column = "message_id" if table in ("recipients", "bodies") else "id"
        with psycopg.connect(self.conninfo) as conn:
            return {value for (value,) in conn.execute(f"SELECT {column} FROM {table}")}


@pytest.fixture
def short_dir():
    """A short directory under /tmp that a root test run's ``postgres`` user can reach."""
    path = Path(tempfile.mkdtemp(prefix="mrm", dir="/tmp"))
    os.chmod(path, 0o701)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class MaintenanceTests(unittest.TestCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _archive(self, archive_databases, postgres_server, short_dir) -> None:
        self.conninfo = archive_databases()
        self.archive = Archive(self.conninfo)
        self.postgres_server = postgres_server
        self.short_dir = short_dir

    def setUp(self) -> None:
        self.today = today_utc()
        self.database = ArchiveDatabase(self.conninfo)
        self.addCleanup(self.database.close)

    def run_maintain(self, now: datetime.datetime, database: ArchiveDatabase | None = None) -> defer.Deferred:
        return (database or self.database).run_autocommit(maintain, now, RETENTION, CONTENT_RETENTION)

    def clock_at(self, seconds: float) -> task.Clock:
        clock = task.Clock()
        clock.advance(seconds)
        return clock

    def capture_log(self) -> list[str]:
        lines: list[str] = []
        observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines

    # -- maintain() ------------------------------------------------------------------------

    def test_every_partitioned_table_follows_one_retention(self):
        with psycopg.connect(self.conninfo) as conn:
            parents = {name for (name,) in conn.execute("SELECT relname FROM pg_class WHERE relkind = 'p'")}
        self.assertEqual(parents, set(ARCHIVE_TABLES))
        self.assertEqual(set(RECORD_TABLES) & set(CONTENT_TABLES), set())

    @async_test
    async def test_a_day_past_retention_is_dropped_and_the_next_days_made(self):
        first = self.today - datetime.timedelta(days=50)
        self.archive.make_days(first, 10)  # 50 to 41 days ago
        old = self.today - datetime.timedelta(days=47)
        kept = self.today - datetime.timedelta(days=44)
        self.archive.add_message("old", old)
        self.archive.add_message("kept", kept)
        now = datetime.datetime.now(UTC)

        report = await self.run_maintain(now)

        oldest_kept = (now - datetime.timedelta(seconds=RETENTION)).date()
        self.assertEqual(oldest_kept, self.today - datetime.timedelta(days=45))
        expired_days = [first + datetime.timedelta(days=i) for i in range((oldest_kept - first).days)]
        expected_dropped = {day_name(t, d) for t in RECORD_TABLES for d in expired_days}
        expected_dropped |= {day_name("bodies", first + datetime.timedelta(days=i)) for i in range(10)}
        self.assertEqual(set(report.dropped), expected_dropped)
        self.assertFalse(report.busy)
        partitions = self.archive.partitions()
        self.assertFalse(expected_dropped & partitions)
        self.assertFalse(expected_dropped & self.archive.tables(), "detached and dropped, not only detached")
        for table in RECORD_TABLES:
            self.assertIn(day_name(table, oldest_kept), partitions)
            self.assertEqual(self.archive.ids(table), {"kept"} if table != "bounces" else {"bkept"})
        self.assertEqual(self.archive.ids("bodies"), set())
        ahead = {day_name(t, self.today + datetime.timedelta(days=i)) for t in ARCHIVE_TABLES for i in range(4)}
        self.assertLessEqual(ahead, partitions)  # today and the next 3 days
        self.assertEqual(report.created, 4)  # the template has today and 2 days: day 3, 4 tables

        again = await self.run_maintain(now)
        self.assertEqual((again.dropped, again.created, again.busy), ((), 0, False))

    @async_test
    async def test_bodies_past_content_retention_go_while_their_messages_stay(self):
        ten_days_ago = self.today - datetime.timedelta(days=10)
        self.archive.make_days(ten_days_ago, 10)
        self.archive.add_message("tenday", ten_days_ago)
        self.archive.add_message("recent", self.today - datetime.timedelta(days=2))

        report = await self.run_maintain(datetime.datetime.now(UTC))

        self.assertIn(day_name("bodies", ten_days_ago), report.dropped)
        self.assertTrue(all(name.startswith("bodies_") for name in report.dropped), report.dropped)
        self.assertEqual(self.archive.ids("bodies"), {"recent"})
        self.assertEqual(self.archive.ids("messages"), {"tenday", "recent"})
        self.assertEqual(self.archive.ids("recipients"), {"tenday", "recent"})
        self.assertIn(day_name("messages", ten_days_ago), self.archive.partitions())

    @async_test
    async def test_two_maintainers_at_once_drop_each_partition_once(self):
        first = self.today - datetime.timedelta(days=60)
        self.archive.make_days(first, 5)
        self.archive.add_message("old", first)
        other = ArchiveDatabase(self.conninfo)
        self.addCleanup(other.close)
        now = datetime.datetime.now(UTC)

        reports = await defer.gatherResults([self.run_maintain(now), self.run_maintain(now, other)])

        dropped = [name for report in reports for name in report.dropped]
        self.assertEqual(sorted(dropped), sorted(day_name(t, first + datetime.timedelta(days=i))
                                                 for t in ARCHIVE_TABLES for i in range(5)))
        self.assertEqual(sum(report.created for report in reports), 4)
        self.assertEqual(self.archive.ids("messages"), set())

    @async_test
    async def test_a_maintainer_finding_the_lock_taken_does_nothing(self):
        first = self.today - datetime.timedelta(days=60)
        self.archive.make_days(first, 1)
        with psycopg.connect(self.conninfo, autocommit=True) as holder:  # a daemon migrating
            holder.execute("SELECT pg_advisory_lock(%s)", (migrations.ADVISORY_LOCK_KEY,))
            busy = await self.run_maintain(datetime.datetime.now(UTC))
        self.assertTrue(busy.busy)
        self.assertIn(day_name("messages", first), self.archive.partitions())
        done = await self.run_maintain(datetime.datetime.now(UTC))
        self.assertIn(day_name("messages", first), done.dropped)

    @async_test
    async def test_a_detach_cut_in_the_middle_is_finished(self):
        first = self.today - datetime.timedelta(days=60)
        self.archive.make_days(first, 1)
        name = day_name("messages", first)
        with psycopg.connect(self.conninfo) as reader:  # a search's transaction, still open
            reader.execute("SELECT count(*) FROM messages")
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                conn.execute("SET statement_timeout = 300")
                with self.assertRaises(psycopg.errors.QueryCanceled):  # waiting for the reader
                    conn.execute(f"ALTER TABLE messages DETACH PARTITION {name} CONCURRENTLY")
                pending = conn.execute("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass",
                                       (name,)).fetchone()
            self.assertEqual(pending, (True,))
            reader.rollback()

        report = await self.run_maintain(datetime.datetime.now(UTC))

        self.assertIn(name, report.dropped)
        self.assertNotIn(name, self.archive.tables())

    # -- the service -----------------------------------------------------------------------

    @async_test
    async def test_the_service_runs_once_the_schema_is_ready_then_every_hour(self):
        clock = self.clock_at(time.time())
        ready: defer.Deferred[None] = defer.Deferred()
        service = ArchiveMaintenance(self.database, RETENTION, CONTENT_RETENTION, clock, schema_ready=lambda: ready)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        clock.advance(7200)
        self.assertIsNone(service.last_report, "nothing before the schema is ready")

        first_run = service.whenRunEnds()
        ready.callback(None)
        report = await first_run
        self.assertEqual(report.created, 4)  # the template made 3 days: the 4th day of 4 tables

        # 46 days later (the clock's): today's partitions are past retention, new days are made
        today = self.today
        next_run = service.whenRunEnds()
        clock.advance(46 * DAY)
        report = await next_run
        later = datetime.datetime.fromtimestamp(clock.seconds(), UTC).date()
        self.assertIn(day_name("messages", today), report.dropped)
        partitions = self.archive.partitions()
        self.assertNotIn(day_name("messages", today), partitions)
        self.assertLessEqual({day_name("bounces", later + datetime.timedelta(days=i)) for i in range(4)},
                             partitions)

        await service.stopService()
        clock.advance(3600)
        self.assertEqual(clock.getDelayedCalls(), [])

    @async_test
    async def test_database_down_one_warning_then_it_recovers_by_itself(self):
        logged = self.capture_log()
        dbname = self.conninfo.rpartition("dbname=")[2]
        down = ArchiveDatabase(f"postgresql://mailrelay:s3cretpw@/{dbname}?host={self.short_dir}")
        self.addCleanup(down.close)
        clock = self.clock_at(time.time())
        service = ArchiveMaintenance(down, RETENTION, CONTENT_RETENTION, clock)
        first_run = service.whenRunEnds()
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)

        self.assertIsNone(await first_run)
        for _ in range(3):
            failed = service.whenRunEnds()
            clock.advance(3600)
            self.assertIsNone(await failed)
        warnings = [line for line in logged if line.startswith("archive maintenance failed:")]
        self.assertEqual(len(warnings), 1, logged)
        self.assertIn("trying again every 3600s", warnings[0])
        self.assertTrue(service.failing)

        # the server appears at the url's socket directory
        os.symlink(self.postgres_server.socket_dir / ".s.PGSQL.5432", self.short_dir / ".s.PGSQL.5432")
        recovered = service.whenRunEnds()
        clock.advance(3600)
        report = await recovered
        self.assertIsNotNone(report)
        self.assertFalse(service.failing)
        self.assertIn("archive maintenance works again", logged)
        self.assertEqual(len([line for line in logged if line.startswith("archive maintenance failed:")]), 1)
        self.assertIn(day_name("messages", self.today + datetime.timedelta(days=3)), self.archive.partitions())
        self.assertFalse([line for line in logged if "s3cretpw" in line])
        await service.stopService()

    @async_test
    async def test_stopping_before_the_schema_is_ready_cancels_the_wait(self):
        clock = self.clock_at(time.time())
        cancelled = []
        ready: defer.Deferred[None] = defer.Deferred(lambda d: cancelled.append(True))
        service = ArchiveMaintenance(self.database, RETENTION, CONTENT_RETENTION, clock, schema_ready=lambda: ready)
        service.startService()
        await service.stopService()
        self.assertEqual(cancelled, [True])
        self.assertIsNone(service.last_report)
        self.assertEqual(clock.getDelayedCalls(), [])
