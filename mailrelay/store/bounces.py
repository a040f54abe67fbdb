"""
bounces: bounce records: storing each bounce, tying it to its message, reclassifying, searching.

JOB
    :meth:`BounceStore.record_bounce` stores a bounce's record and raw message, ties it to
    the message's timeline when the VERP address or the copy's token matched it (the
    recipient's state and an event), and suppresses the address when told to, in one
    script; unmatched bounces are kept up to a limit (the oldest are evicted). A report
    about a message whose keys were released (data version 2: it lives in the PostgreSQL
    archive) is "late": its stream entry carries the event and the recipient's new state,
    which the archiver applies to the archived message (docs/archive.md, "Bounces after
    the keys are gone"). Also the
    shared VERP key, reclassification of a stored bounce (and the reactivation of the
    address it suppressed), and reading and searching the records.

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P bounce:<id>``        HASH   one bounce record (its fields: id, message_id,
                                    recipient, type, type_code, description, details, at,
                                    inactive, status, remote_mta, proof, ...).
    ``P bounce:raw:<id>``    STRING the bounce message as received.
    ``P bounces``            ZSET   bounce ids by time (ms).
    ``P bounces:unmatched``  ZSET   ids of bounces tied to no message, by time (ms).
    ``P verp:secret``        STRING the shared VERP HMAC key (when not configured).
    ``P reports:<id>.<rcpt>`` STRING the reports stored about recipient <rcpt> of message
                                    <id> once the message's keys were released (data
                                    version 2; before, its hash counts them): the cap
                                    on reports per recipient; expires after ``[tracking]
                                    retention``.
    The scripts also write the matched message's ``P msg:<id>``, ``P timeline:<id>``,
    counters (``P idx:stats:...``), ``P events``, and the suppression list
    (``P suppressed``, ``P suppressed:version``: mailrelay.store.suppression).
    Scripts: record_bounce.lua, reclassify_bounce.lua; search.lua (through
    mailrelay.store.tracking).

SECURITY
    A bounce is untrusted mail: its raw text is stored as received and only parsed by
    mailrelay.mail.bounceparse; the VERP key is random (32 bytes) and never leaves Redis.

STANDARDS
    RFC 3464 (delivery status notifications) records; VERP.

DIAGNOSTICS
    Failures reach callers as mailrelay.store.errors exceptions.

CONFIGURATION
    ``[tracking] retention`` (records expire with it); ``[bounces] verp_secret`` (when set,
    ``P verp:secret`` is not used).
"""

from __future__ import annotations

import json
import os
from typing import Any

from mailrelay.store.events import Event
from mailrelay.store.records import BounceRecord
from mailrelay.store.scripts import RECORD_BOUNCE_TAIL, SCRIPTS, ordered
from mailrelay.store.suppression import SuppressionStore
from mailrelay.store.tracking import TrackingStore

RECLASSIFY_BOUNCE_SCRIPT = SCRIPTS["reclassify_bounce"]
RECORD_BOUNCE_SCRIPT = SCRIPTS["record_bounce"]


class BounceStore(SuppressionStore, TrackingStore):
    """Bounce records, the VERP key, and reclassification."""

    async def verp_secret(self) -> bytes:
        """The shared VERP HMAC key: generated once, kept in Redis for every daemon."""
        await self._call("SET", self.keys.verp_secret, os.urandom(32).hex(), "NX")
        return await self._call("GET", self.keys.verp_secret)

    async def record_bounce(self, record: dict[str, Any], raw: bytes, *, message_id: str | None,
                            rcpt: int | None, state: str | None, event: Event | None,
                            suppress: dict[str, Any] | None, max_unmatched: int = 1000,
                            max_per_recipient: int = 10) -> bool | None:
        """
        Store a bounce record (and its raw message), tie it to the message's
        timeline when matched, and add the address to the suppression list
        when ``suppress`` is given. An unmatched bounce evicts the oldest unmatched ones
        beyond ``max_unmatched`` (record and raw message). Returns whether the address
        became inactive, or None when nothing was stored: the recipient already had
        ``max_per_recipient`` reports.
        """
        bounce_id = record["id"]
        at_ms = self.now_ms()
        matched = message_id is not None and rcpt is not None
        keys = [self.keys.bounce(bounce_id), self.keys.bounce_raw(bounce_id), self.keys.bounces,
                self.keys.bounces_unmatched, self.keys.suppressed,
                self.keys.msg(message_id or "-"), self.keys.timeline(message_id or "-"), self.keys.events,
                self.keys.suppressed_version, self.keys.late_reports(message_id or "-", rcpt if matched else "-")]
        flat: list[Any] = []
        for name, value in record.items():
            flat += [name, "" if value is None else (value if isinstance(value, (str, int)) else json.dumps(value))]
        names = self.keys
        args = [bounce_id, at_ms, raw, len(record), *flat, *ordered(
            RECORD_BOUNCE_TAIL, matched="1" if matched else "", rcpt=rcpt if rcpt is not None else "",
            state=state or "", event=event.to_json() if event else "",
            suppress_address=suppress["address"] if suppress else "",
            suppression=json.dumps(suppress) if suppress else "",
            message_id=message_id or "", event_type=event.type if event else "",
            status_index_prefix=names.status_index_prefix, stats_minute_prefix=names.stats_minute_prefix,
            stats_hour_prefix=names.stats_hour_prefix, retention_s=int(self.retention),
            max_unmatched=int(max_unmatched), bounce_prefix=names.bounce_prefix,
            bounce_raw_prefix=names.bounce_raw_prefix, max_per_recipient=int(max_per_recipient))]
        reply = await self._eval(RECORD_BOUNCE_SCRIPT, keys, args)
        if reply in (b"skipped", "skipped"):
            return None
        inactive = reply in (b"1", "1")
        if inactive:
            self.suppressions_changed()
        return inactive

    async def reclassify_bounce(self, bounce_id: str, fields: dict[str, Any], *,
                                reactivate: str | None = None) -> tuple[bool, bool]:
        """
        Rewrite fields of a stored bounce record (its new type) and, with ``reactivate``,
        remove that address's suppression if, and only if, this bounce made it. Returns
        (record updated, address reactivated).
        """
        flat = [str(v) for pair in fields.items() for v in pair]
        updated, removed = await self._eval(
            RECLASSIFY_BOUNCE_SCRIPT,
            [self.keys.bounce(bounce_id), self.keys.suppressed, self.keys.suppressed_version,
             self.keys.events],
            [bounce_id, (reactivate or "").lower(), len(fields), *flat, self.now_ms()])
        if int(removed):
            self.suppressions_changed()
        return bool(int(updated)), bool(int(removed))

    async def bounce_ids(self, batch: int = 1000) -> Any:
        """Every stored bounce id, oldest first (an async iterator, ``batch`` per request)."""
        start = 0
        while True:
            ids = await self._call("ZRANGE", self.keys.bounces, start, start + batch - 1)
            for member in ids:
                yield member.decode()
            if len(ids) < batch:
                return
            start += batch

    async def get_bounce(self, bounce_id: str) -> BounceRecord | None:
        """Stored bounce ``bounce_id``, or None when unknown (or expired)."""
        stored = await self._text_hash(self.keys.bounce(bounce_id))
        return None if stored is None else BounceRecord.decode(stored, bounce_id)

    async def get_bounce_raw(self, bounce_id: str) -> bytes | None:
        return await self._call("GET", self.keys.bounce_raw(bounce_id))

    async def search_bounces(self, *, type: str | None = None, recipient: str | None = None,
                             since_ms: int | None = None, limit: int = 50,
                             cursor: tuple[int, str] | None = None) -> tuple[list[BounceRecord], tuple[int, str] | None]:
        """Bounces newest first (filtered by type and recipient), and the next page's cursor."""
        fields = ["id", "message_id", "recipient", "type", "type_code", "description", "details",
                  "at", "inactive", "status", "remote_mta", "proof"]

        def keep(row: dict[str, str]) -> bool:
            return (not type or row["type"] == type) and (not recipient or row["recipient"] == recipient.lower())

        rows, next_cursor = await self._search(self.keys.bounces, self.keys.bounce_prefix, fields,
                                               since_ms=since_ms, until_ms=None, limit=limit, cursor=cursor,
                                               keep=keep)
        return [BounceRecord.decode(row) for row in rows], next_cursor

