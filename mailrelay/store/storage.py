"""
storage: every Redis key mailrelay uses, the calls of its Lua scripts (their text is in
mailrelay/store/lua/, read by mailrelay.store.scripts), and the connection to Redis.

JOB
    Owns the data model in Redis; services call the methods of :class:`Storage`
    and never name a key. Data flows one way: submission -> queue -> delivery
    -> events -> tracking.

SECURITY
    Trusts the Redis it is configured with (managed: a unix socket in
    state_dir, mode 0700; external: URL with optional password, or Sentinel).

DATA (all under ``[redis] key_prefix``, written below as ``P``; docs/architecture.md
has the same table)
    ``P msg:<id>``          HASH   one accepted message: sender, user, client, received_at
                                   (ms), size, tag, metadata (JSON), from/to/cc/subject/
                                   message_id, rcpt_count, status, unsettled (the
                                   owner, until settled), and per recipient i:
                                   ``rcpt:<i>``, ``state:<i>``, ``attempts:<i>``,
                                   ``owner:<i>`` (while leased), ``last:<i>``.
    ``P body:<id>``         STRING the message as it will be delivered, zlib-compressed.
    ``P timeline:<id>``     LIST   the message's events (JSON, :class:`Event`), oldest first.
    ``P queue:domains``     ZSET   destination domains by earliest due time (ms).
    ``P queue:d:<domain>``  ZSET   delivery jobs ``<id>.<i>`` of a domain, by due time (ms).
    ``P queue:leases``      ZSET   jobs being delivered, by lease expiry (ms).
    ``P queue:unsettled``   ZSET   messages stored but not settled yet (their jobs are in no
                                   queue until confirmed; the hash's ``unsettled`` field
                                   names the daemon that stored them), by time stored (ms).
    ``P events``            STREAM every event (type, msg, rcpt, at), for webhooks.
    ``P idx:time``, ``P idx:rcpt:<address>``, ``P idx:tag:<tag>``, ``P idx:status:<status>``
                            ZSET   search indexes: message ids by received time (ms).
    ``P idx:stats:m:<minute>``, ``P idx:stats:h:<hour>`` HASH  event counters for charts.
    ``P bounce:<id>``, ``P bounce:raw:<id>``  HASH, STRING  bounce records, raw bounces.
    ``P bounces``, ``P bounces:unmatched``     ZSET   bounce ids by time.
    ``P suppressed``        HASH   suppressed address -> JSON (since, type, reason, bounce_id,
                            message_id, proof: how the bounce proved its recipient).
    ``P suppressed:version`` STRING change counter of ``P suppressed``, incremented by every
                            change made through this module (RCPT's cache of "not suppressed").
    ``P verp:secret``       STRING the shared VERP HMAC key (when not configured).
    ``P rate:user:<user>:<window>`` STRING per-user sending counters.
    ``P auth:fail:<client>`` ZSET  SMTP AUTH checks counted as failures (refunded on
                            success) of a client address (an IPv6 /64), one member per
                            check, by time (ms); shared by all daemons, expires after
                            ``[submission] auth_failures_per_ip``'s period.
    Records, timelines and index entries expire after ``[tracking] retention``;
    bodies after ``content_retention`` (at least the queue lifetime plus a day).
    Scripts touch keys named inside them (message hashes, indexes): a single Redis
    primary (with replicas and Sentinel) is supported, Redis Cluster is not.

STANDARDS
    The Redis protocol (RESP 2) and its scripting commands (EVAL, EVALSHA, SCRIPT LOAD:
    Lua 5.1, run atomically); RFC 3339 times in stored events; Redis Sentinel's
    protocol for following a primary (``+switch-master``, ``SENTINEL
    get-master-addr-by-name``).

DIAGNOSTICS
    :class:`StorageUnavailable` (no answer within ``[redis] timeout``, or WAIT
    short of ``min_replicas``) and :class:`StorageFull` (Redis refused writes:
    OOM) are the two failures callers turn into 451 / 452.
    Settling acknowledgements (a message is stored unsettled, then confirmed or cancelled):
    ``storage: cancelled <id>: it was stored, but its client was answered 451``;
    ``could not settle N acknowledgement(s) (...); retrying`` (Redis unreachable);
    ``could not cancel <id> ...: it will be delivered`` (it was confirmed first: a
    partition longer than the heartbeat TTL); the sweeper's ``confirmed N acknowledged
    message(s) left unsettled by <daemon> (no heartbeat: stopped or died)``.
    At start, ``Redis SCRIPT LOAD failed (...): scripts are loaded when first run``
    (harmless: a script Redis does not have is sent by EVAL; see mailrelay.store.scripts).

CONFIGURATION
    ``[redis]`` url, sentinels, master_name, key_prefix, min_replicas,
    min_replicas_timeout, timeout; ``[tracking]`` retention, content_retention.
"""

from __future__ import annotations

import json
import os
import socket
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay import libcompat
from mailrelay import netio
from mailrelay.config import Config, RedisAddress, parse_redis_url
from mailrelay.store.scripts import (ENQUEUE_ARGV, ENQUEUE_SHARED_ARGV, SCRIPTS, Script,
                                     evalsha, load_all, ordered, position)
from mailrelay.timefmt import rfc3339

log = Logger()

#: zlib level for stored bodies: fast, and text shrinks to about a third.
BODY_COMPRESSION = 1

#: Events kept in the stream (approximate trimming).
EVENTS_MAXLEN = 1_000_000

#: Share of ``[redis] timeout`` after which the enqueue script refuses to
#: store (measured on Redis's clock): a write that arrives late, e.g. replayed
#: after an outage, is never stored once its client has been told 451.
DEADLINE_SHARE = 0.8

#: Settling acknowledgements (Storage.confirm/cancel): a confirmation waits up to
#: SETTLE_DELAY seconds for a group commit call to ride on; a settlement call that fails is
#: sent again every SETTLE_RETRY seconds until Redis answers.
SETTLE_DELAY = 0.02
SETTLE_RETRY = 1.0
#: The sweeper confirms a message unsettled for this many seconds even when its daemon still
#: has a heartbeat: a live daemon that reaches Redis settles within milliseconds (retrying
#: every SETTLE_RETRY seconds), so this is a safety net, e.g. for a settlement lost with a
#: primary that failed before replicating it.
UNSETTLED_MAX_AGE = 60.0
#: Unsettled messages examined per sweep.
SWEEP_LIMIT = 1000


class StorageError(Exception):
    """Base of the storage failures callers map to SMTP replies."""


class StorageUnavailable(StorageError):
    """Redis did not store the data in time; nothing was stored (451 4.3.0)."""


class StorageFull(StorageError):
    """Redis refuses writes because it is out of memory (452 4.3.1)."""


@dataclass(frozen=True)
class AuthClaim:
    """:meth:`Storage.claim_auth_check`: the claim's token, or None and the seconds to wait."""

    token: str | None
    retry_after: float


class _NotSent(StorageUnavailable):
    """The call could not be sent at all (nothing can have been stored)."""


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


# -- Lua scripts ------------------------------------------------------------------

# The scripts are in mailrelay/store/lua/<name>.lua (each opens with its KEYS and ARGV);
# mailrelay.store.scripts reads them and runs them (EVALSHA, EVAL on NOSCRIPT).
ADMIN_DELETE_SCRIPT = SCRIPTS["admin_delete"]
ADMIN_DOMAIN_SUMMARY_SCRIPT = SCRIPTS["admin_domain_summary"]
ADMIN_JOBS_SCRIPT = SCRIPTS["admin_jobs"]
ADMIN_LEASES_SCRIPT = SCRIPTS["admin_leases"]
ADMIN_RETRY_DOMAIN_SCRIPT = SCRIPTS["admin_retry_domain"]
ADMIN_RETRY_JOBS_SCRIPT = SCRIPTS["admin_retry_jobs"]
AUTH_CLAIM_SCRIPT = SCRIPTS["auth_claim"]
CHANGE_SUPPRESSION_SCRIPT = SCRIPTS["change_suppression"]
CLAIM_SCRIPT = SCRIPTS["claim"]
CLUSTER_MEMBERS_SCRIPT = SCRIPTS["cluster_members"]
DATA_VERSION_SCRIPT = SCRIPTS["data_version"]
DEDUPE_ENQUEUE_SCRIPT = SCRIPTS["dedupe_enqueue"]
DKIM_PUT_SCRIPT = SCRIPTS["dkim_put"]
ENQUEUE_BATCH_SCRIPT = SCRIPTS["enqueue_batch"]
ENQUEUE_SCRIPT = SCRIPTS["enqueue"]
HEARTBEAT_SCRIPT = SCRIPTS["heartbeat"]
LEAVE_CLUSTER_SCRIPT = SCRIPTS["leave_cluster"]
RATE_SCRIPT = SCRIPTS["rate"]
RECLASSIFY_BOUNCE_SCRIPT = SCRIPTS["reclassify_bounce"]
RECORD_BOUNCE_SCRIPT = SCRIPTS["record_bounce"]
RECORD_SCRIPT = SCRIPTS["record"]
RECORD_UNSIGNED_SCRIPT = SCRIPTS["record_unsigned"]
RELEASE_LOCK_SCRIPT = SCRIPTS["release_lock"]
RENEW_SCRIPT = SCRIPTS["renew"]
REQUEUE_SCRIPT = SCRIPTS["requeue"]
SEARCH_SCRIPT = SCRIPTS["search"]
SETTLE_SCRIPT = SCRIPTS["settle"]
SET_VERSION_SCRIPT = SCRIPTS["set_version"]
SUPPRESSION_OF_SCRIPT = SCRIPTS["suppression_of"]
SWEEP_UNSETTLED_SCRIPT = SCRIPTS["sweep_unsettled"]
WEBHOOK_CLAIM_SCRIPT = SCRIPTS["webhook_claim"]
WEBHOOK_ENQUEUE_SCRIPT = SCRIPTS["webhook_enqueue"]
WEBHOOK_FINISH_SCRIPT = SCRIPTS["webhook_finish"]
WEBHOOK_SOURCE_SCRIPT = SCRIPTS["webhook_source"]

#: A message's status values (the status index has one sorted set per value).
MESSAGE_STATUSES = ("queued", "delivered", "bounced", "expired", "suppressed", "partial")


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
class Event:
    """One entry of a recipient's timeline (the shape every service and the API use)."""

    type: str
    at: str
    recipient: str
    rcpt: int
    detail: str = ""
    remote_host: str | None = None
    remote_ip: str | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    response: str | None = None
    remote_queue_id: str | None = None

    def to_json(self) -> str:
        return _JSON.encode(self.__dict__)


#: The JSON encoder of what is stored (compact, UTF-8 text kept as is), made once:
#: ``json.dumps`` with options builds a new encoder per call.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

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
    #: Filled by Storage.claim: the recipient's suppression entry (None: not suppressed;
    #: NOT_LOOKED_UP: unknown), and the message's stored (compressed) body, or None (not read).
    suppression: Any = field(default=NOT_LOOKED_UP, compare=False, repr=False)
    body: bytes | None = field(default=None, compare=False, repr=False)


def new_message_id() -> str:
    """A unique, time-ordered message id: 12 hex digits of ms time + 8 random."""
    return f"{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


def recipient_domain(address: str) -> str:
    """The queue's domain key: ASCII-lowercased, as Lua's string.lower does it."""
    return address.rpartition("@")[2].encode().lower().decode()


class Keys:
    """The names of every Redis key, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queue_domains = prefix + "queue:domains"
        self.leases = prefix + "queue:leases"
        self.index_prefix = prefix + "idx:"
        self.verp_secret = prefix + "verp:secret"
        self.bounces = prefix + "bounces"
        self.bounces_unmatched = prefix + "bounces:unmatched"
        self.suppressed = prefix + "suppressed"
        self.suppressed_version = prefix + "suppressed:version"
        self.events = prefix + "events"
        self.domain_queue_prefix = prefix + "queue:d:"
        self.unsettled = prefix + "queue:unsettled"

    def msg(self, message_id: str) -> str:
        return f"{self.prefix}msg:{message_id}"

    def body(self, message_id: str) -> str:
        return f"{self.prefix}body:{message_id}"

    def bounce(self, bounce_id: str) -> str:
        return f"{self.prefix}bounce:{bounce_id}"

    def bounce_raw(self, bounce_id: str) -> str:
        return f"{self.prefix}bounce:raw:{bounce_id}"

    def timeline(self, message_id: str) -> str:
        return f"{self.prefix}timeline:{message_id}"

    def domain_queue(self, domain: str) -> str:
        return self.domain_queue_prefix + domain

    def user_rate(self, user: str, window: int) -> str:
        return f"{self.prefix}rate:user:{user}:{window}"

    def auth_failures(self, client: str) -> str:
        return f"{self.prefix}auth:fail:{client}"


def new_owner() -> str:
    """A daemon's identity in the queue leases and heartbeats: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class Storage:
    """The storage layer: connection to Redis plus the operations the services need."""

    def __init__(self, config: Config, redis: Any, *, clock: Any = None, owner: str | None = None) -> None:
        from twisted.internet import reactor

        self.config = config
        #: This daemon's identity (its heartbeat's): unsettled messages name it.
        self.owner = owner or new_owner()
        self.redis = redis
        self.keys = Keys(config.redis.key_prefix)
        self.clock = clock or reactor
        self.timeout = config.redis.timeout
        self.min_replicas = config.redis.min_replicas
        self.replica_timeout_ms = int(config.redis.min_replicas_timeout * 1000)
        self.retention = config.tracking.retention
        # A body must outlive its delivery attempts, whatever content_retention says.
        self.body_ttl = max(config.tracking.content_retention,
                            config.delivery.max_queue_lifetime + 86400)
        self.clock_offset_ms = 0.0   # Redis TIME minus our clock
        # (change counter of the suppression list as last read, when): see suppression_of
        self.suppressions_version: tuple[str | None, float] = (None, 0.0)
        self._suppression_changes = 0   # changes made by this process (see suppressions_changed)
        # messages waiting for this reactor turn's ENQUEUE_BATCH_SCRIPT call: (keys, args, waiter)
        self._enqueue_batch: list[tuple[list[str], list[Any], defer.Deferred]] = []
        self._suppression_lookups: list[tuple[str, defer.Deferred]] = []   # the same for RCPT
        # The pool's idle connections (see libcompat), for _call/_eval;
        # with Sentinel, READONLY replies must still reach the follower (_watched).
        pool = redis.pool if isinstance(redis, SentinelFollower) else redis
        self._idle: list[Any] | None = libcompat.idle_redis_connections(pool)
        if isinstance(redis, SentinelFollower):
            self._watched = lambda d: redis._watch(d, redis._generation)
        else:
            self._watched = lambda d: d
        self._offset_loop: task.LoopingCall | None = None
        #: SHA1s of the Lua scripts Redis is known to have cached (see mailrelay.store.scripts)
        self._loaded_scripts: set[str] = set()
        # acknowledgements to settle (confirm/cancel): message id -> action, not sent yet
        self._settlements: dict[str, str] = {}
        self._unsettled: dict[str, str] = {}   # every settlement decided and not done (sent or not)
        self._settle_calls: set[defer.Deferred] = set()   # calls carrying settlements
        self._settle_call: Any = None                      # the timer of _send_settlements
        self._confirm_waiters: dict[str, list[defer.Deferred]] = {}
        self._settle_failing = False
        self._stopped = False

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Measure Redis's clock; warn about settings that could lose mail."""
        self._offset_loop = task.LoopingCall(self._remeasure)
        self._offset_loop.clock = self.clock
        self._offset_loop.start(60, now=False)
        # Bounded: a Redis that is down at start must not keep the daemon from starting
        # (the pool would wait for it forever); the loop measures the clock later.
        await self._timed(defer.ensureDeferred(self.measure_clock()), self.timeout)
        # Cached once here; a Redis that lost them (restart, failover, SCRIPT FLUSH) gets
        # each again by EVAL on its first NOSCRIPT.
        try:
            await self._timed(load_all(self._call, self._loaded_scripts), self.timeout)
        except Exception as e:
            log.info("Redis SCRIPT LOAD failed ({e}): scripts are loaded when first run", e=e)
        policy = await self._config_get("maxmemory-policy")
        if policy and policy != "noeviction":
            log.warn("Redis maxmemory-policy is {policy!r}: eviction can delete queued mail; "
                     "set it to noeviction", policy=policy)

    def stop(self) -> None:
        """Stop the timers (call :meth:`settle_pending` first: settlements not sent are dropped)."""
        self._stopped = True
        if self._offset_loop is not None and self._offset_loop.running:
            self._offset_loop.stop()
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()

    def _remeasure(self) -> defer.Deferred:
        d = defer.ensureDeferred(self.measure_clock())
        d.addErrback(lambda f: log.info("Redis clock check failed: {e}", e=f.getErrorMessage()))
        return d

    async def measure_clock(self) -> None:
        before = time.time()
        seconds, micros = await self._call("TIME")
        after = time.time()
        redis_ms = int(seconds) * 1000 + int(micros) / 1000
        self.clock_offset_ms = redis_ms - (before + after) / 2 * 1000

    async def _config_get(self, name: str) -> str | None:
        try:
            reply = await self._call("CONFIG", "GET", name)
        except Exception:
            return None  # CONFIG may be renamed or forbidden on managed services
        return reply[1].decode() if len(reply) == 2 else None

    async def ping(self) -> bool:
        try:
            return await self._call("PING") in (b"PONG", "PONG")
        except Exception:
            return False

    # -- helpers --------------------------------------------------------------------

    def _idle_connection(self) -> Any:
        """
        A connected, idle connection of the txredisapi pool (one not taken by a pipeline or
        a transaction), or None. Commands sent on it directly skip the pool's per-command
        wrapper (a connection lookup and two more Deferreds), and are flushed to Redis at
        once instead of on the reactor's next turn: this is the hot path of every message.
        """
        if self._idle is not None:
            for connection in self._idle:
                if connection.connected:
                    return connection
        return None

    def _call(self, *args: Any) -> defer.Deferred:
        connection = self._idle_connection()
        if connection is None:
            return self.redis.execute_command(*args)
        d = connection.execute_command(*args)
        netio.flush(connection.transport)
        return self._watched(d)

    def _timed(self, d: defer.Deferred, seconds: float) -> defer.Deferred:
        return d.addTimeout(seconds, self.clock)

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
        script_keys = [keys.msg(message_id), keys.body(message_id), keys.unsettled, keys.events,
                       keys.timeline(message_id), keys.suppressed_version]
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
            "metadata": _JSON.encode(message.metadata) if message.metadata else "{}",
        }
        for name, value in message.summary.items():
            if isinstance(value, str):
                fields[name] = value
            else:
                fields[name] = "[]" if value == [] else _JSON.encode(value)
        deadline = time.time() * 1000 + self.clock_offset_ms + self.timeout * 1000 * DEADLINE_SHARE
        args = ordered(ENQUEUE_ARGV, id=message_id, deadline_ms=str(int(deadline)), owner=self.owner,
                       events_maxlen=EVENTS_MAXLEN, key_prefix=keys.prefix,
                       index_prefix=keys.index_prefix, retention_s=int(self.retention),
                       body_ttl_s=int(self.body_ttl), tag=message.tag, fields=_JSON.encode(fields),
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
            if not isinstance(e, _NotSent) and not _is_error_reply(e):
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
        all_keys: list[str] = []
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
            d = defer.fail(_NotSent(str(e) or type(e).__name__))

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

    def _eval(self, script: Script, keys: list[str], args: list[Any]) -> defer.Deferred:
        """Run a script (EVALSHA; EVAL on NOSCRIPT: see mailrelay.store.scripts)."""
        connection = self._idle_connection()
        if connection is None:
            return evalsha(self.redis.execute_command, script, keys, args, self._loaded_scripts)
        d = evalsha(connection.execute_command, script, keys, args, self._loaded_scripts)
        netio.flush(connection.transport)
        return self._watched(d)

    async def _eval_and_wait(self, keys: list[str], args: list[Any],
                             script: Script = ENQUEUE_SCRIPT) -> tuple[Any, Any]:
        """
        The script and WAIT on one connection (WAIT counts that connection's writes). On
        NOSCRIPT (nothing ran) both are sent again with EVAL, so that WAIT follows the write.
        """
        tries = [("EVAL", script.source)]
        if script.sha in self._loaded_scripts:
            tries.insert(0, ("EVALSHA", script.sha))
        for command, code in tries:
            pipe = await self.redis.pipeline()
            pipe.execute_command(command, code, len(keys), *keys, *args)
            pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)
            try:
                result, replicas = await pipe.execute_pipeline()
            except defer.FirstError as e:  # the pipeline fails with its first failing command
                if command == "EVALSHA" and str(e.subFailure.value).startswith("NOSCRIPT"):
                    self._loaded_scripts.discard(script.sha)
                    continue
                raise
            self._loaded_scripts.add(script.sha)
            return result, replicas
        raise AssertionError("unreachable")

    # -- settling acknowledgements ----------------------------------------------------------

    def confirm(self, message_id: str) -> defer.Deferred:
        """
        Settle a stored message as acknowledged (its 250 is sent): its jobs go into their
        domain queues, due now. The confirmation rides on the next group commit call, or is
        sent alone after SETTLE_DELAY; it is retried until Redis answers. The Deferred fires
        (it never fails) with _SETTLE's result once that is done.
        """
        d: defer.Deferred = defer.Deferred()
        self._confirm_waiters.setdefault(message_id, []).append(d)
        self._settlements[message_id] = self._unsettled[message_id] = "confirm"
        self._schedule_settlements(SETTLE_DELAY)
        return d

    def cancel(self, message_id: str) -> None:
        """
        Settle a message whose client was not told it is queued (451): if it was stored, it
        is deleted with its jobs, before anything can claim them. Sent at once, retried
        until Redis answers (harmless when nothing was stored).
        """
        self._settlements[message_id] = self._unsettled[message_id] = "cancel"
        self._schedule_settlements(0)

    @property
    def unsettled_count(self) -> int:
        """Settlements of this daemon not done yet (queued or in flight)."""
        return len(self._unsettled)

    def _schedule_settlements(self, delay: float) -> None:
        from twisted.internet import reactor  # as the group commit: real time, whatever self.clock

        call = self._settle_call
        if call is not None and call.active():
            if call.getTime() <= reactor.seconds() + delay:
                return
            call.cancel()
        self._settle_call = reactor.callLater(delay, self._send_settlements)

    def _take_settlements(self) -> list[tuple[str, str]]:
        """The settlements not sent yet, as (message id, action); they are now in flight."""
        if not self._settlements:
            return []
        taken = list(self._settlements.items())
        self._settlements.clear()
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()
        self._settle_call = None
        return taken

    def _return_settlements(self, taken: list[tuple[str, str]]) -> None:
        """Settlements taken but not sent after all: queued again."""
        for message_id, action in taken:
            self._settlements.setdefault(message_id, action)
        if taken:
            self._schedule_settlements(0)

    def _send_settlements(self) -> None:
        self._settle_call = None
        taken = self._take_settlements()
        if not taken:
            return
        flat: list[Any] = [self.keys.prefix, self.owner, EVENTS_MAXLEN]
        for message_id, action in taken:
            flat += [action, message_id]
        try:
            if self.min_replicas:  # done once replicated: a failover must not lose it
                d = self._timed(defer.ensureDeferred(self._settle_and_wait(flat)),
                                self.timeout + self.replica_timeout_ms / 1000)
            else:
                d = self._timed(self._eval(SETTLE_SCRIPT, [self.keys.unsettled], flat), self.timeout)
        except Exception as e:  # e.g. "Not connected"
            d = defer.fail(e)

        def replied(results: Any) -> None:
            if not isinstance(results, list) or len(results) != len(taken):
                self._settle_failed(taken, StorageUnavailable(f"unexpected reply {results!r:.200}"))
            else:
                self._settled(taken, results)

        d.addCallbacks(replied, lambda failure: self._settle_failed(taken, failure))
        self._track_settle_call(d)

    async def _settle_and_wait(self, args: list[Any]) -> Any:
        """SETTLE_SCRIPT and WAIT min_replicas on one connection; fails when fewer confirm
        (the settlement is then sent again: it is idempotent)."""
        results, replicas = await self._eval_and_wait([self.keys.unsettled], args, SETTLE_SCRIPT)
        if int(replicas or 0) < self.min_replicas:
            raise StorageUnavailable(f"only {replicas} of {self.min_replicas} replicas confirmed "
                                     "the settlement")
        return results

    def _track_settle_call(self, d: defer.Deferred) -> None:
        if d.called:
            return
        self._settle_calls.add(d)
        d.addBoth(lambda result: (self._settle_calls.discard(d), result)[1])

    def _settled(self, taken: list[tuple[str, str]], results: list[Any]) -> None:
        if self._settle_failing:
            self._settle_failing = False
            log.info("storage: acknowledgements settled again")
        for (message_id, action), result in zip(taken, results):
            outcome = result.decode() if isinstance(result, bytes) else str(result)
            if message_id not in self._settlements:  # not decided again meanwhile
                self._unsettled.pop(message_id, None)
            if action == "confirm":
                if outcome == "GONE":
                    log.warn("storage: {id} was acknowledged but is no longer stored (deleted)",
                             id=message_id)
                for waiter in self._confirm_waiters.pop(message_id, []):
                    waiter.callback(outcome)
            elif outcome == "CANCELLED":
                log.info("storage: cancelled {id}: it was stored, but its client was answered "
                         "451; it will not be delivered", id=message_id)
            elif outcome in ("SETTLED", "OTHER"):
                log.error("storage: could not cancel {id} ({outcome}): its client was answered "
                          "451, but it was confirmed first and will be delivered", id=message_id,
                          outcome=outcome)

    def _settle_failed(self, taken: list[tuple[str, str]], failure: Any) -> None:
        for message_id, action in taken:
            self._settlements.setdefault(message_id, action)
        if not self._settle_failing:
            self._settle_failing = True
            error = failure.getErrorMessage() if hasattr(failure, "getErrorMessage") else str(failure)
            log.warn("storage: could not settle {n} acknowledgement(s) ({e}); retrying every "
                     "{s:g}s until Redis answers", n=len(taken), e=error or "timeout", s=SETTLE_RETRY)
        if self._settlements and not self._stopped:
            self._schedule_settlements(SETTLE_RETRY)

    async def settle_pending(self, timeout: float) -> int:
        """
        At shutdown: send the settlements not sent yet and wait for them, for up to
        ``timeout`` seconds. Returns how many are left (a confirmation left is done by the
        sweeper of another daemon, or of this one once restarted; a cancellation left is a
        message that may be delivered although its client got 451).
        """
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while self.unsettled_count and reactor.seconds() < deadline:
            if self._settlements:
                self._send_settlements()
            if self._settle_calls:  # each call is bounded by [redis] timeout
                await defer.DeferredList(list(self._settle_calls), consumeErrors=True)
            else:  # a call failed at once (not connected): not a busy loop
                await task.deferLater(reactor, 0.1, lambda: None)
        left = self.unsettled_count
        if left:
            log.warn("storage: {n} acknowledgement(s) not settled at shutdown: acknowledged "
                     "messages are confirmed by the sweeper of another daemon (or of this one "
                     "once restarted)", n=left)
        return left

    async def sweep_unsettled(self, heartbeat_ttl: float, min_age: float,
                              max_age: float | None = None) -> list[tuple[str, str]]:
        """
        Confirm the messages that daemons without a live heartbeat left unsettled for at
        least ``min_age`` seconds (they died between storing a message and settling it; the
        client may have had its 250), and any unsettled for ``max_age`` seconds
        (UNSETTLED_MAX_AGE). Returns [(message id, daemon)].
        """
        reply = await self._timed(self._eval(
            SWEEP_UNSETTLED_SCRIPT, [self.keys.unsettled, self._cluster_key],
            [self.keys.prefix, EVENTS_MAXLEN, self.owner, int(min_age * 1000),
             int((UNSETTLED_MAX_AGE if max_age is None else max_age) * 1000),
             int(heartbeat_ttl * 1000), SWEEP_LIMIT]), self.timeout)
        confirmed = [(reply[k].decode(), reply[k + 1].decode()) for k in range(0, len(reply), 2)]
        if confirmed:
            owners = sorted({owner for _, owner in confirmed})
            log.warn("storage: confirmed {n} acknowledged message(s) left unsettled by {owners} "
                     "(no heartbeat: stopped or died): {ids}", n=len(confirmed),
                     owners=", ".join(owners), ids=" ".join(i for i, _ in confirmed[:20])
                     + (" ..." if len(confirmed) > 20 else ""))
        return confirmed

    async def hit_user_rate(self, user: str, limit: int, period: float) -> bool:
        """Count one message for ``user``; False when over ``limit`` per ``period``."""
        period_ms = int(period * 1000)
        window = int(time.time() * 1000 // period_ms)
        try:
            allowed = await self._timed(
                self._eval(RATE_SCRIPT, [self.keys.user_rate(user, window)], [limit, period_ms]),
                self.timeout)
        except defer.TimeoutError:
            raise StorageUnavailable("Redis did not answer in time") from None
        return int(allowed) == 1

    async def claim_auth_check(self, client: str, limit: int, period: float) -> AuthClaim:
        """
        Count one SMTP AUTH check of ``client`` as a failure before it runs, unless
        ``client`` already has ``limit`` within the last ``period`` seconds (on any daemon).
        A check that succeeds gives its count back (:meth:`refund_auth_check`).
        """
        token = os.urandom(8).hex()
        try:
            wait_ms = await self._timed(
                self._eval(AUTH_CLAIM_SCRIPT, [self.keys.auth_failures(client)],
                           [self.now_ms(), int(period * 1000), limit, token]),
                self.timeout)
        except defer.TimeoutError:
            raise StorageUnavailable("Redis did not answer in time") from None
        if int(wait_ms) > 0:
            return AuthClaim(None, int(wait_ms) / 1000)
        return AuthClaim(token, 0.0)

    async def refund_auth_check(self, client: str, token: str) -> None:
        """A check claimed by :meth:`claim_auth_check` succeeded: it is no failure."""
        await self._timed(self._call("ZREM", self.keys.auth_failures(client), token), self.timeout)

    # -- delivery queue --------------------------------------------------------------------

    def now_ms(self) -> int:
        """Milliseconds on Redis's clock, as estimated from ours (due times use it)."""
        return int(self.clock.seconds() * 1000 + self.clock_offset_ms)

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
                                                      owner, self.keys.prefix + "msg:",
                                                      self.keys.prefix + "body:", body_budget])
        jobs = []
        for k in range(0, len(reply), 7):
            job, sender, rcpt, attempts, received = (v.decode() for v in reply[k:k + 5])
            suppression, body = reply[k + 5], reply[k + 6]
            message_id, _, index = job.partition(".")
            claimed = ClaimedJob(job, message_id, int(index), sender, rcpt, int(attempts),
                                 int(received), domain)
            if suppression is not None:
                claimed.suppression = json.loads(suppression) if suppression else None
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
        args: list[Any] = [owner, EVENTS_MAXLEN, self.now_ms(), keys.index_prefix, keys.prefix + "msg:",
                           keys.prefix + "timeline:", keys.domain_queue_prefix]
        encode = _JSON.encode  # Event.to_json without a method call per event
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
                                    [self.now_ms(), owner, self.keys.prefix + "msg:",
                                     self.keys.domain_queue_prefix, *[j.job for j in jobs]]))

    async def requeue_expired_leases(self) -> int:
        """Return jobs whose lease expired (their daemon died) to the queue."""
        return int(await self._eval(REQUEUE_SCRIPT, [self.keys.queue_domains, self.keys.leases],
                                    [self.now_ms(), "", self.keys.prefix + "msg:",
                                     self.keys.domain_queue_prefix]))

    async def renew(self, jobs: list[str], lease_seconds: float) -> int:
        if not jobs:
            return 0
        until = self.now_ms() + int(lease_seconds * 1000)
        return int(await self._eval(RENEW_SCRIPT, [self.keys.leases], [until, *jobs]))

    # -- bounces and suppression --------------------------------------------------------

    async def verp_secret(self) -> bytes:
        """The shared VERP HMAC key: generated once, kept in Redis for every daemon."""
        await self._call("SET", self.keys.verp_secret, os.urandom(32).hex(), "NX")
        return await self._call("GET", self.keys.verp_secret)

    async def record_bounce(self, record: dict[str, Any], raw: bytes, *, message_id: str | None,
                            rcpt: int | None, state: str | None, event: Event | None,
                            suppress: dict[str, Any] | None, max_unmatched: int = 1000,
                            max_per_recipient: int = 10) -> bool | None:
        """
        Store a bounce record (and its raw message), tie it to the message's
        timeline when matched, and add the address to the suppression list
        when ``suppress`` is given. An unmatched bounce evicts the oldest unmatched ones
        beyond ``max_unmatched`` (record and raw message). Returns whether the address
        became inactive, or None when nothing was stored: the recipient already had
        ``max_per_recipient`` reports.
        """
        bounce_id = record["id"]
        at_ms = self.now_ms()
        matched = message_id is not None and rcpt is not None
        keys = [self.keys.bounce(bounce_id), self.keys.bounce_raw(bounce_id), self.keys.bounces,
                self.keys.bounces_unmatched, self.keys.suppressed,
                self.keys.msg(message_id or "-"), self.keys.timeline(message_id or "-"), self.keys.events,
                self.keys.suppressed_version]
        flat: list[Any] = []
        for name, value in record.items():
            flat += [name, "" if value is None else (value if isinstance(value, (str, int)) else json.dumps(value))]
        args = [bounce_id, at_ms, raw, len(record), *flat,
                "1" if matched else "", rcpt if rcpt is not None else "", state or "",
                event.to_json() if event else "",
                suppress["address"] if suppress else "", json.dumps(suppress) if suppress else "",
                EVENTS_MAXLEN, message_id or "", event.type if event else "", self.keys.index_prefix,
                int(self.retention), int(max_unmatched), self.keys.prefix + "bounce:", int(max_per_recipient)]
        reply = await self._eval(RECORD_BOUNCE_SCRIPT, keys, args)
        if reply in (b"skipped", "skipped"):
            return None
        inactive = reply in (b"1", "1")
        if inactive:
            self.suppressions_changed()
        return inactive

    def suppression_of(self, address: str) -> defer.Deferred:
        """
        The suppression entry of one address, or None (a plain Deferred: the RCPT hot path).
        The lookups asked for in one reactor turn share one Redis call (as enqueue does), and
        the suppression list's change counter comes with it (:attr:`suppressions_version`).
        Fails with ``defer.TimeoutError`` when Redis does not answer within ``[redis] timeout``.
        """
        waiter: defer.Deferred = defer.Deferred()
        self._suppression_lookups.append((address.lower(), waiter))
        if len(self._suppression_lookups) == 1:
            from twisted.internet import reactor
            reactor.callLater(0, self._send_suppression_lookups)
        return waiter

    def _send_suppression_lookups(self) -> None:
        batch, self._suppression_lookups = self._suppression_lookups, []
        changes_when_sent = self._suppression_changes
        try:
            d = self._timed(self._eval(SUPPRESSION_OF_SCRIPT,
                                       [self.keys.suppressed, self.keys.suppressed_version],
                                       [address for address, _ in batch]), self.timeout)
        except Exception:  # e.g. txredisapi's "Not connected"
            d = defer.fail()

        def replied(reply: list[Any]) -> None:
            if not isinstance(reply, list) or len(reply) != len(batch) + 1:
                return failed(StorageUnavailable(f"unexpected reply {reply!r:.200}"))
            self._saw_suppressions_version(reply[0], changes_when_sent)
            for (_, waiter), entry in zip(batch, reply[1:]):
                try:
                    value = None if entry is None else json.loads(entry)
                except ValueError as e:  # a bad entry fails this lookup only
                    waiter.errback(e)
                else:
                    waiter.callback(value)

        def failed(failure: Any) -> None:
            for _, waiter in batch:
                waiter.errback(failure)

        d.addCallbacks(replied, failed)

    def _saw_suppressions_version(self, version: Any, changes_when_sent: int) -> None:
        """
        A reply carried the change counter of the suppression list. A reply to a call sent
        before this process's last change is ignored: it may predate that change.
        """
        if changes_when_sent != self._suppression_changes:
            return
        if isinstance(version, bytes):
            version = version.decode()
        self.suppressions_version = (str(version or "0"), self.clock.seconds())

    def suppressions_changed(self) -> None:
        """This process changed the suppression list: what was read before is stale."""
        self._suppression_changes += 1
        self.suppressions_version = (None, self.clock.seconds())

    async def suppressions(self, addresses: list[str]) -> dict[str, dict[str, Any]]:
        """The suppression entries of those addresses that are suppressed."""
        if not addresses:
            return {}
        lowered = [a.lower() for a in addresses]
        reply = await self._call("HMGET", self.keys.suppressed, *lowered)
        return {addr: json.loads(v) for addr, v in zip(lowered, reply) if v is not None}

    async def add_suppression(self, address: str, entry: dict[str, Any]) -> bool:
        return await self._change_suppression("add", address, json.dumps(entry))

    async def remove_suppression(self, address: str) -> bool:
        return await self._change_suppression("remove", address)

    async def _change_suppression(self, action: str, address: str, entry: str = "") -> bool:
        changed = await self._eval(CHANGE_SUPPRESSION_SCRIPT,
                                   [self.keys.suppressed, self.keys.suppressed_version],
                                   [action, address.lower(), entry])
        self.suppressions_changed()
        return int(changed) == 1

    async def reclassify_bounce(self, bounce_id: str, fields: dict[str, Any], *,
                                reactivate: str | None = None) -> tuple[bool, bool]:
        """
        Rewrite fields of a stored bounce record (its new type) and, with ``reactivate``,
        remove that address's suppression if, and only if, this bounce made it. Returns
        (record updated, address reactivated).
        """
        flat = [str(v) for pair in fields.items() for v in pair]
        updated, removed = await self._eval(
            RECLASSIFY_BOUNCE_SCRIPT,
            [self.keys.bounce(bounce_id), self.keys.suppressed, self.keys.suppressed_version],
            [bounce_id, (reactivate or "").lower(), len(fields), *flat])
        if int(removed):
            self.suppressions_changed()
        return bool(int(updated)), bool(int(removed))

    async def bounce_ids(self, batch: int = 1000) -> Any:
        """Every stored bounce id, oldest first (an async iterator, ``batch`` per request)."""
        start = 0
        while True:
            ids = await self._call("ZRANGE", self.keys.bounces, start, start + batch - 1)
            for member in ids:
                yield member.decode()
            if len(ids) < batch:
                return
            start += batch

    async def list_suppressions(self) -> dict[str, dict[str, Any]]:
        reply = await self._call("HGETALL", self.keys.suppressed)
        return {reply[i].decode(): json.loads(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def get_bounce(self, bounce_id: str) -> dict[str, str] | None:
        reply = await self._call("HGETALL", self.keys.bounce(bounce_id))
        if not reply:
            return None
        return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}

    async def get_bounce_raw(self, bounce_id: str) -> bytes | None:
        return await self._call("GET", self.keys.bounce_raw(bounce_id))

    # -- search (tracking) ----------------------------------------------------------------

    async def _search(self, index: str, hash_prefix: str, fields: list[str], *, since_ms: int | None,
                      until_ms: int | None, limit: int, cursor: tuple[int, str] | None,
                      keep: Any) -> tuple[list[dict[str, str]], tuple[int, str] | None]:
        """
        Walk ``index`` newest first from ``cursor`` (exclusive), keeping rows for which
        ``keep(row)`` is true, until ``limit`` rows; returns them and the next cursor.
        ``fields[0]`` must be a field every live hash has.
        """
        high = until_ms if until_ms is not None else "+inf"
        if cursor is not None:
            high = cursor[0] if high == "+inf" else min(high, cursor[0])
        low = since_ms if since_ms is not None else "-inf"
        found: list[dict[str, str]] = []
        batch = max(limit * 2, 50)
        width = 2 + len(fields)
        for _ in range(50):  # bounded work per request
            reply = await self._eval(SEARCH_SCRIPT, [index], [high, low, batch, hash_prefix, *fields])
            rows = [reply[k:k + width] for k in range(0, len(reply), width)]
            raw_count = await self._call("ZCOUNT", index, low, high) if len(rows) < batch else batch
            last_score = None
            for row in rows:
                member, score = row[0].decode(), int(float(row[1]))
                last_score = score
                if cursor is not None and score == cursor[0] and member >= cursor[1]:
                    continue
                item = {"id": member, "_score": score}
                item.update({name: value.decode() for name, value in zip(fields, row[2:])})
                if keep(item):
                    found.append(item)
                    if len(found) == limit:
                        return found, (score, member)
            if not rows or int(raw_count) < batch:
                return found, None
            # continue below the last score seen (ties at that score were all in this batch
            # unless the batch was full of one score: then widen the batch)
            if last_score == (high if high != "+inf" else None):
                batch *= 4
                continue
            cursor = (last_score, "\uffff")
            high = last_score
        return found, (cursor if cursor else None)

    async def search_messages(self, *, recipient: str | None = None, tag: str | None = None,
                              status: str | None = None, since_ms: int | None = None,
                              until_ms: int | None = None, limit: int = 50,
                              cursor: tuple[int, str] | None = None) -> tuple[list[dict[str, str]], tuple[int, str] | None]:
        """Messages newest first through the most selective index; the other filters check fields."""
        prefix = self.keys.index_prefix
        if recipient:
            index = f"{prefix}rcpt:{recipient.lower()}"
        elif tag:
            index = f"{prefix}tag:{tag}"
        elif status:
            index = f"{prefix}status:{status}"
        else:
            index = f"{prefix}time"
        fields = ["received_at", "from", "to", "subject", "tag", "status", "sender"]

        def keep(row: dict[str, str]) -> bool:
            return (not tag or row["tag"] == tag) and (not status or row["status"] == status)

        return await self._search(index, self.keys.prefix + "msg:", fields, since_ms=since_ms,
                                  until_ms=until_ms, limit=limit, cursor=cursor, keep=keep)

    async def search_bounces(self, *, type: str | None = None, recipient: str | None = None,
                             since_ms: int | None = None, limit: int = 50,
                             cursor: tuple[int, str] | None = None) -> tuple[list[dict[str, str]], tuple[int, str] | None]:
        fields = ["id", "message_id", "recipient", "type", "type_code", "description", "details",
                  "at", "inactive", "status", "remote_mta", "proof"]

        def keep(row: dict[str, str]) -> bool:
            return (not type or row["type"] == type) and (not recipient or row["recipient"] == recipient.lower())

        return await self._search(self.keys.bounces, self.keys.prefix + "bounce:", fields,
                                  since_ms=since_ms, until_ms=None, limit=limit, cursor=cursor, keep=keep)

    async def status_counts(self, since_ms: int | None = None) -> dict[str, int]:
        """Messages per status received since ``since_ms`` (all retained ones when None)."""
        low = since_ms if since_ms is not None else "-inf"
        counts = {}
        for status in MESSAGE_STATUSES:
            counts[status] = int(await self._call("ZCOUNT", f"{self.keys.index_prefix}status:{status}", low, "+inf"))
        return counts

    async def counters(self, resolution: str, buckets: int) -> list[tuple[int, dict[str, int]]]:
        """
        The last ``buckets`` per-minute ("m") or per-hour ("h") counters, oldest first:
        [(bucket start ms, {"accepted", "recipients", "delivered", "deferred", "bounced",
        "expired", "suppressed", "bounce:<Type>": n})].
        """
        size = 60_000 if resolution == "m" else 3_600_000
        current = self.now_ms() // size
        out = []
        for bucket in range(current - buckets + 1, current + 1):
            reply = await self._call("HGETALL", f"{self.keys.index_prefix}stats:{resolution}:{bucket}")
            out.append((bucket * size, {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}))
        return out

    # -- reading ------------------------------------------------------------------------

    async def get_message(self, message_id: str) -> dict[str, str] | None:
        """The stored envelope and summary of a message, or None."""
        reply = await self._call("HGETALL", self.keys.msg(message_id))
        if not reply:
            return None
        return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}

    async def get_body(self, message_id: str) -> bytes | None:
        """The message as it will be delivered (bodies are stored zlib-compressed)."""
        stored = await self._call("GET", self.keys.body(message_id))
        return None if stored is None else zlib.decompress(stored)

    async def get_timeline(self, message_id: str) -> list[dict[str, Any]]:
        """The message's events, oldest first."""
        reply = await self._call("LRANGE", self.keys.timeline(message_id), 0, -1)
        return [json.loads(item) for item in reply]

    async def queued_jobs(self, domain: str) -> list[str]:
        """Job ids queued for a destination domain, earliest first."""
        reply = await self._call("ZRANGE", self.keys.domain_queue(domain.lower()), 0, -1)
        return [m.decode() for m in reply]

    # -- administration (mailrelay queue) --------------------------------------------------
    # Used by the `mailrelay queue` command. Every call is bounded by [redis] timeout and
    # raises StorageUnavailable when Redis does not answer (or answers with an error).

    async def _admin(self, d: defer.Deferred) -> Any:
        try:
            return await self._timed(d, self.timeout)
        except defer.TimeoutError:
            raise StorageUnavailable(
                f"Redis did not answer within {self.timeout:g}s") from None
        except StorageError:
            raise
        except Exception as e:
            raise StorageUnavailable(str(e) or type(e).__name__) from None

    async def admin_recipients(self, message_id: str) -> list[str] | None:
        """The recipient addresses of a message by index, or None for an unknown message."""
        reply = await self._admin(self._call("HGET", self.keys.msg(message_id), "rcpt_count"))
        if reply is None:
            return None
        count = int(reply)
        if not count:
            return []
        fields = [f"rcpt:{i}" for i in range(count)]
        addresses = await self._admin(self._call("HMGET", self.keys.msg(message_id), *fields))
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
        seconds, micros = await self._admin(self._call("TIME"))
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        raw = await self._admin(self._call("ZRANGE", self.keys.queue_domains, 0, -1))
        domains: dict[str, dict[str, Any]] = {}

        def entry(domain: str) -> dict[str, Any]:
            return domains.setdefault(domain, {"queued": 0, "deferred": 0, "delivering": 0,
                                               "oldest_ms": None})

        def older(row: dict[str, Any], received: int) -> None:
            if received >= 0 and (row["oldest_ms"] is None or received < row["oldest_ms"]):
                row["oldest_ms"] = received

        msg_prefix = self.keys.prefix + "msg:"
        for domain in (d.decode() for d in raw):
            row = entry(domain)
            start = 0
            while True:
                scanned, queued, deferred, oldest = (int(v) for v in await self._admin(self._eval(
                    ADMIN_DOMAIN_SUMMARY_SCRIPT, [self.keys.domain_queue(domain)],
                    [msg_prefix, start, ADMIN_CHUNK])))
                row["queued"] += queued
                row["deferred"] += deferred
                older(row, oldest)
                start += scanned
                if scanned < ADMIN_CHUNK:
                    break
        leased = await self._admin(self._eval(ADMIN_LEASES_SCRIPT, [self.keys.leases], [msg_prefix]))
        for k in range(0, len(leased), 2):
            rcpt, received = leased[k].decode(), int(leased[k + 1])
            row = entry(recipient_domain(rcpt))
            row["delivering"] += 1
            older(row, received)
        unsettled = int(await self._admin(self._call("ZCARD", self.keys.unsettled)))
        return {"now_ms": now_ms, "domains": domains, "unsettled": unsettled}

    async def admin_message(self, message_id: str) -> dict[str, Any] | None:
        """
        Everything about one message, or None if unknown: ``{"now_ms": Redis time,
        "message": the msg hash (str -> str), "timeline": [event dicts, oldest first],
        "jobs": [{"index", "recipient", "state", "attempts", "due_ms", "lease_until_ms"}],
        "unsettled": the daemon that stored it while its acknowledgement is not settled (its
        jobs are in no queue yet), else None}`` (due_ms: the job waits in its domain queue;
        lease_until_ms: a daemon is delivering it).
        """
        reply = await self._admin(self._call("HGETALL", self.keys.msg(message_id)))
        if not reply:
            return None
        message = {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}
        count = int(message.get("rcpt_count", "0") or 0)
        recipients = [message.get(f"rcpt:{i}", "") for i in range(count)]
        keys = [self.keys.leases] + [self.keys.domain_queue(recipient_domain(r)) for r in recipients]
        status = await self._admin(self._eval(ADMIN_JOBS_SCRIPT, keys, [message_id]))
        timeline = await self._admin(self._call("LRANGE", self.keys.timeline(message_id), 0, -1))
        jobs = []
        for i, rcpt in enumerate(recipients):
            due, lease = status[1 + 2 * i], status[2 + 2 * i]
            jobs.append({
                "index": i,
                "recipient": rcpt,
                "state": message.get(f"state:{i}", ""),
                "attempts": int(message.get(f"attempts:{i}", "0") or 0),
                "due_ms": int(float(due)) if due else None,
                "lease_until_ms": int(float(lease)) if lease else None,
            })
        return {"now_ms": int(status[0]), "message": message,
                "timeline": [json.loads(item) for item in timeline], "jobs": jobs,
                "unsettled": message.get("unsettled")}

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
        total, moved = await self._admin(self._eval(ADMIN_RETRY_JOBS_SCRIPT, keys, [message_id, *domains]))
        return int(total), int(moved)

    async def admin_retry_domain(self, domain: str) -> tuple[int, int]:
        """Make every job of a destination domain's queue due now: (jobs, moved forward)."""
        domain = domain.lower()
        keys = [self.keys.queue_domains, self.keys.domain_queue(domain)]
        total, moved = await self._admin(self._eval(ADMIN_RETRY_DOMAIN_SCRIPT, keys, [domain]))
        return int(total), int(moved)

    async def admin_retry_all(self) -> tuple[int, int]:
        """Make every queued job due now, one domain (one atomic script) at a time."""
        raw = await self._admin(self._call("ZRANGE", self.keys.queue_domains, 0, -1))
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
        args: list[Any] = [message_id, EVENTS_MAXLEN]
        for i in chosen:
            domain = recipient_domain(recipients[i])
            keys.append(self.keys.domain_queue(domain))
            event = Event(type="deleted", at=at, recipient=recipients[i], rcpt=i, detail=detail)
            args += [i, domain, event.to_json()]
        result = int(await self._admin(self._eval(ADMIN_DELETE_SCRIPT, keys, args)))
        return None if result < 0 else result

    # -- webhooks ---------------------------------------------------------------------------
    # Used by mailrelay.services.webhooks. Redis data: the consumer group WEBHOOK_GROUP on ``P events``
    # (one consumer per daemon process); ``P webhook:queue`` ZSET of job ids scored by due
    # time in ms (while a daemon sends a job: its lease expiry); ``P webhook:job:<id>`` HASH
    # url, hook (index in [[webhooks]]), payload (the JSON body), attempts, event, message_id,
    # rcpt, recipient, created (ms), owner (while leased), last_error. Job ids are
    # ``<stream entry id>.<hook index>``.

    #: The consumer group of the webhook service on the event stream.
    WEBHOOK_GROUP = "webhooks"
    #: Job hashes expire after this many seconds at the latest (a safety net: jobs end long before).
    WEBHOOK_JOB_TTL = 7 * 86400

    @property
    def _webhook_queue(self) -> str:
        return self.keys.prefix + "webhook:queue"

    @property
    def _webhook_job_prefix(self) -> str:
        return self.keys.prefix + "webhook:job:"

    async def webhook_create_group(self) -> bool:
        """Create the consumer group at the end of the stream (history is not replayed);
        False when it existed already."""
        try:
            await self._call("XGROUP", "CREATE", self.keys.events, self.WEBHOOK_GROUP, "$", "MKSTREAM")
        except Exception as e:
            if "BUSYGROUP" in str(e):
                return False
            raise
        return True

    @staticmethod
    def _stream_entries(entries: Any) -> list[tuple[str, dict[str, str] | None]]:
        out = []
        for entry in entries or []:
            entry_id, flat = entry[0].decode(), entry[1]
            if flat is None:  # trimmed from the stream while pending (Redis < 7)
                out.append((entry_id, None))
                continue
            out.append((entry_id, {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}))
        return out

    async def webhook_read_events(self, consumer: str, count: int) -> list[tuple[str, dict[str, str] | None]]:
        """Up to ``count`` new events for this consumer (non-blocking): [(entry id, fields)]."""
        reply = await self._call("XREADGROUP", "GROUP", self.WEBHOOK_GROUP, consumer, "COUNT", count,
                                 "STREAMS", self.keys.events, ">")
        if not reply:
            return []
        return self._stream_entries(reply[0][1])

    async def webhook_reclaim_events(self, consumer: str, min_idle_seconds: float,
                                     count: int) -> list[tuple[str, dict[str, str] | None]]:
        """Take over events other consumers (dead daemons) left unacknowledged for longer
        than ``min_idle_seconds``: [(entry id, fields or None when trimmed meanwhile)]."""
        found: list[tuple[str, dict[str, str] | None]] = []
        cursor = "0-0"
        for _ in range(10):  # bounded work per call
            reply = await self._call("XAUTOCLAIM", self.keys.events, self.WEBHOOK_GROUP, consumer,
                                     int(min_idle_seconds * 1000), cursor, "COUNT", count)
            cursor = reply[0].decode()
            found += self._stream_entries(reply[1])
            if cursor == "0-0" or len(found) >= count:
                break
        return found

    async def webhook_ack_events(self, entry_ids: list[str]) -> int:
        """Acknowledge events that need no webhook."""
        if not entry_ids:
            return 0
        return int(await self._call("XACK", self.keys.events, self.WEBHOOK_GROUP, *entry_ids))

    async def webhook_prune_consumers(self, keep: str, idle_seconds: float) -> int:
        """Forget consumers (past daemon processes) with nothing pending, idle that long."""
        reply = await self._call("XINFO", "CONSUMERS", self.keys.events, self.WEBHOOK_GROUP)
        removed = 0
        for row in reply:
            info = {row[i].decode(): row[i + 1] for i in range(0, len(row), 2)}
            name = info["name"].decode()
            if name != keep and int(info["pending"]) == 0 and int(info["idle"]) > idle_seconds * 1000:
                await self._call("XGROUP", "DELCONSUMER", self.keys.events, self.WEBHOOK_GROUP, name)
                removed += 1
        return removed

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
        args = [rcpt, bounce_id, self.keys.prefix + "bounce:", "1" if find_bounce else "",
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
        args: list[Any] = [self.WEBHOOK_GROUP, entry_id, due_ms, self._webhook_job_prefix,
                           self.WEBHOOK_JOB_TTL, self.now_ms()]
        for job in jobs:
            args += [job["id"], job["url"], job["hook"], job["payload"], job["event"],
                     job["message_id"], job["rcpt"], job["recipient"]]
        return int(await self._eval(WEBHOOK_ENQUEUE_SCRIPT, [self.keys.events, self._webhook_queue], args))

    async def webhook_claim(self, owner: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
        """Lease up to ``limit`` due webhook jobs for ``owner``: dicts with id, url, hook
        (int), payload (bytes), attempts (int), event, message_id, rcpt (int), recipient."""
        now = self.now_ms()
        reply = await self._eval(WEBHOOK_CLAIM_SCRIPT, [self._webhook_queue],
                                 [now, limit, now + int(lease_seconds * 1000), owner,
                                  self._webhook_job_prefix])
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
        keys = [self._webhook_queue, self._webhook_job_prefix + job["id"],
                self.keys.timeline(job["message_id"])]
        args = [job["id"], owner, outcome, "" if due_ms is None else due_ms, attempts, error,
                event.to_json() if event is not None else ""]
        result = await self._eval(WEBHOOK_FINISH_SCRIPT, keys, args)
        return result.decode() if isinstance(result, bytes) else str(result)

    async def webhook_jobs(self) -> list[tuple[str, int]]:
        """Queued webhook jobs with their due time (or lease expiry) in ms, earliest first."""
        reply = await self._call("ZRANGE", self._webhook_queue, 0, -1, "WITHSCORES")
        return [(reply[i].decode(), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]


    # -- sender domains (DKIM) ---------------------------------------------------------------
    # Used by mailrelay.services.domains: signing at submission, `mailrelay domains`, and the state of
    # each domain for the status page and the API. Redis data: ``P dkim:domains`` HASH domain
    # -> JSON record (its keys: selector, algorithm, public key, state, dates; a private key
    # only encrypted with [dkim] key_encryption_key); ``P dkim:version`` STRING, a counter
    # bumped on every change (daemons reload the keys when it moves); ``P dkim:checks`` HASH
    # domain -> JSON result of the last `mailrelay domains verify`. The ``unsigned`` event
    # goes to the message's timeline and the event stream. Calls are bounded by [redis]
    # timeout and raise StorageUnavailable.

    def _dkim_key(self, name: str) -> str:
        return f"{self.keys.prefix}dkim:{name}"

    async def dkim_version(self) -> int:
        """The change counter of the sender domains (0: never changed)."""
        value = await self._admin(self._call("GET", self._dkim_key("version")))
        return int(value or 0)

    async def dkim_domains(self) -> dict[str, dict[str, Any]]:
        """Every sender domain stored in Redis: ``{domain: record}`` (see mailrelay.services.domains)."""
        reply = await self._admin(self._call("HGETALL", self._dkim_key("domains")))
        return {reply[i].decode(): json.loads(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def dkim_domain(self, domain: str) -> tuple[dict[str, Any] | None, str]:
        """One domain's record (None if not stored) and its stored text, for :meth:`dkim_put_domain`."""
        raw = await self._admin(self._call("HGET", self._dkim_key("domains"), domain))
        if raw is None:
            return None, ""
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return json.loads(text), text

    async def dkim_put_domain(self, domain: str, record: dict[str, Any] | None, expected: str) -> bool:
        """
        Store (``record``) or delete (None) a domain's record if it is still ``expected``
        (its text from :meth:`dkim_domain`; "" = not stored), and bump the change counter.
        False when another change came first (nothing written).
        """
        new = "" if record is None else json.dumps(record, sort_keys=True, separators=(",", ":"))
        keys = [self._dkim_key("domains"), self._dkim_key("version"), self._dkim_key("checks")]
        return int(await self._admin(self._eval(DKIM_PUT_SCRIPT, keys, [domain, expected, new]))) == 1

    async def dkim_record_check(self, domain: str, result: dict[str, Any]) -> None:
        """Keep the result of a DNS check of ``domain`` (the last one only)."""
        await self._admin(self._call("HSET", self._dkim_key("checks"), domain,
                                     json.dumps(result, separators=(",", ":"))))

    async def dkim_checks(self) -> dict[str, dict[str, Any]]:
        """The last DNS check of each domain: ``{domain: result}``."""
        reply = await self._admin(self._call("HGETALL", self._dkim_key("checks")))
        return {reply[i].decode(): json.loads(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def record_unsigned(self, message_id: str, recipients: list[str], detail: str) -> bool:
        """
        Record that a queued message goes out without a DKIM signature: an ``unsigned``
        event per recipient in its timeline, one in the event stream, and the ``unsigned``
        counter. False when the message is no longer stored.
        """
        at = rfc3339(time.time())
        events = [Event(type="unsigned", at=at, recipient=rcpt, rcpt=i, detail=detail).to_json()
                  for i, rcpt in enumerate(recipients)]
        keys = [self.keys.msg(message_id), self.keys.timeline(message_id), self.keys.events]
        args = [message_id, EVENTS_MAXLEN, self.now_ms(), self.keys.index_prefix, *events]
        return int(await self._admin(self._eval(RECORD_UNSIGNED_SCRIPT, keys, args))) == 1

    # -- cluster and data version ---------------------------------------------------------
    # Used by mailrelay.services.cluster (heartbeats, `mailrelay cluster`, `mailrelay migrate`), the
    # daemon's start (data version check) and submission ([submission] dedupe_window).
    # Redis data:
    #   ``P cluster``            ZSET   daemon owner ids by last heartbeat (ms, Redis clock);
    #                                   members older than one heartbeat TTL are pruned.
    #   ``P cluster:<owner>``    HASH   one live daemon: hostname, pid, version, data_version
    #                                   (the newest format it understands), started (ms),
    #                                   beat (ms), interval (s), held (delivery jobs leased),
    #                                   domains (JSON {domain: jobs}), listeners (JSON list);
    #                                   expires after three missed heartbeats.
    #   ``P meta:version``       STRING the data format version (an integer, DATA_VERSION).
    #   ``P meta:migrating``     STRING lock held by `mailrelay migrate` while it runs.
    #   ``P dedupe:<user>:<sha256 of the Message-ID>``  STRING the id queued for that
    #                                   Message-ID, for [submission] dedupe_window.

    #: The data format this code reads and writes. A daemon starts on this version or the
    #: one before it (a rolling upgrade across one version step: code of version N must
    #: read and write data of version N-1 as long as it is not migrated), refuses newer
    #: data, and refuses older data until `mailrelay migrate` has run.
    DATA_VERSION = 1

    #: Migration steps, by the version they migrate from: (description, method name). A
    #: step must be idempotent (it is run again if `mailrelay migrate` was interrupted
    #: before the version was bumped) and must keep the data usable by running daemons of
    #: the previous release. Version 0 is data written before the format had a version.
    MIGRATIONS: dict[int, tuple[str, str]] = {
        0: ("record the data version (data written before data versions existed has the "
            "layout of version 1)", "_migrate_0_to_1"),
    }

    class DataVersionError(StorageError):
        """The Redis data has a format this code cannot use (or cannot migrate now)."""

    def _data_marker_keys(self) -> list[str]:
        """Keys whose existence means the database holds mailrelay data (for a missing version)."""
        k = self.keys
        return [k.queue_domains, k.leases, k.index_prefix + "time", k.events, k.suppressed,
                k.bounces, k.verp_secret, k.bounces_unmatched]

    @property
    def _version_key(self) -> str:
        return self.keys.prefix + "meta:version"

    @property
    def _cluster_key(self) -> str:
        return self.keys.prefix + "cluster"

    def _member_key(self, owner: str) -> str:
        return f"{self.keys.prefix}cluster:{owner}"

    async def data_version(self) -> tuple[int, bool]:
        """
        The stored data format version and whether it was set just now (an empty database
        gets DATA_VERSION). Data without a version is version 0.
        """
        version, created = await self._eval(DATA_VERSION_SCRIPT,
                                             [self._version_key, *self._data_marker_keys()],
                                             [self.DATA_VERSION])
        try:
            return int(version), bool(int(created))
        except ValueError:
            raise self.DataVersionError(
                f"{self._version_key} is {version!r}, not a data format version") from None

    async def check_data_version(self) -> int:
        """
        At a daemon's start: the data version, set on an empty database. Raises
        DataVersionError when it is newer than DATA_VERSION or older than the version
        before it; logs a warning when it is the version before (run `mailrelay migrate`
        once every daemon runs this release).
        """
        version, created = await self._timed(defer.ensureDeferred(self.data_version()), self.timeout)
        where = f"the Redis data under key prefix {self.keys.prefix!r}"
        if created:
            log.info("{where} is new: data format version {v}", where=where, v=version)
        elif version > self.DATA_VERSION:
            raise self.DataVersionError(
                f"{where} has data format version {version}, newer than this mailrelay "
                f"understands ({self.DATA_VERSION}): upgrade mailrelay")
        elif version < self.DATA_VERSION - 1:
            raise self.DataVersionError(
                f"{where} has data format version {version}, too old for this mailrelay "
                f"({self.DATA_VERSION}): run `mailrelay migrate -c FILE` first")
        elif version < self.DATA_VERSION:
            log.warn("{where} has data format version {v} (this mailrelay writes {current}): run "
                     "`mailrelay migrate` once every daemon runs this release", where=where,
                     v=version, current=self.DATA_VERSION)
        return version

    async def migrate(self, *, force: bool = False, report: Any = None) -> list[tuple[int, int, str]]:
        """
        Bring the data to DATA_VERSION one registered step at a time; returns the steps
        run as (from, to, description); ``report(text)`` is called before each. Refuses
        (DataVersionError) when the data is newer, when a step is missing, when another
        migration runs, or, unless ``force``, when a live daemon (heartbeat) does not
        understand DATA_VERSION yet.
        """
        token = os.urandom(8).hex()
        lock = self.keys.prefix + "meta:migrating"
        if not await self._admin(self._call("SET", lock, token, "NX", "EX", 3600)):
            raise self.DataVersionError(f"another `mailrelay migrate` is running ({lock} is set)")
        try:
            version, created = await self._admin(defer.ensureDeferred(self.data_version()))
            if created or version == self.DATA_VERSION:
                return []
            if version > self.DATA_VERSION:
                raise self.DataVersionError(
                    f"the data has format version {version}, newer than this mailrelay "
                    f"understands ({self.DATA_VERSION}): upgrade mailrelay")
            if not force:
                behind = [m for m in await self.cluster_members()
                          if m["data_version"] < self.DATA_VERSION]
                if behind:
                    names = ", ".join(f"{m['owner']} (mailrelay {m['version']}, data version "
                                      f"{m['data_version']})" for m in behind)
                    raise self.DataVersionError(
                        f"live daemons do not understand data version {self.DATA_VERSION} "
                        f"yet: {names}; upgrade them first (or use --force)")
            done = []
            while version < self.DATA_VERSION:
                if version not in self.MIGRATIONS:
                    raise self.DataVersionError(f"no migration step from data version {version}")
                description, method = self.MIGRATIONS[version]
                if report is not None:
                    report(f"data version {version} -> {version + 1}: {description}")
                await getattr(self, method)()
                swapped = await self._admin(self._eval(
                    SET_VERSION_SCRIPT, [self._version_key], [version, version + 1]))
                if int(swapped) != 1:
                    raise self.DataVersionError(
                        f"the data version changed during the migration from {version}")
                done.append((version, version + 1, description))
                version += 1
            return done
        finally:
            try:
                await self._admin(self._eval(RELEASE_LOCK_SCRIPT, [lock], [token]))
            except StorageError:
                pass  # the lock expires by itself

    async def _migrate_0_to_1(self) -> None:
        """Version 0 has the layout of version 1: nothing to change."""

    # -- heartbeats --

    async def heartbeat(self, owner: str, info: dict[str, Any], ttl: float) -> tuple[int, int | None]:
        """
        Record that daemon ``owner`` is alive, with ``info`` (str/int values, or JSON-able
        lists and dicts), for ``ttl`` seconds. Returns (Redis time in ms, stored data
        version or None).
        """
        flat: list[Any] = []
        for name, value in info.items():
            if isinstance(value, (list, dict)):
                value = _JSON.encode(value)
            flat += [name, value]
        now, version = await self._timed(self._eval(
            HEARTBEAT_SCRIPT, [self._cluster_key, self._member_key(owner), self._version_key],
            [owner, int(ttl * 1000), *flat]), self.timeout)
        return int(now), (int(version) if version not in (b"", "", None) else None)

    async def leave_cluster(self, owner: str) -> None:
        """A daemon that stops: drop its heartbeat at once."""
        await self._timed(self._eval(LEAVE_CLUSTER_SCRIPT,
                                     [self._cluster_key, self._member_key(owner)], [owner]),
                          self.timeout)

    async def cluster_members(self) -> list[dict[str, Any]]:
        """
        The live daemons, by start time: ``[{"owner", "hostname", "pid", "version",
        "data_version", "started_ms", "beat_ms", "age" (seconds since its last heartbeat,
        Redis clock), "uptime" (seconds), "interval" (seconds between heartbeats), "held"
        (delivery jobs leased), "domains" ({domain: jobs}), "listeners" (["submission
        127.0.0.1:2587", ...])}]``. For `mailrelay cluster` and the stats API.
        """
        reply = await self._admin(self._eval(CLUSTER_MEMBERS_SCRIPT, [self._cluster_key],
                                             [self.keys.prefix + "cluster:"]))
        now = int(reply[0])
        members = []
        for k in range(1, len(reply), 2):
            owner, flat = reply[k].decode(), reply[k + 1]
            fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

            def number(name: str, kind: Any = int) -> Any:
                try:
                    return kind(fields.get(name, "0") or 0)
                except ValueError:
                    return kind(0)

            def loaded(name: str, default: Any) -> Any:
                try:
                    return json.loads(fields[name])
                except (KeyError, ValueError):
                    return default

            beat, started = number("beat"), number("started")
            members.append({
                "owner": owner, "hostname": fields.get("hostname", ""), "pid": number("pid"),
                "version": fields.get("version", ""), "data_version": number("data_version"),
                "started_ms": started, "beat_ms": beat, "age": max(0, now - beat) / 1000,
                "uptime": max(0, now - started) / 1000 if started else 0.0,
                "interval": number("interval", float), "held": number("held"),
                "domains": loaded("domains", {}), "listeners": loaded("listeners", []),
            })
        members.sort(key=lambda m: (m["started_ms"], m["owner"]))
        return members

    # -- submission de-duplication ([submission] dedupe_window) --

    def dedupe_key(self, user: str | None, message_id_header: str) -> str:
        """``P dedupe:<user>:<sha256 of the Message-ID>`` (no user: ``-``; the Message-ID with
        its whitespace folded, case kept)."""
        import hashlib

        normalized = " ".join(message_id_header.split())
        digest = hashlib.sha256(normalized.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{self.keys.prefix}dedupe:{user or '-'}:{digest}"

    def _dedupe_call(self, keys: list[str], args: list[Any],
                     dedupe: tuple[str | None, str, float]) -> tuple[list[str], list[Any]]:
        """The enqueue script's keys and arguments extended for DEDUPE_ENQUEUE_SCRIPT."""
        user, message_id_header, window = dedupe
        return ([*keys, self.dedupe_key(user, message_id_header)],
                [*args, self.keys.prefix + "msg:", max(1, int(window * 1000))])

    @staticmethod
    def _duplicate_of(result: Any) -> str | None:
        """The id of the message already queued, from a DEDUPE_ENQUEUE_SCRIPT reply."""
        text = result.decode() if isinstance(result, bytes) else str(result)
        return text[4:] if text.startswith("DUP:") else None


# -- administration (mailrelay queue) ---------------------------------------------

#: Jobs of one domain queue read per ADMIN_DOMAIN_SUMMARY_SCRIPT call.
ADMIN_CHUNK = 1000


# -- connecting ---------------------------------------------------------------------------


def connect_redis(config: Config, managed_socket: str | None) -> Any:
    """
    A lazy txredisapi connection pool to the configured Redis (bytes replies), its commands
    encoded by :func:`encode_command`. With ``[redis] sentinels`` it is a
    :class:`SentinelFollower`, used the same way.
    """
    import txredisapi

    common = dict(charset=None, convertNumbers=False)
    if config.redis.sentinels:
        return SentinelFollower(list(config.redis.sentinels), config.redis.master_name,
                                poolsize=4, **common)
    if managed_socket is not None:
        pool = txredisapi.lazyUnixConnectionPool(managed_socket, poolsize=4, reconnect=True, **common)
    else:
        address: RedisAddress = parse_redis_url(config.redis.url)
        if address.path:
            pool = txredisapi.lazyUnixConnectionPool(address.path, dbid=address.db, poolsize=4,
                                                     password=address.password, reconnect=True,
                                                     **common)
        else:
            pool = txredisapi.lazyConnectionPool(address.host, address.port, dbid=address.db,
                                                 poolsize=4, password=address.password,
                                                 username=address.username, connectTimeout=5,
                                                 reconnect=True, **common)
    # The pool connects on a later reactor turn (and reconnects) with its factory's protocol.
    libcompat.use_redis_protocol(pool, _redis_protocols()[0])
    _quiet_connection_errors(pool)
    return pool


def _quiet_connection_errors(pool: Any) -> None:
    """
    A lazy pool's factory fails its ``deferred`` when a connection's AUTH or SELECT fails (e.g.
    the pool is closed while connecting, at shutdown); nobody waits on it, and txredisapi has
    logged the reason already, so the failure must not surface as "Unhandled error in Deferred".
    """
    connected = getattr(libcompat.redis_pool_factory(pool), "deferred", None)
    if connected is not None:
        connected.addErrback(lambda failure: None)


def encode_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    """
    A Redis command in RESP, as txredisapi's ``_build_command`` makes it with ``charset=None``
    (str as UTF-8, float as ``format(x, "f")``, bytes-like as their bytes, anything else as
    ``str(x)``), in one join instead of a bytearray extended token by token: a batch of
    queued messages is a command of some 40 arguments per message.
    """
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if type(arg) is not bytes:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, float):
                arg = format(arg, "f").encode()
            elif isinstance(arg, (bytes, bytearray, memoryview)):
                arg = bytes(arg)
            else:
                arg = str(arg).encode()
        if len(arg) < 4096:
            append(b"$%d\r\n%b\r\n" % (len(arg), arg))
        else:  # not copied twice
            parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


_REDIS_PROTOCOLS: tuple[type, type] | None = None


def _redis_protocols() -> tuple[type, type]:
    """txredisapi's protocol and its Sentinel variant, with :func:`encode_command`
    (built on first use: importing txredisapi installs the reactor)."""
    global _REDIS_PROTOCOLS
    if _REDIS_PROTOCOLS is None:
        import txredisapi

        _REDIS_PROTOCOLS = (
            libcompat.with_command_encoder(txredisapi.RedisProtocol, encode_command),
            libcompat.with_command_encoder(txredisapi.SentinelRedisProtocol, encode_command),
        )
    return _REDIS_PROTOCOLS


#: Seconds between PINGs on a Sentinel subscription, and how long the PONG may take
#: before the connection is considered dead and reopened (with backoff).
SENTINEL_PING_INTERVAL = 10.0
SENTINEL_PING_TIMEOUT = 5.0
#: Finding the primary through the Sentinels before a connection attempt: one round of
#: questions waits this long for an answer naming a healthy primary, and rounds are repeated
#: until SENTINEL_DISCOVERY_TIMEOUT (during a failover, no Sentinel names one for a moment).
SENTINEL_DISCOVERY_ROUND = 0.5
SENTINEL_DISCOVERY_TIMEOUT = 10.0


def _is_error_reply(error: BaseException) -> bool:
    """Redis answered the command with an error (a definite answer: e.g. READONLY, OOM), as
    opposed to no answer at all (a timeout, a lost connection)."""
    import txredisapi

    if isinstance(error, defer.FirstError):  # pipelines
        error = error.subFailure.value
    return isinstance(error, txredisapi.ResponseError)


def _is_readonly(failure: Any) -> bool:
    """The command failed because the server is a replica (a demoted primary)."""
    value = failure.value
    if isinstance(value, defer.FirstError):  # pipelines
        value = value.subFailure.value
    return str(value).startswith("READONLY")


class SentinelFollower:
    """
    The connection pool to the primary of a Sentinel-monitored Redis, following failovers.

    Used like a txredisapi connection handler (``execute_command``, ``eval``, ``pipeline``,
    ``disconnect``; anything else is passed to the pool). The pool asks the Sentinels for
    the primary's address before each connection and checks ``ROLE`` once connected.
    Besides, one subscription to ``+switch-master`` per Sentinel (reopened with backoff,
    PINGed to notice a silent Sentinel): when one announces a new address for our master,
    every pool connection is closed, and the pool reconnects to the address the Sentinels
    now give. A ``READONLY`` reply (a demoted primary, a missed announcement) does the same.
    Commands in flight on a closed connection fail (451 to the client); later ones wait
    for the new connection.
    """

    def __init__(self, sentinels: list[tuple[str, int]], master_name: str, *,
                 poolsize: int = 4, **connection_kwargs: Any) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import HostnameEndpoint

        master_factory, subscription_factory = _sentinel_factories()
        self.master_name = master_name
        self.sentinel = master_factory.sentinel_class(sentinels)
        self.pool = self.sentinel.master_for(master_name, factory_class=master_factory,
                                             poolsize=poolsize, **connection_kwargs)
        _quiet_connection_errors(self.pool)
        self._generation = 0          # bumped whenever the pool's connections are dropped
        self._master: str | None = None   # "host:port" of the last +switch-master followed
        self._subscribed: set[str] = set()
        self._subscriptions = []
        for host, port in sentinels:
            factory = subscription_factory(self, f"{host}:{port}")
            factory.startConnecting(HostnameEndpoint(reactor, host, port, timeout=5))
            self._subscriptions.append(factory)

    # -- the connection handler interface ------------------------------------------------

    def execute_command(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        return self._watch(self.pool.execute_command(*args, **kwargs), self._generation)

    def eval(self, script: str, keys: list[Any] = [], args: list[Any] = []) -> defer.Deferred:
        return self._watch(self.pool.eval(script, keys, args), self._generation)

    def pipeline(self) -> defer.Deferred:
        generation = self._generation
        return self.pool.pipeline().addCallback(_WatchedPipeline, self, generation)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "pool":
            raise AttributeError(name)
        attribute = getattr(self.pool, name)
        if not callable(attribute):
            return attribute

        def watched(*args: Any, **kwargs: Any) -> Any:
            generation = self._generation
            result = attribute(*args, **kwargs)
            if isinstance(result, defer.Deferred):
                return self._watch(result, generation)
            return result
        return watched

    def disconnect(self) -> defer.Deferred:
        """Close the subscriptions, the pool and the connections to the Sentinels."""
        ds = [factory.disconnect() for factory in self._subscriptions]
        ds += [self.pool.disconnect(), self.sentinel.disconnect()]
        return defer.gatherResults(ds, consumeErrors=True)

    # -- following the master ----------------------------------------------------------------

    def switch_master(self, message: Any) -> None:
        """A ``+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`` message."""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        parts = str(message).split()
        if len(parts) != 5 or parts[0] != self.master_name:
            return
        old, new = f"{parts[1]}:{parts[2]}", f"{parts[3]}:{parts[4]}"
        if new == self._master:
            return  # another Sentinel announced it first
        self._master = new
        log.warn("Redis master {name} moved from {old} to {new} (Sentinel)",
                 name=self.master_name, old=old, new=new)
        self.drop_connections()

    def drop_connections(self, only: Any = None) -> None:
        """Close the pool's connections (``only``: those); each reconnects via the Sentinels."""
        self._generation += 1
        for connection in libcompat.redis_pool_connections(self.pool):
            if only is None or connection in only:
                connection.transport.loseConnection()

    def _watch(self, d: defer.Deferred, generation: int) -> defer.Deferred:
        def check(failure: Any) -> Any:
            # Commands sent before the last drop may still report READONLY: ignore them.
            if generation == self._generation and _is_readonly(failure):
                log.warn("Redis answered READONLY: it is no longer the master {name}; "
                         "reconnecting via Sentinel", name=self.master_name)
                self.drop_connections()
            return failure
        return d.addErrback(check)

    def subscribed(self, address: str) -> None:
        """A subscription to ``+switch-master`` is (again) in place on Sentinel ``address``."""
        if address not in self._subscribed:
            self._subscribed.add(address)
            log.info("following Redis master {name}: subscribed to +switch-master on Sentinel "
                     "{address}", name=self.master_name, address=address)
            return
        # Resubscribed after losing the Sentinel: an announcement may have been missed.
        log.info("subscribed again to +switch-master on Sentinel {address}", address=address)
        d = self.sentinel.discover_master(self.master_name)
        d.addCallbacks(self._check_master, lambda f: None)

    def _check_master(self, address: tuple[str, int]) -> None:
        stale = []
        for connection in list(getattr(libcompat.redis_pool_factory(self.pool), "pool", ())):
            peer = connection.transport.getPeer()
            if (getattr(peer, "host", None), getattr(peer, "port", None)) != tuple(address):
                stale.append(connection)
        if stale:
            self._master = "{}:{}".format(*address)
            log.warn("Redis master {name} is now {new} (Sentinel); reconnecting",
                     name=self.master_name, new=self._master)
            self.drop_connections(stale)


class _WatchedPipeline:
    """A pipeline whose READONLY failure drops the follower's connections."""

    def __init__(self, connection: Any, follower: SentinelFollower, generation: int) -> None:
        self._connection = connection
        self._follower = follower
        self._generation = generation

    def execute_pipeline(self) -> defer.Deferred:
        return self._follower._watch(self._connection.execute_pipeline(), self._generation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


_SENTINEL_FACTORIES: tuple[Any, Any] | None = None


def _sentinel_factories() -> tuple[Any, Any]:
    """The txredisapi factory classes of :class:`SentinelFollower` (built on first use:
    importing txredisapi installs the reactor)."""
    global _SENTINEL_FACTORIES
    if _SENTINEL_FACTORIES is not None:
        return _SENTINEL_FACTORIES
    import txredisapi
    from twisted.internet import reactor

    class MasterProtocol(_redis_protocols()[1]):  # type: ignore[misc]
        """txredisapi's check that the server is the master, fixed for bytes replies:
        ``ROLE`` answers ``b"master"`` with ``charset=None``, which txredisapi compares to
        ``"master"`` and so never accepts a connection."""

        def connectionMade(self) -> defer.Deferred:
            def check_role(role: Any) -> Any:
                kind = role[0].decode() if isinstance(role[0], bytes) else role[0]
                if self.factory.is_master and kind != "master":
                    self.transport.loseConnection()
                    return None
                return txredisapi.RedisProtocol.connectionMade(self)

            if self.password is not None:
                self.auth(self.password, self.username)
            d = self.role().addCallback(check_role)
            d.addErrback(lambda f: self.transport.loseConnection())
            return d

    class PollingSentinel(txredisapi.Sentinel):
        """txredisapi asks the Sentinels once per connection attempt and, when none names a
        healthy primary (the old one is down, the new one not promoted yet), waits its whole
        discovery_timeout (10 s) before failing, and the pool with it: a failover then costs
        ten seconds more than it takes. Ask again in short rounds instead."""

        discovery_timeout = SENTINEL_DISCOVERY_ROUND

        def discover_master(self, service_name: str) -> defer.Deferred:
            return defer.ensureDeferred(self._discover(service_name))

        async def _discover(self, service_name: str) -> Any:
            deadline = reactor.seconds() + SENTINEL_DISCOVERY_TIMEOUT
            while True:
                try:
                    return await txredisapi.Sentinel.discover_master(self, service_name)
                except txredisapi.MasterNotFoundError:
                    if reactor.seconds() >= deadline:
                        raise

    class MasterFactory(txredisapi.SentinelConnectionFactory):
        protocol = MasterProtocol
        sentinel_class = PollingSentinel

    class SubscriptionProtocol(txredisapi.SubscriberProtocol):
        """SUBSCRIBE +switch-master once connected; PING now and then."""

        heartbeat: task.LoopingCall | None = None

        def connectionMade(self) -> Any:
            result = txredisapi.SubscriberProtocol.connectionMade(self)
            d = self.whenConnected()
            d.addCallback(lambda _: self.subscribe("+switch-master"))
            d.addCallbacks(self._subscribed, self._failed)
            return result

        def _subscribed(self, _: Any) -> None:
            self.heartbeat = task.LoopingCall(self._ping)
            self.heartbeat.start(SENTINEL_PING_INTERVAL, now=False)
            self.factory.follower.subscribed(self.factory.address)

        def _ping(self) -> defer.Deferred:
            return self.ping().addTimeout(SENTINEL_PING_TIMEOUT, reactor).addErrback(self._failed)

        def _failed(self, failure: Any) -> None:
            if self.transport is not None:
                self.transport.abortConnection()

        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            self.factory.follower.switch_master(message)

        def connectionLost(self, why: Any) -> None:
            if self.heartbeat is not None and self.heartbeat.running:
                self.heartbeat.stop()
            txredisapi.SubscriberProtocol.connectionLost(self, why)

    class SubscriptionFactory(txredisapi.SubscriberFactory):
        protocol = SubscriptionProtocol

        def __init__(self, follower: SentinelFollower, address: str) -> None:
            txredisapi.SubscriberFactory.__init__(self, isLazy=True)
            self.follower = follower
            self.address = address

    _SENTINEL_FACTORIES = (MasterFactory, SubscriptionFactory)
    return _SENTINEL_FACTORIES
