"""
The Lua scripts in mailrelay/store/lua/: each opens with its KEYS and ARGV, every script Python
names exists, no script builds a key name from a fragment of its own (mailrelay.store.keys.Keys
builds them all, as the stores' headers document them), and a Redis that lost its script cache
(SCRIPT FLUSH, as after a restart or a failover) is recovered without the client noticing: the
next message still gets 250.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import start_redis, wait_until
from peers import send
from test_cluster import NO_WEB, TRUSTED, queued_id, submit
from test_daemon_delivery import delivery_config

from mailrelay.store import scripts
from mailrelay.store.keys import Keys

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


#: Literals a script may start a concatenation with: hash field names of one key
#: (``'rcpt:' .. i`` in P msg:<id>, ``'bounce:' .. type`` in the counter hashes), replies, and
#: the exclusive score bound ``'(' .. now``.
FIELD_AND_REPLY_FRAGMENTS = {"rcpt:", "state:", "attempts:", "owner:", "last:", "reports:", "bounce:",
                             "OK ", "ERR ", "DUP:", "PENDING:", "(",
                             # values: a released message's dedupe key, archive:release members
                             "released:", "m:", "b:"}
#: Literals a script may append to a value: the job member separator (``<id>.<i>``).
APPENDED_FRAGMENTS = {"."}
_LITERAL = r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\""""


def concatenated_literals(source: str) -> list[tuple[str, str]]:
    """(side, text) of every string literal that is an operand of ``..`` in Lua source:
    side "appended" when it follows a ``..``, "leading" when it only precedes one."""
    code = "\n".join(re.sub(r"--.*$", "", line) for line in source.splitlines())
    found = []
    for match in re.finditer(_LITERAL, code):
        text = match.group()[1:-1]
        if re.search(r"\.\.\s*$", code[:match.start()]):
            found.append(("appended", text))
        elif re.match(r"\s*\.\.", code[match.end():]):
            found.append(("leading", text))
    return found


def key_fragments_in(source: str) -> list[str]:
    """What in Lua source looks like a key name built in Lua: ``P ..`` or a literal added to a
    key prefix (only field names, replies and the job separator are allowed)."""
    bad = [f"{side} {text!r}" for side, text in concatenated_literals(source)
           if text not in (APPENDED_FRAGMENTS if side == "appended" else FIELD_AND_REPLY_FRAGMENTS)]
    code = "\n".join(re.sub(r"--.*$", "", line) for line in source.splitlines())
    return bad + re.findall(r"\bP\s*\.\.", code)


def test_the_key_fragment_scan_finds_the_old_way():
    """The scan below catches each way scripts built key names before Keys passed them in."""
    for old in ("local mkey = P .. 'msg:' .. id", "redis.call('ZADD', idx .. 'time', now, id)",
                "local rkey = idx .. 'rcpt:' .. string.lower(ARGV[pos])",
                "local mkey = stats_prefix .. 'm:' .. minute",
                "redis.call('DEL', ARGV[pos + 12] .. old, ARGV[pos + 12] .. 'raw:' .. old)",
                "redis.call('XADD', P .. \"events\", 'MAXLEN')"):
        assert key_fragments_in(old), old
    for fine in ("redis.call('HGET', mkey, 'rcpt:' .. i)", "local job = ARGV[1] .. '.' .. i",
                 "return 'DUP:' .. original  -- 'x' .. y in a comment"):
        assert not key_fragments_in(fine), fine


def test_no_script_builds_a_key_name_itself():
    """Keys is the only place a key name is built: a script gets its keys as KEYS and the
    prefixes of the keys it derives as ARGV, and adds nothing to them but an id or a value."""
    found = {path.name: key_fragments_in(path.read_text("utf-8")) for path in sorted(LUA.glob("*.lua"))}
    assert {name: bad for name, bad in found.items() if bad} == {}


def documented_keys() -> set[str]:
    """Every ``P <name>`` the stores' headers document (placeholders such as ``<id>`` kept)."""
    names = set()
    for path in (ROOT / "mailrelay" / "store").glob("*.py"):
        if path.name == "keys.py":
            continue
        header = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
        names |= {name for name in re.findall(r"``(P [^`]+)``", header) if "..." not in name}
    return names


def test_keys_builds_each_name_as_the_store_headers_document_it():
    k = Keys("P ")
    built = {
        k.msg("<id>"), k.body("<id>"), k.timeline("<id>"), k.domain_queue("<domain>"),
        k.queue_domains, k.leases, k.unsettled, k.events,
        k.time_index, k.recipient_index("<address>"), k.tag_index("<tag>"), k.status_index("<status>"),
        k.counters("m", "<minute>"), k.counters("h", "<hour>"),
        k.bounce("<id>"), k.bounce_raw("<id>"), k.bounces, k.bounces_unmatched, k.verp_secret,
        k.suppressed, k.suppressed_version, k.webhook_queue, k.webhook_job("<id>"),
        k.dkim_domains, k.dkim_version, k.dkim_checks, k.cluster, k.cluster_member("<owner>"),
        k.data_version, k.migration_lock, k.user_rate("<user>", "<window>"), k.auth_failures("<client>"),
        k.archive_release, k.late_reports("<id>", "<rcpt>"),
    }
    documented = documented_keys()
    assert built - documented == set(), "built by Keys but documented otherwise (or not at all)"
    dedupe = {name for name in documented - built if name.startswith("P dedupe:")}
    assert documented - built - dedupe == set(), "documented but not built by Keys"
    assert re.fullmatch(r"P dedupe:u:[0-9a-f]{64}", k.dedupe("u", "<a@b>"))
    assert k.dedupe(None, "<a@b>").startswith("P dedupe:-:")


def test_every_key_name_a_script_is_given_comes_from_keys():
    """Each name of a layout of KEYS or key prefixes (scripts.py) is a Keys attribute, under
    the prefix, and each prefix is that of a documented key."""
    k = Keys("P ")
    documented = documented_keys()
    layouts = (scripts.SETTLE_KEYS, scripts.SETTLE_ARGV, scripts.SWEEP_UNSETTLED_KEYS, scripts.RECORD_PREFIXES,
               scripts.ARCHIVE_SNAPSHOT_ARGV)
    for layout in layouts:
        for name, value in k.names(layout).items():
            assert value.startswith("P "), name
            if name.endswith("_prefix"):
                assert any(doc.startswith(value + "<") for doc in documented), (name, value)
            else:
                assert value in documented, (name, value)
    for layout in (scripts.ENQUEUE_ARGV, scripts.RECORD_BOUNCE_TAIL, scripts.ENQUEUE_KEYS):
        for name in layout:
            if name.endswith("_prefix"):
                assert any(doc.startswith(getattr(k, name) + "<") for doc in documented), name


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
