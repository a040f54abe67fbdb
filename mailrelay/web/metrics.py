"""
metrics: the web listener's ``/metrics``: this process's counters and the cluster-wide gauges.

JOB
    Serves ``GET /metrics`` in the Prometheus text format from memory: the
    gauges of :class:`Metrics` (a dedicated registry), then the per-process
    counters of :mod:`mailrelay.metrics`. This process's work is exported as
    counters (Prometheus' ``sum()`` over the daemons is the cluster's figure);
    the cluster-wide figures read from Redis (the queue and the last hour's
    totals) as ``mailrelay_cluster_*`` gauges, the same on every daemon
    (aggregate with ``max()``); docs/api.md lists them. The archiver's lag
    (``mailrelay_cluster_archive_lag_*``, cluster-wide too) and whether this
    process's archiver writes (``mailrelay_archive_up``) come from the archiver's
    own measures, in memory. A LoopingCall of the web
    service calls :meth:`Metrics.refresh` every METRICS_INTERVAL seconds (a PING
    for ``mailrelay_redis_up``; the queue summary and the totals every
    QUEUE_METRICS_EVERY-th time), so that a scrape only reads memory.
    :func:`stats_window` and :func:`queue_totals` also make the API's
    ``/api/v1/stats``.

SECURITY
    ``/metrics`` carries no mail data (counts only) and needs no token; it is
    served on the web listener, 127.0.0.1 by default.

STANDARDS
    The Prometheus text exposition format 0.0.4.

DIAGNOSTICS
    ``web: metrics refresh from Redis failed: <reason>`` once when refreshing
    starts failing (``mailrelay_redis_up`` is 0 meanwhile), ``web: metrics
    refresh from Redis works again`` once when it recovers.

CONFIGURATION
    ``[redis] timeout`` bounds each refresh. Redis data: through the store's
    counters, admin_queue_summary and ping.
"""

from __future__ import annotations

import math
from collections import Counter as Tally
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from twisted.logger import Logger
from twisted.web import resource, server

from mailrelay.metrics import BOUNCE_LABELS, DELIVERY_OUTCOMES, PROCESS
from mailrelay.services.archiver import ArchiverState
from mailrelay.store import StorageError
from mailrelay.store.interfaces import MetricsStorage, QueueSummary, TrackingSearch
from mailrelay.web.jsonhttp import bounded, describe_error, finish, refused_unless_get

log = Logger()

#: Seconds between metric refreshes from Redis (a PING for mailrelay_redis_up); the queue
#: summary (a walk over every domain queue) and the last hour's totals (60 per-minute
#: counters) are read every QUEUE_METRICS_EVERY-th time.
METRICS_INTERVAL = 5.0
QUEUE_METRICS_EVERY = 3
#: Bounce types that count toward the bounce rate (not delay notices, auto-replies, complaints).
BOUNCE_RATE_TYPES = ("HardBounce", "SoftBounce", "DnsError", "Blocked", "Unknown")
#: The Prometheus text exposition format that every Prometheus version reads.
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"


def stats_window(buckets: list[tuple[int, dict[str, int]]]) -> dict[str, Any]:
    """Totals of counter buckets, with bounces by type and the delivery and bounce rates."""
    totals: Tally[str] = Tally()
    for _, counts in buckets:
        totals.update(counts)
    out: dict[str, Any] = {name: totals.get(name, 0)
                           for name in ("accepted", "recipients", *DELIVERY_OUTCOMES)}
    bounces = {name[len("bounce:"):]: n for name, n in sorted(totals.items()) if name.startswith("bounce:")}
    ended = out["delivered"] + out["bounced"] + out["expired"]
    bounced = sum(bounces.get(t, 0) for t in BOUNCE_RATE_TYPES)
    out["bounces"] = bounces
    out["delivery_rate"] = round(out["delivered"] / ended, 4) if ended else None
    out["bounce_rate"] = round(min(1.0, bounced / ended), 4) if ended else None
    return out


def queue_totals(summary: dict[str, Any]) -> dict[str, Any]:
    """admin_queue_summary() -> {"queued", "deferred", "delivering", "domains", "oldest_age_seconds"}."""
    domains = summary.get("domains", {})
    out: dict[str, Any] = {state: sum(row[state] for row in domains.values())
                           for state in ("queued", "deferred", "delivering")}
    out["domains"] = len(domains)
    oldest = [row["oldest_ms"] for row in domains.values() if row.get("oldest_ms") is not None]
    out["oldest_age_seconds"] = (round(max(0, summary["now_ms"] - min(oldest)) / 1000, 3)
                                 if oldest else None)
    return out


class Metrics:
    """
    The ``/metrics`` output: this registry's gauges, then the per-process counters of
    :mod:`mailrelay.metrics`. The ``mailrelay_cluster_*`` gauges are cluster-wide figures
    read from Redis by :meth:`refresh` (called by a LoopingCall): the queue and the last
    hour's totals, the same on every daemon sharing that Redis (aggregate them with
    ``max()``, never ``sum()``). SMTP sessions and ``mailrelay_redis_up`` are this
    process's own.
    """

    def __init__(self, sessions: Callable[[], dict[str, int]],
                 archiver: Callable[[], ArchiverState | None] = lambda: None) -> None:
        self.sessions = sessions
        self.archiver = archiver
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        same = "; cluster-wide, the same on every daemon: use max(), not sum()"
        self.accepted = Gauge("mailrelay_cluster_messages_accepted_last_hour",
                              "Messages accepted in the last hour" + same, registry=r)
        self.recipients = Gauge("mailrelay_cluster_recipients_accepted_last_hour",
                                "Recipients of the messages accepted in the last hour" + same, registry=r)
        self.deliveries = Gauge("mailrelay_cluster_deliveries_last_hour",
                                "Delivery attempt outcomes per recipient in the last hour" + same,
                                ["status"], registry=r)
        self.bounces = Gauge("mailrelay_cluster_bounces_last_hour",
                             "Bounce records by type in the last hour" + same, ["type"], registry=r)
        self.queue_jobs = Gauge("mailrelay_cluster_queue_jobs", "Delivery jobs in the queue by state" + same,
                                ["state"], registry=r)
        self.queue_oldest = Gauge("mailrelay_cluster_queue_oldest_seconds",
                                  "Age of the oldest message with a job in the queue (0 when empty)" + same,
                                  registry=r)
        self.smtp_sessions = Gauge("mailrelay_smtp_sessions", "Open SMTP sessions of this process by listener",
                                   ["service"], registry=r)
        self.archive_lag_entries = Gauge(
            "mailrelay_cluster_archive_lag_entries",
            "Event stream entries the archiver has not archived yet (NaN until measured)" + same, registry=r)
        self.archive_lag_seconds = Gauge(
            "mailrelay_cluster_archive_lag_seconds",
            "Age of the oldest event stream entry not archived yet (0 when none; NaN until measured)" + same,
            registry=r)
        self.archive_up = Gauge("mailrelay_archive_up",
                                "1 while this process's archiver writes into the archive database", registry=r)
        self.redis_up = Gauge("mailrelay_redis_up",
                              "1 when this process's last metrics refresh from Redis succeeded", registry=r)
        for status in DELIVERY_OUTCOMES:
            self.deliveries.labels(status)
        for kind in BOUNCE_LABELS:
            self.bounces.labels(kind)
        for state in ("queued", "deferred", "delivering"):
            self.queue_jobs.labels(state)
        self._ticks = 0
        self._failing = False

    async def refresh(self, storage: MetricsStorage, timeout: float) -> None:
        """Read the cluster-wide figures from Redis (every QUEUE_METRICS_EVERY-th call)."""
        try:
            if self._ticks % QUEUE_METRICS_EVERY == 0:
                await bounded(self._refresh_totals(storage), timeout * 2)
                await bounded(self._refresh_queue(storage), timeout * 2)
            elif not await bounded(storage.ping(), timeout):
                raise StorageError("Redis does not answer PING")
            self._ticks += 1
        except Exception as e:
            self.redis_up.set(0)
            if not self._failing:
                self._failing = True
                log.warn("web: metrics refresh from Redis failed: {e}", e=describe_error(e))
            return
        self.redis_up.set(1)
        if self._failing:
            self._failing = False
            log.info("web: metrics refresh from Redis works again")

    async def _refresh_totals(self, storage: TrackingSearch) -> None:
        hour = stats_window(await storage.counters("m", 60))
        self.accepted.set(hour["accepted"])
        self.recipients.set(hour["recipients"])
        for status in DELIVERY_OUTCOMES:
            self.deliveries.labels(status).set(hour[status])
        for kind in {*BOUNCE_LABELS, *hour["bounces"]}:
            self.bounces.labels(kind).set(hour["bounces"].get(kind, 0))

    async def _refresh_queue(self, storage: QueueSummary) -> None:
        totals = queue_totals(await storage.admin_queue_summary())
        for state in ("queued", "deferred", "delivering"):
            self.queue_jobs.labels(state).set(totals[state])
        self.queue_oldest.set(totals["oldest_age_seconds"] or 0)

    def render(self) -> bytes:
        for name, count in self.sessions().items():
            self.smtp_sessions.labels(name).set(count)
        archiver = self.archiver()
        lag = archiver.lag if archiver is not None else None
        self.archive_lag_entries.set(lag.entries if lag is not None else math.nan)
        self.archive_lag_seconds.set(lag.oldest_age_seconds if lag is not None else math.nan)
        self.archive_up.set(1 if archiver is not None and archiver.writing else 0)
        return generate_latest(self.registry) + generate_latest(PROCESS)


class MetricsResource(resource.Resource):
    """``GET /metrics``: the Prometheus text format, from memory."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render(self, request: Any) -> Any:
        if not refused_unless_get(request):
            finish(request, 200, self.metrics.render(), PROMETHEUS_TEXT)
        return server.NOT_DONE_YET
