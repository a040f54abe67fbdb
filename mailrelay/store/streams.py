"""
streams: consumer groups on the event stream ``P events``, shared by the archiver and webhooks.

JOB
    :class:`StreamGroupStore` holds what every consumer group of the event stream
    does the same way: create the group (an existing one is fine), read new entries
    for a consumer (XREADGROUP), take over the entries dead consumers left pending
    (XAUTOCLAIM), keep one's own pending entries from being taken over while it still
    works on them (XCLAIM ... JUSTID), acknowledge (XACK), and forget consumers of
    past processes. Entries come back as :class:`StreamEntry` (the stream id and its
    fields as text). The data-area stores that own a group
    (mailrelay.store.archivefeed: ``archiver``, mailrelay.store.webhooks:
    ``webhooks``) build on it; every daemon process is one consumer of each group it
    reads.

DATA (under ``[redis] key_prefix``, written ``P``)
    Reads ``P events`` and its consumer groups; owns no key (the stream's entries are
    added by the other stores' scripts, its groups are owned by the stores above).

SECURITY
    Stream fields are written by the store's own scripts: trusted, decoded as UTF-8
    with replacement.

STANDARDS
    Redis Streams consumer groups: XGROUP CREATE, XREADGROUP, XAUTOCLAIM (Redis 6.2 or
    later; its third reply element, the ids of deleted entries, Redis 7), XCLAIM,
    XACK, XINFO CONSUMERS, XGROUP DELCONSUMER.

DIAGNOSTICS
    Failures reach callers as mailrelay.store.errors exceptions; a missing group is a
    reply error containing ``NOGROUP`` (see :func:`is_nogroup`).

CONFIGURATION
    None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mailrelay.store.base import StoreBase

#: XAUTOCLAIM calls per take-over at most (each scans up to its COUNT of the pending list).
AUTOCLAIM_ROUNDS = 10


@dataclass(frozen=True)
class StreamEntry:
    """One entry of the event stream: its id (``<ms>-<seq>``) and fields; ``fields`` is None
    when the entry was deleted from the stream while pending (Redis before 7)."""

    id: str
    fields: Mapping[str, str] | None = field(default=None)

    @property
    def ms(self) -> int:
        """The entry's time (the milliseconds part of its id: Redis's clock at XADD)."""
        return int(self.id.partition("-")[0])


def parse_entries(entries: Any) -> list[StreamEntry]:
    """The entries of an XREADGROUP, XRANGE or XAUTOCLAIM reply."""
    out = []
    for entry in entries or []:
        entry_id, flat = entry[0].decode(), entry[1]
        if flat is None:
            out.append(StreamEntry(entry_id))
            continue
        out.append(StreamEntry(entry_id, {flat[i].decode(errors="replace"): flat[i + 1].decode(errors="replace")
                                          for i in range(0, len(flat), 2)}))
    return out


def is_nogroup(error: BaseException) -> bool:
    """Whether ``error`` says the consumer group (or the stream) does not exist."""
    return "NOGROUP" in str(error)


class StreamGroupStore(StoreBase):
    """Consumer groups on ``P events``: the operations every group uses."""

    async def _group_create(self, group: str, start: str) -> bool:
        """Create ``group`` on the stream (made if missing), delivering from ``start`` ("0":
        the whole stream, "$": new entries only); False when it existed already."""
        try:
            await self._call("XGROUP", "CREATE", self.keys.events, group, start, "MKSTREAM")
        except Exception as e:
            if "BUSYGROUP" in str(e):
                return False
            raise
        return True

    async def _group_read(self, group: str, consumer: str, count: int) -> list[StreamEntry]:
        """Up to ``count`` entries never delivered to ``group``, now pending for ``consumer``.
        Never blocks: a blocking read would hold a pooled connection that other commands
        are pipelined on (see ../shared notes: txredisapi); callers poll."""
        reply = await self._call("XREADGROUP", "GROUP", group, consumer, "COUNT", count,
                                 "STREAMS", self.keys.events, ">")
        if not reply:
            return []
        return parse_entries(reply[0][1])

    async def _group_take_over(self, group: str, consumer: str, min_idle_seconds: float,
                               count: int) -> list[StreamEntry]:
        """Up to about ``count`` entries pending for other consumers (dead daemons) idle for
        longer than ``min_idle_seconds``, now pending for ``consumer``. Entries deleted from
        the stream meanwhile leave the pending list (Redis 7) and are not returned."""
        found: list[StreamEntry] = []
        cursor = "0-0"
        for _ in range(AUTOCLAIM_ROUNDS):  # bounded work per call
            reply = await self._call("XAUTOCLAIM", self.keys.events, group, consumer,
                                     int(min_idle_seconds * 1000), cursor, "COUNT", count)
            cursor = reply[0].decode()
            found += parse_entries(reply[1])
            if cursor == "0-0" or len(found) >= count:
                break
        return found

    async def _group_keep(self, group: str, consumer: str, entry_ids: list[str]) -> int:
        """Reset the idle time of entries ``consumer`` is still working on (they stay pending
        for it instead of being taken over as a dead consumer's); how many it holds."""
        if not entry_ids:
            return 0
        reply = await self._call("XCLAIM", self.keys.events, group, consumer, 0, *entry_ids, "JUSTID")
        return len(reply or [])

    async def _group_ack(self, group: str, entry_ids: list[str]) -> int:
        """Acknowledge entries of ``group`` (they leave its pending list)."""
        if not entry_ids:
            return 0
        return int(await self._call("XACK", self.keys.events, group, *entry_ids))

    async def _group_prune_consumers(self, group: str, keep: str, idle_seconds: float) -> int:
        """Forget the consumers of ``group`` (past daemon processes) with nothing pending, idle
        longer than ``idle_seconds``, except ``keep``; how many were forgotten."""
        reply = await self._call("XINFO", "CONSUMERS", self.keys.events, group)
        removed = 0
        for row in reply:
            info = {row[i].decode(): row[i + 1] for i in range(0, len(row), 2)}
            name = info["name"].decode()
            if name != keep and int(info["pending"]) == 0 and int(info["idle"]) > idle_seconds * 1000:
                await self._call("XGROUP", "DELCONSUMER", self.keys.events, group, name)
                removed += 1
        return removed
