"""
mailrelay.libcompat: each library internal still exists and means what it is used for in the
installed versions (an upgrade fails here, loudly, instead of somewhere deep in the daemon),
and each fallback works on an object without the internal.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from twisted.web import client, http, server

from conftest import async_test, start_module_redis, stop_module_redis
from mailrelay import libcompat
from mailrelay.config import parse_config
from mailrelay.store import connect_redis, encode_command

REDIS = None
_TMP: str | None = None


def setUpModule() -> None:
    global REDIS, _TMP
    REDIS, _TMP = start_module_redis("libcompat-")


def tearDownModule() -> None:
    stop_module_redis(REDIS, _TMP)


class WarningCapture:
    """The fast-path-off warnings libcompat logs (starting from none logged yet)."""

    def __init__(self, case: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        libcompat._warned.clear()
        case.addCleanup(libcompat._warned.clear)
        globalLogPublisher.addObserver(self.observe)
        case.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "mailrelay.libcompat":
            self.events.append(event)

    def internals(self) -> list[str]:
        return [e["internal"] for e in self.events]


class TxredisapiInternalsTests(unittest.TestCase):
    timeout = 30

    def pool(self) -> Any:
        config = parse_config({"redis": {"url": f"redis://127.0.0.1:{REDIS.port}"}})
        pool = connect_redis(config, None)
        self.addCleanup(lambda: pool.disconnect().addErrback(lambda f: None))
        return pool

    @staticmethod
    async def all_connected(pool: Any) -> None:
        """Wait until every connection of the lazy pool is up (its factory's deferred fires
        then; a first command alone waits for one connection only)."""
        if pool._factory.deferred is not None:
            await pool._factory.deferred

    @async_test
    async def test_idle_connections_are_the_pools_free_connected_ones(self) -> None:
        warnings = WarningCapture(self)
        pool = self.pool()
        idle = libcompat.idle_redis_connections(pool)
        self.assertIs(idle, pool._factory.connectionQueue.pending)  # the live list, not a copy
        await self.all_connected(pool)
        await pool.execute_command("PING")
        self.assertEqual(len(idle), 4)   # poolsize, all connected and free
        self.assertTrue(all(c.connected for c in idle))
        self.assertEqual(await idle[0].execute_command("PING"), b"PONG")   # usable directly
        pipe = await pool.pipeline()   # a connection taken is no longer idle
        self.assertNotIn(pipe, idle)
        self.assertEqual(len(idle), 3)
        await pipe.execute_pipeline()
        self.assertIn(pipe, idle)
        self.assertEqual(warnings.internals(), [])

    @async_test
    async def test_pool_connections_are_every_slots_connection(self) -> None:
        pool = self.pool()
        await self.all_connected(pool)
        await pool.execute_command("PING")
        connections = libcompat.redis_pool_connections(pool)
        # a slot's protocol is ClientService's proxy of the connection: both are closed
        # through the same transport
        transports = {c.transport for c in connections}
        self.assertEqual(transports, {c.transport for c in pool._factory.pool})
        self.assertEqual(transports, {slot.protocol.transport for slot in pool._factory.slots})
        self.assertEqual(len(transports), 4)

    @async_test
    async def test_the_pool_uses_the_protocol_with_the_encoder(self) -> None:
        pool = self.pool()
        connection = await pool._factory.getConnection()
        self.assertEqual(type(connection).__dict__["_build_command"].__module__, "mailrelay.libcompat")

    def test_build_command_is_what_a_command_writes(self) -> None:
        import txredisapi

        encoded: list[tuple[Any, ...]] = []

        def encode(args: tuple[Any, ...]) -> bytes:
            encoded.append(args)
            return encode_command(args)

        cls = libcompat.with_command_encoder(txredisapi.RedisProtocol, encode)
        self.assertTrue(issubclass(cls, txredisapi.RedisProtocol))
        connection = cls(charset=None)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.execute_command("SET", "k", 1.5)
        self.assertEqual(encoded[-1], ("SET", "k", 1.5))
        self.assertTrue(transport.value().endswith(encode_command(("SET", "k", 1.5))))

    def test_fallbacks_without_the_internals(self) -> None:
        warnings = WarningCapture(self)
        no_pool = object()
        self.assertIsNone(libcompat.redis_pool_factory(no_pool))
        self.assertIsNone(libcompat.idle_redis_connections(no_pool))
        self.assertEqual(libcompat.redis_pool_connections(no_pool), set())
        libcompat.use_redis_protocol(no_pool, object)   # nothing to set, no error
        self.assertEqual(warnings.internals(), ["ConnectionHandler._factory", "RedisFactory.connectionQueue"])
        self.assertIsNone(libcompat.idle_redis_connections(no_pool))
        self.assertEqual(len(warnings.events), 2)   # once each
        self.assertEqual(warnings.events[0]["log_level"].name, "warn")

        class FactoryWithoutSlots:
            pool = ["connection"]

        class Pool:
            _factory = FactoryWithoutSlots()

        self.assertEqual(libcompat.redis_pool_connections(Pool()), {"connection"})
        self.assertIn("RedisFactory.slots", warnings.internals())

        class Protocol:
            pass

        self.assertIs(libcompat.with_command_encoder(Protocol, encode_command), Protocol)
        self.assertIn("BaseRedisProtocol._build_command", warnings.internals())


class TwistedInternalsTests(unittest.TestCase):
    timeout = 30

    @async_test
    async def test_tcp_send_buffer_empty_follows_the_write_buffer(self) -> None:
        warnings = WarningCapture(self)
        received = defer.Deferred()

        class Sink(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:
                if not received.called:
                    received.callback(data)

        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Sink), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        connected = defer.Deferred()
        endpoint_factory = protocol.ClientFactory.forProtocol(protocol.Protocol)
        endpoint_factory.buildProtocol = lambda addr: _Connected(connected)  # type: ignore[method-assign]
        connector = reactor.connectTCP("127.0.0.1", port.getHost().port, endpoint_factory)
        self.addCleanup(connector.disconnect)
        transport = (await connected).transport
        self.assertTrue(libcompat.tcp_send_buffer_empty(transport))
        transport.write(b"x")          # buffered as _tempDataLen until doWrite
        self.assertEqual(transport._tempDataLen, 1)
        self.assertFalse(libcompat.tcp_send_buffer_empty(transport))
        transport.doWrite()            # joined into dataBuffer and sent
        self.assertTrue(libcompat.tcp_send_buffer_empty(transport))
        self.assertEqual(await received, b"x")
        self.assertEqual(warnings.internals(), [])

    def test_tcp_send_buffer_empty_without_the_internals(self) -> None:
        warnings = WarningCapture(self)
        self.assertFalse(libcompat.tcp_send_buffer_empty(object()))   # the caller then writes
        self.assertEqual(warnings.internals(), ["FileDescriptor._tempDataLen"])

    def test_request_disconnected_when_the_client_goes(self) -> None:
        channel = http.HTTPChannel()
        channel.makeConnection(StringTransport())
        request = server.Request(channel, parsePOSTFormSubmission=False)
        self.assertFalse(libcompat.request_disconnected(request))
        request.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(request._disconnected)
        self.assertTrue(libcompat.request_disconnected(request))
        self.assertIsNone(request.channel)   # what the fallback reads

    def test_request_disconnected_without_the_internal(self) -> None:
        warnings = WarningCapture(self)

        class Request:
            channel: Any = object()

        request = Request()
        self.assertFalse(libcompat.request_disconnected(request))
        request.channel = None
        self.assertTrue(libcompat.request_disconnected(request))
        self.assertEqual(warnings.internals(), ["Request._disconnected"])

    def test_http_pool_quiet_factory(self) -> None:
        warnings = WarningCapture(self)
        pool = client.HTTPConnectionPool(reactor, persistent=True)
        self.assertIs(pool._factory, client._HTTP11ClientFactory)
        self.assertTrue(pool._factory.noisy)
        libcompat.quiet_http_connection_pool(pool)
        self.assertTrue(issubclass(pool._factory, client._HTTP11ClientFactory))
        factory = pool._factory(lambda p: None, "metadata")   # as HTTPConnectionPool makes it
        self.assertFalse(factory.noisy)
        self.assertEqual(warnings.internals(), [])

    def test_http_pool_without_the_internal(self) -> None:
        warnings = WarningCapture(self)
        libcompat.quiet_http_connection_pool(object())   # stays noisy, no error
        self.assertEqual(warnings.internals(), ["HTTPConnectionPool._factory"])


class _Connected(protocol.Protocol):
    def __init__(self, connected: defer.Deferred) -> None:
        self.connected_d = connected

    def connectionMade(self) -> None:
        self.connected_d.callback(self)
