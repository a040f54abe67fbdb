"""
`mailrelay queue list|show|retry|delete` against a real daemon (delivery disabled, so the queue
stays as the test leaves it) and its Redis, external or managed.
"""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9a-f]{20})")
NO_DELIVERY = {"enabled": False}
TRUSTED = {"trusted_networks": ["127.0.0.0/8"]}


def submit(port: int, recipients: list[str], subject: str = "Hello", tag: str | None = None) -> str:
    headers = f"From: app@example.com\r\nSubject: {subject}\r\n"
    if tag:
        headers += f"X-Mailrelay-Tag: {tag}\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        code, text = s.mail("app@example.com")
        assert code == 250, (code, text)
        for rcpt in recipients:
            code, text = s.rcpt(rcpt)
            assert code == 250, (code, text)
        code, text = s.data((headers + "\r\nHello there.\r\n").encode())
    assert code == 250, (code, text)
    return QUEUED.search(text.decode()).group(1)


def queue(config_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", "queue", *args, "-c", str(config_path)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def ok(config_path: Path, *args: str) -> str:
    result = queue(config_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout


def fails(config_path: Path, *args: str, timeout: float = 30) -> str:
    """Exit status 1 and exactly one line on stderr (no traceback); returns that line."""
    result = queue(config_path, *args, timeout=timeout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailrelay: "), result.stderr
    return lines[0]


def hgetall(client, key: str) -> dict[str, str]:
    reply = client.command("HGETALL", key)
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def redis_now_ms(client) -> int:
    seconds, micros = client.command("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


def rows(output: str) -> dict[str, list[str]]:
    """`queue list` output -> {DOMAIN: [queued, deferred, delivering, oldest]}."""
    lines = output.splitlines()
    assert lines[0].split() == ["DOMAIN", "QUEUED", "DEFERRED", "DELIVERING", "OLDEST"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


@pytest.fixture
def daemon(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix, submission=TRUSTED, delivery=NO_DELIVERY))
    d.prefix = unique_prefix
    return d


def defer_job(client, prefix: str, message_id: str, index: int, domain: str, due_ms: int) -> None:
    """Make a job look like it had one failed attempt and waits until ``due_ms``."""
    job = f"{message_id}.{index}"
    client.command("HSET", f"{prefix}msg:{message_id}", f"attempts:{index}", 1, f"state:{index}", "deferred")
    client.command("ZADD", f"{prefix}queue:d:{domain}", due_ms, job)
    first = client.command("ZRANGE", f"{prefix}queue:d:{domain}", 0, 0, "WITHSCORES")
    client.command("ZADD", f"{prefix}queue:domains", first[1], domain)


def lease_job(client, prefix: str, message_id: str, index: int, domain: str, until_ms: int) -> None:
    """Make a job look like a daemon is delivering it (as the claim script leaves it)."""
    job = f"{message_id}.{index}"
    client.command("ZREM", f"{prefix}queue:d:{domain}", job)
    if client.command("ZCARD", f"{prefix}queue:d:{domain}") == 0:
        client.command("ZREM", f"{prefix}queue:domains", domain)
    client.command("ZADD", f"{prefix}queue:leases", until_ms, job)
    client.command("HSET", f"{prefix}msg:{message_id}", f"owner:{index}", "host:1:abc",
                   f"state:{index}", "delivering")


def test_list(daemon, redis_server):
    p = daemon.prefix
    assert rows(ok(daemon.config_path, "list")) == {"TOTAL": ["0", "0", "0", "-"]}
    m1 = submit(daemon.ports["submission"], ["a@example.org", "b@Example.ORG", "c@example.net"])
    submit(daemon.ports["submission"], ["d@example.org"])
    with redis_server.client() as client:
        now = redis_now_ms(client)
        defer_job(client, p, m1, 0, "example.org", now + 3_600_000)
        lease_job(client, p, m1, 2, "example.net", now + 120_000)
        client.command("HSET", f"{p}msg:{m1}", "received_at", now - 2 * 3_600_000 - 5_000)
    table = rows(ok(daemon.config_path, "list"))
    assert table["example.org"][:3] == ["2", "1", "0"]
    assert table["example.net"][:3] == ["0", "0", "1"]
    assert table["TOTAL"][:3] == ["2", "1", "1"]
    assert table["example.org"][3] == table["example.net"][3] == table["TOTAL"][3] == "2h00m"
    assert list(table) == ["example.net", "example.org", "TOTAL"]
    # -c may also come before the action
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", "queue", "-c", str(daemon.config_path), "list"],
                            capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 0 and rows(result.stdout) == table


def test_show(daemon, redis_server):
    p = daemon.prefix
    message_id = submit(daemon.ports["submission"], ["someone@example.org", "other@example.net"],
                        subject="Welcome aboard", tag="welcome")
    with redis_server.client() as client:
        now = redis_now_ms(client)
        defer_job(client, p, message_id, 1, "example.net", now + 600_000)
        event = {"type": "deferred", "at": "2030-01-01T00:00:00Z", "recipient": "other@example.net",
                 "rcpt": 1, "detail": "mx.example.net temporarily refused the message: 451 4.3.0 try later",
                 "remote_host": "mx.example.net", "remote_ip": "192.0.2.7", "smtp_code": 451,
                 "enhanced_code": "4.3.0", "response": "try later\x1b[31m", "remote_queue_id": None}
        client.command("RPUSH", f"{p}timeline:{message_id}", json.dumps(event))
        size = hgetall(client, f"{p}msg:{message_id}")["size"]
    out = ok(daemon.config_path, "show", message_id)
    assert out.startswith(f"Message {message_id}\n")
    assert re.search(r"^  sender: +<app@example\.com>$", out, re.M)
    assert re.search(r"^  received: +\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+s ago\)$", out, re.M)
    assert re.search(rf"^  size: +{size} bytes$", out, re.M)
    assert re.search(r"^  tag: +welcome$", out, re.M)
    assert re.search(r"^  subject: +Welcome aboard$", out, re.M)
    recipients = out.split("Recipients:\n")[1].split("Events:\n")[0].splitlines()
    assert re.fullmatch(r"\s+0\s+someone@example\.org\s+queued\s+0 attempts\s+due now", recipients[0])
    assert re.fullmatch(r"\s+1\s+other@example\.net\s+deferred\s+1 attempt\s+next attempt \S+ \(in (9m\d\ds|10m00s)\)",
                        recipients[1])
    events = out.split("Events:\n")[1].splitlines()
    assert re.match(r"  \S+Z  queued +someone@example\.org: Accepted for delivery", events[0])
    assert re.match(r"  \S+Z  queued +other@example\.net: Accepted for delivery", events[1])
    assert events[2].startswith("  2030-01-01T00:00:00Z  deferred   other@example.net: mx.example.net temporarily")
    # a remote server's text is shown with control characters escaped
    assert events[3] == r"      remote mx.example.net [192.0.2.7]; reply 451 4.3.0 try later\x1b[31m"
    assert len(events) == 4


def test_retry(daemon, redis_server):
    p = daemon.prefix
    port = daemon.ports["submission"]
    m1 = submit(port, ["a@example.org", "b@example.net"])
    m2 = submit(port, ["c@example.org"])
    m3 = submit(port, ["d@example.com"])
    with redis_server.client() as client:
        later = redis_now_ms(client) + 3_600_000
        for message_id, index, domain in ((m1, 0, "example.org"), (m1, 1, "example.net"),
                                          (m2, 0, "example.org"), (m3, 0, "example.com")):
            defer_job(client, p, message_id, index, domain, later)

        def due(message_id: str, index: int, domain: str) -> int:
            return int(client.command("ZSCORE", f"{p}queue:d:{domain}", f"{message_id}.{index}"))

        def domain_due(domain: str) -> int:
            return int(client.command("ZSCORE", f"{p}queue:domains", domain))

        assert ok(daemon.config_path, "retry", m1) == f"2 jobs of message {m1} due now (2 rescheduled)\n"
        now = redis_now_ms(client)
        assert due(m1, 0, "example.org") <= now and due(m1, 1, "example.net") <= now
        assert domain_due("example.org") <= now and domain_due("example.net") <= now
        assert due(m2, 0, "example.org") == later and due(m3, 0, "example.com") == later
        assert domain_due("example.com") == later

        assert ok(daemon.config_path, "retry", "--domain", "Example.COM") == \
            "1 job for example.com due now (1 rescheduled)\n"
        now = redis_now_ms(client)
        assert due(m3, 0, "example.com") <= now and domain_due("example.com") <= now
        assert due(m2, 0, "example.org") == later

        assert ok(daemon.config_path, "retry", "--all") == "4 jobs in all domains due now (1 rescheduled)\n"
        now = redis_now_ms(client)
        assert due(m2, 0, "example.org") <= now
        # jobs already due are left as they are
        assert ok(daemon.config_path, "retry", m1) == f"2 jobs of message {m1} due now (0 rescheduled)\n"
        assert ok(daemon.config_path, "retry", "--domain", "nowhere.example") == \
            "0 jobs for nowhere.example due now (0 rescheduled)\n"


def test_delete(daemon, redis_server):
    p = daemon.prefix
    port = daemon.ports["submission"]
    m1 = submit(port, ["a@example.org", "b@example.org", "c@example.net"])
    m2 = submit(port, ["d@example.org"])
    with redis_server.client() as client:
        lease_job(client, p, m1, 2, "example.net", redis_now_ms(client) + 120_000)
        start = client.command("XREVRANGE", f"{p}events", "+", "-", "COUNT", 1)[0][0]

        assert ok(daemon.config_path, "delete", m1, "--recipient", "B@example.org") == \
            f"1 job of message {m1} to B@example.org deleted\n"
        record = hgetall(client, f"{p}msg:{m1}")
        assert record["state:1"] == "deleted" and record["state:0"] == "queued"
        jobs = client.command("ZRANGE", f"{p}queue:d:example.org", 0, -1)
        assert sorted(jobs) == sorted([f"{m1}.0".encode(), f"{m2}.0".encode()])

        assert ok(daemon.config_path, "delete", m1) == f"2 jobs of message {m1} deleted\n"
        record = hgetall(client, f"{p}msg:{m1}")
        assert [record[f"state:{i}"] for i in range(3)] == ["deleted"] * 3
        assert "owner:2" not in record
        assert client.command("ZRANGE", f"{p}queue:d:example.org", 0, -1) == [f"{m2}.0".encode()]
        assert client.command("ZRANGE", f"{p}queue:leases", 0, -1) == []
        assert client.command("ZRANGE", f"{p}queue:domains", 0, -1) == [b"example.org"]
        # the message itself stays, for `show` and tracking
        assert client.command("EXISTS", f"{p}body:{m1}") == 1

        timeline = [json.loads(e) for e in client.command("LRANGE", f"{p}timeline:{m1}", 0, -1)]
        deleted = [e for e in timeline if e["type"] == "deleted"]
        assert [(e["rcpt"], e["recipient"]) for e in deleted] == \
            [(1, "b@example.org"), (0, "a@example.org"), (2, "c@example.net")]
        assert all(e["detail"] == "deleted by administrator" and e["at"].endswith("Z") for e in deleted)

        entries = client.command("XRANGE", f"{p}events", b"(" + start, "+")
        fields = [dict(zip(e[1][::2], e[1][1::2])) for e in entries]
        assert [(f[b"type"], f[b"msg"], f[b"rcpt"]) for f in fields] == [
            (b"deleted", m1.encode(), b"1"), (b"deleted", m1.encode(), b"0"), (b"deleted", m1.encode(), b"2")]

        # nothing left to delete
        assert ok(daemon.config_path, "delete", m1) == f"0 jobs of message {m1} deleted\n"
        assert client.command("LLEN", f"{p}timeline:{m1}") == len(timeline)

    out = ok(daemon.config_path, "show", m1)
    assert re.search(r"^\s+0\s+a@example\.org\s+deleted\s+0 attempts$", out, re.M)
    assert re.search(r"deleted +b@example\.org: deleted by administrator$", out, re.M)
    table = rows(ok(daemon.config_path, "list"))
    assert table["TOTAL"][:3] == ["1", "0", "0"] and "example.net" not in table


def test_unknown_message(daemon):
    unknown = "0123456789abcdef0123"
    for args in (("show", unknown), ("retry", unknown), ("delete", unknown)):
        assert fails(daemon.config_path, *args) == f"mailrelay: no message {unknown}"
    message_id = submit(daemon.ports["submission"], ["a@example.org"])
    assert fails(daemon.config_path, "delete", message_id, "--recipient", "x@example.org") == \
        f"mailrelay: message {message_id} has no recipient x@example.org"


def test_managed_mode(start_daemon, daemon_config, tmp_path):
    config_text = daemon_config(None, None, submission=TRUSTED, delivery=NO_DELIVERY)
    d = start_daemon(config_text)
    message_id = submit(d.ports["submission"], ["a@example.org", "b@example.net"])
    table = rows(ok(d.config_path, "list"))
    assert table["example.org"][:3] == ["1", "0", "0"] and table["TOTAL"][:3] == ["2", "0", "0"]
    assert f"Message {message_id}" in ok(d.config_path, "show", message_id)
    assert ok(d.config_path, "delete", message_id, "--recipient", "b@example.net") == \
        f"1 job of message {message_id} to b@example.net deleted\n"
    assert rows(ok(d.config_path, "list"))["TOTAL"][:3] == ["1", "0", "0"]
    d.stop()
    socket_path = tmp_path / "state" / "redis" / "redis.sock"
    assert fails(d.config_path, "list") == \
        f"mailrelay: the daemon's managed Redis is not running (no socket at {socket_path})"


def test_redis_not_answering(tmp_path, daemon_config):
    # a listening socket that never answers: the command gives up after [redis] timeout
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
        config_path = tmp_path / "mailrelay.toml"
        config_path.write_text(daemon_config(f"redis://127.0.0.1:{port}/0", None, redis={"timeout": "1s"}))
        started = time.monotonic()
        line = fails(config_path, "list", timeout=30)
        assert time.monotonic() - started < 15
    assert line == f"mailrelay: Redis at 127.0.0.1:{port} db 0: Redis did not answer within 1s"
