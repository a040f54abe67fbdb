"""
childproc: the supervision shared by the daemon's managed servers (Redis, PostgreSQL).

JOB
    :class:`SupervisedChild` is the Twisted service machinery common to
    :class:`mailrelay.redisproc.ManagedRedis` and
    :class:`mailrelay.pgproc.ManagedPostgres`: spawning a child
    (``reactor.spawnProcess``, no shell), probing it until it is ready,
    ``whenReady()`` waiters with a timeout, restarting a child that exits
    (after 0.5 s, doubling to 10 s while it keeps failing; reset once a child
    stayed ready 30 s), and ``stopService()`` sending the subclass's stop
    signals one after another (e.g. SIGTERM, then SIGKILL after 15 s) until
    the child is gone.  The subclass says what to spawn, how to tell it is
    ready, what ``whenReady()`` fires with, and its names and error class.

    :class:`ChildDirectory` is what the two ``state_dir/<name>/`` directories
    share: mode 0700, the socket path length check, the ``<name>.lock`` flock
    (holder's pid written in it), and ``<name>.log`` (moved to
    ``<name>.log.1`` past 10 MiB when opened).

    Both log through the subclass's logger, so every line keeps the
    namespace of the managing module (e.g. ``mailrelay.redisproc.ManagedRedis``).

SECURITY
    Directories mode 0700, lock and log files mode 0600.  The lock keeps two
    daemons from sharing a directory.  Children get only the environment the
    subclass gives them.

STANDARDS
    None.

DIAGNOSTICS
    Raises the subclass's ``error_class`` (ManagedRedisError,
    ManagedPostgresError) and ConfigError; the messages, and the log lines
    (``started <name> (pid <pid>) on <socket>``, ``<name> (pid <pid>) is ready
    on <socket>``, ``stopping <name> (pid <pid>)``, ``<name> (pid <pid>)
    <status>; restarting it in <delay>s<tail>``, ``<name>: <line>``) are those
    documented by :mod:`mailrelay.redisproc` and :mod:`mailrelay.pgproc`.

CONFIGURATION
    None of its own: ``[server]`` state_dir reaches it through the subclasses.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import os
import signal
from pathlib import Path
from typing import Any, ClassVar, TextIO

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailrelay.configvalues import ConfigError

MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
STALE_TIMEOUT = 10.0  # a stale server left by a killed daemon: its stop signal, then SIGKILL
KILL_TIMEOUT = 5.0  # after a SIGKILL (or PostgreSQL's SIGQUIT), before giving up or killing
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # a process ready this long resets the backoff
TAIL_LINES = 10
LOG_ROTATE_BYTES = 10 * 1024 * 1024


def describe_exit(reason: Failure) -> str:
    """``exited with status <n>`` or ``was killed by signal <n> (<NAME>)``."""
    value = reason.value
    sig = getattr(value, "signal", None)
    if sig:
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by signal {sig} ({name})"
    return f"exited with status {getattr(value, 'exitCode', None) or 0}"


class ChildDirectory:
    """``state_dir/<name>/``: mode 0700, its lock and its log file.

    Logs through its owner's logger (``log``), so its lines keep the owner's namespace.
    """

    name: ClassVar[str]  # the directory, and the stem of <name>.lock and <name>.log
    product: ClassVar[str]  # "Redis", "PostgreSQL": for messages

    def __init__(self, state_dir: Path, log: Logger) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.directory = self.state_dir / self.name
        self.log = log
        self._lock_fd: int | None = None
        size = len(os.fsencode(str(self.socket_path)))
        if size > MAX_SOCKET_PATH:
            raise ConfigError(
                f"server.state_dir: {str(self.state_dir)!r} is too long for {self.product}'s unix "
                f"socket {str(self.socket_path)!r} ({size} bytes, at most {MAX_SOCKET_PATH}); "
                f"use a shorter path"
            )

    @property
    def socket_path(self) -> Path:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}.log"

    def _prepare(self) -> None:
        """Hook: more set-up once the directory exists, before locking (OSError -> ConfigError)."""

    def lock(self) -> None:
        """Create the directory (mode 0700) and hold its lock, else ConfigError."""
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)
            self._prepare()
            fd = os.open(self.directory / f"{self.name}.lock",
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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

    def stop_stale(self) -> None:
        """Hook: stop a server a killed daemon left in the directory (blocking)."""

    def open_log(self) -> TextIO:
        """<name>.log for appending, line-buffered (moved to <name>.log.1 first when too big)."""
        try:
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name(f"{self.name}.log.1"))
        except FileNotFoundError:
            pass
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")


class ChildProcess(protocol.ProcessProtocol):
    """One child: forwards its output lines and its end to the owner."""

    def __init__(self, owner: SupervisedChild, name: str) -> None:
        self.owner = owner
        self.name = name
        self.pid: int | None = None
        self.ready = False
        self.ready_at = 0.0
        self.exited = False
        self._partial: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        *lines, rest = (self._partial.get(childFD, b"") + data).split(b"\n")
        self._partial[childFD] = rest
        for line in lines:
            self.owner._output(self.name, line.rstrip(b"\r").decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            if rest:
                self.owner._output(self.name, rest.decode("utf-8", "replace"))
        self._partial.clear()
        self.exited = True
        self.owner._ended(self, reason)


class SupervisedChild(service.Service):
    """Spawns, probes, restarts and stops one server child; subclasses fill in the hooks."""

    log: ClassVar[Logger]  # each subclass has its own, for its namespace
    error_class: ClassVar[type[Exception]]
    product: ClassVar[str]  # "Redis": "the managed Redis is stopped"
    server: ClassVar[str]  # "redis-server": the ready timeout's message
    writer: ClassVar[str]  # who "wrote nothing" to the log file
    not_ready: ClassVar[str]  # "did not answer PING": the ready timeout's message
    probe_interval: ClassVar[float]
    stop_signals: ClassVar[tuple[str, ...]] = ("TERM", "KILL")
    stop_waits: ClassVar[tuple[float, ...]] = (STOP_TIMEOUT,)  # before each next signal

    def __init__(self, files: ChildDirectory, ready_timeout: float) -> None:
        self.ready_timeout = ready_timeout
        self.files = files
        self.directory = files.directory
        self.socket_path = files.socket_path
        self.log_path = files.log_path
        self._proto: ChildProcess | None = None
        self._process: Any = None  # IProcessTransport of the current child
        self._stopping = False
        self._ever_ready = False
        self._delay = BACKOFF_START
        self._waiters: dict[defer.Deferred[str], Any] = {}
        self._stop_waiters: list[defer.Deferred[None]] = []
        self._calls: dict[str, Any] = {}  # "probe", "restart", "kill": pending DelayedCalls
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._log_file: TextIO | None = None

    # -- hooks ------------------------------------------------------------------

    def _spawn_next(self) -> None:
        """Spawn the next child with :meth:`_spawn` (OSError when it cannot)."""
        raise NotImplementedError

    def _ready_value(self) -> str:
        """What ``whenReady()`` fires with."""
        raise NotImplementedError

    def _check_ready(self) -> defer.Deferred[bool]:
        """Whether the current child is ready (a failure counts as not yet)."""
        raise NotImplementedError

    def _start_error(self, e: OSError) -> str:
        raise NotImplementedError

    def _spawn_error(self) -> str:
        """What could not be started, for the restart's error line."""
        raise NotImplementedError

    def _log_escalation(self, sig: str) -> None:
        raise NotImplementedError

    def _is_notable(self, line: str) -> bool:
        """Whether the child's output line is logged at info level (else debug)."""
        return False

    def _child_ended(self, proto: ChildProcess, status: str) -> bool:
        """Handle a child's end other than by a restart (True when it did)."""
        return False

    def _announce_ready(self, value: str) -> None:
        """Called after the waiters each time a child becomes ready."""

    # -- state ------------------------------------------------------------------

    def whenReady(self) -> defer.Deferred[str]:
        proto = self._proto
        if proto is not None and proto.ready and not proto.exited:
            return defer.succeed(self._ready_value())
        if self._stopping:
            return defer.fail(self.error_class(f"the managed {self.product} is stopped"))
        from twisted.internet import reactor

        d: defer.Deferred[str] = defer.Deferred(self._forget_waiter)
        self._waiters[d] = reactor.callLater(self.ready_timeout, self._waiter_timed_out, d)
        return d

    # -- service ------------------------------------------------------------------

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
                self._spawn_next()
            except OSError as e:
                self.running = 0
                self._cleanup()
                raise self.error_class(self._start_error(e)) from e
        except Exception as e:
            self._fail_waiters(e)  # whenReady() callers from before the start
            raise

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        self._cancel_call("probe")
        self._cancel_call("restart")
        self._fail_waiters(self.error_class(f"the managed {self.product} is stopping"))
        if self._proto is None or self._proto.exited:
            self._cleanup()
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._stop_waiters.append(d)
        if "kill" not in self._calls:
            self.log.info("stopping {name} (pid {pid})", name=self._proto.name, pid=self._proto.pid)
            self._escalate(0)
        return d

    # -- the child process ----------------------------------------------------

    def _spawn(self, name: str, executable: str, args: list[str], env: dict[str, str],
               **kwargs: Any) -> ChildProcess:
        from twisted.internet import reactor

        proto = ChildProcess(self, name)
        self._proto = proto
        self._process = reactor.spawnProcess(
            proto, executable, args, env=env, path=str(self.directory), **kwargs
        )
        proto.pid = self._process.pid
        return proto

    def _started(self, proto: ChildProcess) -> None:
        self.log.info("started {name} (pid {pid}) on {socket}",
                      name=proto.name, pid=proto.pid, socket=str(self.socket_path))
        self._probe(proto)

    def _is_current(self, proto: ChildProcess) -> bool:
        return proto is self._proto and not proto.exited and not self._stopping

    def _probe(self, proto: ChildProcess) -> None:
        from twisted.internet import reactor

        self._calls.pop("probe", None)
        if not self._is_current(proto):
            return

        def checked(ready: bool) -> None:
            if not self._is_current(proto):
                return
            if ready:
                self._became_ready(proto)
            else:
                self._calls["probe"] = reactor.callLater(self.probe_interval, self._probe, proto)

        d = self._check_ready()
        d.addCallback(checked)
        d.addErrback(lambda f: self.log.failure(f"managed {self.product} readiness check failed", f))

    def _became_ready(self, proto: ChildProcess) -> None:
        from twisted.internet import reactor

        proto.ready = True
        proto.ready_at = reactor.seconds()
        self._ever_ready = True
        self.log.info("{name} (pid {pid}) is ready on {socket}",
                      name=proto.name, pid=proto.pid, socket=str(self.socket_path))
        value = self._ready_value()
        waiters, self._waiters = self._waiters, {}
        for d, call in waiters.items():
            call.cancel()
            d.callback(value)
        self._announce_ready(value)

    def _output(self, name: str, line: str) -> None:
        self._tail.append(line)
        if self._log_file is not None:
            try:
                self._log_file.write(line + "\n")
            except OSError:
                pass
        (self.log.info if self._is_notable(line) else self.log.debug)("{name}: {line}", name=name, line=line)

    def _tail_text(self) -> str:
        if not self._tail:
            return f"; {self.writer} wrote nothing (see {self.log_path})"
        return f"; last lines of {self.log_path}:\n    " + "\n    ".join(self._tail)

    def _ended(self, proto: ChildProcess, reason: Failure) -> None:
        if proto is not self._proto:
            return
        from twisted.internet import reactor

        self._process = None
        status = describe_exit(reason)
        if self._stopping:
            self.log.info("{name} (pid {pid}) {status}", name=proto.name, pid=proto.pid, status=status)
            self._cleanup()
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                d.callback(None)
            return
        if self._child_ended(proto, status):
            return
        if proto.ready and reactor.seconds() - proto.ready_at >= STABLE_AFTER:
            self._delay = BACKOFF_START
        delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
        tail = self._tail_text()
        self.log.error(
            "{name} (pid {pid}) {status}; restarting it in {delay:g}s{tail}",
            name=proto.name, pid=proto.pid, status=status, delay=delay, tail=tail,
        )
        self._calls["restart"] = reactor.callLater(delay, self._restart)
        if not self._ever_ready:  # last: the waiters' callbacks may stop the service
            self._fail_waiters(self.error_class(f"{proto.name} {status} before it was ready{tail}"))

    def _restart(self) -> None:
        from twisted.internet import reactor

        self._calls.pop("restart", None)
        if self._stopping or not self.running:
            return
        try:
            self._spawn_next()
        except OSError as e:
            delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
            self.log.error("cannot start {exe}: {err}; trying again in {delay:g}s",
                           exe=self._spawn_error(), err=e.strerror or e, delay=delay)
            self._calls["restart"] = reactor.callLater(delay, self._restart)

    # -- stopping -------------------------------------------------------------

    def _signal(self, name: str) -> None:
        try:
            if self._process is not None:
                self._process.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def _escalate(self, step: int) -> None:
        """Send the ``step``-th stop signal; the next one after its wait."""
        from twisted.internet import reactor

        sig = self.stop_signals[step]
        if step:
            self._log_escalation(sig)
        self._signal(sig)
        if step + 1 < len(self.stop_signals):
            self._calls["kill"] = reactor.callLater(self.stop_waits[step], self._escalate, step + 1)

    def _cancel_call(self, name: str) -> None:
        call = self._calls.pop(name, None)
        if call is not None and call.active():
            call.cancel()

    def _cleanup(self) -> None:
        self._cancel_call("kill")
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
            d.errback(self.error_class(
                f"{self.server} {self.not_ready} on {self.socket_path} within "
                f"{self.ready_timeout:g}s{self._tail_text()}"
            ))

    def _fail_waiters(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, {}
        for d, call in waiters.items():
            if call.active():
                call.cancel()
            d.errback(exc)
