"""
archivewrite: the archiver's writes into the PostgreSQL archive, one transaction per batch (issue 18).

JOB
    :class:`ArchiveWriter` stores an :class:`~mailrelay.store.archiverecords.ArchiveBatch`
    (what the archiver read from Redis for a batch of ``P events`` entries, or what
    ``mailrelay migrate`` read from a release-1 Redis archive) in the tables of
    ``store/sql/0001_archive.sql``::

        writer = ArchiveWriter(ArchiveDatabase(conninfo))
        result = await writer.write(batch)        # WriteResult: rows written, entries skipped

    In a pool thread (:meth:`~mailrelay.store.archivedb.ArchiveDatabase.run`), never on
    the reactor, :meth:`ArchiveWriter.write`

    1. prepares the rows (:mod:`mailrelay.store.archiverows`): one snapshot per message
       (the longest timeline of those in the batch), its timeline packed whole
       (:func:`mailrelay.store.timelinepack.pack_timeline`), text made storable;
    2. makes sure each row's day has its partitions: a missing day is made
       (``archive_create_partitions`` under the migrations' advisory lock) unless it is past
       retention, and then its rows are skipped (a late bounce, a late snapshot of an
       expired message; a body past ``content_retention`` is left out of a snapshot still
       written). Past retention: older than ``retention`` (``content_retention`` for bodies)
       when the writer was given them, else older than the table's oldest partition (what
       retention dropped; in a new archive that is every day before its first one: give
       the retentions to write older days, e.g. when moving a release-1 archive);
    3. in ONE transaction with ``synchronous_commit`` on (``SET LOCAL``): binary ``COPY``
       into temporary staging tables (made once per connection, emptied by DELETE before
       the commit and vacuumed every :data:`VACUUM_STAGING_AFTER` entries: truncating them
       at each commit costs far more), then one ``INSERT ... SELECT ... ON CONFLICT`` per
       table, sent together (one round trip): a message's row is replaced only by a
       snapshot with a timeline at least as long (``timeline_length <=``), its recipients
       only when that snapshot's is now the stored length, bodies and bounces are inserted
       once (a bounce read for a change of its record, ``BounceSnapshot.changed``: a
       reclassification, rewrites the archived row's classification columns and merges
       its other fields into ``fields``, unless the row says so already); then the
       cancelled messages' rows are deleted (within the time window of
       their id, :func:`mailrelay.store.archiveread.id_window`). A batch that fails on its
       data is written again in a new transaction, split (DIAGNOSTICS).
    4. in the same transaction, the late events (about messages whose Redis keys
       were released: :class:`~mailrelay.store.archiverecords.LateEvent`) of the bounces
       just inserted (each is applied with its bounce's row, when that row is new: a
       replay finds the bounce stored and changes nothing): their messages' rows are
       locked (``FOR UPDATE``, in key order), each event appended to its message's
       packed timeline, the recipient's state set, the message's status recomputed
       (:func:`mailrelay.store.archiverows.apply_late_events`), in one ``UPDATE`` per
       table. A late event whose message is not in the archive (its day dropped by
       retention, or never archived) is skipped, never tried again.

    Every row has its natural key, so writing the same batch again stores nothing twice,
    and a replayed older snapshot never overwrites a newer one.

SECURITY
    All stored text is untrusted (mail, clients, remote servers): values are bound or
    COPY data, never SQL text. What PostgreSQL refuses is made storable rather than
    letting one entry block the stream (docs/archive.md, "Bad input"): NUL characters and
    lone surrogates become U+FFFD, metadata that is not a JSON object is stored as
    ``{"_raw": text}``, indexed text (tag, addresses) is cut to what an index entry holds.

STANDARDS
    PostgreSQL 15 (COPY, INSERT ... ON CONFLICT, declarative partitioning, savepoints).

DIAGNOSTICS
    :class:`mailrelay.store.errors.ArchiveUnavailable` when PostgreSQL does not answer
    (unreachable, restarted: tried once more on a fresh connection; a statement past
    the timeout; a deadlock): nothing of the batch was committed, the caller writes the
    whole batch again later. Any other error of the data (SQLSTATE classes 22 and 23, 54:
    a value out of range, a refused check, a key too large for its index): the batch is
    written again, split in halves, each in a savepoint of one transaction, and each half
    that fails split again, down to the single entry,
    which is skipped and logged once with its id ("archive: skipped message <id>: ...");
    :attr:`WriteResult.skipped` lists it. Entries skipped because their day's partition
    was dropped by retention are logged at info level, late events whose message is not
    in the archive in one line per batch ("archive: skipped <n> late event(s) of messages
    not in the archive (past retention, or never archived): <ids>"). Other errors (a
    schema out of step: a bug) pass unchanged and nothing is committed.

CONFIGURATION
    None read here: the database (``[archive] url``) and its statement timeout are the
    :class:`~mailrelay.store.archivedb.ArchiveDatabase`'s; the caller passes ``[tracking]
    retention`` and ``content_retention`` (optional, see 2.).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, fields, replace
from typing import Any, Iterable, Mapping, Sequence

import psycopg
from twisted.logger import Logger

import mailrelay.store.migrations as migrations
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archiverecords import ArchiveBatch
from mailrelay.store.archiveread import run_translated
from mailrelay.store.archiverows import (BODY_COLUMNS, BOUNCE_CLASSIFICATION_COLUMNS, BOUNCE_COLUMNS, MESSAGE_COLUMNS,
                                         RECIPIENT_COLUMNS, STAGED_BOUNCE_COLUMNS, STAGED_RECIPIENT_COLUMNS,
                                         PreparedBatch, PreparedBounce, PreparedLateEvent, PreparedMessage,
                                         SkippedEntry, apply_late_events, prepare_batch)

log = Logger()

__all__ = ["ArchiveWriter", "SkippedEntry", "WriteResult"]

#: The archive's partitioned tables and their staging tables (temporary, per connection).
TABLES = ("messages", "recipients", "bodies", "bounces")
STAGE = {table: f"archive_stage_{table}" for table in TABLES}
#: The tables an entry of each kind may write to.
_TABLES_OF = {"message": ("messages", "recipients", "bodies"), "bounce": ("bounces",)}
#: Rounds of "make the missing partitions, write again" before a missing partition counts as
#: bad data (it keeps disappearing: retention dropping it meanwhile).
PARTITION_ROUNDS = 3
#: The staging tables are vacuumed after this many entries went through them on a connection.
VACUUM_STAGING_AFTER = 1000
#: Why a late event was skipped when its message is not in the archive.
LATE_EVENT_NO_MESSAGE = "its message is not in the archive (past retention, or never archived)"
#: Ids named in the one log line of a batch's skipped late events, at most.
LOGGED_IDS = 10

#: A unit of a batch's writing: rows of one message, or one bounce (with its late event).
Unit = PreparedMessage | PreparedBounce


@dataclass(frozen=True)
class WriteResult:
    """What :meth:`ArchiveWriter.write` stored."""

    #: Message rows inserted or replaced (by a snapshot with a timeline at least as long).
    messages: int = 0
    #: Snapshots not written: the archive holds the message with a longer timeline.
    stale: int = 0
    recipients: int = 0  # recipient rows inserted or replaced
    bodies: int = 0  # bodies inserted (a body already stored is never written again)
    bounces: int = 0  # bounces inserted
    #: Archived bounces whose classification a change of the record (bounce_changed) rewrote.
    bounces_changed: int = 0
    late_events: int = 0  # late events added to archived timelines
    deleted: int = 0  # message rows deleted (cancelled acceptances)
    partitions: int = 0  # partitions made for the batch's days
    skipped: tuple[SkippedEntry, ...] = ()

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def written_part(self, batch: ArchiveBatch) -> ArchiveBatch:
        """``batch`` (the one written) without the messages and bounces skipped for their data
        (logged by the writer): what may be marked archived in Redis (the archiver's and
        ``mailrelay migrate``'s marks), so that their Redis keys are never released for an
        archive that does not hold them, and expire as before. (Those skipped as past retention
        count as written: they are gone from the archive by design.)"""
        refused = {(entry.kind, entry.id) for entry in self.skipped if not entry.expired}
        if not refused:
            return batch
        return replace(batch, messages=tuple(m for m in batch.messages if ("message", m.id) not in refused),
                       bounces=tuple(b for b in batch.bounces if ("bounce", b.id) not in refused))


class _MissingPartition(Exception):
    """A row had no partition: make the partitions again and write the batch again."""


def _no_partition(error: BaseException) -> bool:
    """A row for a day with no partition (check_violation raised by the partition routing,
    which names no constraint, unlike a CHECK constraint's)."""
    return (isinstance(error, psycopg.errors.CheckViolation)
            and (error.diag.constraint_name is None or "no partition" in str(error)))


#: Errors of the data written (worth splitting the batch), not of the server or of the code:
#: PostgreSQL's SQLSTATE classes 22 (data exception), 23 (integrity constraint violation) and
#: 54 (program limit exceeded: an index entry too large), and text psycopg cannot encode.
#: (A bug raising anything else fails the batch, which is then not acknowledged: never a
#: batch of entries skipped for it.)
_DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded,
                UnicodeEncodeError)


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


# -- statements ---------------------------------------------------------------------------------

#: Staging columns beyond the table's own (a recipient's message snapshot's timeline length,
#: whether a bounce was read for a change of its record).
_STAGED_EXTRA = {"recipients": ", timeline_length integer", "bounces": ", changed boolean"}
# The transaction's first statements: commit synchronously, and the staging tables (made once
# per connection; gone with a transaction that rolled back, so asked for each time, quietly).
# They keep their files: emptied by DELETE at the end of each part written (ON COMMIT DELETE
# ROWS or TRUNCATE truncate the files, a dozen with the TOAST tables and their indexes: ~12 ms
# per commit measured here, as ext4 writes back a file truncated then written when it is
# closed), their space made reusable by VACUUM after the commit (no truncation either: the
# files stay the size of a batch).
_BEGIN = "".join([
    "SET LOCAL synchronous_commit = on;", "SET LOCAL client_min_messages = warning;",
    *(f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE[table]} (LIKE {table}{_STAGED_EXTRA.get(table, '')})"
      " ON COMMIT PRESERVE ROWS;" for table in TABLES)])
_CLEAR_STAGING = ";".join(f"DELETE FROM {STAGE[table]}" for table in TABLES)
_VACUUM_STAGING = f"VACUUM (TRUNCATE false) {', '.join(STAGE.values())}"


def _copy(cursor: Any, table: str, columns: Mapping[str, str], rows: Iterable[Sequence[Any]]) -> None:
    """COPY ``rows`` into ``table``'s staging table (binary: no text escaping either side)."""
    with cursor.copy(f"COPY {STAGE[table]} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(list(columns.values()))
        for row in rows:
            copy.write_row(row)


def _assignments(columns: Iterable[str]) -> str:
    return ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)


_MESSAGE_KEY = ("id", "received_at")
_RECIPIENT_KEY = ("message_id", "received_at", "rcpt")
# The messages, each replacing the stored row only when its timeline is at least as long; then
# the recipients of the snapshots that are now the stored ones (the stored timeline is the
# snapshot's length: it was written, or is the same). A second statement, which sees what the
# first one wrote; a lookup per recipient, not a join: the staging tables' statistics (those of
# an empty table after each VACUUM) would make the planner loop over a join. Rows are taken in
# key order, so two writers of overlapping batches lock them in the same order.
_MERGE_MESSAGES = f"""
INSERT INTO messages AS m ({', '.join(MESSAGE_COLUMNS)})
SELECT {', '.join(MESSAGE_COLUMNS)} FROM {STAGE['messages']} ORDER BY id, received_at
ON CONFLICT (id, received_at) DO UPDATE
   SET {_assignments(c for c in MESSAGE_COLUMNS if c not in _MESSAGE_KEY)}
 WHERE m.timeline_length <= EXCLUDED.timeline_length;
INSERT INTO recipients AS r ({', '.join(RECIPIENT_COLUMNS)})
SELECT {', '.join('s.' + c for c in RECIPIENT_COLUMNS)} FROM {STAGE['recipients']} s
 WHERE s.timeline_length >= (SELECT m.timeline_length FROM messages m
                              WHERE m.id = s.message_id AND m.received_at = s.received_at)
 ORDER BY s.message_id, s.received_at, s.rcpt
ON CONFLICT (message_id, received_at, rcpt) DO UPDATE
   SET {_assignments(c for c in RECIPIENT_COLUMNS if c not in _RECIPIENT_KEY)}
"""
_MERGE_BODIES = (f"INSERT INTO bodies ({', '.join(BODY_COLUMNS)}) SELECT {', '.join(BODY_COLUMNS)}"
                 f" FROM {STAGE['bodies']} ORDER BY message_id, received_at ON CONFLICT DO NOTHING")
_MERGE_BOUNCES = (f"INSERT INTO bounces ({', '.join(BOUNCE_COLUMNS)}) SELECT {', '.join(BOUNCE_COLUMNS)}"
                  f" FROM {STAGE['bounces']} ORDER BY id, received_at ON CONFLICT DO NOTHING RETURNING id")
# After it, the bounces read for a change of their record (a reclassification: bounce_changed)
# rewrite the archived row's classification and merge their other fields into its ``fields``;
# a row that already says so is left alone (a replay writes nothing).
_CLASSIFICATION = (*BOUNCE_CLASSIFICATION_COLUMNS, "fields")
_MERGE_CHANGED_BOUNCES = f"""
INSERT INTO bounces AS b ({', '.join(BOUNCE_COLUMNS)})
SELECT {', '.join(BOUNCE_COLUMNS)} FROM {STAGE['bounces']} WHERE changed ORDER BY id, received_at
ON CONFLICT (id, received_at) DO UPDATE
   SET {_assignments(BOUNCE_CLASSIFICATION_COLUMNS)}, fields = b.fields || EXCLUDED.fields
 WHERE ({', '.join('b.' + c for c in _CLASSIFICATION)})
       IS DISTINCT FROM ({', '.join('EXCLUDED.' + c for c in BOUNCE_CLASSIFICATION_COLUMNS)}, b.fields || EXCLUDED.fields)
"""
# A cancelled message's rows, each id within its time window (runtime partition pruning).
_DELETE_CANCELLED = {
    table: (f"DELETE FROM {table} t USING unnest(%s::text[], %s::timestamptz[], %s::timestamptz[])"
            f" AS c(id, low, high) WHERE t.{column} = c.id AND t.received_at BETWEEN c.low AND c.high")
    for table, column in (("recipients", "message_id"), ("bodies", "message_id"), ("messages", "id"))}
# Late events: their messages' rows locked in key order (as the merge takes them), then the
# recipients' states (read after the lock: what a writer that held it committed), then one update
# per table.
_LOCK_LATE_MESSAGES = """
SELECT m.id, m.received_at, m.timeline, m.rcpt_count, m.status
  FROM messages m JOIN unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS w(id, low, high)
    ON m.id = w.id AND m.received_at BETWEEN w.low AND w.high
 ORDER BY m.id, m.received_at FOR UPDATE OF m
"""
_LATE_RECIPIENT_STATES = """
SELECT r.message_id, r.rcpt, r.state
  FROM recipients r JOIN unnest(%s::text[], %s::timestamptz[]) AS w(id, received_at)
    ON r.message_id = w.id AND r.received_at = w.received_at
"""
_UPDATE_LATE_MESSAGES = """
UPDATE messages m SET timeline = u.timeline, timeline_length = u.timeline_length, status = u.status
  FROM unnest(%s::text[], %s::timestamptz[], %s::bytea[], %s::int4[], %s::text[])
       AS u(id, received_at, timeline, timeline_length, status)
 WHERE m.id = u.id AND m.received_at = u.received_at
"""
_UPDATE_LATE_RECIPIENTS = """
UPDATE recipients r SET state = u.state
  FROM unnest(%s::text[], %s::timestamptz[], %s::int2[], %s::text[]) AS u(message_id, received_at, rcpt, state)
 WHERE r.message_id = u.message_id AND r.received_at = u.received_at AND r.rcpt = u.rcpt
"""
# For each (table, day): whether the day's partition is attached, and whether the day is older
# than the table's oldest partition (dropped by retention). Partitions are named
# <table>_pYYYYMMDD (archive_create_partitions), so names sort by day.
_PARTITION_STATE = """
SELECT t.tab, t.day,
       EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = t.tab::regclass AND NOT i.inhdetachpending
                  AND c.relname = t.tab || '_p' || to_char(t.day, 'YYYYMMDD')),
       COALESCE((t.tab || '_p' || to_char(t.day, 'YYYYMMDD')) COLLATE "C"
                < (SELECT min(c.relname::text COLLATE "C") FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                    WHERE i.inhparent = t.tab::regclass AND NOT i.inhdetachpending), false)
  FROM unnest(%s::text[], %s::date[]) AS t(tab, day)
"""


def _apply_late(cursor: Any, events: Sequence[PreparedLateEvent]) -> WriteResult:
    """Apply late events to their archived messages (see the module's JOB, step 4)."""
    by_message: dict[str, list[PreparedLateEvent]] = {}
    for event in events:
        by_message.setdefault(event.id, []).append(event)
    windows = [(message_id, mine[0].low, mine[0].high) for message_id, mine in by_message.items()]
    ids, lows, highs = (list(column) for column in zip(*windows))
    found = cursor.execute(_LOCK_LATE_MESSAGES, (ids, lows, highs)).fetchall()
    states: dict[str, dict[int, str]] = {}
    if found:
        rows = cursor.execute(_LATE_RECIPIENT_STATES, ([row[0] for row in found], [row[1] for row in found]))
        for message_id, rcpt, state in rows.fetchall():
            states.setdefault(message_id, {})[rcpt] = state
    messages: list[tuple[Any, ...]] = []
    recipients: list[tuple[Any, ...]] = []
    appended = 0
    for message_id, received_at, timeline, rcpt_count, status in found:
        update = apply_late_events(None if timeline is None else bytes(timeline), rcpt_count,
                                   states.get(message_id, {}), status, by_message[message_id])
        appended += update.appended
        messages.append((message_id, received_at, update.timeline, update.timeline_length, update.status))
        recipients += [(message_id, received_at, rcpt, state) for rcpt, state in update.states.items()]
    if messages:
        cursor.execute(_UPDATE_LATE_MESSAGES, [list(column) for column in zip(*messages)])
    if recipients:
        cursor.execute(_UPDATE_LATE_RECIPIENTS, [list(column) for column in zip(*recipients)])
    archived = {row[0] for row in found}
    skipped = tuple(SkippedEntry(PreparedLateEvent.kind, event.id, LATE_EVENT_NO_MESSAGE, expired=True)
                    for event in events if event.id not in archived)
    return WriteResult(late_events=appended, skipped=skipped)


class ArchiveWriter:
    """Writes archiver batches into the PostgreSQL archive (one transaction per batch)."""

    def __init__(self, database: ArchiveDatabase, *, retention: float | None = None,
                 content_retention: float | None = None) -> None:
        """``retention`` and ``content_retention`` (seconds: ``[tracking] retention`` and
        ``content_retention``), when given, say which missing days are past retention (their rows
        skipped) and which are to be made; else a day older than the table's oldest partition is
        past retention (right once retention has dropped a day, not for a new archive)."""
        self.database = database
        self.retention = retention
        self.content_retention = content_retention
        #: (table, day) whose partition was seen attached: no need to ask again.
        self._partitions: set[tuple[str, datetime.date]] = set()
        #: Entries staged on each connection (by server process id) since its last VACUUM_STAGING.
        self._staged: dict[int, int] = {}

    async def write(self, batch: ArchiveBatch) -> WriteResult:
        """Store ``batch`` (see the module's JOB); raises ArchiveUnavailable when PostgreSQL does not
        answer (nothing committed: write it again later)."""
        if not batch:
            return WriteResult()
        prepared: list[PreparedBatch] = []  # made once, in the thread, even if tried twice
        result = await run_translated(self.database, self._write, batch, prepared)
        late = [entry.id for entry in result.skipped if entry.reason == LATE_EVENT_NO_MESSAGE]
        if late:
            log.info("archive: skipped {n} late event(s) of messages not in the archive (past retention, or "
                     "never archived): {ids}", n=len(late),
                     ids=" ".join(late[:LOGGED_IDS]) + (" ..." if len(late) > LOGGED_IDS else ""))
        for entry in result.skipped:
            if entry.reason == LATE_EVENT_NO_MESSAGE:
                continue
            if entry.expired:
                log.info("archive: skipped {kind} {id}: {reason}", kind=entry.kind, id=entry.id,
                         reason=entry.reason)
            else:
                log.warn("archive: skipped {kind} {id}: {reason}", kind=entry.kind, id=entry.id,
                         reason=entry.reason)
        return result

    # -- in the pool thread ------------------------------------------------------------------------

    def _write(self, conn: Any, batch: ArchiveBatch, prepared: list[PreparedBatch]) -> WriteResult:
        if not prepared:
            prepared.append(prepare_batch(batch))
        rows = prepared[0]
        units: list[Unit] = [*rows.messages, *rows.bounces]
        placed = WriteResult(skipped=rows.skipped)
        round_, split = 1, False
        while True:
            units, place = self._place(conn, units)
            placed += place
            try:
                written = self._transaction(conn, units, rows.cancelled, split=split,
                                            retry_partitions=round_ < PARTITION_ROUNDS)
            except _MissingPartition:
                round_ += 1  # the last round takes a missing partition as bad data: this ends
                self._partitions.clear()
                continue
            except _DATA_ERRORS:
                if split:
                    raise  # not from the units' rows (split mode takes those)
                split = True  # again, each half in a savepoint, down to the bad entries
                continue
            self._vacuum_staging(conn, len(units))
            return placed + written

    def _transaction(self, conn: Any, units: Sequence[Unit],
                     cancelled: Sequence[tuple[str, datetime.datetime, datetime.datetime]], *, split: bool,
                     retry_partitions: bool) -> WriteResult:
        """The batch's transaction: the units merged (whole, or split in savepoints), the cancelled
        messages deleted; committed synchronously."""
        parts: list[WriteResult] = []
        with conn.transaction():
            self._begin(conn)
            if split:
                self._write_units(conn, units, parts, retry_partitions=retry_partitions)
            elif units:
                try:
                    parts.append(self._merge(conn, units))
                except _DATA_ERRORS as error:
                    if retry_partitions and _no_partition(error):
                        raise _MissingPartition() from error
                    raise
            deleted = self._delete_cancelled(conn, cancelled)
        return sum(parts, WriteResult(deleted=deleted))

    @staticmethod
    def _begin(conn: Any) -> None:
        """``synchronous_commit`` on for this transaction; the staging tables made if missing."""
        conn.execute(_BEGIN)

    def _vacuum_staging(self, conn: Any, staged: int) -> None:
        """Make the staging tables' space reusable once VACUUM_STAGING_AFTER entries went through
        them on this connection (VACUUM costs a few ms; until then each batch adds to the files)."""
        pid = conn.info.backend_pid  # the connection's server process: where its staging tables live
        staged += self._staged.get(pid, 0)
        if staged >= VACUUM_STAGING_AFTER:
            conn.set_autocommit(True)  # VACUUM runs outside a transaction
            try:
                conn.execute(_VACUUM_STAGING)
            finally:
                conn.set_autocommit(False)
            staged = 0
        if len(self._staged) > 64:  # connections come and go (reconnections): forget the old ones
            self._staged.clear()
        self._staged[pid] = staged

    def _write_units(self, conn: Any, units: Sequence[Unit], parts: list[WriteResult],
                     *, retry_partitions: bool) -> None:
        """Merge ``units`` in a savepoint; on bad data, each half again, down to one unit (skipped)."""
        if not units:
            return
        try:
            with conn.transaction():
                part = self._merge(conn, units)
        except _DATA_ERRORS as error:
            if retry_partitions and _no_partition(error):
                raise _MissingPartition() from error
            if len(units) == 1:
                unit = units[0]
                parts.append(WriteResult(skipped=(SkippedEntry(unit.kind, unit.id, _error_text(error)),)))
                return
            half = len(units) // 2
            for piece in (units[:half], units[half:]):
                self._write_units(conn, piece, parts, retry_partitions=retry_partitions)
            return
        parts.append(part)

    @staticmethod
    def _merge(conn: Any, units: Sequence[Unit]) -> WriteResult:
        """COPY the units' rows into the staging tables, then into the archive's in one round trip
        (which empties the staging tables after); then the late events of the bounces inserted."""
        messages = [u for u in units if isinstance(u, PreparedMessage)]
        bodies = [m for m in messages if m.body is not None]
        bounces = [u for u in units if isinstance(u, PreparedBounce)]
        statements = []
        with conn.cursor() as cursor:
            if messages:
                _copy(cursor, "messages", MESSAGE_COLUMNS, (m.row for m in messages))
                _copy(cursor, "recipients", STAGED_RECIPIENT_COLUMNS, (r for m in messages for r in m.recipients))
                statements.append(_MERGE_MESSAGES)
            if bodies:
                _copy(cursor, "bodies", BODY_COLUMNS, ((m.id, m.received_at, m.body) for m in bodies))
                statements.append(_MERGE_BODIES)
            changed = any(b.changed for b in bounces)
            if bounces:
                _copy(cursor, "bounces", STAGED_BOUNCE_COLUMNS, (b.staged_row for b in bounces))
                statements.append(_MERGE_BOUNCES)
            if changed:
                statements.append(_MERGE_CHANGED_BOUNCES)
            cursor.execute(";".join([*statements, _CLEAR_STAGING]))  # no parameters: one round trip
            written = recipients = 0
            if messages:
                written = cursor.rowcount
                cursor.nextset()
                recipients = cursor.rowcount
                cursor.nextset()
            bodies_written = cursor.rowcount if bodies else 0
            if bodies:
                cursor.nextset()
            bounces_written = cursor.rowcount if bounces else 0
            late_events = []
            if any(b.late_event is not None for b in bounces):
                inserted = {row[0] for row in cursor.fetchall()}  # the bounces' RETURNING
                late_events = [b.late_event for b in bounces if b.late_event is not None and b.id in inserted]
            bounces_changed = 0
            if changed:
                cursor.nextset()
                bounces_changed = cursor.rowcount
            late = _apply_late(cursor, late_events) if late_events else WriteResult()
        return late + WriteResult(messages=written, stale=len(messages) - written, recipients=recipients,
                                  bodies=bodies_written, bounces=bounces_written, bounces_changed=bounces_changed)

    @staticmethod
    def _delete_cancelled(conn: Any, cancelled: Sequence[tuple[str, datetime.datetime, datetime.datetime]]) -> int:
        """Delete the cancelled messages' rows; how many message rows went."""
        if not cancelled:
            return 0
        ids, lows, highs = (list(column) for column in zip(*cancelled))
        deleted = 0
        for table, statement in _DELETE_CANCELLED.items():
            count = conn.execute(statement, (ids, lows, highs)).rowcount
            deleted = count if table == "messages" else deleted
        return deleted

    def _past_retention(self, table: str, day: datetime.date, before_oldest: bool) -> bool:
        """Whether a day with no partition is past retention (its rows are skipped)."""
        keep = self.content_retention if table == "bodies" else self.retention
        if keep is None:
            return before_oldest
        now = datetime.datetime.now(datetime.timezone.utc)
        return day < (now - datetime.timedelta(seconds=keep)).date()

    def _place(self, conn: Any, units: list[Unit]) -> tuple[list[Unit], WriteResult]:
        """Make the partitions the units need; leave out what belongs to days past retention.
        (units kept, partitions made and entries skipped)."""
        kinds_and_days = {(unit.kind, unit.day) for unit in units}
        needed = {(table, day) for kind, day in kinds_and_days for table in _TABLES_OF[kind]} - self._partitions
        if not needed:
            return units, WriteResult()
        tables, days = zip(*sorted(needed))
        with conn.transaction():
            states = conn.execute(_PARTITION_STATE, (list(tables), list(days))).fetchall()
        expired: set[tuple[str, datetime.date]] = set()
        missing: set[datetime.date] = set()
        for table, day, attached, before_oldest in states:
            if attached:
                self._partitions.add((table, day))
            elif self._past_retention(table, day, before_oldest):
                expired.add((table, day))
            else:
                missing.add(day)
        made = 0
        for day in sorted(missing):
            made += migrations.create_partitions(conn, day, 1)
            self._partitions.update((table, day) for table in TABLES)
        kept: list[Unit] = []
        skipped: list[SkippedEntry] = []
        for unit in units:
            gone = [table for table, day in unit.partitions() if (table, day) in expired]
            if not gone:
                kept.append(unit)
            elif gone == ["bodies"] and isinstance(unit, PreparedMessage):
                kept.append(unit.without_body())  # past content_retention: the row without it
            else:
                skipped.append(SkippedEntry(unit.kind, unit.id, f"its day ({unit.day}) is past retention"
                                            " (its partition was dropped)", expired=True))
        return kept, WriteResult(partitions=made, skipped=tuple(skipped))
