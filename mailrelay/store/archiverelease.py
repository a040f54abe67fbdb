"""
archiverelease: a message's Redis keys go once it is final and archived (issue 18).

JOB
    Once the data is at :data:`mailrelay.store.cluster.ARCHIVE_IN_POSTGRES_VERSION`
    (the archive lives in PostgreSQL), Redis keeps a message only while it is being
    delivered and for a short grace period after: when the archiver has written a
    message whose recipients are all final with its whole timeline, it schedules the
    message (and each bounce it archived) in ``P archive:release`` with the time its
    keys may go (the shared Lua ``_release.lua``, run by the archiver's mark script).
    :meth:`ArchiveReleaseStore.release_archived` deletes the keys of those whose time
    has come, in one script call per batch (``release_archived.lua``): a message's
    hash, timeline and body and its entries in the Redis search indexes, only if it is
    still final and wholly archived (a late event makes it wait for the archiver
    again); a bounce's record, raw report and index entries. A released message that
    a dedupe key names stays a duplicate (``dedupe_enqueue.lua``), and its count of
    reports per recipient goes on in ``P reports:<id>.<rcpt>`` (mailrelay.store.bounces:
    the cap holds for reports that come after). On older data nothing is released
    (a daemon of the previous release still reads the whole archive from Redis) and
    nothing is scheduled, except while ``mailrelay migrate`` runs (``P meta:migrating``):
    the step to version 2 schedules what it copied (mailrelay.store.archiveexport), and
    the archiver what it finishes meanwhile; those entries wait, due or not, until the
    step has recorded version 2.

SECURITY
    Deletes only what the archiver wrote to PostgreSQL; reads of a released message
    go to PostgreSQL (mailrelay.store.archiveview).

STANDARDS
    None.

DIAGNOSTICS
    Storage errors as mailrelay.store.errors.

CONFIGURATION
    ``[archive] release_after`` (the grace period, passed to the mark script by the
    archiver). Keys: ``P archive:release`` (ZSET: ``m:<id>`` / ``b:<id>`` by the time
    their keys may go).
"""

from __future__ import annotations

from dataclasses import dataclass

from mailrelay.store.base import StoreBase
from mailrelay.store.cluster import ARCHIVE_IN_POSTGRES_VERSION
from mailrelay.store.scripts import SCRIPTS

RELEASE_ARCHIVED_SCRIPT = SCRIPTS["release_archived"]


@dataclass(frozen=True)
class Released:
    """What one release_archived call did."""

    messages: int
    bounces: int
    #: Due messages whose keys stayed (no longer final or wholly archived; the archiver
    #: schedules them again when it has archived what came since).
    kept: int


class ArchiveReleaseStore(StoreBase):
    """Releases the Redis keys of archived messages and bounces."""

    async def release_archived(self, limit: int = 500) -> Released:
        """Release the keys of up to ``limit`` members of ``P archive:release`` due by now
        (this store's clock, Redis's as measured); nothing (all zero) before data version 2."""
        names = self.keys
        reply = await self._eval(
            RELEASE_ARCHIVED_SCRIPT,
            [names.archive_release, names.data_version, names.time_index, names.bounces,
             names.bounces_unmatched],
            [self.now_ms(), limit, ARCHIVE_IN_POSTGRES_VERSION, names.msg_prefix, names.timeline_prefix,
             names.body_prefix, names.rcpt_index_prefix, names.tag_index_prefix,
             names.status_index_prefix, names.bounce_prefix, names.bounce_raw_prefix,
             names.late_reports_prefix, int(self.retention)])
        messages, bounces, kept = (int(n) for n in reply)
        return Released(messages, bounces, kept)
