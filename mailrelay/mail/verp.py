"""
verp: recipient tokens and VERP return paths, made and checked with an HMAC.

JOB
    :class:`VERP` encodes one delivery job (message id and recipient index) into a
    token: lowercase base32 of the 10-byte message id, the 2-byte recipient index and
    the first MAC_BYTES bytes of their HMAC-SHA256 under the secret (32 characters).
    The token is the recipient's secret: it goes into the copy's return path
    ``b+<token>@<bounce domain>`` (:meth:`VERP.address`) and into the
    ``X-Mailrelay-Recipient-Token`` header field put on top of the copy at delivery
    (:meth:`VERP.header`); :meth:`VERP.verify_token` and :meth:`VERP.decode` turn a
    token or a VERP address found in a bounce back into the job, when its MAC verifies.
    Pure: no I/O, no Redis; the secret is given (``[bounces] verp_secret``, or the one
    kept in Redis, read by :func:`mailrelay.services.bounces.load_verp`).

SECURITY
    Tokens and addresses come back from the Internet and are untrusted: a token is
    accepted only when its MAC verifies (compared in constant time,
    :func:`hmac.compare_digest`) and it has the exact length; case changes made by
    mail servers on the way are undone (base32 is decoded case-insensitively). 64 bits
    of MAC: guessing a valid token for a chosen message takes about 2^63 tries. The
    token is per recipient because a co-recipient sees the message's headers; it is
    never DKIM-signed (added at delivery, after signing).

STANDARDS
    RFC 5321 (return path, 64-octet local part: the VERP one has 34), RFC 4648
    (base32), RFC 2104 (HMAC).

DIAGNOSTICS
    None: an invalid token or address decodes to None, never raises.

CONFIGURATION
    None read here: the bounce domain (``[bounces] domain``) and the secret are given
    by the caller. Owns no file or Redis data.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from mailrelay.mail.bouncemessage import RECIPIENT_TOKEN_HEADER, VERP_PREFIX

#: Mailboxes of the bounce domain for complaint feedback loops and RFC 2142 roles.
FEEDBACK_MAILBOXES = ("fbl", "abuse", "postmaster")
#: Bytes of HMAC-SHA256 kept in a token (64 bits).
MAC_BYTES = 8

__all__ = ["FEEDBACK_MAILBOXES", "MAC_BYTES", "RECIPIENT_TOKEN_HEADER", "VERP", "VERP_PREFIX"]


class VERP:
    """Encodes delivery jobs into recipient tokens and return paths and back (case-insensitive,
    HMAC-checked)."""

    def __init__(self, domain: str, secret: bytes) -> None:
        self.domain = domain.lower()
        self.secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()[:MAC_BYTES]

    def token(self, message_id: str, rcpt: int) -> str:
        """Lowercase base32 of id, recipient index and MAC (32 characters): the recipient's secret."""
        payload = bytes.fromhex(message_id) + rcpt.to_bytes(2, "big")
        return base64.b32encode(payload + self._mac(payload)).decode().lower()

    def address(self, message_id: str, rcpt: int) -> str:
        """``b+<token>@domain`` (34-octet local part)."""
        return f"{VERP_PREFIX}{self.token(message_id, rcpt)}@{self.domain}"

    def header(self, message_id: str, rcpt: int) -> bytes:
        """The header field put on top of the recipient's copy at delivery (never DKIM-signed)."""
        return f"{RECIPIENT_TOKEN_HEADER}: {self.token(message_id, rcpt)}\r\n".encode()

    def verify_token(self, token: str) -> tuple[str, int] | None:
        """(message id, recipient index) of a token whose MAC verifies, else None."""
        token = token.upper()
        try:
            raw = base64.b32decode(token + "=" * (-len(token) % 8))
        except (binascii.Error, ValueError):
            return None
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(payload) != 12 or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        return payload[:10].hex(), int.from_bytes(payload[10:], "big")

    def decode(self, address: str) -> tuple[str, int] | None:
        """(message id, recipient index) for a valid VERP address of our domain, else None."""
        local, _, domain = address.rpartition("@")
        if domain.lower() != self.domain or not local.lower().startswith(VERP_PREFIX):
            return None
        return self.verify_token(local[len(VERP_PREFIX):])

    def is_feedback_mailbox(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        return domain.lower() == self.domain and local.lower() in FEEDBACK_MAILBOXES
