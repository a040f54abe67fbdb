"""mailrelay.pgproc: the managed PostgreSQL, real initdb and postgres in a short /tmp directory."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from twisted.internet import defer, threads
from twisted.trial import unittest

from mailrelay.childproc import MAX_SOCKET_PATH
from mailrelay.configvalues import ConfigError
from mailrelay.pgproc import ManagedPostgres, find_pg_bindir

WAIT = 30.0


def process_alive(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def query(conninfo: str, sql: str) -> defer.Deferred:
    def run():
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else None
    return threads.deferToThread(run)


class ManagedPostgresTests(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="mrpg", dir="/tmp"))
        os.chmod(self.tmp, 0o701)  # a root daemon's cluster user must reach state_dir below it
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start(self) -> ManagedPostgres:
        from twisted.internet import reactor

        pg = ManagedPostgres(self.tmp / "state")
        pg.startService()
        self.addCleanup(lambda: pg.stopService() if pg.running else None)
        self.ready = pg.whenReady().addTimeout(WAIT, reactor)
        return pg

    @defer.inlineCallbacks
    def test_starts_ready_stops_and_restarts_on_the_same_data(self):
        pg = self.start()
        conninfo = yield self.ready
        self.assertIn(f"host={self.tmp / 'state' / 'postgresql'}", conninfo)
        pid = pg.pid
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the cluster user
            self.assertEqual(process_uid(pid), pg.user.pw_uid)
            self.assertNotEqual(pg.user.pw_uid, 0)
        yield query(conninfo, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before')")
        # a second daemon on the same state_dir is refused while this one runs
        with self.assertRaises(ConfigError) as caught:
            ManagedPostgres(self.tmp / "state").startService()
        self.assertIn("in use by another mailrelay daemon", str(caught.exception))

        yield pg.stopService()
        self.assertIsNone(pg.pid)
        self.assertFalse(process_alive(pid))
        self.assertFalse((pg.data_dir / "postmaster.pid").exists())  # a clean shutdown
        log = pg.log_path.read_text()
        self.assertIn("database system is shut down", log)

        again = self.start()
        conninfo = yield self.ready
        self.assertNotEqual(again.pid, pid)
        rows = yield query(conninfo, "SELECT v FROM kept")
        self.assertEqual(rows, [("before",)])
        yield again.stopService()
        # no client was connected: the smart shutdown was enough, no connection was cut
        log = again.log_path.read_text()
        self.assertIn("received smart shutdown request", log)
        self.assertNotIn("fast shutdown request", log)

    @defer.inlineCallbacks
    def test_a_client_still_connected_gets_the_fast_shutdown(self):
        """Smart shutdown waits for clients; one that stays (an operator's psql) is cut by the fast
        shutdown after SMART_SHUTDOWN seconds, and the stop completes."""
        pg = self.start()
        conninfo = yield self.ready
        client = psycopg.connect(conninfo)
        self.addCleanup(client.close)
        yield pg.stopService()
        self.assertIsNone(pg.pid)
        log = pg.log_path.read_text()
        self.assertIn("received smart shutdown request", log)
        self.assertIn("received fast shutdown request", log)
        self.assertIn("database system is shut down", log)

    @defer.inlineCallbacks
    def test_a_postmaster_left_by_a_killed_daemon_is_stopped_first(self):
        pg = self.start()
        yield self.ready
        stale = pg.pid
        # The daemon dies without stopping its child: forget the child, release the lock.
        pg._stopping, pg._proto, pg._process = True, None, None
        pg.running = 0
        pg._cleanup()
        self.assertTrue(process_alive(stale))
        again = self.start()
        conninfo = yield self.ready
        self.assertFalse(process_alive(stale))
        self.assertNotEqual(again.pid, stale)
        rows = yield query(conninfo, "SELECT 1")
        self.assertEqual(rows, [(1,)])
        yield again.stopService()


def test_find_pg_bindir_holds_initdb_and_postgres() -> None:
    bindir = find_pg_bindir()
    assert os.access(bindir / "initdb", os.X_OK) and os.access(bindir / "postgres", os.X_OK)


def test_a_socket_path_too_long_is_a_one_line_error(tmp_path: Path) -> None:
    # <state_dir>/postgresql/.s.PGSQL.5432 is 25 bytes past state_dir
    state_dir = Path("/tmp") / ("d" * (MAX_SOCKET_PATH - len("/tmp/") - 25 + 1))
    with pytest.raises(ConfigError) as caught:
        ManagedPostgres(state_dir)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("server.state_dir:") and "too long for PostgreSQL's unix socket" in message
    fits = Path("/tmp") / ("d" * (MAX_SOCKET_PATH - len("/tmp/") - 25))
    assert len(str(ManagedPostgres(fits).socket_path)) == MAX_SOCKET_PATH


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root daemon runs PostgreSQL as another user")
def test_a_state_dir_the_cluster_user_cannot_reach_is_a_one_line_error() -> None:
    closed = Path(tempfile.mkdtemp(prefix="mrpg", dir="/tmp"))  # 0700, root's
    try:
        pg = ManagedPostgres(closed / "state")
        with pytest.raises(ConfigError) as caught:
            pg.startService()
        message = str(caught.value)
        assert "\n" not in message
        assert f"who cannot reach {str(closed)!r}" in message
        assert not pg.running
    finally:
        shutil.rmtree(closed, ignore_errors=True)
