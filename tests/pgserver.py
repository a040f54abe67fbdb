"""
pgserver: a private PostgreSQL for the tests and the benchmarks (blocking, no Twisted).

``start_postgres()`` runs initdb in a new short directory under /tmp and starts ``postgres`` on
a unix socket only (no TCP), as the unprivileged cluster user when we are root (PostgreSQL
refuses root), with fsync off: tests and benchmarks measure the data model, not the disk.
``PostgresServer.conninfo(dbname)`` is its libpq conninfo; ``stop()`` is a fast shutdown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class PostgresServer:
    """A PostgreSQL made by :func:`start_postgres`: its cluster in ``socket_dir/data``."""

    process: subprocess.Popen | None
    root: Path  # the temporary directory holding everything
    socket_dir: Path
    log_path: Path
    role: str = "mailrelay"
    run_as: dict[str, Any] | None = None  # subprocess user/group when the cluster user is not us

    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port=5432 user={self.role} dbname={dbname}"

    def status(self) -> str:
        """Line 8 of postmaster.pid: ``ready`` once it accepts connections."""
        try:
            lines = (self.socket_dir / "data" / "postmaster.pid").read_text().split("\n")
        except OSError:
            return ""
        return lines[7].strip() if len(lines) > 7 else ""

    def start(self, timeout: float = 30.0) -> None:
        """Start postgres on the cluster (again, after :meth:`stop`) and wait until it is ready."""
        from mailrelay.pgproc import find_pg_bindir

        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(find_pg_bindir() / "postgres"), "-D", str(self.socket_dir / "data"),
                 "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.socket_dir}",
                 "-c", "fsync=off", "-c", "max_connections=40"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={"LC_ALL": "C"}, **(self.run_as or {}),
            )
        deadline = time.monotonic() + timeout
        # postmaster.pid's status line is the readiness signal (what pg_ctl -w polls): no event to wait on
        while self.status() != "ready" and self.process.poll() is None:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"PostgreSQL not ready after {timeout:g}s:\n{self.log_path.read_text()}")
            time.sleep(0.05)
        if self.process.poll() is not None:
            raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (fast shutdown), then SIGKILL after ``timeout`` seconds."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_postgres(timeout: float = 30.0) -> PostgresServer:
    """initdb and start a PostgreSQL in a new short directory under /tmp (socket only)."""
    from mailrelay.pgproc import cluster_user, find_pg_bindir

    user = cluster_user()  # postgres when we are root: PostgreSQL refuses root
    root = Path(tempfile.mkdtemp(prefix="mrpg", dir="/tmp"))
    directory = root / "pg"
    directory.mkdir(mode=0o700)
    ids: dict[str, Any] = {}
    if user is not None:
        os.chmod(root, 0o701)  # searchable, not readable, by the cluster user
        os.chown(directory, user.pw_uid, user.pw_gid)
        ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    server = PostgresServer(process=None, root=root, socket_dir=directory, log_path=root / "postgresql.log",
                            run_as=ids)
    with open(server.log_path, "ab") as log:
        subprocess.run(
            [str(find_pg_bindir() / "initdb"), "-D", str(directory / "data"), "-E", "UTF8", "--no-locale",
             "-U", "mailrelay", "--auth=trust", "-N", "--no-instructions"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, check=True,
            env={"LC_ALL": "C"}, **ids,
        )
    server.start(timeout)
    return server
