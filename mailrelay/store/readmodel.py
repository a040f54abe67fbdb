"""
readmodel: the one read model of the sent-mail archive: messages, timelines, bounces, suppressions.

JOB
    The reads the API (:mod:`mailrelay.web.api`), the status page
    (:mod:`mailrelay.web.statuspage`), the CLI and bounce matching
    (:mod:`mailrelay.services.bounces`) share: each calls the store's read
    methods and returns the typed records of :mod:`mailrelay.store.records`,
    decoded there and nowhere else. It joins what one store call does not
    return: a message with its timeline (:func:`message`), the latest messages
    with their first recipient and recipient count (:func:`latest_messages`).

    It lives in the store package, not in web/, because services (bounce
    matching) and the CLI read through it too; it holds no state and names
    no key.

SECURITY
    Reads only. The records carry mail data (addresses, subjects, diagnostics):
    whoever shows them escapes them.

STANDARDS
    None beyond those of :mod:`mailrelay.store.records`.

DIAGNOSTICS
    None of its own: the store's errors (:class:`mailrelay.store.StorageError`,
    timeouts, connection errors) reach the caller unchanged; the callers bound
    the time.

CONFIGURATION
    None. Redis data: through the store's methods get_message, get_timeline,
    search_messages, get_bounce, search_bounces and list_suppressions only.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from mailrelay.store.records import (BounceRecord, MessageRecord, MessageSummary, Suppression,
                                     TimelineEvent, decode_suppressions, decode_timeline)

#: A page cursor of the search methods: (index score, member) of the last row returned.
Cursor = tuple[int, str]


async def message(storage: Any, message_id: str, *, timeline: bool = True) -> MessageRecord | None:
    """Message ``message_id`` with (unless ``timeline`` is false) its timeline; None if unknown."""
    stored = await storage.get_message(message_id)
    if not stored:
        return None
    record = MessageRecord.decode(message_id, stored)
    if not timeline:
        return record
    return record.with_timeline(await message_timeline(storage, message_id))


async def message_timeline(storage: Any, message_id: str) -> tuple[TimelineEvent, ...]:
    """The message's timeline, oldest first."""
    return decode_timeline(await storage.get_timeline(message_id))


async def message_summaries(storage: Any, **search: Any) -> tuple[list[MessageSummary], Cursor | None]:
    """``search_messages(**search)`` as summaries, newest first, and the next cursor."""
    rows, cursor = await storage.search_messages(**search)
    return [MessageSummary.decode(row) for row in rows], cursor


async def latest_messages(storage: Any, limit: int) -> list[MessageSummary]:
    """The newest ``limit`` messages, each with its first recipient and recipient count."""
    summaries, _ = await message_summaries(storage, limit=limit)
    records = await defer.gatherResults(
        [defer.ensureDeferred(message(storage, s.id, timeline=False)) for s in summaries])
    return [summary.joined(record) for summary, record in zip(summaries, records)]


async def bounce(storage: Any, bounce_id: str) -> BounceRecord | None:
    """Bounce ``bounce_id``, or None if unknown (or expired)."""
    stored = await storage.get_bounce(bounce_id)
    return BounceRecord.decode(stored, bounce_id) if stored else None


async def bounce_summaries(storage: Any, **search: Any) -> tuple[list[BounceRecord], Cursor | None]:
    """``search_bounces(**search)`` as records, newest first, and the next cursor."""
    rows, cursor = await storage.search_bounces(**search)
    return [BounceRecord.decode(row) for row in rows], cursor


async def suppressions(storage: Any) -> list[Suppression]:
    """Every suppressed address, newest first."""
    return decode_suppressions(await storage.list_suppressions())
