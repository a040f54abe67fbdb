"""
The Lua scripts in mailrelay/store/lua/: each opens with its KEYS and ARGV, every script Python
names exists, and a Redis that lost its script cache (SCRIPT FLUSH, as after a restart or a
failover) is recovered without the client noticing: the next message still gets 250.
"""

from __future__ import annotations

import re
from pathlib import Path

from conftest import start_redis, wait_until
from peers import send
from test_cluster import NO_WEB, TRUSTED, queued_id, submit
from test_daemon_delivery import delivery_config

from mailrelay.store import scripts

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "mailrelay" / "store" / "lua"


def opening_comment(path: Path) -> str:
    """The comment lines a .lua file opens with."""
    lines = []
    for line in path.read_text("utf-8").splitlines():
        if not line.startswith("--") or line.startswith("--#"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_every_lua_file_opens_with_its_keys_and_argv():
    files = sorted(LUA.glob("*.lua"))
    assert len(files) > 30
    for path in files:
        head = opening_comment(path)
        assert re.match(r"-- KEYS(:|, ARGV:)", head), f"{path.name}: does not open with its KEYS"
        assert re.search(r"\bARGV:", head), f"{path.name}: no ARGV in its opening comment"


def test_every_script_named_in_python_exists_and_expands():
    named = set()
    for path in (ROOT / "mailrelay").rglob("*.py"):
        named |= set(re.findall(r'SCRIPTS\["([a-z0-9_]+)"\]', path.read_text("utf-8")))
    assert "enqueue_batch" in named
    for name in named:
        assert (LUA / f"{name}.lua").is_file(), f"{name}.lua is named in Python but missing"
        assert name in scripts.SCRIPTS
    for name, script in scripts.SCRIPTS.items():
        # every include and every named position was expanded
        assert not re.search(r"^--#include", script.source, re.M) and "${" not in script.source, name
    for path in LUA.glob("*.lua"):
        for piece in re.findall(r"^--#include ([a-z0-9_]+)", path.read_text("utf-8"), re.M):
            assert (LUA / f"{piece}.lua").is_file(), f"{path.name} includes a missing {piece}"


def test_enqueue_positions_come_from_the_python_definition():
    batch = scripts.SCRIPTS["enqueue_batch"].source
    body = scripts.position(scripts.ENQUEUE_ARGV, "body") + 1
    assert f"local body = ARGV[{body}]" in batch
    assert f"local s = tonumber(ARGV[{len(scripts.ENQUEUE_BATCH_ARGV)}])" in batch


def test_script_flush_is_recovered_transparently(start_daemon, daemon_config, redis_server, unique_prefix,
                                                dns, sink):
    d = start_daemon(delivery_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    port = d.ports["submission"]
    first = send(port, ["a@example.test"], subject="before")
    d.wait_for_line(rf"{first}: to=<a@example\.test>, .*status=sent")
    client = redis_server.client()
    client.command("SCRIPT", "FLUSH")
    second = send(port, ["b@example.test"], subject="after")   # asserts 250
    d.wait_for_line(rf"{second}: to=<b@example\.test>, .*status=sent")
    # the scripts the daemon ran are cached again, under the SHA1 the daemon uses
    for name in ("enqueue_batch", "claim", "record"):
        assert client.command("SCRIPT", "EXISTS", scripts.SCRIPTS[name].sha) == [1], name


def test_script_flush_is_recovered_when_writes_wait_for_a_replica(start_daemon, daemon_config, tmp_path):
    """The min_replicas path sends the script and WAIT in one pipeline: on NOSCRIPT both go again."""
    primary = start_redis(tmp_path / "primary", extra_args=("--repl-diskless-sync-delay", "0"))
    replica = start_redis(tmp_path / "replica", extra_args=("--repl-diskless-sync-delay", "0", "--replicaof",
                                                            "127.0.0.1", str(primary.port)))
    try:
        with primary.client(timeout=30) as c:
            c.command("SET", "test-synced", "1")
            assert c.command("WAIT", 1, 20000) == 1, "the replica did not sync"
        d = start_daemon(daemon_config(primary, "r:", web=NO_WEB, delivery={"enabled": False},
                                       redis={"min_replicas": 1, "min_replicas_timeout": "2s"},
                                       submission=TRUSTED))
        port = d.ports["submission"]
        queued_id(submit(port))
        primary.client().command("SCRIPT", "FLUSH")
        second = queued_id(submit(port))                       # 250, not 451
        assert replica.client().command("EXISTS", f"r:msg:{second}") == 1
        # its settlement (also script + WAIT) went through: the message is confirmed
        wait_until(lambda: primary.client().command("HEXISTS", f"r:msg:{second}", "unsettled") == 0, 15,
                   "the message to be settled")
        assert primary.client().command("ZSCORE", "r:queue:d:example.test", f"{second}.0") is not None
    finally:
        replica.stop()
        primary.stop()
