"""
(d) Rolling restart under load: two daemons; SIGTERM one, start it again, then the other.

A stopping daemon closes its listeners, lets sessions in a transaction finish, answers idle
ones 421, and hands its leased delivery jobs back at once; clients move to the other daemon.
Nothing acknowledged may be lost and nothing may arrive twice (de-duplication is off here, so
a client-side retry that queued a message twice would show as msg_dups). Afterwards the cluster
lists exactly the two new processes (a clean stop removes the heartbeat at once).
"""

from __future__ import annotations

import signal
import threading
import time

from .conftest import Ledger, Load, Outcome, daemon_toml, queue_empty, scale, wait_until

CLEAN_EXIT = (0, -signal.SIGTERM)   # twistd re-raises SIGTERM after a clean shutdown


def test_rolling_restart_under_load(seed, slots, sink, redis_server, unique_prefix):
    total = scale(2000, 5000)

    def config(port, state_dir):
        return daemon_toml(redis={"url": redis_server.url, "key_prefix": unique_prefix}, port=port,
                           state_dir=state_dir, sink_port=sink.port)

    pair = slots(2, config)
    for slot in pair:
        slot.start()
    load = Load(lambda: [s.port for s in pair], total=total, threads=8, seed=seed, tag="rolling").start()

    restarts = []
    errors = []

    def roll() -> None:
        try:
            for share, slot in ((0.2, pair[0]), (0.55, pair[1])):
                if not load.wait_for(lambda: load.progress() >= share or load.done):
                    raise AssertionError(f"the load stopped before daemon {slot.name}'s restart")
                began = time.monotonic()
                code = slot.kill(signal.SIGTERM, 60)
                stopped = time.monotonic()
                slot.start()
                restarts.append((slot.name, code, round(stopped - began, 1),
                                 round(time.monotonic() - stopped, 1)))
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=roll, daemon=True)
    thread.start()
    load.wait(scale(180, 900))
    thread.join(120)
    assert not errors, errors

    outcome = Outcome("rolling restart", seed, load, Ledger(sink), extra={"restarts": len(restarts)})
    missing = outcome.wait_delivered(scale(60, 180))
    client = redis_server.client()
    wait_until(lambda: queue_empty(client, unique_prefix), 60, "the queue to drain")
    outcome.ledger.scan()
    print(outcome.summary(), flush=True)
    print(f"restarts (daemon, exit status, stop seconds, start seconds): {restarts}", flush=True)

    assert not missing, f"{len(missing)} acknowledged messages never delivered: {sorted(missing)[:10]}"
    # a clean stop finishes or hands back what it holds: nothing is sent or queued twice
    assert outcome.duplicates == 0 and outcome.message_duplicates == 0, outcome.summary()
    assert len(restarts) == 2 and all(code in CLEAN_EXIT for _, code, _, _ in restarts), restarts
    assert set(load.codes) <= {250, 421, 451}, load.codes
    for slot in pair:
        stopped = slot.runs[0]
        assert stopped.find_lines(r"mailrelay stopped"), slot.log_tail()
        assert not stopped.find_lines(r"Traceback|Unhandled error"), slot.log_tail()
    members = {m.decode().split(":")[1] for m in client.command("ZRANGE", f"{unique_prefix}cluster", 0, -1)
               if client.command("EXISTS", f"{unique_prefix}cluster:{m.decode()}")}
    assert members == {str(slot.daemon.pid) for slot in pair}
