"""
deliveryoutcomes: an attempt's outcome per job: retry or give up, record the event, log it.

JOB
    :meth:`OutcomeRecorder.outcome` turns what happened to a job (a recipient's reply,
    a failed attempt, a suppressed address) into an :class:`Outcome`: a deferred job
    gets its next try from ``retry_schedule`` (by its number of attempts, never later
    than ``max_queue_lifetime`` after it was received), or expires once it is older than
    that; every outcome carries the timeline :class:`mailrelay.store.Event`.
    :meth:`OutcomeRecorder.commit` records outcomes in one Redis call
    (:meth:`mailrelay.store.Storage.record_many`, which also ends the jobs' leases),
    counts them, hands bounced and expired jobs to
    :class:`mailrelay.services.deliverynotices.RefusalNotices` and writes the log line.
    :class:`OutcomeBatch` collects one connection's outcomes and records them a few at a
    time (RECORD_BATCH at once, or RECORD_DELAY after the first waited), so that a slow
    server does not hold back the events of the messages it already took.

SECURITY
    Remote replies are recorded and logged verbatim, never interpreted beyond their
    codes (:mod:`mailrelay.services.deliveryattempt`). An outcome whose recording fails
    is not lost: its job is no longer held, its lease runs out and it is tried again.
    A job another daemon claimed after our lease expired is recorded all the same and
    reported (``STOLEN``); a job deleted meanwhile is not counted (``GONE``).

STANDARDS
    RFC 5321 4.5.4.1 (retry strategy: the schedule), 4.5.4.2 (give up after the queue
    lifetime).

DIAGNOSTICS
    One line per outcome and recipient, in the spirit of Postfix's mail log:
    ``<id>: to=<rcpt>, relay=<host>[<ip>]:<port>, delay=<s>, attempts=<n>,
    status=sent|bounced|deferred|expired|suppressed (<reply or detail>)`` (info);
    ``delivery: <job> was also claimed by another daemon after our lease expired``
    (warning); ``delivery: could not record <n> outcome(s): <error>; the jobs are retried
    when their lease expires`` (warning). Metrics: ``DELIVERIES`` by state,
    ``DELIVERY_LATENCY`` (:mod:`mailrelay.metrics`).

CONFIGURATION
    ``[delivery]``: retry_schedule, max_queue_lifetime. Redis data: through
    :mod:`mailrelay.store` (the jobs' states, timelines, queue and leases).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailrelay import metrics
from mailrelay.config import DeliveryConfig
from mailrelay.services.deliveryattempt import (BOUNCED, DEFERRED, DELIVERED, EXPIRED, STATUS_WORDS, AttemptFailed,
                                                Outcome, Route, log, reply_line)
from mailrelay.services.deliverynotices import RefusalNotices
from mailrelay.smtp.client import ReplyInfo
from mailrelay.store import ClaimedJob, Event
from mailrelay.store.interfaces import DeliveryStorage
from mailrelay.timefmt import rfc3339

#: Outcomes of a connection's batch are recorded together (one Redis call): at the end of the
#: batch, when this many are waiting, or RECORD_DELAY seconds after the first one waited.
RECORD_BATCH = 50
RECORD_DELAY = 0.5


class OutcomeRecorder:
    """Decides each job's outcome (retry, expiry, event) and records outcomes in one call."""

    def __init__(self, settings: DeliveryConfig, storage: DeliveryStorage, clock: Any, owner: str,
                 held: dict[str, ClaimedJob], notices: RefusalNotices) -> None:
        self.settings = settings
        self.storage = storage
        self.clock = clock
        #: The lease owner (this daemon's delivery service).
        self.owner = owner
        #: The service's claimed jobs: a job leaves it once its outcome is recorded (or failed to be).
        self.held = held
        self.notices = notices

    def outcome(self, job: ClaimedJob, state: str, detail: str, reply: ReplyInfo | None = None,
                route: Route | None = None, remote_ip: str | None = None,
                remote_queue_id: str | None = None) -> Outcome:
        """An attempt's outcome, ready to record: the final state, retry time and event."""
        now = self.clock.seconds()
        due_ms = None
        now_ms = self.storage.now_ms()
        age = (now_ms - job.received_at_ms) / 1000  # both on Redis's clock
        if state == DEFERRED:
            if age >= self.settings.max_queue_lifetime:
                state = EXPIRED
                detail = f"Gave up after {job.attempts + 1} attempts over {age / 3600:.1f} h; last error: {detail}"
            else:
                schedule = self.settings.retry_schedule
                delay = schedule[min(job.attempts, len(schedule) - 1)]
                due_ms = int(min(now_ms + delay * 1000,
                                 job.received_at_ms + self.settings.max_queue_lifetime * 1000))
        event = Event(type=state, at=rfc3339(now), recipient=job.recipient, rcpt=job.rcpt, detail=detail,
                      remote_host=route.name if route else None, remote_ip=remote_ip,
                      smtp_code=reply.code if reply else None,
                      enhanced_code=(reply.enhanced or None) if reply else None,
                      response=reply.text if reply else None, remote_queue_id=remote_queue_id)
        return Outcome(job, state, event, due_ms, detail, reply, route, remote_ip, age)

    def failed(self, jobs: list[ClaimedJob], failure: AttemptFailed) -> list[Outcome]:
        """The outcomes of jobs whose whole attempt failed."""
        return [self.outcome(job, failure.state, failure.detail, failure.reply, failure.route, failure.remote_ip)
                for job in jobs]

    async def commit(self, outcomes: list[Outcome]) -> None:
        """Record outcomes in one Redis call, then log them (and record bounces)."""
        if not outcomes:
            return
        try:
            results = await self.storage.record_many(
                [(o.job, o.state, o.event, o.due_ms) for o in outcomes], self.owner)
        finally:
            for o in outcomes:
                self.held.pop(o.job.job, None)
        for o, result in zip(outcomes, results):
            job, state, reply, route = o.job, o.state, o.reply, o.route
            if result != "GONE":
                metrics.DELIVERIES.inc(1, state)
            if state == DELIVERED:
                metrics.DELIVERY_LATENCY.observe(max(o.age, 0.0))
            elif state in (BOUNCED, EXPIRED) and result != "GONE":
                await self.notices.record(job, state, o.detail, reply, route)
            if result == "STOLEN":
                log.warn("delivery: {job} was also claimed by another daemon after our lease expired", job=job.job)
            relay = f"{route.name}[{o.remote_ip}]:{route.port}" if route else "none"
            reply_text = reply_line(reply) if reply else o.detail
            log.info("{id}: to=<{to}>, relay={relay}, delay={delay:.1f}, attempts={attempts}, status={status} ({reply})",
                     id=job.message_id, to=job.recipient, relay=relay, delay=o.age, attempts=job.attempts + 1,
                     status=STATUS_WORDS[state], reply=reply_text)

    def batch(self) -> OutcomeBatch:
        """A collector for one connection's outcomes (close it when the connection's work ends)."""
        return OutcomeBatch(self)


class OutcomeBatch:
    """
    The outcomes of one connection's batch, recorded a few at a time: in the background when
    RECORD_BATCH are waiting or RECORD_DELAY after the first one (so that a slow server does
    not hold back the events of the messages it already took), and the rest at :meth:`close`,
    which returns once every outcome is recorded (or its recording failed: the job is no
    longer held, so its lease runs out and it is retried; never lost).
    """

    def __init__(self, recorder: OutcomeRecorder) -> None:
        self.recorder = recorder
        self.waiting: list[Outcome] = []
        self.timer: Any = None
        self.running: set[defer.Deferred] = set()

    def add(self, outcomes: list[Outcome]) -> None:
        self.waiting += outcomes
        if len(self.waiting) >= RECORD_BATCH:
            self._flush()
        elif self.waiting and self.timer is None:
            self.timer = self.recorder.clock.callLater(RECORD_DELAY, self._flush)

    def _take(self) -> list[Outcome]:
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None
        taken, self.waiting = self.waiting, []
        return taken

    def _flush(self) -> None:
        taken = self._take()
        if not taken:
            return
        d = defer.ensureDeferred(self.recorder.commit(taken))
        self.running.add(d)
        d.addErrback(lambda f: log.warn("delivery: could not record {n} outcome(s): {e}; the jobs are "
                                        "retried when their lease expires", n=len(taken), e=f.getErrorMessage()))
        d.addBoth(lambda _: self.running.discard(d))

    async def close(self) -> None:
        taken = self._take()
        if self.running:
            await defer.DeferredList(list(self.running), consumeErrors=True)
        await self.recorder.commit(taken)
