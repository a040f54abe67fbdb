"""`mailrelay migrate` from data version 1 to 2: the Redis archive written by release 1 is read out
whole (mailrelay.store.archiveexport) as the archive's write records (MessageSnapshot,
BounceSnapshot).

The data is tests/migration/release-1.rdb (written by release 1's own code, see
make_release_data.py), loaded into a real redis-server as of now (tests/rdbfile.py moves each
key's expiry by the time since the file was saved, so the test does not change with the date).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest
from twisted.trial import unittest

from conftest import RedisServer, async_test, start_redis
from rdbfile import as_of_now

from mailrelay.config import parse_config
from mailrelay.store import Storage, connect_redis
from mailrelay.store.archiverecords import ArchivedRecipient, BounceSnapshot, MessageSnapshot
from mailrelay.store.records import MessageRecord, decode_timeline

RELEASE_1 = Path(__file__).resolve().parent / "migration" / "release-1.rdb"
PREFIX = "mailrelay:"  # make_release_data.py's
MESSAGES = 8  # in release-1.rdb
BOUNCES = 3


@pytest.fixture(scope="module")
def release_redis() -> Iterator[RedisServer]:
    """A redis-server holding release 1's data (its dump.rdb, expiries moved to now)."""
    directory = Path(tempfile.mkdtemp(prefix="mr-release1-"))
    (directory / "dump.rdb").write_bytes(as_of_now(RELEASE_1.read_bytes()))
    server = start_redis(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def release_setup(request: Any, release_redis: RedisServer) -> None:
    request.cls.release_redis = release_redis


def storage_for(server: RedisServer, prefix: str, case: unittest.TestCase) -> Storage:
    config = parse_config({"redis": {"url": server.url, "key_prefix": prefix}})
    redis = connect_redis(config, None)
    case.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
    return Storage(config, redis)


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


class IndexWalk(unittest.TestCase):
    """The walk of an index by (score, member): ties beyond a page, entries whose keys are gone."""

    timeout = 60

    @classmethod
    def setUpClass(cls) -> None:
        cls.directory = tempfile.mkdtemp(prefix="mr-export-")
        cls.redis = start_redis(Path(cls.directory))

    @classmethod
    def tearDownClass(cls) -> None:
        cls.redis.stop()
        shutil.rmtree(cls.directory, ignore_errors=True)

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
