"""
MX resolution (mailrelay.smtp.mx) against a real DNS server on 127.0.0.1 (tests/dnsserver.py):
RFC 5321 5.1 ordering, implicit MX, null MX, NXDOMAIN, SERVFAIL, silent servers, address
literals, IDN, TXT; and the DNS server itself, in-process and as a separate process.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import pytest
from twisted.internet import defer, protocol, reactor
from twisted.names import dns
from twisted.trial import unittest

from dnsserver import LocalDNS, StandaloneDNS, query
from mailrelay.smtp.mx import (
    DNSError,
    MailHost,
    MXResolver,
    NullMX,
    NXDomain,
    PermanentDNSError,
    TemporaryDNSError,
    parse_nameservers,
)

DNSSERVER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dnsserver.py")
DKIM_KEY = "v=DKIM1; k=rsa; p=" + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 9   # > 255 octets

ZONES: dict[str, dict[str, Any]] = {
    # preference order, given out of order
    "example.test": {"MX": [(20, "mx2.example.test"), (10, "mx1.example.test"), (30, "mx3.example.test")]},
    "mx1.example.test": {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]},
    "mx2.example.test": {"A": ["192.0.2.2"]},
    "mx3.example.test": {"AAAA": ["2001:db8::3"]},
    # two hosts of equal preference and a backup
    "equal.test": {"MX": [(10, "a.equal.test"), (10, "b.equal.test"), (20, "backup.equal.test")]},
    "a.equal.test": {"A": "192.0.2.11"},
    "b.equal.test": {"A": "192.0.2.12"},
    "backup.equal.test": {"A": "192.0.2.13"},
    # several addresses of both families
    "dual.test": {"MX": (5, "mx.dual.test")},
    "mx.dual.test": {"A": ["192.0.2.21", "192.0.2.22"], "AAAA": ["2001:db8::21", "2001:db8::22"]},
    # no MX: implicit MX
    "implicit.test": {"A": ["192.0.2.31"], "AAAA": ["2001:db8::31"]},
    "nothing.test": {"TXT": ["v=spf1 -all"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "mixed-null.test": {"MX": [(0, "."), (10, "mx.mixed-null.test")]},
    "mx.mixed-null.test": {"A": "192.0.2.41"},
    "broken.test": {"SERVFAIL": True},
    "refused.test": {"REFUSED": True},
    # the first MX host does not exist, the second has no address, the third works
    "skip.test": {"MX": [(10, "ghost.skip.test"), (15, "noaddr.skip.test"), (20, "mx.skip.test")]},
    "noaddr.skip.test": {"TXT": "no addresses here"},
    "mx.skip.test": {"A": "192.0.2.51"},
    "dead.test": {"MX": [(10, "ghost.dead.test"), (20, "noaddr.dead.test")]},
    "noaddr.dead.test": {"TXT": "no addresses here"},
    # MX hosts whose lookups fail temporarily
    "flaky.test": {"MX": [(10, "down.flaky.test"), (20, "up.flaky.test")]},
    "down.flaky.test": {"SERVFAIL": True},
    "up.flaky.test": {"A": "192.0.2.61"},
    "allflaky.test": {"MX": [(10, "down.allflaky.test")]},
    "down.allflaky.test": {"SERVFAIL": True},
    "half.test": {"MX": [(10, "mx.half.test")]},
    "mx.half.test": {"A": "192.0.2.71", "SERVFAIL": ["AAAA"]},
    # duplicates and CNAME
    "dup.test": {"MX": [(30, "mx.dup.test"), (10, "mx.dup.test")]},
    "mx.dup.test": {"A": "192.0.2.81"},
    "cname.test": {"MX": [(10, "alias.cname.test")]},
    "alias.cname.test": {"CNAME": "real.cname.test"},
    "real.cname.test": {"A": "192.0.2.91"},
    # internationalized names, keyed in Unicode (the server IDNA-encodes them)
    "bücher.test": {"MX": [(10, "mx.bücher.test")]},
    "mx.bücher.test": {"A": "192.0.2.101"},
    # TXT
    "sel._domainkey.example.test": {"TXT": [DKIM_KEY]},
    "multi.example.test": {"TXT": ["first", ["split ", "in ", "three"]]},
}


class DNSTestCase(unittest.TestCase):
    """A LocalDNS with ZONES and an MXResolver using it (timeout 1 s), cleaned up after each test."""

    zones = ZONES

    def setUp(self) -> None:
        self.server = LocalDNS(self.zones)
        host, port = self.server.start()
        self.addCleanup(self.server.stop)
        self.resolver = self.make_resolver([(host, port)])

    def make_resolver(self, nameservers, **kwargs) -> MXResolver:
        kwargs.setdefault("timeout", (1,))
        resolver = MXResolver(nameservers, **kwargs)
        self.addCleanup(resolver.close)
        return resolver

    async def resolve(self, domain: str, resolver: MXResolver | None = None) -> list[MailHost]:
        return await (resolver or self.resolver).resolve(domain)

    async def resolve_error(self, domain: str, resolver: MXResolver | None = None) -> DNSError:
        try:
            hosts = await self.resolve(domain, resolver)
        except DNSError as e:
            return e
        self.fail(f"{domain} resolved to {hosts}")

    def address_queries(self) -> list[tuple[str, str]]:
        return [q for q in self.server.queries if q[1] in ("A", "AAAA")]


class OrderTests(DNSTestCase):

    async def test_sorted_by_preference(self) -> None:
        hosts = await self.resolve("example.test")
        self.assertEqual(hosts, [
            MailHost("mx1.example.test", 10, ("192.0.2.1", "2001:db8::1")),
            MailHost("mx2.example.test", 20, ("192.0.2.2",)),
            MailHost("mx3.example.test", 30, ("2001:db8::3",)),
        ])

    async def test_equal_preference_shuffled(self) -> None:
        firsts = set()
        for _ in range(50):
            hosts = await self.resolve("equal.test")
            names = [h.name for h in hosts]
            self.assertEqual(sorted(names[:2]), ["a.equal.test", "b.equal.test"])
            self.assertEqual(names[2], "backup.equal.test")
            firsts.add(names[0])
        # Each order has probability 1/2: both missing in 50 draws is a 2**-49 event.
        self.assertEqual(firsts, {"a.equal.test", "b.equal.test"})

    async def test_seeded_rng_is_reproducible(self) -> None:
        import random
        runs = []
        for _ in range(2):
            resolver = self.make_resolver([(self.server.host, self.server.port)], rng=random.Random(7))
            runs.append([[h.name for h in await self.resolve("equal.test", resolver)] for _ in range(10)])
        self.assertEqual(runs[0], runs[1])

    async def test_duplicate_exchange_keeps_best_preference(self) -> None:
        self.assertEqual(await self.resolve("dup.test"), [MailHost("mx.dup.test", 10, ("192.0.2.81",))])

    async def test_max_hosts(self) -> None:
        resolver = self.make_resolver([(self.server.host, self.server.port)], max_hosts=1)
        self.assertEqual([h.name for h in await self.resolve("example.test", resolver)], ["mx1.example.test"])


class AddressTests(DNSTestCase):

    async def test_additional_section_used(self) -> None:
        hosts = await self.resolve("example.test")
        self.assertEqual(len(hosts), 3)
        # mx1 has A and AAAA in the additional section, mx2 only A, mx3 only AAAA:
        # only the missing families are asked for.
        self.assertEqual(sorted(self.address_queries()),
                         [("mx2.example.test", "AAAA"), ("mx3.example.test", "A")])

    async def test_without_additional_section(self) -> None:
        self.server.additional = False
        hosts = await self.resolve("example.test")
        self.assertEqual(hosts[0], MailHost("mx1.example.test", 10, ("192.0.2.1", "2001:db8::1")))
        self.assertEqual(sorted(self.address_queries()), sorted(
            (f"mx{i}.example.test", t) for i in (1, 2, 3) for t in ("A", "AAAA")))

    async def test_ipv4_first_by_default(self) -> None:
        self.server.additional = False
        self.assertEqual(await self.resolve("dual.test"), [MailHost(
            "mx.dual.test", 5, ("192.0.2.21", "192.0.2.22", "2001:db8::21", "2001:db8::22"))])

    async def test_prefer_ipv6(self) -> None:
        resolver = self.make_resolver([(self.server.host, self.server.port)], prefer_ipv4=False)
        self.assertEqual(await self.resolve("dual.test", resolver), [MailHost(
            "mx.dual.test", 5, ("2001:db8::21", "2001:db8::22", "192.0.2.21", "192.0.2.22"))])

    async def test_implicit_mx(self) -> None:
        self.assertEqual(await self.resolve("implicit.test"),
                         [MailHost("implicit.test", 0, ("192.0.2.31", "2001:db8::31"))])

    async def test_implicit_mx_a_only(self) -> None:
        self.assertEqual(await self.resolve("mx2.example.test"),
                         [MailHost("mx2.example.test", 0, ("192.0.2.2",))])

    async def test_no_mx_and_no_address_is_permanent(self) -> None:
        e = await self.resolve_error("nothing.test")
        self.assertIsInstance(e, PermanentDNSError)
        self.assertNotIsInstance(e, NXDomain)
        self.assertIn("nothing.test", str(e))
        self.assertIn("no MX record and no A/AAAA address", str(e))

    async def test_mx_hosts_without_addresses_skipped(self) -> None:
        self.assertEqual(await self.resolve("skip.test"), [MailHost("mx.skip.test", 20, ("192.0.2.51",))])

    async def test_all_mx_hosts_without_addresses(self) -> None:
        e = await self.resolve_error("dead.test")
        self.assertIsInstance(e, PermanentDNSError)
        self.assertIn("none of its mail exchangers has an address", str(e))
        self.assertIn("ghost.dead.test: domain does not exist (NXDOMAIN)", str(e))

    async def test_mx_host_failing_temporarily_skipped_when_another_resolves(self) -> None:
        self.assertEqual(await self.resolve("flaky.test"), [MailHost("up.flaky.test", 20, ("192.0.2.61",))])

    async def test_all_mx_hosts_failing_temporarily(self) -> None:
        e = await self.resolve_error("allflaky.test")
        self.assertIsInstance(e, TemporaryDNSError)
        self.assertIn("SERVFAIL", str(e))

    async def test_one_family_failing_temporarily(self) -> None:
        self.assertEqual(await self.resolve("half.test"), [MailHost("mx.half.test", 10, ("192.0.2.71",))])

    async def test_cname_mx_host_followed(self) -> None:
        self.assertEqual(await self.resolve("cname.test"),
                         [MailHost("alias.cname.test", 10, ("192.0.2.91",))])


class ErrorTests(DNSTestCase):

    async def test_null_mx(self) -> None:
        e = await self.resolve_error("nullmx.test")
        self.assertIsInstance(e, NullMX)
        self.assertIsInstance(e, PermanentDNSError)
        self.assertEqual(str(e), "nullmx.test publishes a null MX (RFC 7505): it accepts no mail")
        self.assertEqual(e.domain, "nullmx.test")
        self.assertEqual(self.address_queries(), [])

    async def test_null_mx_with_other_mx_records(self) -> None:
        self.assertEqual(await self.resolve("mixed-null.test"),
                         [MailHost("mx.mixed-null.test", 10, ("192.0.2.41",))])

    async def test_nxdomain(self) -> None:
        e = await self.resolve_error("example.invalid")
        self.assertIsInstance(e, NXDomain)
        self.assertIsInstance(e, PermanentDNSError)
        self.assertEqual(str(e), "example.invalid: domain does not exist (NXDOMAIN)")

    async def test_servfail(self) -> None:
        e = await self.resolve_error("broken.test")
        self.assertIsInstance(e, TemporaryDNSError)
        self.assertEqual(str(e), "broken.test: MX lookup failed: the DNS server failed (SERVFAIL)")

    async def test_refused(self) -> None:
        e = await self.resolve_error("refused.test")
        self.assertIsInstance(e, TemporaryDNSError)
        self.assertIn("REFUSED", str(e))

    async def test_silent_nameserver_times_out(self) -> None:
        silent = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        resolver = self.make_resolver([("127.0.0.1", silent.getHost().port)], timeout=(1,))
        started = time.monotonic()
        e = await self.resolve_error("example.test", resolver)
        elapsed = time.monotonic() - started
        self.assertIsInstance(e, TemporaryDNSError)
        self.assertIn("timeout", str(e))
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 3)

    async def test_timeout_on_one_record_type(self) -> None:
        self.server.update("mx2.example.test", "TIMEOUT", ["AAAA"])
        self.server.additional = False
        hosts = await self.resolve("example.test")
        self.assertEqual(hosts[1], MailHost("mx2.example.test", 20, ("192.0.2.2",)))

    async def test_lookups_run_concurrently(self) -> None:
        # Two MX hosts whose A and AAAA queries all go unanswered: four 1 s timeouts, in parallel.
        self.server.update("slow.test", "MX", [(10, "mx1.slow.test"), (20, "mx2.slow.test")])
        for name in ("mx1.slow.test", "mx2.slow.test"):
            self.server.update(name, "TIMEOUT", True)
        started = time.monotonic()
        e = await self.resolve_error("slow.test")
        self.assertLess(time.monotonic() - started, 1.9)
        self.assertIsInstance(e, TemporaryDNSError)
        self.assertEqual(len(self.address_queries()), 4)

    async def test_next_nameserver_after_servfail(self) -> None:
        # client.Resolver alone gives up on the first SERVFAIL; we move on like libc.
        bad = LocalDNS({"example.test": {"SERVFAIL": True}, "mx1.example.test": {"REFUSED": True}})
        bad.start()
        self.addCleanup(bad.stop)
        resolver = self.make_resolver([(bad.host, bad.port), (self.server.host, self.server.port)])
        hosts = await self.resolve("example.test", resolver)
        self.assertEqual(hosts[0].name, "mx1.example.test")
        self.assertIn(("example.test", "MX"), bad.queries)

    async def test_next_nameserver_after_timeout(self) -> None:
        silent = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        resolver = self.make_resolver([("127.0.0.1", silent.getHost().port),
                                       (self.server.host, self.server.port)])
        self.assertEqual(len(await self.resolve("example.test", resolver)), 3)

    async def test_invalid_names(self) -> None:
        for domain in ("", ".", "a..test", "x" * 64 + ".test", ("a" * 60 + ".") * 5 + "test"):
            e = await self.resolve_error(domain)
            self.assertIsInstance(e, PermanentDNSError)
        self.assertEqual(self.server.queries, [])


class NameTests(DNSTestCase):

    async def test_address_literals(self) -> None:
        self.assertEqual(await self.resolve("[192.0.2.1]"), [MailHost("[192.0.2.1]", 0, ("192.0.2.1",))])
        self.assertEqual(await self.resolve("[IPv6:2001:DB8:0::1]"),
                         [MailHost("[IPv6:2001:db8::1]", 0, ("2001:db8::1",))])
        self.assertEqual(await self.resolve("[ipv6:::1]"), [MailHost("[IPv6:::1]", 0, ("::1",))])
        for bad in ("[192.0.2.256]", "[2001:db8::1]", "[IPv6:192.0.2.1]", "[IPv6:fe80::1%eth0]",
                    "[x-tag:whatever]", "[]", "[example.test]"):
            e = await self.resolve_error(bad)
            self.assertIsInstance(e, PermanentDNSError, bad)
        self.assertEqual(self.server.queries, [])

    async def test_case_and_trailing_dot(self) -> None:
        self.assertEqual(await self.resolve("Example.TEST."), await self.resolve("example.test"))
        self.assertEqual(self.server.queries[0], ("example.test", "MX"))

    async def test_idn(self) -> None:
        hosts = await self.resolve("BÜCHER.test.")
        self.assertEqual(hosts, [MailHost("mx.xn--bcher-kva.test", 10, ("192.0.2.101",))])
        self.assertEqual(self.server.queries[0], ("xn--bcher-kva.test", "MX"))
        self.assertEqual(await self.resolve("xn--bcher-kva.test"), hosts)

    async def test_idn_not_found_message_names_the_domain(self) -> None:
        e = await self.resolve_error("bücher.invalid")
        self.assertEqual(str(e), "bücher.invalid: domain does not exist (NXDOMAIN)")


class TXTTests(DNSTestCase):

    async def test_long_txt_record_joined(self) -> None:
        self.assertEqual(await self.resolver.lookup_txt("sel._domainkey.example.test"), [DKIM_KEY])

    async def test_several_records_and_strings(self) -> None:
        self.assertEqual(sorted(await self.resolver.lookup_txt("multi.example.test")),
                         ["first", "split in three"])

    async def test_no_txt_and_nxdomain(self) -> None:
        self.assertEqual(await self.resolver.lookup_txt("example.test"), [])
        self.assertEqual(await self.resolver.lookup_txt("_domainkey.example.test"), [])  # empty non-terminal
        with self.assertRaises(NXDomain):
            await self.resolver.lookup_txt("other._domainkey.example.test")
        with self.assertRaises(TemporaryDNSError):
            await self.resolver.lookup_txt("broken.test")

    async def test_key_rotation(self) -> None:
        self.server.update("sel._domainkey.example.test", "TXT", ["v=DKIM1; k=ed25519; p=NEW"])
        self.assertEqual(await self.resolver.lookup_txt("sel._domainkey.example.test"),
                         ["v=DKIM1; k=ed25519; p=NEW"])
        self.server.update("sel._domainkey.example.test", "TXT", None)
        self.assertEqual(await self.resolver.lookup_txt("sel._domainkey.example.test"), [])
        self.server.remove("sel._domainkey.example.test")
        with self.assertRaises(NXDomain):
            await self.resolver.lookup_txt("sel._domainkey.example.test")


class LocalDNSTests(DNSTestCase):

    async def test_tcp_after_truncation(self) -> None:
        self.server.truncate_udp = True
        hosts = await self.resolve("example.test")
        self.assertEqual([h.name for h in hosts], ["mx1.example.test", "mx2.example.test", "mx3.example.test"])
        self.assertEqual(await self.resolver.lookup_txt("sel._domainkey.example.test"), [DKIM_KEY])

    async def test_update_at_runtime(self) -> None:
        self.server.update("new.test", "MX", [(5, "mx.new.test")])
        self.server.update("mx.new.test", "A", "192.0.2.200")
        self.assertEqual(await self.resolve("new.test"), [MailHost("mx.new.test", 5, ("192.0.2.200",))])
        self.server.update("new.test", "SERVFAIL", True)
        self.assertIsInstance(await self.resolve_error("new.test"), TemporaryDNSError)
        self.server.update("new.test", "SERVFAIL", False)
        self.server.update("new.test", "MX", [(0, ".")])
        self.assertIsInstance(await self.resolve_error("new.test"), NullMX)

    def test_bad_records_rejected(self) -> None:
        for rtype, values in (("A", ["not-an-address"]), ("AAAA", ["192.0.2.1"]), ("MX", ["x"]),
                              ("BOGUS", ["x"]), ("SERVFAIL", ["BOGUS"])):
            with self.assertRaises(ValueError):
                self.server.update("bad.test", rtype, values)
        with self.assertRaises(ValueError):
            LocalDNS({"x.test": {"A": "nope"}})

    def test_answers(self) -> None:
        answer = self.server.answer(b"example.test", dns.MX)
        self.assertEqual(answer.rcode, dns.OK)
        self.assertEqual(len(answer.answers), 3)
        self.assertEqual({rr.name.name for rr in answer.additional},
                         {b"mx1.example.test", b"mx2.example.test", b"mx3.example.test"})
        self.assertEqual(self.server.answer(b"test", dns.A).rcode, dns.OK)          # empty non-terminal
        self.assertEqual(self.server.answer(b"nope.test", dns.A).rcode, dns.ENAME)
        self.assertEqual(self.server.answer(b"broken.test", dns.TXT).rcode, dns.ESERVER)
        self.assertEqual(self.server.answer(b"mx.half.test", dns.AAAA).rcode, dns.ESERVER)
        self.assertEqual(self.server.answer(b"mx.half.test", dns.A).rcode, dns.OK)


class _LineProtocol(protocol.ProcessProtocol):
    """Collects a child's stdout lines; ``wait_for(prefix)`` fires with the first such line."""

    def __init__(self) -> None:
        self.buffer = b""
        self.lines: list[str] = []
        self.stderr = b""
        self.waiters: list[tuple[str, defer.Deferred[str]]] = []
        self.ended: defer.Deferred[Any] = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.lines.append(line.decode().strip())
            self._check()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data

    def _check(self) -> None:
        for prefix, d in list(self.waiters):
            for line in self.lines:
                if line.startswith(prefix):
                    self.waiters.remove((prefix, d))
                    d.callback(line)
                    break

    def wait_for(self, prefix: str) -> defer.Deferred[str]:
        d: defer.Deferred[str] = defer.Deferred()
        self.waiters.append((prefix, d))
        self._check()
        return d.addTimeout(30, reactor)

    def processEnded(self, reason: Any) -> None:
        self.running = False
        for _prefix, d in self.waiters:
            d.errback(RuntimeError(f"dnsserver.py ended: {reason.value}; stderr: {self.stderr!r}"))
        self.waiters = []
        self.ended.callback(reason.value)


class StandaloneTests(unittest.TestCase):

    async def test_standalone_process(self) -> None:
        directory = tempfile.mkdtemp(prefix="test_mx-")
        self.addCleanup(shutil.rmtree, directory, True)
        zones_file = os.path.join(directory, "zones.json")
        port_file = os.path.join(directory, "port")
        with open(zones_file, "w") as f:
            json.dump(ZONES, f)

        proto = _LineProtocol()
        transport = reactor.spawnProcess(
            proto, sys.executable,
            [sys.executable, DNSSERVER_SCRIPT, "--zones", zones_file, "--port-file", port_file],
            env=os.environ.copy())

        async def stop() -> None:
            if proto.running:
                transport.signalProcess("TERM")
            await proto.ended
        self.addCleanup(lambda: defer.Deferred.fromCoroutine(stop()))

        ready = await proto.wait_for("ready ")
        port = int(ready.split()[1])
        with open(port_file) as f:
            self.assertEqual(int(f.read()), port)

        resolver = MXResolver([("127.0.0.1", port)], timeout=(1,))
        self.addCleanup(resolver.close)
        hosts = await resolver.resolve("example.test")
        self.assertEqual([h.name for h in hosts], ["mx1.example.test", "mx2.example.test", "mx3.example.test"])
        self.assertIsInstance(await self._error(resolver, "nullmx.test"), NullMX)
        self.assertIsInstance(await self._error(resolver, "broken.test"), TemporaryDNSError)

        # SIGHUP re-reads the zones file.
        zones = dict(ZONES, **{"example.test": {"MX": [(1, "mx2.example.test")]}})
        with open(zones_file, "w") as f:
            json.dump(zones, f)
        transport.signalProcess("HUP")
        self.assertEqual(await proto.wait_for("reloaded"), "reloaded 1")
        self.assertEqual(await resolver.resolve("example.test"),
                         [MailHost("mx2.example.test", 1, ("192.0.2.2",))])

        transport.signalProcess("TERM")
        reason = await proto.ended
        self.assertEqual(reason.exitCode, 0, proto.stderr)

    async def _error(self, resolver: MXResolver, domain: str) -> DNSError:
        try:
            await resolver.resolve(domain)
        except DNSError as e:
            return e
        self.fail(f"{domain} resolved")


# -- plain pytest: synchronous helpers ------------------------------------------------------------


def test_standalone_dns_helper(tmp_path) -> None:
    server = StandaloneDNS({"sync.test": {"MX": [(10, "mx.sync.test")]},
                            "mx.sync.test": {"A": ["127.0.0.1"]}}, tmp_path)
    host, port = server.start()
    try:
        assert (tmp_path / "dns-port").read_text().strip() == str(port)
        for tcp in (False, True):
            reply = query(host, port, "sync.test", "MX", tcp=tcp)
            assert reply.rCode == dns.OK
            assert [(rr.payload.preference, rr.payload.name.name) for rr in reply.answers] == \
                [(10, b"mx.sync.test")]
            assert [rr.payload.dottedQuad() for rr in reply.additional] == ["127.0.0.1"]
        assert query(host, port, "nope.test").rCode == dns.ENAME

        server.update("sel._domainkey.sync.test", "TXT", [DKIM_KEY])
        reply = query(host, port, "sel._domainkey.sync.test", "TXT")
        assert b"".join(reply.answers[0].payload.data).decode() == DKIM_KEY
        server.update("sync.test", "SERVFAIL", True)
        assert query(host, port, "sync.test", "MX").rCode == dns.ESERVER
        with pytest.raises(ValueError):
            server.update("sync.test", "A", "not an address")     # the server keeps its data
        assert query(host, port, "mx.sync.test", "A").rCode == dns.OK
    finally:
        process = server.process
        server.stop()
    assert process is not None and process.returncode == 0


def test_parse_nameservers() -> None:
    assert parse_nameservers(["192.0.2.53", "192.0.2.53:5353", "[2001:db8::53]:5300", "2001:db8::53",
                              "[::1]"]) == [
        ("192.0.2.53", 53), ("192.0.2.53", 5353), ("2001:db8::53", 5300), ("2001:db8::53", 53),
        ("::1", 53)]
    for bad in ("ns.example.com", "ns.example.com:53", "192.0.2.53:0", "192.0.2.53:x", "[::1",
                "[::1]x", "192.0.2.53:70000"):
        with pytest.raises(ValueError):
            parse_nameservers([bad])
