"""
Bounces through the real daemon: VERP return paths, in-band refusals, DSNs and ARF reports
received by the bounce listener, suppression at submission and in the queue.
"""

from __future__ import annotations

import json
import re
import smtplib

from peers import BOUNCE_DOMAIN, Sink, arf, deliver_to_bounce_listener, dsn, received_headers, send, timeline

VERP_RE = re.compile(rb"X-Mail-Args: <(b\+[a-z2-7]+@" + re.escape(BOUNCE_DOMAIN.encode()) + rb")>")


def bounce_config(daemon_config, redis_server, prefix, dns, port, **sections):
    sections.setdefault("submission", {"trusted_networks": ["127.0.0.0/8"]})
    return daemon_config(redis_server, prefix,
                         delivery={"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": port},
                         bounces={"domain": BOUNCE_DOMAIN, "listen": ["tcp:0:interface=127.0.0.1"]},
                         **sections)


def hgetall(client, key):
    reply = client.command("HGETALL", key)
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def bounce_records(client, prefix):
    ids = [b.decode() for b in client.command("ZRANGE", f"{prefix}bounces", 0, -1)]
    return [hgetall(client, f"{prefix}bounce:{i}") for i in ids]


def test_in_band_hard_bounce_suppresses_the_address(start_daemon, daemon_config, redis_server, unique_prefix,
                                                    dns, tmp_path):
    hard = Sink(tmp_path / "hard", "-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown")
    try:
        d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, hard.port))
        message_id = send(d.ports["submission"], ["gone@example.test"])
        d.wait_for_line(rf"bounce \w+: message {message_id} to <gone@example\.test>: HardBounce \(5\.1\.1\), address suppressed")
        client = redis_server.client()
        [record] = bounce_records(client, unique_prefix)
        assert record["type"] == "HardBounce" and record["type_code"] == "1"
        assert record["message_id"] == message_id and record["inactive"] == "1"
        assert "User unknown" in record["details"]
        # the next submission to that address is refused, saying why
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
            s.ehlo()
            s.mail("app@example.com")
            code, text = s.rcpt("Gone@Example.Test")
        assert code == 550 and text.startswith(b"5.1.1") and b"suppressed since" in text and b"HardBounce" in text
    finally:
        hard.stop()


def test_dsn_to_verp_address_is_tied_to_message_and_recipient(start_daemon, daemon_config, redis_server,
                                                             unique_prefix, dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = send(d.ports["submission"], ["first@example.test", "second@example.test"])
    for _ in range(2):  # either order
        d.wait_for_line(rf"{message_id}: to=<(first|second)@example\.test>.*status=sent")
    return_paths = {}
    for dump in sink.messages():
        verp = VERP_RE.search(dump).group(1).decode()
        rcpt = re.search(rb"X-Rcpt-Args: <([^>]+)>", dump).group(1).decode()
        return_paths[rcpt] = verp
        assert f"X-Mailrelay-ID: {message_id}".encode() in dump
    assert set(return_paths) == {"first@example.test", "second@example.test"}
    assert return_paths["first@example.test"] != return_paths["second@example.test"]
    assert all(len(v.split("@")[0]) <= 64 for v in return_paths.values())
    # the second recipient's server bounces later, with a DSN to its return path
    verp = return_paths["second@example.test"]
    code, text = deliver_to_bounce_listener(d.ports["bounces"], verp.upper(),  # case changes survive
                                            dsn(verp, "second@example.test", message_id))
    assert code == 250, text
    client = redis_server.client()
    [record] = bounce_records(client, unique_prefix)
    assert (record["type"], record["recipient"], record["message_id"]) == ("HardBounce", "second@example.test", message_id)
    assert record["status"] == "5.1.1" and record["inactive"] == "1"
    events = timeline(redis_server, unique_prefix, message_id)
    assert events[-1]["type"] == "bounced" and events[-1]["recipient"] == "second@example.test"
    state = hgetall(client, f"{unique_prefix}msg:{message_id}")
    assert state["state:1"] == "bounced" and state["state:0"] == "delivered"
    raw = client.command("GET", f"{unique_prefix}bounce:raw:{record['id']}")
    assert b"Undelivered Mail Returned to Sender" in raw


def test_forged_and_foreign_addresses_refused(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = send(d.ports["submission"], ["a@example.test"])
    d.wait_for_line(rf"{message_id}: to=<a@example\.test>.*status=sent")
    verp = VERP_RE.search(sink.messages()[0]).group(1).decode()
    local, domain = verp.split("@")
    tampered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    port = d.ports["bounces"]
    for address in (tampered, f"b+{'a' * 32}@{BOUNCE_DOMAIN}", f"someone@{BOUNCE_DOMAIN}",
                    verp.split("@")[0] + "@example.org", "victim@example.org"):
        code, text = deliver_to_bounce_listener(port, address, b"Subject: x\r\n\r\nx\r\n")
        assert (code, text[:5]) == (550, b"5.1.1"), address
    # never a relay, and no AUTH offered
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        assert "AUTH" not in s.ehlo()[1].decode()
    assert bounce_records(redis_server.client(), unique_prefix) == []


def test_arf_complaint_and_unmatched_bounce(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = send(d.ports["submission"], ["reader@example.test"])
    d.wait_for_line(rf"{message_id}: to=<reader@example\.test>.*status=sent")
    # the complaint returns the reader's copy (its recipient token proves who it is about)
    code, _ = deliver_to_bounce_listener(d.ports["bounces"], f"fbl@{BOUNCE_DOMAIN}",
                                         arf("reader@example.test", message_id,
                                             original=received_headers(sink, "reader@example.test")))
    assert code == 250
    client = redis_server.client()
    [record] = bounce_records(client, unique_prefix)
    assert (record["type"], record["type_code"], record["recipient"]) == ("SpamComplaint", "100001", "reader@example.test")
    assert record["message_id"] == message_id and record["inactive"] == "1" and record["proof"] == "token"
    assert timeline(redis_server, unique_prefix, message_id)[-1]["type"] == "complained"
    # a bounce that names no job of ours is kept, as unmatched
    code, _ = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                         dsn("x@y", "stranger@example.org", "ffffffffffffffffffff"))
    assert code == 250
    unmatched = [b.decode() for b in client.command("ZRANGE", f"{unique_prefix}bounces:unmatched", 0, -1)]
    assert len(unmatched) == 1
    assert hgetall(client, f"{unique_prefix}bounce:{unmatched[0]}")["recipient"] == "stranger@example.org"


def test_queued_jobs_for_a_suppressed_address_end_suppressed(start_daemon, daemon_config, redis_server,
                                                            unique_prefix, dns, sink, tmp_path):
    # accept while delivery is off, suppress the address, then let a delivering daemon run
    config = bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port)
    first = start_daemon(config.replace("[delivery]\n", "[delivery]\nenabled = false\n"), tmp_path / "a")
    message_id = send(first.ports["submission"], ["late@example.test", "ok@example.test"])
    first.stop()
    redis_server.client().command("HSET", f"{unique_prefix}suppressed", "late@example.test",
                                  json.dumps({"since": "2026-11-28T09:00:00Z", "type": "ManuallyDeactivated"}))
    second = start_daemon(config, tmp_path / "b")
    # the daemon may deliver before it logs "ready" (which start_daemon waits for): look at every line
    second.wait_for_lines([rf"{message_id}: to=<late@example\.test>, relay=none.*status=suppressed",
                           rf"{message_id}: to=<ok@example\.test>.*status=sent"])
    events = timeline(redis_server, unique_prefix, message_id)
    assert [e["type"] for e in events if e["recipient"] == "late@example.test"] == ["queued", "suppressed"]
    assert len(sink.messages()) == 1


def test_suppressions_cli(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    import subprocess
    import sys

    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mailrelay.cli", "suppressions", *args, "-c", str(d.config_path)],
                              capture_output=True, text=True, timeout=60)

    added = cli("add", "Someone@Example.test", "--reason", "asked us to stop")
    assert added.returncode == 0 and "someone@example.test suppressed" in added.stdout
    assert cli("add", "someone@example.test").returncode == 1  # already there
    assert cli("add", "not an address").returncode == 1
    listed = cli("list")
    assert "someone@example.test" in listed.stdout and "ManuallyDeactivated" in listed.stdout
    assert "asked us to stop" in listed.stdout
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.ehlo()
        s.mail("app@example.com")
        code, text = s.rcpt("someone@example.test")
        assert code == 550 and b"ManuallyDeactivated" in text
        removed = cli("remove", "someone@example.test")
        assert removed.returncode == 0 and "reactivated" in removed.stdout
        assert s.rcpt("someone@example.test")[0] == 250
    assert cli("remove", "someone@example.test").returncode == 1


def test_notify_sender_queues_a_dsn(start_daemon, daemon_config, redis_server, unique_prefix, dns, tmp_path):
    import email
    import zlib

    hard = Sink(tmp_path / "hard", "-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected: User unknown")
    try:
        config = bounce_config(daemon_config, redis_server, unique_prefix, dns, hard.port)
        d = start_daemon(config.replace('[bounces]\n', '[bounces]\nnotify_sender = true\n'))
        with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
            s.ehlo()
            code, text = s.sendmail("app@example.test", ["gone@example.test"], b"Subject: hi\r\n\r\nx\r\n") or (250, b"")
        line = d.wait_for_line(r"sender non-delivery notification (\w+) queued to <app@example\.test>")
        dsn_id = line.group(1)
        client = redis_server.client()
        record = hgetall(client, f"{unique_prefix}msg:{dsn_id}")
        assert record["sender"] == "" and record["rcpt:0"] == "app@example.test"
        dsn_message = email.message_from_bytes(zlib.decompress(client.command("GET", f"{unique_prefix}body:{dsn_id}")))
        assert dsn_message.get_content_type() == "multipart/report"
        assert dsn_message.get_param("report-type") == "delivery-status"
        status = dsn_message.get_payload()[1]
        assert status.get_content_type() == "message/delivery-status"
        text = status.as_string()
        assert "Final-Recipient: rfc822; gone@example.test" in text and "Status: 5.1.1" in text
        # the DSN itself bounces too (the sink refuses everything): no DSN about a DSN
        d.wait_for_line(rf"{dsn_id}: to=<app@example\.test>.*status=bounced")
        assert not d.find_lines(rf"{dsn_id}: sender non-delivery notification")
    finally:
        hard.stop()


def test_rcpt_reuses_a_not_suppressed_answer_until_the_list_changes(start_daemon, daemon_config, redis_server,
                                                                   unique_prefix, dns, sink):
    """
    Submission's NotSuppressedCache: a recipient Redis just said is not suppressed is accepted
    at RCPT without asking again while the suppression list's change counter stays the same
    (a write that bypasses mailrelay, as here, is not noticed), and is asked about again as soon
    as the counter moves (here: `mailrelay suppressions add` of another address, in another
    process). Delivery checks the list again: the cached acceptance is not sent.
    """
    import subprocess
    import sys
    import time

    config = bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port)
    d = start_daemon(config.replace("[delivery]\n", "[delivery]\nenabled = false\n"))
    client = redis_server.client()
    entry = json.dumps({"since": "2026-11-28T09:00:00Z", "type": "ManuallyDeactivated"})
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.ehlo()
        s.sendmail("app@example.com", ["cached@example.test"], b"Subject: one\r\n\r\nbody\r\n")
        # behind mailrelay's back: the change counter does not move
        client.command("HSET", f"{unique_prefix}suppressed", "cached@example.test", entry)
        s.mail("app@example.com")
        assert s.rcpt("cached@example.test")[0] == 250  # the answer of a moment ago
        s.rset()
        added = subprocess.run([sys.executable, "-m", "mailrelay.cli", "suppressions", "add", "other@example.test",
                                "-c", str(d.config_path)], capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        # the counter moved: within NotSuppressedCache.VERSION_FRESHNESS the daemon asks Redis again
        deadline = time.monotonic() + 10
        while True:
            s.mail("app@example.com")
            code, text = s.rcpt("cached@example.test")
            s.rset()
            if code == 550 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # back-off between polls (the loop waits for the 550, bounded)
        assert code == 550 and b"ManuallyDeactivated" in text


# -- forged reports (issue 15): only a report that proves which recipient it is about counts --------
# The listener answers 250 once the bounce is stored: what it changed can be read right after.


def copies(sink):
    """{recipient: (its VERP return path, the headers of its copy)} of everything the sink got."""
    found = {}
    for dump in sink.messages():
        rcpt = re.search(rb"X-Rcpt-Args: <([^>]+)>", dump).group(1).decode()
        found[rcpt] = (VERP_RE.search(dump).group(1).decode(), received_headers(sink, rcpt))
    return found


def suppressed(client, prefix):
    reply = client.command("HGETALL", f"{prefix}suppressed")
    return {reply[i].decode(): json.loads(reply[i + 1]) for i in range(0, len(reply), 2)}


def event_types(client, prefix):
    """The types in the event stream (what webhooks are sent from)."""
    return [dict(zip(f[::2], f[1::2]))[b"type"].decode()
            for _, f in client.command("XRANGE", f"{prefix}events", "-", "+")]


def unmatched_records(client, prefix):
    ids = [b.decode() for b in client.command("ZRANGE", f"{prefix}bounces:unmatched", 0, -1)]
    return [hgetall(client, f"{prefix}bounce:{i}") for i in ids]


def rcpt_code(port, address):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        s.mail("app@example.com")
        return s.rcpt(address)[0]


def sent_to(d, sink, recipients, **kwargs):
    """Submit one message to ``recipients``, wait until each copy is at the sink; its id."""
    message_id = send(d.ports["submission"], recipients, **kwargs)
    d.wait_for_matches(rf"{message_id}: to=<[^>]+>.*status=sent", len(recipients))
    return message_id


def test_forged_reports_to_role_addresses_suppress_nobody(start_daemon, daemon_config, redis_server,
                                                          unique_prefix, dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    client = redis_server.client()
    # a DSN to postmaster@ and an ARF to fbl@, naming any address: written by anyone
    for mailbox, report in (("postmaster", dsn(f"postmaster@{BOUNCE_DOMAIN}", "victim@example.org",
                                               "0123456789abcdef0123")),
                            ("fbl", arf("other-victim@example.org", "0123456789abcdef0123"))):
        code, text = deliver_to_bounce_listener(d.ports["bounces"], f"{mailbox}@{BOUNCE_DOMAIN}", report)
        assert code == 250, text   # kept for a human to look at ...
    assert suppressed(client, unique_prefix) == {}   # ... and nobody suppressed
    records = unmatched_records(client, unique_prefix)
    assert sorted(r["type"] for r in records) == ["HardBounce", "SpamComplaint"]
    assert all(r["message_id"] == "" and r["proof"] == "" and r["inactive"] == "0" for r in records)
    assert rcpt_code(d.ports["submission"], "victim@example.org") == 250
    assert rcpt_code(d.ports["submission"], "other-victim@example.org") == 250


def test_forged_dsn_with_a_real_message_id_changes_nothing(start_daemon, daemon_config, redis_server,
                                                           unique_prefix, dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = sent_to(d, sink, ["reader@example.test"])
    client = redis_server.client()
    before = timeline(redis_server, unique_prefix, message_id)
    # every recipient sees X-Mailrelay-ID: a report naming it proves nothing
    code, text = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                            dsn(f"postmaster@{BOUNCE_DOMAIN}", "reader@example.test", message_id))
    assert code == 250, text
    assert suppressed(client, unique_prefix) == {}
    assert hgetall(client, f"{unique_prefix}msg:{message_id}")["state:0"] == "delivered"
    assert timeline(redis_server, unique_prefix, message_id) == before
    assert "bounced" not in event_types(client, unique_prefix)   # no webhook
    [record] = unmatched_records(client, unique_prefix)
    assert record["message_id"] == "" and record["claimed_message_id"] == message_id


def test_reports_returning_the_recipients_copy_match(start_daemon, daemon_config, redis_server, unique_prefix,
                                                     dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = sent_to(d, sink, ["gone@example.test", "reader@example.test", "quoted@example.test"])
    client = redis_server.client()
    got = copies(sink)
    # a DSN to postmaster@ returning only the headers of gone@'s copy
    code, text = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                            dsn(f"postmaster@{BOUNCE_DOMAIN}", "gone@example.test", message_id,
                                                original=got["gone@example.test"][1]))
    assert code == 250, text
    # an ARF to fbl@ with the recipient redacted, as feedback loops do, returning reader@'s copy
    code, text = deliver_to_bounce_listener(d.ports["bounces"], f"fbl@{BOUNCE_DOMAIN}",
                                            arf("redacted@example.net", message_id,
                                                original=got["reader@example.test"][1]))
    assert code == 250, text
    # a plain-text bounce quoting quoted@'s headers ("> " in front of each line), as some servers do
    quoted = "".join(f"> {line}\r\n" for line in got["quoted@example.test"][1].splitlines())
    plain = (f"From: MAILER-DAEMON@mx.example.test\r\nTo: postmaster@{BOUNCE_DOMAIN}\r\n"
             "Subject: failure notice\r\n\r\n"
             "Sorry, I couldn't deliver your message to <quoted@example.test>.\r\n"
             "550 5.1.1 user unknown\r\n\r\n--- Below this line is a copy of the message.\r\n\r\n"
             + quoted).encode()
    code, text = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}", plain)
    assert code == 250, text
    records = bounce_records(client, unique_prefix)
    assert {(r["recipient"], r["type"], r["message_id"], r["proof"]) for r in records} == {
        ("gone@example.test", "HardBounce", message_id, "token"),
        ("reader@example.test", "SpamComplaint", message_id, "token"),
        ("quoted@example.test", "HardBounce", message_id, "token")}
    entries = suppressed(client, unique_prefix)
    assert set(entries) == {"gone@example.test", "reader@example.test", "quoted@example.test"}
    assert all(e["proof"] == "token" and e["message_id"] == message_id for e in entries.values())
    assert "redacted@example.net" not in entries
    state = hgetall(client, f"{unique_prefix}msg:{message_id}")
    assert [state[f"state:{i}"] for i in range(3)] == ["bounced", "delivered", "bounced"]
    assert sorted(event_types(client, unique_prefix)).count("bounced") == 2
    assert "complained" in event_types(client, unique_prefix)


def test_a_co_recipients_copy_cannot_suppress_another(start_daemon, daemon_config, redis_server, unique_prefix,
                                                      dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = sent_to(d, sink, ["victim@example.test", "attacker@example.test"])
    client = redis_server.client()
    got = copies(sink)
    # the attacker returns its own copy's headers (they name the victim on To/Cc and the message id)
    code, text = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                            dsn(f"postmaster@{BOUNCE_DOMAIN}", "victim@example.test", message_id,
                                                original=got["attacker@example.test"][1]))
    assert code == 250, text
    assert "victim@example.test" not in suppressed(client, unique_prefix)
    state = hgetall(client, f"{unique_prefix}msg:{message_id}")
    victim = 0 if state["rcpt:0"] == "victim@example.test" else 1
    assert state[f"state:{victim}"] == "delivered"
    assert rcpt_code(d.ports["submission"], "victim@example.test") == 250
    # the report is bound to whose copy it returned
    [record] = bounce_records(client, unique_prefix)
    assert (record["recipient"], record["proof"]) == ("attacker@example.test", "token")


def test_a_verp_bounce_naming_another_recipient_binds_to_the_token(start_daemon, daemon_config, redis_server,
                                                                   unique_prefix, dns, sink):
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = sent_to(d, sink, ["victim@example.test", "attacker@example.test"])
    client = redis_server.client()
    attacker_verp = copies(sink)["attacker@example.test"][0]
    # sent to the attacker's own return path, naming the victim and the message id
    code, text = deliver_to_bounce_listener(d.ports["bounces"], attacker_verp,
                                            dsn(attacker_verp, "victim@example.test", message_id))
    assert code == 250, text
    assert set(suppressed(client, unique_prefix)) == {"attacker@example.test"}
    state = hgetall(client, f"{unique_prefix}msg:{message_id}")
    victim = 0 if state["rcpt:0"] == "victim@example.test" else 1
    assert state[f"state:{victim}"] == "delivered"
    [record] = bounce_records(client, unique_prefix)
    assert (record["recipient"], record["proof"]) == ("attacker@example.test", "verp")


def test_suppressions_list_unproven(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    """
    `suppressions list --unproven`: the suppressions that bounces made before reports had to
    prove themselves, and that would be unmatched today. Those entries are written here as the
    code before the fix wrote them (a suppression naming its bounce record and message, the
    record, the raw bounce); the new ones carry their proof.
    """
    import subprocess
    import sys

    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    message_id = sent_to(d, sink, ["verp-old@example.test", "byid-old@example.test", "new@example.test"])
    got = copies(sink)
    client = redis_server.client()
    # a new suppression, from a report that proved itself
    code, _ = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                         dsn(f"postmaster@{BOUNCE_DOMAIN}", "new@example.test", message_id,
                                             original=got["new@example.test"][1]))
    assert code == 250
    verp = got["verp-old@example.test"][0]
    old = {  # address: (message id, bounce record's source or None (expired), raw bounce)
        "forged@example.org": ("", "dsn", dsn(f"postmaster@{BOUNCE_DOMAIN}", "forged@example.org", "f" * 20)),
        "byid-old@example.test": (message_id, "dsn", dsn(f"postmaster@{BOUNCE_DOMAIN}", "byid-old@example.test",
                                                         message_id)),
        "verp-old@example.test": (message_id, "dsn", dsn(verp, "verp-old@example.test", message_id)),
        # verp-old's token does not prove anything about another address
        "co-old@example.test": (message_id, "dsn", dsn(verp, "co-old@example.test", message_id)),
        "inband@example.test": (message_id, "smtp", b""),
        "expired@example.test": (message_id, None, b""),
    }
    for n, (address, (msg, source, raw)) in enumerate(old.items()):
        bounce_id = f"{n:016x}"
        client.command("HSET", f"{unique_prefix}suppressed", address, json.dumps(
            {"address": address, "since": "2026-11-01T10:00:00Z", "type": "HardBounce", "reason": "550 5.1.1",
             "bounce_id": bounce_id, "message_id": msg}))
        if source is not None:
            client.command("HSET", f"{unique_prefix}bounce:{bounce_id}", "id", bounce_id, "message_id", msg,
                           "recipient", address, "type", "HardBounce", "source", source)
        if raw:
            client.command("SET", f"{unique_prefix}bounce:raw:{bounce_id}", raw)
    client.command("HSET", f"{unique_prefix}suppressed", "manual@example.test",
                   json.dumps({"since": "2026-11-01T10:00:00Z", "type": "ManuallyDeactivated"}))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mailrelay.cli", "suppressions", *args, "-c", str(d.config_path)],
                              capture_output=True, text=True, timeout=60)

    listed = cli("list", "--unproven")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    rows = {line.split("\t")[0]: line.split("\t")[3] for line in lines[:-1]}
    assert set(rows) == {"forged@example.org", "byid-old@example.test", "co-old@example.test",
                         "expired@example.test"}
    assert rows["forged@example.org"] == "made from an unmatched report"
    assert "no token of this recipient" in rows["byid-old@example.test"]
    assert "no token of this recipient" in rows["co-old@example.test"]
    assert "expired" in rows["expired@example.test"]
    assert lines[-1].startswith("4 unproven suppressions")
    assert len(cli("list").stdout.splitlines()) == 9   # 8 addresses and the count


def test_recipient_tokens_leave_dkim_signatures_valid(start_daemon, daemon_config, redis_server, unique_prefix,
                                                      dns, sink):
    from test_dkim import as_delivered, dkim_config, dkim_records, ok, publish, send as send_from, signatures, verify

    d = start_daemon(dkim_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                 bounces={"domain": BOUNCE_DOMAIN, "listen": ["tcp:0:interface=127.0.0.1"]}))
    publish(dns, dkim_records(ok(d.config_path, "add", "shop.test", "--selector", "s1")))
    message_id = send_from(d.ports["submission"], "orders@shop.test", ["a@example.test", "b@example.test"], "Order")
    d.wait_for_matches(rf"{message_id}: to=<[^>]+>.*status=sent", 2)
    messages = [as_delivered(dump) for dump in sink.messages()]
    tokens = [re.match(rb"X-Mailrelay-Recipient-Token: ([a-z2-7]{32})\r\n", m).group(1) for m in messages]
    assert len(set(tokens)) == 2   # each copy its own, on top (added at delivery)
    for message in messages:
        assert "x-mailrelay-recipient-token" not in signatures(message)[0]["h"]
        assert verify(message, dns, 0)


# -- found by the attacker's review of issue 15 -------------------------------------------------


def stats_counts(client, prefix):
    """The per-minute counters (what /api/stats and /metrics read), summed over the buckets."""
    totals: dict[str, int] = {}
    for key in client.command("KEYS", f"{prefix}idx:stats:m:*"):
        for name, value in hgetall(client, key.decode()).items():
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def test_unmatched_reports_are_not_counted_as_the_type_they_claim(start_daemon, daemon_config, redis_server,
                                                                  unique_prefix, dns, sink):
    # Anyone can send forged DSNs to postmaster@: counted as HardBounce they would drive the
    # bounce rate of /api/stats and mailrelay_bounces_total{type="HardBounce"} at will.
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    client = redis_server.client()
    for n in range(3):
        code, text = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                                dsn(f"postmaster@{BOUNCE_DOMAIN}", f"victim{n}@example.org",
                                                    "0123456789abcdef0123"))
        assert code == 250, text
    assert len(unmatched_records(client, unique_prefix)) == 3
    counts = stats_counts(client, unique_prefix)
    assert not any(name.startswith("bounce:") and name != "bounce:Unmatched" for name in counts), counts
    assert counts.get("bounce:Unmatched") == 3


def test_a_bounce_built_against_the_parsers_regexes_is_answered_at_once(start_daemon, daemon_config, redis_server,
                                                                        unique_prefix, dns, sink):
    # One line of spaces (base64, so that SMTP's 1,000-octet line limit does not stop it) made
    # the copy-marker search quadratic: a 40 KB bounce held the reactor (every listener and
    # delivery) for minutes. The listener must answer it like any other.
    import base64

    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    spaces = base64.encodebytes(b" " * 30000).replace(b"\n", b"\r\n")
    bounce = (b"From: MAILER-DAEMON@mx.example.test\r\nSubject: Undelivered Mail Returned to Sender\r\n"
              b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
              + spaces)
    with smtplib.SMTP("127.0.0.1", d.ports["bounces"], timeout=10) as s:   # 10 s: far above a parse
        s.ehlo("mx.example.test")
        s.mail("")
        assert s.rcpt(f"postmaster@{BOUNCE_DOMAIN}")[0] == 250
        code, text = s.data(bounce)
    assert code == 250, text
    assert len(unmatched_records(redis_server.client(), unique_prefix)) == 1


def test_only_the_newest_unmatched_reports_are_kept(start_daemon, daemon_config, redis_server, unique_prefix,
                                                    dns, sink):
    # Anyone on the Internet can send reports that prove nothing; each was kept, with up to
    # 256 KiB of raw message, for the whole retention (45 days): a flood filled Redis, which
    # holds the queue. Only the newest [bounces] max_unmatched_bounces are kept.
    config = bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port)
    d = start_daemon(config.replace("[bounces]\n", "[bounces]\nmax_unmatched_bounces = 3\n"))
    client = redis_server.client()
    message_id = sent_to(d, sink, ["gone@example.test"])
    [(verp, _)] = copies(sink).values()
    code, _ = deliver_to_bounce_listener(d.ports["bounces"], verp, dsn(verp, "gone@example.test", message_id))
    assert code == 250   # a proven bounce: never evicted by unmatched ones
    for n in range(5):
        code, text = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                                dsn(f"postmaster@{BOUNCE_DOMAIN}", f"flood{n}@example.org",
                                                    "0123456789abcdef0123"))
        assert code == 250, text
    kept = unmatched_records(client, unique_prefix)
    assert sorted(r["recipient"] for r in kept) == ["flood2@example.org", "flood3@example.org", "flood4@example.org"]
    records = bounce_records(client, unique_prefix)
    assert len(records) == 4 and [r["proof"] for r in records].count("verp") == 1
    raws = client.command("KEYS", f"{unique_prefix}bounce:raw:*")
    assert len(raws) == 4   # the evicted reports' raw messages are gone too
    assert len(client.command("KEYS", f"{unique_prefix}bounce:*")) == 8


def test_reports_about_one_recipient_are_bounded(start_daemon, daemon_config, redis_server, unique_prefix,
                                                 dns, sink):
    # Whoever holds a recipient's copy (a recipient of a password-reset mail: anyone) could
    # send its proven report again and again: each stored up to 256 KiB for 45 days and fired
    # another webhook event. Only the first MAX_REPORTS_PER_RECIPIENT are stored.
    from mailrelay.services.bounces import MAX_REPORTS_PER_RECIPIENT

    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    client = redis_server.client()
    message_id = sent_to(d, sink, ["reader@example.test"])
    [(verp, headers)] = copies(sink).values()
    for n in range(MAX_REPORTS_PER_RECIPIENT + 3):
        code, text = deliver_to_bounce_listener(d.ports["bounces"], f"fbl@{BOUNCE_DOMAIN}",
                                                arf("reader@example.test", message_id, original=headers))
        assert code == 250, text
    records = bounce_records(client, unique_prefix)
    assert len(records) == MAX_REPORTS_PER_RECIPIENT
    assert all(r["proof"] == "token" and r["message_id"] == message_id for r in records)
    assert event_types(client, unique_prefix).count("complained") == MAX_REPORTS_PER_RECIPIENT
    assert len(client.command("KEYS", f"{unique_prefix}bounce:raw:*")) == MAX_REPORTS_PER_RECIPIENT
    assert "reader@example.test" in suppressed(client, unique_prefix)   # the first one still counted
    d.wait_for_line(rf"about message {message_id} to <reader@example\.test> not stored: it already has")


def test_a_complaint_naming_many_addresses_is_answered_at_once(start_daemon, daemon_config, redis_server,
                                                               unique_prefix, dns, sink):
    # The parser collected addresses in a list, checking each against those before: an ARF
    # report whose (folded) Original-Rcpt-To fields name 60,000 addresses held the reactor for
    # about a minute. The listener must answer it like any other, and suppress nobody.
    d = start_daemon(bounce_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    fields = "".join("Original-Rcpt-To: " + ",\r\n ".join(f"r{n}@e.cc" for n in range(k, k + 600)) + "\r\n"
                     for k in range(0, 60000, 600))   # 100 fields, each folded over 600 lines
    report = (f"From: feedback@isp.example.net\r\nTo: fbl@{BOUNCE_DOMAIN}\r\nSubject: complaint\r\n"
              "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"ARF\"\r\n"
              "\r\n--ARF\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nVersion: 1\r\n"
              f"{fields}\r\n--ARF--\r\n").encode()
    with smtplib.SMTP("127.0.0.1", d.ports["bounces"], timeout=10) as s:   # 10 s: far above a parse
        s.ehlo("isp.example.net")
        s.mail("")
        assert s.rcpt(f"fbl@{BOUNCE_DOMAIN}")[0] == 250
        code, text = s.data(report)
    assert code == 250, text
    client = redis_server.client()
    assert suppressed(client, unique_prefix) == {}
    assert 1 <= len(unmatched_records(client, unique_prefix)) <= 100
