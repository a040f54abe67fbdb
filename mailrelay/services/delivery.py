"""
delivery: the outbound side, from the Redis queue to the recipients' mail servers.

JOB
    :class:`DeliveryService` claims due delivery jobs from the queue with a lease, groups
    them per destination domain and runs one worker per connection, within
    ``concurrency_per_domain`` and ``max_connections``: the worker claims a batch, gets a
    session, sends, claims more for the same connection (up to
    ``max_messages_per_connection``), keeps the connection idle for ``idle_timeout`` when
    nothing is due, and hands unsent jobs back. Several daemons share one queue: leases
    (renewed while held) keep them from claiming the same job, and a dead daemon's jobs
    are requeued when its leases expire. The service owns the parts that do the rest:

    - :mod:`~mailrelay.services.deliveryroutes`: the MX hosts (or the smarthost) and the
      session to the first that answers;
    - :mod:`~mailrelay.services.deliverytransactions`: one connection's jobs sent as SMTP
      transactions (once per message with all its recipients of the domain; with a
      bounce domain once per recipient, each copy with its VERP return path and token
      header, see :mod:`mailrelay.services.bounces`);
    - :mod:`~mailrelay.services.deliverypacing`: per-domain state, rate limits and the
      pauses a throttling destination asks for;
    - :mod:`~mailrelay.services.deliveryoutcomes`: every attempt recorded as an event:
      delivered, bounced (5xx, NXDOMAIN, null MX), deferred (4xx, connection/TLS/DNS
      failures; retried on ``retry_schedule``) or expired (older than
      ``max_queue_lifetime``), and its log line;
    - :mod:`~mailrelay.services.deliverynotices`: a refusal recorded as a bounce and,
      with ``[bounces] notify_sender``, a DSN to the original sender
      (:mod:`mailrelay.mail.dsn`), queued from ``<>`` through the one door into the
      queue (:mod:`mailrelay.services.inject`, source NOTICE);
    - :mod:`~mailrelay.services.deliveryattempt`: the words they share (states, Route,
      AttemptFailed, Outcome, the reading of a reply).

SECURITY
    Talks to remote mail servers, which are untrusted: their replies are
    recorded verbatim but never interpreted beyond the reply code. TLS is
    opportunistic by default; ``tls = "verify"`` checks certificates against
    the MX name. Bodies are dot-stuffed over the whole stream (no smuggling).
    In direct (MX) mode, MX hosts and address literals are names and
    addresses chosen by whoever controls the recipient domain or address:
    unless ``allow_private_destinations`` is set, addresses that are not
    public (loopback, private, link-local... see :mod:`mailrelay.smtp.destinations`)
    are dropped after the A/AAAA lookups (a domain left with none bounces
    with status 5.4.4), and :mod:`mailrelay.smtp.client` checks the address it
    connects to once more. The smarthost is the operator's choice and is not
    checked. At shutdown, held jobs are handed back to the queue (or return when
    their lease expires): none is lost.

STANDARDS
    RFC 5321 (SMTP, section 5 for MX), RFC 7505 (null MX), RFC 3207
    (STARTTLS), RFC 2920 (PIPELINING), RFC 1870 (SIZE), RFC 6152, RFC 6531.

DIAGNOSTICS
    One log line per final outcome and recipient, in the spirit of Postfix's
    mail log: id, to, relay host[ip]:port, delay, attempts, status, reply
    (:mod:`mailrelay.services.deliveryoutcomes`). The service's own: ``delivery to
    <target> (tls <mode>), owner <owner>`` at start, ``delivery: claimed <n> job(s) for
    <domain>``, ``delivery: requeued <n> job(s) whose lease expired``, ``delivery:
    handed <n> job(s) back to the queue`` (info); ``delivery: queue scan failed``,
    ``delivery: lease renewal failed``, ``delivery: lease check failed``, ``delivery:
    could not hand jobs back`` (warning). Every delivery module logs under the
    namespace ``mailrelay.services.delivery``.

CONFIGURATION
    ``[delivery]``: enabled, lease_timeout, retry_schedule, max_queue_lifetime,
    rate_limit_per_domain, nameservers, mx_port, smarthost (+ username,
    password, tls), tls, max_messages_per_connection, pipeline_messages, idle_timeout,
    concurrency_per_domain, max_connections, helo_name, bind_address,
    connect_timeout, command_timeout, allow_private_destinations. Redis data: through
    :mod:`mailrelay.store` (queue, leases, timelines, events).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task

from mailrelay.config import Config
from mailrelay.services.bounces import load_verp
from mailrelay.services.deliveryattempt import AttemptFailed, log
from mailrelay.services.deliverynotices import RefusalNotices
from mailrelay.services.deliveryoutcomes import OutcomeRecorder
from mailrelay.services.deliverypacing import DomainPacing, DomainState
from mailrelay.services.deliveryroutes import Router
from mailrelay.services.deliverytransactions import Transactions
from mailrelay.services.inject import Injector
from mailrelay.smtp.mx import MXResolver
from mailrelay.store import ClaimedJob
from mailrelay.store.interfaces import DeliveryStorage

#: Jobs claimed at once for one connection.
CLAIM_BATCH = 50
#: How often the queue is polled for due jobs (a local submission wakes it at once).
POLL_INTERVAL = 1.0
#: Delay of a wake-up after a local submission, so that a burst shares one queue scan.
WAKE_DELAY = 0.005
#: Seconds in-flight deliveries may take to finish at shutdown.
SHUTDOWN_GRACE = 20.0


class DeliveryService(service.Service):
    """Runs the delivery workers of this daemon."""

    name = "delivery"

    def __init__(self, config: Config, get_storage: Callable[[], DeliveryStorage], *,
                 clock: Any = None, reactor: Any = None, resolver: MXResolver | None = None,
                 get_injector: Callable[[], Injector] | None = None) -> None:
        from twisted.internet import reactor as default_reactor

        self.reactor = reactor or default_reactor   # network
        self.clock = clock or self.reactor           # timers, due times, retries
        self.config = config
        self.settings = config.delivery
        self.get_storage = get_storage
        self.storage: DeliveryStorage | None = None
        #: The door into the queue for notices (DSNs); without one, the notices build their own.
        self.get_injector = get_injector
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.router = Router(config, self.reactor, resolver)
        self.pacing = DomainPacing(self.settings, self.clock, self.wake)
        self.held: dict[str, ClaimedJob] = {}
        self.connections = 0
        self.workers: set[defer.Deferred] = set()
        self.sessions: set[Any] = set()
        self.stopping = False
        # made by when_ready, once the storage is there
        self.notices: RefusalNotices | None = None
        self.outcomes: OutcomeRecorder | None = None
        self.transactions: Transactions | None = None
        self._loops: list[task.LoopingCall] = []
        self._ticking = False
        self._tick_again = False
        self._wake_call: Any = None

    @property
    def domains(self) -> dict[str, DomainState]:
        """What this daemon knows about each destination domain."""
        return self.pacing.domains

    # -- lifecycle -------------------------------------------------------------------

    async def when_ready(self) -> None:
        self.storage = self.get_storage()
        self.notices = RefusalNotices(self.config, self.storage, self.clock,
                                      get_injector=self.get_injector, on_queued=self.wake_soon)
        try:
            verp = await load_verp(self.config, self.storage)
        except Exception as e:
            raise RuntimeError(f"cannot read the VERP secret from Redis: {e}") from None
        self.outcomes = OutcomeRecorder(self.settings, self.storage, self.clock, self.owner, self.held, self.notices)
        self.transactions = Transactions(self.settings, self.storage, self.clock, self.outcomes, self.pacing, verp,
                                         stopping=lambda: self.stopping)
        self.router.start()
        lease = self.settings.lease_timeout
        for interval, function in ((POLL_INTERVAL, self.wake), (lease / 3, self._renew),
                                   (max(lease / 4, 0.2), self._requeue_expired)):
            loop = task.LoopingCall(function)
            loop.clock = self.clock
            loop.start(interval, now=True).addErrback(
                lambda f: log.failure("delivery loop failed", f))
            self._loops.append(loop)
        target = (f"smarthost {self.settings.smarthost[0]}:{self.settings.smarthost[1]}"
                  if self.settings.smarthost else f"MX hosts, port {self.settings.mx_port}"
                  + (", private destinations allowed" if self.router.destinations.allow_private else ""))
        log.info("delivery to {target} (tls {tls}), owner {owner}", target=target,
                 tls=self.settings.smarthost_tls if self.settings.smarthost else self.settings.tls,
                 owner=self.owner)

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        if self._wake_call is not None and self._wake_call.active():
            self._wake_call.cancel()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for state in self.pacing.domains.values():
            waiters, state.idle_waiters = state.idle_waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(False)
        if self.workers:
            # After the grace period the sessions are aborted (not the workers cancelled: a
            # cancelled worker would die with CancelledError and leave its jobs unaccounted).
            abort = self.clock.callLater(SHUTDOWN_GRACE, self._abort_sessions)
            await defer.DeferredList(list(self.workers), consumeErrors=True)
            if abort.active():
                abort.cancel()
        if self.held and self.storage is not None:
            try:
                count = await self.storage.release(list(self.held.values()), self.owner)
                log.info("delivery: handed {n} job(s) back to the queue", n=count)
            except Exception as e:
                log.warn("delivery: could not hand jobs back ({e}); they return when their lease expires", e=e)
        await self.router.close()

    def _abort_sessions(self) -> None:
        for session in list(self.sessions):
            session.abort()

    # -- scheduling ---------------------------------------------------------------------

    def wake_soon(self) -> None:
        """Look for due jobs within WAKE_DELAY: submissions in a burst share one queue scan."""
        if self._wake_call is None or not self._wake_call.active():
            self._wake_call = self.clock.callLater(WAKE_DELAY, self.wake)

    def wake(self) -> defer.Deferred | None:
        """Look for due jobs now (called by the poll loop and after local submissions)."""
        if self.stopping or self.storage is None:
            return None
        if self._ticking:
            self._tick_again = True
            return None
        d = defer.ensureDeferred(self._tick())
        d.addErrback(lambda f: log.warn("delivery: queue scan failed: {e}", e=f.getErrorMessage()))
        return d

    async def _tick(self) -> None:
        self._ticking = True
        try:
            while True:
                self._tick_again = False
                for domain in await self.storage.due_domains():
                    self._schedule(domain)
                if not self._tick_again or self.stopping:
                    break
        finally:
            self._ticking = False

    def _schedule(self, domain: str) -> None:
        state = self.pacing.domain(domain)
        now = self.clock.seconds()
        if state.paused_until > now or self.stopping:
            return
        if state.idle_waiters:
            waiter = state.idle_waiters.pop(0)
            waiter.callback(True)
            return
        if state.active >= state.limit or self.connections >= self.settings.max_connections:
            return
        state.active += 1
        self.connections += 1
        d = defer.ensureDeferred(self._worker(domain, state))
        self.workers.add(d)

        def done(result: Any) -> None:
            state.active -= 1
            self.connections -= 1
            self.workers.discard(d)

        d.addErrback(lambda f: log.failure("delivery worker for {domain} failed", f, domain=domain))
        d.addBoth(done)

    # -- leases ------------------------------------------------------------------------------

    def _renew(self) -> defer.Deferred | None:
        if not self.held or self.storage is None:
            return None
        d = defer.ensureDeferred(self.storage.renew(list(self.held), self.settings.lease_timeout))
        return d.addErrback(lambda f: log.warn("delivery: lease renewal failed: {e}", e=f.getErrorMessage()))

    def _requeue_expired(self) -> defer.Deferred | None:
        if self.storage is None:
            return None

        async def run() -> None:
            count = await self.storage.requeue_expired_leases()
            if count:
                log.info("delivery: requeued {n} job(s) whose lease expired", n=count)
                self.wake()

        return defer.ensureDeferred(run()).addErrback(
            lambda f: log.warn("delivery: lease check failed: {e}", e=f.getErrorMessage()))

    # -- one connection's work ----------------------------------------------------------------

    async def _claim(self, domain: str, limit: int) -> list[ClaimedJob]:
        jobs = await self.storage.claim(domain, min(limit, CLAIM_BATCH), self.owner, self.settings.lease_timeout)
        for job in jobs:
            self.held[job.job] = job
        if jobs:
            log.info("delivery: claimed {n} job(s) for {domain}", n=len(jobs), domain=domain)
        if len(jobs) == min(limit, CLAIM_BATCH):
            self.clock.callLater(0, self.wake)  # more may be due: maybe another connection
        return jobs

    async def _worker(self, domain: str, state: DomainState) -> None:
        jobs = await self._claim(domain, self.settings.max_messages_per_connection)
        if not jobs:
            return
        session = None
        sent = 0
        try:
            try:
                routes = await self.router.routes(domain)
                session = await self.router.connect(routes)
            except AttemptFailed as failure:
                await self.outcomes.commit(self.outcomes.failed(jobs, failure))
                return
            self.sessions.add(session)
            while jobs and not self.stopping:
                jobs, sent = await self.transactions.send(session, domain, state, jobs, sent)
                if jobs or self.stopping or session.closed:
                    break
                remaining = self.settings.max_messages_per_connection - sent
                if remaining <= 0:
                    break
                jobs = await self._claim(domain, remaining)
                if not jobs and await self._wait_for_work(state):
                    jobs = await self._claim(domain, remaining)
        finally:
            leftover = [j for j in jobs if j.job in self.held]
            if leftover and not self.stopping:
                await self._hand_back(leftover)
            if session is not None:
                self.sessions.discard(session)
                await session.quit()

    async def _wait_for_work(self, state: DomainState) -> bool:
        """Keep an idle connection for ``idle_timeout``; True when new jobs are due."""
        if self.stopping:  # _stop has already released the idle waiters
            return False
        waiter: defer.Deferred = defer.Deferred()
        state.idle_waiters.append(waiter)
        waiter.addTimeout(self.settings.idle_timeout, self.clock, onTimeoutCancel=lambda r, t: False)
        try:
            return bool(await waiter)
        finally:
            if waiter in state.idle_waiters:
                state.idle_waiters.remove(waiter)

    async def _hand_back(self, jobs: list[ClaimedJob]) -> None:
        try:
            await self.storage.release(jobs, self.owner)
        finally:
            for job in jobs:
                self.held.pop(job.job, None)
