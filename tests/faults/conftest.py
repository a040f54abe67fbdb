"""
Shared helpers of the fault-injection suite (tests/faults/): daemons on fixed ports that can be
killed and restarted, a load of SMTP clients in threads (as fast as the daemons take it, or at a
given rate; each transaction timed), the smtp-sink ledger of what arrived, Redis servers that can
be stopped, replicated and watched by Sentinels, a PostgreSQL of the test's own that it can stop
(``own_postgres``), and the summary line.

Scale: quick by default (each test a few hundred to a thousand messages, outages of seconds);
``MAILRELAY_FAULTS_FULL=1`` runs the full-scale variants (5,000 messages, a 10 s Redis outage).
Seed: every test prints ``seed=N``; ``MAILRELAY_FAULTS_SEED=N`` replays the same random
choices (message order, kill moments and victims). Timing still varies from run to run, so a
replay reproduces the plan of faults, not the exact interleaving.

Accounting (every message carries a unique Message-ID, ``X-Fault-Seq`` and a trailer line):
    sent          messages the load had to hand over (each until it got a 250)
    acknowledged  distinct mailrelay ids the clients got in a 250 reply
    delivered     of those, the ids that arrived at smtp-sink (a dump with the trailer)
    lost          acknowledged ids that never arrived (must be 0)
    duplicates    extra deliveries of one mailrelay id (the delivery-side window: a remote
                  250 the dying daemon had not recorded yet)
    msg_dups      Message-IDs that arrived under more than one mailrelay id (a client retried
                  a message whose 250 it never saw; [submission] dedupe_window prevents it)
    unacked_delivered  ids that arrived although no client got a 250 for them (a 451'd message
                  Redis had stored; must be 0 while the daemons live: test_ack_stall.py)
    451s          temporary refusals the clients got (retried)
    drops         connections that failed or were closed under the client (retried elsewhere)
"""

from __future__ import annotations

import collections
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

TESTS = Path(__file__).resolve().parent.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from conftest import (Daemon, RedisServer, _free_port, _wait_for_pong, daemon_command,  # noqa: E402
                      render_toml, toml_value)
from pgserver import PostgresServer, start_postgres  # noqa: E402
from peers import Sink  # noqa: E402
from redisclient import RedisClient, RedisError  # noqa: E402

FULL = os.environ.get("MAILRELAY_FAULTS_FULL", "") not in ("", "0")
QUEUED = re.compile(r"queued as ([0-9a-f]{20})")
SENDER = "app@faults.test"


def scale(quick: Any, full: Any) -> Any:
    """The quick value, or the full-scale one under MAILRELAY_FAULTS_FULL=1."""
    return full if FULL else quick


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- seeds and reports ------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


@pytest.fixture
def seed(request) -> int:
    value = os.environ.get("MAILRELAY_FAULTS_SEED")
    number = int(value) if value else random.SystemRandom().randrange(1 << 31)
    print(f"\n{request.node.name}: seed={number} ({'full' if FULL else 'quick'} scale; replay with "
          f"MAILRELAY_FAULTS_SEED={number})", flush=True)
    return number


def failed(request) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


# -- daemons on fixed ports -------------------------------------------------------------------


def free_port() -> int:
    return _free_port("127.0.0.1")


class Slot:
    """One daemon position: a fixed submission port and directory; its process can be killed,
    stopped and started again (each run's log kept for the failure report)."""

    def __init__(self, name: str, directory: Path, config_text: Callable[[int, Path], str]) -> None:
        self.name = name
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_text = config_text
        self.runs: list[Daemon] = []
        self.lock = threading.Lock()

    @property
    def daemon(self) -> Daemon | None:
        return self.runs[-1] if self.runs else None

    @property
    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running

    def start(self, timeout: float = 60) -> Daemon:
        config_path = self.dir / "mailrelay.toml"
        config_path.write_text(self.config_text(self.port, self.dir / "state"))
        for attempt in range(20):
            daemon = Daemon(daemon_command(config_path), cwd=self.dir, config_path=config_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
            self.runs.append(daemon)
            try:
                return daemon.wait_until_ready(timeout)
            except AssertionError:
                # the port may still be held by the previous process' last connections
                if daemon.running or not daemon.find_lines(r"Address already in use|CannotListen"):
                    raise
                time.sleep(0.25)
        raise AssertionError(f"daemon {self.name} could not listen on {self.port}")

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> int | None:
        daemon = self.daemon
        if daemon is None or not daemon.running:
            return None
        return daemon.stop(sig, timeout)

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for n, daemon in enumerate(self.runs):
            text = daemon.log_text().splitlines()
            out.append(f"--- daemon {self.name} run {n} pid {daemon.pid} exit {daemon.returncode} "
                       f"({len(text)} lines; last {min(lines, len(text))}) ---")
            out += text[-lines:]
        return "\n".join(out)

    def save_logs(self) -> Path:
        path = self.dir / "daemon-logs.txt"
        with open(path, "w") as f:
            for n, daemon in enumerate(self.runs):
                f.write(f"--- daemon {self.name} run {n} pid {daemon.pid} exit {daemon.returncode} ---\n")
                f.write(daemon.log_text())
        return path


def daemon_toml(*, redis: dict[str, Any], port: int, state_dir: Path, sink_port: int,
                **overrides: dict[str, Any]) -> str:
    """A fault-test daemon: plain submission on ``port`` (trusted 127.0.0.0/8, no TLS
    listener, no web), delivery to smtp-sink as smarthost, short leases and timers."""
    sections: dict[str, dict[str, Any]] = {
        "server": {"state_dir": str(state_dir), "hostname": "relay.faults.test"},
        "redis": {"timeout": "2s", **redis},
        "submission": {"listen": [f"tcp:{port}:interface=127.0.0.1:backlog=200"], "listen_tls": [],
                       "trusted_networks": ["127.0.0.0/8"], "max_connections_per_ip": 500},
        "delivery": {"smarthost": f"127.0.0.1:{sink_port}", "smarthost_tls": "none",
                     "lease_timeout": "3s", "retry_schedule": ["1s"], "connect_timeout": "5s",
                     "command_timeout": "10s", "idle_timeout": "2s"},
        "web": {"listen": []},
    }
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    return render_toml(sections)


def with_archive(config_text: Callable[[int, Path], str], url: str) -> Callable[[int, Path], str]:
    """``config_text`` with ``[archive] url = url`` added, unless it has an ``[archive]`` table."""

    def text(port: int, state_dir: Path) -> str:
        base = config_text(port, state_dir)
        if re.search(r"^\[archive\]", base, re.M):
            return base
        return base + f"\n[archive]\nurl = {toml_value(url)}\n"
    return text


@pytest.fixture
def slots(request, tmp_path, archive_databases) -> Any:
    """Factory: ``slots(n, config_text(port, state_dir) -> str) -> [Slot]`` (not started).
    The test's daemons share one archive database (``archive_databases()``, a copy of the
    migrated template) unless their configuration has an ``[archive]`` table.
    Every process is stopped at the end; on failure the tails of their logs are printed."""
    made: list[Slot] = []

    def make(n: int, config_text: Callable[[int, Path], str]) -> list[Slot]:
        config_text = with_archive(config_text, archive_databases())
        new = [Slot(chr(ord("a") + len(made) + i), tmp_path / f"daemon-{chr(ord('a') + len(made) + i)}",
                    config_text) for i in range(n)]
        made.extend(new)
        return new

    yield make
    for slot in made:
        slot.kill(signal.SIGTERM, 30)
    if failed(request):
        for slot in made:
            print(slot.log_tail(), flush=True)
            print(f"(whole log: {slot.save_logs()})", flush=True)


# -- the sink ----------------------------------------------------------------------------------


class Ledger:
    """What smtp-sink received: mailrelay id -> deliveries, Message-ID -> mailrelay ids.
    Only complete dumps count (the message's last line, the trailer, is in the file)."""

    ID = re.compile(rb"^X-Mailrelay-ID: ([0-9a-f]{20})\s*$", re.M | re.I)
    MSGID = re.compile(rb"^Message-ID: <([^>]+)>\s*$", re.M | re.I)
    TRAILER = re.compile(rb"^end of fault message (\d+)\s*$", re.M)

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.seen: set[str] = set()
        self.deliveries: collections.Counter[str] = collections.Counter()
        self.by_message_id: dict[str, set[str]] = collections.defaultdict(set)

    def scan(self) -> None:
        for entry in os.scandir(self.sink.dir):
            if entry.name in self.seen:
                continue
            try:
                data = open(entry.path, "rb").read()
            except OSError:
                continue
            if not self.TRAILER.search(data):
                continue  # still being written
            self.seen.add(entry.name)
            found = self.ID.search(data)
            if found is None:
                continue
            mid = found.group(1).decode()
            self.deliveries[mid] += 1
            message_id = self.MSGID.search(data)
            if message_id:
                self.by_message_id[message_id.group(1).decode()].add(mid)

    def delivered(self, ids: set[str]) -> set[str]:
        self.scan()
        return {i for i in ids if self.deliveries[i]}


# -- the load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """``total`` messages handed over by ``threads`` smtplib clients, each until it gets a 250.

    Client ``i`` starts on daemon ``ports()[i % n]`` and moves to the next one when its
    connection fails; a message that got anything but 250 is queued again (after a short
    pause). Every reply code of MAIL, RCPT and DATA is counted in ``codes``. With ``rate``
    (messages per second), the k-th message taken is not sent before ``k / rate`` seconds
    after the start: a load spread over a known time instead of as fast as the daemons go.
    """

    ports: Callable[[], list[int]]
    total: int
    threads: int
    seed: int
    tag: str = "f"
    pause: float = 0.05
    rate: float = 0.0
    acked: dict[int, str] = field(default_factory=dict)          # seq -> mailrelay id
    codes: collections.Counter = field(default_factory=collections.Counter)
    drops: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    #: Every transaction that got a reply (MAIL to the DATA reply, or to the first refusal):
    #: (its start, time.monotonic(); the seconds it took; that reply's code). Connections
    #: that failed mid-transaction are counted in ``drops`` only.
    transactions: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        order = list(range(self.total))
        random.Random(self.seed).shuffle(order)
        self._todo: collections.deque[int] = collections.deque(order)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._taken = 0
        self._workers: list[threading.Thread] = []
        self.started = self.finished = 0.0

    def message_id(self, n: int) -> str:
        return f"{n}.{self.tag}.{self.seed}@faults.test"

    def content(self, n: int) -> bytes:
        return (f"From: {SENDER}\r\nTo: r{n % 50}@example.test\r\nSubject: fault test {n}\r\n"
                f"Message-ID: <{self.message_id(n)}>\r\nX-Fault-Seq: {n}\r\n\r\n"
                f"Message {n} of {self.total} (seed {self.seed}).\r\n"
                + "Some text to give the body a realistic size. " * 8 + "\r\n"
                f"end of fault message {n}\r\n").encode()

    # -- running --

    def start(self) -> "Load":
        self.started = time.monotonic()
        for i in range(self.threads):
            t = threading.Thread(target=self._worker, args=(i,), daemon=True, name=f"load-{i}")
            t.start()
            self._workers.append(t)
        return self

    @property
    def done(self) -> bool:
        return len(self.acked) >= self.total

    def progress(self) -> float:
        return len(self.acked) / self.total

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            if self.errors:
                break
            time.sleep(0.05)
        self.stop()
        assert not self.errors, self.errors[:5]
        assert self.done, (f"only {len(self.acked)} of {self.total} messages acknowledged within "
                           f"{timeout:g}s; replies {dict(self.codes)}, {self.drops} drops")

    def wait_for(self, predicate: Callable[[], Any], interval: float = 0.01) -> bool:
        """For the fault threads: True once ``predicate`` holds (checked again every
        ``interval`` s: the counters it reads are updated by the client threads, which signal
        nothing); False when the load stops first (it finished, or :meth:`wait` gave up at its
        deadline), so that no fault thread waits beyond the load's own deadline."""
        while not predicate():
            if self._stop.wait(interval):
                return bool(predicate())
        return True

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(40)
        if not self.finished:
            self.finished = time.monotonic()

    def _next(self) -> int | None:
        with self._lock:
            if not self._todo:
                return None
            n = self._todo.popleft()
            due = self.started + self._taken / self.rate if self.rate else 0.0
            self._taken += 1
        # The load's shape, not synchronisation: this message's turn at the given rate.
        if self._stop.wait(max(0.0, due - time.monotonic())):
            self._again(n)
            return None
        return n

    def _again(self, n: int) -> None:
        with self._lock:
            self._todo.append(n)

    def _count(self, code: int) -> None:
        with self._lock:
            self.codes[code] += 1

    def _worker(self, i: int) -> None:
        slot = i
        conn: smtplib.SMTP | None = None
        while not self._stop.is_set():
            n = self._next()
            if n is None:
                if self.done:
                    break
                time.sleep(0.05)   # others still hold messages that may come back
                continue
            try:
                if conn is None:
                    ports = self.ports()
                    conn = smtplib.SMTP("127.0.0.1", ports[slot % len(ports)], timeout=60)
                    code, _ = conn.ehlo()
                    if code != 250:
                        raise smtplib.SMTPServerDisconnected(f"EHLO {code}")
                with self._lock:
                    self.attempts += 1
                began = time.monotonic()
                reply = self._transaction(conn, n)
                with self._lock:
                    self.transactions.append((began, time.monotonic() - began, reply[0]))
            except (smtplib.SMTPException, OSError):
                with self._lock:
                    self.drops += 1
                self._again(n)
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:
                        pass
                conn = None
                slot += 1    # the next daemon
                time.sleep(self.pause * 2)
                continue
            code, text = reply
            if code == 250:
                found = QUEUED.search(text)
                if not found:
                    self.errors.append(f"250 without an id: {text!r}")
                    return
                with self._lock:
                    self.acked[n] = found.group(1)
                continue
            self._again(n)
            if code >= 500:
                self.errors.append(f"message {n}: {code} {text}")
                return
            if code == 421:
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
                slot += 1
            time.sleep(self.pause)
        if conn is not None:
            try:
                conn.quit()
            except Exception:
                conn.close()

    def _transaction(self, conn: smtplib.SMTP, n: int) -> tuple[int, str]:
        """(code, text) of the first MAIL/RCPT/DATA reply that is not a success, or of DATA."""
        for command, arg in (("mail", SENDER), ("rcpt", f"r{n % 50}@example.test")):
            code, text = getattr(conn, command)(arg)
            self._count(code)
            if code != 250:
                if code != 421:
                    conn.rset()
                return code, text.decode("utf-8", "replace")
        try:
            code, text = conn.data(self.content(n))
        except smtplib.SMTPDataError as e:   # refused at DATA itself
            code, text = e.smtp_code, e.smtp_error
            self._count(code)
            if code != 421:
                conn.rset()
            return code, text.decode("utf-8", "replace")
        self._count(code)
        return code, text.decode("utf-8", "replace")


# -- outcome ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    seed: int
    load: Load
    ledger: Ledger
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def acked_ids(self) -> set[str]:
        return set(self.load.acked.values())

    def lost(self) -> set[str]:
        return self.acked_ids - self.ledger.delivered(self.acked_ids)

    def wait_delivered(self, timeout: float) -> set[str]:
        """Wait until every acknowledged id arrived; returns those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = self.lost()
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.25)

    def summary(self) -> str:
        ledger = self.ledger
        ledger.scan()
        acked = self.acked_ids
        delivered = ledger.delivered(acked)
        duplicates = sum(n - 1 for n in ledger.deliveries.values() if n > 1)
        msg_dups = sum(len(ids) - 1 for ids in ledger.by_message_id.values() if len(ids) > 1)
        seconds = (self.load.finished or time.monotonic()) - self.load.started
        parts = [f"seed={self.seed}", f"sent={self.load.total}", f"acknowledged={len(acked)}",
                 f"delivered={len(delivered)}", f"lost={len(acked - delivered)}",
                 f"duplicates={duplicates}", f"msg_dups={msg_dups}",
                 f"unacked_delivered={len(set(ledger.deliveries) - acked)}",
                 f"451s={self.load.codes.get(451, 0)}", f"drops={self.load.drops}",
                 f"attempts={self.load.attempts}",
                 f"submit_rate={self.load.total / seconds if seconds else 0:.0f}/s"]
        parts += [f"{k}={v}" for k, v in self.extra.items()]
        return f"SUMMARY {self.name}: " + " ".join(parts)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.ledger.deliveries.values() if n > 1)

    def unacknowledged_deliveries(self) -> set[str]:
        """Ids that arrived at the sink although no client got a 250 for them (a 451'd message
        that Redis had stored: must never happen while its daemon lives)."""
        self.ledger.scan()
        return set(self.ledger.deliveries) - self.acked_ids

    @property
    def message_duplicates(self) -> int:
        return sum(len(ids) - 1 for ids in self.ledger.by_message_id.values() if len(ids) > 1)


def queue_empty(client: RedisClient, prefix: str) -> bool:
    """No job waiting or leased under ``prefix``."""
    return (client.command("ZCARD", f"{prefix}queue:domains") == 0
            and client.command("ZCARD", f"{prefix}queue:leases") == 0)


# -- a PostgreSQL we can stop -----------------------------------------------------------------


@pytest.fixture
def own_postgres() -> Any:
    """A PostgreSQL of this test alone (tests/pgserver.py), which it may stop and start again
    (``.stop()``, ``.start()``) without disturbing the session's; stopped and removed at the end."""
    server: PostgresServer = start_postgres()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


# -- Redis servers we can stop, kill and replicate --------------------------------------------


class RedisProcess:
    """A redis-server on a fixed port (so that it can be restarted on the same address)."""

    def __init__(self, directory: Path, *args: str, port: int | None = None, sentinel: bool = False) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = list(args)
        self.sentinel = sentinel
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None
        self.server: RedisServer | None = None
        self.start()

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed")
        log_path = self.dir / f"redis-{self.port}.log"
        if self.sentinel:
            command = [exe, str(self.dir / "sentinel.conf"), "--sentinel"]
        else:
            command = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                       "--save", "", "--appendonly", "no", "--daemonize", "no", *self.args]
        for _ in range(50):
            with open(log_path, "ab") as log:
                self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                stderr=subprocess.STDOUT)
            self.server = RedisServer("127.0.0.1", self.port, self.process, self.dir, "", log_path)
            if _wait_for_pong(self.server, 20):
                return
            self.process.wait()
            time.sleep(0.2)   # the port may be in TIME_WAIT use by a previous instance
        raise RuntimeError(f"redis-server did not start on {self.port}:\n" + log_path.read_text()[-3000:])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout: float = 10) -> RedisClient:
        return RedisClient("127.0.0.1", self.port, timeout=timeout)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def redis_processes() -> Any:
    """Factory for RedisProcess (stopped at the end of the test)."""
    made: list[RedisProcess] = []

    def make(*args: Any, **kwargs: Any) -> RedisProcess:
        process = RedisProcess(*args, **kwargs)
        made.append(process)
        return process

    yield make
    for process in reversed(made):
        process.stop()


def role(server: RedisProcess) -> str:
    try:
        with server.client(timeout=2) as c:
            return c.command("ROLE")[0].decode()
    except (OSError, RedisError):
        return "down"


def replica_in_sync(server: RedisProcess) -> bool:
    with server.client() as c:
        return "master_link_status:up" in c.command("INFO", "replication").decode()


def write_sentinel_conf(directory: Path, port: int, master: str, primary_port: int, quorum: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sentinel.conf").write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {directory}\n"
        f"sentinel monitor {master} 127.0.0.1 {primary_port} {quorum}\n"
        f"sentinel down-after-milliseconds {master} 1000\n"
        f"sentinel failover-timeout {master} 5000\n"
        f"sentinel parallel-syncs {master} 2\n")
