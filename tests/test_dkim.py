"""
Sender domains and DKIM, end to end: `mailrelay domains ...` against the daemon's Redis, the
daemon signing at submission, delivery to smtp-sink, and every delivered message checked by
dkimpy against the key published in the local DNS server (tests/dnsserver.py).
"""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import dkim
import pytest

from dnsserver import query
from mailrelay.mail.dkim import ED25519, RSA, KeyDecryptError, decrypt_private_key, load_der_key
from peers import timeline

ROOT = Path(__file__).resolve().parent.parent
KEK = "test-key-encryption-key-0123456789"
QUEUED = re.compile(r"queued as ([0-9a-f]{20})")


# -- helpers ----------------------------------------------------------------------------------


def dkim_config(daemon_config, redis_server, prefix, dns, port, *, submission=None, dkim_section=None,
                **sections) -> str:
    return daemon_config(redis_server, prefix,
                         server={"hostname": "mx1.example.test"},
                         submission={"trusted_networks": ["127.0.0.0/8"], **(submission or {})},
                         delivery={"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": port,
                                   "lease_timeout": "5s"},
                         dkim={"key_encryption_key": KEK} if dkim_section is None else dkim_section,
                         **sections)


def domains(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailrelay.cli", "domains", *args, "-c", str(config_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def ok(config_path: Path, *args: str) -> str:
    result = domains(config_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout


def fails(config_path: Path, *args: str) -> str:
    """Exit status 1, one line on stderr, no traceback; returns that line."""
    result = domains(config_path, *args)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mailrelay: "), result.stderr
    return lines[0]


def dkim_records(output: str) -> dict[str, str]:
    """The DKIM TXT records (name -> value) printed by `domains add|show|rotate`."""
    found = {}
    for name, value in re.findall(r"name:  (\S+\._domainkey\.\S+)\n\s+type:  TXT\n\s+value: (v=DKIM1.*)", output):
        found[name] = value
    return found


def publish(dns, records: dict[str, str]) -> None:
    for name, value in records.items():
        dns.update(name, "TXT", [value])


def submit(port: int, from_address: str, recipients: list[str], subject: str,
           body: bytes = b"Hello,\r\n\r\nthis is   a test.\r\n", extra: bytes = b"") -> tuple[int, str]:
    message = (f"From: Shop <{from_address}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
               f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n").encode()
    message += extra + b"X-Mailrelay-Tag: receipts\r\n\r\n" + body
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo()
        s.mail(from_address)
        for r in recipients:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(message)
    return code, text.decode()


def send(port: int, from_address: str, recipients: list[str], subject: str, **kwargs) -> str:
    code, text = submit(port, from_address, recipients, subject, **kwargs)
    assert code == 250, text
    return QUEUED.search(text).group(1)


def wait_delivered(daemon, message_id: str, sink, subject: str, count: int = 1, recipients: int = 1,
                   timeout: float = 30) -> list[bytes]:
    """The sink's dumps of ``subject``, once the daemon has logged ``status=sent`` for each of
    the message's ``recipients`` (smtp-sink has written a dump before it answers the DATA)."""
    daemon.wait_for_matches(rf"{message_id}: to=<[^>]+>.*status=sent", recipients, timeout)
    found = [m for m in sink.messages() if f"\nSubject: {subject}\n".encode() in m]
    assert len(found) >= count, f"{subject!r}: {len(found)} of {count} messages at the sink"
    return found


#: Header lines smtp-sink puts on top of each dump.
SINK_LINE = re.compile(rb"^(X-Client-Addr|X-Client-Proto|X-Helo-Args|X-Mail-Args|X-Rcpt-Args): ")


def as_delivered(dump: bytes) -> bytes:
    """The message as the daemon sent it: smtp-sink's own header lines removed, CRLF line ends."""
    lines = dump.split(b"\n")
    while lines and SINK_LINE.match(lines[0]):
        lines.pop(0)
    assert lines[0].startswith(b"Received: from ") and b"smtp-sink" in b"\n".join(lines[:3])
    lines.pop(0)
    while lines and lines[0][:1] in (b" ", b"\t"):
        lines.pop(0)
    return b"\r\n".join(lines)


def logged(daemon, regex: str, timeout: float = 20) -> None:
    """Wait until the daemon has logged a line matching ``regex`` (before or after ready)."""
    daemon.wait_for_matches(regex, 1, timeout)


def dnsfunc(dns_server):
    """dkimpy's DNS hook, answered by the test's DNS server (over TCP: RSA keys are long)."""
    def lookup(name, timeout=5):
        text = name.decode() if isinstance(name, bytes) else name
        reply = query("127.0.0.1", dns_server.port, text.rstrip("."), "TXT", tcp=True, timeout=timeout)
        answers = [b"".join(rr.payload.data) for rr in reply.answers if rr.type == 16]
        return answers[0] if answers else None
    return lookup


def verify(message: bytes, dns_server, idx: int = 0) -> bool:
    """dkimpy's verdict on the ``idx``-th DKIM-Signature; an exception (bad body hash) is False."""
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc(dns_server))
    except Exception:  # dkim.ValidationError (body hash), nacl's errors for a key of the wrong kind
        return False


def signatures(message: bytes) -> list[dict[str, str]]:
    headers, _ = dkim.rfc822_parse(message)
    out = []
    for name, value in headers:
        if name.lower() == b"dkim-signature":
            out.append({k.decode(): re.sub(r"\s+", "", v.decode()) for k, v in
                        dkim.util.parse_tag_value(value).items()})
    return out


# -- signing end to end -----------------------------------------------------------------------


def test_delivered_mail_is_signed_and_verifies(start_daemon, daemon_config, redis_server, unique_prefix,
                                               dns, sink):
    d = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    out = ok(d.config_path, "add", "Shop.Test", "--selector", "s2026", "--ed25519")
    records = dkim_records(out)
    assert set(records) == {"s2026._domainkey.shop.test", "s2026-ed25519._domainkey.shop.test"}
    assert records["s2026._domainkey.shop.test"].startswith("v=DKIM1; k=rsa; p=MIIB")
    assert records["s2026-ed25519._domainkey.shop.test"].startswith("v=DKIM1; k=ed25519; p=")
    assert "_dmarc.shop.test" in out and "v=spf1 a:mx1.example.test ~all" in out
    publish(dns, records)
    # a second destination domain: the message goes out in two transactions
    dns.update("second.test", "MX", [(10, "mx1.example.test")])
    message_id = send(d.ports["submission"], "orders@shop.test",
                      ["a@example.test", "b@example.test", "c@second.test"], "Your order",
                      extra=b"Reply-To: help@shop.test\r\nCc: boss@example.test\r\n")
    logged(d, r"DKIM: signing mail from shop\.test \(rsa-sha256 s=s2026, ed25519-sha256 s=s2026-ed25519\)")
    dumps = wait_delivered(d, message_id, sink, "Your order", count=2, recipients=3)
    messages = [as_delivered(dump) for dump in dumps]
    # signed once, at submission: both transactions carry the very same signatures
    assert signatures(messages[0]) == signatures(messages[1])
    assert all(m.startswith(b"DKIM-Signature: ") for m in messages)
    message = messages[0]
    sigs = signatures(message)
    assert [(s["a"], s["s"], s["d"], s["c"]) for s in sigs] == [
        (RSA, "s2026", "shop.test", "relaxed/relaxed"), (ED25519, "s2026-ed25519", "shop.test", "relaxed/relaxed")]
    # the fields that matter (Date and Message-ID added by submission), From oversigned
    assert sigs[0]["h"].split(":") == ["from", "to", "cc", "subject", "date", "message-id", "mime-version",
                                      "content-type", "reply-to", "from"]
    assert "x-mailrelay" not in sigs[0]["h"] and "received" not in sigs[0]["h"]
    assert f"X-Mailrelay-ID: {message_id}".encode() in message   # kept, not signed
    assert b"X-Mailrelay-Tag" not in message
    assert verify(message, dns, 0) and verify(message, dns, 1)
    # the check can fail: altered after signing, each signature breaks
    altered_body = message.replace(b"this is   a test.", b"this is a tes7.")
    assert not verify(altered_body, dns, 0) and not verify(altered_body, dns, 1)
    altered_subject = message.replace(b"Subject: Your order", b"Subject: Your 0rder")
    assert not verify(altered_subject, dns, 0) and not verify(altered_subject, dns, 1)
    added_from = message.replace(b"Subject: Your order", b"From: ceo@shop.test\r\nSubject: Your order")
    assert not verify(added_from, dns, 0)
    # relaxed canonicalisation: whitespace changes in transit do not matter; X-Mailrelay-ID may change
    respaced = message.replace(b"Subject: Your order", b"Subject:   Your  order").replace(
        f"X-Mailrelay-ID: {message_id}".encode(), b"X-Mailrelay-ID: rewritten")
    assert verify(respaced, dns, 0) and verify(respaced, dns, 1)
    # and the wrong key in DNS fails it
    dns.update("s2026._domainkey.shop.test", "TXT", [records["s2026-ed25519._domainkey.shop.test"]])
    assert not verify(message, dns, 0)
    # a subdomain's From is signed by its parent sender domain (DMARC relaxed alignment)
    publish(dns, records)
    news_id = send(d.ports["submission"], "news@mail.shop.test", ["a@example.test"], "Newsletter")
    [news] = wait_delivered(d, news_id, sink, "Newsletter")
    news = as_delivered(news)
    assert [s["d"] for s in signatures(news)] == ["shop.test", "shop.test"]
    assert verify(news, dns, 0) and verify(news, dns, 1)
    assert [e["type"] for e in timeline(redis_server, unique_prefix, message_id)].count("unsigned") == 0


def test_rotation_keeps_old_mail_verifiable(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    old = dkim_records(ok(d.config_path, "add", "shop.test", "--selector", "old1"))
    publish(dns, old)
    before_id = send(d.ports["submission"], "orders@shop.test", ["a@example.test"], "Before rotation")
    [before] = wait_delivered(d, before_id, sink, "Before rotation")
    before = as_delivered(before)
    assert signatures(before)[0]["s"] == "old1" and verify(before, dns)

    out = ok(d.config_path, "rotate", "shop.test", "--selector", "new1", "--overlap", "10d")
    rotated = dkim_records(out)
    assert set(rotated) == {"new1._domainkey.shop.test", "old1._domainkey.shop.test"}
    keep = re.search(r"\[keep until (\d{4}-\d\d-\d\dT[\d:]+Z)\] previous DKIM key rsa-sha256, selector old1", out)
    assert keep, out
    assert 9.9 * 86400 < time.mktime(time.strptime(keep.group(1), "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime()) < 10.1 * 86400
    publish(dns, {"new1._domainkey.shop.test": rotated["new1._domainkey.shop.test"]})
    # Not synchronisation: the daemon looks at the sender domains' change counter at most once a
    # second (when it signs), so the next message picks up the rotation only once a second has
    # passed since its last look; the daemon is another process, its clock cannot be driven.
    time.sleep(1.2)
    after_id = send(d.ports["submission"], "orders@shop.test", ["a@example.test"], "After rotation")
    [after] = wait_delivered(d, after_id, sink, "After rotation")
    after = as_delivered(after)
    assert [s["s"] for s in signatures(after)] == ["new1"] and verify(after, dns)
    # during the overlap the old record is still published: mail signed before still verifies
    assert verify(before, dns)
    shown = ok(d.config_path, "show", "shop.test")
    assert re.search(r"rsa-sha256 \(2048 bits\) selector new1: active, signing", shown)
    assert f"selector old1: retired, keep its DNS record until {keep.group(1)}" in shown
    assert "old1(rsa)" not in ok(d.config_path, "list") and "new1(rsa)" in ok(d.config_path, "list")
    report = domains(d.config_path, "verify", "shop.test")
    assert report.returncode == 0, report.stdout + report.stderr
    assert re.search(r"ok\s+old1\._domainkey\.shop\.test TXT", report.stdout)
    # the old private key is gone from Redis; only its public key is kept
    stored = json.loads(redis_server.client().command("HGET", f"{unique_prefix}dkim:domains", "shop.test"))
    old_key = next(k for k in stored["keys"] if k["selector"] == "old1")
    assert old_key["state"] == "retiring" and "private" not in old_key
    # once the old record is withdrawn, the old mail no longer verifies (what the overlap is for)
    dns.update("old1._domainkey.shop.test", "TXT", None)
    assert not verify(before, dns) and verify(after, dns)
    report = domains(d.config_path, "verify", "shop.test")
    assert report.returncode == 1 and re.search(r"MISSING\s+old1\._domainkey", report.stdout)


# -- unknown From domains ------------------------------------------------------------------------


def test_unknown_domain_refused_when_required(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                 submission={"require_known_domain": True}))
    code, text = submit(d.ports["submission"], "app@other.example", ["a@example.test"], "Refused")
    assert code == 550 and text.startswith("5.7.1 ")
    assert "other.example is not a sender domain" in text and "mailrelay domains add other.example" in text
    ok(d.config_path, "add", "shop.test")
    # a declared domain is accepted at once (the daemon looks for changes on an unknown domain)
    accepted_id = send(d.ports["submission"], "app@shop.test", ["a@example.test"], "Accepted")
    [accepted] = wait_delivered(d, accepted_id, sink, "Accepted")
    assert b"DKIM-Signature: v=1; a=rsa-sha256" in accepted
    code, text = submit(d.ports["submission"], "app@shop.test.evil.example", ["a@example.test"], "Lookalike")
    assert code == 550 and "shop.test.evil.example is not a sender domain" in text
    # nothing of the refused messages was queued
    client = redis_server.client()
    assert len(client.command("ZRANGE", f"{unique_prefix}idx:time", 0, -1)) == 1


def test_unknown_domain_sent_unsigned_with_an_event(start_daemon, daemon_config, redis_server, unique_prefix,
                                                    dns, sink):
    d = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    logged(d, r"DKIM: no sender domains declared: mail is sent without a DKIM signature")
    # no sender domain at all: DKIM is not set up, nothing to record per message
    first = send(d.ports["submission"], "app@other.example", ["a@example.test"], "No domains yet")
    wait_delivered(d, first, sink, "No domains yet")
    assert "unsigned" not in [e["type"] for e in timeline(redis_server, unique_prefix, first)]
    ok(d.config_path, "add", "shop.test")
    message_id = send(d.ports["submission"], "app@other.example", ["a@example.test", "b@example.test"],
                      "Unsigned")
    [dump] = wait_delivered(d, message_id, sink, "Unsigned", recipients=2)
    assert b"DKIM-Signature" not in dump
    events = timeline(redis_server, unique_prefix, message_id)
    unsigned = [e for e in events if e["type"] == "unsigned"]
    assert [(e["recipient"], e["rcpt"]) for e in unsigned] == [("a@example.test", 0), ("b@example.test", 1)]
    assert "other.example is not a sender domain" in unsigned[0]["detail"]
    assert "mailrelay domains add other.example" in unsigned[0]["detail"]
    assert [e["type"] for e in events][:3] == ["queued", "queued", "unsigned"]
    stream = redis_server.client().command("XRANGE", f"{unique_prefix}events", "-", "+")
    assert [f for _, f in stream if f[1] == b"unsigned" and f[3] == message_id.encode()]


# -- keys at rest, in the configuration ----------------------------------------------------------


def test_key_material_is_encrypted_in_redis(start_daemon, daemon_config, redis_server, unique_prefix, dns,
                                            sink, tmp_path):
    d = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    ok(d.config_path, "add", "shop.test", "--ed25519")
    client = redis_server.client()
    everything = b""
    for key in client.command("KEYS", f"{unique_prefix}*"):
        kind = client.command("TYPE", key)
        if kind in ("hash", b"hash"):
            everything += b"".join(client.command("HGETALL", key))
        elif kind in ("string", b"string"):
            everything += client.command("GET", key)
    raw = client.command("HGET", f"{unique_prefix}dkim:domains", "shop.test")
    assert b"PRIVATE KEY" not in everything and b"PRIVATE KEY" not in raw
    record = json.loads(raw)
    for key in record["keys"]:
        sealed = key["private"]
        assert sealed["cipher"] == "AES-256-GCM" and sealed["kdf"] == "scrypt"
        with pytest.raises(KeyDecryptError):
            decrypt_private_key("another-secret-of-enough-length", sealed, "shop.test", key["selector"])
        with pytest.raises(KeyDecryptError):   # bound to its domain and selector
            decrypt_private_key(KEK, sealed, "evil.test", key["selector"])
        der = decrypt_private_key(KEK, sealed, "shop.test", key["selector"])
        assert load_der_key(der).public == key["public"]
        assert der not in everything
    # a daemon with a different key encryption key cannot use the keys: 451, nothing sent unsigned
    d.stop()
    wrong = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                     dkim_section={"key_encryption_key": "not-the-right-secret-0000"}),
                         tmp_path / "wrong")
    logged(wrong, r"DKIM: cannot sign mail from shop\.test: cannot decrypt the key of shop\.test")
    code, text = submit(wrong.ports["submission"], "app@shop.test", ["a@example.test"], "Wrong key")
    assert code == 451 and text.startswith("4.3.5") and "shop.test" in text
    # without any key encryption key, keys cannot be stored at all
    wrong.stop()
    nokek = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                     dkim_section={}), tmp_path / "nokek")
    line = fails(nokek.config_path, "add", "other.test")
    assert "cannot store private keys in Redis: set [dkim] key_encryption_key" in line


def test_domain_declared_in_configuration(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink,
                                          tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ed_key = ed25519.Ed25519PrivateKey.generate()
    paths = {}
    for name, key, fmt in (("rsa", rsa_key, serialization.PrivateFormat.TraditionalOpenSSL),
                           ("ed", ed_key, serialization.PrivateFormat.PKCS8)):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()))
    config = dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port, dkim_section={})
    config += (f'\n[[domains]]\nname = "brand.test"\nselector = "k1"\nkey_file = "{paths["rsa"]}"\n'
               f'\n[[domains]]\nname = "brand.test"\nselector = "e1"\nkey_file = "{paths["ed"]}"\n')
    d = start_daemon(config)
    logged(d, r"DKIM: signing mail from brand\.test \(rsa-sha256 s=k1, ed25519-sha256 s=e1\)")
    shown = ok(d.config_path, "show", "brand.test")
    assert "source:   configuration ([[domains]])" in shown
    publish(dns, dkim_records(shown))
    assert re.search(r"brand\.test\s+config\s+k1\(rsa\),e1\(ed25519\)", ok(d.config_path, "list"))
    assert "declared in the configuration" in fails(d.config_path, "remove", "brand.test")
    assert "declared in the configuration" in fails(d.config_path, "rotate", "brand.test")
    config_id = send(d.ports["submission"], "hello@brand.test", ["a@example.test"], "From config")
    [dump] = wait_delivered(d, config_id, sink, "From config")
    message = as_delivered(dump)
    assert sorted(s["s"] for s in signatures(message)) == ["e1", "k1"]
    assert verify(message, dns, 0) and verify(message, dns, 1)


# -- the command ------------------------------------------------------------------------------------


def test_domains_commands(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                 bounces={"domain": "bounces.example.test", "listen": ["tcp:0:interface=127.0.0.1"]}))
    path = d.config_path
    assert "No sender domains" in ok(path, "list")
    out = ok(path, "add", "shop.test", "--selector", "sel1")
    assert "Added sender domain shop.test: rsa-sha256 (2048 bits), selector sel1." in out
    assert re.search(r"name:  bounces\.example\.test\n\s+type:  MX\n\s+value: 10 mx1\.example\.test\.", out)
    # the zone-file form splits the long key into strings of at most 255 octets
    zone = re.search(r'zone:  sel1\._domainkey\.shop\.test\. IN TXT \( (.*) \)', out).group(1)
    parts = re.findall(r'"([^"]*)"', zone)
    assert len(parts) == 2 and all(len(p) <= 255 for p in parts)
    assert "".join(parts) == dkim_records(out)["sel1._domainkey.shop.test"]
    assert "already a sender domain" in fails(path, "add", "shop.test")
    assert "is not a domain name" in fails(path, "add", "not a domain")
    assert "is not a sender domain" in fails(path, "show", "nope.test")
    assert "is not a sender domain" in fails(path, "remove", "nope.test")
    assert "is not a DKIM selector" in fails(path, "add", "x.test", "--selector", "bad_selector!")
    listing = ok(path, "list")
    assert re.search(r"shop\.test\s+redis\s+sel1\(rsa\)\s+-\s+unchecked", listing)

    # verify: nothing published yet
    report = domains(path, "verify", "shop.test")
    assert report.returncode == 1 and report.stderr == ""
    assert re.search(r"MISSING\s+sel1\._domainkey\.shop\.test TXT", report.stdout)
    assert re.search(r"publish: v=DKIM1; k=rsa; p=MIIB", report.stdout)
    assert re.search(r"WRONG\s+bounces\.example\.test MX|MISSING\s+bounces\.example\.test MX", report.stdout)
    assert re.search(r"missing\s+_dmarc\.shop\.test TXT \(DMARC; suggested\): .*does not exist", report.stdout)
    assert "0 of 2 required records are right" in report.stdout
    # a wrong key published is told apart from a missing one
    dns.update("sel1._domainkey.shop.test", "TXT", ["v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwrong"])
    report = domains(path, "verify", "shop.test")
    assert re.search(r"WRONG\s+sel1\._domainkey\.shop\.test TXT .*a different key is published", report.stdout)
    # everything published
    publish(dns, dkim_records(out))
    dns.update("bounces.example.test", "MX", [(10, "mx1.example.test")])
    dns.update("shop.test", "TXT", ["v=spf1 a:mx1.example.test ~all"])
    dns.update("_dmarc.shop.test", "TXT", ["v=DMARC1; p=none"])
    report = domains(path, "verify")
    assert report.returncode == 0, report.stdout
    assert "2 of 2 required records are right: mail from this domain passes DKIM" in report.stdout
    assert re.search(r"ok\s+_dmarc\.shop\.test TXT .*policy p=none", report.stdout)
    assert re.search(rf"via 127\.0\.0\.1:{dns.port}", report.stdout)
    listing = ok(path, "list")
    assert re.search(r"shop\.test\s+redis\s+sel1\(rsa\)\s+-\s+ok \d{4}-", listing)
    # the state for the status page and the API, without private key material
    states = domain_states_of(path)
    [state] = states
    assert state["name"] == "shop.test" and state["source"] == "redis"
    assert [k["selector"] for k in state["keys"]] == ["sel1"] and "private" not in json.dumps(states)
    assert state["dns_check"]["ok"] is True
    assert {r["kind"] for r in state["records"]} == {"dkim", "bounce-mx", "bounce-spf", "spf", "dmarc"}

    out = ok(path, "rotate", "shop.test")
    new_selector = re.search(r"new key\(s\) (\S+) \(rsa-sha256\)", out).group(1)
    assert new_selector.startswith("mr") and new_selector != "sel1"
    out = ok(path, "remove", "shop.test")
    assert "Removed sender domain shop.test" in out and f"{new_selector}._domainkey.shop.test TXT" in out
    assert "No sender domains" in ok(path, "list")
    assert redis_server.client().command("HGETALL", f"{unique_prefix}dkim:checks") == []


def domain_states_of(config_path: Path):
    """mailrelay.services.domains.domain_states against the daemon's Redis (in a child process: it runs a reactor)."""
    code = (
        "import json, sys\n"
        "from twisted.internet import task, defer\n"
        "from mailrelay.config import load_config\n"
        "from mailrelay.store import Storage, connect_redis\n"
        "from mailrelay.services.domains import domain_states\n"
        "config = load_config(sys.argv[1])\n"
        "async def main(reactor):\n"
        "    redis = connect_redis(config, None)\n"
        "    try:\n"
        "        print(json.dumps(await domain_states(config, Storage(config, redis))))\n"
        "    finally:\n"
        "        await redis.disconnect()\n"
        "task.react(lambda r: defer.ensureDeferred(main(r)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(config_path)], capture_output=True, text=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# -- configuration ------------------------------------------------------------------------------------


#: A 768-bit RSA key (openssl genrsa 768): too short for DKIM (RFC 8301).
SMALL_RSA_KEY = """\
-----BEGIN PRIVATE KEY-----
MIIB5QIBADANBgkqhkiG9w0BAQEFAASCAc8wggHLAgEAAmEAq9lPI6WbpFA3fSRu
UI+yKdXtH65hNRlGbdE2h/FJxt8i6FgPyY6ohRs7t9lUCc2dC/FEpvtwwF2Vev2X
x1DTQ4/UFsY3jMl4ucnixRHNv29sty2A9kdhPKlCeDuQ3FilAgMBAAECYAFCNjIs
pFcvvzhLbANrCgMEbhgtTsj0xm9HeP7F5aRvPfI1sufnA5T1/hn6nYL03o6E5wFU
GmWttzopjvaiyKQjtRCwtcXZRrhV88D7EFbsn88CBzExC8ziPoPYu7oagQIxANhs
Ik5GqEpx44tHa7cYWX8S+aU2zZFTTRkAON0GwIrG4acC2OkjNPOHFEgDoblpFwIx
AMtGdFtQqaTLNkSgPQbBZQIrJOXyXfNvd5F+8wJGFK2+jWSFN2adPnTX1ZtJOmxp
owIxALsuOzWMMv3AJtdNfEItkyou1TAph/4LGAFpicTQlDLy9DOoaMarJp8B0269
hWCBHQIweN0IXC8m3yQwvTclcfnVjCeJBexI7nCNgIYiCW0P6IqPWYBYA3xlYWXf
zTgKM+HPAjEAlELRxy6H978XZz5LXvuGJ5HnPg/dojT/P2qmEE0Pt32+a+WfwZxm
O3B+MjM+PS+U
-----END PRIVATE KEY-----
"""


def test_configuration_of_domains(tmp_path):
    from mailrelay.config import ConfigError, parse_config, render_config

    with pytest.raises(ConfigError, match=r"domains: expected \[\[domains\]\] tables .*\[dkim\] key_encryption_key"):
        parse_config({"domains": {"key_encryption_key": "x" * 20}})
    with pytest.raises(ConfigError, match=r"dkim.key_encryption_key: must be at least 16 characters"):
        parse_config({"dkim": {"key_encryption_key": "short"}})
    with pytest.raises(ConfigError, match=r"domains\[0\]\.key_file: required"):
        parse_config({"domains": [{"name": "a.test", "selector": "s"}]})
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"domains\[0\]\.key_file: .*is not an unencrypted PEM private key"):
        parse_config({"domains": [{"name": "a.test", "selector": "s", "key_file": str(bad)}]})
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = tmp_path / "small.pem"   # cryptography no longer generates keys this short
    small.write_text(SMALL_RSA_KEY)
    with pytest.raises(ConfigError, match=r"768 bits is too short \(RFC 8301"):
        parse_config({"domains": [{"name": "a.test", "selector": "s", "key_file": str(small)}]})
    good = tmp_path / "good.pem"
    good.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(ConfigError, match=r"a\.test already has a rsa-sha256 key"):
        parse_config({"domains": [{"name": "a.test", "selector": "s", "key_file": str(good)},
                                  {"name": "a.test", "selector": "t", "key_file": str(good)}]})
    config = parse_config({"dkim": {"key_encryption_key": "k" * 20},
                           "submission": {"require_known_domain": True},
                           "domains": [{"name": "A.Test.", "selector": "S1", "key_file": str(good)}]})
    assert config.domains[0].name == "a.test" and config.domains[0].selector == "s1"
    text = render_config(config)
    assert 'key_encryption_key = "********"' in text and "k" * 20 not in text
    assert f'[[domains]]\nname = "a.test"\nselector = "s1"\nkey_file = "{good}"' in text
    assert "require_known_domain = true" in text
