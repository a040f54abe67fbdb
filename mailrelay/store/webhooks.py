"""
webhooks: the webhook service's data: its consumer group on the event stream, and its job queue.

JOB
    Used by mailrelay.services.webhooks. Each daemon process is one consumer of the group
    WEBHOOK_GROUP on ``P events`` (through mailrelay.store.streams, as the archiver's
    group): it reads new events, takes over those a dead daemon left pending, and
    acknowledges the events that need no webhook (entry types it has no webhook event
    for, such as ``bounce_stored``, included). An event that does
    becomes jobs (one per matching hook) in the same script that acknowledges it
    (:meth:`WebhookStore.webhook_enqueue`: exactly once across daemons); jobs are leased
    (:meth:`WebhookStore.webhook_claim`) and finished (done, retry, release, failed) like
    delivery jobs. :meth:`WebhookStore.webhook_event_source` reads what a payload is made
    of in one round trip.

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P events``             STREAM every event (type, msg, rcpt, at), appended by the
                                    other stores' scripts; this store owns its consumer
                                    group WEBHOOK_GROUP (one consumer per daemon process).
    ``P webhook:queue``      ZSET   job ids (``<stream entry id>.<hook index>``) by due time
                                    in ms (while a daemon sends a job: its lease expiry).
    ``P webhook:job:<id>``   HASH   url, hook (index in [[webhooks]]), payload (the JSON
                                    body), attempts, event, message_id, rcpt, recipient,
                                    created (ms), owner (while leased), last_error;
                                    expires after WEBHOOK_JOB_TTL at the latest.
    A failed job appends an event to the message's ``P timeline:<id>``; the payload reads
    ``P msg:<id>``, ``P timeline:<id>``, ``P bounces`` and ``P bounce:<id>``.
    Scripts: webhook_enqueue.lua, webhook_claim.lua, webhook_finish.lua,
    webhook_source.lua.

SECURITY
    Payloads are built from stored data only; the URLs come from the configuration
    (``[[webhooks]]``), never from Redis input.

STANDARDS
    Redis Streams consumer groups (XREADGROUP, XAUTOCLAIM: Redis 6.2 or later, XACK,
    XINFO CONSUMERS).

DIAGNOSTICS
    Failures reach callers as mailrelay.store.errors exceptions; an existing group is
    no error (:meth:`WebhookStore.webhook_create_group` returns False).

CONFIGURATION
    ``[[webhooks]]`` (read by the service).
"""

from __future__ import annotations

import json
from typing import Any

from mailrelay.store.events import Event
from mailrelay.store.scripts import SCRIPTS
from mailrelay.store.streams import StreamEntry, StreamGroupStore

WEBHOOK_CLAIM_SCRIPT = SCRIPTS["webhook_claim"]
WEBHOOK_ENQUEUE_SCRIPT = SCRIPTS["webhook_enqueue"]
WEBHOOK_FINISH_SCRIPT = SCRIPTS["webhook_finish"]
WEBHOOK_SOURCE_SCRIPT = SCRIPTS["webhook_source"]


class WebhookStore(StreamGroupStore):
    """The webhook consumer group on the event stream, and the webhook job queue."""

    #: The consumer group of the webhook service on the event stream.
    WEBHOOK_GROUP = "webhooks"
    #: Job hashes expire after this many seconds at the latest (a safety net: jobs end long before).
    WEBHOOK_JOB_TTL = 7 * 86400

    async def webhook_create_group(self) -> bool:
        """Create the consumer group at the end of the stream (history is not replayed);
        False when it existed already."""
        return await self._group_create(self.WEBHOOK_GROUP, "$")

    async def webhook_read_events(self, consumer: str, count: int) -> list[StreamEntry]:
        """Up to ``count`` new events for this consumer (non-blocking)."""
        return await self._group_read(self.WEBHOOK_GROUP, consumer, count)

    async def webhook_reclaim_events(self, consumer: str, min_idle_seconds: float,
                                     count: int) -> list[StreamEntry]:
        """Take over events other consumers (dead daemons) left unacknowledged for longer
        than ``min_idle_seconds``."""
        return await self._group_take_over(self.WEBHOOK_GROUP, consumer, min_idle_seconds, count)

    async def webhook_ack_events(self, entry_ids: list[str]) -> int:
        """Acknowledge events that need no webhook."""
        return await self._group_ack(self.WEBHOOK_GROUP, entry_ids)

    async def webhook_prune_consumers(self, keep: str, idle_seconds: float) -> int:
        """Forget consumers (past daemon processes) with nothing pending, idle that long."""
        return await self._group_prune_consumers(self.WEBHOOK_GROUP, keep, idle_seconds)

    async def webhook_event_source(self, message_id: str, rcpt: int, bounce_id: str, *,
                                   find_bounce: bool = False, at_ms: int = 0,
                                   window_ms: int = 60_000) -> dict[str, Any]:
        """
        What a webhook payload is made of, in one round trip: ``{"tag", "metadata" (JSON
        text), "recipient"`` (None when the message is no longer retained), ``"timeline"``
        (event dicts), ``"bounces"`` (records as str dicts)}. The bounce is ``bounce_id``'s
        record; with ``find_bounce`` (no id), the message's bounce records stored within
        ``window_ms`` of ``at_ms``.
        """
        keys = [self.keys.msg(message_id), self.keys.timeline(message_id), self.keys.bounces]
        args = [rcpt, bounce_id, self.keys.bounce_prefix, "1" if find_bounce else "",
                at_ms, window_ms, message_id]
        tag, metadata, recipient, timeline, bounces = await self._eval(WEBHOOK_SOURCE_SCRIPT, keys, args)

        def text(value: Any) -> str | None:
            return None if value is None else value.decode()

        return {
            "tag": text(tag), "metadata": text(metadata), "recipient": text(recipient),
            "timeline": [json.loads(item) for item in timeline],
            "bounces": [{r[i].decode(): r[i + 1].decode() for i in range(0, len(r), 2)} for r in bounces],
        }

    async def webhook_enqueue(self, entry_id: str, jobs: list[dict[str, Any]], due_ms: int) -> int:
        """
        Acknowledge the event ``entry_id`` and queue its webhook jobs (dicts with id, url,
        hook, payload, event, message_id, rcpt, recipient), atomically. Returns the number
        of jobs queued, or -1 when another consumer had already handled the event.
        """
        args: list[Any] = [self.WEBHOOK_GROUP, entry_id, due_ms, self.keys.webhook_job_prefix,
                           self.WEBHOOK_JOB_TTL, self.now_ms()]
        for job in jobs:
            args += [job["id"], job["url"], job["hook"], job["payload"], job["event"],
                     job["message_id"], job["rcpt"], job["recipient"]]
        return int(await self._eval(WEBHOOK_ENQUEUE_SCRIPT, [self.keys.events, self.keys.webhook_queue], args))

    async def webhook_claim(self, owner: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due webhook jobs for ``owner``: dicts with id, url, hook
        (int), payload (bytes), attempts (int), event, message_id, rcpt (int), recipient."""
        now = self.now_ms()
        reply = await self._eval(WEBHOOK_CLAIM_SCRIPT, [self.keys.webhook_queue],
                                 [now, limit, now + int(lease_seconds * 1000), owner,
                                  self.keys.webhook_job_prefix])
        jobs = []
        for k in range(0, len(reply), 9):
            row = reply[k:k + 9]
            jobs.append({
                "id": row[0].decode(), "url": row[1].decode(), "hook": int(row[2] or -1),
                "payload": row[3], "attempts": int(row[4] or 0), "event": row[5].decode(),
                "message_id": row[6].decode(), "rcpt": int(row[7] or -1), "recipient": row[8].decode(),
            })
        return jobs

    async def webhook_finish(self, job: dict[str, Any], owner: str, outcome: str, *,
                             due_ms: int | None = None, attempts: int = 0, error: str = "",
                             event: Event | None = None) -> str:
        """
        End a leased job's attempt: ``done`` (deleted), ``retry`` (due at ``due_ms``, with
        ``attempts`` and ``error``), ``release`` (due at ``due_ms``, attempt not counted) or
        ``failed`` (deleted; ``event`` appended to the message's timeline while it is
        retained). Returns "OK", "GONE" or "STOLEN" (another daemon leased it since).
        """
        keys = [self.keys.webhook_queue, self.keys.webhook_job(job["id"]),
                self.keys.timeline(job["message_id"]), self.keys.events]
        args = [job["id"], owner, outcome, "" if due_ms is None else due_ms, attempts, error,
                event.to_json() if event is not None else "", job["message_id"], job["rcpt"],
                self.now_ms()]
        result = await self._eval(WEBHOOK_FINISH_SCRIPT, keys, args)
        return result.decode() if isinstance(result, bytes) else str(result)

