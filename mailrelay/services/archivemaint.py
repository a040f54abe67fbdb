"""
archivemaint: the archive's partition maintenance, once the schema is ready and then every hour (issue 18).

JOB
    :class:`ArchiveMaintenance` (the twistd service ``archive-maintenance``)
    runs :func:`mailrelay.store.archivemaint.maintain` on the archive's
    write database: drops the day partitions past ``[tracking] retention``
    (bodies: past ``content_retention``) and makes those of today and the
    next ``days_ahead`` days. It waits for ``schema_ready`` (the archive's
    ``ArchiveService.whenSchemaReady``), runs once, then every
    :data:`INTERVAL` seconds on ``clock`` (a ``LoopingCall``; a
    ``task.Clock`` in tests)::

        maintenance = ArchiveMaintenance(archive.write, retention, content_retention, reactor,
                                         schema_ready=archive.whenSchemaReady)
        maintenance.setServiceParent(top)      # after the archive: it stops first
        report = yield maintenance.run_once()   # MaintenanceReport

    Every daemon runs one; the advisory lock of
    :mod:`mailrelay.store.archivemaint` lets one at a time do the work (a
    run that finds it taken does nothing). ``stopService`` cancels the wait
    for the schema and the next run, and waits for a run in progress
    (bounded by the maintenance statement timeout), so the pools can close
    after it.

SECURITY
    Drops only partitions past the configured retention, found in the
    catalog by name (see :mod:`mailrelay.store.archivemaint`). A database
    error is logged on one line with the conninfo's password masked
    (:func:`mailrelay.services.archive.one_line_error`).

STANDARDS
    None (PostgreSQL through :mod:`mailrelay.store.archivemaint`).

DIAGNOSTICS
    ``archive maintenance: dropped <n> partitions past retention (<names>),
    made <k>`` (info, when it dropped or made any); ONE warning when a run
    fails, ``archive maintenance failed: <error>; trying again every <n>s``
    (the following failures are debug lines ``archive maintenance still
    failing: <error>``), and ``archive maintenance works again`` (info) after
    a failure; ``archive maintenance: another daemon holds the lock; its
    turn`` (debug) when the lock was taken.

CONFIGURATION
    ``[tracking]`` retention, content_retention (read by
    :mod:`mailrelay.service`, which makes this service when the archive
    runs). Owns no Redis data.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from mailrelay.services.archive import one_line_error
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archivemaint import MAINTENANCE_STATEMENT_TIMEOUT, MaintenanceReport, maintain

log = Logger()

INTERVAL = 3600.0  # seconds between runs
DAYS_AHEAD = 3  # partitions made for today and this many days after it


class ArchiveMaintenance(service.Service):
    """Drops the archive's expired day partitions and makes the next ones, every hour."""

    name = "archive-maintenance"

    def __init__(self, database: ArchiveDatabase, retention: float, content_retention: float,
                 clock: IReactorTime, days_ahead: int = DAYS_AHEAD, *,
                 schema_ready: Callable[[], defer.Deferred[Any]] | None = None,
                 interval: float = INTERVAL) -> None:
        self.database = database
        self.retention = retention
        self.content_retention = content_retention
        self.clock = clock
        self.days_ahead = days_ahead
        # not named when_ready: the daemon awaits a child's when_ready before starting the next
        self._schema_ready = schema_ready
        self.interval = interval
        self.failing = False  # the last run failed (and was warned about)
        self.last_report: MaintenanceReport | None = None
        self._ready: defer.Deferred[Any] | None = None
        self._next: IDelayedCall | None = None  # the next run, scheduled on clock
        self._current: defer.Deferred[None] | None = None  # the run in progress
        self._run_waiters: list[defer.Deferred[MaintenanceReport | None]] = []

    def now(self) -> datetime.datetime:
        """The clock's time, in UTC (the partitions are UTC days)."""
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)

    def run_once(self) -> defer.Deferred[MaintenanceReport]:
        """One maintenance run now (in a pool thread, on a connection of its own)."""
        return self.database.run_autocommit(
            maintain, self.now(), self.retention, self.content_retention, self.days_ahead,
            statement_timeout=MAINTENANCE_STATEMENT_TIMEOUT)

    def whenRunEnds(self) -> defer.Deferred[MaintenanceReport | None]:
        """Fires when the loop's next run ends: with its report, or None when it failed."""
        d: defer.Deferred[MaintenanceReport | None] = defer.Deferred()
        self._run_waiters.append(d)
        return d

    # -- service ---------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._ready = self._schema_ready() if self._schema_ready is not None else defer.succeed(None)
        self._ready.addCallbacks(self._start_loop, lambda failure: failure.trap(defer.CancelledError))

    def _start_loop(self, _: Any) -> None:
        self._ready = None
        if self.running:
            self._tick()

    def _tick(self) -> None:
        self._next = None
        self._current = defer.ensureDeferred(self._run_and_log())

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return defer.ensureDeferred(self._stop())

    async def _stop(self) -> None:
        if self._ready is not None:
            self._ready.cancel()
        if self._next is not None:
            self._next.cancel()
            self._next = None
        if self._current is not None:
            await self._current  # a run in progress ends within the maintenance timeout

    # -- a run, logged -------------------------------------------------------------------

    async def _run_and_log(self) -> None:
        """:meth:`run_once`, logged, then the next run scheduled; never fails."""
        report: MaintenanceReport | None = None
        try:
            report = await self.run_once()
            self._log(report)
        except Exception as e:
            if not self.failing:
                self.failing = True
                log.warn("archive maintenance failed: {error}; trying again every {interval:g}s",
                         error=one_line_error(e, self.database.conninfo), interval=self.interval)
            else:
                log.debug("archive maintenance still failing: {error}",
                          error=one_line_error(e, self.database.conninfo))
        finally:
            self._current = None
            if self.running:
                self._next = self.clock.callLater(self.interval, self._tick)
            waiters, self._run_waiters = self._run_waiters, []
            for d in waiters:
                d.callback(report)

    def _log(self, report: MaintenanceReport) -> None:
        if self.failing:
            self.failing = False
            log.info("archive maintenance works again")
        self.last_report = report
        if report.busy:
            log.debug("archive maintenance: another daemon holds the lock; its turn")
        elif report.dropped or report.created:
            log.info("archive maintenance: dropped {n} partitions past retention ({names}), made {made}",
                     n=len(report.dropped), names=", ".join(report.dropped) or "none",
                     made=report.created)
