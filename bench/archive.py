"""
Fill the archive with N messages and measure searches and memory/disk per message: the Redis
archive (today's) and the PostgreSQL archive (issue 18) side by side.

    python bench/archive.py [--store redis,postgres] [--messages 1000000] [--recipients 10000]
                            [--tags 50] [--searches 200] [--concurrency 200] [--per-day 1000000]
                            [--keep | --reuse DIR]

The measured message: one recipient, three events (queued, deferred, delivered), a tag, two
metadata keys, a 2 KB body (about 700 bytes compressed).

Redis: starts a private redis-server (no persistence, so the fill measures the data model, not the
disk) in a temporary directory, enqueues N messages through mailrelay's own
``Storage.enqueue`` (the same Lua script submission uses: record, compressed body, timeline,
indexes), marks every recipient delivered through ``Storage.record`` as delivery does, then
times API-style searches (``Storage.search_messages``: newest 50 overall, by recipient, by tag,
by status, by time window, and paging with a cursor) and prints p50/p99 latency per kind,
with Redis ``used_memory`` per archived message.

PostgreSQL: starts a private PostgreSQL (tests/pgserver.py: initdb in /tmp, unix socket, fsync
off: the data model, not the disk), applies mailrelay's migrations, and fills the day-partitioned
tables with ``COPY`` straight into messages (with the packed timeline), recipients and bodies (``--per-day``
messages per UTC day, the newest day today), the rows the archiver writes for the measured
message: the full path (Redis, then the archiver) would take hours for 10,000,000 messages, the
rows on disk are the same. It prints the disk per message (heap, TOAST and indexes of every
table over N, with and without ``bodies``, after VACUUM ANALYZE), then times the API's searches
through :class:`mailrelay.store.archiveread.ArchiveReader` (psycopg in adbapi threads, as the
daemon reads), p50/p99 per kind.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # pgserver: the private PostgreSQL of the tests


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


def measured_message(n: int, rcpt: str, tag: str, body: bytes):
    """The measured message number ``n`` to ``rcpt`` (a NewMessage, as submission makes it)."""
    from mailrelay.store import NewMessage

    return NewMessage(sender="app@example.com", recipients=[rcpt],
                      content=body.replace(b"{rcpt}", rcpt.encode()).replace(b"{n}", str(n).encode()),
                      tag=tag, metadata={"order": str(n), "plan": "pro"},
                      summary={"from": "app@example.com", "to": [rcpt], "cc": [],
                               "subject": f"Your receipt #{n}", "message_id": f"<{n}@example.com>"})


def measured_outcomes(rcpt: str):
    """The measured message's two delivery attempts: (deferred Event, delivered Event)."""
    from mailrelay.store import Event
    from mailrelay.timefmt import rfc3339

    deferral = Event(type="deferred", at=rfc3339(time.time()), recipient=rcpt, rcpt=0,
                     detail="Greylisted, try again later", remote_host="mx.test", smtp_code=451,
                     response="4.7.1 Greylisted")
    delivery = Event(type="delivered", at=rfc3339(time.time()), recipient=rcpt, rcpt=0,
                     detail="Delivered to mx.test", remote_host="mx.test", smtp_code=250,
                     response="2.0.0 Ok: queued as ABC")
    return deferral, delivery


async def send_measured_message(storage, n: int, rcpt: str, tag: str, body: bytes) -> None:
    """The measured message through mailrelay's own store: enqueued (record, compressed body,
    timeline, indexes), then its recipient deferred once and delivered (``Storage.record``)."""
    from mailrelay.store import ClaimedJob

    message_id = await storage.enqueue(measured_message(n, rcpt, tag, body))
    job = ClaimedJob(f"{message_id}.0", message_id, 0, "app@example.com", rcpt, 0,
                     storage.now_ms(), rcpt.rpartition("@")[2])
    deferral, delivery = measured_outcomes(rcpt)
    await storage.record(job, "bench", "deferred", deferral, due_ms=storage.now_ms())
    await storage.record(job, "bench", "delivered", delivery)


async def private_storage(reactor, sock: str):
    """mailrelay's Storage on the private redis-server at ``sock`` once it answers: (storage,
    its connection)."""
    from twisted.internet import task

    from mailrelay.config import parse_config
    from mailrelay.store import Storage, connect_redis

    config = parse_config({"redis": {"url": f"unix://{sock}?db=0", "timeout": "30s"}})
    redis = connect_redis(config, None)
    for _ in range(500):  # wait for redis to answer (bounded)
        try:
            await redis.execute_command("PING")
            break
        except Exception:
            await task.deferLater(reactor, 0.01, lambda: None)
    return Storage(config, redis), redis


async def run_redis(reactor, args) -> dict:
    from twisted.internet import defer

    directory = Path(tempfile.mkdtemp(prefix="mr-archive-", dir="/tmp"))
    process, sock = start_redis(directory)
    try:
        storage, redis = await private_storage(reactor, sock)
        await storage.measure_clock()
        base_memory = await used_memory(redis)
        rng = random.Random(args.seed)
        body = measured_body(rng)
        recipients = [f"user{i}@example{i % 97}.test" for i in range(args.recipients)]
        tags = [f"tag{i}" for i in range(args.tags)]
        started = time.monotonic()
        done = 0

        pending: set = set()
        for n in range(args.messages):
            d = defer.ensureDeferred(send_measured_message(storage, n, rng.choice(recipients),
                                                           rng.choice(tags), body))
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
        result = {"bytes per message": per_message, "searches": {}}
        for kind, call in kinds.items():
            result["searches"][kind] = percentiles(await timed(args, call))
        await redis.disconnect()
        return result
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def measured_body(rng: random.Random) -> bytes:
    """The measured message: 2 KB of headers and text that zlib takes to about 700 bytes."""
    words = ["order", "receipt", "total", "shipping", "account", "thank", "you", "item", "price",
             "invoice", "delivery", "address", "support", "reply", "team", "the", "your", "and"]
    text = " ".join(rng.choice(words) + (str(rng.randrange(100)) if rng.random() < 0.1 else "")
                    for _ in range(300))
    lines = [text[i:i + 76] for i in range(0, len(text), 76)]
    head = (b"From: App <app@example.com>\r\nTo: {rcpt}\r\nSubject: Your receipt #{n}\r\n"
            b"Message-ID: <{n}@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n")
    return (head + "\r\n".join(lines).encode())[:2048]


async def timed(args, call) -> list[float]:
    samples = []
    for _ in range(args.searches):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# -- PostgreSQL ---------------------------------------------------------------------------------

TABLES = ("messages", "recipients", "bodies")


def fill_postgres(conninfo: str, args, rng: random.Random) -> tuple[int, float, list[str], list[str]]:
    """COPY N measured messages into the archive's tables; (newest ms, seconds, recipients, tags)."""
    import datetime

    import psycopg

    from mailrelay.store import migrations
    from mailrelay.store.queue import compress_body
    from mailrelay.store.timelinepack import pack_timeline

    utc = datetime.timezone.utc
    recipients = [f"user{i}@example{i % 97}.test" for i in range(args.recipients)]
    tags = [f"tag{i}" for i in range(args.tags)]
    days = max(1, -(-args.messages // args.per_day))
    today = datetime.datetime.now(utc).date()
    first_day = today - datetime.timedelta(days=days - 1)
    day_ms = 86_400_000
    first_ms = int(datetime.datetime(first_day.year, first_day.month, first_day.day, tzinfo=utc).timestamp() * 1000)
    step = day_ms / args.per_day
    bodies = [compress_body(measured_body(rng)) for _ in range(64)]
    started = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        migrations.apply_migrations(conn)
        migrations.create_partitions(conn, first_day, days + 1)
        batch = 100_000
        for start in range(0, args.messages, batch):
            with conn.transaction(), conn.cursor() as cur:
                rows = []
                for n in range(start, min(args.messages, start + batch)):
                    ms = first_ms + int(n * step)
                    when = datetime.datetime.fromtimestamp(ms / 1000, utc)
                    rows.append((f"{ms:012x}{rng.getrandbits(32):08x}", when, ms, rng.choice(recipients),
                                 rng.choice(tags), n))
                with cur.copy("COPY messages (id, received_at, sender, from_header, to_header, cc_header,"
                              " subject, message_id_header, tag, metadata, size, username, client, status,"
                              " rcpt_count, timeline_length, timeline) FROM STDIN") as copy:
                    for mid, when, ms, rcpt, tag, n in rows:
                        copy.write_row((mid, when, "app@example.com", "App <app@example.com>",
                                        f'["{rcpt}"]', "[]", f"Your receipt #{n}", f"<{n}@example.com>", tag,
                                        f'{{"order": "{n}", "plan": "pro"}}', 2048, "app", "127.0.0.1",
                                        "delivered", 1, 3, pack_timeline(timeline_of(when, rcpt, n))))
                with cur.copy("COPY recipients (message_id, received_at, rcpt, recipient, state, attempts)"
                              " FROM STDIN") as copy:
                    for mid, when, ms, rcpt, tag, n in rows:
                        copy.write_row((mid, when, 0, rcpt, "delivered", 2))
                with cur.copy("COPY bodies (message_id, received_at, body) FROM STDIN") as copy:
                    for mid, when, ms, rcpt, tag, n in rows:
                        copy.write_row((mid, when, bodies[n % len(bodies)]))
            done = min(args.messages, start + batch)
            if done % 1_000_000 == 0 or done == args.messages:
                print(f"  {done:,} archived rows written ({done / (time.monotonic() - started):,.0f} messages/s)",
                      flush=True)
        conn.execute("VACUUM ANALYZE")
    newest_ms = first_ms + int((args.messages - 1) * step)
    return newest_ms, time.monotonic() - started, recipients, tags


def timeline_of(when, rcpt: str, n: int) -> list[bytes]:
    """The measured message's Redis timeline entries (queued, deferred, delivered), as stored."""
    import json

    def at(seconds: float) -> str:
        moment = when.timestamp() + seconds
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(moment)) + f".{int(moment * 1000) % 1000:03d}Z"
    queue_id = f"{n:X}"
    events = [{"type": "queued", "at": at(0)},
              {"type": "deferred", "at": at(1), "rcpt": 0, "recipient": rcpt, "detail": "Greylisted, try again later",
               "remote_host": f"mx.{rcpt.partition('@')[2]}", "remote_ip": "192.0.2.25", "smtp_code": 451,
               "enhanced_code": "4.7.1", "response": "4.7.1 Greylisted"},
              {"type": "delivered", "at": at(301), "rcpt": 0, "recipient": rcpt,
               "detail": f"Delivered to mx.{rcpt.partition('@')[2]}", "remote_host": f"mx.{rcpt.partition('@')[2]}",
               "remote_ip": "192.0.2.25", "smtp_code": 250, "enhanced_code": "2.0.0",
               "response": f"2.0.0 Ok: queued as {queue_id}", "remote_queue_id": queue_id}]
    return [json.dumps(e, separators=(",", ":")).encode() for e in events]


def disk_per_message(conninfo: str, messages: int) -> dict[str, float]:
    """Bytes on disk per message of each table (its partitions: heap, TOAST, indexes)."""
    import psycopg

    sizes = {}
    with psycopg.connect(conninfo) as conn:
        for table in TABLES:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits"
                " WHERE inhparent = %s::regclass", (table,)).fetchone()
            sizes[table] = row[0] / messages
    return sizes


async def run_postgres(reactor, args) -> dict:
    from pgserver import start_postgres

    from mailrelay.store.archivedb import ArchiveDatabase
    from mailrelay.store.archiveread import ArchiveReader

    server = reuse_postgres(Path(args.reuse)) if args.reuse else start_postgres()
    database = None
    try:
        conninfo = server.conninfo()
        rng = random.Random(args.seed)
        if args.reuse:  # filled by an earlier run with --keep: measure again (e.g. on a quieter machine)
            newest_ms, recipients, tags = filled_postgres(conninfo, args)
            seconds = 0.0
        else:
            newest_ms, seconds, recipients, tags = fill_postgres(conninfo, args, rng)
        sizes = disk_per_message(conninfo, args.messages)
        print(f"\nPostgreSQL archive: {args.messages:,} messages "
              + (f"(reused {args.reuse})" if args.reuse else f"by COPY in {seconds:,.0f} s")
              + "; bytes on disk per message: " + ", ".join(f"{t} {v:,.0f}" for t, v in sizes.items()))
        database = ArchiveDatabase(conninfo, statement_timeout=30)
        reader = ArchiveReader(database)
        _, cursor = await reader.search_messages(limit=50)
        window = (newest_ms - 3_600_000, newest_ms)
        kinds = {
            "newest 50": lambda: reader.search_messages(limit=50),
            "by recipient": lambda: reader.search_messages(recipient=rng.choice(recipients), limit=50),
            "by tag": lambda: reader.search_messages(tag=rng.choice(tags), limit=50),
            "by status": lambda: reader.search_messages(status="delivered", limit=50),
            "tag + time window": lambda: reader.search_messages(tag=rng.choice(tags), since_ms=window[0],
                                                               until_ms=window[1], limit=50),
            "next page (cursor)": lambda: reader.search_messages(limit=50, cursor=cursor),
        }
        for call in kinds.values():  # warm the cache as a running daemon's would be
            await call()
        result = {"bytes per message": sum(sizes.values()),
                  "bytes per message without body": sum(v for t, v in sizes.items() if t != "bodies"),
                  "searches": {}}
        for kind, call in kinds.items():
            result["searches"][kind] = percentiles(await timed(args, call))
        return result
    finally:
        if database is not None:
            database.close()
        server.stop()
        if args.keep or args.reuse:
            print(f"PostgreSQL kept in {server.root}: measure it again with --reuse {server.root}")
        else:
            shutil.rmtree(server.root, ignore_errors=True)


def reuse_postgres(root: Path):
    """The PostgreSQL a run with --keep left in ``root``, started again."""
    from pgserver import PostgresServer

    from mailrelay.pgproc import cluster_user

    user = cluster_user()
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user is not None else {}
    server = PostgresServer(process=None, root=root, socket_dir=root / "pg", log_path=root / "postgresql.log",
                            run_as=ids)
    server.start()
    return server


def filled_postgres(conninfo: str, args) -> tuple[int, list[str], list[str]]:
    """What fill_postgres returned for the archive it filled: (newest ms, recipients, tags)."""
    import psycopg

    from mailrelay.store.archiveread import ms_of_time

    with psycopg.connect(conninfo) as conn:
        newest, count = conn.execute("SELECT max(received_at), count(*) FROM messages").fetchone()
    if count != args.messages:
        raise SystemExit(f"the reused archive holds {count:,} messages, not --messages {args.messages:,}")
    recipients = [f"user{i}@example{i % 97}.test" for i in range(args.recipients)]
    return ms_of_time(newest), recipients, [f"tag{i}" for i in range(args.tags)]


async def run(reactor, args) -> None:
    results = {}
    for store in args.store.split(","):
        results[store] = await {"redis": run_redis, "postgres": run_postgres}[store](reactor, args)
    stores = list(results)
    print(f"\n{args.messages:,} archived messages (one recipient, three events, a tag, two metadata keys,"
          " 2 KB body)\n")
    print("| | " + " | ".join(stores) + " |\n|---|" + "---:|" * len(stores))
    print("| bytes per message (Redis RAM / PostgreSQL disk) | "
          + " | ".join(f"{r['bytes per message']:,.0f}" for r in results.values()) + " |")
    print("| bytes per message, body gone (content_retention) | "
          + " | ".join(f"{r['bytes per message without body']:,.0f}" if "bytes per message without body" in r
                       else "-" for r in results.values()) + " |")
    for kind in next(iter(results.values()))["searches"]:
        print(f"| {kind}, p50 / p99 ms | "
              + " | ".join("{:.2f} / {:.2f}".format(*r["searches"][kind]) for r in results.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--store", default="redis,postgres", help="redis, postgres or both (comma-separated)")
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--per-day", type=int, default=1_000_000, help="PostgreSQL fill: messages per UTC day")
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--searches", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="PostgreSQL: keep the filled server (its directory is printed)")
    parser.add_argument("--reuse", metavar="DIR", help="PostgreSQL: measure the server a --keep run left in DIR again (no fill)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from twisted.internet import task

    task.react(lambda reactor: __import__("twisted.internet.defer", fromlist=["x"]).ensureDeferred(run(reactor, args)))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
