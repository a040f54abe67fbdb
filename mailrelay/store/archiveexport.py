"""
archiveexport: the Redis archive of data format version 1 read out whole, for ``mailrelay migrate``.

JOB
    Data version 2 keeps the archive in PostgreSQL (issue 18); release 1 kept it in Redis.
    The migration step 1 -> 2 (:meth:`ArchiveExportStore._migrate_1_to_2`, registered in
    ``ClusterStore.MIGRATIONS``) reads that archive in pages, oldest first, as the
    records of the archive's write path (:mod:`mailrelay.store.archiverecords`), and
    writes them through the archive's writer (the ``archive`` of the
    :class:`~mailrelay.store.cluster.MigrationContext`: an object with ``write(batch)``,
    mailrelay.store.archivewrite's ArchiveWriter as ``mailrelay migrate`` composes it):

    * messages by the time index: each message's hash (a :class:`MessageSnapshot`
      decoded by :meth:`MessageSnapshot.decode`, as the archiver's feed decodes it), its
      whole timeline and its stored body;
    * bounces by their index: each bounce's hash, its score (the time it was
      stored) and its raw report (a :class:`BounceSnapshot`).

    A page is one index read and one command per key, pipelined (no long script: the
    daemons sharing Redis meanwhile are not held up), then the bodies (or raw reports)
    by MGET, a page's split in parts of at most :data:`BODY_BYTES` stored bytes; the
    next page is read while one is written (:func:`read_ahead`). The index is walked by (score,
    member) from the last one read, so entries that come or go meanwhile never make it
    skip one. An index entry whose hash is gone (expired) is counted and left out.

    Once a page is committed to PostgreSQL, what it held is marked in Redis as the
    archiver marks what it archives (the same script, archive_mark.lua, through
    mailrelay.store.archivefeed's :func:`archive_mark_call`; not what the writer skipped
    as unstorable): each message's hash records the length of the timeline copied
    (``archived``, only raised), and each message final and wholly copied, and each
    bounce, is scheduled in ``P archive:release`` (the script schedules at version 1
    while ``P meta:migrating``, the step's lock, exists). Nothing is deleted here:
    release_archived.lua lets them go (after ``[archive] release_after``) once the step
    has recorded version 2, so Redis memory drops as the daemons release them, instead
    of over ``[tracking] retention``. A message still queued is left to the archiver,
    which archives its events and schedules it once it is final. The step can run again
    at any time: the writer's natural keys make a copy written twice one copy, and a
    mark made twice is one mark.

DATA (under ``[redis] key_prefix``, written ``P``; owned by mailrelay.store.queue, .tracking,
.bounces and .archiverelease)
    Reads ``P idx:time``, ``P msg:<id>``, ``P timeline:<id>``, ``P body:<id>``, ``P bounces``,
    ``P bounce:<id>``, ``P bounce:raw:<id>``; writes, through archive_mark.lua, the field
    ``archived`` of ``P msg:<id>`` and members of ``P archive:release``.

SECURITY
    Copies stored text as it is (mail, clients, remote servers: untrusted); the writer
    makes what PostgreSQL refuses storable. Memory is bounded by two pages (500
    messages, at most BODY_BYTES of bodies, or one message larger than that).

STANDARDS
    None beyond Redis's commands.

DIAGNOSTICS
    Progress through the context's ``report``: ``copying N messages and M bounces from
    Redis into PostgreSQL``, every :data:`REPORT_EVERY` messages ``copied N of about M
    messages``, and at the end ``copied N messages (K already expired in Redis) and B
    bounces``. Redis failures as mailrelay.store.errors exceptions (bounded by ``[redis]
    timeout`` per call); the writer's failures pass unchanged. Either stops the step:
    running ``mailrelay migrate`` again copies everything again.

CONFIGURATION
    ``[redis] timeout`` (each call); ``[archive] release_after`` (the grace period of
    what is scheduled for release).
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Generic, Iterator, TypeVar

from twisted.internet import defer

from mailrelay.store.archivefeed import ARCHIVE_MARK_SCRIPT, archive_mark_call
from mailrelay.store.archiverecords import ArchiveBatch, BounceSnapshot, MessageSnapshot
from mailrelay.store.base import StoreBase, text_fields
from mailrelay.store.cluster import MigrationContext
from mailrelay.store.errors import translate

if TYPE_CHECKING:
    from mailrelay.store.archivewrite import WriteResult

T = TypeVar("T")

#: Messages (or bounces) read per page and written per batch.
PAGE_SIZE = 500
#: A progress line every this many messages.
REPORT_EVERY = 10_000
#: Stored bytes of bodies (or raw reports) in one page at most: a page of large messages is
#: split (the page read ahead and the one being written are in memory at once).
BODY_BYTES = 32 * 1024 * 1024


def _parts(items: list[T], size_of: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """``items`` in order, in consecutive parts of at most ``limit`` by ``size_of`` (an item
    larger than that alone); at least one part, empty when there are no items."""
    part: list[T] = []
    total = 0
    for item in items:
        size = size_of(item)
        if part and total + size > limit:
            yield part
            part, total = [], 0
        part.append(item)
        total += size
    yield part


def _amount(count: int, word: str) -> str:
    """``1 message``, ``12,345 messages``: a count for a progress line."""
    return f"{count:,} {word}{'' if count == 1 else 's'}"


async def read_ahead(pages: AsyncIterator[T]) -> AsyncIterator[T]:
    """``pages`` in order, the next one read while the caller works on the current one (the
    migration writes a page into PostgreSQL meanwhile). Use it in ``contextlib.aclosing``: a
    caller that stops early then drops the page read ahead (its failure too) at once."""
    iterator = pages.__aiter__()

    async def take() -> T:
        return await iterator.__anext__()

    pending: defer.Deferred[T] = defer.ensureDeferred(take())
    try:
        while True:
            try:
                page = await pending
            except StopAsyncIteration:
                return
            pending = defer.ensureDeferred(take())
            yield page
    finally:
        pending.addErrback(lambda failure: None)  # read ahead for a caller that stopped: dropped


@dataclass(frozen=True)
class ExportPage(Generic[T]):
    """One page of an index: the records read, and how many entries had no record (expired)."""

    records: tuple[T, ...]
    gone: int


class ArchiveExportStore(StoreBase):
    """The release-1 Redis archive, read page by page (the migration to data version 2)."""

    async def archive_sizes(self) -> tuple[int, int]:
        """Entries of the time index and of the bounces' index (messages and bounces, about)."""
        messages = await self.bounded(self._call("ZCARD", self.keys.time_index))
        bounces = await self.bounded(self._call("ZCARD", self.keys.bounces))
        return int(messages), int(bounces)

    async def _index_pages(self, index: str, size: int) -> AsyncIterator[list[tuple[str, int]]]:
        """``index`` (a sorted set of ids by ms) oldest first, ``size`` (member, score) at a time,
        each page after the last (score, member) read (ties in member order, as Redis keeps them)."""
        after: tuple[int, str] | None = None
        limit = size
        while True:
            low = "-inf" if after is None else after[0]
            reply = await self.bounded(self._call("ZRANGEBYSCORE", index, low, "+inf", "WITHSCORES",
                                                  "LIMIT", 0, limit))
            entries = [(reply[k].decode(errors="replace"), int(float(reply[k + 1])))
                       for k in range(0, len(reply), 2)]
            full = len(entries) == limit
            fresh = [(member, score) for member, score in entries
                     if after is None or (score, member) > (after[0], after[1])]
            if fresh:
                yield fresh
                after = (fresh[-1][1], fresh[-1][0])
                limit = size
            elif full:
                limit *= 2  # a page of ties at the last score, all read already: look further
            if not full:
                return

    async def _read_all(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of ``commands``, sent in one write (a pipeline), bounded by ``[redis] timeout``."""
        async def pipelined() -> list[Any]:
            try:
                pipe = await self.redis.pipeline()
                for command in commands:
                    pipe.execute_command(*command)
                return await pipe.execute_pipeline()
            except Exception as e:
                translated = translate(e)
                if translated is e:
                    raise
                raise translated from e

        return await self.bounded(pipelined())

    async def _bodies(self, keys: list[str]) -> list[bytes | None]:
        """The values of string keys (None: gone), in one MGET (none for no keys)."""
        return await self.bounded(self._call("MGET", *keys)) if keys else []

    async def archived_messages(self, size: int = PAGE_SIZE,
                                body_bytes: int = BODY_BYTES) -> AsyncIterator[ExportPage[MessageSnapshot]]:
        """Every message of the time index, oldest first, each with its whole timeline and its
        stored body (None when it expired: ``content_retention``), a page at a time (a page whose
        bodies hold more than ``body_bytes`` split in as many as needed)."""
        async for entries in self._index_pages(self.keys.time_index, size):
            ids = [member for member, _ in entries]
            n = len(ids)
            replies = await self._read_all([*(("HGETALL", self.keys.msg(i)) for i in ids),
                                            *(("LRANGE", self.keys.timeline(i), 0, -1) for i in ids),
                                            *(("STRLEN", self.keys.body(i)) for i in ids)])
            found = [(entry, text_fields(stored), timeline, int(length)) for entry, stored, timeline, length
                     in zip(entries, replies[:n], replies[n:2 * n], replies[2 * n:]) if stored]
            gone = n - len(found)
            for part in _parts(found, lambda item: item[3], body_bytes):
                bodies = await self._bodies([self.keys.body(entry[0]) for entry, *_ in part])
                snapshots = (MessageSnapshot.decode(message_id, stored, timeline, body, received_ms=score)
                             for ((message_id, score), stored, timeline, _), body in zip(part, bodies))
                records = tuple(snapshot for snapshot in snapshots if snapshot is not None)
                yield ExportPage(records, gone + len(part) - len(records))
                gone = 0

    async def archived_bounces(self, size: int = PAGE_SIZE,
                               raw_bytes: int = BODY_BYTES) -> AsyncIterator[ExportPage[BounceSnapshot]]:
        """Every stored bounce, oldest first (its score in the index is its time), with its raw
        report, a page at a time (split as pages of messages are, by ``raw_bytes``)."""
        async for entries in self._index_pages(self.keys.bounces, size):
            ids = [member for member, _ in entries]
            n = len(ids)
            replies = await self._read_all([*(("HGETALL", self.keys.bounce(i)) for i in ids),
                                            *(("STRLEN", self.keys.bounce_raw(i)) for i in ids)])
            found = [(entry, text_fields(stored), int(length))
                     for entry, stored, length in zip(entries, replies[:n], replies[n:]) if stored]
            gone = n - len(found)
            for part in _parts(found, lambda item: item[2], raw_bytes):
                raws = await self._bodies([self.keys.bounce_raw(entry[0]) for entry, *_ in part])
                records = tuple(BounceSnapshot(id=bounce_id, received_ms=score, stored=stored, raw=raw)
                                for ((bounce_id, score), stored, _), raw in zip(part, raws))
                yield ExportPage(records, gone)
                gone = 0

    async def _migrate_1_to_2(self, context: MigrationContext) -> None:
        """Copy the Redis archive into PostgreSQL (see the module's JOB)."""
        assert context.archive is not None  # ClusterStore.migrate refuses to run without it
        archive = await context.archive()
        messages, bounces = await self.archive_sizes()
        context.report(f"copying {_amount(messages, 'message')} and {_amount(bounces, 'bounce')} from Redis "
                       "into PostgreSQL")
        copied = gone = 0
        async with aclosing(read_ahead(self.archived_messages())) as pages:
            async for page in pages:
                await self._write(context, archive.write, ArchiveBatch(messages=page.records))
                before, copied, gone = copied, copied + len(page.records), gone + page.gone
                if copied // REPORT_EVERY > before // REPORT_EVERY:
                    context.report(f"copied {copied:,} of about {messages:,} messages")
        copied_bounces = 0
        async with aclosing(read_ahead(self.archived_bounces())) as bounce_pages:
            async for bounce_page in bounce_pages:
                await self._write(context, archive.write, ArchiveBatch(bounces=bounce_page.records))
                copied_bounces += len(bounce_page.records)
        context.report(f"copied {_amount(copied, 'message')} ({gone:,} already expired in Redis) and "
                       f"{_amount(copied_bounces, 'bounce')}")

    async def _write(self, context: MigrationContext, write: Callable[[ArchiveBatch], Awaitable[WriteResult]],
                     batch: ArchiveBatch) -> None:
        """Write ``batch`` (one PostgreSQL transaction), then mark what it committed in Redis."""
        if batch:
            written = (await write(batch)).written_part(batch)
            if written:
                await self._mark_copied(written)
        await context.keep_lock()

    async def _mark_copied(self, batch: ArchiveBatch) -> None:
        """As the archiver marks what it archived (archive_mark.lua, one call): each copied
        message's hash records the length of the timeline copied (``archived``, only raised),
        and each message final and wholly copied, and each bounce, is scheduled in ``P
        archive:release`` (the step runs under ``P meta:migrating``, which lets the script
        schedule at version 1); release_archived.lua lets them go once the version is 2, after
        ``[archive] release_after``."""
        keys, args = archive_mark_call(self.keys, self.config.archive.release_after, batch)
        await self.bounded(self._eval(ARCHIVE_MARK_SCRIPT, keys, args))
