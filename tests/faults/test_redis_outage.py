"""
(b) Redis goes away during submission: two daemons, clients sending all the time.

``sigstop``: the Redis process is frozen (SIGSTOP) and thawed (SIGCONT): connections stay open,
commands pile up and run late, so the enqueue deadline must keep every late write from being
stored. ``restart``: Redis is killed (SIGKILL) and started again on the same port from its AOF
(``appendfsync always``): connections break and the daemons must reconnect by themselves.

While Redis is away the clients may only get 451 (never a 250, never a dropped connection);
afterwards the same daemons (not restarted) accept again, every message that got a 250 is
delivered, and none that got a 451 is. The outage lasts 3 s (quick) or 10 s (MAILRELAY_FAULTS_FULL=1).
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from .conftest import Ledger, Load, Outcome, daemon_toml, queue_empty, scale, wait_until


@pytest.mark.parametrize("mode", ["sigstop", "restart"])
def test_redis_outage_during_submission(mode, seed, slots, sink, redis_processes, tmp_path):
    outage = scale(3.0, 10.0)
    total = scale(1000, 3000)
    redis = redis_processes(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    prefix = "outage:"

    def config(port, state_dir):
        return daemon_toml(redis={"url": redis.url, "key_prefix": prefix}, port=port,
                           state_dir=state_dir, sink_port=sink.port)

    pair = slots(2, config)
    for slot in pair:
        slot.start()
    pids = [slot.daemon.pid for slot in pair]
    load = Load(lambda: [s.port for s in pair], total=total, threads=8, seed=seed, tag=mode).start()

    marks: dict[str, float] = {}
    errors = []

    def break_redis() -> None:
        try:
            if not load.wait_for(lambda: load.progress() >= 0.3):
                raise AssertionError("the load stopped before Redis was broken")
            marks["acked_before"] = len(load.acked)
            marks["start"] = time.monotonic()
            if mode == "sigstop":
                redis.signal(signal.SIGSTOP)
                # The fault itself, not synchronisation: Redis stays frozen for the outage's
                # length while the clients keep sending.
                time.sleep(outage)
                marks["acked_during"] = len(load.acked) - marks["acked_before"]
                redis.signal(signal.SIGCONT)
            else:
                redis.kill()
                # The fault itself, not synchronisation: Redis stays down for the outage's
                # length while the clients keep sending.
                time.sleep(outage)
                marks["acked_during"] = len(load.acked) - marks["acked_before"]
                redis.start()
            marks["end"] = time.monotonic()
            count = len(load.acked)
            # recovered: the first 250 after Redis is back
            if not load.wait_for(lambda: len(load.acked) > count or load.done):
                raise AssertionError("no message was acknowledged after Redis came back")
            marks["recovered"] = time.monotonic()
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=break_redis, daemon=True)
    thread.start()
    load.wait(scale(120, 600))
    thread.join(60)
    assert not errors, errors

    recovery = marks["recovered"] - marks["end"]
    outcome = Outcome(f"redis {mode} {outage:g}s", seed, load, Ledger(sink),
                      extra={"recovery": f"{recovery:.1f}s"})
    missing = outcome.wait_delivered(scale(60, 120))
    with redis.client() as client:
        wait_until(lambda: queue_empty(client, prefix), 60, "the queue to drain")
    outcome.ledger.scan()
    print(outcome.summary(), flush=True)

    assert not missing, f"{len(missing)} acknowledged messages never delivered: {sorted(missing)[:10]}"
    # a message whose client got 451 is not delivered, even when Redis stored it before it
    # stalled (its acknowledgement is cancelled as soon as Redis answers again)
    answered_451 = outcome.unacknowledged_deliveries()
    assert not answered_451, f"{len(answered_451)} messages answered 451 were delivered"
    # a 250 during the outage could only come from a message stored before it (a 250 in flight);
    # at most one per client thread
    assert marks["acked_during"] <= load.threads, marks
    assert set(load.codes) <= {250, 451}, load.codes
    assert load.codes[451] > 0, "the outage did not reach the clients"
    assert load.drops == 0, f"{load.drops} connections dropped: the daemons must answer 451"
    assert [slot.daemon.pid for slot in pair] == pids and all(slot.running for slot in pair)
    for slot in pair:
        assert not slot.daemon.find_lines(r"Unhandled error in Deferred"), slot.log_tail()
