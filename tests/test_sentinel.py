"""
Sentinel mode at the daemon: a primary, a replica and one Sentinel (real redis-server
processes on free 127.0.0.1 ports); a failover is followed without a restart.
"""

from __future__ import annotations

import re
import shutil
import signal
import smtplib
import subprocess
import time
from pathlib import Path

from conftest import RedisServer, _free_port, _wait_for_pong, start_redis, wait_until
from redisclient import RedisError

MASTER = "mymaster"
QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9a-f]{20})")
#: No diskless-sync delay (5 s by default): the replica is in sync at once.
REDIS_ARGS = ("--repl-diskless-sync-delay", "0")
#: twistd exits by re-raising SIGTERM after a clean shutdown.
CLEAN_EXIT = (0, -signal.SIGTERM)



def as_dict(flat: list) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


def start_sentinel(directory: Path, primary: RedisServer, attempts: int = 5) -> RedisServer:
    """``redis-server sentinel.conf --sentinel`` monitoring ``primary`` (quorum 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    failures = []
    for _ in range(attempts):
        port = _free_port("127.0.0.1")
        conf = directory / "sentinel.conf"   # Sentinel rewrites it: keep it in tmp
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {directory}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {primary.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
        )
        log_path = directory / f"sentinel-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([shutil.which("redis-server"), str(conf), "--sentinel"],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        sentinel = RedisServer(host="127.0.0.1", port=port, process=process, dir=directory,
                               unix_path="", log_path=log_path)
        if _wait_for_pong(sentinel, 10):
            return sentinel
        process.wait()
        failures.append(f"port {port}: exit {process.returncode}:\n{sentinel.log_text()}")
    raise RuntimeError("redis-server --sentinel did not start:\n" + "\n".join(failures))


def replica_in_sync(replica: RedisServer) -> bool:
    with replica.client() as c:
        return "master_link_status:up" in c.command("INFO", "replication").decode()


def sentinel_knows_replica(sentinel: RedisServer, replica: RedisServer) -> bool:
    with sentinel.client() as c:
        for entry in map(as_dict, c.command("SENTINEL", "REPLICAS", MASTER)):
            if (int(entry["port"]) == replica.port and entry.get("master-link-status") == "ok"
                    and "down" not in entry["flags"] and "disconnected" not in entry["flags"]):
                return True
    return False


def master_port(sentinel: RedisServer) -> int:
    with sentinel.client() as c:
        return int(c.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)[1])


def failover(sentinel: RedisServer) -> bool:
    """SENTINEL FAILOVER; False while Sentinel has no replica it trusts yet (retry)."""
    with sentinel.client() as c:
        try:
            return c.command("SENTINEL", "FAILOVER", MASTER) == "OK"
        except RedisError as e:
            if e.kind in ("NOGOODSLAVE", "INPROG"):
                return False
            raise


def try_submit(port: int, subject: str) -> tuple[int, str]:
    """One message over plain SMTP from a trusted network: (code, reply) of the first
    command that was not accepted, or of DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        for command, arg in (("mail", "app@example.com"), ("rcpt", "someone@example.org")):
            code, text = getattr(s, command)(arg)
            if code != 250:
                return code, text.decode()
        code, text = s.data(f"Subject: {subject}\r\n\r\nHello.\r\n".encode())
        return code, text.decode()


def test_failover_is_followed_without_restart(start_daemon, daemon_config, tmp_path, unique_prefix):
    servers: list[RedisServer] = []
    d = None
    try:
        primary = start_redis(tmp_path / "primary", extra_args=REDIS_ARGS)
        servers.append(primary)
        replica = start_redis(tmp_path / "replica",
                              extra_args=(*REDIS_ARGS, "--replicaof", "127.0.0.1", str(primary.port)))
        servers.append(replica)
        # WAIT blocks until the replica has synced and acknowledged a write on the primary
        with primary.client(timeout=30) as c:
            c.command("SET", "test-synced", "1")
            assert c.command("WAIT", 1, 20000) == 1, "the replica did not sync"
        assert replica_in_sync(replica)
        sentinel = start_sentinel(tmp_path / "sentinel", primary)
        servers.append(sentinel)
        # Bounded poll: the Sentinel discovers the replica from the primary's INFO on its own
        # schedule; the test does not subscribe to the Sentinel's +slave events.
        wait_until(lambda: sentinel_knows_replica(sentinel, replica), 30,
                   "the Sentinel to know the replica")

        d = start_daemon(daemon_config(
            None, unique_prefix,
            redis={"sentinels": [f"127.0.0.1:{sentinel.port}"], "master_name": MASTER},
            delivery={"enabled": False},
            submission={"trusted_networks": ["127.0.0.0/8"]}))
        assert d.find_lines(rf"using Redis via Sentinel 127\.0\.0\.1:{sentinel.port} \(master {MASTER}\)")
        d.wait_for_matches(r"subscribed to \+switch-master on Sentinel", timeout=10)

        code, text = try_submit(d.ports["submission"], "before")
        assert code == 250, (code, text)
        first = QUEUED.search(text).group(1)
        with primary.client() as c:
            assert c.command("EXISTS", f"{unique_prefix}msg:{first}") == 1

        # Bounded retry: the Sentinel refuses FAILOVER until it has discovered the replica.
        wait_until(lambda: failover(sentinel), 30, "SENTINEL FAILOVER to be accepted", interval=0.2)
        # The daemon logs the switch it learnt from the Sentinel, which then reports it too.
        d.wait_for_line(rf"Redis master {MASTER} moved from 127\.0\.0\.1:{primary.port} "
                        rf"to 127\.0\.0\.1:{replica.port} \(Sentinel\)", timeout=40)
        assert master_port(sentinel) == replica.port

        # Accepted within a few seconds; a 451 is allowed while the pool reconnects.
        deadline = time.monotonic() + 10
        refusals = []
        while True:
            code, text = try_submit(d.ports["submission"], "after")
            if code != 451 or time.monotonic() > deadline:
                break
            refusals.append(text)
            time.sleep(0.1)  # bounded retry after a 451 (refused while the pool reconnects)
        assert code == 250, (code, text, refusals)
        assert len(refusals) <= 3, refusals
        second = QUEUED.search(text).group(1)
        with replica.client() as c:   # the new primary
            assert c.command("ROLE")[0] == b"master"
            assert c.command("EXISTS", f"{unique_prefix}msg:{second}") == 1
        assert len(d.find_lines(r"Redis master \S+ moved from")) == 1
        assert not d.find_lines(r"Unhandled error|Traceback")
        # A clean stop releases the pool and the subscriptions.
        assert d.stop() in CLEAN_EXIT
        assert d.find_lines(r"mailrelay stopped")
    finally:
        if d is not None:
            d.stop()
        for server in reversed(servers):
            server.stop()
