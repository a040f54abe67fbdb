"""
The archiver's side of Redis (mailrelay.store.archivefeed): its consumer group on ``P events``,
batch snapshots, marks, take-overs, trimming and lag, against a real redis-server.

Every message, event and bounce here is written by the store's own write paths (enqueue and
confirm, claim and record, record_bounce, cancel, admin delete), never planted by hand, except
where a test needs what no write path makes: keys gone (DEL, as expiry does), entries with a
chosen time (XADD with an explicit id), or a dead consumer's entries made old (XCLAIM IDLE).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any
from uuid import uuid4

import pytest
from twisted.trial import unittest

from conftest import async_test
from mailrelay.config import parse_config
from mailrelay.store import Event, NewMessage, Storage, connect_redis
from mailrelay.store.archivefeed import BOUNCE_GONE, MESSAGE_GONE, ArchiveLag, FeedEntry
from mailrelay.store.archiverecords import ArchiveBatch, ArchivedRecipient, CancelledMessage, MessageSnapshot
from mailrelay.timefmt import rfc3339

CONTENT = b"From: app@example.com\r\nSubject: Hello\r\n\r\nHello there\r\n"
GROUP = "archiver"


class ArchiveFeedTests(unittest.TestCase):
    timeout = 30

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server: Any) -> None:
        self.redis_server = redis_server

    def setUp(self) -> None:
        self.prefix = f"t{uuid4().hex[:8]}:"
        self.config = parse_config({"redis": {"url": self.redis_server.url, "key_prefix": self.prefix}})
        redis = connect_redis(self.config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        self.storage = Storage(self.config, redis, owner="test-daemon")
        self.client = self.redis_server.client()
        self.addCleanup(self.client.close)
        self.events = self.prefix + "events"

    # -- helpers: the store's own write paths ---------------------------------------------

    async def accepted(self, recipients: tuple[str, ...] = ("a@example.test",), *, tag: str = "news",
                       content: bytes = CONTENT) -> str:
        """A message as submission stores it and confirms it once its 250 is sent."""
        message = NewMessage(sender="app@example.com", recipients=list(recipients), content=content, tag=tag,
                             metadata={"customer": "42", "plan": "pro"}, user="app", client="192.0.2.7",
                             summary={"from": "App <app@example.com>", "to": list(recipients), "cc": [],
                                      "subject": "Hello", "message_id": "<m1@example.com>"})
        message_id = await self.storage.enqueue(message)
        await self.storage.confirm(message_id)
        return message_id

    async def delivered(self, message_id: str, domain: str = "example.test") -> None:
        """Every job of ``domain`` claimed and recorded delivered (record.lua's event)."""
        jobs = await self.storage.claim(domain, 10, "test-daemon", 60)
        assert jobs, "no job to deliver"
        outcomes = [(job, "delivered", Event(type="delivered", at=rfc3339(time.time()), recipient=job.recipient,
                                             rcpt=job.rcpt, detail="250 ok", smtp_code=250), None)
                    for job in jobs if job.message_id == message_id]
        assert await self.storage.record_many(outcomes, "test-daemon") == ["OK"] * len(outcomes)

    async def bounce(self, message_id: str | None, rcpt: int | None, *, event: bool = True) -> str:
        """A bounce stored as the bounce recorder stores one (matched when message_id is given)."""
        bounce_id = f"b{uuid4().hex[:12]}"
        record = {"id": bounce_id, "message_id": message_id or "", "recipient": "a@example.test",
                  "type": "HardBounce", "type_code": 10, "description": "Hard bounce",
                  "details": "550 5.1.1 no such user", "status": "5.1.1", "remote_mta": "mx.example.test",
                  "at": rfc3339(time.time()), "source": "dsn", "proof": "verp" if message_id else ""}
        bounce_event = None
        if message_id is not None and event:
            bounce_event = Event(type="bounced", at=record["at"], recipient="a@example.test", rcpt=rcpt or 0,
                                 detail="HardBounce: 550 5.1.1 no such user")
        stored = await self.storage.record_bounce(
            record, b"raw report of " + bounce_id.encode(), message_id=message_id, rcpt=rcpt,
            state="bounced" if bounce_event else None, event=bounce_event, suppress=None)
        assert stored is not None
        return bounce_id

    async def all_entries(self, consumer: str = "c1") -> list[FeedEntry]:
        await self.storage.archive_create_group()
        return await self.storage.archive_read(consumer, 10_000)

    def group_info(self, name: str = GROUP) -> dict[str, Any]:
        for flat in self.client.command("XINFO", "GROUPS", self.events):
            row = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
            if row["name"] == name.encode():
                return row
        raise AssertionError(f"no group {name}")

    def stream_ids(self) -> list[str]:
        return [entry[0].decode() for entry in self.client.command("XRANGE", self.events, "-", "+")]

    # -- the group ----------------------------------------------------------------------

    @async_test
    async def test_the_group_starts_at_the_beginning_of_the_stream(self) -> None:
        first = await self.accepted()  # its entry is in the stream before the group exists
        self.assertTrue(await self.storage.archive_create_group())
        self.assertFalse(await self.storage.archive_create_group())  # an existing group is fine
        second = await self.accepted()
        entries = await self.storage.archive_read("c1", 100)
        self.assertEqual([(e.type, e.message_id) for e in entries], [("queued", first), ("queued", second)])
        self.assertEqual(await self.storage.archive_read("c1", 100), [])  # delivered once
        self.assertEqual(int(self.group_info()["pending"]), 2)

    @async_test
    async def test_entries_are_typed(self) -> None:
        message_id = await self.accepted()
        await self.delivered(message_id)
        bounce_id = await self.bounce(message_id, 0)
        queued, delivered, bounced = await self.all_entries()
        self.assertEqual((queued.type, queued.message_id, queued.rcpt, queued.bounce_id), ("queued", message_id, None, ""))
        self.assertEqual((delivered.type, delivered.message_id, delivered.rcpt), ("delivered", message_id, 0))
        self.assertEqual((bounced.type, bounced.message_id, bounced.rcpt, bounced.bounce_id),
                         ("bounced", message_id, 0, bounce_id))
        for entry in (queued, delivered, bounced):  # times on Redis's clock (the store's estimate of it)
            self.assertLess(abs(entry.at_ms - int(entry.id.split("-")[0])), 1000)

    # -- snapshots ----------------------------------------------------------------------

    @async_test
    async def test_snapshot_of_a_delivered_message(self) -> None:
        message_id = await self.accepted(("a@example.test", "b@example.test"))
        await self.delivered(message_id)
        entries = await self.all_entries()
        self.assertEqual(len(entries), 3)  # queued, and one delivered per recipient
        batch = await self.storage.archive_snapshot(entries)
        [snapshot] = batch.messages  # once, however many entries name it
        stored = {k.decode(): v.decode() for k, v in zip(*[iter(self.client.command(
            "HGETALL", self.prefix + "msg:" + message_id))] * 2)}
        self.assertEqual(snapshot.id, message_id)
        self.assertEqual(snapshot.received_ms, int(stored["received_at"]))
        self.assertEqual((snapshot.status, snapshot.sender, snapshot.from_header, snapshot.subject),
                         ("delivered", "app@example.com", "App <app@example.com>", "Hello"))
        self.assertEqual((snapshot.to_header, snapshot.cc_header), ('["a@example.test","b@example.test"]', "[]"))
        self.assertEqual((snapshot.tag, snapshot.metadata, snapshot.message_id_header),
                         ("news", '{"customer":"42","plan":"pro"}', "<m1@example.com>"))
        self.assertEqual((snapshot.size, snapshot.username, snapshot.client, snapshot.rcpt_count),
                         (len(CONTENT), "app", "192.0.2.7", 2))
        self.assertEqual(snapshot.recipients, (ArchivedRecipient(0, "a@example.test", "delivered", 1),
                                               ArchivedRecipient(1, "b@example.test", "delivered", 1)))
        timeline = self.client.command("LRANGE", self.prefix + "timeline:" + message_id, 0, -1)
        self.assertEqual(list(snapshot.timeline), timeline)  # the whole list, byte for byte
        self.assertEqual(snapshot.timeline_length, 4)  # two queued, two delivered
        self.assertEqual(zlib.decompress(snapshot.body), CONTENT)
        self.assertEqual((batch.bounces, batch.cancelled, dict(batch.missing)), ((), (), {}))

    @async_test
    async def test_the_body_comes_until_the_message_is_marked_archived(self) -> None:
        message_id = await self.accepted()
        entries = await self.all_entries()
        batch = await self.storage.archive_snapshot(entries)
        self.assertIsNotNone(batch.messages[0].body)
        self.assertEqual(await self.storage.archive_mark(batch, [e.id for e in entries]), 1)
        mkey = self.prefix + "msg:" + message_id
        self.assertEqual(self.client.command("HGET", mkey, "archived"), b"1")
        self.assertEqual(int(self.group_info()["pending"]), 0)
        await self.delivered(message_id)
        later = await self.storage.archive_read("c1", 100)
        batch = await self.storage.archive_snapshot(later)
        [snapshot] = batch.messages
        self.assertIsNone(snapshot.body)  # archived already: not read again
        self.assertEqual(snapshot.timeline_length, 2)  # but the whole timeline, from its start
        self.assertEqual(snapshot.status, "delivered")

    @async_test
    async def test_mark_only_raises_and_never_revives_a_message(self) -> None:
        kept = await self.accepted()
        gone = await self.accepted()
        await self.delivered(kept)
        entries = await self.all_entries()
        batch = await self.storage.archive_snapshot(entries)
        self.assertEqual([m.timeline_length for m in batch.messages], [2, 1])
        first = batch.messages[0]
        old = ArchiveBatch(messages=(dataclasses.replace(first, timeline=first.timeline[:1]),))  # before delivery
        self.client.command("DEL", self.prefix + "msg:" + gone)  # expired meanwhile
        await self.storage.archive_mark(batch, [])
        await self.storage.archive_mark(old, [])  # a replay of an older, shorter snapshot
        self.assertEqual(self.client.command("HGET", self.prefix + "msg:" + kept, "archived"), b"2")
        self.assertEqual(self.client.command("EXISTS", self.prefix + "msg:" + gone), 0)

    @async_test
    async def test_keys_gone_and_cancelled_messages(self) -> None:
        gone = await self.accepted()
        self.client.command("DEL", *(self.prefix + k + gone for k in ("msg:", "timeline:", "body:")))
        message = NewMessage(sender="app@example.com", recipients=["c@example.test"], content=CONTENT)
        cancelled = await self.storage.enqueue(message)
        self.storage.cancel(cancelled)  # its client was told 451: Redis deletes it
        await self.storage.settle_pending(5)
        entries = await self.all_entries()
        self.assertEqual([e.type for e in entries], ["queued", "queued", "cancelled"])
        batch = await self.storage.archive_snapshot(entries)
        self.assertEqual(batch.messages, ())
        self.assertEqual(batch.cancelled, (CancelledMessage(cancelled),))
        self.assertEqual(dict(batch.missing), {gone: MESSAGE_GONE})
        self.assertTrue(batch)  # a cancelled message is work for the archive

    @async_test
    async def test_snapshot_of_bounces(self) -> None:
        message_id = await self.accepted()
        matched = await self.bounce(message_id, 0)
        in_band = await self.bounce(message_id, 0, event=False)  # no event: an in-band bounce's record
        unmatched = await self.bounce(None, None)
        entries = await self.all_entries()
        self.assertEqual([(e.type, e.message_id, e.bounce_id) for e in entries],
                         [("queued", message_id, ""), ("bounced", message_id, matched),
                          ("bounce_stored", message_id, in_band), ("bounce_stored", "", unmatched)])
        batch = await self.storage.archive_snapshot(entries)
        self.assertEqual([m.status for m in batch.messages], ["bounced"])
        self.assertEqual([b.id for b in batch.bounces], [matched, in_band, unmatched])
        for snapshot in batch.bounces:
            score = self.client.command("ZSCORE", self.prefix + "bounces", snapshot.id)
            self.assertEqual(snapshot.received_ms, int(score))
            self.assertEqual(snapshot.raw, b"raw report of " + snapshot.id.encode())
            self.assertEqual(snapshot.stored["id"], snapshot.id)
            self.assertEqual(snapshot.stored["type"], "HardBounce")
            self.assertEqual(snapshot.stored["inactive"], "0")
        self.assertEqual(batch.bounces[2].stored["message_id"], "")
        self.client.command("DEL", self.prefix + "bounce:" + unmatched)
        batch = await self.storage.archive_snapshot(entries)
        self.assertEqual(dict(batch.missing), {unmatched: BOUNCE_GONE})

    @async_test
    async def test_reclassified_bounce_and_deleted_recipient_reach_the_stream(self) -> None:
        message_id = await self.accepted(("a@example.test", "b@other.test"))
        bounce_id = await self.bounce(None, None)
        await self.storage.reclassify_bounce(bounce_id, {"type": "SoftBounce"})
        self.assertEqual(await self.storage.admin_delete(message_id, "b@other.test"), 1)
        entries = await self.all_entries()
        self.assertEqual([(e.type, e.bounce_id or e.message_id) for e in entries],
                         [("queued", message_id), ("bounce_stored", bounce_id), ("bounce_changed", bounce_id),
                          ("deleted", message_id)])
        batch = await self.storage.archive_snapshot(entries)
        self.assertEqual(batch.bounces[0].stored["type"], "SoftBounce")
        self.assertTrue(batch.bounces[0].changed)  # the writer rewrites the archived row with it
        plain = await self.storage.archive_snapshot([e for e in entries if e.type != "bounce_changed"])
        self.assertFalse(plain.bounces[0].changed)
        self.assertEqual([r.state for r in batch.messages[0].recipients], ["queued", "deleted"])

    def test_a_hash_without_a_time_is_no_message(self) -> None:
        self.assertIsNone(MessageSnapshot.decode("x", {"sender": "a@b"}, (), None))
        odd = MessageSnapshot.decode("x", {"received_at": "1700000000000", "size": "big", "rcpt:0": "a@b",
                                     "attempts:0": "-3", "rcpt:1": "c@d", "state:1": "bounced"}, (b"{}",), None)
        assert odd is not None
        self.assertEqual((odd.size, odd.rcpt_count, odd.status), (0, 2, "queued"))
        # as MessageRecord reads the hash (what the API shows from Redis): one decoding
        self.assertEqual(odd.recipients, (ArchivedRecipient(0, "a@b", "queued", -3),
                                          ArchivedRecipient(1, "c@d", "bounced", 0)))

    # -- scheduling the release of archived keys ---------------------------------------------

    def release_schedule(self) -> dict[str, float]:
        flat = self.client.command("ZRANGE", self.prefix + "archive:release", 0, -1, "WITHSCORES")
        return {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}

    @async_test
    async def test_mark_schedules_final_archived_messages_and_bounces_for_release(self) -> None:
        from mailrelay.store.cluster import ARCHIVE_IN_POSTGRES_VERSION

        self.client.command("SET", self.prefix + "meta:version", ARCHIVE_IN_POSTGRES_VERSION)
        done = await self.accepted()
        pending = await self.accepted(("b@elsewhere.test",))
        await self.delivered(done)
        bounce_id = await self.bounce(None, None)
        entries = await self.all_entries()
        batch = await self.storage.archive_snapshot(entries)
        before = self.storage.now_ms()
        await self.storage.archive_mark(batch, [e.id for e in entries])
        schedule = self.release_schedule()
        # the delivered message and the bounce, after release_after (1m by default); the
        # message still queued stays until a later batch archives it final
        self.assertEqual(set(schedule), {f"m:{done}", f"b:{bounce_id}"})
        self.assertNotIn(f"m:{pending}", schedule)
        for due in schedule.values():
            self.assertGreaterEqual(due, before + 60_000 - 1_000)

    @async_test
    async def test_mark_schedules_nothing_before_the_archive_moved_to_postgresql(self) -> None:
        message_id = await self.accepted()
        await self.delivered(message_id)
        await self.bounce(message_id, 0)
        entries = await self.all_entries()
        await self.storage.archive_mark(await self.storage.archive_snapshot(entries), [e.id for e in entries])
        self.assertEqual(self.release_schedule(), {})

    @async_test
    async def test_mark_schedules_at_version_1_while_the_migration_runs(self) -> None:
        """`mailrelay migrate` (its lock P meta:migrating) copies the archive, then records
        version 2: a message the archiver finishes meanwhile (perhaps copied while still queued)
        is scheduled too; release_archived.lua lets it go once the version is 2."""
        self.client.command("SET", self.prefix + "meta:version", 1)
        self.client.command("SET", self.prefix + "meta:migrating", "token", "EX", 60)
        message_id = await self.accepted()
        await self.delivered(message_id)
        bounce_id = await self.bounce(None, None)
        entries = await self.all_entries()
        await self.storage.archive_mark(await self.storage.archive_snapshot(entries), [e.id for e in entries])
        self.assertEqual(set(self.release_schedule()), {f"m:{message_id}", f"b:{bounce_id}"})

    # -- replays and take-overs ------------------------------------------------------------

    @async_test
    async def test_a_dead_consumers_entries_are_taken_over_and_replayed_identically(self) -> None:
        first = await self.accepted()
        await self.delivered(first)
        second = await self.accepted()
        entries = await self.all_entries("dead-daemon")  # read, never acknowledged: it died
        dead_batch = await self.storage.archive_snapshot(entries)
        ids = [e.id for e in entries]
        self.assertEqual(await self.storage.archive_take_over("live", 60, 100), [])  # not idle long enough
        self.client.command("XCLAIM", self.events, GROUP, "dead-daemon", 0, *ids, "IDLE", 3_600_000, "JUSTID")
        taken = await self.storage.archive_take_over("live", 60, 100)
        self.assertEqual(taken, entries)
        self.assertEqual(await self.storage.archive_snapshot(taken), dead_batch)  # a replay reads the same
        self.assertEqual(await self.storage.archive_mark(dead_batch, ids), 3)
        self.assertEqual(await self.storage.archive_mark(dead_batch, ids), 0)  # acknowledged once
        self.assertEqual(int(self.group_info()["pending"]), 0)
        self.assertEqual([m.id for m in dead_batch.messages], [first, second])

    @async_test
    async def test_kept_entries_are_not_taken_over(self) -> None:
        await self.accepted()
        entries = await self.all_entries("slow")
        ids = [e.id for e in entries]
        self.client.command("XCLAIM", self.events, GROUP, "slow", 0, *ids, "IDLE", 3_600_000, "JUSTID")
        self.assertEqual(await self.storage.archive_keep("slow", ids), 1)  # still working on it
        self.assertEqual(await self.storage.archive_take_over("other", 60, 100), [])
        consumers = self.client.command("XINFO", "CONSUMERS", self.events, GROUP)
        self.assertEqual([c[1] for c in consumers], [b"slow"])

    @async_test
    async def test_consumers_of_past_processes_are_forgotten(self) -> None:
        await self.accepted()
        await self.accepted()
        await self.storage.archive_create_group()
        await self.storage.archive_read("busy", 1)  # its entry stays pending: never forgotten
        done = await self.storage.archive_read("done", 1)
        await self.storage.archive_mark(await self.storage.archive_snapshot([]), [done[0].id])  # nothing pending
        self.client.command("XGROUP", "CREATECONSUMER", self.events, GROUP, "live")  # this process: kept
        # idle for longer than -1 s: any idle time (consumers cannot be made older)
        self.assertEqual(await self.storage.archive_prune_consumers("live", -1), 1)
        consumers = self.client.command("XINFO", "CONSUMERS", self.events, GROUP)
        self.assertEqual(sorted(c[1] for c in consumers), [b"busy", b"live"])

    # -- trimming ----------------------------------------------------------------------

    @async_test
    async def test_trimming_never_removes_what_the_archiver_has_not_acknowledged(self) -> None:
        for _ in range(6):
            await self.accepted()
        await self.storage.archive_create_group()
        ids = self.stream_ids()
        read = await self.storage.archive_read("c1", 4)  # 4 delivered, 2 never delivered
        self.assertEqual(await self.storage.archive_trim([GROUP]), 0)  # all 4 still pending
        self.assertEqual(await self.storage.archive_mark(await self.storage.archive_snapshot(read[:1]),
                                                         [read[0].id, read[2].id]), 2)
        # entry 0 acknowledged; 1 pending; 2 acknowledged; 3 pending; 4, 5 never delivered
        self.assertEqual(await self.storage.archive_trim([GROUP]), 1)
        self.assertEqual(self.stream_ids(), ids[1:])
        await self.storage.archive_mark(await self.storage.archive_snapshot([]), [read[1].id, read[3].id])
        self.assertEqual(await self.storage.archive_trim([GROUP]), 3)
        self.assertEqual(self.stream_ids(), ids[4:])  # never delivered: kept
        self.assertEqual([e.id for e in await self.storage.archive_read("c1", 10)], ids[4:])

    @async_test
    async def test_trimming_waits_for_the_groups_that_count_only(self) -> None:
        for _ in range(3):
            await self.accepted()
        await self.storage.webhook_create_group()  # at the end: it needs nothing before it
        await self.accepted()
        entries = await self.all_entries()
        await self.storage.archive_mark(await self.storage.archive_snapshot([]), [e.id for e in entries])
        # the webhook service has not read the fourth entry: while it counts, it stays
        self.assertEqual(await self.storage.archive_trim([GROUP, "webhooks"]), 3)
        self.assertEqual(len(self.stream_ids()), 1)
        # a stale webhooks group (no webhook service any more) holds nothing back
        self.assertEqual(await self.storage.archive_trim([GROUP]), 1)
        self.assertEqual(self.stream_ids(), [])
        # a group that counts but does not exist: nothing is known to be done
        await self.accepted()
        self.assertIsNone(await self.storage.archive_trim([GROUP, "absent"]))

    @async_test
    async def test_trimming_keeps_a_recent_tail(self) -> None:
        await self.storage.archive_create_group()
        now_ms = int(self.client.command("TIME")[0]) * 1000
        for age in (120_000, 30_000):  # entries with chosen times (ids)
            self.client.command("XADD", self.events, f"{now_ms - age}-0", "type", "queued", "msg", "x")
        await self.accepted()
        entries = await self.storage.archive_read("c1", 10)
        await self.storage.archive_mark(await self.storage.archive_snapshot([]), [e.id for e in entries])
        self.assertEqual(await self.storage.archive_trim([GROUP], keep_seconds=60), 1)  # done and old
        self.assertEqual(self.stream_ids(), [e.id for e in entries[1:]])

    # -- lag ------------------------------------------------------------------------------

    @async_test
    async def test_lag_counts_pending_and_undelivered_entries_and_the_oldest_age(self) -> None:
        self.assertIsNone(await self.storage.archive_lag())  # no group yet
        await self.storage.archive_create_group()
        self.assertEqual(await self.storage.archive_lag(), ArchiveLag(0, 0.0))
        now_ms = int(self.client.command("TIME")[0]) * 1000
        # entries with chosen times (ids), 90 s and 30 s old, then new ones
        self.client.command("XADD", self.events, f"{now_ms - 90_000}-0", "type", "queued", "msg", "x1")
        self.client.command("XADD", self.events, f"{now_ms - 30_000}-0", "type", "queued", "msg", "x2")
        await self.accepted()
        lag = await self.storage.archive_lag()
        self.assertEqual(lag.entries, 3)
        self.assertTrue(90 <= lag.oldest_age_seconds < 100, lag)
        [first] = await self.storage.archive_read("c1", 1)  # pending: still behind
        self.assertEqual((await self.storage.archive_lag()).entries, 3)
        await self.storage.archive_mark(await self.storage.archive_snapshot([]), [first.id])
        lag = await self.storage.archive_lag()
        self.assertEqual(lag.entries, 2)
        self.assertTrue(30 <= lag.oldest_age_seconds < 40, lag)
        rest = await self.storage.archive_read("c1", 10)
        await self.storage.archive_mark(await self.storage.archive_snapshot([]), [e.id for e in rest])
        self.assertEqual(await self.storage.archive_lag(), ArchiveLag(0, 0.0))
