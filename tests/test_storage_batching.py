"""
The group commit of mailrelay.store.queue, in-process against a real redis-server: messages whose
enqueue is asked for in one reactor turn are stored by one ENQUEUE_BATCH_SCRIPT call, each with
its own outcome, and RCPT suppression lookups of one turn share one call too. Also the RESP
encoding of the commands (mailrelay.store.protocol.encode_command, in place of txredisapi's).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from pathlib import Path
from uuid import uuid4

from twisted.internet import defer
from twisted.trial import unittest

from conftest import async_test, start_module_redis, start_redis, stop_module_redis
from mailrelay.config import parse_config
from mailrelay.store import NewMessage, Storage, StorageUnavailable, connect_redis, encode_command
from mailrelay.store.scripts import Script

REDIS = None
_TMP: str | None = None


def setUpModule() -> None:
    global REDIS, _TMP
    REDIS, _TMP = start_module_redis("storage-batching-")


def tearDownModule() -> None:
    stop_module_redis(REDIS, _TMP)


def message(n: int, *recipients: str) -> NewMessage:
    return NewMessage(sender="app@example.com", recipients=list(recipients),
                      content=f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(),
                      summary={"subject": str(n), "to": list(recipients)})


class BatchingTests(unittest.TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.prefix = f"t{uuid4().hex[:8]}:"
        config = parse_config({"redis": {"url": f"redis://127.0.0.1:{REDIS.port}", "key_prefix": self.prefix}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        self.storage = Storage(config, redis)
        self.client = REDIS.client()

    def script_calls(self) -> int:
        stats = self.client.command("INFO", "commandstats").decode()
        return sum(int(line.split("calls=")[1].split(",")[0]) for line in stats.splitlines()
                   if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")))

    @async_test
    async def test_messages_of_one_turn_share_one_call_each_with_its_outcome(self) -> None:
        await self.storage.ping()  # connected
        before = self.script_calls()
        messages = [message(n, f"r{n}@example.org", f"s{n}@example.net") for n in range(5)]
        # the third one's write deadline is already over (as after a Redis outage): LATE
        real_offset = self.storage.clock_offset_ms
        pending = []
        for n, m in enumerate(messages):
            self.storage.clock_offset_ms = -10_000_000 if n == 2 else real_offset
            pending.append(defer.ensureDeferred(self.storage.enqueue(m)))
        self.storage.clock_offset_ms = real_offset
        results = await defer.DeferredList(pending, consumeErrors=True)
        self.assertEqual(self.script_calls() - before, 1)  # one call for the five
        for n, (ok, value) in enumerate(results):
            if n == 2:
                self.assertFalse(ok)
                self.assertIsInstance(value.value, StorageUnavailable)
                self.assertEqual(self.client.command("EXISTS", f"{self.prefix}msg:{messages[n].id}"), 0)
                continue
            self.assertTrue(ok, value)
            self.assertEqual(value, messages[n].id)
            stored = self.client.command("HGETALL", f"{self.prefix}msg:{value}")
            fields = {stored[i].decode(): stored[i + 1].decode() for i in range(0, len(stored), 2)}
            self.assertEqual((fields["rcpt:0"], fields["rcpt:1"], fields["subject"]),
                             (f"r{n}@example.org", f"s{n}@example.net", str(n)))
            body = zlib.decompress(self.client.command("GET", f"{self.prefix}body:{value}"))
            self.assertEqual(body, messages[n].content)
            # stored unsettled: no job claimable until the acknowledgement is confirmed
            self.assertIsNotNone(self.client.command("ZSCORE", f"{self.prefix}queue:unsettled", value))
            for domain, rcpt in (("example.org", 0), ("example.net", 1)):
                self.assertIsNone(self.client.command(
                    "ZSCORE", f"{self.prefix}queue:d:{domain}", f"{value}.{rcpt}"))
        # The confirmations ride on the next group commit call: no call of their own.
        stored = [m.id for n, m in enumerate(messages) if n != 2]
        confirmed = [self.storage.confirm(message_id) for message_id in stored]
        before = self.script_calls()
        following = message(9, "r9@example.org")
        self.assertEqual(await self.storage.enqueue(following), following.id)
        self.assertEqual(await defer.gatherResults(confirmed), ["CONFIRMED"] * 4)
        self.assertEqual(self.script_calls() - before, 1)
        for value in stored:
            self.assertIsNone(self.client.command("ZSCORE", f"{self.prefix}queue:unsettled", value))
            for domain, rcpt in (("example.org", 0), ("example.net", 1)):
                self.assertIsNotNone(self.client.command(
                    "ZSCORE", f"{self.prefix}queue:d:{domain}", f"{value}.{rcpt}"))

    @async_test
    async def test_suppression_lookups_of_one_turn_share_one_call(self) -> None:
        added = await self.storage.add_suppression("Gone@Example.org", {"since": "2026-11-28T09:00:00Z",
                                                                       "type": "HardBounce"})
        self.assertTrue(added)
        self.client.command("HSET", f"{self.prefix}suppressed", "broken@example.org", "{not json")
        before = self.script_calls()
        lookups = [self.storage.suppression_of(a) for a in
                   ("gone@example.org", "fine@example.org", "broken@example.org", "GONE@example.org")]
        results = await defer.DeferredList(lookups, consumeErrors=True)
        self.assertEqual(self.script_calls() - before, 1)
        (ok0, gone), (ok1, fine), (ok2, broken), (ok3, gone_again) = results
        self.assertTrue(ok0 and ok1 and ok3)
        self.assertEqual(gone.type, "HardBounce")
        self.assertIsNone(fine)
        self.assertEqual(gone_again, gone)
        self.assertFalse(ok2)  # a bad entry fails its own lookup only
        self.assertIsInstance(broken.value, json.JSONDecodeError)
        # the change counter came with the reply: one change so far
        self.assertEqual(self.storage.suppressions_version[0], "1")

    @async_test
    async def test_a_reply_of_the_wrong_shape_fails_every_lookup_of_the_batch(self) -> None:
        import mailrelay.store.suppression as suppression_module

        # a script that answers the change counter only: no entry for either address
        self.patch(suppression_module, "SUPPRESSION_OF_SCRIPT", Script.from_source("test", "return {'7'}"))
        lookups = [self.storage.suppression_of(a) for a in ("one@example.org", "two@example.org")]
        results = await defer.DeferredList(lookups, consumeErrors=True)
        for ok, failure in results:
            self.assertFalse(ok)
            self.assertIsInstance(failure.value, StorageUnavailable)
            self.assertIn("unexpected reply", str(failure.value))

    @async_test
    async def test_thousands_of_lookups_in_one_turn(self) -> None:
        # Lua's unpack() stops at about 8,000 values: the script reads the list in slices
        await self.storage.add_suppression("gone@example.org", {"type": "HardBounce"})
        addresses = [f"r{n}@example.org" for n in range(8_100)] + ["gone@example.org"]
        results = await defer.gatherResults([self.storage.suppression_of(a) for a in addresses])
        self.assertEqual(results[:-1], [None] * 8_100)
        self.assertEqual(results[-1].type, "HardBounce")

    @async_test
    async def test_large_batches_are_split_over_several_calls(self) -> None:
        await self.storage.ping()
        before = self.script_calls()
        messages = [message(n, f"r{n}@example.org") for n in range(70)]
        ids = await defer.gatherResults([defer.ensureDeferred(self.storage.enqueue(m)) for m in messages])
        self.assertEqual(ids, [m.id for m in messages])
        self.assertEqual(self.script_calls() - before, 2)  # ENQUEUE_BATCH_MAX = 64, then 6

    @async_test
    async def test_a_message_that_cannot_be_sent_fails_alone(self) -> None:
        await self.storage.ping()
        good, bad = message(1, "a@example.org"), message(2, "b@example.org")
        bad.summary["subject"] = "lone surrogate \ud800"  # not encodable as UTF-8
        results = await defer.DeferredList([defer.ensureDeferred(self.storage.enqueue(m)) for m in (good, bad)],
                                           consumeErrors=True)
        self.assertEqual(results[0], (True, good.id))
        self.assertFalse(results[1][0])
        self.assertIsInstance(results[1][1].value, StorageUnavailable)
        self.assertEqual(self.client.command("EXISTS", f"{self.prefix}msg:{bad.id}"), 0)

    @async_test
    async def test_readonly_fails_the_whole_call(self) -> None:
        # a demoted primary: the call itself must fail with READONLY (the Sentinel follower
        # reconnects on that), not hide it in the per-message results
        replica_dir = tempfile.mkdtemp(prefix="storage-replica-")
        self.addCleanup(shutil.rmtree, replica_dir, True)
        replica = start_redis(Path(replica_dir))
        self.addCleanup(replica.stop)
        config = parse_config({"redis": {"url": f"redis://127.0.0.1:{replica.port}", "key_prefix": self.prefix}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        storage = Storage(config, redis)
        call_failures = []
        storage._watched = lambda d: d.addErrback(lambda f: (call_failures.append(f), f)[1])
        await storage.ping()
        replica.client().command("REPLICAOF", "127.0.0.1", str(REDIS.port))
        results = await defer.DeferredList(
            [defer.ensureDeferred(storage.enqueue(message(n, f"r{n}@example.org"))) for n in range(3)],
            consumeErrors=True)
        for ok, failure in results:
            self.assertFalse(ok)
            self.assertIsInstance(failure.value, StorageUnavailable)
            self.assertIn("READONLY", str(failure.value))
        self.assertEqual(len(call_failures), 1)
        self.assertTrue(str(call_failures[0].value).startswith("READONLY"))

    def test_replies_to_calls_sent_before_a_local_change_are_ignored(self) -> None:
        sent_before = self.storage._suppression_changes
        self.storage.suppressions_changed()
        self.storage._saw_suppressions_version(b"5", sent_before)
        self.assertIsNone(self.storage.suppressions_version[0])
        self.storage._saw_suppressions_version(b"6", self.storage._suppression_changes)
        self.assertEqual(self.storage.suppressions_version[0], "6")

    def test_a_connection_failing_its_handshake_is_no_unhandled_error(self) -> None:
        # as when the pool is closed while a connection is still at SELECT (shutdown): txredisapi
        # fails the factory's deferred, which nobody waits on
        config = parse_config({"redis": {"url": f"redis://127.0.0.1:{REDIS.port}"}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        connected = redis._factory.deferred
        redis._factory.connectionError("could not set dbid=0: Lost connection")
        self.assertTrue(connected.called)
        self.assertIsNone(connected.result)  # the failure was handled, not left to the GC


#: Arguments of every kind the storage layer sends, and edges of RESP framing.
ODD_ARGUMENTS = ("SET", b"", "", "caf\u00e9 \U0001F600", b"\r\n$3\r\n*1\r\n", 0, -17, 2**70, 1.5,
                 0.1, 1e-7, True, bytearray(b"ba"), b"x" * 5000, "y" * 5000)


class CommandEncodingTests(unittest.TestCase):
    timeout = 30

    def test_same_bytes_as_txredisapi(self) -> None:
        import txredisapi

        reference = txredisapi.BaseRedisProtocol(charset=None)
        for args in (("PING",), ODD_ARGUMENTS, ("EVALSHA", "ab" * 20, 2, "k1", "k2", b"\x00\xff")):
            self.assertEqual(encode_command(args), reference._build_command(*args), args)

    @async_test
    async def test_pool_connections_send_commands_so_encoded(self) -> None:
        config = parse_config({"redis": {"url": f"redis://127.0.0.1:{REDIS.port}"}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        key = f"t{uuid4().hex[:8]}:odd"
        await redis.execute_command("RPUSH", key, *ODD_ARGUMENTS)
        stored = self.client_list(key)
        self.assertEqual(stored, [encode_command((a,)).split(b"\r\n", 2)[2][:-2] for a in ODD_ARGUMENTS])
        self.assertEqual(stored[3].decode(), "caf\u00e9 \U0001F600")
        self.assertEqual(stored[8:10], [b"1.500000", b"0.100000"])  # as txredisapi formats floats
        connection = await redis._factory.getConnection()
        self.assertEqual(type(connection)._build_command.__module__, "mailrelay.libcompat")

    def client_list(self, key: str) -> list[bytes]:
        return REDIS.client().command("LRANGE", key, 0, -1)
