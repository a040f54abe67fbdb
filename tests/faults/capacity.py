"""
Rough capacity figures of one Redis primary, for docs/operations.md (not a test):

    python tests/faults/capacity.py [--messages 5000] [--fsync always|everysec|no] [--end-to-end]

1. Redis cost per message (the ceiling of one primary): a private redis-server, and one process
   driving mailrelay's own Storage methods for each message's whole life, 100 in flight:
   suppression check + enqueue (submission), claim (in batches of 50) + body + record
   "delivered" (delivery). Reported: the redis-server's CPU time (INFO used_cpu_user + sys)
   per message, hence messages/s one single-threaded primary can take when it has a core to
   itself; and INFO used_memory per queued message and per delivered message (kept for
   [tracking] retention). Messages are about 1.5 KB of text with one recipient.
2. ``--end-to-end``: the same through two daemons to smtp-sink with smtplib clients, as in
   the fault tests (bounded by the daemons' CPU, not by Redis, on a small machine).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.faults.conftest import (Ledger, Load, RedisProcess, Slot, daemon_toml,  # noqa: E402
                                   queue_empty, wait_until)

WORDS = ("order invoice account password reset welcome shipping delivery receipt team update "
         "please click confirm address your the and for with this that from have will").split()


def content(n: int, rng: random.Random) -> bytes:
    text = " ".join(rng.choice(WORDS) for _ in range(220))
    lines = [text[i:i + 72] for i in range(0, len(text), 72)]
    return (f"From: app@bench.test\r\nTo: r{n % 50}@example.test\r\nSubject: Your order {n}\r\n"
            f"Message-ID: <{n}.bench@app.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()


def info(client, section: str) -> dict[str, str]:
    text = client.command("INFO", section).decode()
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def cpu(client) -> float:
    stats = info(client, "cpu")
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


def memory(client) -> int:
    client.command("MEMORY", "PURGE")
    return int(info(client, "memory")["used_memory"])


def redis_cost(redis: RedisProcess, n: int) -> None:
    """Part 1, in this process on the Twisted reactor."""
    from twisted.internet import defer, task

    from mailrelay.config import parse_config
    from mailrelay.store import Event, NewMessage, Storage, connect_redis
    from mailrelay.timefmt import rfc3339

    rng = random.Random(1)
    bodies = [content(i, rng) for i in range(n)]

    async def run(reactor) -> None:
        config = parse_config({"redis": {"url": redis.url, "key_prefix": "bench:"}})
        conn = connect_redis(config, None)
        storage = Storage(config, conn)
        await storage.start()
        client = redis.client()
        mem0, cpu0, t0 = memory(client), cpu(client), time.monotonic()
        limit = defer.DeferredSemaphore(100)

        async def submit(i: int) -> None:
            rcpt = f"r{i % 50}@example.test"
            await storage.suppressions([rcpt])
            message_id = await storage.enqueue(NewMessage(sender="app@bench.test", recipients=[rcpt],
                                                          content=bodies[i], summary={"subject": f"Your order {i}"}))
            await storage.confirm(message_id)  # as submission does once its 250 is sent

        await defer.gatherResults([limit.run(lambda i=i: defer.ensureDeferred(submit(i))) for i in range(n)])
        mem1, cpu1, t1 = memory(client), cpu(client), time.monotonic()

        async def deliver(job) -> None:
            await storage.get_body(job.message_id)
            await storage.record(job, "bench", "delivered", Event(
                type="delivered", at=rfc3339(time.time()), recipient=job.recipient, rcpt=job.rcpt,
                detail="Delivered to mx.example.test", remote_host="mx.example.test",
                remote_ip="192.0.2.1", smtp_code=250, enhanced_code="2.0.0", response="Ok"))

        delivered = 0
        while delivered < n:
            batches = await defer.gatherResults([defer.ensureDeferred(storage.claim("example.test", 50, "bench", 60))
                                                 for _ in range(4)])
            jobs = [j for batch in batches for j in batch]
            if not jobs:
                await task.deferLater(reactor, 0.01, lambda: None)
                continue
            await defer.gatherResults([defer.ensureDeferred(deliver(j)) for j in jobs])
            delivered += len(jobs)
        mem2, cpu2, t2 = memory(client), cpu(client), time.monotonic()
        size = sum(map(len, bodies)) / n
        print(f"redis cost per message ({size:.0f} bytes, 1 recipient, driven through Storage, 100 in flight):")
        print(f"  submission (suppression check + enqueue): {(cpu1 - cpu0) / n * 1e6:.0f} us Redis CPU; "
              f"{n / (t1 - t0):.0f} msg/s from one driver process")
        print(f"  delivery (claim/50 + body + record):      {(cpu2 - cpu1) / n * 1e6:.0f} us Redis CPU; "
              f"{n / (t2 - t1):.0f} msg/s from one driver process")
        total = (cpu2 - cpu0) / n
        print(f"  whole life: {total * 1e6:.0f} us -> one primary with a core of its own: about "
              f"{1 / total:.0f} msg/s")
        print(f"memory per queued message: {(mem1 - mem0) / n:.0f} bytes; kept per delivered message "
              f"(record, timeline, indexes, body): {(mem2 - mem0) / n:.0f} bytes")
        client.close()
        await conn.disconnect()

    task.react(run)


def end_to_end(redis: RedisProcess, n: int, tmp: Path) -> None:
    from peers import Sink

    sink = Sink(tmp / "sink")
    slots = [Slot(f"d{i}", tmp / f"d{i}", lambda port, state_dir: daemon_toml(
        redis={"url": redis.url, "key_prefix": "e2e:"}, port=port, state_dir=state_dir,
        sink_port=sink.port, delivery={"lease_timeout": "2m"})) for i in range(2)]
    try:
        for slot in slots:
            slot.start()
        load = Load(lambda: [s.port for s in slots], total=n, threads=8, seed=1, tag="e2e").start()
        load.wait(3600)
        ledger = Ledger(sink)
        ids = set(load.acked.values())
        wait_until(lambda: len(ledger.delivered(ids)) == len(ids), 600, "delivery")
        with redis.client() as c:
            wait_until(lambda: queue_empty(c, "e2e:"), 600, "the queue to drain")
        elapsed = time.monotonic() - load.started
        print(f"end to end: {n} messages submitted and delivered in {elapsed:.1f}s = {n / elapsed:.0f} msg/s "
              f"(2 daemons, 8 smtplib client threads, smtp-sink)")
    finally:
        for slot in slots:
            slot.kill(15)
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--fsync", choices=("always", "everysec", "no"), default="always")
    parser.add_argument("--end-to-end", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mailrelay-capacity-"))
    # each daemon runs its managed PostgreSQL (the archive) in its state_dir below: a root run's
    # "postgres" user must be able to reach it
    tmp.chmod(0o701)
    aof = ("--appendonly", "no") if args.fsync == "no" else ("--appendonly", "yes", "--appendfsync", args.fsync)
    redis = RedisProcess(tmp / "redis", *aof)
    try:
        print(f"redis-server with appendfsync {args.fsync}")
        if args.end_to_end:
            end_to_end(redis, args.messages, tmp)
        else:
            redis_cost(redis, args.messages)
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
