"""
archivebounces: the archive's bounces for ``mailrelay bounce reclassify`` at data version 2 (issue 18).

JOB
    Once the data is at :data:`mailrelay.store.cluster.ARCHIVE_IN_POSTGRES_VERSION`,
    a bounce lives in Redis only until the archiver wrote it and ``[archive]
    release_after`` passed (mailrelay.store.archiverelease); after that only the
    PostgreSQL archive holds it. :class:`ArchiveBounceStore` gives
    :func:`mailrelay.services.bounces.reclassify_bounces` what it needs there::

        store = ArchiveBounceStore(ArchiveDatabase(conninfo))     # the write database
        async for bounce_id in store.bounce_ids():                # oldest first, in pages
            record = await store.get_bounce(bounce_id)            # as ArchiveReader reads it
            await store.update_bounce(bounce_id, {"type": "SoftBounce", ...})

    :meth:`~ArchiveBounceStore.bounce_ids` pages through ``bounces`` in the order of
    its index ``bounces_newest`` ((received_at, id), a keyset cursor: a page costs the
    same however deep). :meth:`~ArchiveBounceStore.update_bounce` rewrites the fields a
    reclassification changes in the bounce's row: those with a column of their own in
    their column (as the archiver stores them: :func:`mailrelay.store.archiverows.
    bounce_columns`), the others merged into its ``fields`` (jsonb ``||``). The
    suppression a reclassification removes is Redis's (mailrelay.store.bounces).

SECURITY
    Values are bound parameters; the statement's column names come from the fixed
    list of the ``bounces`` columns (mailrelay.store.archiverows), never from input.
    Stored text is made storable as the archiver makes it (NUL, lone surrogates).

STANDARDS
    PostgreSQL 15 (row-value comparison for the keyset cursor, jsonb ``||``).

DIAGNOSTICS
    :class:`mailrelay.store.errors.ArchiveUnavailable` when PostgreSQL does not answer
    (as :class:`~mailrelay.store.archiveread.ArchiveReader`).

CONFIGURATION
    None of its own: the database (``[archive] url``) and its statement timeout are the
    :class:`~mailrelay.store.archivedb.ArchiveDatabase`'s.
"""

from __future__ import annotations

import datetime
from typing import Any, AsyncIterator, Mapping

from psycopg.types.json import Jsonb

from mailrelay.store.archiveread import ArchiveReader
from mailrelay.store.archiverows import bounce_columns, bounce_other_fields

_FIRST_PAGE = "SELECT id, received_at FROM bounces ORDER BY received_at, id LIMIT %s"
_NEXT_PAGE = ("SELECT id, received_at FROM bounces WHERE received_at >= %s AND (received_at, id) > (%s, %s)"
              " ORDER BY received_at, id LIMIT %s")


def bounce_page_statement(after: tuple[datetime.datetime, str] | None, limit: int) -> tuple[str, list[Any]]:
    """The next ``limit`` bounces' (id, received_at) after ``after`` (exclusive; None: the first)."""
    if after is None:
        return _FIRST_PAGE, [limit]
    at, bounce_id = after
    return _NEXT_PAGE, [at, at, bounce_id, limit]


def bounce_update_statement(bounce_id: str, fields: Mapping[str, Any]) -> tuple[str, list[Any]] | None:
    """The UPDATE of bounce ``bounce_id``'s row with ``fields`` (bounce hash fields); None: no field."""
    columns = bounce_columns(fields)
    others = bounce_other_fields(fields)
    assignments = [f"{name} = %s" for name in columns]
    params: list[Any] = list(columns.values())
    if others:
        assignments.append("fields = fields || %s")
        params.append(Jsonb(others))
    if not assignments:
        return None
    return f"UPDATE bounces SET {', '.join(assignments)} WHERE id = %s", [*params, bounce_id]


class ArchiveBounceStore(ArchiveReader):
    """The archive's bounces: read (ArchiveReader's reads), listed in pages, rewritten."""

    async def bounce_ids(self, batch: int = 1000) -> AsyncIterator[str]:
        """Every archived bounce id, oldest first (an async iterator, ``batch`` per query)."""
        after: tuple[datetime.datetime, str] | None = None
        while True:
            rows = await self._run(self._fetch, bounce_page_statement(after, batch))
            for bounce_id, _ in rows:
                yield bounce_id
            if len(rows) < batch:
                return
            last_id, last_at = rows[-1]
            after = (last_at, last_id)

    async def update_bounce(self, bounce_id: str, fields: Mapping[str, Any]) -> bool:
        """Rewrite ``fields`` of archived bounce ``bounce_id``; False when the archive does not
        hold it."""
        statement = bounce_update_statement(bounce_id, fields)
        if statement is None:
            return False
        text, params = statement

        def update(connection: Any) -> int:  # run() commits
            return connection.execute(text, params).rowcount
        return await self._run(update) > 0
