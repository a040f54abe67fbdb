"""
message: reading and editing the header of an RFC 5322 message without re-serialising it.

JOB
    Splits the raw header of a message into fields (:func:`split_header`,
    :func:`join_header`) so that fields can be added or removed while every
    other byte of the message stays as the client sent it (a later DKIM
    signature must cover the same bytes); makes new fields, folded at spaces
    (:func:`make_field`); reads address lists (:func:`addresses`) and the
    date of now (:func:`date_now`). The standard library's ``email`` package
    decodes values (encoded words, address lists); this module only splits.
    Pure: no I/O, no Redis.

SECURITY
    The bytes are a client's or a remote server's and are not trusted. The
    header ends at the blank line or at the first line that is not a header
    field (no colon, an empty name, a name with a space or tab): the rest is
    body, returned untouched. Undecodable bytes in a name or value are
    replaced, never raised; a bad RFC 2047 encoded word is left encoded, and
    one that decodes to lone surrogates is made storable.

STANDARDS
    RFC 5322 (header fields, folding 2.2.3, dates), RFC 2047 (encoded words,
    decoded through :mod:`email.header`).

DIAGNOSTICS
    None: logs nothing and raises nothing on malformed input (see SECURITY).

CONFIGURATION
    None: reads no config key and owns no file or Redis data.
"""

from __future__ import annotations

import email.header
import email.utils
import re
import time
from typing import NamedTuple


class HeaderField(NamedTuple):
    """
    One header field: its name and its raw bytes (folded lines and CRLF included).
    A named tuple: immutable, and made several times per message at a fraction of a frozen
    dataclass's cost.
    """

    name: str
    raw: bytes

    @property
    def value(self) -> str:
        """The unfolded value, with RFC 2047 encoded words left encoded."""
        text = self.raw.decode("utf-8", "replace")
        value = text.partition(":")[2]
        return " ".join(value.split())

    @property
    def decoded(self) -> str:
        """The value with RFC 2047 encoded words decoded."""
        value = self.value
        if "=?" not in value:  # no encoded word: email.header would return it as it is
            return value
        try:
            decoded = str(email.header.make_header(email.header.decode_header(value)))
        except (ValueError, LookupError, UnicodeError):
            return value
        # an encoded word can decode to lone surrogates (UTF-7): not text, and not storable
        return decoded.encode("utf-8", "replace").decode("utf-8")


def split_header(content: bytes) -> tuple[list[HeaderField], bytes]:
    """Split a message into its header fields and the rest (blank line and body)."""
    fields: list[HeaderField] = []
    pos = 0
    length = len(content)
    while pos < length:
        end = content.find(b"\r\n", pos)
        if end == -1:
            end = length
        line = content[pos:end]
        if not line:
            break  # the blank line that ends the header
        if line[:1] in (b" ", b"\t") and fields:
            last = fields[-1]
            fields[-1] = HeaderField(last.name, last.raw + content[pos:end + 2])
        else:
            name, colon, _ = line.partition(b":")
            if not colon or not name or b" " in name.strip() or b"\t" in name:
                break  # not a header field: the body starts here (no blank line)
            fields.append(HeaderField(name.strip().decode("ascii", "replace"), content[pos:end + 2]))
        pos = end + 2
    rest = content[pos:]
    if fields and not fields[-1].raw.endswith(b"\r\n"):
        fields[-1] = HeaderField(fields[-1].name, fields[-1].raw + b"\r\n")
    return fields, rest


def join_header(fields: list[HeaderField], rest: bytes) -> bytes:
    """The inverse of :func:`split_header`."""
    return b"".join(f.raw for f in fields) + rest


def make_field(name: str, value: str) -> HeaderField:
    """A new header field; long values are folded at spaces (RFC 5322 2.2.3)."""
    if len(name) + 2 + len(value) <= 78:  # one line: what the loop below would make
        return HeaderField(name, f"{name}: {value}\r\n".encode("utf-8"))
    words = value.split(" ")
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        if len(current) + 1 + len(word) > 78 and current.strip():
            lines.append(current)
            current = "\t" + word
        else:
            current += " " + word
    lines.append(current)
    return HeaderField(name, ("\r\n".join(lines) + "\r\n").encode("utf-8"))


def first(fields: list[HeaderField], name: str) -> HeaderField | None:
    lower = name.lower()
    for f in fields:
        if f.name.lower() == lower:
            return f
    return None


def addresses(field: HeaderField | None) -> list[str]:
    """The addresses of an address-list field (From, To, Cc)."""
    if field is None:
        return []
    value = field.value
    simple = _SIMPLE_MAILBOX.match(value)
    if simple is not None:  # the common case, without email.utils' tokenizer
        return [simple.group(1) or simple.group(2)]
    return [addr for _, addr in email.utils.getaddresses([value]) if addr]


# One mailbox in its plainest forms, `local@domain` or `Display Name <local@domain>` (dot-atoms
# only, no quotes, comments or lists), for which email.utils.getaddresses gives the same address.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_MAILBOX = re.compile(rf"(?:({_ADDR_SPEC})|(?:{_ATOM}(?: {_ATOM})* )?<({_ADDR_SPEC})>)\Z")


def date_now() -> str:
    """The local time now as an RFC 5322 date (``email.utils.formatdate``, once a second)."""
    global _date_last
    whole = int(time.time())
    last = _date_last
    if last[0] != whole:
        last = _date_last = (whole, email.utils.formatdate(whole, localtime=True))
    return last[1]


_date_last: tuple[int | None, str] = (None, "")
