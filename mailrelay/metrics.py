"""
metrics: measurements this process makes itself, for ``/metrics``.

Counters of accepted and delivered mail come from Redis (cluster-wide, see
:mod:`mailrelay.web`); what only the process sees is kept here: how long messages
took from acceptance to delivery, the messages submission refused at the end of DATA, and
the scrypt password checks run for SMTP AUTH.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: The registry of per-process metrics; web.py appends it to its own output.
PROCESS = CollectorRegistry(auto_describe=True)

DELIVERY_LATENCY = Histogram(
    "mailrelay_delivery_latency_seconds",
    "Time from acceptance to delivery per recipient (this process's deliveries)",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
    registry=PROCESS)

MESSAGES_REJECTED = Counter(
    "mailrelay_messages_rejected",
    "Messages refused by this process at the end of DATA, by listener and reply code",
    ["service", "code"], registry=PROCESS)

PASSWORD_CHECKS = Counter(
    "mailrelay_password_checks",
    "scrypt password checks run by this process (SMTP AUTH; unknown users are checked too)",
    registry=PROCESS)
