"""
queue: the delivery queue: storing accepted messages (group commit), and leasing their jobs.

JOB
    :meth:`QueueStore.enqueue` stores a message, its compressed body and one delivery job
    per recipient in one script, *unsettled* (mailrelay.store.settlement confirms or
    cancels it); the enqueue calls of one reactor turn share one script call (a group
    commit), which also carries the settlements waiting to be sent. With ``[submission]
    dedupe_window`` a message whose Message-ID its user queued within the window is not
    stored again. Delivery then finds due domains, leases jobs (:meth:`QueueStore.claim`,
    with the recipient's suppression entry and the body in the same call), records each
    attempt's outcome, renews leases, and hands jobs back (:meth:`QueueStore.release`;
    expired leases: :meth:`QueueStore.requeue_expired_leases`).

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P msg:<id>``          HASH   one accepted message: sender, user, client, received_at
                                   (ms), size, tag, metadata (JSON), from/to/cc/subject/
                                   message_id, rcpt_count, status, unsettled (the owner,
                                   until settled), and per recipient i: ``rcpt:<i>``,
                                   ``state:<i>``, ``attempts:<i>``, ``owner:<i>`` (while
                                   leased), ``last:<i>``.
    ``P body:<id>``         STRING the message as it will be delivered, zlib-compressed.
    ``P queue:domains``     ZSET   destination domains by earliest due time (ms).
    ``P queue:d:<domain>``  ZSET   delivery jobs ``<id>.<i>`` of a domain, by due time (ms).
    ``P queue:leases``      ZSET   jobs being delivered, by lease expiry (ms).
    ``P dedupe:<user>:<sha256 of the Message-ID>``  STRING the id queued for that
                                   Message-ID, for ``[submission] dedupe_window``.
    The scripts also write the message's ``P timeline:<id>``, its search indexes and
    counters (``P idx:...``: mailrelay.store.tracking reads them), ``P events``, and
    ``P queue:unsettled`` (mailrelay.store.settlement); they read ``P suppressed`` and
    ``P suppressed:version`` (mailrelay.store.suppression).
    Scripts: enqueue.lua, enqueue_batch.lua, dedupe_enqueue.lua, claim.lua, record.lua,
    requeue.lua, renew.lua.

SECURITY
    Trusts Redis. A write that arrives late (after DEADLINE_SHARE of ``[redis] timeout``,
    on Redis's clock) is refused by the script, and one whose outcome is unknown is
    cancelled: a message whose client was told 451 is never delivered.

STANDARDS
    RFC 5321 (a job per recipient; the sender's responsibility once 250 is sent); zlib
    (RFC 1950) for stored bodies.

DIAGNOSTICS
    :class:`~mailrelay.store.errors.StorageUnavailable` (no answer within ``[redis]
    timeout``, a lost connection, WAIT short of ``min_replicas``, a duplicate whose first
    copy is not settled yet) and :class:`~mailrelay.store.errors.StorageFull` (Redis
    refused writes: OOM), which submission turns into 451 / 452.

CONFIGURATION
    ``[redis]`` timeout, min_replicas, min_replicas_timeout; ``[tracking]`` retention,
    content_retention; ``[submission] dedupe_window`` (the window, passed by submission).
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer

from mailrelay.store.errors import NotSent, StorageError, StorageFull, StorageUnavailable
from mailrelay.store.events import COMPACT_JSON, Event
from mailrelay.store.scripts import (ENQUEUE_ARGV, ENQUEUE_KEYS, ENQUEUE_SHARED_ARGV, RECORD_ARGV, RECORD_PREFIXES,
                                     SCRIPTS, SETTLE_ARGV, ordered, position)
from mailrelay.store.settlement import SettlementStore
from mailrelay.store.records import Suppression
from mailrelay.store.suppression import SuppressionStore
from mailrelay.timefmt import rfc3339

CLAIM_SCRIPT = SCRIPTS["claim"]
DEDUPE_ENQUEUE_SCRIPT = SCRIPTS["dedupe_enqueue"]
ENQUEUE_BATCH_SCRIPT = SCRIPTS["enqueue_batch"]
ENQUEUE_SCRIPT = SCRIPTS["enqueue"]
RECORD_SCRIPT = SCRIPTS["record"]
RENEW_SCRIPT = SCRIPTS["renew"]
REQUEUE_SCRIPT = SCRIPTS["requeue"]

#: zlib level for stored bodies: fast, and text shrinks to about a third.
BODY_COMPRESSION = 1

#: Share of ``[redis] timeout`` after which the enqueue script refuses to
#: store (measured on Redis's clock): a write that arrives late, e.g. replayed
#: after an outage, is never stored once its client has been told 451.
DEADLINE_SHARE = 0.8

#: ClaimedJob.suppression when the suppression list was not read for the job.
NOT_LOOKED_UP: Any = type("NotLookedUp", (), {"__repr__": lambda self: "NOT_LOOKED_UP"})()
#: At most this many messages, and about this many bytes of their stored bodies, per call of
#: the group commit (ENQUEUE_BATCH_SCRIPT): a larger batch is split over several calls.
ENQUEUE_BATCH_MAX = 64
ENQUEUE_BATCH_BYTES = 4 * 1024 * 1024
#: Index of the compressed body in ENQUEUE_SCRIPT's arguments.
_BODY_ARG = position(ENQUEUE_ARGV, "body")
#: ENQUEUE_SCRIPT's arguments every message shares, sent once per ENQUEUE_BATCH_SCRIPT call
#: (contiguous: see mailrelay.store.scripts), and the count of the others before them.
_SHARED_ARGS = slice(position(ENQUEUE_ARGV, ENQUEUE_SHARED_ARGV[0]),
                     position(ENQUEUE_ARGV, ENQUEUE_SHARED_ARGV[-1]) + 1)

#: Stored (compressed) bytes of bodies that one claim returns with its jobs, in all.
CLAIM_BODY_BUDGET = 256 * 1024  # 50 messages of 5 KiB compressed; x max_connections at worst


@dataclass
class ClaimedJob:
    """A delivery job this daemon holds a lease on."""

    job: str            # "<message id>.<recipient index>"
    message_id: str
    rcpt: int
    sender: str
    recipient: str
    attempts: int
    received_at_ms: int
    domain: str
    #: Filled by Storage.claim: the recipient's Suppression (None: not suppressed;
    #: NOT_LOOKED_UP: unknown), and the message's stored (compressed) body, or None (not read).
    suppression: Any = field(default=NOT_LOOKED_UP, compare=False, repr=False)
    body: bytes | None = field(default=None, compare=False, repr=False)


def new_message_id() -> str:
    """A unique, time-ordered message id: 12 hex digits of ms time + 8 random."""
    return f"{int(time.time() * 1000):012x}{os.urandom(4).hex()}"



def compress_body(content: bytes) -> bytes:
    """
    A message body as stored: zlib (level BODY_COMPRESSION) with a window no larger than the
    body needs and memLevel 6: setting up the default 32 KiB window and memLevel 8's hash
    table costs more than compressing a few KiB (measured: 2 KiB of text in 17 us instead of
    60, same size). ``zlib.decompress`` reads the window size from the stream's header.
    """
    wbits = min(15, max(9, len(content).bit_length()))
    compressor = zlib.compressobj(BODY_COMPRESSION, zlib.DEFLATED, wbits, 6)
    return compressor.compress(content) + compressor.flush()


@dataclass
class NewMessage:
    """A message accepted by submission, ready to be queued."""

    sender: str
    recipients: list[str]
    content: bytes
    id: str = field(default_factory=lambda: new_message_id())
    user: str | None = None
    client: str | None = None
    tag: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)  # from, to, cc, subject, message_id



class QueueStore(SettlementStore, SuppressionStore):
    """Storing messages (group commit, de-duplication) and leasing their delivery jobs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # messages waiting for this reactor turn's ENQUEUE_BATCH_SCRIPT call: (keys, args, waiter)
        self._enqueue_batch: list[tuple[list[str], list[Any], defer.Deferred]] = []

    # -- submission ------------------------------------------------------------------

    async def enqueue(self, message: NewMessage,
                      dedupe: tuple[str | None, str, float] | None = None) -> str:
        """
        Store a message and one delivery job per recipient, atomically, and return its id.
        The message is stored *unsettled*: nothing can claim its jobs until the caller
        settles its acknowledgement, :meth:`confirm` once the 250 is sent (or :meth:`cancel`
        if it is not sent after all); a daemon that dies before settling leaves it to the
        sweeper (:meth:`sweep_unsettled`), which confirms it. Raises StorageUnavailable or
        StorageFull; in both cases the message is not queued and will not be delivered: a
        late write is refused by the script, and one whose outcome is unknown (no reply in
        time, a lost connection, WAIT short of ``min_replicas``) is cancelled here, as soon
        as Redis answers.
        ``dedupe`` = (user, Message-ID, window seconds): when that user queued a message
        with that Message-ID within the window, nothing is stored and the id of that
        message is returned instead (see "cluster and data version"); StorageUnavailable
        while that message is still unsettled.
        """
        message_id = message.id
        keys = self.keys
        script_keys = ordered(ENQUEUE_KEYS, msg=keys.msg(message_id), body=keys.body(message_id),
                              unsettled=keys.unsettled, events=keys.events,
                              timeline=keys.timeline(message_id), suppressed_version=keys.suppressed_version,
                              time_index=keys.time_index, queued_status_index=keys.status_index("queued"))
        rcpt_args: list[Any] = []
        at = rfc3339(time.time())
        detail = "Accepted for delivery" + (f" from user {message.user}" if message.user else "")
        for index, rcpt in enumerate(message.recipients):
            event = Event(type="queued", at=at, recipient=rcpt, rcpt=index, detail=detail)
            rcpt_args += [rcpt, event.to_json()]
        fields = {
            "sender": message.sender,
            "user": message.user or "",
            "client": message.client or "",
            "size": str(len(message.content)),
            "tag": message.tag,
            "metadata": COMPACT_JSON.encode(message.metadata) if message.metadata else "{}",
        }
        for name, value in message.summary.items():
            if isinstance(value, str):
                fields[name] = value
            else:
                fields[name] = "[]" if value == [] else COMPACT_JSON.encode(value)
        deadline = time.time() * 1000 + self.clock_offset_ms + self.timeout * 1000 * DEADLINE_SHARE
        args = ordered(ENQUEUE_ARGV, id=message_id, deadline_ms=str(int(deadline)), owner=self.owner,
                       **keys.names(SETTLE_ARGV), retention_s=int(self.retention),
                       body_ttl_s=int(self.body_ttl), tag=message.tag, fields=COMPACT_JSON.encode(fields),
                       body=compress_body(message.content))
        args += rcpt_args
        script = ENQUEUE_SCRIPT
        if dedupe is not None:
            script = DEDUPE_ENQUEUE_SCRIPT
            script_keys, args = self._dedupe_call(script_keys, args, dedupe)
        changes_when_sent = self._suppression_changes
        try:
            if self.min_replicas:
                call = self._timed(defer.ensureDeferred(self._eval_and_wait(script_keys, args, script)),
                                   self.timeout + self.replica_timeout_ms / 1000)
            elif dedupe is None:
                call = self._enqueue_batched(script_keys, args)
            else:
                call = self._timed(self._eval(script, script_keys, args), self.timeout)
        except Exception as e:  # nothing sent (e.g. not connected, text that is not UTF-8)
            raise StorageUnavailable(str(e) or type(e).__name__) from None
        try:
            if self.min_replicas:
                result, replicas = await call
            else:
                result, replicas = await call, None
        except Exception as e:
            if not isinstance(e, NotSent) and not (isinstance(e, StorageError) and e.replied):
                # No answer: the script may have run (its reply is late, or was lost with
                # the connection), and whatever it stored must not be delivered.
                self.cancel(message_id)
            if isinstance(e, defer.TimeoutError):
                raise StorageUnavailable("Redis did not answer in time") from None
            if isinstance(e, StorageError):
                raise
            if "OOM" in str(e):
                raise StorageFull(str(e)) from None
            raise StorageUnavailable(str(e)) from None
        text = result.decode() if isinstance(result, bytes) else str(result)
        if text.startswith("ERR "):  # from ENQUEUE_BATCH_SCRIPT: a script error (it may have written)
            self.cancel(message_id)
            raise (StorageFull if "OOM" in text else StorageUnavailable)(text[4:])
        if text == "LATE":
            raise StorageUnavailable("Redis ran the write after its deadline; not stored")
        if text.startswith("PENDING:"):
            original = text[8:]
            if self._unsettled.get(original) == "confirm":  # we sent its 250: a duplicate
                return original
            raise StorageUnavailable(f"the message queued earlier with this Message-ID "
                                     f"({original}) is not settled yet")
        original = self._duplicate_of(result) if dedupe is not None else None
        if original is not None:  # nothing stored; with min_replicas the WAIT covered it
            if self.min_replicas and (replicas is None or int(replicas) < self.min_replicas):
                raise StorageUnavailable(
                    f"only {replicas} of {self.min_replicas} replicas confirmed {original}")
            return original
        status, _, version = text.partition(" ")
        if status != "OK":
            raise StorageUnavailable(f"unexpected reply {result!r}")
        self._saw_suppressions_version(version, changes_when_sent)
        if self.min_replicas and (replicas is None or int(replicas) < self.min_replicas):
            self.cancel(message_id)
            raise StorageUnavailable(
                f"only {replicas} of {self.min_replicas} replicas confirmed the write")
        return message_id

    def _enqueue_batched(self, keys: list[str], args: list[Any]) -> defer.Deferred:
        """
        ENQUEUE_SCRIPT's reply for one message, from one ENQUEUE_BATCH_SCRIPT call made at the
        end of this reactor turn for every message that finished its DATA in this turn (a
        group commit: the 20 sessions of a busy server share one Redis call, its fsync and
        its reply, instead of one each). Nothing waits for a batch to fill: a message alone
        in its turn is sent alone, one turn later.
        """
        waiter: defer.Deferred = defer.Deferred()
        self._enqueue_batch.append((keys, args, waiter))
        if len(self._enqueue_batch) == 1:
            from twisted.internet import reactor
            reactor.callLater(0, self._send_enqueue_batch)
        return waiter

    def _send_enqueue_batch(self) -> None:
        batch, self._enqueue_batch = self._enqueue_batch, []
        call: list[tuple[list[str], list[Any], defer.Deferred]] = []
        size = 0
        for item in batch:  # calls of at most ENQUEUE_BATCH_MAX messages and ~_BYTES of bodies
            body_size = len(item[1][_BODY_ARG])
            if call and (len(call) == ENQUEUE_BATCH_MAX or size + body_size > ENQUEUE_BATCH_BYTES):
                self._send_enqueue_call(call)
                call, size = [], 0
            call.append(item)
            size += body_size
        self._send_enqueue_call(call)

    def _send_enqueue_call(self, batch: list[tuple[list[str], list[Any], defer.Deferred]]) -> None:
        """
        One ENQUEUE_BATCH_SCRIPT call for these messages, each waiter fired with its result.
        The settlements waiting to be sent (:meth:`confirm`, :meth:`cancel`) ride on it.
        """
        settlements = self._take_settlements()
        all_keys: list[str] = self._settle_keys()  # see the script
        all_args: list[Any] = [str(value) for value in batch[0][1][_SHARED_ARGS]]  # see the script
        all_args.append(str(2 * len(settlements)))
        for message_id, action in settlements:
            all_args += [action, message_id]
        for keys, args, _ in batch:
            all_keys += keys
            own = args[:_SHARED_ARGS.start] + args[_SHARED_ARGS.stop:]
            all_args += [str(len(keys)), str(len(own)), *own]
        try:
            d = self._timed(self._eval(ENQUEUE_BATCH_SCRIPT, all_keys, all_args), self.timeout)
        except Exception as e:  # e.g. txredisapi's "Not connected", or one message's unencodable text
            self._return_settlements(settlements)
            if len(batch) > 1:  # each message alone: one message's fault stays its own
                for item in batch:
                    self._send_enqueue_call([item])
                return
            settlements = []
            d = defer.fail(NotSent(str(e) or type(e).__name__))

        def replied(results: list[Any]) -> None:
            if not isinstance(results, list) or len(results) != len(batch) + len(settlements):
                error = b"ERR unexpected reply %r" % (results,)
                results = [error] * len(batch)
                if settlements:
                    self._settle_failed(settlements, StorageUnavailable(error.decode("utf-8", "replace")))
            elif settlements:
                self._settled(settlements, results[len(batch):])
            for (_, _, waiter), result in zip(batch, results):
                waiter.callback(result)

        def failed(failure: Any) -> None:
            if settlements:
                self._settle_failed(settlements, failure)
            for _, _, waiter in batch:
                waiter.errback(failure)

        d.addCallbacks(replied, failed)
        if settlements:
            self._track_settle_call(d)


    # -- submission de-duplication ([submission] dedupe_window) --

    def dedupe_key(self, user: str | None, message_id_header: str) -> str:
        """``P dedupe:<user>:<sha256 of the Message-ID>`` (see Keys.dedupe)."""
        return self.keys.dedupe(user, message_id_header)

    def _dedupe_call(self, keys: list[str], args: list[Any],
                     dedupe: tuple[str | None, str, float]) -> tuple[list[str], list[Any]]:
        """The enqueue script's keys and arguments extended for DEDUPE_ENQUEUE_SCRIPT."""
        user, message_id_header, window = dedupe
        return ([*keys, self.dedupe_key(user, message_id_header)],
                [*args, max(1, int(window * 1000))])

    @staticmethod
    def _duplicate_of(result: Any) -> str | None:
        """The id of the message already queued, from a DEDUPE_ENQUEUE_SCRIPT reply."""
        text = result.decode() if isinstance(result, bytes) else str(result)
        return text[4:] if text.startswith("DUP:") else None

    # -- delivery queue --------------------------------------------------------------------

    async def due_domains(self, limit: int = 100) -> list[str]:
        """Destination domains with jobs due now, earliest first."""
        reply = await self._call("ZRANGEBYSCORE", self.keys.queue_domains, "-inf", self.now_ms(),
                                 "LIMIT", 0, limit)
        return [d.decode() for d in reply]

    async def claim(self, domain: str, limit: int, owner: str, lease_seconds: float,
                    body_budget: int = CLAIM_BODY_BUDGET) -> list[ClaimedJob]:
        """
        Lease up to ``limit`` due jobs of ``domain`` for ``owner``. In the same call, each
        job gets its recipient's suppression entry (``ClaimedJob.suppression``) and, up to
        ``body_budget`` stored bytes in all, its message's body (``ClaimedJob.body``, on the
        first job of each message): sending a batch then needs no further reads.
        """
        now = self.now_ms()
        keys = [self.keys.queue_domains, self.keys.domain_queue(domain), self.keys.leases, self.keys.suppressed]
        reply = await self._eval(CLAIM_SCRIPT, keys, [domain, now, limit, now + int(lease_seconds * 1000),
                                                      owner, self.keys.msg_prefix,
                                                      self.keys.body_prefix, body_budget])
        jobs = []
        for k in range(0, len(reply), 7):
            job, sender, rcpt, attempts, received = (v.decode() for v in reply[k:k + 5])
            suppression, body = reply[k + 5], reply[k + 6]
            message_id, _, index = job.partition(".")
            claimed = ClaimedJob(job, message_id, int(index), sender, rcpt, int(attempts),
                                 int(received), domain)
            if suppression is not None:
                claimed.suppression = Suppression.decode(rcpt.lower(), json.loads(suppression)) if suppression else None
            if body is not None:
                claimed.body = body
            jobs.append(claimed)
        return jobs

    async def record(self, job: ClaimedJob, owner: str, state: str, event: Event,
                     due_ms: int | None = None) -> str:
        """
        Record an attempt's outcome: ``deferred`` (back in the queue at ``due_ms``)
        or a final state. Returns "OK", "STOLEN" (another daemon took the lease
        meanwhile; recorded anyway) or "GONE" (the message was deleted).
        """
        return (await self.record_many([(job, state, event, due_ms)], owner))[0]

    async def record_many(self, outcomes: list[tuple[ClaimedJob, str, Event, int | None]],
                          owner: str) -> list[str]:
        """:meth:`record` for several jobs (job, state, event, due_ms) in one call, in order."""
        if not outcomes:
            return []
        keys = self.keys
        args: list[Any] = ordered(RECORD_ARGV, owner=owner, now_ms=self.now_ms(),
                                  **keys.names(RECORD_PREFIXES))
        encode = COMPACT_JSON.encode  # Event.to_json without a method call per event
        for job, state, event, due_ms in outcomes:
            args += [job.job, job.rcpt, state, encode(event.__dict__), "" if due_ms is None else due_ms,
                     job.domain]
        reply = await self._eval(RECORD_SCRIPT, [keys.queue_domains, keys.leases, keys.events], args)
        return [r.decode() if isinstance(r, bytes) else str(r) for r in reply]

    def decompress_body(self, stored: bytes) -> bytes:
        """A body as returned by :meth:`claim` (stored form) as it will be delivered."""
        return zlib.decompress(stored)

    async def release(self, jobs: list[ClaimedJob], owner: str) -> int:
        """Hand leased jobs back to the queue, due now (e.g. at shutdown)."""
        if not jobs:
            return 0
        return int(await self._eval(REQUEUE_SCRIPT, [self.keys.queue_domains, self.keys.leases],
                                    [self.now_ms(), owner, self.keys.msg_prefix,
                                     self.keys.domain_queue_prefix, *[j.job for j in jobs]]))

    async def requeue_expired_leases(self) -> int:
        """Return jobs whose lease expired (their daemon died) to the queue."""
        return int(await self._eval(REQUEUE_SCRIPT, [self.keys.queue_domains, self.keys.leases],
                                    [self.now_ms(), "", self.keys.msg_prefix,
                                     self.keys.domain_queue_prefix]))

    async def renew(self, jobs: list[str], lease_seconds: float) -> int:
        if not jobs:
            return 0
        until = self.now_ms() + int(lease_seconds * 1000)
        return int(await self._eval(RENEW_SCRIPT, [self.keys.leases], [until, *jobs]))
