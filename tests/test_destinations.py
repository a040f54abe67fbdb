"""
Delivery to internal addresses (issue 15 item 11): mailrelay.smtp.destinations' rule, the MX
resolver's filter against a real DNS server, the SMTP client's check of the address it
connects to, the policy's name resolver under treq, and the real daemon: with the default,
MX hosts and address literals at loopback and private addresses bounce with 5.4.4 and nothing
connects; with ``[delivery] allow_private_destinations = true`` the mail is delivered.
"""

from __future__ import annotations

import errno
import re
import socket
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.trial import unittest
from twisted.web import resource, server

from dnsserver import LocalDNS, StandaloneDNS
from mailrelay.smtp import client as smtpclient
from mailrelay.smtp.destinations import DestinationPolicy, DestinationRefused, refusal
from mailrelay.smtp.mx import MailHost, MXResolver, RefusedDestination, TemporaryDNSError
from peers import send, timeline

# -- the rule -------------------------------------------------------------------------------

REFUSED = {
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback",
    "10.0.0.1": "private", "172.16.5.4": "private", "192.168.1.1": "private",
    "fd00::1": "private", "fc00::1": "private",
    "169.254.169.254": "link-local", "fe80::1": "link-local",
    "0.0.0.0": "unspecified", "::": "unspecified",
    "100.64.0.1": "not globally reachable",            # shared address space (CGNAT)
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "240.0.0.1": "private",                            # reserved 240/4 (ipaddress: private too)
    "255.255.255.255": "private",
    "192.0.2.7": "private", "198.18.0.1": "private",   # documentation, benchmarking
    "fec0::1": "site-local",
    "::ffff:127.0.0.1": "IPv4-mapped form of 127.0.0.1, a loopback",
    "::ffff:10.1.2.3": "IPv4-mapped form of 10.1.2.3, a private",
    "2002:a00:1::1": "6to4 form of 10.0.0.1, a private",
    "64:ff9b::a00:1": "reserved",                      # NAT64 of 10.0.0.1
    "[10.0.0.1]": "private",
    "localhost": "is not an IP address",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "2a00:1450:4001:82a::200e", "::ffff:8.8.8.8", "2002:808:808::1"]


def test_refusal_names_the_range_of_every_non_public_address():
    for address, words in REFUSED.items():
        reason = refusal(address)
        assert reason is not None and words in reason, (address, reason)


def test_public_addresses_pass():
    for address in PUBLIC:
        assert refusal(address) is None, address
    assert DestinationPolicy(allow_private=True).refusal("127.0.0.1") is None
    with pytest.raises(DestinationRefused, match="127.0.0.1 is a loopback address"):
        DestinationPolicy().check("127.0.0.1")


# -- the MX resolver --------------------------------------------------------------------------

ZONES: dict[str, dict[str, Any]] = {
    # one MX at a private address, one public: the private one is skipped
    "mixed.test": {"MX": [(10, "inside.mixed.test"), (20, "outside.mixed.test")]},
    "inside.mixed.test": {"A": "10.0.0.5"},
    "outside.mixed.test": {"A": "8.8.8.8"},
    # one host with a public A and a loopback AAAA: only the public address is kept
    "half.test": {"MX": [(10, "mx.half.test")]},
    "mx.half.test": {"A": "8.8.4.4", "AAAA": "::1"},
    # every MX at internal addresses
    "private.test": {"MX": [(10, "mx1.private.test"), (20, "mx2.private.test")]},
    "mx1.private.test": {"A": "10.0.0.1"},
    "mx2.private.test": {"A": "192.168.1.1", "AAAA": ["fd00::1", "::ffff:127.0.0.1"]},
    # no MX: the domain's own address is loopback
    "implicit.test": {"A": "127.0.0.1"},
    # a private MX next to one whose lookups fail now: try again later, do not bounce
    "flaky.test": {"MX": [(10, "inside.flaky.test"), (20, "down.flaky.test")]},
    "inside.flaky.test": {"A": "10.0.0.9"},
    "down.flaky.test": {"SERVFAIL": True},
}


class ResolverPolicyTests(unittest.TestCase):
    """MXResolver with and without a DestinationPolicy, against a real DNS server."""

    def setUp(self) -> None:
        self.server = LocalDNS(ZONES)
        self.nameservers = [self.server.start()]
        self.addCleanup(self.server.stop)

    def resolver(self, policy: DestinationPolicy | None) -> MXResolver:
        resolver = MXResolver(self.nameservers, timeout=(1,), destinations=policy)
        self.addCleanup(resolver.close)
        return resolver

    async def refused(self, domain: str) -> RefusedDestination:
        try:
            hosts = await self.resolver(DestinationPolicy()).resolve(domain)
        except RefusedDestination as e:
            return e
        self.fail(f"{domain} resolved to {hosts}")

    async def test_private_mx_skipped_public_kept(self) -> None:
        hosts = await self.resolver(DestinationPolicy()).resolve("mixed.test")
        self.assertEqual(hosts, [MailHost("outside.mixed.test", 20, ("8.8.8.8",))])
        hosts = await self.resolver(DestinationPolicy()).resolve("half.test")
        self.assertEqual(hosts, [MailHost("mx.half.test", 10, ("8.8.4.4",))])

    async def test_all_private_is_a_permanent_5_4_4_refusal(self) -> None:
        e = await self.refused("private.test")
        text = str(e)
        self.assertTrue(text.startswith("5.4.4 private.test: not sent: none of its mail exchangers "
                                        "has a public address"), text)
        for part in ("mx1.private.test[10.0.0.1]: 10.0.0.1 is a private address",
                     "mx2.private.test[192.168.1.1]: 192.168.1.1 is a private address",
                     "fd00::1 is a private address", "the IPv4-mapped form of 127.0.0.1, a loopback address",
                     "[delivery] allow_private_destinations = false"):
            self.assertIn(part, text)

    async def test_implicit_mx_and_address_literals(self) -> None:
        e = await self.refused("implicit.test")
        self.assertIn("implicit.test[127.0.0.1]: 127.0.0.1 is a loopback address", str(e))
        for literal, words in (("[127.0.0.1]", "loopback"), ("[10.1.1.1]", "private"),
                               ("[IPv6:::1]", "loopback"), ("[IPv6:fe80::1]", "link-local")):
            e = await self.refused(literal)
            self.assertTrue(str(e).startswith(f"5.4.4 {literal}: not sent"), str(e))
            self.assertIn(words, str(e))

    async def test_temporary_failure_of_another_mx_defers(self) -> None:
        with self.assertRaises(TemporaryDNSError):
            await self.resolver(DestinationPolicy()).resolve("flaky.test")

    async def test_without_policy_or_with_opt_in_nothing_is_dropped(self) -> None:
        for policy in (None, DestinationPolicy(allow_private=True)):
            hosts = await self.resolver(policy).resolve("private.test")
            self.assertEqual([h.addresses for h in hosts],
                             [("10.0.0.1",), ("192.168.1.1", "fd00::1", "::ffff:7f00:1")])
            self.assertEqual(await self.resolver(policy).resolve("[127.0.0.1]"),
                             [MailHost("[127.0.0.1]", 0, ("127.0.0.1",))])


# -- the connection itself ------------------------------------------------------------------------

def listening_socket() -> socket.socket:
    """A TCP socket listening on 127.0.0.1 that nobody accepts from: connections wait in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def connections_made(sock: socket.socket) -> int:
    """How many connections reached ``sock`` (accepted and closed here)."""
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except OSError as e:
            assert e.errno in (errno.EAGAIN, errno.EWOULDBLOCK), e
            return count
        conn.close()
        count += 1


class _Hello(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


class ConnectPolicyTests(unittest.TestCase):

    def setUp(self) -> None:
        self.sock = listening_socket()
        self.addCleanup(self.sock.close)
        self.port = self.sock.getsockname()[1]

    async def test_smtp_client_refuses_a_name_resolving_to_internal_addresses(self) -> None:
        """A name (resolved by the endpoint, as a rebinding name would be) is checked address by address."""
        with self.assertRaises(smtpclient.ConnectFailure) as caught:
            await smtpclient.connect("localhost", self.port, helo_name="relay.test", tls="none",
                                     connect_timeout=5, command_timeout=5, destinations=DestinationPolicy())
        self.assertIn("localhost", str(caught.exception))
        self.assertEqual(connections_made(self.sock), 0)

    async def test_address_literal_is_refused_before_connecting(self) -> None:
        with self.assertRaises(smtpclient.RefusedDestination) as caught:
            await smtpclient.connect("127.0.0.1", self.port, helo_name="relay.test", tls="none",
                                     connect_timeout=5, command_timeout=5, destinations=DestinationPolicy())
        self.assertIn("127.0.0.1 is a loopback address", str(caught.exception))
        self.assertEqual(connections_made(self.sock), 0)

    async def test_policy_reactor_for_http_clients(self) -> None:
        """The one rule serves HTTP fetches too: treq through the policy's reactor."""
        import treq
        from twisted.web.client import Agent, HTTPConnectionPool

        listening = reactor.listenTCP(0, server.Site(_Hello()), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        url = f"http://127.0.0.1:{listening.getHost().port}/"

        def client(policy: DestinationPolicy) -> Any:
            pool = HTTPConnectionPool(reactor, persistent=False)
            return treq.client.HTTPClient(Agent(policy.reactor(reactor), pool=pool))

        response = await client(DestinationPolicy(allow_private=True)).get(url)
        self.assertEqual(await response.content(), b"hello")
        with self.assertRaises(Exception) as caught:
            await client(DestinationPolicy()).get(url)
        self.assertIn("no results for hostname lookup", str(caught.exception))


# -- the daemon -----------------------------------------------------------------------------------

DAEMON_ZONES: dict[str, dict[str, Any]] = {
    "loop.test": {"MX": [(10, "mx.loop.test")]},
    "mx.loop.test": {"A": ["127.0.0.1"]},
    "private.test": {"MX": [(10, "mx1.private.test"), (20, "mx2.private.test")]},
    "mx1.private.test": {"A": ["10.0.0.1"]},
    "mx2.private.test": {"A": ["192.168.1.1"]},
    "mapped.test": {"AAAA": ["::ffff:127.0.0.1"]},
}


@pytest.fixture
def internal_dns(tmp_path):
    server = StandaloneDNS(DAEMON_ZONES, tmp_path)
    server.start()
    yield server
    server.stop()


def hgetall(client, key):
    reply = client.command("HGETALL", key)
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def test_daemon_refuses_internal_destinations_by_default(start_daemon, daemon_config, redis_server,
                                                         unique_prefix, internal_dns):
    target = listening_socket()   # where every MX and literal above would connect (mx_port)
    try:
        d = start_daemon(daemon_config(
            redis_server, unique_prefix, submission={"trusted_networks": ["127.0.0.0/8"]},
            delivery={"nameservers": [f"127.0.0.1:{internal_dns.port}"], "mx_port": target.getsockname()[1],
                      "connect_timeout": "2s", "command_timeout": "3s",
                      "allow_private_destinations": None}))   # the daemon's default
        cases = {
            "a@loop.test": r"5\.4\.4 loop\.test: not sent: none of its mail exchangers has a public address "
                           r"\(mx\.loop\.test\[127\.0\.0\.1\]: 127\.0\.0\.1 is a loopback address\)",
            "b@[127.0.0.1]": r"5\.4\.4 \[127\.0\.0\.1\]: not sent: the address literal is not a public address "
                             r"\(127\.0\.0\.1 is a loopback address\)",
            "c@private.test": r"5\.4\.4 private\.test: not sent: .*10\.0\.0\.1 is a private address"
                              r".*192\.168\.1\.1 is a private address",
            "d@mapped.test": r"5\.4\.4 mapped\.test: not sent: .*IPv4-mapped form of 127\.0\.0\.1, a loopback",
        }
        ids = {rcpt: send(d.ports["submission"], [rcpt]) for rcpt in cases}
        for rcpt, reason in cases.items():   # (the outcomes come in any order)
            d.wait_for_matches(rf"{ids[rcpt]}: to=<{re.escape(rcpt)}>, relay=none, delay=[\d.]+, attempts=1, "
                               rf"status=bounced \({reason}.*\[delivery\] allow_private_destinations = false\)")
            [event] = [e for e in timeline(redis_server, unique_prefix, ids[rcpt]) if e["type"] == "bounced"]
            assert re.match(reason, event["detail"]), event
        assert d.find_lines(r"not using mx\.loop\.test\[127\.0\.0\.1\] \(mail host of loop\.test\): "
                            r"127\.0\.0\.1 is a loopback address")
        # nothing connected to the target, and a policy refusal suppresses nobody
        assert connections_made(target) == 0
        client = redis_server.client()
        ids_of_bounces = [b.decode() for b in client.command("ZRANGE", f"{unique_prefix}bounces", 0, -1)]
        records = [hgetall(client, f"{unique_prefix}bounce:{i}") for i in ids_of_bounces]
        assert sorted(r["recipient"] for r in records) == sorted(cases)
        assert {(r["type"], r["status"]) for r in records} == {("DnsError", "5.4.4")}
        assert client.command("HLEN", f"{unique_prefix}suppressed") == 0
    finally:
        target.close()


def test_daemon_delivers_to_internal_destinations_when_allowed(start_daemon, daemon_config, redis_server,
                                                               unique_prefix, internal_dns, sink):
    d = start_daemon(daemon_config(
        redis_server, unique_prefix, submission={"trusted_networks": ["127.0.0.0/8"]},
        delivery={"nameservers": [f"127.0.0.1:{internal_dns.port}"], "mx_port": sink.port,
                  "allow_private_destinations": True}))
    assert d.find_lines(r"delivery to MX hosts, port \d+, private destinations allowed")
    for rcpt, relay in (("a@loop.test", r"mx\.loop\.test\[127\.0\.0\.1\]"), ("b@[127.0.0.1]", r"\[127\.0\.0\.1\]\[127\.0\.0\.1\]")):
        message_id = send(d.ports["submission"], [rcpt])
        d.wait_for_matches(rf"{message_id}: to=<{re.escape(rcpt)}>, relay={relay}:{sink.port}, .*status=sent")
    assert len(sink.messages()) == 2
