"""The test fixtures themselves: the private redis-server, the RESP client, the Daemon helper
(driven here by small stand-in processes, since it only reads a process's log) and the
configuration text helper."""

from __future__ import annotations

import re
import signal
import socket
import sys
import textwrap
import tomllib

import pytest

from conftest import Daemon, DaemonError, LISTENING_RE, READY_RE, render_toml, toml_value
from redisclient import RedisClient, RedisError, encode_command
from mailrelay.config import parse_config
from mailrelay.passwords import hash_password


# -- redis_server and the RESP client -------------------------------------------------------

def test_redis_server_attributes(redis_server):
    assert redis_server.host == "127.0.0.1"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.pid == redis_server.process.pid
    assert redis_server.process.poll() is None
    with redis_server.client() as c:
        assert c.command("PING") == "PONG"
        assert c.command("CONFIG", "GET", "save") == [b"save", b""]
        assert c.command("CONFIG", "GET", "appendonly") == [b"appendonly", b"no"]
        assert int(c.command("CONFIG", "GET", "port")[1]) == redis_server.port
        assert c.command("INFO", "server").count(b"process_id:%d" % redis_server.pid) == 1


def test_unix_socket(redis_server, unique_prefix):
    key = unique_prefix + "via-unix"
    with redis_server.client() as tcp, RedisClient(unix_path=redis_server.unix_path) as unix:
        assert tcp.command("SET", key, "1") == "OK"
        assert unix.command("GET", key) == b"1"
    assert redis_server.unix_url == f"unix://{redis_server.unix_path}?db=0"


def test_binary_set_get(redis_server, unique_prefix):
    key = unique_prefix + "bin\x00\r\n"
    value = bytes(range(256)) + b"\r\n$-1\r\n*3\r\n" + "é".encode()
    with redis_server.client() as c:
        assert c.command("SET", key, value) == "OK"
        assert c.command("GET", key) == value
        assert c.command("STRLEN", key) == len(value)
        assert c.command("GET", unique_prefix + "missing") is None
        assert c.command("SET", unique_prefix + "empty", b"") == "OK"
        assert c.command("GET", unique_prefix + "empty") == b""


def test_integers_arrays_and_nulls(redis_server, unique_prefix):
    key = unique_prefix + "list"
    with redis_server.client() as c:
        assert c.command("RPUSH", key, "a", b"b", 3) == 3
        assert c.command("LRANGE", key, 0, -1) == [b"a", b"b", b"3"]
        assert c.command("INCRBY", unique_prefix + "n", -5) == -5
        assert c.command("INCRBYFLOAT", unique_prefix + "f", 1.5) == b"1.5"
        assert c.command("LRANGE", unique_prefix + "none", 0, -1) == []
        assert c.command("EVAL", "return {1, 'two', {3, false}}", 0) == [1, b"two", [3, None]]
        assert c.command("BLPOP", unique_prefix + "empty-list", "0.01") is None  # null array
        stream = unique_prefix + "stream"
        entry_id = c.command("XADD", stream, "*", "field", "007")
        assert c.command("XRANGE", stream, "-", "+") == [[entry_id, [b"field", b"007"]]]


def test_error_replies_raise(redis_server, unique_prefix):
    key = unique_prefix + "str"
    with redis_server.client() as c:
        c.command("SET", key, "not a number")
        with pytest.raises(RedisError, match="not an integer") as info:
            c.command("INCR", key)
        assert info.value.kind == "ERR"
        with pytest.raises(RedisError) as info:
            c.command("LPUSH", key, "x")
        assert info.value.kind == "WRONGTYPE"
        with pytest.raises(RedisError, match="unknown command"):
            c.command("NO-SUCH-COMMAND")
        assert c.command("PING") == "PONG"  # the connection is still in step


def test_errors_inside_arrays_are_returned(redis_server, unique_prefix):
    key = unique_prefix + "str"
    with redis_server.client() as c:
        c.command("SET", key, "x")
        assert c.command("MULTI") == "OK"
        assert c.command("INCR", key) == "QUEUED"
        assert c.command("GET", key) == "QUEUED"
        result = c.command("EXEC")
        assert isinstance(result[0], RedisError) and result[1] == b"x"
        replies = c.pipeline([("SET", key, "y"), ("LPUSH", key, "z"), ("GET", key)])
        assert replies[0] == "OK"
        assert isinstance(replies[1], RedisError) and replies[1].kind == "WRONGTYPE"
        assert replies[2] == b"y"


def test_select_db(redis_server, unique_prefix):
    key = unique_prefix + "db"
    with redis_server.client(db=1) as one, redis_server.client() as zero:
        one.command("SET", key, "in db 1")
        assert zero.command("EXISTS", key) == 0
        assert one.command("EXISTS", key) == 1


def test_encode_command():
    assert encode_command(["SET", "k", b"\r\n", 5]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\r\n\r\n$1\r\n5\r\n"
    with pytest.raises(TypeError):
        encode_command(["SET", "k", True])


def test_closed_connection_is_reported():
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = RedisClient("127.0.0.1", server.getsockname()[1])
        conn, _ = server.accept()
        conn.close()
        with pytest.raises(Exception, match="closed"):
            client.command("PING")
        client.close()


def test_unique_prefix(unique_prefix):
    assert re.fullmatch(r"t[0-9a-f]{8}:", unique_prefix)
    assert parse_config({"redis": {"key_prefix": unique_prefix}}).redis.key_prefix == unique_prefix


# -- configuration text -----------------------------------------------------------------------

def test_daemon_config_is_valid(daemon_config, redis_server, unique_prefix, tmp_path):
    hashed = hash_password("secret", log_n=4)
    text = daemon_config(redis_server, unique_prefix,
                         submission={"max_recipients": 5, "users": {"alice": hashed},
                                     "trusted_networks": ["127.0.0.0/8"], "listen_tls": None},
                         tls={"min_version": "1.3"},
                         server={"hostname": 'mx "test"\\1'})
    config = parse_config(tomllib.loads(text))
    assert config.redis.url == redis_server.url
    assert config.redis.key_prefix == unique_prefix
    assert config.server.state_dir == str(tmp_path / "state")
    assert config.server.hostname == 'mx "test"\\1'
    assert config.submission.listen == ("tcp:0:interface=127.0.0.1",)
    assert config.submission.listen_tls == ("tcp:2465:interface=127.0.0.1",)  # removed: default
    assert config.submission.users == {"alice": hashed}
    assert config.submission.max_recipients == 5
    assert config.tls.min_version == "1.3"


def test_daemon_config_managed_redis(daemon_config):
    config = parse_config(tomllib.loads(daemon_config(None, None)))
    assert config.redis.url == "" and config.redis.key_prefix == "mailrelay:"
    assert config.submission.listen_tls == ("tcp:0:interface=127.0.0.1",)


def test_toml_values():
    assert tomllib.loads(render_toml({"s": {"a": "\x01\t\u00e9", "b": [], "c": {}, "d": False,
                                            "e": {"x y": "1"}, "f": 1.5}})) == {
        "s": {"a": "\x01\t\u00e9", "b": [], "c": {}, "d": False, "e": {"x y": "1"}, "f": 1.5}}
    with pytest.raises(TypeError):
        toml_value(None)


# -- the Daemon helper, on stand-in processes ---------------------------------------------------

STAND_IN = textwrap.dedent("""
    import signal, sys, time
    def on_term(signum, frame):
        print("stopping", flush=True)
        sys.exit(3)
    signal.signal(signal.SIGTERM, on_term if "--trap" in sys.argv else
                  signal.SIG_IGN if "--ignore" in sys.argv else signal.SIG_DFL)
    print("2025-01-01T00:00:00+0000 [-] submission listening on 127.0.0.1:40123 (STARTTLS)", flush=True)
    print("2025-01-01T00:00:00+0000 [-] submission-tls listening on [::1]:40124 (implicit TLS)", flush=True)
    print("some stderr noise", file=sys.stderr, flush=True)
    print("2025-01-01T00:00:00+0000 [-] submission listening on 127.0.0.1:40125 (STARTTLS)", flush=True)
    print("2025-01-01T00:00:00+0000 [-] mailrelay 0.1.0 ready", flush=True)
    if "--exit" in sys.argv:
        sys.exit(7)
    while True:
        signal.pause()
""")


def stand_in(tmp_path, *flags):
    return Daemon([sys.executable, "-c", STAND_IN, *flags], cwd=tmp_path)


def test_daemon_ready_and_ports(tmp_path):
    daemon = stand_in(tmp_path, "--trap")
    try:
        assert daemon.wait_until_ready(timeout=20) is daemon
        assert daemon.ports == {"submission": 40123, "submission-tls": 40124}
        assert [(l.service, l.host, l.port, l.mode) for l in daemon.listeners] == [
            ("submission", "127.0.0.1", 40123, "STARTTLS"),
            ("submission-tls", "::1", 40124, "implicit TLS"),
            ("submission", "127.0.0.1", 40125, "STARTTLS"),
        ]
        assert "some stderr noise" in daemon.log_text()
        assert daemon.running
    finally:
        assert daemon.stop() == 3
    assert daemon.wait_for_line("^stopping$").group() == "stopping"
    assert not daemon.running


def test_daemon_wait_for_line_moves_forward(tmp_path):
    daemon = stand_in(tmp_path)
    try:
        m = daemon.wait_for_line(r"listening on (\S+):(\d+)")
        assert m.group(2) == "40123"
        assert daemon.wait_for_line(r"listening on (\S+):(\d+)").group(2) == "40124"
        assert len(daemon.find_lines(LISTENING_RE)) >= 2
        daemon.wait_for_line(READY_RE)
        with pytest.raises(DaemonError, match="within 0.2s") as info:
            daemon.wait_for_line("never logged", timeout=0.2)
        assert "mailrelay 0.1.0 ready" in str(info.value)  # the log comes with the error
    finally:
        assert daemon.stop() == -signal.SIGTERM


def test_daemon_exit_before_line(tmp_path):
    daemon = stand_in(tmp_path, "--exit")
    with pytest.raises(DaemonError, match=r"exited \(status 7\)") as info:
        daemon.wait_for_line("never logged")
    assert "submission listening" in str(info.value)
    assert daemon.stop() == 7
    assert daemon.wait() == 7


def test_daemon_sigkill_fallback(tmp_path):
    daemon = stand_in(tmp_path, "--ignore")
    daemon.wait_until_ready()
    assert daemon.stop(timeout=0.5) == -signal.SIGKILL
