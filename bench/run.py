#!/usr/bin/env python3
"""
bench/run.py: mailrelay side by side with Postfix and smtp-sink, in one run, on 127.0.0.1.

    python bench/run.py [--quick] [--scenario NAME ...] [--messages N] [--target NAME ...]
                        [--load NAME ...] [--redis-fsync always|everysec|both] [--rounds K]
    python bench/run.py --profile [--profiler py-spy|cprofile] [--messages N]

Scenarios (default: all of them; see docs/benchmarks.md):

  acceptance  20 sessions, 20,000 messages of 2 KB (--quick: 2,000) into mailrelay (delivery
              off), Postfix (every message put on hold) and smtp-sink; loads: smtp-source and
              bench/loadgen.py, many and one message per connection, plain and STARTTLS, and
              loadgen paced at half of smtp-source's rate (acceptance latency p50/p99).
  e2e         the same load relayed to a smtp-sink that exits after N messages: the timer runs
              until it has them all; also "release": deliver an already queued (held) queue.
  queue       100,000 messages queued (--quick: 10,000), delivery off: daemon RSS and Redis
              used_memory added; then a daemon with delivery on defers them all once (its
              smarthost refuses connections): its RSS. Postfix: queue disk usage.
  idle        2,000 open sessions (--quick: 200), greeted and EHLO'd: RSS per connection.
  twocore     two mailrelay daemons sharing one Redis, the load split across both.

mailrelay runs with its archive: a PostgreSQL per measurement (shared by its daemons), whose
processes count in the CPU per message (daemon + Redis + PostgreSQL, daemon + Redis beside
it); after each load the driver waits until the archiver has acknowledged every event and
reports how long that took after the last 250 or the last delivery ("archive caught up").

Everything runs from a temporary directory and is stopped and reaped at the end; results are
printed and written to bench/results/run-<time>.json and .md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def _ensure_interpreter() -> None:
    """Re-run with the project's .venv interpreter when this one lacks twisted or mailrelay."""
    try:
        import twisted  # noqa: F401
        import mailrelay  # noqa: F401
        import txredisapi  # noqa: F401
    except ImportError:
        venv_python = ROOT / ".venv" / "bin" / "python"
        if venv_python.exists() and not os.environ.get("MAILRELAY_BENCH_REEXEC"):
            os.environ["MAILRELAY_BENCH_REEXEC"] = "1"
            os.execv(str(venv_python), [str(venv_python), *sys.argv])
        raise SystemExit("bench: run me with the project's interpreter (scripts/dev.sh sets up "
                         ".venv): twisted, txredisapi and mailrelay must be importable")


_ensure_interpreter()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import smtplib  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any, Callable  # noqa: E402

sys.path.insert(0, str(BENCH))

import servers  # noqa: E402
from procstat import Meter, ProcGroup, status_kb  # noqa: E402
from servers import Mailrelay, Postfix, Postgres, Redis, Sink, which  # noqa: E402

RESULTS = BENCH / "results"
SENDER, RECIPIENT, DOMAIN = "perf-src@src.invalid", "rcpt@dst.invalid", "dst.invalid"
KEY_PREFIX = "mailrelay:"  # the daemon's default [redis] key_prefix
BENCH_USER = "bench"

SCENARIOS = ("acceptance", "e2e", "queue", "idle", "twocore")


def queued_jobs(redis: Redis) -> int:
    """The delivery jobs mailrelay queued for DOMAIN. A message's jobs are queued when its
    acknowledgement is confirmed, milliseconds after its 250: wait (up to 5 s) for the last."""
    deadline = time.monotonic() + 5
    while int(redis.command("ZCARD", f"{KEY_PREFIX}queue:unsettled")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(redis.command("ZCARD", f"{KEY_PREFIX}queue:d:{DOMAIN}"))


ARCHIVE_GROUP = "archiver"  # the archiver's consumer group on P events (mailrelay.store.archivefeed)
EVENTS_KEY = f"{KEY_PREFIX}events"


def all_events_written(redis: Redis, delivering: bool) -> bool:
    """Whether every event of the load is in the stream: no acknowledgement left to confirm and,
    when the daemon delivers (and the sink has every message), no job leased (an outcome and
    its event are recorded by one script, up to 0.5 s after the destination took the message;
    the last message, whose connection smtp-sink -M drops, is deferred and stays queued)."""
    if int(redis.command("ZCARD", f"{KEY_PREFIX}queue:unsettled")):
        return False
    return not delivering or not int(redis.command("ZCARD", f"{KEY_PREFIX}queue:leases"))


def archive_behind(redis: Redis) -> int | None:
    """Stream entries the archiver has not acknowledged (pending, or never read: XINFO GROUPS's
    ``pending`` + ``lag``); 0 when it has caught up, None while its group does not exist. When
    Redis cannot tell the lag (null), the entries after the group's last read one are counted."""
    try:
        groups = redis.command("XINFO", "GROUPS", EVENTS_KEY)
    except RuntimeError:  # no stream yet
        return None
    for flat in groups:
        info = {flat[i].decode() if isinstance(flat[i], bytes) else flat[i]: flat[i + 1]
                for i in range(0, len(flat), 2)}
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name != ARCHIVE_GROUP:
            continue
        pending, lag = int(info["pending"]), info.get("lag")
        if lag is None:
            last = info["last-delivered-id"].decode()
            lag = len(redis.command("XRANGE", EVENTS_KEY, f"({last}", "+", "COUNT", 100_000))
        return pending + int(lag)
    return None


def stream_entries_added(redis: Redis) -> int | None:
    """Entries ever added to the event stream (XINFO STREAM's entries-added, Redis 7)."""
    try:
        flat = redis.command("XINFO", "STREAM", EVENTS_KEY)
    except RuntimeError:
        return None
    info = dict(zip(flat[::2], flat[1::2]))
    added = info.get(b"entries-added")
    return None if added is None else int(added)


def archive_figures(redis: Redis, delivering: bool, since: float, timeout: float) -> dict:
    """Wait for the archive to catch up after a load (:func:`wait_archived`): the seconds that
    took after ``since`` (perf_counter: the last 250, or the last delivery), whether it did,
    the entries still behind if not, and the entries the load added to the stream."""
    caught_up, behind = wait_archived(redis, delivering, timeout)
    return {"archive_catchup_s": round(time.perf_counter() - since, 2), "archive_caught_up": caught_up,
            "archive_behind": behind, "stream_entries_added": stream_entries_added(redis)}


def wait_archived(redis: Redis, delivering: bool, timeout: float) -> tuple[bool, int | None]:
    """Wait until every event of the load is written and archived (the archiver's group has
    acknowledged every stream entry); (caught up, entries still behind when it did not)."""
    deadline = time.monotonic() + timeout
    behind = None
    while time.monotonic() < deadline:
        if all_events_written(redis, delivering):
            behind = archive_behind(redis)
            if behind == 0:
                return True, 0
        time.sleep(0.1)
    return False, behind


TARGETS = ("mailrelay", "postfix", "smtp-sink")

DURABILITY = {
    "always": "Redis AOF, appendfsync always: on disk before the 250",
    "everysec": "Redis AOF, appendfsync everysec: up to ~1 s of acknowledged mail can be lost",
    "postfix": "queue file fsync()ed before the 250",
    "smtp-sink": "none: discarded",
}


# -- loads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    key: str            # short name for --load
    label: str
    tool: str           # "smtp-source" or "loadgen"
    many: bool = True   # many messages per connection (else one)
    tls: bool = False   # STARTTLS (+ AUTH PLAIN on mailrelay)
    half_rate: bool = False

    def applies_to(self, target: str) -> bool:
        return not (self.tls and target == "smtp-sink")  # smtp-sink has no STARTTLS


ACCEPTANCE_LOADS = (
    LoadSpec("src-many", "smtp-source, many msgs/conn", "smtp-source", True),
    LoadSpec("src-one", "smtp-source, 1 msg/conn", "smtp-source", False),
    LoadSpec("lg-many", "loadgen, many msgs/conn", "loadgen", True),
    LoadSpec("lg-one", "loadgen, 1 msg/conn", "loadgen", False),
    LoadSpec("tls-many", "loadgen STARTTLS(+AUTH), many msgs/conn", "loadgen", True, tls=True),
    LoadSpec("tls-one", "loadgen STARTTLS(+AUTH), 1 msg/conn", "loadgen", False, tls=True),
    LoadSpec("half", "loadgen at half of peak, many msgs/conn", "loadgen", True, half_rate=True),
)
E2E_LOADS = (
    LoadSpec("src-many", "smtp-source, many msgs/conn", "smtp-source", True),
    LoadSpec("src-one", "smtp-source, 1 msg/conn", "smtp-source", False),
    LoadSpec("release", "deliver a held queue (accepted first)", "smtp-source", True),
)
TWOCORE_LOADS = ACCEPTANCE_LOADS[:2]


def smtp_source(port: int, count: int, *, many: bool, sessions: int, size: int,
                timeout: float) -> dict:
    args = [which("smtp-source")] + (["-d"] if many else []) + [
        "-N", "-s", str(sessions), "-m", str(count), "-l", str(size), "-f", SENDER,
        "-t", RECIPIENT, "-M", "perf-client.invalid", f"127.0.0.1:{port}"]
    t = time.perf_counter()
    process = servers.popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    elapsed = time.perf_counter() - t
    errors = err.decode(errors="replace").strip().splitlines()
    return {"elapsed": elapsed, "rc": process.returncode, "errors": errors[-5:],
            "ok": count if process.returncode == 0 else None}


def loadgen(port: int, count: int, *, many: bool, sessions: int, size: int, timeout: float,
            tls: bool = False, auth: str | None = None, rate: float = 0) -> dict:
    args = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(port), "--messages", str(count),
            "--sessions", str(sessions), "--per-connection", "many" if many else "one",
            "--size", str(size), "--timeout", str(timeout)]
    if tls:
        args.append("--starttls")
    if auth:
        args += ["--auth", auth]
    if rate:
        args += ["--rate", f"{rate:.1f}"]
    process = servers.popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = process.communicate(timeout=timeout + 60)
    try:
        result = json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"loadgen failed (exit {process.returncode}): {err.decode()[-2000:]}")
    result["rc"] = process.returncode
    return result


def probe(port: int, tls: bool = False) -> None:
    """One session without a message: EHLO, MAIL, RCPT (must be accepted), RSET, QUIT."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("probe.invalid")
        code, text = s.mail(SENDER)
        if code != 250:
            raise RuntimeError(f"probe: MAIL got {code} {text!r}")
        code, text = s.rcpt(RECIPIENT)
        if code not in (250, 251):
            raise RuntimeError(f"probe: RCPT got {code} {text!r}")
        s.rset()


# -- the servers under test --------------------------------------------------------------


@dataclass
class Running:
    """A target started for one measurement."""

    target: str
    port: int
    groups: list[ProcGroup]
    durability: str
    stop: Callable[[], None]
    stored: Callable[[], int | None] = lambda: None
    auth: str | None = None
    objects: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.n = args.messages or (2000 if args.quick else 20000)
        self.queue_n = args.queue_messages or (10000 if args.quick else 100000)
        self.idle_n = args.connections or (200 if args.quick else 2000)
        self.sessions = args.sessions
        self.size = args.size
        self.rows: list[dict] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="mailrelay-bench-", dir="/tmp"))
        os.chmod(self.tmp, 0o755)  # postfix and nobody (smtp-sink) pass through
        self.counter = 0
        self.cert, self.key = servers.make_certificate(self.tmp / "tls")
        self.password = secrets.token_urlsafe(12)
        self.users = {BENCH_USER: servers.hash_password(self.password)}

    # -- helpers -------------------------------------------------------------------------

    def workdir(self, name: str) -> Path:
        self.counter += 1
        d = self.tmp / f"{self.counter:03d}-{name}"
        d.mkdir(parents=True)
        return d

    def done_with(self, d: Path) -> None:
        if not self.args.keep:
            shutil.rmtree(d, ignore_errors=True)
        os.sync()  # the next measurement does not pay for this one's writes and deletions

    def mailrelay_targets(self) -> list[str]:
        policy = self.args.redis_fsync
        return {"always": ["mailrelay"], "everysec": ["mailrelay-everysec"],
                "both": ["mailrelay", "mailrelay-everysec"]}[policy]

    def targets(self) -> list[str]:
        out = []
        for t in self.args.target or TARGETS:
            out += self.mailrelay_targets() if t == "mailrelay" else [t]
        return out

    def loads(self, specs: tuple[LoadSpec, ...]) -> list[LoadSpec]:
        if not self.args.load:
            return list(specs)
        return [s for s in specs if s.key in self.args.load]

    def timeout(self, n: int) -> float:
        return max(120.0, n / 20.0)  # at least 20 messages/s, or the run is broken anyway

    def start(self, target: str, d: Path, *, mode: str = "hold", relay_port: int | None = None,
              smtpd_maxproc: int | None = None, py_spy: Any = None, cprofile: Path | None = None,
              delivery: dict | None = None) -> Running:
        """Start ``target``: mode "hold" (accept only), "relay" (deliver to relay_port)."""
        if target.startswith("mailrelay"):
            policy = "everysec" if target.endswith("everysec") else "always"
            redis = Redis(d / "redis", policy)
            if delivery is None:
                delivery = ({"enabled": False} if mode == "hold" else
                            {"smarthost": f"127.0.0.1:{relay_port}", "smarthost_tls": "none"})
            try:
                postgres = Postgres()  # the archive of this measurement's daemons
            except Exception:
                redis.stop()
                raise
            try:
                daemon = Mailrelay(d / "daemon", redis, cert=self.cert, key=self.key, users=self.users,
                                   delivery=delivery, py_spy=py_spy, cprofile=cprofile, archive=postgres)
            except Exception:
                redis.stop()
                postgres.stop()
                raise

            def stop() -> None:
                daemon.stop()
                redis.stop()
                postgres.stop()

            def stored() -> int:
                return queued_jobs(redis)

            return Running(target, daemon.port, [daemon.group(), redis.group(), postgres.group()],
                           DURABILITY[policy], stop, stored, auth=f"{BENCH_USER}:{self.password}",
                           objects={"daemon": daemon, "redis": redis, "postgres": postgres})
        if target == "postfix":
            pf = Postfix(d / "postfix", relay_port=relay_port or servers.free_port(), hold=mode == "hold",
                         cert=self.cert, key=self.key, smtpd_maxproc=smtpd_maxproc)
            return Running(target, pf.port, [pf.group()], DURABILITY["postfix"], pf.stop,
                           lambda: pf.count("hold") if pf.hold else None, objects={"postfix": pf})
        if target == "smtp-sink":
            sink = Sink(d / "sink")
            return Running(target, sink.port, [sink.group()], DURABILITY["smtp-sink"], sink.stop,
                           objects={"sink": sink})
        raise ValueError(target)

    def record(self, row: dict) -> dict:
        self.rows.append(row)
        print("  " + summary_line(row), flush=True)
        return row

    def measure(self, scenario: str, spec: LoadSpec, target: str, running: Running, n: int, *,
                rate: float = 0, dest: Sink | None = None, meter_groups: list[ProcGroup] | None = None) -> dict:
        """Run one load against a started target and return the row."""
        timeout = self.timeout(n)
        meter = Meter(meter_groups or running.groups).start()
        t0 = time.perf_counter()
        if spec.tool == "smtp-source":
            result = smtp_source(running.port, n, many=spec.many, sessions=self.sessions,
                                 size=self.size, timeout=timeout)
        else:
            result = loadgen(running.port, n, many=spec.many, sessions=self.sessions, size=self.size,
                             timeout=timeout, tls=spec.tls,
                             auth=running.auth if spec.tls else None, rate=rate)
        t_accepted = time.perf_counter()
        delivered = None
        if dest is not None:
            delivered = dest.wait(timeout)
        t_end = time.perf_counter()
        archive = self.archive_catchup(running.objects.get("redis"), meter, delivering=dest is not None,
                                       since=t_end)
        meter.stop()
        elapsed = (t_end - t0) if dest is not None else (
            result["elapsed"] if spec.tool == "loadgen" else t_accepted - t0)
        ok = result.get("ok")
        stored = running.stored() if dest is None else None
        problems = []
        if spec.tool == "smtp-source" and result["rc"] != 0:
            problems.append(f"smtp-source exit {result['rc']}: {' | '.join(result['errors'])}")
        if spec.tool == "loadgen" and (result.get("errors") or result.get("timed_out")):
            problems.append(f"loadgen errors {result.get('errors')} timed_out={result.get('timed_out')}")
        if stored is not None and stored != n:
            problems.append(f"server stored {stored} of {n}")
        if dest is not None and not delivered:
            problems.append(f"the sink did not get {n} messages within {timeout:.0f}s")
        if archive and not archive["archive_caught_up"]:
            problems.append(f"the archiver was {archive['archive_behind']} entries behind "
                            f"{archive['archive_catchup_s']:.0f}s after the load")
        count = n if ok is None else ok
        cpu = meter.cpu_delta()
        mem = meter.peak_memory_kb()
        server_cpu = sum(v for k, v in cpu.items() if k != "smtp-sink" or target == "smtp-sink")
        row = {
            "scenario": scenario, "load": spec.key, "load_label": spec.label, "target": target,
            "durability": running.durability, "messages": n, "ok": count,
            "seconds": round(elapsed, 3), "rate": round(count / elapsed, 1) if elapsed > 0 else None,
            "cpu_s_per_1000": round(server_cpu / count * 1000, 3) if count else None,
            "cpu_s": cpu, "peak_mem_kb": mem,
            "p50_ms": (result.get("latency_ms") or {}).get("p50"),
            "p99_ms": (result.get("latency_ms") or {}).get("p99"),
            "other_load_cores": meter.other_load(),
            "problems": problems,
        }
        if spec.tool == "loadgen":
            row["latency_ms"] = result.get("latency_ms")
            row["setup_ms"] = result.get("setup_ms")
            row["client_cpu_s"] = result.get("client_cpu_s")
            row["target_rate"] = round(rate, 1) if rate else None
        if dest is not None:
            row["accept_seconds"] = round(t_accepted - t0, 3)
            row["accept_rate"] = round(count / (t_accepted - t0), 1)
        row.update(archive)
        return row

    def archive_catchup(self, redis: Redis | None, meter: Meter, *, delivering: bool, since: float) -> dict:
        """After a load on mailrelay (``redis`` its Redis; None for the other servers: {}): the
        CPU of the load alone, then :func:`archive_figures` (the meter runs on meanwhile, so the
        CPU it counts is all the work the messages made, archiving included)."""
        if redis is None:
            return {}
        cpu_load = meter.cpu_so_far()
        return {**archive_figures(redis, delivering, since, self.timeout(self.n)), "cpu_s_load": cpu_load}

    # -- scenarios -------------------------------------------------------------------------

    def interleaved(self, specs: list[LoadSpec], targets: list[str]):
        """(spec, target) pairs: per load, each round runs every server once, in turn."""
        for spec in specs:
            for _ in range(self.args.rounds):
                for target in targets:
                    yield spec, target

    def acceptance(self) -> None:
        n = self.n
        print(f"\n== acceptance: {n} messages of {self.size} B body, {self.sessions} sessions", flush=True)
        for spec, target in self.interleaved(self.loads(ACCEPTANCE_LOADS), self.targets()):
            if not spec.applies_to(target):
                continue
            rate, count = 0.0, n
            if spec.half_rate:
                peak = self.peak_rate("acceptance", target)
                if not peak:
                    print(f"  (no peak rate for {target}: skipping {spec.key})")
                    continue
                rate = peak / 2
                count = min(n, max(500, int(rate * 15)))
            elif spec.tls and not spec.many:  # a TLS handshake per message: ~100-300/s
                count = max(500, n // 5)
            d = self.workdir(f"acc-{spec.key}-{target}")
            running = self.start(target, d, mode="hold")
            try:
                probe(running.port)
                self.record(self.measure("acceptance", spec, target, running, count, rate=rate))
            finally:
                running.stop()
                self.done_with(d)

    def peak_rate(self, scenario: str, target: str) -> float | None:
        for key in ("src-many", "lg-many"):
            rates = [r["rate"] for r in self.rows if r["scenario"] == scenario and r["target"] == target
                     and r["load"] == key and not r["problems"]]
            if rates:
                return statistics.median(rates)
        return None

    def e2e(self) -> None:
        n = self.n
        print(f"\n== end to end: {n} messages relayed to smtp-sink, timed until it has them all", flush=True)
        for spec, target in self.interleaved(self.loads(E2E_LOADS), self.targets()):
            if spec.key == "release" and target == "smtp-sink":
                continue
            d = self.workdir(f"e2e-{spec.key}-{target}")
            try:
                if spec.key == "release":
                    self.record(self.release(target, d, n))
                elif target == "smtp-sink":  # the ceiling: the load straight into the sink
                    running = self.start(target, d)
                    try:
                        row = self.measure("e2e", spec, target, running, n)
                    finally:
                        running.stop()
                    self.record(row)
                else:
                    sink = Sink(d / "dest", count=n, name="smtp-sink")
                    running = self.start(target, d, mode="relay", relay_port=sink.port)
                    try:
                        probe(running.port)
                        row = self.measure("e2e", spec, target, running, n, dest=sink)
                    finally:
                        running.stop()
                        sink.stop()
                    self.record(row)
            finally:
                self.done_with(d)

    def release(self, target: str, d: Path, n: int, py_spy: tuple[str, Path] | None = None) -> dict:
        """Accept n messages with delivery off (held), then time delivering all to a sink.

        ``py_spy`` (exe, output): run the delivering daemon under py-spy (mailrelay only).
        """
        spec = next(s for s in E2E_LOADS if s.key == "release")
        sink_port = servers.free_port()
        archive: dict = {}
        if target.startswith("mailrelay"):
            running = self.start(target, d, mode="hold")
            redis: Redis = running.objects["redis"]
            postgres: Postgres = running.objects["postgres"]
            try:
                result = smtp_source(running.port, n, many=True, sessions=self.sessions, size=self.size,
                                     timeout=self.timeout(n))
                stored = running.stored()
                # the accepting daemon's archiver archives the queued messages before it goes
                wait_archived(redis, False, self.timeout(n))
            finally:
                running.objects["daemon"].stop()
            try:
                sink = Sink(d / "dest", count=n, port=sink_port)
                redis_cpu0, postgres_cpu0 = redis.group().cpu(), postgres.group().cpu()
                t0 = time.perf_counter()
                daemon = Mailrelay(d / "deliver", redis, cert=self.cert, key=self.key, users=self.users,
                                   delivery={"smarthost": f"127.0.0.1:{sink_port}", "smarthost_tls": "none"},
                                   name="mailrelay", py_spy=py_spy, archive=postgres)
                try:
                    ok = sink.wait(self.timeout(n))
                    t_end = time.perf_counter()
                    elapsed = t_end - t0

                    def cpu_now() -> dict[str, float]:  # the daemon's whole life, start-up included
                        return {"mailrelay": round(daemon.group().cpu(), 3),
                                "redis": round(redis.group().cpu() - redis_cpu0, 3),
                                "postgresql": round(postgres.group().cpu() - postgres_cpu0, 3)}
                    cpu_load = cpu_now()
                    archive = {**archive_figures(redis, True, t_end, self.timeout(n)), "cpu_s_load": cpu_load}
                    cpu = cpu_now()
                    mem = {"mailrelay": status_kb(daemon.pid, "VmHWM"), "redis": status_kb(redis.pid, "VmHWM"),
                           "postgresql": postgres.group().pss_kb()}
                finally:
                    daemon.stop()
                    sink.stop()
            finally:
                running.stop()
            durability = running.durability
            other = None
        else:
            pf = Postfix(d / "postfix", relay_port=sink_port, hold=True, cert=self.cert, key=self.key)
            try:
                result = smtp_source(pf.port, n, many=True, sessions=self.sessions, size=self.size,
                                     timeout=self.timeout(n))
                stored = pf.count("hold")
                sink = Sink(d / "dest", count=n, port=sink_port)
                try:
                    meter = Meter([pf.group()]).start()
                    t0 = time.perf_counter()
                    pf.release()
                    ok = sink.wait(self.timeout(n))
                    elapsed = time.perf_counter() - t0
                    meter.stop()
                    cpu, mem, other = meter.cpu_delta(), meter.peak_memory_kb(), meter.other_load()
                finally:
                    sink.stop()
            finally:
                pf.stop()
            durability = DURABILITY["postfix"]
        problems = []
        if result["rc"] != 0:
            problems.append(f"smtp-source exit {result['rc']}: {' | '.join(result['errors'])}")
        if stored != n:
            problems.append(f"held {stored} of {n}")
        if not ok:
            problems.append("the sink did not get them all in time")
        if archive and not archive["archive_caught_up"]:
            problems.append(f"the archiver was {archive['archive_behind']} entries behind after the load")
        return {"scenario": "e2e", "load": spec.key, "load_label": spec.label, "target": target,
                "durability": durability, "messages": n, "ok": n, "seconds": round(elapsed, 3),
                "rate": round(n / elapsed, 1), "cpu_s_per_1000": round(sum(cpu.values()) / n * 1000, 3),
                "cpu_s": cpu, "peak_mem_kb": mem, "p50_ms": None, "p99_ms": None,
                "accept_rate": round(n / result["elapsed"], 1), "other_load_cores": other,
                "problems": problems, **archive}

    def queue(self) -> None:
        n = self.queue_n
        print(f"\n== queue at rest: {n} messages held", flush=True)
        for target in self.targets():
            if target == "smtp-sink":
                continue
            d = self.workdir(f"queue-{target}")
            try:
                if target.startswith("mailrelay"):
                    row = self.queue_mailrelay(target, d, n)
                else:
                    row = self.queue_postfix(d, n)
                self.record(row)
            finally:
                self.done_with(d)

    def queue_mailrelay(self, target: str, d: Path, n: int) -> dict:
        running = self.start(target, d, mode="hold")
        daemon: Mailrelay = running.objects["daemon"]
        redis: Redis = running.objects["redis"]
        row: dict[str, Any] = {"scenario": "queue", "load": "held", "load_label": "queue at rest",
                               "target": target, "durability": running.durability, "messages": n,
                               "problems": []}
        try:
            probe(running.port)
            rss0 = status_kb(daemon.pid, "VmRSS")
            used0 = int(redis.info()["used_memory"])
            t = time.perf_counter()
            result = smtp_source(running.port, n, many=True, sessions=self.sessions, size=self.size,
                                 timeout=self.timeout(n))
            row["submit_seconds"] = round(time.perf_counter() - t, 1)
            row["rate"] = round(n / (time.perf_counter() - t), 1)
            time.sleep(1)
            info = redis.info()
            stored = running.stored()
            row.update({
                "stored": stored,
                "daemon_rss_kb_before": rss0, "daemon_rss_kb_after": status_kb(daemon.pid, "VmRSS"),
                "daemon_hwm_kb": status_kb(daemon.pid, "VmHWM"),
                "redis_used_memory_before": used0, "redis_used_memory_after": int(info["used_memory"]),
                "redis_rss_after": int(info["used_memory_rss"]),
                "aof_bytes": redis.aof_bytes(),
            })
            row["daemon_rss_added_mb"] = round((row["daemon_rss_kb_after"] - rss0) / 1024, 1)
            row["redis_bytes_per_msg"] = round((row["redis_used_memory_after"] - used0) / n)
            if result["rc"] != 0 or stored != n:
                row["problems"].append(f"smtp-source exit {result['rc']}, stored {stored} of {n}")
            daemon.stop()
            # A daemon with delivery on and a smarthost that refuses connections: every job is
            # tried once and deferred for an hour, then the queue is at rest.
            dead_port = servers.free_port()
            t = time.perf_counter()
            deferring = Mailrelay(d / "deferring", redis, cert=self.cert, key=self.key, users=self.users,
                                  delivery={"smarthost": f"127.0.0.1:{dead_port}", "smarthost_tls": "none",
                                            "retry_schedule": ["1h"]}, name="mailrelay-deferring")
            try:
                settled = self.wait_deferred(redis, n, timeout=max(120, n / 100))
                row["defer_seconds"] = round(time.perf_counter() - t, 1)
                row["deferred_all"] = settled
                time.sleep(1)
                row["deferring_rss_kb"] = status_kb(deferring.pid, "VmRSS")
                row["deferring_hwm_kb"] = status_kb(deferring.pid, "VmHWM")
                row["deferring_rss_added_mb"] = round((row["deferring_rss_kb"] - rss0) / 1024, 1)
                row["redis_used_memory_deferred"] = int(redis.info()["used_memory"])
                if not settled:
                    row["problems"].append("the deferring daemon had not tried every job in time")
            finally:
                deferring.stop()
        finally:
            running.stop()
        return row

    @staticmethod
    def wait_deferred(redis: Redis, n: int, timeout: float) -> bool:
        queue, leases = f"{KEY_PREFIX}queue:d:{DOMAIN}", f"{KEY_PREFIX}queue:leases"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            soon = int(time.time() * 1000) + 30 * 60 * 1000  # deferred jobs are due in an hour
            pending = int(redis.command("ZCOUNT", queue, "-inf", soon))
            leased = int(redis.command("ZCARD", leases))
            if pending == 0 and leased == 0:
                return True
            time.sleep(0.5)
        return False

    def queue_postfix(self, d: Path, n: int) -> dict:
        running = self.start("postfix", d, mode="hold")
        pf: Postfix = running.objects["postfix"]
        row: dict[str, Any] = {"scenario": "queue", "load": "held", "load_label": "queue at rest",
                               "target": "postfix", "durability": running.durability, "messages": n,
                               "problems": []}
        try:
            probe(running.port)
            group = pf.group()
            pss0, disk0 = group.pss_kb(), pf.queue_disk_kb()
            t = time.perf_counter()
            result = smtp_source(running.port, n, many=True, sessions=self.sessions, size=self.size,
                                 timeout=self.timeout(n))
            row["submit_seconds"] = round(time.perf_counter() - t, 1)
            row["rate"] = round(n / (time.perf_counter() - t), 1)
            time.sleep(2)  # idle smtpd processes stay for max_idle; measure what remains
            stored = pf.count("hold")
            qmgr = [p for p in group.pids() if proc_name(p) == "qmgr"]
            row["qmgr_rss_kb"] = status_kb(qmgr[0], "VmRSS") if qmgr else None
            row.update({"stored": stored, "pss_kb_before": pss0, "pss_kb_after": group.pss_kb(),
                        "processes_after": group.count(), "queue_disk_kb_before": disk0,
                        "queue_disk_kb_after": pf.queue_disk_kb()})
            row["queue_disk_bytes_per_msg"] = round((row["queue_disk_kb_after"] - disk0) * 1024 / n)
            if result["rc"] != 0 or stored != n:
                row["problems"].append(f"smtp-source exit {result['rc']}, held {stored} of {n}")
        finally:
            running.stop()
        return row

    def idle(self) -> None:
        n = self.idle_n
        print(f"\n== idle connections: {n} open sessions", flush=True)
        for tls in (False, True):
            for target in self.targets():
                if target == "smtp-sink":  # a throughput ceiling only; it drops idle sessions
                    continue
                d = self.workdir(f"idle-{target}{'-tls' if tls else ''}")
                try:
                    running = self.start(target, d, smtpd_maxproc=n + 100 if target == "postfix" else None)
                    try:
                        self.record(self.idle_one(target, running, n, tls))
                    finally:
                        running.stop()
                finally:
                    self.done_with(d)

    def idle_one(self, target: str, running: Running, n: int, tls: bool) -> dict:
        """Memory per idle session.

        One process (mailrelay, smtp-sink): a first batch of n sessions is opened and kept (it
        absorbs memory the process had freed before, so its growth understates the cost), then
        a second batch of n: the figure is the growth from the second batch. Postfix (one smtpd
        process per session): the growth of the summed PSS from one batch of n.
        """
        group = running.groups[0]  # the daemon, the Postfix tree, the sink
        tree = group.tree

        def memory() -> int:
            return group.pss_kb() if tree else group.rss_kb()

        row: dict[str, Any] = {"scenario": "idle", "load": "idle-tls" if tls else "idle",
                               "load_label": f"{n:,} idle sessions" + (" after STARTTLS" if tls else ""),
                               "target": target, "durability": running.durability, "connections": n,
                               "memory_kind": "PSS (sum over processes)" if tree else "RSS",
                               "problems": []}
        probe(running.port)
        self.hold_idle(running.port, min(20, n), tls, lambda: None)  # warm up
        time.sleep(0.5)
        m: dict[str, Any] = {"start": memory(), "procs0": group.count()}

        def second_batch() -> None:
            time.sleep(1.0)
            m["after"] = memory()
            m["procs1"] = group.count()

        def first_batch() -> None:
            time.sleep(1.0)
            m["first"] = memory()
            if tree:
                m["after"], m["procs1"] = m["first"], group.count()
            else:
                m["second_ready"] = self.hold_idle(running.port, n, tls, second_batch)

        ready = self.hold_idle(running.port, n, tls, first_batch)
        if not tree:
            ready = m.get("second_ready", {})
        before = m["start"] if tree else m.get("first")
        row.update({"opened": ready.get("ready"), "open_seconds": ready.get("open_seconds"),
                    "kb_start": m["start"], "kb_first_batch": m.get("first"),
                    "kb_before": before, "kb_after": m.get("after"),
                    "processes_before": m["procs0"], "processes_after": m.get("procs1")})
        if ready.get("ready") and m.get("after") is not None and before is not None:
            row["kb_per_connection"] = round((m["after"] - before) / ready["ready"], 1)
        if ready.get("failed"):
            row["problems"].append(f"failed to open: {ready['failed']}")
        return row

    def hold_idle(self, port: int, n: int, tls: bool, while_open: Callable[[], None]) -> dict:
        args = [sys.executable, str(BENCH / "loadgen.py"), "idle", "--port", str(port),
                "--connections", str(n)]
        if tls:
            args.append("--starttls")
        process = servers.popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            line = process.stdout.readline()
            ready = json.loads(line) if line.strip() else {"ready": 0, "failed": {"loadgen": 1}}
            while_open()
        finally:
            process.stdin.close()  # loadgen closes its sessions and exits
            process.stdout.read()
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                servers.stop_process(process, 5)
        return ready

    def twocore(self) -> None:
        n = self.n
        print(f"\n== two daemons sharing one Redis, {n} messages split across both", flush=True)
        for spec, target in self.interleaved(self.loads(TWOCORE_LOADS), self.mailrelay_targets()):
            d = self.workdir(f"twocore-{spec.key}-{target}")
            try:
                self.record(self.twocore_one(spec, target, d, n))
            finally:
                self.done_with(d)

    def twocore_one(self, spec: LoadSpec, target: str, d: Path, n: int) -> dict:
        policy = "everysec" if target.endswith("everysec") else "always"
        redis = Redis(d / "redis", policy)
        postgres: Postgres | None = None
        daemons: list[Mailrelay] = []
        try:
            postgres = Postgres()
            for i in (1, 2):
                daemons.append(Mailrelay(d / f"daemon{i}", redis, cert=self.cert, key=self.key,
                                         users=self.users, name=f"mailrelay{i}", archive=postgres))
            for dm in daemons:
                probe(dm.port)
            groups = [dm.group() for dm in daemons] + [redis.group(), postgres.group()]
            meter = Meter(groups).start()
            t0 = time.perf_counter()
            half = [n // 2, n - n // 2]
            procs = []
            for dm, count in zip(daemons, half):
                args = [which("smtp-source")] + (["-d"] if spec.many else []) + [
                    "-N", "-s", str(max(1, self.sessions // 2)), "-m", str(count), "-l", str(self.size),
                    "-f", SENDER, "-t", RECIPIENT, "-M", "perf-client.invalid", f"127.0.0.1:{dm.port}"]
                procs.append(servers.popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            rcs = []
            for p in procs:
                _, err = p.communicate(timeout=self.timeout(n))
                rcs.append(p.returncode)
            t_end = time.perf_counter()
            elapsed = t_end - t0
            archive = self.archive_catchup(redis, meter, delivering=False, since=t_end)
            meter.stop()
            mem = meter.peak_memory_kb()
            stored = queued_jobs(redis)
        finally:
            for dm in daemons:
                dm.stop()
            redis.stop()
            if postgres is not None:
                postgres.stop()
        cpu = meter.cpu_delta()
        problems = []
        if any(rcs) or stored != n:
            problems.append(f"smtp-source exits {rcs}, stored {stored} of {n}")
        if not archive["archive_caught_up"]:
            problems.append(f"the archiver was {archive['archive_behind']} entries behind after the load")
        single = [r["rate"] for r in self.rows if r["scenario"] == "acceptance" and r["target"] == target
                  and r["load"] == spec.key and not r["problems"]]
        row = {"scenario": "twocore", "load": spec.key, "load_label": spec.label + " (split over 2 daemons)",
               "target": target + " x2", "durability": DURABILITY[policy], "messages": n, "ok": n,
               "seconds": round(elapsed, 3), "rate": round(n / elapsed, 1),
               "cpu_s_per_1000": round(sum(cpu.values()) / n * 1000, 3), "cpu_s": cpu,
               "peak_mem_kb": mem, "p50_ms": None, "p99_ms": None,
               "other_load_cores": meter.other_load(), "problems": problems, **archive}
        if single:
            row["speedup_vs_one_daemon"] = round(row["rate"] / statistics.median(single), 2)
        return row

    # -- profile -----------------------------------------------------------------------------

    def profile(self) -> None:
        """A load with the daemon profiled, startup excluded.

        By default the acceptance load (``src-many``, delivery off); with ``--scenario e2e``
        the end-to-end load (accept and deliver to a smtp-sink in the same daemon, as in the
        e2e scenario; ``--load`` picks the load, ``src-many`` by default).
        py-spy attaches to the running daemon once it is ready (sampling at 250 Hz, idle time
        left out, so samples are CPU time) and is stopped with SIGINT after the load; with
        ``--profiler cprofile`` (or when py-spy cannot attach) twistd runs the daemon under
        cProfile (``--profile=FILE --profiler=cprofile --savestats``), startup included.
        """
        n = self.n
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        e2e = "e2e" in (self.args.scenario or [])
        specs = E2E_LOADS if e2e else ACCEPTANCE_LOADS
        chosen = self.loads(specs) if self.args.load else []
        spec = chosen[0] if chosen else specs[0]
        scenario = "end to end" if e2e else "acceptance"
        profiler = self.args.profiler
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if profiler == "py-spy" and not os.access(exe, os.X_OK):
            print("  py-spy not found (pip install py-spy): using cProfile")
            profiler = "cprofile"
        target = self.mailrelay_targets()[0]
        print(f"\n== profile: {scenario}, {spec.label}, {n} messages, {target} under {profiler}", flush=True)
        d = self.workdir("profile")
        out = RESULTS / (f"profile-{stamp}.pyspy.txt" if profiler == "py-spy" else f"profile-{stamp}.pstats")
        if spec.key == "release":  # delivering a held queue: the delivering daemon under py-spy
            if profiler != "py-spy":
                print("  the release load is profiled with py-spy only")
                return
            row = self.release(target, d, n, py_spy=(exe, out))
            row.update(scenario="profile", profiler=profiler, profiled_scenario="release")
            self.record(row)
        else:
            row = self._profile_load(spec, target, d, n, e2e, profiler, exe, out)
            if row is None:
                return
        self._profile_report(spec, target, d, n, scenario, profiler, out, stamp, row)

    def _profile_load(self, spec: LoadSpec, target: str, d: Path, n: int, e2e: bool, profiler: str,
                      exe: str, out: Path) -> dict | None:
        """Run one load against a daemon profiled from when it is ready; the row, or None."""
        sink = Sink(d / "dest", count=n, name="smtp-sink") if e2e else None
        try:
            running = self.start(target, d, mode="relay" if e2e else "hold",
                                 relay_port=sink.port if sink else None,
                                 cprofile=out if profiler == "cprofile" else None)
        except Exception:
            if sink is not None:
                sink.stop()
            raise
        spy = None
        try:
            probe(running.port)
            if profiler == "py-spy":
                spy = servers.popen([exe, "record", "--pid", str(running.objects["daemon"].pid),
                                     "--nonblocking", "--function", "--rate", "250", "--format", "raw",
                                     "--output", str(out)],
                                    stdout=subprocess.DEVNULL, stderr=open(d / "py-spy.log", "wb"))
                time.sleep(1.0)
                if spy.poll() is not None:
                    print("  py-spy could not attach:", (d / "py-spy.log").read_text()[-500:])
                    print("  run again with --profiler cprofile")
                    return None
            row = self.measure("profile", spec, target, running, n, dest=sink)
            row["profiler"] = profiler
            row["profiled_scenario"] = "e2e" if e2e else "acceptance"
            self.record(row)
        finally:
            if spy is not None:
                servers.stop_process(spy, timeout=60, sig=signal.SIGINT)  # py-spy writes on SIGINT
            running.stop()
            if sink is not None:
                sink.stop()
        return row

    def _profile_report(self, spec: LoadSpec, target: str, d: Path, n: int, scenario: str, profiler: str,
                        out: Path, stamp: str, row: dict) -> None:
        if not out.exists() or out.stat().st_size == 0:
            print(f"  {profiler} wrote no profile")
            self.done_with(d)
            return
        daemon_ms = row["cpu_s"].get(target, 0) / row["ok"] * 1000
        if profiler == "py-spy":
            report = pyspy_report(out, top=30, ms_per_total=daemon_ms)
        else:
            report = pstats_report(out, top=30)
        if spec.key == "release":
            scenario += " (the delivering daemon's whole life, start-up included)"
        header = (f"# mailrelay profile: {scenario}, {spec.label}, {n} messages, {profiler}; {row['rate']} msg/s "
                  f"while profiled; CPU per message: daemon {daemon_ms:.3f} ms, Redis "
                  f"{row['cpu_s'].get('redis', 0) / row['ok'] * 1000:.3f} ms, PostgreSQL "
                  f"{row['cpu_s'].get('postgresql', 0) / row['ok'] * 1000:.3f} ms; other load "
                  f"{fmt(row.get('other_load_cores'), 2)} cores\n")
        summary = RESULTS / f"profile-{stamp}.summary.txt"
        summary.write_text(header + report)
        print(header + report)
        print(f"  profile written to {out.relative_to(ROOT)} and {summary.relative_to(ROOT)}")
        self.done_with(d)

    # -- machine and output ------------------------------------------------------------------

    def machine(self) -> dict:
        def cmd(*args: str) -> str:
            try:
                return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
            except (OSError, subprocess.TimeoutExpired):
                return "?"

        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), platform.processor())
        mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo")
                    if line.startswith("MemTotal")), 0)
        import twisted

        fs = "?"
        for line in open("/proc/mounts"):
            parts = line.split()
            if parts[1] == "/":
                fs = f"{parts[0]} {parts[2]}"
        commit = cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD")
        dirty = bool(cmd("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "mailrelay"))
        return {
            "cpu": cpu, "cores": os.cpu_count(), "memory_mb": mem, "kernel": platform.release(),
            "root_fs": fs, "python": platform.python_version(), "twisted": twisted.__version__,
            "redis": cmd(which("redis-server"), "--version").split(" v=")[-1].split()[0],
            "postfix": cmd(which("postconf"), "-d", "-h", "mail_version"),
            "mailrelay_commit": commit + ("+dirty" if dirty else ""),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        }

    def write_results(self, machine: dict) -> None:
        if not self.rows:
            return
        RESULTS.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        data = {"machine": machine, "args": vars(self.args), "messages": self.n,
                "queue_messages": self.queue_n, "idle_connections": self.idle_n, "rows": self.rows}
        (RESULTS / f"run-{stamp}.json").write_text(json.dumps(data, indent=1))
        md = markdown_report(self.rows, machine, self)
        (RESULTS / f"run-{stamp}.md").write_text(md)
        print("\n" + md)
        print(f"results: bench/results/run-{stamp}.json and .md")

    def cleanup(self) -> None:
        servers.stop_everything()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"kept {self.tmp}")


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# -- reports -----------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def mem_text(mem: dict[str, int] | None) -> str:
    if not mem:
        return "-"
    parts = [f"{k} {v / 1024:.0f}" for k, v in mem.items()]
    return " + ".join(parts) + " MB"


def summary_line(row: dict) -> str:
    if row["scenario"] == "queue":
        if row["target"].startswith("mailrelay"):
            text = (f"queue {row['target']}: {row['messages']:,} held; daemon RSS +{row.get('daemon_rss_added_mb')} MB, "
                    f"Redis {row.get('redis_bytes_per_msg')} B/msg; deferring daemon RSS "
                    f"+{row.get('deferring_rss_added_mb')} MB ({row.get('defer_seconds')} s to defer all)")
        else:
            text = (f"queue postfix: {row['messages']:,} held; PSS {row.get('pss_kb_before')} -> "
                    f"{row.get('pss_kb_after')} kB, queue on disk {row.get('queue_disk_bytes_per_msg')} B/msg")
    elif row["scenario"] == "idle":
        text = (f"idle {row['target']} {row['load']}: {row.get('opened')} open, "
                f"{row.get('kb_per_connection')} kB/connection ({row.get('memory_kind')}), "
                f"processes {row.get('processes_before')} -> {row.get('processes_after')}")
    else:
        text = (f"{row['scenario']} {row['load']:<9} {row['target']:<20} {fmt(row.get('rate')):>9} msg/s  "
                f"p50 {fmt(row.get('p50_ms'), 2)} p99 {fmt(row.get('p99_ms'), 2)} ms  "
                f"CPU {fmt(row.get('cpu_s_per_1000'), 2)} s/1000  mem {mem_text(row.get('peak_mem_kb'))}")
        if row.get("accept_rate"):
            text += f"  (accepted at {fmt(row['accept_rate'])}/s)"
        if "postgresql" in row.get("cpu_s", {}):
            text += f"  (daemon + Redis {fmt(cpu_without_archive(row), 2)})"
        if row.get("archive_catchup_s") is not None:
            text += f"  archive caught up {fmt(row['archive_catchup_s'], 1)} s after"
        if row.get("speedup_vs_one_daemon"):
            text += f"  x{row['speedup_vs_one_daemon']} vs one daemon"
        if (row.get("other_load_cores") or 0) >= 0.2:
            text += f"  [other work on the machine: {row['other_load_cores']} cores]"
    if row.get("problems"):
        text += "  !! " + "; ".join(row["problems"])
    return text


def cpu_without_archive(row: dict) -> float | None:
    """CPU s per 1000 messages of the row's servers without PostgreSQL's (daemon + Redis, as
    measured before the archive moved to PostgreSQL)."""
    n = row.get("ok") or row.get("messages")
    if not n or "cpu_s" not in row:
        return None
    return round(sum(v for k, v in row["cpu_s"].items() if k != "postgresql") / n * 1000, 3)


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per (scenario, load, target): the median by rate when there were rounds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["scenario"], r["load"], r["target"]), []).append(r)
    out = []
    for group in groups.values():
        group = sorted(group, key=lambda r: r.get("rate") or 0)
        out.append(group[(len(group) - 1) // 2])
    return out


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}"


def markdown_report(rows: list[dict], machine: dict, bench: Bench) -> str:
    rows = median_rows(rows)
    lines = [f"### Run of {machine['date']} ({'--quick' if bench.quick else 'full'}, "
             f"{bench.args.rounds} round(s), mailrelay {machine['mailrelay_commit']})", ""]
    lines.append(f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_mb']:,} MB, "
                 f"Linux {machine['kernel']}, {machine['root_fs']}; Python {machine['python']}, Twisted "
                 f"{machine['twisted']}, Redis {machine['redis']}, Postfix {machine['postfix']}.")
    lines.append("")
    for scenario in ("acceptance", "e2e", "twocore", "profile"):
        srows = [r for r in rows if r["scenario"] == scenario]
        if not srows:
            continue
        lines += [f"#### {scenario}", "",
                  "| load | server | msg/s | p50 ms | p99 ms | CPU s / 1000 msgs | peak memory | durability | vs Postfix (rate, CPU) | archive caught up (s after) | other load |",
                  "|---|---|---:|---:|---:|---:|---|---|---|---:|---:|"]
        for r in srows:
            pf = next((p for p in srows if p["load"] == r["load"] and p["target"] == "postfix"), None)
            vs = "-"
            if pf is not None and r["target"] != "postfix":
                vs = f"{ratio(r.get('rate'), pf.get('rate'))} x, {ratio(r.get('cpu_s_per_1000'), pf.get('cpu_s_per_1000'))} x"
            rate = fmt(r.get("rate"))
            if r.get("accept_rate"):
                rate += f" (accepted {fmt(r['accept_rate'])})"
            if r.get("target_rate"):
                rate += f" (paced at {fmt(r['target_rate'])})"
            cpu = fmt(r.get("cpu_s_per_1000"), 2)
            if len(r.get("cpu_s", {})) > 1:
                n = r.get("ok") or r.get("messages")
                cpu += " (" + " + ".join(f"{k} {v / n * 1000:.2f}" for k, v in r["cpu_s"].items()) + ")"
            if "postgresql" in r.get("cpu_s", {}):
                cpu += f"; daemon + Redis {fmt(cpu_without_archive(r), 2)}"
            flag = " **!**" if r.get("problems") else ""
            lines.append(f"| {r['load_label']}{flag} | {r['target']} | {rate} | {fmt(r.get('p50_ms'), 2)} | "
                         f"{fmt(r.get('p99_ms'), 2)} | {cpu} | {mem_text(r.get('peak_mem_kb'))} | "
                         f"{r['durability']} | {vs} | {fmt(r.get('archive_catchup_s'), 1)} | "
                         f"{fmt(r.get('other_load_cores'), 2)} |")
        lines.append("")
    qrows = [r for r in rows if r["scenario"] == "queue"]
    if qrows:
        lines += ["#### queue at rest", "",
                  "| server | held | submitted at | process memory added | storage | deferring daemon |",
                  "|---|---:|---:|---|---|---|"]
        for r in qrows:
            if r["target"].startswith("mailrelay"):
                lines.append(
                    f"| {r['target']} | {fmt(r['messages'])} | {fmt(r.get('rate'))}/s | daemon RSS "
                    f"{r['daemon_rss_kb_before'] / 1024:.0f} -> {r['daemon_rss_kb_after'] / 1024:.0f} MB "
                    f"(+{r['daemon_rss_added_mb']} MB) | Redis used_memory +"
                    f"{(r['redis_used_memory_after'] - r['redis_used_memory_before']) / 2**20:.0f} MB "
                    f"({r['redis_bytes_per_msg']:,} B/msg), AOF {r['aof_bytes'] / 2**20:.0f} MB | "
                    f"RSS {r.get('deferring_rss_kb', 0) / 1024:.0f} MB (+{r.get('deferring_rss_added_mb')} MB),"
                    f" all tried once in {r.get('defer_seconds')} s |")
            else:
                lines.append(
                    f"| postfix | {fmt(r['messages'])} | {fmt(r.get('rate'))}/s | all processes PSS "
                    f"{r['pss_kb_before'] / 1024:.0f} -> {r['pss_kb_after'] / 1024:.0f} MB (idle smtpd "
                    f"processes included; qmgr RSS {fmt((r.get('qmgr_rss_kb') or 0) / 1024)} MB) | queue files "
                    f"+{(r['queue_disk_kb_after'] - r['queue_disk_kb_before']) / 1024:.0f} MB on disk "
                    f"({r['queue_disk_bytes_per_msg']:,} B/msg) | - |")
        lines.append("")
    irows = [r for r in rows if r["scenario"] == "idle"]
    if irows:
        lines += ["#### idle connections", "",
                  "| sessions | server | opened | memory before -> with them | per connection | processes |",
                  "|---|---|---:|---|---:|---|"]
        for r in irows:
            lines.append(f"| {r['load_label']} | {r['target']} | {fmt(r.get('opened'))} | "
                         f"{r['memory_kind']} {fmt(r.get('kb_before'))} -> {fmt(r.get('kb_after'))} kB | "
                         f"{fmt(r.get('kb_per_connection'))} kB | {r.get('processes_before')} -> "
                         f"{r.get('processes_after')} |")
        lines.append("")
    problems = [r for r in rows if r.get("problems")]
    if problems:
        lines += ["Problems:", ""] + [f"- {r['scenario']} {r['load']} {r['target']}: {'; '.join(r['problems'])}"
                                      for r in problems] + [""]
    return "\n".join(lines)


def pyspy_report(path: Path, top: int = 30, ms_per_total: float | None = None) -> str:
    """Inclusive and own sample counts per function from py-spy's raw (collapsed) output.

    ``ms_per_total``: the daemon's CPU ms per message, to express shares as ms per message.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    by_file: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        leaf_file = frames[-1].rpartition("(")[2].split(":")[0].rstrip(")")
        by_file[leaf_file] = by_file.get(leaf_file, 0) + count
    if not total:
        return "(no samples)\n"
    # the reactor's trunk (twistd, run, mainLoop, doPoll...) is in nearly every sample
    trunk = [f for f, c in inclusive.items() if c >= 0.9 * total]
    for f in trunk:
        del inclusive[f]

    def table(title: str, data: dict[str, int]) -> list[str]:
        out = [f"\n{title} (of {total} samples)",
               f"{'%':>6} {'ms/msg':>7} {'samples':>8}  function (file:first line)"]
        for frame, count in sorted(data.items(), key=lambda kv: -kv[1])[:top]:
            per = f"{count / total * ms_per_total:7.3f}" if ms_per_total else f"{'':7}"
            out.append(f"{100 * count / total:6.1f} {per} {count:8d}  {short_frame(frame)}")
        return out

    lines = [f"(left out of the inclusive table: {len(trunk)} frames of the reactor's trunk, "
             f"in 90% or more of the samples)"]
    lines += table(f"top {top} by inclusive time (the function and what it calls)", inclusive)
    lines += table(f"top {top} by own time (the function's own code, syscalls included)", own)
    lines += table(f"top {top} files by own time", by_file)
    return "\n".join(lines) + "\n"


def short_frame(frame: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", str(ROOT) + "/"):
        frame = frame.replace(marker, "")
    return frame


def pstats_report(path: Path, top: int = 30) -> str:
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs()
    out.write(f"top {top} by cumulative time\n")
    stats.sort_stats("cumulative").print_stats(top)
    out.write(f"\ntop {top} by own time\n")
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Scenarios: " + ", ".join(SCENARIOS) + ". See docs/benchmarks.md.")
    p.add_argument("--quick", action="store_true", help="2,000 messages, 10,000 queued, 200 idle sessions")
    p.add_argument("--scenario", nargs="+", action="extend", choices=SCENARIOS, metavar="NAME",
                   help=f"scenarios to run ({', '.join(SCENARIOS)}); default: all")
    p.add_argument("--messages", type=int, help="messages per load (default 20,000; --quick 2,000)")
    p.add_argument("--queue-messages", type=int, help="messages held in the queue scenario (100,000; --quick 10,000)")
    p.add_argument("--connections", type=int, help="idle sessions (2,000; --quick 200)")
    p.add_argument("--target", nargs="+", action="extend", choices=TARGETS, metavar="NAME",
                   help=f"servers to measure ({', '.join(TARGETS)}); default: all")
    p.add_argument("--load", nargs="+", action="extend", metavar="NAME",
                   help="loads to run: " + ", ".join(sorted({s.key for s in ACCEPTANCE_LOADS + E2E_LOADS})))
    p.add_argument("--redis-fsync", choices=("always", "everysec", "both"), default="always",
                   help="Redis appendfsync for mailrelay (both: measure each)")
    p.add_argument("--rounds", type=int, default=1, help="repeat each measurement; the median is reported")
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions (20)")
    p.add_argument("--size", type=int, default=2048, help="message body size in bytes (2048)")
    p.add_argument("--profile", action="store_true", help="profile the daemon during the acceptance load (with --scenario e2e: the end-to-end load)")
    p.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, queues)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not servers.become_subreaper():
        print("bench: could not become a child subreaper; Postfix's master may be left unreaped",
              file=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    bench = Bench(args)
    machine = bench.machine()
    print(f"mailrelay bench: {machine['cpu']}, {machine['cores']} cores; Redis {machine['redis']}, "
          f"Postfix {machine['postfix']}; mailrelay {machine['mailrelay_commit']}; work dir {bench.tmp}",
          flush=True)
    t = time.monotonic()
    try:
        if args.profile:
            bench.profile()
        else:
            for scenario in args.scenario or SCENARIOS:
                getattr(bench, scenario)()
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()
        if not args.profile:
            bench.write_results(machine)
        print(f"bench: {time.monotonic() - t:.0f} s", flush=True)
    return 1 if any(r.get("problems") for r in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
