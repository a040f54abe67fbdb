"""
Mail peers for daemon-level tests: Postfix's smtp-sink as a destination, and small helpers
to submit mail and read what the daemon recorded. Fixtures ``dns`` and ``sink`` are in
conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

QUEUED = re.compile(r"queued as ([0-9a-f]{20})")
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    """Postfix's smtp-sink on 127.0.0.1, each message dumped to a file of its own."""

    def __init__(self, directory: Path, *options: str) -> None:
        # smtp-sink writes as nobody, who cannot enter pytest's private tmp directories
        self.dir = Path(tempfile.mkdtemp(prefix="sink-", dir="/tmp"))
        os.chmod(self.dir, 0o777)
        for _ in range(5):
            self.port = free_port()
            args = [SMTP_SINK, "-u", "nobody", "-d", str(self.dir / "%Y%m%d%H%M%S."), *options,
                    f"127.0.0.1:{self.port}", "100"]
            self.process = subprocess.Popen(args, stderr=subprocess.PIPE)
            if self._wait_listening():
                return
        raise RuntimeError("smtp-sink did not start")

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except ConnectionRefusedError:
                time.sleep(0.01)  # back off between refused connections
        return False

    def messages(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.dir.iterdir())]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def send(port: int, recipients, subject="test", body=b"Hello\r\n") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        s.mail("app@example.com")
        for r in recipients:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(b"From: app@example.com\r\nSubject: " + subject.encode() + b"\r\n\r\n" + body)
    assert code == 250, text
    return QUEUED.search(text.decode()).group(1)


def timeline(redis_server, prefix, message_id):
    return [json.loads(e) for e in redis_server.client().command("LRANGE", f"{prefix}timeline:{message_id}", 0, -1)]


# -- bounce messages: what remote servers send back to the bounce listener ------------------

#: The bounce domain the bounce tests configure ([bounces] domain).
BOUNCE_DOMAIN = "bounces.example.test"


#: Header lines smtp-sink puts on top of each dump (not part of the message it received).
SINK_LINE = re.compile(r"^(X-Client-Addr|X-Client-Proto|X-Helo-Args|X-Mail-Args|X-Rcpt-Args): ")


def received_headers(sink: "Sink", recipient: str) -> str:
    """The header block of the copy ``recipient`` received at ``sink`` (one transaction per
    recipient: VERP), as its server returns it in a bounce: smtp-sink's own lines removed,
    its Received: kept, LF line ends."""
    for dump in sink.messages():
        text = dump.decode("utf-8", "replace")
        if re.search(rf"^X-Rcpt-Args: <{re.escape(recipient)}>", text, re.M | re.I):
            header = text.replace("\r\n", "\n").split("\n\n", 1)[0]
            return "\n".join(line for line in header.split("\n") if not SINK_LINE.match(line)) + "\n"
    raise AssertionError(f"no copy for <{recipient}> at the sink")


def _returned_headers(recipient: str, message_id: str, original: str | None) -> str:
    """What a bounce returns of our message: ``original`` (the headers a recipient really
    received) or, without it, headers anyone can write (they name the message's id only)."""
    if original is not None:
        return original
    return f"From: app@example.com\nTo: {recipient}\nSubject: hello\nX-Mailrelay-ID: {message_id}\n"


def dsn(to: str, recipient: str, message_id: str, status="5.1.1",
        diagnostic="smtp; 550 5.1.1 <{r}>: Recipient address rejected: User unknown",
        original: str | None = None) -> bytes:
    """An RFC 3464 DSN sent to ``to``, reporting ``recipient`` of our message as failed,
    returning ``original`` (see _returned_headers)."""
    diagnostic = diagnostic.format(r=recipient)
    headers = _returned_headers(recipient, message_id, original)
    return f"""From: MAILER-DAEMON@mx.example.test (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

--BOUNDARY
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--BOUNDARY
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.test

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822; {recipient}
Action: failed
Status: {status}
Remote-MTA: dns; mailbox.example.test
Diagnostic-Code: {diagnostic}

--BOUNDARY
Content-Type: text/rfc822-headers

{headers}
--BOUNDARY--
""".replace("\n", "\r\n").encode()


def arf(recipient: str, message_id: str, original: str | None = None) -> bytes:
    """An RFC 5965 spam complaint (ARF) about our message, sent to fbl@ the bounce domain,
    returning ``original`` (see _returned_headers) as message/rfc822."""
    headers = _returned_headers(recipient, message_id, original)
    return f"""From: feedback@isp.example.net
To: fbl@{BOUNCE_DOMAIN}
Subject: FW: hello
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="ARF"

--ARF
Content-Type: text/plain

This is an email abuse report for an email message received from IP 192.0.2.1.

--ARF
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ISP-FBL/1.0
Version: 1
Original-Rcpt-To: {recipient}

--ARF
Content-Type: message/rfc822

{headers}
hello
--ARF--
""".replace("\n", "\r\n").encode()


def deliver_to_bounce_listener(port: int, rcpt: str, content: bytes):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("mx.example.test")
        s.mail("")
        code, text = s.rcpt(rcpt)
        if code != 250:
            return code, text
        return s.data(content)


async def wait_until(predicate, what: str = "condition", limit: float = 20.0, describe=None):
    """In a trial test: re-check ``predicate`` (sync or async) after each reactor turn until it
    is true, and return its value; fail after ``limit`` seconds, saying what was awaited."""
    import inspect

    from twisted.internet import reactor, task

    deadline = time.monotonic() + limit
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}" + (f"; {describe()}" if describe else ""))
        await task.deferLater(reactor, 0, lambda: None)
