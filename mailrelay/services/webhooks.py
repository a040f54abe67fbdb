"""
webhooks: events POSTed as signed JSON to the applications' URLs, retried from Redis.

JOB
    Reads the event stream through a Redis consumer group (one consumer per daemon
    process, so that across daemons each event is handled once), turns every event a
    ``[[webhooks]]`` entry subscribes to into one delivery job per hook (payload built
    from the message, the matching timeline entry and the bounce record), acknowledging
    the event and storing the jobs in one script, then POSTs the jobs with treq. A 2xx
    answer ends a job; anything else (another status, a connection error, a timeout) is
    retried on RETRY_SCHEDULE from the Redis queue, and after the last attempt a
    ``webhook_failed`` event goes into the message's timeline. A restart loses nothing:
    events not yet turned into jobs stay pending in the group (taken over by a live
    daemon after RECLAIM_IDLE), jobs live in Redis, and a job whose daemon died while
    sending it is due again when its lease expires. Delivery is at least once, in no
    particular order.

SECURITY
    The URLs come from the configuration file only (no API creates them, and a job read
    from Redis is sent only to a URL that is still configured): the operator chose them, so
    they are trusted and not checked against :mod:`mailrelay.smtp.destinations` (a hook on
    127.0.0.1 is legitimate). The receivers' answers are untrusted and only
    their status code (and a short excerpt for the log) is used. Redirects are not
    followed; https certificates are verified. With a ``secret`` every request carries
    ``X-Mailrelay-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
    Secrets stay in the configuration, never in Redis.

STANDARDS
    HTTP (RFC 9110) POST of JSON (RFC 8259); the signature is HMAC (RFC 2104)
    with SHA-256.

DIAGNOSTICS
    One log line per attempt: event, message id, recipient, URL, the answer or error,
    the attempt number and the next retry, or "failed for good"; each attempt is also
    counted in ``mailrelay_webhook_attempts_total{result}`` on ``/metrics``.

CONFIGURATION
    ``[[webhooks]]`` url, events, secret. Redis data (through :mod:`mailrelay.store`):
    the ``webhooks`` group on ``events``, ``webhook:queue``, ``webhook:job:<id>``.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import os
import socket
import time
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from mailrelay import __version__, metrics
from mailrelay.config import Config, WebhookConfig
from mailrelay.libcompat import quiet_http_connection_pool
from mailrelay.store import Event
from mailrelay.store.interfaces import WebhookStorage
from mailrelay.store.records import json_object
from mailrelay.store.streams import StreamEntry
from mailrelay.timefmt import rfc3339

log = Logger()

#: Delays (seconds) before the 2nd, 3rd, ... attempt; after the last one the job fails.
RETRY_SCHEDULE = (2.0, 10.0, 60.0, 300.0, 1800.0, 7200.0, 21600.0)
#: Event stream types -> webhook event names (config.WEBHOOK_EVENTS).
EVENT_NAMES = {
    "delivered": "delivered",
    "bounced": "bounced",
    "deferred": "deferred",
    "complained": "spam_complaint",
    "suppressed": "suppressed",
}
#: Event fields copied from the timeline entry into the payload.
EVENT_FIELDS = ("detail", "remote_host", "remote_ip", "smtp_code", "enhanced_code", "response",
                "remote_queue_id")
#: Seconds between polls of the event stream and of the job queue (both are also polled
#: again at once when a batch was full or a request ended).
POLL_INTERVAL = 0.5
#: Events read per XREADGROUP.
READ_BATCH = 100
#: Simultaneous requests per daemon.
MAX_CONCURRENT = 20
#: Seconds one request (connect, answer and body) may take.
REQUEST_TIMEOUT = 10.0
#: A job being sent is leased this long; a dead daemon's job is due again after it.
LEASE = 60.0
#: Events another consumer left unacknowledged this long are taken over; checked this often.
RECLAIM_IDLE = 60.0
RECLAIM_INTERVAL = 10.0
#: Consumers (past processes) with nothing pending are forgotten after this long.
CONSUMER_MAX_IDLE = 86400.0
#: An in-band bounce's record may be stored just after its event: wait this long for it.
BOUNCE_RECORD_WAIT = 5.0
#: Seconds in-flight requests may take to finish at shutdown before they are cancelled.
SHUTDOWN_GRACE = 5.0
#: Bytes of a failed answer kept for the log and the timeline.
ERROR_EXCERPT = 200


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Mailrelay-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float | None = 300,
           now: float | None = None) -> bool:
    """Check an ``X-Mailrelay-Signature`` header (as a receiver would; see docs/webhooks.md)."""
    try:
        parts = dict(item.strip().split("=", 1) for item in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if tolerance is not None and abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _seconds(at: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ")))
    except (TypeError, ValueError):
        return None


def matching_event(timeline: list[dict[str, Any]], stream_type: str, rcpt: int,
                   at_ms: int) -> dict[str, Any] | None:
    """The timeline entry a stream event stands for: same type and recipient index, the
    closest in time (the later one on a tie)."""
    best, best_distance = None, None
    for entry in timeline:
        if entry.get("type") != stream_type or entry.get("rcpt") != rcpt:
            continue
        seconds = _seconds(entry.get("at", ""))
        distance = abs(seconds - at_ms / 1000) if seconds is not None else float("inf")
        if best_distance is None or distance <= best_distance:
            best, best_distance = entry, distance
    return best


def carried_event(fields: dict[str, str]) -> dict[str, Any] | None:
    """The event a stream entry carries itself: a report about a message whose Redis keys were
    released (``late``, record_bounce.lua) has no timeline in Redis to find it in."""
    try:
        event = json.loads(fields.get("event") or "null")
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def bounce_json(record: dict[str, str]) -> dict[str, Any]:
    """A stored bounce record (all strings) with its numbers and flags typed."""
    out: dict[str, Any] = dict(record)
    if out.get("type_code", "").isdigit():
        out["type_code"] = int(out["type_code"])
    if "inactive" in out:
        out["inactive"] = out["inactive"] == "1"
    return out


def pick_bounce(bounces: list[dict[str, str]], recipient: str | None) -> dict[str, str] | None:
    """The record for this recipient among a message's bounce records (latest first wins)."""
    if not bounces:
        return None
    if recipient is None:
        return bounces[-1]
    wanted = recipient.lower()
    for record in reversed(bounces):
        if record.get("recipient", "").lower() == wanted:
            return record
    return None


def build_payload(event: str, entry_id: str, fields: dict[str, str], source: dict[str, Any],
                  bounce: dict[str, str] | None) -> dict[str, Any]:
    """The JSON document POSTed for one event (see docs/webhooks.md)."""
    rcpt = int(fields.get("rcpt", "-1") or -1)
    at_ms = int(fields.get("at", "0") or 0)
    entry = matching_event(source["timeline"], fields.get("type", ""), rcpt, at_ms) or carried_event(fields)
    recipient = source.get("recipient") or (entry or {}).get("recipient") or (bounce or {}).get("recipient") or ""
    metadata = json_object(source.get("metadata")) or {}
    payload: dict[str, Any] = {
        "event": event,
        "event_id": entry_id,
        "message_id": fields.get("msg", ""),
        "recipient": recipient,
        "at": (entry or {}).get("at") or rfc3339(at_ms / 1000),
        "tag": source.get("tag") or "",
        "metadata": metadata,
    }
    if entry is not None:
        for name in EVENT_FIELDS:
            payload[name] = entry.get(name)
    if bounce is not None:
        payload["bounce"] = bounce_json(bounce)
    return payload


class _Excerpt(Protocol):
    """Reads a response body, keeping its first bytes; cancel to drop the connection."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.done: defer.Deferred = defer.Deferred(lambda d: self._abort())

    def dataReceived(self, data: bytes) -> None:
        if len(self.data) < self.limit:
            self.data += data[: self.limit - len(self.data)]

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(bytes(self.data))

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()


class WebhookService(service.Service):
    """Turns events into webhook jobs and sends them (see the module docstring)."""

    name = "webhooks"

    def __init__(self, config: Config, get_storage: Callable[[], WebhookStorage], *, clock: Any = None,
                 reactor: Any = None, retry_schedule: tuple[float, ...] = RETRY_SCHEDULE) -> None:
        from twisted.internet import reactor as default_reactor

        self.reactor = reactor or default_reactor   # network, request timeouts
        self.clock = clock or self.reactor           # polling, due times, retries
        self.config = config
        self.hooks: tuple[WebhookConfig, ...] = tuple(config.webhooks)
        self.get_storage = get_storage
        self.storage: WebhookStorage | None = None
        self.retry_schedule = tuple(retry_schedule)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self.inflight: dict[str, defer.Deferred] = {}   # job id -> its send
        self.requests: dict[str, defer.Deferred] = {}   # job id -> its HTTP exchange
        self._cancelled: set[str] = set()                # requests cut short at shutdown
        self.held: dict[str, dict[str, str]] = {}        # entry id -> fields (waiting for a bounce record)
        self.stopping = False
        self.group_ready = False
        self._loops: list[task.LoopingCall] = []
        self._consuming: defer.Deferred | None = None
        self._consume_again = False
        self._dispatching: defer.Deferred | None = None
        self._dispatch_again = False
        self._next_reclaim = 0.0
        self._client: Any = None
        self._pool: Any = None

    # -- lifecycle -------------------------------------------------------------------------

    async def when_ready(self) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.storage = self.get_storage()
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        quiet_http_connection_pool(self._pool)   # no "Starting factory" line per connection
        self._pool.maxPersistentPerHost = MAX_CONCURRENT
        self._pool.retryAutomatically = False   # a POST is not repeated behind our back
        self._client = HTTPClient(Agent(self.reactor, connectTimeout=REQUEST_TIMEOUT, pool=self._pool))
        try:
            # Before the listeners start: the first messages' events must not be missed.
            await self._create_group()
        except Exception as e:
            log.warn("webhooks: could not create the consumer group yet ({e}); retrying", e=e)
        self._next_reclaim = self.clock.seconds()
        for interval, function in ((POLL_INTERVAL, self.consume), (POLL_INTERVAL, self.dispatch)):
            loop = task.LoopingCall(function)
            loop.clock = self.clock
            loop.start(interval, now=True).addErrback(lambda f: log.failure("webhooks loop failed", f))
            self._loops.append(loop)
        log.info("webhooks: {n} hook(s): {urls}; consumer {owner}", n=len(self.hooks),
                 urls=", ".join(f"{h.url} ({', '.join(h.events)})" for h in self.hooks), owner=self.owner)

    async def _create_group(self) -> None:
        d = defer.ensureDeferred(self.storage.webhook_create_group())
        if await d.addTimeout(self.config.redis.timeout, self.clock):
            log.info("webhooks: created consumer group {group!r} on the event stream",
                     group=self.storage.WEBHOOK_GROUP)
        self.group_ready = True

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self.stopping = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for d in (self._consuming, self._dispatching):
            if d is not None and not d.called:
                await self._quietly(d)
        if self.inflight:
            cancel = self.clock.callLater(SHUTDOWN_GRACE, self._cancel_requests)
            await defer.DeferredList(list(self.inflight.values()), consumeErrors=True)
            if cancel.active():
                cancel.cancel()
        if self._pool is not None:
            await self._pool.closeCachedConnections()

    @staticmethod
    def _quietly(d: defer.Deferred) -> defer.Deferred:
        """Fires (with None) when ``d`` does, leaving ``d``'s result to its own callbacks."""
        waiter: defer.Deferred = defer.Deferred()

        def pass_on(result: Any) -> Any:
            waiter.callback(None)
            return result

        d.addBoth(pass_on)
        return waiter

    def _cancel_requests(self) -> None:
        for job_id, d in list(self.requests.items()):
            self._cancelled.add(job_id)
            d.cancel()

    # -- events -> jobs ----------------------------------------------------------------------

    def consume(self) -> defer.Deferred | None:
        """Turn new events into jobs (the poll loop; again at once while batches are full)."""
        if self.stopping or self.storage is None:
            return None
        if self._consuming is not None:
            self._consume_again = True
            return None
        d = defer.ensureDeferred(self._consume())
        d.addErrback(lambda f: log.warn("webhooks: reading events failed: {e}", e=f.getErrorMessage()))

        def done(result: Any) -> Any:
            self._consuming = None
            return result

        self._consuming = d
        d.addBoth(done)
        return d if not d.called else None

    async def _consume(self) -> None:
        if not self.group_ready:
            await self._create_group()
        if self.held:
            held, self.held = self.held, {}
            await self._handle([StreamEntry(entry_id, fields) for entry_id, fields in held.items()])
        if self.clock.seconds() >= self._next_reclaim:
            self._next_reclaim = self.clock.seconds() + RECLAIM_INTERVAL
            await self._reclaim()
        while not self.stopping:
            self._consume_again = False
            try:
                entries = await self.storage.webhook_read_events(self.owner, READ_BATCH)
            except Exception as e:
                if "NOGROUP" in str(e):   # the stream or group was deleted: start again from now
                    self.group_ready = False
                raise
            await self._handle(entries)
            if len(entries) < READ_BATCH and not self._consume_again:
                break

    async def _reclaim(self) -> None:
        entries = await self.storage.webhook_reclaim_events(self.owner, RECLAIM_IDLE, READ_BATCH)
        if entries:
            log.info("webhooks: took over {n} event(s) left pending by another consumer", n=len(entries))
            await self._handle(entries)
        removed = await self.storage.webhook_prune_consumers(self.owner, CONSUMER_MAX_IDLE)
        if removed:
            log.info("webhooks: forgot {n} idle consumer(s) of past processes", n=removed)

    async def _handle(self, entries: list[StreamEntry]) -> None:
        ack: list[str] = []
        work = []
        for entry in entries:
            entry_id, fields = entry.id, (dict(entry.fields) if entry.fields is not None else None)
            # entry types with no webhook event (queued, bounce_stored, ...) are acknowledged
            event = EVENT_NAMES.get((fields or {}).get("type", ""))
            hooks = [i for i, hook in enumerate(self.hooks) if event in hook.events]
            if fields is None or not hooks or not fields.get("msg"):
                ack.append(entry_id)
            else:
                work.append(self._enqueue(entry_id, fields, event, hooks))
        await self.storage.webhook_ack_events(ack)
        results = await defer.DeferredList([defer.ensureDeferred(w) for w in work], consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        for failure in failures:
            # Left pending: taken over (by this daemon or another) after RECLAIM_IDLE.
            log.warn("webhooks: could not queue an event: {e}", e=failure.getErrorMessage())
        if len(results) > len(failures):
            self.dispatch()

    async def _enqueue(self, entry_id: str, fields: dict[str, str], event: str, hooks: list[int]) -> None:
        message_id = fields["msg"]
        rcpt = int(fields.get("rcpt", "-1") or -1)
        at_ms = int(fields.get("at", "0") or 0)
        bounce_id = fields.get("bounce", "")
        # An in-band bounce (5xx at delivery) names no record in its stream entry: look for it.
        find = fields.get("type") == "bounced" and not bounce_id
        source = await self.storage.webhook_event_source(message_id, rcpt, bounce_id, find_bounce=find,
                                                         at_ms=at_ms)
        if bounce_id:
            bounce = source["bounces"][0] if source["bounces"] else None
        else:
            bounce = pick_bounce(source["bounces"], source["recipient"])
        if find and bounce is None and self.storage.now_ms() - at_ms < BOUNCE_RECORD_WAIT * 1000:
            self.held[entry_id] = fields   # tried again at the next poll
            return
        payload = build_payload(event, entry_id, fields, source, bounce)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        jobs = [{"id": f"{entry_id}.{i}", "url": self.hooks[i].url, "hook": i, "payload": body,
                 "event": event, "message_id": message_id, "rcpt": rcpt, "recipient": payload["recipient"]}
                for i in hooks]
        await self.storage.webhook_enqueue(entry_id, jobs, self.storage.now_ms())

    # -- sending ------------------------------------------------------------------------------

    def dispatch(self) -> defer.Deferred | None:
        """Claim due jobs for the free request slots and send them."""
        if self.stopping or self.storage is None:
            return None
        if self._dispatching is not None:
            self._dispatch_again = True
            return None
        d = defer.ensureDeferred(self._dispatch())
        d.addErrback(lambda f: log.warn("webhooks: claiming jobs failed: {e}", e=f.getErrorMessage()))

        def done(result: Any) -> Any:
            self._dispatching = None
            return result

        self._dispatching = d
        d.addBoth(done)
        return d if not d.called else None

    async def _dispatch(self) -> None:
        while not self.stopping:
            self._dispatch_again = False
            free = MAX_CONCURRENT - len(self.inflight)
            if free <= 0:
                return
            jobs = await self.storage.webhook_claim(self.owner, free, LEASE)
            for job in jobs:
                d = defer.ensureDeferred(self._send(job))
                d.addErrback(lambda f, job=job: log.warn(
                    "webhooks: could not record the outcome of {id} ({e}); it is sent again when its "
                    "lease expires", id=job["id"], e=f.getErrorMessage()))
                if not d.called:
                    self.inflight[job["id"]] = d
                    d.addBoth(lambda _, job=job: self._sent(job))
            if len(jobs) < free and not self._dispatch_again:
                return

    def _sent(self, job: dict[str, Any]) -> None:
        self.inflight.pop(job["id"], None)
        self.dispatch()   # a slot is free

    def _hook_for(self, job: dict[str, Any]) -> WebhookConfig | None:
        """The job's hook in the current configuration (by index, else by URL)."""
        index = job["hook"]
        if 0 <= index < len(self.hooks) and self.hooks[index].url == job["url"]:
            return self.hooks[index]
        return next((h for h in self.hooks if h.url == job["url"]), None)

    async def _send(self, job: dict[str, Any]) -> None:
        storage = self.storage
        hook = self._hook_for(job)
        if hook is None:
            log.warn("webhooks: dropping {event} for {id}: {url} is no longer configured",
                     event=job["event"], id=job["message_id"], url=job["url"])
            await storage.webhook_finish(job, self.owner, "done")
            return
        attempt = job["attempts"] + 1
        body: bytes = job["payload"]
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"mailrelay/{__version__}",
            "X-Mailrelay-Event": job["event"],
            "X-Mailrelay-Event-Id": job["id"].rpartition(".")[0],
            "X-Mailrelay-Attempt": str(attempt),
        }
        if hook.secret:
            headers["X-Mailrelay-Signature"] = sign(hook.secret, int(time.time()), body)
        what = f"webhook {job['event']} for {job['message_id']} to <{job['recipient']}>: {job['url']}"
        try:
            code, excerpt = await self._post(job["id"], job["url"], body, headers)
            error = None if 200 <= code < 300 else f"HTTP {code} {excerpt}".strip()
        except Exception as e:
            if job["id"] in self._cancelled:
                # Cut short at shutdown: not an attempt; due again now for whoever runs next.
                await storage.webhook_finish(job, self.owner, "release", due_ms=storage.now_ms())
                return
            code, error = None, _describe(e)
        # Logged once recorded: a line in the log means Redis has the outcome.
        if error is None:
            await storage.webhook_finish(job, self.owner, "done")
            metrics.WEBHOOK_ATTEMPTS.labels("ok").inc()
            log.info("{what} answered {code} (attempt {n})", what=what, code=code, n=attempt)
            return
        if attempt > len(self.retry_schedule):
            event = Event(type="webhook_failed", at=rfc3339(self.clock.seconds()), recipient=job["recipient"],
                          rcpt=job["rcpt"], detail=f"webhook {job['event']} to {job['url']} failed after "
                                                   f"{attempt} attempts; last error: {error}"[:1000])
            await storage.webhook_finish(job, self.owner, "failed", event=event)
            metrics.WEBHOOK_ATTEMPTS.labels("failed").inc()
            log.warn("{what} failed for good after {n} attempts: {error}", what=what, n=attempt, error=error)
            return
        delay = self.retry_schedule[attempt - 1]
        await storage.webhook_finish(job, self.owner, "retry", due_ms=storage.now_ms() + int(delay * 1000),
                                     attempts=attempt, error=error[:500])
        metrics.WEBHOOK_ATTEMPTS.labels("retry").inc()
        log.info("{what} failed (attempt {n}): {error}; retrying in {delay}s", what=what, n=attempt,
                 error=error, delay=f"{delay:g}")

    async def _post(self, job_id: str, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        """POST ``body``; (status code, the start of the answer) within REQUEST_TIMEOUT."""
        deadline = self.reactor.seconds() + REQUEST_TIMEOUT
        d = self._client.post(url, data=body, headers=headers, allow_redirects=False, unbuffered=True)
        self.requests[job_id] = d
        try:
            response = await d.addTimeout(REQUEST_TIMEOUT, self.reactor)
            reader = _Excerpt(ERROR_EXCERPT)
            self.requests[job_id] = reader.done
            response.deliverBody(reader)
            remaining = max(deadline - self.reactor.seconds(), 0.001)
            data = await reader.done.addTimeout(remaining, self.reactor)
        finally:
            self.requests.pop(job_id, None)
        excerpt = data.decode("utf-8", "replace").replace("\r", " ").replace("\n", " ").strip()
        return response.code, excerpt


def _describe(error: BaseException) -> str:
    """A one-line reason for a failed request."""
    if isinstance(error, defer.TimeoutError):
        return f"no answer within {REQUEST_TIMEOUT:g}s"
    reasons = getattr(error, "reasons", None)   # twisted.web's ResponseFailed, RequestNotSent...
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)
    return str(error) or type(error).__name__
