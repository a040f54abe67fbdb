"""
Delivery through the real daemon: submission -> queue -> MX lookup (local DNS server) ->
Postfix's smtp-sink, with the outcome of every attempt recorded in Redis.
"""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest

from peers import Sink, send, timeline


def delivery_config(daemon_config, redis_server, prefix, dns, port, **delivery):
    return daemon_config(redis_server, prefix,
                         submission={"trusted_networks": ["127.0.0.0/8"]},
                         delivery={"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": port,
                                   "lease_timeout": "5s", **delivery})


def test_end_to_end_delivery(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(delivery_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    first = send(d.ports["submission"], ["a@example.test", "b@Example.Test"], subject="one")
    second = send(d.ports["submission"], ["c@example.test"], subject="two",
                  body=b".leading dot\r\n\r\n.\r\nend\r\n")
    for message_id, rcpt in ((first, "a@example.test"), (first, "b@Example.Test"), (second, "c@example.test")):
        d.wait_for_line(rf"{message_id}: to=<{re.escape(rcpt)}>, relay=mx1\.example\.test\[127\.0\.0\.1\]:{sink.port}, "
                        rf"delay=[\d.]+, attempts=1, status=sent \(250 2\.0\.0 Ok")
    events = timeline(redis_server, unique_prefix, first)
    assert [(e["type"], e["recipient"]) for e in events] == [
        ("queued", "a@example.test"), ("queued", "b@Example.Test"),
        ("delivered", "a@example.test"), ("delivered", "b@Example.Test")]
    delivered = events[-1]
    assert delivered["remote_host"] == "mx1.example.test" and delivered["remote_ip"] == "127.0.0.1"
    assert delivered["smtp_code"] == 250 and delivered["at"].endswith("Z")
    record = redis_server.client().command("HGETALL", f"{unique_prefix}msg:{first}")
    fields = dict(zip(record[::2], record[1::2]))
    assert fields[b"state:0"] == fields[b"state:1"] == b"delivered"
    # one transaction for both recipients of the first message: two messages at the sink
    dumps = sink.messages()
    assert len(dumps) == 2
    first_dump = next(m for m in dumps if b"Subject: one" in m)
    assert first_dump.count(b"X-Rcpt-Args: ") == 2
    second_dump = next(m for m in dumps if b"Subject: two" in m)
    # smtp-sink un-stuffs and writes LF line ends: the body arrived intact
    assert b"\n\n.leading dot\n\n.\nend\n" in second_dump
    # nothing left in the queue
    client = redis_server.client()
    assert client.command("ZCARD", f"{unique_prefix}queue:d:example.test") == 0
    assert client.command("ZCARD", f"{unique_prefix}queue:leases") == 0


def test_next_mx_when_first_is_down(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(delivery_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                     connect_timeout="2s"))
    message_id = send(d.ports["submission"], ["x@other.test"])
    d.wait_for_line(rf"{message_id}: to=<x@other\.test>, relay=mx1\.example\.test.*status=sent")


@pytest.mark.parametrize("domain, reason", [
    ("nxdomain.test", r"does not exist \(NXDOMAIN\)"),
    ("nullmx.test", r"null MX"),
])
def test_dns_permanent_failures_bounce(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink,
                                       domain, reason):
    d = start_daemon(delivery_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = send(d.ports["submission"], [f"x@{domain}"])
    d.wait_for_line(rf"{message_id}: to=<x@{re.escape(domain)}>, relay=none, .*status=bounced \(.*{reason}")
    assert timeline(redis_server, unique_prefix, message_id)[-1]["type"] == "bounced"


def test_servfail_defers_with_retry_schedule(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(delivery_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                     retry_schedule=["10m", "1h"]))
    message_id = send(d.ports["submission"], ["x@broken.test"])
    d.wait_for_line(rf"{message_id}: to=<x@broken\.test>, .*attempts=1, status=deferred \(.*SERVFAIL")
    client = redis_server.client()
    due = float(client.command("ZSCORE", f"{unique_prefix}queue:d:broken.test", f"{message_id}.0"))
    assert 9.5 * 60_000 < due - time.time() * 1000 < 10.5 * 60_000
    assert timeline(redis_server, unique_prefix, message_id)[-1]["type"] == "deferred"


def test_5xx_bounces_and_4xx_defers(start_daemon, daemon_config, redis_server, unique_prefix, dns, tmp_path):
    hard = Sink(tmp_path / "hard", "-f", "RCPT")
    try:
        d = start_daemon(delivery_config(daemon_config, redis_server, unique_prefix, dns, hard.port),
                         tmp_path / "d1")
        message_id = send(d.ports["submission"], ["gone@example.test"])
        line = d.wait_for_line(rf"{message_id}: to=<gone@example\.test>.*status=(\w+) \((5\d\d[^)]*)\)")
        assert line.group(1) == "bounced"
        event = timeline(redis_server, unique_prefix, message_id)[-1]
        assert event["type"] == "bounced" and event["smtp_code"] // 100 == 5 and event["response"]
        d.stop()
    finally:
        hard.stop()
    soft = Sink(tmp_path / "soft", "-r", "RCPT")
    try:
        d = start_daemon(delivery_config(daemon_config, redis_server, unique_prefix, dns, soft.port),
                         tmp_path / "d2")
        message_id = send(d.ports["submission"], ["later@example.test"])
        line = d.wait_for_line(rf"{message_id}: to=<later@example\.test>.*status=(\w+) \((4\d\d[^)]*)\)")
        assert line.group(1) == "deferred"
        assert redis_server.client().command("ZSCORE", f"{unique_prefix}queue:d:example.test",
                                             f"{message_id}.0") is not None
    finally:
        soft.stop()


def test_smarthost(start_daemon, daemon_config, redis_server, unique_prefix, sink):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"trusted_networks": ["127.0.0.0/8"]},
                                   delivery={"smarthost": f"127.0.0.1:{sink.port}", "smarthost_tls": "none"}))
    message_id = send(d.ports["submission"], ["someone@anywhere.invalid"])
    d.wait_for_line(rf"{message_id}: to=<someone@anywhere\.invalid>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}.*status=sent")


def test_killed_daemon_jobs_finished_by_another(start_daemon, daemon_config, redis_server, unique_prefix,
                                                 dns, tmp_path):
    # A destination that accepts the connection but never answers: the first daemon
    # holds the jobs (lease 2s) when it is killed.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)
    try:
        port = silent.getsockname()[1]
        config = delivery_config(daemon_config, redis_server, unique_prefix, dns, port,
                                 lease_timeout="2s", command_timeout="1h")
        first = start_daemon(config, tmp_path / "first")
        message_id = send(first.ports["submission"], ["x@example.test"])
        first.wait_for_line(r"claimed 1 job\(s\) for example\.test")
        assert redis_server.client().command("ZCARD", f"{unique_prefix}queue:leases") == 1
        first.stop(signal.SIGKILL)
    finally:
        silent.close()
    sink = Sink(tmp_path / "sink2")
    try:
        config = delivery_config(daemon_config, redis_server, unique_prefix, dns, sink.port, lease_timeout="2s")
        second = start_daemon(config, tmp_path / "second")
        # (any line so far: on a slow start the lease may expire before the daemon is ready)
        second.wait_for_matches(r"requeued 1 job\(s\) whose lease expired", timeout=30)
        second.wait_for_line(rf"{message_id}: to=<x@example\.test>.*status=sent", timeout=30)
    finally:
        sink.stop()
