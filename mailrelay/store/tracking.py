"""
tracking: reading what happened to messages: records, bodies, timelines, search, counts, charts.

JOB
    Reads the messages mailrelay.store.queue stored and the events every store appended:
    a message's record (:meth:`TrackingStore.get_message`), body and timeline; search
    newest first through the most selective index (:meth:`TrackingStore.search_messages`;
    the same walk serves mailrelay.store.bounces), messages per status, and the per-minute
    and per-hour event counters the status page charts. Read-only: the scripts of the
    other stores write these keys.

DATA (under ``[redis] key_prefix``, written ``P``; written by the queue's, settlement's,
bounces' and admin's scripts, read here)
    ``P timeline:<id>``     LIST   the message's events (JSON, mailrelay.store.events.Event),
                                   oldest first.
    ``P idx:time``, ``P idx:rcpt:<address>``, ``P idx:tag:<tag>``, ``P idx:status:<status>``
                            ZSET   search indexes: message ids by received time (ms).
    ``P idx:stats:m:<minute>``, ``P idx:stats:h:<hour>``  HASH  event counters for charts.
    Also reads ``P msg:<id>`` and ``P body:<id>`` (mailrelay.store.queue).
    Records, timelines and index entries expire after ``[tracking] retention``; bodies
    after ``content_retention`` (at least the queue lifetime plus a day).
    Scripts: search.lua.

SECURITY
    Returns stored text as it is (addresses, subjects, remote replies: untrusted);
    whoever renders it escapes it. Each search request does bounded work (at most 50
    script calls).

STANDARDS
    zlib (RFC 1950) for bodies; JSON (RFC 8259) timelines.

DIAGNOSTICS
    Failures reach callers as mailrelay.store.errors exceptions (or ``defer.TimeoutError``
    from the caller's own bound).

CONFIGURATION
    ``[tracking]`` retention, content_retention.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from mailrelay.store.base import StoreBase
from mailrelay.store.records import MessageRecord, MessageSummary, TimelineEvent, decode_timeline
from mailrelay.store.scripts import SCRIPTS

SEARCH_SCRIPT = SCRIPTS["search"]

#: A message's status values (the status index has one sorted set per value).
MESSAGE_STATUSES = ("queued", "delivered", "bounced", "expired", "suppressed", "partial")


class TrackingStore(StoreBase):
    """Messages, bodies, timelines, search indexes and counters, read."""

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
                              cursor: tuple[int, str] | None = None) -> tuple[list[MessageSummary], tuple[int, str] | None]:
        """Messages newest first through the most selective index (the other filters check
        fields), as summaries, and the next page's cursor."""
        if recipient:
            index = self.keys.recipient_index(recipient)
        elif tag:
            index = self.keys.tag_index(tag)
        elif status:
            index = self.keys.status_index(status)
        else:
            index = self.keys.time_index
        fields = ["received_at", "from", "to", "subject", "tag", "status", "sender"]

        def keep(row: dict[str, str]) -> bool:
            return (not tag or row["tag"] == tag) and (not status or row["status"] == status)

        rows, next_cursor = await self._search(index, self.keys.msg_prefix, fields, since_ms=since_ms,
                                               until_ms=until_ms, limit=limit, cursor=cursor, keep=keep)
        return [MessageSummary.decode(row) for row in rows], next_cursor


    async def status_counts(self, since_ms: int | None = None) -> dict[str, int]:
        """Messages per status received since ``since_ms`` (all retained ones when None)."""
        low = since_ms if since_ms is not None else "-inf"
        counts = {}
        for status in MESSAGE_STATUSES:
            counts[status] = int(await self._call("ZCOUNT", self.keys.status_index(status), low, "+inf"))
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
            reply = await self._call("HGETALL", self.keys.counters(resolution, bucket))
            out.append((bucket * size, {reply[i].decode(): int(reply[i + 1]) for i in range(0, len(reply), 2)}))
        return out

    # -- reading ------------------------------------------------------------------------

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """The stored envelope, summary and recipients of a message (no timeline), or None."""
        stored = await self._text_hash(self.keys.msg(message_id))
        return None if stored is None else MessageRecord.decode(message_id, stored)

    async def get_body(self, message_id: str) -> bytes | None:
        """The message as it will be delivered (bodies are stored zlib-compressed)."""
        stored = await self._call("GET", self.keys.body(message_id))
        return None if stored is None else zlib.decompress(stored)

    async def get_timeline(self, message_id: str) -> tuple[TimelineEvent, ...]:
        """The message's events, oldest first (an entry that is not a JSON object is left out)."""
        reply = await self._call("LRANGE", self.keys.timeline(message_id), 0, -1)
        return decode_timeline(_json_values(reply))


def _json_values(items: list[bytes]) -> list[Any]:
    """Each stored JSON text decoded; one that does not decode is None (dropped by the records)."""
    values = []
    for item in items:
        try:
            values.append(json.loads(item))
        except (ValueError, RecursionError):
            values.append(None)
    return values
