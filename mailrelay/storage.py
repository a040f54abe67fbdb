"""
storage: every Redis key and Lua script mailrelay uses, and the connection to Redis.

JOB
    Owns the data model in Redis; services call the methods of :class:`Storage`
    and never name a key. Data flows one way: submission -> queue -> delivery
    -> events -> tracking.

SECURITY
    Trusts the Redis it is configured with (managed: a unix socket in
    state_dir, mode 0700; external: URL with optional password, or Sentinel).

DATA (all under ``[redis] key_prefix``, written below as ``P``)
    ``P msg:<id>``         HASH   the envelope and summary of one accepted message:
                                  sender, user, client, received_at (ms), size,
                                  tag, metadata (JSON), from/to/cc/subject/message_id,
                                  rcpt_count, and per recipient i: ``rcpt:<i>``
                                  (address) and ``state:<i>`` (queued, ...).
    ``P body:<id>``        STRING the message as it will be delivered.
    ``P queue:domains``    ZSET   destination domains by earliest due time (ms).
    ``P queue:d:<domain>`` ZSET   delivery jobs ``<id>.<i>`` of a domain, by due time (ms).
    ``P events``           STREAM the event log (type, msg, at, ...) read by tracking.
    ``P rate:user:<user>:<window>`` STRING per-user sending counters.

DIAGNOSTICS
    :class:`StorageUnavailable` (no answer within ``[redis] timeout``, or WAIT
    short of ``min_replicas``) and :class:`StorageFull` (Redis refused writes:
    OOM) are the two failures callers turn into 451 / 452.

CONFIGURATION
    ``[redis]`` url, sentinels, master_name, key_prefix, min_replicas,
    min_replicas_timeout, timeout.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay.config import Config, RedisAddress, parse_redis_url

log = Logger()

#: Events kept in the stream (approximate trimming).
EVENTS_MAXLEN = 1_000_000

#: Share of ``[redis] timeout`` after which the enqueue script refuses to
#: store (measured on Redis's clock): a write that arrives late, e.g. replayed
#: after an outage, is never stored once its client has been told 451.
DEADLINE_SHARE = 0.8


class StorageError(Exception):
    """Base of the storage failures callers map to SMTP replies."""


class StorageUnavailable(StorageError):
    """Redis did not store the data in time; nothing was stored (451 4.3.0)."""


class StorageFull(StorageError):
    """Redis refuses writes because it is out of memory (452 4.3.1)."""


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

# KEYS: msg, body, queue:domains, events, then one queue:d:<domain> per recipient
# ARGV: id, deadline_ms, due_offset_ms, events_maxlen, n_fields, field/value pairs...,
#       body, then per recipient: address, domain-key-index (1-based into KEYS)
ENQUEUE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now > tonumber(ARGV[2]) then
  return 'LATE'
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'EXISTS'
end
local id = ARGV[1]
local due = now + tonumber(ARGV[3])
local nfields = tonumber(ARGV[5])
local hash = {}
local pos = 6
for i = 1, nfields * 2 do
  hash[i] = ARGV[pos]
  pos = pos + 1
end
local body = ARGV[pos]
pos = pos + 1
local i = 0
while pos <= #ARGV do
  local rcpt = ARGV[pos]
  local dkey = KEYS[tonumber(ARGV[pos + 1])]
  hash[#hash + 1] = 'rcpt:' .. i
  hash[#hash + 1] = rcpt
  hash[#hash + 1] = 'state:' .. i
  hash[#hash + 1] = 'queued'
  redis.call('ZADD', dkey, due, id .. '.' .. i)
  local domain = string.sub(dkey, #ARGV[pos + 2] + 1)
  local current = redis.call('ZSCORE', KEYS[3], domain)
  if not current or tonumber(current) > due then
    redis.call('ZADD', KEYS[3], due, domain)
  end
  i = i + 1
  pos = pos + 3
end
hash[#hash + 1] = 'rcpt_count'
hash[#hash + 1] = i
hash[#hash + 1] = 'received_at'
hash[#hash + 1] = now
redis.call('HSET', KEYS[1], unpack(hash))
redis.call('SET', KEYS[2], body)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'type', 'queued', 'msg', id, 'at', now)
return 'OK'
"""

# KEYS: msg, body, queue:domains, then queue:d:<domain> per recipient
# ARGV: id, then per recipient: domain
CANCEL_SCRIPT = """
local id = ARGV[1]
local n = tonumber(redis.call('HGET', KEYS[1], 'rcpt_count') or '0')
for i = 0, n - 1 do
  local dkey = KEYS[4 + i]
  if dkey then
    redis.call('ZREM', dkey, id .. '.' .. i)
    if redis.call('ZCARD', dkey) == 0 then
      redis.call('ZREM', KEYS[3], ARGV[2 + i])
    end
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
return n
"""

# KEYS: queue:domains, then queue:d:<domain> per recipient
# ARGV: id, then per recipient: domain
RELEASE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #KEYS do
  local member = ARGV[1] .. '.' .. (i - 2)
  if redis.call('ZSCORE', KEYS[i], member) then
    redis.call('ZADD', KEYS[i], 'XX', 'LT', now, member)
    redis.call('ZADD', KEYS[1], 'LT', now, ARGV[i])
  end
end
return 'OK'
"""

# KEYS: counter; ARGV: limit, window_ms. Returns 1 when under the limit.
RATE_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if n > tonumber(ARGV[1]) then
  return 0
end
return 1
"""


def new_message_id() -> str:
    """A unique, time-ordered message id: 12 hex digits of ms time + 8 random."""
    return f"{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


def recipient_domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Keys:
    """The names of every Redis key, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queue_domains = prefix + "queue:domains"
        self.events = prefix + "events"
        self.domain_queue_prefix = prefix + "queue:d:"

    def msg(self, message_id: str) -> str:
        return f"{self.prefix}msg:{message_id}"

    def body(self, message_id: str) -> str:
        return f"{self.prefix}body:{message_id}"

    def domain_queue(self, domain: str) -> str:
        return self.domain_queue_prefix + domain

    def user_rate(self, user: str, window: int) -> str:
        return f"{self.prefix}rate:user:{user}:{window}"


class Storage:
    """The storage layer: connection to Redis plus the operations the services need."""

    def __init__(self, config: Config, redis: Any, *, clock: Any = None) -> None:
        from twisted.internet import reactor

        self.config = config
        self.redis = redis
        self.keys = Keys(config.redis.key_prefix)
        self.clock = clock or reactor
        self.timeout = config.redis.timeout
        self.min_replicas = config.redis.min_replicas
        self.replica_timeout_ms = int(config.redis.min_replicas_timeout * 1000)
        self.clock_offset_ms = 0.0   # Redis TIME minus our clock
        self._offset_loop: task.LoopingCall | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Measure Redis's clock; warn about settings that could lose mail."""
        await self.measure_clock()
        policy = await self._config_get("maxmemory-policy")
        if policy and policy != "noeviction":
            log.warn("Redis maxmemory-policy is {policy!r}: eviction can delete queued mail; "
                     "set it to noeviction", policy=policy)
        self._offset_loop = task.LoopingCall(self._remeasure)
        self._offset_loop.clock = self.clock
        self._offset_loop.start(60, now=False)

    def stop(self) -> None:
        if self._offset_loop is not None and self._offset_loop.running:
            self._offset_loop.stop()

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

    def _call(self, *args: Any) -> defer.Deferred:
        return self.redis.execute_command(*args)

    def _timed(self, d: defer.Deferred, seconds: float) -> defer.Deferred:
        return d.addTimeout(seconds, self.clock)

    # -- submission ------------------------------------------------------------------

    async def enqueue(self, message: NewMessage) -> str:
        """
        Store a message and one delivery job per recipient, atomically, and
        return its id. Raises StorageUnavailable or StorageFull; in both cases
        the message is not queued (a late write is refused by the script).
        """
        message_id = message.id
        keys = self.keys
        domains: list[str] = []
        domain_index: dict[str, int] = {}
        script_keys = [keys.msg(message_id), keys.body(message_id), keys.queue_domains, keys.events]
        rcpt_args: list[Any] = []
        for rcpt in message.recipients:
            domain = recipient_domain(rcpt)
            if domain not in domain_index:
                script_keys.append(keys.domain_queue(domain))
                domain_index[domain] = len(script_keys)
            domains.append(domain)
            rcpt_args += [rcpt, domain_index[domain], keys.domain_queue_prefix]
        fields = {
            "sender": message.sender,
            "user": message.user or "",
            "client": message.client or "",
            "size": len(message.content),
            "tag": message.tag,
            "metadata": json.dumps(message.metadata, ensure_ascii=False),
        }
        for name, value in message.summary.items():
            fields[name] = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        flat: list[Any] = []
        for name, value in fields.items():
            flat += [name, value]
        deadline = time.time() * 1000 + self.clock_offset_ms + self.timeout * 1000 * DEADLINE_SHARE
        # With min_replicas, jobs become due only after the WAIT could have
        # failed, so that a cancelled message is never picked up meanwhile.
        hold_ms = 2 * self.replica_timeout_ms + 1000 if self.min_replicas else 0
        args = [message_id, int(deadline), hold_ms, EVENTS_MAXLEN, len(fields), *flat,
                message.content, *rcpt_args]
        try:
            if self.min_replicas:
                result, replicas = await self._timed(
                    self._eval_and_wait(script_keys, args),
                    self.timeout + self.replica_timeout_ms / 1000)
            else:
                result = await self._timed(self._eval(ENQUEUE_SCRIPT, script_keys, args), self.timeout)
                replicas = None
        except defer.TimeoutError:
            raise StorageUnavailable("Redis did not answer in time") from None
        except StorageError:
            raise
        except Exception as e:
            if "OOM" in str(e):
                raise StorageFull(str(e)) from None
            raise StorageUnavailable(str(e)) from None
        if result in (b"LATE", "LATE"):
            raise StorageUnavailable("Redis ran the write after its deadline; not stored")
        if result not in (b"OK", "OK"):
            raise StorageUnavailable(f"unexpected reply {result!r}")
        if self.min_replicas:
            if replicas is None or int(replicas) < self.min_replicas:
                await self._cancel(message_id, domains)
                raise StorageUnavailable(
                    f"only {replicas} of {self.min_replicas} replicas confirmed the write")
            self._release(message_id, domains)
        return message_id

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> defer.Deferred:
        return self.redis.eval(script, keys, args)

    async def _eval_and_wait(self, keys: list[str], args: list[Any]) -> tuple[Any, Any]:
        """The enqueue script and WAIT on one connection (WAIT counts that connection's writes)."""
        pipe = await self.redis.pipeline()
        pipe.eval(ENQUEUE_SCRIPT, keys, args)
        pipe.execute_command("WAIT", self.min_replicas, self.replica_timeout_ms)
        result, replicas = await pipe.execute_pipeline()
        return result, replicas

    async def _cancel(self, message_id: str, domains: list[str]) -> None:
        keys = [self.keys.msg(message_id), self.keys.body(message_id), self.keys.queue_domains]
        keys += [self.keys.domain_queue(d) for d in domains]
        try:
            await self._timed(self._eval(CANCEL_SCRIPT, keys, [message_id, *domains]), self.timeout)
        except Exception as e:
            log.warn("could not cancel unreplicated message {id}: {e}; it becomes due in "
                     "{hold}ms and may be delivered", id=message_id, e=e,
                     hold=2 * self.replica_timeout_ms + 1000)

    def _release(self, message_id: str, domains: list[str]) -> None:
        """Make held jobs due now (best effort: otherwise they are due a little later)."""
        keys = [self.keys.queue_domains] + [self.keys.domain_queue(d) for d in domains]
        d = self._eval(RELEASE_SCRIPT, keys, [message_id, *domains])
        d.addErrback(lambda f: None)

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

    # -- reading ------------------------------------------------------------------------

    async def get_message(self, message_id: str) -> dict[str, str] | None:
        """The stored envelope and summary of a message, or None."""
        reply = await self._call("HGETALL", self.keys.msg(message_id))
        if not reply:
            return None
        return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}

    async def get_body(self, message_id: str) -> bytes | None:
        return await self._call("GET", self.keys.body(message_id))

    async def queued_jobs(self, domain: str) -> list[str]:
        """Job ids queued for a destination domain, earliest first."""
        reply = await self._call("ZRANGE", self.keys.domain_queue(domain.lower()), 0, -1)
        return [m.decode() for m in reply]


# -- connecting ---------------------------------------------------------------------------


def connect_redis(config: Config, managed_socket: str | None) -> Any:
    """A lazy txredisapi connection pool to the configured Redis (bytes replies)."""
    import txredisapi

    common = dict(charset=None, convertNumbers=False, reconnect=True)
    if managed_socket is not None:
        return txredisapi.lazyUnixConnectionPool(managed_socket, poolsize=4, **common)
    if config.redis.sentinels:
        sentinel = txredisapi.Sentinel(list(config.redis.sentinels))
        return sentinel.master_for(config.redis.master_name, poolsize=4, **common)
    address: RedisAddress = parse_redis_url(config.redis.url)
    if address.path:
        return txredisapi.lazyUnixConnectionPool(address.path, dbid=address.db, poolsize=4,
                                                 password=address.password, **common)
    return txredisapi.lazyConnectionPool(address.host, address.port, dbid=address.db, poolsize=4,
                                         password=address.password, username=address.username,
                                         connectTimeout=5, **common)
