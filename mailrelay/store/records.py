"""
records: the typed records read back from Redis, each decoded from its stored shape in one place.

JOB
    Turns what the store's read methods return today (strings of Redis hashes,
    JSON list entries) into frozen records, so that the API, the status page,
    the CLI and bounce matching read one meaning of each stored field:

    :class:`MessageRecord`    ``get_message`` (the ``msg:<id>`` hash) with its
                              :class:`RecipientState` per recipient, and the
                              ``get_timeline`` entries attributed to them
                              (:meth:`MessageRecord.with_timeline`);
    :class:`TimelineEvent`    one ``get_timeline`` entry (:func:`decode_timeline`);
    :class:`MessageSummary`   one ``search_messages`` row;
    :class:`BounceRecord`     ``get_bounce`` (the ``bounce:<id>`` hash) or one
                              ``search_bounces`` row;
    :class:`Suppression`      one entry of ``suppressions`` / ``list_suppressions``.

    Each record has one ``decode`` classmethod taking exactly what the store
    method returns. Decoding is pure (no I/O) and tolerant, with one defined
    value for what is missing or corrupt:

    - a text field that is absent is ``""``; a status that is absent is
      ``"queued"``; a number that does not parse is 0 (``received_ms``: None);
    - ``to``/``cc`` that are not a JSON list of strings are ``()``, ``metadata``
      that is not a JSON object is ``{}``; the stored text of every field that did
      not decode is kept in the record's ``undecoded`` mapping (field name ->
      text), for pages that show people what is stored;
    - the recipients are ``rcpt:0`` .. ``rcpt:<rcpt_count - 1>``; when
      ``rcpt_count`` is absent or not a whole number >= 0, the consecutive
      ``rcpt:<i>`` fields from 0; ``rcpt:<i>`` fields past the count are ignored;
      a recipient whose ``rcpt:<i>`` is absent has the address ``""`` (and proves
      nothing to bounce matching); a recipient with no ``state:<i>`` is
      ``"queued"``;
    - a timeline entry belongs to recipient ``rcpt`` when that is one of the
      message's indexes, else to the first recipient whose address is its
      ``recipient`` (case-insensitively), else to none (``unattributed``);
      entries that are not JSON objects are dropped.

SECURITY
    Everything decoded here came from mail or from a remote server: it is data,
    escaped by whoever prints it. Decoding never raises on stored values (a
    tampered or half-written hash decodes to the defined values above) and never
    evaluates anything: JSON only, through :func:`json.loads`.

STANDARDS
    RFC 8259 (the JSON of metadata, address lists and timeline entries).

DIAGNOSTICS
    None: nothing is logged and nothing raises; what did not decode is in
    ``undecoded``.

CONFIGURATION
    None. Owns no Redis key: it reads the values of ``msg:<id>``,
    ``timeline:<id>``, ``bounce:<id>`` and ``suppressed`` as the store returns
    them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

#: Recipient states as the API shows them (a job being delivered right now is "queued").
RECIPIENT_STATES = ("queued", "deferred", "delivered", "bounced", "expired", "suppressed", "deleted")

#: The state of a recipient, and the status of a message, when none is stored.
DEFAULT_STATE = "queued"

#: The recipient states that end a recipient's delivery (lua/_status.lua's FINAL).
FINAL_STATES = frozenset({"delivered", "bounced", "expired", "suppressed", "deleted"})

#: The bounce type of a record that names none.
UNKNOWN_BOUNCE_TYPE = "Unknown"

#: The suppression type of an entry that names none (an operator's).
MANUAL_SUPPRESSION = "ManuallyDeactivated"


# -- field decoders ---------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def whole_number(value: Any) -> int | None:
    """``"12"``, ``"12.0"``, ``12`` -> 12; anything else (``""``, ``"x"``, ``"nan"``, a bool) -> None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or number != int(number):
        return None
    return int(number)


def _json_int(value: Any) -> int | None:
    """An integer as stored in a JSON entry (an int, not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _address_list(text: str | None) -> tuple[str, ...] | None:
    """A stored JSON list of addresses; None when the text is not one (absent text: ())."""
    if not text:
        return ()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, list):
        return None
    return tuple(_text(v) for v in value)


def json_object(text: str | None) -> dict[str, Any] | None:
    """A stored JSON object (metadata); ``{}`` for absent text, None when the text is not one."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


# -- timeline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineEvent:
    """
    One entry of a message's timeline as read back (the fields of
    :class:`mailrelay.store.Event`, each None when absent or of the wrong type;
    ``detail`` ``""``), with any other stored field kept in ``extra``.
    """

    type: str | None
    at: str | None
    recipient: str | None
    rcpt: int | None
    detail: str = ""
    remote_host: str | None = None
    remote_ip: str | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    response: str | None = None
    remote_queue_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def decode(cls, entry: Any) -> TimelineEvent | None:
        """One ``get_timeline`` entry (a decoded JSON value; an event already decoded is
        returned as it is); None when it is not an object."""
        if isinstance(entry, TimelineEvent):
            return entry
        if not isinstance(entry, dict):
            return None
        known = EVENT_FIELDS
        return cls(
            type=_optional_text(entry.get("type")), at=_optional_text(entry.get("at")),
            recipient=_optional_text(entry.get("recipient")), rcpt=_json_int(entry.get("rcpt")),
            detail=_text(entry.get("detail")), remote_host=_optional_text(entry.get("remote_host")),
            remote_ip=_optional_text(entry.get("remote_ip")), smtp_code=_json_int(entry.get("smtp_code")),
            enhanced_code=_optional_text(entry.get("enhanced_code")),
            response=_optional_text(entry.get("response")),
            remote_queue_id=_optional_text(entry.get("remote_queue_id")),
            extra={k: v for k, v in entry.items() if k not in known})

    def as_dict(self) -> dict[str, Any]:
        """Every event field (None when unknown), then the extra stored fields."""
        out: dict[str, Any] = {name: getattr(self, name) for name in EVENT_FIELDS}
        out.update(self.extra)
        return out


#: The fields of a timeline entry, in their order (those of mailrelay.store.Event).
EVENT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TimelineEvent) if f.name != "extra")


def decode_timeline(entries: Iterable[Any] | None) -> tuple[TimelineEvent, ...]:
    """``get_timeline``'s list, oldest first; entries that are not JSON objects are dropped."""
    decoded = (TimelineEvent.decode(entry) for entry in entries or ())
    return tuple(event for event in decoded if event is not None)


# -- messages ---------------------------------------------------------------------------------


def message_status(states: Iterable[str | None]) -> str | None:
    """
    A message's status from its recipients' states (each recipient's, in index order; None:
    none stored), as lua/_status.lua's ``update_status`` decides it for Redis: ``queued``
    while any recipient is not final; then the final state they all share (``deleted``
    counts as ``suppressed``), else ``partial``. None for a message without recipients
    (its stored status stays as it is). The archive applies a late event with it
    (mailrelay.store.archiverows); tests/test_message_status.py checks it against the Lua.
    """
    status = None
    for state in states:
        if state is None or state not in FINAL_STATES:
            return DEFAULT_STATE
        state = "suppressed" if state == "deleted" else state
        status = state if status in (None, state) else "partial"
    return status


@dataclass(frozen=True)
class RecipientState:
    """One recipient of a message: its index, address, delivery state and attempts so far."""

    index: int
    address: str
    state: str = DEFAULT_STATE
    attempts: int = 0
    #: This recipient's timeline, oldest first (empty until :meth:`MessageRecord.with_timeline`).
    events: tuple[TimelineEvent, ...] = ()
    #: Stored text of fields that did not decode (``attempts``).
    undecoded: Mapping[str, str] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """The state as the API shows it: one of RECIPIENT_STATES ("delivering" is "queued")."""
        return self.state if self.state in RECIPIENT_STATES else DEFAULT_STATE


@dataclass(frozen=True)
class MessageRecord:
    """One accepted message (the ``msg:<id>`` hash): envelope, header summary and recipients."""

    id: str
    sender: str = ""
    user: str = ""
    client: str = ""
    received_ms: int | None = None
    size: int = 0
    tag: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    header_from: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    subject: str = ""
    message_id_header: str = ""
    status: str = DEFAULT_STATE
    recipients: tuple[RecipientState, ...] = ()
    #: Timeline entries that belong to no recipient of the message.
    unattributed: tuple[TimelineEvent, ...] = ()
    #: Stored text of fields that did not decode (received_at, size, to, cc, metadata, rcpt_count).
    undecoded: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def decode(cls, message_id: str, stored: Mapping[str, str]) -> MessageRecord:
        """``get_message``'s hash (field -> text) of message ``message_id``."""
        undecoded: dict[str, str] = {}

        def number(name: str) -> int | None:
            text = stored.get(name)
            value = whole_number(text)
            if value is None and text:
                undecoded[name] = text
            return value

        def addresses(name: str) -> tuple[str, ...]:
            value = _address_list(stored.get(name))
            if value is None:
                undecoded[name] = stored.get(name, "")
            return value or ()

        metadata = json_object(stored.get("metadata"))
        if metadata is None:
            undecoded["metadata"] = stored.get("metadata", "")
        count = number("rcpt_count")
        if count is None or count < 0:
            if count is not None:
                undecoded["rcpt_count"] = stored.get("rcpt_count", "")
            count = 0
            while f"rcpt:{count}" in stored:
                count += 1
        received = number("received_at")
        return cls(
            id=message_id, sender=_text(stored.get("sender")), user=_text(stored.get("user")),
            client=_text(stored.get("client")), received_ms=received, size=number("size") or 0,
            tag=_text(stored.get("tag")), metadata=metadata or {}, header_from=_text(stored.get("from")),
            to=addresses("to"), cc=addresses("cc"), subject=_text(stored.get("subject")),
            message_id_header=_text(stored.get("message_id")),
            status=_text(stored.get("status")) or DEFAULT_STATE,
            recipients=tuple(_recipient(stored, i) for i in range(count)), undecoded=undecoded)

    def recipient(self, index: int) -> RecipientState | None:
        """Recipient ``index`` when the message has one with a known address, else None."""
        if 0 <= index < len(self.recipients) and self.recipients[index].address:
            return self.recipients[index]
        return None

    def owner_of(self, event: TimelineEvent) -> int | None:
        """The index of the recipient an event belongs to (see the module docstring), or None."""
        if event.rcpt is not None and 0 <= event.rcpt < len(self.recipients):
            return event.rcpt
        wanted = (event.recipient or "").lower()
        if wanted:
            for recipient in self.recipients:
                if recipient.address.lower() == wanted:
                    return recipient.index
        return None

    def with_timeline(self, events: Iterable[TimelineEvent]) -> MessageRecord:
        """This record with ``events`` (oldest first) attributed to its recipients."""
        per_recipient: list[list[TimelineEvent]] = [[] for _ in self.recipients]
        unattributed = []
        for event in events:
            index = self.owner_of(event)
            if index is None:
                unattributed.append(event)
            else:
                per_recipient[index].append(event)
        return replace(self, unattributed=tuple(unattributed), recipients=tuple(
            replace(r, events=tuple(found)) for r, found in zip(self.recipients, per_recipient)))


def _recipient(stored: Mapping[str, str], index: int) -> RecipientState:
    attempts_text = stored.get(f"attempts:{index}")
    attempts = whole_number(attempts_text)
    return RecipientState(index=index, address=_text(stored.get(f"rcpt:{index}")),
                          state=_text(stored.get(f"state:{index}")) or DEFAULT_STATE,
                          attempts=attempts if attempts is not None else 0,
                          undecoded={"attempts": attempts_text} if attempts is None and attempts_text else {})


def decode_message(message_id: str, stored: Mapping[str, str] | None,
                   timeline: Iterable[Any] | None = None) -> MessageRecord | None:
    """``get_message`` (None: unknown message) and, when read, ``get_timeline`` as one record."""
    if not stored:
        return None
    record = MessageRecord.decode(message_id, stored)
    return record if timeline is None else record.with_timeline(decode_timeline(timeline))


@dataclass(frozen=True)
class MessageSummary:
    """
    One ``search_messages`` row (a message's summary fields, its id and index score); the
    read model fills in ``first_recipient`` and ``recipient_count`` from the message's record
    when it joins them (:func:`mailrelay.store.readmodel.latest_messages`).
    """

    id: str
    received_ms: int | None = None
    header_from: str = ""
    to: tuple[str, ...] = ()
    subject: str = ""
    tag: str = ""
    status: str = DEFAULT_STATE
    sender: str = ""
    #: The index score (the received time, ms): the row's place for page cursors.
    score: int = 0
    first_recipient: str = ""
    recipient_count: int = 0

    @classmethod
    def decode(cls, row: Mapping[str, Any]) -> MessageSummary:
        """A ``search_messages`` row: ``{"id", "_score", "received_at", "from", "to", "subject",
        "tag", "status", "sender"}`` (and ``first_recipient``, ``rcpt_count`` when joined)."""
        score = whole_number(row.get("_score"))
        received = whole_number(row.get("received_at"))
        return cls(
            id=_text(row.get("id")), received_ms=received if received is not None else score,
            header_from=_text(row.get("from")), to=_address_list(row.get("to")) or (),
            subject=_text(row.get("subject")), tag=_text(row.get("tag")),
            status=_text(row.get("status")) or DEFAULT_STATE, sender=_text(row.get("sender")),
            score=score or 0, first_recipient=_text(row.get("first_recipient")),
            recipient_count=max(0, whole_number(row.get("rcpt_count")) or 0))

    def joined(self, record: MessageRecord | None) -> MessageSummary:
        """This summary with its message's first recipient and recipient count."""
        if record is None:
            return self
        first = record.recipients[0].address if record.recipients else ""
        return replace(self, first_recipient=first, recipient_count=len(record.recipients))


# -- bounces and suppressions -------------------------------------------------------------------


@dataclass(frozen=True)
class BounceRecord:
    """One stored bounce (``bounce:<id>``) or ``search_bounces`` row; absent text is ``""``."""

    id: str
    message_id: str = ""
    recipient: str = ""
    type: str = UNKNOWN_BOUNCE_TYPE
    type_code: int = 0
    description: str = ""
    details: str = ""
    at: str = ""
    inactive: bool = False
    proof: str = ""
    status: str = ""
    remote_mta: str = ""
    source: str = ""
    rule: str = ""
    reason: str = ""
    claimed_message_id: str = ""
    #: The index score (the time stored, ms) of a search row; None for a record read by id.
    score: int | None = None

    @classmethod
    def decode(cls, stored: Mapping[str, Any], bounce_id: str | None = None) -> BounceRecord:
        """``get_bounce``'s hash (with ``bounce_id``) or a ``search_bounces`` row."""
        def text(name: str) -> str:
            return _text(stored.get(name))
        return cls(
            id=bounce_id if bounce_id is not None else text("id"), message_id=text("message_id"),
            recipient=text("recipient"), type=text("type") or UNKNOWN_BOUNCE_TYPE,
            type_code=whole_number(stored.get("type_code")) or 0, description=text("description"),
            details=text("details"), at=text("at"), inactive=stored.get("inactive") == "1",
            proof=text("proof"), status=text("status"), remote_mta=text("remote_mta"),
            source=text("source"), rule=text("rule"), reason=text("reason"),
            claimed_message_id=text("claimed_message_id"), score=whole_number(stored.get("_score")))


@dataclass(frozen=True)
class Suppression:
    """One suppressed address and why (an entry of the ``suppressed`` hash)."""

    address: str
    since: str = ""
    type: str = MANUAL_SUPPRESSION
    reason: str = ""
    bounce_id: str = ""
    message_id: str = ""
    proof: str = ""

    @classmethod
    def decode(cls, address: str, entry: Any) -> Suppression:
        """One entry of ``suppressions``/``list_suppressions`` (address -> decoded JSON)."""
        entry = entry if isinstance(entry, dict) else {}

        def text(name: str) -> str:
            return _text(entry.get(name))
        return cls(address=address, since=text("since"), type=text("type") or MANUAL_SUPPRESSION,
                   reason=text("reason"), bounce_id=text("bounce_id"), message_id=text("message_id"),
                   proof=text("proof"))


def decode_suppressions(entries: Mapping[str, Any]) -> list[Suppression]:
    """``list_suppressions`` / ``suppressions`` as records, newest first (then by address)."""
    found = [Suppression.decode(address, entry) for address, entry in entries.items()]
    return sorted(found, key=lambda s: (s.since, s.address), reverse=True)


# -- the queue, as the administrator sees it ---------------------------------------------------


@dataclass(frozen=True)
class QueuedJob:
    """One recipient's delivery job as ``mailrelay queue show`` shows it."""

    index: int
    recipient: str
    state: str
    attempts: int
    #: When the job waits in its domain queue: its due time (ms); else None.
    due_ms: int | None = None
    #: When a daemon is delivering it: the end of its lease (ms); else None.
    lease_until_ms: int | None = None


@dataclass(frozen=True)
class AdminMessage:
    """Everything about one message for ``mailrelay queue show``."""

    #: Redis's clock when read (ms).
    now_ms: int
    message: MessageRecord
    timeline: tuple[TimelineEvent, ...]
    jobs: tuple[QueuedJob, ...]
    #: The daemon that stored it while its acknowledgement is not settled (its jobs are in no
    #: queue yet), else None.
    unsettled: str | None = None
