"""
The delivery service (mailrelay.services.delivery.DeliveryService) in-process, with real parts: a
redis-server, the Storage and its Lua scripts, a local DNS server (tests/dnsserver.py) for the
MX lookups and scripted SMTP servers (tests/scriptedsmtp.py) as destinations. The network runs
on the real reactor; the service's clock (due times, retries, pauses, idle connections) is a
``twisted.internet.task.Clock`` that the tests advance, so nothing waits for real time. Each
test drives the scheduling itself (``scan()``: one complete queue scan) and waits for the
outcome it needs (messages at the server, state in Redis), re-checking after each reactor turn.

Covered: deferral on 4xx (due time, no early retry, delivery later), expiry, connection reuse
and max_messages_per_connection, partial recipient failure, 5xx on DATA, 421 greeting -> next
MX, STARTTLS policies, throttling, rate_limit_per_domain, idle_timeout, shutdown handing held
jobs back, and two services sharing one queue (2,000 messages, none lost or doubled).
"""

from __future__ import annotations

import collections
import functools
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from uuid import uuid4

from twisted.internet import defer, reactor, task
from twisted.internet.error import CannotListenError
from twisted.trial import unittest

from conftest import async_test, start_module_redis, stop_module_redis
from dnsserver import LocalDNS
from peers import wait_until
from mailrelay.services import delivery as delivery_module
from mailrelay.services import deliverypacing
from mailrelay import tlsutil
from mailrelay.config import parse_config
from mailrelay.services.delivery import DeliveryService
from mailrelay.store import Event, NewMessage, Storage, connect_redis
from scriptedsmtp import ScriptedSMTPServer
from storeinspect import queued_jobs

REDIS = None
_TMP: str | None = None
_SELF_SIGNED: dict[str, Any] = {}

ZONES: dict[str, dict[str, Any]] = {
    "example.test": {"MX": [(10, "mx1.example.test")]},
    "mx1.example.test": {"A": ["127.0.0.1"]},
    # two MX hosts on two loopback addresses (the same port: mx_port is one setting)
    "two.test": {"MX": [(10, "mx1.two.test"), (20, "mx2.two.test")]},
    "mx1.two.test": {"A": ["127.0.0.1"]},
    "mx2.two.test": {"A": ["127.0.0.2"]},
}


def setUpModule() -> None:
    global REDIS, _TMP
    REDIS, _TMP = start_module_redis("delivery-service-")


def tearDownModule() -> None:
    stop_module_redis(REDIS, _TMP)


def self_signed_options(hostname: str = "mx1.example.test") -> Any:
    """Server TLS options with a self-signed certificate for ``hostname``."""
    if hostname not in _SELF_SIGNED:
        directory = Path(_TMP or tempfile.mkdtemp(prefix="delivery-service-")) / "tls" / hostname
        _SELF_SIGNED[hostname] = tlsutil.server_tls_options(
            *tlsutil.ensure_self_signed(directory, hostname), "1.2")
    return _SELF_SIGNED[hostname]


def first_then(first: str, then: str | None = None) -> Callable[..., str | None]:
    """A scripted reply: ``first`` the first time, ``then`` (None: the default) afterwards."""
    calls = []

    def reply(*args: Any) -> str | None:
        calls.append(args)
        return first if len(calls) == 1 else then

    return reply


def content(n: int | str, subject: str = "test") -> bytes:
    return (f"From: app@sender.test\r\nSubject: {subject}\r\nX-Test-Id: {n}\r\n\r\nHello {n}.\r\n").encode()


def mail_commands(server: ScriptedSMTPServer) -> list[str]:
    return [c for c in server.commands if c.upper().startswith("MAIL FROM")]


class DeliveryTestCase(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.prefix = f"t{uuid4().hex[:8]}:"
        self.clock = task.Clock()
        self.clock.advance(time.time())
        self.dns: LocalDNS | None = None
        self.storage: Storage | None = None
        self.service: DeliveryService | None = None

    # -- parts ----------------------------------------------------------------------------

    def start_server(self, *, host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> ScriptedSMTPServer:
        server = ScriptedSMTPServer(**kwargs)
        if host == "127.0.0.1" and not port:
            server.start()
        else:  # scriptedsmtp listens on 127.0.0.1:0; do it by hand
            server._listener = reactor.listenTCP(port, server, interface=host)
            server.port = server._listener.getHost().port
        self.addCleanup(server.stop)
        return server

    def start_server_pair(self, first: dict[str, Any], second: dict[str, Any]
                          ) -> tuple[ScriptedSMTPServer, ScriptedSMTPServer]:
        """Two servers, on 127.0.0.1 and 127.0.0.2, with the same port."""
        for _ in range(20):
            a = self.start_server(**first)
            try:
                b = self.start_server(host="127.0.0.2", port=a.port, **second)
            except CannotListenError:
                continue
            return a, b
        raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")

    def start_dns(self, zones: dict[str, dict[str, Any]] | None = None) -> LocalDNS:
        if self.dns is None:
            self.dns = LocalDNS(zones or ZONES)
            self.dns.start()
            self.addCleanup(self.dns.stop)
        return self.dns

    def make_config(self, port: int, **delivery: Any) -> Any:
        dns = self.start_dns()
        # The MX hosts of ZONES are on 127.0.0.x: private destinations allowed.
        settings = {"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": port, "lease_timeout": "1h",
                    "helo_name": "relay.test", "connect_timeout": "10s", "command_timeout": "30s",
                    "allow_private_destinations": True}
        settings.update(delivery)
        return parse_config({
            "server": {"hostname": "relay.test"},
            "redis": {"url": REDIS.url, "key_prefix": self.prefix},
            "delivery": settings,
        })

    def make_storage(self, config: Any, clock: Any = None, cls: type = Storage) -> Storage:
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        return cls(config, redis, clock=clock)

    async def start_service(self, port: int, **delivery: Any) -> DeliveryService:
        """A DeliveryService on the test's Clock (and a Storage on the same clock)."""
        config = self.make_config(port, **delivery)
        self.storage = storage = self.make_storage(config, self.clock)
        service = DeliveryService(config, lambda: storage, clock=self.clock, reactor=reactor)
        self.addCleanup(service.stopService)
        await service.when_ready()
        self.service = service
        await self.wait_for(lambda: not service._ticking, "the first queue scan")
        return service

    # -- driving --------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], Any], what: str = "condition",
                       limit: float = 20.0) -> Any:
        """Re-check ``predicate`` (sync or async) after each reactor turn until it is true."""
        return await wait_until(predicate, what, limit, describe=self.describe)

    def describe(self) -> str:
        service = self.service
        if service is None:
            return "no service"
        return (f"workers={len(service.workers)} ticking={service._ticking} held={sorted(service.held)} "
                f"domains={service.domains} clock={self.clock.seconds():.3f}")

    def catch_up(self) -> None:
        """Jobs are due at Redis's (real) time of enqueueing: keep the Clock from lagging."""
        behind = time.time() - self.clock.seconds()
        if behind > 0:
            self.clock.advance(behind + 0.001)

    async def enqueue(self, recipients: list[str], body: bytes | None = None,
                      storage: Storage | None = None, catch_up: bool = True) -> str:
        storage = storage or self.storage
        message = NewMessage(sender="app@sender.test", recipients=recipients, content=b"")
        message.content = body if body is not None else content(message.id)
        message_id = await storage.enqueue(message)
        await storage.confirm(message_id)  # as submission does once its 250 is sent
        if catch_up:
            self.catch_up()
        return message_id

    async def scan(self, service: DeliveryService | None = None) -> None:
        """One complete queue scan, started now (workers for due domains are started)."""
        service = service or self.service
        d = service.wake()
        if d is None:  # a scan is running; it scans again before it ends
            await self.wait_for(lambda: not service._ticking, "the queue scan")
        else:
            await d

    async def idle(self, service: DeliveryService | None = None) -> None:
        """Wait until the service has no worker left (open idle connections count as workers)."""
        service = service or self.service
        await self.wait_for(lambda: not service.workers and not service._ticking, "the workers to finish")

    # -- reading Redis ----------------------------------------------------------------------

    async def redis(self, *args: Any) -> Any:
        return await self.storage.redis.execute_command(*args)

    async def zscore(self, key: str, member: str) -> int | None:
        value = await self.redis("ZSCORE", self.prefix + key, member)
        return None if value is None else int(float(value))

    async def fields(self, message_id: str) -> dict[str, str]:
        """The message's hash as stored."""
        reply = await self.redis("HGETALL", f"{self.prefix}msg:{message_id}")
        return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}

    async def timeline(self, message_id: str) -> list[dict[str, Any]]:
        """The message's timeline entries as stored (JSON objects)."""
        return [json.loads(item) for item in await self.redis("LRANGE", f"{self.prefix}timeline:{message_id}", 0, -1)]

    async def types(self, message_id: str) -> list[str]:
        return [e["type"] for e in await self.timeline(message_id)]

    async def states(self, message_id: str) -> list[str]:
        f = await self.fields(message_id)
        return [f[f"state:{i}"] for i in range(int(f["rcpt_count"]))]

    async def leases(self) -> int:
        return int(await self.redis("ZCARD", self.prefix + "queue:leases"))

    async def queued(self, domain: str) -> list[str]:
        return await queued_jobs(self.storage, domain)

    def has_outcome(self, message_id: str, count: int = 1) -> Callable[[], Any]:
        """Predicate: the timeline has ``count`` events after the queued ones."""
        async def check() -> bool:
            return len([t for t in await self.types(message_id) if t != "queued"]) >= count
        return check


# -- 1, 2: deferral and expiry -------------------------------------------------------------------


class DeferralTests(DeliveryTestCase):
    async def check_deferral(self, server: ScriptedSMTPServer, reply: tuple[int, str, str]) -> None:
        service = await self.start_service(server.port, retry_schedule=["1m", "5m"], idle_timeout="30s")
        message_id = await self.enqueue(["rcpt@example.test"])
        job = f"{message_id}.0"
        t0 = self.clock.seconds()
        await self.scan()
        await self.wait_for(self.has_outcome(message_id), "the first attempt")
        self.assertEqual(len(mail_commands(server)), 1)
        # rescheduled at now + retry_schedule[0], on the (Redis-offset) clock
        due = int((t0 + 60) * 1000 + self.storage.clock_offset_ms)
        self.assertEqual(await self.zscore("queue:d:example.test", job), due)
        self.assertEqual(await self.zscore("queue:domains", "example.test"), due)
        self.assertEqual(await self.leases(), 0)
        self.assertEqual(await self.states(message_id), ["deferred"])

        # not before: 59 s later (the idle connection has closed meanwhile), nothing is sent
        self.clock.advance(59)
        await self.idle()
        await self.scan()
        self.assertEqual(service.workers, set())
        self.assertEqual(len(mail_commands(server)), 1)
        self.assertEqual(server.messages, [])
        self.assertEqual(await self.zscore("queue:d:example.test", job), due)

        # after: retried and delivered
        self.clock.advance(1.5)
        await self.scan()
        await self.wait_for(self.has_outcome(message_id, 2), "the second attempt")
        self.assertEqual(len(server.messages), 1)
        self.assertEqual(server.messages[0].recipients, ["rcpt@example.test"])
        self.assertEqual(len(mail_commands(server)), 2)

        events = await self.timeline(message_id)
        self.assertEqual([e["type"] for e in events], ["queued", "deferred", "delivered"])
        deferred = events[1]
        code, enhanced, text = reply
        self.assertEqual((deferred["smtp_code"], deferred["enhanced_code"], deferred["response"]),
                         (code, enhanced, text))
        self.assertEqual(deferred["detail"],
                         f"mx1.example.test temporarily refused the message: {code} {enhanced} {text}")
        self.assertEqual((deferred["remote_host"], deferred["remote_ip"], deferred["recipient"], deferred["rcpt"]),
                         ("mx1.example.test", "127.0.0.1", "rcpt@example.test", 0))
        delivered = events[2]
        self.assertEqual((delivered["smtp_code"], delivered["enhanced_code"], delivered["response"]),
                         (250, "2.0.0", "Ok: queued as Q1"))
        self.assertEqual(delivered["remote_queue_id"], "Q1")
        record = await self.fields(message_id)
        self.assertEqual((record["state:0"], record["attempts:0"]), ("delivered", "2"))
        self.assertNotIn("owner:0", record)
        self.assertEqual(await self.queued("example.test"), [])
        self.assertIsNone(await self.zscore("queue:domains", "example.test"))
        self.assertEqual(await self.leases(), 0)

    @async_test
    async def test_4xx_on_data_defers_until_retry_schedule_then_delivers(self):
        server = self.start_server(data_reply=first_then("451 4.3.0 Mailbox busy, try again later"))
        await self.check_deferral(server, (451, "4.3.0", "Mailbox busy, try again later"))

    @async_test
    async def test_4xx_on_rcpt_defers_until_retry_schedule_then_delivers(self):
        server = self.start_server(rcpt_replies=first_then("450 4.2.1 Mailbox temporarily disabled"))
        await self.check_deferral(server, (450, "4.2.1", "Mailbox temporarily disabled"))

    @async_test
    async def test_expires_after_max_queue_lifetime(self):
        server = self.start_server(rcpt_replies="451 4.3.2 System not accepting network messages")
        await self.start_service(server.port, retry_schedule=["1m", "5m"], max_queue_lifetime="10m")
        message_id = await self.enqueue(["rcpt@example.test"])
        await self.scan()
        await self.wait_for(self.has_outcome(message_id, 1), "attempt 1")
        self.clock.advance(61)
        await self.scan()
        await self.wait_for(self.has_outcome(message_id, 2), "attempt 2")
        self.assertEqual(await self.states(message_id), ["deferred"])
        self.assertIsNotNone(await self.zscore("queue:d:example.test", f"{message_id}.0"))

        self.clock.advance(600)  # past the lifetime (and past the second retry)
        await self.scan()
        await self.wait_for(self.has_outcome(message_id, 3), "attempt 3")
        events = await self.timeline(message_id)
        self.assertEqual([e["type"] for e in events], ["queued", "deferred", "deferred", "expired"])
        expired = events[-1]
        self.assertTrue(expired["detail"].startswith("Gave up after 3 attempts over 0.2 h; last error: "),
                        expired["detail"])
        self.assertEqual((expired["smtp_code"], expired["enhanced_code"], expired["response"]),
                         (451, "4.3.2", "System not accepting network messages"))
        record = await self.fields(message_id)
        self.assertEqual((record["state:0"], record["attempts:0"]), ("expired", "3"))
        # final: out of the queue, no lease, and not tried again
        self.assertEqual(await self.queued("example.test"), [])
        self.assertIsNone(await self.zscore("queue:domains", "example.test"))
        self.assertEqual(await self.leases(), 0)
        stream = await self.redis("XRANGE", self.prefix + "events", "-", "+")
        entries = [dict(zip(fields[::2], fields[1::2])) for _, fields in stream]
        # each attempt's outcome, then the bounce record of the non-delivery (for the archive)
        self.assertEqual([(e[b"type"], e.get(b"rcpt")) for e in entries if e[b"msg"] == message_id.encode()],
                         [(b"queued", None), (b"deferred", b"0"), (b"deferred", b"0"), (b"expired", b"0"),
                          (b"bounce_stored", b"0")])
        self.clock.advance(3600)  # the idle connection closes; nothing is due any more
        await self.idle()
        await self.scan()
        self.assertEqual(self.service.workers, set())
        self.assertEqual(len(mail_commands(server)), 3)


# -- 3, 4, 5: connections, transactions, per-recipient outcomes ------------------------------------


class ConnectionTests(DeliveryTestCase):
    @async_test
    async def test_20_messages_one_connection_one_transaction_each(self):
        server = self.start_server()
        await self.start_service(server.port)
        ids = [await self.enqueue([f"user{n}@example.test"]) for n in range(20)]
        await self.scan()
        await self.wait_for(lambda: len(server.messages) >= 20, "20 messages")
        for message_id in ids:
            await self.wait_for(self.has_outcome(message_id), f"the outcome of {message_id}")
            self.assertEqual(await self.states(message_id), ["delivered"])
        self.assertEqual(len(server.sessions), 1)
        [session] = server.sessions
        self.assertEqual(len([c for c in session.commands if c.startswith("MAIL FROM")]), 20)
        self.assertEqual(len([c for c in session.commands if c == "DATA"]), 20)
        self.assertEqual(sorted(r for m in server.messages for r in m.recipients),
                         sorted(f"user{n}@example.test" for n in range(20)))
        self.assertTrue(all(len(m.recipients) == 1 for m in server.messages))
        self.assertEqual(sorted(m.body.split(b"X-Test-Id: ")[1].split(b"\r\n")[0].decode() for m in server.messages),
                         sorted(ids))
        self.assertEqual(await self.leases(), 0)

    async def deliver_five_over_one_connection(self, **delivery: Any) -> Any:
        server = self.start_server()
        await self.start_service(server.port, **delivery)
        ids = [await self.enqueue([f"user{n}@example.test"]) for n in range(5)]
        await self.scan()
        for message_id in ids:
            await self.wait_for(self.has_outcome(message_id), f"the outcome of {message_id}")
            self.assertEqual(await self.states(message_id), ["delivered"])
        self.assertEqual(len(server.sessions), 1)
        return server.sessions[0]

    @async_test
    async def test_next_message_goes_out_with_the_data(self):
        session = await self.deliver_five_over_one_connection()
        self.assertEqual(session.commands_with_data, 4)  # every message but the last

    @async_test
    async def test_pipeline_messages_false_sends_one_message_at_a_time(self):
        session = await self.deliver_five_over_one_connection(pipeline_messages=False)
        self.assertEqual(session.commands_with_data, 0)
        self.assertEqual(len([c for c in session.commands if c.startswith("MAIL FROM")]), 5)

    @async_test
    async def test_max_messages_per_connection(self):
        server = self.start_server()
        await self.start_service(server.port, max_messages_per_connection=5)
        for n in range(20):
            await self.enqueue([f"user{n}@example.test"])

        def step() -> bool:
            self.clock.advance(0)  # the service re-scans at once after a full claim
            return len(server.messages) >= 20

        await self.scan()
        await self.wait_for(step, "20 messages")
        await self.idle()
        self.assertEqual(len(server.sessions), 4)
        for session in server.sessions:
            self.assertEqual(len([c for c in session.commands if c.startswith("MAIL FROM")]), 5)
            self.assertEqual(session.commands[-1], "QUIT")
        self.assertEqual(len(server.messages), 20)
        self.assertEqual(await self.queued("example.test"), [])

    @async_test
    async def test_partial_recipient_failure(self):
        text = "<b@example.test>: Recipient address rejected: User unknown in local recipient table"
        server = self.start_server(rcpt_replies={"b@example.test": f"550 5.1.1 {text}"})
        await self.start_service(server.port)
        message_id = await self.enqueue(["a@example.test", "b@example.test", "c@example.test"])
        await self.scan()
        await self.wait_for(self.has_outcome(message_id, 3), "three outcomes")
        [received] = server.messages
        self.assertEqual(received.recipients, ["a@example.test", "c@example.test"])
        self.assertEqual(len(mail_commands(server)), 1)  # one transaction for the three
        events = {e["recipient"]: e for e in (await self.timeline(message_id))[3:]}
        self.assertEqual({r: e["type"] for r, e in events.items()},
                         {"a@example.test": "delivered", "b@example.test": "bounced", "c@example.test": "delivered"})
        for rcpt in ("a@example.test", "c@example.test"):
            e = events[rcpt]
            self.assertEqual((e["smtp_code"], e["enhanced_code"], e["response"], e["remote_queue_id"]),
                             (250, "2.0.0", "Ok: queued as Q1", "Q1"))
        bounced = events["b@example.test"]
        self.assertEqual((bounced["smtp_code"], bounced["enhanced_code"], bounced["response"], bounced["rcpt"]),
                         (550, "5.1.1", text, 1))
        self.assertEqual(bounced["detail"], f"mx1.example.test rejected the message: 550 5.1.1 {text}")
        self.assertEqual(await self.states(message_id), ["delivered", "bounced", "delivered"])
        self.assertEqual(await self.queued("example.test"), [])
        self.assertEqual(await self.leases(), 0)

    async def check_all_bounced(self, server: ScriptedSMTPServer, code: int, enhanced: str, text: str) -> None:
        await self.start_service(server.port)
        rcpts = ["a@example.test", "b@example.test", "c@example.test"]
        message_id = await self.enqueue(rcpts)
        await self.scan()
        await self.wait_for(self.has_outcome(message_id, 3), "three outcomes")
        events = (await self.timeline(message_id))[3:]
        self.assertEqual(sorted(e["recipient"] for e in events), rcpts)
        for e in events:
            self.assertEqual((e["type"], e["smtp_code"], e["enhanced_code"], e["response"]),
                             ("bounced", code, enhanced, text))
        self.assertEqual(await self.states(message_id), ["bounced"] * 3)
        self.assertEqual(await self.queued("example.test"), [])
        self.assertEqual(await self.leases(), 0)

    @async_test
    async def test_5xx_on_data_bounces_every_recipient(self):
        server = self.start_server(data_reply="554 5.7.1 Delivery not authorized, message refused")
        await self.check_all_bounced(server, 554, "5.7.1", "Delivery not authorized, message refused")
        self.assertEqual(server.messages, [])

    @async_test
    async def test_5xx_after_data_bounces_every_recipient(self):
        server = self.start_server(final_reply="550 5.6.0 Message content rejected")
        await self.check_all_bounced(server, 550, "5.6.0", "Message content rejected")
        self.assertEqual(len(server.messages), 1)

    @async_test
    async def test_421_greeting_tries_next_mx(self):
        busy, good = self.start_server_pair({"greeting": "421 4.3.2 mx1 is shutting down"}, {})
        await self.start_service(busy.port)
        message_id = await self.enqueue(["x@two.test"])
        await self.scan()
        await self.wait_for(self.has_outcome(message_id), "the outcome")
        self.assertEqual(await self.types(message_id), ["queued", "delivered"])
        delivered = (await self.timeline(message_id))[-1]
        self.assertEqual((delivered["remote_host"], delivered["remote_ip"], delivered["smtp_code"]),
                         ("mx2.two.test", "127.0.0.2", 250))
        self.assertEqual(len(busy.sessions), 1)
        self.assertEqual(mail_commands(busy), [])
        self.assertEqual(busy.messages, [])
        self.assertEqual([m.recipients for m in good.messages], [["x@two.test"]])


# -- 6: STARTTLS ------------------------------------------------------------------------------


class TLSTests(DeliveryTestCase):
    @async_test
    async def test_opportunistic_uses_starttls_when_offered(self):
        server = self.start_server(tls_options=self_signed_options())
        await self.start_service(server.port, tls="opportunistic")
        message_id = await self.enqueue(["x@example.test"])
        await self.scan()
        await self.wait_for(self.has_outcome(message_id), "the outcome")
        self.assertEqual(await self.states(message_id), ["delivered"])
        [received] = server.messages
        self.assertTrue(received.tls)
        self.assertIn("STARTTLS", server.commands)

    async def check_tls_deferral(self, server: ScriptedSMTPServer, tls: str, reason: str) -> dict[str, Any]:
        await self.start_service(server.port, tls=tls, retry_schedule=["10m"])
        message_id = await self.enqueue(["x@example.test"])
        t0 = self.clock.seconds()
        await self.scan()
        await self.wait_for(self.has_outcome(message_id), "the outcome")
        [event] = (await self.timeline(message_id))[1:]
        self.assertEqual(event["type"], "deferred")
        self.assertTrue(event["detail"].startswith("TLS with mx1.example.test failed: "), event["detail"])
        self.assertIn(reason, event["detail"])
        self.assertIsNone(event["smtp_code"])
        self.assertEqual(await self.zscore("queue:d:example.test", f"{message_id}.0"),
                         int((t0 + 600) * 1000 + self.storage.clock_offset_ms))
        self.assertEqual(mail_commands(server), [])
        self.assertEqual(server.messages, [])
        return event

    @async_test
    async def test_required_without_starttls_defers(self):
        server = self.start_server()
        await self.check_tls_deferral(server, "required", "does not offer STARTTLS")

    @async_test
    async def test_verify_against_self_signed_certificate_defers(self):
        # the certificate names the MX host: only its issuer (itself) is not trusted
        server = self.start_server(tls_options=self_signed_options("mx1.example.test"))
        await self.check_tls_deferral(server, "verify", "certificate verify failed")
        self.assertIn("STARTTLS", server.commands)


# -- 7, 8, 9: throttling, rate limits, idle connections ----------------------------------------


class PacingTests(DeliveryTestCase):
    async def check_throttling(self, server: ScriptedSMTPServer) -> None:
        service = await self.start_service(server.port, concurrency_per_domain=4, retry_schedule=["1m"])
        ids = [await self.enqueue([f"u{n}@example.test"]) for n in range(3)]
        t0 = self.clock.seconds()
        await self.scan()

        async def throttled_one() -> str | None:
            for message_id in ids:
                if await self.has_outcome(message_id)():
                    return message_id
            return None

        throttled = await self.wait_for(throttled_one, "the throttled attempt")
        await self.idle()
        state = service.domains["example.test"]
        self.assertEqual(state.limit, 2)                 # concurrency lowered (from 4)
        self.assertEqual(state.paused_until, t0 + deliverypacing.THROTTLE_PAUSE)
        self.assertEqual(len(server.sessions), 1)
        self.assertEqual(await self.types(throttled), ["queued", "deferred"])
        # the other jobs went back to the queue, due now, untried
        for message_id in ids:
            if message_id != throttled:
                self.assertEqual(await self.types(message_id), ["queued"])
                self.assertEqual(await self.states(message_id), ["queued"])
        self.assertEqual(await self.leases(), 0)

        # paused: no new connection although jobs are due
        self.clock.advance(deliverypacing.THROTTLE_PAUSE - 1)
        await self.scan()
        self.assertEqual(service.workers, set())
        self.assertEqual(len(server.sessions), 1)
        self.assertEqual(len(await self.queued("example.test")), 3)

        # after the pause: delivered
        self.clock.advance(1.5)
        await self.scan()
        for message_id in ids:
            await self.wait_for(self.has_outcome(message_id, 2 if message_id == throttled else 1), message_id)
            self.assertEqual(await self.states(message_id), ["delivered"])
        self.assertEqual(len(server.sessions), 2)
        self.assertEqual(len(server.messages), 3)

    @async_test
    async def test_421_4_7_0_pauses_domain_and_lowers_concurrency(self):
        server = self.start_server(mail_reply=first_then("421 4.7.0 Too many messages, slow down"))
        await self.check_throttling(server)

    @async_test
    async def test_451_4_7_1_pauses_domain_and_lowers_concurrency(self):
        server = self.start_server(rcpt_replies=first_then("451 4.7.1 Rate limited, try again later"))
        await self.check_throttling(server)

    @async_test
    async def test_rate_limit_per_domain(self):
        server = self.start_server()
        service = await self.start_service(server.port, rate_limit_per_domain={"example.test": "3/1m"})
        ids = [await self.enqueue([f"u{n}@example.test"]) for n in range(6)]
        await self.scan()
        await self.wait_for(lambda: len(server.messages) >= 3, "3 messages")
        await self.idle()
        self.assertEqual(len(server.messages), 3)
        self.assertEqual(len(await self.queued("example.test")), 3)
        self.assertEqual(await self.leases(), 0)
        # due, but over the limit until a minute has passed
        self.clock.advance(59)
        await self.scan()
        self.assertEqual(service.workers, set())
        self.assertEqual(len(server.messages), 3)
        self.clock.advance(1.5)
        await self.scan()
        await self.wait_for(lambda: len(server.messages) >= 6, "6 messages")
        for message_id in ids:
            await self.wait_for(self.has_outcome(message_id), message_id)
            self.assertEqual(await self.states(message_id), ["delivered"])
        self.assertEqual(len(server.messages), 6)

    @async_test
    async def test_idle_connection_reused_then_closed_after_idle_timeout(self):
        server = self.start_server()
        service = await self.start_service(server.port, idle_timeout="30s")
        first = await self.enqueue(["a@example.test"])
        await self.scan()
        await self.wait_for(self.has_outcome(first), "the first message")
        state = service.domains["example.test"]
        await self.wait_for(lambda: state.idle_waiters, "the connection to wait for work")

        # a message due before the idle timeout goes over the open connection
        self.clock.advance(20)
        second = await self.enqueue(["b@example.test"])
        await self.scan()
        await self.wait_for(self.has_outcome(second), "the second message")
        self.assertEqual(len(server.sessions), 1)
        self.assertEqual(len(server.messages), 2)
        await self.wait_for(lambda: state.idle_waiters, "the connection to wait for work again")

        # idle for less than idle_timeout: still open
        self.clock.advance(29)
        self.assertEqual(len(state.idle_waiters), 1)
        self.assertNotIn("QUIT", server.commands)
        self.assertFalse(server.sessions[0].closed)
        # idle_timeout reached: QUIT
        self.clock.advance(1)
        await self.wait_for(lambda: server.sessions[0].closed, "the connection to close")
        self.assertEqual(server.sessions[0].commands[-1], "QUIT")
        await self.idle()


# -- 10: shutdown ----------------------------------------------------------------------------------


class ShutdownTests(DeliveryTestCase):
    @async_test
    async def test_shutdown_hands_held_jobs_back(self):
        server = self.start_server(silent_on=("DATA",))  # never answers DATA
        service = await self.start_service(server.port)
        ids = [await self.enqueue([f"u{n}@example.test"]) for n in range(3)]
        await self.scan()
        await self.wait_for(lambda: "DATA" in server.commands, "DATA at the server")
        self.assertEqual(await self.leases(), 3)
        for message_id in ids:
            self.assertEqual(await self.states(message_id), ["delivering"])

        stopped = service.stopService()
        self.clock.advance(delivery_module.SHUTDOWN_GRACE)  # the transaction does not finish
        await stopped
        self.assertEqual(service.workers, set())
        self.assertEqual(await self.leases(), 0)
        self.assertEqual(sorted(await self.queued("example.test")), sorted(f"{i}.0" for i in ids))
        for message_id in ids:
            record = await self.fields(message_id)
            self.assertEqual(record["state:0"], "queued")
            self.assertNotIn("owner:0", record)
            self.assertEqual(record.get("attempts:0", "0"), "0")
            self.assertEqual(await self.types(message_id), ["queued"])
            # due now: another daemon can take them at once
            self.assertLessEqual(await self.zscore("queue:d:example.test", f"{message_id}.0"),
                                 self.storage.now_ms())
        self.assertIsNotNone(await self.zscore("queue:domains", "example.test"))
        await self.wait_for(lambda: server.sessions[0].closed, "the connection to close")

    @async_test
    async def test_stop_between_transactions_does_not_wait_for_idle_timeout(self):
        server = self.start_server()
        service = await self.start_service(server.port, idle_timeout="30s")
        storage = self.storage
        claim, claims, stopped = storage.claim, [], []

        async def claim_then_stop(*args: Any, **kwargs: Any) -> Any:
            jobs = await claim(*args, **kwargs)
            claims.append(len(jobs))
            if len(claims) == 2:  # the look for more work after the first message: stop now
                stopped.append(service.stopService())
            return jobs

        storage.claim = claim_then_stop
        message_id = await self.enqueue(["a@example.test"])
        await self.scan()
        try:
            # the Clock does not move: an idle wait started after the stop would never end
            await self.wait_for(lambda: stopped and stopped[0].called, "the service to stop", limit=10)
        finally:
            self.clock.advance(30)  # (if it failed: let the worker go, so that cleanup ends)
        self.assertEqual(claims, [1, 0])
        self.assertEqual(await self.states(message_id), ["delivered"])
        await self.wait_for(lambda: server.sessions[0].closed, "the connection to close")
        self.assertEqual(server.sessions[0].commands[-1], "QUIT")


# -- 11: two services, one queue -------------------------------------------------------------------


class CountingStorage(Storage):
    claimed = 0

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        jobs = await super().claim(*args, **kwargs)
        self.claimed += len(jobs)
        return jobs


class SharedQueueTests(DeliveryTestCase):
    MESSAGES = 2000
    DOMAINS = 10

    @async_test
    async def test_two_services_deliver_2000_messages_exactly_once(self):
        started = time.monotonic()
        zones: dict[str, dict[str, Any]] = {"mx.bulk.test": {"A": ["127.0.0.1"]}}
        domains = [f"d{k}.test" for k in range(self.DOMAINS)]
        for domain in domains:
            zones[domain] = {"MX": [(10, "mx.bulk.test")]}
        self.start_dns(zones)
        server = self.start_server()
        config = self.make_config(server.port, lease_timeout="30s")
        services = []
        storages = []
        for _ in range(2):  # two daemons: their own Redis connections, owners and real-time clocks
            storage = self.make_storage(config, cls=CountingStorage)
            service = DeliveryService(config, functools.partial(lambda s: s, storage), reactor=reactor)
            self.addCleanup(service.stopService)
            await service.when_ready()
            services.append(service)
            storages.append(storage)
        self.storage = storages[0]
        self.assertNotEqual(services[0].owner, services[1].owner)

        ids: list[str] = []

        async def submit(start: int, stop: int) -> None:
            for n in range(start, stop):
                ids.append(await self.enqueue([f"u{n}@{domains[n % self.DOMAINS]}"], catch_up=False,
                                              body=content(n), storage=storages[n % 2]))
                if n % 50 == 0:  # both services, the first one alternating
                    first = (n // 50) % 2
                    services[first].wake()
                    services[1 - first].wake()

        chunk = self.MESSAGES // 8
        await defer.gatherResults([defer.ensureDeferred(submit(k, min(k + chunk, self.MESSAGES)))
                                   for k in range(0, self.MESSAGES, chunk)])
        for service in services:
            service.wake()
        await self.wait_for(lambda: len(server.messages) >= self.MESSAGES, "2000 messages", limit=60)
        await defer.gatherResults([s.stopService() for s in services])
        elapsed = time.monotonic() - started

        counts = collections.Counter(int(m.body.split(b"X-Test-Id: ")[1].split(b"\r\n")[0]) for m in server.messages)
        self.assertEqual(len(counts), self.MESSAGES)                        # none lost
        self.assertEqual([n for n, c in counts.items() if c > 1], [])      # none twice
        self.assertEqual(sorted(counts), list(range(self.MESSAGES)))
        self.assertEqual(len(server.messages), self.MESSAGES)
        self.assertEqual(sum(s.claimed for s in storages), self.MESSAGES)  # each job claimed once
        self.assertTrue(all(s.claimed > 0 for s in storages), [s.claimed for s in storages])
        self.assertEqual(await self.leases(), 0)
        for domain in domains:
            self.assertEqual(await self.queued(domain), [])
        self.assertEqual(await self.redis("ZRANGE", self.prefix + "queue:domains", 0, -1), [])
        states = collections.Counter()
        for message_id in ids:
            states.update(await self.states(message_id))
        self.assertEqual(states, {"delivered": self.MESSAGES})
        self.assertLess(elapsed, 30, f"took {elapsed:.1f}s")
        print(f"\n2,000 messages through two services: {elapsed:.2f}s, "
              f"claims {[s.claimed for s in storages]}, {len(server.sessions)} connections")


# -- 9: batched reads and writes of the delivery queue ------------------------------------------


class BatchTests(DeliveryTestCase):
    """The claim reads bodies and suppressions with the jobs; outcomes are recorded in batches."""

    async def suppressed(self, address: str) -> None:
        await self.storage.add_suppression(address, {"since": "2026-11-28T00:00:00Z", "type": "HardBounce"})

    @async_test
    async def test_claim_returns_bodies_and_suppression_entries(self):
        from mailrelay.store import NOT_LOOKED_UP

        server = self.start_server()
        await self.start_service(server.port)
        await self.service._stop()  # drive the storage by hand
        await self.suppressed("Gone@Example.test")
        plain = await self.enqueue(["a@example.test", "gone@example.test"])
        utf8 = await self.enqueue(["zoë@example.test"])
        jobs = await self.storage.claim("example.test", 10, "test", 60)
        by_job = {j.job: j for j in jobs}
        self.assertEqual(sorted(by_job), sorted([f"{plain}.0", f"{plain}.1", f"{utf8}.0"]))
        # one body per message, on its first job
        self.assertEqual(self.storage.decompress_body(by_job[f"{plain}.0"].body), content(plain))
        self.assertIsNone(by_job[f"{plain}.1"].body)
        self.assertEqual(self.storage.decompress_body(by_job[f"{utf8}.0"].body), content(utf8))
        self.assertIsNone(by_job[f"{plain}.0"].suppression)
        self.assertEqual(by_job[f"{plain}.1"].suppression.type, "HardBounce")
        self.assertIs(by_job[f"{utf8}.0"].suppression, NOT_LOOKED_UP)  # not ASCII: looked up by the caller
        await self.storage.release(jobs, "test")
        # a body budget too small: no bodies, the jobs are claimed all the same
        jobs = await self.storage.claim("example.test", 10, "test", 60, body_budget=10)
        self.assertEqual(len(jobs), 3)
        self.assertTrue(all(j.body is None for j in jobs))

    @async_test
    async def test_record_many_in_one_call(self):
        server = self.start_server()
        await self.start_service(server.port)
        await self.service._stop()
        first = await self.enqueue(["a@example.test", "b@example.test"])
        second = await self.enqueue(["c@example.test"])
        third = await self.enqueue(["d@example.test"])
        jobs = {j.job: j for j in await self.storage.claim("example.test", 10, "test", 60)}
        self.assertEqual(await self.leases(), 4)
        await self.storage.admin_delete(third)
        due = self.storage.now_ms() + 3_600_000

        def event(job, state):
            return Event(type=state, at="2026-11-28T00:00:00Z", recipient=job.recipient,
                         rcpt=job.rcpt, detail=state)

        outcomes = [(jobs[f"{first}.0"], "delivered", None), (jobs[f"{first}.1"], "deferred", due),
                    (jobs[f"{second}.0"], "bounced", None), (jobs[f"{third}.0"], "delivered", None)]
        results = await self.storage.record_many([(j, s, event(j, s), d) for j, s, d in outcomes], "test")
        self.assertEqual(results, ["OK", "OK", "OK", "GONE"])
        self.assertEqual(await self.states(first), ["delivered", "deferred"])
        self.assertEqual(await self.states(second), ["bounced"])
        self.assertEqual((await self.fields(first))["status"], "queued")
        self.assertEqual((await self.fields(second))["status"], "bounced")
        self.assertEqual(await self.types(first), ["queued", "queued", "delivered", "deferred"])
        self.assertEqual(await self.leases(), 0)
        self.assertEqual(await self.queued("example.test"), [f"{first}.1"])
        self.assertEqual(await self.zscore("queue:domains", "example.test"), due)
        # another owner's lease: recorded, reported STOLEN
        self.clock.advance(3601)
        [job] = await self.storage.claim("example.test", 10, "other", 60)
        [result] = await self.storage.record_many([(job, "delivered", event(job, "delivered"), None)], "test")
        self.assertEqual(result, "STOLEN")
        self.assertEqual(await self.states(first), ["delivered", "delivered"])
        self.assertEqual((await self.fields(first))["status"], "delivered")
        self.assertIsNone(await self.zscore("queue:domains", "example.test"))

    @async_test
    async def test_suppressed_recipients_are_not_sent(self):
        server = self.start_server()
        await self.start_service(server.port)
        await self.suppressed("gone@example.test")
        await self.suppressed("zoë@example.test")  # not ASCII: looked up apart from the claim
        message_id = await self.enqueue(["a@example.test", "GONE@example.test", "zoë@example.test"])
        await self.scan()
        await self.wait_for(self.has_outcome(message_id, 3), "three outcomes")
        self.assertEqual(await self.states(message_id), ["delivered", "suppressed", "suppressed"])
        [message] = server.messages
        self.assertEqual(message.recipients, ["a@example.test"])
        self.assertEqual(await self.leases(), 0)

    @async_test
    async def test_many_messages_one_batch_every_outcome_recorded(self):
        """A batch of 120 jobs (three claims): every outcome recorded, one RECORD call per claim or less."""
        server = self.start_server()
        await self.start_service(server.port, max_messages_per_connection=1000)
        calls = []
        record_many = self.storage.record_many

        async def counting(outcomes, owner):
            calls.append(len(outcomes))
            return await record_many(outcomes, owner)

        self.storage.record_many = counting
        ids = [await self.enqueue([f"user{n}@example.test"]) for n in range(120)]

        def step() -> bool:
            self.clock.advance(0)
            return len(server.messages) >= 120

        await self.scan()
        await self.wait_for(step, "120 messages")
        for message_id in ids:
            await self.wait_for(self.has_outcome(message_id), f"the outcome of {message_id}")
        self.assertEqual(sum(calls), 120)
        self.assertLessEqual(len(calls), 6, calls)
        self.assertEqual(await self.leases(), 0)
