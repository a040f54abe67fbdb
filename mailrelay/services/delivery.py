"""
delivery: the outbound side, from the Redis queue to the recipients' mail servers.

JOB
    Claims due delivery jobs from the queue with a lease, groups them per
    destination domain, looks up the MX hosts (or uses the smarthost), sends
    each message once per connection with all its recipients of that domain
    (with a bounce domain, once per recipient: each copy gets its recipient's
    VERP return path and token header, see :mod:`mailrelay.services.bounces`), and
    records every attempt as an event: delivered, bounced (5xx, NXDOMAIN,
    null MX), deferred (4xx, connection/TLS/DNS failures; retried on
    ``retry_schedule``) or expired (older than ``max_queue_lifetime``).
    Several daemons share one queue: leases keep them from claiming the same
    job, and a dead daemon's jobs are requeued when its leases expire.
    With ``[bounces] notify_sender`` a refusal sends the original sender a DSN
    (:mod:`mailrelay.mail.dsn`), queued from ``<>`` through the one door into
    the queue (:mod:`mailrelay.services.inject`, source NOTICE).

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
    checked.

STANDARDS
    RFC 5321 (SMTP, section 5 for MX), RFC 7505 (null MX), RFC 3207
    (STARTTLS), RFC 2920 (PIPELINING), RFC 1870 (SIZE), RFC 6152, RFC 6531.

DIAGNOSTICS
    One log line per final outcome and recipient, in the spirit of Postfix's
    mail log: id, to, relay host[ip]:port, delay, attempts, status, reply.

CONFIGURATION
    ``[delivery]``: enabled, lease_timeout, retry_schedule, max_queue_lifetime,
    rate_limit_per_domain, nameservers, mx_port, smarthost (+ username,
    password, tls), tls, max_messages_per_connection, pipeline_messages, idle_timeout,
    concurrency_per_domain, max_connections, helo_name, bind_address,
    connect_timeout, command_timeout, allow_private_destinations. Redis data: through
    :mod:`mailrelay.store` (queue, leases, timelines, events).
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay import metrics
from mailrelay.mail import bounceclassify
from mailrelay.smtp import client as smtpclient
from mailrelay.mail.dsn import make_dsn
from mailrelay.services.bounces import PROOF_DELIVERY, BounceRecorder, ProvenJob, load_verp
from mailrelay.services.inject import Draft, Injector, Source
from mailrelay.config import Config
from mailrelay.smtp.destinations import DestinationPolicy
from mailrelay.smtp.mx import MXResolver, PermanentDNSError, TemporaryDNSError
from mailrelay.smtp.client import OutboundMessage, ReplyInfo
from mailrelay.store import NOT_LOOKED_UP, ClaimedJob, Event
from mailrelay.store.interfaces import DeliveryStorage
from mailrelay.timefmt import rfc3339

log = Logger()

#: Jobs claimed at once for one connection.
CLAIM_BATCH = 50
#: How often the queue is polled for due jobs (a local submission wakes it at once).
POLL_INTERVAL = 1.0
#: Delay of a wake-up after a local submission, so that a burst shares one queue scan.
WAKE_DELAY = 0.005
#: A throttled destination pauses this long at first, doubling up to THROTTLE_MAX.
THROTTLE_PAUSE = 60.0
THROTTLE_MAX = 900.0
#: Seconds in-flight deliveries may take to finish at shutdown.
SHUTDOWN_GRACE = 20.0
#: Outcomes of a connection's batch are recorded together (one Redis call): at the end of the
#: batch, when this many are waiting, or RECORD_DELAY seconds after the first one waited.
RECORD_BATCH = 50
RECORD_DELAY = 0.5

DELIVERED, BOUNCED, DEFERRED, EXPIRED, SUPPRESSED = "delivered", "bounced", "deferred", "expired", "suppressed"


@dataclass
class Route:
    """One host to try: where to connect and how."""

    name: str          # the MX (or smarthost) name, for TLS verification and logs
    address: str       # IP address or host name to connect to
    port: int
    tls: str           # smtpclient tls mode


@dataclass
class DomainState:
    """What this daemon knows about one destination domain."""

    active: int = 0
    limit: int = 10
    paused_until: float = 0.0
    throttle_pause: float = THROTTLE_PAUSE
    last_throttle: float = 0.0
    sent_times: deque = field(default_factory=deque)
    idle_waiters: list = field(default_factory=list)


class AttemptFailed(Exception):
    """A whole attempt failed before per-recipient replies: applies to every job."""

    def __init__(self, state: str, detail: str, reply: ReplyInfo | None = None,
                 route: Route | None = None, remote_ip: str | None = None) -> None:
        super().__init__(detail)
        self.state, self.detail, self.reply, self.route, self.remote_ip = state, detail, reply, route, remote_ip


def is_throttling(reply: ReplyInfo) -> bool:
    """421, or a 4.7.x enhanced code: the destination asks us to slow down."""
    return reply.code == 421 or (reply.code // 100 == 4 and reply.enhanced.startswith("4.7."))


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
        self.resolver = resolver
        #: The door into the queue for notices (DSNs); without one, built at the first notice.
        self.get_injector = get_injector
        self._injector: Injector | None = None
        #: Where direct delivery may connect (the smarthost is not checked).
        self.destinations = DestinationPolicy.from_config(config)
        self.helo_name = self.settings.helo_name or config.hostname
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.domains: dict[str, DomainState] = {}
        self.held: dict[str, ClaimedJob] = {}
        self.connections = 0
        self.workers: set[defer.Deferred] = set()
        self.sessions: set[Any] = set()
        self.stopping = False
        self.verp: Any = None        # bounces.VERP when [bounces] domain is set
        self.recorder: Any = None    # bounces.BounceRecorder
        self._loops: list[task.LoopingCall] = []
        self._ticking = False
        self._tick_again = False
        self._wake_call: Any = None

    # -- lifecycle -------------------------------------------------------------------

    async def when_ready(self) -> None:
        self.storage = self.get_storage()
        self.recorder = BounceRecorder(self.storage, self.config.bounces.max_stored_bounce_size, self.clock,
                                       self.config.bounces.max_unmatched_bounces)
        try:
            self.verp = await load_verp(self.config, self.storage)
        except Exception as e:
            raise RuntimeError(f"cannot read the VERP secret from Redis: {e}") from None
        if self.resolver is None and self.settings.smarthost is None:
            self.resolver = MXResolver(list(self.settings.nameservers) or None, reactor=self.reactor,
                                       destinations=self.destinations)
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
                  + (", private destinations allowed" if self.destinations.allow_private else ""))
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
        for state in self.domains.values():
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
        if self.resolver is not None and hasattr(self.resolver, "close"):
            await self.resolver.close()

    def _abort_sessions(self) -> None:
        for session in list(self.sessions):
            session.abort()

    # -- scheduling ---------------------------------------------------------------------

    def domain(self, name: str) -> DomainState:
        state = self.domains.get(name)
        if state is None:
            state = self.domains[name] = DomainState(limit=self.settings.concurrency_per_domain)
        return state

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
        state = self.domain(domain)
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
                routes = await self.routes(domain)
                session = await self._connect(routes)
            except AttemptFailed as failure:
                await self._fail_all(jobs, failure)
                return
            self.sessions.add(session)
            while jobs and not self.stopping:
                jobs, sent = await self._send_jobs(session, domain, state, jobs, sent)
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

    async def _send_jobs(self, session: Any, domain: str, state: DomainState,
                         jobs: list[ClaimedJob], sent: int) -> tuple[list[ClaimedJob], int]:
        """Send the claimed jobs, one transaction per message; return the unsent jobs.

        The outcomes are recorded in batches (:class:`_Outcomes`), all of them before this
        returns.
        """
        outcomes = _Outcomes(self)
        try:
            return await self._send_groups(session, domain, state, jobs, sent, outcomes)
        finally:
            await outcomes.close()

    async def _send_groups(self, session: Any, domain: str, state: DomainState, jobs: list[ClaimedJob],
                           sent: int, outcomes: "_Outcomes") -> tuple[list[ClaimedJob], int]:
        bodies = {job.message_id: job.body for job in jobs if job.body is not None}
        for job in jobs:
            job.body = None  # kept in ``bodies`` while needed, not with the held job
        jobs = await self._drop_suppressed(jobs, outcomes)
        by_message: dict[str, list[ClaimedJob]] = {}
        for job in jobs:
            # With VERP each recipient has its own return path and token: one transaction each.
            key = job.job if self.verp is not None else job.message_id
            by_message.setdefault(key, []).append(job)
        groups = list(by_message.values())
        last_use = {group[0].message_id: index for index, group in enumerate(groups)}

        def stored_body(index: int) -> bytes | None:
            message_id = groups[index][0].message_id
            stored = bodies.get(message_id)
            if last_use[message_id] == index:
                bodies.pop(message_id, None)
            return stored

        def outbound(group: list[ClaimedJob], body: bytes) -> OutboundMessage:
            first = group[0]
            sender = first.sender
            if self.verp is not None:
                # The recipient's token, in its copy only: a bounce or complaint that returns
                # these headers proves which recipient it is about (mailrelay.services.bounces).
                body = self.verp.header(first.message_id, first.rcpt) + body
                if sender:
                    sender = self.verp.address(first.message_id, first.rcpt)
            recipients = [j.recipient for j in group]
            return OutboundMessage(sender=sender, recipients=recipients, content=body,
                                   smtputf8=not (first.sender.isascii() and all(a.isascii() for a in recipients)))

        # The next message goes out pipelined with this one's data when its body is at hand and
        # no rate limit has to be checked between the two (smtpclient.ClientSession.send).
        pipelined = (self.settings.pipeline_messages
                     and self.settings.rate_limit_per_domain.get(domain) is None)
        following: OutboundMessage | None = None
        for index, group in enumerate(groups):
            if self.stopping or session.closed:
                return [j for g in groups[index:] for j in g], sent
            if not self._rate_allows(domain, state):
                return [j for g in groups[index:] for j in g], sent
            first = group[0]
            message, following = following, None
            if message is None:
                stored = stored_body(index)
                body = (self.storage.decompress_body(stored) if stored is not None
                        else await self.storage.get_body(first.message_id))
                if body is None:
                    outcomes.add([self._outcome(job, BOUNCED, "the message content is missing from the queue")
                                  for job in group])
                    continue
                message = outbound(group, body)
            if pipelined and index + 1 < len(groups) and groups[index + 1][0].message_id in bodies:
                following = outbound(groups[index + 1], self.storage.decompress_body(stored_body(index + 1)))
            route = session.route
            try:
                outcome = await session.send(message, following)
            except smtpclient.SMTPClientError as e:
                if self.stopping:  # aborted at shutdown: not an attempt; _stop hands the jobs back
                    return [j for g in groups[index:] for j in g], sent
                failure = AttemptFailed(DEFERRED, f"connection to {route.name} failed during the transaction: {e}",
                                        getattr(e, "reply", None), route, session.remote_ip)
                outcomes.add([self._outcome(job, failure.state, failure.detail, failure.reply, failure.route,
                                            failure.remote_ip) for job in group])
                return [j for g in groups[index + 1:] for j in g], sent
            sent += 1
            state.sent_times.append(self.clock.seconds())
            throttled = False
            results = []
            for job, result in zip(group, outcome.recipients):
                reply = result.reply
                throttled = throttled or is_throttling(reply)
                results.append(self._outcome(job, self._state_for(reply), self._describe(reply, route),
                                             reply, route, session.remote_ip, outcome.remote_queue_id))
            outcomes.add(results)
            if throttled:
                self._throttle(domain, state)
                return [j for g in groups[index + 1:] for j in g], sent
        return [], sent

    async def _drop_suppressed(self, jobs: list[ClaimedJob], outcomes: "_Outcomes | None" = None) -> list[ClaimedJob]:
        """End jobs for suppressed addresses with a ``suppressed`` event; return the others.

        The claim read the suppression list for most jobs; the others are looked up here.
        """
        unknown = [j.recipient for j in jobs if j.suppression is NOT_LOOKED_UP]
        found = await self.storage.suppressions(unknown) if unknown else {}
        kept = []
        ended = []
        for job in jobs:
            entry = job.suppression
            if entry is NOT_LOOKED_UP:
                entry = found.get(job.recipient.lower())
            if entry is None:
                kept.append(job)
            else:
                ended.append(self._outcome(job, SUPPRESSED, f"Not sent: the address is suppressed since "
                                           f"{entry.get('since')} ({entry.get('type')})"))
        if ended:
            if outcomes is not None:
                outcomes.add(ended)
            else:
                await self._commit(ended)
        return kept

    @staticmethod
    def _state_for(reply: ReplyInfo) -> str:
        if 200 <= reply.code < 300:
            return DELIVERED
        if reply.code >= 500:
            return BOUNCED
        return DEFERRED

    @staticmethod
    def _describe(reply: ReplyInfo, route: Route) -> str:
        if 200 <= reply.code < 300:
            return f"Delivered to {route.name}"
        verdict = "rejected" if reply.code >= 500 else "temporarily refused"
        return f"{route.name} {verdict} the message: {reply.code} {reply.enhanced} {reply.text}".replace("  ", " ")

    # -- rate limits and throttling ------------------------------------------------------------

    def _rate_allows(self, domain: str, state: DomainState) -> bool:
        rate = self.settings.rate_limit_per_domain.get(domain)
        if rate is None:
            return True
        now = self.clock.seconds()
        times = state.sent_times
        while times and times[0] <= now - rate.period:
            times.popleft()
        if len(times) < rate.count:
            return True
        state.paused_until = times[0] + rate.period
        self.clock.callLater(state.paused_until - now, self.wake)
        return False

    def _throttle(self, domain: str, state: DomainState) -> None:
        """Pause the domain, halve its connections; a repeat within the calm period pauses longer."""
        now = self.clock.seconds()
        pause = state.throttle_pause
        state.limit = max(1, state.limit // 2)
        state.paused_until = now + pause
        state.last_throttle = now
        log.info("delivery: {domain} is throttling us: pausing {pause:.0f}s, at most {limit} connection(s)",
                 domain=domain, pause=pause, limit=state.limit)
        state.throttle_pause = min(pause * 2, THROTTLE_MAX)
        self.clock.callLater(pause, self.wake)
        # After the pause, run with fewer connections for a calm period as long again.
        self.clock.callLater(2 * pause, self._recover, domain, now)

    def _recover(self, domain: str, throttled_at: float) -> None:
        """Restore concurrency step by step once a calm period passed without throttling."""
        state = self.domain(domain)
        if state.last_throttle != throttled_at:
            return  # throttled again meanwhile: that throttle schedules its own recovery
        state.limit = min(self.settings.concurrency_per_domain, state.limit * 2)
        state.throttle_pause = THROTTLE_PAUSE
        if state.limit < self.settings.concurrency_per_domain:
            self.clock.callLater(THROTTLE_PAUSE, self._recover, domain, throttled_at)
        self.wake()

    # -- routes and connections --------------------------------------------------------------

    async def routes(self, domain: str) -> list[Route]:
        """Where to send mail for ``domain``, in order; raises AttemptFailed."""
        settings = self.settings
        if settings.smarthost is not None:
            host, port = settings.smarthost
            tls = {"none": "none", "starttls": "required", "tls": "implicit"}[settings.smarthost_tls]
            return [Route(host, host, port, tls)]
        try:
            hosts = await self.resolver.resolve(domain)
        except PermanentDNSError as e:
            raise AttemptFailed(BOUNCED, str(e)) from None
        except TemporaryDNSError as e:
            raise AttemptFailed(DEFERRED, str(e)) from None
        return [Route(h.name, address, settings.mx_port, settings.tls)
                for h in hosts for address in h.addresses]

    async def _connect(self, routes: list[Route]) -> Any:
        """The first route that gives a usable session; raises AttemptFailed (deferred) if none."""
        settings = self.settings
        auth = None
        if settings.smarthost is not None and settings.smarthost_username:
            auth = (settings.smarthost_username, settings.smarthost_password)
        # The resolver has dropped refused addresses; smtpclient checks the one it connects to.
        destinations = self.destinations if settings.smarthost is None else None
        last: AttemptFailed | None = None
        for route in routes:
            modes = [route.tls] + (["none"] if route.tls == "opportunistic" else [])
            for mode in modes:
                try:
                    session = await smtpclient.connect(
                        route.address, route.port, helo_name=self.helo_name, tls=mode,
                        tls_hostname=route.name, bind_address=settings.bind_address or None,
                        connect_timeout=settings.connect_timeout, command_timeout=settings.command_timeout,
                        auth=auth, reactor=self.reactor, destinations=destinations)
                except smtpclient.TLSFailure as e:
                    last = AttemptFailed(DEFERRED, f"TLS with {route.name} failed: {e}", None, route, route.address)
                    continue  # opportunistic: try the same host without TLS
                except smtpclient.SMTPReplyError as e:
                    last = AttemptFailed(DEFERRED, f"{route.name} refused the session: {e}", e.reply, route, route.address)
                    break
                except smtpclient.SMTPClientError as e:
                    last = AttemptFailed(DEFERRED, f"connection to {route.name}[{route.address}]:{route.port} failed: {e}",
                                   None, route, route.address)
                    break
                session.route = route
                return session
        raise last or AttemptFailed(DEFERRED, "no mail host to connect to")

    # -- recording -----------------------------------------------------------------------------

    async def _record_bounce(self, job: ClaimedJob, state: str, detail: str, reply: ReplyInfo | None,
                             route: Route | None) -> None:
        """A refusal at delivery is a bounce too: classify it, record it, maybe suppress."""
        if reply is not None:
            report = bounceclassify.reply_report(job.recipient, reply.code, reply.enhanced or None,
                                                 f"{reply.code} {reply.enhanced} {reply.text}".replace("  ", " "),
                                                 route.name if route else None)
        else:  # no reply: DNS or connection failures
            report = bounceclassify.reply_report(job.recipient, None, None, detail, None)
        if state == EXPIRED and report.type in bounceclassify.SUPPRESSING_TYPES:
            # gave up after temporary failures: not a sign of a dead address
            report = dataclasses.replace(report, type=bounceclassify.TRANSIENT)
        try:
            await self.recorder.record(report, job=ProvenJob(job.message_id, job.rcpt, job.recipient, PROOF_DELIVERY),
                                       raw=b"", source="smtp", final=True)
            if self.config.bounces.notify_sender and job.sender:
                await self._notify_sender(job, report, route)
        except Exception as e:
            log.warn("delivery: could not record the bounce of {job}: {e}", job=job.job, e=e)

    async def _notify_sender(self, job: ClaimedJob, report: Any, route: Route | None) -> None:
        """Queue an RFC 3464 DSN to the original sender (``[bounces] notify_sender``), from ``<>``."""
        body = await self.storage.get_body(job.message_id) or b""
        header_end = body.find(b"\r\n\r\n")
        content = make_dsn(hostname=self.config.hostname, original_sender=job.sender, recipient=job.recipient,
                           message_id=job.message_id, action="failed",
                           status=report.status or "5.0.0", diagnostic=report.diagnostic,
                           remote_mta=route.name if route else None,
                           original_headers=body[: header_end + 2] if header_end >= 0 else b"")
        # through the one door, with the notice's policy: none of the checks meant for applications
        result = await self.injector().inject(Draft(sender="", recipients=[job.sender], content=content, tag="dsn"),
                                              source=Source.NOTICE)
        log.info("{id}: sender non-delivery notification {dsn} queued to <{to}>", id=job.message_id,
                 dsn=result.id, to=job.sender)

    def injector(self) -> Injector:
        """The door into the queue: the daemon's (shared with submission), or this service's own."""
        if self._injector is None:
            self._injector = (self.get_injector() if self.get_injector is not None
                              else Injector(self.config, self.storage, self.clock, on_queued=self.wake_soon))
        return self._injector

    async def _fail_all(self, jobs: list[ClaimedJob], failure: AttemptFailed) -> None:
        await self._record_all(jobs, failure)

    async def _record_all(self, jobs: list[ClaimedJob], failure: AttemptFailed) -> None:
        await self._commit([self._outcome(job, failure.state, failure.detail, failure.reply, failure.route,
                                          failure.remote_ip) for job in jobs])

    def _outcome(self, job: ClaimedJob, state: str, detail: str, reply: ReplyInfo | None = None,
                 route: Route | None = None, remote_ip: str | None = None,
                 remote_queue_id: str | None = None) -> "_Outcome":
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
        return _Outcome(job, state, event, due_ms, detail, reply, route, remote_ip, age)

    async def _commit(self, outcomes: list["_Outcome"]) -> None:
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
                metrics.DELIVERIES.labels(state).inc()
            if state == DELIVERED:
                metrics.DELIVERY_LATENCY.observe(max(o.age, 0.0))
            elif state in (BOUNCED, EXPIRED) and result != "GONE":
                await self._record_bounce(job, state, o.detail, reply, route)
            if result == "STOLEN":
                log.warn("delivery: {job} was also claimed by another daemon after our lease expired", job=job.job)
            relay = f"{route.name}[{o.remote_ip}]:{route.port}" if route else "none"
            reply_text = f"{reply.code} {reply.enhanced} {reply.text}".replace("  ", " ") if reply else o.detail
            log.info("{id}: to=<{to}>, relay={relay}, delay={delay:.1f}, attempts={attempts}, status={status} ({reply})",
                     id=job.message_id, to=job.recipient, relay=relay, delay=o.age, attempts=job.attempts + 1,
                     status=_STATUS_WORDS[state], reply=reply_text)


_STATUS_WORDS = {DELIVERED: "sent", BOUNCED: "bounced", DEFERRED: "deferred", EXPIRED: "expired",
                 SUPPRESSED: "suppressed"}


class _Outcome(NamedTuple):
    """One job's attempt, as recorded and logged."""

    job: ClaimedJob
    state: str
    event: Event
    due_ms: int | None
    detail: str
    reply: ReplyInfo | None
    route: Route | None
    remote_ip: str | None
    age: float


class _Outcomes:
    """
    The outcomes of one connection's batch, recorded a few at a time: in the background when
    RECORD_BATCH are waiting or RECORD_DELAY after the first one (so that a slow server does
    not hold back the events of the messages it already took), and the rest at :meth:`close`,
    which returns once every outcome is recorded (or its recording failed: the job is no
    longer held, so its lease runs out and it is retried; never lost).
    """

    def __init__(self, service: DeliveryService) -> None:
        self.service = service
        self.waiting: list[_Outcome] = []
        self.timer: Any = None
        self.running: set[defer.Deferred] = set()

    def add(self, outcomes: list[_Outcome]) -> None:
        self.waiting += outcomes
        if len(self.waiting) >= RECORD_BATCH:
            self._flush()
        elif self.waiting and self.timer is None:
            self.timer = self.service.clock.callLater(RECORD_DELAY, self._flush)

    def _take(self) -> list[_Outcome]:
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
        d = defer.ensureDeferred(self.service._commit(taken))
        self.running.add(d)
        d.addErrback(lambda f: log.warn("delivery: could not record {n} outcome(s): {e}; the jobs are "
                                        "retried when their lease expires", n=len(taken), e=f.getErrorMessage()))
        d.addBoth(lambda _: self.running.discard(d))

    async def close(self) -> None:
        taken = self._take()
        if self.running:
            await defer.DeferredList(list(self.running), consumeErrors=True)
        await self.service._commit(taken)
