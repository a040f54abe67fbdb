"""
address: the envelope's grammar: paths, mailboxes and parameters of MAIL and RCPT.

JOB
    Parses ``<path> params`` of a MAIL FROM or RCPT TO command
    (:func:`parse_path`, :func:`parse_params`) and checks a mailbox against
    RFC 5321 and RFC 6531 (:func:`validate_mailbox`). The server checks what
    clients send with it; the client checks the envelope it is about to send
    with the same function; the CLI checks addresses typed by an operator.

SECURITY
    Addresses come from untrusted clients. A mailbox has a local part of at
    most 64 octets (dot-atom or quoted string, UTF-8 allowed), a domain of at
    most 255 octets (labels, or an IPv4/IPv6 address literal), a path at most
    256 octets; no CR, LF, NUL, space or angle bracket outside a quoted local
    part. A source route is accepted and dropped. The regular expressions run
    in linear time.

STANDARDS
    RFC 5321 4.1.2 (Path, Mailbox, address literals, source routes) and
    4.5.3.1 (size limits), RFC 6531 (UTF-8 mailboxes), RFC 1870 / RFC 6152 /
    RFC 4954 (the ``esmtp-param`` grammar).

DIAGNOSTICS
    :class:`AddressError`, whose message says what is wrong in a few words
    (the server puts it in its 501 reply).

CONFIGURATION
    None.
"""

from __future__ import annotations

import ipaddress
import re

#: RFC 5321 4.5.3.1.1/2/3: local part, domain, path.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_ATEXT_UTF8 = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LOCAL_RE = re.compile(rf"^(?:{_ATEXT_UTF8}+(?:\.{_ATEXT_UTF8}+)*|{_QUOTED})$")
_LABEL = r"(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?)"
_DOMAIN_RE = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_PARAM_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?$")


class AddressError(ValueError):
    """An address that RFC 5321 does not allow; the message says why."""


def _closing_bracket(text: str) -> int:
    """The index of the '>' that closes a path starting with '<', skipping quoted strings; -1."""
    i, quoted = 1, False
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    return -1


def parse_path(text: str, *, allow_null: bool) -> tuple[str, str]:
    """
    Split ``<path> params`` into (mailbox, params). Accepts ``<>`` (when
    ``allow_null``), strips an RFC 5321 source route, tolerates a missing
    pair of angle brackets. Raises :class:`AddressError`.
    """
    text = text.lstrip(" ")
    if text.startswith("<"):
        i = text.find(">") if '"' not in text else _closing_bracket(text)
        if i == -1:
            raise AddressError("missing '>'")
        path, rest = text[1:i], text[i + 1:]
        if rest and not rest.startswith(" "):
            raise AddressError("garbage after '>'")
    else:
        path, _, rest = text.partition(" ")
    if len(path) + 2 > MAX_PATH:
        raise AddressError("path longer than 256 octets")
    if path.startswith("@"):  # source route: <@a,@b:user@host> (RFC 5321 4.1.2)
        route, sep, path = path.partition(":")
        if not sep:
            raise AddressError("bad source route")
    if path == "":
        if allow_null:
            return "", rest.strip(" ")
        raise AddressError("empty address")
    validate_mailbox(path)
    return path, rest.strip(" ")


def validate_mailbox(mailbox: str) -> None:
    """Check ``local@domain`` against RFC 5321 / RFC 6531; raise AddressError."""
    local, at, domain = mailbox.rpartition("@")
    if not at or not local:
        raise AddressError("address must be local-part@domain")
    if len(local.encode()) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    if len(domain.encode()) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    if not _LOCAL_RE.match(local):
        raise AddressError("invalid local part")
    if domain.startswith("[") and domain.endswith("]"):
        literal = domain[1:-1]
        try:
            if literal.lower().startswith("ipv6:"):
                ipaddress.IPv6Address(literal[5:])
            else:
                ipaddress.IPv4Address(literal)
        except ValueError:
            raise AddressError("invalid address literal") from None
    elif not _DOMAIN_RE.match(domain):
        raise AddressError("invalid domain")


def parse_params(text: str) -> dict[str, str | None]:
    """``SIZE=100 BODY=8BITMIME SMTPUTF8`` -> {"SIZE": "100", ...}; raises AddressError."""
    params: dict[str, str | None] = {}
    for item in text.split():
        match = _PARAM_RE.match(item)
        if not match:
            raise AddressError(f"bad parameter {item!r}")
        params[match.group(1).upper()] = match.group(2)
    return params
