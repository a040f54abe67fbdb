"""
archiver: the event stream drained into the PostgreSQL archive, batch by batch (issue 18).

JOB
    :class:`ArchiverService` (the twistd service named ``archiver``) runs in every
    daemon as one consumer (named by the daemon's owner id) of the consumer group
    ``archiver`` on ``P events`` (mailrelay.store.archivefeed). Once the archive's
    schema is ready (``ArchiveService.whenSchemaReady()``) it loops:

    1. take over the entries dead daemons left pending longer than ``claim_idle``
       (checked every TAKE_OVER_INTERVAL), else read new entries; a batch holds up to
       ``batch_size`` entries, which doubles while batches come full (up to
       BATCH_MAX) and halves back when they do not: one snapshot call and one
       transaction per batch, however busy the daemon;
    2. read the batch's snapshot from Redis in one script call;
    3. write it into PostgreSQL in one transaction (a :class:`BatchWriter`:
       mailrelay.store.archivewrite.ArchiveWriter), committed with
       ``synchronous_commit`` on;
    4. record in Redis what is archived (not what the writer skipped as unstorable)
       and acknowledge the entries, in one script call;

    and every TRIM_INTERVAL removes the entries every consumer group that counts
    (``archiver``, and ``webhooks`` when this daemon sends webhooks) is done with;
    every RELEASE_INTERVAL it releases the Redis keys of the messages and bounces
    whose ``[archive] release_after`` has passed since they were archived final
    (mailrelay.store.archiverelease: at data version 2 only), RELEASE_BATCH at a time
    and at most RELEASE_MAX per turn.
    Writes are at least once (a daemon dying between 3 and 4 leaves its entries
    pending, and another takes them over): the archive's natural keys make a
    replay store nothing twice. When PostgreSQL does not answer, the same batch is
    written again after 2 s, doubling up to 30 s, for as long as it takes (its
    entries are kept from being taken over meanwhile); acceptance and delivery never
    wait for it, the stream grows, and the archiver catches up by itself. Redis
    failures are retried the same way. Every LAG_INTERVAL it measures how far the
    group is behind (:attr:`ArchiverService.state`: the lag in entries and seconds,
    for /readyz, /metrics and the status page). ``stopService`` lets the batch in
    flight finish (at most STOP_GRACE) and stops.

SECURITY
    Moves stored data from Redis to PostgreSQL; the writer makes untrusted text
    storable (mailrelay.store.archivewrite). No network input of its own.

STANDARDS
    None (Redis Streams consumer groups and PostgreSQL through mailrelay.store).

DIAGNOSTICS
    ``archiver: consumer <owner> of group archiver, started`` once the schema is
    ready; ONE warning when the archive database stops taking writes, ``archiver:
    the archive database at <where> does not answer (<error>); the event stream
    keeps what is not archived (<n> entries behind), mail is accepted and delivered;
    retrying`` (any other write failure, a bug, is logged once with its traceback,
    ``archiver: writing a batch failed; retrying``) and ONE info line when it takes
    them again, ``archiver: the archive database answers again; catching up (<n>
    entries behind)``; likewise ``archiver: Redis does not answer (<error>);
    retrying`` and ``archiver: Redis answers again``. ``archiver: took over <n>
    entries left pending by stopped daemons``; ``archiver: forgot <n> consumer(s) of
    past processes``; ``archiver: the event stream or its consumer group 'archiver' was
    deleted; created the group again``. Entries whose keys were gone (expired, deleted, cancelled) are
    debug lines; entries the writer skips are logged by it. ``/metrics``:
    ``mailrelay_archived_entries_total`` (this process),
    ``mailrelay_cluster_archive_lag_entries`` and ``..._lag_seconds``.

CONFIGURATION
    ``[webhooks]`` (whether the webhooks group counts when trimming), ``[redis]
    timeout`` (each Redis call is bounded by twice it). Redis data: through
    mailrelay.store.archivefeed; PostgreSQL: through the writer given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay import metrics
from mailrelay.config import Config
from mailrelay.services.archive import ArchiveService, one_line_error
from mailrelay.store.archivefeed import ArchiveLag, FeedEntry
from mailrelay.store.archiverecords import ArchiveBatch
from mailrelay.store.archivewrite import ArchiveWriter, WriteResult
from mailrelay.store.errors import ArchiveUnavailable, StorageError
from mailrelay.store.interfaces import ArchiverStorage
from mailrelay.store.streams import is_nogroup

log = Logger()

T = TypeVar("T")

#: Entries per batch: the first, the most (batches double while they come full).
BATCH_MIN = 100
BATCH_MAX = 5000
#: Seconds between reads while the stream has nothing new.
POLL_INTERVAL = 0.2
#: Entries pending this long for another consumer (a dead daemon) are taken over; checked
#: this often. A live consumer keeps its batch's entries fresh while it retries, at most
#: RETRY_MAX apart, so CLAIM_IDLE must be well above RETRY_MAX.
CLAIM_IDLE = 120.0
TAKE_OVER_INTERVAL = 10.0
#: Seconds between trims of the stream, and between measures of the lag. Entries younger
#: than TRIM_KEEP stay (a bounded tail: about 180,000 entries at 1,000 messages a second).
TRIM_INTERVAL = 10.0
TRIM_KEEP = 60.0
LAG_INTERVAL = 5.0
#: Seconds between releases of archived keys; members per script call, and per release turn.
RELEASE_INTERVAL = 5.0
RELEASE_BATCH = 500
RELEASE_MAX = 20_000
#: Consumers of past processes with nothing pending are forgotten after this long idle;
#: looked for this often.
CONSUMER_MAX_IDLE = 86400.0
PRUNE_INTERVAL = 3600.0
#: Seconds before a failed call is tried again, doubling up to RETRY_MAX.
RETRY_START = 2.0
RETRY_MAX = 30.0
#: Seconds stopService waits for the batch in flight.
STOP_GRACE = 10.0


class BatchWriter(Protocol):
    """What the archiver writes a batch with (mailrelay.store.archivewrite.ArchiveWriter):
    everything of the batch committed but the entries it skipped (``WriteResult.skipped``), or
    an exception and nothing committed (:class:`~mailrelay.store.errors.ArchiveUnavailable`
    when PostgreSQL does not answer)."""

    def write(self, batch: ArchiveBatch) -> Awaitable[WriteResult]: ...


@dataclass(frozen=True)
class ArchiverState:
    """What /readyz, /metrics and the status page show of the archiver."""

    #: How far the ``archiver`` group is behind the stream (cluster-wide); None until measured,
    #: or when Redis does not answer.
    lag: ArchiveLag | None
    #: Whether this daemon's archiver writes: its schema is ready and its last write worked.
    writing: bool
    #: Why it does not, in a few words (None when it does).
    problem: str | None = None


class _Stopping(Exception):
    """The service stops: the loop ends where it is."""


class ArchiverService(service.Service):
    """Drains the event stream into the archive (see the module docstring)."""

    name = "archiver"

    def __init__(self, config: Config, get_storage: Callable[[], ArchiverStorage], archive: ArchiveService,
                 make_writer: Callable[[], BatchWriter] | None = None, *, clock: Any = None,
                 claim_idle: float = CLAIM_IDLE, retry_start: float = RETRY_START,
                 retry_max: float = RETRY_MAX, batch_max: int = BATCH_MAX) -> None:
        from twisted.internet import reactor

        self.config = config
        self.get_storage = get_storage
        self.archive = archive
        self.make_writer = make_writer or self._archive_writer
        self.clock = clock or reactor
        self.claim_idle = claim_idle
        self.retry_start = retry_start
        self.retry_max = retry_max
        self.batch_max = batch_max
        self.batch_size = min(BATCH_MIN, batch_max)
        self.call_timeout = 2 * config.redis.timeout
        self.storage: ArchiverStorage | None = None
        self.consumer = ""
        #: The consumer groups whose needs hold the stream back when trimming.
        self.groups: list[str] = []
        self.lag: ArchiveLag | None = None
        self.writing = False
        self.problem: str | None = "waiting for the archive database's schema"
        self._stopping = False
        self._task: defer.Deferred[None] | None = None
        self._sleep: defer.Deferred[Any] | None = None  # the loop's wait, cancelled at stop
        self._lag_loop: task.LoopingCall | None = None
        self._group_ready = False
        self._next_take_over = 0.0
        self._next_trim = 0.0
        self._next_prune = 0.0
        self._next_release = 0.0
        self._failing: dict[str, type] = {}  # "archive" / "redis" -> the kind of error warned about

    def _archive_writer(self) -> BatchWriter:
        # the retentions say which days are past them: a day within them whose partition does
        # not exist (a message received before the archive's first day) is made, not skipped
        tracking = self.config.tracking
        return ArchiveWriter(self.archive.write, retention=tracking.retention,
                             content_retention=tracking.content_retention)

    @property
    def state(self) -> ArchiverState:
        return ArchiverState(lag=self.lag, writing=self.writing, problem=self.problem)

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.storage = self.get_storage()
        self.consumer = self.storage.owner
        self.groups = [self.storage.ARCHIVE_GROUP]
        if self.config.webhooks:
            self.groups.append(self.storage.WEBHOOK_GROUP)
        self._lag_loop = task.LoopingCall(self._measure_lag)
        self._lag_loop.clock = self.clock
        self._lag_loop.start(LAG_INTERVAL, now=True).addErrback(
            lambda f: log.failure("archiver: lag loop failed", f))
        self._task = defer.ensureDeferred(self._run())
        self._task.addErrback(self._run_failed)

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        if self._lag_loop is not None and self._lag_loop.running:
            self._lag_loop.stop()
        if self._sleep is not None:
            self._sleep.cancel()
        running = self._task
        if running is None or running.called:
            return
        finished: defer.Deferred[None] = defer.Deferred()

        def done(result: Any) -> Any:
            if not finished.called:
                finished.callback(None)
            return result

        running.addBoth(done)
        timer = self.clock.callLater(STOP_GRACE, done, None)
        await finished  # the batch in flight is written and acknowledged, or the grace is over
        if timer.active():
            timer.cancel()
        if not running.called:
            log.warn("archiver: the batch in flight did not finish within {grace:g}s; its entries stay "
                     "pending and are taken over later", grace=STOP_GRACE)
            running.cancel()

    def _run_failed(self, failure: Any) -> None:
        if not failure.check(defer.CancelledError, _Stopping):
            log.failure("archiver: stopped by an unexpected error", failure)

    # -- the loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._interruptible(self.archive.whenSchemaReady())
        except (defer.CancelledError, _Stopping):
            return
        writer = self.make_writer()
        self.writing, self.problem = True, None
        log.info("archiver: consumer {consumer} of group {group}, started", consumer=self.consumer,
                 group=self.groups[0])
        now = self.clock.seconds()
        self._next_take_over = self._next_trim = self._next_release = now
        self._next_prune = now + PRUNE_INTERVAL
        delay = self.retry_start
        while not self._stopping:
            try:
                try:
                    full = await self._cycle(writer)
                except (defer.CancelledError, _Stopping):
                    raise
                except Exception as e:  # a bug: logged once, tried again (the batch is taken over later)
                    if self._failing.get("cycle") is not type(e):
                        log.failure("archiver: a batch failed; trying again", error=e)
                    self._failing["cycle"] = type(e)
                    await self._pause(delay)
                    delay = min(delay * 2, self.retry_max)
                    continue
                self._failing.pop("cycle", None)
                delay = self.retry_start
                if not full:
                    await self._pause(POLL_INTERVAL)
            except (defer.CancelledError, _Stopping):
                return

    async def _cycle(self, writer: BatchWriter) -> bool:
        """One batch (or nothing new); whether the batch came full (more is waiting)."""
        storage = self._storage()
        if self._stopping:
            raise _Stopping()
        if not self._group_ready:
            if await self._redis(storage.archive_create_group):
                log.info("archiver: created consumer group {group!r} on the event stream",
                         group=storage.ARCHIVE_GROUP)
            self._group_ready = True
        entries: list[FeedEntry] = []
        now = self.clock.seconds()
        if now >= self._next_take_over:
            self._next_take_over = now + TAKE_OVER_INTERVAL
            entries = await self._redis(storage.archive_take_over, self.consumer, self.claim_idle,
                                        self.batch_size)
            if entries:
                log.info("archiver: took over {n} entries left pending by stopped daemons", n=len(entries))
        taken_over = bool(entries)
        if not entries:
            entries = await self._redis(storage.archive_read, self.consumer, self.batch_size)
        if entries:
            await self._archive(writer, entries)  # finished even when the service stops meanwhile
        if self._stopping:
            raise _Stopping()
        full = taken_over or len(entries) >= self.batch_size
        if not taken_over:
            self.batch_size = (min(self.batch_size * 2, self.batch_max) if full
                               else max(min(BATCH_MIN, self.batch_max), self.batch_size // 2))
        await self._housekeeping()
        return full

    async def _archive(self, writer: BatchWriter, entries: list[FeedEntry]) -> None:
        storage = self._storage()
        batch = await self._redis(storage.archive_snapshot, entries)
        for missing_id, reason in batch.missing.items():
            log.debug("archiver: nothing to archive for {id}: {reason}", id=missing_id, reason=reason)
        ids = [entry.id for entry in entries]
        if batch:
            result = await self._write(writer, batch, ids)
            batch = result.written_part(batch)
        await self._redis(storage.archive_mark, batch, ids)
        metrics.ARCHIVED_ENTRIES.inc(len(ids))

    async def _write(self, writer: BatchWriter, batch: ArchiveBatch, ids: list[str]) -> WriteResult:
        """Write ``batch``, again and again until it is committed (or the service stops)."""
        delay = self.retry_start
        while True:
            try:
                result = await writer.write(batch)
            except defer.CancelledError:
                raise
            except Exception as e:
                self._write_failed(e)
                await self._pause(delay)
                delay = min(delay * 2, self.retry_max)
                try:  # still ours: not taken over as a dead daemon's
                    await self._bounded(self._storage().archive_keep(self.consumer, ids))
                except Exception:
                    pass  # Redis down too: the mark's retries say so
                continue
            if "archive" in self._failing:
                del self._failing["archive"]
                log.info("archiver: the archive database answers again; catching up ({n} entries behind)",
                         n=self.lag.entries if self.lag is not None else "?")
            self.writing, self.problem = True, None
            return result

    def _write_failed(self, error: Exception) -> None:
        self.writing = False
        if isinstance(error, ArchiveUnavailable):
            self.problem = "the archive database does not answer"
            if self._failing.get("archive") is not ArchiveUnavailable:
                log.warn("archiver: the archive database at {where} does not answer ({error}); the event "
                         "stream keeps what is not archived ({n} entries behind), mail is accepted and "
                         "delivered; retrying", where=self.archive.describe(),
                         error=one_line_error(error, self.archive.url),
                         n=self.lag.entries if self.lag is not None else "?")
        else:
            self.problem = f"writing a batch failed: {type(error).__name__}"
            if self._failing.get("archive") is not type(error):
                log.failure("archiver: writing a batch failed; retrying", error=error)
        self._failing["archive"] = type(error)

    async def _housekeeping(self) -> None:
        """Trim the stream, release archived keys and forget past consumers, when due (failures
        wait for next time)."""
        storage = self._storage()
        now = self.clock.seconds()
        if now >= self._next_trim:
            self._next_trim = now + TRIM_INTERVAL
            removed = await self._redis(storage.archive_trim, self.groups, TRIM_KEEP)
            if removed is None:
                log.debug("archiver: stream not trimmed: a consumer group of {groups} does not exist",
                          groups=", ".join(self.groups))
        if now >= self._next_release:
            self._next_release = now + RELEASE_INTERVAL
            released = messages = bounces = 0
            while released < RELEASE_MAX:
                done = await self._redis(storage.release_archived, RELEASE_BATCH)
                messages, bounces = messages + done.messages, bounces + done.bounces
                released += done.messages + done.bounces + done.kept
                if done.messages + done.bounces + done.kept < RELEASE_BATCH:
                    break
            if messages or bounces:
                log.debug("archiver: released the Redis keys of {m} message(s) and {b} bounce(s)",
                          m=messages, b=bounces)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_INTERVAL
            removed = await self._redis(storage.archive_prune_consumers, self.consumer, CONSUMER_MAX_IDLE)
            if removed:
                log.info("archiver: forgot {n} consumer(s) of past processes", n=removed)

    # -- Redis calls: bounded, retried ----------------------------------------------------

    def _storage(self) -> ArchiverStorage:
        assert self.storage is not None
        return self.storage

    async def _bounded(self, call: Awaitable[T]) -> T:
        return await defer.ensureDeferred(call).addTimeout(self.call_timeout, self.clock)

    async def _redis(self, method: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``method(*args)``, again after 2 s (doubling to 30 s) while Redis fails."""
        delay = self.retry_start
        while True:
            try:
                result = await self._bounded(method(*args))
            except (StorageError, defer.TimeoutError) as e:  # what Redis's failures become
                if is_nogroup(e):  # the stream or the group was deleted: made again
                    storage = self._storage()
                    if await self._bounded(storage.archive_create_group()):
                        log.warn("archiver: the event stream or its consumer group {group!r} was deleted; "
                                 "created the group again", group=storage.ARCHIVE_GROUP)
                    continue
                if self._failing.get("redis") is None:
                    error = "no answer in time" if isinstance(e, defer.TimeoutError) else str(e) or type(e).__name__
                    log.warn("archiver: Redis does not answer ({error}); retrying", error=error)
                self._failing["redis"] = type(e)
                await self._pause(delay)
                delay = min(delay * 2, self.retry_max)
                continue
            if self._failing.pop("redis", None) is not None:
                log.info("archiver: Redis answers again")
            return result

    # -- waiting --------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        await self._interruptible(task.deferLater(self.clock, seconds, lambda: None))

    async def _interruptible(self, d: defer.Deferred[T]) -> T:
        if self._stopping:
            d.cancel()
            raise _Stopping()
        self._sleep = d
        try:
            return await d
        finally:
            self._sleep = None

    async def _measure_lag(self) -> None:
        try:
            self.lag = await self._bounded(self._storage().archive_lag())
        except Exception:
            self.lag = None  # unknown while Redis does not answer (the loop's retries log it)
