"""
archiveread: the sent-mail archive read back from PostgreSQL, as today's records and cursors (issue 18).

JOB
    :class:`ArchiveReader` answers the reads of the archive that
    :class:`mailrelay.store.tracking.TrackingStore` and
    :class:`mailrelay.store.bounces.BounceStore` answer from Redis, with the same
    signatures and the same typed records (:mod:`mailrelay.store.records`), from
    the tables of ``store/sql/0001_archive.sql``::

        reader = ArchiveReader(ArchiveDatabase(conninfo))
        record = await reader.get_message(message_id)          # MessageRecord | None
        rows, cursor = await reader.search_messages(tag="news", limit=51)

    Each read is one parameterised statement run by
    :meth:`mailrelay.store.archivedb.ArchiveDatabase.run` in a pool thread
    (never on the reactor). Rows are turned back into the stored shape the
    records decode (the ``msg:<id>`` hash's fields, a timeline entry's JSON
    object, a bounce hash), and decoded by the records' own ``decode``: one
    meaning of each field, whichever store it came from.

    Searches run newest first with today's cursor: (received time in ms, id),
    exclusive, ties broken by the id in byte order (the ``C`` collation of the
    id columns), each served by an index read in that order and stopped at the
    limit (``messages_newest``, ``messages_by_tag``, ``messages_by_status``,
    ``recipients_by_address``; ``bounces_newest``, ``bounces_by_type``,
    ``bounces_by_address``). A message id carries its time (12 hex digits of
    ms, :func:`mailrelay.store.queue.new_message_id`) and a message is
    received within seconds of it, so reads by id look only at the partitions
    of :data:`ID_WINDOW` around it; an id that is not 20 hex digits is
    unknown without a query. ``received_at`` is taken to hold whole
    milliseconds (Redis's ``received_at``), as the cursors count in ms.

SECURITY
    Values are always bound parameters; the statement text is chosen among
    fixed fragments by which filters are given, never formatted from input.
    Returns stored text as it is (addresses, subjects, remote replies:
    untrusted); whoever renders it escapes it. Each call is bounded by the
    database's statement timeout.

STANDARDS
    SQL (PostgreSQL 15: declarative partitioning, row-value comparison for
    keyset cursors); zlib (RFC 1950) bodies; JSON (RFC 8259).

DIAGNOSTICS
    psycopg's failures reach callers as :class:`mailrelay.store.errors.ArchiveUnavailable`
    (a :class:`~mailrelay.store.errors.StorageUnavailable`, which the API answers
    503 "storage unavailable: ..."): the server unreachable or restarted, or a
    statement past the statement timeout (``timed_out``, text "canceling
    statement due to statement timeout"). A read that failed because its pooled
    connection was cut (a server restart) is tried once more on a fresh one.
    Other database errors (a schema out of step) are bugs and pass unchanged.

CONFIGURATION
    None of its own: the database (``[archive]``) and its statement timeout are
    the :class:`~mailrelay.store.archivedb.ArchiveDatabase`'s.
"""

from __future__ import annotations

import datetime
import json
import re
import zlib
from typing import Any, Callable, Mapping, TypeVar

from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.errors import ArchiveUnavailable, translate
from mailrelay.store.records import (BounceRecord, MessageRecord, MessageSummary, TimelineEvent,
                                     decode_timeline)
from mailrelay.store.timelinepack import json_entries, unpack_timeline
from mailrelay.store.tracking import MESSAGE_STATUSES

T = TypeVar("T")

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
#: The range of times PostgreSQL is asked about (ms outside are clamped: no row is there).
FIRST_TIME = datetime.datetime(1, 1, 2, tzinfo=UTC)
LAST_TIME = datetime.datetime(9999, 12, 30, tzinfo=UTC)

#: A message is stored within this of the time in its id (in practice: seconds).
ID_WINDOW = datetime.timedelta(days=1)

_MESSAGE_ID = re.compile(r"[0-9a-f]{20}")
_BOUNCE_ID = re.compile(r"[0-9a-f]{1,64}")


def time_of_ms(ms: int) -> datetime.datetime:
    """A time in ms since the epoch as an aware UTC datetime (exact; clamped to datetime's range)."""
    try:
        return min(max(EPOCH + datetime.timedelta(milliseconds=ms), FIRST_TIME), LAST_TIME)
    except OverflowError:
        return LAST_TIME if ms > 0 else FIRST_TIME


def ms_of_time(moment: datetime.datetime) -> int:
    """The whole ms since the epoch of an aware datetime (exact: integer arithmetic)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def id_window(message_id: str) -> tuple[datetime.datetime, datetime.datetime] | None:
    """The received times message ``message_id`` can have, or None for an id that is not one."""
    if not _MESSAGE_ID.fullmatch(message_id):
        return None
    at = time_of_ms(int(message_id[:12], 16))
    return at - ID_WINDOW, at + ID_WINDOW


def stored_text(value: Any) -> str:
    """A JSON value as the Redis scripts store a hash field: text as is, an integer in decimal,
    anything else as JSON (mailrelay.store.bounces.record_bounce)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value)


# -- statements ---------------------------------------------------------------------------------
# Each returns (statement text, parameters). The text is one of a fixed set of fragments joined
# according to which filters are given; every value is a parameter.

_MESSAGE_COLUMNS = ("m.sender, m.username, m.client, m.received_at, m.size, m.tag, m.metadata,"
                    " m.from_header, m.to_header, m.cc_header, m.subject, m.message_id_header, m.status,"
                    " m.rcpt_count")

#: The summary fields of a search row, in MessageSummary.decode's names.
_SUMMARY_FIELDS = ("id", "received_at", "from", "to", "subject", "tag", "status", "sender")
_SUMMARY_COLUMNS = "m.id, m.received_at, m.from_header, m.to_header, m.subject, m.tag, m.status, m.sender"

#: The fields of a search_bounces row (those mailrelay.store.bounces reads from each hash).
_BOUNCE_SEARCH_FIELDS = ("id", "received_at", "message_id", "recipient", "type", "type_code", "description",
                         "details", "at", "inactive")
_BOUNCE_SEARCH_EXTRA = ("status", "remote_mta", "proof")
_BOUNCE_COLUMNS = ("b.id, b.received_at, b.message_id, b.recipient, b.type, b.type_code, b.description,"
                   " b.details, b.at, b.inactive")


def message_statement(message_id: str, low: datetime.datetime,
                      high: datetime.datetime) -> tuple[str, list[Any]]:
    """The message row and its recipients (index, address, state, attempts) as one array."""
    return (
        f"SELECT {_MESSAGE_COLUMNS},"
        " ARRAY(SELECT ARRAY[r.rcpt::text, r.recipient, r.state, r.attempts::text] FROM recipients r"
        "       WHERE r.message_id = m.id AND r.received_at = m.received_at"
        "       AND r.received_at BETWEEN %s AND %s ORDER BY r.rcpt)"
        " FROM messages m WHERE m.id = %s AND m.received_at BETWEEN %s AND %s",
        [low, high, message_id, low, high])


def timeline_statement(message_id: str, low: datetime.datetime,
                       high: datetime.datetime) -> tuple[str, list[Any]]:
    """The message's packed timeline (mailrelay.store.timelinepack)."""
    return ("SELECT timeline FROM messages WHERE id = %s AND received_at BETWEEN %s AND %s",
            [message_id, low, high])


def body_statement(message_id: str, low: datetime.datetime, high: datetime.datetime) -> tuple[str, list[Any]]:
    return ("SELECT body FROM bodies WHERE message_id = %s AND received_at BETWEEN %s AND %s",
            [message_id, low, high])


def _window(time_column: str, id_column: str, since_ms: int | None, until_ms: int | None,
            cursor: tuple[int, str] | None) -> tuple[list[str], list[Any]]:
    """Conditions for since <= time <= until and (time, id) < cursor (exclusive)."""
    conditions: list[str] = []
    params: list[Any] = []
    if since_ms is not None:
        conditions.append(f"{time_column} >= %s")
        params.append(time_of_ms(since_ms))
    if until_ms is not None:
        conditions.append(f"{time_column} <= %s")
        params.append(time_of_ms(until_ms))
    if cursor is not None:
        at = time_of_ms(cursor[0])
        # the plain bound lets the index scan start at the cursor; the row comparison drops
        # the cursor's own row and the ties above it
        conditions.append(f"{time_column} <= %s AND ({time_column}, {id_column}) < (%s, %s)")
        params += [at, at, cursor[1]]
    return conditions, params


def message_search_statement(*, recipient: str | None = None, tag: str | None = None,
                             status: str | None = None, since_ms: int | None = None,
                             until_ms: int | None = None, limit: int = 50,
                             cursor: tuple[int, str] | None = None) -> tuple[str, list[Any]]:
    """Summaries newest first, through the most selective index (as TrackingStore.search_messages)."""
    filters: list[str] = []
    params: list[Any] = []
    if tag:  # "tag <> ''" lets a generic plan use the partial index messages_by_tag
        filters.append("m.tag <> '' AND m.tag = %s")
        params.append(tag)
    if status:
        filters.append("m.status = %s")
        params.append(status)
    if recipient:
        # The recipients with that address newest first (their index's order, up to the limit),
        # each with its message. The message is read in a LATERAL subquery with LIMIT 1: the
        # planner then counts one message per recipient (a plain join on (id, received_at)
        # counts nearly none, as it takes the two columns for independent, and sorts every
        # recipient with the address instead of stopping at the limit). A message that has the
        # address twice is one row (its first such recipient), as in the Redis index.
        window, window_params = _window("r.received_at", "r.message_id", since_ms, until_ms, cursor)
        statement = (
            f"SELECT {_SUMMARY_COLUMNS} FROM recipients r CROSS JOIN LATERAL ("
            " SELECT m.* FROM messages m WHERE m.id = r.message_id AND m.received_at = r.received_at"
            f"{''.join(' AND ' + c for c in filters)}"
            " AND NOT EXISTS (SELECT 1 FROM recipients o WHERE o.message_id = r.message_id"
            " AND o.received_at = r.received_at AND o.rcpt < r.rcpt AND lower(o.recipient) = lower(r.recipient))"
            " LIMIT 1) AS m"
            f" WHERE {' AND '.join(['lower(r.recipient) = lower(%s)', *window])}"
            " ORDER BY r.received_at DESC, r.message_id DESC LIMIT %s")
        return statement, [*params, recipient, *window_params, limit]
    conditions, window_params = _window("m.received_at", "m.id", since_ms, until_ms, cursor)
    where = " AND ".join([*filters, *conditions])
    statement = (f"SELECT {_SUMMARY_COLUMNS} FROM messages m{' WHERE ' + where if where else ''}"
                 " ORDER BY m.received_at DESC, m.id DESC LIMIT %s")
    return statement, [*params, *window_params, limit]


def status_counts_statement(since_ms: int | None) -> tuple[str, list[Any]]:
    """Messages per status (each an index-only count on messages_by_status)."""
    since = "" if since_ms is None else " AND m.received_at >= %s"
    return ("SELECT s.status, (SELECT count(*) FROM messages m WHERE m.status = s.status"
            f"{since}) FROM unnest(%s::text[]) AS s(status)",
            ([] if since_ms is None else [time_of_ms(since_ms)]) + [list(MESSAGE_STATUSES)])


def bounce_statement(bounce_id: str) -> tuple[str, list[Any]]:
    """A bounce by id: its time is not in its id, so each partition's key is probed."""
    return f"SELECT {_BOUNCE_COLUMNS}, b.fields FROM bounces b WHERE b.id = %s", [bounce_id]


def bounce_raw_statement(bounce_id: str) -> tuple[str, list[Any]]:
    return "SELECT raw FROM bounces WHERE id = %s", [bounce_id]


def bounce_search_statement(*, type: str | None = None, recipient: str | None = None,
                            since_ms: int | None = None, limit: int = 50,
                            cursor: tuple[int, str] | None = None) -> tuple[str, list[Any]]:
    """Bounces newest first (as BounceStore.search_bounces: the stored recipient equals the
    address lowercased; the type exactly)."""
    conditions: list[str] = []
    params: list[Any] = []
    if recipient:
        conditions.append("lower(b.recipient) = %s AND b.recipient = %s")
        params += [recipient.lower(), recipient.lower()]
    if type:
        conditions.append("b.type = %s")
        params.append(type)
    window, window_params = _window("b.received_at", "b.id", since_ms, None, cursor)
    where = " AND ".join([*conditions, *window])
    extra = ", ".join(f"b.fields ->> '{name}'" for name in _BOUNCE_SEARCH_EXTRA)
    statement = (f"SELECT {_BOUNCE_COLUMNS}, {extra} FROM bounces b{' WHERE ' + where if where else ''}"
                 " ORDER BY b.received_at DESC, b.id DESC LIMIT %s")
    return statement, [*params, *window_params, limit]


# -- rows back into the stored shapes -------------------------------------------------------------


def message_fields(row: tuple[Any, ...]) -> dict[str, str]:
    """A message_statement row as the ``msg:<id>`` hash's fields (what MessageRecord.decode takes)."""
    (sender, username, client, received_at, size, tag, metadata, header_from, to, cc, subject,
     message_id_header, status, rcpt_count, recipients) = row
    stored = {"sender": sender, "user": username, "client": client,
              "received_at": str(ms_of_time(received_at)), "size": str(size), "tag": tag,
              "metadata": json.dumps(metadata, ensure_ascii=False), "from": header_from, "to": to, "cc": cc,
              "subject": subject, "message_id": message_id_header, "status": status,
              "rcpt_count": str(rcpt_count)}
    for index, address, state, attempts in recipients:
        stored.update({f"rcpt:{index}": address, f"state:{index}": state, f"attempts:{index}": attempts})
    return stored


def summary_fields(row: tuple[Any, ...]) -> dict[str, Any]:
    """A search row as MessageSummary.decode's row (``_score``: the received time in ms)."""
    fields = dict(zip(_SUMMARY_FIELDS, row))
    fields["received_at"] = fields["_score"] = ms_of_time(row[1])
    return fields


def bounce_fields(row: tuple[Any, ...], extra: Mapping[str, Any]) -> dict[str, Any]:
    """A bounces row (the columns of _BOUNCE_COLUMNS) and its other fields as the bounce hash."""
    stored: dict[str, Any] = {name: stored_text(value) for name, value in extra.items() if value is not None}
    stored.update({name: value for name, value in zip(_BOUNCE_SEARCH_FIELDS, row)})
    stored["_score"] = ms_of_time(row[1])
    del stored["received_at"]
    stored["type_code"] = str(stored["type_code"])
    stored["inactive"] = "1" if stored["inactive"] else "0"
    return stored


def _connection_lost(error: BaseException) -> bool:
    """Whether ``error`` is its connection's loss (worth one try on another), not a slow query."""
    return isinstance(error, ArchiveUnavailable) and not error.timed_out


async def run_translated(database: ArchiveDatabase, work: Callable[..., T], *args: Any) -> T:
    """``work(connection, *args)`` in a pool thread (``database.run``); psycopg's failures as store
    errors (:func:`mailrelay.store.errors.translate`). One more try when the pooled connection
    turns out to be dead (e.g. after a restart): ``work`` must be safe to run twice."""
    for attempt in (1, 2):
        try:
            return await database.run(work, *args)
        except Exception as e:
            translated = translate(e)
            if attempt == 1 and _connection_lost(translated):
                continue
            if translated is e:
                raise
            raise translated from e
    raise AssertionError("unreachable")


class ArchiveReader:
    """The archive's reads (TrackingStore's and BounceStore's signatures) from PostgreSQL."""

    def __init__(self, database: ArchiveDatabase) -> None:
        self.database = database

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        return await run_translated(self.database, work, *args)

    @staticmethod
    def _fetch(connection: Any, statement: tuple[str, list[Any]]) -> list[tuple[Any, ...]]:
        text, params = statement
        return connection.execute(text, params).fetchall()

    # -- messages -------------------------------------------------------------------------------

    async def get_message(self, message_id: str) -> MessageRecord | None:
        """The stored envelope, summary and recipients of a message (no timeline), or None."""
        window = id_window(message_id)
        if window is None:
            return None
        rows = await self._run(self._fetch, message_statement(message_id, *window))
        return MessageRecord.decode(message_id, message_fields(rows[0])) if rows else None

    async def get_body(self, message_id: str) -> bytes | None:
        """The message as it will be delivered (stored zlib-compressed; decompressed in the thread)."""
        window = id_window(message_id)
        if window is None:
            return None

        def read(connection: Any) -> bytes | None:
            rows = self._fetch(connection, body_statement(message_id, *window))
            return zlib.decompress(rows[0][0]) if rows else None
        return await self._run(read)

    async def get_timeline(self, message_id: str) -> tuple[TimelineEvent, ...]:
        """The message's events, oldest first (by their position in the timeline)."""
        window = id_window(message_id)
        if window is None:
            return ()
        rows = await self._run(self._fetch, timeline_statement(message_id, *window))
        packed = bytes(rows[0][0]) if rows and rows[0][0] is not None else None
        return decode_timeline(json_entries(unpack_timeline(packed)))

    async def search_messages(self, *, recipient: str | None = None, tag: str | None = None,
                              status: str | None = None, since_ms: int | None = None,
                              until_ms: int | None = None, limit: int = 50,
                              cursor: tuple[int, str] | None = None) -> tuple[list[MessageSummary], tuple[int, str] | None]:
        """Messages newest first, as summaries, and the next page's cursor (None: no more)."""
        statement = message_search_statement(recipient=recipient, tag=tag, status=status, since_ms=since_ms,
                                             until_ms=until_ms, limit=limit, cursor=cursor)
        rows = await self._run(self._fetch, statement)
        found = [MessageSummary.decode(summary_fields(row)) for row in rows]
        return found, ((found[-1].score, found[-1].id) if len(found) == limit else None)

    async def status_counts(self, since_ms: int | None = None) -> dict[str, int]:
        """Messages per status received since ``since_ms`` (all archived ones when None)."""
        rows = await self._run(self._fetch, status_counts_statement(since_ms))
        return {status: int(count) for status, count in rows}

    # -- bounces --------------------------------------------------------------------------------

    async def get_bounce(self, bounce_id: str) -> BounceRecord | None:
        """Stored bounce ``bounce_id``, or None when unknown (an id that is not hex: unknown)."""
        if not _BOUNCE_ID.fullmatch(bounce_id):
            return None
        rows = await self._run(self._fetch, bounce_statement(bounce_id))
        if not rows:
            return None
        *columns, extra = rows[0]
        return BounceRecord.decode(_without_score(bounce_fields(tuple(columns), extra or {})), bounce_id)

    async def get_bounce_raw(self, bounce_id: str) -> bytes | None:
        """The bounce message as received, or None."""
        if not _BOUNCE_ID.fullmatch(bounce_id):
            return None
        rows = await self._run(self._fetch, bounce_raw_statement(bounce_id))
        return bytes(rows[0][0]) if rows and rows[0][0] is not None else None

    async def search_bounces(self, *, type: str | None = None, recipient: str | None = None,
                             since_ms: int | None = None, limit: int = 50,
                             cursor: tuple[int, str] | None = None) -> tuple[list[BounceRecord], tuple[int, str] | None]:
        """Bounces newest first (filtered by type and recipient), and the next page's cursor."""
        statement = bounce_search_statement(type=type, recipient=recipient, since_ms=since_ms, limit=limit,
                                            cursor=cursor)
        rows = await self._run(self._fetch, statement)
        width = len(_BOUNCE_SEARCH_FIELDS)
        found = [BounceRecord.decode(bounce_fields(row[:width], dict(zip(_BOUNCE_SEARCH_EXTRA, row[width:]))))
                 for row in rows]
        return found, ((found[-1].score or 0, found[-1].id) if len(found) == limit else None)


def _without_score(stored: dict[str, Any]) -> dict[str, Any]:
    """A record read by id has no index score (BounceRecord.score None), as from Redis."""
    stored.pop("_score", None)
    return stored
