"""
bouncemessage: a returned message (bounce, reply or complaint) as the bounce heuristics read it.

JOB
    Reads a message that came back once (:class:`BounceMessage`): its MIME
    parts, the plain text of its own text parts (HTML only when there is no
    plain text), where the bounce's own text ends and the copy of the
    original starts (at a line announcing it, or at three header fields in a
    row, one of them Received, Return-Path, Message-ID, DKIM-Signature, ...:
    a quoted DKIM-Signature is no DKIM refusal), the returned original
    (message/rfc822, a headers part, or the copied header fields) with its
    Message-ID and ``X-Mailrelay-ID``, and the recipient tokens the bounce
    carries (:data:`RECIPIENT_TOKEN_HEADER`, :data:`VERP_PREFIX`). Its helpers
    read the field blocks of a delivery-status or feedback-report part
    (:func:`field_blocks`), the per-recipient paragraphs of a plain-text
    bounce (:func:`recipient_blocks`) and the line most like a server reply
    (:func:`best_reason`). :mod:`mailrelay.mail.bounceparse` turns what is
    read into reports.

SECURITY
    Every byte is untrusted. Reading looks at :data:`MAX_PARTS` MIME parts
    at most, :data:`MAX_DEPTH` multiparts deep, and :data:`MAX_TEXT`
    characters of text; header lists and field blocks are cut at
    :data:`MAX_REPORTS`, and the regular expressions run in linear time
    (a quoted header field and its continuation lines never overlap). A
    header or part the ``email`` package cannot decode reads as its raw text
    or as nothing; :func:`mailrelay.mail.bounceparse.parse_bounce` catches
    anything else. An ``X-Mailrelay-ID`` is only returned when it has the
    shape of a mailrelay id (20 hex digits); the recipient tokens are only
    candidates, with the shape of a token, that the caller must verify
    (their HMAC is the proof, not where they were found).

STANDARDS
    RFC 2045-2047 (MIME and encoded words, through the ``email`` package),
    RFC 5322 (header fields), RFC 6522 (multipart/report, text/rfc822-headers),
    RFC 3464 and RFC 6533 (delivery-status field blocks), RFC 5965
    (feedback-report field blocks).

DIAGNOSTICS
    None: what cannot be read is empty text, no address or no original.

CONFIGURATION
    None: reads no config key and owns no file or Redis data.
    :data:`RECIPIENT_TOKEN_HEADER` and :data:`VERP_PREFIX` are the names
    :mod:`mailrelay.services.bounces` writes the recipient token under.
"""

from __future__ import annotations

import email
import email.header
import email.utils
import html.parser
import re
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from typing import Any

from mailrelay.mail.bounceclassify import (
    BLOCKED, DNS_ERROR, HARD_BOUNCE, MAX_DIAGNOSTIC, REPLY_AFTER, REPLY_START, SOFT_BOUNCE, TRANSIENT,
    BounceReport, BounceType, ENHANCED_STATUS, normalize_status, one_line, text_label)

#: Characters of decoded text that the heuristics look at.
MAX_TEXT = 256 * 1024
#: MIME parts looked at, and how deep.
MAX_PARTS = 100
MAX_DEPTH = 8
#: Reports returned for one bounce, at most.
MAX_REPORTS = 100
#: The header field that carries each recipient's token in its copy (added at delivery),
#: and the local-part prefix of a VERP return path, which carries the same token.
RECIPIENT_TOKEN_HEADER = "X-Mailrelay-Recipient-Token"
VERP_PREFIX = "b+"
#: Candidate recipient tokens returned for one bounce, at most.
MAX_TOKENS = 10

_ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
_ADDRESS = re.compile(rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-])({_ADDR})(?![\w-]|\.[A-Za-z0-9])")
_ID = re.compile(r"[0-9a-f]{20}")
#: A recipient token (base32 of 20 bytes) in its header field (also quoted, ``> X-...:``) or in
#: a VERP address (``b+<token>@``), in any case.
_TOKEN = re.compile(r"(?:^[ \t>]*" + re.escape(RECIPIENT_TOKEN_HEADER) + r":[ \t]*|(?<![\w.+-])"
                    + re.escape(VERP_PREFIX) + r")([a-z2-7]{32})(?![\w])", re.I | re.M)
_MSGID = re.compile(r"<[^<>\s]{1,250}>")

#: A line that starts a per-recipient paragraph of a plain-text bounce: the address alone
#: (Exim, Sendmail, Gmail, Exchange: "addr (addr)", "addr on <date>") or followed by a colon
#: (qmail, Yahoo, Postfix: "<addr>: host ... said: 550 ..."), or a DSN-like field.
_BLOCK_START = re.compile(rf"""
    ^[ \t>]*(?:(?:Final|Original)-Recipient:\s*(?:[\w-]+;\s*)?)?['"]?<?({_ADDR})>?['"]?(?:<mailto:[^>\s]*>)?
    (?: \s*:(?P<rest>.*) | (?:\s*\([^()\n]{{0,200}}\)|\s+on\s+[^\n]{{0,60}}|\s*\.\.\.[^\n]{{0,200}})?\s*$ )""", re.X)

#: Where the copy of the original message starts in a plain-text bounce or reply.
_COPY_MARKER = re.compile(r"""
    ^[ \t>]*(?:-+[ \t]*)?(?:below\s+this\s+line\s+is\s+a\s+copy\s+of\s+the\s+message
                 | this\s+is\s+a\s+copy\s+of\s+the\s+message
                 | (?:original|unsent|received|returned|undelivered)\s+message\s+(?:follows|headers)
                 | (?:the\s+)?(?:original\s+)?message\s+headers\s+(?:follow|are\s+below)
                 | (?:a\s+)?copy\s+of\s+(?:the\s+)?original\s+message
                 | begin\s+headers | below\s+is\s+a\s+copy\s+of\s+the\s+original\s+message
                 | original\s+message\s*-+ | original\s+message\s*$ )""", re.I | re.X | re.M)

#: Three or more consecutive header fields of a message (a returned original's), one of them a
#: field only a message has (Received, Return-Path, Message-ID, DKIM-Signature, ...). A field
#: starts with its name (or "> " quoting), a continuation line with white space: the two never
#: overlap, so the search stays linear.
_QUOTED_HEADERS = re.compile(r"""
    ^(?=(?:(?:>[ \t]?)*[A-Za-z][A-Za-z0-9-]{0,40}:[^\n]*\n(?:[ \t][^\n]*\n){0,20}){0,3}?
          (?:>[ \t]?)*(?:Received|Return-Path|Message-ID|DKIM-Signature|Authentication-Results|MIME-Version):)
    (?:(?:>[ \t]?)*[A-Za-z][A-Za-z0-9-]{0,40}:[^\n]*\n(?:[ \t][^\n]*\n){0,20}){3}""", re.M | re.X)

#: A line listing the failed recipients (Haraka: "Intended Recipients: <a@b>, <c@d>").
_RECIPIENTS_LINE = re.compile(
    r"^[ \t]*(?:intended\s+|failed\s+|undeliverable\s+)?recipients?(?:\(s\))?:[ \t]*(.{3,2000})$", re.I | re.M)

#: Local parts of the senders of bounces, never a failed recipient.
DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "double-bounce", "mail.daemon"}


class BounceMessage:
    """One parsed message and what the heuristics need from it."""

    def __init__(self, data: bytes) -> None:
        self.msg = email.message_from_bytes(data, policy=compat32)
        self.parts = _walk(self.msg)
        self.subject = decoded_header(self.msg, "Subject")[:1000]
        self.from_addrs = addresses_of(self.msg, "From")
        self.own: set[str] = set()
        for name in ("From", "To", "Cc", "Reply-To", "Sender", "Return-Path", "Delivered-To"):
            self.own.update(a.lower() for a in addresses_of(self.msg, name))
        text = _body_text(self.parts)
        marker = _COPY_MARKER.search(text)
        self.human = text[:marker.start()] if marker else text
        self.copy = text[text.find("\n", marker.end()) + 1:] if marker and "\n" in text[marker.end():] else ""
        if marker is None:
            # a copy of the original's header fields with no line announcing it: the text ends
            # where they start (their DKIM-Signature, Received, ... name no cause of the failure)
            quoted = _QUOTED_HEADERS.search(text[:MAX_TEXT])
            if quoted:
                self.human, self.copy = text[:quoted.start()], text[quoted.start():]
        self.original = self._original()
        if self.original is not None:
            for name in ("From", "Sender", "Return-Path", "Reply-To"):
                self.own.update(a.lower() for a in addresses_of(self.original, name))
        self.original_message_id, self.mailrelay_id = self._original_ids(text)
        self.recipient_tokens = self._recipient_tokens(data, text)
        self._human_blocks: dict[str, str] | None = None

    # -- the returned original ------------------------------------------------------------

    def _original(self) -> Message | None:
        for part in self.parts:
            ctype = part.get_content_type()
            if ctype in ("message/rfc822", "message/global"):
                payload = part.get_payload()
                if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                    return payload[0]
            elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers"):
                return _parse_headers(_part_text(part))
        if self.copy:
            headers = _parse_headers(self.copy.lstrip("\r\n"))
            if any(headers.get(n) is not None for n in ("Message-ID", "X-Mailrelay-ID", "From", "Subject")):
                return headers
        return None

    def _original_ids(self, text: str) -> tuple[str | None, str | None]:
        message_id = mailrelay_id = None
        if self.original is not None:
            message_id = _msgid(decoded_header(self.original, "Message-ID"))
            mailrelay_id = _mailrelay_id(decoded_header(self.original, "X-Mailrelay-ID"))
        if mailrelay_id is None:
            m = re.search(r"^[ \t>]*X-Mailrelay-ID:[ \t]*([0-9A-Fa-f]{20})\b", text, re.M | re.I)
            mailrelay_id = m.group(1).lower() if m else None
        if message_id is None and self.copy:
            m = re.search(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]{1,250}>)", self.copy, re.M | re.I)
            message_id = m.group(1) if m else None
        return message_id, mailrelay_id

    def _recipient_tokens(self, data: bytes, text: str) -> tuple[str, ...]:
        """Token-shaped strings in the raw message (headers, a message/rfc822 original),
        in its decoded text (quoted copies, encoded parts) and in the returned original's
        header fields; lower case, first seen first."""
        sources = [data.decode("latin-1"), text]
        if self.original is not None:
            sources.append("".join(f"{name}: {' '.join(str(value).split())}\n"
                                   for name, value in self.original.items()))
        tokens: dict[str, None] = {}
        for source in sources:
            for m in _TOKEN.finditer(source):
                tokens.setdefault(m.group(1).lower(), None)
                if len(tokens) >= MAX_TOKENS:
                    return tuple(tokens)
        return tuple(tokens)

    def report(self, kind: BounceType, recipient: str | None, **fields: Any) -> BounceReport:
        message_id = self.original_message_id
        if message_id is None and kind not in (HARD_BOUNCE, SOFT_BOUNCE, TRANSIENT, DNS_ERROR, BLOCKED):
            message_id = _msgid(decoded_header(self.msg, "In-Reply-To"))
        return BounceReport(type=kind, recipient=recipient, original_message_id=message_id,
                            mailrelay_id=self.mailrelay_id, recipient_tokens=self.recipient_tokens, **fields)

    def human_reason(self, recipient: str | None, dsn_blocks: list[Message]) -> str:
        """The reason the human-readable part gives for ``recipient``: its own paragraph's,
        else the whole text's best reply line unless that line names another recipient."""
        if self._human_blocks is None:
            self._human_blocks = recipient_blocks(self.human.splitlines()[:5000], self)
        lowered = (recipient or "").lower()
        for address, block in self._human_blocks.items():
            if address.lower() == lowered and block:
                own = best_reason(block)
                return own[0] if own else block
        reason = best_reason(self.human)
        if reason is None:
            return ""
        others = {a for b in dsn_blocks for a in find_addresses(decoded_header(b, "Final-Recipient"))} - {recipient}
        if any(other and other.lower() in reason[0].lower() for other in others):
            return ""
        return reason[0]

    def candidates(self, text: str) -> list[str]:
        out: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for a in find_addresses(text):
            if a not in out and a.lower() not in self.own and a.split("@")[0].lower() not in DAEMONS:
                out[a] = None
        return list(out)

    def failed_recipients(self) -> list[str]:
        """The addresses of X-Failed-Recipients (Exim, Gmail, Microsoft), in order."""
        failed: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for value in all_headers(self.msg, "X-Failed-Recipients"):
            failed.update(dict.fromkeys(find_addresses(value)))
        return list(failed)[:MAX_REPORTS]

    def listed_recipients(self) -> list[str]:
        """The addresses of a "Recipients: a, b" line (Haraka's "Intended Recipients:")."""
        m = _RECIPIENTS_LINE.search(self.human[:16384])
        return self.candidates(m.group(1))[:MAX_REPORTS] if m else []

    def original_recipients(self) -> list[str]:
        """The recipients the returned original names (To, Cc), when it is returned."""
        if self.original is None:
            return []
        out: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for name in ("To", "Cc"):
            out.update(dict.fromkeys(a for a in addresses_of(self.original, name) if a.lower() not in self.own))
        return list(out)


def _walk(msg: Message) -> list[Message]:
    """The message's parts in order, not descending into attached messages; bounded."""
    out: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and len(out) < MAX_PARTS:
        part, depth = stack.pop()
        out.append(part)
        if part.get_content_maintype() == "multipart" and depth < MAX_DEPTH:
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in reversed(payload[:MAX_PARTS]) if isinstance(p, Message))
    return out


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except Exception:  # unknown or non-text codec
        return data.decode("utf-8", "replace")


def _part_text(part: Message) -> str:
    """A leaf part's text: transfer encoding and charset decoded, at most MAX_TEXT characters."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        raw = part.get_payload()
        return raw[:MAX_TEXT] if isinstance(raw, str) else ""
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode(payload[:MAX_TEXT * 4], charset)[:MAX_TEXT]


class _HTMLText(html.parser.HTMLParser):
    BLOCKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "pre", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def _html_text(source: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(source[:MAX_TEXT])
        parser.close()
    except Exception:
        pass
    return re.sub(r"[ \t\xa0]+", " ", "".join(parser.out))


def _body_text(parts: list[Message]) -> str:
    """The plain text of the message's own text parts (HTML only when there is no plain text)."""
    plain, markup = [], []
    size = 0
    for part in parts:
        ctype = part.get_content_type()
        if ctype == "text/plain" and not part.is_multipart():
            text = _part_text(part)
            plain.append(text)
            size += len(text)
        elif ctype == "text/html" and not part.is_multipart():
            markup.append(_part_text(part))
        if size >= MAX_TEXT:
            break
    text = "\n".join(plain) if plain else "\n".join(_html_text(m) for m in markup[:4])
    return text.replace("\r\n", "\n").replace("\r", "\n")[:MAX_TEXT]


def decoded_header(msg: Message, name: str) -> str:
    """A header field's value, RFC 2047 decoded, as text ("" when absent)."""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, str):
        value = value[:MAX_TEXT]
    try:
        chunks = email.header.decode_header(value)
        text = "".join(_decode(c, cs) if isinstance(c, bytes) else c for c, cs in chunks)
    except Exception:
        text = str(value)
    return text[:MAX_TEXT]


def all_headers(msg: Message, name: str) -> list[str]:
    try:
        values = msg.get_all(name) or []
    except Exception:
        return []
    out = []
    for value in values[:MAX_REPORTS]:
        try:
            out.append(str(value)[:MAX_TEXT])
        except Exception:
            continue
    return out


def addresses_of(msg: Message, name: str) -> list[str]:
    out: list[str] = []
    for value in all_headers(msg, name)[:10]:
        try:
            pairs = email.utils.getaddresses([_header_value(value[:16384])])
        except Exception:
            pairs = []
        for _, addr in pairs[:50]:
            found = find_addresses(addr)
            if found and found[0] not in out:
                out.append(found[0])
    return out


def _header_value(value: str) -> str:
    try:
        return "".join(_decode(c, cs) if isinstance(c, bytes) else c for c, cs in email.header.decode_header(value))
    except Exception:
        return value


def _normalize_address(addr: str) -> str:
    local, _, domain = addr.rpartition("@")
    return f"{local}@{domain.rstrip('.').lower()}"


def find_addresses(text: str) -> list[str]:
    return [_normalize_address(m.group(1)) for m in _ADDRESS.finditer(text[:MAX_TEXT])]


def typed_address(value: str) -> str | None:
    """``rfc822; <user@example.org>`` -> ``user@example.org``."""
    found = find_addresses(strip_type(value))
    return found[0] if found else None


def strip_type(value: str) -> str:
    """A DSN field without its type (``smtp;``, ``dns;``, ``X-Postfix;``), on one line."""
    value = " ".join(value.split())
    m = re.match(r"[A-Za-z0-9-]{1,40}\s*;\s*", value)
    return value[m.end():] if m else value


def clean_reply(text: str) -> str:
    """A multi-line reply on one line: ``550-5.1.1 a 550-5.1.1 b`` -> ``550 5.1.1 a b``."""
    text = one_line(text)
    m = re.match(r"([245]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3})\s+)?", text)
    if not m:
        return text
    code, status = m.group(1), m.group(2)
    prefix = rf"\s{code}[ -](?:{re.escape(status)}\s+)?" if status else rf"\s{code}[ -]"
    rest = re.sub(prefix, " ", text[m.end():])
    return " ".join(f"{code} {status + ' ' if status else ''}{rest}".split())[:MAX_DIAGNOSTIC]


def _msgid(value: str) -> str | None:
    m = _MSGID.search(value or "")
    return m.group(0) if m else None


def _mailrelay_id(value: str) -> str | None:
    value = (value or "").strip().lower()
    return value if _ID.fullmatch(value) else None


def _parse_headers(text: str) -> Message:
    return HeaderParser(policy=compat32).parsestr(text[:MAX_TEXT], headersonly=True)


def field_blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    blocks: list[Message] = []
    texts: list[str] = []
    if isinstance(payload, list):
        for sub in payload[:MAX_REPORTS * 2]:
            if not isinstance(sub, Message):
                continue
            if len(sub.keys()):
                blocks.append(sub)
            body = sub.get_payload()
            if isinstance(body, str) and body.strip():
                texts.append(body)
    else:
        texts.append(_part_text(part))
    cte = decoded_header(part, "Content-Transfer-Encoding").strip().lower()
    if not blocks and texts and cte in ("base64", "quoted-printable"):
        # Some servers encode the report; decode it the way the email package decodes a body.
        carrier = Message()
        carrier["Content-Transfer-Encoding"] = cte
        carrier.set_payload("\n".join(texts))
        texts = [_part_text(carrier)]
    for text in texts:
        for chunk in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")[:MAX_TEXT])[:MAX_REPORTS * 2]:
            if chunk.strip():
                headers = _parse_headers(chunk.strip("\n") + "\n")
                if len(headers.keys()):
                    blocks.append(headers)
    return blocks


def best_reason(text: str) -> tuple[str, str | None, int | None] | None:
    """The line of ``text`` most likely to be the remote server's reply, with the following
    lines that continue it: (reason from the reply code on, enhanced status, reply code)."""
    lines = text[:65536].splitlines()
    best, best_score = -1, 0
    for i, line in enumerate(lines[:2000]):
        if len(line) > 2000:
            continue
        code_m = REPLY_START.search(line) or REPLY_AFTER.search(line)
        code = int(code_m.group(1)) if code_m and code_m.group(1)[0] in "45" else None
        status = ENHANCED_STATUS.search(line)
        if status and status.group(1) == "2":
            status = None
        score = (2 if code else 0) + (2 if status and code else 1 if status else 0) \
            + (1 if (code or status or len(line) < 300) and text_label(line) else 0)
        if score > best_score:
            best, best_score = i, score
    if best < 0:
        return None
    line = lines[best]
    code_m = REPLY_START.search(line) or REPLY_AFTER.search(line)
    code = int(code_m.group(1)) if code_m and code_m.group(1)[0] in "45" else None
    start = code_m.start(1) if code else 0
    parts = [line[start:]]
    indent = len(line) - len(line.lstrip())
    for follow in lines[best + 1:best + 8]:
        stripped = follow.strip()
        if not stripped:
            break
        continued = code is not None and re.match(rf"[\s#]*{code}[ -]", follow)
        if continued:
            parts.append(re.sub(rf"^[\s#]*{code}[ -](?:[245]\.\d{{1,3}}\.\d{{1,3}}\s+)?", "", follow))
        elif len(follow) - len(follow.lstrip()) > indent or (indent and len(follow) - len(follow.lstrip()) == indent
                                                             and not _BLOCK_START.match(follow)
                                                             and not REPLY_START.search(follow)):
            parts.append(stripped)
        else:
            break
    reason = clean_reply(" ".join(parts)).strip("'\"<> #")
    if reason.endswith(")") and reason.count(")") > reason.count("("):
        reason = reason[:-1]
    status_m = ENHANCED_STATUS.search(reason)
    status = normalize_status(status_m.group(0)) if status_m and status_m.group(1) != "2" else None
    return reason, status, code


def recipient_blocks(lines: list[str], bounce: BounceMessage) -> dict[str, str]:
    """Per-recipient paragraphs of a plain-text bounce: address -> the paragraph's text."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        m = _BLOCK_START.match(line) if len(line) < 1000 else None
        if m:
            addr = _normalize_address(m.group(1))
            if current is not None and blocks.get(addr) is current:
                current.append(line)  # the reply repeats the address (Postfix)
                continue
            if addr.lower() in bounce.own or addr.split("@")[0].lower() in DAEMONS:
                current = None
                continue
            current = blocks.setdefault(addr, [])
            if current:
                current.append("")
            rest = (m.group("rest") or "").strip()
            if rest:
                current.append(rest)
            continue
        if current is None:
            continue
        if not line.strip():
            if any(s.strip() for s in current):
                current = None
            continue
        if len(current) < 40:
            current.append(line)
    out = {}
    for addr, text in blocks.items():
        paragraphs = "\n".join(text).split("\n\n")
        # Prefer the paragraph with a reply code when the address appears twice (Exchange).
        scored = sorted(paragraphs, key=lambda p: -((best_reason(p) or ("", None, None))[2] is not None))
        out[addr] = scored[0] if scored else ""
    return out


def has_code(reason: tuple[str, str | None, int | None] | None) -> bool:
    return bool(reason and (reason[1] or reason[2]))
