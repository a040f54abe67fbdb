"""
(f) Redis stalls right after the enqueue script ran, again and again, under load.

A proxy between the daemon and Redis (tests/redisproxy.py) freezes every connection right
after an enqueue call reached Redis (and ran there), for longer than ``[redis] timeout``, then
lets everything through, as a SIGSTOP of redis-server right after its AOF write would: the
clients of that call get 451 although Redis stored their messages. None of those may reach the
sink (the daemon cancels them as soon as Redis answers again), no message may arrive twice
under two ids, and every message that got a 250 must be delivered. Quick scale: 3 stalls, 300
messages; MAILRELAY_FAULTS_FULL=1: 20 stalls, 3,000 messages.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from .conftest import Ledger, Load, Outcome, daemon_toml, queue_empty, scale, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from redisproxy import StallingProxy  # noqa: E402

#: Every enqueue call carries its recipients' "queued" events: the moment to stall.
ENQUEUE_MARKER = b'"type":"queued"'
#: Seconds Redis stays frozen: past the daemon's [redis] timeout (1 s).
STALL = 1.5


def test_stalls_right_after_the_enqueue_never_deliver_a_451(seed, slots, sink, redis_processes, tmp_path):
    stalls = scale(3, 20)
    total = scale(300, 3000)
    redis = redis_processes(tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always")
    proxy = StallingProxy("127.0.0.1", redis.port)
    prefix = "stall:"

    def config(port, state_dir):
        return daemon_toml(redis={"url": proxy.url, "key_prefix": prefix, "timeout": "1s"}, port=port,
                           state_dir=state_dir, sink_port=sink.port)

    try:
        [slot] = slots(1, config)
        slot.start()
        load = Load(lambda: [slot.port], total=total, threads=8, seed=seed, tag="stall").start()
        errors = []

        def stall_redis() -> None:
            try:
                for n in range(stalls):
                    if not load.wait_for(lambda: load.progress() >= (n + 1) / (stalls + 2)):
                        raise AssertionError(f"the load stopped before stall {n + 1}")
                    proxy.arm(ENQUEUE_MARKER)
                    if not load.wait_for(proxy.triggered.is_set):
                        raise AssertionError(f"no enqueue call reached Redis for stall {n + 1}")
                    # The fault itself, not synchronisation: Redis stays frozen past the
                    # daemon's [redis] timeout while the clients keep sending.
                    time.sleep(STALL)
                    proxy.release()
            except Exception as e:
                errors.append(e)
            finally:
                proxy.disarm()
                proxy.release()

        thread = threading.Thread(target=stall_redis, daemon=True)
        thread.start()
        load.wait(scale(120, 600))
        thread.join(60)
        assert not errors, errors

        outcome = Outcome(f"redis stalled {stalls}x after the enqueue", seed, load, Ledger(sink),
                          extra={"stalls": proxy.stalls})
        missing = outcome.wait_delivered(scale(60, 120))
        with redis.client() as client:
            wait_until(lambda: queue_empty(client, prefix)
                       and client.command("ZCARD", f"{prefix}queue:unsettled") == 0, 60,
                       "the queue to drain and every acknowledgement to be settled")
        outcome.ledger.scan()
        print(outcome.summary(), flush=True)

        assert not missing, f"{len(missing)} acknowledged messages never delivered: {sorted(missing)[:10]}"
        answered_451 = outcome.unacknowledged_deliveries()
        assert not answered_451, (f"{len(answered_451)} messages answered 451 were delivered: "
                                  f"{sorted(answered_451)[:10]}")
        assert outcome.message_duplicates == 0
        assert proxy.stalls == stalls
        assert load.codes[451] >= stalls, load.codes
        assert set(load.codes) <= {250, 451}, load.codes
        assert slot.daemon.find_lines(r"storage: cancelled [0-9a-f]{20}: it was stored"), slot.log_tail()
        assert not slot.daemon.find_lines(r"Unhandled error in Deferred|could not cancel"), slot.log_tail()
    finally:
        proxy.close()
