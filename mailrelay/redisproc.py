"""
redisproc: the Redis server run and supervised by the daemon.

JOB
    With ``redis.url = ""`` (and no ``redis.sentinels``) the daemon runs its
    own ``redis-server`` as a child process (started with
    ``reactor.spawnProcess``, no shell): persistence by append-only file only
    (``appendonly yes``, ``appendfsync`` as configured, ``save ""``),
    ``maxmemory-policy noeviction`` (a full Redis refuses writes rather than
    dropping queued mail), ``daemonize no``::

        redis = ManagedRedis(config.state_dir, appendfsync=config.redis.appendfsync)
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
    and stops the child, logging for both.

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
    ``[redis]`` appendfsync; ``[server]`` state_dir (the caller,
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

import collections
import errno
import fcntl
import os
import select
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, TextIO

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailrelay.configvalues import ConfigError, p_appendfsync

INSTALL_HINT = "install it with `apt-get install redis-server`, or set redis.url to an external Redis"
MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux
READY_TIMEOUT = 30.0
PROBE_INTERVAL = 0.05
PROBE_TIMEOUT = 1.0
STALE_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # a process ready this long resets the backoff
TAIL_LINES = 10
LOG_ROTATE_BYTES = 10 * 1024 * 1024

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


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {getattr(value, 'exitCode', None) or 0}"


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


class _RedisProcess(protocol.ProcessProtocol):
    """One redis-server child: forwards its output lines and its end to the owner."""

    def __init__(self, owner: ManagedRedis) -> None:
        self.owner = owner
        self.pid: int | None = None
        self.ready = False
        self.ready_at = 0.0
        self.exited = False
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, rest = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = rest
        for line in lines:
            self.owner._output(line.rstrip(b"\r").decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self.owner._output(rest.decode("utf-8", "replace"))
        self._partial.clear()
        self.exited = True
        self.owner._ended(self, reason)


class RedisDirectory:
    """``state_dir/redis/``: its files, its lock, and a redis-server a killed daemon left in it.

    Logs through its owner's logger (``log``), so its lines keep the owner's namespace.
    """

    def __init__(self, state_dir: Path, log: Logger) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.directory = self.state_dir / "redis"
        self.log = log
        self._lock_fd: int | None = None
        size = len(os.fsencode(str(self.socket_path)))
        if size > MAX_SOCKET_PATH:
            raise ConfigError(
                f"server.state_dir: {str(self.state_dir)!r} is too long for Redis's unix socket "
                f"{str(self.socket_path)!r} ({size} bytes, at most {MAX_SOCKET_PATH}); "
                f"use a shorter path"
            )

    @property
    def socket_path(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def pid_path(self) -> Path:
        return self.directory / "redis.pid"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def lock(self) -> None:
        """Create the directory (mode 0700) and hold its lock, else ConfigError."""
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)
            fd = os.open(self.directory / "redis.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(
                f"server.state_dir: cannot use {str(self.directory)!r}: {e.strerror or e}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"server.state_dir: cannot lock {str(self.directory)!r}: {e.strerror}") from None
            raise ConfigError(
                f"server.state_dir: {str(self.directory)!r} is in use by another mailrelay "
                f"daemon (pid {holder}); give each daemon its own state_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

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
            if not _wait_for_exit(pidfd, alive, 5.0):
                raise ManagedRedisError(
                    f"a stale redis-server (pid {pid}) in {self.directory} does not exit, "
                    f"even after SIGKILL; stop it and start mailrelay again"
                )
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def open_log(self) -> TextIO:
        """redis.log for appending, line-buffered (moved to redis.log.1 first when too big)."""
        try:
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name("redis.log.1"))
        except FileNotFoundError:
            pass
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")


class ManagedRedis(service.Service):
    """A supervised redis-server reachable only through ``socket_path``."""

    log = Logger()

    def __init__(self, state_dir: Path, appendfsync: str = "always",
                 executable: str | None = None, *, ready_timeout: float = READY_TIMEOUT) -> None:
        self.appendfsync = p_appendfsync("redis.appendfsync", appendfsync)
        self.ready_timeout = ready_timeout
        self.files = RedisDirectory(state_dir, self.log)
        self.state_dir = self.files.state_dir
        self.directory = self.files.directory
        self.socket_path = self.files.socket_path
        self.pid_path = self.files.pid_path
        self.log_path = self.files.log_path
        self.executable = find_redis_server(executable)
        self._proto: _RedisProcess | None = None
        self._process: Any = None  # IProcessTransport of the current child
        self._stopping = False
        self._ever_ready = False
        self._delay = BACKOFF_START
        self._waiters: dict[defer.Deferred[str], Any] = {}
        self._stop_waiters: list[defer.Deferred[None]] = []
        self._observers: list[Callable[[str], object]] = []
        self._probe_call: Any = None
        self._restart_call: Any = None
        self._kill_call: Any = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._log_file: TextIO | None = None

    # -- state ----------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The pid of the running redis-server child, if any."""
        return self._proto.pid if self._proto is not None and not self._proto.exited else None

    def whenReady(self) -> defer.Deferred[str]:
        """Fire with the socket path (str) once the current redis-server answers PING.

        Errbacks with ManagedRedisError after ``ready_timeout`` seconds, when the
        first process exits before it was ever ready, or when the service stops.
        """
        if self._proto is not None and self._proto.ready and not self._proto.exited:
            return defer.succeed(str(self.socket_path))
        if self._stopping:
            return defer.fail(ManagedRedisError("the managed Redis is stopped"))
        from twisted.internet import reactor

        d: defer.Deferred[str] = defer.Deferred(self._forget_waiter)
        self._waiters[d] = reactor.callLater(self.ready_timeout, self._waiter_timed_out, d)
        return d

    def addReadyObserver(self, observer: Callable[[str], object]) -> None:
        """Call ``observer(socket_path)`` each time a (re)started redis-server is ready,
        e.g. to load Lua scripts again after a restart."""
        self._observers.append(observer)

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        try:
            self.files.lock()
            try:
                self.files.stop_stale()
                self._log_file = self.files.open_log()
            except BaseException:
                self.files.unlock()
                raise
            super().startService()
            self._stopping = False
            self._ever_ready = False
            self._delay = BACKOFF_START
            try:
                self._spawn()
            except OSError as e:
                self.running = 0
                self._cleanup()
                raise ManagedRedisError(f"cannot start {self.executable}: {e.strerror or e}") from e
        except Exception as e:
            self._fail_waiters(e)  # whenReady() callers from before the start
            raise

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        for name in ("_probe_call", "_restart_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)
        self._fail_waiters(ManagedRedisError("the managed Redis is stopping"))
        if self._proto is None or self._proto.exited:
            self._cleanup()
            return defer.succeed(None)
        from twisted.internet import reactor

        d: defer.Deferred[None] = defer.Deferred()
        self._stop_waiters.append(d)
        if self._kill_call is None:
            self.log.info("stopping redis-server (pid {pid})", pid=self._proto.pid)
            self._signal("TERM")
            self._kill_call = reactor.callLater(STOP_TIMEOUT, self._kill)
        return d

    # -- the child process ----------------------------------------------------

    def _spawn(self) -> None:
        from twisted.internet import reactor

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
            "--maxmemory-policy", "noeviction",
            "--daemonize", "no",
            "--logfile", "",  # stdout, captured into redis.log and the tail
        ]
        proto = _RedisProcess(self)
        self._proto = proto
        self._process = reactor.spawnProcess(
            proto, self.executable, args, env={}, path=str(self.directory)
        )
        proto.pid = self._process.pid
        self.log.info("started redis-server (pid {pid}) on {socket}",
                      pid=proto.pid, socket=str(self.socket_path))
        self._probe(proto)

    def _probe(self, proto: _RedisProcess) -> None:
        from twisted.internet import reactor

        self._probe_call = None
        if proto is not self._proto or proto.exited or self._stopping:
            return

        def ready(_: None) -> None:
            if proto is self._proto and not proto.exited and not self._stopping:
                self._became_ready(proto)

        def retry(_: Failure) -> None:
            if proto is self._proto and not proto.exited and not self._stopping:
                self._probe_call = reactor.callLater(PROBE_INTERVAL, self._probe, proto)

        d = _ping(str(self.socket_path), PROBE_TIMEOUT)
        d.addCallbacks(ready, retry)
        d.addErrback(lambda f: self.log.failure("managed Redis readiness check failed", f))

    def _became_ready(self, proto: _RedisProcess) -> None:
        from twisted.internet import reactor

        proto.ready = True
        proto.ready_at = reactor.seconds()
        self._ever_ready = True
        path = str(self.socket_path)
        self.log.info("redis-server (pid {pid}) is ready on {socket}", pid=proto.pid, socket=path)
        waiters, self._waiters = self._waiters, {}
        for d, call in waiters.items():
            call.cancel()
            d.callback(path)
        for observer in list(self._observers):
            try:
                observer(path)
            except Exception:
                self.log.failure("managed Redis ready observer {observer!r} failed", observer=observer)

    def _output(self, line: str) -> None:
        self._tail.append(line)
        if self._log_file is not None:
            try:
                self._log_file.write(line + "\n")
            except OSError:
                pass
        if " # " in line:  # Redis's warning level
            self.log.info("redis-server: {line}", line=line)
        else:
            self.log.debug("redis-server: {line}", line=line)

    def _tail_text(self) -> str:
        if not self._tail:
            return f"; redis-server wrote nothing (see {self.log_path})"
        return f"; last lines of {self.log_path}:\n    " + "\n    ".join(self._tail)

    def _ended(self, proto: _RedisProcess, reason: Failure) -> None:
        if proto is not self._proto:
            return
        from twisted.internet import reactor

        self._process = None
        status = _describe_exit(reason)
        if self._stopping:
            self.log.info("redis-server (pid {pid}) {status}", pid=proto.pid, status=status)
            self._cleanup()
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                d.callback(None)
            return
        if proto.ready and reactor.seconds() - proto.ready_at >= STABLE_AFTER:
            self._delay = BACKOFF_START
        delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
        tail = self._tail_text()
        self.log.error(
            "redis-server (pid {pid}) {status}; restarting it in {delay:g}s{tail}",
            pid=proto.pid, status=status, delay=delay, tail=tail,
        )
        self._restart_call = reactor.callLater(delay, self._restart)
        if not self._ever_ready:  # last: the waiters' callbacks may stop the service
            self._fail_waiters(ManagedRedisError(f"redis-server {status} before it was ready{tail}"))

    def _restart(self) -> None:
        from twisted.internet import reactor

        self._restart_call = None
        if self._stopping or not self.running:
            return
        try:
            self._spawn()
        except OSError as e:
            delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
            self.log.error("cannot start {exe}: {err}; trying again in {delay:g}s",
                           exe=self.executable, err=e.strerror or e, delay=delay)
            self._restart_call = reactor.callLater(delay, self._restart)

    # -- stopping -------------------------------------------------------------

    def _signal(self, name: str) -> None:
        try:
            if self._process is not None:
                self._process.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def _kill(self) -> None:
        self._kill_call = None
        self.log.warn("redis-server (pid {pid}) did not exit {t:g}s after SIGTERM; sending SIGKILL",
                      pid=self.pid, t=STOP_TIMEOUT)
        self._signal("KILL")

    def _cleanup(self) -> None:
        if self._kill_call is not None and self._kill_call.active():
            self._kill_call.cancel()
        self._kill_call = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.files.unlock()

    # -- readiness waiters ----------------------------------------------------

    def _forget_waiter(self, d: defer.Deferred[str]) -> None:
        call = self._waiters.pop(d, None)
        if call is not None and call.active():
            call.cancel()

    def _waiter_timed_out(self, d: defer.Deferred[str]) -> None:
        if self._waiters.pop(d, None) is not None:
            d.errback(ManagedRedisError(
                f"redis-server did not answer PING on {self.socket_path} within "
                f"{self.ready_timeout:g}s{self._tail_text()}"
            ))

    def _fail_waiters(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, {}
        for d, call in waiters.items():
            if call.active():
                call.cancel()
            d.errback(exc)
