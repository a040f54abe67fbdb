"""How submission completes a message: Received, Message-ID, Date, tag and metadata headers."""

from __future__ import annotations

from twisted.internet import task

from mailrelay.config import Config
from mailrelay.mail.message import split_header
from mailrelay.smtp.session import Session, Transaction
from mailrelay.services.submission import SubmissionHandler


def handler() -> SubmissionHandler:
    return SubmissionHandler(Config(), storage=None, users={}, clock=task.Clock(), tls_available=True)


def prepare(content: bytes, recipients=("to@example.org",)):
    session = Session(peer_host="192.0.2.7", peer_port=5555, local_port=2587, tls=True,
                      helo="app.example.com", esmtp=True, user="alice")
    transaction = Transaction(sender="app@example.com", recipients=list(recipients))
    return handler().prepare(session, transaction, content)


def fields_of(content: bytes) -> dict:
    return {f.name: f for f in split_header(content)[0]}


def header_names(content: bytes) -> list[str]:
    return [f.name for f in split_header(content)[0]]


def test_tag_and_metadata_are_taken_out():
    new = prepare(b"From: App <app@example.com>\r\nTo: A <a@example.org>, b@example.org\r\n"
                  b"X-Mailrelay-Tag: welcome\r\nX-PM-Metadata-customer: 42\r\n"
                  b"X-Mailrelay-Metadata-plan:\r\n gold\r\nX-Mailrelay-Internal: forged\r\n"
                  b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <m1@example.com>\r\n"
                  b"Date: Sat, 28 Nov 2026 10:00:00 +0000\r\n\r\nHello\r\n.dot\r\n")
    assert new.tag == "welcome"
    assert new.metadata == {"customer": "42", "plan": "gold"}
    names = [n.lower() for n in header_names(new.content)]
    assert not any(n.startswith(("x-mailrelay", "x-pm-")) for n in names if n != "x-mailrelay-id")
    assert fields_of(new.content)["X-Mailrelay-ID"].value == new.id  # ours, not the forged one
    assert names[0] == "received"
    assert names.count("message-id") == 1 and names.count("date") == 1
    assert new.content.endswith(b"\r\n\r\nHello\r\n.dot\r\n")
    assert new.summary == {"from": "app@example.com", "to": ["a@example.org", "b@example.org"],
                           "cc": [], "subject": "Grüße", "message_id": "<m1@example.com>"}


def test_missing_message_id_and_date_are_added():
    new = prepare(b"Subject: hi\r\n\r\nbody\r\n")
    fields = {f.name: f for f in split_header(new.content)[0]}
    assert fields["Message-ID"].value == f"<{new.id}@{Config().hostname}>"
    assert "Date" in fields
    received = fields["Received"].value
    assert "from app.example.com ([192.0.2.7])" in received
    assert f"with ESMTPSA id {new.id} for <to@example.org>;" in received


def test_message_without_header_gets_a_blank_line():
    new = prepare(b"just a body line\r\n")
    fields, rest = split_header(new.content)
    assert rest == b"\r\njust a body line\r\n"
    assert {f.name for f in fields} == {"Received", "X-Mailrelay-ID", "Message-ID", "Date"}


def test_original_bytes_are_kept():
    original = b"From: a@example.com\r\nSubject:  odd   spacing \r\n\tfolded\r\n\r\nbody \xff\r\n"
    new = prepare(original, recipients=("x@example.org", "y@example.org"))
    assert new.content.endswith(original)


def test_decoded_values_with_and_without_encoded_words():
    from mailrelay.mail.message import make_field

    assert make_field("Subject", "=?utf-8?q?Gr=C3=BC=C3=9Fe?= aus K=?x").decoded == "Grüße aus K=?x"
    for plain in ("Grüße aus Köln", "50% off =? not a word", "<b>bold</b>", ""):
        assert make_field("Subject", plain).decoded == plain


def test_an_encoded_word_that_decodes_to_lone_surrogates_is_made_text():
    from mailrelay.mail.message import make_field

    decoded = make_field("Subject", "=?utf-7?q?+2AA-?=").decoded  # UTF-7 for a lone U+D800
    decoded.encode("utf-8")  # storable: no lone surrogate left
    assert decoded == "?"
