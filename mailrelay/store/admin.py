"""
admin: queue administration for ``mailrelay queue``: summary, one message, retry, delete.

JOB
    Reads the delivery queue per destination domain (queued, deferred, delivering, the
    oldest message; large queues in chunks of ADMIN_CHUNK jobs, no long script), shows
    one message with its jobs, makes jobs due now (a message, a domain, everything), and
    drops a message's pending jobs (each becomes state ``deleted`` with an event). Every
    call is bounded by ``[redis] timeout`` (:meth:`~mailrelay.store.base.StoreBase.bounded`).

DATA
    Owns no key: it reads and changes the queue of mailrelay.store.queue (``P msg:<id>``,
    ``P queue:domains``, ``P queue:d:<domain>``, ``P queue:leases``, ``P queue:unsettled``,
    ``P timeline:<id>``) and appends to ``P events``.
    Scripts: admin_domain_summary.lua, admin_leases.lua, admin_jobs.lua,
    admin_retry_jobs.lua, admin_retry_domain.lua, admin_delete.lua.

SECURITY
    Whoever runs ``mailrelay queue`` can read the configuration and so Redis: no further
    check here. A deletion keeps the message and its body (evidence), and records who
    did it in the event's detail.

STANDARDS
    None beyond Redis scripting (each change is one atomic script).

DIAGNOSTICS
    StorageUnavailable (``Redis did not answer within Ns``, or Redis's error) for any
    failure; ``LookupError`` when a message has no such recipient.

CONFIGURATION
    ``[redis] timeout``.
"""

from __future__ import annotations

import time
from typing import Any

from mailrelay.store.base import StoreBase
from mailrelay.store.events import Event
from mailrelay.store.keys import recipient_domain
from mailrelay.store.records import AdminMessage, MessageRecord, QueuedJob
from mailrelay.store.scripts import SCRIPTS
from mailrelay.timefmt import rfc3339

ADMIN_DELETE_SCRIPT = SCRIPTS["admin_delete"]
ADMIN_DOMAIN_SUMMARY_SCRIPT = SCRIPTS["admin_domain_summary"]
ADMIN_JOBS_SCRIPT = SCRIPTS["admin_jobs"]
ADMIN_LEASES_SCRIPT = SCRIPTS["admin_leases"]
ADMIN_RETRY_DOMAIN_SCRIPT = SCRIPTS["admin_retry_domain"]
ADMIN_RETRY_JOBS_SCRIPT = SCRIPTS["admin_retry_jobs"]

#: Jobs of one domain queue read per ADMIN_DOMAIN_SUMMARY_SCRIPT call.
ADMIN_CHUNK = 1000


class AdminStore(StoreBase):
    """The operations of ``mailrelay queue``, each bounded by ``[redis] timeout``."""

    async def admin_recipients(self, message_id: str) -> list[str] | None:
        """The recipient addresses of a message by index, or None for an unknown message."""
        reply = await self.bounded(self._call("HGET", self.keys.msg(message_id), "rcpt_count"))
        if reply is None:
            return None
        count = int(reply)
        if not count:
            return []
        fields = [f"rcpt:{i}" for i in range(count)]
        addresses = await self.bounded(self._call("HMGET", self.keys.msg(message_id), *fields))
        return [(a or b"").decode() for a in addresses]

    async def admin_queue_summary(self) -> dict[str, Any]:
        """
        The queue per destination domain: ``{"now_ms": Redis time, "domains": {domain:
        {"queued": n, "deferred": n, "delivering": n, "oldest_ms": received_at of its
        oldest message or None}}, "unsettled": n}``. Queued jobs have had no attempt yet,
        deferred ones at least one; delivering jobs are leased by a daemon; unsettled
        messages (stored, acknowledgement not settled yet) have no job in any queue yet. Large queues are read in
        chunks (no long script), so counts taken while the queue changes are approximate.
        """
        seconds, micros = await self.bounded(self._call("TIME"))
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        raw = await self.bounded(self._call("ZRANGE", self.keys.queue_domains, 0, -1))
        domains: dict[str, dict[str, Any]] = {}

        def entry(domain: str) -> dict[str, Any]:
            return domains.setdefault(domain, {"queued": 0, "deferred": 0, "delivering": 0,
                                               "oldest_ms": None})

        def older(row: dict[str, Any], received: int) -> None:
            if received >= 0 and (row["oldest_ms"] is None or received < row["oldest_ms"]):
                row["oldest_ms"] = received

        msg_prefix = self.keys.msg_prefix
        for domain in (d.decode() for d in raw):
            row = entry(domain)
            start = 0
            while True:
                scanned, queued, deferred, oldest = (int(v) for v in await self.bounded(self._eval(
                    ADMIN_DOMAIN_SUMMARY_SCRIPT, [self.keys.domain_queue(domain)],
                    [msg_prefix, start, ADMIN_CHUNK])))
                row["queued"] += queued
                row["deferred"] += deferred
                older(row, oldest)
                start += scanned
                if scanned < ADMIN_CHUNK:
                    break
        leased = await self.bounded(self._eval(ADMIN_LEASES_SCRIPT, [self.keys.leases], [msg_prefix]))
        for k in range(0, len(leased), 2):
            rcpt, received = leased[k].decode(), int(leased[k + 1])
            row = entry(recipient_domain(rcpt))
            row["delivering"] += 1
            older(row, received)
        unsettled = int(await self.bounded(self._call("ZCARD", self.keys.unsettled)))
        return {"now_ms": now_ms, "domains": domains, "unsettled": unsettled}

    async def admin_message(self, message_id: str) -> AdminMessage | None:
        """Everything about one message (record, timeline, each job's state), or None if unknown."""
        stored = await self.bounded(self._text_hash(self.keys.msg(message_id)))
        if stored is None:
            return None
        message = MessageRecord.decode(message_id, stored)
        recipients = message.recipients
        keys = [self.keys.leases] + [self.keys.domain_queue(recipient_domain(r.address)) for r in recipients]
        status = await self.bounded(self._eval(ADMIN_JOBS_SCRIPT, keys, [message_id]))
        timeline = await self.bounded(self.get_timeline(message_id))
        jobs = []
        for r in recipients:
            due, lease = status[1 + 2 * r.index], status[2 + 2 * r.index]
            jobs.append(QueuedJob(index=r.index, recipient=r.address, state=r.state, attempts=r.attempts,
                                  due_ms=int(float(due)) if due else None,
                                  lease_until_ms=int(float(lease)) if lease else None))
        return AdminMessage(now_ms=int(status[0]), message=message, timeline=timeline, jobs=tuple(jobs),
                            unsettled=stored.get("unsettled") or None)

    async def admin_retry_message(self, message_id: str) -> tuple[int, int] | None:
        """
        Make the message's jobs waiting in domain queues due now. Returns (jobs in the
        queues, jobs whose due time was moved forward), or None for an unknown message.
        """
        recipients = await self.admin_recipients(message_id)
        if recipients is None:
            return None
        if not recipients:
            return 0, 0
        domains = [recipient_domain(r) for r in recipients]
        keys = [self.keys.queue_domains] + [self.keys.domain_queue(d) for d in domains]
        total, moved = await self.bounded(self._eval(ADMIN_RETRY_JOBS_SCRIPT, keys, [message_id, *domains]))
        return int(total), int(moved)

    async def admin_retry_domain(self, domain: str) -> tuple[int, int]:
        """Make every job of a destination domain's queue due now: (jobs, moved forward)."""
        domain = domain.lower()
        keys = [self.keys.queue_domains, self.keys.domain_queue(domain)]
        total, moved = await self.bounded(self._eval(ADMIN_RETRY_DOMAIN_SCRIPT, keys, [domain]))
        return int(total), int(moved)

    async def admin_retry_all(self) -> tuple[int, int]:
        """Make every queued job due now, one domain (one atomic script) at a time."""
        raw = await self.bounded(self._call("ZRANGE", self.keys.queue_domains, 0, -1))
        total = moved = 0
        for domain in raw:
            t, m = await self.admin_retry_domain(domain.decode())
            total, moved = total + t, moved + m
        return total, moved

    async def admin_delete(self, message_id: str, recipient: str | None = None,
                           detail: str = "deleted by administrator") -> int | None:
        """
        Drop a message's pending jobs (waiting in a domain queue or leased), all of them
        or only those of ``recipient`` (compared case-insensitively): each becomes state
        ``deleted`` with a ``deleted`` event in its timeline and in the event stream, in
        one script. Returns the number of jobs dropped, None for an unknown message;
        raises LookupError when the message has no such recipient. Recipients already
        delivered, bounced or expired are left as they are. The message and its body stay.
        """
        recipients = await self.admin_recipients(message_id)
        if recipients is None:
            return None
        chosen = [i for i, r in enumerate(recipients)
                  if recipient is None or r.lower() == recipient.lower()]
        if recipient is not None and not chosen:
            raise LookupError(f"message {message_id} has no recipient {recipient}")
        if not chosen:
            return 0
        at = rfc3339(time.time())
        keys = [self.keys.queue_domains, self.keys.leases, self.keys.msg(message_id),
                self.keys.timeline(message_id), self.keys.events]
        args: list[Any] = [message_id]
        for i in chosen:
            domain = recipient_domain(recipients[i])
            keys.append(self.keys.domain_queue(domain))
            event = Event(type="deleted", at=at, recipient=recipients[i], rcpt=i, detail=detail)
            args += [i, domain, event.to_json()]
        result = int(await self.bounded(self._eval(ADMIN_DELETE_SCRIPT, keys, args)))
        return None if result < 0 else result
