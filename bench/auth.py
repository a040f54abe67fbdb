"""
bench/auth.py: SMTP AUTH as an attacker uses it, at full scale, against a real daemon
(issue 15, items 8 and 10). The suite checks the same properties without timing
(tests/test_daemon_auth.py); this measures them.

- **User names by timing**: the AUTH round trip for an unknown user and for a known user
  with a wrong password (medians and quartiles over ``--probes`` attempts of each,
  interleaved, one fresh session per attempt). Before issue 15 an unknown user answered in
  0.8 ms and a wrong password in about 100 ms.
- **Memory after an AUTH flood**: the daemon's VmRSS at start, after the probes and after
  ``--waves`` waves of ``--sessions`` concurrent sessions, each sending one wrong password
  (all different, so every one is a scrypt check), and its peak (VmHWM). Before issue 15: 64 MB -> 230 MB.

Usage: ``.venv/bin/python bench/auth.py [--probes 100] [--sessions 40] [--waves 25]``
"""

from __future__ import annotations

import argparse
import base64
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import status_kb  # noqa: E402
from servers import Mailrelay, Redis, hash_password, make_certificate, stop_everything  # noqa: E402

PASSWORD = "bench-Secret-1"


def auth_line(username: str, password: str) -> bytes:
    token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
    return f"AUTH PLAIN {token}\r\n".encode()


def read_reply(f) -> int:
    while True:
        line = f.readline()
        if not line:
            return 0
        if line[3:4] != b"-":
            return int(line[:3])


def session(port: int) -> tuple[socket.socket, object]:
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    f = s.makefile("rb")
    assert read_reply(f) == 220
    s.sendall(b"EHLO bench.invalid\r\n")
    assert read_reply(f) == 250
    return s, f


def timed_attempt(port: int, username: str, password: str) -> float:
    s, f = session(port)
    try:
        start = time.perf_counter()
        s.sendall(auth_line(username, password))
        code = read_reply(f)
        elapsed = time.perf_counter() - start
        assert code == 535, code
        return elapsed
    finally:
        f.close()
        s.close()


def flood(port: int, sessions: int, wave: int) -> None:
    clients = [session(port) for _ in range(sessions)]
    try:
        for i, (s, _) in enumerate(clients):
            s.sendall(auth_line("alice", f"flood-{wave}-{i}"))
        codes = [read_reply(f) for _, f in clients]
        assert codes == [535] * sessions, codes
    finally:
        for s, f in clients:
            f.close()
            s.close()


def quartiles(values: list[float]) -> str:
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return f"median {q2 * 1000:.1f} ms (quartiles {q1 * 1000:.1f} / {q3 * 1000:.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--waves", type=int, default=25)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    try:
        redis = Redis(work / "redis", appendfsync="everysec")
        cert, key = make_certificate(work / "tls")
        daemon = Mailrelay(work / "mailrelay", redis, cert=cert, key=key,
                           users={"alice": hash_password(PASSWORD)},
                           submission={"require_tls_for_auth": False, "trusted_networks": [],
                                       "auth_failures_per_ip": "1000000/1m"})
        port = daemon.port
        at_start = status_kb(daemon.pid, "VmRSS")

        unknown, wrong = [], []
        for i in range(args.probes):
            unknown.append(timed_attempt(port, f"nobody{i}", "guess"))
            wrong.append(timed_attempt(port, "alice", f"guess{i}"))
        print(f"unknown user:   {quartiles(unknown)}")
        print(f"wrong password: {quartiles(wrong)}")

        before = status_kb(daemon.pid, "VmRSS")
        start = time.perf_counter()
        for wave in range(args.waves):
            flood(port, args.sessions, wave)
        elapsed = time.perf_counter() - start
        after = status_kb(daemon.pid, "VmRSS")
        peak = status_kb(daemon.pid, "VmHWM")
        checks = args.waves * args.sessions
        print(f"flood: {checks} wrong AUTHs in {elapsed:.1f} s ({checks / elapsed:.0f} checks/s), "
              f"{args.sessions} sessions at once")
        print(f"RSS: {at_start / 1024:.0f} MiB at start, {before / 1024:.0f} MiB after the probes, "
              f"{after / 1024:.0f} MiB after the flood (+{(after - at_start) / 1024:.0f} MiB in all), "
              f"peak {peak / 1024:.0f} MiB")
        daemon.stop()
        redis.stop()
    finally:
        stop_everything()


if __name__ == "__main__":
    main()
