"""
deliverytransactions: one connection's claimed jobs, sent as SMTP transactions.

JOB
    :meth:`Transactions.send` takes the jobs a connection claimed and sends them over its
    session: jobs for suppressed addresses end first with a ``suppressed`` event; the
    others are grouped into one transaction per message with all its recipients of the
    domain (with a bounce domain, one per recipient: each copy gets its recipient's VERP
    return path and token header, see :mod:`mailrelay.services.bounces`); bodies come
    from the claim (or from Redis when the claim's body budget left them out); the next
    message goes out pipelined with this one's data when its body is at hand and no rate
    limit is checked in between. Each recipient's reply becomes an outcome
    (:mod:`mailrelay.services.deliveryoutcomes`), recorded in batches, all of them before
    :meth:`Transactions.send` returns. It stops early, handing the unsent jobs back to
    the caller, when the service stops, the session closes, the rate limit pauses the
    domain or the destination throttles us (:mod:`mailrelay.services.deliverypacing`);
    a connection lost during a transaction defers that transaction's jobs.

SECURITY
    Bodies are dot-stuffed over the whole stream by :mod:`mailrelay.smtp.client` (no
    smuggling). The VERP token header is put on top of the copy for its recipient only,
    so no recipient sees another's token. SMTPUTF8 is asked for only when an address is
    not ASCII. A suppressed address is never sent to, even when it was suppressed after
    the message was queued.

STANDARDS
    RFC 5321 (transactions), RFC 2920 (PIPELINING), RFC 6531 (SMTPUTF8), RFC 1870
    (SIZE, by the client).

DIAGNOSTICS
    None of its own: every job's end is logged by
    :mod:`mailrelay.services.deliveryoutcomes`.

CONFIGURATION
    ``[delivery]``: pipeline_messages, rate_limit_per_domain. Redis data: through
    :mod:`mailrelay.store` (bodies, suppressions).
"""

from __future__ import annotations

from typing import Any, Callable

from mailrelay.config import DeliveryConfig
from mailrelay.services.deliveryattempt import (BOUNCED, DEFERRED, SUPPRESSED, AttemptFailed, describe,
                                                is_throttling, state_for)
from mailrelay.services.deliveryoutcomes import OutcomeBatch, OutcomeRecorder
from mailrelay.services.deliverypacing import DomainPacing, DomainState
from mailrelay.smtp import client as smtpclient
from mailrelay.smtp.client import OutboundMessage
from mailrelay.store import NOT_LOOKED_UP, ClaimedJob
from mailrelay.store.interfaces import DeliveryStorage


class Transactions:
    """Sends a connection's claimed jobs, one SMTP transaction per message (per recipient with VERP)."""

    def __init__(self, settings: DeliveryConfig, storage: DeliveryStorage, clock: Any, recorder: OutcomeRecorder,
                 pacing: DomainPacing, verp: Any, stopping: Callable[[], bool]) -> None:
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.recorder = recorder
        self.pacing = pacing
        self.verp = verp            # bounces.VERP when [bounces] domain is set
        #: Whether the service is stopping: no new transaction starts then.
        self.stopping = stopping

    async def send(self, session: Any, domain: str, state: DomainState,
                   jobs: list[ClaimedJob], sent: int) -> tuple[list[ClaimedJob], int]:
        """Send the claimed jobs, one transaction per message; return the unsent jobs.

        The outcomes are recorded in batches (:class:`OutcomeBatch`), all of them before this
        returns.
        """
        outcomes = self.recorder.batch()
        try:
            return await self._send_groups(session, domain, state, jobs, sent, outcomes)
        finally:
            await outcomes.close()

    async def _send_groups(self, session: Any, domain: str, state: DomainState, jobs: list[ClaimedJob],
                           sent: int, outcomes: OutcomeBatch) -> tuple[list[ClaimedJob], int]:
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
            if self.stopping() or session.closed:
                return [j for g in groups[index:] for j in g], sent
            if not self.pacing.allows(domain, state):
                return [j for g in groups[index:] for j in g], sent
            first = group[0]
            message, following = following, None
            if message is None:
                stored = stored_body(index)
                body = (self.storage.decompress_body(stored) if stored is not None
                        else await self.storage.get_body(first.message_id))
                if body is None:
                    outcomes.add([self.recorder.outcome(job, BOUNCED, "the message content is missing from the queue")
                                  for job in group])
                    continue
                message = outbound(group, body)
            if pipelined and index + 1 < len(groups) and groups[index + 1][0].message_id in bodies:
                following = outbound(groups[index + 1], self.storage.decompress_body(stored_body(index + 1)))
            route = session.route
            try:
                outcome = await session.send(message, following)
            except smtpclient.SMTPClientError as e:
                if self.stopping():  # aborted at shutdown: not an attempt; the service hands the jobs back
                    return [j for g in groups[index:] for j in g], sent
                failure = AttemptFailed(DEFERRED, f"connection to {route.name} failed during the transaction: {e}",
                                        getattr(e, "reply", None), route, session.remote_ip)
                outcomes.add(self.recorder.failed(group, failure))
                return [j for g in groups[index + 1:] for j in g], sent
            sent += 1
            self.pacing.sent(state)
            throttled = False
            results = []
            for job, result in zip(group, outcome.recipients):
                reply = result.reply
                throttled = throttled or is_throttling(reply)
                results.append(self.recorder.outcome(job, state_for(reply), describe(reply, route),
                                                     reply, route, session.remote_ip, outcome.remote_queue_id))
            outcomes.add(results)
            if throttled:
                self.pacing.throttle(domain, state)
                return [j for g in groups[index + 1:] for j in g], sent
        return [], sent

    async def _drop_suppressed(self, jobs: list[ClaimedJob], outcomes: OutcomeBatch) -> list[ClaimedJob]:
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
                ended.append(self.recorder.outcome(job, SUPPRESSED, f"Not sent: the address is suppressed since "
                                                   f"{entry.since or '?'} ({entry.type})"))
        if ended:
            outcomes.add(ended)
        return kept
