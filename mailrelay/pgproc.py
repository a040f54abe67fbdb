"""
pgproc: the PostgreSQL server run and supervised by the daemon (for the archive).

JOB
    For an archive with no ``[archive] url`` (issue 18) the daemon runs its
    own PostgreSQL as a child process (:mod:`mailrelay.service`, service
    ``postgresql``; :mod:`mailrelay.services.archive` makes its database
    ``mailrelay``), like :mod:`mailrelay.redisproc` runs Redis::

        pg = ManagedPostgres(config.state_dir)
        pg.setServiceParent(application)
        conninfo = yield pg.whenReady()     # "host=<dir> port=5432 user=mailrelay dbname=postgres"

    :func:`managed_conninfo` gives that conninfo from ``state_dir`` alone (for
    ``mailrelay archive status``, which reaches the daemon's server).

    On the first start ``initdb`` creates the cluster in
    ``state_dir/postgresql/data`` (UTF8, locale C, trust authentication on the
    unix socket only, superuser role ``mailrelay``); then ``postgres`` runs as a
    supervised child (``reactor.spawnProcess``, no shell) with no TCP listener.
    ``whenReady()`` fires with a libpq conninfo string once the postmaster
    reports ``ready`` in its ``postmaster.pid`` (what ``pg_ctl -w`` waits for:
    it accepts connections).  If postgres exits while the service runs, the
    exit status and the last lines of its log are logged and it is restarted
    after 0.5 s, doubling to 10 s.  ``stopService()`` sends SIGTERM, PostgreSQL's
    *smart* shutdown: callers close their connection pools first, so it ends as
    soon as their backends have seen the connections close (a backend still
    reading its client's goodbye is not cut); SIGINT, the *fast* shutdown (open
    transactions rolled back, e.g. an operator's psql session), after
    :data:`SMART_SHUTDOWN` seconds; SIGQUIT (immediate shutdown) 15 s later,
    SIGKILL 5 s after that.  It fires once the process is gone, the data
    checkpointed.

    A postmaster left running by a killed daemon (its pid on the first line of
    ``data/postmaster.pid``, serving this data directory) is stopped with
    SIGINT before the new one starts; this wait (at most 10 s) is the only
    blocking call.

    :class:`PostgresDirectory` owns ``state_dir/postgresql/`` (paths, owner,
    lock, the stale postmaster, the log file); :class:`ManagedPostgres` is the
    Twisted service that runs initdb, spawns, probes, restarts and stops.  The
    machinery it shares with :mod:`mailrelay.redisproc` (directory, lock, log
    file, spawn, readiness waiters, restart backoff, stop signals) is in
    :mod:`mailrelay.childproc`.

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

import glob
import os
import pwd
import re
import shutil
import signal
import stat
import time
from pathlib import Path

from twisted.internet import defer
from twisted.logger import Logger

from mailrelay.childproc import (
    KILL_TIMEOUT, READY_TIMEOUT, STALE_TIMEOUT, STOP_TIMEOUT, ChildDirectory,
    ChildProcess, SupervisedChild,
)
from mailrelay.configvalues import ConfigError

INSTALL_HINT = "install it with `apt-get install postgresql` (scripts/dev.sh does)"
CLUSTER_USER = "postgres"  # the unprivileged user of Debian's package, for a root daemon
ROLE = "mailrelay"  # the superuser role initdb creates
PORT = 5432  # only names the socket file: there is no TCP listener
PROBE_INTERVAL = 0.02
SERVER_SETTINGS: tuple[tuple[str, str], ...] = (
    ("listen_addresses", ""),
    ("unix_socket_permissions", "0700"),
    ("max_connections", "20"),
    ("shared_buffers", "128MB"),
    ("logging_collector", "off"),
    ("synchronous_commit", "on"),
)

#: Seconds the smart shutdown (SIGTERM) may take before the fast one (SIGINT).
SMART_SHUTDOWN = 2.0

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


class PostgresDirectory(ChildDirectory):
    """``state_dir/postgresql/``: its files, owner, lock, and a postmaster a killed daemon left."""

    name = "postgresql"
    product = "PostgreSQL"

    def __init__(self, state_dir: Path, log: Logger, user: pwd.struct_passwd | None) -> None:
        self.user = user
        super().__init__(state_dir, log)
        self.data_dir = self.directory / "data"

    @property
    def socket_path(self) -> Path:
        return self.directory / f".s.PGSQL.{PORT}"

    @property
    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _prepare(self) -> None:
        """Owned by the cluster user (for a root daemon), who must be able to reach it."""
        if self.user is not None:
            self._open_path_to(self.user)
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
            if self.data_dir.exists():
                os.chown(self.data_dir, self.user.pw_uid, self.user.pw_gid)

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


def managed_conninfo(state_dir: Path | str) -> str:
    """libpq connection string of the ``postgres`` database of the managed PostgreSQL under
    ``state_dir`` (relative: from the current directory), whether it runs or not."""
    directory = Path(state_dir).absolute() / PostgresDirectory.name
    return f"host={directory} port={PORT} user={ROLE} dbname=postgres"


class ManagedPostgres(SupervisedChild):
    """A supervised PostgreSQL reachable only through the unix socket in ``directory``."""

    log = Logger()
    error_class = ManagedPostgresError
    product = writer = "PostgreSQL"
    server = "postgres"
    not_ready = "did not become ready"
    probe_interval = PROBE_INTERVAL
    stop_signals = ("TERM", "INT", "QUIT", "KILL")  # smart, fast, immediate shutdown, kill
    stop_waits = (SMART_SHUTDOWN, STOP_TIMEOUT, KILL_TIMEOUT)

    def __init__(self, state_dir: Path, *, ready_timeout: float = READY_TIMEOUT) -> None:
        self.user = cluster_user()
        super().__init__(PostgresDirectory(state_dir, self.log, self.user), ready_timeout)
        self.data_dir = self.files.data_dir
        self.bindir = find_pg_bindir()

    @property
    def conninfo(self) -> str:
        """libpq connection string of the ``postgres`` database (``dbname`` may be appended)."""
        return managed_conninfo(self.files.state_dir)

    @property
    def pid(self) -> int | None:
        """The pid of the running postmaster, if any."""
        proto = self._proto
        return proto.pid if proto is not None and proto.name == "postgres" and not proto.exited else None

    def whenReady(self) -> defer.Deferred[str]:
        """Fire with :attr:`conninfo` once postgres accepts connections (ManagedPostgresError
        after ``ready_timeout``, when it fails before ever being ready, or on stop)."""
        return super().whenReady()

    # -- SupervisedChild's hooks -------------------------------------------------

    def _spawn_child(self, name: str, args: list[str]) -> ChildProcess:
        ids = {} if self.user is None else {"uid": self.user.pw_uid, "gid": self.user.pw_gid}
        exe = str(self.bindir / name)
        return self._spawn(name, exe, [exe, *args], env={"LC_ALL": "C"}, **ids)

    def _spawn_next(self) -> None:
        """initdb when the cluster does not exist yet, else postgres."""
        if not self.files.initialised:
            self.log.info("running initdb in {directory}", directory=str(self.data_dir))
            self._spawn_child("initdb", ["-D", str(self.data_dir), "-E", "UTF8", "--no-locale",
                                         "-U", ROLE, "--auth=trust", "--no-instructions"])
            return
        settings = [*SERVER_SETTINGS, ("unix_socket_directories", str(self.directory)),
                    ("port", str(PORT))]
        args = ["-D", str(self.data_dir)]
        for key, value in settings:
            args += ["-c", f"{key}={value}"]
        self._started(self._spawn_child("postgres", args))

    def _ready_value(self) -> str:
        return self.conninfo

    def _check_ready(self) -> defer.Deferred[bool]:
        return defer.succeed(self.files.postmaster_status() == "ready" and self.socket_path.exists())

    def _is_notable(self, line: str) -> bool:
        return any(level in line for level in ("WARNING:", "ERROR:", "FATAL:", "PANIC:"))

    def _child_ended(self, proto: ChildProcess, status: str) -> bool:
        if proto.name != "initdb":
            return False
        if status.endswith("status 0") and self.files.initialised:
            self._restart()
        else:
            self.log.error("initdb {status}{tail}", status=status, tail=self._tail_text())
            self._fail_waiters(ManagedPostgresError(f"initdb {status}{self._tail_text()}"))
        return True

    def _start_error(self, e: OSError) -> str:
        return f"cannot start PostgreSQL from {self.bindir}: {e.strerror or e}"

    def _spawn_error(self) -> str:
        return "postgres"

    def _log_escalation(self, sig: str) -> None:
        if sig == "INT":  # clients other than the daemon's pools (closed first) are still connected
            self.log.info("postgres (pid {pid}) still has clients after a smart shutdown request; sending "
                          "SIGINT (fast shutdown)", pid=self.pid)
            return
        self.log.warn("postgres (pid {pid}) still running after a fast shutdown request; sending SIG{sig}",
                      pid=self.pid, sig=sig)
