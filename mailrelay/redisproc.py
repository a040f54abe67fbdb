"""
redisproc: the Redis server run and supervised by the daemon.

JOB
    With ``redis.url = ""`` (and no ``redis.sentinels``) the daemon runs its
    own ``redis-server`` as a child process (started with
    ``reactor.spawnProcess``, no shell): persistence by append-only file only
    (``appendonly yes``, ``appendfsync`` as configured, ``save ""``),
    ``maxmemory`` as given (bytes; 0: none) with ``maxmemory-policy
    noeviction`` (a full Redis refuses writes rather than dropping queued
    mail: submission answers ``452 4.3.1``), ``daemonize no``.
    :func:`machine_memory` is what ``[redis] maxmemory = "25%"`` is a share
    of::

        maxmemory = config.redis.maxmemory.bytes_of(machine_memory())
        redis = ManagedRedis(config.state_dir, appendfsync=config.redis.appendfsync,
                             maxmemory=maxmemory)
        redis.setServiceParent(application)
        socket_path = yield redis.whenReady()

    ``whenReady()`` fires with the socket path once Redis answers PING.  If
    redis-server exits while the service runs, the exit status and the last
    lines of its log are logged and it is restarted after 0.5 s, doubling to
    10 s while it keeps failing.  ``stopService()`` sends SIGTERM (Redis fsyncs
    the AOF and exits) and fires once the process is gone; SIGKILL after 15 s.

    A redis-server left running by a killed daemon (``redis.pid`` names a live
    redis-server serving this directory) is stopped with SIGTERM before the new
    one starts; this start-up wait (at most 10 s, then SIGKILL) is the only
    blocking call.

    Two classes share the work: :class:`RedisDirectory` owns ``state_dir/redis/``
    (its paths, the lock, the stale redis-server, opening ``redis.log``);
    :class:`ManagedRedis` is the Twisted service that spawns, probes, restarts
    and stops the child, logging for both.  The machinery it shares with
    :mod:`mailrelay.pgproc` (directory, lock, log file, spawn, readiness
    waiters, restart backoff, stop signals) is in :mod:`mailrelay.childproc`.

SECURITY
    No TCP port (``--port 0``).  Redis is reachable only through the unix
    socket, mode 0700, in a mode 0700 directory: only the daemon's own user
    can talk to it.  A lock file keeps two daemons from sharing the directory.

STANDARDS
    None (it speaks only Redis's PING, to know that the server is ready).

DIAGNOSTICS
    ConfigError (one line, naming the key) when redis-server is not installed,
    the socket path is too long, the directory cannot be created, or another
    daemon holds the lock.  ManagedRedisError when Redis does not answer
    within the ready timeout (30 s), exits before it was ever ready, or a
    stale redis-server does not go away; its message ends with the last lines
    of redis.log.  Restarts are logged at error level with the exit status
    (``redis-server (pid <pid>) <status>; restarting it in <delay>s<tail>``);
    also logged: ``started redis-server (pid <pid>) on <socket>``,
    ``redis-server (pid <pid>) is ready on <socket>``, ``stopping
    redis-server (pid <pid>)``, redis-server's own output lines as
    ``redis-server: <line>``.

CONFIGURATION
    ``[redis]`` appendfsync, maxmemory; ``[server]`` state_dir (the caller,
    :mod:`mailrelay.service`, starts it when ``[redis]`` url and sentinels
    are empty). Everything under ``state_dir/redis/`` belongs to this
    module:
      redis.sock      the unix socket (path at most 107 bytes)
      redis.pid       written by redis-server
      redis.lock      flock held by the daemon managing this directory
      appendonlydir/  the AOF: base and incremental files and their manifest
      redis.log       redis-server's output (moved to redis.log.1 past 10 MiB
                      at start)
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailrelay.childproc import (
    KILL_TIMEOUT, READY_TIMEOUT, STALE_TIMEOUT, STOP_TIMEOUT, ChildDirectory, SupervisedChild,
)
from mailrelay.configvalues import ConfigError, p_appendfsync

INSTALL_HINT = "install it with `apt-get install redis-server`, or set redis.url to an external Redis"
PROBE_INTERVAL = 0.05
PROBE_TIMEOUT = 1.0

# Daemons often run with a short PATH; look in the usual places too.
_SEARCH_DIRS: tuple[str, ...] = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


class ManagedRedisError(Exception):
    """The managed redis-server could not be made ready (the message says why)."""


def find_redis_server(executable: str | None = None) -> str:
    """The absolute path of redis-server (or of ``executable``), else ConfigError."""
    if executable:
        found = shutil.which(executable)
        if not found:
            raise ConfigError(
                f"redis.url: managed mode needs redis-server, and {executable!r} "
                f"is not an executable; {INSTALL_HINT}"
            )
        return os.path.abspath(found)
    found = shutil.which("redis-server") or shutil.which(
        "redis-server", path=os.pathsep.join(_SEARCH_DIRS)
    )
    if not found:
        raise ConfigError(
            f"redis.url: managed mode needs redis-server, which is not installed; {INSTALL_HINT}"
        )
    return os.path.abspath(found)


def machine_memory() -> int:
    """The memory this process may use, in bytes: the machine's physical memory, or the memory
    limit of its cgroup (a container's, or a systemd unit's ``MemoryMax=``) when lower."""
    limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    try:
        groups = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().split())
    except (OSError, ValueError):
        groups = {}
    candidates = [f"/sys/fs/cgroup{groups.get('', '/')}/memory.max", "/sys/fs/cgroup/memory.max",  # v2
                  f"/sys/fs/cgroup/memory{groups.get('memory', '/')}/memory.limit_in_bytes",  # v1
                  "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
    for path in candidates:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max": no limit
            limits.append(int(text))
    return min(limits)


def _wait_for_exit(pidfd: int | None, is_alive: Callable[[], bool], timeout: float) -> bool:
    """Block until the process exits (True) or ``timeout`` passes (False)."""
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))
    deadline = time.monotonic() + timeout
    while is_alive():  # no pidfd (old kernel): poll /proc
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class _PingProtocol(protocol.Protocol):
    """Send an inline PING; ``result`` fires (after the connection closed) on +PONG."""

    def __init__(self) -> None:
        self.result: defer.Deferred[None] = defer.Deferred(self._cancel)
        self._buffer = b""
        self._reply: bytes | None = None

    def _cancel(self, _: Any) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionMade(self) -> None:
        self.transport.write(b"PING\r\n")

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n" in self._buffer and self._reply is None:
            self._reply = self._buffer.split(b"\r\n", 1)[0]
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.result.called:
            return
        if self._reply == b"+PONG":
            self.result.callback(None)
        else:
            # e.g. "-LOADING Redis is loading the dataset in memory"
            why = self._reply.decode("utf-8", "replace") if self._reply else str(reason.value)
            self.result.errback(ManagedRedisError(f"not ready: {why}"))


def _ping(path: str, timeout: float) -> defer.Deferred[None]:
    """Fire once the Redis at the unix socket ``path`` answers PING with PONG."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import UNIXClientEndpoint

    factory = protocol.Factory.forProtocol(_PingProtocol)
    factory.noisy = False  # no "Starting factory" line every 50 ms
    d = UNIXClientEndpoint(reactor, path, timeout=timeout).connect(factory)
    d.addCallback(lambda proto: proto.result)
    d.addTimeout(timeout, reactor)
    return d


class RedisDirectory(ChildDirectory):
    """``state_dir/redis/``: its files, its lock, and a redis-server a killed daemon left in it.

    Logs through its owner's logger (``log``), so its lines keep the owner's namespace.
    """

    name = "redis"
    product = "Redis"

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def pid_path(self) -> Path:
        return self.directory / "redis.pid"

    def is_our_redis(self, pid: int) -> bool:
        """Whether ``pid`` is a live redis-server serving this directory."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # empty for a zombie
        except OSError:
            return False
        if b"redis-server" not in cmdline:
            return False
        if os.fsencode(str(self.socket_path)) in cmdline:  # its process title
            return True
        try:
            return os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(self.directory)
        except OSError:
            return False

    def stop_stale(self) -> None:
        """Stop a redis-server left behind by a daemon that was killed (blocking, <= 10 s)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid > 0 and pid != os.getpid():
            self._terminate_stale(pid)
        if self.socket_path.exists():
            # Some other process still serving our socket would share the AOF directory.
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.socket_path))
            except OSError:
                pass  # a leftover socket file; redis-server replaces it
            else:
                raise ManagedRedisError(
                    f"a process not named in {self.pid_path} still listens on "
                    f"{self.socket_path}; stop it before starting mailrelay"
                )
            finally:
                probe.close()

    def _terminate_stale(self, pid: int) -> None:
        pidfd: int | None = None
        try:
            pidfd = os.pidfd_open(pid)  # pins the process: no pid reuse from here on
        except ProcessLookupError:
            return
        except (AttributeError, OSError):
            pidfd = None
        try:
            if not self.is_our_redis(pid):
                return
            self.log.warn(
                "stopping a stale redis-server (pid {pid}) left in {directory} by a previous daemon",
                pid=pid, directory=str(self.directory),
            )

            def send(sig: signal.Signals) -> None:
                try:
                    if pidfd is not None:
                        signal.pidfd_send_signal(pidfd, sig)
                    else:
                        os.kill(pid, sig)
                except ProcessLookupError:
                    pass
                except PermissionError:
                    raise ManagedRedisError(
                        f"a stale redis-server (pid {pid}) serves {self.directory} but belongs "
                        f"to another user; stop it and start mailrelay again"
                    ) from None

            alive = lambda: self.is_our_redis(pid)  # noqa: E731
            send(signal.SIGTERM)
            if _wait_for_exit(pidfd, alive, STALE_TIMEOUT):
                return
            self.log.warn("stale redis-server (pid {pid}) ignored SIGTERM for {t:g}s; killing it",
                          pid=pid, t=STALE_TIMEOUT)
            send(signal.SIGKILL)
            if not _wait_for_exit(pidfd, alive, KILL_TIMEOUT):
                raise ManagedRedisError(
                    f"a stale redis-server (pid {pid}) in {self.directory} does not exit, "
                    f"even after SIGKILL; stop it and start mailrelay again"
                )
        finally:
            if pidfd is not None:
                os.close(pidfd)


class ManagedRedis(SupervisedChild):
    """A supervised redis-server reachable only through ``socket_path``."""

    log = Logger()
    error_class = ManagedRedisError
    product = "Redis"
    server = writer = "redis-server"
    not_ready = "did not answer PING"
    probe_interval = PROBE_INTERVAL
    stop_signals = ("TERM", "KILL")
    stop_waits = (STOP_TIMEOUT,)

    def __init__(self, state_dir: Path, appendfsync: str = "always",
                 executable: str | None = None, *, maxmemory: int = 0,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        self.appendfsync = p_appendfsync("redis.appendfsync", appendfsync)
        self.maxmemory = maxmemory  # bytes; 0: no limit
        super().__init__(RedisDirectory(state_dir, self.log), ready_timeout)
        self.state_dir = self.files.state_dir
        self.pid_path = self.files.pid_path
        self.executable = find_redis_server(executable)
        self._observers: list[Callable[[str], object]] = []

    @property
    def pid(self) -> int | None:
        """The pid of the running redis-server child, if any."""
        return self._proto.pid if self._proto is not None and not self._proto.exited else None

    def whenReady(self) -> defer.Deferred[str]:
        """Fire with the socket path (str) once the current redis-server answers PING.

        Errbacks with ManagedRedisError after ``ready_timeout`` seconds, when the
        first process exits before it was ever ready, or when the service stops.
        """
        return super().whenReady()

    def addReadyObserver(self, observer: Callable[[str], object]) -> None:
        """Call ``observer(socket_path)`` each time a (re)started redis-server is ready,
        e.g. to load Lua scripts again after a restart."""
        self._observers.append(observer)

    # -- SupervisedChild's hooks -------------------------------------------------

    def _spawn_next(self) -> None:
        args = [
            self.executable,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--pidfile", str(self.pid_path),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--maxmemory", str(self.maxmemory),
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", "",  # stdout, captured into redis.log and the tail
        ]
        self._started(self._spawn("redis-server", self.executable, args, env={}))

    def _ready_value(self) -> str:
        return str(self.socket_path)

    def _check_ready(self) -> defer.Deferred[bool]:
        d = _ping(str(self.socket_path), PROBE_TIMEOUT)
        return d.addCallbacks(lambda _: True, lambda _: False)

    def _announce_ready(self, value: str) -> None:
        for observer in list(self._observers):
            try:
                observer(value)
            except Exception:
                self.log.failure("managed Redis ready observer {observer!r} failed", observer=observer)

    def _is_notable(self, line: str) -> bool:
        return " # " in line  # Redis's warning level

    def _start_error(self, e: OSError) -> str:
        return f"cannot start {self.executable}: {e.strerror or e}"

    def _spawn_error(self) -> str:
        return self.executable

    def _log_escalation(self, sig: str) -> None:
        self.log.warn("redis-server (pid {pid}) did not exit {t:g}s after SIGTERM; sending SIGKILL",
                      pid=self.pid, t=STOP_TIMEOUT)
