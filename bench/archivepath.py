"""
bench/archivepath.py: the archive's whole path in one process, for bench/redis_release.py and
bench/archive_ingest.py.

A :class:`PathRig` is a private redis-server (no persistence: the data model, not the disk;
bench/archive.py's), a private PostgreSQL (bench/servers.py's ``Postgres``, run as mailrelay's
managed one: fsync on; or with ``fsync_off`` the tests' one, tests/pgserver.py) and, in this
process's reactor, what a daemon runs on them:

- mailrelay's own ``Storage`` at data version 2 (the archive in PostgreSQL: a fresh Redis gets
  it, as at a daemon's first start), filled with the measured message of bench/archive.py (one
  recipient, a tag, two metadata keys, a 2 KB body) by :meth:`PathRig.fill`: enqueued and
  confirmed as submission does, then claimed, deferred once, claimed again and delivered as
  delivery does (bench/redis_outage.py's ``deliver_round``): three events per message (queued,
  deferred, delivered);
- the daemon's archive services: ``ArchiveService`` (its pools, the schema migrated) and
  ``ArchiverService`` (mailrelay/services/archiver.py: the consumer group, batch snapshots,
  the writer, marks and acknowledgements, trimming the stream, releasing the Redis keys of
  messages archived final once ``[archive] release_after`` has passed), unchanged but, when
  asked, for how long it keeps the stream's tail (``trim_keep``: the module's TRIM_KEEP, 60 s
  in the daemon) and how often it trims and releases (TRIM_INTERVAL, RELEASE_INTERVAL: 10 s and
  5 s), set on the module as tests/test_archiver.py does.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
for path in (str(ROOT), str(ROOT / "tests"), str(BENCH)):  # mailrelay, pgserver, the bench modules
    if path not in sys.path:
        sys.path.insert(0, path)

from archive import measured_body, measured_message, start_redis, used_memory  # noqa: E402
from procstat import ProcGroup  # noqa: E402
from redis_outage import DOMAINS, deliver_round  # noqa: E402

#: Events the measured message adds to the stream: queued, deferred, delivered.
EVENTS_PER_MESSAGE = 3


@dataclass
class ArchiveDatabaseServer:
    """A private PostgreSQL for the archive: its conninfo, its processes, how to stop it."""

    conninfo: str
    group: ProcGroup
    stop: Callable[[], None]
    kind: str


def start_archive_postgres(fsync_off: bool = False) -> ArchiveDatabaseServer:
    """bench/servers.py's Postgres (mailrelay's managed settings: fsync and synchronous_commit
    on), or with ``fsync_off`` the tests' PostgreSQL (tests/pgserver.py)."""
    if fsync_off:
        from pgserver import start_postgres

        server = start_postgres()

        def stop() -> None:
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)
        return ArchiveDatabaseServer(server.conninfo(), ProcGroup("postgresql", [server.process.pid], tree=True),
                                     stop, "fsync off (tests/pgserver.py)")
    from servers import Postgres

    managed = Postgres()
    return ArchiveDatabaseServer(managed.conninfo(), managed.group(), managed.stop,
                                 "as managed by mailrelay (fsync, synchronous_commit on)")


@dataclass
class PathRig:
    """Redis, PostgreSQL and a daemon's store and archive services in this process (see the
    module docstring). Make it with :meth:`start`, end it with :meth:`stop`."""

    directory: Path
    redis_process: Any
    postgres: ArchiveDatabaseServer
    redis: Any = None
    storage: Any = None
    archive: Any = None
    archiver: Any = None
    rng: random.Random = field(default_factory=lambda: random.Random(1))
    sent: int = 0

    @classmethod
    async def start(cls, *, release_after: float = 60.0, trim_keep: float | None = None,
                    housekeeping_interval: float | None = None, fsync_off: bool = False, seed: int = 1) -> PathRig:
        """Start Redis and PostgreSQL, connect the store (data version 2) and make the archive's
        schema ready; the archiver is made, not started (:meth:`start_archiver`)."""
        from twisted.internet import reactor, task

        from mailrelay.config import parse_config
        from mailrelay.services import archiver as archiver_module
        from mailrelay.services.archive import ArchiveService
        from mailrelay.services.archiver import ArchiverService
        from mailrelay.store import Storage, connect_redis

        directory = Path(tempfile.mkdtemp(prefix="mr-path-", dir="/tmp"))
        redis_process, sock = start_redis(directory)
        try:
            postgres = start_archive_postgres(fsync_off)
        except Exception:
            redis_process.terminate()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        rig = cls(directory, redis_process, postgres, rng=random.Random(seed))
        try:
            config = parse_config({"redis": {"url": f"unix://{sock}?db=0", "timeout": "30s"},
                                   "archive": {"url": postgres.conninfo, "release_after": f"{release_after:g}s"}})
            rig.redis = connect_redis(config, None)
            for _ in range(500):  # wait for redis to answer (bounded)
                try:
                    await rig.redis.execute_command("PING")
                    break
                except Exception:
                    await task.deferLater(reactor, 0.01, lambda: None)
            rig.storage = Storage(config, rig.redis, owner="bench")
            await rig.storage.start()
            version, _ = await rig.storage.data_version()  # a fresh Redis starts at the current one
            if version < rig.storage.ARCHIVE_IN_POSTGRES_VERSION:
                raise RuntimeError(f"data version {version}: the archive is not in PostgreSQL")
            await rig.storage.archive_create_group()  # as the archiver does, before any message
            rig.archive = ArchiveService(config)
            rig.archive.startService()
            await rig.archive.whenSchemaReady()
            if trim_keep is not None:
                archiver_module.TRIM_KEEP = trim_keep
            if housekeeping_interval is not None:
                archiver_module.TRIM_INTERVAL = archiver_module.RELEASE_INTERVAL = housekeeping_interval
            rig.archiver = ArchiverService(config, lambda: rig.storage, rig.archive)
        except BaseException:
            await rig.stop()
            raise
        return rig

    @property
    def keys(self) -> Any:
        return self.storage.keys

    def redis_group(self) -> ProcGroup:
        return ProcGroup("redis", [self.redis_process.pid])

    # -- the daemon's services ------------------------------------------------------------

    def start_archiver(self) -> None:
        self.archiver.startService()

    async def stop(self) -> None:
        if self.archiver is not None and self.archiver.running:
            await self.archiver.stopService()
        if self.archive is not None and self.archive.running:
            await self.archive.stopService()
        if self.storage is not None:
            self.storage.stop()
        if self.redis is not None:
            try:
                await self.redis.disconnect()
            except Exception:
                pass
        self.postgres.stop()
        self.redis_process.terminate()
        self.redis_process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- the load -------------------------------------------------------------------------

    async def fill(self, count: int, *, round_size: int = 1000, recipients: int = 10_000,
                   progress: Callable[[int, float], None] | None = None) -> float:
        """Send ``count`` measured messages (enqueued, confirmed, deferred once, delivered), in
        rounds of ``round_size``; returns the seconds it took."""
        from twisted.internet import defer

        body = measured_body(self.rng)
        addresses = [f"user{i}@example{i % DOMAINS}.test" for i in range(recipients)]
        tags = [f"tag{i}" for i in range(50)]
        started = time.monotonic()
        for start in range(0, count, round_size):
            size = min(round_size, count - start)
            ids = await defer.gatherResults([
                defer.ensureDeferred(self.storage.enqueue(measured_message(
                    self.sent + n, self.rng.choice(addresses), self.rng.choice(tags), body)))
                for n in range(size)])
            await defer.gatherResults([self.storage.confirm(message_id) for message_id in ids])
            await deliver_round(self.storage, ids)
            self.sent += size
            if progress is not None:
                progress(start + size, time.monotonic() - started)
        return time.monotonic() - started

    # -- conditions -----------------------------------------------------------------------

    async def wait_for(self, condition: Callable[[], Any], timeout: float, what: str,
                       interval: float = 0.05) -> float:
        """Poll the coroutine function ``condition`` until it is true; the seconds it took.
        Raises RuntimeError after ``timeout`` seconds."""
        from twisted.internet import reactor, task

        started = time.monotonic()
        while not await condition():
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{what}: not within {timeout:.0f} s")
            await task.deferLater(reactor, interval, lambda: None)
        return time.monotonic() - started

    async def archived_all(self) -> bool:
        """Whether the archiver has acknowledged every entry of the stream."""
        lag = await self.storage.archive_lag()
        return lag is not None and lag.entries == 0

    async def released_all(self) -> bool:
        """Whether no archived message waits for its release any more."""
        return int(await self.redis.execute_command("ZCARD", self.keys.archive_release)) == 0

    async def stream_length(self) -> int:
        return int(await self.redis.execute_command("XLEN", self.keys.events))

    async def used_memory(self) -> int:
        return await used_memory(self.redis)

    async def info(self, section: str) -> dict[str, str]:
        text = (await self.redis.execute_command("INFO", section)).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def react(main: Callable[[Any], Any]) -> None:
    """Run the coroutine function ``main(reactor)`` in Twisted's reactor."""
    os.environ.setdefault("PYTHONHASHSEED", "0")
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
