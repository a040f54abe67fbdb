"""The archive's read side in PostgreSQL (issue 18, part C): mailrelay.store.archiveread returns
today's records (MessageRecord, TimelineEvent, MessageSummary, BounceRecord) with today's cursor
semantics, each search served by an index newest first. Against a real PostgreSQL (conftest's
``pg_database``), the schema applied by the migrations, rows written with SQL that follows the
schema's comments (:class:`Archive`), and the expected answers computed here from the rows'
Python model (what TrackingStore/BounceStore return for the same data)."""

from __future__ import annotations

import collections
import datetime
import inspect
import json
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

import psycopg
import pytest
from twisted.trial import unittest

from conftest import async_test
from mailrelay.store import StorageUnavailable, interfaces, migrations
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archiveread import (ArchiveReader, bounce_search_statement, message_search_statement,
                                        status_counts_statement)
from mailrelay.store.bounces import BounceStore
from mailrelay.store.errors import ArchiveUnavailable
from mailrelay.store.queue import compress_body
from mailrelay.store.records import (BounceRecord, MessageRecord, MessageSummary, RecipientState,
                                     TimelineEvent)
from mailrelay.store.timelinepack import pack_timeline
from mailrelay.store.tracking import MESSAGE_STATUSES

UTC = datetime.timezone.utc
#: Two UTC days of archive (past days no other module writes: each module has its own database).
DAY1 = datetime.date(2026, 3, 1)
DAY1_START_MS = int(datetime.datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
DAY_MS = 86_400_000

#: Frequent recipients (each in about 5% of the messages); the others are rare.
ADDRESSES = ["alice@example.org", "Bob@Example.org", "carol@example.net", "dave@example.com",
             "erin@example.com", "frank@example.org"]
RARE_ADDRESSES = [f"user{n}@example.com" for n in range(2000)]
#: Enough messages for the planner to prefer reading an index newest first up to the limit
#: over sorting what matches (with a few thousand it sorts every match of a frequent recipient).
MESSAGES = 20_000
BOUNCES = 10_000
TAGS = ["", "", "news", "alerts", "rare"]


def time_of(ms: int) -> datetime.datetime:
    return datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(milliseconds=ms)


# -- writing the archive as the schema's comments say ---------------------------------------------


@dataclass
class Message:
    id: str
    ms: int
    recipients: list[tuple[str, str, int]]  # address, state, attempts
    tag: str = ""
    status: str = "queued"
    sender: str = "sender@example.org"
    header_from: str = "Sender <sender@example.org>"
    to: str = '["to@example.org"]'
    cc: str = "[]"
    subject: str = "hello"
    metadata: dict[str, Any] = field(default_factory=dict)


def message_id_at(ms: int, rng: random.Random) -> str:
    """A mailrelay message id (store.queue.new_message_id) for time ``ms``."""
    return f"{ms:012x}{rng.getrandbits(32):08x}"


class Archive:
    """Writes rows into the archive's tables the way the schema's comments describe them."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def messages(self, messages: list[Message]) -> None:
        with self.conn.cursor() as cur:
            with cur.copy("COPY messages (id, received_at, sender, from_header, to_header, cc_header, subject,"
                          " message_id_header, tag, metadata, size, username, client, status, rcpt_count)"
                          " FROM STDIN") as copy:
                for m in messages:
                    copy.write_row((m.id, time_of(m.ms), m.sender, m.header_from, m.to, m.cc, m.subject,
                                    f"<{m.id}@example.org>", m.tag, json.dumps(m.metadata), 2048, "user1",
                                    "192.0.2.1", m.status, len(m.recipients)))
            with cur.copy("COPY recipients (message_id, received_at, rcpt, recipient, state, attempts)"
                          " FROM STDIN") as copy:
                for m in messages:
                    for i, (address, state, attempts) in enumerate(m.recipients):
                        copy.write_row((m.id, time_of(m.ms), i, address, state, attempts))

    def events(self, message: Message, entries: list[dict[str, Any]]) -> None:
        """Timeline entries (Event JSON objects) packed into the message's row, as the archiver does."""
        packed = pack_timeline(json.dumps(entry, separators=(",", ":")).encode() for entry in entries)
        self.conn.execute("UPDATE messages SET timeline = %s, timeline_length = %s"
                          " WHERE id = %s AND received_at = %s",
                          (packed, len(entries), message.id, time_of(message.ms)))

    def body(self, message: Message, content: bytes) -> None:
        self.conn.execute("INSERT INTO bodies (message_id, received_at, body) VALUES (%s, %s, %s)",
                          (message.id, time_of(message.ms), compress_body(content)))

    def bounces(self, rows: list[dict[str, Any]]) -> None:
        columns = ("id", "message_id", "recipient", "type", "type_code", "description", "details", "at",
                   "inactive")
        with self.conn.cursor().copy(f"COPY bounces (received_at, {', '.join(columns)}, fields, raw)"
                                     " FROM STDIN") as copy:
            for b in rows:
                copy.write_row((time_of(b["ms"]), *(b[c] for c in columns), json.dumps(b["fields"]), b.get("raw")))


def make_messages(rng: random.Random, count: int) -> list[Message]:
    """``count`` messages over DAY1 and the day after, in runs of up to 5 at the same ms."""
    messages: list[Message] = []
    while len(messages) < count:
        ms = DAY1_START_MS + rng.randrange(2 * DAY_MS)
        for _ in range(rng.choice([1, 1, 2, 5])):
            recipients = [(rng.choice(ADDRESSES if rng.random() < 0.2 else RARE_ADDRESSES),
                           rng.choice(["delivered", "deferred", "bounced"]),
                           rng.randrange(3)) for _ in range(rng.choice([1, 1, 2, 3]))]
            messages.append(Message(id=message_id_at(ms, rng), ms=ms, recipients=recipients,
                                    tag=rng.choice(TAGS), status=rng.choice(MESSAGE_STATUSES),
                                    subject=f"subject {len(messages)}"))
    return messages[:count]


# -- the Python model of today's answers ----------------------------------------------------------


def expected_search(messages: list[Message], *, recipient: str | None = None, tag: str | None = None,
                    status: str | None = None, since_ms: int | None = None,
                    until_ms: int | None = None) -> list[str]:
    """The ids TrackingStore.search_messages returns, all pages: newest first, ties by id
    descending (a sorted set's reverse order), each message once."""
    found = [m for m in messages
             if (not recipient or recipient.lower() in {a.lower() for a, _, _ in m.recipients})
             and (not tag or m.tag == tag) and (not status or m.status == status)
             and (since_ms is None or m.ms >= since_ms) and (until_ms is None or m.ms <= until_ms)]
    return [m.id for m in sorted(found, key=lambda m: (m.ms, m.id), reverse=True)]


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from plan_nodes(child)


# -- the fixture: one archive for the module --------------------------------------------------------


@dataclass
class Data:
    conninfo: str
    messages: list[Message]
    bounces: list[dict[str, Any]]
    detailed: Message  # with a timeline and a body
    body: bytes = b""
    timeline: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def archive_data(pg_database: str) -> Data:
    rng = random.Random(18)
    messages = make_messages(rng, MESSAGES)
    # a message with the same address twice (in two cases): one search row all the same
    twice = messages[10]
    twice.recipients = [("Twice@example.org", "delivered", 1), ("twice@EXAMPLE.org", "bounced", 0)]
    detailed = messages[0]
    detailed.recipients = [("alice@example.org", "delivered", 1), ("Bob@Example.org", "bounced", 2),
                           ("carol@example.net", "queued", 0)]
    detailed.metadata = {"customer": "42", "nested": {"a": [1, 2]}, "text": "élan"}
    detailed.to = '["Alice <alice@example.org>", "bob@example.org"]'
    detailed.cc = "not json"
    at = "2026-03-01T10:00:00.123Z"
    timeline = [
        {"type": "queued", "at": at, "recipient": "alice@example.org", "rcpt": 0, "detail": "Accepted",
         "remote_host": None, "remote_ip": None, "smtp_code": None, "enhanced_code": None, "response": None,
         "remote_queue_id": None},
        {"type": "deferred", "at": at, "recipient": "Bob@Example.org", "rcpt": 1, "detail": "try later",
         "remote_host": "mx.example.org", "remote_ip": "192.0.2.7", "smtp_code": 451, "enhanced_code": "4.7.1",
         "response": "451 4.7.1 greylisted", "remote_queue_id": None},
        {"type": "delivered", "at": at, "recipient": "alice@example.org", "rcpt": 0, "detail": "",
         "remote_host": "mx.example.org", "remote_ip": "192.0.2.7", "smtp_code": 250, "enhanced_code": "2.0.0",
         "response": "250 ok", "remote_queue_id": "ABC123"},
        {"type": "bounced", "at": at, "recipient": "bob@example.org", "rcpt": None, "detail": "late DSN",
         "bounce_id": "00aa", "proof": "verp"},  # fields Event does not have: kept in extra
    ]
    body = b"From: a@example.org\r\nSubject: hi\r\n\r\n" + b"body line\r\n" * 200
    bounces = []
    for n in range(BOUNCES):
        ms = DAY1_START_MS + rng.randrange(2 * DAY_MS) if n % 7 else DAY1_START_MS + 5_000  # ties
        bounces.append({"id": f"{rng.getrandbits(64):016x}", "ms": ms, "message_id": rng.choice(["", twice.id]),
                        "recipient": rng.choice(["alice@example.org", "bob@example.org", "Mixed@example.org"]),
                        "type": rng.choice(["HardBounce", "SoftBounce", "SpamComplaint"]), "type_code": 1,
                        "description": "d", "details": "550 5.1.1 no such user", "at": "2026-03-01T00:00:05Z",
                        "inactive": n % 3 == 0,
                        "fields": {"proof": "verp", "status": "5.1.1", "remote_mta": "mx.example.org",
                                   "source": "dsn", "rule": "r1", "reason": "no such user", "count": 3},
                        "raw": b"raw report " + str(n).encode()})
    with psycopg.connect(pg_database) as conn:
        migrations.apply_migrations(conn)
        migrations.create_partitions(conn, DAY1, 2)
        archive = Archive(conn)
        archive.messages(messages)
        archive.events(detailed, timeline)
        archive.body(detailed, body)
        archive.bounces(bounces)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
    return Data(pg_database, messages, bounces, detailed, body, timeline)


@pytest.fixture
def archive_setup(request, archive_data: Data) -> None:
    request.cls.data = archive_data


# -- the reads -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("archive_setup")
class ArchiveReaderTests(unittest.TestCase):
    timeout = 60
    data: Data

    def setUp(self) -> None:
        self.database = ArchiveDatabase(self.data.conninfo)
        self.addCleanup(self.database.close)
        self.reader = ArchiveReader(self.database)
        self.ties_split = 0

    async def all_pages(self, limit: int, **filters: Any) -> list[MessageSummary]:
        rows: list[MessageSummary] = []
        cursor = None
        for _ in range(5000):
            page, next_cursor = await self.reader.search_messages(limit=limit, cursor=cursor, **filters)
            self.assertLessEqual(len(page), limit)
            if cursor is not None and page and page[0].score == cursor[0]:
                self.ties_split += 1  # this page began inside a run of equal times
            rows += page
            cursor = next_cursor
            if cursor is None:
                return rows
            self.assertEqual(cursor, (page[-1].score, page[-1].id))
        raise AssertionError("the pages never ended")

    # -- one message

    @async_test
    async def test_get_message_decodes_the_record_and_its_recipients(self):
        m = self.data.detailed
        record = await self.reader.get_message(m.id)
        self.assertEqual(record.id, m.id)
        self.assertEqual(record.received_ms, m.ms)
        self.assertEqual((record.sender, record.user, record.client, record.size), (m.sender, "user1", "192.0.2.1", 2048))
        self.assertEqual((record.header_from, record.subject, record.tag, record.status),
                         (m.header_from, m.subject, m.tag, m.status))
        self.assertEqual(record.message_id_header, f"<{m.id}@example.org>")
        self.assertEqual(record.metadata, m.metadata)
        self.assertEqual(record.to, ("Alice <alice@example.org>", "bob@example.org"))
        self.assertEqual(record.cc, ())  # as MessageRecord.decode: text that is not a JSON list
        self.assertEqual(record.undecoded, {"cc": "not json"})
        self.assertEqual(record.recipients, (
            RecipientState(0, "alice@example.org", "delivered", 1),
            RecipientState(1, "Bob@Example.org", "bounced", 2),
            RecipientState(2, "carol@example.net", "queued", 0)))
        self.assertEqual(record.unattributed, ())

    @async_test
    async def test_unknown_and_ill_formed_ids_are_none(self):
        known = self.data.detailed.id
        unknown = known[:12] + ("0" * 8 if known[12:] != "0" * 8 else "1" * 8)
        far = f"{DAY1_START_MS + 40 * DAY_MS:012x}" + known[12:]  # no partition that day: None, no error
        for message_id in (unknown, far, "", "x" * 20, known.upper(), known + "0", known[:19], "'; DROP x"):
            self.assertIsNone(await self.reader.get_message(message_id), message_id)
            self.assertIsNone(await self.reader.get_body(message_id), message_id)
            self.assertEqual(await self.reader.get_timeline(message_id), (), message_id)

    @async_test
    async def test_timeline_oldest_first_with_extra_fields(self):
        m = self.data.detailed
        timeline = await self.reader.get_timeline(m.id)
        self.assertEqual([e.type for e in timeline], ["queued", "deferred", "delivered", "bounced"])
        self.assertEqual(timeline[1], TimelineEvent(
            type="deferred", at="2026-03-01T10:00:00.123Z", recipient="Bob@Example.org", rcpt=1,
            detail="try later", remote_host="mx.example.org", remote_ip="192.0.2.7", smtp_code=451,
            enhanced_code="4.7.1", response="451 4.7.1 greylisted", remote_queue_id=None))
        self.assertEqual(timeline[3].extra, {"bounce_id": "00aa", "proof": "verp"})
        self.assertEqual(tuple(timeline), tuple(TimelineEvent.decode(e) for e in self.data.timeline))
        # attributed to recipients as today (the late DSN by its address, case-insensitively)
        record = (await self.reader.get_message(m.id)).with_timeline(timeline)
        self.assertEqual([e.type for e in record.recipients[1].events], ["deferred", "bounced"])
        self.assertEqual(await self.reader.get_timeline(self.data.messages[5].id), ())

    @async_test
    async def test_body_is_decompressed(self):
        self.assertEqual(await self.reader.get_body(self.data.detailed.id), self.data.body)
        self.assertIsNone(await self.reader.get_body(self.data.messages[5].id))  # none kept

    # -- searches

    @async_test
    async def test_search_every_filter_across_two_days_with_cursors_over_ties(self):
        messages = self.data.messages
        tied = sorted(ms for ms, n in collections.Counter(m.ms for m in messages).items() if n >= 5)
        self.assertGreater(len(tied), 20)  # pages end inside runs of equal times
        since, until = tied[3], tied[-4]  # both inclusive, at ties
        cases = [{}, {"recipient": "bob@example.org"}, {"recipient": "TWICE@example.org"}, {"tag": "news"},
                 {"tag": "rare"}, {"status": "bounced"}, {"tag": "alerts", "status": "delivered"},
                 {"recipient": "alice@example.org", "tag": "news"},
                 {"recipient": "carol@example.net", "status": "partial"},
                 {"since_ms": since}, {"until_ms": until}, {"since_ms": since, "until_ms": until},
                 {"tag": "news", "since_ms": DAY1_START_MS + DAY_MS},
                 {"recipient": "dave@example.com", "since_ms": since, "until_ms": until, "status": "queued"},
                 {"tag": "nosuchtag"}, {"since_ms": until, "until_ms": since}]
        for filters in cases:
            expected = expected_search(messages, **filters)
            for limit in (max(7, len(expected) // 12), 10 * len(expected) + 1):
                rows = await self.all_pages(limit, **filters)
                self.assertEqual([r.id for r in rows], expected, (filters, limit))
            days = {int(message_id[:12], 16) // DAY_MS for message_id in expected}
            if len(expected) > 20 and "since_ms" not in filters:
                self.assertEqual(len(days), 2, filters)  # the answer spans both days' partitions
        self.assertGreater(self.ties_split, 5)  # cursors inside runs of messages at the same ms
        self.assertEqual([r.id for r in await self.all_pages(5, recipient="twice@example.org")],
                         [messages[10].id])
        # a cursor in the middle of a run: the rest of the run, then older messages
        run = expected_search(messages, since_ms=tied[5], until_ms=tied[5])
        page, _ = await self.reader.search_messages(limit=3, cursor=(tied[5], run[1]))
        self.assertEqual([r.id for r in page], expected_search(messages, until_ms=tied[5])[2:5])

    @async_test
    async def test_search_rows_are_todays_summaries(self):
        rows, cursor = await self.reader.search_messages(limit=3)
        newest = sorted(self.data.messages, key=lambda m: (m.ms, m.id), reverse=True)[:3]
        self.assertEqual(rows, [MessageSummary(id=m.id, received_ms=m.ms, header_from=m.header_from,
                                               to=("to@example.org",), subject=m.subject, tag=m.tag,
                                               status=m.status, sender=m.sender, score=m.ms) for m in newest])
        self.assertEqual(cursor, (newest[-1].ms, newest[-1].id))
        # the cursor is exclusive: the next page starts after that row
        page, _ = await self.reader.search_messages(limit=1, cursor=cursor)
        self.assertEqual(page[0].id, sorted(self.data.messages, key=lambda m: (m.ms, m.id), reverse=True)[3].id)

    @async_test
    async def test_status_counts(self):
        for since in (None, DAY1_START_MS + DAY_MS + 3_600_000):
            counts = await self.reader.status_counts(since)
            expected = {s: sum(1 for m in self.data.messages if m.status == s and (since is None or m.ms >= since))
                        for s in MESSAGE_STATUSES}
            self.assertEqual(counts, expected)
        self.assertEqual(await self.reader.status_counts(DAY1_START_MS + 3 * DAY_MS), dict.fromkeys(MESSAGE_STATUSES, 0))

    # -- bounces

    @async_test
    async def test_get_bounce_and_raw(self):
        b = self.data.bounces[1]
        record = await self.reader.get_bounce(b["id"])
        self.assertEqual(record, BounceRecord(
            id=b["id"], message_id=b["message_id"], recipient=b["recipient"], type=b["type"], type_code=1,
            description="d", details=b["details"], at=b["at"], inactive=b["inactive"], proof="verp",
            status="5.1.1", remote_mta="mx.example.org", source="dsn", rule="r1", reason="no such user",
            claimed_message_id="", score=None))
        self.assertEqual(await self.reader.get_bounce_raw(b["id"]), b["raw"])
        for unknown in ("0" * 16, "zz", "", "a" * 65):
            self.assertIsNone(await self.reader.get_bounce(unknown))
            self.assertIsNone(await self.reader.get_bounce_raw(unknown))

    @async_test
    async def test_search_bounces_each_filter_with_cursors(self):
        bounces = self.data.bounces
        cases = [{}, {"type": "HardBounce"}, {"recipient": "ALICE@example.org"}, {"recipient": "mixed@example.org"},
                 {"type": "SoftBounce", "recipient": "bob@example.org"}, {"since_ms": DAY1_START_MS + DAY_MS},
                 {"type": "SpamComplaint", "since_ms": DAY1_START_MS + 5_000}]
        for filters in cases:
            wanted = filters.get("recipient", "").lower()
            expected = [b["id"] for b in sorted(bounces, key=lambda b: (b["ms"], b["id"]), reverse=True)
                        if (not filters.get("type") or b["type"] == filters["type"])
                        and (not wanted or b["recipient"] == wanted)  # stored text equals the address lowered
                        and b["ms"] >= filters.get("since_ms", 0)]
            rows: list[BounceRecord] = []
            cursor = None
            while True:
                page, cursor = await self.reader.search_bounces(limit=max(6, len(expected) // 12), cursor=cursor,
                                                                **filters)
                rows += page
                if cursor is None:
                    break
            self.assertEqual([r.id for r in rows], expected, filters)
        self.assertEqual(await self.reader.search_bounces(recipient="mixed@example.org"), ([], None))
        page, _ = await self.reader.search_bounces(limit=1)
        newest = max(bounces, key=lambda b: (b["ms"], b["id"]))
        # today's search rows carry these fields only (BounceStore.search_bounces)
        self.assertEqual(page, [BounceRecord(
            id=newest["id"], message_id=newest["message_id"], recipient=newest["recipient"], type=newest["type"],
            type_code=1, description="d", details=newest["details"], at=newest["at"], inactive=newest["inactive"],
            proof="verp", status="5.1.1", remote_mta="mx.example.org", score=newest["ms"])])

    # -- failures

    @async_test
    async def test_a_slow_read_is_a_storage_unavailable_error(self):
        slow = ArchiveDatabase(self.data.conninfo, statement_timeout=0.3)
        self.addCleanup(slow.close)
        reader = ArchiveReader(slow)
        with psycopg.connect(self.data.conninfo) as blocker:  # holds the table: every read waits
            blocker.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            with self.assertRaises(ArchiveUnavailable) as caught:
                await reader.search_messages(limit=5)
            blocker.rollback()
        self.assertTrue(caught.exception.timed_out)
        self.assertIsInstance(caught.exception, StorageUnavailable)  # the API's 503
        self.assertIn("statement timeout", str(caught.exception))
        rows, _ = await reader.search_messages(limit=5)  # the connection is usable again
        self.assertEqual(len(rows), 5)

    @async_test
    async def test_a_read_on_a_connection_the_server_cut_is_tried_again(self):
        one = ArchiveDatabase(self.data.conninfo, pool_max=1)  # one thread, one connection
        self.addCleanup(one.close)
        reader = ArchiveReader(one)
        pid = await one.run(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
        with psycopg.connect(self.data.conninfo, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        record = await reader.get_message(self.data.detailed.id)
        self.assertEqual(record.id, self.data.detailed.id)
        self.assertEqual(self.flushLoggedErrors(), [])  # the dead connection's rollback is not logged


# -- plans ----------------------------------------------------------------------------------------


#: Each search the API offers, and whether what it matches is rare (then sorting the matches,
#: found through the index, is the planner's right choice: they are fewer than a page).
SEARCHES = {
    "newest": (message_search_statement(limit=51), False),
    "next page": (message_search_statement(limit=51, cursor=(DAY1_START_MS + DAY_MS, "f" * 20)), False),
    "recipient": (message_search_statement(recipient="Bob@example.org", limit=51), False),
    "recipient next page": (message_search_statement(recipient="bob@example.org", limit=51,
                                                     cursor=(DAY1_START_MS + DAY_MS, "f" * 20)), False),
    "rare recipient": (message_search_statement(recipient="user7@example.com", limit=51), True),
    "recipient + tag": (message_search_statement(recipient="bob@example.org", tag="news", limit=51), False),
    "tag": (message_search_statement(tag="news", limit=51), False),
    "status": (message_search_statement(status="bounced", limit=51), False),
    "tag + status": (message_search_statement(tag="alerts", status="delivered", limit=51), False),
    "tag + window": (message_search_statement(tag="news", since_ms=DAY1_START_MS + 3_600_000,
                                              until_ms=DAY1_START_MS + DAY_MS + 3_600_000, limit=51), False),
    "bounces": (bounce_search_statement(limit=51), False),
    "bounces by type": (bounce_search_statement(type="HardBounce", limit=51), False),
    "bounces by recipient": (bounce_search_statement(recipient="alice@example.org", limit=51), False),
    "bounces next page": (bounce_search_statement(limit=51, cursor=(DAY1_START_MS + DAY_MS, "f" * 16)), False),
}


def explain(conn: psycopg.Connection, text: str, params: list[Any], plan_mode: str) -> dict[str, Any]:
    """EXPLAIN ANALYZE of a statement prepared on the server (as psycopg prepares one after 5
    runs) under ``plan_mode``: custom plans (the first runs) or the generic plan."""
    numbers = iter(range(1, len(params) + 1))
    conn.execute("DEALLOCATE ALL")
    conn.execute("PREPARE search AS " + re.sub("%s", lambda _: f"${next(numbers)}", text))
    conn.execute(f"SET plan_cache_mode = {plan_mode}")
    execute = f"EXECUTE search({', '.join(['%s'] * len(params))})"
    explained = psycopg.ClientCursor(conn).execute("EXPLAIN (ANALYZE, FORMAT JSON) " + execute, params)
    return explained.fetchone()[0][0]["Plan"]


def rows_read(node: dict[str, Any]) -> int:
    """Rows a scan node produced and dropped, over all its loops."""
    return (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
def test_each_search_reads_an_index_newest_first_up_to_the_limit(archive_data: Data, plan_mode: str) -> None:
    """Each search is a Limit over index scans in the index's order: no Seq Scan, no Sort (but
    of a rare recipient's few matches), and it reads about a page of rows, not a partition."""
    with psycopg.connect(archive_data.conninfo, prepare_threshold=None) as conn:  # we PREPARE
        for name, ((text, params), rare) in SEARCHES.items():
            plan = explain(conn, text, params, plan_mode)
            nodes = list(plan_nodes(plan))
            kinds = [n["Node Type"] for n in nodes]
            assert plan["Node Type"] == "Limit", (name, kinds)
            assert "Seq Scan" not in kinds, (name, kinds)
            assert {"Index Scan", "Index Only Scan", "Bitmap Index Scan"} & set(kinds), (name, kinds)
            if not rare:
                assert "Sort" not in kinds and "Incremental Sort" not in kinds, (name, kinds)
            read = sum(rows_read(n) for n in nodes if n["Node Type"].endswith("Scan")
                       and not n["Node Type"].startswith("Bitmap Index"))
            assert read <= 12 * 51, (name, read, kinds)


def test_status_counts_read_only_the_status_index(archive_data: Data) -> None:
    text, params = status_counts_statement(DAY1_START_MS)
    with psycopg.connect(archive_data.conninfo) as conn:
        plan = conn.execute("EXPLAIN (FORMAT JSON) " + text, params).fetchone()[0][0]["Plan"]
    kinds = {n["Node Type"] for n in plan_nodes(plan)}
    assert "Seq Scan" not in kinds, kinds
    assert {n.get("Index Name", "") for n in plan_nodes(plan)} & {
        f"messages_p{DAY1:%Y%m%d}_status_received_at_id_idx"}, list(plan_nodes(plan))


# -- the same signatures as today's stores, and a parity check for the switch-over ----------------


def test_the_reader_has_the_stores_signatures() -> None:
    for name in ("get_message", "get_timeline", "get_body", "search_messages", "status_counts"):
        assert inspect.signature(getattr(ArchiveReader, name)) == inspect.signature(getattr(BounceStore, name)), name
        assert inspect.iscoroutinefunction(getattr(ArchiveReader, name)), name
    for name in ("get_bounce", "get_bounce_raw", "search_bounces"):
        assert inspect.signature(getattr(ArchiveReader, name)) == inspect.signature(getattr(BounceStore, name)), name
    for protocol in (interfaces.MessageReader, interfaces.MessageSearch, interfaces.BounceRecords):
        for name, member in vars(protocol).items():
            if inspect.isfunction(member) and not name.startswith("_"):
                assert inspect.signature(getattr(ArchiveReader, name)) == inspect.signature(member), name


def record_differences(from_redis: MessageRecord, from_archive: MessageRecord) -> list[str]:
    """For the switch-over (the lead's parity test): every field in which the record of a message
    read from Redis (TrackingStore.get_message, optionally with_timeline) and the same message read
    from PostgreSQL differ, as ``"field: redis != archive"``; [] when they are equal."""
    differences = []
    for name in MessageRecord.__dataclass_fields__:
        if name == "recipients":
            continue
        a, b = getattr(from_redis, name), getattr(from_archive, name)
        if a != b:
            differences.append(f"{name}: {a!r} != {b!r}")
    if len(from_redis.recipients) != len(from_archive.recipients):
        differences.append(f"recipients: {len(from_redis.recipients)} != {len(from_archive.recipients)}")
    for a, b in zip(from_redis.recipients, from_archive.recipients):
        for name in RecipientState.__dataclass_fields__:
            if getattr(a, name) != getattr(b, name):
                differences.append(f"recipients[{a.index}].{name}: {getattr(a, name)!r} != {getattr(b, name)!r}")
    return differences


def test_record_differences_names_each_field_that_differs() -> None:
    stored = {"sender": "s@example.org", "received_at": "1772323200123", "to": '["a@example.org"]',
              "metadata": '{"k": "v"}', "rcpt_count": "2", "rcpt:0": "a@example.org", "state:0": "delivered",
              "rcpt:1": "b@example.org", "attempts:1": "3"}
    redis = MessageRecord.decode("0" * 20, stored)
    assert record_differences(redis, MessageRecord.decode("0" * 20, dict(stored))) == []
    changed = MessageRecord.decode("0" * 20, {**stored, "metadata": '{"k": "w"}', "state:1": "bounced"})
    assert record_differences(redis, changed) == [
        "metadata: {'k': 'v'} != {'k': 'w'}", "recipients[1].state: 'queued' != 'bounced'"]


@pytest.mark.usefixtures("archive_setup")
class ParityHelperTests(unittest.TestCase):
    """The archive's record of a message equals the one decoded from the Redis hash the archiver
    would have copied (the fields written by queue.py/settlement, as text)."""

    timeout = 30
    data: Data

    @async_test
    async def test_archive_record_equals_the_redis_hash_decoded(self):
        database = ArchiveDatabase(self.data.conninfo)
        self.addCleanup(database.close)
        m = self.data.detailed
        redis_hash = {"sender": m.sender, "user": "user1", "client": "192.0.2.1", "received_at": str(m.ms),
                      "size": "2048", "tag": m.tag, "metadata": json.dumps(m.metadata), "from": m.header_from,
                      "to": m.to, "cc": m.cc, "subject": m.subject, "message_id": f"<{m.id}@example.org>",
                      "status": m.status, "rcpt_count": str(len(m.recipients)), "unsettled": "",
                      **{f"{k}:{i}": str(v) for i, r in enumerate(m.recipients)
                         for k, v in zip(("rcpt", "state", "attempts"), r)}}
        archived = await ArchiveReader(database).get_message(m.id)
        self.assertEqual(record_differences(MessageRecord.decode(m.id, redis_hash), archived), [])
        self.assertEqual(MessageRecord.decode(m.id, redis_hash), archived)

