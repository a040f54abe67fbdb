"""The archiver's write path into PostgreSQL (issue 18): mailrelay.store.archivewrite stores
ArchiveBatch snapshots so that mailrelay.store.archiveread reads back what the Redis hashes
decode to; replays and late, older snapshots are harmless; cancelled messages go; bad text is
stored as documented (docs/archive.md); missing partitions are made, days past retention
skipped; a poisoned entry is skipped alone; PostgreSQL down is ArchiveUnavailable. Against the
tests' real PostgreSQL: each test has its own copy of the migrated template (``archive_databases``:
partitions of today and the next two days)."""

from __future__ import annotations

import datetime
import json
import os
import random
import zlib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from conftest import async_test, today_utc, wait_until
from pgserver import start_postgres
from mailrelay.store import migrations
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archiverecords import (ArchiveBatch, ArchivedRecipient, BounceSnapshot, CancelledMessage,
                                            LateEvent, MessageSnapshot)
from mailrelay.store.archiveread import ArchiveReader
from mailrelay.store.archiverows import (BODY_COLUMNS, BOUNCE_COLUMNS, INDEXED_TEXT_BYTES, MESSAGE_COLUMNS,
                                         RECIPIENT_COLUMNS, clean_text, indexed_text, metadata_json,
                                         prepare_batch)
from mailrelay.store.archivewrite import ArchiveWriter, WriteResult
from mailrelay.store.errors import ArchiveUnavailable, StorageUnavailable
from mailrelay.store.queue import compress_body
from mailrelay.store.records import BounceRecord, MessageRecord, TimelineEvent, decode_timeline
from mailrelay.store.timelinepack import json_entries

UTC = datetime.timezone.utc
DAY_MS = 86_400_000
rng = random.Random(18)


def now_ms() -> int:
    return int(datetime.datetime.now(UTC).timestamp() * 1000)


def day_start_ms(day: datetime.date) -> int:
    return int(datetime.datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


def message_id_at(ms: int) -> str:
    """A mailrelay message id (store.queue.new_message_id) for time ``ms``."""
    return f"{ms:012x}{rng.getrandbits(32):08x}"


def event(kind: str, rcpt: int | None = 0, **fields: Any) -> bytes:
    """A timeline entry as Redis holds it (the Event's JSON)."""
    entry = {"type": kind, "at": "2026-03-01T10:00:00.123Z", **({} if rcpt is None else {"rcpt": rcpt}), **fields}
    return json.dumps(entry, separators=(",", ":")).encode()


TIMELINE = (event("queued", None),
            event("deferred", 0, recipient="bob@example.org", detail="Greylisted", smtp_code=451,
                  response="451 4.7.1 try later"),
            event("delivered", 0, recipient="bob@example.org", smtp_code=250, enhanced_code="2.0.0",
                  response="250 2.0.0 Ok: queued as ABC", remote_queue_id="ABC"),
            event("bounced", None, recipient="carol@example.net", bounce_id="00aa", proof="verp"))
BODY = b"From: app@example.com\r\nSubject: hi\r\n\r\n" + b"body line\r\n" * 100


def snapshot(ms: int | None = None, *, timeline: tuple[bytes, ...] = TIMELINE[:3], status: str = "delivered",
             body: bytes | None = BODY, message_id: str | None = None, **fields: Any) -> MessageSnapshot:
    ms = now_ms() if ms is None else ms
    values: dict[str, Any] = dict(
        id=message_id or message_id_at(ms), received_ms=ms, status=status, sender="app@example.com",
        from_header="App <app@example.com>", to_header='["Bob <bob@example.org>", "carol@example.net"]',
        cc_header="[]", subject="Your receipt", message_id_header="<1@example.com>", tag="receipts",
        metadata='{"order": "42", "plan": "pro"}', size=2048, username="app", client="192.0.2.1", rcpt_count=2,
        recipients=(ArchivedRecipient(0, "bob@example.org", "delivered", 2),
                    ArchivedRecipient(1, "carol@example.net", "bounced", 1)),
        timeline=timeline, body=None if body is None else compress_body(body))
    values.update(fields)
    return MessageSnapshot(**values)


def redis_hash(s: MessageSnapshot) -> dict[str, str]:
    """The ``msg:<id>`` hash the snapshot was read from (its fields as Redis stores them)."""
    stored = {"sender": s.sender, "user": s.username, "client": s.client, "received_at": str(s.received_ms),
              "size": str(s.size), "tag": s.tag, "metadata": s.metadata, "from": s.from_header, "to": s.to_header,
              "cc": s.cc_header, "subject": s.subject, "message_id": s.message_id_header, "status": s.status,
              "rcpt_count": str(s.rcpt_count)}
    for r in s.recipients:
        stored.update({f"rcpt:{r.rcpt}": r.recipient, f"state:{r.rcpt}": r.state, f"attempts:{r.rcpt}": str(r.attempts)})
    return stored


def bounce(ms: int | None = None, bounce_id: str | None = None, **fields: str) -> BounceSnapshot:
    stored = {"id": "", "message_id": "", "recipient": "bob@example.org", "type": "HardBounce", "type_code": "1",
              "description": "Hard bounce", "details": "550 5.1.1 no such user", "at": "2026-03-01T10:00:05Z",
              "inactive": "1", "proof": "verp", "status": "5.1.1", "remote_mta": "mx.example.org", "source": "dsn",
              "rule": "r1", "reason": "no such user", "claimed_message_id": "<1@example.com>", **fields}
    stored["id"] = bounce_id or f"{rng.getrandbits(64):016x}"
    return BounceSnapshot(id=stored["id"], received_ms=now_ms() if ms is None else ms, stored=stored,
                          raw=b"Return-Path: <>\r\n\r\nreport " + stored["id"].encode())


def partition_names(conn: psycopg.Connection, day: datetime.date) -> list[str]:
    return [f"{table}_p{day:%Y%m%d}" for table in ("messages", "recipients", "bounces", "bodies")]


def drop_day(conninfo: str, day: datetime.date) -> None:
    """Drop a day's partitions of every table (as retention does, in one go)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for name in partition_names(conn, day):
            conn.execute(f"DROP TABLE IF EXISTS {name}")


def count_rows(conninfo: str) -> dict[str, int]:
    with psycopg.connect(conninfo) as conn:
        return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                for table in ("messages", "recipients", "bodies", "bounces")}


@pytest.fixture
def archive(request, archive_databases, postgres_server) -> None:
    request.instance.conninfo = archive_databases()
    request.instance.server_log = postgres_server.log_path


@pytest.mark.usefixtures("archive")
class ArchiveWriterTests(unittest.TestCase):
    timeout = 60
    conninfo: str
    server_log: Path

    def setUp(self) -> None:
        self.database = ArchiveDatabase(self.conninfo)
        self.addCleanup(self.database.close)
        self.writer = ArchiveWriter(self.database)
        self.reader = ArchiveReader(self.database)
        self.logged: list[str] = []
        observer = lambda event: self.logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    async def write(self, *messages: MessageSnapshot, bounces: tuple[BounceSnapshot, ...] = (),
                    cancelled: tuple[str, ...] = (), late: tuple[LateEvent, ...] = ()) -> WriteResult:
        return await self.writer.write(ArchiveBatch(messages=messages, bounces=bounces,
                                                    cancelled=tuple(CancelledMessage(c) for c in cancelled),
                                                    late_events=late))

    # -- what is written reads back as the Redis hashes decode

    @async_test
    async def test_round_trip_reads_what_the_redis_hashes_decode_to(self):
        message = snapshot(timeline=TIMELINE)
        report = bounce(message_id=message.id)
        result = await self.write(message, bounces=(report,))
        self.assertEqual(result, WriteResult(messages=1, recipients=2, bodies=1, bounces=1))
        self.assertEqual(await self.reader.get_message(message.id), MessageRecord.decode(message.id, redis_hash(message)))
        self.assertEqual(await self.reader.get_timeline(message.id), decode_timeline(json_entries(TIMELINE)))
        self.assertEqual(await self.reader.get_body(message.id), BODY)
        self.assertEqual(await self.reader.get_bounce(report.id), BounceRecord.decode(report.stored, report.id))
        self.assertEqual(await self.reader.get_bounce_raw(report.id), report.raw)
        rows, _ = await self.reader.search_messages(recipient="CAROL@example.net", tag="receipts")
        self.assertEqual([(r.id, r.score, r.status) for r in rows], [(message.id, message.received_ms, "delivered")])
        found, _ = await self.reader.search_bounces(recipient="bob@example.org")
        self.assertEqual([(b.id, b.score, b.proof, b.remote_mta) for b in found],
                         [(report.id, report.received_ms, "verp", "mx.example.org")])

    @async_test
    async def test_a_changed_bounce_rewrites_the_archived_classification_once(self):
        """A bounce is written once; a snapshot read for a change of its record (a `bounce_changed`
        entry: `mailrelay bounce reclassify`, e.g. at data version 1 where only Redis is rewritten)
        rewrites the archived row's classification, its other fields merged; replays change nothing."""
        import dataclasses

        first = bounce()
        self.assertEqual((await self.write(bounces=(first,))).bounces, 1)
        stored = {**first.stored, "type": "SoftBounce", "type_code": "2", "description": "Soft bounce",
                  "inactive": "0", "rule": "r9", "reason": "mailbox full", "reclassified_from": "HardBounce"}
        changed = BounceSnapshot(first.id, first.received_ms, stored, first.raw, changed=True)
        # the same record read for another entry (a replay of its first one): written once, as before
        self.assertEqual(await self.write(bounces=(dataclasses.replace(changed, changed=False),)), WriteResult())
        self.assertEqual(await self.reader.get_bounce(first.id), BounceRecord.decode(first.stored, first.id))
        self.assertEqual(await self.write(bounces=(changed,)), WriteResult(bounces_changed=1))
        self.assertEqual(await self.reader.get_bounce(first.id), BounceRecord.decode(stored, first.id))
        self.assertEqual(await self.reader.get_bounce_raw(first.id), first.raw)
        found, _ = await self.reader.search_bounces(type="SoftBounce")
        self.assertEqual([b.id for b in found], [first.id])
        self.assertEqual(await self.write(bounces=(changed,)), WriteResult())  # a replay writes nothing
        # a change of a bounce not archived yet: inserted as it is now
        fresh = dataclasses.replace(bounce(), changed=True)
        self.assertEqual(await self.write(bounces=(fresh,)), WriteResult(bounces=1))
        self.assertEqual(await self.reader.get_bounce(fresh.id), BounceRecord.decode(fresh.stored, fresh.id))
        self.assertEqual(count_rows(self.conninfo)["bounces"], 2)

    @async_test
    async def test_a_replayed_batch_stores_everything_once(self):
        batch = [snapshot() for _ in range(30)]
        bounces = tuple(bounce() for _ in range(10))
        first = await self.write(*batch, bounces=bounces)
        self.assertEqual((first.messages, first.recipients, first.bodies, first.bounces), (30, 60, 30, 10))
        rows = count_rows(self.conninfo)
        again = await self.write(*batch, bounces=bounces)
        self.assertEqual(count_rows(self.conninfo), rows)
        # the same snapshots replace their rows (timeline as long); bodies and bounces are not written again
        self.assertEqual((again.messages, again.stale, again.bodies, again.bounces), (30, 0, 0, 0))
        self.assertEqual(rows, {"messages": 30, "recipients": 60, "bodies": 30, "bounces": 10})

    @async_test
    async def test_an_older_snapshot_replayed_late_never_overwrites_a_newer_one(self):
        ms = now_ms()
        mid = message_id_at(ms)
        queued = snapshot(ms, message_id=mid, timeline=TIMELINE[:1], status="queued",
                          recipients=(ArchivedRecipient(0, "bob@example.org", "queued", 0),
                                      ArchivedRecipient(1, "carol@example.net", "queued", 0)))
        delivered = snapshot(ms, message_id=mid, timeline=TIMELINE[:3], status="partial", body=None)
        await self.write(delivered)
        result = await self.write(queued)
        self.assertEqual((result.messages, result.stale, result.recipients), (0, 1, 0))
        record = await self.reader.get_message(mid)
        self.assertEqual(record.status, "partial")
        self.assertEqual([(r.state, r.attempts) for r in record.recipients], [("delivered", 2), ("bounced", 1)])
        self.assertEqual(len(await self.reader.get_timeline(mid)), 3)
        self.assertEqual(await self.reader.get_body(mid), BODY)  # the older snapshot's body: stored once
        # a longer one replaces it, recipients too
        bounced = snapshot(ms, message_id=mid, timeline=TIMELINE, status="bounced", body=None,
                           recipients=(ArchivedRecipient(0, "bob@example.org", "bounced", 3),))
        result = await self.write(bounced)
        self.assertEqual((result.messages, result.stale, result.recipients), (1, 0, 1))
        record = await self.reader.get_message(mid)
        self.assertEqual(record.status, "bounced")
        self.assertEqual([(r.state, r.attempts) for r in record.recipients], [("bounced", 3), ("bounced", 1)])
        self.assertEqual(len(await self.reader.get_timeline(mid)), 4)

    @async_test
    async def test_several_snapshots_of_a_message_in_one_batch_keep_the_longest_timeline(self):
        ms = now_ms()
        mid = message_id_at(ms)
        first = snapshot(ms, message_id=mid, timeline=TIMELINE[:1], status="queued")  # the body: never archived
        latest = snapshot(ms, message_id=mid, timeline=TIMELINE[:3], status="delivered", body=None)
        stale = snapshot(ms, message_id=mid, timeline=TIMELINE[:2], status="deferred", body=None)
        result = await self.write(first, latest, stale)
        self.assertEqual((result.messages, result.bodies), (1, 1))
        self.assertEqual((await self.reader.get_message(mid)).status, "delivered")
        self.assertEqual(len(await self.reader.get_timeline(mid)), 3)
        self.assertEqual(await self.reader.get_body(mid), BODY)

    @async_test
    async def test_a_body_is_written_once_and_none_means_no_body(self):
        ms = now_ms()
        mid = message_id_at(ms)
        await self.write(snapshot(ms, message_id=mid, timeline=TIMELINE[:1]))
        result = await self.write(snapshot(ms, message_id=mid, body=b"another body"))
        self.assertEqual(result.bodies, 0)
        self.assertEqual(await self.reader.get_body(mid), BODY)
        without = snapshot(body=None)
        await self.write(without)
        self.assertIsNone(await self.reader.get_body(without.id))
        self.assertIsNotNone(await self.reader.get_message(without.id))

    @async_test
    async def test_cancelled_messages_rows_are_deleted(self):
        kept, gone, never = snapshot(), snapshot(), snapshot()
        await self.write(kept, gone)
        result = await self.write(never, cancelled=(gone.id, never.id, "not-a-message-id"))
        self.assertEqual((result.messages, result.deleted), (0, 1))
        for mid in (gone.id, never.id):
            self.assertIsNone(await self.reader.get_message(mid))
            self.assertIsNone(await self.reader.get_body(mid))
        self.assertIsNotNone(await self.reader.get_message(kept.id))
        self.assertEqual(count_rows(self.conninfo), {"messages": 1, "recipients": 2, "bodies": 1, "bounces": 0})

    # -- late events (about messages whose Redis keys were released)

    def late(self, message: MessageSnapshot | str, rcpt: int, kind: str = "bounced", state: str = "bounced",
             **fields: Any) -> tuple[LateEvent, BounceSnapshot]:
        """A late event and the bounce that made it (one stream entry: they come in one batch)."""
        message_id = message if isinstance(message, str) else message.id
        report = bounce(message_id=message_id)
        return LateEvent(message_id, rcpt, report.id, event(kind, rcpt, **fields), state), report

    async def write_late(self, *late: tuple[LateEvent, BounceSnapshot], messages: tuple[MessageSnapshot, ...] = ()
                         ) -> WriteResult:
        return await self.writer.write(ArchiveBatch(messages=messages, bounces=tuple(b for _, b in late),
                                                    late_events=tuple(e for e, _ in late)))

    @async_test
    async def test_a_late_bounce_joins_the_archived_timeline_once_and_sets_the_state_and_status(self):
        both_delivered = (ArchivedRecipient(0, "bob@example.org", "delivered", 1),
                          ArchivedRecipient(1, "carol@example.net", "delivered", 1))
        message = snapshot(timeline=TIMELINE[:3], recipients=both_delivered)
        other = snapshot(timeline=TIMELINE[:3], recipients=both_delivered)
        await self.write(message, other)
        bounced = self.late(message, 1, recipient="carol@example.net")
        complained = self.late(message, 0, "complained", "", recipient="bob@example.org")
        fresh = snapshot()
        result = await self.write_late(bounced, complained, messages=(fresh,))
        self.assertEqual((result.messages, result.bounces, result.late_events, result.skipped), (1, 2, 2, ()))
        record = await self.reader.get_message(message.id)
        self.assertEqual([r.state for r in record.recipients], ["delivered", "bounced"])
        self.assertEqual(record.status, "partial")  # as _status.lua: delivered + bounced
        timeline = await self.reader.get_timeline(message.id)
        self.assertEqual([e.type for e in timeline], ["queued", "deferred", "delivered", "bounced", "complained"])
        self.assertEqual(timeline[3], TimelineEvent.decode(json.loads(bounced[0].event)))
        # replayed (the archiver's entries taken over): the bounces are stored, nothing changes
        again = await self.write_late(bounced, complained)
        self.assertEqual((again.bounces, again.late_events, again.skipped), (0, 0, ()))
        self.assertEqual(len(await self.reader.get_timeline(message.id)), 5)
        with psycopg.connect(self.conninfo) as conn:
            self.assertEqual(conn.execute("SELECT timeline_length FROM messages WHERE id = %s",
                                          (message.id,)).fetchone()[0], 5)
        # a replayed snapshot taken before the release (its timeline shorter) does not undo it
        self.assertEqual((await self.write(message)).stale, 1)
        self.assertEqual((await self.reader.get_message(message.id)).status, "partial")
        # the other message was not touched
        self.assertEqual((await self.reader.get_message(other.id)).status, "delivered")
        self.assertEqual(len(await self.reader.get_timeline(other.id)), 3)

    @async_test
    async def test_two_reports_alike_are_two_events(self):
        message = snapshot(timeline=TIMELINE[:3])
        await self.write(message)
        first, second = self.late(message, 0), self.late(message, 0)
        self.assertEqual(first[0].event, second[0].event)  # the same second, the same words
        self.assertEqual((await self.write_late(first, second)).late_events, 2)
        self.assertEqual([e.type for e in await self.reader.get_timeline(message.id)][3:], ["bounced", "bounced"])

    @async_test
    async def test_the_last_recipient_bouncing_late_makes_the_message_bounced(self):
        message = snapshot(timeline=TIMELINE[:1], status="partial", rcpt_count=2,
                           recipients=(ArchivedRecipient(0, "bob@example.org", "bounced", 1),
                                       ArchivedRecipient(1, "carol@example.net", "delivered", 1)))
        await self.write(message)
        await self.write_late(self.late(message, 1))
        self.assertEqual((await self.reader.get_message(message.id)).status, "bounced")

    @async_test
    async def test_late_events_of_messages_not_in_the_archive_are_skipped_and_logged_once(self):
        yesterday = today_utc() - datetime.timedelta(days=1)
        with psycopg.connect(self.conninfo) as conn:
            migrations.create_partitions(conn, yesterday, 1)
        dropped = snapshot(day_start_ms(yesterday) + 60_000)
        await self.write(dropped)
        drop_day(self.conninfo, yesterday)  # retention took its day
        kept = snapshot()
        await self.write(kept)
        never = message_id_at(now_ms())
        on_dropped, on_never, on_kept = self.late(dropped, 0), self.late(never, 0), self.late(kept, 0)
        not_an_id = self.late("not-a-message-id", 0)
        result = await self.write_late(on_dropped, on_never, not_an_id, on_kept)
        self.assertEqual((result.bounces, result.late_events), (4, 1))  # the bounces are stored all the same
        self.assertEqual(sorted((s.kind, s.id) for s in result.skipped),
                         sorted([("late event", dropped.id), ("late event", never), ("late event", "not-a-message-id")]))
        self.assertEqual((await self.reader.get_message(kept.id)).recipients[0].state, "bounced")
        lines = [line for line in self.logged if "late event" in line]
        self.assertEqual(len([line for line in lines if dropped.id in line and never in line]), 1, lines)
        # a late event without its bounce (its record gone from Redis before the archiver read it)
        orphan, _ = self.late(kept, 1)
        result = await self.writer.write(ArchiveBatch(late_events=(orphan,)))
        self.assertEqual((result.late_events, [s.kind for s in result.skipped]), (0, ["late event"]))

    # -- bad input

    @async_test
    async def test_nul_and_lone_surrogates_are_stored_as_replacement_characters(self):
        message = snapshot(
            subject="pay\x00load \udcff end", sender="a\x00@example.org", tag="t\ud800ag",
            metadata='{"k\\u0000ey": "v\\ud800al\\u0000", "nested": ["\\udfff", {"a": 1.5}], "ok": "élan"}',
            to_header='["bob\x00@example.org"]',
            rcpt_count=1, recipients=(ArchivedRecipient(0, "bob\udc80@example.org", "deli\x00vered", 1),),
            timeline=(b'{"type":"queued","at":"x","detail":"line\nbreak"}', b"not json", TIMELINE[2]))
        report = bounce(details="550\x00 no \udcfe", reason="r\x00", recipient="bob\x00@example.org")
        result = await self.write(message, bounces=(report,))
        self.assertEqual((result.messages, result.bounces, result.skipped), (1, 1, ()))
        record = await self.reader.get_message(message.id)
        self.assertEqual(record.subject, "pay\ufffdload \ufffd end")
        self.assertEqual(record.sender, "a\ufffd@example.org")
        self.assertEqual(record.tag, "t\ufffdag")
        self.assertEqual(record.metadata, {"k\ufffdey": "v\ufffdal\ufffd", "nested": ["\ufffd", {"a": 1.5}],
                                           "ok": "élan"})
        self.assertEqual(record.to, ("bob\ufffd@example.org",))
        self.assertEqual([(r.address, r.state) for r in record.recipients],
                         [("bob\ufffd@example.org", "deli\ufffdvered")])
        timeline = await self.reader.get_timeline(message.id)  # the line break became a space; not JSON: dropped
        self.assertEqual([(e.type, e.detail) for e in timeline], [("queued", "line break"), ("delivered", "")])
        stored = await self.reader.get_bounce(report.id)
        self.assertEqual((stored.details, stored.reason, stored.recipient),
                         ("550\ufffd no \ufffd", "r\ufffd", "bob\ufffd@example.org"))

    @async_test
    async def test_metadata_that_is_not_a_json_object_is_kept_as_raw_text(self):
        cases = {"not json": "not json", "[1, 2]": "[1, 2]", '"text"': '"text"', '{"n": NaN}': '{"n": NaN}',
                 '{"big": 1e400}': '{"big": 1e400}', "{\x00}": "{\ufffd}", "": None}
        messages = {text: snapshot(metadata=text) for text in cases}
        await self.write(*messages.values())
        for text, raw in cases.items():
            record = await self.reader.get_message(messages[text].id)
            self.assertEqual(record.metadata, {} if raw is None else {"_raw": raw}, text)
            self.assertEqual(record.undecoded, {})
        # to/cc are the stored text: what is not a JSON list reads back as the Redis hash decodes it
        odd = snapshot(to_header="not json", cc_header='["x@example.org"')
        await self.write(odd)
        record = await self.reader.get_message(odd.id)
        self.assertEqual(record, MessageRecord.decode(odd.id, redis_hash(odd)))
        self.assertEqual(record.undecoded, {"to": "not json", "cc": '["x@example.org"'})

    @async_test
    async def test_a_poisoned_entry_is_skipped_and_logged_once_while_the_rest_is_written(self):
        good = [snapshot() for _ in range(20)]
        huge_id = os.urandom(4000).hex()  # its primary key entry cannot fit in an index page
        poisoned = snapshot(message_id=huge_id)
        unreadable = snapshot(recipients=(ArchivedRecipient(70000, "x@example.org", "queued"),))
        bounces = (bounce(), bounce(bounce_id=os.urandom(4000).hex()), bounce())
        result = await self.write(*good[:7], poisoned, *good[7:], unreadable, bounces=bounces)
        self.assertEqual((result.messages, result.recipients, result.bodies, result.bounces), (20, 40, 20, 2))
        self.assertEqual(sorted((s.kind, s.id) for s in result.skipped),
                         sorted([("message", huge_id), ("message", unreadable.id), ("bounce", bounces[1].id)]))
        self.assertFalse(any(s.expired for s in result.skipped))
        self.assertIn("index row", next(s.reason for s in result.skipped if s.id == huge_id))
        for mid in (s.id for s in good):
            self.assertIsNotNone(await self.reader.get_message(mid))
        for entry in result.skipped:
            self.assertEqual(sum(entry.id in line for line in self.logged), 1, (entry, self.logged))
        self.assertEqual(count_rows(self.conninfo), {"messages": 20, "recipients": 40, "bodies": 20, "bounces": 2})

    # -- partitions

    @async_test
    async def test_a_day_without_partitions_gets_them_and_is_written(self):
        ahead = today_utc() + datetime.timedelta(days=6)
        ms = day_start_ms(ahead) + 3_600_000
        message, report = snapshot(ms), bounce(ms)
        result = await self.write(message, bounces=(report,))
        self.assertEqual((result.messages, result.bounces, result.partitions, result.skipped), (1, 1, 4, ()))
        self.assertEqual((await self.reader.get_message(message.id)).received_ms, ms)
        self.assertIsNotNone(await self.reader.get_bounce(report.id))
        # the same day's partitions dropped behind the writer's back (it remembers them): made again
        drop_day(self.conninfo, ahead)
        again = snapshot(ms + 1)
        result = await self.write(again)
        self.assertEqual((result.messages, result.partitions), (1, 4))
        self.assertIsNotNone(await self.reader.get_message(again.id))

    @async_test
    async def test_rows_of_a_day_past_retention_are_skipped_not_retried(self):
        today = today_utc()
        yesterday = today - datetime.timedelta(days=1)
        with psycopg.connect(self.conninfo) as conn:
            migrations.create_partitions(conn, yesterday, 1)
        ms = day_start_ms(yesterday) + 60_000
        written = snapshot(ms)
        self.assertEqual((await self.write(written)).messages, 1)  # the writer now knows that day
        drop_day(self.conninfo, yesterday)  # retention: the oldest day goes
        late = snapshot(ms + 1)
        late_bounce = bounce(ms + 2)
        older_bounce = bounce(day_start_ms(today - datetime.timedelta(days=30)))
        current = snapshot()
        result = await self.write(late, current, bounces=(late_bounce, older_bounce))
        self.assertEqual((result.messages, result.bounces, result.partitions), (1, 0, 0))
        self.assertEqual(sorted((s.kind, s.id, s.expired) for s in result.skipped),
                         sorted([("message", late.id, True), ("bounce", late_bounce.id, True),
                                 ("bounce", older_bounce.id, True)]))
        self.assertIsNotNone(await self.reader.get_message(current.id))
        self.assertTrue(any(late.id in line and "past retention" in line for line in self.logged))

    @async_test
    async def test_given_the_retentions_days_within_them_are_made_and_older_ones_skipped(self):
        """In a new archive (partitions from today on): with the retentions, older days within them
        are written (a migration), older ones skipped; without, every day before today is taken
        for one retention dropped."""
        today = today_utc()
        yesterday = snapshot(day_start_ms(today - datetime.timedelta(days=1)))
        result = await self.write(yesterday)  # the default rule: older than the oldest partition
        self.assertEqual([(s.id, s.expired) for s in result.skipped], [(yesterday.id, True)])
        writer = ArchiveWriter(self.database, retention=3 * 86400, content_retention=86400 / 2)
        two_days_ago = day_start_ms(today - datetime.timedelta(days=2)) + 1000
        kept, report = snapshot(two_days_ago), bounce(two_days_ago)
        too_old = snapshot(day_start_ms(today - datetime.timedelta(days=5)))
        result = await writer.write(ArchiveBatch(messages=(kept, too_old), bounces=(report,)))
        self.assertEqual((result.messages, result.bodies, result.bounces, result.partitions), (1, 0, 1, 4))
        self.assertEqual([(s.id, s.expired) for s in result.skipped], [(too_old.id, True)])
        self.assertIsNotNone(await self.reader.get_message(kept.id))
        self.assertIsNone(await self.reader.get_body(kept.id))  # past content_retention
        self.assertIsNotNone(await self.reader.get_bounce(report.id))
        self.assertEqual((await writer.write(ArchiveBatch(messages=(yesterday,)))).messages, 1)

    @async_test
    async def test_a_body_past_content_retention_is_left_out_of_a_message_still_written(self):
        yesterday = today_utc() - datetime.timedelta(days=1)
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            migrations.create_partitions(conn, yesterday, 1)
            conn.execute(f"DROP TABLE bodies_p{yesterday:%Y%m%d}")  # content_retention is shorter
        message = snapshot(day_start_ms(yesterday) + 5)
        result = await self.write(message)
        self.assertEqual((result.messages, result.bodies, result.skipped), (1, 0, ()))
        self.assertIsNotNone(await self.reader.get_message(message.id))
        self.assertIsNone(await self.reader.get_body(message.id))

    # -- the transaction

    @async_test
    async def test_two_writers_of_overlapping_batches_both_commit(self):
        """A claimed batch written again by another daemon while the first still writes it: rows
        are taken in key order, so neither waits for the other in a cycle (a deadlock would be
        ArchiveUnavailable). Both are held at their INSERT by a lock until both are there."""
        from twisted.internet import defer, threads

        other_database = ArchiveDatabase(self.conninfo)
        self.addCleanup(other_database.close)
        other = ArchiveWriter(other_database)
        messages = [snapshot() for _ in range(1500)]
        log_size = self.server_log.stat().st_size
        with psycopg.connect(self.conninfo) as blocker:
            blocker.execute("LOCK TABLE messages IN SHARE MODE")  # INSERT waits (ROW EXCLUSIVE)
            writes = [defer.ensureDeferred(self.writer.write(ArchiveBatch(messages=tuple(messages)))),
                      defer.ensureDeferred(other.write(ArchiveBatch(messages=tuple(reversed(messages)))))]

            def both_waiting() -> bool:
                with psycopg.connect(self.conninfo) as conn:
                    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                                        " AND wait_event_type = 'Lock'").fetchone()[0] >= 2
            await threads.deferToThread(wait_until, both_waiting, 20, "both writers at their INSERT")
            blocker.rollback()
        results = await defer.gatherResults(writes)
        self.assertEqual([r.messages for r in results], [1500, 1500])
        with open(self.server_log, "rb") as log:  # a deadlock would have been tried again: not seen
            log.seek(log_size)
            self.assertFalse(b"deadlock detected" in log.read(), "the writers deadlocked (see the server log)")
        self.assertEqual(count_rows(self.conninfo), {"messages": 1500, "recipients": 3000, "bodies": 1500,
                                                     "bounces": 0})

    def test_the_transaction_commits_synchronously(self):
        with psycopg.connect(self.conninfo) as conn:
            conn.execute("SET synchronous_commit = off")
            conn.commit()
            with conn.transaction():
                ArchiveWriter._begin(conn)
                self.assertEqual(conn.execute("SHOW synchronous_commit").fetchone()[0], "on")
            self.assertEqual(conn.execute("SHOW synchronous_commit").fetchone()[0], "off")  # SET LOCAL


class ServerDownTests(unittest.TestCase):
    """PostgreSQL stopped: write raises ArchiveUnavailable (nothing committed); started again, the same
    batch is written (the pool's dead connections are replaced)."""

    timeout = 90

    @async_test
    async def test_server_down_is_archive_unavailable_and_the_batch_is_written_once_it_is_back(self):
        server = start_postgres()
        self.addCleanup(lambda: server.stop() if server.process.poll() is None else None)
        with psycopg.connect(server.conninfo()) as conn:
            migrations.apply_migrations(conn)
            migrations.create_partitions(conn, today_utc(), 2)
        database = ArchiveDatabase(server.conninfo(), pool_max=2)
        self.addCleanup(database.close)
        writer = ArchiveWriter(database)
        self.assertEqual((await writer.write(ArchiveBatch(messages=(snapshot(),)))).messages, 1)
        server.stop()
        batch = ArchiveBatch(messages=(snapshot(), snapshot()), bounces=(bounce(),))
        with self.assertRaises(ArchiveUnavailable) as caught:
            await writer.write(batch)
        self.assertIsInstance(caught.exception, StorageUnavailable)
        self.assertFalse(caught.exception.timed_out)
        server.start()
        result = await writer.write(batch)
        self.assertEqual((result.messages, result.bounces), (2, 1))
        self.assertEqual(count_rows(server.conninfo())["messages"], 3)
        self.assertEqual(self.flushLoggedErrors(), [])  # the dead connections' rollbacks are not logged


# -- the rows, without a database -------------------------------------------------------------------


def test_declared_column_types_are_the_schema_s(pg_database: str) -> None:
    """The binary COPY sends each column as the type archiverows declares: the schema's."""
    with psycopg.connect(pg_database) as conn:
        migrations.apply_migrations(conn)
        for table, columns in (("messages", MESSAGE_COLUMNS), ("recipients", RECIPIENT_COLUMNS),
                               ("bodies", BODY_COLUMNS), ("bounces", BOUNCE_COLUMNS)):
            types = dict(conn.execute(
                "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,)).fetchall())
            aliases = {"text": "text", "timestamptz": "timestamp with time zone", "jsonb": "jsonb",
                       "int4": "integer", "int2": "smallint", "bytea": "bytea", "bool": "boolean"}
            assert {name: aliases[kind] for name, kind in columns.items()} == {name: types[name] for name in columns}


def test_clean_text_replaces_what_postgresql_refuses() -> None:
    assert clean_text("plain") == "plain"
    assert clean_text("a\x00b") == "a\ufffdb"
    assert clean_text("é\ud800\udfff😀") == "é\ufffd\ufffd😀"
    assert clean_text(None) == ""
    assert clean_text(12) == "12"


def test_indexed_text_is_cut_on_a_character() -> None:
    assert indexed_text("tag") == "tag"
    cut = indexed_text("é" * INDEXED_TEXT_BYTES)
    assert cut == "é" * (INDEXED_TEXT_BYTES // 2)
    assert len(indexed_text("x" * (INDEXED_TEXT_BYTES + 1)).encode()) == INDEXED_TEXT_BYTES
    assert indexed_text("😀" * 1000 + "\x00") == "😀" * (INDEXED_TEXT_BYTES // 4)


def test_metadata_json() -> None:
    assert metadata_json("") == "{}"
    assert metadata_json('{"a": "b"}') == '{"a": "b"}'  # as stored when nothing needs cleaning
    assert json.loads(metadata_json('{"a": "\\u0000\\ud83d\\ude00"}')) == {"a": "\ufffd😀"}
    assert json.loads(metadata_json('{"a": -Infinity}')) == {"_raw": '{"a": -Infinity}'}
    deep = "[" * 100_000 + "]" * 100_000
    assert json.loads(metadata_json(deep)) == {"_raw": deep}


def test_prepare_batch_keeps_one_snapshot_per_message_and_none_cancelled() -> None:
    ms = now_ms()
    mid = message_id_at(ms)
    batch = ArchiveBatch(messages=(snapshot(ms, message_id=mid, timeline=TIMELINE[:2]),
                                   snapshot(ms, message_id=mid, timeline=TIMELINE[:2], status="later", body=None),
                                   snapshot(ms, message_id=mid, timeline=TIMELINE[:1], body=None),
                                   snapshot(message_id="f" * 20, received_ms=ms)),
                         cancelled=(CancelledMessage("f" * 20),))
    prepared = prepare_batch(batch)
    assert [(m.id, m.row[list(MESSAGE_COLUMNS).index("status")]) for m in prepared.messages] == [(mid, "later")]
    assert zlib.decompress(prepared.messages[0].body) == BODY  # from the first snapshot
    assert [c[0] for c in prepared.cancelled] == ["f" * 20]


def test_a_received_time_outside_the_id_s_window_is_the_id_s_time() -> None:
    ms = now_ms()
    mid = message_id_at(ms)
    far = prepare_batch(ArchiveBatch(messages=(snapshot(0, message_id=mid),))).messages[0]
    assert far.received_at == datetime.datetime.fromtimestamp(ms / 1000, UTC).replace(
        microsecond=(ms % 1000) * 1000)
    near = prepare_batch(ArchiveBatch(messages=(snapshot(ms + 5000, message_id=mid),))).messages[0]
    assert near.received_at.timestamp() * 1000 == pytest.approx(ms + 5000)
