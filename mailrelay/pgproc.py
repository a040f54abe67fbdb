"""
pgproc: the PostgreSQL server run and supervised by the daemon (for the archive).

JOB
    For an archive with no ``[archive] url`` (issue 18, not wired into
    :mod:`mailrelay.service` yet) the daemon runs its own PostgreSQL as a
    child process, like :mod:`mailrelay.redisproc` runs Redis::

        pg = ManagedPostgres(config.state_dir)
        pg.setServiceParent(application)
        conninfo = yield pg.whenReady()     # "host=<dir> port=5432 user=mailrelay dbname=postgres"

    On the first start ``initdb`` creates the cluster in
    ``state_dir/postgresql/data`` (UTF8, locale C, trust authentication on the
    unix socket only, superuser role ``mailrelay``); then ``postgres`` runs as a
    supervised child (``reactor.spawnProcess``, no shell) with no TCP listener.
    ``whenReady()`` fires with a libpq conninfo string once the postmaster
    reports ``ready`` in its ``postmaster.pid`` (what ``pg_ctl -w`` waits for:
    it accepts connections).  If postgres exits while the service runs, the
    exit status and the last lines of its log are logged and it is restarted
    after 0.5 s, doubling to 10 s.  ``stopService()`` sends SIGINT, PostgreSQL's
    *fast* shutdown (SIGTERM, the *smart* one, would wait for every client to
    disconnect, e.g. an idle pooled connection): open transactions are rolled
    back, the data is checkpointed, and it fires once the process is gone;
    SIGQUIT (immediate shutdown) after 15 s, SIGKILL 5 s later.  Callers close
    their connection pools first.

    A postmaster left running by a killed daemon (its pid on the first line of
    ``data/postmaster.pid``, serving this data directory) is stopped with
    SIGINT before the new one starts; this wait (at most 10 s) is the only
    blocking call.

    :class:`PostgresDirectory` owns ``state_dir/postgresql/`` (paths, owner,
    lock, the stale postmaster, the log file); :class:`ManagedPostgres` is the
    Twisted service that runs initdb, spawns, probes, restarts and stops.

SECURITY
    PostgreSQL refuses to run as root.  When the daemon runs as root, initdb
    and postgres run as the unprivileged system user ``postgres`` (created by
    Debian's ``postgresql`` package): uid, gid and that user's own groups
    (``initgroups``), none of root's.  ``state_dir/postgresql/`` and the data
    directory then belong to that user (mode 0700), and ``state_dir`` itself
    is made searchable by others (o+x, no read) so that user can reach them;
    a higher directory it cannot search gives a ConfigError.  A non-root
    daemon runs them as itself.
    No TCP listener (``listen_addresses = ''``); the unix socket is mode 0700
    in a 0700 directory, so only the cluster user (and root) can connect; the
    socket trusts whoever reaches it.

STANDARDS
    None: the readiness check reads ``postmaster.pid`` (PostgreSQL 10+ writes
    its status on line 8), as ``pg_ctl -w`` does.

DIAGNOSTICS
    ConfigError (one line, naming the key) when initdb/postgres are not
    installed, the socket path is too long (107 bytes), the directory cannot
    be created or reached by the cluster user, the user ``postgres`` is
    missing for a root daemon, or another daemon holds the lock.
    ManagedPostgresError when initdb fails, postgres is not ready within 30 s,
    exits before it was ever ready, or a stale postmaster does not go away;
    its message ends with the last lines of postgresql.log.  Logged:
    ``running initdb in <dir>``, ``started postgres (pid <pid>) on <socket>``,
    ``postgres (pid <pid>) is ready on <socket>``, ``stopping postgres (pid
    <pid>)``, ``postgres (pid <pid>) <status>; restarting it in <delay>s``,
    and the server's own lines as ``postgres: <line>``.

CONFIGURATION
    ``[server]`` state_dir.  Everything under ``state_dir/postgresql/``
    belongs to this module:
      data/             the cluster (PGDATA), made by initdb
      .s.PGSQL.5432     the unix socket (path at most 107 bytes)
      postgresql.lock   flock held by the daemon managing this directory
      postgresql.log    initdb's and postgres's output (moved to
                        postgresql.log.1 past 10 MiB at start)
"""

from __future__ import annotations

import collections
import errno
import fcntl
import glob
import os
import pwd
import re
import shutil
import signal
import stat
import time
from pathlib import Path
from typing import Any, TextIO

from twisted.application import service
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailrelay.configvalues import ConfigError

INSTALL_HINT = "install it with `apt-get install postgresql` (scripts/dev.sh does)"
CLUSTER_USER = "postgres"  # the unprivileged user of Debian's package, for a root daemon
ROLE = "mailrelay"  # the superuser role initdb creates
PORT = 5432  # only names the socket file: there is no TCP listener
MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux
READY_TIMEOUT = 30.0
PROBE_INTERVAL = 0.02
STALE_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 5.0
BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
TAIL_LINES = 10
LOG_ROTATE_BYTES = 10 * 1024 * 1024
SERVER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("listen_addresses", ""),
    ("unix_socket_permissions", "0700"),
    ("max_connections", "20"),
    ("shared_buffers", "128MB"),
    ("logging_collector", "off"),
    ("synchronous_commit", "on"),
)

_SEARCH_DIRS: tuple[str, ...] = ("/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


class ManagedPostgresError(Exception):
    """The managed PostgreSQL could not be made ready (the message says why)."""


def _version_key(bindir: str) -> tuple[int, ...]:
    major = Path(bindir).parent.name  # /usr/lib/postgresql/<major>/bin
    return tuple(int(part) for part in re.findall(r"\d+", major)) or (0,)


def find_pg_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres``, else ConfigError.

    PATH first (then the usual bin directories, for daemons with a short PATH),
    then Debian's ``/usr/lib/postgresql/<major>/bin``, the newest major first.
    """
    for path in (None, os.pathsep.join(_SEARCH_DIRS)):
        initdb = shutil.which("initdb", path=path)
        if initdb:
            bindir = Path(os.path.realpath(initdb)).parent
            if os.access(bindir / "postgres", os.X_OK):
                return bindir
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        if all(os.access(os.path.join(bindir, exe), os.X_OK) for exe in ("initdb", "postgres")):
            return Path(bindir)
    raise ConfigError(f"archive.url: the managed archive needs PostgreSQL's initdb and postgres, "
                      f"which are not installed; {INSTALL_HINT}, or set archive.url")


def cluster_user() -> pwd.struct_passwd | None:
    """The user initdb and postgres run as: ``postgres`` for a root daemon, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(CLUSTER_USER)
    except KeyError:
        raise ConfigError(
            f"archive.url: PostgreSQL refuses to run as root and there is no user "
            f"{CLUSTER_USER!r} to run it as; {INSTALL_HINT}"
        ) from None


def _searchable_by(path: Path, user: pwd.struct_passwd) -> bool:
    st = path.stat()
    if st.st_uid == user.pw_uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _describe_exit(reason: Failure) -> str:
    sig = getattr(reason.value, "signal", None)
    if sig:
        try:
            return f"was killed by signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            return f"was killed by signal {sig}"
    return f"exited with status {getattr(reason.value, 'exitCode', None) or 0}"


class _Child(protocol.ProcessProtocol):
    """One child (initdb or postgres): forwards its output lines and its end to the owner."""

    def __init__(self, owner: ManagedPostgres, name: str) -> None:
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


class PostgresDirectory:
    """``state_dir/postgresql/``: its files, owner, lock, and a postmaster a killed daemon left."""

    def __init__(self, state_dir: Path, log: Logger, user: pwd.struct_passwd | None) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.directory = self.state_dir / "postgresql"
        self.data_dir = self.directory / "data"
        self.log = log
        self.user = user
        self._lock_fd: int | None = None
        size = len(os.fsencode(str(self.socket_path)))
        if size > MAX_SOCKET_PATH:
            raise ConfigError(
                f"server.state_dir: {str(self.state_dir)!r} is too long for PostgreSQL's unix "
                f"socket {str(self.socket_path)!r} ({size} bytes, at most {MAX_SOCKET_PATH}); "
                f"use a shorter path"
            )

    @property
    def socket_path(self) -> Path:
        return self.directory / f".s.PGSQL.{PORT}"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgresql.log"

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def prepare(self) -> None:
        """Create the directory (0700, owned by the cluster user) and hold its lock."""
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.directory.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)
            if self.user is not None:
                self._open_path_to(self.user)
                os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
                if self.data_dir.exists():
                    os.chown(self.data_dir, self.user.pw_uid, self.user.pw_gid)
            fd = os.open(self.directory / "postgresql.lock",
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

    def _open_path_to(self, user: pwd.struct_passwd) -> None:
        """Let ``user`` reach our directory: o+x on state_dir when we own it, else ConfigError."""
        st = self.state_dir.stat()
        if st.st_uid == os.geteuid() and not _searchable_by(self.state_dir, user):
            os.chmod(self.state_dir, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
        for parent in [self.state_dir, *self.state_dir.parents]:
            if not _searchable_by(parent, user):
                raise ConfigError(
                    f"server.state_dir: PostgreSQL runs as user {user.pw_name!r} (it refuses "
                    f"root), who cannot reach {str(parent)!r}; make it searchable (chmod o+x) "
                    f"or use another state_dir"
                )

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _is_our_postmaster(self, pid: int) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return b"postgres" in cmdline and os.fsencode(str(self.data_dir)) in cmdline

    def stop_stale(self) -> None:
        """Stop a postmaster left behind by a daemon that was killed (blocking, <= 10 s)."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if pid <= 0 or not self._is_our_postmaster(pid):
            return
        self.log.warn("stopping a stale postgres (pid {pid}) left in {directory} by a previous daemon",
                      pid=pid, directory=str(self.data_dir))
        for sig, wait in ((signal.SIGINT, STALE_TIMEOUT), (signal.SIGKILL, KILL_TIMEOUT)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while self._is_our_postmaster(pid):  # not our child: poll /proc
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            else:
                return
        raise ManagedPostgresError(
            f"a stale postgres (pid {pid}) in {self.data_dir} does not exit, even after SIGKILL; "
            f"stop it and start mailrelay again"
        )

    def postmaster_status(self) -> str:
        """Line 8 of postmaster.pid (``ready``, ``starting``, ``stopping``), or ``""``."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().split("\n")
        except OSError:
            return ""
        return lines[7].strip() if len(lines) > 7 else ""

    def open_log(self) -> TextIO:
        """postgresql.log for appending, line-buffered (rotated once past 10 MiB)."""
        try:
            if self.log_path.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(self.log_path, self.log_path.with_name("postgresql.log.1"))
        except FileNotFoundError:
            pass
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")


class ManagedPostgres(service.Service):
    """A supervised PostgreSQL reachable only through the unix socket in ``directory``."""

    log = Logger()

    def __init__(self, state_dir: Path, *, ready_timeout: float = READY_TIMEOUT) -> None:
        self.ready_timeout = ready_timeout
        self.user = cluster_user()
        self.files = PostgresDirectory(state_dir, self.log, self.user)
        self.directory = self.files.directory
        self.data_dir = self.files.data_dir
        self.socket_path = self.files.socket_path
        self.log_path = self.files.log_path
        self.bindir = find_pg_bindir()
        self._proto: _Child | None = None
        self._process: Any = None
        self._stopping = False
        self._ever_ready = False
        self._delay = BACKOFF_START
        self._waiters: dict[defer.Deferred[str], Any] = {}
        self._stop_waiters: list[defer.Deferred[None]] = []
        self._calls: dict[str, Any] = {}
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._log_file: TextIO | None = None

    @property
    def conninfo(self) -> str:
        """libpq connection string of the ``postgres`` database (``dbname`` may be appended)."""
        return f"host={self.directory} port={PORT} user={ROLE} dbname=postgres"

    @property
    def pid(self) -> int | None:
        """The pid of the running postmaster, if any."""
        proto = self._proto
        return proto.pid if proto is not None and proto.name == "postgres" and not proto.exited else None

    def whenReady(self) -> defer.Deferred[str]:
        """Fire with :attr:`conninfo` once postgres accepts connections (ManagedPostgresError
        after ``ready_timeout``, when it fails before ever being ready, or on stop)."""
        if self.pid is not None and self._proto is not None and self._proto.ready:
            return defer.succeed(self.conninfo)
        if self._stopping:
            return defer.fail(ManagedPostgresError("the managed PostgreSQL is stopped"))
        from twisted.internet import reactor

        d: defer.Deferred[str] = defer.Deferred(lambda d: self._waiters.pop(d).cancel())
        self._waiters[d] = reactor.callLater(self.ready_timeout, self._waiter_timed_out, d)
        return d

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        try:
            self.files.prepare()
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
                raise ManagedPostgresError(f"cannot start PostgreSQL from {self.bindir}: {e.strerror or e}") from e
        except Exception as e:
            self._fail_waiters(e)
            raise

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        self._stopping = True
        self._cancel_call("probe")
        self._cancel_call("restart")
        self._fail_waiters(ManagedPostgresError("the managed PostgreSQL is stopping"))
        if self._proto is None or self._proto.exited:
            self._cleanup()
            return defer.succeed(None)
        from twisted.internet import reactor

        d: defer.Deferred[None] = defer.Deferred()
        self._stop_waiters.append(d)
        if "kill" not in self._calls:
            self.log.info("stopping {name} (pid {pid})", name=self._proto.name, pid=self._proto.pid)
            self._signal("INT")  # fast shutdown
            self._calls["kill"] = reactor.callLater(STOP_TIMEOUT, self._escalate, "QUIT")
        return d

    # -- the children ---------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> None:
        from twisted.internet import reactor

        proto = _Child(self, name)
        self._proto = proto
        ids = {} if self.user is None else {"uid": self.user.pw_uid, "gid": self.user.pw_gid}
        self._process = reactor.spawnProcess(
            proto, str(self.bindir / name), [str(self.bindir / name), *args], env={"LC_ALL": "C"},
            path=str(self.directory), **ids,
        )
        proto.pid = self._process.pid

    def _spawn_next(self) -> None:
        """initdb when the cluster does not exist yet, else postgres."""
        if not self.files.initialised:
            self.log.info("running initdb in {directory}", directory=str(self.data_dir))
            self._spawn("initdb", ["-D", str(self.data_dir), "-E", "UTF8", "--no-locale",
                                   "-U", ROLE, "--auth=trust", "--no-instructions"])
            return
        settings = [*SERVER_SETTINGS, ("unix_socket_directories", str(self.directory)),
                    ("port", str(PORT))]
        args = ["-D", str(self.data_dir)]
        for key, value in settings:
            args += ["-c", f"{key}={value}"]
        self._spawn("postgres", args)
        self.log.info("started postgres (pid {pid}) on {socket}",
                      pid=self.pid, socket=str(self.socket_path))
        self._probe(self._proto)

    def _probe(self, proto: _Child | None) -> None:
        from twisted.internet import reactor

        self._calls.pop("probe", None)
        if proto is not self._proto or proto is None or proto.exited or self._stopping:
            return
        if self.files.postmaster_status() == "ready" and self.socket_path.exists():
            self._became_ready(proto)
        else:
            self._calls["probe"] = reactor.callLater(PROBE_INTERVAL, self._probe, proto)

    def _became_ready(self, proto: _Child) -> None:
        from twisted.internet import reactor

        proto.ready = True
        proto.ready_at = reactor.seconds()
        self._ever_ready = True
        self.log.info("postgres (pid {pid}) is ready on {socket}", pid=proto.pid, socket=str(self.socket_path))
        waiters, self._waiters = self._waiters, {}
        for d, call in waiters.items():
            call.cancel()
            d.callback(self.conninfo)

    def _output(self, name: str, line: str) -> None:
        self._tail.append(line)
        if self._log_file is not None:
            try:
                self._log_file.write(line + "\n")
            except OSError:
                pass
        is_notable = any(level in line for level in ("WARNING:", "ERROR:", "FATAL:", "PANIC:"))
        (self.log.info if is_notable else self.log.debug)("{name}: {line}", name=name, line=line)

    def _tail_text(self) -> str:
        if not self._tail:
            return f"; PostgreSQL wrote nothing (see {self.log_path})"
        return f"; last lines of {self.log_path}:\n    " + "\n    ".join(self._tail)

    def _ended(self, proto: _Child, reason: Failure) -> None:
        if proto is not self._proto:
            return
        from twisted.internet import reactor

        self._process = None
        status = _describe_exit(reason)
        if self._stopping:
            self.log.info("{name} (pid {pid}) {status}", name=proto.name, pid=proto.pid, status=status)
            self._cleanup()
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                d.callback(None)
            return
        if proto.name == "initdb":
            if status.endswith("status 0") and self.files.initialised:
                self._restart()
            else:
                self.log.error("initdb {status}{tail}", status=status, tail=self._tail_text())
                self._fail_waiters(ManagedPostgresError(f"initdb {status}{self._tail_text()}"))
            return
        if proto.ready and reactor.seconds() - proto.ready_at >= STABLE_AFTER:
            self._delay = BACKOFF_START
        delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
        tail = self._tail_text()
        self.log.error("postgres (pid {pid}) {status}; restarting it in {delay:g}s{tail}",
                       pid=proto.pid, status=status, delay=delay, tail=tail)
        self._calls["restart"] = reactor.callLater(delay, self._restart)
        if not self._ever_ready:
            self._fail_waiters(ManagedPostgresError(f"postgres {status} before it was ready{tail}"))

    def _restart(self) -> None:
        from twisted.internet import reactor

        self._calls.pop("restart", None)
        if self._stopping or not self.running:
            return
        try:
            self._spawn_next()
        except OSError as e:
            delay, self._delay = self._delay, min(self._delay * 2, BACKOFF_MAX)
            self.log.error("cannot start postgres: {err}; trying again in {delay:g}s",
                           err=e.strerror or e, delay=delay)
            self._calls["restart"] = reactor.callLater(delay, self._restart)

    # -- stopping -------------------------------------------------------------

    def _signal(self, name: str) -> None:
        try:
            if self._process is not None:
                self._process.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass

    def _escalate(self, name: str) -> None:
        from twisted.internet import reactor

        self.log.warn("postgres (pid {pid}) still running after a fast shutdown request; sending SIG{sig}",
                      pid=self.pid, sig=name)
        self._signal(name)
        if name != "KILL":
            self._calls["kill"] = reactor.callLater(KILL_TIMEOUT, self._escalate, "KILL")

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

    def _waiter_timed_out(self, d: defer.Deferred[str]) -> None:
        if self._waiters.pop(d, None) is not None:
            d.errback(ManagedPostgresError(
                f"postgres did not become ready on {self.socket_path} within "
                f"{self.ready_timeout:g}s{self._tail_text()}"
            ))

    def _fail_waiters(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, {}
        for d, call in waiters.items():
            if call.active():
                call.cancel()
            d.errback(exc)


