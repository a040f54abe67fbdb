"""A full Redis (issue 18, "PostgreSQL down": ``[redis] maxmemory``, noeviction): submission gets
``452 4.3.1``, nothing accepted is dropped, no refused message is half-written, and once memory is
freed mail is accepted again.

The store: a private redis-server with a small ``maxmemory``, filled with other keys until it
refuses writes; a group commit call that carries the settlement of an earlier message (the usual
case under load) is refused whole, and the settlement still completes. (Redis refuses a script's
first write that needs memory, but lets everything through once the script has written: the
settlements, which start with a ZREM, therefore run after the messages in enqueue_batch.lua.)
The daemon: its managed Redis gets ``[redis] maxmemory`` (and 25% of the machine's memory by
default), and an SMTP client sees 452 4.3.1 while it is full and 250 after."""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from conftest import async_test, start_redis, wait_until
from mailrelay.config import parse_config
from mailrelay.redisproc import machine_memory
from mailrelay.store import Event, NewMessage, Storage, StorageFull, connect_redis
from redisclient import RedisClient, RedisError

MAXMEMORY = 8 * 1024 * 1024
FILLER = "filler:"
BODY = b"From: app@example.com\r\nSubject: memory\r\n\r\n" + (b"x" * 76 + b"\r\n") * 26  # ~2 KB


def fill(client: RedisClient, value_size: int = 512) -> int:
    """Small keys until Redis refuses one with OOM: how many. Then maxmemory is lowered to 1 MB
    below the memory used, so that Redis stays full while the test runs (used memory just past
    maxmemory could fall below it again when a client's buffers are freed)."""
    n = 0
    while True:
        replies = client.pipeline([("SET", f"{FILLER}{n + i}", "v" * value_size) for i in range(200)])
        for reply in replies:
            if isinstance(reply, RedisError):
                assert str(reply).startswith("OOM"), reply
                info = client.command("INFO", "memory").decode()
                used = int(next(line.split(":")[1] for line in info.split("\r\n")
                                if line.startswith("used_memory:")))
                client.command("CONFIG", "SET", "maxmemory", used - 1024 * 1024)
                return n
            n += 1


def free(client: RedisClient, count: int) -> None:
    for start in range(0, count, 1000):
        client.command("DEL", *[f"{FILLER}{i}" for i in range(start, min(count, start + 1000))])


def traces(client: RedisClient, prefix: str, message_id: str) -> list[str]:
    """Every place under ``prefix`` that names ``message_id``: a key, a sorted-set member, a
    stream entry."""
    found = []
    for key in client.command("KEYS", f"{prefix}*"):
        name = key.decode()
        if message_id in name:
            found.append(name)
            continue
        kind = client.command("TYPE", key)
        if kind == "zset" and client.command("ZSCORE", key, message_id) is not None:
            found.append(f"{name} member")
        elif kind == "stream" and any(message_id.encode() in fields for _, fields in
                                      client.command("XRANGE", key, "-", "+")):
            found.append(f"{name} entry")
        elif kind == "zset" and any(m.startswith(message_id.encode()) for m in client.command("ZRANGE", key, 0, -1)):
            found.append(f"{name} job")
    return found


def message(n: int) -> NewMessage:
    return NewMessage(sender="app@example.com", recipients=[f"r{n}@dest.example"], content=BODY,
                      summary={"subject": "memory"})


class FullRedisStoreTests(unittest.TestCase):
    timeout = 60
    prefix = "mem:"

    @pytest.fixture(autouse=True)
    def _redis(self, tmp_path):
        self.server = start_redis(tmp_path / "redis")
        yield
        self.server.stop()

    async def start_storage(self) -> Storage:
        config = parse_config({"redis": {"url": self.server.url, "key_prefix": self.prefix}})
        connection = connect_redis(config, None)
        storage = Storage(config, connection)
        await storage.start()

        async def stop() -> None:
            storage.stop()
            await connection.disconnect()
        self.addCleanup(lambda: defer.ensureDeferred(stop()))
        self.client = self.server.client()
        self.addCleanup(self.client.close)
        self.client.command("CONFIG", "SET", "maxmemory", MAXMEMORY)
        self.client.command("CONFIG", "SET", "maxmemory-policy", "noeviction")
        return storage

    @async_test
    async def test_a_call_carrying_a_settlement_is_refused_whole_and_the_settlement_completes(self):
        storage = await self.start_storage()
        first = await storage.enqueue(message(0))  # its 250 is being sent: not settled yet
        filled = fill(self.client)

        storage.confirm(first)  # rides on the next call: the one of these two messages
        refused = [message(1), message(2)]
        results = await defer.DeferredList([defer.ensureDeferred(storage.enqueue(m)) for m in refused],
                                           consumeErrors=True)

        for ok, result in results:
            self.assertFalse(ok)
            self.assertIsInstance(result.value, StorageFull)  # submission: 452 4.3.1
        for m in refused:
            self.assertEqual(traces(self.client, self.prefix, m.id), [], "nothing of a refused message")
        # the accepted one is confirmed: its job is in its domain's queue, nothing is unsettled
        self.assertEqual(self.client.command("ZRANGE", f"{self.prefix}queue:d:dest.example", 0, -1),
                         [f"{first}.0".encode()])
        self.assertEqual(self.client.command("ZCARD", f"{self.prefix}queue:unsettled"), 0)

        free(self.client, filled)
        accepted = await storage.enqueue(message(3))
        self.assertEqual(await storage.confirm(accepted), "CONFIRMED")
        self.assertEqual(self.client.command("ZCARD", f"{self.prefix}queue:d:dest.example"), 2)

    @async_test
    async def test_a_full_redis_refuses_a_message_alone(self):
        storage = await self.start_storage()
        fill(self.client)
        refused = message(1)
        with self.assertRaises(StorageFull):
            await storage.enqueue(refused)
        self.assertEqual(traces(self.client, self.prefix, refused.id), [])

    @async_test
    async def test_the_archiver_still_acknowledges_and_trims_on_a_full_redis(self):
        # After a long PostgreSQL outage Redis is full; when PostgreSQL returns, the archiver
        # must be able to mark and acknowledge what it archived and trim the stream, or
        # nothing would ever free the memory.
        storage = await self.start_storage()
        await storage.archive_create_group()
        ids = [await storage.enqueue(message(n)) for n in range(20)]
        await defer.gatherResults([storage.confirm(message_id) for message_id in ids])
        jobs = await storage.claim("dest.example", 100, "me", 60)
        delivered = Event(type="delivered", at="2026-01-01T00:00:00Z", recipient="r@dest.example", rcpt=0)
        self.assertEqual(await storage.record_many([(job, "delivered", delivered, None) for job in jobs], "me"),
                         ["OK"] * 20)
        entries = await storage.archive_read("me", 1000)
        self.assertEqual(len(entries), 40)  # queued and delivered, each message
        batch = await storage.archive_snapshot(entries)
        fill(self.client)
        with self.assertRaises(StorageFull):  # full indeed
            await storage.enqueue(message(99))

        acked = await storage.archive_mark(batch, [entry.id for entry in entries])  # PostgreSQL has them

        self.assertEqual(acked, 40)
        self.assertEqual(await storage.archive_trim([storage.ARCHIVE_GROUP]), 40)
        self.assertEqual(self.client.command("XLEN", f"{self.prefix}events"), 0)
        archived = self.client.command("HGET", f"{self.prefix}msg:{ids[0]}", "archived")
        self.assertEqual(archived, b"2")  # the marks went through too


# -- the daemon and its managed Redis ---------------------------------------------------------


def smtp_send(port: int, recipient: str) -> tuple[int, str]:
    """One message; the reply to its DATA (code, text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt(recipient)[0] == 250
        code, text = s.data(BODY)
    return code, text.decode()


@pytest.fixture
def short_state_dir():
    """A state_dir short enough for the managed Redis's socket path."""
    path = Path(tempfile.mkdtemp(prefix="mrm", dir="/tmp"))
    os.chmod(path, 0o701)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_default_maxmemory_is_a_quarter_of_the_machine():
    config = parse_config({})
    assert str(config.redis.maxmemory) == "25%"
    total = machine_memory()
    assert 0 < total <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert config.redis.maxmemory.bytes_of(total) == total // 4
    assert parse_config({"redis": {"maxmemory": "4gb"}}).redis.maxmemory.bytes_of(total) == 4 * 1024 ** 3
    assert parse_config({"redis": {"maxmemory": "0"}}).redis.maxmemory.bytes_of(total) == 0


def test_a_full_managed_redis_answers_452_and_accepts_again_once_freed(start_daemon, daemon_config,
                                                                        short_state_dir):
    prefix = "mailrelay:"
    d = start_daemon(daemon_config(None, None, server={"state_dir": str(short_state_dir)},
                                   redis={"maxmemory": "32mb"}, delivery={"enabled": False},
                                   submission={"trusted_networks": ["127.0.0.0/8"]}, web={"listen": []}))
    d.wait_for_matches(r"using managed Redis at unix:\S+ \(appendfsync always, maxmemory 32\.0 MiB\)")
    client = RedisClient(unix_path=str(short_state_dir / "redis" / "redis.sock"))
    try:
        assert client.command("CONFIG", "GET", "maxmemory") == [b"maxmemory", str(32 * 1024 ** 2).encode()]
        assert client.command("CONFIG", "GET", "maxmemory-policy") == [b"maxmemory-policy", b"noeviction"]
        port = d.ports["submission"]
        accepted = [smtp_send(port, "before@dest.example")]
        assert accepted[0][0] == 250

        filled = fill(client)
        refused = [smtp_send(port, f"full{n}@dest.example") for n in range(3)]
        assert all(code == 452 and text.startswith("4.3.1 ") for code, text in refused), refused

        free(client, filled)
        accepted.append(smtp_send(port, "after@dest.example"))
        assert accepted[1][0] == 250, accepted

        # nothing accepted lost, nothing refused half-written
        messages = {k.decode() for k in client.command("KEYS", f"{prefix}msg:*")}
        assert len(messages) == 2
        wait_until(lambda: client.command("ZCARD", f"{prefix}queue:unsettled") == 0, 10, "settled")
        queued = client.command("ZRANGE", f"{prefix}queue:d:dest.example", 0, -1)
        assert sorted(j.decode().split(".")[0] for j in queued) == sorted(m.split(":")[-1] for m in messages)
        for key in client.command("KEYS", f"{prefix}idx:rcpt:*"):
            assert not key.decode().endswith(("full0@dest.example", "full1@dest.example", "full2@dest.example"))
        assert client.command("ZCARD", f"{prefix}idx:time") == 2
    finally:
        client.close()
    assert d.stop() in (0, -15)
