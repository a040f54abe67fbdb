"""
archivefeed: the archiver's side of Redis: its consumer group, batch snapshots, marks, trimming, lag.

JOB
    Used by mailrelay.services.archiver (issue 18). Each daemon process is one
    consumer of the group ARCHIVE_GROUP on ``P events`` (created from the
    beginning of the stream: nothing already in it is skipped). For one batch the
    archiver

    1. takes over the entries dead consumers left pending
       (:meth:`ArchiveFeedStore.archive_take_over`) or reads new ones
       (:meth:`ArchiveFeedStore.archive_read`), as :class:`FeedEntry`;
    2. reads what they are about in one script call
       (:meth:`ArchiveFeedStore.archive_snapshot`): for each distinct message its
       hash, its whole timeline and, while it was never archived, its stored body;
       for each bounce its record, time and raw report; as the records of
       mailrelay.store.archiverecords (an :class:`ArchiveBatch`; ``cancelled``
       entries become CancelledMessage, ids whose keys are gone are listed in
       ``missing``); an entry marked ``late`` (a report about a message whose
       keys were released: record_bounce.lua) carries its event and the
       recipient's new state itself and becomes a LateEvent, its message is
       not read (only the archive holds it);
    3. after the archive committed the batch, records in each message's hash how
       much of its timeline is archived, schedules the release of what is final and
       wholly archived (mailrelay.store.archiverelease) and acknowledges the entries,
       in one script call (:meth:`ArchiveFeedStore.archive_mark`; its arguments,
       :func:`archive_mark_call`, are also ``mailrelay migrate``'s marks of what it
       copied).

    :meth:`ArchiveFeedStore.archive_trim` removes the entries every counted
    consumer group is done with (XTRIM MINID below the oldest entry one of them
    still needs), keeping a short tail of recent entries (for whoever looks at what
    just happened): nothing the archiver has not acknowledged is ever removed, and the
    stream has no fixed length (a PostgreSQL outage makes it grow).
    :meth:`ArchiveFeedStore.archive_lag` says how far the archiver is behind
    (:class:`ArchiveLag`). A message's hash is decoded by :meth:`MessageSnapshot.decode`,
    as ``mailrelay migrate`` decodes it.

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P events``             STREAM this store owns its consumer group ARCHIVE_GROUP
                                    (one consumer per daemon process, named by its
                                    owner id) and trims the stream.
    ``P msg:<id>``           HASH   reads it; writes one field, ``archived``: the
                                    length of the timeline the archive holds
                                    (only ever raised).
    ``P archive:release``    ZSET   schedules members in it (owned by
                                    mailrelay.store.archiverelease): at data version
                                    2, or while ``P meta:migrating`` exists (the
                                    migration to it runs; the release waits for 2).
    Reads ``P timeline:<id>``, ``P body:<id>``, ``P bounce:<id>``,
    ``P bounce:raw:<id>`` and ``P bounces`` (owned by mailrelay.store.queue and
    .bounces). Scripts: archive_snapshot.lua, archive_mark.lua, archive_trim.lua,
    archive_lag.lua.

SECURITY
    Everything read here came from mail, clients or remote servers: texts are decoded
    as UTF-8 with surrogateescape (bytes that are not UTF-8 survive as lone
    surrogates, which the writer replaces; docs/archive.md), numbers that do not
    parse count as 0, and a message whose hash has no receiving time is reported in
    ``missing`` instead of stopping the batch.

STANDARDS
    Redis Streams consumer groups (through mailrelay.store.streams); XINFO GROUPS
    ``lag`` (Redis 7); XTRIM MINID (Redis 6.2).

DIAGNOSTICS
    Failures reach callers as mailrelay.store.errors exceptions; a missing group
    raises one whose text holds ``NOGROUP`` (mailrelay.store.streams.is_nogroup).

CONFIGURATION
    ``[archive] release_after`` (the grace period archive_mark gives archived messages and
    bounces before their Redis keys go); the service passes its batch sizes, idle times and
    groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from mailrelay.store.archiverecords import (ArchiveBatch, BounceSnapshot, CancelledMessage, LateEvent,
                                            MessageSnapshot)
from mailrelay.store.base import text_fields
from mailrelay.store.cluster import ARCHIVE_IN_POSTGRES_VERSION
from mailrelay.store.keys import Keys
from mailrelay.store.records import whole_number
from mailrelay.store.scripts import ARCHIVE_SNAPSHOT_ARGV, SCRIPTS, ordered
from mailrelay.store.streams import StreamEntry, StreamGroupStore

ARCHIVE_SNAPSHOT_SCRIPT = SCRIPTS["archive_snapshot"]
ARCHIVE_MARK_SCRIPT = SCRIPTS["archive_mark"]
ARCHIVE_TRIM_SCRIPT = SCRIPTS["archive_trim"]
ARCHIVE_LAG_SCRIPT = SCRIPTS["archive_lag"]

#: The stream entry type of an acceptance cancelled before its 250 (mailrelay.store.settlement).
CANCELLED = "cancelled"
#: The stream entry type of a bounce record rewritten (reclassify_bounce.lua).
BOUNCE_CHANGED = "bounce_changed"

#: Why an id of a batch has no snapshot (ArchiveBatch.missing).
MESSAGE_GONE = "message keys gone (expired, deleted or cancelled)"
NO_RECEIVED_TIME = "message hash without a received_at time"
BOUNCE_GONE = "bounce record gone (expired or evicted)"
NO_BOUNCE_TIME = "bounce record without a time"


@dataclass(frozen=True)
class FeedEntry:
    """One entry of the event stream as the archiver reads it (see the stream's writers:
    type, msg, rcpt, bounce, at; and for an event about a released message, record_bounce.lua's
    late, event, state). Absent fields are ``""`` / None / 0 / False; an entry deleted from
    the stream while pending has type ``""``."""

    id: str
    type: str = ""
    message_id: str = ""
    rcpt: int | None = None
    bounce_id: str = ""
    at_ms: int = 0
    #: The message's keys were released: ``event`` (its JSON) and ``state`` are the archive's to apply.
    late: bool = False
    event: str = ""
    state: str = ""

    @classmethod
    def decode(cls, entry: StreamEntry) -> FeedEntry:
        fields = entry.fields or {}
        return cls(id=entry.id, type=fields.get("type", ""), message_id=fields.get("msg", ""),
                   rcpt=whole_number(fields.get("rcpt")), bounce_id=fields.get("bounce", ""),
                   at_ms=whole_number(fields.get("at")) or 0, late=fields.get("late") == "1",
                   event=fields.get("event", ""), state=fields.get("state", ""))

    def late_event(self) -> LateEvent | None:
        """The event a ``late`` entry carries for the archive (None: not late, or incomplete)."""
        if not (self.late and self.message_id and self.rcpt is not None and self.bounce_id and self.event):
            return None
        return LateEvent(self.message_id, self.rcpt, self.bounce_id, self.event.encode(), self.state)


@dataclass(frozen=True)
class ArchiveLag:
    """How far the archiver's group is behind the stream: entries not acknowledged yet
    (pending in a consumer, or never delivered), and the age of the oldest of them (0 when
    there is none)."""

    entries: int
    oldest_age_seconds: float


# -- decoding (pure) ------------------------------------------------------------------------


def _score_ms(score: Any) -> int | None:
    return None if score is None else whole_number(score.decode(errors="replace"))


# -- the store --------------------------------------------------------------------------------


class ArchiveFeedStore(StreamGroupStore):
    """The archiver's consumer group on the event stream, its snapshots, marks, trims and lag."""

    #: The consumer group of the archiver on the event stream.
    ARCHIVE_GROUP = "archiver"

    async def archive_create_group(self) -> bool:
        """Create the archiver's group from the beginning of the stream (made if missing);
        False when it existed already."""
        return await self._group_create(self.ARCHIVE_GROUP, "0")

    async def archive_read(self, consumer: str, count: int) -> list[FeedEntry]:
        """Up to ``count`` entries never delivered to the group, now pending for ``consumer``."""
        return [FeedEntry.decode(e) for e in await self._group_read(self.ARCHIVE_GROUP, consumer, count)]

    async def archive_take_over(self, consumer: str, min_idle_seconds: float, count: int) -> list[FeedEntry]:
        """Up to about ``count`` entries other consumers (dead daemons) left pending for longer
        than ``min_idle_seconds``, now pending for ``consumer``."""
        return [FeedEntry.decode(e) for e in
                await self._group_take_over(self.ARCHIVE_GROUP, consumer, min_idle_seconds, count)]

    async def archive_keep(self, consumer: str, entry_ids: list[str]) -> int:
        """Keep entries ``consumer`` still works on (a batch waiting for the archive) from being
        taken over: their idle time starts again."""
        return await self._group_keep(self.ARCHIVE_GROUP, consumer, entry_ids)

    async def archive_prune_consumers(self, keep: str, idle_seconds: float) -> int:
        """Forget consumers of past processes with nothing pending, idle that long."""
        return await self._group_prune_consumers(self.ARCHIVE_GROUP, keep, idle_seconds)

    async def archive_snapshot(self, entries: Sequence[FeedEntry]) -> ArchiveBatch:
        """What the archive needs for these entries, read in one script call (see the module
        docstring). Each message and bounce appears once, in the order of its first entry."""
        cancelled: dict[str, None] = {}
        for entry in entries:
            if entry.type == CANCELLED and entry.message_id:
                cancelled[entry.message_id] = None
        message_ids: dict[str, None] = {}
        bounce_times: dict[str, int] = {}
        changed_bounces: set[str] = set()
        late_events: list[LateEvent] = []
        for entry in entries:
            late_event = entry.late_event()
            if late_event is not None:
                late_events.append(late_event)
            elif entry.message_id and entry.message_id not in cancelled and not entry.late:
                message_ids[entry.message_id] = None
            if entry.bounce_id:
                bounce_times.setdefault(entry.bounce_id, entry.at_ms)
                if entry.type == BOUNCE_CHANGED:
                    changed_bounces.add(entry.bounce_id)
        if not message_ids and not bounce_times:
            return ArchiveBatch(cancelled=tuple(CancelledMessage(i) for i in cancelled),
                                late_events=tuple(late_events))
        args: list[Any] = [*ordered(ARCHIVE_SNAPSHOT_ARGV, **self.keys.names(ARCHIVE_SNAPSHOT_ARGV)),
                           len(message_ids), *message_ids, *bounce_times]
        message_rows, bounce_rows = await self._eval(ARCHIVE_SNAPSHOT_SCRIPT, [self.keys.bounces], args)
        missing: dict[str, str] = {}
        messages = []
        for message_id, (flat, timeline, body) in zip(message_ids, message_rows):
            if not flat:
                missing[message_id] = MESSAGE_GONE
                continue
            snapshot = MessageSnapshot.decode(message_id, text_fields(flat), timeline or (), body)
            if snapshot is None:
                missing[message_id] = NO_RECEIVED_TIME
            else:
                messages.append(snapshot)
        bounces = []
        for (bounce_id, entry_ms), (flat, score, raw) in zip(bounce_times.items(), bounce_rows):
            if not flat:
                missing[bounce_id] = BOUNCE_GONE
                continue
            received = _score_ms(score) or entry_ms  # the index's score is the entry's time
            if not received:
                missing[bounce_id] = NO_BOUNCE_TIME
                continue
            bounces.append(BounceSnapshot(id=bounce_id, received_ms=received, stored=text_fields(flat), raw=raw,
                                          changed=bounce_id in changed_bounces))
        return ArchiveBatch(messages=tuple(messages), bounces=tuple(bounces),
                            cancelled=tuple(CancelledMessage(i) for i in cancelled),
                            late_events=tuple(late_events), missing=missing)

    async def archive_mark(self, batch: ArchiveBatch, entry_ids: Sequence[str]) -> int:
        """After the archive committed ``batch``: record each message's archived timeline length
        in its hash (only raising it, only while the hash exists), schedule the release of the
        Redis keys of each message now final and wholly archived and of each bounce
        (mailrelay.store.archiverelease: at data version 2, or while ``mailrelay migrate`` runs)
        and acknowledge ``entry_ids``, in one script call. Returns the number of entries
        acknowledged (fewer when some were acknowledged already, e.g. by a consumer that took
        them over)."""
        keys, args = archive_mark_call(self.keys, self.config.archive.release_after, batch, entry_ids)
        return int(await self._eval(ARCHIVE_MARK_SCRIPT, keys, args))

    async def archive_trim(self, groups: Sequence[str], keep_seconds: float = 0.0) -> int | None:
        """Remove the stream entries every group of ``groups`` is done with (below the oldest
        entry one of them still needs) and older than ``keep_seconds``; the number removed, None
        when one of the groups does not exist (then nothing is removed). Only the groups named
        count: a group left by an old configuration holds nothing back."""
        removed = int(await self._eval(ARCHIVE_TRIM_SCRIPT, [self.keys.events],
                                       [int(keep_seconds * 1000), *groups]))
        return None if removed < 0 else removed

    async def archive_lag(self) -> ArchiveLag | None:
        """How far the archiver's group is behind; None when the group does not exist. When
        Redis cannot count the entries never delivered (XINFO's lag is null), the stream's
        length stands for them (an upper bound)."""
        reply = await self._eval(ARCHIVE_LAG_SCRIPT, [self.keys.events], [self.ARCHIVE_GROUP])
        if not int(reply[0]):
            return None
        pending, lag, oldest, now_ms, length = reply[1:6]
        entries = int(pending) + int(lag) if int(lag) >= 0 else max(int(pending), int(length))
        age = 0.0
        if oldest is not None:
            age = max(0, int(now_ms) - StreamEntry(oldest.decode()).ms) / 1000
        return ArchiveLag(entries=entries, oldest_age_seconds=age)


def archive_mark_call(keys: Keys, release_after: float, batch: ArchiveBatch,
                      entry_ids: Sequence[str] = ()) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of archive_mark.lua for ``batch`` (committed to the archive) and the
    stream entries ``entry_ids`` of the group ARCHIVE_GROUP; ``release_after`` in seconds. The
    archiver's marks (:meth:`ArchiveFeedStore.archive_mark`) and ``mailrelay migrate``'s
    (mailrelay.store.archiveexport, no entries) are this one call."""
    args: list[Any] = [ArchiveFeedStore.ARCHIVE_GROUP, keys.msg_prefix, keys.timeline_prefix,
                       int(release_after * 1000), ARCHIVE_IN_POSTGRES_VERSION, len(batch.messages)]
    for message in batch.messages:
        args += [message.id, message.timeline_length]
    args += [len(batch.bounces), *(bounce.id for bounce in batch.bounces), *entry_ids]
    return [keys.events, keys.data_version, keys.archive_release, keys.migration_lock], args
