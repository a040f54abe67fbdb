#!/usr/bin/env python3
"""
run.py: make real MTAs bounce every case of cases.py and write the bounces they produce to
tests/bounces/corpus/<mta>/<case>.eml, labelled in tests/bounces/corpus/labels.json.

    .venv/bin/python bench/bouncecorpus/run.py [--mta postfix,exim,...] [--case GLOB] [--relabel]

(as root)

For each MTA, in turn: its Debian chroot is built once (mkchroot.sh, cached in $CACHE, default
/var/tmp/mailrelay-bouncecorpus), a network namespace ``bouncecorpus-<mta>`` is made with only
a loopback interface, world.py starts there (DNS, the scripted destinations, the collector),
the MTA starts in its chroot inside the namespace, one message per case is injected through
the MTA's own sendmail command, and the run waits until every case's bounce has reached the
collector (or --timeout). Then everything is stopped, the namespace deleted, the chroot's
mounts undone. Needs root (namespaces, chroot). Never run from the test suite.

The labels come from cases.py (decided from the cause); this script only adds what the MTA
chose to write: the Status it reported, if any (read from the bounce with the stdlib).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import cases  # noqa: E402
from mtas import MTAS, MTA  # noqa: E402

CACHE = Path(os.environ.get("CACHE", "/var/tmp/mailrelay-bouncecorpus"))
CORPUS = REPO / "tests" / "bounces" / "corpus"
LABELS = CORPUS / "labels.json"
DATE = "Tue, 01 Dec 2026 10:00:00 +0000"


def log(*args: object) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def run(argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], check=check, **kw)


class Sandbox:
    """The namespace, the chroot's mounts, world.py; a context manager that undoes them."""

    def __init__(self, mta: MTA) -> None:
        self.mta = mta
        self.root = CACHE / f"root-{mta.name}"
        self.ns = f"bouncecorpus-{mta.name}"
        self.workdir = CACHE / f"run-{mta.name}"
        self.collected = self.workdir / "collected"
        self.world: subprocess.Popen | None = None
        self.mounted: list[Path] = []

    def chroot_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "--", "sh", "-c",
                f'hostname {cases.MTA_HOSTNAME} && exec chroot "$0" "$@"', str(self.root), *argv]

    def chroot(self, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        return run(self.chroot_argv(argv), check=check, **kw)

    def __enter__(self) -> "Sandbox":
        try:
            return self.setup()
        except BaseException:
            self.__exit__()
            raise

    def setup(self) -> "Sandbox":
        run([HERE / "mkchroot.sh", self.mta.name])
        self.cleanup_namespace()
        run(["ip", "netns", "add", self.ns])
        run(["ip", "-n", self.ns, "link", "set", "lo", "up"])
        if self.mta.dummy_interface:
            # a bridge without ports: the kernel here may lack the dummy link type
            run(["ip", "-n", self.ns, "link", "add", "bc0", "type", "bridge"])
            run(["ip", "-n", self.ns, "addr", "add", "127.0.0.250/32", "dev", "bc0"])
            run(["ip", "-n", self.ns, "link", "set", "bc0", "up"])
        for sub in ("proc", "dev"):
            target = self.root / sub
            if not os.path.ismount(target):
                run(["mount", "--bind", f"/{sub}", target])
                self.mounted.append(target)
        (self.root / "etc/resolv.conf").write_text(f"nameserver {cases.DNS_IP}\noptions attempts:1 timeout:2\n")
        (self.root / "etc/hosts").write_text(f"127.0.0.1 {cases.MTA_HOSTNAME} mta localhost\n")
        (self.root / "etc/hostname").write_text(cases.MTA_HOSTNAME + "\n")
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.collected.mkdir(parents=True)
        self.world = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, str(HERE / "world.py"), str(self.collected)],
            stdout=subprocess.PIPE, text=True)
        line = self.world.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"world.py did not start: {line!r}")
        return self

    def cleanup_namespace(self) -> None:
        pids = run(["ip", "netns", "pids", self.ns], check=False, capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 15)
            except ProcessLookupError:
                pass
        run(["ip", "netns", "del", self.ns], check=False, stderr=subprocess.DEVNULL)

    def __exit__(self, *exc: object) -> None:
        if self.world is not None:
            self.world.terminate()
            self.world.wait(timeout=10)
        self.cleanup_namespace()
        for target in reversed(self.mounted):
            run(["umount", "-l", target], check=False)


SMTP_INJECT = """\
import smtplib, sys, time
deadline = time.monotonic() + 30
while True:
    try:
        client = smtplib.SMTP("127.0.0.1", 25, local_hostname="app.sender.example", timeout=30)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
client.sendmail(sys.argv[1], sys.argv[2:], sys.stdin.buffer.read())
client.quit()
"""


def message(case: cases.Case) -> bytes:
    cid = cases.CASE_IDS[case.name]
    to = ", ".join(r.address for r in case.rcpts)
    return (f"From: Example Shop <{cases.sender_of(case)}>\n"
            f"To: {to}\n"
            f"Subject: Your order {cid[1:]} has shipped\n"
            f"Date: {DATE}\n"
            f"Message-ID: <{cid}.bouncecorpus@{cases.SENDER_DOMAIN}>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n"
            "\n"
            "Hello,\n\nyour order has shipped and should arrive within three days.\n"
            "Track it at https://shop.sender.example/track\n\nExample Shop\n").encode()


def produce(mta: MTA, profile: str, selected: list[cases.Case], timeout: float) -> Path:
    with Sandbox(mta) as box:
        mta.configure(box.root, profile)
        if mta.reset:
            box.chroot(["sh", "-c", mta.reset], check=False)
        box.chroot(mta.start)
        log(mta.name, f"started ({profile} profile)")
        if mta.ready_path:
            deadline = time.monotonic() + 30
            while not (box.root / mta.ready_path.lstrip("/")).exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{mta.name} did not create {mta.ready_path}")
                time.sleep(0.2)
        for case in selected:
            if mta.inject_smtp:
                argv = ["ip", "netns", "exec", box.ns, sys.executable, "-c", SMTP_INJECT,
                        cases.sender_of(case), *[r.address for r in case.rcpts]]
                done = run(argv, check=False, input=message(case), capture_output=True)
            else:
                argv = [*mta.sendmail[:-1], *case.dsn, mta.sendmail[-1], cases.sender_of(case),
                        *[r.address for r in case.rcpts]]
                done = box.chroot(argv, check=False, input=message(case), capture_output=True)
            if done.returncode != 0:
                raise RuntimeError(f"{mta.name}: injecting {case.name} failed: {done.stderr!r}")
        log(mta.name, f"injected {len(selected)} messages")
        expected = {cases.CASE_IDS[c.name] for c in selected if c.failed}
        deadline = time.monotonic() + timeout
        next_flush = time.monotonic() + 5
        while time.monotonic() < deadline:
            seen = {p.name.split(".")[0] for p in box.collected.glob("*.eml")}
            if expected <= seen:
                break
            if mta.flush and time.monotonic() >= next_flush:
                box.chroot(mta.flush, check=False, capture_output=True)
                next_flush = time.monotonic() + 10
            time.sleep(1)
        time.sleep(3)   # a second bounce for the same message (a split DSN) arrives together
        seen = {p.name.split(".")[0] for p in box.collected.glob("*.eml")}
        missing = sorted(c.name for c in selected if cases.CASE_IDS[c.name] in expected - seen)
        if missing:
            log(mta.name, "no bounce for:", ", ".join(missing))
        box.chroot(mta.stop, check=False)
        logdir = box.workdir / "logs"
        logdir.mkdir(exist_ok=True)
        for path in mta.logs:
            src = box.root / path.lstrip("/")
            if src.exists():
                shutil.copy(src, logdir / src.name)
                src.write_text("")
        return box.collected


def reported_status(raw: bytes) -> str | None:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            blocks = payload if isinstance(payload, list) else []
            for block in blocks[1:]:
                if block.get("Status"):
                    return block.get("Status").split()[0]
    return None


def store(mta: MTA, selected: list[cases.Case], collected: Path) -> int:
    """Copy the collected bounces to tests/bounces/corpus/<mta>/<case>[-N].eml."""
    outdir = CORPUS / mta.name
    outdir.mkdir(parents=True, exist_ok=True)
    written = 0
    for case in selected:
        files = sorted(collected.glob(f"{cases.CASE_IDS[case.name]}.*.eml"))
        if not files:
            continue        # keep what an earlier run stored rather than lose the case
        for old in outdir.glob(f"{case.name}.eml"):
            old.unlink()
        for old in outdir.glob(f"{case.name}-[0-9].eml"):
            old.unlink()
        for n, path in enumerate(files, 1):
            name = f"{case.name}.eml" if n == 1 else f"{case.name}-{n}.eml"
            (outdir / name).write_bytes(path.read_bytes())
            written += 1
    return written


def dsn_recipients(raw: bytes) -> set[str]:
    """The Final-Recipient addresses of the bounce's delivery-status part, lower-cased."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    found = set()
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            payload = part.get_payload()
            for block in payload if isinstance(payload, list) else []:
                value = block.get("Final-Recipient")
                if value:
                    found.add(value.split(";", 1)[-1].strip().lower())
    return found


def label(mta_name: str, case: cases.Case, raw: bytes) -> dict:
    # an MTA may split one message's failures over several bounces: each file is labelled
    # with the failed recipients its delivery-status part names
    reported = dsn_recipients(raw)
    failed = [r for r in case.failed if r.address.lower() in reported] or case.failed
    failures = [{"recipient": r.address, "type": r.type, "class": r.cls, "why": r.why,
                 "reply": (r.rcpt or r.data or case.mail or "").replace("{rcpt}", r.address)
                 .replace("{sender}", cases.sender_of(case)) or None}
                for r in failed]
    if mta_name == "opensmtpd" and b"Envelope expired" in raw:
        for f in failures:
            f["why"] += ("; OpenSMTPD 6.8 words its expiry report as a delay ('Action: delayed', "
                         "'only a temporary failure report') although its log says 'Envelope expired' "
                         "and the envelope is removed from the queue: the message was given up")
            if f["class"] == "soft" and f["type"] != "SoftBounce":
                f["why"] += (f"; the cause ({f['type']}) is not in the report, which says only "
                             "'Envelope expired': labelled as what it shows, a given-up message")
                f["type"] = "SoftBounce"
    first = failures[0]
    return {
        "mta": mta_name,
        "case": case.name,
        "type": first["type"],
        "class": first["class"],
        "recipients": [f["recipient"] for f in failures],
        "status": reported_status(raw),
        "expired": case.expires,
        "why": first["why"],
        "source": case.source,
        "failures": failures,
    }


def relabel() -> dict:
    """labels.json for every committed corpus file (labels from cases.py, status from the file)."""
    by_name = {c.name: c for c in cases.CASES}
    labels = {}
    for path in sorted(CORPUS.glob("*/*.eml")):
        stem = path.stem
        case = by_name.get(stem) or by_name.get(stem.rsplit("-", 1)[0])
        if case is None:
            raise SystemExit(f"{path}: no such case in cases.py")
        labels[f"{path.parent.name}/{path.name}"] = label(path.parent.name, case, path.read_bytes())
    LABELS.write_text(json.dumps(labels, indent=1, ensure_ascii=False) + "\n")
    return labels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mta", default="postfix,exim,opensmtpd,sendmail,courier,haraka")
    parser.add_argument("--case", default="*", help="glob over case names")
    parser.add_argument("--relabel", action="store_true", help="only rewrite labels.json from "
                        "cases.py and the committed corpus files")
    parser.add_argument("--timeout", type=float, default=0, help="seconds to wait for bounces "
                        "(default: the MTA's expiry time + 60)")
    args = parser.parse_args()
    if args.relabel:
        relabel()
        return 0
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, chroot)")
    selected_all = [c for c in cases.CASES if fnmatch.fnmatch(c.name, args.case)]
    for name in args.mta.split(","):
        mta = MTAS[name]
        for profile in mta.profiles:
            selected = [c for c in selected_all
                        if c.profile == profile and (c.mtas is None or name in c.mtas)]
            if not selected:
                continue
            wait = args.timeout or (mta.expiry_seconds + 60 if profile == "fail" else 120)
            collected = produce(mta, profile, selected, wait)
            log(name, f"stored {store(mta, selected, collected)} bounces")
            relabel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
