"""
world: the network an MTA under test lives in, as one Twisted process inside its network
namespace (run by run.py; not a test).

- DNS on 127.0.0.1:53 (tests/dnsserver.py's LocalDNS with cases.zones()).
- One scripted destination SMTP server per cases.HOSTS entry, on its own loopback address,
  port 25 (tests/scriptedsmtp.py's server): it answers MAIL, RCPT and end of DATA as the case
  of the sender/recipient says, and accepts everything else.
- The collector on 127.0.0.3:25, the MX of sender.example: it accepts every message and writes
  it to OUTDIR/<case id>.<n>.eml (Return-Path first, as a mailbox would store it).

Usage: world.py OUTDIR   (prints "ready" once everything listens; runs until SIGTERM)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent / "tests")]

from twisted.internet import reactor  # noqa: E402

import cases  # noqa: E402
from dnsserver import LocalDNS  # noqa: E402
from scriptedsmtp import ScriptedSMTPServer  # noqa: E402


def fill(reply: str, rcpt: str = "", sender: str = "") -> str:
    return reply.replace("{rcpt}", rcpt).replace("{sender}", sender)


def destination(host: cases.Host) -> ScriptedSMTPServer:
    def mail_reply(sender: str, params: list[str]) -> str | None:
        case = cases.CASES_BY_ID.get(sender.split("+", 1)[-1].split("@", 1)[0])
        if case is not None and case.mail:
            return fill(case.mail, sender=sender)
        return None

    def rcpt_reply(addr: str) -> str | None:
        found = cases.RCPTS.get(addr.lower())
        if found is None:
            return "550 5.1.1 <%s>: not a corpus address" % addr
        case, rcpt = found
        return fill(rcpt.rcpt, addr, cases.sender_of(case)) if rcpt.rcpt else None

    def final_reply(message) -> str | None:
        for addr in message.recipients:
            found = cases.RCPTS.get(addr.lower())
            if found and found[1].data:
                return fill(found[1].data, addr, message.sender)
        return None

    greeting = host.greeting or f"220 {host.hostname} ESMTP"
    return ScriptedSMTPServer(hostname=host.hostname, greeting=greeting,
                              helo_reply=f"250 {host.hostname}",
                              mail_reply=mail_reply, rcpt_replies=rcpt_reply, final_reply=final_reply)


def collector(outdir: Path) -> ScriptedSMTPServer:
    count = [0]

    def final_reply(message) -> str:
        count[0] += 1
        rcpt = message.recipients[0] if message.recipients else "unknown"
        case_id = rcpt.split("+", 1)[-1].split("@", 1)[0]
        path = outdir / f"{case_id}.{count[0]:03d}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"Return-Path: <%s>\n" % message.sender.encode()
                        + message.body.replace(b"\r\n", b"\n"))
        os.rename(tmp, path)
        return f"250 2.0.0 Ok: queued as C{count[0]}"

    return ScriptedSMTPServer(hostname=f"mx.{cases.SENDER_DOMAIN}",
                              greeting=f"220 mx.{cases.SENDER_DOMAIN} ESMTP collector",
                              helo_reply=f"250 mx.{cases.SENDER_DOMAIN}", final_reply=final_reply)


def main() -> None:
    outdir = Path(sys.argv[1])
    outdir.mkdir(parents=True, exist_ok=True)
    LocalDNS(cases.zones(), interface=cases.DNS_IP, port=53).start()
    for host in cases.HOSTS:
        reactor.listenTCP(25, destination(host), interface=host.ip)
    reactor.listenTCP(25, collector(outdir), interface=cases.COLLECTOR_IP)
    reactor.callWhenRunning(lambda: print("ready", flush=True))
    reactor.run()


if __name__ == "__main__":
    main()
