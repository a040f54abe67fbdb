"""
bench/servers.py: the processes under test, each started privately on 127.0.0.1 in a
temporary directory and stopped (and reaped) by the benchmark.

- :class:`Redis`: ``redis-server`` as the daemon's managed Redis runs it (AOF only,
  ``appendfsync always`` or ``everysec``), on a unix socket.
- :class:`Postgres`: a private PostgreSQL for the archive, run as mailrelay's managed one runs
  it (its settings, a unix socket only, ``postgres`` as the user when we are root), database
  ``mailrelay`` made; ``.url`` is the daemons' ``[archive] url``.
- :class:`Mailrelay`: the daemon under ``twistd -n`` of this interpreter (as
  ``tests/conftest.py`` starts it), optionally under ``py-spy record`` or twistd's cProfile.
  Its archive is the :class:`Postgres` given (bench/run.py: one per measurement, shared by
  its daemons), else one it starts for itself and stops after the daemon.
- :class:`Postfix`: a private Postfix instance (``postfix -c DIR``) with its own queue,
  smtpd on a spare port, relayhost = a smtp-sink; ``hold`` puts every message on hold.
- :class:`Sink`: Postfix's ``smtp-sink`` (``-M N``: exit after N messages).

PID 1 of some sandboxes does not reap orphans, and Postfix's master daemonizes: call
:func:`become_subreaper` first, then :func:`reap_orphans` after stopping things.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from procstat import ProcGroup, descendants, parent_map, wait_gone

SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
PR_SET_CHILD_SUBREAPER = 36

#: Every Popen started here, stopped by :func:`stop_everything` at exit.
CHILDREN: list[subprocess.Popen] = []
#: Stop callbacks of running servers, newest last.
RUNNING: list[Any] = []


def which(name: str) -> str:
    found = shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)
    if found is None:
        raise SystemExit(f"bench: {name} is not installed")
    return found


def become_subreaper() -> bool:
    """Orphans of our children (Postfix's daemonized master) become ours to reap."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def reap_orphans() -> int:
    """Wait for our zombie children that no Popen object owns; returns how many."""
    owned = {p.pid for p in CHILDREN if p.returncode is None}
    me = os.getpid()
    reaped = 0
    for pid, ppid in parent_map().items():
        if ppid != me or pid in owned:
            continue
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            reaped += bool(done)
        except ChildProcessError:
            pass
    for p in CHILDREN:
        p.poll()
    return reaped


def popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    process = subprocess.Popen([str(a) for a in args], **kwargs)
    CHILDREN.append(process)
    return process


def stop_process(process: subprocess.Popen, timeout: float = 20, sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        try:
            process.send_signal(sig)
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except ProcessLookupError:
            pass
    return process.returncode


def stop_everything() -> None:
    """At exit: stop the running servers, then any child left, then reap."""
    while RUNNING:
        server = RUNNING.pop()
        try:
            server.stop()
        except Exception as e:  # keep cleaning up
            print(f"bench: stopping {server!r} failed: {e}", file=sys.stderr)
    for p in CHILDREN:
        stop_process(p, timeout=5)
    reap_orphans()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, process: subprocess.Popen | None = None, timeout: float = 20,
                   banner: bool = False) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                if banner:
                    s.recv(512)
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
                return True
        except OSError:
            time.sleep(0.05)
    return False


# -- Redis ---------------------------------------------------------------------------------


def resp_encode(args: tuple) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def resp_read(f: Any) -> Any:
    line = f.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise RuntimeError(f"unexpected Redis reply {line!r}")


class Redis:
    """``redis-server`` with AOF persistence, as mailrelay's managed Redis runs it."""

    def __init__(self, directory: Path, appendfsync: str = "always") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendfsync = appendfsync
        self.socket_path = self.dir / "redis.sock"
        self.process = popen([
            which("redis-server"), "--port", "0", "--unixsocket", self.socket_path,
            "--unixsocketperm", "700", "--dir", self.dir, "--appendonly", "yes",
            "--appendfsync", appendfsync, "--save", "", "--maxmemory-policy", "noeviction",
            "--daemonize", "no", "--logfile", self.dir / "redis.log",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.command("PING") == "PONG":
                    break
            except (OSError, RuntimeError):
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start: " + (self.dir / "redis.log").read_text()[-2000:])
            time.sleep(0.02)
        RUNNING.append(self)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}?db=0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def command(self, *args: Any) -> Any:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.socket_path))
            s.sendall(resp_encode(args))
            with s.makefile("rb") as f:
                return resp_read(f)

    def info(self, section: str = "memory") -> dict[str, str]:
        text = self.command("INFO", section).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))

    def aof_bytes(self) -> int:
        total = 0
        for path in self.dir.rglob("*"):
            if path.is_file() and ("appendonly" in str(path)):
                total += path.stat().st_size
        return total

    def group(self, name: str = "redis") -> ProcGroup:
        return ProcGroup(name, [self.pid])

    def stop(self) -> None:
        stop_process(self.process)
        if self in RUNNING:
            RUNNING.remove(self)

    def __repr__(self) -> str:
        return f"<Redis pid {self.pid} appendfsync {self.appendfsync}>"


# -- PostgreSQL (the archive) ---------------------------------------------------------------


class Postgres:
    """A PostgreSQL as mailrelay's managed one runs (mailrelay/pgproc.py's settings), in a new
    short directory under /tmp (the socket path limit; reachable by ``postgres`` when we are
    root), with the database ``mailrelay``; ``.url`` is an ``[archive] url``."""

    def __init__(self, timeout: float = 30) -> None:
        import tempfile

        from mailrelay.pgproc import ROLE, SERVER_SETTINGS, cluster_user, find_pg_bindir

        bindir = find_pg_bindir()
        user = cluster_user()  # PostgreSQL refuses root
        self.root = Path(tempfile.mkdtemp(prefix="mrbpg", dir="/tmp"))
        self.dir = self.root / "pg"
        self.dir.mkdir(mode=0o700)
        ids: dict[str, Any] = {}
        if user is not None:
            os.chmod(self.root, 0o701)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.role = ROLE
        self.log_path = self.root / "postgresql.log"
        data = self.dir / "data"
        with open(self.log_path, "ab") as log:
            subprocess.run([bindir / "initdb", "-D", data, "-E", "UTF8", "--no-locale", "-U", ROLE,
                            "--auth=trust", "--no-instructions"],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True,
                           env={"LC_ALL": "C"}, **ids)
            settings = [*SERVER_SETTINGS, ("unix_socket_directories", str(self.dir))]
            args: list[Any] = [bindir / "postgres", "-D", data]
            for key, value in settings:
                args += ["-c", f"{key}={value}"]
            self.process = popen(args, stdout=log, stderr=subprocess.STDOUT, env={"LC_ALL": "C"}, **ids)
        RUNNING.append(self)
        deadline = time.monotonic() + timeout
        while self._status() != "ready":
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("postgres did not start: " + self.log_path.read_text()[-2000:])
            time.sleep(0.02)
        import psycopg

        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE mailrelay")

    def _status(self) -> str:
        try:
            lines = (self.dir / "data" / "postmaster.pid").read_text().split("\n")
        except OSError:
            return ""
        return lines[7].strip() if len(lines) > 7 else ""

    def conninfo(self, dbname: str = "mailrelay") -> str:
        return f"host={self.dir} port=5432 user={self.role} dbname={dbname}"

    @property
    def url(self) -> str:
        return self.conninfo()

    @property
    def pid(self) -> int:
        return self.process.pid

    def group(self, name: str = "postgresql") -> ProcGroup:
        return ProcGroup(name, [self.pid], tree=True)  # the postmaster and its backends

    def stop(self) -> None:
        stop_process(self.process, sig=signal.SIGINT)  # fast shutdown
        if self in RUNNING:
            RUNNING.remove(self)
        shutil.rmtree(self.root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<Postgres pid {self.pid} {self.dir}>"


# -- the mailrelay daemon --------------------------------------------------------------------

#: twistd of this interpreter, as tests/conftest.py runs it (not ``python -m twisted``).
TWISTD = [sys.executable, "-c",
          "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]
LISTENING_RE = re.compile(r"(?:^|[\s\]])(?P<service>[A-Za-z0-9_.-]+) listening on "
                          r"(?P<host>\S+):(?P<port>\d+) \((?P<mode>[^)]*)\)")
READY_RE = re.compile(r"(?:^|[\s\]])mailrelay \S+ ready\s*$", re.M)
FATAL_RE = re.compile(r"mailrelay could not start|Traceback|mailrelay: ")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    blocks = []
    for name, table in sections.items():
        if table:
            blocks.append("\n".join([f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items()]))
    return "\n\n".join(blocks) + "\n"


def hash_password(password: str) -> str:
    """A [submission] users hash, made by ``mailrelay hash-password``."""
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", "hash-password"],
                            input=password + "\n", capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1]


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """One self-signed certificate (ECDSA P-256, as mailrelay generates) for every server."""
    from mailrelay.tlsutil import ensure_self_signed

    cert, key = ensure_self_signed(Path(directory), "bench.invalid")
    return Path(cert), Path(key)


class Mailrelay:
    """One mailrelay daemon: ``twistd -n --logfile=- --pidfile= mailrelay -c DIR/mailrelay.toml``."""

    def __init__(self, directory: Path, redis: Redis, *, cert: Path, key: Path,
                 users: Mapping[str, str], delivery: Mapping[str, Any] | None = None,
                 submission: Mapping[str, Any] | None = None, name: str = "mailrelay",
                 py_spy: tuple[str, Path] | None = None, cprofile: Path | None = None,
                 archive: Postgres | None = None, timeout: float = 60) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.redis = redis
        # the archive: the run's shared PostgreSQL, else one of our own (stopped after us)
        self.own_postgres = Postgres() if archive is None else None
        self.postgres = archive or self.own_postgres
        config = {
            "server": {"hostname": "bench-mailrelay.invalid", "state_dir": str(self.dir / "state")},
            "redis": {"url": redis.url},
            "archive": {"url": self.postgres.url},
            "tls": {"cert": str(cert), "key": str(key)},
            "submission": {
                "listen": ["tcp:0:interface=127.0.0.1"],
                "listen_tls": [],
                "users": dict(users),
                # smtp-source speaks neither STARTTLS nor AUTH
                "trusted_networks": ["127.0.0.0/8"],
                # one address opens every benchmark connection
                "max_connections_per_ip": 1000000,
                "max_connections": 1000000,  # the idle-connections benchmark opens thousands
                **(submission or {}),
            },
            "delivery": dict(delivery) if delivery is not None else {"enabled": False},
            # the JSON API / metrics listener: a free port, so that two daemons can run
            "web": {"listen": ["tcp:0:interface=127.0.0.1"]},
        }
        self.config_path = self.dir / "mailrelay.toml"
        self.config_path.write_text(render_toml(config))
        self.log_path = self.dir / "daemon.log"
        twistd_opts = ["-n", "--logfile=-", "--pidfile="]
        if cprofile is not None:
            twistd_opts += [f"--profile={cprofile}", "--profiler=cprofile", "--savestats"]
        command = [*TWISTD, *twistd_opts, "mailrelay", "-c", str(self.config_path)]
        if py_spy is not None:
            exe, out = py_spy
            command = [exe, "record", "--nonblocking", "--function", "--rate", "250",
                       "--format", "raw", "--output", str(out), "--", *command]
        self.log = open(self.log_path, "wb")
        self.process = popen(command, cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
        RUNNING.append(self)
        self.port = self._wait_ready(timeout)
        self.pid = self.process.pid
        if py_spy is not None:  # the daemon is py-spy's child
            kids = [p for p in descendants(self.process.pid) if p != self.process.pid]
            self.pid = kids[0]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if READY_RE.search(text):
                for m in LISTENING_RE.finditer(text):
                    if m["service"] == "submission":
                        return int(m["port"])
                raise RuntimeError(f"{self.name}: no submission listener in the log:\n{text[-3000:]}")
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start (exit {self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.05)

    def group(self) -> ProcGroup:
        return ProcGroup(self.name, [self.pid])

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            if self.pid != self.process.pid:  # under py-spy: stop the daemon, py-spy then writes
                try:
                    os.kill(self.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.process.wait(timeout + 30)
                except subprocess.TimeoutExpired:
                    stop_process(self.process, 5)
            else:
                stop_process(self.process, timeout)
        self.log.close()
        if self in RUNNING:
            RUNNING.remove(self)
        if self.own_postgres is not None:
            self.own_postgres.stop()
        reap_orphans()

    def __repr__(self) -> str:
        return f"<Mailrelay {self.name} pid {self.process.pid}>"


# -- Postfix -------------------------------------------------------------------------------

POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance in ``directory``: its own queue, logs and smtpd port.

    ``hold``: every message accepted by smtpd is put on hold (acceptance only, durable:
    cleanup fsyncs the queue file before smtpd answers 250). Otherwise mail is relayed to
    ``[127.0.0.1]:relay_port`` (a smtp-sink). ``smtpd_maxproc`` raises the smtpd process
    limit (one process per connection) for the idle-connections scenario.
    """

    def __init__(self, directory: Path, *, relay_port: int, hold: bool, cert: Path, key: Path,
                 smtpd_maxproc: int | None = None, name: str = "postfix") -> None:
        self.dir = Path(directory)
        self.name = name
        self.etc, self.queue, self.data = self.dir / "etc", self.dir / "queue", self.dir / "data"
        for d in (self.etc, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix")
        os.chmod(self.dir, 0o755)
        self.hold = hold
        self.master_pid: int | None = None
        self.maillog = self.dir / "maillog"
        for attempt in range(5):
            self.port = free_port()
            self._configure(relay_port, cert, key, smtpd_maxproc)
            self._run("check")
            self._run("start")
            self.master_pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            RUNNING.append(self)
            if wait_listening(self.port, timeout=20, banner=True):
                return
            self.stop()
        raise RuntimeError(f"postfix did not start:\n{self.maillog.read_text()[-3000:]}")

    def _configure(self, relay_port: int, cert: Path, key: Path, maxproc: int | None) -> None:
        main = f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench-postfix.invalid
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relay_port}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file = {self.maillog}
maillog_file_prefixes = {self.dir}
syslog_name = postfix-bench
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtp_tls_security_level = none
"""
        if maxproc:
            main += f"default_process_limit = {maxproc}\n"
        (self.etc / "main.cf").write_text(main)
        opts = " -o smtpd_client_restrictions=check_client_access,static:HOLD" if self.hold else ""
        limit = str(maxproc) if maxproc else "-"
        (self.etc / "master.cf").write_text(
            f"127.0.0.1:{self.port} inet n - n - {limit} smtpd{opts}\n" + POSTFIX_SERVICES)

    def _run(self, *args: str) -> str:
        result = subprocess.run([which("postfix"), "-c", str(self.etc), *args], capture_output=True,
                                text=True, timeout=60)
        reap_orphans()
        if result.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result.stdout

    def group(self) -> ProcGroup:
        assert self.master_pid is not None
        return ProcGroup(self.name, [self.master_pid], tree=True)

    def count(self, queue: str = "hold") -> int:
        return sum(len(files) for _, _, files in os.walk(self.queue / queue))

    def queue_disk_kb(self) -> int:
        total = 0
        for root, _, files in os.walk(self.queue):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_blocks * 512
                except FileNotFoundError:
                    pass
        return total // 1024

    def release(self) -> None:
        """Release held mail and flush the queue (deliver it now)."""
        subprocess.run([which("postsuper"), "-c", str(self.etc), "-H", "ALL"], check=True,
                       capture_output=True, timeout=300)
        subprocess.run([which("postqueue"), "-c", str(self.etc), "-f"], check=True,
                       capture_output=True, timeout=60)
        reap_orphans()

    def stop(self) -> None:
        if self in RUNNING:
            RUNNING.remove(self)
        if self.master_pid is None:
            return
        members = descendants(self.master_pid)
        try:
            self._run("stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        wait_gone(self.master_pid, 30)
        for pid in members:  # anything the master left behind
            if not wait_gone(pid, 2):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        reap_orphans()
        self.master_pid = None

    def __repr__(self) -> str:
        return f"<Postfix {self.dir} master {self.master_pid}>"


# -- smtp-sink -----------------------------------------------------------------------------


class Sink:
    """Postfix's smtp-sink: accepts and discards; ``count``: exits after that many messages."""

    def __init__(self, directory: Path, *, count: int | None = None, port: int | None = None,
                 name: str = "smtp-sink") -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.count = count
        for _ in range(5):
            self.port = port or free_port()
            self.log = open(self.dir / "sink.log", "ab")
            args = [which("smtp-sink"), "-u", "nobody"]
            if count:
                args += ["-M", str(count)]
            args += [f"127.0.0.1:{self.port}", "1024"]
            self.process = popen(args, stdout=self.log, stderr=subprocess.STDOUT)
            if wait_listening(self.port, self.process):
                RUNNING.append(self)
                return
            self.log.close()
            if port:
                break
        raise RuntimeError(f"smtp-sink did not start: {(self.dir / 'sink.log').read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def group(self) -> ProcGroup:
        return ProcGroup(self.name, [self.pid])

    def wait(self, timeout: float) -> bool:
        """True once the sink has exited (``-M``: it has received ``count`` messages)."""
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        stop_process(self.process, 5)
        self.log.close()
        if self in RUNNING:
            RUNNING.remove(self)

    def __repr__(self) -> str:
        return f"<Sink port {self.port} pid {self.pid}>"
