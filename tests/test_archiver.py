"""
The archiver (mailrelay.services.archiver): the event stream drained into the PostgreSQL archive.

In-process tests (trial) run an ArchiverService with the real store on the session's redis-server
and the real ArchiveWriter on a copy of the migrated archive template in the session's
PostgreSQL; messages, events and bounces are written by the store's own write paths, and read
back through ArchiveReader and SQL. A database is made unreachable for one test by refusing its
connections (ALTER DATABASE ... ALLOW_CONNECTIONS false, its sessions ended), which leaves the
other tests' databases alone. Daemon tests run twistd with [archive] url, submit mail over SMTP,
deliver it to smtp-sink and read the archive back. Nothing sleeps: tests wait for log lines,
state in Redis or rows in PostgreSQL.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
import zlib
from typing import Any, Callable
from uuid import uuid4

import psycopg
import pytest
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from conftest import async_test
from mailrelay.config import parse_config
from mailrelay.services import archiver as archiver_module
from mailrelay.services.archive import ArchiveService
from mailrelay.services.archiver import ArchiverService, BatchWriter
from mailrelay.store import Event, NewMessage, Storage, connect_redis
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archiveread import ArchiveReader, run_translated
from mailrelay.store.archiverecords import ArchiveBatch
from mailrelay.store.archivewrite import ArchiveWriter
from mailrelay.store.records import decode_timeline
from mailrelay.timefmt import rfc3339
from peers import send, wait_until
from redisproxy import StallingProxy

GROUP = "archiver"
DOWN = r"archiver: the archive database at .* does not answer"
BACK = "archiver: the archive database answers again"


class CountingWriter:
    """The real writer, counting the calls (a failed one included)."""

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer
        self.calls = 0

    async def write(self, batch: ArchiveBatch) -> Any:
        self.calls += 1
        return await self.writer.write(batch)


class GatedWriter:
    """The real writer, each call held until ``gate`` fires (to catch a batch in flight)."""

    def __init__(self, writer: BatchWriter) -> None:
        self.writer = writer
        self.gate: defer.Deferred[None] = defer.Deferred()
        self.waiting = False

    async def write(self, batch: ArchiveBatch) -> Any:
        self.waiting = True
        await self.gate
        return await self.writer.write(batch)


def set_connections(admin_conninfo: str, conninfo: str, allowed: bool) -> None:
    """Let a database take connections, or refuse them and end its sessions (an outage of it alone)."""
    dbname = psycopg.conninfo.conninfo_to_dict(conninfo)["dbname"]
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS {'true' if allowed else 'false'}")
        if not allowed:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))


class ArchiverTests(unittest.TestCase):
    timeout = 90

    @pytest.fixture(autouse=True)
    def _servers(self, redis_server: Any, postgres_server: Any, archive_databases: Callable[..., str]) -> None:
        self.redis_server = redis_server
        self.postgres_server = postgres_server
        self.conninfo = archive_databases()

    def setUp(self) -> None:
        self.prefix = f"t{uuid4().hex[:8]}:"
        self.config = parse_config({"redis": {"url": self.redis_server.url, "key_prefix": self.prefix},
                                    "archive": {"url": self.conninfo}})
        redis = connect_redis(self.config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        self.storage = Storage(self.config, redis, owner="daemon-a")
        self.archive = ArchiveService(self.config, retry_start=0.1, retry_max=0.2)
        self.archive.startService()
        self.addCleanup(self.archive.stopService)
        self.reader = ArchiveReader(self.archive.read)
        self.client = self.redis_server.client()
        self.addCleanup(self.client.close)
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == archiver_module.__name__:
                self.lines.append(formatEvent(event))
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        # quick measures and trims; retries in tenths of seconds
        self.patch(archiver_module, "LAG_INTERVAL", 0.05)
        self.patch(archiver_module, "TRIM_INTERVAL", 0.0)
        self.patch(archiver_module, "TRIM_KEEP", 0.0)

    def start(self, writer: BatchWriter | None = None, storage: Storage | None = None,
              **options: Any) -> ArchiverService:
        storage = storage or self.storage
        service = ArchiverService(self.config, lambda: storage, self.archive,
                                  (lambda: writer) if writer is not None else None,
                                  retry_start=0.1, retry_max=0.2, **options)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    # -- the store's write paths ------------------------------------------------------------

    async def accepted(self, recipients: tuple[str, ...] = ("a@example.test",)) -> str:
        message = NewMessage(sender="app@example.com", recipients=list(recipients),
                             content=b"Subject: hi\r\n\r\nhello " + uuid4().hex.encode() + b"\r\n", tag="news",
                             metadata={"k": "v"}, summary={"from": "app@example.com", "to": list(recipients),
                                                           "cc": [], "subject": "hi", "message_id": "<x@y>"})
        message_id = await self.storage.enqueue(message)
        await self.storage.confirm(message_id)
        return message_id

    async def attempt(self, domain: str, state: str, limit: int = 100) -> list[str]:
        """Every due job of ``domain`` claimed and recorded with ``state`` (deferred: due again now)."""
        jobs = await self.storage.claim(domain, limit, "daemon-a", 60)
        due = self.storage.now_ms() if state == "deferred" else None
        outcomes = [(job, state, Event(type=state, at=rfc3339(time.time()), recipient=job.recipient, rcpt=job.rcpt,
                                       detail=f"{state} by the test"), due) for job in jobs]
        await self.storage.record_many(outcomes, "daemon-a")
        return [job.message_id for job in jobs]

    async def bounce(self, message_id: str | None) -> str:
        bounce_id = f"b{uuid4().hex[:12]}"
        record = {"id": bounce_id, "message_id": message_id or "", "recipient": "a@example.test",
                  "type": "HardBounce", "type_code": 10, "at": rfc3339(time.time()), "source": "dsn"}
        event = Event(type="bounced", at=record["at"], recipient="a@example.test", rcpt=0,
                      detail="HardBounce") if message_id else None
        await self.storage.record_bounce(record, b"raw " + bounce_id.encode(), message_id=message_id,
                                         rcpt=0 if message_id else None, state="bounced" if message_id else None,
                                         event=event, suppress=None)
        return bounce_id

    # -- reading back -----------------------------------------------------------------------

    async def sql(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        # run_translated: one more try on a connection an outage ended
        return await run_translated(self.archive.read, lambda conn: conn.execute(statement, params).fetchall())

    async def archived_lengths(self) -> dict[str, int]:
        return dict(await self.sql("SELECT id, timeline_length FROM messages"))

    def redis_lengths(self, ids: list[str]) -> dict[str, int]:
        return {i: self.client.command("LLEN", f"{self.prefix}timeline:{i}") for i in ids}

    async def caught_up(self, ids: list[str]) -> bool:
        """Every message archived with its whole timeline, and nothing left in the group."""
        lag = await self.storage.archive_lag()
        return (lag is not None and lag.entries == 0
                and await self.archived_lengths() == self.redis_lengths(ids))

    async def check_archive(self, ids: list[str], bounces: list[str]) -> None:
        """Each message once, as Redis holds it (envelope, recipients, timeline, body); each
        bounce once; nothing else."""
        self.assertEqual(sorted((await self.archived_lengths()).items()), sorted(self.redis_lengths(ids).items()))
        for message_id in ids:
            record = await self.reader.get_message(message_id)
            stored = await self.storage.get_message(message_id)
            self.assertEqual(record.recipients, stored.recipients, message_id)
            self.assertEqual((record.sender, record.tag, dict(record.metadata), record.status),
                             (stored.sender, stored.tag, dict(stored.metadata), stored.status))
            timeline = self.client.command("LRANGE", f"{self.prefix}timeline:{message_id}", 0, -1)
            self.assertEqual(await self.reader.get_timeline(message_id),
                             decode_timeline(json.loads(entry) for entry in timeline))
            self.assertEqual(await self.reader.get_body(message_id),
                             zlib.decompress(self.client.command("GET", f"{self.prefix}body:{message_id}")))
            self.assertEqual(self.client.command("HGET", f"{self.prefix}msg:{message_id}", "archived"),
                             str(len(timeline)).encode())
        rows = await self.sql("SELECT count(*), count(DISTINCT message_id) FROM recipients")
        self.assertEqual(rows[0][1], len(ids))
        self.assertEqual(rows[0][0], sum(int(self.client.command("HGET", f"{self.prefix}msg:{i}", "rcpt_count"))
                                         for i in ids))
        self.assertEqual([r[0] for r in await self.sql("SELECT count(*) FROM bodies")], [len(ids)])
        self.assertEqual(sorted(r[0] for r in await self.sql("SELECT id FROM bounces")), sorted(bounces))
        for bounce_id in bounces:
            self.assertEqual(await self.reader.get_bounce_raw(bounce_id), b"raw " + bounce_id.encode())

    def pending(self) -> int:
        return self.client.command("XPENDING", f"{self.prefix}events", GROUP)[0]

    # -- tests ----------------------------------------------------------------------------------

    @async_test
    async def test_every_message_event_and_bounce_lands_once(self) -> None:
        ids = [await self.accepted(("a@example.test", "b@other.test")) for _ in range(5)]
        ids += [await self.accepted() for _ in range(5)]
        await self.attempt("example.test", "deferred")
        await self.attempt("example.test", "delivered")
        await self.attempt("other.test", "bounced")
        bounces = [await self.bounce(ids[0]), await self.bounce(None)]
        cancelled = await self.storage.enqueue(NewMessage(sender="app@example.com", recipients=["c@example.test"],
                                                          content=b"x"))
        self.storage.cancel(cancelled)  # told 451: never archived
        await self.storage.settle_pending(5)
        service = self.start()
        await wait_until(lambda: self.caught_up(ids), "the archive to catch up")
        await self.check_archive(ids, bounces)
        self.assertEqual(self.pending(), 0)
        # later events: the message's row is replaced by its longer timeline, its body not copied again
        later = await self.accepted()
        await self.attempt("example.test", "delivered")
        ids.append(later)
        await wait_until(lambda: self.caught_up(ids), "the later events to be archived")
        await self.check_archive(ids, bounces)
        await wait_until(lambda: service.lag is not None and service.lag.entries == 0, "the measured lag")
        self.assertEqual(service.state.lag.oldest_age_seconds, 0.0)
        self.assertTrue(service.state.writing)
        # acknowledged and archived: trimmed from the stream
        await wait_until(lambda: self.client.command("XLEN", f"{self.prefix}events") == 0, "the stream to be trimmed")
        self.assertTrue(any("consumer daemon-a of group archiver, started" in line for line in self.lines))

    @async_test
    async def test_a_message_of_a_day_before_the_archive_began_gets_its_partition(self) -> None:
        """A new archive has partitions from its first day on; a message received the day before
        (queued before the upgrade, delivered after) is within retention: its day is made and
        the message archived, not skipped as past retention."""
        message_id = await self.accepted()
        day_before = int(message_id[:12], 16) - 20 * 3_600_000   # received 20 h before its id's time
        self.client.command("HSET", f"{self.prefix}msg:{message_id}", "received_at", day_before)
        yesterday = time.strftime("%Y%m%d", time.gmtime(day_before / 1000))
        for table in ("messages", "recipients", "bodies", "bounces"):
            await run_translated(self.archive.write,
                                 lambda conn, t=table: conn.execute(f"DROP TABLE IF EXISTS {t}_p{yesterday}"))
        self.start()
        await wait_until(lambda: self.caught_up([message_id]), "the message to be archived")
        rows = await self.sql("SELECT tableoid::regclass::text FROM messages")
        self.assertEqual(rows, [(f"messages_p{yesterday}",)])

    @async_test
    async def test_a_dead_daemons_batch_is_finished_by_another_without_duplicates(self) -> None:
        ids = [await self.accepted(("a@example.test", "b@other.test")) for _ in range(6)]
        await self.attempt("example.test", "delivered")
        bounces = [await self.bounce(ids[1])]
        # daemon "dead" read the whole batch, committed the first half of it, and died before
        # acknowledging anything
        await self.storage.archive_create_group()
        entries = await self.storage.archive_read("dead", 1000)
        half = await self.storage.archive_snapshot(entries[:len(entries) // 2])
        self.assertTrue(half.messages)
        await ArchiveWriter(self.archive.write).write(half)
        self.client.command("XCLAIM", f"{self.prefix}events", GROUP, "dead", 0, *[e.id for e in entries],
                            "IDLE", 3_600_000, "JUSTID")
        self.start()  # daemon-a's archiver takes the batch over at its first round
        await wait_until(lambda: self.caught_up(ids), "the batch to be finished")
        await self.check_archive(ids, bounces)
        self.assertEqual(self.pending(), 0)
        self.assertTrue(any(f"took over {len(entries)} entries" in line for line in self.lines), self.lines)

    @async_test
    async def test_postgresql_down_the_stream_keeps_it_one_warning_then_catch_up(self) -> None:
        writer = CountingWriter(ArchiveWriter(self.archive.write))
        service = self.start(writer)
        ids = [await self.accepted()]
        await wait_until(lambda: self.caught_up(ids), "the first message to be archived")
        set_connections(self.postgres_server.conninfo(), self.conninfo, False)
        try:
            calls = writer.calls
            ids += [await self.accepted() for _ in range(5)]  # accepted while the archive is down
            await self.attempt("example.test", "delivered")
            await wait_until(lambda: writer.calls >= calls + 4, "several failed writes")
            self.assertFalse(service.state.writing)
            self.assertEqual(service.state.problem, "the archive database does not answer")
            # 5 queued, 6 delivered (the first message's too): all behind
            await wait_until(lambda: service.lag is not None and service.lag.entries == 11, "the lag")
            # the batch in flight stays pending for this daemon (kept fresh: not taken over)
            consumers = self.client.command("XINFO", "CONSUMERS", f"{self.prefix}events", GROUP)
            self.assertEqual([c[1] for c in consumers if c[3]], [b"daemon-a"])
            self.assertEqual(len([line for line in self.lines if "does not answer" in line]), 1)
        finally:
            set_connections(self.postgres_server.conninfo(), self.conninfo, True)
        await wait_until(lambda: self.caught_up(ids), "the archive to catch up", limit=30)
        await self.check_archive(ids, [])
        self.assertTrue(service.state.writing)
        self.assertEqual(len([line for line in self.lines if BACK in line]), 1)
        self.assertEqual(len([line for line in self.lines if "does not answer" in line]), 1)
        # nothing else logged: no "Rollback failed" for the sessions the outage ended
        self.assertEqual(self.flushLoggedErrors(), [])

    @async_test
    async def test_redis_stalled_one_warning_then_it_goes_on(self) -> None:
        proxy = StallingProxy(self.redis_server.host, self.redis_server.port)
        self.addCleanup(proxy.close)
        config = parse_config({"redis": {"url": proxy.url, "key_prefix": self.prefix, "timeout": "0.5s"},
                               "archive": {"url": self.conninfo}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        through_proxy = Storage(config, redis, owner="daemon-b")
        self.config = config
        self.start(storage=through_proxy)
        ids = [await self.accepted()]  # written straight to Redis, as the other daemons do
        await wait_until(lambda: self.caught_up(ids), "the first message to be archived")
        proxy.arm(b"XREADGROUP")  # Redis stops answering the archiver right after its next read
        await wait_until(lambda: proxy.holding, "the archiver's connection to stall")
        ids += [await self.accepted() for _ in range(3)]
        await wait_until(lambda: any("Redis does not answer" in line for line in self.lines), "the warning")
        proxy.release()
        await wait_until(lambda: self.caught_up(ids), "the archive to catch up")
        await wait_until(lambda: any("archiver: Redis answers again" in line for line in self.lines), "the line")
        self.assertEqual(len([line for line in self.lines if "Redis does not answer" in line]), 1)
        await self.check_archive(ids, [])

    @async_test
    async def test_a_deleted_stream_gets_its_group_again(self) -> None:
        self.start()
        first = await self.accepted()
        await wait_until(lambda: self.caught_up([first]), "the first message to be archived")
        self.client.command("DEL", f"{self.prefix}events")  # e.g. an operator's mistake
        second = await self.accepted()
        await wait_until(lambda: self.caught_up([first, second]), "the next message to be archived")
        self.assertEqual(len([line for line in self.lines if "created the group again" in line]), 1)

    @async_test
    async def test_an_unstorable_message_is_skipped_never_blocks_and_is_not_marked(self) -> None:
        ids = [await self.accepted() for _ in range(3)]
        bad = await self.accepted()
        # what no write path makes: a recipient index past the archive's smallint
        self.client.command("HSET", f"{self.prefix}msg:{bad}", "rcpt_count", "40000", "rcpt:39999", "z@example.test")
        self.start()
        await wait_until(lambda: self.caught_up(ids), "the others to be archived")
        await wait_until(lambda: self.pending() == 0, "every entry to be acknowledged")
        self.assertNotIn(bad, await self.archived_lengths())
        self.assertIsNone(self.client.command("HGET", f"{self.prefix}msg:{bad}", "archived"))  # never released
        await self.check_archive(ids, [])

    @async_test
    async def test_stop_waits_for_the_batch_in_flight(self) -> None:
        writer = GatedWriter(ArchiveWriter(self.archive.write))
        service = self.start(writer)
        ids = [await self.accepted()]
        await wait_until(lambda: writer.waiting, "a batch to be written")
        stopped = service.stopService()
        await wait_until(lambda: self.pending() == 1, "the entry to be pending")
        self.assertFalse(stopped.called)  # the batch in flight is not abandoned
        writer.gate.callback(None)
        await stopped
        self.assertEqual(self.pending(), 0)  # written and acknowledged before the stop ended
        self.assertEqual(await self.archived_lengths(), self.redis_lengths(ids))

    @async_test
    async def test_stop_gives_up_on_a_batch_that_does_not_finish(self) -> None:
        self.patch(archiver_module, "STOP_GRACE", 0.2)
        writer = GatedWriter(ArchiveWriter(self.archive.write))
        service = self.start(writer)
        await self.accepted()
        await wait_until(lambda: writer.waiting, "a batch to be written")
        await service.stopService()  # after the grace: its entries stay pending for another daemon
        self.assertEqual(self.pending(), 1)
        self.assertTrue(any("did not finish within 0.2s" in line for line in self.lines), self.lines)
        self.assertEqual(await self.archived_lengths(), {})

    @async_test
    async def test_batches_grow_with_the_backlog(self) -> None:
        ids = [await self.accepted() for _ in range(40)]
        sizes: list[int] = []
        writer = CountingWriter(ArchiveWriter(self.archive.write))
        real = writer.write

        async def write(batch: ArchiveBatch) -> Any:
            sizes.append(len(batch.messages))
            return await real(batch)

        writer.write = write  # type: ignore[method-assign]
        self.patch(archiver_module, "BATCH_MIN", 5)
        self.start(writer, batch_max=20)
        await wait_until(lambda: self.caught_up(ids), "the backlog to be archived")
        self.assertEqual(sizes[:3], [5, 10, 20])  # one transaction per batch, doubling while full
        self.assertEqual(sum(sizes), 40)
        self.assertEqual(max(sizes), 20)


# -- the daemon -------------------------------------------------------------------------------

TRUSTED = {"trusted_networks": ["127.0.0.0/8"]}
CLEAN_EXIT = (0, -signal.SIGTERM)


API_TOKEN = "a" * 24


def http_get(daemon: Any, path: str, token: str | None = None) -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.ports['web']}{path}",
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


class DaemonArchiverTests(unittest.TestCase):
    """twistd daemons with [archive] url: mail accepted over SMTP, delivered to smtp-sink, archived."""

    timeout = 180

    @pytest.fixture(autouse=True)
    def _fixtures(self, start_daemon: Any, daemon_config: Any, redis_server: Any, postgres_server: Any,
                  archive_databases: Callable[..., str], sink: Any, unique_prefix: str, tmp_path: Any) -> None:
        self.start_daemon = start_daemon
        self.redis_server = redis_server
        self.postgres_server = postgres_server
        self.prefix = unique_prefix
        self.conninfo = archive_databases(unique_prefix)  # the daemons' (daemon_config's) archive
        self.tmp_path = tmp_path
        self.config_text = daemon_config(redis_server, unique_prefix, submission=TRUSTED,
                                          delivery={"smarthost": f"127.0.0.1:{sink.port}", "smarthost_tls": "none"},
                                          # compared with Redis below: no key released meanwhile
                                          archive={"release_after": "1h"})
        self.release_config_text = daemon_config(
            redis_server, unique_prefix, submission=TRUSTED, web={"api_tokens": [API_TOKEN]},
            delivery={"smarthost": f"127.0.0.1:{sink.port}", "smarthost_tls": "none"},
            archive={"release_after": "1s"})

    def setUp(self) -> None:
        self.client = self.redis_server.client()
        self.addCleanup(self.client.close)
        config = parse_config({"redis": {"url": self.redis_server.url, "key_prefix": self.prefix},
                               "archive": {"url": self.conninfo}})
        self.database = ArchiveDatabase(self.conninfo)
        self.addCleanup(self.database.close)
        self.reader = ArchiveReader(self.database)
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        self.storage = Storage(config, redis, owner="test")

    def submit(self, daemon: Any, count: int) -> list[str]:
        """``count`` messages over SMTP, each delivered to the sink (its log line)."""
        ids = []
        for n in range(count):
            recipients = [f"r{n}@example.test"] + ([f"s{n}@example.test"] if n % 2 else [])
            ids.append(send(daemon.ports["submission"], recipients, subject=f"message {n}"))
        for message_id in ids:
            daemon.wait_for_matches(rf"{message_id}: to=<.*status=sent", count=1)
        return ids

    async def archived_lengths(self) -> dict[str, int]:
        rows = await run_translated(self.database, lambda c: c.execute("SELECT id, timeline_length FROM messages")
                                    .fetchall())
        return dict(rows)

    def redis_lengths(self, ids: list[str]) -> dict[str, int]:
        return {i: self.client.command("LLEN", f"{self.prefix}timeline:{i}") for i in ids}

    async def wait_archived(self, daemon: Any, ids: list[str]) -> None:
        """Until every message is archived with its whole timeline and /readyz says no lag."""
        async def done() -> bool:
            return await self.archived_lengths() == self.redis_lengths(ids)
        await wait_until(done, "the archive to hold every message", limit=60)

        def no_lag() -> bool:
            state = json.loads(http_get(daemon, "/readyz"))
            return state["ready"] and state["archive_lag_entries"] == 0 and state["archive_lag_seconds"] == 0
        await wait_until(no_lag, "/readyz to report no archive lag", limit=30)

    async def check_archive(self, ids: list[str]) -> None:
        """Each message once, as Redis holds it (recipients, timeline), through ArchiveReader."""
        self.assertEqual(await self.archived_lengths(), self.redis_lengths(ids))
        recipients = 0
        for message_id in ids:
            stored = await self.storage.get_message(message_id)
            recipients += len(stored.recipients)
            record = await self.reader.get_message(message_id)
            self.assertEqual((record.recipients, record.status, record.subject),
                             (stored.recipients, "delivered", stored.subject))
            timeline = self.client.command("LRANGE", f"{self.prefix}timeline:{message_id}", 0, -1)
            archived = await self.reader.get_timeline(message_id)
            self.assertEqual(archived, decode_timeline(json.loads(entry) for entry in timeline))
            self.assertEqual([e.type for e in archived if e.type != "queued"], ["delivered"] * len(stored.recipients))
            self.assertIn(b"Subject: " + stored.subject.encode(), await self.reader.get_body(message_id))
        rows = await run_translated(self.database, lambda c: c.execute("SELECT count(*) FROM recipients").fetchall())
        self.assertEqual(rows, [(recipients,)])
        self.assertEqual(self.client.command("XPENDING", f"{self.prefix}events", GROUP)[0], 0)

    @async_test
    async def test_released_messages_leave_redis_and_are_read_from_postgresql(self) -> None:
        """Data version 2: [archive] release_after (1s here) after a message is delivered and
        archived, its Redis keys are gone; the API still shows it, its timeline and its body, and
        finds it, from PostgreSQL."""
        d = self.start_daemon(self.release_config_text)
        ids = self.submit(d, 3)

        def released() -> bool:
            return all(self.client.command("EXISTS", f"{self.prefix}{kind}:{i}") == 0
                       for i in ids for kind in ("msg", "timeline", "body"))
        await wait_until(released, "the delivered messages' keys to be released", limit=60)
        self.assertEqual(self.client.command("ZCARD", f"{self.prefix}idx:time"), 0)  # their index entries too
        for n, message_id in enumerate(ids):
            message = json.loads(http_get(d, f"/api/v1/messages/{message_id}", API_TOKEN))
            self.assertEqual((message["subject"], message["status"]), (f"message {n}", "delivered"))
            self.assertEqual([[e["type"] for e in r["events"]] for r in message["recipients"]],
                             [["queued", "delivered"]] * len(message["recipients"]))
            raw = http_get(d, f"/api/v1/messages/{message_id}/raw", API_TOKEN)
            self.assertIn(f"Subject: message {n}".encode(), raw)
        listing = json.loads(http_get(d, "/api/v1/messages", API_TOKEN))
        self.assertEqual([m["id"] for m in listing["messages"]], ids[::-1])
        self.assertIn(d.stop(), CLEAN_EXIT)

    @async_test
    async def test_a_daemon_archives_what_it_accepts_exactly_once(self) -> None:
        d = self.start_daemon(self.config_text)
        ids = self.submit(d, 8)
        await self.wait_archived(d, ids)
        await self.check_archive(ids)
        metrics = http_get(d, "/metrics").decode()
        self.assertIn("mailrelay_cluster_archive_lag_entries 0.0", metrics)
        self.assertIn("mailrelay_archive_up 1.0", metrics)
        archived = re.search(r"^mailrelay_archived_entries_total (\S+)$", metrics, re.M)
        self.assertGreaterEqual(float(archived.group(1)), 8 + 12)  # 8 queued, 12 delivered
        self.assertIn(d.stop(), CLEAN_EXIT)
        self.assertEqual(len(d.find_lines(r"archiver: consumer \S+ of group archiver, started")), 1)
        self.assertFalse(d.find_lines(r"Traceback|\[mailrelay\.services\.archiver#(warn|error|critical)\]"))

    @async_test
    async def test_a_dead_daemons_entries_are_finished_by_another_daemon(self) -> None:
        # daemon A runs while the archive refuses connections: it accepts and delivers
        set_connections(self.postgres_server.conninfo(), self.conninfo, False)
        a = self.start_daemon(self.config_text, self.tmp_path / "a")
        ids = self.submit(a, 6)
        # its archiver read the entries and died (kill -9) after committing half of them
        self.assertTrue(await self.storage.archive_create_group())  # A's archiver never got that far
        entries = await self.storage.archive_read("dead-daemon", 1000)
        self.assertEqual(len(entries), 6 + 9)  # 6 queued, 9 delivered
        self.client.command("XCLAIM", f"{self.prefix}events", GROUP, "dead-daemon", 0, *[e.id for e in entries],
                            "IDLE", 3_600_000, "JUSTID")
        self.assertEqual(a.stop(signal.SIGKILL), -signal.SIGKILL)
        set_connections(self.postgres_server.conninfo(), self.conninfo, True)
        half = await self.storage.archive_snapshot(entries[:len(entries) // 2])
        await ArchiveWriter(self.database).write(half)
        # daemon B finishes the batch: nothing missing, nothing twice
        b = self.start_daemon(self.config_text, self.tmp_path / "b")
        await self.wait_archived(b, ids)
        b.wait_for_matches(rf"archiver: took over {len(entries)} entries left pending by stopped daemons")
        more = self.submit(b, 2)
        await self.wait_archived(b, ids + more)
        await self.check_archive(ids + more)
        self.assertIn(b.stop(), CLEAN_EXIT)
