"""
The typed records of mailrelay.store.records: one decoding of each stored shape, with one defined
value for what is missing or corrupt (issue 17 item 3), and the API and the status page of a real
daemon showing the same decoding of an inconsistent message hash written into its Redis.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import fields

from conftest import EPHEMERAL
from mailrelay.store import Event
from mailrelay.store.records import (EVENT_FIELDS, BounceRecord, MessageRecord, MessageSummary, Suppression,
                                     decode_message, decode_suppressions, decode_timeline)

TOKEN = "r" * 24
MESSAGE_ID = "0123456789abcdef0123"


def event(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"type": "queued", "at": "2026-11-28T09:15:00Z", "detail": "Accepted"}
    base.update(fields)
    return base


def test_timeline_event_has_the_fields_of_the_stored_event():
    """The read side's event fields are the write side's (mailrelay.store.Event), in order."""
    assert EVENT_FIELDS == tuple(f.name for f in fields(Event))


def test_missing_or_corrupt_rcpt_count_counts_the_recipient_fields():
    for stored_count in (None, "", "many", "-1", "1.5"):
        stored = {"rcpt:0": "a@example.test", "rcpt:1": "b@example.test", "state:1": "delivered"}
        if stored_count is not None:
            stored["rcpt_count"] = stored_count
        record = MessageRecord.decode(MESSAGE_ID, stored)
        assert [(r.index, r.address, r.state) for r in record.recipients] == [
            (0, "a@example.test", "queued"), (1, "b@example.test", "delivered")], stored_count
        assert ("rcpt_count" in record.undecoded) == bool(stored_count), stored_count


def test_stray_fields_past_the_count_are_ignored_and_missing_ones_are_defined():
    record = MessageRecord.decode(MESSAGE_ID, {
        "rcpt_count": "2", "rcpt:0": "a@example.test", "state:0": "delivering", "attempts:0": "x",
        "rcpt:5": "stray@example.test", "state:5": "bounced", "state:1": "bounced"})
    assert [(r.address, r.state, r.status, r.attempts) for r in record.recipients] == [
        ("a@example.test", "delivering", "queued", 0), ("", "bounced", "bounced", 0)]
    assert record.recipients[0].undecoded == {"attempts": "x"}
    # a recipient without an address proves nothing; an index past the count is no recipient
    assert record.recipient(0) is record.recipients[0]
    assert record.recipient(1) is None and record.recipient(5) is None and record.recipient(-1) is None


def test_bad_json_fields_take_their_empty_value_and_keep_their_text():
    record = MessageRecord.decode(MESSAGE_ID, {
        "rcpt_count": "1", "rcpt:0": "a@example.test", "metadata": "{not json", "to": '"a@example.test"',
        "cc": "[broken", "size": "12kB", "received_at": "yesterday"})
    assert record.metadata == {} and record.to == () and record.cc == ()
    assert record.size == 0 and record.received_ms is None and record.status == "queued"
    assert record.undecoded == {"metadata": "{not json", "to": '"a@example.test"', "cc": "[broken",
                                "size": "12kB", "received_at": "yesterday"}
    listed = MessageRecord.decode(MESSAGE_ID, {"metadata": "[1, 2]", "to": '["x@example.test", 3]'})
    assert listed.metadata == {} and listed.undecoded == {"metadata": "[1, 2]"}
    assert listed.to == ("x@example.test", "3")
    empty = MessageRecord.decode(MESSAGE_ID, {"metadata": "{}", "to": "[]"})
    assert empty.metadata == {} and empty.to == () and empty.undecoded == {}


def test_timeline_entries_go_to_their_recipient_by_index_then_by_address():
    timeline = [
        event(rcpt=0, recipient="a@example.test"),
        event(type="deferred", rcpt=7, recipient="B@Example.test"),   # a stray index, a known address
        event(type="bounced", rcpt=9, recipient="nobody@example.test"),  # belongs to no recipient
        event(type="complained", rcpt="1"),                            # an index of the wrong type
        "not an object", None, 42,
    ]
    record = decode_message(MESSAGE_ID, {"rcpt_count": "2", "rcpt:0": "a@example.test",
                                         "rcpt:1": "b@example.test"}, timeline)
    assert record is not None
    assert [e.type for e in record.recipients[0].events] == ["queued"]
    assert [e.type for e in record.recipients[1].events] == ["deferred"]
    assert [e.type for e in record.unattributed] == ["bounced", "complained"]
    assert record.unattributed[1].rcpt is None
    assert len(decode_timeline(timeline)) == 4
    assert decode_message(MESSAGE_ID, None, timeline) is None and decode_message(MESSAGE_ID, {}) is None


def test_an_event_keeps_its_extra_fields_and_fills_the_missing_ones():
    (decoded,) = decode_timeline([{"type": "delivered", "rcpt": 0, "smtp_code": "250", "custom": [1]}])
    as_dict = decoded.as_dict()
    assert list(as_dict) == [*EVENT_FIELDS, "custom"]
    assert as_dict["detail"] == "" and as_dict["at"] is None and as_dict["smtp_code"] is None
    assert as_dict["custom"] == [1]


def test_summary_bounce_and_suppression_rows():
    summary = MessageSummary.decode({"id": MESSAGE_ID, "_score": 1_764_320_000_000, "received_at": "",
                                     "to": "oops", "status": "", "from": "f@example.test"})
    assert (summary.received_ms, summary.score, summary.to, summary.status) == (
        1_764_320_000_000, 1_764_320_000_000, (), "queued")
    bounce = BounceRecord.decode({"type": "", "type_code": "x", "inactive": "1", "recipient": "a@example.test"},
                                 "ab12")
    assert (bounce.id, bounce.type, bounce.type_code, bounce.inactive) == ("ab12", "Unknown", 0, True)
    assert BounceRecord.decode({"id": "cd", "_score": "17", "inactive": "0"}).score == 17
    entries = {"old@example.test": {"since": "2026-01-01T00:00:00Z", "type": "HardBounce"},
               "new@example.test": {"since": "2026-06-01T00:00:00Z"}, "odd@example.test": "not an object"}
    assert [(s.address, s.type) for s in decode_suppressions(entries)] == [
        ("new@example.test", "ManuallyDeactivated"), ("old@example.test", "HardBounce"),
        ("odd@example.test", "ManuallyDeactivated")]
    assert Suppression.decode("x@example.test", {"reason": None}).reason == ""


# -- through the daemon -------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        conn.close()


def test_api_and_status_page_read_an_inconsistent_message_alike(start_daemon, daemon_config, redis_server,
                                                                 unique_prefix):
    """A hash with no rcpt_count, a stray state, bad metadata and cc JSON, and a timeline with a
    stray event: the API and the status page show the same two recipients, states and events."""
    d = start_daemon(daemon_config(redis_server, unique_prefix, delivery={"enabled": False},
                                   web={"listen": [EPHEMERAL], "api_tokens": [TOKEN]}))
    with redis_server.client() as redis:
        redis.command("HSET", f"{unique_prefix}msg:{MESSAGE_ID}", "sender", "app@example.test",
                      "received_at", "1764320000000", "rcpt:0", "first@example.test", "state:0", "delivered",
                      "attempts:0", "1", "rcpt:1", "second@example.test", "state:7", "bounced",
                      "metadata", "{broken json", "to", '["first@example.test"]', "cc", "not json",
                      "subject", "inconsistent", "status", "partial")
        redis.command("RPUSH", f"{unique_prefix}timeline:{MESSAGE_ID}",
                      json.dumps(event(type="delivered", rcpt=0, recipient="first@example.test",
                                       detail="first delivered")),
                      json.dumps(event(type="deferred", rcpt=4, recipient="SECOND@example.test",
                                       detail="second by address")),
                      json.dumps(event(type="bounced", rcpt=9, recipient="stranger@example.test",
                                       detail="nobody else gets this")))
    status, text = get(d.ports["web"], f"/api/v1/messages/{MESSAGE_ID}")
    assert status == 200, text
    detail = json.loads(text)
    assert [(r["address"], r["status"], r["attempts"], [e["detail"] for e in r["events"]])
            for r in detail["recipients"]] == [
        ("first@example.test", "delivered", 1, ["first delivered"]),
        ("second@example.test", "queued", 0, ["second by address"])]
    assert detail["metadata"] == {} and detail["cc"] == [] and detail["to"] == ["first@example.test"]
    assert detail["status"] == "partial" and detail["subject"] == "inconsistent"

    status, page = get(d.ports["web"], f"/messages/{MESSAGE_ID}")
    assert status == 200, page
    assert "first@example.test, second@example.test" in page          # the envelope recipients
    assert page.count('<span class="st st-queued">queued</span>') == 1  # the second recipient
    assert "first delivered" in page and "second by address" in page
    other = page.index("Other events")
    assert page.index("second by address") < other < page.index("nobody else gets this")
    assert "{broken json" in page and "not json" in page              # what is stored, shown as text
