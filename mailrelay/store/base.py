"""
base: what every store shares: the Redis handle, bounded calls, scripts, Redis's clock.

JOB
    :class:`StoreBase` is the root of the data-area stores (mailrelay.store.queue,
    .suppression, .tracking, ...), which mailrelay.store.datastore composes into the one
    :class:`~mailrelay.store.datastore.Storage` the services receive. It sends commands
    (:meth:`StoreBase._call`) and Lua scripts (:meth:`StoreBase._eval`: EVALSHA, EVAL on
    NOSCRIPT; see mailrelay.store.scripts) on an idle pool connection, flushed at once,
    and turns every failure of the Redis client into the project's exceptions
    (mailrelay.store.errors) before a caller sees it. It measures the offset of Redis's
    clock (``TIME``) every minute, so due times and deadlines are on Redis's clock
    (:meth:`StoreBase.now_ms`), and bounds administrative calls by ``[redis] timeout``
    (:meth:`StoreBase.bounded`). Owns no key.

SECURITY
    Trusts the Redis it is configured with (managed: a unix socket in state_dir, mode
    0700; external: URL with optional password, or Sentinel; see
    mailrelay.store.connection).

STANDARDS
    The Redis protocol (RESP 2) and its scripting commands (EVAL, EVALSHA, SCRIPT LOAD:
    Lua 5.1, run atomically); ``TIME``, ``WAIT``, ``CONFIG GET``.

DIAGNOSTICS
    At start, ``Redis SCRIPT LOAD failed (...): scripts are loaded when first run``
    (harmless: a script Redis does not have is sent by EVAL) and ``Redis
    maxmemory-policy is ...: eviction can delete queued mail``; every minute, when it
    fails, ``Redis clock check failed: ...``.

CONFIGURATION
    ``[redis]`` key_prefix, min_replicas, min_replicas_timeout, timeout; ``[tracking]``
    retention, content_retention; ``[delivery] max_queue_lifetime`` (bodies outlive it).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Awaitable

from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay import libcompat
from mailrelay import netio
from mailrelay.config import Config
from mailrelay.store.errors import StorageError, StorageUnavailable, translate, translate_failure
from mailrelay.store.keys import Keys
from mailrelay.store.scripts import Script, evalsha, load_all
from mailrelay.store.sentinel import SentinelFollower

log = Logger()


def new_owner() -> str:
    """A daemon's identity in the queue leases and heartbeats: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def text_fields(reply: list[bytes]) -> dict[str, str]:
    """An HGETALL reply as the hash's fields as text (bytes that are not UTF-8 replaced)."""
    return {reply[i].decode(errors="replace"): reply[i + 1].decode(errors="replace")
            for i in range(0, len(reply), 2)}


def _reraise(error: Exception) -> None:
    """Raise ``error`` as :func:`translate` makes it (a sending that failed at once)."""
    translated = translate(error)
    if translated is error:
        raise error
    raise translated from error


class StoreBase:
    """The connection to Redis and the helpers every data-area store uses."""

    def __init__(self, config: Config, redis: Any, *, clock: Any = None, owner: str | None = None) -> None:
        from twisted.internet import reactor  # the running reactor, unless a test clock is given

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

    def now_ms(self) -> int:
        """Milliseconds on Redis's clock, as estimated from ours (due times use it)."""
        return int(self.clock.seconds() * 1000 + self.clock_offset_ms)

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

    # -- sending commands and scripts -----------------------------------------------------

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
        """One Redis command; its failures are the project's (mailrelay.store.errors)."""
        try:
            connection = self._idle_connection()
            if connection is None:
                d = self.redis.execute_command(*args)
            else:
                d = self._watched(connection.execute_command(*args))
                netio.flush(connection.transport)
        except Exception as e:  # e.g. txredisapi's "Not connected"
            _reraise(e)
        return d.addErrback(translate_failure)

    async def _text_hash(self, key: str) -> dict[str, str] | None:
        """A hash's fields as text (bytes that are not UTF-8 replaced), or None when it does not exist."""
        reply = await self._call("HGETALL", key)
        return text_fields(reply) if reply else None

    def _eval(self, script: Script, keys: list[str], args: list[Any]) -> defer.Deferred:
        """Run a script (EVALSHA; EVAL on NOSCRIPT: see mailrelay.store.scripts)."""
        try:
            connection = self._idle_connection()
            if connection is None:
                d = evalsha(self.redis.execute_command, script, keys, args, self._loaded_scripts)
            else:
                d = self._watched(evalsha(connection.execute_command, script, keys, args,
                                          self._loaded_scripts))
                netio.flush(connection.transport)
        except Exception as e:  # e.g. "Not connected", or text that is not UTF-8
            _reraise(e)
        return d.addErrback(translate_failure)

    async def _eval_and_wait(self, keys: list[str], args: list[Any], script: Script) -> tuple[Any, Any]:
        """
        The script and WAIT on one connection (WAIT counts that connection's writes). On
        NOSCRIPT (nothing ran) both are sent again with EVAL, so that WAIT follows the write.
        """
        tries = [("EVAL", script.source)]
        if script.sha in self._loaded_scripts:
            tries.insert(0, ("EVALSHA", script.sha))
        try:
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
        except Exception as e:
            _reraise(e)
        raise AssertionError("unreachable")

    def _timed(self, d: defer.Deferred, seconds: float) -> defer.Deferred:
        return d.addTimeout(seconds, self.clock)

    async def bounded(self, call: Awaitable[Any]) -> Any:
        """
        The result of a storage call (a Deferred or a coroutine of this store), bounded by
        ``[redis] timeout``: no answer in time, or any failure, raises StorageUnavailable
        (or the StorageError it was). Administrative calls (``mailrelay queue``, the
        sender domains, ``mailrelay cluster``) go through here.
        """
        try:
            return await self._timed(defer.ensureDeferred(call), self.timeout)
        except defer.TimeoutError:
            raise StorageUnavailable(
                f"Redis did not answer within {self.timeout:g}s") from None
        except StorageError:
            raise
        except Exception as e:
            raise StorageUnavailable(str(e) or type(e).__name__) from None
