"""
The archiver's write path into PostgreSQL: how many snapshots (and events) per second
mailrelay.store.archivewrite.ArchiveWriter stores, for a few batch sizes.

    python bench/archive_ingest.py [--snapshots 60000] [--batches 100,1000,5000] [--in-flight 1]
                                   [--fsync-off]

Each snapshot is the measured message (bench/archive.py): one recipient, three events (queued,
deferred, delivered: the whole timeline, packed), a tag, two metadata keys, a 2 KB body (about
700 bytes compressed); each is a new message, so every batch inserts. Snapshots are built
before the clock starts (the Redis side, mailrelay.store.archivefeed, builds them in the daemon);
the clock covers ``ArchiveWriter.write`` only, as the archiver calls it: one batch at a time,
from the reactor, each batch one transaction committed with synchronous_commit on. Then the
same batches are written again (a replay after a crash, or a message's later snapshot: every
row is found and replaced). ``--in-flight 2`` writes two batches at once (two transactions on
two pooled connections), which overlaps preparing one batch's rows with the database's work
on the other.

PostgreSQL: a private one run as mailrelay's managed PostgreSQL runs (bench/servers.py's
Postgres: its settings, fsync on), or with ``--fsync-off`` the tests' one (tests/pgserver.py),
the archive's schema migrated, today's partitions made. Printed per batch size: snapshots/s,
events/s (3 per snapshot), and CPU seconds per 1,000 snapshots of this process (the writer:
preparing rows, COPY) and of PostgreSQL (all its processes).
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # pgserver: the private PostgreSQL of the tests

from archive import measured_body, timeline_of  # noqa: E402  (bench/archive.py: the measured message)
from procstat import ProcGroup, own_seconds  # noqa: E402

EVENTS_PER_SNAPSHOT = 3


def snapshots(count: int, rng: random.Random, bodies: list[bytes]) -> list:
    """``count`` snapshots of the measured message, received now, in id order."""
    from mailrelay.store.archiverecords import ArchivedRecipient, MessageSnapshot

    utc = datetime.timezone.utc
    now_ms = int(time.time() * 1000)
    made = []
    for n in range(count):
        ms = now_ms + n // 10
        when = datetime.datetime.fromtimestamp(ms / 1000, utc)
        rcpt = f"user{rng.randrange(10_000)}@example{rng.randrange(97)}.test"
        made.append(MessageSnapshot(
            id=f"{ms:012x}{rng.getrandbits(32):08x}", received_ms=ms, status="delivered",
            sender="app@example.com", from_header="App <app@example.com>", to_header=f'["{rcpt}"]',
            cc_header="[]", subject=f"Your receipt #{n}", message_id_header=f"<{n}@example.com>",
            tag=f"tag{rng.randrange(50)}", metadata=f'{{"order": "{n}", "plan": "pro"}}', size=2048,
            username="app", client="127.0.0.1", rcpt_count=1,
            recipients=(ArchivedRecipient(0, rcpt, "delivered", 2),),
            timeline=tuple(timeline_of(when, rcpt, n)), body=bodies[n % len(bodies)]))
    return made


async def measure(writer, batches: list, postgres: ProcGroup, in_flight: int) -> tuple[float, float, float]:
    """(seconds, writer CPU s, PostgreSQL CPU s) to write ``batches``, ``in_flight`` at a time."""
    from twisted.internet import defer

    cpu0, pg0, t0 = own_seconds(), postgres.cpu(), time.perf_counter()
    semaphore = defer.DeferredSemaphore(in_flight)
    await defer.gatherResults([semaphore.run(lambda b=batch: defer.ensureDeferred(writer.write(b)))
                               for batch in batches], consumeErrors=True)
    return time.perf_counter() - t0, own_seconds() - cpu0, postgres.cpu() - pg0


async def run(reactor, args) -> None:
    from mailrelay.store import migrations
    from mailrelay.store.archivedb import ArchiveDatabase
    from mailrelay.store.archiverecords import ArchiveBatch
    from mailrelay.store.archivewrite import ArchiveWriter
    from mailrelay.store.queue import compress_body

    if args.fsync_off:
        from pgserver import start_postgres
        server = start_postgres()
        conninfo, pid, stop = server.conninfo(), server.process.pid, server.stop
    else:
        from servers import Postgres
        server = Postgres()
        conninfo, pid, stop = server.conninfo(), server.pid, server.stop
    database = None
    try:
        import psycopg

        with psycopg.connect(conninfo) as conn:
            migrations.apply_migrations(conn)
            migrations.create_partitions(conn, datetime.datetime.now(datetime.timezone.utc).date(), 2)
        database = ArchiveDatabase(conninfo, statement_timeout=60)
        writer = ArchiveWriter(database)
        rng = random.Random(args.seed)
        bodies = [compress_body(measured_body(rng)) for _ in range(64)]
        postgres = ProcGroup("postgresql", [pid], tree=True)
        await writer.write(ArchiveBatch(messages=tuple(snapshots(100, rng, bodies))))  # warm up
        print(f"{args.snapshots:,} snapshots per batch size (the measured message: 3 events each), {args.in_flight}"
              f" batch(es) in flight; PostgreSQL {'fsync off' if args.fsync_off else 'as managed (fsync on)'}\n")
        print("| batch | write | snapshots/s | events/s | writer CPU s / 1k | PostgreSQL CPU s / 1k |")
        print("|---:|---|---:|---:|---:|---:|")
        for size in (int(s) for s in args.batches.split(",")):
            made = snapshots(args.snapshots, rng, bodies)
            batches = [ArchiveBatch(messages=tuple(made[i:i + size])) for i in range(0, len(made), size)]
            for kind in ("new", "replay"):
                seconds, cpu, pg = await measure(writer, batches, postgres, args.in_flight)
                rate = len(made) / seconds
                print(f"| {size:,} | {kind} | {rate:,.0f} | {rate * EVENTS_PER_SNAPSHOT:,.0f} |"
                      f" {cpu / len(made) * 1000:.3f} | {pg / len(made) * 1000:.3f} |", flush=True)
    finally:
        if database is not None:
            database.close()
        stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--snapshots", type=int, default=60_000, help="snapshots written per batch size")
    parser.add_argument("--batches", default="100,1000,5000", help="batch sizes (comma-separated)")
    parser.add_argument("--in-flight", type=int, default=1,
                        help="batches written at once (1: one after the other, as the archiver writes)")
    parser.add_argument("--fsync-off", action="store_true", help="the tests' PostgreSQL (fsync off)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from twisted.internet import defer, task

    task.react(lambda reactor: defer.ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
