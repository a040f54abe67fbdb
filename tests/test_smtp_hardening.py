"""
Issue 15 against the real daemon, over raw sockets and real TLS clients: slow clients
(a command, and each line of DATA, must complete within idle_timeout), the total
connection caps, NUL bytes in commands and in DATA, RFC 5321's 100 recipients, the
server's TLS 1.2 cipher list and the cap on a message's header size.
"""

from __future__ import annotations

import random
import smtplib
import socket
import ssl
import subprocess
import sys
import time

import pytest

from conftest import EPHEMERAL
from mailrelay.mail.message import split_header
from mailrelay.passwords import hash_password
from mailrelay.smtp.transaction import header_size_exceeds

PASSWORD = "s3cret-pw"
USERS = {"alice": hash_password(PASSWORD, log_n=10)}
TRUSTED = ["127.0.0.0/8"]  # most tests here send without AUTH, from loopback


def tls_context() -> ssl.SSLContext:
    return ssl._create_unverified_context()  # the daemon's certificate is self-signed


@pytest.fixture
def daemon_config(daemon_config):
    """No delivery: what submission accepted stays in the queue, for the tests to look at."""
    def build(redis_server, prefix, **sections):
        sections.setdefault("delivery", {"enabled": False})
        return daemon_config(redis_server, prefix, **sections)
    return build


def queued_messages(redis_server, prefix: str) -> list[bytes]:
    return redis_server.client().command("KEYS", f"{prefix}msg:*")


class RawSession:
    """A plain socket speaking SMTP line by line, to send what smtplib will not."""

    def __init__(self, port: int, *, wrap_tls: bool = False) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        if wrap_tls:
            self.sock = tls_context().wrap_socket(self.sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """One whole reply (all its lines), or b"" when the server closed."""
        lines = []
        while True:
            line = self.file.readline()
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return b"".join(lines)

    def command(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def trickle_until_reply(sock: socket.socket, data: bytes, pause: float = 0.25) -> tuple[bytes, float]:
    """
    Send ``data`` one byte at a time, ``pause`` seconds apart, until the server says
    something. The pauses are the attack itself (a client that is slow on purpose), not
    synchronisation: the test waits on the server's reply or its closing. Returns what the
    server sent (b"" if nothing before ``data`` ran out) and the seconds it took.
    """
    sock.settimeout(pause)  # each wait for a reply is also the pause before the next byte
    started = time.monotonic()
    received = b""
    try:
        for byte in data:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server closed: read what it said before
                pass
            try:
                chunk = sock.recv(4096)
            except (TimeoutError, socket.timeout):
                continue
            received += chunk
            if not chunk or received.endswith(b"\r\n"):
                break
    finally:
        sock.settimeout(20)
    return received, time.monotonic() - started


# -- item 3: slow clients -----------------------------------------------------------------


def test_a_command_trickled_byte_by_byte_times_out(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"idle_timeout": "1s", "data_timeout": "1m",
                                               "trusted_networks": TRUSTED}))
    s = RawSession(d.ports["submission"])
    assert s.reply().startswith(b"220 ")
    # complete commands, each sent within the timeout of the previous reply, keep a session
    for _ in range(3):
        time.sleep(0.6)  # a client pausing between commands (the behaviour under test)
        assert s.command(b"NOOP").startswith(b"250 2.0.0")
    # one byte every 0.25 s: each byte used to reset the 1 s timer, for ever (8 s here)
    received, elapsed = trickle_until_reply(s.sock, b"EHLO " + b"x" * 32)
    assert received.startswith(b"421 4.4.2"), received
    assert elapsed < 3, elapsed  # 1 s after the last reply, not after the last byte
    assert s.file.readline() == b""  # and the server closed
    s.close()


def test_a_data_line_trickled_byte_by_byte_times_out(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"idle_timeout": "1s", "data_timeout": "1m",
                                               "trusted_networks": TRUSTED}))
    s = RawSession(d.ports["submission"])
    s.reply()
    assert s.command(b"HELO x").startswith(b"250")
    assert s.command(b"MAIL FROM:<a@example.com>").startswith(b"250")
    assert s.command(b"RCPT TO:<b@example.org>").startswith(b"250")
    assert s.command(b"DATA").startswith(b"354")
    s.sock.sendall(b"Subject: slow\r\n\r\n")
    # a line of DATA must be complete within idle_timeout; data_timeout (1 m) bounds the whole
    received, elapsed = trickle_until_reply(s.sock, b"y" * 32)
    assert received.startswith(b"421 4.4.2"), received
    assert elapsed < 3, elapsed
    assert s.file.readline() == b""
    s.close()
    assert queued_messages(redis_server, unique_prefix) == []


def test_total_connection_caps(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"max_connections": 3, "max_connections_per_ip": 20},
                                   bounces={"domain": "bounces.example.com", "listen": [EPHEMERAL],
                                            "max_connections": 1}))
    # the cap counts both submission listeners (STARTTLS and implicit TLS) together
    held = [RawSession(d.ports["submission"]), RawSession(d.ports["submission"]),
            RawSession(d.ports["submission-tls"], wrap_tls=True)]
    for s in held:
        assert s.reply().startswith(b"220 ")
    for port, wrap in ((d.ports["submission"], False), (d.ports["submission-tls"], True)):
        over = RawSession(port, wrap_tls=wrap)
        assert over.reply().startswith(b"421 4.7.0"), port
        assert over.file.readline() == b""
        over.close()
    # a session that ends frees its place
    assert held[0].command(b"QUIT").startswith(b"221")
    held.pop(0).close()
    deadline = time.monotonic() + 10
    while True:  # wait for the server to see the close (an event we poll for)
        s = RawSession(d.ports["submission"])
        greeting = s.reply()
        if greeting.startswith(b"220 ") or time.monotonic() > deadline:
            break
        s.close()
    assert greeting.startswith(b"220 "), greeting
    held.append(s)
    # the bounce listener has its own cap
    first = RawSession(d.ports["bounces"])
    assert first.reply().startswith(b"220 ")
    second = RawSession(d.ports["bounces"])
    assert second.reply().startswith(b"421 4.7.0")
    for s in held + [first, second]:
        s.close()


# -- item 4: NUL bytes ------------------------------------------------------------------------


def test_nul_refused_in_commands_and_in_data(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"trusted_networks": TRUSTED}))
    s = RawSession(d.ports["submission"])
    s.reply()
    for command in (b"EHLO a\0b", b"HELO a\0b", b"NOOP\0", b"EHLO x\0"):
        assert s.command(command).startswith(b"501 5.5.2"), command
    assert s.command(b"MAIL FROM:<a@example.com>").startswith(b"503")  # no EHLO was accepted
    assert s.command(b"EHLO x").startswith(b"250")
    assert s.command(b"MAIL FROM:<a\0@example.com>").startswith(b"501 5.5.2")
    assert s.command(b"MAIL FROM:<a@example.com>").startswith(b"250")
    assert s.command(b"RCPT TO:<b@example.org>\0").startswith(b"501 5.5.2")
    assert s.command(b"RCPT TO:<b@example.org>").startswith(b"250")
    assert s.command(b"DATA").startswith(b"354")
    # a NUL in the body, and a line that a receiver dropping NUL would read as the end of data
    s.sock.sendall(b"Subject: nul\r\n\r\nbefore\0after\r\n\0.\r\nMAIL FROM:<x@example.com>\r\n.\r\n")
    assert s.reply().startswith(b"554 5.6.0")
    # the session is sane: the next message is queued, and only it
    assert s.command(b"MAIL FROM:<a@example.com>").startswith(b"250")
    assert s.command(b"RCPT TO:<b@example.org>").startswith(b"250")
    assert s.command(b"DATA").startswith(b"354")
    assert s.command(b"Subject: clean\r\n\r\nfine\r\n.").startswith(b"250 2.0.0 Ok: queued")
    assert s.command(b"QUIT").startswith(b"221")
    s.close()
    assert len(queued_messages(redis_server, unique_prefix)) == 1


# -- item 5: 100 recipients ---------------------------------------------------------------------


def test_one_hundred_recipients_by_default(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix, submission={"trusted_networks": TRUSTED}))
    assert "below the minimum of RFC 5321" not in d.log_text()
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.ehlo()
        s.mail("a@example.com")
        for i in range(100):
            assert s.rcpt(f"r{i}@example.org")[0] == 250, i
        assert s.rcpt("r100@example.org")[:2] == (452, b"4.5.3 Too many recipients")
        assert s.data(b"Subject: many\r\n\r\nx\r\n")[0] == 250


def test_fewer_recipients_configured_start_with_a_warning(start_daemon, daemon_config, redis_server,
                                                          unique_prefix, tmp_path):
    config = daemon_config(redis_server, unique_prefix,
                           submission={"trusted_networks": TRUSTED, "max_recipients": 50})
    d = start_daemon(config)
    warning = "submission.max_recipients = 50 is below the minimum of RFC 5321 (100"
    assert warning in d.log_text()
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.ehlo()
        s.mail("a@example.com")
        for i in range(50):
            assert s.rcpt(f"r{i}@example.org")[0] == 250, i
        assert s.rcpt("r50@example.org")[0] == 452
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", "check-config", "-c", str(d.config_path)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert warning in result.stderr
    assert "max_recipients = 50" in result.stdout


# -- item 12: TLS ciphers and the header size ---------------------------------------------------


def tls12_client(ciphers: str) -> ssl.SSLContext:
    context = tls_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers + ":@SECLEVEL=0")  # offer it, however weak the client thinks it is
    return context


@pytest.mark.parametrize("listener", ["submission", "submission-tls"])
def test_tls12_offers_only_aead_with_forward_secrecy(start_daemon, daemon_config, redis_server,
                                                      unique_prefix, listener):
    d = start_daemon(daemon_config(redis_server, unique_prefix))  # the generated EC certificate

    def handshake(ciphers: str) -> str:
        with socket.create_connection(("127.0.0.1", d.ports[listener]), timeout=20) as raw:
            if listener == "submission":
                f = raw.makefile("rb")
                assert f.readline().startswith(b"220 ")
                raw.sendall(b"EHLO x\r\nSTARTTLS\r\n")
                while not f.readline().startswith(b"220 "):
                    pass
            with tls12_client(ciphers).wrap_socket(raw, server_hostname="localhost") as tls:
                return tls.cipher()[0]

    for cbc_sha1 in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA"):
        with pytest.raises(ssl.SSLError):
            handshake(cbc_sha1)
    assert handshake("ECDHE-ECDSA-AES128-GCM-SHA256") == "ECDHE-ECDSA-AES128-GCM-SHA256"
    assert handshake("ECDHE-ECDSA-CHACHA20-POLY1305") == "ECDHE-ECDSA-CHACHA20-POLY1305"


def folded_header(size: int) -> bytes:
    """One header field of about ``size`` octets, folded into lines of 80."""
    lines = [b"X-Long: start"] + [b" " + b"f" * 77] * (size // 80)
    return b"\r\n".join(lines) + b"\r\n"


def test_header_size_is_capped(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix, submission={"trusted_networks": TRUSTED}))
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.ehlo()
        s.mail("a@example.com")
        s.rcpt("b@example.org")
        code, text = s.data(b"Subject: big header\r\n" + folded_header(180 * 1024) + b"\r\nbody\r\n")
        assert (code, text[:5]) == (552, b"5.3.4"), text
        # under the 100 KB default, and a message that is all header: accepted
        s.mail("a@example.com")
        s.rcpt("b@example.org")
        assert s.data(b"Subject: fine\r\n" + folded_header(90 * 1024) + b"\r\nbody\r\n")[0] == 250
        s.mail("a@example.com")
        s.rcpt("b@example.org")
        assert s.data(b"Subject: no body\r\n" + folded_header(90 * 1024))[0] == 250
        assert s.noop()[0] == 250
    assert len(queued_messages(redis_server, unique_prefix)) == 2


def test_header_size_configured(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"trusted_networks": TRUSTED, "max_header_size": 2000}))
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.ehlo()
        s.mail("a@example.com")
        s.rcpt("b@example.org")
        # a header without the blank line that ends it counts up to its first non-field line
        assert s.data(b"Subject: x\r\n" + folded_header(1500) + b"body line\r\n" + b"z" * 900 + b"\r\n")[0] == 250
        s.mail("a@example.com")
        s.rcpt("b@example.org")
        assert s.data(b"Subject: x\r\n" + folded_header(2500) + b"\r\nbody\r\n")[:1] == (552,)



def test_header_size_as_split_header_reads_it():
    """The fast check agrees with the header split_header finds (pieces in random orders)."""
    pieces = [b"Subject: x\r\n", b" folded\r\n", b"\r\n", b"body\r\n", b"X-A: " + b"a" * 40 + b"\r\n",
              b"\r\n\r\n", b"no colon\r\n", b":\r\n", b"\r"]
    rng = random.Random(15)
    for _ in range(3000):
        content = b"".join(rng.choices(pieces, k=rng.randrange(40)))
        header = len(content) - len(split_header(content)[1])
        for limit in (rng.randrange(1, 400), header - 1, header, header + 1):  # and at the edge
            if limit > 0:
                assert header_size_exceeds(content, limit) == (header > limit), (content, limit)


# -- found by the attacker's review of issue 15: clients that do not read -----------------------


def test_a_client_that_does_not_read_its_replies_is_not_read_from(start_daemon, daemon_config, redis_server,
                                                                 unique_prefix):
    """
    Pipelined NOOPs from a client that never reads: the replies piled up in the daemon's
    memory without bound (54 MB sent grew it by 150 MB). Once the replies it has not read
    fill the transport's buffer, the session reads no more; when the client reads, every
    reply comes, in order, and the session goes on.
    """
    d = start_daemon(daemon_config(redis_server, unique_prefix, submission={"trusted_networks": TRUSTED}))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.connect(("127.0.0.1", d.ports["submission"]))
    chunk = b"NOOP\r\n" * (64 * 1024 // 6)
    budget = 24 * 1024 * 1024
    sent = 0
    sock.settimeout(3)  # the daemon stops reading: a send then makes no progress for this long
    try:
        while sent < budget:
            sock.sendall(chunk)
            sent += len(chunk)
    except (TimeoutError, socket.timeout):
        pass
    assert sent < budget, "the daemon kept reading commands whose replies were not read"
    # now read: every reply to what the daemon took, in order, then the session still works
    sock.settimeout(20)
    file = sock.makefile("rb")
    assert file.readline().startswith(b"220 ")
    replies = 0
    while replies < sent // 6:   # the daemon has the rest of the last chunk sendall started
        line = file.readline()
        assert line == b"250 2.0.0 Ok\r\n", (replies, line)
        replies += 1
    sock.settimeout(0.5)
    try:   # the commands sendall had handed to the kernel when it timed out
        while file.readline() == b"250 2.0.0 Ok\r\n":
            pass
    except (TimeoutError, socket.timeout, OSError):
        pass
    file.close()
    sock.settimeout(20)
    sock.sendall(b"QUIT\r\n")
    assert sock.recv(100).startswith(b"221")
    sock.close()
