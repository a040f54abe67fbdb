"""
Storage failures reach callers as mailrelay's own exceptions (issue 17 item 4), in-process
against a real redis-server: an error reply is a StorageError that says Redis answered
(``replied``), an out-of-memory refusal is StorageFull, and a connection lost under a command
is StorageUnavailable; no txredisapi exception leaves the store.
"""

from __future__ import annotations

from uuid import uuid4

from twisted.internet import defer
from twisted.trial import unittest

from conftest import async_test, start_module_redis, stop_module_redis
from mailrelay.config import parse_config
from mailrelay.store import RedisFailed, Storage, StorageError, StorageFull, StorageUnavailable, connect_redis
from peers import wait_until
from redisproxy import StallingProxy

REDIS = None
_TMP: str | None = None


def setUpModule() -> None:
    global REDIS, _TMP
    REDIS, _TMP = start_module_redis("store-errors-")


def tearDownModule() -> None:
    stop_module_redis(REDIS, _TMP)


class StoreErrorTests(unittest.TestCase):
    timeout = 30

    def connect(self, url: str) -> Storage:
        config = parse_config({"redis": {"url": url, "key_prefix": self.prefix}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        return Storage(config, redis)

    def setUp(self) -> None:
        self.prefix = f"t{uuid4().hex[:8]}:"
        self.client = REDIS.client()
        self.storage = self.connect(f"redis://127.0.0.1:{REDIS.port}")

    async def failure_of(self, call: defer.Deferred) -> BaseException:
        try:
            await call
        except Exception as e:
            return e
        self.fail("the call did not fail")

    @async_test
    async def test_an_error_reply_to_a_command_is_a_storage_error(self) -> None:
        self.client.command("SET", f"{self.prefix}msg:m1", "not a hash")
        error = await self.failure_of(defer.ensureDeferred(self.storage.get_message("m1")))
        self.assertIsInstance(error, RedisFailed)
        self.assertTrue(error.replied)
        self.assertIn("WRONGTYPE", str(error))

    @async_test
    async def test_an_error_reply_to_a_script_is_a_storage_error(self) -> None:
        self.client.command("SET", f"{self.prefix}queue:leases", "not a sorted set")
        error = await self.failure_of(defer.ensureDeferred(self.storage.renew(["m1.0"], 60)))
        self.assertIsInstance(error, RedisFailed)
        self.assertTrue(error.replied)
        self.assertIn("WRONGTYPE", str(error))

    @async_test
    async def test_a_write_refused_for_memory_is_storage_full(self) -> None:
        await self.storage.ping()
        self.client.command("CONFIG", "SET", "maxmemory", "1")
        self.addCleanup(self.client.command, "CONFIG", "SET", "maxmemory", "0")
        error = await self.failure_of(defer.ensureDeferred(self.storage.verp_secret()))
        self.assertIsInstance(error, StorageFull)
        self.assertTrue(error.replied)
        self.assertIn("OOM", str(error))

    @async_test
    async def test_a_connection_lost_under_a_command_is_storage_unavailable(self) -> None:
        proxy = StallingProxy("127.0.0.1", REDIS.port)
        self.addCleanup(proxy.close)
        storage = self.connect(proxy.url)
        await storage.ping()
        marker = uuid4().hex
        proxy.arm(marker.encode())   # the reply to the command naming it is held
        pending = defer.ensureDeferred(storage.get_message(marker))
        await wait_until(proxy.triggered.is_set, "the command to reach Redis")
        self.assertFalse(pending.called)
        # the connection drops before the reply comes back (the proxy closes the daemon's side)
        self.client.command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        error = await self.failure_of(pending)
        self.assertIsInstance(error, StorageUnavailable)
        self.assertIsInstance(error, StorageError)
        self.assertFalse(error.replied)
