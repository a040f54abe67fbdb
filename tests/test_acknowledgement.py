"""
Settling acknowledgements (issue 15 item 6): while the daemon lives, "451, not queued" means
the message is not delivered, even when Redis ran the enqueue script and only its reply was
late; and a message acknowledged with 250 is delivered even when its daemon dies before it
settled the acknowledgement.

Real daemons, a real Redis, smtplib clients and Postfix's smtp-sink; between the daemon and
Redis a proxy (tests/redisproxy.py) freezes the conversation right after the enqueue call ran
on Redis, as a SIGSTOP of redis-server at that moment would.
"""

from __future__ import annotations

import signal
import smtplib
import subprocess
import sys
from uuid import uuid4

from conftest import wait_until
from peers import send
from redisproxy import StallingProxy

RECIPIENT = "someone@anywhere.invalid"


def relay_config(daemon_config, redis_url, prefix, sink, **redis):
    return daemon_config(redis_url, prefix, redis={"timeout": "1s", **redis},
                         submission={"trusted_networks": ["127.0.0.0/8"]},
                         delivery={"smarthost": f"127.0.0.1:{sink.port}", "smarthost_tls": "none",
                                   "retry_schedule": ["1s"]})


def stored_id(client, prefix, subject):
    """The id of the stored message with this subject (read from Redis itself), or None."""
    for member in client.command("ZRANGE", f"{prefix}idx:time", 0, -1):
        message_id = member.decode()
        if client.command("HGET", f"{prefix}msg:{message_id}", "subject") == subject.encode():
            return message_id
    return None


def mailrelay_cli(config_path, *args):
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", *args, "-c", str(config_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_451_after_redis_stalled_past_the_enqueue_is_never_delivered(
        start_daemon, daemon_config, redis_server, unique_prefix, sink):
    proxy = StallingProxy(redis_server.host, redis_server.port)
    client = redis_server.client()
    try:
        daemon = start_daemon(relay_config(daemon_config, proxy.url, unique_prefix, sink))
        subject = f"stalled {uuid4().hex}"
        proxy.arm(subject.encode())   # the subject travels in the enqueue call's arguments
        with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as smtp:
            smtp.ehlo()
            smtp.mail("app@example.com")
            assert smtp.rcpt(RECIPIENT)[0] == 250
            code, text = smtp.data(f"From: app@example.com\r\nSubject: {subject}\r\n\r\nHello\r\n".encode())
        assert code == 451, text
        assert proxy.triggered.is_set() and proxy.holding
        # Redis ran the script: the message is stored, its reply is what stalled
        stalled = stored_id(client, unique_prefix, subject)
        assert stalled is not None

        proxy.release()   # Redis answers again
        wait_until(lambda: client.command("EXISTS", f"{unique_prefix}msg:{stalled}") == 0, 15,
                   f"{stalled} (answered 451) to be cancelled")
        daemon.wait_for_line(rf"storage: cancelled {stalled}: it was stored, but its client was answered 451")
        for key in (f"body:{stalled}", f"timeline:{stalled}"):
            assert client.command("EXISTS", f"{unique_prefix}{key}") == 0, key
        assert client.command("ZSCORE", f"{unique_prefix}queue:unsettled", stalled) is None
        assert client.command("ZSCORE", f"{unique_prefix}idx:time", stalled) is None
        events = client.command("XRANGE", f"{unique_prefix}events", "-", "+")
        assert [b"cancelled", stalled.encode()] in [fields[:4][1::2] for _, fields in events]

        # a message acknowledged with 250 afterwards is delivered; the 451'd one never is
        delivered = send(daemon.ports["submission"], [RECIPIENT], subject="acknowledged")
        daemon.wait_for_line(rf"{delivered}: to=<{RECIPIENT}>, relay=.*status=sent")
        wait_until(lambda: len(sink.messages()) >= 1, 10, "the sink to have the message")
        received = sink.messages()
        assert any(f"X-Mailrelay-ID: {delivered}".encode() in m for m in received)
        assert not any(subject.encode() in m or stalled.encode() in m for m in received)
        assert client.command("ZCARD", f"{unique_prefix}queue:unsettled") == 0
    finally:
        proxy.close()


def test_an_acknowledged_message_left_unsettled_by_a_killed_daemon_is_delivered(
        start_daemon, daemon_config, redis_server, unique_prefix, sink, tmp_path):
    proxy = StallingProxy(redis_server.host, redis_server.port)
    client = redis_server.client()
    try:
        first = start_daemon(relay_config(daemon_config, proxy.url, unique_prefix, sink), tmp_path / "first")
        subject = f"unsettled {uuid4().hex}"
        # the enqueue call runs and its reply arrives (250); nothing the daemon sends afterwards
        # (its confirmation) reaches Redis
        proxy.arm(subject.encode(), mode="hold_commands")
        message_id = send(first.ports["submission"], [RECIPIENT], subject=subject)
        owner = client.command("HGET", f"{unique_prefix}msg:{message_id}", "unsettled")
        assert owner is not None and owner.decode().split(":")[1] == str(first.pid)
        assert client.command("ZSCORE", f"{unique_prefix}queue:unsettled", message_id) is not None
        assert client.command("ZCARD", f"{unique_prefix}queue:d:anywhere.invalid") == 0
        # the administration command shows it as unsettled, and a flush does not release it
        cli_config = tmp_path / "cli.toml"
        cli_config.write_text(relay_config(daemon_config, redis_server, unique_prefix, sink))
        listed = mailrelay_cli(cli_config, "queue", "list")
        assert "1 message stored but not settled yet" in listed, listed
        shown = mailrelay_cli(cli_config, "queue", "show", message_id)
        assert f"unsettled: not deliverable until {owner.decode()} confirms" in shown, shown
        mailrelay_cli(cli_config, "queue", "retry", "--all")
        mailrelay_cli(cli_config, "queue", "retry", message_id)
        assert client.command("ZCARD", f"{unique_prefix}queue:d:anywhere.invalid") == 0

        first.stop(signal.SIGKILL)
        proxy.close()
        # another daemon's sweeper confirms it once the dead daemon's heartbeat is gone
        second = start_daemon(relay_config(daemon_config, redis_server, unique_prefix, sink), tmp_path / "second")
        second.wait_for_line(rf"confirmed 1 acknowledged message\(s\) left unsettled by {owner.decode()} "
                             rf"\(no heartbeat: stopped or died\): {message_id}", timeout=45)
        second.wait_for_line(rf"{message_id}: to=<{RECIPIENT}>, relay=.*status=sent")
        assert client.command("HEXISTS", f"{unique_prefix}msg:{message_id}", "unsettled") == 0
        assert any(f"X-Mailrelay-ID: {message_id}".encode() in m for m in sink.messages())
    finally:
        proxy.close()
