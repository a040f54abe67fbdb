"""`mailrelay migrate` from data version 1 to 2: the Redis archive written by release 1 is read out
whole (mailrelay.store.archiveexport) as the archive's write records (MessageSnapshot,
BounceSnapshot) and written into PostgreSQL (mailrelay.store.archivewrite), after which every
read of the archive from PostgreSQL (mailrelay.store.archiveread) returns what the Redis store
returns: every message, timeline, body and bounce, and every search. Twice stores nothing
twice; `mailrelay migrate` itself (the CLI: version recorded, progress, the managed PostgreSQL
not running, an old daemon still running).

The data is tests/migration/release-1.rdb (written by release 1's own code, see
make_release_data.py), loaded into a real redis-server as of now (tests/rdbfile.py moves each
key's expiry by the time since the file was saved, so the test does not change with the date);
the archive is a real PostgreSQL database (a copy of conftest's migrated template).
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from twisted.trial import unittest

from conftest import RedisServer, async_test, make_daemon_config, start_redis
from rdbfile import as_of_now

from mailrelay.cli.cluster import MigrationArchive
from mailrelay.config import parse_config
from mailrelay.store import Storage, connect_redis
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archiveread import ArchiveReader
from mailrelay.store.archiverecords import ArchivedRecipient, BounceSnapshot, MessageSnapshot
from mailrelay.store.records import MessageRecord, decode_timeline
from mailrelay.store.tracking import MESSAGE_STATUSES

ROOT = Path(__file__).resolve().parent.parent

RELEASE_1 = Path(__file__).resolve().parent / "migration" / "release-1.rdb"
PREFIX = "mailrelay:"  # make_release_data.py's
MESSAGES = 8  # in release-1.rdb
BOUNCES = 3


@contextlib.contextmanager
def release_1_redis() -> Iterator[RedisServer]:
    """A new redis-server holding release 1's data (its dump.rdb, expiries moved to now)."""
    directory = Path(tempfile.mkdtemp(prefix="mr-release1-"))
    (directory / "dump.rdb").write_bytes(as_of_now(RELEASE_1.read_bytes()))
    server = start_redis(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def release_redis() -> Iterator[RedisServer]:
    """Release 1's data for the module's reading tests (never migrated: read only)."""
    with release_1_redis() as server:
        yield server


@pytest.fixture
def release_setup(request: Any, release_redis: RedisServer) -> None:
    request.cls.release_redis = release_redis


class Version2(Storage):
    """The store at data version 2, until Storage.DATA_VERSION is 2 (see mailrelay.store.cluster)."""

    DATA_VERSION = 2


class ReleaseTime(Version2):
    """The store as it is ``[archive] release_after`` later (its clock that far ahead): what the
    step scheduled for release is due (release_archived compares with this clock)."""

    def now_ms(self) -> int:
        return super().now_ms() + int(self.config.archive.release_after * 1000)


#: Data version 2 is this code's (the `mailrelay migrate` process tests need it).
AT_VERSION_2 = pytest.mark.skipif(Storage.DATA_VERSION < 2, reason="Storage.DATA_VERSION is not 2 yet "
                                  "(it becomes 2 once the archiver is wired); the copy is tested in-process")


#: release-1.rdb's messages were received when it was made (2026-12-04): the copy leaves out what
#: is past [tracking] retention and bodies past content_retention, counted from today, so the
#: tests of that data give the copy retentions that reach back to then.
RDB_RETENTION = {"retention": "3650d", "content_retention": "3650d"}


def storage_for(server: RedisServer, prefix: str, case: unittest.TestCase, archive_url: str = "",
                cls: type[Storage] = Storage, tracking: dict[str, str] | None = None) -> Storage:
    config = parse_config({"redis": {"url": server.url, "key_prefix": prefix}, "archive": {"url": archive_url},
                           "tracking": RDB_RETENTION if tracking is None else tracking})
    redis = connect_redis(config, None)
    case.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
    return cls(config, redis)


async def collect(pages: Any) -> tuple[list[Any], int]:
    """Every record of an export's pages, and how many entries had none."""
    records: list[Any] = []
    gone = 0
    async for page in pages:
        records += page.records
        gone += page.gone
    return records, gone


@pytest.mark.usefixtures("release_setup")
class ReadingTheReleaseArchive(unittest.TestCase):
    """What the step reads from release 1's Redis is what the Redis store's reads return."""

    timeout = 60
    release_redis: RedisServer

    def setUp(self) -> None:
        self.storage = storage_for(self.release_redis, PREFIX, self)

    @async_test
    async def test_every_message_with_its_timeline_and_body(self):
        snapshots, gone = await collect(self.storage.archived_messages())
        self.assertEqual((len(snapshots), gone), (MESSAGES, 0))
        self.assertEqual(await self.storage.archive_sizes(), (MESSAGES, BOUNCES))
        ids = [s.id for s in snapshots]
        self.assertEqual(len(set(ids)), MESSAGES)
        times = [s.received_ms for s in snapshots]
        self.assertEqual(times, sorted(times))  # oldest first
        for snapshot in snapshots:
            record = await self.storage.get_message(snapshot.id)
            self.assertEqual(snapshot.received_ms, record.received_ms)
            self.assertEqual(
                (snapshot.status, snapshot.sender, snapshot.from_header, snapshot.subject, snapshot.tag,
                 snapshot.size, snapshot.username, snapshot.client, snapshot.message_id_header),
                (record.status, record.sender, record.header_from, record.subject, record.tag, record.size,
                 record.user, record.client, record.message_id_header))
            # the JSON texts as stored: they decode to what the store reads
            decoded = MessageRecord.decode(snapshot.id, {"to": snapshot.to_header, "cc": snapshot.cc_header,
                                                         "metadata": snapshot.metadata})
            self.assertEqual((decoded.to, decoded.cc, decoded.metadata), (record.to, record.cc, record.metadata))
            self.assertEqual(snapshot.recipients, tuple(
                ArchivedRecipient(r.index, r.address, r.state, r.attempts) for r in record.recipients))
            self.assertEqual(snapshot.rcpt_count, len(record.recipients))
            self.assertEqual(decode_timeline(json.loads(e) for e in snapshot.timeline),
                             await self.storage.get_timeline(snapshot.id))
            self.assertGreaterEqual(snapshot.timeline_length, 1)
            self.assertIsNotNone(snapshot.body)
            self.assertEqual(zlib.decompress(snapshot.body), await self.storage.get_body(snapshot.id))
        statuses = sorted(s.status for s in snapshots)
        self.assertEqual(statuses, ["bounced", "bounced", "delivered", "delivered", "delivered", "expired",
                                    "partial", "queued"])
        partial = next(s for s in snapshots if s.status == "partial")
        self.assertEqual([(r.recipient, r.state) for r in partial.recipients],
                         [("carol@example.org", "delivered"), ("dave@example.com", "bounced")])

    @async_test
    async def test_every_bounce_with_its_time_and_raw_report(self):
        bounces, gone = await collect(self.storage.archived_bounces())
        self.assertEqual((len(bounces), gone), (BOUNCES, 0))
        searched, _ = await self.storage.search_bounces(limit=10)
        self.assertEqual([b.id for b in bounces], [b.id for b in reversed(searched)])  # oldest first
        for bounce, row in zip(bounces, reversed(searched)):
            self.assertIsInstance(bounce, BounceSnapshot)
            self.assertEqual(bounce.received_ms, row.score)
            self.assertEqual(bounce.stored["id"], bounce.id)
            self.assertEqual(bounce.raw, await self.storage.get_bounce_raw(bounce.id))
            self.assertIsNotNone(bounce.raw)
        types = sorted(b.stored["type"] for b in bounces)
        self.assertEqual(types, ["HardBounce", "HardBounce", "SpamComplaint"])

    @async_test
    async def test_small_pages_read_the_same(self):
        whole, _ = await collect(self.storage.archived_messages())
        for size in (1, 3):
            paged, _ = await collect(self.storage.archived_messages(size))
            self.assertEqual(paged, whole)
        bounces, _ = await collect(self.storage.archived_bounces())
        self.assertEqual((await collect(self.storage.archived_bounces(2)))[0], bounces)


class PrivateRedisTestCase(unittest.TestCase):
    """Tests on a redis-server of the class's own."""

    timeout = 60

    @classmethod
    def setUpClass(cls) -> None:
        cls.directory = tempfile.mkdtemp(prefix="mr-export-")
        cls.redis = start_redis(Path(cls.directory))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.redis.stop()
        shutil.rmtree(cls.directory, ignore_errors=True)


class IndexWalk(PrivateRedisTestCase):
    """The walk of an index by (score, member): ties beyond a page, entries whose keys are gone."""

    @async_test
    async def test_ties_longer_than_a_page_and_expired_entries(self):
        from uuid import uuid4

        storage = storage_for(self.redis, f"t{uuid4().hex[:8]}:", self)
        ids = [f"{n:020x}" for n in range(25)]
        for n, message_id in enumerate(ids):
            score = 1000 if n < 12 else 2000 + n // 5  # 12 ties at 1000, then groups of ties
            await storage._call("ZADD", storage.keys.time_index, score, message_id)
            if n % 4 != 3:  # every fourth one's hash is gone (expired)
                await storage._call("HSET", storage.keys.msg(message_id), "received_at", score, "status",
                                    "delivered", "rcpt:0", f"r{n}@example.org", "rcpt_count", 1)
        for size in (1, 2, 5, 50):
            snapshots, gone = await collect(storage.archived_messages(size))
            self.assertEqual([s.id for s in snapshots], [i for n, i in enumerate(ids) if n % 4 != 3], size)
            self.assertEqual(gone, 6)
            self.assertEqual(snapshots[0], MessageSnapshot(
                id=ids[0], received_ms=1000, status="delivered", rcpt_count=1,
                recipients=(ArchivedRecipient(0, "r0@example.org", "queued", 0),)))


# -- the copy into PostgreSQL -----------------------------------------------------------------


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", *args, "-c", str(config_path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def table_counts(conninfo: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(conninfo) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("messages", "recipients", "bodies", "bounces")}


@pytest.fixture
def migration_setup(request: Any, archive_databases: Callable[..., str], postgres_server: Any) -> Iterator[None]:
    """Each test: release 1's data in a redis-server of its own, and an archive database of its own."""
    with release_1_redis() as server:
        request.instance.redis = server
        request.instance.conninfo = archive_databases("release-1")
        request.instance.postgres = postgres_server
        yield


@pytest.mark.usefixtures("migration_setup")
class CopyingTheReleaseArchive(unittest.TestCase):
    """The step 1 -> 2 on release 1's data: then PostgreSQL answers every read as Redis does."""

    timeout = 120
    redis: RedisServer
    conninfo: str

    def setUp(self) -> None:
        self.storage = storage_for(self.redis, PREFIX, self, archive_url=self.conninfo, cls=Version2)
        self.database = ArchiveDatabase(self.conninfo)
        self.addCleanup(self.database.close)
        self.reader = ArchiveReader(self.database)
        self.reports: list[str] = []
        self.opened: list[MigrationArchive] = []

    async def migrate(self) -> list[tuple[int, int, str]]:
        async def archive() -> MigrationArchive:
            opened = await MigrationArchive.open(self.storage.config)
            self.opened.append(opened)
            self.addCleanup(opened.close)
            return opened

        return await self.storage.migrate(report=self.reports.append, archive=archive)

    async def assert_same_reads(self) -> None:
        """Every read of the archive: PostgreSQL's answer is Redis's."""
        redis, archive = self.storage, self.reader
        ids = [m.decode() for m in await redis._call("ZRANGE", redis.keys.time_index, 0, -1)]
        self.assertEqual(len(ids), MESSAGES)
        recipients, tags = set(), set()
        for message_id in ids:
            record = await redis.get_message(message_id)
            self.assertIsNotNone(record)
            self.assertEqual(await archive.get_message(message_id), record, message_id)
            timeline = await redis.get_timeline(message_id)
            self.assertTrue(timeline)
            self.assertEqual(await archive.get_timeline(message_id), timeline, message_id)
            body = await redis.get_body(message_id)
            self.assertIsNotNone(body)
            self.assertEqual(await archive.get_body(message_id), body, message_id)
            recipients |= {r.address for r in record.recipients}
            tags |= {record.tag} - {""}
        bounce_ids = [b.decode() for b in await redis._call("ZRANGE", redis.keys.bounces, 0, -1)]
        self.assertEqual(len(bounce_ids), BOUNCES)
        for bounce_id in bounce_ids:
            record = await redis.get_bounce(bounce_id)
            self.assertIsNotNone(record)
            self.assertEqual(await archive.get_bounce(bounce_id), record, bounce_id)
            self.assertEqual(await archive.get_bounce_raw(bounce_id), await redis.get_bounce_raw(bounce_id))
        searches: list[dict[str, Any]] = [{}, *({"recipient": r} for r in sorted(recipients)),
                                          *({"tag": t} for t in sorted(tags)),
                                          *({"status": s} for s in MESSAGE_STATUSES)]
        self.assertEqual(len(tags), 5)
        for filters in searches:
            for limit in (50, 2):
                self.assertEqual(await archive.search_messages(limit=limit, **filters),
                                 await redis.search_messages(limit=limit, **filters), filters)
        self.assertEqual(await archive.status_counts(), await redis.status_counts())
        for filters in ({}, {"type": "HardBounce"}, {"recipient": "erin@example.com"}):
            self.assertEqual(await archive.search_bounces(limit=50, **filters),
                             await redis.search_bounces(limit=50, **filters), filters)

    @async_test
    async def test_after_the_copy_postgresql_answers_every_read_as_redis(self):
        steps = await self.migrate()
        self.assertEqual([(a, b) for a, b, _ in steps], [(1, 2)])
        self.assertEqual(await self.storage.stored_data_version(), "2")
        self.assertEqual(self.reports, [
            "data version 1 -> 2: copy the archive (messages, timelines, bodies, bounces) from Redis "
            "into PostgreSQL",
            f"copying {MESSAGES} messages and {BOUNCES} bounces from Redis into PostgreSQL",
            f"copied {MESSAGES} messages (0 already expired in Redis) and {BOUNCES} bounces"])
        self.assertEqual(self.opened[0].skipped, [])
        await self.assert_same_reads()
        self.assertEqual(table_counts(self.conninfo),
                         {"messages": MESSAGES, "recipients": MESSAGES + 1, "bodies": MESSAGES,
                          "bounces": BOUNCES})
        # nothing is deleted from Redis by the step itself: the release does it, after
        # [archive] release_after (1m here), see test_what_was_copied_leaves_redis_once_released
        self.assertEqual(await self.storage.archive_sizes(), (MESSAGES, BOUNCES))

    @async_test
    async def test_what_was_copied_leaves_redis_once_released(self):
        """The step marks what it copied as the archiver marks what it archives: once the data is
        at version 2, release_archived (once release_after has passed) deletes the Redis keys of the copied
        final messages and of the bounces; the message still queued keeps its keys until the
        archiver has archived it final, and is released then. Every read through ArchiveView
        (Redis, then PostgreSQL) returns before and after what Redis returned before the step."""
        from mailrelay.store import ClaimedJob, Event
        from mailrelay.store.archiverelease import Released
        from mailrelay.store.archiveview import ArchiveView
        from mailrelay.store.archivewrite import ArchiveWriter

        storage = self.storage
        later = storage_for(self.redis, PREFIX, self, archive_url=self.conninfo, cls=ReleaseTime)
        keys = storage.keys
        view = ArchiveView(storage, self.reader)
        ids = [m.decode() for m in await storage._call("ZRANGE", keys.time_index, 0, -1)]
        bounce_ids = [b.decode() for b in await storage._call("ZRANGE", keys.bounces, 0, -1)]
        messages = {i: (await storage.get_message(i), await storage.get_timeline(i), await storage.get_body(i))
                    for i in ids}
        bounces = {b: (await storage.get_bounce(b), await storage.get_bounce_raw(b)) for b in bounce_ids}
        [queued] = [i for i, (record, _, _) in messages.items() if record.status == "queued"]

        async def assert_same_reads() -> None:
            for message_id, (record, timeline, body) in messages.items():
                self.assertEqual((await view.get_message(message_id), await view.get_timeline(message_id),
                                  await view.get_body(message_id)), (record, timeline, body), message_id)
            for bounce_id, (bounce, raw) in bounces.items():
                self.assertEqual((await view.get_bounce(bounce_id), await view.get_bounce_raw(bounce_id)),
                                 (bounce, raw), bounce_id)

        def present(message_id: str) -> int:
            return storage._call("EXISTS", keys.msg(message_id), keys.timeline(message_id), keys.body(message_id))

        for message_id in ids:  # release 1 had no archiver
            self.assertIsNone(await storage._call("HGET", keys.msg(message_id), "archived"))
        await self.migrate()
        self.assertEqual(await storage.stored_data_version(), "2")
        self.assertEqual(await storage.release_archived(), Released(0, 0, 0))  # not before release_after
        for message_id in ids:  # every copied hash records the timeline length copied
            self.assertEqual(int(await storage._call("HGET", keys.msg(message_id), "archived")),
                             await storage._call("LLEN", keys.timeline(message_id)), message_id)
        self.assertEqual(await later.release_archived(), Released(MESSAGES - 1, BOUNCES, 0))
        for message_id in ids:
            self.assertEqual(await present(message_id), 3 if message_id == queued else 0, message_id)
        self.assertEqual(await storage.archive_sizes(), (1, 0))  # the queued one left in the time index
        for bounce_id in bounce_ids:
            self.assertEqual(await storage._call("EXISTS", keys.bounce(bounce_id), keys.bounce_raw(bounce_id)), 0)
        self.assertEqual(await storage._call("ZCARD", keys.archive_release), 0)
        await assert_same_reads()

        # the queued message is delivered; the archiver (its steps, in-process) archives it and
        # schedules its release, as for any message at version 2
        record = messages[queued][0]
        [recipient] = record.recipients
        job = ClaimedJob(f"{queued}.0", queued, 0, record.sender, recipient.address, 0, storage.now_ms(),
                         recipient.address.rpartition("@")[2])
        event = Event(type="delivered", at="2026-12-04T10:00:00Z", recipient=recipient.address, rcpt=0)
        self.assertEqual(await storage.record(job, "test", "delivered", event), "OK")
        await storage.archive_create_group()
        entries = await storage.archive_read("test", 10_000)
        batch = await storage.archive_snapshot(entries)
        result = await ArchiveWriter(self.database).write(batch)
        await storage.archive_mark(result.written_part(batch), [e.id for e in entries])
        delivered = (await storage.get_message(queued), await storage.get_timeline(queued))
        self.assertEqual(delivered[0].status, "delivered")
        self.assertEqual(await later.release_archived(), Released(1, 0, 0))
        self.assertEqual(await present(queued), 0)
        self.assertEqual(await storage.archive_sizes(), (0, 0))
        self.assertEqual((await view.get_message(queued), await view.get_timeline(queued)), delivered)
        self.assertEqual(await view.get_body(queued), messages[queued][2])

    @async_test
    async def test_what_the_writer_refuses_is_not_marked(self):
        """A message PostgreSQL cannot hold (here a recipient index past its smallint, which no
        write path makes) is skipped and listed; it is not marked archived nor scheduled, so its
        Redis keys are never released for an archive that lacks it (they expire as before)."""
        storage, keys = self.storage, self.storage.keys
        statuses = {m.decode(): (await storage.get_message(m.decode())).status
                    for m in await storage._call("ZRANGE", keys.time_index, 0, -1)}
        bad = next(i for i, status in statuses.items() if status == "delivered")
        await storage._call("HSET", keys.msg(bad), "rcpt_count", "40000", "rcpt:39999", "z@example.test")
        await self.migrate()
        self.assertEqual([(e.kind, e.id, e.expired) for e in self.opened[0].skipped], [("message", bad, False)])
        self.assertIsNone(await storage._call("HGET", keys.msg(bad), "archived"))
        final = [f"m:{i}" for i, status in statuses.items() if status != "queued" and i != bad]
        bounces = [f"b:{b.decode()}" for b in await storage._call("ZRANGE", keys.bounces, 0, -1)]
        schedule = [m.decode() for m in await storage._call("ZRANGE", keys.archive_release, 0, -1)]
        self.assertEqual(sorted(schedule), sorted(final + bounces))
        self.assertEqual(len(final), MESSAGES - 2)

    @async_test
    async def test_copying_again_stores_nothing_twice(self):
        await self.migrate()
        first = table_counts(self.conninfo)
        await self.storage._call("SET", self.storage.keys.data_version, 1)  # as if interrupted
        steps = await self.migrate()
        self.assertEqual([(a, b) for a, b, _ in steps], [(1, 2)])
        self.assertEqual(table_counts(self.conninfo), first)
        await self.assert_same_reads()

    @async_test
    async def test_the_step_needs_the_archive_database(self):
        with self.assertRaisesRegex(Storage.DataVersionError, "writes the archive's PostgreSQL database"):
            await self.storage.migrate()
        self.assertEqual(await self.storage.stored_data_version(), "1")

    @async_test
    async def test_older_days_are_made_and_what_is_past_retention_left_out(self):
        """Release 1 kept up to `retention` (45 days) in Redis, a new archive has partitions from
        today: the copy makes the older days' partitions, leaves out what is past retention
        (here a message of 50 days) and the bodies past content_retention (7 days)."""
        import datetime

        from mailrelay.store.queue import compress_body

        # the default retentions (45 days, bodies 7), counted from today
        self.storage = storage_for(self.redis, PREFIX, self, archive_url=self.conninfo, cls=Version2, tracking={})
        storage, keys = self.storage, self.storage.keys
        now_ms = int(datetime.datetime.now(datetime.timezone.utc).timestamp() * 1000)
        old = {days: (now_ms - days * 86_400_000, f"{now_ms - days * 86_400_000:012x}{days:08x}")
               for days in (50, 40, 3)}
        body = b"Subject: old\r\n\r\nold\r\n"
        for ms, message_id in old.values():
            await storage._call("ZADD", keys.time_index, ms, message_id)
            await storage._call("HSET", keys.msg(message_id), "received_at", ms, "status", "delivered",
                                "rcpt:0", "old@example.org", "state:0", "delivered", "rcpt_count", 1)
            await storage._call("RPUSH", keys.timeline(message_id), b'{"type":"delivered","rcpt":0}')
            await storage._call("SET", keys.body(message_id), compress_body(body))
        await self.migrate()
        self.assertEqual([(e.kind, e.id, e.expired) for e in self.opened[0].skipped],
                         [("message", old[50][1], True)])
        self.assertIsNone(await self.reader.get_message(old[50][1]))
        for days in (40, 3):
            message_id = old[days][1]
            self.assertEqual(await self.reader.get_message(message_id), await storage.get_message(message_id))
            self.assertEqual(await self.reader.get_timeline(message_id), await storage.get_timeline(message_id))
        self.assertIsNone(await self.reader.get_body(old[40][1]))  # past content_retention
        self.assertEqual(await self.reader.get_body(old[3][1]), body)
        self.assertEqual(table_counts(self.conninfo)["messages"], MESSAGES + 2)


@AT_VERSION_2
@pytest.mark.usefixtures("migration_setup")
class MigrateCommand(unittest.TestCase):
    """`mailrelay migrate` (a process) on release 1's data."""

    timeout = 120
    redis: RedisServer
    conninfo: str
    postgres: Any

    def config(self, **sections: Any) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="mr-migrate-"))
        self.addCleanup(shutil.rmtree, directory, True)
        path = directory / "mailrelay.toml"
        sections.setdefault("tracking", RDB_RETENTION)
        path.write_text(make_daemon_config(self.redis, PREFIX, directory / "state", **sections))
        return path

    def version(self) -> bytes | None:
        with self.redis.client() as client:
            return client.command("GET", f"{PREFIX}meta:version")

    def test_migrate_copies_the_archive_and_records_version_2(self):
        config = self.config(archive={"url": self.conninfo})
        result = cli(config, "migrate")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines(), [
            "data version 1 -> 2: copy the archive (messages, timelines, bodies, bounces) from Redis "
            "into PostgreSQL",
            f"copying {MESSAGES} messages and {BOUNCES} bounces from Redis into PostgreSQL",
            f"copied {MESSAGES} messages (0 already expired in Redis) and {BOUNCES} bounces",
            "migrated from data format version 1 to 2"])
        self.assertEqual(self.version(), b"2")
        self.assertEqual(table_counts(self.conninfo)["messages"], MESSAGES)
        again = cli(config, "migrate")
        self.assertEqual((again.returncode, again.stdout), (0, "data format version 2: nothing to migrate\n"))

    def test_the_managed_postgresql_gets_its_database_and_the_copy(self):
        """No [archive] url: the daemon's managed PostgreSQL under state_dir (here the test server,
        whose socket directory is state_dir/postgresql), its database `mailrelay` made."""
        import psycopg

        config = self.config()
        (config.parent / "state").mkdir()
        (config.parent / "state" / "postgresql").symlink_to(self.postgres.socket_dir)
        self.addCleanup(self.drop_managed_database)
        result = cli(config, "migrate")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines()[-1], "migrated from data format version 1 to 2")
        self.assertEqual(table_counts(self.postgres.conninfo("mailrelay")),
                         {"messages": MESSAGES, "recipients": MESSAGES + 1, "bodies": MESSAGES, "bounces": BOUNCES})
        with psycopg.connect(self.postgres.conninfo("mailrelay")) as conn:
            self.assertTrue(conn.execute("SELECT version FROM schema_version").fetchone())

    def drop_managed_database(self) -> None:
        import psycopg

        with psycopg.connect(self.postgres.conninfo(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS mailrelay WITH (FORCE)")

    def test_the_managed_postgresql_not_running_is_one_line(self):
        config = self.config()  # no [archive] url: the managed PostgreSQL under state_dir
        result = cli(config, "migrate")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stderr, "mailrelay: the daemon's managed PostgreSQL is not running (no socket "
                                        f"in {config.parent}/state/postgresql)\n")
        self.assertEqual(self.version(), b"1")
        with self.redis.client() as client:
            self.assertEqual(client.command("EXISTS", f"{PREFIX}meta:migrating"), 0)

    def test_an_unreachable_archive_database_is_one_line(self):
        config = self.config(archive={"url": "postgresql://nobody@127.0.0.1:1/none", "connect_timeout": "2s"})
        result = cli(config, "migrate")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
        self.assertTrue(re.match(r"mailrelay: archive database at 127\.0\.0\.1:1 db none user nobody: .*; "
                                 r"run `mailrelay migrate` again$", result.stderr), result.stderr)
        self.assertEqual(self.version(), b"1")

    def test_a_live_daemon_of_release_1_blocks_the_copy(self):
        import time

        with self.redis.client() as client:
            client.command("HSET", f"{PREFIX}cluster:old:1:x", "version", "1.0", "data_version", 1,
                           "beat", int(time.time() * 1000), "started", 1)
            client.command("ZADD", f"{PREFIX}cluster", int(time.time() * 1000), "old:1:x")
        result = cli(self.config(archive={"url": self.conninfo}), "migrate")
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.strip().endswith(
            "live daemons do not understand data version 2 yet: old:1:x (mailrelay 1.0, data version 1); "
            "upgrade them first (or use --force)"), result.stderr)
        self.assertEqual(self.version(), b"1")
        self.assertEqual(table_counts(self.conninfo)["messages"], 0)


class LargeBodies(PrivateRedisTestCase):
    """A page whose bodies are large is read and written in parts (bounded memory)."""

    @async_test
    async def test_a_page_of_large_bodies_is_split_by_their_stored_size(self):
        from uuid import uuid4

        storage = storage_for(self.redis, f"t{uuid4().hex[:8]}:", self)
        keys = storage.keys
        sizes = [300, 300, 500, 100, 100, 100, 0, 250]  # stored bytes; 0: the body expired
        ids = [f"{n + 1:012x}{n:08x}" for n in range(len(sizes))]
        for n, (message_id, size) in enumerate(zip(ids, sizes)):
            await storage._call("ZADD", keys.time_index, n + 1, message_id)
            await storage._call("HSET", keys.msg(message_id), "received_at", n + 1, "status", "delivered")
            if size:
                await storage._call("SET", keys.body(message_id), bytes([n]) * size)
        await storage._call("ZADD", keys.time_index, 100, "00000000006400000000")  # its hash is gone
        pages = [page async for page in storage.archived_messages(size=50, body_bytes=600)]
        self.assertEqual([[s.id for s in page.records] for page in pages],
                         [ids[0:2], ids[2:4], ids[4:8]])  # 600, 600, 350 bytes: at most 600 each
        self.assertEqual([page.gone for page in pages], [1, 0, 0])  # counted once per index page
        bodies = [s.body for page in pages for s in page.records]
        self.assertEqual(bodies, [bytes([n]) * size if size else None for n, size in enumerate(sizes)])

        only_gone = [page async for page in storage.archived_messages(size=1, body_bytes=600)]
        self.assertEqual(only_gone[-1].records, ())
        self.assertEqual(sum(page.gone for page in only_gone), 1)

    @async_test
    async def test_bounces_split_by_their_raw_reports(self):
        from uuid import uuid4

        storage = storage_for(self.redis, f"t{uuid4().hex[:8]}:", self)
        keys = storage.keys
        for n, size in enumerate([400, 400, 100]):
            bounce_id = f"b{n}"
            await storage._call("ZADD", keys.bounces, n, bounce_id)
            await storage._call("HSET", keys.bounce(bounce_id), "id", bounce_id, "type", "HardBounce")
            await storage._call("SET", keys.bounce_raw(bounce_id), b"r" * size)
        pages = [page async for page in storage.archived_bounces(size=50, raw_bytes=500)]
        self.assertEqual([[b.id for b in page.records] for page in pages], [["b0"], ["b1", "b2"]])
        self.assertEqual([len(b.raw) for page in pages for b in page.records], [400, 400, 100])


class ReadAhead(unittest.TestCase):
    """The migration reads the next page while it writes one (archiveexport.read_ahead)."""

    @async_test
    async def test_pages_in_order_each_next_one_asked_before_the_current_is_used(self):
        from contextlib import aclosing

        from mailrelay.store.archiveexport import read_ahead

        asked: list[int] = []

        async def pages() -> Any:
            for n in range(4):
                asked.append(n)
                yield n

        seen = []
        async with aclosing(read_ahead(pages())) as ahead:
            async for page in ahead:
                seen.append((page, list(asked)))
        self.assertEqual(seen, [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2, 3]), (3, [0, 1, 2, 3])])

    @async_test
    async def test_a_caller_that_stops_drops_the_failed_read_ahead(self):
        from contextlib import aclosing

        import gc

        from twisted.internet import defer

        from mailrelay.store.archiveexport import read_ahead

        second: defer.Deferred[int] = defer.Deferred()

        async def pages() -> Any:
            yield 1
            yield await second  # still being read when the caller stops

        with self.assertRaisesRegex(RuntimeError, "the write failed"):
            async with aclosing(read_ahead(pages())) as ahead:
                async for _ in ahead:
                    raise RuntimeError("the write failed")
        second.errback(ConnectionError("Redis went away"))  # nobody takes it: no unhandled error
        gc.collect()  # an unhandled failure is logged when its Deferred is collected
        self.assertEqual(self.flushLoggedErrors(ConnectionError), [])
