"""
archiveview: the sent-mail archive as its readers see it, Redis first, then PostgreSQL.

JOB
    :class:`ArchiveView` answers the archive's reads (:class:`mailrelay.store.
    interfaces.ArchiveReads`) for the API, the status page, the CLI and bounce
    matching from two places:

    * one message's record, timeline and body (``get_message``,
      ``get_timeline``, ``get_body``) and one bounce (``get_bounce``,
      ``get_bounce_raw``): from Redis while its keys exist (a message is
      visible by id from its ``250`` on, before the archiver wrote it, and
      Redis is the fresher copy while it is being delivered), else from
      PostgreSQL;
    * searches and counts (``search_messages``, ``status_counts``,
      ``search_bounces``): from PostgreSQL only, so they cover what is
      archived (the archiver's lag says how far behind that is).

    Until the Redis data is migrated to format version 2 (``mailrelay
    migrate``: the archive lives in PostgreSQL, see docs/operations.md,
    "Upgrades"), ``in_postgres()`` is false and every read goes to Redis,
    which still holds the whole archive then (old and new daemons share it
    during a rolling upgrade).

    It holds no state and names no key or table: the Redis stores and
    :class:`mailrelay.store.archiveread.ArchiveReader` do.

SECURITY
    Reads only; the records carry mail data that whoever shows them escapes.

STANDARDS
    None.

DIAGNOSTICS
    The stores' errors pass through: StorageError/StorageUnavailable from
    Redis, :class:`mailrelay.store.errors.ArchiveUnavailable` (a
    StorageUnavailable) from PostgreSQL.

CONFIGURATION
    None.
"""

from __future__ import annotations

from typing import Callable

from mailrelay.store.interfaces import ArchiveReads
from mailrelay.store.records import BounceRecord, MessageRecord, MessageSummary, TimelineEvent


class ArchiveView:
    """Reads of one message or bounce from ``hot`` (Redis) then ``archive`` (PostgreSQL);
    searches from ``archive``."""

    def __init__(self, hot: ArchiveReads, archive: ArchiveReads,
                 in_postgres: Callable[[], bool] = lambda: True) -> None:
        self.hot = hot
        self._archive = archive
        self.in_postgres = in_postgres

    @property
    def archive(self) -> ArchiveReads:
        """Where searches go and what one-item reads fall back to: PostgreSQL once the data is
        at version 2, else Redis."""
        return self._archive if self.in_postgres() else self.hot

    async def get_message(self, message_id: str) -> MessageRecord | None:
        record = await self.hot.get_message(message_id)
        return record if record is not None else await self.archive.get_message(message_id)

    async def get_timeline(self, message_id: str) -> tuple[TimelineEvent, ...]:
        timeline = await self.hot.get_timeline(message_id)
        return timeline if timeline else await self.archive.get_timeline(message_id)

    async def get_body(self, message_id: str) -> bytes | None:
        body = await self.hot.get_body(message_id)
        return body if body is not None else await self.archive.get_body(message_id)

    async def get_bounce(self, bounce_id: str) -> BounceRecord | None:
        record = await self.hot.get_bounce(bounce_id)
        return record if record is not None else await self.archive.get_bounce(bounce_id)

    async def get_bounce_raw(self, bounce_id: str) -> bytes | None:
        raw = await self.hot.get_bounce_raw(bounce_id)
        return raw if raw is not None else await self.archive.get_bounce_raw(bounce_id)

    async def search_messages(self, *, recipient: str | None = None, tag: str | None = None,
                              status: str | None = None, since_ms: int | None = None,
                              until_ms: int | None = None, limit: int = 50,
                              cursor: tuple[int, str] | None = None
                              ) -> tuple[list[MessageSummary], tuple[int, str] | None]:
        return await self.archive.search_messages(recipient=recipient, tag=tag, status=status,
                                                  since_ms=since_ms, until_ms=until_ms, limit=limit,
                                                  cursor=cursor)

    async def status_counts(self, since_ms: int | None = None) -> dict[str, int]:
        return await self.archive.status_counts(since_ms)

    async def search_bounces(self, *, type: str | None = None, recipient: str | None = None,
                             since_ms: int | None = None, limit: int = 50,
                             cursor: tuple[int, str] | None = None
                             ) -> tuple[list[BounceRecord], tuple[int, str] | None]:
        return await self.archive.search_bounces(type=type, recipient=recipient, since_ms=since_ms,
                                                 limit=limit, cursor=cursor)
