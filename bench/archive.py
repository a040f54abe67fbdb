"""
Fill the tracking archive with N messages and measure searches and Redis memory per message.

    python bench/archive.py [--messages 1000000] [--recipients 10000] [--tags 50]
                            [--searches 200] [--concurrency 200]

Starts a private redis-server (no persistence, so the fill measures the data model, not the
disk) in a temporary directory, enqueues N messages through mailrelay's own
``Storage.enqueue`` (the same Lua script submission uses: record, compressed body, timeline,
indexes), marks every recipient delivered through ``Storage.record`` as delivery does, then
times API-style searches (``Storage.search_messages``: newest 50 overall, by recipient, by tag,
by status, by time window, and paging with a cursor) and prints p50/p99 latency per kind,
with Redis ``used_memory`` per archived message.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def start_redis(directory: Path) -> tuple[subprocess.Popen, str]:
    sock = str(directory / "redis.sock")
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return process, sock


async def used_memory(redis) -> int:
    info = await redis.execute_command("INFO", "memory")
    return int(next(line.split(b":")[1] for line in info.split(b"\r\n") if line.startswith(b"used_memory:")))


async def run(reactor, args) -> None:
    from twisted.internet import defer, task

    from mailrelay.config import parse_config
    from mailrelay.store import ClaimedJob, Event, NewMessage, Storage, connect_redis
    from mailrelay.timefmt import rfc3339

    directory = Path(tempfile.mkdtemp(prefix="mr-archive-", dir="/tmp"))
    process, sock = start_redis(directory)
    try:
        config = parse_config({"redis": {"url": f"unix://{sock}?db=0", "timeout": "30s"}})
        redis = connect_redis(config, None)
        for _ in range(500):  # wait for redis to answer (bounded)
            try:
                await redis.execute_command("PING")
                break
            except Exception:
                await task.deferLater(reactor, 0.01, lambda: None)
        storage = Storage(config, redis)
        await storage.measure_clock()
        base_memory = await used_memory(redis)
        rng = random.Random(args.seed)
        body = (b"From: App <app@example.com>\r\nTo: {rcpt}\r\nSubject: Your receipt #{n}\r\n"
                b"Message-ID: <{n}@example.com>\r\n\r\n" + b"Thank you for your order.\r\n" * 20)
        recipients = [f"user{i}@example{i % 97}.test" for i in range(args.recipients)]
        tags = [f"tag{i}" for i in range(args.tags)]
        started = time.monotonic()
        done = 0

        async def one(n: int) -> None:
            rcpt = rng.choice(recipients)
            message = NewMessage(sender="app@example.com", recipients=[rcpt],
                                 content=body.replace(b"{rcpt}", rcpt.encode()).replace(b"{n}", str(n).encode()),
                                 tag=rng.choice(tags),
                                 summary={"from": "app@example.com", "to": [rcpt], "cc": [],
                                          "subject": f"Your receipt #{n}", "message_id": f"<{n}@example.com>"})
            message_id = await storage.enqueue(message)
            job = ClaimedJob(f"{message_id}.0", message_id, 0, "app@example.com", rcpt, 0,
                             storage.now_ms(), rcpt.rpartition("@")[2])
            event = Event(type="delivered", at=rfc3339(time.time()), recipient=rcpt, rcpt=0,
                          detail="Delivered to mx.test", remote_host="mx.test", smtp_code=250,
                          response="2.0.0 Ok: queued as ABC")
            await storage.record(job, "bench", "delivered", event)

        pending: set = set()
        for n in range(args.messages):
            d = defer.ensureDeferred(one(n))
            pending.add(d)
            d.addBoth(lambda r, d=d: pending.discard(d))
            if len(pending) >= args.concurrency:
                await defer.DeferredList(list(pending)[:1])
            done = n + 1
            if done % 100_000 == 0:
                print(f"  {done:,} archived ({done / (time.monotonic() - started):,.0f}/s)", flush=True)
        await defer.DeferredList(list(pending))
        fill_seconds = time.monotonic() - started
        used = await used_memory(redis)
        per_message = (used - base_memory) / args.messages

        async def timed(kind: str, call) -> list[float]:
            samples = []
            for _ in range(args.searches):
                t0 = time.perf_counter()
                await call()
                samples.append((time.perf_counter() - t0) * 1000)
            return samples

        now_ms = storage.now_ms()
        window = (now_ms - int(fill_seconds * 1000 / 2), now_ms)
        first_page, cursor = await storage.search_messages(limit=50)
        kinds = {
            "newest 50": lambda: storage.search_messages(limit=50),
            "by recipient": lambda: storage.search_messages(recipient=rng.choice(recipients), limit=50),
            "by tag": lambda: storage.search_messages(tag=rng.choice(tags), limit=50),
            "by status": lambda: storage.search_messages(status="delivered", limit=50),
            "tag + time window": lambda: storage.search_messages(tag=rng.choice(tags), since_ms=window[0],
                                                                until_ms=window[1], limit=50),
            "next page (cursor)": lambda: storage.search_messages(limit=50, cursor=cursor),
        }
        print(f"\narchive: {args.messages:,} messages in {fill_seconds:,.0f} s "
              f"({args.messages / fill_seconds:,.0f} messages/s, enqueue + delivered record each)")
        print(f"Redis memory: {used / 2**20:,.0f} MiB, {per_message:,.0f} bytes per archived message "
              f"(record, compressed body of {len(body):,} bytes, timeline, indexes)\n")
        print("| search | p50 ms | p99 ms |\n|---|---:|---:|")
        for kind, call in kinds.items():
            samples = sorted(await timed(kind, call))
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(f"| {kind} | {statistics.median(samples):.2f} | {p99:.2f} |")
        await redis.disconnect()
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from twisted.internet import task

    task.react(lambda reactor: __import__("twisted.internet.defer", fromlist=["x"]).ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
