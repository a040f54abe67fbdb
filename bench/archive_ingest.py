"""
The archiver's ingest into PostgreSQL: how many events per second it archives, by the writer
alone (mailrelay.store.archivewrite.ArchiveWriter, for a few batch sizes) and by the archiver's
whole path (mailrelay.services.archiver.ArchiverService: read, snapshot, write, mark and
acknowledge), side by side.

    python bench/archive_ingest.py [--path writer,archiver] [--snapshots 60000]
                                   [--batches 100,1000,5000] [--in-flight 1] [--messages 50000]
                                   [--round 1000] [--fsync-off] [--profile FILE]

**writer**: each snapshot is the measured message (bench/archive.py): one recipient, three
events (queued, deferred, delivered: the whole timeline, packed), a tag, two metadata keys, a
2 KB body (about 700 bytes compressed); each is a new message, so every batch inserts. Snapshots
are built before the clock starts (the Redis side, mailrelay.store.archivefeed, builds them in
the daemon); the clock covers ``ArchiveWriter.write`` only, as the archiver calls it: one batch
at a time, from the reactor, each batch one transaction committed with synchronous_commit on.
Then the same batches are written again (a replay after a crash, or a message's later
snapshot: every row is found and replaced). ``--in-flight 2`` writes two batches at once (two
transactions on two pooled connections), which overlaps preparing one batch's rows with the
database's work on the other. Printed per batch size: snapshots/s, events/s (3 per snapshot),
and CPU seconds per 1,000 snapshots of this process (the writer: preparing rows, COPY) and of
PostgreSQL (all its processes).

**archiver**: the daemon's archiver, unchanged, in this process (bench/archivepath.py's
PathRig: a private redis-server, the archive's PostgreSQL, mailrelay's own store at data
version 2). ``--messages`` measured messages are sent through the store first, as a daemon
does while its archiver cannot keep up (enqueued and confirmed, claimed, deferred once,
claimed again, delivered, in rounds of ``--round``: three stream entries each, a round's
queued entries, then its deferrals, then its deliveries); then the archiver starts and the
clock runs until it has acknowledged every entry: batches of 100 entries doubling to 5,000,
each one snapshot script call (the messages' hashes, timelines and bodies), one transaction,
one mark-and-acknowledge script call. Printed: events/s and messages/s archived, and CPU
seconds per 1,000 events of this process (the archiver), Redis and PostgreSQL. Several
entries of one message in a batch make one row write: with ``--round`` larger than a batch,
a message's three entries fall into different batches (each a write of the message).

PostgreSQL: a private one run as mailrelay's managed PostgreSQL runs (bench/servers.py's
Postgres: its settings, fsync on), or with ``--fsync-off`` the tests' one (tests/pgserver.py),
the archive's schema migrated, today's partitions made.
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
from archivepath import EVENTS_PER_MESSAGE, PathRig, react, start_archive_postgres  # noqa: E402
from procstat import ProcGroup, own_seconds  # noqa: E402

EVENTS_PER_SNAPSHOT = EVENTS_PER_MESSAGE


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


async def run_writer(args) -> None:
    from mailrelay.store import migrations
    from mailrelay.store.archivedb import ArchiveDatabase
    from mailrelay.store.archiverecords import ArchiveBatch
    from mailrelay.store.archivewrite import ArchiveWriter
    from mailrelay.store.queue import compress_body

    server = start_archive_postgres(args.fsync_off)
    database = None
    try:
        import psycopg

        with psycopg.connect(server.conninfo) as conn:
            migrations.apply_migrations(conn)
            migrations.create_partitions(conn, datetime.datetime.now(datetime.timezone.utc).date(), 2)
        database = ArchiveDatabase(server.conninfo, statement_timeout=60)
        writer = ArchiveWriter(database)
        rng = random.Random(args.seed)
        bodies = [compress_body(measured_body(rng)) for _ in range(64)]
        await writer.write(ArchiveBatch(messages=tuple(snapshots(100, rng, bodies))))  # warm up
        print(f"\nThe writer alone: {args.snapshots:,} snapshots per batch size (the measured message: 3 events "
              f"each), {args.in_flight} batch(es) in flight; PostgreSQL {server.kind}\n")
        print("| batch | write | snapshots/s | events/s | writer CPU s / 1k | PostgreSQL CPU s / 1k |")
        print("|---:|---|---:|---:|---:|---:|")
        for size in (int(s) for s in args.batches.split(",")):
            made = snapshots(args.snapshots, rng, bodies)
            batches = [ArchiveBatch(messages=tuple(made[i:i + size])) for i in range(0, len(made), size)]
            for kind in ("new", "replay"):
                seconds, cpu, pg = await measure(writer, batches, server.group, args.in_flight)
                rate = len(made) / seconds
                print(f"| {size:,} | {kind} | {rate:,.0f} | {rate * EVENTS_PER_SNAPSHOT:,.0f} |"
                      f" {cpu / len(made) * 1000:.3f} | {pg / len(made) * 1000:.3f} |", flush=True)
    finally:
        if database is not None:
            database.close()
        server.stop()


async def run_archiver(args) -> None:
    """The archiver's whole path draining a backlog of ``args.messages`` messages."""
    rig = await PathRig.start(fsync_off=args.fsync_off, seed=args.seed)
    try:
        step = max(args.round, args.messages // 5)

        def progress(done: int, seconds: float) -> None:
            if done % step == 0 or done == args.messages:
                print(f"  {done:,} of {args.messages:,} sent ({done / seconds:,.0f}/s)", file=sys.stderr, flush=True)

        await rig.fill(args.messages, round_size=args.round, progress=progress)
        entries = (await rig.storage.archive_lag()).entries
        redis = rig.redis_group()
        cpu0, redis0, pg0 = own_seconds(), redis.cpu(), rig.postgres.group.cpu()
        spy = start_profiler(args.profile) if args.profile else None
        t0 = time.perf_counter()
        rig.start_archiver()
        await rig.wait_for(rig.archived_all, max(600, entries / 1000), "archive caught up", interval=0.02)
        seconds = time.perf_counter() - t0
        cpu, redis_cpu, pg = own_seconds() - cpu0, redis.cpu() - redis0, rig.postgres.group.cpu() - pg0
        if spy is not None:
            stop_profiler(spy, args.profile, cpu / entries * 1000)
        rows = await archived_rows(rig)
        print(f"\nThe archiver's whole path (read, snapshot, write, mark and acknowledge): a backlog of "
              f"{args.messages:,} messages, {entries:,} stream entries (rounds of {args.round:,}); PostgreSQL "
              f"{rig.postgres.kind}\n")
        print("| backlog | seconds | events/s | messages/s | archiver CPU s / 1k events | Redis | PostgreSQL |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        print(f"| {entries:,} entries | {seconds:,.1f} | **{entries / seconds:,.0f}** | {args.messages / seconds:,.0f} |"
              f" {cpu / entries * 1000:.3f} | {redis_cpu / entries * 1000:.3f} | {pg / entries * 1000:.3f} |",
              flush=True)
        if rows != args.messages:
            print(f"\n!! {rows:,} message rows in the archive, not {args.messages:,}")
    finally:
        await rig.stop()


def start_profiler(output: Path):
    """py-spy recording this process (the archiver and, in its threads, the writer) from now."""
    import shutil
    import subprocess

    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spy = subprocess.Popen([exe, "record", "--pid", str(os.getpid()), "--nonblocking", "--function", "--rate",
                            "250", "--format", "raw", "--output", str(output)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached (the archiver has not started: nothing is missed)
    if spy.poll() is not None:
        raise SystemExit("py-spy could not attach (pip install py-spy; run as root)")
    return spy


def stop_profiler(spy, output: Path, ms_per_event: float) -> None:
    """Stop py-spy (it writes on SIGINT) and print bench/run.py's summary of its samples."""
    import signal

    from run import pyspy_report

    spy.send_signal(signal.SIGINT)
    spy.wait(60)
    print(f"\nProfile of the archiver's process while it archived ({ms_per_event:.3f} ms of its CPU per event; "
          f"samples in {output}):")
    print(pyspy_report(output, top=25, ms_per_total=ms_per_event))


async def archived_rows(rig: PathRig) -> int:
    """Message rows in the archive (through the daemon's write pool)."""
    return await rig.archive.write.run(lambda conn: conn.execute("SELECT count(*) FROM messages").fetchone()[0])


async def run(reactor, args) -> None:
    for path in args.path.split(","):
        await {"writer": run_writer, "archiver": run_archiver}[path](args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--path", default="writer,archiver",
                        help="writer (ArchiveWriter alone), archiver (the whole path), or both (comma-separated)")
    parser.add_argument("--snapshots", type=int, default=60_000, help="writer: snapshots written per batch size")
    parser.add_argument("--batches", default="100,1000,5000", help="writer: batch sizes (comma-separated)")
    parser.add_argument("--in-flight", type=int, default=1,
                        help="writer: batches written at once (1: one after the other, as the archiver writes)")
    parser.add_argument("--messages", type=int, default=50_000, help="archiver: messages in the backlog (3 events each)")
    parser.add_argument("--round", type=int, default=1000, help="archiver: messages sent together when filling")
    parser.add_argument("--fsync-off", action="store_true", help="the tests' PostgreSQL (fsync off)")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="archiver: record this process with py-spy while it archives (raw samples to FILE)"
                             " and print a summary (the top functions, as bench/run.py --profile)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    react(lambda reactor: run(reactor, args))


if __name__ == "__main__":
    main()
