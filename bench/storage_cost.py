#!/usr/bin/env python3
"""
bench/storage_cost.py: the storage layer alone, as submission drives it: ``Storage.enqueue`` of
BATCH messages per reactor turn (one group commit call), each message then confirmed as
submission does once its 250 is sent; TURNS turns against a private ``redis-server`` without
persistence. Prints Redis's script calls and script time per message (``INFO commandstats``)
and this process's own CPU per message, as one JSON line.

    .venv/bin/python bench/storage_cost.py [--turns 500] [--batch 20]

To compare two versions of the code, run it with ``PYTHONPATH=<other checkout>`` too, several
times, alternating (docs/benchmarks.md, "Settling acknowledgements").
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time

from twisted.internet import defer, task


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(turns: int, batch: int, port: int) -> dict:
    from mailrelay.config import parse_config
    from mailrelay.store import NewMessage, Storage, connect_redis

    config = parse_config({"redis": {"url": f"redis://127.0.0.1:{port}/0", "key_prefix": "cost:"}})
    connection = connect_redis(config, None)
    storage = Storage(config, connection)
    await storage.measure_clock()
    body = b"Subject: x\r\n\r\n" + b"y" * 2048 + b"\r\n"

    async def one(i: int) -> None:
        message = NewMessage(sender="app@src.invalid", recipients=[f"r{i % 50}@dst.invalid"],
                             content=body, summary={"subject": "s", "to": ["r@dst.invalid"]})
        message_id = await storage.enqueue(message)
        if hasattr(storage, "confirm"):   # the code before settling existed has no confirm
            storage.confirm(message_id)

    async def turn() -> None:
        await defer.gatherResults([defer.ensureDeferred(one(i)) for i in range(batch)])

    for _ in range(3):  # load the scripts
        await turn()
    await connection.execute_command("CONFIG", "RESETSTAT")
    cpu = time.process_time()
    for _ in range(turns):
        await turn()
    cpu = time.process_time() - cpu
    if hasattr(storage, "settle_pending"):
        await storage.settle_pending(5)
    stats = (await connection.execute_command("INFO", "commandstats")).decode()
    calls = usec = 0
    for line in stats.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            fields = dict(item.split("=") for item in line.split(":", 1)[1].split(","))
            calls += int(fields["calls"])
            usec += int(fields["usec"])
    await connection.disconnect()
    n = turns * batch
    return {"messages": n, "script_calls": calls, "script_usec_per_msg": round(usec / n, 1),
            "client_cpu_usec_per_msg": round(cpu * 1e6 / n, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--batch", type=int, default=20)
    args = parser.parse_args()
    port = free_port()
    directory = tempfile.mkdtemp(prefix="storage-cost-")
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start")
                time.sleep(0.05)

        async def run(reactor) -> None:
            print(json.dumps(await measure(args.turns, args.batch, port)), flush=True)

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    finally:
        redis.terminate()
        redis.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
