"""
``/metrics`` of several daemons on one Redis: each daemon counts its own work (so that
Prometheus' ``sum()`` over the daemons is the cluster's figure), and the cluster-wide
figures read from Redis are ``mailrelay_cluster_*`` gauges, the same on every daemon.
Real daemons, redis-server, the local DNS server and smtp-sink.
"""

from __future__ import annotations

import re
import smtplib
import time
import urllib.request

from peers import QUEUED

N = 3


def scrape(daemon) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['web']}/metrics", timeout=20) as r:
        return r.read().decode()


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics:\n{text}"
    return float(match.group(1))


def submit(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt(f"r{n}@example.test")[0] == 250
        code, text = s.data(f"From: app@example.com\r\nSubject: m{n}\r\n\r\nHello.\r\n".encode())
        assert code == 250 and QUEUED.search(text.decode()), (code, text)


def test_counters_are_per_process_and_cluster_figures_are_gauges(start_daemon, daemon_config, redis_server,
                                                                 unique_prefix, dns, sink, tmp_path):
    trusted = {"trusted_networks": ["127.0.0.0/8"], "listen_tls": []}
    # a: submission only; b: delivery only (nothing is submitted to it)
    a = start_daemon(daemon_config(redis_server, unique_prefix, server={"state_dir": str(tmp_path / "a" / "state")},
                                   submission=trusted, delivery={"enabled": False}), tmp_path / "a")
    b = start_daemon(daemon_config(redis_server, unique_prefix, server={"state_dir": str(tmp_path / "b" / "state")},
                                   submission=trusted,
                                   delivery={"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": sink.port}),
                     tmp_path / "b")
    for n in range(N):
        submit(a.ports["submission"], n)
    b.wait_for_matches(r"status=sent", N, timeout=30)

    # the counters: each daemon's own work, so the sum over the daemons is the cluster's
    texts = {d: scrape(d) for d in (a, b)}
    accepted = {d: sample(texts[d], "mailrelay_messages_accepted_total") for d in (a, b)}
    assert (accepted[a], accepted[b]) == (N, 0)
    assert sum(accepted.values()) == N
    assert sum(sample(texts[d], "mailrelay_recipients_accepted_total") for d in (a, b)) == N
    delivered = {d: sample(texts[d], 'mailrelay_deliveries_total{status="delivered"}') for d in (a, b)}
    assert (delivered[a], delivered[b]) == (0, N)
    assert sample(texts[b], "mailrelay_delivery_latency_seconds_count") == N

    # the cluster-wide gauges: the same figures on both daemons, once each has refreshed them
    # from Redis (a timer in the daemon that logs nothing per refresh: a bounded poll)
    wanted = {"mailrelay_cluster_messages_accepted_last_hour": N,
              "mailrelay_cluster_recipients_accepted_last_hour": N,
              'mailrelay_cluster_deliveries_last_hour{status="delivered"}': N,
              'mailrelay_cluster_queue_jobs{state="queued"}': 0}
    deadline = time.monotonic() + 30
    while True:
        texts = {d: scrape(d) for d in (a, b)}
        seen = {d: {name: sample(texts[d], name) for name in wanted} for d in (a, b)}
        if seen[a] == seen[b] == wanted:
            break
        assert time.monotonic() < deadline, seen
        time.sleep(0.5)
    for text in texts.values():
        assert "# TYPE mailrelay_cluster_messages_accepted_last_hour gauge" in text
        assert "use max(), not sum()" in text
        # the counters are still this daemon's own: the cluster figures did not leak into them
    assert sample(texts[b], "mailrelay_messages_accepted_total") == 0
    assert sample(texts[a], 'mailrelay_deliveries_total{status="delivered"}') == 0
