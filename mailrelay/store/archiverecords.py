"""
archiverecords: what the archiver carries from Redis to PostgreSQL, as typed records (issue 18).

JOB
    The shared language of the archive's write path:

    :class:`MessageSnapshot`    one message as Redis holds it at one moment: its
                                row's fields, each recipient's state, its whole
                                timeline (the raw entries of ``timeline:<id>``)
                                and, when it is to be written, its stored body;
    :class:`ArchivedRecipient`  one recipient of a snapshot;
    :class:`BounceSnapshot`     one stored bounce (the ``bounce:<id>`` hash's fields)
                                with its raw report;
    :class:`LateEvent`          an event about a message whose Redis keys were
                                released (a report received days later: only the
                                archive holds the message), to add to its archived
                                timeline, with the recipient's new state;
    :class:`ArchiveBatch`       what one archiver transaction writes: snapshots,
                                bounces, late events, and the messages whose
                                acceptance was cancelled (to delete from the
                                archive too).

    Produced by the Redis side (:mod:`mailrelay.store.archivefeed`, and
    ``mailrelay migrate`` from a release-1 Redis archive:
    :mod:`mailrelay.store.archiveexport`), both through
    :meth:`MessageSnapshot.decode` (the one reading of a ``msg:<id>`` hash);
    consumed by the PostgreSQL side (:mod:`mailrelay.store.archivewrite`).
    Pure data: no I/O.

SECURITY
    Every text here came from mail, a client or a remote server (untrusted). It
    may hold NUL characters or lone surrogates that PostgreSQL refuses; the writer
    replaces them (docs/archive.md), the records keep them as read.

STANDARDS
    None.

DIAGNOSTICS
    None.

CONFIGURATION
    None.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from mailrelay.store.records import MessageRecord


@dataclass(frozen=True)
class ArchivedRecipient:
    """One recipient of a message: its index (the job is ``<id>.<rcpt>``), address, state, attempts."""

    rcpt: int
    recipient: str
    state: str
    attempts: int = 0


@dataclass(frozen=True)
class MessageSnapshot:
    """One message as read from Redis, in the archive's columns.

    ``to_header``/``cc_header`` and ``metadata`` are the stored JSON texts of the
    ``msg:<id>`` hash (a list of addresses, an object), kept as stored; ``timeline``
    is the whole timeline, oldest first, each entry the JSON text Redis holds
    (mailrelay.store.timelinepack packs them); ``body`` is the stored (zlib) body,
    None when this snapshot does not carry it (already archived, or gone).
    """

    id: str
    received_ms: int
    status: str
    sender: str = ""
    from_header: str = ""
    to_header: str = ""
    cc_header: str = ""
    subject: str = ""
    message_id_header: str = ""
    tag: str = ""
    metadata: str = ""
    size: int = 0
    username: str = ""
    client: str = ""
    rcpt_count: int = 0
    recipients: tuple[ArchivedRecipient, ...] = ()
    timeline: tuple[bytes, ...] = ()
    body: bytes | None = None

    @property
    def timeline_length(self) -> int:
        return len(self.timeline)

    @classmethod
    def decode(cls, message_id: str, stored: Mapping[str, str], timeline: Sequence[bytes] = (),
               body: bytes | None = None, *, received_ms: int | None = None) -> MessageSnapshot | None:
        """
        A snapshot of message ``message_id`` from its ``msg:<id>`` hash (field -> text, as
        ``TrackingStore.get_message`` reads it: :func:`mailrelay.store.base.text_fields`),
        its timeline's raw entries and its stored body (None: not carried). Each field
        means what :class:`mailrelay.store.records.MessageRecord` reads in it (the same
        decoding: status, numbers, recipients); the JSON texts (to, cc, metadata) are kept
        as stored. ``received_ms`` is the time to use when the hash's ``received_at`` does
        not parse (e.g. the message's score in the time index); None when neither gives one.
        """
        record = MessageRecord.decode(message_id, stored)
        received = record.received_ms if record.received_ms is not None else received_ms
        if received is None:
            return None
        return cls(
            id=message_id, received_ms=received, status=record.status, sender=record.sender,
            from_header=record.header_from, to_header=stored.get("to", ""), cc_header=stored.get("cc", ""),
            subject=record.subject, message_id_header=record.message_id_header, tag=record.tag,
            metadata=stored.get("metadata", ""), size=record.size, username=record.user, client=record.client,
            rcpt_count=len(record.recipients),
            recipients=tuple(ArchivedRecipient(rcpt=r.index, recipient=r.address, state=r.state,
                                               attempts=r.attempts) for r in record.recipients),
            timeline=tuple(timeline), body=body)


@dataclass(frozen=True)
class BounceSnapshot:
    """One stored bounce: the ``bounce:<id>`` hash as stored (text fields) and the raw report.

    ``received_ms`` is the bounce's time in its index (its score). The fields the
    ``bounces`` table has columns for (message_id, recipient, type, type_code,
    description, details, at, inactive) go there; the others (proof, status,
    remote_mta, source, rule, reason, claimed_message_id, ...) into its ``fields``.
    """

    id: str
    received_ms: int
    stored: Mapping[str, str]
    raw: bytes | None = None
    #: Read for a change of the record (a ``bounce_changed`` entry: ``mailrelay bounce
    #: reclassify``): the writer rewrites the archived row's classification with it (a bounce
    #: is otherwise written once).
    changed: bool = False


@dataclass(frozen=True)
class CancelledMessage:
    """A message whose acceptance was cancelled (its 250 was never sent: the ``cancelled``
    stream entry of mailrelay.store.settlement); Redis deleted it, its archived rows go too."""

    id: str


@dataclass(frozen=True)
class LateEvent:
    """An event about recipient ``rcpt`` of a message whose Redis keys were released (the
    ``late`` stream entry of record_bounce.lua), made by bounce ``bounce_id``: ``event`` is
    the timeline entry (the event's JSON, as the Redis timeline would have held it),
    ``state`` the recipient's new state ("" leaves it). The archive appends the entry to
    the message's timeline, sets the state and recomputes the message's status in the
    transaction that stores the bounce's row, and only when that row is new: a replay
    changes nothing, and two reports alike are two events, as in Redis."""

    message_id: str
    rcpt: int
    bounce_id: str
    event: bytes
    state: str = ""


@dataclass(frozen=True)
class ArchiveBatch:
    """What one archiver transaction writes."""

    messages: tuple[MessageSnapshot, ...] = ()
    bounces: tuple[BounceSnapshot, ...] = ()
    cancelled: tuple[CancelledMessage, ...] = ()
    #: Events about released messages, in the order of their stream entries.
    late_events: tuple[LateEvent, ...] = ()
    #: Why each id in the batch had no snapshot (its keys were gone): id -> reason, for the log.
    missing: Mapping[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.messages or self.bounces or self.cancelled or self.late_events)
