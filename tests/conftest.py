"""
Shared test fixtures. They run real processes (redis-server, the daemon under twistd); no mocks.

Fixtures
--------
``redis_server`` (session)
    A private ``redis-server`` on a free 127.0.0.1 port, no persistence, shared by the whole
    session: a :class:`RedisServer` (``.host``, ``.port``, ``.url``, ``.unix_path``,
    ``.unix_url``, ``.pid``, ``.process``, ``.dir``, ``.client()``). Tests keep apart by using
    ``unique_prefix`` for their keys; never FLUSHALL/FLUSHDB it.
``unique_prefix``
    A fresh Redis key prefix per test, ``"t1a2b3c4d:"``.
``start_daemon``
    Factory: ``start_daemon(config_text, tmp_path) -> Daemon`` runs
    ``twistd -n --logfile=- --pidfile= mailrelay -c <tmp_path>/mailrelay.toml`` (twistd of this
    interpreter, see ``daemon_command``) and
    waits for ``mailrelay <version> ready``; ``daemon.ports`` maps service -> port. Daemons still
    running at the end of the test are stopped, and their logs are printed (pytest shows them
    for failed tests under "Captured stdout teardown").
``daemon_config``
    Factory: ``daemon_config(redis_server, prefix, **sections) -> str``, a TOML configuration
    for the daemon using that Redis and prefix, state in ``<tmp_path>/state``, submission
    listeners on port 0 of 127.0.0.1, and ``[archive] url`` = this test's copy of the archive
    template for that prefix (``archive_databases(prefix)``), with per-section overrides
    (``archive={"url": None}`` for the daemon-managed PostgreSQL).

``postgres_server`` (session)
    A private PostgreSQL (initdb in a new short /tmp directory, a unix socket only, run as
    ``postgres`` when the tests run as root): a :class:`PostgresServer` (``.conninfo(dbname)``,
    ``.socket_dir``, ``.process``). Started directly, not through mailrelay/pgproc.py, whose own
    tests start theirs.
``pg_database`` (module)
    A fresh, empty database on ``postgres_server`` for one test module: its conninfo string.
    Dropped at the end of the module.
``archive_template`` (session)
    The name of a database on ``postgres_server`` with the archive's schema migrated and the
    partitions of today and the next two days made, once per session: the template of
    ``archive_databases``.
``archive_databases``
    Factory: ``archive_databases(key="") -> conninfo``, a copy of ``archive_template`` (``CREATE
    DATABASE .. TEMPLATE``, fast: no initdb, no migration) for this test, one per ``key`` (the
    same key gives the same database); dropped after the test's daemons have stopped.
    ``daemon_config`` gives daemons of one key prefix one such archive.

The helpers are importable too (``tests/`` is on sys.path): ``from conftest import Daemon,
DaemonError, RedisServer, render_toml, make_daemon_config``.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Pattern
from uuid import uuid4

import pytest

from pgserver import PostgresServer, start_postgres
from redisclient import RedisClient, RedisError

# -- redis-server ------------------------------------------------------------------------


@dataclass
class RedisServer:
    """A running ``redis-server`` started by :func:`start_redis`."""

    host: str
    port: int
    process: subprocess.Popen
    dir: Path
    unix_path: str
    log_path: Path

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, the form ``[redis] url`` takes."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix:///path/redis.sock?db=0``: the same server over its unix socket."""
        return f"unix://{self.unix_path}?db=0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, db: int = 0, *, timeout: float | None = 10.0) -> RedisClient:
        """A new synchronous connection (close it, or use it in a ``with`` block)."""
        return RedisClient(self.host, self.port, db=db, timeout=timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _wait_for_pong(server: RedisServer, timeout: float) -> bool:
    """True once the server answers PING; False if it exits first (e.g. the port was taken)."""
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            return False
        try:
            with RedisClient(server.host, server.port, timeout=timeout) as c:
                if c.command("PING") == "PONG":
                    return True
        except (ConnectionRefusedError, ConnectionResetError):
            pass  # not listening yet
        except RedisError as e:  # e.g. LOADING
            if e.kind != "LOADING":
                raise
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(
                f"redis-server on port {server.port} did not answer PING within {timeout}s:\n"
                + server.log_text()
            )
        time.sleep(0.01)  # back off between refused connections


def start_redis(directory: Path, *, host: str = "127.0.0.1", attempts: int = 5,
                timeout: float = 10.0, extra_args: tuple[str, ...] = ()) -> RedisServer:
    """Start ``redis-server`` on a free port with no persistence, files in ``directory``.

    The port is picked by binding port 0 and released before redis binds it, so another
    process may take it in between: redis then exits and we retry with a new port.
    """
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (scripts/dev.sh test installs it)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unix_path = str(directory / "redis.sock")
    failures = []
    for _ in range(attempts):
        port = _free_port(host)
        log_path = directory / f"redis-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [exe, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no",
                 "--dir", str(directory), "--unixsocket", unix_path, "--unixsocketperm", "700",
                 "--daemonize", "no", *extra_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        server = RedisServer(host=host, port=port, process=process, dir=directory,
                             unix_path=unix_path, log_path=log_path)
        if _wait_for_pong(server, timeout):
            return server
        process.wait()
        failures.append(f"port {port}: exit {process.returncode}:\n{server.log_text()}")
    raise RuntimeError("redis-server did not start:\n" + "\n".join(failures))



def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something true (returned); fail after ``timeout``
    seconds, naming ``what`` was awaited. For state with no event to wait on (Redis data)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_archived(web_port: int, token: str, timeout: float = 20) -> None:
    """Until a daemon's archive (which searches read at data version 2) holds every event so far:
    the archive lag of its ``/api/v1/stats``, measured at each request, is 0. A bounded poll: the
    archiver's batches are announced nowhere a test can wait on."""
    import http.client
    import json

    def caught_up() -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", web_port, timeout=10)
        try:
            connection.request("GET", "/api/v1/stats", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        assert response.status == 200, (response.status, body)
        return json.loads(body)["archive"]["lag_entries"] == 0
    wait_until(caught_up, timeout, "the archive to catch up", interval=0.1)


def async_test(f: Callable) -> Callable:
    """Run an ``async def`` test method as a Deferred-returning trial test."""

    @functools.wraps(f)
    def wrapper(self: Any) -> Any:
        from twisted.internet import defer
        return defer.ensureDeferred(f(self))
    return wrapper


def start_module_redis(prefix: str) -> tuple[RedisServer, str]:
    """A private redis-server for a unittest-style module (its ``setUpModule``), in a new
    temporary directory: the server and the directory."""
    directory = tempfile.mkdtemp(prefix=prefix)
    return start_redis(Path(directory) / "redis"), directory


def stop_module_redis(server: RedisServer | None, directory: str | None) -> None:
    """``tearDownModule``'s half of :func:`start_module_redis` (either may be None)."""
    if server is not None:
        server.stop()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


# -- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for this test module: its conninfo."""
    with new_database(postgres_server) as conninfo:
        yield conninfo


@contextlib.contextmanager
def new_database(postgres_server: PostgresServer, prefix: str = "t") -> Iterator[str]:
    """A new, empty database on the test PostgreSQL (its conninfo), dropped afterwards."""
    import psycopg

    name = f"{prefix}{uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres_server.conninfo(name)
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def today_utc() -> datetime.date:
    """Today in UTC: the archive's partitions are UTC days."""
    return datetime.datetime.now(datetime.timezone.utc).date()


@pytest.fixture(scope="session")
def archive_template(postgres_server: PostgresServer) -> Iterator[str]:
    """A database with the archive's schema and the next days' partitions: its name."""
    import psycopg

    from mailrelay.store import migrations

    name = f"tmpl{uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(postgres_server.conninfo(name)) as conn:  # closed: a template has no sessions
        migrations.apply_migrations(conn)
        migrations.create_partitions(conn, today_utc(), 3)
    try:
        yield name
    finally:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def archive_databases(postgres_server: PostgresServer, archive_template: str) -> Iterator[Callable[..., str]]:
    """Factory: ``archive_databases(key="") -> conninfo`` of this test's copy of the template for
    ``key``; every copy is dropped at the end of the test (after ``start_daemon``'s daemons)."""
    import psycopg

    made: dict[str, str] = {}

    def database(key: str = "") -> str:
        if key not in made:
            made[key] = f"a{uuid4().hex[:12]}"
            with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {made[key]} TEMPLATE {archive_template}")
        return postgres_server.conninfo(made[key])

    yield database
    if made:
        with psycopg.connect(postgres_server.conninfo(), autocommit=True) as conn:
            for name in made.values():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def unique_prefix() -> str:
    """A Redis key prefix no other test uses, e.g. ``"t1a2b3c4d:"``."""
    return f"t{uuid4().hex[:8]}:"


# -- the daemon --------------------------------------------------------------------------

#: ``submission listening on 127.0.0.1:40123 (STARTTLS)``, as logged once per listener.
LISTENING_RE = re.compile(
    r"(?:^|[\s\]])(?P<service>[A-Za-z0-9_.-]+) listening on "
    r"(?P<host>\S+):(?P<port>\d+) \((?P<mode>[^)]*)\)"
)
#: ``mailrelay 0.1.0 ready``, logged when every service has started.
READY_RE = re.compile(r"(?:^|[\s\]])mailrelay \S+ ready\s*$")


class DaemonError(AssertionError):
    """The daemon did not log what was waited for; the message carries its whole log."""


@dataclass(frozen=True)
class Listener:
    service: str
    host: str
    port: int
    mode: str


class Daemon:
    """A process whose stdout+stderr are collected line by line by a reader thread.

    ``lines`` holds every line so far; ``wait_for_line`` consumes them in order from a queue,
    so consecutive waits move forward through the log (use ``find_lines`` to search all of it).
    """

    def __init__(self, args: list[str], *, cwd: Path | str, config_path: Path | str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.args = [str(a) for a in args]
        self.cwd = Path(cwd)
        self.config_path = Path(config_path) if config_path is not None else None
        self.lines: list[str] = []
        self.listeners: list[Listener] = []
        self.ports: dict[str, int] = {}
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self.process = subprocess.Popen(
            self.args, cwd=self.cwd, env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"daemon-{self.process.pid}-log")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.process.stdout:
            for line in self.process.stdout:
                line = line.rstrip("\r\n")
                self.lines.append(line)
                self._queue.put(line)
        self._queue.put(None)

    # -- state -------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log_text(self) -> str:
        """Everything the process printed so far, one line per log line."""
        return "\n".join(list(self.lines)) + ("\n" if self.lines else "")

    def find_lines(self, regex: str | Pattern[str]) -> list[re.Match]:
        """Matches of ``regex`` (``re.search``) in every line logged so far; does not block."""
        pattern = re.compile(regex) if isinstance(regex, str) else regex
        return [m for m in map(pattern.search, list(self.lines)) if m]

    def _error(self, message: str) -> DaemonError:
        return DaemonError(
            f"{message}\n--- log of {' '.join(self.args)} (pid {self.pid}, cwd {self.cwd}) ---\n"
            f"{self.log_text()}--- end of log ---"
        )

    # -- waiting -----------------------------------------------------------------------------

    def wait_for_line(self, regex: str | Pattern[str], timeout: float = 20) -> re.Match:
        """Block until the next log line matching ``regex`` (``re.search``) and return the match.

        Lines are taken from the queue in order, so the lines skipped while waiting are not
        seen again by later waits. Raises :class:`DaemonError` with the whole log when the
        process exits (its output ends) or ``timeout`` seconds pass first.
        """
        pattern = re.compile(regex) if isinstance(regex, str) else regex
        deadline = time.monotonic() + timeout
        while True:
            if self._eof and self._queue.empty():
                try:
                    code = self.process.wait(5)
                except subprocess.TimeoutExpired:
                    code = None  # closed its output but still running
                raise self._error(f"the daemon exited (status {code}) before logging a line "
                                  f"matching {pattern.pattern!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"no log line matching {pattern.pattern!r} within {timeout}s")
            try:
                # Wake up now and then: a child of the daemon (a managed redis-server) may
                # hold the output pipe open after the daemon itself has exited.
                line = self._queue.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if self.process.poll() is not None:
                    self._eof = True
                continue
            if line is None:
                self._eof = True
                continue
            match = pattern.search(line)
            if match:
                return match

    def wait_for_lines(self, patterns: list[str], timeout: float = 30) -> None:
        """Wait until every pattern matches some line so far, in any order.

        Each line taken from the queue is a new event to re-check against; the queue is
        consumed, so a later ``wait_for_line`` starts after these lines.
        """
        deadline = time.monotonic() + timeout
        while True:
            missing = [p for p in patterns if not self.find_lines(p)]
            if not missing:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"no log lines matching {missing} within {timeout}s")
            try:
                line = self._queue.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if not self.running:
                    raise self._error(f"the daemon exited before logging lines matching {missing}")
                continue
            if line is None:
                self._eof = True
                if not any(not self.find_lines(p) for p in patterns):
                    return
                raise self._error(f"the daemon exited before logging lines matching {missing}")

    def wait_for_matches(self, regex: str | Pattern[str], count: int = 1,
                         timeout: float = 20) -> list[re.Match]:
        """Wait until at least ``count`` lines logged so far match ``regex``, in any order.

        Like :meth:`wait_for_lines`, each line taken from the queue is a new event on which
        the count is re-checked; returns the matches.
        """
        deadline = time.monotonic() + timeout
        while True:
            matches = self.find_lines(regex)
            if len(matches) >= count:
                return matches
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"{len(matches)} of {count} log lines matching {regex!r} "
                                  f"within {timeout}s")
            if self._eof and self._queue.empty():
                raise self._error(f"the daemon exited with {len(matches)} of {count} log lines "
                                  f"matching {regex!r}")
            try:
                line = self._queue.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                if self.process.poll() is not None:
                    self._eof = True
                continue
            if line is None:
                self._eof = True

    def wait_until_ready(self, timeout: float = 20) -> "Daemon":
        """Wait for ``mailrelay <version> ready``, then fill ``listeners`` and ``ports``."""
        self.wait_for_line(READY_RE, timeout)
        self.listeners = [
            Listener(m["service"], m["host"].strip("[]"), int(m["port"]), m["mode"])
            for m in self.find_lines(LISTENING_RE)
        ]
        self.ports = {}
        for listener in self.listeners:
            self.ports.setdefault(listener.service, listener.port)  # first one per service
        return self

    def wait(self, timeout: float = 30) -> int:
        """Wait for the process to exit on its own; returns the exit status."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise self._error(f"the daemon was still running after {timeout}s") from None
        self._reader.join(5)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait up to ``timeout`` s for the exit, then SIGKILL.

        Returns the exit status (negative: killed by that signal, e.g. -9 after the SIGKILL
        fallback). Does nothing but return the status if the process has already exited.
        """
        if self.process.poll() is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return self.process.returncode

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<Daemon pid={self.pid} {state} ports={self.ports}>"


#: Runs twistd with this interpreter, as the ``twistd`` console script does. (Not
#: ``python -m twisted``: that is the newer ``twist`` runner, which has no -n/--pidfile and
#: logs JSON when its output is not a terminal.)
TWISTD = [sys.executable, "-c",
          "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def daemon_command(config_path: Path | str, *extra_args: str) -> list[str]:
    """The daemon's command line: ``twistd -n --logfile=- --pidfile= mailrelay -c PATH ...``."""
    return [*TWISTD, "-n", "--logfile=-", "--pidfile=", "mailrelay", "-c", str(config_path),
            *extra_args]


@pytest.fixture
def start_daemon(tmp_path: Path, archive_databases: Callable[..., str]) -> Iterator[Callable[..., Daemon]]:
    """Factory: ``start_daemon(config_text, tmp_path=<this test's tmp_path>, *, extra_args=(),
    env=None, wait_ready=True, timeout=20) -> Daemon``.

    Writes ``config_text`` to ``<tmp_path>/mailrelay.toml``, starts the daemon with cwd
    ``tmp_path`` and, unless ``wait_ready`` is false, waits for the ready line and records
    ``daemon.ports``. ``extra_args`` go after ``-c path`` (plugin options); ``env`` adds
    variables to the inherited environment. (It depends on ``archive_databases`` so that the
    test's archive databases are dropped after its daemons stopped.)
    """
    started: list[Daemon] = []
    default_dir = tmp_path

    def start(config_text: str, tmp_path: Path | str = default_dir, *,
              extra_args: tuple[str, ...] | list[str] = (), env: Mapping[str, str] | None = None,
              wait_ready: bool = True, timeout: float = 20) -> Daemon:
        directory = Path(tmp_path)
        directory.mkdir(parents=True, exist_ok=True)
        config_path = directory / "mailrelay.toml"
        config_path.write_text(config_text)
        daemon = Daemon(daemon_command(config_path, *extra_args), cwd=directory,
                        config_path=config_path,
                        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        started.append(daemon)
        if wait_ready:
            daemon.wait_until_ready(timeout)
        return daemon

    yield start

    for daemon in started:
        if daemon.running:
            daemon.stop()
        # Shown by pytest only when the test failed.
        print(f"--- daemon pid {daemon.pid}, exit status {daemon.returncode} ---")
        print(daemon.log_text(), end="")


# -- configuration text ------------------------------------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def toml_value(value: Any) -> str:
    """A TOML value: str, int, float, bool, Path, lists of these, dicts (inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(str(k))} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"server": {"hostname": "x"}}`` -> ``[server]\\nhostname = "x"\\n``; empty tables omitted."""
    blocks = []
    for name, table in sections.items():
        if not table:
            continue
        lines = [f"[{_toml_key(name)}]"]
        lines += [f"{_toml_key(key)} = {toml_value(value)}" for key, value in table.items()]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


#: Submission listeners on a kernel-chosen port: no races between tests.
EPHEMERAL = "tcp:0:interface=127.0.0.1"


def make_daemon_config(redis_server: RedisServer | str | None, prefix: str | None,
                       state_dir: Path | str, *, archive_url: str | None = None,
                       **sections: Mapping[str, Any]) -> str:
    """TOML for a test daemon; ``sections`` override or add keys per section.

    Base: ``[server] state_dir``, ``[redis] url`` (a RedisServer's ``.url``, a URL string, or
    None for the daemon-managed Redis) and ``key_prefix`` (None: the default), ``[archive]
    url`` = ``archive_url`` (None: the daemon-managed PostgreSQL under state_dir, which a root
    test run's ``postgres`` user must be able to reach: not under pytest's tmp_path), ``[submission]
    listen`` and ``listen_tls`` and ``[web] listen`` = ``["tcp:0:interface=127.0.0.1"]``,
    ``[delivery] allow_private_destinations = true`` (the test DNS server's MX hosts are on
    127.0.0.x: without it direct delivery refuses them). An override value of None
    removes that key from the base, e.g. ``submission={"listen_tls": None}``, or
    ``delivery={"allow_private_destinations": None}`` for the daemon's default.
    """
    config: dict[str, dict[str, Any]] = {
        "server": {"state_dir": str(state_dir)},
        "redis": {},
        "tls": {},
        "submission": {"listen": [EPHEMERAL], "listen_tls": [EPHEMERAL]},
        "web": {"listen": [EPHEMERAL]},
        "delivery": {"allow_private_destinations": True},
    }
    if redis_server is not None:
        config["redis"]["url"] = (redis_server if isinstance(redis_server, str)
                                  else redis_server.url)
    if prefix is not None:
        config["redis"]["key_prefix"] = prefix
    if archive_url is not None:
        config["archive"] = {"url": archive_url}
    for name, overrides in sections.items():
        table = config.setdefault(name, {})
        for key, value in overrides.items():
            if value is None:
                table.pop(key, None)
            else:
                table[key] = value
    return render_toml(config)


@pytest.fixture
def daemon_config(tmp_path: Path, archive_databases: Callable[..., str]) -> Callable[..., str]:
    """Factory: ``daemon_config(redis_server, prefix, **sections) -> str`` with
    ``state_dir = <tmp_path>/state`` (override with ``server={"state_dir": ...}``) and ``[archive]
    url`` = ``archive_databases(prefix)``: daemons sharing a key prefix share an archive
    (``archive={"url": None}``: the managed PostgreSQL)."""

    def build(redis_server: RedisServer | str | None, prefix: str | None,
              **sections: Mapping[str, Any]) -> str:
        archive = sections.get("archive", {})
        archive_url = None if "url" in archive else archive_databases(prefix or "")
        return make_daemon_config(redis_server, prefix, tmp_path / "state", archive_url=archive_url,
                                  **sections)

    return build


# -- mail peers: a local DNS server and Postfix's smtp-sink ---------------------------------

#: Zones of the test DNS server: example.test's MX is 127.0.0.1 (the test's sink port is
#: given to the daemon as [delivery] mx_port); other.test's first MX is unreachable.
TEST_ZONES = {
    "example.test": {"MX": [(10, "mx1.example.test")]},
    "other.test": {"MX": [(10, "down.example.test"), (20, "mx1.example.test")]},
    "mx1.example.test": {"A": ["127.0.0.1"]},
    "down.example.test": {"A": ["127.0.0.2"]},
    "nullmx.test": {"MX": [(0, ".")]},
    "broken.test": {"SERVFAIL": True},
}


@pytest.fixture
def dns(tmp_path):
    """A DNS server in a child process answering TEST_ZONES (``.port``, ``.update()``)."""
    from dnsserver import StandaloneDNS

    server = StandaloneDNS(TEST_ZONES, tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sink(tmp_path):
    """Postfix's smtp-sink on a free port, one dump file per message (``.messages()``)."""
    from peers import Sink

    s = Sink(tmp_path / "sink")
    yield s
    s.stop()
