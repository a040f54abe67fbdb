"""
Archive retention: records, timelines, bodies and index entries expire, and an expired message
disappears from every search. Redis's own clock cannot be moved, so the tests read the expiry
Redis was given (TTL) and plant index entries that are older than the retention.
"""

from __future__ import annotations

import tempfile

from twisted.internet import defer
from twisted.trial import unittest

from conftest import start_redis
from mailrelay.config import parse_config
from mailrelay.store import NewMessage, Storage, connect_redis

DAY = 86400


class RetentionTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.redis_server = start_redis(tempfile.mkdtemp(prefix="mr-ret-", dir="/tmp"))
        self.addCleanup(self.redis_server.stop)
        self.prefix = "ret:"
        self.config = parse_config({
            "redis": {"url": self.redis_server.url, "key_prefix": self.prefix},
            "tracking": {"retention": "10d", "content_retention": "7d"},
            "delivery": {"max_queue_lifetime": "1d"},
        })
        self.redis = connect_redis(self.config, None)
        self.addCleanup(self.redis.disconnect)
        self.storage = Storage(self.config, self.redis)
        yield defer.ensureDeferred(self.storage.measure_clock())
        self.client = self.redis_server.client()

    def enqueue(self, rcpt: str, tag: str = "welcome") -> defer.Deferred:
        return defer.ensureDeferred(self.storage.enqueue(NewMessage(
            sender="app@example.com", recipients=[rcpt], content=b"Subject: x\r\n\r\nhi\r\n", tag=tag,
            summary={"from": "app@example.com", "to": [rcpt], "cc": [], "subject": "x", "message_id": "<x@y>"})))

    def ttl(self, key: str) -> int:
        return self.client.command("TTL", self.prefix + key)

    @defer.inlineCallbacks
    def test_records_bodies_and_indexes_expire(self):
        message_id = yield self.enqueue("a@example.org")
        for key in (f"msg:{message_id}", f"timeline:{message_id}", "idx:rcpt:a@example.org", "idx:tag:welcome"):
            self.assertTrue(10 * DAY - 60 <= self.ttl(key) <= 10 * DAY, key)
        # bodies: content_retention (7d), and never less than the queue lifetime plus a day
        self.assertTrue(7 * DAY - 60 <= self.ttl(f"body:{message_id}") <= 7 * DAY)

    @defer.inlineCallbacks
    def test_body_outlives_the_queue_lifetime(self):
        self.config = parse_config({
            "redis": {"url": self.redis_server.url, "key_prefix": self.prefix},
            "tracking": {"content_retention": "1h"}, "delivery": {"max_queue_lifetime": "3d"}})
        self.storage = Storage(self.config, self.redis)
        yield defer.ensureDeferred(self.storage.measure_clock())
        message_id = yield self.enqueue("a@example.org")
        self.assertTrue(4 * DAY - 60 <= self.ttl(f"body:{message_id}") <= 4 * DAY)

    @defer.inlineCallbacks
    def test_entries_older_than_retention_leave_every_index(self):
        now_ms = self.storage.now_ms()
        old = now_ms - 11 * DAY * 1000   # older than the 10-day retention
        for key in ("idx:time", "idx:tag:welcome", "idx:rcpt:a@example.org"):
            self.client.command("ZADD", self.prefix + key, old, "0000000000000000old1")
        yield self.enqueue("a@example.org")   # writing an index trims it
        for key in ("idx:time", "idx:tag:welcome", "idx:rcpt:a@example.org"):
            members = self.client.command("ZRANGE", self.prefix + key, 0, -1)
            self.assertNotIn(b"0000000000000000old1", members, key)
            self.assertEqual(len(members), 1, key)

    @defer.inlineCallbacks
    def test_expired_message_disappears_from_searches(self):
        kept = yield self.enqueue("a@example.org")
        gone = yield self.enqueue("a@example.org")
        # what Redis's expiry does to a record at the end of its retention
        self.client.command("DEL", f"{self.prefix}msg:{gone}")
        for search in (dict(), dict(recipient="a@example.org"), dict(tag="welcome"), dict(status="queued")):
            rows, cursor = yield defer.ensureDeferred(self.storage.search_messages(limit=50, **search))
            self.assertEqual([r.id for r in rows], [kept], search)
            self.assertIsNone(cursor)
