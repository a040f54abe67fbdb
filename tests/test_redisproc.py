"""Tests for mailrelay.redisproc: a real redis-server in a short temporary directory."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from mailrelay import redisproc
from mailrelay.config import ConfigError
from mailrelay.redisproc import ManagedRedis, ManagedRedisError, find_redis_server

WAIT = 20.0  # upper bound for any single event below; normally they take milliseconds


def redis_alive(pid: int) -> bool:
    """A live (not zombie) redis-server with this pid."""
    try:
        return b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def short_tmpdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="mr", dir="/tmp"))


def within(d: defer.Deferred, seconds: float = WAIT) -> defer.Deferred:
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


@defer.inlineCallbacks
def redis_commands(path: str, *commands: tuple):
    """Run commands on a fresh txredisapi connection; return their replies."""
    import txredisapi

    conn = txredisapi.lazyUnixConnection(path, convertNumbers=False)
    try:
        replies = []
        for command in commands:
            replies.append((yield within(conn.execute_command(*command))))
        return replies
    finally:
        yield conn.disconnect()


@defer.inlineCallbacks
def wait_for_ping(path: str, timeout: float = WAIT):
    """Retry PING on the socket every 50 ms until it answers (event-driven, bounded)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = reactor.seconds() + timeout
    while True:
        try:
            yield redisproc._ping(path, 1.0)
            return
        except Exception:
            if reactor.seconds() > deadline:
                raise
        yield deferLater(reactor, 0.05, lambda: None)  # back off: the socket is not answering yet


class ManagedRedisTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.tmp = short_tmpdir()
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.pids: set[int] = set()
        self.addCleanup(self._kill_leftovers)

    def _kill_leftovers(self) -> None:
        """Never leave a redis-server behind: ours, or any serving a directory in self.tmp."""
        pids = set(self.pids)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.readlink(entry / "cwd").startswith(str(self.tmp)):
                        pids.add(int(entry.name))
                except OSError:
                    pass
        for pid in pids:
            if redis_alive(pid):
                os.kill(pid, signal.SIGKILL)

    def make_service(self, **kwargs) -> ManagedRedis:
        svc = ManagedRedis(self.tmp / "state", **kwargs)

        def stop():
            if svc.running:
                return within(svc.stopService())

        self.addCleanup(stop)
        return svc

    @defer.inlineCallbacks
    def start(self, svc: ManagedRedis):
        svc.startService()
        path = yield within(svc.whenReady())
        self.pids.add(svc.pid)
        return path

    @defer.inlineCallbacks
    def test_ready_set_and_config(self):
        svc = self.make_service()
        path = yield self.start(svc)
        self.assertEqual(path, str(svc.socket_path))
        self.assertEqual(svc.socket_path, self.tmp / "state" / "redis" / "redis.sock")
        replies = yield redis_commands(
            path,
            ("SET", "k", "007"),
            ("GET", "k"),
            ("CONFIG", "GET", "appendfsync"),
            ("CONFIG", "GET", "maxmemory-policy"),
            ("CONFIG", "GET", "appendonly"),
            ("CONFIG", "GET", "port"),
            ("CONFIG", "GET", "save"),
        )
        self.assertEqual(replies[0], "OK")
        self.assertEqual(replies[1], "007")  # convertNumbers=False keeps the string
        self.assertEqual(replies[2], ["appendfsync", "always"])
        self.assertEqual(replies[3], ["maxmemory-policy", "noeviction"])
        self.assertEqual(replies[4], ["appendonly", "yes"])
        self.assertEqual(replies[5], ["port", "0"])
        self.assertEqual(replies[6], ["save", ""])

        redis_dir = svc.directory
        self.assertEqual(stat.S_IMODE(redis_dir.stat().st_mode), 0o700)
        sock = svc.socket_path.stat()
        self.assertTrue(stat.S_ISSOCK(sock.st_mode))
        self.assertEqual(stat.S_IMODE(sock.st_mode), 0o700)
        self.assertTrue((redis_dir / "appendonlydir" / "appendonly.aof.manifest").is_file())
        self.assertEqual(int(svc.pid_path.read_text()), svc.pid)
        self.assertIn("ready to accept connections", svc.log_path.read_text())
        self.assertEqual(stat.S_IMODE(svc.log_path.stat().st_mode), 0o600)

        # whenReady on a ready service fires at once.
        again = yield svc.whenReady()
        self.assertEqual(again, path)

    @defer.inlineCallbacks
    def test_when_ready_before_start(self):
        svc = self.make_service()
        early = svc.whenReady()
        self.assertFalse(early.called)
        path = yield self.start(svc)
        self.assertEqual((yield within(early)), path)

    @defer.inlineCallbacks
    def test_appendfsync_everysec(self):
        svc = self.make_service(appendfsync="everysec")
        path = yield self.start(svc)
        [reply] = yield redis_commands(path, ("CONFIG", "GET", "appendfsync"))
        self.assertEqual(reply, ["appendfsync", "everysec"])

    def test_bad_appendfsync(self):
        with self.assertRaises(ConfigError) as cm:
            ManagedRedis(self.tmp, appendfsync="sometimes")
        self.assertIn("redis.appendfsync", str(cm.exception))

    @defer.inlineCallbacks
    def test_restart_after_kill(self):
        svc = self.make_service()
        path = yield self.start(svc)
        yield redis_commands(path, ("SET", "survivor", "yes"))
        old_pid = svc.pid

        from twisted.logger import formatEvent, globalLogPublisher

        logged: list[str] = []
        observer = lambda event: logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

        restarted = defer.Deferred()
        svc.addReadyObserver(lambda p: restarted.called or restarted.callback(p))
        os.kill(old_pid, signal.SIGKILL)
        yield within(restarted)

        new_pid = svc.pid
        self.pids.add(new_pid)
        self.assertNotEqual(new_pid, old_pid)
        self.assertFalse(redis_alive(old_pid))
        path = yield within(svc.whenReady())
        [value] = yield redis_commands(path, ("GET", "survivor"))
        self.assertEqual(value, "yes")
        self.assertTrue(any(
            f"redis-server (pid {old_pid}) was killed by signal 9 (SIGKILL); restarting it in 0.5s" in line
            for line in logged
        ), logged)

    @defer.inlineCallbacks
    def test_stop(self):
        svc = self.make_service()
        yield self.start(svc)
        pid = svc.pid
        self.assertTrue(redis_alive(pid))
        yield within(svc.stopService())
        self.assertFalse(svc.running)
        self.assertIsNone(svc.pid)
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)  # exited and reaped
        self.assertFalse(svc.socket_path.exists())
        self.assertFalse(svc.pid_path.exists())  # a clean SIGTERM shutdown
        with self.assertRaises(ManagedRedisError):
            yield svc.whenReady()

    @defer.inlineCallbacks
    def test_stop_and_start_again(self):
        svc = self.make_service()
        path = yield self.start(svc)
        yield redis_commands(path, ("SET", "kept", "1"))
        yield within(svc.stopService())
        path = yield self.start(svc)
        [value] = yield redis_commands(path, ("GET", "kept"))
        self.assertEqual(value, "1")

    @defer.inlineCallbacks
    def test_stale_redis_is_replaced(self):
        svc = self.make_service()
        directory = svc.directory
        directory.mkdir(parents=True, mode=0o700)
        # A redis-server as a previous, killed daemon left it: same socket,
        # pidfile and AOF directory, no longer our child.
        subprocess.run(
            [svc.executable, "--port", "0", "--unixsocket", str(svc.socket_path),
             "--unixsocketperm", "700", "--dir", str(directory), "--pidfile", str(svc.pid_path),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--daemonize", "yes", "--logfile", str(directory / "stale.log")],
            check=True, cwd=directory,
        )
        yield wait_for_ping(str(svc.socket_path))
        stale_pid = int(svc.pid_path.read_text())
        self.pids.add(stale_pid)
        self.assertTrue(redis_alive(stale_pid))
        yield redis_commands(str(svc.socket_path), ("SET", "from-stale", "kept"))

        path = yield self.start(svc)
        self.assertFalse(redis_alive(stale_pid))
        self.assertNotEqual(svc.pid, stale_pid)
        [value] = yield redis_commands(path, ("GET", "from-stale"))
        self.assertEqual(value, "kept")

    @defer.inlineCallbacks
    def test_pidfile_naming_another_process_is_ignored(self):
        svc = self.make_service()
        svc.directory.mkdir(parents=True, mode=0o700)
        svc.pid_path.write_text(f"{os.getpid()}\n")  # not a redis-server
        yield self.start(svc)

    @defer.inlineCallbacks
    def test_second_daemon_on_same_directory(self):
        svc = self.make_service()
        yield self.start(svc)
        other = ManagedRedis(self.tmp / "state")
        with self.assertRaises(ConfigError) as cm:
            other.startService()
        self.assertIn("server.state_dir", str(cm.exception))
        self.assertIn(f"pid {os.getpid()}", str(cm.exception))
        self.assertTrue(redis_alive(svc.pid))

    def fake_redis(self, body: str) -> str:
        script = self.tmp / "fake-redis-server"
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
        return str(script)

    @defer.inlineCallbacks
    def test_exit_before_ready_reports_tail(self):
        exe = self.fake_redis('echo "*** FATAL CONFIG FILE ERROR (Redis 7.0.15) ***" >&2\nexit 1\n')
        svc = self.make_service(executable=exe)
        svc.startService()
        with self.assertRaises(ManagedRedisError) as cm:
            yield within(svc.whenReady())
        message = str(cm.exception)
        self.assertIn("exited with status 1 before it was ready", message)
        self.assertIn("FATAL CONFIG FILE ERROR", message)
        self.flushLoggedErrors()
        yield within(svc.stopService())  # cancels the pending restart

    @defer.inlineCallbacks
    def test_ready_timeout_reports_tail(self):
        exe = self.fake_redis('echo "stuck starting up"\nexec sleep 600\n')
        svc = self.make_service(executable=exe, ready_timeout=0.5)
        svc.startService()
        with self.assertRaises(ManagedRedisError) as cm:
            yield within(svc.whenReady())
        message = str(cm.exception)
        self.assertIn("did not answer PING", message)
        self.assertIn("within 0.5s", message)
        self.assertIn("stuck starting up", message)
        yield within(svc.stopService())  # SIGTERM ends the sleep
        self.assertIsNone(svc.pid)


# -- no reactor needed -------------------------------------------------------------


def test_find_redis_server_default():
    assert find_redis_server() == os.path.abspath(shutil.which("redis-server"))


def test_missing_executable_named(tmp_path):
    with pytest.raises(ConfigError) as info:
        find_redis_server(str(tmp_path / "no-such-redis-server"))
    message = str(info.value)
    assert message.startswith("redis.url: managed mode needs redis-server")
    assert "apt-get install redis-server" in message
    assert "\n" not in message


def test_missing_executable_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redisproc, "_SEARCH_DIRS", ())
    with pytest.raises(ConfigError) as info:
        ManagedRedis(Path("/tmp/x"))
    assert str(info.value) == (
        "redis.url: managed mode needs redis-server, which is not installed; install it with "
        "`apt-get install redis-server`, or set redis.url to an external Redis"
    )


def test_socket_path_too_long():
    long_dir = Path("/tmp") / ("d" * 100)
    with pytest.raises(ConfigError) as info:
        ManagedRedis(long_dir)
    message = str(info.value)
    assert message.startswith("server.state_dir: ")
    assert "shorter path" in message
    assert "\n" not in message


def test_socket_path_at_limit_is_accepted():
    # /tmp/<name>/redis/redis.sock == 107 bytes exactly
    name = "d" * (107 - len("/tmp//redis/redis.sock"))
    svc = ManagedRedis(Path("/tmp") / name)
    assert len(str(svc.socket_path)) == 107


def test_import_does_not_install_reactor():
    code = (
        "import sys, mailrelay.redisproc, mailrelay.tlsutil\n"
        "assert 'twisted.internet.reactor' not in sys.modules\n"
        "assert 'txredisapi' not in sys.modules\n"
    )
    subprocess.run([os.sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
