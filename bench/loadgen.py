#!/usr/bin/env python3
"""
bench/loadgen.py: the project's SMTP load generator (asyncio, standard library only).

Two modes:

``send`` (default)
    ``--sessions`` concurrent SMTP sessions share ``--messages`` messages of about
    ``--size`` bytes of body, one recipient each, either many messages per connection
    (``--per-connection many``) or one (``one``). Optionally STARTTLS (``--starttls``) and
    AUTH PLAIN (``--auth user:password``), optionally PIPELINING of MAIL/RCPT/DATA
    (``--pipelining``; off by default, like smtp-source), optionally paced at ``--rate``
    messages/s (message k may start at t0 + k/rate). Measures each message's acceptance
    latency: from writing the body with its end-of-data dot to reading the reply (the 250).
    Prints one JSON object: counts, elapsed seconds, messages/s, latency percentiles (ms),
    connection set-up percentiles (connect .. ready for MAIL, ms) and its own CPU seconds.

``idle``
    Opens ``--connections`` sessions (``--open-concurrency`` at a time), each greeted and
    EHLO'd (and STARTTLS'd with ``--starttls``), prints one JSON line ``{"ready": n, ...}``,
    keeps them open until its standard input is closed, then closes them and prints a
    second JSON line.

Examples::

    python bench/loadgen.py --port 2587 --sessions 20 --messages 2000 --per-connection many
    python bench/loadgen.py --port 2587 --starttls --auth bench:secret --per-connection one
    python bench/loadgen.py --port 2587 --rate 300 --messages 3000
    python bench/loadgen.py idle --port 2587 --connections 200 < /dev/tty

Exit status: 0 when every message got its 250 (every connection opened, in idle mode),
1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import ssl
import sys
import time
from collections import deque

perf = time.perf_counter


class SMTPError(Exception):
    def __init__(self, stage: str, code: int, text: bytes) -> None:
        super().__init__(f"{stage}: {code} {text.decode('utf-8', 'replace').strip()}")
        self.stage, self.code = stage, code


class Conn(asyncio.Protocol):
    """One SMTP client connection: writes commands, hands back complete replies in order."""

    def __init__(self) -> None:
        self.transport: asyncio.BaseTransport | None = None
        self.buf = bytearray()
        self.lines: list[bytes] = []
        self.replies: deque = deque()
        self.waiters: deque = deque()
        self.lost: BaseException | None = None
        self.loop = asyncio.get_running_loop()

    # asyncio.Protocol
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end + 1])
            start = end + 1
            if len(line) >= 4 and line[3:4] == b"-":
                self.lines.append(line)
                continue
            self.lines.append(line)
            try:
                code = int(line[:3])
            except ValueError:
                code = 0
            reply = (code, b"".join(self.lines))
            self.lines = []
            if self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(reply)
            else:
                self.replies.append(reply)
        if start:
            del buf[:start]

    def connection_lost(self, exc) -> None:
        self.lost = exc or ConnectionResetError("connection closed by the server")
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(self.lost)

    # client side
    def reply(self):
        """A future of the next reply (code, text)."""
        future = self.loop.create_future()
        if self.replies:
            future.set_result(self.replies.popleft())
        elif self.lost is not None:
            future.set_exception(self.lost)
        else:
            self.waiters.append(future)
        return future

    async def expect(self, stage: str, *codes: int) -> bytes:
        code, text = await self.reply()
        if code not in codes:
            raise SMTPError(stage, code, text)
        return text

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.host, self.port = args.host, args.port
        self.remaining = args.messages
        self.next_index = 0
        self.latencies: list[float] = []
        self.setups: list[float] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.connections = 0
        self.t0 = 0.0
        self.rate = args.rate
        self.tls_context = None
        if args.starttls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the benchmark's self-signed certificate
            self.tls_context = ctx
        self.auth = None
        if args.auth:
            user, _, password = args.auth.partition(":")
            self.auth = b"AUTH PLAIN " + base64.b64encode(
                b"\0" + user.encode() + b"\0" + password.encode()) + b"\r\n"
        self.helo = f"EHLO {args.helo}\r\n".encode()
        self.mail = f"MAIL FROM:<{args.sender}>\r\n".encode()
        local, _, domain = args.recipient.partition("@")
        self.rcpt_local, self.rcpt_domain = local, domain
        self.run_id = os.urandom(4).hex()
        line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789"
                b"abcd\r\n")  # 78 + CRLF = 80 octets
        whole, rest = divmod(max(args.size, 2), len(line))
        self.body = line * whole + (line[:rest - 2] + b"\r\n" if rest >= 2 else b"")

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    def take(self) -> int | None:
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        k = self.next_index
        self.next_index += 1
        return k

    async def pace(self, k: int) -> None:
        if self.rate:
            delay = self.t0 + k / self.rate - perf()
            if delay > 0:
                await asyncio.sleep(delay)

    def message(self, k: int) -> tuple[bytes, bytes]:
        rcpt = f"{k}{self.rcpt_local}@{self.rcpt_domain}"
        head = (f"From: <{self.args.sender}>\r\nTo: <{rcpt}>\r\nSubject: loadgen message {k}\r\n"
                f"Message-ID: <{k}.{self.run_id}@loadgen.invalid>\r\n"
                f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n\r\n")
        return f"RCPT TO:<{rcpt}>\r\n".encode(), head.encode() + self.body + b".\r\n"

    async def open(self) -> Conn:
        loop = asyncio.get_running_loop()
        t = perf()
        transport, conn = await loop.create_connection(Conn, self.host, self.port)
        self.connections += 1
        try:
            await conn.expect("greeting", 220)
            conn.send(self.helo)
            await conn.expect("EHLO", 250)
            if self.tls_context is not None:
                conn.send(b"STARTTLS\r\n")
                await conn.expect("STARTTLS", 220)
                conn.transport = await loop.start_tls(transport, conn, self.tls_context)
                conn.send(self.helo)
                await conn.expect("EHLO after STARTTLS", 250)
            if self.auth is not None:
                conn.send(self.auth)
                await conn.expect("AUTH", 235)
        except BaseException:
            conn.close()
            raise
        self.setups.append(perf() - t)
        return conn

    async def send_one(self, conn: Conn, k: int) -> None:
        rcpt, data = self.message(k)
        if self.args.pipelining:
            conn.send(self.mail + rcpt + b"DATA\r\n")
            await conn.expect("MAIL", 250)
            await conn.expect("RCPT", 250, 251)
            await conn.expect("DATA", 354)
        else:
            conn.send(self.mail)
            await conn.expect("MAIL", 250)
            conn.send(rcpt)
            await conn.expect("RCPT", 250, 251)
            conn.send(b"DATA\r\n")
            await conn.expect("DATA", 354)
        t = perf()
        conn.send(data)
        code, text = await conn.reply()
        if code != 250:
            raise SMTPError("end of data", code, text)
        self.latencies.append(perf() - t)
        self.ok += 1

    async def quit(self, conn: Conn) -> None:
        try:
            conn.send(b"QUIT\r\n")
            await asyncio.wait_for(conn.reply(), 5)
        except (OSError, asyncio.TimeoutError, SMTPError):
            pass
        conn.close()

    def failed(self, e: BaseException) -> None:
        if isinstance(e, SMTPError):
            self.error(f"{e.stage}: {e.code}")
        else:
            self.error(type(e).__name__)

    async def session_many(self) -> None:
        conn = None
        while True:
            k = self.take()
            if k is None:
                break
            await self.pace(k)
            try:
                if conn is None:
                    conn = await self.open()
                await self.send_one(conn, k)
            except (OSError, SMTPError, ssl.SSLError) as e:
                self.failed(e)
                if conn is not None:
                    conn.close()
                conn = None  # reconnect for the next message
        if conn is not None:
            await self.quit(conn)

    async def session_one(self) -> None:
        while True:
            k = self.take()
            if k is None:
                break
            await self.pace(k)
            conn = None
            try:
                conn = await self.open()
                await self.send_one(conn, k)
            except (OSError, SMTPError, ssl.SSLError) as e:
                self.failed(e)
                if conn is not None:
                    conn.close()
                continue
            await self.quit(conn)

    async def run(self) -> dict:
        session = self.session_many if self.args.per_connection == "many" else self.session_one
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = perf()
        tasks = [asyncio.ensure_future(session()) for _ in range(self.args.sessions)]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), self.args.timeout)
            timed_out = False
        except asyncio.TimeoutError:
            timed_out = True
        elapsed = perf() - self.t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return {
            "mode": "send",
            "host": self.host, "port": self.port,
            "sessions": self.args.sessions, "per_connection": self.args.per_connection,
            "starttls": bool(self.args.starttls), "auth": bool(self.auth),
            "pipelining": bool(self.args.pipelining), "size": self.args.size,
            "target_rate": self.rate or None,
            "messages": self.args.messages, "ok": self.ok, "errors": self.errors,
            "timed_out": timed_out, "connections": self.connections,
            "elapsed": round(elapsed, 4),
            "rate": round(self.ok / elapsed, 1) if elapsed > 0 else None,
            "latency_ms": percentiles(self.latencies),
            "setup_ms": percentiles(self.setups),
            "client_cpu_s": round(cpu, 3),
        }


def percentiles(samples: list[float]) -> dict | None:
    if not samples:
        return None
    s = sorted(samples)
    n = len(s)

    def p(q: float) -> float:
        return round(s[min(n - 1, int(q * n))] * 1000, 3)

    return {"n": n, "p50": p(0.50), "p90": p(0.90), "p99": p(0.99), "max": round(s[-1] * 1000, 3),
            "mean": round(sum(s) / n * 1000, 3)}


async def idle(args: argparse.Namespace) -> int:
    load = Load(args)
    load.auth = None  # idle sessions are greeted, EHLO'd (and STARTTLS'd), nothing more
    conns: list[Conn] = []
    failures: dict[str, int] = {}
    gate = asyncio.Semaphore(args.open_concurrency)

    async def one() -> None:
        async with gate:
            try:
                conns.append(await asyncio.wait_for(load.open(), 60))
            except (OSError, SMTPError, ssl.SSLError, asyncio.TimeoutError) as e:
                name = f"{e.stage}: {e.code}" if isinstance(e, SMTPError) else type(e).__name__
                failures[name] = failures.get(name, 0) + 1

    t = perf()
    await asyncio.gather(*(one() for _ in range(args.connections)))
    opened = perf() - t
    print(json.dumps({"ready": len(conns), "failed": failures, "open_seconds": round(opened, 3),
                      "setup_ms": percentiles(load.setups)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the driver closes our stdin
    still_open = sum(1 for c in conns if c.lost is None)
    for c in conns:
        if c.lost is None:
            c.send(b"QUIT\r\n")
        c.close()
    print(json.dumps({"closed": len(conns), "still_open_at_end": still_open}), flush=True)
    return 0 if not failures else 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=("send", "idle"), default="send")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (send)")
    p.add_argument("--messages", type=int, default=2000, help="messages in all (send)")
    p.add_argument("--per-connection", choices=("many", "one"), default="many")
    p.add_argument("--size", type=int, default=2048, help="body octets (headers come on top)")
    p.add_argument("--starttls", action="store_true")
    p.add_argument("--auth", default="", help="user:password for AUTH PLAIN (after STARTTLS)")
    p.add_argument("--pipelining", action="store_true", help="send MAIL, RCPT, DATA at once")
    p.add_argument("--rate", type=float, default=0.0, help="pace to this many messages/s (0: as fast as possible)")
    p.add_argument("--sender", default="perf-src@src.invalid")
    p.add_argument("--recipient", default="rcpt@dst.invalid", help="prefixed with a sequence number")
    p.add_argument("--helo", default="loadgen.invalid")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--connections", type=int, default=200, help="idle sessions to open (idle)")
    p.add_argument("--open-concurrency", type=int, default=50, help="connections being opened at once (idle)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.mode == "idle":
        return asyncio.run(idle(args))
    result = asyncio.run(Load(args).run())
    print(json.dumps(result))
    return 0 if result["ok"] == args.messages else 1


if __name__ == "__main__":
    sys.exit(main())
