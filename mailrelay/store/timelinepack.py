"""
timelinepack: a message's timeline as one compact value in the archive (issue 18).

JOB
    The archive keeps a message's timeline (its events, oldest first) in its
    ``messages`` row, column ``timeline``, as the entries the Redis timeline
    list holds (one JSON object each, byte for byte), one per line, deflated
    with a preset dictionary of the words every timeline repeats (field names,
    event types, common replies)::

        packed = pack_timeline([b'{"type":"queued","at":"..."}', ...])
        entries = unpack_timeline(packed)      # the same byte strings
        events = decode_timeline(json_entries(entries))

    Three events (queued, deferred, delivered) take about 150 bytes instead of
    about 700 as three rows with their index: the archive's disk per message
    is mostly its timeline (docs/archive.md, "Disk per message"). The first
    byte is the format: 1 = raw deflate (RFC 1951) with :data:`DICTIONARY_V1`.
    A later format gets a new number and dictionary; readers keep every old
    one.

SECURITY
    Decoding trusts the archive's own bytes, but bounds the output
    (:data:`MAX_UNPACKED`): a damaged or hostile value raises ValueError, never
    fills the memory. Entries that are not JSON objects are dropped on
    reading, as the Redis reader drops them.

STANDARDS
    RFC 1951 (deflate) through :mod:`zlib`; RFC 8259 (JSON).

DIAGNOSTICS
    ValueError: an unknown format byte, a damaged stream, an entry holding a
    line break (JSON text never does), or more than MAX_UNPACKED bytes.

CONFIGURATION
    None. DICTIONARY_V1 is part of the stored format: never change it, add V2.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Iterable

FORMAT_V1 = 1
#: Strings the timelines repeat, the likeliest last (deflate finds nearer matches cheaper).
DICTIONARY_V1 = (
    b'"extra":{},"proof":"","bounce_id":"","type":"suppressed","type":"cancelled","type":"deleted",'
    b'"type":"expired","type":"complained","type":"unsigned","smtp_code":421,"smtp_code":550,'
    b'"enhanced_code":"5.1.1","enhanced_code":"4.4.1","response":"550 5.1.1 ","response":"421 4.7.0 ",'
    b'"detail":"Connection refused","detail":"Delivered to ","detail":"Greylisted, try again later",'
    b'"type":"bounced","response":"250 2.0.0 Ok: queued as ","remote_queue_id":"","enhanced_code":"2.0.0",'
    b'"smtp_code":250,"remote_ip":"","remote_host":"","recipient":"","rcpt":0,"detail":"",\n'
    b'{"type":"deferred","at":"2026-01-01T00:00:00.000Z",\n{"type":"delivered","at":"2026-01-01T00:00:00.000Z",'
    b'"rcpt":0,"recipient":"\n{"type":"queued","at":"2026-01-01T00:00:00.000Z"}\n{"type":"queued","at":"2026-'
)
#: No timeline is larger (Redis caps a message's recipients and events far below this).
MAX_UNPACKED = 16 * 1024 * 1024


def pack_timeline(entries: Iterable[bytes]) -> bytes:
    """The stored value of a timeline's entries (Redis's JSON bytes, oldest first)."""
    lines = list(entries)
    for line in lines:
        if b"\n" in line:
            raise ValueError("a timeline entry holds a line break")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY_V1)
    return bytes([FORMAT_V1]) + compressor.compress(b"\n".join(lines)) + compressor.flush()


def unpack_timeline(packed: bytes | None) -> list[bytes]:
    """The entries of a stored timeline (None or empty: no entry)."""
    if not packed:
        return []
    if packed[0] != FORMAT_V1:
        raise ValueError(f"unknown timeline format {packed[0]}")
    decompressor = zlib.decompressobj(-15, DICTIONARY_V1)
    try:
        text = decompressor.decompress(packed[1:], MAX_UNPACKED)
    except zlib.error as e:
        raise ValueError(f"damaged timeline: {e}") from None
    if decompressor.unconsumed_tail or (len(text) >= MAX_UNPACKED and not decompressor.eof):
        raise ValueError(f"timeline larger than {MAX_UNPACKED} bytes")
    if not decompressor.eof:
        raise ValueError("damaged timeline: truncated")
    return text.split(b"\n") if text else []


def json_entries(entries: Iterable[bytes]) -> list[Any]:
    """Each entry's JSON value (None for one that is not JSON: decode_timeline drops it)."""
    values = []
    for entry in entries:
        try:
            values.append(json.loads(entry))
        except ValueError:
            values.append(None)
    return values
