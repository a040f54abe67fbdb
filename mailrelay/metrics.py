"""
metrics: the work this process does, counted for ``/metrics``.

JOB
    Holds the per-process series of ``/metrics`` in the registry :data:`PROCESS`:
    counters incremented where the work happens (messages this daemon queued, its
    delivery outcomes, the bounces it recorded, its refusals at the end of DATA, its
    scrypt password checks, its webhook requests, the stream entries its archiver archived)
    and the latency of its deliveries. Each daemon counts only
    what it did itself, from 0 at its start, so that Prometheus' ``sum()`` over the
    daemons of a cluster is the cluster's figure. The cluster-wide figures read from
    Redis (the queue, the last hour's totals) are gauges named ``mailrelay_cluster_*``,
    kept by :class:`mailrelay.web.metrics.Metrics`: the same value on every daemon, to be
    aggregated with ``max()``. docs/api.md lists every series and which kind it is.

SECURITY
    Carries no mail data: counts only, labelled by fixed vocabularies (outcome,
    bounce type, listener name, reply code), never by an address or a subject.

STANDARDS
    Prometheus data model and naming conventions (counters end in ``_total``).

DIAGNOSTICS
    None: the counters are read over ``/metrics``.

CONFIGURATION
    None. Data owned: none in Redis (process memory only).
"""

from __future__ import annotations

import time
from typing import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily

from mailrelay.mail.bounceclassify import BOUNCE_TYPES

#: The registry of per-process metrics; web.py appends it to its own output.
PROCESS = CollectorRegistry(auto_describe=True)

#: Outcomes of a delivery attempt per recipient, as recorded in the queue.
DELIVERY_OUTCOMES = ("delivered", "deferred", "bounced", "expired", "suppressed")
#: The type a bounce record without proof is counted as (never the type it claims).
UNMATCHED = "Unmatched"
#: Every label value of mailrelay_bounces_total (and of the cluster gauge by type).
BOUNCE_LABELS = (*sorted(BOUNCE_TYPES), UNMATCHED)

class ReactorCounter:
    """
    A counter of work done on the reactor thread, counted per message or recipient: a plain
    number per label value, exported through a collector. (prometheus_client's Counter takes
    a lock on every ``inc``, a few microseconds on the submission and delivery hot paths;
    only the reactor thread counts these, so no lock is needed.) ``name`` is without
    ``_total``, as for Counter; the exported series are ``<name>_total``.
    """

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = (), *,
                 registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0.0}
        self.created = time.time()   # exported as <name>_created, as Counter does
        registry.register(self)

    def inc(self, amount: float = 1, *labels: str) -> None:
        """Count ``amount`` more (for the label values ``labels``, one per label name)."""
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in sorted(self.values.items()):
            family.add_metric(list(labels), value, created=self.created)
        yield family


MESSAGES_ACCEPTED = ReactorCounter(
    "mailrelay_messages_accepted",
    "Messages this process queued for delivery (submitted, and its own non-delivery notices)",
    registry=PROCESS)

RECIPIENTS_ACCEPTED = ReactorCounter(
    "mailrelay_recipients_accepted",
    "Recipients of the messages this process queued",
    registry=PROCESS)

DELIVERIES = ReactorCounter(
    "mailrelay_deliveries",
    "Delivery attempt outcomes per recipient recorded by this process",
    ("status",), registry=PROCESS)

BOUNCES = Counter(
    "mailrelay_bounces",
    "Bounce records this process stored, by type (Unmatched: a report that proves nothing)",
    ["type"], registry=PROCESS)

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

#: Results of a webhook request: 2xx; failed and retried later; failed for the last time.
WEBHOOK_RESULTS = ("ok", "retry", "failed")

WEBHOOK_ATTEMPTS = Counter(
    "mailrelay_webhook_attempts",
    "Webhook requests this process sent, by result (ok: 2xx; retry: failed, due again; "
    "failed: the last attempt failed, the job is given up)",
    ["result"], registry=PROCESS)

ARCHIVED_ENTRIES = ReactorCounter(
    "mailrelay_archived_entries",
    "Event stream entries this process's archiver wrote into the archive and acknowledged",
    registry=PROCESS)

for _result in WEBHOOK_RESULTS:
    WEBHOOK_ATTEMPTS.labels(_result)
for _status in DELIVERY_OUTCOMES:
    DELIVERIES.inc(0, _status)
for _type in BOUNCE_LABELS:
    BOUNCES.labels(_type)


def count_queued(recipients: int) -> None:
    """A message this process stored and confirmed into the queue."""
    MESSAGES_ACCEPTED.inc()
    RECIPIENTS_ACCEPTED.inc(recipients)


def count_bounce(type_name: str, matched: bool) -> None:
    """A bounce record this process stored (an unmatched one never by the type it claims)."""
    BOUNCES.labels(type_name if matched else UNMATCHED).inc()
