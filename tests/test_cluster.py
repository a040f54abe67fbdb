"""
Several daemons on one Redis (mailrelay.services.cluster): heartbeats and `mailrelay cluster`, the data
format version (a daemon refuses newer data; `mailrelay migrate`), and submission-side
de-duplication ([submission] dedupe_window). Real daemons and redis-server; the migration
mechanism also in-process, with a registry of fake steps.
"""

from __future__ import annotations

import json
import os
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from conftest import start_redis, wait_until
from redisclient import RedisClient

from mailrelay.store import Storage

ROOT = Path(__file__).resolve().parent.parent
QUEUED = re.compile(r"^2\.0\.0 Ok: queued as ([0-9a-f]{20})")
TRUSTED = {"trusted_networks": ["127.0.0.0/8"]}
NO_WEB = {"listen": []}
#: The data format version of this code (the tests hold for 1 and 2: issue 18 moves it to 2).
VERSION = Storage.DATA_VERSION


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", *args, "-c", str(config_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def submit(port: int, message_id: str | None = None, rcpt: str = "x@example.test") -> tuple[int, str]:
    header = f"Message-ID: {message_id}\r\n" if message_id else ""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        assert s.mail("app@example.com")[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(f"{header}From: app@example.com\r\nSubject: hi\r\n\r\nHello.\r\n".encode())
    return code, text.decode()


def queued_id(reply: tuple[int, str]) -> str:
    code, text = reply
    assert code == 250, reply
    return QUEUED.search(text).group(1)


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- heartbeats and `mailrelay cluster` -------------------------------------------------------


def test_cluster_lists_live_daemons(start_daemon, daemon_config, redis_server, unique_prefix, tmp_path):
    daemons = []
    for name in ("a", "b"):
        config = daemon_config(redis_server, unique_prefix, server={"state_dir": str(tmp_path / name / "state")},
                               submission={**TRUSTED, "listen_tls": []}, web=NO_WEB,
                               delivery={"smarthost": "127.0.0.1:9", "smarthost_tls": "none"})
        daemons.append(start_daemon(config, tmp_path / name))
    a, b = daemons
    client = redis_server.client()
    owners = [m.decode() for m in client.command("ZRANGE", f"{unique_prefix}cluster", 0, -1)]
    assert len(owners) == 2
    for owner in owners:
        fields = dict(zip(*[iter(x.decode() for x in client.command("HGETALL", f"{unique_prefix}cluster:{owner}"))] * 2))
        assert fields["version"] and fields["data_version"] == str(VERSION) and int(fields["pid"]) in (a.pid, b.pid)
        assert json.loads(fields["listeners"])[0].startswith("submission 127.0.0.1:")
        assert 0 < client.command("PTTL", f"{unique_prefix}cluster:{owner}") <= 15_000

    result = cli(a.config_path, "cluster")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["DAEMON", "VERSION", "UP", "BEAT", "DELIVERING", "LISTENERS"]
    for d in (a, b):
        row = next(line for line in lines if f":{d.pid}:" in line)
        assert re.search(rf"0\.\d+\.\d+/data {VERSION} .* \d+\.\ds ago +0 jobs +submission 127\.0\.0\.1:"
                         f"{d.ports['submission']}", row), row
    assert lines[-1] == f"2 live daemons; data format version {VERSION} (this mailrelay: {VERSION})"

    # a clean stop leaves the cluster at once
    b.stop()
    lines = cli(a.config_path, "cluster").stdout.splitlines()
    assert not [line for line in lines if f":{b.pid}:" in line]
    assert lines[-1].startswith("1 live daemon;")


def test_cluster_shows_what_a_daemon_delivers(start_daemon, daemon_config, redis_server, unique_prefix,
                                              tmp_path):
    import socket

    silent = socket.socket()   # accepts, never answers: the jobs stay leased
    silent.bind(("127.0.0.1", 0))
    silent.listen(10)
    try:
        d = start_daemon(daemon_config(redis_server, unique_prefix, submission=TRUSTED, web=NO_WEB,
                                       delivery={"smarthost": f"127.0.0.1:{silent.getsockname()[1]}",
                                                 "smarthost_tls": "none", "command_timeout": "1h"}))
        for n in range(3):
            queued_id(submit(d.ports["submission"], rcpt=f"r{n}@slow.test"))
        # the jobs may be claimed in several batches: wait for claim lines adding up to 3
        claims = r"claimed (\d+) job\(s\) for slow\.test"
        while sum(int(m[1]) for m in d.find_lines(claims)) < 3:
            d.wait_for_matches(claims, len(d.find_lines(claims)) + 1, timeout=15)
        # ... and for the heartbeat that records them (every 5s)
        d.wait_for_matches(r"heartbeat recorded: 3 job\(s\) held", timeout=15)
        out = cli(d.config_path, "cluster").stdout
        assert "3 jobs (slow.test 3)" in out, out
    finally:
        silent.close()


def test_cluster_command_writes_nothing(daemon_config, redis_server, unique_prefix, tmp_path):
    config = write_config(tmp_path / "m.toml", daemon_config(redis_server, unique_prefix))
    result = cli(config, "cluster")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == ("0 live daemons; data format version not recorded yet "
                                              f"(this mailrelay: {VERSION})")
    assert redis_server.client().command("KEYS", f"{unique_prefix}*") == []


def test_cluster_without_redis_is_one_line(tmp_path):
    config = write_config(tmp_path / "m.toml", '[redis]\nurl = "redis://127.0.0.1:1/0"\ntimeout = "1s"\n')
    result = cli(config, "cluster")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("mailrelay: "), result.stderr


# -- data format version --------------------------------------------------------------------


def test_daemon_sets_version_on_empty_data(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix, web=NO_WEB))
    assert redis_server.client().command("GET", f"{unique_prefix}meta:version") == str(VERSION).encode()
    assert d.find_lines(rf"is new: data format version {VERSION}")


def test_daemon_refuses_newer_data(start_daemon, daemon_config, redis_server, unique_prefix):
    redis_server.client().command("SET", f"{unique_prefix}meta:version", VERSION + 1)
    d = start_daemon(daemon_config(redis_server, unique_prefix, web=NO_WEB), wait_ready=False)
    assert d.wait(30) == 1
    lines = d.find_lines(r"could not start: .*")
    assert len(lines) == 1
    assert re.search(rf"has data format version {VERSION + 1}, newer than this mailrelay understands "
                     rf"\({VERSION}\): upgrade mailrelay$", lines[0].group(0))
    assert not d.find_lines(r"listening on|Traceback")


def test_daemon_refuses_newer_data_found_after_redis_comes_back(start_daemon, daemon_config, tmp_path):
    """Redis down at start: the check runs as soon as it answers, and stops the daemon."""
    import shutil

    from conftest import RedisServer, _free_port, _wait_for_pong

    port = _free_port("127.0.0.1")
    d = start_daemon(daemon_config(f"redis://127.0.0.1:{port}/0", "v:", web=NO_WEB,
                                   redis={"timeout": "1s"}))
    assert d.find_lines(r"could not check the Redis data format version")
    # Redis comes back already holding newer data: it starts with TCP off and a unix socket,
    # gets the version through the socket, and only then opens the daemon's port (Redis 7:
    # CONFIG SET port), so the daemon can never find it empty and record a version of its own.
    unix_path = str(tmp_path / "redis.sock")
    process = subprocess.Popen([shutil.which("redis-server"), "--port", "0", "--unixsocket", unix_path,
                                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer("127.0.0.1", port, process, tmp_path, unix_path, tmp_path / "none.log")
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(unix_path):
            assert process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)  # polling for the socket file to appear, with a deadline
        with RedisClient(unix_path=unix_path) as c:
            c.command("SET", "v:meta:version", 7)
            c.command("CONFIG", "SET", "port", str(port))
        assert _wait_for_pong(server, 10)
        assert d.wait(30) == 1
        assert d.find_lines(r"mailrelay stops: .* has data format version 7, newer than this mailrelay")
    finally:
        server.stop()


def test_data_of_the_version_before_runs_and_migrate_moves_it(start_daemon, daemon_config, redis_server,
                                                                 unique_prefix):
    """Data of the version before (a rolling upgrade): the daemon runs on it, and `mailrelay
    migrate` (refused while a daemon of the previous release lives) runs the step. From data
    version 1 to 2 the step copies the archive into PostgreSQL: tests/test_migrate_archive.py
    has the copy itself, on data release 1 wrote."""
    before = VERSION - 1
    client = redis_server.client()
    if before:
        client.command("SET", f"{unique_prefix}meta:version", before)
    client.command("ZADD", f"{unique_prefix}idx:time", 1, "00000000000000000000")  # data (its hash gone)
    d = start_daemon(daemon_config(redis_server, unique_prefix, web=NO_WEB))
    assert d.find_lines(rf"has data format version {before} \(this mailrelay writes {VERSION}\): run "
                        r"`mailrelay migrate`")

    # a live daemon that understands only the version before blocks the migration (without --force)
    client.command("HSET", f"{unique_prefix}cluster:old:1:x", "version", "0.0.9", "data_version", before,
                   "beat", int(time.time() * 1000), "started", 1)
    client.command("ZADD", f"{unique_prefix}cluster", int(time.time() * 1000), "old:1:x")
    blocked = cli(d.config_path, "migrate")
    assert blocked.returncode == 1
    assert blocked.stderr.strip().endswith(f"live daemons do not understand data version {VERSION} yet: "
                                           f"old:1:x (mailrelay 0.0.9, data version {before}); upgrade them "
                                           "first (or use --force)")
    assert client.command("GET", f"{unique_prefix}meta:version") == (str(before).encode() if before else None)
    client.command("DEL", f"{unique_prefix}cluster:old:1:x")

    result = cli(d.config_path, "migrate")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"data version {before} -> {VERSION}: {Storage.MIGRATIONS[before][0]}"
    assert lines[-1] == f"migrated from data format version {before} to {VERSION}"
    if VERSION == 2:
        assert lines[1:-1] == ["copying 1 message and 0 bounces from Redis into PostgreSQL",
                               "copied 0 messages (1 already expired in Redis) and 0 bounces"]
    assert client.command("GET", f"{unique_prefix}meta:version") == str(VERSION).encode()
    assert client.command("EXISTS", f"{unique_prefix}meta:migrating") == 0
    assert cli(d.config_path, "migrate").stdout == f"data format version {VERSION}: nothing to migrate\n"


@pytest.mark.skipif(VERSION < 2, reason="data without a version is the version before version 1")
def test_unversioned_data_is_refused_until_migrated(start_daemon, daemon_config, redis_server, unique_prefix):
    """Data written before versions existed (version 0) is two steps behind: the daemon refuses it,
    and `mailrelay migrate` runs both steps."""
    client = redis_server.client()
    client.command("ZADD", f"{unique_prefix}idx:time", 1, "00000000000000000000")  # data, no version
    config = daemon_config(redis_server, unique_prefix, web=NO_WEB)
    d = start_daemon(config, wait_ready=False)
    assert d.wait(30) == 1
    assert d.find_lines(rf"has data format version 0, too old for this mailrelay \({VERSION}\): run "
                        r"`mailrelay migrate -c FILE` first")
    assert client.command("GET", f"{unique_prefix}meta:version") is None

    result = cli(d.config_path, "migrate")
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        "data version 0 -> 1", "data version 1 -> 2", "copying 1 message and 0 bounces from Redis into PostgreSQL",
        "copied 0 messages (1 already expired in Redis) and 0 bounces", "migrated from data format version 0 to 2"]
    assert client.command("GET", f"{unique_prefix}meta:version") == b"2"


def test_migrate_refuses_newer_data(daemon_config, redis_server, unique_prefix, tmp_path):
    redis_server.client().command("SET", f"{unique_prefix}meta:version", VERSION + 1)
    config = write_config(tmp_path / "m.toml", daemon_config(redis_server, unique_prefix))
    result = cli(config, "migrate")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f"newer than this mailrelay understands ({VERSION}): upgrade mailrelay")


class MigrationMechanism(unittest.TestCase):
    """The registry and the step runner, with fake steps 1 -> 2 -> 3 on a real Redis."""

    timeout = 30

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        cls.tmp = tempfile.mkdtemp(prefix="migrations-")
        cls.redis = start_redis(Path(cls.tmp))

    @classmethod
    def tearDownClass(cls) -> None:
        import shutil

        cls.redis.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def storage(self, cls):
        from mailrelay.config import parse_config
        from mailrelay.store import connect_redis

        config = parse_config({"redis": {"url": self.redis.url, "key_prefix": f"t{uuid4().hex[:8]}:"}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        return cls(config, redis)

    def fake_storage(self, fail_at: int | None = None):
        from mailrelay.store import Storage

        class Fake(Storage):
            DATA_VERSION = 3
            ARCHIVE_STEPS = frozenset()  # the fake steps write no archive
            MIGRATIONS = {**Storage.MIGRATIONS,
                          1: ("rename the widgets", "_step_1"),
                          2: ("count the widgets", "_step_2")}
            ran: list[int] = []

            async def _step_1(self, context) -> None:
                self.ran.append(1)
                if fail_at == 1:
                    raise RuntimeError("step 1 failed")
                await self._call("SET", self.keys.prefix + "widgets", "renamed")

            async def _step_2(self, context) -> None:
                self.ran.append(2)
                await self._call("SET", self.keys.prefix + "widgets:count", 1)

        return self.storage(Fake)

    @defer.inlineCallbacks
    def test_steps_run_in_order_and_bump_the_version(self):
        storage = self.fake_storage()
        yield storage._call("SET", storage.keys.prefix + "meta:version", 1)
        reported = []
        steps = yield defer.ensureDeferred(storage.migrate(report=reported.append))
        self.assertEqual([(a, b) for a, b, _ in steps], [(1, 2), (2, 3)])
        self.assertEqual(storage.ran, [1, 2])
        self.assertEqual(reported, ["data version 1 -> 2: rename the widgets",
                                    "data version 2 -> 3: count the widgets"])
        version = yield storage._call("GET", storage.keys.prefix + "meta:version")
        self.assertEqual(version, b"3")
        steps = yield defer.ensureDeferred(storage.migrate())
        self.assertEqual(steps, [])

    @defer.inlineCallbacks
    def test_from_unversioned_data_runs_every_step(self):
        storage = self.fake_storage()
        yield storage._call("ZADD", storage.keys.prefix + "idx:time", 1, "x")
        steps = yield defer.ensureDeferred(storage.migrate())
        self.assertEqual([(a, b) for a, b, _ in steps], [(0, 1), (1, 2), (2, 3)])

    @defer.inlineCallbacks
    def test_a_failed_step_keeps_the_version_and_the_next_run_resumes(self):
        storage = self.fake_storage(fail_at=1)
        yield storage._call("SET", storage.keys.prefix + "meta:version", 1)
        with self.assertRaises(RuntimeError):
            yield defer.ensureDeferred(storage.migrate())
        version = yield storage._call("GET", storage.keys.prefix + "meta:version")
        self.assertEqual(version, b"1")
        lock = yield storage._call("EXISTS", storage.keys.prefix + "meta:migrating")
        self.assertEqual(lock, 0)

    @defer.inlineCallbacks
    def test_a_long_step_keeps_the_lock_and_stops_when_it_was_lost(self):
        from mailrelay.store import Storage

        class Long(Storage):
            DATA_VERSION = 2
            ARCHIVE_STEPS = frozenset()
            MIGRATIONS = {1: ("a long step", "_long")}
            ttls: list[int] = []

            async def _long(self, context) -> None:
                lock = self.keys.migration_lock
                await self._call("EXPIRE", lock, 5)
                await context.keep_lock()  # renewed to the full hour
                self.ttls.append(await self._call("TTL", lock))
                await self._call("SET", lock, "another migrate")  # taken over (ours had expired)
                await context.keep_lock()

        storage = self.storage(Long)
        yield storage._call("SET", storage.keys.prefix + "meta:version", 1)
        with self.assertRaisesRegex(Storage.DataVersionError, "the migration lost its lock"):
            yield defer.ensureDeferred(storage.migrate())
        self.assertGreater(storage.ttls[0], 3500)
        version = yield storage._call("GET", storage.keys.prefix + "meta:version")
        self.assertEqual(version, b"1")
        holder = yield storage._call("GET", storage.keys.migration_lock)
        self.assertEqual(holder, b"another migrate")  # not ours: left alone

    @defer.inlineCallbacks
    def test_a_missing_step_and_a_concurrent_migration_are_refused(self):
        from mailrelay.store import Storage

        class Gap(Storage):
            DATA_VERSION = 3

        storage = self.storage(Gap)
        yield storage._call("SET", storage.keys.prefix + "meta:version", 1)
        with self.assertRaisesRegex(Storage.DataVersionError, "no migration step from data version 2"):
            yield defer.ensureDeferred(storage.migrate())
        yield storage._call("SET", storage.keys.prefix + "meta:migrating", "someone")
        with self.assertRaisesRegex(Storage.DataVersionError, "another `mailrelay migrate` is running"):
            yield defer.ensureDeferred(storage.migrate())

    @defer.inlineCallbacks
    def test_daemon_check_accepts_one_version_step(self):
        from mailrelay.store import Storage

        storage = self.fake_storage()   # understands 3: starts on 2 and 3, refuses 1 and 4
        key = storage.keys.prefix + "meta:version"
        for stored, ok in ((2, True), (3, True), (1, False), (4, False)):
            yield storage._call("SET", key, stored)
            if ok:
                version = yield defer.ensureDeferred(storage.check_data_version())
                self.assertEqual(version, stored)
            else:
                with self.assertRaises(Storage.DataVersionError):
                    yield defer.ensureDeferred(storage.check_data_version())

    @defer.inlineCallbacks
    def test_the_heartbeat_says_whether_the_archive_is_read_from_postgresql(self):
        from twisted.application import service

        from mailrelay.config import parse_config
        from mailrelay.services.cluster import ClusterService
        from mailrelay.store.cluster import ARCHIVE_IN_POSTGRES_VERSION
        from mailrelay.store import Storage

        storage = self.storage(Storage)
        cluster = ClusterService(parse_config({}), lambda: storage, service.MultiService())
        self.assertFalse(cluster.archive_in_postgres())   # before the first heartbeat: Redis
        key = storage.keys.prefix + "meta:version"
        for stored, in_postgres in ((ARCHIVE_IN_POSTGRES_VERSION - 1, False),
                                    (ARCHIVE_IN_POSTGRES_VERSION, True)):
            yield storage._call("SET", key, stored)
            yield cluster.beat()
            self.assertEqual(cluster.stored_data_version, stored)
            self.assertEqual(cluster.archive_in_postgres(), in_postgres)


# -- [submission] dedupe_window ---------------------------------------------------------------


@pytest.fixture
def dedupe_daemon(start_daemon, daemon_config, redis_server, unique_prefix):
    return start_daemon(daemon_config(redis_server, unique_prefix, web=NO_WEB,
                                      submission={**TRUSTED, "dedupe_window": "2s"},
                                      delivery={"enabled": False}))


def test_dedupe_answers_250_with_the_first_id(dedupe_daemon, redis_server, unique_prefix):
    port = dedupe_daemon.ports["submission"]
    first = queued_id(submit(port, "<order-1@app.test>"))
    code, text = submit(port, "<order-1@app.test>")
    assert code == 250 and text == (f"2.0.0 Ok: queued as {first} (same Message-ID as a message "
                                    "already queued: not queued again)")
    assert queued_id(submit(port, "<order-2@app.test>")) != first
    # without a Message-ID of its own, a message is never a duplicate
    assert queued_id(submit(port)) != queued_id(submit(port))
    client = redis_server.client()
    assert client.command("ZCARD", f"{unique_prefix}idx:time") == 4
    assert len(dedupe_daemon.find_lines(rf"not queued again: same Message-ID as {first}")) == 1
    # after the window, the same Message-ID is queued again. Not synchronisation: the 2s
    # window must really pass (it is kept by Redis and the daemon, whose clocks cannot be driven).
    time.sleep(2.2)
    assert queued_id(submit(port, "<order-1@app.test>")) != first


def test_dedupe_is_per_user(start_daemon, daemon_config, redis_server, unique_prefix):
    from mailrelay.passwords import hash_password

    users = {name: hash_password("secret-" + name, log_n=4) for name in ("app1", "app2")}
    d = start_daemon(daemon_config(redis_server, unique_prefix, web=NO_WEB, delivery={"enabled": False},
                                   submission={"users": users, "require_tls_for_auth": False,
                                               "dedupe_window": "1m"}))
    ids = []
    for user in ("app1", "app1", "app2"):
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
            s.ehlo()
            s.login(user, "secret-" + user)
            s.mail("app@example.com")
            s.rcpt("x@example.test")
            code, text = s.data(b"Message-ID: <same@app.test>\r\nSubject: x\r\n\r\nHi\r\n")
            ids.append(queued_id((code, text.decode())))
    assert ids[0] == ids[1] != ids[2]


def test_dedupe_of_a_deleted_message_queues_again(dedupe_daemon, redis_server, unique_prefix):
    """A key naming a message that no longer exists (cancelled, expired) does not block."""
    port = dedupe_daemon.ports["submission"]
    first = queued_id(submit(port, "<gone@app.test>"))
    redis_server.client().command("DEL", f"{unique_prefix}msg:{first}")
    assert queued_id(submit(port, "<gone@app.test>")) != first


def test_dedupe_with_min_replicas_waits_for_the_replica_too(start_daemon, daemon_config, tmp_path):
    """A duplicate is answered 250 only when a replica has the first message as well."""
    primary = start_redis(tmp_path / "primary", extra_args=("--repl-diskless-sync-delay", "0"))
    replica = start_redis(tmp_path / "replica", extra_args=("--repl-diskless-sync-delay", "0", "--replicaof",
                                                            "127.0.0.1", str(primary.port)))
    try:
        # WAIT blocks until the replica has synced and acknowledged a write on the primary
        with primary.client(timeout=30) as c:
            c.command("SET", "test-synced", "1")
            assert c.command("WAIT", 1, 20000) == 1, "the replica did not sync"
        assert b"master_link_status:up" in replica.client().command("INFO", "replication")
        d = start_daemon(daemon_config(primary, "r:", web=NO_WEB, delivery={"enabled": False},
                                       redis={"min_replicas": 1, "min_replicas_timeout": "500ms"},
                                       submission={**TRUSTED, "dedupe_window": "1m"}))
        port = d.ports["submission"]
        first = queued_id(submit(port, "<once@app.test>"))
        assert queued_id(submit(port, "<once@app.test>")) == first
        assert replica.client().command("EXISTS", f"r:msg:{first}") == 1
        # until the first message is settled (20 ms after its 250), a duplicate is answered as
        # the original was, whatever WAIT says: let that settlement happen before the replica goes
        wait_until(lambda: primary.client().command("HEXISTS", f"r:msg:{first}", "unsettled") == 0,
                   10, "the first message's settlement")
        replica.stop()
        assert submit(port, "<once@app.test>")[0] == 451   # WAIT could not confirm: no 250
        assert submit(port, "<new@app.test>")[0] == 451
        assert primary.client().command("EXISTS", "r:msg:" + first) == 1   # the first one stays
    finally:
        replica.stop()
        primary.stop()
