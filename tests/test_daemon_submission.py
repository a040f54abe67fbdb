"""
The real daemon (`twistd -n mailrelay -c FILE`) driven by smtplib and swaks: TLS, AUTH, the
relay refusal, limits, durability in Redis, Redis failures, configuration errors, shutdown.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import time
import tomllib
import zlib

import pytest

from conftest import daemon_command, start_redis
from mailrelay.passwords import hash_password

PASSWORD = "s3cret-pw"
USERS = {"alice": hash_password(PASSWORD, log_n=10)}
MESSAGE = (b"From: App <app@example.com>\r\nTo: Someone <someone@example.org>\r\n"
           b"Subject: Welcome\r\nX-Mailrelay-Tag: welcome\r\n"
           b"X-Mailrelay-Metadata-customer: 42\r\nX-PM-Metadata-plan: gold\r\n\r\n"
           b"Hello there.\r\n.A line starting with a dot.\r\n")
#: twistd exits by re-raising SIGTERM after a clean shutdown.
CLEAN_EXIT = (0, -signal.SIGTERM)
QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9a-f]{20})")


def tls_context() -> ssl.SSLContext:
    return ssl._create_unverified_context()  # the daemon's certificate is self-signed


@pytest.fixture
def daemon_config(daemon_config):
    """These tests look at the queue as submission left it: no delivery."""
    def build(redis_server, prefix, **sections):
        sections.setdefault("delivery", {"enabled": False})
        return daemon_config(redis_server, prefix, **sections)
    return build


@pytest.fixture
def daemon(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix, submission={"users": USERS}))
    d.prefix = unique_prefix
    return d


def submit(port: int, message: bytes = MESSAGE, recipients=("someone@example.org",),
           sender="app@example.com") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alice", PASSWORD)
        s.mail(sender)
        for r in recipients:
            code, text = s.rcpt(r)
            assert code == 250, (code, text)
        code, text = s.data(message)
    assert code == 250, (code, text)
    return QUEUED.search(text.decode()).group(1)


def hgetall(client, key: str) -> dict[str, str]:
    reply = client.command("HGETALL", key)
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def test_startup_logs_each_listener_and_redis(daemon):
    text = daemon.log_text()
    assert re.search(r"submission listening on 127\.0\.0\.1:\d+ \(STARTTLS\)", text)
    assert re.search(r"submission-tls listening on 127\.0\.0\.1:\d+ \(implicit TLS\)", text)
    assert re.search(r"using external Redis at 127\.0\.0\.1:\d+ db 0", text)


def settled_by(client, prefix: str, message_id: str, timeout: float = 10) -> None:
    """Wait until the acknowledgement of a queued message is settled (confirmed or cancelled)."""
    deadline = time.monotonic() + timeout
    while client.command("HEXISTS", f"{prefix}msg:{message_id}", "unsettled") == 1:
        assert time.monotonic() < deadline, f"{message_id} still unsettled after {timeout}s"
        time.sleep(0.01)


def test_starttls_auth_message_is_queued_in_redis(daemon, redis_server):
    message_id = submit(daemon.ports["submission"], recipients=("someone@example.org", "Other@Example.NET"))
    client = redis_server.client()
    record = hgetall(client, f"{daemon.prefix}msg:{message_id}")
    assert record["sender"] == "app@example.com"
    assert record["user"] == "alice"
    assert record["rcpt_count"] == "2"
    assert record["rcpt:0"] == "someone@example.org" and record["rcpt:1"] == "Other@Example.NET"
    assert record["state:0"] == record["state:1"] == "queued"
    assert record["tag"] == "welcome"
    assert json.loads(record["metadata"]) == {"customer": "42", "plan": "gold"}
    assert record["subject"] == "Welcome" and record["from"] == "app@example.com"
    body = zlib.decompress(client.command("GET", f"{daemon.prefix}body:{message_id}"))  # stored compressed
    assert body.startswith(b"Received: from ")
    assert f"with ESMTPSA id {message_id}".encode() in body.replace(b"\r\n\t", b" ")
    assert b"\r\nMessage-ID: <" + message_id.encode() in body
    assert b"X-Mailrelay-Tag" not in body and b"X-Mailrelay-Metadata" not in body and b"X-PM-" not in body
    assert f"\r\nX-Mailrelay-ID: {message_id}\r\n".encode() in body
    assert body.endswith(b"\r\n\r\nHello there.\r\n.A line starting with a dot.\r\n")
    # one delivery job per recipient, in its domain's queue once the 250 is confirmed (the
    # confirmation follows the reply: wait for it)
    settled_by(client, daemon.prefix, message_id)
    assert client.command("ZRANGE", f"{daemon.prefix}queue:d:example.org", 0, -1) == [f"{message_id}.0".encode()]
    assert client.command("ZRANGE", f"{daemon.prefix}queue:d:example.net", 0, -1) == [f"{message_id}.1".encode()]
    domains = client.command("ZRANGE", f"{daemon.prefix}queue:domains", 0, -1)
    assert sorted(domains) == [b"example.net", b"example.org"]


def test_each_queued_message_is_logged_as_sent(daemon):
    # braces are atext (RFC 5322 3.2.3): the line shows them, not a formatting error
    sender = "{odd}}@example.com"
    message_id = submit(daemon.ports["submission"], sender=sender)
    line = next(line for line in daemon.log_text().splitlines() if f"queued {message_id}" in line)
    match = re.search(rf"submission: queued {message_id} from <(.*)> for 1 recipient\(s\), "
                      rf"(\d+) bytes, user alice$", line)
    assert match is not None, line
    assert match.group(1) == sender
    assert int(match.group(2)) > len(MESSAGE)  # as stored: Received: and others added


def test_implicit_tls_with_smtplib(daemon, redis_server):
    with smtplib.SMTP_SSL("127.0.0.1", daemon.ports["submission-tls"], context=tls_context(), timeout=20) as s:
        ehlo = s.ehlo()[1].decode()
        assert "AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
        s.login("alice", PASSWORD)
        problems = s.sendmail("app@example.com", ["x@example.org"], b"Subject: implicit\r\n\r\nhi\r\n")
    assert problems == {}


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_swaks(daemon, redis_server, mode):
    port = daemon.ports["submission" if mode == "starttls" else "submission-tls"]
    tls_flag = "--tls" if mode == "starttls" else "--tlsc"
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", tls_flag, "--auth", "PLAIN",
         "--auth-user", "alice", "--auth-password", PASSWORD, "--from", "app@example.com",
         "--to", "swaks@example.org", "--header", "Subject: via swaks", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    message_id = QUEUED.search(result.stdout).group(1)
    record = hgetall(redis_server.client(), f"{daemon.prefix}msg:{message_id}")
    assert record["rcpt:0"] == "swaks@example.org" and record["subject"] == "via swaks"


def test_no_open_relay(daemon):
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20) as s:
        ehlo = s.ehlo()[1].decode()
        assert "AUTH" not in ehlo and "STARTTLS" in ehlo  # AUTH only after TLS
        assert s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode())[0] == 538
        assert s.mail("spammer@example.com")[0] == 250
        code, text = s.rcpt("victim@example.org")
        assert (code, text[:5]) == (530, b"5.7.0")
        s.starttls(context=tls_context())
        s.ehlo()
        s.mail("spammer@example.com")
        assert s.rcpt("victim@example.org")[0] == 530  # TLS alone is not enough


def test_bad_credentials_then_throttle(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"users": USERS, "auth_failures_per_ip": "3/5m"}))
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        s.ehlo()
        for attempt in range(3):
            code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
            assert (code, text[:5]) == (535, b"5.7.8")
        code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode())
        assert (code, text[:5]) == (421, b"4.7.0")
    # still throttled on a new connection, even with the right password
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        with pytest.raises(smtplib.SMTPException):
            s.login("alice", PASSWORD)


def test_trusted_network_sends_without_auth(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"trusted_networks": ["127.0.0.0/8"]}))
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        assert s.sendmail("app@example.com", ["a@example.org"], b"Subject: trusted\r\n\r\nx\r\n") == {}


def test_rate_limit_per_user(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"users": USERS, "rate_limit_per_user": "2/1h"}))
    submit(d.ports["submission"])
    submit(d.ports["submission"])
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alice", PASSWORD)
        code, text = s.mail("app@example.com")
        assert (code, text[:5]) == (451, b"4.7.0")


def test_limits_at_the_daemon(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"users": USERS, "max_message_size": 5000,
                                               "max_recipients": 2}))
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        s.login("alice", PASSWORD)
        assert s.mail("a@example.com", ["SIZE=6000"])[0] == 552
        s.mail("a@example.com")
        s.rcpt("1@example.org")
        s.rcpt("2@example.org")
        assert s.rcpt("3@example.org")[:1] == (452,)
        code, text = s.data(b"Subject: big\r\n\r\n" + b"0123456789\r\n" * 600)
        assert (code, text[:5]) == (552, b"5.3.4")
        s.rset()
        s.mail("a@example.com")
        s.rcpt("1@example.org")
        code, text = s.data(b"Subject: long line\r\n\r\n" + b"x" * 1500 + b"\r\n")
        assert (code, text[:5]) == (554, b"5.6.0")
        assert s.noop()[0] == 250  # the session survives


def test_starttls_discards_pipelined_commands(daemon):
    with socket.create_connection(("127.0.0.1", daemon.ports["submission"]), timeout=20) as raw:
        f = raw.makefile("rb")
        f.readline()
        raw.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nEHLO injected\r\nMAIL FROM:<evil@example.com>\r\n")
        assert f.readline().startswith(b"220 2.0.0")
        tls = tls_context().wrap_socket(raw, server_hostname="localhost")
        tf = tls.makefile("rb")
        tls.sendall(b"RCPT TO:<x@example.org>\r\n")
        # neither EHLO nor MAIL survived: the session starts over
        assert tf.readline().startswith(b"503 5.5.1")
        tls.sendall(b"QUIT\r\n")
        assert tf.readline().startswith(b"221")


def test_redis_unresponsive_gives_451_and_nothing_is_stored(start_daemon, daemon_config, tmp_path, unique_prefix):
    redis = start_redis(tmp_path / "redis-stopped")
    try:
        d = start_daemon(daemon_config(redis, unique_prefix, redis={"timeout": "1s"},
                                       submission={"users": USERS}))
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
            s.starttls(context=tls_context())
            s.login("alice", PASSWORD)
            s.mail("app@example.com")
            s.rcpt("someone@example.org")
            os.kill(redis.pid, signal.SIGSTOP)   # Redis hangs between RCPT and DATA
            try:
                code, text = s.data(b"Subject: during outage\r\n\r\nx\r\n")
                assert (code, text[:5]) == (451, b"4.3.0")
                s.mail("app@example.com")
                code, text = s.rcpt("other@example.org")   # the suppression check needs Redis too
                assert (code, text[:5]) == (451, b"4.3.0")
            finally:
                os.kill(redis.pid, signal.SIGCONT)
        # Redis is back: the next message is accepted; the first one, whose write
        # arrived after its deadline, was never stored.
        message_id = submit(d.ports["submission"])
        client = redis.client()
        keys = client.command("KEYS", f"{unique_prefix}msg:*")
        assert keys == [f"{unique_prefix}msg:{message_id}".encode()]
        settled_by(client, unique_prefix, message_id)
        assert client.command("ZCARD", f"{unique_prefix}queue:d:example.org") == 1
    finally:
        redis.stop()


def test_redis_full_gives_452(start_daemon, daemon_config, tmp_path, unique_prefix):
    redis = start_redis(tmp_path / "redis-full")
    try:
        d = start_daemon(daemon_config(redis, unique_prefix, submission={"users": USERS}))
        redis.client().command("CONFIG", "SET", "maxmemory", "1")
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
            s.starttls(context=tls_context())
            s.login("alice", PASSWORD)
            s.mail("app@example.com")
            s.rcpt("someone@example.org")
            code, text = s.data(b"Subject: full\r\n\r\nx\r\n")
            assert (code, text[:5]) == (452, b"4.3.1")
        assert redis.client().command("KEYS", f"{unique_prefix}msg:*") == []
    finally:
        redis.stop()


def test_managed_defaults_credentials_and_clean_stop(start_daemon, tmp_path, archive_databases):
    # the managed Redis (the managed PostgreSQL: tests/test_archive_wiring.py)
    state = tmp_path / "st"
    config = (f'[server]\nstate_dir = "{state}"\n[delivery]\nenabled = false\n'
              f'[archive]\nurl = "{archive_databases()}"\n'
              '[submission]\nlisten = ["tcp:0:interface=127.0.0.1"]\nlisten_tls = ["tcp:0:interface=127.0.0.1"]\n'
              '[web]\nlisten = ["tcp:0:interface=127.0.0.1"]\n')
    d = start_daemon(config)
    credentials = state / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert f"password in {credentials}" in d.log_text()
    assert "using managed Redis at unix:" in d.log_text()
    creds = tomllib.loads(credentials.read_text())
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.starttls(context=tls_context())
        s.login(creds["username"], creds["password"])
        assert s.sendmail("app@example.com", ["a@example.org"], b"Subject: managed\r\n\r\nx\r\n") == {}
    redis_pid = int((state / "redis" / "redis.pid").read_text())
    assert d.stop() in CLEAN_EXIT
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)
    # the AOF kept the message: a new daemon on the same state_dir still has it
    d2 = start_daemon(config)
    client_sock = str(state / "redis" / "redis.sock")
    out = subprocess.run(["redis-cli", "-s", client_sock, "KEYS", "mailrelay:msg:*"],
                         capture_output=True, text=True, timeout=20).stdout.split()
    assert len(out) == 1
    assert tomllib.loads(credentials.read_text()) == creds  # written once
    d2.stop()


def test_sigterm_finishes_transaction_then_421(daemon):
    idle = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20)
    idle.ehlo()
    busy = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=20)
    busy.starttls(context=tls_context())
    busy.login("alice", PASSWORD)
    busy.mail("app@example.com")
    busy.rcpt("someone@example.org")
    os.kill(daemon.pid, signal.SIGTERM)
    daemon.wait_for_line(r"submission.*stopped listening|Stopping factory|mailrelay stopped|Server Shut Down|shutting down", timeout=20)
    # the idle session was told 421 4.3.2
    assert idle.getreply()[:2] == (421, b"4.3.2 Service shutting down, try again later")
    # the busy one may finish its message, then gets 421
    code, text = busy.data(b"Subject: during shutdown\r\n\r\nx\r\n")
    assert code == 250, text
    assert busy.getreply()[0] == 421
    assert daemon.wait() in CLEAN_EXIT


@pytest.mark.parametrize("config_text, key", [
    ('[submission]\nmax_recipents = 3\n', "submission.max_recipents"),
    ('[tls]\ncert = "/nonexistent.pem"\nkey = "/nonexistent.key"\n', "tls.cert"),
    ('[submission]\nlisten = ["tcp:abc"]\n', "submission.listen[0]"),
])
def test_bad_configuration_does_not_start(tmp_path, config_text, key):
    path = tmp_path / "bad.toml"
    path.write_text(config_text)
    result = subprocess.run(daemon_command(path), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    output = (result.stdout + result.stderr).strip().splitlines()
    assert "Traceback" not in result.stdout + result.stderr
    assert len(output) == 1 and key in output[0], output


def test_idle_and_data_timeouts(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(daemon_config(redis_server, unique_prefix,
                                   submission={"users": USERS, "idle_timeout": "1s", "data_timeout": "2s",
                                               "trusted_networks": ["127.0.0.0/8"]}))
    with socket.create_connection(("127.0.0.1", d.ports["submission"]), timeout=20) as idle:
        f = idle.makefile("rb")
        assert f.readline().startswith(b"220 ")
        assert f.readline().startswith(b"421 4.4.2")  # nothing sent: idle timeout
        assert f.readline() == b""                     # and the server closed
    with socket.create_connection(("127.0.0.1", d.ports["submission"]), timeout=20) as slow:
        f = slow.makefile("rb")
        f.readline()
        slow.sendall(b"HELO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        for _ in range(4):
            f.readline()
        # keep sending less than a line, more often than the idle timeout, never finishing DATA
        received = b""
        slow.settimeout(0.5)
        for _ in range(12):
            try:
                slow.sendall(b"x")
                chunk = slow.recv(4096)
            except (TimeoutError, socket.timeout):
                continue  # no reply yet: send another byte
            except OSError:
                break
            received += chunk
            if not chunk or b"421" in received:
                break
        assert received.startswith(b"421 4.4.2"), received
