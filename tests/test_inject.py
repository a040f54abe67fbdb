"""
The one door into the queue (mailrelay.services.inject): the source decides the policy.

Through a real daemon, a real Redis, smtplib and smtp-sink: a DSN the daemon writes to a
sender (source NOTICE) is queued although everything a SUBMISSION is checked for would
refuse it (its From domain is no sender domain under require_known_domain, its recipient
is suppressed, the user whose message it reports on is over its rate limit), and a
submission with those same properties is refused at MAIL, RCPT or the end of DATA.
"""

from __future__ import annotations

import smtplib
import ssl
import subprocess
import sys

from peers import BOUNCE_DOMAIN, Sink

from mailrelay.passwords import hash_password

PASSWORD = "s3cret-pw"
USERS = {"alice": hash_password(PASSWORD, log_n=10), "bob": hash_password(PASSWORD, log_n=10)}
HOSTNAME = "relay.test"   # the notices' From domain: not a sender domain


def hgetall(client, key):
    reply = client.command("HGETALL", key)
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def login(port: int, user: str) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
    s.starttls(context=ssl._create_unverified_context())  # the daemon's certificate is self-signed
    s.login(user, PASSWORD)
    return s


def test_a_notice_skips_the_checks_a_submission_gets(start_daemon, daemon_config, redis_server, unique_prefix,
                                                     dns, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key_file = tmp_path / "example.pem"
    key_file.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    hard = Sink(tmp_path / "hard", "-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown")
    try:
        config = daemon_config(redis_server, unique_prefix,
                               server={"hostname": HOSTNAME},
                               submission={"users": USERS, "rate_limit_per_user": "1/1h",
                                           "require_known_domain": True},
                               delivery={"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": hard.port},
                               bounces={"domain": BOUNCE_DOMAIN, "notify_sender": True,
                                        "listen": ["tcp:0:interface=127.0.0.1"]})
        config += f'\n[[domains]]\nname = "example.test"\nselector = "s1"\nkey_file = "{key_file}"\n'
        d = start_daemon(config)
        d.wait_for_lines([r"DKIM: signing mail from example\.test"])
        suppressed = subprocess.run(
            [sys.executable, "-m", "mailrelay.cli", "suppressions", "add", "app@example.test", "-c", str(d.config_path)],
            capture_output=True, text=True, timeout=60)
        assert suppressed.returncode == 0, suppressed.stdout + suppressed.stderr

        # alice's one message of the hour, From a sender domain, to an address whose server refuses it
        with login(d.ports["submission"], "alice") as s:
            s.mail("app@example.test")
            assert s.rcpt("gone@example.test")[0] == 250
            code, text = s.data(b"From: app@example.test\r\nSubject: hi\r\n\r\nx\r\n")
            assert code == 250, text
            # the user is over its rate limit now
            assert s.rset()[0] == 250
            code, text = s.mail("app@example.test")
            assert (code, text[:5]) == (451, b"4.7.0")

        # the notice: From MAILER-DAEMON@<hostname> (no sender domain), to the suppressed sender
        line = d.wait_for_line(r"sender non-delivery notification (\w+) queued to <app@example\.test>")
        dsn_id = line.group(1)
        record = hgetall(redis_server.client(), f"{unique_prefix}msg:{dsn_id}")
        assert record["sender"] == "" and record["rcpt:0"] == "app@example.test" and record["tag"] == "dsn"
        # delivery checks the suppression list again before sending: the notice is not sent
        d.wait_for_line(rf"{dsn_id}: to=<app@example\.test>.*status=suppressed")

        # a submission with the notice's properties is refused where submission checks them
        with login(d.ports["submission"], "bob") as s:
            s.mail("")
            code, text = s.rcpt("app@example.test")
            assert code == 550 and text.startswith(b"5.1.1") and b"suppressed since" in text
            assert s.rcpt("someone@example.test")[0] == 250
            code, text = s.data(f"From: Mail Delivery System <MAILER-DAEMON@{HOSTNAME}>\r\n"
                                f"Subject: Undelivered Mail Returned to Sender\r\n\r\nx\r\n".encode())
            assert code == 550 and text.startswith(b"5.7.1") and f"{HOSTNAME} is not a sender domain".encode() in text
    finally:
        hard.stop()
