"""The archive's packed timeline (mailrelay.store.timelinepack): the Redis entries back byte for
byte, small for the usual three events, and a damaged or oversized value refused, not expanded."""

from __future__ import annotations

import json
import zlib

import pytest

from mailrelay.store.records import decode_timeline
from mailrelay.store.timelinepack import (DICTIONARY_V1, FORMAT_V1, MAX_UNPACKED, json_entries, pack_timeline,
                                          unpack_timeline)

THREE_EVENTS = [
    {"type": "queued", "at": "2026-12-04T08:14:08.123Z"},
    {"type": "deferred", "at": "2026-12-04T08:14:09.456Z", "rcpt": 0, "recipient": "user123@example45.test",
     "detail": "Greylisted, try again later", "remote_host": "mx.example45.test", "remote_ip": "192.0.2.25",
     "smtp_code": 451, "enhanced_code": "4.7.1", "response": "4.7.1 Greylisted"},
    {"type": "delivered", "at": "2026-12-04T08:19:09.789Z", "rcpt": 0, "recipient": "user123@example45.test",
     "detail": "Delivered to mx.example45.test", "remote_host": "mx.example45.test", "remote_ip": "192.0.2.25",
     "smtp_code": 250, "enhanced_code": "2.0.0", "response": "2.0.0 Ok: queued as 4XyZ1", "remote_queue_id": "4XyZ1"},
]


def entries_of(events: list[dict]) -> list[bytes]:
    return [json.dumps(e, separators=(",", ":")).encode() for e in events]


def test_entries_come_back_byte_for_byte_and_decode_as_the_redis_timeline() -> None:
    entries = entries_of(THREE_EVENTS) + ['{"type":"bounced","detail":"caf\\u00e9 \\u2603"}'.encode()]
    packed = pack_timeline(entries)
    assert packed[0] == FORMAT_V1
    assert unpack_timeline(packed) == entries
    assert decode_timeline(json_entries(unpack_timeline(packed))) == decode_timeline(json_entries(entries))
    assert decode_timeline(json_entries(unpack_timeline(packed)))[3].detail == "café ☃"


def test_three_usual_events_take_less_than_200_bytes() -> None:
    raw = b"\n".join(entries_of(THREE_EVENTS))
    packed = pack_timeline(entries_of(THREE_EVENTS))
    assert len(packed) < 200 < len(raw)


def test_no_entries_and_no_value_are_an_empty_timeline() -> None:
    assert unpack_timeline(None) == [] == unpack_timeline(b"")
    assert unpack_timeline(pack_timeline([])) == []


def test_an_entry_that_is_not_json_is_dropped_on_reading_like_the_redis_reader_does() -> None:
    entries = [b'{"type":"queued"}', b"not json", b"[1, 2]"]
    assert [e.type for e in decode_timeline(json_entries(unpack_timeline(pack_timeline(entries))))] == ["queued"]


def test_a_line_break_in_an_entry_is_refused_when_packing() -> None:
    with pytest.raises(ValueError, match="line break"):
        pack_timeline([b'{"type":\n"queued"}'])


def test_damaged_unknown_and_oversized_values_raise_instead_of_expanding() -> None:
    packed = pack_timeline(entries_of(THREE_EVENTS))
    with pytest.raises(ValueError, match="unknown timeline format 9"):
        unpack_timeline(bytes([9]) + packed[1:])
    with pytest.raises(ValueError, match="damaged"):
        unpack_timeline(packed[:1] + b"\xff" * 40)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY_V1)
    bomb = bytes([FORMAT_V1]) + compressor.compress(b"a" * (MAX_UNPACKED + 1)) + compressor.flush()
    assert len(bomb) < 40_000
    with pytest.raises(ValueError, match="larger than"):
        unpack_timeline(bomb)
