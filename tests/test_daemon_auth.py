"""
SMTP AUTH against the real daemon (`twistd -n mailrelay`), as an attacker tries it: user
names told apart by the work done for them, the failure throttle outrun by concurrent
attempts or by spreading them over several daemons, Redis unreachable, and the memory a
flood of AUTH leaves behind. Real sockets, a real redis-server; the daemon's own
``/metrics`` (``mailrelay_password_checks_total``) shows how many scrypt checks ran.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import urllib.request

import pytest

from conftest import Daemon, start_redis
from mailrelay.passwords import MAX_CONCURRENT_CHECKS, hash_password
from mailrelay.clientkey import client_key as throttle_client

PASSWORD = "s3cret-pw"
#: The daemon's default cost (16 MiB and ~50 ms per check): the checks take long enough
#: for attempts sent together to be under way together, and use the memory they use.
USERS = {"alice": hash_password(PASSWORD, log_n=14)}
#: AUTH over plain TCP (raw sockets, many at once; TLS has its own tests).
PLAIN_AUTH = {"users": USERS, "require_tls_for_auth": False, "listen_tls": []}
CHECKS = "mailrelay_password_checks_total"


def auth_line(username: str, password: str) -> bytes:
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return f"AUTH PLAIN {token}\r\n".encode()


def metric(daemon: Daemon, sample: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['web']}/metrics", timeout=20) as r:
        text = r.read().decode()
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class Client:
    """One SMTP session on a raw socket, greeted and past EHLO."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")
        assert self.reply()[0] == 220
        self.sock.sendall(b"EHLO attacker.test\r\n")
        code, text = self.reply()
        assert code == 250 and "AUTH PLAIN" in text, text

    def reply(self) -> tuple[int, str]:
        """The next reply: code and text (the last line's, for multi-line replies)."""
        while True:
            line = self.file.readline().decode()
            if not line:
                return 0, "connection closed"
            if line[3:4] != "-":
                return int(line[:3]), line[4:].strip()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def attempts_at_once(port: int, credentials: list[tuple[str, str]]) -> list[tuple[int, str]]:
    """One AUTH per credentials, each on its own session, all sent before any reply is read."""
    clients = [Client(port) for _ in credentials]
    try:
        for client, (username, password) in zip(clients, credentials):
            client.sock.sendall(auth_line(username, password))
        return [client.reply() for client in clients]
    finally:
        for client in clients:
            client.close()


def attempt(port: int, username: str, password: str) -> tuple[int, str]:
    return attempts_at_once(port, [(username, password)])[0]


def test_unknown_user_costs_the_same_scrypt_check_as_a_wrong_password(start_daemon, daemon_config,
                                                                     redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix, submission=PLAIN_AUTH))
    port = d.ports["submission"]
    before = metric(d, CHECKS)
    assert before == 0  # nothing checked yet
    assert attempt(port, "alice", "wrong")[0] == 535
    assert metric(d, CHECKS) == 1
    # a user who does not exist: the same reply after the same work
    assert attempt(port, "mallory", "wrong") == (535, "5.7.8 Authentication credentials invalid")
    assert metric(d, CHECKS) == 2
    assert attempt(port, "mallory", PASSWORD)[0] == 535  # alice's password proves nothing for others
    assert metric(d, CHECKS) == 3


def test_concurrent_wrong_attempts_run_no_more_checks_than_the_limit(start_daemon, daemon_config,
                                                                     redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={**PLAIN_AUTH, "auth_failures_per_ip": "10/5m"}))
    # 20 different wrong passwords (no two share a computation), sent together
    replies = attempts_at_once(d.ports["submission"], [("alice", f"guess-{i}") for i in range(20)])
    codes = sorted(code for code, _ in replies)
    assert codes == [421] * 10 + [535] * 10, replies
    assert all(text.startswith("4.7.0 Too many failed") for code, text in replies if code == 421)
    assert metric(d, CHECKS) == 10
    # and the next attempt, with the right password, is refused before any check
    assert attempt(d.ports["submission"], "alice", PASSWORD)[0] == 421
    assert metric(d, CHECKS) == 10


def test_two_daemons_on_one_redis_share_the_limit(start_daemon, daemon_config, redis_server,
                                                  unique_prefix, tmp_path):
    daemons = []
    for name in ("a", "b"):
        config = daemon_config(redis_server, unique_prefix, server={"state_dir": str(tmp_path / name / "state")},
                               submission={**PLAIN_AUTH, "auth_failures_per_ip": "4/5m"})
        daemons.append(start_daemon(config, tmp_path / name))
    a, b = daemons
    # successes are refunded: more of them than the limit count for nothing
    for d in (a, b, a, b, a, b):
        assert attempt(d.ports["submission"], "alice", PASSWORD)[0] == 235
    # four failures in all, two on each daemon; then both refuse
    for d in (a, b, a, b):
        assert attempt(d.ports["submission"], "alice", "wrong")[0] == 535
    for d in (a, b):
        assert attempt(d.ports["submission"], "alice", PASSWORD)[0] == 421
    assert metric(a, CHECKS) + metric(b, CHECKS) == 6  # one success per daemon (then cached), four failures
    ttl = redis_server.client().command("PTTL", f"{unique_prefix}auth:fail:127.0.0.1")
    assert 0 < ttl <= 5 * 60 * 1000


def test_auth_fails_closed_when_redis_does_not_answer(start_daemon, daemon_config, tmp_path, unique_prefix):
    redis = start_redis(tmp_path / "redis-stopped")
    try:
        d = start_daemon(daemon_config(redis, unique_prefix, redis={"timeout": "1s"}, submission=PLAIN_AUTH))
        client = Client(d.ports["submission"])
        try:
            os.kill(redis.pid, signal.SIGSTOP)
            try:
                client.sock.sendall(auth_line("alice", PASSWORD))
                assert client.reply() == (454, "4.7.0 Temporary authentication failure, try again later")
            finally:
                os.kill(redis.pid, signal.SIGCONT)
            assert metric(d, CHECKS) == 0  # no count, no check
            client.sock.sendall(auth_line("alice", PASSWORD))  # the same session, Redis back
            assert client.reply()[0] == 235
        finally:
            client.close()
        assert d.find_lines(r"AUTH from 127\.0\.0\.1 refused \(454\): the failure count in Redis is unavailable")
    finally:
        redis.stop()


#: RSS growth allowed by a flood of AUTH: the malloc arena each scrypt thread keeps (16 MiB
#: at the default cost), and 8 MiB for sessions and Python. Measured: 32.2 MiB. Before the fix
#: the checks ran in the reactor's pool (up to 10 threads): 64 MiB for this flood, 160 MiB
#: and more for longer ones.
RSS_GROWTH_BOUND_KIB = MAX_CONCURRENT_CHECKS * 16 * 1024 + 8 * 1024


def test_memory_after_an_auth_flood_stays_bounded(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={**PLAIN_AUTH, "auth_failures_per_ip": "1000/5m",
                                               "max_connections_per_ip": 100}))
    port = d.ports["submission"]
    before = rss_kib(d.pid)
    for wave in range(2):  # 2 x 40 sessions, each with its own wrong password
        replies = attempts_at_once(port, [("alice", f"flood-{wave}-{i}") for i in range(40)])
        assert [code for code, _ in replies] == [535] * 40
    growth = rss_kib(d.pid) - before
    assert growth <= RSS_GROWTH_BOUND_KIB, f"RSS grew by {growth // 1024} MiB"
    assert metric(d, CHECKS) == 80  # every attempt was checked: the flood did the work


@pytest.mark.parametrize("host, client", [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),          # an IPv4 client on a dual-stack socket
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),  # same subscriber network
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    (None, "local"),
])
def test_failures_count_per_ipv4_address_and_ipv6_64(host, client):
    assert throttle_client(host) == client
