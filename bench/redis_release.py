#!/usr/bin/env python3
"""
bench/redis_release.py: Redis memory per delivered, archived message once the archive lives in
PostgreSQL (data version 2), at several archive sizes side by side: what stays in Redis after a
message's whole path.

    .venv/bin/python bench/redis_release.py [--messages 100000,1000000] [--release-after 1]
                                            [--trim-keep 60] [--round 1000] [--fsync-off]

For each size N, fresh servers (bench/archivepath.py's PathRig: a private redis-server without
persistence, a private PostgreSQL run as mailrelay's managed one) and, in this process, what a
daemon runs: the archiver (mailrelay/services/archiver.py, unchanged; it also releases the keys
of messages archived final, ``Storage.release_archived``), its trims and releases every second
here (10 s and 5 s in a daemon). N measured messages (one
recipient, a tag, two metadata keys, a 2 KB body) are sent through mailrelay's own store in
rounds of ``--round``: enqueued and confirmed, claimed, deferred once, claimed again and
delivered: three stream entries each. Meanwhile the archiver writes them into PostgreSQL and
marks them archived, and deletes their keys ``--release-after`` seconds later
(``[archive] release_after``, 1 minute in a daemon). After the fill it waits until

1. the archiver has acknowledged every entry (the archive caught up),
2. every archived message is released (``P archive:release`` empty),
3. the stream is trimmed: the archiver keeps the entries of the last ``--trim-keep`` seconds
   (60 s in a daemon: TRIM_KEEP),

and measures Redis's ``used_memory`` over the baseline (Redis with the store started, the data
version and the archiver's consumer group made, before any message), divided by N. It also
prints the peak during the fill, the stream's tail before the trim (entries and bytes per
entry: what a daemon keeps for the last minute), and every key left, grouped by pattern
(message ids, addresses, tags and numbers replaced), with its memory (``MEMORY USAGE``).

Time: the fill runs at about 1,000-2,000 messages/s here (this process does the store calls and
the archiver's work), so 1,000,000 messages take 10-20 minutes, plus ``--trim-keep``.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from archivepath import PathRig, react  # noqa: E402

#: Key name parts replaced when grouping the keys left (message ids, addresses, tags, numbers).
PATTERNS = ((re.compile(r"user\d+@example\d+\.test"), "<address>"), (re.compile(r"example\d+\.test"), "<domain>"),
            (re.compile(r"\btag\d+\b"), "<tag>"), (re.compile(r"[0-9a-f]{16,}"), "<id>"),
            (re.compile(r"\d+"), "<n>"))


#: INFO memory fields that explain used_memory's growth: the data, the clients' buffers (the
#: store's pooled connections), the cached scripts, and the rest of Redis's overhead (dict tables).
MEMORY_PARTS = ("used_memory_dataset", "mem_clients_normal", "used_memory_scripts", "used_memory_overhead")


def key_pattern(key: str) -> str:
    for regex, name in PATTERNS:
        key = regex.sub(name, key)
    return key


async def keys_left(rig: PathRig, sample: int = 200) -> dict[str, tuple[int, int]]:
    """Every key in Redis grouped by pattern: (keys, bytes), the bytes estimated from up to
    ``sample`` keys of the pattern (``MEMORY USAGE``)."""
    groups: dict[str, list[str]] = {}
    cursor = b"0"
    while True:
        cursor, found = await rig.redis.execute_command("SCAN", cursor, "COUNT", 1000)
        for raw in found:
            key = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            groups.setdefault(key_pattern(key), []).append(key)
        if cursor in (b"0", 0, "0"):
            break
    out = {}
    for pattern, names in groups.items():
        measured = [int(await rig.redis.execute_command("MEMORY", "USAGE", name, "SAMPLES", "0") or 0)
                    for name in names[:sample]]
        out[pattern] = (len(names), round(sum(measured) / len(measured) * len(names)) if measured else 0)
    return out


async def measure(size: int, args: argparse.Namespace) -> dict:
    rig = await PathRig.start(release_after=args.release_after, trim_keep=args.trim_keep, housekeeping_interval=1.0,
                              fsync_off=args.fsync_off, seed=args.seed)
    try:
        await reset_bounded_state(rig)
        base = await rig.used_memory()
        base_info = await rig.info("memory")
        base_tables = await keyspace_tables(rig)
        base_keys = await keys_left(rig)
        rig.start_archiver()
        peak = {"used": base}
        step = max(args.round, size // 10)

        def progress(done: int, seconds: float) -> None:
            if done % step == 0 or done == size:
                print(f"  {done:,} of {size:,} sent ({done / seconds:,.0f}/s)", file=sys.stderr, flush=True)

        async def track_peak() -> None:
            peak["used"] = max(peak["used"], await rig.used_memory())

        from twisted.internet import defer, task
        sampler = task.LoopingCall(lambda: defer.ensureDeferred(track_peak()))
        sampler.start(1.0)
        fill_seconds = await rig.fill(size, round_size=args.round, progress=progress)
        t_sent = time.monotonic()
        archived_after = await rig.wait_for(rig.archived_all, max(600, size / 500), "archive caught up")
        released_after = await rig.wait_for(rig.released_all, max(600, size / 500) + args.release_after,
                                            "every message released")
        sampler.stop()
        released_seconds = time.monotonic() - t_sent
        tail_entries = await rig.stream_length()
        tail_bytes = int(await rig.redis.execute_command("MEMORY", "USAGE", rig.keys.events, "SAMPLES", "0") or 0)
        before_trim = await rig.used_memory()
        trimmed_after = await rig.wait_for(lambda: _stream_empty(rig), args.trim_keep + 60, "stream trimmed")
        unreset = await rig.used_memory()
        await reset_bounded_state(rig)
        used = await rig.used_memory()
        info = await rig.info("memory")
        tables = await keyspace_tables(rig)
        left = await keys_left(rig)
        live = await rig.redis.execute_command("DBSIZE")
        return {
            "messages": size, "fill_seconds": fill_seconds, "fill_rate": size / fill_seconds,
            "base": base, "peak": peak["used"], "used": used, "before_trim": before_trim,
            "histograms": unreset - used,
            "per_message": (used - base) / size,
            "archived_after": archived_after, "released_after": released_seconds,
            "released_wait": released_after,
            "tail_entries": tail_entries, "tail_bytes": tail_bytes, "trimmed_after": trimmed_after,
            "keys": int(live), "left": left, "base_keys": base_keys,
            "parts": {name: int(info[name]) - int(base_info[name]) for name in MEMORY_PARTS},
            "tables": tables - base_tables,
        }
    finally:
        await rig.stop()


async def keyspace_tables(rig: PathRig) -> int:
    """Bytes of the keyspace's hash tables (MEMORY STATS db.0: main and expires): sized for the
    most keys held at once, shrunk by Redis's cron some time after."""
    stats = await rig.redis.execute_command("MEMORY", "STATS")
    fields = dict(zip(stats[::2], stats[1::2]))
    db = fields.get(b"db.0")
    if not db:
        return 0
    tables = dict(zip(db[::2], db[1::2]))
    return sum(int(v) for k, v in tables.items() if k in (b"overhead.hashtable.main", b"overhead.hashtable.expires"))


async def reset_bounded_state(rig: PathRig) -> None:
    """Empty what Redis keeps per kind of command, not per message, before each reading: the
    per-command latency histograms (Redis 7's ``latency-tracking``, on by default: about 16 KB
    for each command name ever run, scripts' calls included, about 0.7 MB here) and the slow
    log (at most 128 entries), by CONFIG RESETSTAT and SLOWLOG RESET."""
    await rig.redis.execute_command("CONFIG", "RESETSTAT")
    await rig.redis.execute_command("SLOWLOG", "RESET")


async def _stream_empty(rig: PathRig) -> bool:
    return await rig.stream_length() == 0


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def report(results: list[dict], args: argparse.Namespace) -> None:
    head = "| | " + " | ".join(f"{r['messages']:,} messages" for r in results) + " |"
    print("\nRedis memory per delivered, archived message at data version 2 (the measured message: one"
          f" recipient, three events, a tag, two metadata keys, a 2 KB body); release_after "
          f"{args.release_after:g} s, stream tail kept {args.trim_keep:g} s\n")
    print(head)
    print("|---|" + "---:|" * len(results))

    def row(label: str, cell) -> None:
        print(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")

    row("sent (enqueue, confirm, defer, deliver), with the archiver and the release running",
        lambda r: f"{r['fill_seconds']:,.0f} s ({r['fill_rate']:,.0f}/s)")
    row("Redis used_memory: baseline / peak during the fill", lambda r: f"{mib(r['base'])} / {mib(r['peak'])}")
    row("archive caught up, after the last message", lambda r: f"{r['archived_after']:.1f} s")
    row("every message released, after the last message", lambda r: f"{r['released_after']:.1f} s")
    row("stream tail before the trim: entries, bytes per entry",
        lambda r: f"{r['tail_entries']:,}, {r['tail_bytes'] / r['tail_entries']:,.0f}" if r["tail_entries"]
        else "0 (trimmed already)")
    row("used_memory after release and trim", lambda r: mib(r["used"]))
    row("**bytes per message** (used_memory over the baseline / messages)",
        lambda r: f"**{r['per_message']:,.1f}** ({(r['used'] - r['base']) / 1024:+,.0f} KiB in all)")
    for previous, result in zip(results, results[1:]):
        slope = (result["used"] - previous["used"]) / (result["messages"] - previous["messages"])
        print(f"| bytes per message between {previous['messages']:,} and {result['messages']:,} "
              f"(the growth's slope) | " + " | ".join(f"{slope:,.1f}" if r is result else "" for r in results) + " |")
    row("left out: latency histograms and slow log (per command name, reset before each reading)",
        lambda r: f"{r['histograms'] / 1024:,.0f} KiB")
    row("of which: data (used_memory_dataset)", lambda r: f"{r['parts']['used_memory_dataset']:+,} B")
    row("of which: Redis's overhead (used_memory_overhead), with the clients' buffers, scripts, keyspace tables",
        lambda r: f"{r['parts']['used_memory_overhead']:+,} B, {r['parts']['mem_clients_normal']:+,} B, "
                  f"{r['parts']['used_memory_scripts']:+,} B, {r['tables']:+,} B")
    row("keys in Redis: before / after", lambda r: f"{sum(c for c, _ in r['base_keys'].values()):,} / {r['keys']:,}")
    patterns = sorted({p for r in results for p in r["left"]}, key=lambda p: -max(
        r["left"].get(p, (0, 0))[1] for r in results))
    print("\nKeys left after release and trim (pattern: keys, bytes by MEMORY USAGE; * = also there at the baseline):\n")
    print("| key | " + " | ".join(f"{r['messages']:,}" for r in results) + " |")
    print("|---|" + "---:|" * len(results))
    for pattern in patterns:
        marker = " *" if any(pattern in r["base_keys"] for r in results) else ""
        print(f"| `{pattern}`{marker} | " + " | ".join(
            "{:,} keys, {:,} B".format(*r["left"].get(pattern, (0, 0))) for r in results) + " |")


async def main(reactor, args: argparse.Namespace) -> None:
    results = []
    for size in (int(s) for s in args.messages.split(",")):
        print(f"== {size:,} messages", file=sys.stderr, flush=True)
        results.append(await measure(size, args))
    report(results, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--messages", default="100000,1000000", help="archive sizes (comma-separated)")
    parser.add_argument("--release-after", type=float, default=1.0,
                        help="[archive] release_after in seconds (1 minute in a daemon)")
    parser.add_argument("--trim-keep", type=float, default=60.0,
                        help="seconds of stream entries the archiver keeps (TRIM_KEEP: 60 in a daemon)")
    parser.add_argument("--round", type=int, default=1000, help="messages enqueued and delivered together")
    parser.add_argument("--fsync-off", action="store_true", help="the tests' PostgreSQL (fsync off)")
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    react(lambda reactor: main(reactor, arguments))
