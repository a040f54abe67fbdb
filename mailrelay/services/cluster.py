"""
cluster: the daemons sharing one Redis see each other; the data format has a version.

JOB
    Every daemon writes a heartbeat every ``HEARTBEAT_INTERVAL`` seconds (after sweeping: it
    confirms the messages a daemon without a heartbeat left unsettled, see
    ``Storage.sweep_unsettled``): who it is
    (host, pid, version, the newest data format it understands), since when it runs, what
    it is delivering (delivery jobs leased, per destination domain) and where it listens.
    A heartbeat lives for ``HEARTBEAT_MISSES`` intervals: a daemon that died vanishes from
    the list after that, one that stops cleanly at once. ``mailrelay cluster`` lists the
    live daemons; ``Storage.cluster_members`` gives the same to the stats API.

    The Redis data carries a format version (``Storage.DATA_VERSION``). The daemon checks
    it before it accepts or delivers anything: it sets it on an empty database, starts on
    the current version and the one before (rolling upgrades), and refuses to start (one
    line, exit status 1) against newer data or data older than that.
    ``mailrelay migrate`` runs the registered migration steps (``Storage.MIGRATIONS``).
    When Redis does not answer at start, the check runs at the first heartbeat that
    reaches it, and the daemon stops there if the data is unusable.

SECURITY
    Heartbeats name host names, process ids and listening addresses: whoever can read
    the Redis can read them (as everything else there).

STANDARDS
    None.

DIAGNOSTICS
    ``mailrelay could not start: the Redis data under key prefix ... has data format
    version N, newer than this mailrelay understands (M): upgrade mailrelay``;
    ``heartbeat failed: ...`` (Redis unreachable: the daemon keeps running and retries).

CONFIGURATION
    None of its own; Redis data through :mod:`mailrelay.store` ("cluster and data
    version": ``P cluster``, ``P cluster:<owner>``, ``P meta:version``).
"""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter
from typing import Any, Callable

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay import __version__
from mailrelay.store import new_owner
from mailrelay.store.cluster import archive_in_postgres
from mailrelay.store.interfaces import ClusterMembership, ClusterStorage, UnsettledSweep
from mailrelay.services.submission import describe_address

log = Logger()

#: Seconds between heartbeats.
HEARTBEAT_INTERVAL = 5.0
#: A daemon whose heartbeat is this many intervals old is gone (its heartbeat expires).
HEARTBEAT_MISSES = 3
#: Domains listed per daemon in a heartbeat (those with the most leased jobs).
HEARTBEAT_DOMAINS = 20


def listeners_of(top: Any) -> list[str]:
    """``["submission 127.0.0.1:2587", ...]``: the listening ports found in the service tree."""
    found = []

    def walk(node: Any) -> None:
        for port in getattr(node, "ports", None) or []:
            try:
                found.append(f"{node.name} {describe_address(port.getHost())}")
            except Exception:
                pass
        for child in (list(node) if isinstance(node, service.MultiService) else []):
            walk(child)

    walk(top)
    return found


#: Seconds between attempts to check the data version when Redis did not answer at start.
VERSION_RETRY = 0.5


async def check_data_version_at_start(storage: ClusterMembership) -> bool:
    """
    The daemon's start (before delivery and the listeners): True once the data version is
    checked (set on an empty database); False when Redis does not answer (ClusterService
    checks it as soon as it does). Raises DataVersionError: the daemon must not start.
    """
    try:
        await storage.check_data_version()
    except storage.DataVersionError:
        raise
    except Exception as e:
        log.warn("could not check the Redis data format version ({e}); checked as soon as "
                 "Redis answers", e=str(e) or type(e).__name__)
        return False
    return True


class ClusterService(service.Service):
    """This daemon's heartbeat (and the data version check when Redis was down at start)."""

    name = "cluster"

    def __init__(self, config: Any, get_storage: Callable[[], ClusterStorage], top: Any,
                 delivery: Any = None, *, version_checked: Callable[[], bool] = lambda: True,
                 clock: Any = None) -> None:
        from twisted.internet import reactor

        self.config = config
        self.get_storage = get_storage
        self.top = top
        self.delivery = delivery
        self.clock = clock or reactor
        self.owner = delivery.owner if delivery is not None else new_owner()
        self.started_ms: int | None = None
        self.version_checked = version_checked
        #: The Redis data format version as the last heartbeat read it (None before the first).
        self.stored_data_version: int | None = None
        self._loop: task.LoopingCall | None = None
        self._version_loop: task.LoopingCall | None = None
        self._failing = False

    async def when_ready(self) -> None:
        storage = self.get_storage()
        self.started_ms = storage.now_ms()
        if not self.version_checked():
            self._version_loop = task.LoopingCall(self._check_version)
            self._version_loop.clock = self.clock
            self._version_loop.start(VERSION_RETRY, now=True)
        await self._beat()  # the daemon is listed once it says it is ready
        self._loop = task.LoopingCall(self.beat)
        self._loop.clock = self.clock
        self._loop.start(HEARTBEAT_INTERVAL, now=False)

    async def _check_version(self) -> None:
        storage = self.get_storage()
        try:
            await storage.check_data_version()
        except storage.DataVersionError as e:
            self._fatal(str(e))
        except Exception:
            return  # Redis still unreachable
        if self._version_loop is not None and self._version_loop.running:
            self._version_loop.stop()

    def info(self) -> dict[str, Any]:
        held = list(self.delivery.held.values()) if self.delivery is not None else []
        domains = Counter(job.domain for job in held)
        return {
            "hostname": socket.gethostname(),  # the machine ([server] hostname is shared)
            "pid": os.getpid(),
            "version": __version__,
            "data_version": self.get_storage().DATA_VERSION,
            "started": self.started_ms or 0,
            "interval": HEARTBEAT_INTERVAL,
            "delivery": "on" if self.delivery is not None else "off",
            "held": len(held),
            "domains": dict(domains.most_common(HEARTBEAT_DOMAINS)),
            "listeners": listeners_of(self.top),
        }

    def beat(self) -> defer.Deferred:
        return defer.ensureDeferred(self._beat())

    async def _sweep(self, storage: UnsettledSweep) -> None:
        """Confirm what dead daemons left unsettled (before our heartbeat: see the script)."""
        try:
            await storage.sweep_unsettled(HEARTBEAT_INTERVAL * HEARTBEAT_MISSES,
                                          min_age=HEARTBEAT_INTERVAL)
        except Exception as e:
            if not self._failing:
                log.warn("sweeping unsettled messages failed: {e}", e=str(e) or type(e).__name__)

    async def _beat(self) -> None:
        storage = self.get_storage()
        info = self.info()
        await self._sweep(storage)
        try:
            _, version = await storage.heartbeat(self.owner, info,
                                                 HEARTBEAT_INTERVAL * HEARTBEAT_MISSES)
            self.stored_data_version = version
            if version is not None and version > storage.DATA_VERSION:
                log.error("the Redis data now has format version {v}, newer than this mailrelay "
                          "understands ({mine}): upgrade this daemon", v=version,
                          mine=storage.DATA_VERSION)
        except Exception as e:
            if not self._failing:
                log.warn("heartbeat failed: {e}", e=str(e) or type(e).__name__)
            self._failing = True
            return
        if self._failing:
            log.info("heartbeat recorded again")
            self._failing = False
        log.debug("heartbeat recorded: {held} job(s) held", held=info["held"])

    def archive_in_postgres(self) -> bool:
        """Whether the archive's reads go to PostgreSQL: the Redis data is at the format
        version that moved the archive there (ARCHIVE_IN_POSTGRES_VERSION, after `mailrelay
        migrate`). Before the first heartbeat, and on older data, the archive is read from Redis."""
        return archive_in_postgres(self.stored_data_version)

    def _fatal(self, message: str) -> None:
        from twisted.internet import reactor

        log.critical("mailrelay stops: {error}", error=message)
        for loop in (self._loop, self._version_loop):
            if loop is not None and loop.running:
                loop.stop()
        reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        reactor.stop()

    def stopService(self) -> defer.Deferred | None:
        service.Service.stopService(self)
        if self._version_loop is not None and self._version_loop.running:
            self._version_loop.stop()
        if self._loop is None:
            return None
        if self._loop.running:
            self._loop.stop()
        storage = self.get_storage()
        d = defer.ensureDeferred(storage.leave_cluster(self.owner))
        return d.addErrback(lambda f: log.info("could not remove the heartbeat: {e}",
                                               e=f.getErrorMessage()))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the mailrelay command")
