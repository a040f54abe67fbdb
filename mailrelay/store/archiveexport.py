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
    daemons sharing Redis meanwhile are not held up); the next page is read while one
    is written (:func:`read_ahead`). The index is walked by (score,
    member) from the last one read, so entries that come or go meanwhile never make it
    skip one. An index entry whose hash is gone (expired) is counted and left out.
    Nothing is written to Redis and nothing deleted: the Redis archive expires as
    before (``[tracking] retention``); the step can run again at any time, the writer's
    natural keys make a copy written twice one copy.

DATA (under ``[redis] key_prefix``, written ``P``; read only, owned by mailrelay.store.queue,
.tracking and .bounces)
    ``P idx:time``, ``P msg:<id>``, ``P timeline:<id>``, ``P body:<id>``, ``P bounces``,
    ``P bounce:<id>``, ``P bounce:raw:<id>``.

SECURITY
    Copies stored text as it is (mail, clients, remote servers: untrusted); the writer
    makes what PostgreSQL refuses storable. Memory is bounded by one page.

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
    ``[redis] timeout`` (each call).
"""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, TypeVar

from twisted.internet import defer

from mailrelay.store.archiverecords import ArchiveBatch, BounceSnapshot, MessageSnapshot
from mailrelay.store.base import StoreBase, text_fields
from mailrelay.store.cluster import MigrationContext
from mailrelay.store.errors import translate

T = TypeVar("T")

#: Messages (or bounces) read per page and written per batch.
PAGE_SIZE = 500
#: A progress line every this many messages.
REPORT_EVERY = 10_000


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

    async def archived_messages(self, size: int = PAGE_SIZE) -> AsyncIterator[ExportPage[MessageSnapshot]]:
        """Every message of the time index, oldest first, each with its whole timeline and its
        stored body (None when it expired: ``content_retention``), a page at a time."""
        async for entries in self._index_pages(self.keys.time_index, size):
            ids = [member for member, _ in entries]
            replies = await self._read_all([*(("HGETALL", self.keys.msg(i)) for i in ids),
                                            *(("LRANGE", self.keys.timeline(i), 0, -1) for i in ids),
                                            ("MGET", *[self.keys.body(i) for i in ids])])
            hashes, timelines, bodies = replies[:len(ids)], replies[len(ids):-1], replies[-1]
            found = []
            for (message_id, score), stored, timeline, body in zip(entries, hashes, timelines, bodies):
                snapshot = MessageSnapshot.decode(message_id, text_fields(stored), timeline, body,
                                                  received_ms=score) if stored else None
                if snapshot is not None:
                    found.append(snapshot)
            yield ExportPage(tuple(found), len(entries) - len(found))

    async def archived_bounces(self, size: int = PAGE_SIZE) -> AsyncIterator[ExportPage[BounceSnapshot]]:
        """Every stored bounce, oldest first (its score in the index is its time), with its raw
        report, a page at a time."""
        async for entries in self._index_pages(self.keys.bounces, size):
            ids = [member for member, _ in entries]
            replies = await self._read_all([*(("HGETALL", self.keys.bounce(i)) for i in ids),
                                            ("MGET", *[self.keys.bounce_raw(i) for i in ids])])
            hashes, raws = replies[:-1], replies[-1]
            found = tuple(BounceSnapshot(id=bounce_id, received_ms=score, stored=text_fields(stored), raw=raw)
                          for (bounce_id, score), stored, raw in zip(entries, hashes, raws) if stored)
            yield ExportPage(found, len(entries) - len(found))

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

    @staticmethod
    async def _write(context: MigrationContext, write: Callable[[ArchiveBatch], Awaitable[Any]],
                     batch: ArchiveBatch) -> None:
        if batch:
            await write(batch)
        await context.keep_lock()
