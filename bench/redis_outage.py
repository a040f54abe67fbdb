#!/usr/bin/env python3
"""
bench/redis_outage.py: how much Redis grows per message while the archive's PostgreSQL is down,
and so how long an outage ``[redis] maxmemory`` survives.

    .venv/bin/python bench/redis_outage.py [--messages 200000] [--round 1000] [--rate 1000]
                                           [--machine-memory 16gb] [--maxmemory 25%]

While PostgreSQL is down the daemons accept and deliver as usual, but nothing is archived: the
event stream ``P events`` is not trimmed (the archiver trims only below what it has archived) and
each message's keys stay (its record, compressed body, timeline and index entries are released
only once archived). This fills a private redis-server (no persistence: the data model, not the
disk) with the measured message of bench/archive.py (one recipient, a tag, two metadata keys, a
2 KB body), through mailrelay's own store, as a daemon does with an archiver that cannot write:
the archiver's consumer group exists (``Storage.archive_create_group``), nothing reads it; each
round of ``--round`` messages is enqueued and confirmed (submission), its jobs claimed, deferred
once, claimed again and delivered (delivery): three events per message. It prints Redis's
``used_memory`` growth per message, the stream's share (``MEMORY USAGE`` of ``P events``), and how
long ``--maxmemory`` of ``--machine-memory`` lasts at ``--rate`` messages per second, as JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from archive import (measured_body, measured_message, measured_outcomes, private_storage,  # noqa: E402
                     start_redis, used_memory)

OWNER = "bench"
DOMAINS = 20
LEASE = 300.0


async def deliver_round(storage, message_ids: list[str]) -> None:
    """Claim every job of these messages, record a deferral (due now), claim them again and
    record their delivery, as delivery does for a greylisted recipient."""
    from twisted.internet import reactor, task

    jobs_left = {f"{message_id}.0" for message_id in message_ids}
    for state in ("deferred", "delivered"):
        wanted = set(jobs_left)
        deadline = time.monotonic() + 10
        while wanted:
            claimed = []
            for d in range(DOMAINS):
                claimed += await storage.claim(f"example{d}.test", 1000, OWNER, LEASE)
            if not claimed:  # Redis's clock, as the store reads it, may lag the due time a little
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(wanted)} jobs were not claimable")
                await task.deferLater(reactor, 0.01, lambda: None)
                continue
            outcomes = []
            for job in claimed:
                deferral, delivery = measured_outcomes(job.recipient)
                if state == "deferred":  # due again at once (a second ago)
                    outcomes.append((job, "deferred", deferral, storage.now_ms() - 1000))
                else:
                    outcomes.append((job, "delivered", delivery, None))
                wanted.discard(job.job)
            await storage.record_many(outcomes, OWNER)


async def measure(reactor, args) -> dict:
    from twisted.internet import defer

    from mailrelay.configvalues import format_bytes, parse_memory_limit

    directory = Path(tempfile.mkdtemp(prefix="mr-outage-", dir="/tmp"))
    process, sock = start_redis(directory)
    try:
        storage, redis = await private_storage(reactor, sock)
        await storage.start()
        await storage.archive_create_group()  # a daemon's archiver made it; PostgreSQL is down
        rng = random.Random(args.seed)
        body = measured_body(rng)
        recipients = [f"user{i}@example{i % DOMAINS}.test" for i in range(args.recipients)]
        tags = [f"tag{i}" for i in range(50)]
        base = await used_memory(redis)
        started = time.monotonic()
        for start in range(0, args.messages, args.round):
            count = min(args.round, args.messages - start)
            ids = await defer.gatherResults([
                defer.ensureDeferred(storage.enqueue(measured_message(n, rng.choice(recipients), rng.choice(tags), body)))
                for n in range(start, start + count)])
            await defer.gatherResults([storage.confirm(message_id) for message_id in ids])
            await deliver_round(storage, ids)
            if (start + count) % 50_000 == 0:
                print(f"  {start + count:,} messages ({(start + count) / (time.monotonic() - started):,.0f}/s)",
                      file=sys.stderr, flush=True)
        used = await used_memory(redis)
        stream = int(await redis.execute_command("MEMORY", "USAGE", storage.keys.events, "SAMPLES", "0"))
        entries = int(await redis.execute_command("XLEN", storage.keys.events))
        lag = await storage.archive_lag()
        await redis.disconnect()
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)

    per_message = (used - base) / args.messages
    machine = parse_memory_limit(args.machine_memory).size
    limit = parse_memory_limit(args.maxmemory).bytes_of(machine)
    room = limit - base
    seconds = room / (per_message * args.rate)
    return {
        "messages": args.messages,
        "bytes_per_message": round(per_message),
        "stream_bytes_per_message": round(stream / args.messages),
        "per_message_keys_bytes_per_message": round(per_message - stream / args.messages),
        "stream_entries": entries,
        "archive_lag_entries": lag.entries if lag else None,
        "used_memory": format_bytes(used),
        "maxmemory": f"{args.maxmemory} of {args.machine_memory} = {format_bytes(limit)}",
        "rate_per_second": args.rate,
        "outage_survived_seconds": round(seconds),
        "outage_survived": f"{seconds / 60:.1f} min",
        "fill_seconds": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--round", type=int, default=1000, help="messages enqueued and delivered together")
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000, help="messages per second during the outage")
    parser.add_argument("--machine-memory", default="16gb")
    parser.add_argument("--maxmemory", default="25%", help="as [redis] maxmemory")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from twisted.internet import defer, task

    def run(reactor):
        d = defer.ensureDeferred(measure(reactor, args))
        d.addCallback(lambda result: print(json.dumps(result, indent=2)))
        return d

    task.react(run)


if __name__ == "__main__":
    main()
