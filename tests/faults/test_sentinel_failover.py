"""
(c) The Redis primary dies under load: a primary, two replicas and three Sentinels (quorum 2,
``down-after-milliseconds 1000``), two daemons following them with ``[redis] min_replicas = 1``.

The primary gets SIGKILL while the clients send; the Sentinels promote a replica and the
daemons follow (``Redis master ... moved``) without a restart. A 250 means the message was on
a replica too, so nothing acknowledged is lost: every acknowledged id is delivered in the end
(or, at the very least, present on the new primary). Clients may get 451 meanwhile.
"""

from __future__ import annotations

import threading
import time

from .conftest import (Ledger, Load, Outcome, RedisProcess, daemon_toml, free_port, queue_empty,
                       replica_in_sync, role, scale, wait_until, write_sentinel_conf)

MASTER = "faults"
REPL = ("--repl-diskless-sync-delay", "0")


def sentinel_ready(sentinel: RedisProcess) -> bool:
    """The Sentinel knows both replicas (in sync) and the two other Sentinels."""
    with sentinel.client() as c:
        replicas = c.command("SENTINEL", "REPLICAS", MASTER)
        others = c.command("SENTINEL", "SENTINELS", MASTER)

    def fields(flat):
        return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}

    good = [r for r in map(fields, replicas)
            if r.get("master-link-status") == "ok" and "down" not in r["flags"]
            and "disconnected" not in r["flags"]]
    return len(good) == 2 and len(others) == 2


def test_primary_killed_under_load(seed, slots, sink, redis_processes, tmp_path):
    total = scale(1500, 5000)
    primary = redis_processes(tmp_path / "primary", *REPL)
    replicas = [redis_processes(tmp_path / f"replica{i}", *REPL, "--replicaof", "127.0.0.1",
                                str(primary.port)) for i in (1, 2)]
    for replica in replicas:
        wait_until(lambda: replica_in_sync(replica), 20, "the replicas to sync")
    sentinels = []
    for i in (1, 2, 3):
        port = free_port()
        write_sentinel_conf(tmp_path / f"sentinel{i}", port, MASTER, primary.port, quorum=2)
        sentinels.append(redis_processes(tmp_path / f"sentinel{i}", port=port, sentinel=True))
    for sentinel in sentinels:
        wait_until(lambda: sentinel_ready(sentinel), 30, "the Sentinels to know each other and the replicas")

    prefix = "failover:"

    def config(port, state_dir):
        return daemon_toml(redis={"sentinels": [f"127.0.0.1:{s.port}" for s in sentinels],
                                  "master_name": MASTER, "key_prefix": prefix, "min_replicas": 1,
                                  "min_replicas_timeout": "1s"},
                           port=port, state_dir=state_dir, sink_port=sink.port,
                           submission={"dedupe_window": "10m"})

    pair = slots(2, config)
    for slot in pair:
        slot.start()
        wait_until(lambda: len(slot.daemon.find_lines(r"subscribed to \+switch-master")) == 3, 15,
                   "the daemon to subscribe to the three Sentinels")
    pids = [slot.daemon.pid for slot in pair]
    load = Load(lambda: [s.port for s in pair], total=total, threads=8, seed=seed, tag="failover").start()

    marks: dict[str, float] = {}
    errors = []

    def kill_primary() -> None:
        try:
            if not load.wait_for(lambda: load.progress() >= 0.3):
                raise AssertionError("the load stopped before the primary was killed")
            marks["acked_before"] = len(load.acked)
            marks["killed"] = time.monotonic()
            primary.kill()
            promoted = wait_until(lambda: [r for r in replicas if role(r) == "master"], 60,
                                  "a replica to be promoted", interval=0.05)
            marks["promoted"] = time.monotonic()
            marks["new_primary"] = promoted[0].port
            count = len(load.acked)
            # accepting again: the first 250 after the promotion
            if not load.wait_for(lambda: len(load.acked) > count or load.done):
                raise AssertionError("no message was acknowledged after the promotion")
            marks["accepting"] = time.monotonic()
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=kill_primary, daemon=True)
    thread.start()
    load.wait(scale(240, 900))
    thread.join(90)
    assert not errors, errors

    new_primary = next(r for r in replicas if r.port == marks["new_primary"])
    outcome = Outcome("sentinel failover", seed, load, Ledger(sink), extra={
        "promoted_after": f"{marks['promoted'] - marks['killed']:.1f}s",
        "accepting_after": f"{marks['accepting'] - marks['killed']:.1f}s"})
    missing = outcome.wait_delivered(scale(90, 240))
    with new_primary.client() as client:
        stored = {i for i in missing if client.command("EXISTS", f"{prefix}msg:{i}")}
        wait_until(lambda: queue_empty(client, prefix), 60, "the queue to drain")
    outcome.ledger.scan()
    print(outcome.summary(), flush=True)

    assert not missing - stored, (f"{len(missing - stored)} acknowledged messages neither delivered nor "
                                  f"on the new primary: {sorted(missing - stored)[:10]}")
    assert not missing, f"{len(missing)} acknowledged messages on the new primary but not delivered"
    assert set(load.codes) <= {250, 451}, load.codes
    assert [slot.daemon.pid for slot in pair] == pids and all(slot.running for slot in pair)
    for slot in pair:
        assert slot.daemon.find_lines(rf"Redis master {MASTER} (moved from .* to|is now) "
                                      rf"127\.0\.0\.1:{new_primary.port}"), slot.log_tail()
