"""
Bounces after the keys are gone (issue 18): at data version 2 a message's Redis keys are released
once it is final and archived; reports about it arrive days later. Against a real redis-server and
a real PostgreSQL, with the store's own write paths and the archiver's steps as the archiver runs
them (read the group, snapshot, write, mark, release):

* a DSN to a released message's VERP address is matched from PostgreSQL (with its proof), stored,
  suppresses, and after the archiver's next batch the archived message has the bounced event, the
  recipient is bounced and the status recomputed, exactly once however often the batch is written;
  a complaint (token proof) joins the timeline without changing a state;
* the cap on reports per recipient holds across the release (its count carried over) and for
  late reports;
* PostgreSQL down while a report needs it: 451, nothing stored; back up: the same report is taken;
* ``mailrelay bounce reclassify`` and ``mailrelay suppressions list --unproven`` at data version 2
  read and rewrite the bounces that only PostgreSQL holds.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from conftest import async_test, today_utc
from peers import BOUNCE_DOMAIN, arf, dsn
from pgserver import start_postgres
from mailrelay.config import parse_config
from mailrelay.services.bounces import MAX_REPORTS_PER_RECIPIENT, BounceHandler, BounceRecorder, load_verp
from mailrelay.smtp.session import Reply, Session, Transaction
from mailrelay.store import Event, NewMessage, Storage, connect_redis, migrations
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archiverecords import ArchiveBatch, BounceSnapshot
from mailrelay.store.archiveread import ArchiveReader
from mailrelay.store.archiveview import ArchiveView
from mailrelay.store.archivewrite import ArchiveWriter, WriteResult
from mailrelay.store.cluster import ARCHIVE_IN_POSTGRES_VERSION
from mailrelay.timefmt import rfc3339

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "bounces"
CONTENT = b"From: app@example.com\r\nSubject: Hello\r\n\r\nHello there\r\n"


class LateBounces:
    """A Redis key prefix at data version 2 and a PostgreSQL archive, with the archiver's steps."""

    redis_server: Any
    conninfo: str
    prefix: str
    storage: Storage
    writer: ArchiveWriter
    reader: ArchiveReader

    def connect(self, conninfo: str) -> None:
        self.prefix = f"t{uuid4().hex[:8]}:"
        self.config = parse_config({"redis": {"url": self.redis_server.url, "key_prefix": self.prefix},
                                    "bounces": {"domain": BOUNCE_DOMAIN}})
        redis = connect_redis(self.config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        self.storage = Storage(self.config, redis, owner="test-daemon")
        self.client = self.redis_server.client()
        self.addCleanup(self.client.close)
        self.client.command("SET", self.prefix + "meta:version", ARCHIVE_IN_POSTGRES_VERSION)
        self.database = ArchiveDatabase(conninfo, pool_max=2)
        self.addCleanup(self.database.close)
        self.writer = ArchiveWriter(self.database)
        self.reader = ArchiveReader(self.database)

    async def start_listener(self) -> None:
        """The bounce listener's handler as service.py builds it (the ArchiveView's reads)."""
        await self.storage.measure_clock()
        self.verp = await load_verp(self.config, self.storage)
        view = ArchiveView(self.storage, self.reader, in_postgres=lambda: True)
        recorder = BounceRecorder(self.storage, 65536, reactor)
        self.handler = BounceHandler(self.verp, view, recorder)

    # -- the store's write paths, and the archiver's steps

    async def delivered(self, *recipients: str) -> str:
        message = NewMessage(sender="app@example.com", recipients=list(recipients), content=CONTENT, tag="news",
                             summary={"from": "app@example.com", "to": list(recipients), "cc": [],
                                      "subject": "Hello", "message_id": "<m1@example.com>"})
        message_id = await self.storage.enqueue(message)
        await self.storage.confirm(message_id)
        jobs = await self.storage.claim("example.test", 10, "test-daemon", 60)
        outcomes = [(job, "delivered", Event(type="delivered", at=rfc3339(time.time()), recipient=job.recipient,
                                             rcpt=job.rcpt, detail="250 ok", smtp_code=250), None)
                    for job in jobs]
        assert await self.storage.record_many(outcomes, "test-daemon") == ["OK"] * len(recipients)
        return message_id

    async def archive_pass(self) -> tuple[ArchiveBatch, WriteResult]:
        """What the archiver does with the entries waiting: snapshot, write, mark (and ack)."""
        await self.storage.archive_create_group()
        entries = await self.storage.archive_read("test-daemon", 10_000)
        batch = await self.storage.archive_snapshot(entries)
        result = await self.writer.write(batch)
        await self.storage.archive_mark(batch, [e.id for e in entries])
        return batch, result

    async def archive_and_release(self) -> None:
        """The archiver writes everything, then the release's time comes (due at once here)."""
        await self.archive_pass()
        self.client.command("ZUNIONSTORE", self.prefix + "archive:release", 1, self.prefix + "archive:release",
                            "WEIGHTS", 0)
        await self.storage.release_archived()

    def released(self, message_id: str) -> bool:
        return self.client.command("EXISTS", *(f"{self.prefix}{k}:{message_id}" for k in
                                               ("msg", "timeline", "body"))) == 0

    async def report(self, message_id: str, rcpt: int, address: str, *, complaint: bool = False) -> Reply:
        """A DSN to the recipient's VERP address (or an ARF complaint carrying its token) through
        the listener's handler, as the SMTP server hands it DATA."""
        if complaint:
            original = (f"From: app@example.com\nTo: {address}\nSubject: Hello\n"
                        f"{self.verp.header(message_id, rcpt).decode().strip()}\n")
            to, content = f"fbl@{BOUNCE_DOMAIN}", arf(address, message_id, original=original)
        else:
            to = self.verp.address(message_id, rcpt)
            content = dsn(to, address, message_id)
        session = Session(peer_host="192.0.2.25", peer_port=2525, local_port=25)
        return await self.handler.accept_message(session, Transaction(sender="", recipients=[to]), content)

    def bounce_ids(self) -> list[str]:
        return [i.decode() for i in self.client.command("ZRANGE", self.prefix + "bounces", 0, -1)]

    def bounce_record(self, bounce_id: str) -> dict[str, str]:
        flat = self.client.command("HGETALL", f"{self.prefix}bounce:{bounce_id}")
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


@pytest.mark.usefixtures("redis_server")
class LateBounceTests(LateBounces, unittest.TestCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _servers(self, redis_server: Any, archive_databases: Any) -> None:
        self.redis_server = redis_server
        self.conninfo = archive_databases()

    def setUp(self) -> defer.Deferred:
        self.connect(self.conninfo)
        return defer.ensureDeferred(self.start_listener())

    @async_test
    async def test_a_dsn_about_a_released_message_is_matched_stored_and_archived_once(self) -> None:
        message_id = await self.delivered("first@example.test", "second@example.test")
        await self.archive_and_release()
        self.assertTrue(self.released(message_id))
        reply = await self.report(message_id, 1, "second@example.test")
        self.assertEqual(reply.code, 250, reply)
        # matched from PostgreSQL, with its proof; stored; the address suppressed
        [bounce_id] = self.bounce_ids()
        record = self.bounce_record(bounce_id)
        self.assertEqual((record["message_id"], record["recipient"], record["type"], record["proof"]),
                         (message_id, "second@example.test", "HardBounce", "verp"))
        self.assertEqual(record["inactive"], "1")
        suppressed = await self.storage.suppressions(["second@example.test"])
        self.assertEqual(suppressed["second@example.test"].bounce_id, bounce_id)
        self.assertTrue(self.released(message_id))  # no stray hash or timeline made in Redis
        # the archiver's next batch: the event joins the archived timeline, the state and status follow
        batch, result = await self.archive_pass()
        self.assertEqual([(e.message_id, e.rcpt, e.state) for e in batch.late_events],
                         [(message_id, 1, "bounced")])
        self.assertEqual(batch.messages, ())  # its keys are gone: not read
        self.assertEqual((result.late_events, result.bounces, result.skipped), (1, 1, ()))
        archived = await self.reader.get_message(message_id)
        self.assertEqual([r.state for r in archived.recipients], ["delivered", "bounced"])
        self.assertEqual(archived.status, "partial")
        timeline = await self.reader.get_timeline(message_id)
        self.assertEqual([(e.type, e.recipient) for e in timeline][-1], ("bounced", "second@example.test"))
        self.assertEqual(sum(e.type == "bounced" for e in timeline), 1)
        self.assertEqual((await self.reader.get_bounce(bounce_id)).message_id, message_id)
        # the same batch written again (entries taken over after a crash): nothing changes
        again = await self.writer.write(batch)
        self.assertEqual((again.late_events, again.bounces), (0, 0))
        self.assertEqual(await self.reader.get_timeline(message_id), timeline)
        self.assertEqual((await self.reader.get_message(message_id)).status, "partial")
        # and what the API shows (the same view) is the archived message
        view = ArchiveView(self.storage, self.reader)
        self.assertEqual((await view.get_message(message_id)).status, "partial")

    @async_test
    async def test_the_last_recipient_bouncing_late_makes_the_message_bounced(self) -> None:
        message_id = await self.delivered("only@example.test")
        await self.archive_and_release()
        self.assertEqual((await self.report(message_id, 0, "only@example.test")).code, 250)
        await self.archive_pass()
        archived = await self.reader.get_message(message_id)
        self.assertEqual((archived.status, archived.recipients[0].state), ("bounced", "bounced"))
        rows, _ = await self.reader.search_messages(status="bounced")
        self.assertEqual([r.id for r in rows], [message_id])

    @async_test
    async def test_a_late_complaint_joins_the_timeline_and_changes_no_state(self) -> None:
        message_id = await self.delivered("reader@example.test")
        await self.archive_and_release()
        self.assertEqual((await self.report(message_id, 0, "reader@example.test", complaint=True)).code, 250)
        [bounce_id] = self.bounce_ids()
        self.assertEqual((self.bounce_record(bounce_id)["type"], self.bounce_record(bounce_id)["proof"]),
                         ("SpamComplaint", "token"))
        _, result = await self.archive_pass()
        self.assertEqual(result.late_events, 1)
        archived = await self.reader.get_message(message_id)
        self.assertEqual((archived.status, archived.recipients[0].state), ("delivered", "delivered"))
        self.assertEqual((await self.reader.get_timeline(message_id))[-1].type, "complained")

    @async_test
    async def test_the_cap_on_reports_per_recipient_holds_across_the_release(self) -> None:
        message_id = await self.delivered("again@example.test")
        await self.archive_pass()
        before = 3
        for _ in range(before):  # while the message is in Redis: counted in its hash
            self.assertEqual((await self.report(message_id, 0, "again@example.test")).code, 250)
        await self.archive_and_release()
        self.assertTrue(self.released(message_id))
        counter = f"{self.prefix}reports:{message_id}.0"
        self.assertEqual(self.client.command("GET", counter), str(before).encode())  # carried over
        for _ in range(MAX_REPORTS_PER_RECIPIENT - before):
            self.assertEqual((await self.report(message_id, 0, "again@example.test")).code, 250)
        stored = self.bounce_ids()  # those since the release (the first ones were released too)
        self.assertEqual(len(stored), MAX_REPORTS_PER_RECIPIENT - before)
        stream = self.client.command("XLEN", self.prefix + "events")
        # one more: accepted (250: the reporting server must not retry) but nothing stored or sent on
        self.assertEqual((await self.report(message_id, 0, "again@example.test")).code, 250)
        self.assertEqual(self.bounce_ids(), stored)
        self.assertEqual(self.client.command("XLEN", self.prefix + "events"), stream)
        ttl = self.client.command("TTL", counter)
        self.assertTrue(0 < ttl <= self.config.tracking.retention, ttl)
        # every report stored reached the archive, and the archived timeline, once
        await self.archive_pass()
        timeline = await self.reader.get_timeline(message_id)
        self.assertEqual(sum(e.type == "bounced" for e in timeline), MAX_REPORTS_PER_RECIPIENT)
        archived, _ = await self.reader.search_bounces(recipient="again@example.test", limit=100)
        self.assertEqual(len(archived), MAX_REPORTS_PER_RECIPIENT)

    @async_test
    async def test_a_report_about_a_message_the_archive_never_had_is_unmatched(self) -> None:
        unknown = f"{int(time.time() * 1000):012x}00000001"
        self.assertEqual((await self.report(unknown, 0, "who@example.test")).code, 250)
        [bounce_id] = self.bounce_ids()
        self.assertEqual(self.bounce_record(bounce_id)["proof"], "")
        self.assertEqual(await self.storage.suppressions(["who@example.test"]), {})


class ArchiveDownTests(LateBounces, unittest.TestCase):
    """PostgreSQL stopped while a report about a released message comes: 451, nothing stored."""

    timeout = 120

    @pytest.fixture(autouse=True)
    def _servers(self, redis_server: Any) -> None:
        self.redis_server = redis_server

    @async_test
    async def test_451_and_nothing_stored_while_postgresql_is_down(self) -> None:
        server = start_postgres()
        self.addCleanup(lambda: server.stop() if server.process.poll() is None else None)
        with psycopg.connect(server.conninfo()) as conn:
            migrations.apply_migrations(conn)
            migrations.create_partitions(conn, today_utc(), 2)
        self.connect(server.conninfo())
        await self.start_listener()
        released = await self.delivered("down@example.test")
        await self.archive_and_release()
        hot = await self.delivered("hot@example.test")  # still in Redis: needs no PostgreSQL
        stream = self.client.command("XLEN", self.prefix + "events")
        server.stop()
        reply = await self.report(released, 0, "down@example.test")
        self.assertEqual((reply.code, reply.status), (451, "4.3.0"))
        self.assertEqual(self.bounce_ids(), [])
        self.assertEqual(await self.storage.suppressions(["down@example.test"]), {})
        self.assertEqual(self.client.command("XLEN", self.prefix + "events"), stream)
        self.assertEqual((await self.report(hot, 0, "hot@example.test")).code, 250)
        self.assertEqual(len(self.bounce_ids()), 1)
        # back up: the reporting server's retry is taken
        server.start()
        self.assertEqual((await self.report(released, 0, "down@example.test")).code, 250)
        self.assertEqual(len(self.bounce_ids()), 2)
        self.assertIn("down@example.test", await self.storage.suppressions(["down@example.test"]))
        self.flushLoggedErrors()  # the handler logs the failure


# -- reclassify and the suppression audit at data version 2 --------------------------------------


def old_bounce(bounce_id: str, address: str, raw: bytes, *, received_ms: int, message_id: str = "0" * 20,
               proof: str = "verp") -> BounceSnapshot:
    """A bounce as the classifier before issue 16 stored it (a HardBounce), with its raw report."""
    stored = {"id": bounce_id, "message_id": message_id, "recipient": address, "type": "HardBounce",
              "type_code": "1", "status": "5.2.1", "details": "", "source": "dsn", "proof": proof, "inactive": "1",
              "at": "2026-11-01T10:00:00Z"}
    return BounceSnapshot(id=bounce_id, received_ms=received_ms, stored=stored, raw=raw)


class AdminCommandTests(LateBounces, unittest.TestCase):
    """``mailrelay bounce reclassify`` and ``suppressions list --unproven`` at data version 2, as an
    operator runs them, on bounces released from Redis (only PostgreSQL holds them)."""

    timeout = 120

    @pytest.fixture(autouse=True)
    def _servers(self, redis_server: Any, archive_databases: Any, daemon_config: Any, tmp_path: Path) -> None:
        self.redis_server = redis_server
        self.conninfo = archive_databases()
        self.config_path = tmp_path / "mailrelay.toml"
        self._config_text = lambda prefix: daemon_config(redis_server, prefix, archive={"url": self.conninfo},
                                                         bounces={"domain": BOUNCE_DOMAIN})

    def setUp(self) -> defer.Deferred:
        self.connect(self.conninfo)
        self.config_path.write_text(self._config_text(self.prefix))
        return defer.ensureDeferred(self.start_listener())

    async def cli(self, *args: str) -> tuple[int, str, str]:
        out, err, code = await utils.getProcessOutputAndValue(
            sys.executable, ["-m", "mailrelay.cli", *args, "-c", str(self.config_path)], env=dict(os.environ),
            path=str(ROOT))
        return code, out.decode(), err.decode()

    def suppressed_by(self, snapshot: BounceSnapshot, *, proof: str = "verp") -> None:
        address = snapshot.stored["recipient"]
        self.client.command("HSET", self.prefix + "suppressed", address, json.dumps(
            {"address": address, "since": "2026-11-01T10:00:00Z", "type": "HardBounce", "reason": "",
             "bounce_id": snapshot.id, "message_id": snapshot.stored["message_id"], "proof": proof}))

    def in_redis(self, snapshot: BounceSnapshot) -> None:
        """A bounce the archiver wrote but whose Redis keys are not released yet."""
        self.client.command("HSET", f"{self.prefix}bounce:{snapshot.id}",
                            *[v for pair in snapshot.stored.items() for v in pair])
        self.client.command("ZADD", self.prefix + "bounces", snapshot.received_ms, snapshot.id)
        self.client.command("SET", f"{self.prefix}bounce:raw:{snapshot.id}", snapshot.raw)

    def archived_rows(self) -> list[tuple[str, str, bool, str | None]]:
        with psycopg.connect(self.conninfo) as conn:
            return conn.execute("SELECT id, type, inactive, fields ->> 'reclassified_from' FROM bounces"
                                " ORDER BY id").fetchall()

    @async_test
    async def test_reclassify_rewrites_the_archived_rows(self) -> None:
        now = int(time.time() * 1000)
        disabled = (CORPUS / "dsn-account-disabled.eml").read_bytes()  # 5.2.1 "disabled": a SoftBounce today
        archived_only = old_bounce("0a", "old.account@example.org", disabled, received_ms=now - 2)
        in_both = old_bounce("0b", "second@example.org", disabled, received_ms=now - 1)
        unchanged = old_bounce("0c", "jdoe@example.org", (CORPUS / "dsn-postfix-user-unknown.eml").read_bytes(),
                               received_ms=now)
        self.assertEqual((await self.writer.write(ArchiveBatch(bounces=(archived_only, in_both, unchanged)))).bounces, 3)
        self.in_redis(in_both)
        for snapshot in (archived_only, in_both, unchanged):
            self.suppressed_by(snapshot)
        before = self.archived_rows()
        code, out, err = await self.cli("bounce", "reclassify", "--dry-run")
        self.assertEqual(code, 0, err)
        rows = [line.split("\t")[:4] for line in out.splitlines()[:-1]]
        self.assertEqual(rows, [["0b", "second@example.org", "HardBounce -> SoftBounce", "would reactivate"],
                                ["0a", "old.account@example.org", "HardBounce -> SoftBounce", "would reactivate"]])
        self.assertEqual(self.archived_rows(), before)
        code, out, err = await self.cli("bounce", "reclassify")
        self.assertEqual(code, 0, err)
        self.assertEqual([line.split("\t")[3] for line in out.splitlines()[:-1]], ["reactivated", "reactivated"])
        self.assertEqual(self.archived_rows(), [("0a", "SoftBounce", False, "HardBounce"),
                                                ("0b", "SoftBounce", False, "HardBounce"),
                                                ("0c", "HardBounce", True, None)])
        self.assertEqual(self.client.command("HGET", f"{self.prefix}bounce:0b", "type"), b"SoftBounce")
        self.assertEqual(sorted(k.decode() for k in self.client.command("HKEYS", self.prefix + "suppressed")),
                         ["jdoe@example.org"])
        record = await self.reader.get_bounce("0a")  # as the API reads it
        self.assertEqual((record.type, record.inactive, record.type_code), ("SoftBounce", False, 4096))
        code, out, _ = await self.cli("bounce", "reclassify")
        self.assertTrue(out.startswith("0 bounces reclassified"), out)

    @async_test
    async def test_a_reclassification_at_version_1_reaches_the_archived_row(self) -> None:
        """Before `mailrelay migrate` (data version 1) reclassify rewrites Redis only; its
        `bounce_changed` stream entry makes the archiver rewrite the row it archived already (a
        bounce is otherwise written once), so the archive agrees with Redis."""
        self.client.command("SET", self.prefix + "meta:version", ARCHIVE_IN_POSTGRES_VERSION - 1)
        disabled = (CORPUS / "dsn-account-disabled.eml").read_bytes()  # a SoftBounce today
        snapshot = old_bounce("0d", "old.account@example.org", disabled, received_ms=int(time.time() * 1000))
        self.in_redis(snapshot)
        self.suppressed_by(snapshot)
        self.assertEqual((await self.writer.write(ArchiveBatch(bounces=(snapshot,)))).bounces, 1)  # archived
        code, out, err = await self.cli("bounce", "reclassify")
        self.assertEqual(code, 0, err)
        self.assertEqual([line.split("\t")[:4] for line in out.splitlines()[:-1]],
                         [["0d", "old.account@example.org", "HardBounce -> SoftBounce", "reactivated"]])
        self.assertEqual(self.archived_rows(), [("0d", "HardBounce", True, None)])  # Redis only, so far
        batch, result = await self.archive_pass()
        self.assertEqual(([b.id for b in batch.bounces], result.bounces, result.bounces_changed), (["0d"], 0, 1))
        self.assertEqual(self.archived_rows(), [("0d", "SoftBounce", False, "HardBounce")])
        self.assertEqual(await self.reader.get_bounce("0d"), await self.storage.get_bounce("0d"))
        _, again = await self.archive_pass()  # nothing new: nothing written
        self.assertEqual(again.bounces_changed, 0)

    @async_test
    async def test_the_suppression_audit_reads_bounces_and_messages_from_the_archive(self) -> None:
        message_id = await self.delivered("proven@example.test", "unproven@example.test")
        await self.archive_and_release()
        now = int(time.time() * 1000)
        # suppressions made before reports had to prove themselves (no proof): their bounces
        # released from Redis; one returns the recipient's token, one only names the message
        with_token = old_bounce("1a", "proven@example.test", dsn(self.verp.address(message_id, 0),
                                                                   "proven@example.test", message_id),
                                received_ms=now - 1, message_id=message_id, proof="")
        without = old_bounce("1b", "unproven@example.test", dsn(f"bounces@{BOUNCE_DOMAIN}", "unproven@example.test",
                                                                message_id),
                             received_ms=now, message_id=message_id, proof="")
        await self.writer.write(ArchiveBatch(bounces=(with_token, without)))
        for snapshot in (with_token, without):
            self.suppressed_by(snapshot, proof="")
        self.assertTrue(self.released(message_id) and self.bounce_ids() == [])
        code, out, err = await self.cli("suppressions", "list", "--unproven")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual([line.split("\t")[0] for line in lines[:-1]], ["unproven@example.test"])
        self.assertIn("matched by X-Mailrelay-ID or by address only", lines[0])
        self.assertEqual(lines[-1].split(" (")[0], "1 unproven suppression")
