"""
Releasing an archived message's Redis keys (mailrelay.store.archiverelease, release_archived.lua):
once the data is at version 2, a final message whose whole timeline is archived loses its hash,
timeline, body and index entries when its release time comes; anything else stays. Real Redis;
the archiver's scheduling (its mark script) is planted here as it leaves it: the hash's
`archived` field and the member in P archive:release.
"""

from __future__ import annotations

import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from conftest import start_redis
from mailrelay.config import parse_config
from mailrelay.store import Event, NewMessage, Storage, connect_redis
from mailrelay.store.cluster import ARCHIVE_IN_POSTGRES_VERSION


class ReleaseTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.redis_server = start_redis(tempfile.mkdtemp(prefix="mr-rel-", dir="/tmp"))
        self.addCleanup(self.redis_server.stop)
        self.prefix = "rel:"
        self.config = parse_config({"redis": {"url": self.redis_server.url, "key_prefix": self.prefix}})
        self.redis = connect_redis(self.config, None)
        self.addCleanup(self.redis.disconnect)
        self.storage = Storage(self.config, self.redis)
        yield defer.ensureDeferred(self.storage.measure_clock())
        self.client = self.redis_server.client()
        self.set_version(ARCHIVE_IN_POSTGRES_VERSION)

    def set_version(self, version: int) -> None:
        self.client.command("SET", self.prefix + "meta:version", version)

    async def delivered(self, rcpt: str = "Someone@Example.test", tag: str = "welcome",
                        dedupe: tuple[str, str, float] | None = None) -> str:
        """A message accepted, confirmed and delivered to its one recipient."""
        message = NewMessage(sender="app@example.com", recipients=[rcpt], content=b"Subject: x\r\n\r\nhi\r\n",
                             tag=tag, summary={"from": "app@example.com", "to": [rcpt], "cc": [], "subject": "x",
                                               "message_id": "<x@y>"})
        message_id = await self.storage.enqueue(message, dedupe=dedupe)
        await self.storage.confirm(message_id)
        [job] = await self.storage.claim("example.test", 10, "test", 60)
        event = Event(type="delivered", at="2026-12-04T10:00:00Z", recipient=rcpt, rcpt=0)
        self.assertEqual(await self.storage.record(job, "test", "delivered", event), "OK")
        return message_id

    def archive(self, message_id: str, due_ms: int = 0) -> None:
        """What the archiver's mark script leaves once it wrote the whole timeline."""
        length = self.client.command("LLEN", f"{self.prefix}timeline:{message_id}")
        self.client.command("HSET", f"{self.prefix}msg:{message_id}", "archived", length)
        self.client.command("ZADD", f"{self.prefix}archive:release", due_ms, f"m:{message_id}")

    def message_keys(self, message_id: str) -> list[str]:
        return [f"{self.prefix}{kind}:{message_id}" for kind in ("msg", "timeline", "body")]

    def exists(self, *keys: str) -> int:
        return self.client.command("EXISTS", *keys)

    def indexed(self, message_id: str) -> list[str]:
        """The Redis search indexes that still hold the message."""
        indexes = ["idx:time", "idx:rcpt:someone@example.test", "idx:tag:welcome", "idx:status:delivered"]
        return [name for name in indexes
                if self.client.command("ZSCORE", self.prefix + name, message_id) is not None]

    @defer.inlineCallbacks
    def test_a_final_archived_message_leaves_redis(self):
        message_id = yield defer.ensureDeferred(self.delivered())
        self.assertEqual(self.exists(*self.message_keys(message_id)), 3)
        self.assertEqual(len(self.indexed(message_id)), 4)
        self.archive(message_id)
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual((released.messages, released.bounces, released.kept), (1, 0, 0))
        self.assertEqual(self.exists(*self.message_keys(message_id)), 0)
        self.assertEqual(self.indexed(message_id), [])
        self.assertEqual(self.client.command("ZCARD", f"{self.prefix}archive:release"), 0)

    @defer.inlineCallbacks
    def test_nothing_goes_before_its_release_time(self):
        message_id = yield defer.ensureDeferred(self.delivered())
        self.archive(message_id, due_ms=self.storage.now_ms() + 3_600_000)
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual((released.messages, released.kept), (0, 0))
        self.assertEqual(self.exists(*self.message_keys(message_id)), 3)

    @defer.inlineCallbacks
    def test_a_message_with_an_event_not_yet_archived_stays(self):
        message_id = yield defer.ensureDeferred(self.delivered())
        self.archive(message_id)
        # a late event (a bounce report) after the archiver's snapshot
        self.client.command("RPUSH", f"{self.prefix}timeline:{message_id}", '{"type":"bounced"}')
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual((released.messages, released.kept), (0, 1))
        self.assertEqual(self.exists(*self.message_keys(message_id)), 3)
        self.assertEqual(len(self.indexed(message_id)), 4)

    @defer.inlineCallbacks
    def test_a_message_still_being_delivered_stays(self):
        message = NewMessage(sender="app@example.com", recipients=["a@example.test"], content=b"x\r\n")
        message_id = yield defer.ensureDeferred(self.storage.enqueue(message))
        yield defer.ensureDeferred(self.storage.confirm(message_id))
        self.archive(message_id)
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual((released.messages, released.kept), (0, 1))
        self.assertEqual(self.exists(f"{self.prefix}msg:{message_id}"), 1)

    @defer.inlineCallbacks
    def test_nothing_is_released_before_the_archive_moved_to_postgresql(self):
        """Data version 1 (a rolling upgrade): an old daemon reads the whole archive from Redis.
        What is scheduled (by `mailrelay migrate`, before it records version 2) waits, due or
        not, and goes once the version is 2."""
        self.set_version(ARCHIVE_IN_POSTGRES_VERSION - 1)
        message_id = yield defer.ensureDeferred(self.delivered())
        self.archive(message_id)
        self.client.command("HSET", f"{self.prefix}bounce:b1", "id", "b1")
        self.client.command("ZADD", f"{self.prefix}archive:release", 0, "b:b1")
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual((released.messages, released.bounces, released.kept), (0, 0, 0))
        self.assertEqual(self.exists(*self.message_keys(message_id), f"{self.prefix}bounce:b1"), 4)
        self.assertEqual(self.client.command("ZCARD", f"{self.prefix}archive:release"), 2)
        self.set_version(ARCHIVE_IN_POSTGRES_VERSION)
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual((released.messages, released.bounces, released.kept), (1, 1, 0))
        self.assertEqual(self.exists(*self.message_keys(message_id), f"{self.prefix}bounce:b1"), 0)

    @defer.inlineCallbacks
    def test_an_archived_bounce_leaves_redis(self):
        p = self.prefix
        self.client.command("HSET", f"{p}bounce:b1", "id", "b1", "type", "HardBounce")
        self.client.command("SET", f"{p}bounce:raw:b1", "raw report")
        self.client.command("ZADD", f"{p}bounces", 5, "b1")
        self.client.command("ZADD", f"{p}bounces:unmatched", 5, "b1")
        self.client.command("ZADD", f"{p}archive:release", 0, "b:b1")
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual((released.messages, released.bounces), (0, 1))
        self.assertEqual(self.exists(f"{p}bounce:b1", f"{p}bounce:raw:b1"), 0)
        self.assertIsNone(self.client.command("ZSCORE", f"{p}bounces", "b1"))
        self.assertIsNone(self.client.command("ZSCORE", f"{p}bounces:unmatched", "b1"))

    @defer.inlineCallbacks
    def test_a_released_message_is_still_a_duplicate(self):
        dedupe = ("app", "<same@app.test>", 600.0)
        first = yield defer.ensureDeferred(self.delivered(dedupe=dedupe))
        self.archive(first)
        released = yield defer.ensureDeferred(self.storage.release_archived())
        self.assertEqual(released.messages, 1)
        again = NewMessage(sender="app@example.com", recipients=["b@example.test"], content=b"x\r\n")
        second = yield defer.ensureDeferred(self.storage.enqueue(again, dedupe=dedupe))
        self.assertEqual(second, first)
        self.assertEqual(self.exists(f"{self.prefix}msg:{again.id}"), 0)
