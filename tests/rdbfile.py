"""
A Redis RDB file as of now: every key's expiry moved by the time since the file was saved.

tests/migration/release-1.rdb holds a release's Redis data as that release wrote it, keys with
their expiry times (``[tracking] retention``, ``content_retention``). Loaded as it is, a week
later the bodies are gone, and after the retention everything: a test of that data would change
with the date. :func:`as_of_now` rewrites the file so that each key has, when loaded now, the
time to live it had when the file was saved (its ``ctime``), and nothing else changes: the
values are copied byte for byte. Redis offers no way to load a file "as of" another time (a
replica keeps expired keys but hides them from reads), and libfaketime does not run Debian's
redis-server (its jemalloc calls clock_gettime before libfaketime is initialised).

The parser walks the RDB format of Redis 7 (RDB versions up to 11): the opcodes (AUX,
SELECTDB, RESIZEDB, EXPIRETIME_MS, EXPIRETIME, FREQ, IDLE, FUNCTION2, EOF) and enough of each
value type to skip it: strings (with their integer and LZF encodings), lists, sets, sorted
sets, hashes (plain and in ziplists/listpacks/intsets), quicklists and streams. Module values
are refused. The checksum at the end is written as zero, which Redis takes as "saved without
a checksum" (it logs so, and loads the file).
"""

from __future__ import annotations

import struct
import time

# opcodes
_FUNCTION2, _MODULE_AUX, _IDLE, _FREQ, _AUX, _RESIZEDB, _EXPIRETIME_MS, _EXPIRETIME, _SELECTDB, _EOF = (
    0xF5, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF)

# value types whose value is one string (a serialised ziplist, listpack, intset or zipmap)
_BLOB_TYPES = {9, 10, 11, 12, 13, 16, 17, 20}
_STRING, _LIST, _SET, _ZSET, _HASH, _ZSET_2 = 0, 1, 2, 3, 4, 5
_LIST_QUICKLIST, _STREAM_LISTPACKS, _LIST_QUICKLIST_2 = 14, 15, 18
_STREAM_LISTPACKS_2, _STREAM_LISTPACKS_3 = 19, 21


class RdbError(ValueError):
    """The file is not an RDB file this parser knows."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RdbError(f"truncated at byte {self.at}")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def length(self) -> tuple[int, bool]:
        """A length, and whether it is a special string encoding instead."""
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F, False
        if kind == 1:
            return ((first & 0x3F) << 8) | self.byte(), False
        if kind == 3:
            return first & 0x3F, True
        if first == 0x80:
            return struct.unpack(">I", self.take(4))[0], False
        if first == 0x81:
            return struct.unpack(">Q", self.take(8))[0], False
        raise RdbError(f"unknown length encoding {first:#x} at byte {self.at - 1}")

    def number(self) -> int:
        value, special = self.length()
        if special:
            raise RdbError(f"a string encoding where a length belongs, at byte {self.at}")
        return value

    def string(self) -> bytes:
        """A string's stored bytes (integers as their decimal text, LZF left compressed)."""
        value, special = self.length()
        if not special:
            return self.take(value)
        if value == 0:
            return str(struct.unpack("<b", self.take(1))[0]).encode()
        if value == 1:
            return str(struct.unpack("<h", self.take(2))[0]).encode()
        if value == 2:
            return str(struct.unpack("<i", self.take(4))[0]).encode()
        if value == 3:  # LZF: compressed length, plain length, data
            compressed = self.number()
            self.number()
            return self.take(compressed)
        raise RdbError(f"unknown string encoding {value} at byte {self.at}")

    def skip_value(self, kind: int) -> None:
        if kind == _STRING or kind in _BLOB_TYPES:
            self.string()
        elif kind in (_LIST, _SET, _LIST_QUICKLIST):
            for _ in range(self.number()):
                self.string()
        elif kind == _LIST_QUICKLIST_2:
            for _ in range(self.number()):
                self.number()  # the node's container kind
                self.string()
        elif kind == _ZSET:
            for _ in range(self.number()):
                self.string()
                score_length = self.byte()
                if score_length < 253:
                    self.take(score_length)
        elif kind == _ZSET_2:
            for _ in range(self.number()):
                self.string()
                self.take(8)
        elif kind == _HASH:
            for _ in range(self.number()):
                self.string()
                self.string()
        elif kind in (_STREAM_LISTPACKS, _STREAM_LISTPACKS_2, _STREAM_LISTPACKS_3):
            self._skip_stream(kind)
        else:
            raise RdbError(f"value type {kind} is not supported (at byte {self.at})")

    def _skip_stream(self, kind: int) -> None:
        for _ in range(self.number()):  # listpacks: master id, listpack
            self.string()
            self.string()
        for _ in range(3):  # length, last id (ms, seq)
            self.number()
        if kind >= _STREAM_LISTPACKS_2:
            for _ in range(5):  # first id, max deleted id, entries added
                self.number()
        for _ in range(self.number()):  # consumer groups
            self.string()
            self.number()
            self.number()
            if kind >= _STREAM_LISTPACKS_2:
                self.number()  # entries read
            for _ in range(self.number()):  # the group's pending entries
                self.take(16 + 8)
                self.number()
            for _ in range(self.number()):  # consumers
                self.string()
                self.take(8)  # seen time
                if kind >= _STREAM_LISTPACKS_3:
                    self.take(8)  # active time
                for _ in range(self.number()):
                    self.take(16)


def saved_at_ms(data: bytes) -> int:
    """When the file was saved (its ``ctime`` AUX field), in ms since the epoch."""
    for name, value in _aux_fields(data):
        if name == b"ctime":
            return int(value) * 1000
    raise RdbError("the file has no ctime")


def _aux_fields(data: bytes) -> list[tuple[bytes, bytes]]:
    reader = _Reader(data)
    _header(reader)
    found = []
    while reader.byte() == _AUX:
        found.append((reader.string(), reader.string()))
    return found


def _header(reader: _Reader) -> int:
    magic = reader.take(9)
    if magic[:5] != b"REDIS" or not magic[5:].isdigit():
        raise RdbError("not an RDB file")
    version = int(magic[5:])
    if version > 11:
        raise RdbError(f"RDB version {version} is not supported")
    return version


def as_of_now(data: bytes, now_ms: int | None = None) -> bytes:
    """The RDB file ``data`` with every expiry time moved by ``now_ms`` (default: now) minus
    the time it was saved; the checksum zeroed."""
    shift = (int(time.time() * 1000) if now_ms is None else now_ms) - saved_at_ms(data)
    out = bytearray(data)
    reader = _Reader(data)
    _header(reader)
    while True:
        opcode = reader.byte()
        if opcode == _EOF:
            break
        if opcode == _AUX:
            reader.string()
            reader.string()
        elif opcode == _SELECTDB:
            reader.number()
        elif opcode == _RESIZEDB:
            reader.number()
            reader.number()
        elif opcode == _EXPIRETIME_MS:
            at = reader.at
            expires = struct.unpack("<q", reader.take(8))[0]
            out[at:at + 8] = struct.pack("<q", expires + shift)
        elif opcode == _EXPIRETIME:
            at = reader.at
            expires = struct.unpack("<i", reader.take(4))[0]
            out[at:at + 4] = struct.pack("<i", expires + shift // 1000)
        elif opcode == _FREQ:
            reader.byte()
        elif opcode == _IDLE:
            reader.number()
        elif opcode == _FUNCTION2:
            reader.string()
        elif opcode == _MODULE_AUX:
            raise RdbError("module data is not supported")
        else:
            reader.string()  # the key
            reader.skip_value(opcode)
    if len(data) - reader.at == 8:
        out[reader.at:] = bytes(8)
    elif len(data) != reader.at:
        raise RdbError(f"{len(data) - reader.at} bytes after the end of the file")
    return bytes(out)
