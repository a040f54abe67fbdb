"""
mailrelay.mail.bounceparse: the sample corpus in tests/bounces (expected results in expected.json),
classify()'s status-code table and text rules, robustness against malformed input, and
``mailrelay bounce classify``.

expected.json maps each sample file to the report expected from it, or to the list of reports
when a bounce names several recipients: ``type`` and ``recipient`` are always checked,
``status`` and ``mailrelay_id`` when present.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mailrelay.mail import bounceclassify, bounceparse
from mailrelay.mail.bounceclassify import (
    BAD_EMAIL_ADDRESS, BLOCKED, BOUNCE_TYPES, BOUNCE_TYPES_BY_CODE, CHALLENGE_VERIFICATION, DMARC_POLICY, DNS_ERROR,
    HARD_BOUNCE, MANUALLY_DEACTIVATED, SOFT_BOUNCE, SPAM_COMPLAINT, SPAM_NOTIFICATION, SUPPRESSING_TYPES, TRANSIENT,
    UNKNOWN, VIRUS_NOTIFICATION, BounceReport, BounceType, classify, reply_report)
from mailrelay.mail.bounceparse import parse_bounce

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "bounces"
EXPECTED: dict[str, dict | list[dict]] = json.loads((CORPUS / "expected.json").read_text())


def expected_reports(name: str) -> list[dict]:
    value = EXPECTED[name]
    return value if isinstance(value, list) else [value]


def mismatches(name: str) -> list[str]:
    """What differs between the sample's reports and expected.json ([] when it all matches)."""
    reports = parse_bounce((CORPUS / name).read_bytes())
    wanted = expected_reports(name)
    problems = []
    if len(reports) != len(wanted):
        problems.append(f"{len(reports)} reports, expected {len(wanted)}")
    for got, want in zip(reports, wanted):
        checks = [("type", got.type.name), ("recipient", got.recipient)]
        checks += [(key, getattr(got, key)) for key in ("status", "mailrelay_id") if key in want]
        for key, value in checks:
            if value != want[key]:
                problems.append(f"{key}: got {value!r}, expected {want[key]!r}")
    return problems


# -- corpus -------------------------------------------------------------------------------


def test_corpus_is_complete():
    files = sorted(p.name for p in CORPUS.glob("*.eml"))
    assert len(files) >= 30
    assert sorted(EXPECTED) == files
    for name in files:
        for want in expected_reports(name):
            assert want["type"] in BOUNCE_TYPES, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample(name):
    assert mismatches(name) == []


def test_corpus_accuracy_report():
    total: Counter[str] = Counter()
    right: Counter[str] = Counter()
    failures = []
    for name in sorted(EXPECTED):
        ok = not mismatches(name)
        for want in expected_reports(name):
            total[want["type"]] += 1
            right[want["type"]] += ok
        if not ok:
            failures.append(name)
    lines = ["", f"{'type':<24}{'right':>6}{'total':>7}{'accuracy':>10}"]
    for kind in sorted(total, key=lambda k: BOUNCE_TYPES[k].code):
        lines.append(f"{kind:<24}{right[kind]:>6}{total[kind]:>7}{right[kind] / total[kind]:>10.0%}")
    lines.append(f"{'all':<24}{sum(right.values()):>6}{sum(total.values()):>7}"
                 f"{sum(right.values()) / sum(total.values()):>10.0%}")
    print("\n".join(lines))
    assert failures == []


def test_dsn_details():
    report, = parse_bounce((CORPUS / "dsn-postfix-user-unknown.eml").read_bytes())
    assert report.action == "failed"
    assert report.remote_mta == "mx1.example.org"
    assert report.original_message_id == "<018d0c8a7b2e4f1a9c3d@mailrelay.example.com>"
    assert report.diagnostic == ("550 5.1.1 <jdoe@example.org>: Recipient address rejected: "
                                 "User unknown in virtual mailbox table")
    assert report.description == HARD_BOUNCE.description


def test_multiline_reply_is_joined():
    report, = parse_bounce((CORPUS / "gmail-does-not-exist.eml").read_bytes())
    assert report.diagnostic.startswith("550 5.1.1 The email account that you tried to reach does not exist. "
                                        "Please try double-checking the recipient's email address")
    assert "550-" not in report.diagnostic


def test_original_recipient_is_preferred():
    report, = parse_bounce((CORPUS / "dsn-generic-5.0.0-user-unknown.eml").read_bytes())
    assert report.recipient == "tom.b@example.net"  # not the Final-Recipient tom@mail.example.net


def test_delayed_and_expired():
    delayed, = parse_bounce((CORPUS / "dsn-delayed.eml").read_bytes())
    assert (delayed.type, delayed.action) == (TRANSIENT, "delayed")
    expired, = parse_bounce((CORPUS / "dsn-expired.eml").read_bytes())
    assert (expired.type, expired.action, expired.status) == (SOFT_BOUNCE, "failed", "4.4.1")


def test_arf_fields():
    report, = parse_bounce((CORPUS / "arf-yahoo.eml").read_bytes())
    assert report.feedback_type == "abuse"
    assert report.type.suppresses


def test_auto_reply_refers_to_the_original():
    report, = parse_bounce((CORPUS / "autoreply-ooo.eml").read_bytes())
    assert report.original_message_id == "<018da7e1f2a3b4c5d6e7@mailrelay.example.com>"


def test_arf_feedback_types():
    template = (CORPUS / "arf-yahoo.eml").read_bytes()
    for feedback_type, kind in (("virus", VIRUS_NOTIFICATION), ("not-spam", UNKNOWN), ("fraud", SPAM_COMPLAINT)):
        report, = parse_bounce(template.replace(b"Feedback-Type: abuse", b"Feedback-Type: " + feedback_type.encode()))
        assert (report.type, report.feedback_type) == (kind, feedback_type)


def test_base64_encoded_delivery_status():
    import base64

    status = (b"Reporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; zoe@example.org\r\n"
              b"Action: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n")
    raw = (b"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@example.com\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n"
           b"--b\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(status).replace(b"\n", b"\r\n") + b"--b--\r\n")
    report, = parse_bounce(raw)
    assert (report.type, report.recipient, report.status) == (HARD_BOUNCE, "zoe@example.org", "5.1.1")


def test_forged_mailrelay_id_is_ignored():
    raw = (CORPUS / "dsn-postfix-user-unknown.eml").read_bytes().replace(
        b"X-Mailrelay-ID: 018d0c8a7b2e4f1a9c3d", b"X-Mailrelay-ID: ../../etc/passwd")
    report, = parse_bounce(raw)
    assert report.mailrelay_id is None
    assert report.recipient == "jdoe@example.org"


# -- the types ----------------------------------------------------------------------------


def test_types():
    assert [(t.name, t.code) for t in sorted(BOUNCE_TYPES.values(), key=lambda t: t.code)] == [
        ("HardBounce", 1), ("Transient", 2), ("Unsubscribe", 16), ("AutoResponder", 64), ("AddressChange", 128),
        ("DnsError", 256), ("SpamNotification", 512), ("Unknown", 2048), ("SoftBounce", 4096),
        ("VirusNotification", 8192), ("ChallengeVerification", 16384), ("BadEmailAddress", 100000),
        ("SpamComplaint", 100001), ("ManuallyDeactivated", 100002), ("Blocked", 100006), ("DMARCPolicy", 100009)]
    assert BOUNCE_TYPES_BY_CODE[100006] is BLOCKED
    assert SUPPRESSING_TYPES == {HARD_BOUNCE, BAD_EMAIL_ADDRESS, SPAM_COMPLAINT}
    assert {t.name for t in BOUNCE_TYPES.values() if t.coarse_class == "hard"} == {"HardBounce", "BadEmailAddress"}
    assert HARD_BOUNCE == BounceType("HardBounce", 1)
    assert HARD_BOUNCE.description == ("The server was unable to deliver your message "
                                       "(ex: unknown user, mailbox not found).")
    assert all(t.description for t in BOUNCE_TYPES.values())
    assert not MANUALLY_DEACTIVATED.suppresses and SPAM_COMPLAINT.suppresses


def test_report_to_json():
    report = BounceReport(type=SOFT_BOUNCE, recipient="a@example.org", status="5.2.2", rule="cause-status",
                          reason="cause-status; status 5.2.2; mailbox full")
    assert report.to_json("x.eml") == {"file": "x.eml", "type": "SoftBounce", "type_code": 4096,
                                       "recipient": "a@example.org", "status": "5.2.2",
                                       "description": SOFT_BOUNCE.description, "rule": "cause-status",
                                       "reason": "cause-status; status 5.2.2; mailbox full"}


def test_reply_report():
    report = reply_report("a@example.org", 550, "5.1.1", "5.1.1 <a@example.org>: Recipient address rejected",
                          "mx.example.org")
    assert (report.type, report.status, report.action, report.remote_mta) == (
        HARD_BOUNCE, "5.1.1", "failed", "mx.example.org")
    report = reply_report("a@example.org", 451, None, "4.7.1 Greylisted, try again later")
    assert (report.type, report.status, report.action) == (TRANSIENT, "4.7.1", "delayed")


# -- classify: the status-code table ------------------------------------------------------

STATUS_TABLE = [
    ("2.0.0", "Ok", UNKNOWN),
    ("4.0.0", "try again later", TRANSIENT),
    ("4.2.2", "", SOFT_BOUNCE),
    ("4.3.1", "", SOFT_BOUNCE),
    ("4.7.1", "Greylisted", TRANSIENT),
    ("4.4.1", "Connection timed out", TRANSIENT),
    ("4.0.0", "Mailbox over quota", SOFT_BOUNCE),
    ("4.1.1", "user unknown", TRANSIENT),
    ("5.1.1", "", HARD_BOUNCE),
    ("5.1.1", "blocked", BLOCKED),   # the text names a cause that is not the address
    ("5.1.2", "", HARD_BOUNCE),
    ("5.1.2", "Host or domain name not found", HARD_BOUNCE),
    ("5.1.2", "Host or domain name not found. Name service error: Host not found, try again", DNS_ERROR),
    ("5.1.3", "", BAD_EMAIL_ADDRESS),
    ("5.1.6", "mailbox has moved", HARD_BOUNCE),
    ("5.1.7", "", BLOCKED),
    ("5.1.8", "Sender address rejected: Domain not found", BLOCKED),
    ("5.1.10", "", HARD_BOUNCE),
    ("5.1.0", "", SOFT_BOUNCE),   # "other address status" names no cause
    ("5.1.0", "Sender address rejected", BLOCKED),
    ("5.2.0", "", SOFT_BOUNCE),
    ("5.2.0", "mailbox full", SOFT_BOUNCE),
    ("5.2.1", "mailbox disabled", SOFT_BOUNCE),
    ("5.2.1", "The email account that you tried to reach is disabled.", SOFT_BOUNCE),
    ("5.2.1", "no such user", HARD_BOUNCE),
    ("5.2.2", "", SOFT_BOUNCE),
    ("5.2.3", "", SOFT_BOUNCE),
    ("5.3.0", "", SOFT_BOUNCE),
    ("5.3.1", "", SOFT_BOUNCE),
    ("5.3.4", "message too big", SOFT_BOUNCE),
    ("5.4.1", "Recipient address rejected: Access denied", HARD_BOUNCE),
    ("5.4.1", "", DNS_ERROR),   # "no answer from host"
    ("5.4.4", "Unrouteable address", HARD_BOUNCE),
    ("5.4.4", "", DNS_ERROR),
    ("5.4.6", "mail for example.org loops back to myself", DNS_ERROR),
    ("5.4.7", "delivery time expired", SOFT_BOUNCE),
    ("5.4.0", "", DNS_ERROR),
    ("5.5.0", "Requested action not taken: mailbox unavailable", HARD_BOUNCE),
    ("5.5.0", "mailbox unavailable, blocked by policy", BLOCKED),
    ("5.6.0", "", SOFT_BOUNCE),
    ("5.6.0", "message content rejected", SPAM_NOTIFICATION),
    ("5.7.1", "", BLOCKED),
    ("5.7.1", "Service unavailable; client host blocked using Spamhaus", BLOCKED),
    ("5.7.1", "virus found in message", VIRUS_NOTIFICATION),
    ("5.7.1", "user unknown", HARD_BOUNCE),
    ("5.7.26", "DMARC policy", DMARC_POLICY),
    ("5.7.26", "This mail has been blocked because the sender is unauthenticated.", DMARC_POLICY),
    ("5.7.1", "Unauthenticated email from example.com is not accepted due to domain's DMARC policy", DMARC_POLICY),
    ("5.0.0", "user unknown", HARD_BOUNCE),
    ("5.0.0", "", SOFT_BOUNCE),
    ("5.0.0", "Host or domain name not found", HARD_BOUNCE),
    ("5.0.0", "retry timeout exceeded", SOFT_BOUNCE),
    ("5.4.316", "Message expired, connection refused", SOFT_BOUNCE),
    ("5.4.310", "DNS domain example.org does not exist", HARD_BOUNCE),
    ("5.4.14", "Hop count exceeded - possible mail loop", DNS_ERROR),
    ("5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", HARD_BOUNCE),
    ("5.7.606", "Access denied, banned sending IP", BLOCKED),
]


@pytest.mark.parametrize("status,text,expected", STATUS_TABLE)
def test_classify_status(status, text, expected):
    assert classify(status, text) == expected


@pytest.mark.parametrize("code,text,expected", [
    (550, "", SOFT_BOUNCE),   # a bare 550 names no cause
    (551, "", HARD_BOUNCE),
    (552, "", SOFT_BOUNCE),
    (553, "", SOFT_BOUNCE),
    (554, "", SOFT_BOUNCE),
    (556, "", HARD_BOUNCE),
    (500, "", SOFT_BOUNCE),
    (521, "", HARD_BOUNCE),   # RFC 7504: the host accepts no mail
    (550, "Requested action not taken: mailbox unavailable", HARD_BOUNCE),
    (550, "mailbox unavailable (blocked)", BLOCKED),
    (554, "Transaction failed: spam message rejected", SPAM_NOTIFICATION),
    (554, "delivery error: dd This user doesn't have a example.org account", HARD_BOUNCE),
    (450, "", TRANSIENT),
    (452, "Insufficient system storage", SOFT_BOUNCE),
    (421, "Too many connections", TRANSIENT),
    (250, "Ok", UNKNOWN),
])
def test_classify_reply_code(code, text, expected):
    assert classify(None, text, code) == expected


def test_classify_takes_codes_from_the_text():
    assert classify(None, "550 5.1.1 <a@example.org>: Recipient address rejected") == HARD_BOUNCE
    assert classify(None, "host mx.example.org said: 552 5.2.2 over quota") == SOFT_BOUNCE
    assert classify(None, "451 4.7.1 greylisted") == TRANSIENT
    assert classify(None, "#5.1.1 smtp;550 5.1.1 RESOLVER.ADR.RecipNotFound; not found") == HARD_BOUNCE
    assert classify("5.2.2", "550 5.1.1 user unknown") == SOFT_BOUNCE  # the given status wins
    assert classify(None, "Exim 4.96 version banner") == UNKNOWN  # not a status code
    assert classify(None, "host 10.5.1.1: connection timed out") == TRANSIENT  # an address, not 5.1.1
    assert bounceclassify.normalize_status("#5.1.010 (permanent)") == "5.1.10"
    assert bounceclassify.normalize_status("192.0.2.5") is None


# -- classify: the text rules -------------------------------------------------------------

TEXT_RULES = [
    ("User unknown in virtual mailbox table", HARD_BOUNCE),
    ("No such user here", HARD_BOUNCE),
    ("The email account that you tried to reach does not exist", HARD_BOUNCE),
    ("Sorry, no mailbox here by that name", HARD_BOUNCE),
    ("RESOLVER.ADR.RecipNotFound; not found", HARD_BOUNCE),
    ("Requested action not taken: mailbox unavailable", HARD_BOUNCE),
    ("Recipient rejected", UNKNOWN),   # names no cause
    ("The email address you entered couldn't be found", HARD_BOUNCE),
    ("Mailbox full", SOFT_BOUNCE),
    ("user is over quota", SOFT_BOUNCE),
    ("Quota exceeded", SOFT_BOUNCE),
    ("Insufficient storage", SOFT_BOUNCE),
    ("Message rejected as spam", SPAM_NOTIFICATION),
    ("Your IP is blocked", BLOCKED),
    ("Client host rejected: listed in a blacklist", BLOCKED),
    ("listed on our blocklist", BLOCKED),
    ("poor sender reputation", BLOCKED),
    ("rejected by local policy", BLOCKED),
    ("blocked using zen.spamhaus.org", BLOCKED),
    ("DMARC verification failed", DMARC_POLICY),
    ("Sender address rejected: not owned by user", BLOCKED),
    ("Daily user sending quota exceeded: spam suspected", BLOCKED),
    ("Virus detected: Win.Test.EICAR", VIRUS_NOTIFICATION),
    ("message infected", VIRUS_NOTIFICATION),
    ("Host not found", HARD_BOUNCE),
    ("Domain not found", HARD_BOUNCE),
    ("DNS lookup returned NXDOMAIN", HARD_BOUNCE),
    ("no MX record for example.org", HARD_BOUNCE),
    ("Unrouteable address", HARD_BOUNCE),
    ("Host not found, try again", DNS_ERROR),
    ("Name server timeout", DNS_ERROR),
    ("Message delayed", TRANSIENT),
    ("will retry for 5 days", TRANSIENT),
    ("still trying", TRANSIENT),
    ("Connection timed out", TRANSIENT),
    ("Thanks for your message", UNKNOWN),
    ("", UNKNOWN),
]


@pytest.mark.parametrize("text,expected", TEXT_RULES)
def test_classify_text(text, expected):
    assert classify(None, text) == expected


# -- robustness ---------------------------------------------------------------------------


def pathological_inputs() -> list[bytes]:
    boundary_nest = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(3000))
    return [
        b"", b"\x00" * 100, b"\n" * 200000, b"\r\n" * 100000, b" " * 300000, b"a" * 2_000_000,
        b"From: a\n\n" + b"x@" * 100000,
        b"From: a\n\n" + b"a" * 100000 + b"@" + b"b." * 50000,
        b"From: a\n\n" + (b"<user@example.org>:\n" * 20000),
        b"From: a\n\n" + (b"550 5.1.1 " * 50000),
        b"MIME-Version: 1.0\n" + boundary_nest,
        b"Content-Type: message/rfc822\n\n" * 2000,
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\n\n--x\n"
        b"Content-Type: message/delivery-status\n\n"
        + b"Final-Recipient: rfc822; a@example.org\nAction: failed\n\n" * 5000,
        b"Content-Type: text/plain; charset=x-no-such-charset\n\nuser unknown",
        b"Content-Type: text/plain; charset=zlib\nContent-Transfer-Encoding: base64\n\n!!!notbase64!!!",
        b"Content-Type: text/plain; charset=utf-16\nContent-Transfer-Encoding: quoted-printable\n\n=FF=FE=00=D8",
        b"Content-Type: text/html\n\n<html><script>" + b"<" * 100000,
        b"Subject: =?utf-8?b?" + b"A" * 100000 + b"?=\nFrom: =?bogus?q?x?=\n\nhi",
        b"From: " + b"a@b, " * 20000 + b"\n\nhi",
        b"X-Failed-Recipients: " + b"x@example.org, " * 10000 + b"\n\nfailed",
        b"Content-Type: multipart/report; report-type=feedback-report; boundary=q\n\n--q\n"
        b"Content-Type: message/feedback-report\n\n" + b"Original-Rcpt-To: x@example.org\n" * 5000,
        b"\xff\xfe\xfd" * 50000,
        b"Subject: \xe9\xe8\nFrom: \xff@\xfe\n\n\xe9t\xe9",
        # header-field-like lines (the search for a quoted original's header fields)
        b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + b" a: b\n" * 40000,
        b"From: MAILER-DAEMON@x\nSubject: failure notice\n\n" + (b"A: b\n" + b" c\n" * 30) * 5000,
        # an SES notification nested beyond any recursion limit
        b"From: a\n\n" + b'{"notificationType": "Bounce", "bounce": ' + b"[" * 100000,
    ]


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 20)):
        choice = rng.random()
        pos = rng.randrange(len(data) + 1)
        if choice < 0.3 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif choice < 0.5:
            data[pos:pos] = rng.choice([b"\n", b"\r\n", b"--", b":", b";", b"=?", b"?=", b"<", b">", b"@",
                                        b"\nContent-Type: multipart/mixed; boundary=z\n", b"5.1.1 ", b"550 ",
                                        b"\n\n", b"\x00", b"=", b"boundary=", b"message/rfc822"])
        elif choice < 0.7:
            del data[pos:pos + rng.randint(1, 200)]
        elif choice < 0.85:
            end = min(len(data), pos + rng.randint(1, 300))
            data[pos:pos] = data[pos:end] * rng.randint(1, 5)
        else:
            data = data[:pos]
    return bytes(data)


def test_fuzz_never_raises():
    rng = random.Random(20240115)
    samples = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml")) + sorted(CORPUS.glob("holdout/*.eml"))]
    inputs = pathological_inputs()
    inputs += [bytes(rng.randrange(256) for _ in range(rng.randint(0, 2000))) for _ in range(100)]
    inputs += [bytes(rng.choice(b"abc@.:;<>\n\r -=?\"5015") for _ in range(rng.randint(0, 4000))) for _ in range(100)]
    inputs += [mutate(rng, rng.choice(samples)) for _ in range(300)]
    slowest = 0.0
    for data in inputs:
        start = time.perf_counter()
        reports = parse_bounce(data)
        slowest = max(slowest, time.perf_counter() - start)
        assert reports and len(reports) <= bounceparse.MAX_REPORTS
        for report in reports:
            assert isinstance(report.type, BounceType) and report.type in BOUNCE_TYPES.values()
            assert report.recipient is None or "@" in report.recipient
            assert report.mailrelay_id is None or len(report.mailrelay_id) == 20
            json.dumps(report.to_json("f"))
    assert slowest < 5, f"slowest input took {slowest:.1f}s"


def test_garbage_gives_one_unknown_report():
    for raw in (b"\x00\xff garbage", b""):
        report, = parse_bounce(raw)
        assert (report.type, report.recipient, report.status, report.rule) == (UNKNOWN, None, None, "not-a-report")


# -- mailrelay bounce classify ------------------------------------------------------------


def test_cli_bounce_classify():
    files = [str(CORPUS / "dsn-sendmail-multi-recipient.eml"), str(CORPUS / "challenge-boxbe.eml")]
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", "bounce", "classify", *files],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {"file": files[0], "type": "HardBounce", "type_code": 1, "recipient": "p.martin@example.net",
         "status": "5.1.1", "description": HARD_BOUNCE.description, "rule": "address-status",
         "reason": "address-status; status 5.1.1; reply 550; text 'User unknown'; bad destination mailbox address"},
        {"file": files[0], "type": "SoftBounce", "type_code": 4096, "recipient": "sales@example.net",
         "status": "5.2.2", "description": SOFT_BOUNCE.description, "rule": "cause-status",
         "reason": "cause-status; status 5.2.2; reply 552; text 'Mailbox full'; mailbox full"},
        {"file": files[1], "type": "ChallengeVerification", "type_code": 16384, "recipient": "hannah@example.org",
         "status": None, "description": CHALLENGE_VERIFICATION.description, "rule": "challenge",
         "reason": "challenge; text 'Boxbe'; asks the sender to prove it is a person"},
    ]


def test_cli_bounce_classify_missing_file(tmp_path):
    garbage = tmp_path / "garbage.eml"
    garbage.write_bytes(b"\x00\x01 nothing to see")
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", "bounce", "classify",
                             str(tmp_path / "missing.eml"), str(garbage)],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.startswith("mailrelay: ") and len(result.stderr.splitlines()) == 1
    assert json.loads(result.stdout) == {"file": str(garbage), "type": "Unknown", "type_code": 2048,
                                         "recipient": None, "status": None,
                                         "description": UNKNOWN.description, "rule": "not-a-report",
                                         "reason": "not-a-report; no delivery report, failure notice or "
                                                   "auto-reply found"}


def test_recipient_tokens_found_wherever_a_bounce_returns_the_copy():
    import base64

    token = "abcdefghijklmnopqrstuvwxyz234567"
    header = f"X-Mailrelay-Recipient-Token: {token.upper()}\r\n"
    headers_part = base64.b64encode(f"Received: by mx\r\n{header}From: a@b\r\n".encode()).decode()
    encoded = ("MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
               "--B\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
               "--B\r\nContent-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               f"{headers_part}\r\n--B--\r\n").encode()
    quoted = f"Subject: failure notice\r\n\r\nno such user\r\n\r\n> {header}".encode()
    verp = f"To: <b+{token}@bounces.example.test>\r\nSubject: x\r\n\r\nx\r\n".encode()
    for raw in (encoded, quoted, verp):
        assert parse_bounce(raw)[0].recipient_tokens == (token,), raw
    # a token's shape only: too short, too long, part of a longer word, another field
    for text in (f"X-Mailrelay-Recipient-Token: {token[:-1]}", f"X-Mailrelay-Recipient-Token: {token}a",
                 f"ab+{token}@x", f"X-Other: {token}"):
        assert parse_bounce(f"Subject: x\r\n\r\n{text}\r\n".encode())[0].recipient_tokens == (), text


# -- issue 16: decide from the reason, not from the first digit ---------------------------

#: Replies as receivers document them (Gmail's "SMTP errors and codes", Microsoft's Exchange
#: Online NDR pages, Yahoo's and iCloud's postmaster pages, Orange's OFR codes, QQ, Mail.ru,
#: GMX) and as MTAs write them (Postfix, Exim, qmail, Sendmail), and mailrelay's own in-band
#: texts. Only the first group suppresses.
ADDRESS_GONE = [
    "550-5.1.1 The email account that you tried to reach does not exist. Please try double-checking "
    "the recipient's email address for typos or unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
    "553-5.1.2 We weren't able to find the recipient domain. Please check for any spelling errors",
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
    "554 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain",
    "554 delivery error: dd This user doesn't have a example.com account (a@example.com) [0] - mta1",
    "550 5.1.1 <a@example.com>: user does not exist",
    "550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416 [416]",
    "550 Mailbox not found. http://service.exmail.example.cn/cgi-bin/help?subtype=1&&id=20022&&no=1000728",
    "550 Message was not accepted -- invalid mailbox.  Local mailbox a@example.ru is unavailable: user not found",
    "550 Requested action not taken: mailbox unavailable",
    "550 5.1.1 <a@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
    "Sorry, no mailbox here by that name. (#5.1.1)",
    "Domain example.org does not accept mail (nullMX)",
    "an MX or SRV record indicated no SMTP service",   # Exim, null MX
    "556 5.1.10 <a@example.org>: Recipient address rejected: Domain example.org does not accept mail (nullMX)",
    "551 User not local; please try <a@example.net>",
    "550 5.7.1 <a@example.org>: Recipient address rejected: User unknown",   # 5.7.1, no policy word
    "example.org: domain does not exist (NXDOMAIN)",                        # mailrelay's own
    "example.org publishes a null MX (RFC 7505): it accepts no mail",
]
NOT_GONE = [
    ("550 5.1.1 Message rejected as spam by Content Filtering", SPAM_NOTIFICATION),
    ("552 5.1.1 Boite du destinataire pleine. Recipient overquota. OFR_417 [417]", SOFT_BOUNCE),
    ("550 5.1.1 <a@example.org>: blocked by policy, see https://example.org/rbl", BLOCKED),
    ("450 5.2.2 mailbox full", SOFT_BOUNCE),   # 5.2.2 whatever the class digit
    ("550 5.2.2 The email account that you tried to reach is over quota", SOFT_BOUNCE),
    ("550 5.2.1 The email account that you tried to reach is disabled.", SOFT_BOUNCE),
    ("550-5.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional "
     "messages from being delivered.", SOFT_BOUNCE),
    ("552 5.2.3 Your message exceeded Google's message size limits.", SOFT_BOUNCE),
    ("550 5.7.26 Unauthenticated email from example.com is not accepted due to domain's DMARC policy", DMARC_POLICY),
    ("550 5.7.1 [192.0.2.1] The IP you're using to send mail is not authorized to send email directly to our "
     "servers.", BLOCKED),
    ("550 5.7.606 Access denied, banned sending IP [192.0.2.1]", BLOCKED),
    ("550 5.7.509 Access denied, sending domain example.com does not pass DMARC verification", DMARC_POLICY),
    ("554 5.7.9 Message not accepted for policy reasons. See https://help.yahoo.com/kb/postmaster/SLN7253.html",
     BLOCKED),
    ("554 delivery error: dd Sorry your message to a@example.com cannot be delivered. This mailbox is disabled "
     "(554.30).", SOFT_BOUNCE),
    ("554 5.7.1 [CS01] Message rejected due to local policy.", BLOCKED),
    ("550 Mailbox unavailable or access denied", BLOCKED),   # QQ: the recipient gets too much mail
    ("550 Ip frequency limited", SOFT_BOUNCE),
    ("550 Mail content denied.", SPAM_NOTIFICATION),   # the message itself judged spam
    ("550 spam message rejected. Please visit http://help.example.ru/notspam-support", SPAM_NOTIFICATION),
    ("550 5.7.501 Access denied, spam abuse detected.", BLOCKED),   # about the sender, not this message
    ("550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", BLOCKED),
    ("all relevant MX records point to non-existent hosts", DNS_ERROR),   # the domain exists, its DNS is broken
    ("550 Message was not accepted -- invalid mailbox. Local mailbox a@example.ru is unavailable: account is "
     "disabled", SOFT_BOUNCE),
    ("554-No SMTP service 554 Bad DNS PTR resource record.", BLOCKED),
    ("521 5.2.1 :  (CON:B1)  AOL will not accept delivery of this message.", BLOCKED),
    ("550 5.7.1 Unable to relay", BLOCKED),
    ("553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", BLOCKED),
    ("550 5.1.8 <orders@shop.example.com>: Sender address rejected: Domain not found", BLOCKED),
    ("550 #5.1.0 Address rejected.", SOFT_BOUNCE),   # names no cause
    ("554 5.0.0 Service unavailable", SOFT_BOUNCE),
    ("550 4.4.7 QUEUE.Expired; message expired", SOFT_BOUNCE),
    ("retry timeout exceeded", SOFT_BOUNCE),
    ("I'm not going to try again; this message has been in the queue too long.", SOFT_BOUNCE),
    ("Host or domain name not found. Name service error for name=example.org type=MX: Host not found, try again",
     DNS_ERROR),
    ("example.org: has no MX record, and looking up its address failed: timeout", DNS_ERROR),
    ("5.4.4 example.org: not sent: it has no MX record and its own addresses are not public (example.org"
     "[10.0.0.1]: 10.0.0.1 is a private address); delivery to private and internal networks is disabled "
     "([delivery] allow_private_destinations = false)", DNS_ERROR),   # mailrelay's own refusal
    ("421 4.7.0 [TSS04] Messages temporarily deferred due to unexpected volume or user complaints", TRANSIENT),
    ("452 4.2.2 The email account that you tried to reach is over quota.", SOFT_BOUNCE),
]


@pytest.mark.parametrize("text", ADDRESS_GONE)
def test_address_gone_suppresses(text):
    verdict = bounceclassify.explain(None, text)
    assert verdict.type.suppresses and verdict.type.coarse_class == "hard", verdict


@pytest.mark.parametrize("text,expected", NOT_GONE)
def test_anything_else_gets_the_type_that_says_what_happened(text, expected):
    verdict = bounceclassify.explain(None, text)
    assert verdict.type == expected, verdict
    assert not verdict.type.suppresses


def test_bad_address_syntax_is_bad_email_address():
    verdict = bounceclassify.explain(None, "553-5.1.3 The recipient address <a..b@example.com> is not a valid RFC 5321 "
                                        "address.")
    assert (verdict.type, verdict.rule, verdict.type.suppresses) == (BAD_EMAIL_ADDRESS, "address-status+text", True)
    assert bounceclassify.explain(None, "example: not a valid domain name").type == BAD_EMAIL_ADDRESS


def test_explain_says_which_rule_status_and_text_decided():
    verdict = bounceclassify.explain(None, "550 5.1.1 <a@example.org>: Recipient address rejected: blocked by policy")
    assert (verdict.type, verdict.rule, verdict.status, verdict.smtp_code, verdict.matched) == (
        BLOCKED, "text-over-address-status", "5.1.1", 550, "blocked")
    assert verdict.reason == ("text-over-address-status; status 5.1.1; reply 550; text 'blocked'; "
                              "the text names spam, content, reputation, a block list or a policy")
    generic = bounceclassify.explain("5.0.0", "550 5.2.2 mailbox full")
    assert (generic.status, generic.type) == ("5.2.2", SOFT_BOUNCE)   # a generic status gives way
    bare = bounceclassify.explain(None, "550 rejected")
    assert (bare.type, bare.rule) == (SOFT_BOUNCE, "permanent-no-cause")


def test_a_bounce_reports_why():
    report, = parse_bounce((CORPUS / "orange-overquota.eml").read_bytes())
    assert (report.type, report.status, report.rule) == (SOFT_BOUNCE, "5.1.1", "text-over-address-status")
    assert "text 'Boite du destinataire pleine'" in report.reason


# -- rules the hold-out set (tests/bounces/holdout) showed missing ------------------------------

def _plain_bounce(subject: str, body: str, sender: str = "MAILER-DAEMON@mx.example.net",
                  extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: <b+x@bounces.example.com>\r\nSubject: {subject}\r\n{extra}MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}").replace("\r\n", "\n").encode()


_QUOTED_ORIGINAL = ("Return-Path: <b+x@bounces.example.com>\nReceived: from relay.example.com by mx.example.net\n"
                    "DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=s1; h=from:to; b=abc\n"
                    "From: <orders@example.com>\nTo: ann@example.org\nSubject: Your order\n")


def test_quoted_header_fields_are_not_the_bounce_text():
    """A returned original's header fields, quoted with no line announcing them, name no cause:
    "DKIM-Signature" is not a DKIM refusal."""
    body = ("The following recipient(s) could not be reached:\n\n\tRecipient: [SMTP:ann@example.org]\n"
            "\tReason: Remote SMTP Server Returned: 550 Requested action not taken\n\n" + _QUOTED_ORIGINAL)
    report, = parse_bounce(_plain_bounce("Message Delivery Failure", body))
    assert (report.type, report.recipient, report.rule) == (SOFT_BOUNCE, "ann@example.org", "permanent-no-cause"), \
        report.reason


def test_a_domain_that_is_not_registered_does_not_exist():
    assert classify(None, "The message could not be delivered because the domain name (shop-exmaple.org) does "
                          "not appear to be registered.") == HARD_BOUNCE


@pytest.mark.parametrize("text", [
    "Benutzer b.keller (b.keller@example.org) ist nicht im Domino-Verzeichnis aufgeführt",
    "L'utilisateur b.keller ne figure pas dans l'annuaire",
])
def test_domino_user_not_in_directory_other_languages(text):
    assert classify(None, text) == HARD_BOUNCE


def _ses(bounce_type: str, subtype: str, recipients: list[dict]) -> str:
    return json.dumps({"notificationType": "Bounce", "bounce": {
        "bounceType": bounce_type, "bounceSubType": subtype, "bouncedRecipients": recipients},
        "mail": {"source": "orders@example.com"}}, indent=2)


def test_amazon_ses_bounce_notifications():
    """SES notifications e-mailed by SNS: one report per bounced recipient, from its status and
    diagnostic, else from bounceType/bounceSubType; a Transient SES bounce never suppresses."""
    body = _ses("Permanent", "General", [
        {"emailAddress": "gone@example.org", "status": "5.1.1", "diagnosticCode": "smtp; 550 5.1.1 user unknown"},
        {"emailAddress": "full@example.org", "status": "5.2.2", "diagnosticCode": "smtp; 552 5.2.2 Mailbox full"}])
    reports = parse_bounce(_plain_bounce("AWS Notification Message", body, sender="no-reply@sns.amazonaws.com"))
    assert [(r.type, r.recipient) for r in reports] == [
        (HARD_BOUNCE, "gone@example.org"), (SOFT_BOUNCE, "full@example.org")]
    no_email = _ses("Permanent", "NoEmail", [{"emailAddress": "nobody@example.org"}])
    transient = _ses("Transient", "General", [
        {"emailAddress": "later@example.org", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}])
    envelope = json.dumps({"Type": "Notification", "Message": _ses(
        "Transient", "ContentRejected", [{"emailAddress": "filtered@example.org"}])})
    got = [(r.type, r.recipient) for body in (no_email, transient, envelope)
           for r in parse_bounce(_plain_bounce("AWS Notification Message", body, sender="no-reply@sns.amazonaws.com"))]
    assert got == [(HARD_BOUNCE, "nobody@example.org"), (SOFT_BOUNCE, "later@example.org"),
                   (BLOCKED, "filtered@example.org")]


def test_challenge_in_portuguese():
    body = ("Você enviou uma mensagem para fabio@example.com.br, que utiliza o AntiSpam.\n"
            "Para que sua mensagem seja entregue, confirme o envio digitando os caracteres da imagem:\n"
            "http://antispam.example.com.br/confirm?id=1\n")
    report, = parse_bounce(_plain_bounce("Confirmação de envio", body, sender="antispam@example.com.br"))
    assert (report.type, report.recipient) == (CHALLENGE_VERIFICATION, "fabio@example.com.br")


def test_arf_redacted_recipient_is_no_recipient():
    raw = ("From: scomp@aol.example\nTo: fbl@bounces.example.com\nSubject: Email Feedback Report\nMIME-Version: 1.0\n"
           "Content-Type: multipart/report; report-type=feedback-report; boundary=b\n\n--b\n"
           "Content-Type: text/plain\n\nabuse report\n--b\nContent-Type: message/feedback-report\n\n"
           "Feedback-Type: abuse\nUser-Agent: AOL SComp\nVersion: 0.1\nRedacted-Address: redacted\n\n--b\n"
           "Content-Type: message/rfc822\n\nFrom: <orders@example.com>\nTo: redacted@aol.example\n"
           "Subject: hi\n\nhello\n--b--\n").encode()
    report, = parse_bounce(raw)
    assert (report.type, report.recipient) == (SPAM_COMPLAINT, None)


def test_failure_notice_with_a_temporary_reply_was_given_up():
    """A failure notice (not a delay notice) whose reply is temporary: given up, SoftBounce, or the
    cause the bounce names; never Transient (the sender would wait for a retry that never comes)."""
    transcript = ("   ----- The following addresses had permanent fatal errors -----\n<admin@example.org>\n\n"
                  "   ----- Transcript of session follows -----\n451 admin@example.org... reply: read error from "
                  "mx.example.org.\nMessage could not be delivered for 5 days\nMessage will be deleted from queue\n")
    report, = parse_bounce(_plain_bounce("Returned mail: see transcript for details", transcript))
    assert (report.type, report.recipient) == (SOFT_BOUNCE, "admin@example.org"), report.reason
    full = ("Message delivery failed\n\nThe following recipient's mailbox is full and cannot accept messages now:\n"
            "  lucia@example.org\n\nPlease try again later.\n")
    report, = parse_bounce(_plain_bounce("Undeliverable", full))
    assert (report.type, report.recipient) == (SOFT_BOUNCE, "lucia@example.org"), report.reason
    assert report.rule == "failure-notice-given-up+text"
