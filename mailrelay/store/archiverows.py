"""
archiverows: an archiver batch as the archive's rows, its text made storable (issue 18).

JOB
    The pure half of :mod:`mailrelay.store.archivewrite` (no I/O)::

        prepared = prepare_batch(batch)   # PreparedBatch: messages, bounces, cancelled, skipped

    * one snapshot per message: of several in the batch, the one with the longest
      timeline (the later one of equal length); its body, when it carries none, from
      another snapshot of the batch that does; none of a message cancelled in the same
      batch;
    * a message's row in the columns of ``messages`` (:data:`MESSAGE_COLUMNS`), its whole
      timeline packed (:func:`mailrelay.store.timelinepack.pack_timeline`) with its length;
      its recipients (:data:`STAGED_RECIPIENT_COLUMNS`, one per index, the last one given); the
      received time from ``received_ms`` in whole ms, UTC, or the time in its id when
      ``received_ms`` is outside the id's window (:func:`mailrelay.store.archiveread.id_window`:
      the reads by id look only there);
    * a bounce's row (:data:`BOUNCE_COLUMNS`): the stored hash's fields that have a column
      there, every other one (but ``id``) in ``fields`` (JSON strings, as stored); staged
      (:data:`STAGED_BOUNCE_COLUMNS`) with whether it was read for a change of the record
      (then the writer rewrites :data:`BOUNCE_CLASSIFICATION_COLUMNS` and ``fields`` of the
      archived row);
    * a cancelled message as (id, window) for the delete; an id that is not a message id
      has no window and nothing to delete;
    * a late event (:class:`~mailrelay.store.archiverecords.LateEvent`) as a
      :class:`PreparedLateEvent` (its message's id window, its entry as the timeline holds
      it), carried by the prepared row of the bounce that made it (the writer applies it
      when that row is new: once); one whose bounce is not in the batch (its record gone
      from Redis) is skipped. :func:`apply_late_events` adds such events to an archived
      message's timeline, sets the recipients' new states and recomputes the message's
      status with :func:`mailrelay.store.records.message_status` (the rule of
      lua/_status.lua).

    Text is made storable here (docs/archive.md, "Bad input"): :func:`clean_text` (NUL
    and lone surrogates, which PostgreSQL's text and jsonb refuse, become U+FFFD),
    :func:`indexed_text` (also cut to :data:`INDEXED_TEXT_BYTES`, so that an index entry
    fits in its page), :func:`metadata_json` (a JSON object with its strings cleaned, or
    ``{"_raw": text}``). ``to``/``cc`` stay the stored text. A timeline entry's line breaks
    (which JSON text never holds) become spaces. A snapshot that cannot be made into rows
    at all is skipped (:class:`SkippedEntry`), never the batch.

SECURITY
    Every text here is untrusted; nothing is interpreted but the metadata's JSON, parsed
    with Python's bounded parser (a value nested too deep is stored as ``_raw`` text).

STANDARDS
    RFC 8259 (JSON, as PostgreSQL's jsonb takes it: no NaN or infinities, no ``\\u0000``,
    no lone surrogate escapes).

DIAGNOSTICS
    None: what cannot be stored is a :class:`SkippedEntry` of the result.

CONFIGURATION
    None.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Iterable, Iterator, Mapping, Sequence

from psycopg.types.json import Jsonb

from mailrelay.store.archiverecords import ArchiveBatch, BounceSnapshot, LateEvent, MessageSnapshot
from mailrelay.store.archiveread import ID_WINDOW, id_window, time_of_ms
from mailrelay.store.records import message_status, whole_number
from mailrelay.store.timelinepack import pack_timeline, unpack_timeline

REPLACEMENT = "\ufffd"
#: What PostgreSQL refuses in text: NUL, and UTF-16 surrogates alone (text that was not UTF-8).
_REFUSED = re.compile("[\x00\ud800-\udfff]")
#: Indexed text is cut to this many UTF-8 bytes: a btree entry must fit in a third of a page.
INDEXED_TEXT_BYTES = 2000
INT4_MAX = 2**31 - 1
INT2_MAX = 2**15 - 1

#: The columns written (the staging tables' COPY, in binary) and their types.
MESSAGE_COLUMNS: dict[str, str] = {
    "id": "text", "received_at": "timestamptz", "sender": "text", "from_header": "text",
    "to_header": "text", "cc_header": "text", "subject": "text", "message_id_header": "text", "tag": "text",
    "metadata": "jsonb", "size": "int4", "username": "text", "client": "text", "status": "text",
    "rcpt_count": "int4", "timeline_length": "int4", "timeline": "bytea"}
RECIPIENT_COLUMNS: dict[str, str] = {
    "message_id": "text", "received_at": "timestamptz", "rcpt": "int2", "recipient": "text", "state": "text",
    "attempts": "int4"}
#: A recipient's staged row: its columns, and its message snapshot's timeline length (the update rule).
STAGED_RECIPIENT_COLUMNS: dict[str, str] = {**RECIPIENT_COLUMNS, "timeline_length": "int4"}
BODY_COLUMNS: dict[str, str] = {"message_id": "text", "received_at": "timestamptz", "body": "bytea"}
BOUNCE_COLUMNS: dict[str, str] = {
    "id": "text", "received_at": "timestamptz", "message_id": "text", "recipient": "text", "type": "text",
    "type_code": "int4", "description": "text", "details": "text", "at": "text", "inactive": "bool",
    "fields": "jsonb", "raw": "bytea"}
#: The bounce hash's fields stored in a column of their own; the others go into ``fields``.
BOUNCE_FIELD_COLUMNS = frozenset(list(BOUNCE_COLUMNS)[2:10])
#: A bounce's staged row: its columns, and whether it was read for a change of the record.
STAGED_BOUNCE_COLUMNS: dict[str, str] = {**BOUNCE_COLUMNS, "changed": "bool"}
#: The columns a change of a bounce record rewrites in its archived row (what ``mailrelay bounce
#: reclassify`` rewrites; the rest of it, rule, reason, reclassified_from, is in ``fields``,
#: merged).
BOUNCE_CLASSIFICATION_COLUMNS = ("type", "type_code", "description", "inactive")


@dataclass(frozen=True)
class SkippedEntry:
    """An entry of a batch that was not written, and why."""

    kind: str  # "message" or "bounce"
    id: str
    reason: str
    #: Past retention (its day's partition was dropped): expected, not an error.
    expired: bool = False


@dataclass(frozen=True)
class PreparedMessage:
    """A message snapshot as rows: its ``messages`` row, its recipients' rows, its body."""

    kind: ClassVar[str] = "message"
    id: str
    received_at: datetime.datetime
    row: tuple[Any, ...]  # MESSAGE_COLUMNS
    recipients: tuple[tuple[Any, ...], ...]  # STAGED_RECIPIENT_COLUMNS
    body: bytes | None

    @property
    def day(self) -> datetime.date:
        return self.received_at.date()

    def partitions(self) -> Iterator[tuple[str, datetime.date]]:
        """The (table, UTC day) partitions its rows go to."""
        yield "messages", self.day
        if self.recipients:
            yield "recipients", self.day
        if self.body is not None:
            yield "bodies", self.day

    def without_body(self) -> PreparedMessage:
        return replace(self, body=None)


@dataclass(frozen=True)
class PreparedLateEvent:
    """A late event as the writer applies it: to the message ``id`` received within [low, high]
    (its id's window), ``entry`` the timeline entry, ``state`` the recipient's new state ("": as
    is); made by bounce ``bounce_id``."""

    kind: ClassVar[str] = "late event"
    id: str
    low: datetime.datetime
    high: datetime.datetime
    rcpt: int
    bounce_id: str
    entry: bytes
    state: str


@dataclass(frozen=True)
class PreparedBounce:
    """A bounce snapshot as its ``bounces`` row, with the late event it made (if any): applied
    when the row is inserted."""

    kind: ClassVar[str] = "bounce"
    id: str
    received_at: datetime.datetime
    row: tuple[Any, ...]  # BOUNCE_COLUMNS
    late_event: PreparedLateEvent | None = None
    #: Read for a change of the record (BounceSnapshot.changed).
    changed: bool = False

    @property
    def staged_row(self) -> tuple[Any, ...]:  # STAGED_BOUNCE_COLUMNS
        return (*self.row, self.changed)

    @property
    def day(self) -> datetime.date:
        return self.received_at.date()

    def partitions(self) -> Iterator[tuple[str, datetime.date]]:
        yield "bounces", self.day


@dataclass(frozen=True)
class LateUpdate:
    """What late events change in one archived message: its whole timeline and its status, and
    the recipients whose state they set (index -> state)."""

    timeline: bytes
    timeline_length: int
    status: str
    states: Mapping[int, str]
    #: Entries appended.
    appended: int


@dataclass(frozen=True)
class PreparedBatch:
    """A batch as rows: what to write, what to delete, what could not be made into rows."""

    messages: tuple[PreparedMessage, ...] = ()
    bounces: tuple[PreparedBounce, ...] = ()  # with the late events they made
    #: (message id, low, high): delete its rows received within [low, high].
    cancelled: tuple[tuple[str, datetime.datetime, datetime.datetime], ...] = ()
    skipped: tuple[SkippedEntry, ...] = ()


# -- text ----------------------------------------------------------------------------------------


def clean_text(value: Any) -> str:
    """``value`` as text PostgreSQL stores: NUL characters and lone surrogates as U+FFFD (None: "")."""
    if not isinstance(value, str):
        value = "" if value is None else str(value)
    if value.isascii():
        return value.replace("\x00", REPLACEMENT) if "\x00" in value else value
    return _REFUSED.sub(REPLACEMENT, value)


def indexed_text(value: Any) -> str:
    """:func:`clean_text`, cut to at most INDEXED_TEXT_BYTES bytes of UTF-8 (on a character)."""
    text = clean_text(value)
    if len(text) * 4 <= INDEXED_TEXT_BYTES:
        return text
    encoded = text.encode()
    return text if len(encoded) <= INDEXED_TEXT_BYTES else encoded[:INDEXED_TEXT_BYTES].decode(errors="ignore")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text}: not a number jsonb holds")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name}: not JSON")


#: Python's JSON as jsonb takes it: no NaN, no infinities (a number too large for a float).
_METADATA_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def _as_is(text: str) -> str:
    return text


def jsonb(text: str) -> Jsonb:
    """JSON text for a jsonb column of a binary COPY (as it is: already JSON)."""
    return Jsonb(text, dumps=_as_is)


def metadata_json(text: Any) -> str:
    """The jsonb text of a message's stored metadata: the JSON object it holds (its strings made
    storable), ``{}`` for none, and ``{"_raw": text}`` for anything else (not JSON, not an object,
    numbers jsonb refuses)."""
    if not text:
        return "{}"
    text = text if isinstance(text, str) else str(text)
    try:
        value = _METADATA_DECODER.decode(text)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        if text.isascii() and "\\u" not in text:
            return text  # nothing jsonb refuses: as stored
        try:
            return json.dumps(_clean_json(value), ensure_ascii=False)
        except RecursionError:
            pass
    return json.dumps({"_raw": clean_text(text)}, ensure_ascii=False)


def timeline_entries(entries: Iterable[bytes]) -> list[bytes]:
    """A timeline's entries as pack_timeline takes them (a line break, never in JSON text, as a space)."""
    return [entry.replace(b"\n", b" ") if b"\n" in entry else entry for entry in entries]


def _count(value: Any) -> int:
    """A count for an integer column: 0 up to INT4_MAX."""
    return min(max(int(value), 0), INT4_MAX)


def _recipient_index(value: Any) -> int:
    """A recipient's index for the smallint ``rcpt`` (binary COPY would wrap a larger one around)."""
    index = int(value)
    if not 0 <= index <= INT2_MAX:
        raise ValueError(f"recipient index {index} out of range")
    return index


# -- rows ----------------------------------------------------------------------------------------


def received_time(snapshot: MessageSnapshot) -> datetime.datetime:
    """The message's received time: ``received_ms`` (UTC, whole ms), or the time in its id when
    that is outside the id's window (the reads by id would never find it)."""
    at = time_of_ms(int(snapshot.received_ms))
    window = id_window(snapshot.id)
    if window is not None and not window[0] <= at <= window[1]:
        return window[0] + ID_WINDOW
    return at


def prepare_message(snapshot: MessageSnapshot, body: bytes | None) -> PreparedMessage:
    received_at = received_time(snapshot)
    message_id = clean_text(snapshot.id)
    entries = timeline_entries(snapshot.timeline)
    row = (message_id, received_at, clean_text(snapshot.sender), clean_text(snapshot.from_header),
           clean_text(snapshot.to_header), clean_text(snapshot.cc_header), clean_text(snapshot.subject),
           clean_text(snapshot.message_id_header), indexed_text(snapshot.tag), jsonb(metadata_json(snapshot.metadata)),
           _count(snapshot.size), clean_text(snapshot.username), clean_text(snapshot.client),
           indexed_text(snapshot.status), _count(snapshot.rcpt_count), len(entries),
           pack_timeline(entries) if entries else None)
    recipients = {r.rcpt: (message_id, received_at, _recipient_index(r.rcpt), indexed_text(r.recipient),
                           clean_text(r.state), _count(r.attempts), len(entries)) for r in snapshot.recipients}
    return PreparedMessage(message_id, received_at, row, tuple(recipients[i] for i in sorted(recipients)),
                           body)


def _type_code(value: Any) -> int:
    code = whole_number(value) or 0
    return code if -INT4_MAX <= code <= INT4_MAX else 0


def _inactive(value: Any) -> bool:
    return str(value) == "1"


#: How each bounce hash field with a column of its own is stored there.
_BOUNCE_COLUMN_VALUES = {"message_id": indexed_text, "recipient": indexed_text, "type": indexed_text,
                         "type_code": _type_code, "description": clean_text, "details": clean_text,
                         "at": clean_text, "inactive": _inactive}
assert set(_BOUNCE_COLUMN_VALUES) == BOUNCE_FIELD_COLUMNS


def bounce_columns(stored: Mapping[str, Any]) -> dict[str, Any]:
    """The values of the columns of ``bounces`` for the bounce hash fields given (``stored``: a
    whole hash, or the fields a reclassification rewrites), as the columns hold them."""
    return {name: value(stored[name]) for name, value in _BOUNCE_COLUMN_VALUES.items() if name in stored}


def bounce_other_fields(stored: Mapping[str, Any]) -> dict[str, str]:
    """The bounce hash fields without a column of their own (but ``id``): the ``fields`` jsonb."""
    return {clean_text(name): clean_text(value) for name, value in stored.items()
            if name not in BOUNCE_FIELD_COLUMNS and name != "id"}


def prepare_bounce(snapshot: BounceSnapshot) -> PreparedBounce:
    stored: Mapping[str, Any] = snapshot.stored
    received_at = time_of_ms(int(snapshot.received_ms))
    bounce_id = clean_text(snapshot.id)
    columns = bounce_columns({name: stored.get(name) for name in BOUNCE_FIELD_COLUMNS})
    row = (bounce_id, received_at, *(columns[name] for name in BOUNCE_COLUMNS if name in columns),
           jsonb(json.dumps(bounce_other_fields(stored), ensure_ascii=False)), snapshot.raw)
    return PreparedBounce(bounce_id, received_at, row, changed=snapshot.changed)


def prepare_late_event(event: LateEvent) -> PreparedLateEvent | None:
    """``event`` as the writer applies it; None when its message id is not one (nothing has it)."""
    window = id_window(event.message_id)
    if window is None:
        return None
    [entry] = timeline_entries([event.event])
    return PreparedLateEvent(event.message_id, *window, _recipient_index(event.rcpt), clean_text(event.bounce_id),
                             entry, clean_text(event.state))


def apply_late_events(timeline: bytes | None, rcpt_count: int, states: Mapping[int, str], status: str,
                      events: Sequence[PreparedLateEvent]) -> LateUpdate:
    """
    An archived message (its packed timeline, recipient count, recipients' states by index and
    status) with ``events`` (its own, oldest first) applied: each entry appended, then the state
    of its recipient set (a recipient the archive has); the status recomputed when a state was
    set.
    """
    entries = unpack_timeline(timeline)
    current = dict(states)
    changed: dict[int, str] = {}
    for event in events:
        entries.append(event.entry)
        if event.state and event.rcpt in current:
            current[event.rcpt] = changed[event.rcpt] = event.state
    if changed:
        status = message_status(current.get(k) for k in range(rcpt_count)) or status
    return LateUpdate(pack_timeline(entries), len(entries), status, changed, len(events))


#: Why a late event is skipped when the bounce that made it is not in its batch.
LATE_EVENT_NO_BOUNCE = "the record of the bounce that made it is gone from Redis (expired or evicted)"

#: What a snapshot that cannot be made into rows raises (a field of the wrong type or value).
_UNREADABLE = (ValueError, TypeError, OverflowError, RecursionError)


def prepare_batch(batch: ArchiveBatch) -> PreparedBatch:
    """``batch`` as rows (see the module's JOB)."""
    cancelled_ids = {c.id for c in batch.cancelled}
    chosen: dict[str, MessageSnapshot] = {}
    bodies: dict[str, bytes] = {}
    for snapshot in batch.messages:
        if snapshot.id in cancelled_ids:
            continue
        if snapshot.body is not None:
            bodies[snapshot.id] = snapshot.body
        kept = chosen.get(snapshot.id)
        if kept is None or snapshot.timeline_length >= kept.timeline_length:
            chosen[snapshot.id] = snapshot
    skipped: list[SkippedEntry] = []
    messages: list[PreparedMessage] = []
    for snapshot in chosen.values():
        try:
            messages.append(prepare_message(snapshot, snapshot.body if snapshot.body is not None
                                            else bodies.get(snapshot.id)))
        except _UNREADABLE as e:
            skipped.append(SkippedEntry("message", clean_text(snapshot.id), f"unreadable: {e!r}"))
    late_events: dict[str, PreparedLateEvent] = {}  # by the id of the bounce that made it
    for event in batch.late_events:
        try:
            prepared = prepare_late_event(event)
        except _UNREADABLE as e:
            skipped.append(SkippedEntry(PreparedLateEvent.kind, clean_text(event.message_id), f"unreadable: {e!r}"))
            continue
        if prepared is None:
            skipped.append(SkippedEntry(PreparedLateEvent.kind, clean_text(event.message_id), "not a message id"))
        else:
            late_events.setdefault(prepared.bounce_id, prepared)
    bounces: list[PreparedBounce] = []
    for bounce in batch.bounces:
        try:
            prepared_bounce = prepare_bounce(bounce)
        except _UNREADABLE as e:
            skipped.append(SkippedEntry("bounce", clean_text(bounce.id), f"unreadable: {e!r}"))
            continue
        bounces.append(replace(prepared_bounce, late_event=late_events.pop(prepared_bounce.id, None)))
    for event in late_events.values():  # its bounce is not in the batch: nothing to store it with
        skipped.append(SkippedEntry(PreparedLateEvent.kind, event.id, LATE_EVENT_NO_BOUNCE))
    cancelled = []
    for message_id in dict.fromkeys(c.id for c in batch.cancelled):
        window = id_window(message_id)
        if window is not None:
            cancelled.append((message_id, *window))
    return PreparedBatch(tuple(messages), tuple(bounces), tuple(cancelled), tuple(skipped))
