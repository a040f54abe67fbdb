"""
readmodel: the reads of the sent-mail archive that join two store calls.

JOB
    The store's read methods return the typed records of
    :mod:`mailrelay.store.records` (decoded there and nowhere else): a message
    (``get_message``), its timeline (``get_timeline``), searches, bounces and
    suppressions. This module joins what one store call does not return, for
    the API (:mod:`mailrelay.web.api`), the status page
    (:mod:`mailrelay.web.statuspage`), the CLI and bounce matching
    (:mod:`mailrelay.services.bounces`) alike: a message with its timeline
    attributed to its recipients (:func:`message`), the latest messages with
    their first recipient and recipient count (:func:`latest_messages`).

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
    None. Redis data: through the store's methods get_message, get_timeline and
    search_messages only.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet import defer

from mailrelay.store.interfaces import MessageReader, MessageSearch
from mailrelay.store.records import MessageRecord, MessageSummary


class MessageArchive(MessageReader, MessageSearch, Protocol):
    """What the joined reads need of the archive (Redis, PostgreSQL, or the view over both)."""


async def message(storage: MessageReader, message_id: str, *, timeline: bool = True) -> MessageRecord | None:
    """Message ``message_id`` with (unless ``timeline`` is false) its timeline; None if unknown."""
    record = await storage.get_message(message_id)
    if record is None:
        return None
    if not timeline:
        return record
    return record.with_timeline(await storage.get_timeline(message_id))


async def latest_messages(storage: MessageArchive, limit: int) -> list[MessageSummary]:
    """The newest ``limit`` messages, each with its first recipient and recipient count."""
    summaries, _ = await storage.search_messages(limit=limit)
    records = await defer.gatherResults(
        [defer.ensureDeferred(message(storage, s.id, timeline=False)) for s in summaries])
    return [summary.joined(record) for summary, record in zip(summaries, records)]
