"""
(f) The archive's PostgreSQL fails while mail flows (issue 18): twistd daemons on a real Redis and
a real PostgreSQL, SMTP clients in threads, deliveries to smtp-sink, the archive read back with SQL
and compared with what Redis holds. The data is at format version 2 (the archive lives in
PostgreSQL).

``test_postgresql_stopped_during_a_load``: the test's own PostgreSQL is stopped for 10 s while
2,000 messages are handed to a daemon (10,000 under MAILRELAY_FAULTS_FULL=1). Every message gets
its 250 at once (no transaction waits on the archive: none takes longer than
MAX_TRANSACTION_SECONDS, far under the outage), /readyz stays 200 and reports the archive's lag,
the daemon logs one warning for the outage and one line when the database answers again, and once
it is back the archiver catches up by itself: every accepted message is archived exactly once, with
its recipients and its whole timeline as Redis holds them.

``test_kill_9_in_the_middle_of_an_archiver_batch``: the test locks the ``messages`` table, so that
daemon A's archiver blocks inside its batch's transaction (seen in pg_stat_activity, the COPYs
done, the INSERT waiting), then kills A with SIGKILL and releases the lock: nothing of A's batch is
committed. Daemon B (same Redis, same PostgreSQL) takes A's pending entries over (XAUTOCLAIM once
they are idle longer than the archiver's CLAIM_IDLE) and finishes: no row missing, none doubled.
At quick scale the test ages A's pending entries past CLAIM_IDLE (XCLAIM ... IDLE, to A itself)
instead of waiting two minutes; at full scale it waits the real CLAIM_IDLE.
"""

from __future__ import annotations

import collections
import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import psycopg

from mailrelay.services.archiver import CLAIM_IDLE, TAKE_OVER_INTERVAL
from mailrelay.store.archiverecords import MessageSnapshot
from mailrelay.store.base import text_fields
from mailrelay.store.keys import Keys
from mailrelay.store.timelinepack import unpack_timeline

from .conftest import FULL, Ledger, Load, Outcome, daemon_toml, queue_empty, scale, wait_until

ARCHIVER_STARTED = r"archiver: consumer (\S+) of group archiver, started"
ARCHIVE_DOWN = r"archiver: the archive database at .* does not answer"
ARCHIVE_BACK = r"archiver: the archive database answers again"
TOOK_OVER = r"archiver: took over (\d+) entries left pending by stopped daemons"
GROUP = "archiver"
EPHEMERAL = "tcp:0:interface=127.0.0.1"
#: No SMTP transaction may take this long: far under the 10 s outage, so that none waited on it.
MAX_TRANSACTION_SECONDS = 3.0


# -- what the archive holds, against Redis ----------------------------------------------------


@dataclass
class ArchiveComparison:
    """The archive's rows against the acknowledged ids and Redis (see :func:`compare_archive`)."""

    missing: set[str] = field(default_factory=set)         # acknowledged, no messages row
    doubled: dict[str, int] = field(default_factory=dict)  # id -> messages rows (more than one)
    unexpected: set[str] = field(default_factory=set)      # rows of ids no client got a 250 for
    doubled_recipients: list[tuple[str, int]] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)   # rows that are not what Redis holds
    compared_with_redis: int = 0   # messages whose Redis keys were still there
    released: int = 0              # messages whose keys were released (checked on their own)

    def problems(self) -> list[str]:
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} acknowledged messages not archived: {sorted(self.missing)[:5]}")
        if self.doubled:
            out.append(f"{len(self.doubled)} messages archived more than once: {dict(list(self.doubled.items())[:5])}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} archived messages nobody got a 250 for: {sorted(self.unexpected)[:5]}")
        if self.doubled_recipients:
            out.append(f"{len(self.doubled_recipients)} recipients archived more than once: {self.doubled_recipients[:5]}")
        return out + self.differences[:10]


def compare_archive(conninfo: str, redis: Any, prefix: str, acknowledged: set[str]) -> ArchiveComparison:
    """Every acknowledged message once in ``messages``, each of its recipients once in
    ``recipients``, and nothing else. A message whose Redis keys are still there must be archived
    as Redis holds it: the same timeline entries (byte for byte, so each event exactly once), the
    same recipients with the same states and attempts, the same status. One whose keys were
    released (archived whole, then ``[archive] release_after`` passed) must hold one ``queued``
    event and, for each recipient, one ``delivered``: what each test message lives through."""
    keys = Keys(prefix)
    result = ArchiveComparison()
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT id, status, timeline_length, timeline FROM messages").fetchall()
        recipient_rows = conn.execute(
            "SELECT message_id, rcpt, recipient, state, attempts FROM recipients").fetchall()
    counts = collections.Counter(row[0] for row in rows)
    result.missing = acknowledged - set(counts)
    result.doubled = {i: n for i, n in counts.items() if n > 1}
    result.unexpected = set(counts) - acknowledged
    recipient_counts = collections.Counter((row[0], row[1]) for row in recipient_rows)
    result.doubled_recipients = sorted(key for key, n in recipient_counts.items() if n > 1)
    archived_recipients: dict[str, set[tuple[int, str, str, int]]] = collections.defaultdict(set)
    for message_id, rcpt, recipient, state, attempts in recipient_rows:
        archived_recipients[message_id].add((rcpt, recipient, state, attempts))
    archived = {row[0]: row for row in rows if row[0] in acknowledged}
    ids = sorted(archived)
    replies = redis.pipeline([command for i in ids for command in
                              (("HGETALL", keys.msg(i)), ("LRANGE", keys.timeline(i), 0, -1))])
    for n, message_id in enumerate(ids):
        stored, timeline = replies[2 * n], replies[2 * n + 1]
        _, status, length, packed = archived[message_id]
        entries = unpack_timeline(packed)
        if length != len(entries):
            result.differences.append(f"{message_id}: timeline_length {length}, {len(entries)} entries")
        if stored:
            result.compared_with_redis += 1
            snapshot = MessageSnapshot.decode(message_id, text_fields(stored), timeline)
            assert snapshot is not None, (message_id, stored)
            expected = {(r.rcpt, r.recipient, r.state, r.attempts) for r in snapshot.recipients}
            if entries != list(timeline):
                result.differences.append(f"{message_id}: archived timeline {entries} != Redis's {timeline}")
            if archived_recipients[message_id] != expected:
                result.differences.append(f"{message_id}: archived recipients {archived_recipients[message_id]}"
                                          f" != Redis's {expected}")
            if status != snapshot.status:
                result.differences.append(f"{message_id}: archived status {status} != Redis's {snapshot.status}")
        else:
            result.released += 1
            recipients = archived_recipients[message_id]
            types = sorted(json.loads(entry)["type"] for entry in entries)
            if types != sorted(["queued"] + ["delivered"] * len(recipients)) or not recipients:
                result.differences.append(f"{message_id} (released): events {types}, recipients {recipients}")
            if {state for _, _, state, _ in recipients} != {"delivered"} or status != "delivered":
                result.differences.append(f"{message_id} (released): status {status}, recipients {recipients}")
    return result


def archive_group(redis: Any, prefix: str) -> dict[str, Any]:
    """The ``archiver`` group of the event stream (XINFO GROUPS: pending, lag, ...), {} if none."""
    for group in redis.command("XINFO", "GROUPS", Keys(prefix).events):
        info = {group[i].decode(): group[i + 1] for i in range(0, len(group), 2)}
        if info["name"] == GROUP.encode():
            return info
    return {}


def archive_caught_up(redis: Any, prefix: str) -> bool:
    """Every event so far archived and acknowledged, and no delivery left to make one: the
    group has nothing pending and nothing it was never given (Redis 7's ``lag``)."""
    group = archive_group(redis, prefix)
    return bool(group) and group["pending"] == 0 and group["lag"] == 0 and queue_empty(redis, prefix)


def entry_key(entry_id: bytes | str) -> tuple[int, int]:
    """A stream entry id (``<ms>-<seq>``) as a number pair, in the stream's order."""
    ms, _, seq = (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).partition("-")
    return int(ms), int(seq or 0)


def archived_through(redis: Any, prefix: str, entry_id: bytes) -> bool:
    """The ``archiver`` group acknowledged every entry of the stream up to ``entry_id``: it was
    given them all (its last delivered id is not older) and none of them is pending."""
    group = archive_group(redis, prefix)
    if not group or entry_key(group["last-delivered-id"]) < entry_key(entry_id):
        return False
    return not redis.command("XPENDING", Keys(prefix).events, GROUP, "-", entry_id, 1)


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def archiver_config(redis_url: str, prefix: str, sink_port: int, archive: dict[str, Any]):
    """A fault-test daemon (tests/faults/conftest.daemon_toml) with a web listener and ``archive``
    as its ``[archive]`` table."""
    def config(port, state_dir):
        return daemon_toml(redis={"url": redis_url, "key_prefix": prefix}, port=port, state_dir=state_dir,
                           sink_port=sink_port, web={"listen": [EPHEMERAL]}, archive=archive)
    return config


# -- PostgreSQL stopped during a load ---------------------------------------------------------


def test_postgresql_stopped_during_a_load(own_postgres, seed, slots, sink, redis_server, unique_prefix):
    total = scale(2000, 10000)
    outage = 10.0
    with psycopg.connect(own_postgres.conninfo(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE mailrelay")  # empty: the daemon applies the schema
    conninfo = own_postgres.conninfo("mailrelay")
    redis = redis_server.client()
    [slot] = slots(1, archiver_config(redis_server.url, unique_prefix, sink.port, {"url": conninfo}))
    daemon = slot.start()
    daemon.wait_for_matches(ARCHIVER_STARTED, timeout=60)
    assert redis.command("GET", Keys(unique_prefix).data_version) == b"2"
    web = daemon.ports["web"]

    # spread over 2.5 outages: PostgreSQL goes at a fifth of it, so that mail is accepted before,
    # during and after the outage (and while the archiver catches up)
    load = Load(lambda: [slot.port], total=total, threads=8, seed=seed, tag="pgdown",
                rate=total / (2.5 * outage)).start()
    marks: dict[str, float] = {}
    probes: list[tuple[float, int, dict[str, Any]]] = []   # (time, /readyz status, its JSON)
    probing = threading.Event()
    errors: list[Exception] = []

    def probe() -> None:
        """/readyz, over and over, from before the outage until the archive caught up."""
        try:
            while not probing.is_set():
                status, state = readyz(web)
                probes.append((time.monotonic(), status, state))
                probing.wait(0.2)  # a sampling rate, not a synchronisation
        except Exception as e:
            errors.append(e)

    def stop_postgresql() -> None:
        try:
            if not load.wait_for(lambda: load.progress() >= 0.2):
                raise AssertionError("the load stopped before PostgreSQL was stopped")
            marks["acked_before"] = len(load.acked)
            marks["log_lines"] = len(daemon.lines)
            marks["down"] = time.monotonic()
            own_postgres.stop()
            # The fault itself, not synchronisation: PostgreSQL stays down this long while the
            # clients keep sending.
            time.sleep(max(0.0, outage - (time.monotonic() - marks["down"])))
            own_postgres.start()
            marks["up"] = time.monotonic()
            marks["acked_during"] = len(load.acked) - marks["acked_before"]
            marks["acked_after"] = total - len(load.acked)
            with redis_server.client() as watch:   # (this thread's own connection)
                [[last, _]] = watch.command("XREVRANGE", Keys(unique_prefix).events, "+", "-", "COUNT", 1)
                group = archive_group(watch, unique_prefix)
                marks["backlog"] = group["pending"] + (group["lag"] or 0)
                # caught up: everything in the stream when PostgreSQL came back is archived (the
                # load goes on meanwhile)
                wait_until(lambda: archived_through(watch, unique_prefix, last), scale(90, 600),
                           "the archiver to catch up after the outage", interval=0.1)
            marks["caught_up"] = time.monotonic()
        except Exception as e:
            errors.append(e)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    fault = threading.Thread(target=stop_postgresql, daemon=True)
    fault.start()
    try:
        load.wait(scale(180, 600))
        outcome = Outcome("postgresql down 10s", seed, load, Ledger(sink))
        missing = outcome.wait_delivered(scale(60, 300))
        fault.join(scale(120, 600))
        assert not errors, errors
        wait_until(lambda: archive_caught_up(redis, unique_prefix), scale(60, 300),
                   "the archiver to archive the whole load", interval=0.1)

        def readyz_says_no_lag() -> bool:
            return bool(probes) and probes[-1][2].get("archive_lag_entries") == 0
        wait_until(readyz_says_no_lag, 30, "/readyz to report no archive lag")
    finally:
        probing.set()
        prober.join(30)
    assert not errors, errors

    comparison = compare_archive(conninfo, redis, unique_prefix, outcome.acked_ids)
    durations = [seconds for _, seconds, code in load.transactions if code == 250]
    slowest = max(load.transactions, key=lambda t: t[1])
    during = [(began, seconds) for began, seconds, _ in load.transactions if marks["down"] <= began < marks["up"]]
    probes_during = [(status, state) for at, status, state in probes if marks["down"] <= at < marks["up"]]
    lag_during = max((state.get("archive_lag_seconds") or 0 for _, state in probes_during), default=0)
    outcome.extra.update({
        "outage": f"{marks['up'] - marks['down']:.1f}s", "acked_before": int(marks["acked_before"]),
        "acked_during_outage": int(marks["acked_during"]), "acked_after": int(marks["acked_after"]),
        "max_250": f"{max(durations):.2f}s", "slowest_at": f"{slowest[0] - marks['up']:+.1f}s_from_return", "max_250_during_outage": f"{max(s for _, s in during):.2f}s",
        "max_readyz_lag_during_outage": f"{lag_during:.1f}s",
        "backlog_at_return": marks["backlog"], "catch_up": f"{marks['caught_up'] - marks['up']:.1f}s",
        "archived": len(outcome.acked_ids) - len(comparison.missing),
        "compared_with_redis": comparison.compared_with_redis, "released": comparison.released})
    print(outcome.summary(), flush=True)

    # every message got its 250, none waited on the archive
    assert not missing, f"{len(missing)} acknowledged messages never delivered: {sorted(missing)[:10]}"
    assert set(load.codes) == {250} and load.drops == 0, (load.codes, load.drops)
    assert len(outcome.acked_ids) == total
    assert marks["acked_during"] >= total // 10, f"only {marks['acked_during']} messages accepted during the outage"
    assert max(durations) < MAX_TRANSACTION_SECONDS, \
        f"a transaction took {max(durations):.2f}s: {sorted(durations)[-5:]}"
    # /readyz: ready throughout, and it showed the archive falling behind
    assert probes_during, "no /readyz answer during the outage"
    assert {status for _, status, _ in probes} == {200}, collections.Counter(status for _, status, _ in probes)
    assert all(state["ready"] for _, _, state in probes)
    assert any((state.get("archive_lag_entries") or 0) > 0 for _, state in probes_during), probes_during[-3:]
    # the lag is measured every 5 s: the outage's second measure saw the first unarchived entry >= 5 s old
    assert lag_during >= 4, probes_during
    # one warning for the outage, one line when the database is back
    down, back = daemon.find_lines(ARCHIVE_DOWN), daemon.find_lines(ARCHIVE_BACK)
    assert (len(down), len(back)) == (1, 1), (down, back, slot.log_tail(80))
    log = daemon.log_text()
    assert log.index(down[0].string) < log.index(back[0].string)
    since_outage = daemon.lines[int(marks["log_lines"]):]
    warnings = [line for line in since_outage if re.search(r"#(warn|error|critical)\]|Traceback|Unhandled", line)]
    assert warnings == [down[0].string], warnings[:10]
    # after it, every accepted message and each of its events in the archive exactly once
    assert not comparison.problems(), comparison.problems()
    assert daemon.running


# -- kill -9 in the middle of an archiver batch ----------------------------------------------


#: The archiver's merge of a batch into ``messages`` (mailrelay/store/archivewrite.py).
MERGE_MESSAGES = "%INSERT INTO messages AS m %"


def test_kill_9_in_the_middle_of_an_archiver_batch(seed, slots, sink, redis_server, unique_prefix,
                                                    archive_databases):
    total = scale(1000, 5000)
    conninfo = archive_databases()
    redis = redis_server.client()
    events = Keys(unique_prefix).events
    # a statement waits on the test's lock as long as it takes (not the default 5 s)
    config = archiver_config(redis_server.url, unique_prefix, sink.port,
                             {"url": conninfo, "statement_timeout": "10m"})
    a, b = slots(2, config)
    daemon_a = a.start()
    consumer_a = daemon_a.wait_for_matches(ARCHIVER_STARTED, timeout=60)[0].group(1)

    load = Load(lambda: [a.port], total=total, threads=8, seed=seed, tag="kill").start()
    with psycopg.connect(conninfo) as lock:
        assert load.wait_for(lambda: load.progress() >= 0.3), "the load stopped early"
        # A's archiver is between batches or inside one: the lock is granted once it committed
        lock.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
        archived_before = lock.execute("SELECT count(*) FROM messages").fetchone()[0]
        with psycopg.connect(conninfo, autocommit=True) as watch:

            def blocked_backend() -> int | None:
                """A's archiver's backend, its batch's rows copied into the staging tables, its
                merge into ``messages`` waiting on the test's lock."""
                rows = watch.execute(
                    "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"
                    " AND wait_event_type = 'Lock' AND query LIKE %s",
                    (lock.info.backend_pid, MERGE_MESSAGES)).fetchall()
                return rows[0][0] if rows else None

            backend = wait_until(blocked_backend, 30, "A's archiver to block inside its batch")
            load.wait(scale(120, 600))   # acceptance goes on
            outcome = Outcome("kill -9 mid-batch", seed, load, Ledger(sink))
            missing = outcome.wait_delivered(scale(60, 300))
            wait_until(lambda: queue_empty(redis, unique_prefix), 60, "the queue to drain")
            # every event is in the stream now; A still holds its batch, blocked in the same statement
            assert blocked_backend() == backend
            in_flight = redis.command("XPENDING", events, GROUP, "-", "+", 100_000, consumer_a)
            assert in_flight, "A's batch holds no entries"
            assert redis.command("XPENDING", events, GROUP)[0] == len(in_flight)  # A's batch alone
            assert a.kill(signal.SIGKILL) == -signal.SIGKILL
            lock.rollback()  # the lock goes; A's backend finds its client gone and rolls back

            def backend_gone() -> bool:
                return not watch.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)).fetchall()
            wait_until(backend_gone, 30, "A's orphaned backend to end")
            # nothing of A's batch was committed: it was cut in the middle
            assert watch.execute("SELECT count(*) FROM messages").fetchone()[0] == archived_before

    ids = [entry[0] for entry in in_flight]
    if not FULL:
        # Instead of waiting CLAIM_IDLE (2 minutes): A's entries made that old, still A's
        redis.command("XCLAIM", events, GROUP, consumer_a, 0, *ids, "IDLE", int(CLAIM_IDLE * 1000) + 1000, "JUSTID")
    daemon_b = b.start()

    def taken_over() -> bool:
        return sum(int(m.group(1)) for m in daemon_b.find_lines(TOOK_OVER)) >= len(ids)
    wait_until(taken_over, CLAIM_IDLE + 3 * TAKE_OVER_INTERVAL + 60,
               f"B to take the {len(ids)} entries of A's batch over")
    started = time.monotonic()
    wait_until(lambda: archive_caught_up(redis, unique_prefix), scale(60, 300), "B to finish the archive",
               interval=0.1)
    comparison = compare_archive(conninfo, redis, unique_prefix, outcome.acked_ids)
    outcome.extra.update({
        "batch_in_flight": len(ids), "archived_before_lock": archived_before,
        "taken_over": sum(int(m.group(1)) for m in daemon_b.find_lines(TOOK_OVER)),
        "finished_in": f"{time.monotonic() - started:.1f}s",
        "compared_with_redis": comparison.compared_with_redis, "released": comparison.released})
    print(outcome.summary(), flush=True)

    assert not missing, f"{len(missing)} acknowledged messages never delivered: {sorted(missing)[:10]}"
    assert set(load.codes) == {250} and len(outcome.acked_ids) == total, load.codes
    assert not redis.command("XPENDING", events, GROUP, "-", "+", 100_000, consumer_a)
    # B finished A's batch: no row missing, none doubled
    assert not comparison.problems(), comparison.problems()
    assert not daemon_b.find_lines(r"Traceback|Unhandled error|archiver: (a batch|writing a batch) failed"), \
        b.log_tail(80)
    assert re.search(TOOK_OVER, daemon_b.log_text())
