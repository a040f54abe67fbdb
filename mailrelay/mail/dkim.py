"""
dkimsign: DKIM keys, their sealing at rest, and signing (no I/O but reading a key file, no Redis).

JOB
    The cryptography of the sender domains (:mod:`mailrelay.services.domains` keeps the registry):
    generates and loads DKIM keys (RSA 2048 bits ``rsa-sha256``, Ed25519
    ``ed25519-sha256``), gives the ``p=`` value of their DNS record, seals a private key
    for storage in Redis (AES-256-GCM under a key derived by scrypt) and opens it again,
    and signs a message: relaxed/relaxed canonicalisation (dkimpy's), the fields of
    ``SIGNED_HEADERS`` as often as they occur, then ``OVERSIGNED`` once more, the private-key
    operation through ``cryptography``. ``X-Mailrelay-*`` fields are never signed. The
    header fields are split as submission splits them (:mod:`mailrelay.mail.message`), so the
    signature covers exactly the fields submission kept. Callers run signing in a thread.

SECURITY
    A sealed key is bound to its domain and selector (the AES-GCM authenticated data): it
    cannot be moved to another domain. The key-encryption key is scrypt (n=2^14, r=8, p=1) of
    ``[dkim] key_encryption_key`` with a random salt per key, cached in memory per salt. RSA
    keys under 1024 bits are refused (RFC 8301). Plaintext keys exist only in memory.

STANDARDS
    RFC 6376 (DKIM), RFC 8301 (RSA key sizes, rsa-sha256 only), RFC 8463 (Ed25519-SHA256),
    RFC 5958 (PKCS#8, the sealed form).

DIAGNOSTICS
    ``ValueError`` with one line for people for a key file that cannot be used (unreadable,
    not a private key, RSA too short, another algorithm); ``KeyDecryptError`` when a sealed
    key does not open with the configured secret; ``DomainError`` ("cannot store private keys
    in Redis: set [dkim] key_encryption_key ...") when there is no secret to seal with.

CONFIGURATION
    None read here: callers pass ``[dkim] key_encryption_key`` and ``[[domains]] key_file``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

from mailrelay.mail.message import split_header

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
#: The k= tag of each algorithm's DNS record.
KEY_TYPES = {RSA: "rsa", ED25519: "ed25519"}
RSA_BITS = 2048
#: RFC 8301: verifiers must refuse RSA keys under 1024 bits.
MIN_RSA_BITS = 1024

#: Header fields signed when present (each instance), in this order; then OVERSIGNED again.
SIGNED_HEADERS = ("from", "to", "cc", "subject", "date", "message-id", "mime-version",
                  "content-type", "content-transfer-encoding", "reply-to")
OVERSIGNED = ("from",)

#: scrypt parameters of the key-encryption key (16 MiB, about 50 ms: once per stored key).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1


class DomainError(Exception):
    """A sender-domain operation cannot be done; the message is one line for people."""


class KeyDecryptError(DomainError):
    """A stored private key cannot be decrypted with the configured key_encryption_key."""


# -- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedKey:
    """A private key in memory (a ``cryptography`` object) and what DNS must publish for it."""

    algorithm: str
    private: Any
    bits: int

    @property
    def public(self) -> str:
        return public_key_value(self.private)


def key_algorithm(private: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if isinstance(private, rsa.RSAPrivateKey):
        return RSA
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return ED25519
    raise ValueError(f"a {type(private).__name__} cannot sign DKIM (RSA or Ed25519 only)")


def generate_key(algorithm: str) -> LoadedKey:
    """A new RSA-2048 or Ed25519 private key."""
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == RSA:
        return LoadedKey(RSA, rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS), RSA_BITS)
    return LoadedKey(ED25519, ed25519.Ed25519PrivateKey.generate(), 256)


def public_key_value(private: Any) -> str:
    """The ``p=`` value: base64 of the SubjectPublicKeyInfo (RSA) or of the raw 32 octets
    (Ed25519, RFC 8463 section 4.2)."""
    from cryptography.hazmat.primitives import serialization

    public = private.public_key()
    if key_algorithm(private) == ED25519:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        raw = public.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(raw).decode("ascii")


def private_der(private: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _checked(private: Any) -> LoadedKey:
    algorithm = key_algorithm(private)
    bits = private.key_size if algorithm == RSA else 256
    if algorithm == RSA and bits < MIN_RSA_BITS:
        raise ValueError(f"an RSA key of {bits} bits is too short (RFC 8301: at least "
                         f"{MIN_RSA_BITS}; 2048 advised)")
    return LoadedKey(algorithm, private, bits)


def load_key_file(path: str) -> LoadedKey:
    """A PEM private key file (RSA or Ed25519, unencrypted). Raises ValueError saying why not."""
    from cryptography.hazmat.primitives import serialization

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is not an unencrypted PEM private key ({reason})") from None
    except Exception as e:  # cryptography raises UnsupportedAlgorithm and friends
        raise ValueError(f"{path}: unusable key ({type(e).__name__}: {e})") from None
    return _checked(private)


def load_der_key(der: bytes) -> LoadedKey:
    from cryptography.hazmat.primitives import serialization

    return _checked(serialization.load_der_private_key(der, password=None))


def dkim_txt_value(algorithm: str, public: str) -> str:
    """The DKIM key record's text, e.g. ``v=DKIM1; k=rsa; p=MIIB...``."""
    return f"v=DKIM1; k={KEY_TYPES[algorithm]}; p={public}"


# -- encryption at rest -------------------------------------------------------------------

_KEK_CACHE: dict[bytes, bytes] = {}


def _kek(secret: str, salt: bytes) -> bytes:
    """The AES key for ``salt``: scrypt of the configured secret (cached: scrypt is slow on purpose)."""
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    cache_key = hashlib.sha256(salt + b"\0" + secret.encode()).digest()
    key = _KEK_CACHE.get(cache_key)
    if key is None:
        key = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret.encode())
        _KEK_CACHE[cache_key] = key
    return key


def _aad(domain: str, selector: str) -> bytes:
    return f"mailrelay dkim key {domain} {selector}".encode()


def encrypt_private_key(secret: str, der: bytes, domain: str, selector: str) -> dict[str, Any]:
    """The stored form of a private key: AES-256-GCM under scrypt(secret, random salt)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not secret:
        raise DomainError("cannot store private keys in Redis: set [dkim] key_encryption_key in "
                          "the configuration (the same on every daemon), or declare the domain "
                          "with a key file in [[domains]]")
    salt, nonce = os.urandom(16), os.urandom(12)
    sealed = AESGCM(_kek(secret, salt)).encrypt(nonce, der, _aad(domain, selector))
    b64 = lambda data: base64.b64encode(data).decode("ascii")  # noqa: E731
    return {"v": 1, "cipher": "AES-256-GCM", "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R,
            "p": SCRYPT_P, "salt": b64(salt), "nonce": b64(nonce), "data": b64(sealed)}


def decrypt_private_key(secret: str, sealed: dict[str, Any], domain: str, selector: str) -> bytes:
    """The PKCS#8 DER of a stored key; KeyDecryptError when the secret is missing or wrong."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not secret:
        raise KeyDecryptError(f"the key of {domain} (selector {selector}) is stored encrypted "
                              "and [dkim] key_encryption_key is not set")
    if sealed.get("v") != 1 or sealed.get("kdf") != "scrypt":
        raise KeyDecryptError(f"the key of {domain} (selector {selector}) is stored in an "
                              "unknown format")
    try:
        salt = base64.b64decode(sealed["salt"])
        nonce = base64.b64decode(sealed["nonce"])
        data = base64.b64decode(sealed["data"])
        return AESGCM(_kek(secret, salt)).decrypt(nonce, data, _aad(domain, selector))
    except (InvalidTag, KeyError, ValueError):
        raise KeyDecryptError(f"cannot decrypt the key of {domain} (selector {selector}): "
                              "[dkim] key_encryption_key is not the one it was stored with") from None


# -- signing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """What one signature needs: d=, s=, the algorithm and the private key object."""

    domain: str
    selector: str
    algorithm: str
    private: Any


def _headers_and_body(message: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The header fields as dkimpy takes them ((name, value after the colon)), and the body.

    Split as submission splits (mailrelay.mail.message), so the signature covers exactly the
    fields that submission kept."""
    fields, rest = split_header(message)
    headers = []
    for f in fields:
        name, _, value = f.raw.partition(b":")
        headers.append((name, value))
    body = rest[2:] if rest.startswith(b"\r\n") else rest
    return headers, body


def signed_header_names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list: each field of SIGNED_HEADERS as often as present, then OVERSIGNED once more."""
    present = [name.strip().lower() for name, _ in headers]
    include: list[bytes] = []
    for name in SIGNED_HEADERS:
        include += [name.encode()] * present.count(name.encode())
    return include + [name.encode() for name in OVERSIGNED]


def _fold_tags(tags: list[str]) -> bytes:
    """``DKIM-Signature: tag; tag; ...`` folded at tag boundaries, b= last, on its own line."""
    lines: list[str] = []
    current = "DKIM-Signature:"
    for tag in tags:
        if tag.startswith("b=") or (len(current) + 1 + len(tag) > 78 and current.strip()):
            lines.append(current)
            current = "\t" + tag
        else:
            current += " " + tag
    lines.append(current)
    return "\r\n".join(lines).encode("ascii")


def sign_message(message: bytes, keys: list[SigningKey], timestamp: int | None = None) -> bytes:
    """
    The DKIM-Signature header fields (one per key, CRLF-terminated) to put on top of
    ``message`` (CRLF line ends). Relaxed/relaxed canonicalisation by dkimpy; the signature by
    ``cryptography``. Thread-safe; CPU-bound: run it off the reactor.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils
    from dkim import hash_headers
    from dkim.canonicalization import CanonicalizationPolicy

    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    headers, body = _headers_and_body(message)
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest()).decode()
    include = signed_header_names(headers)
    canonical = policy.canonicalize_headers(headers)
    stamp = int(time.time()) if timestamp is None else timestamp
    out = []
    for key in keys:
        tags = ["v=1;", f"a={key.algorithm};", "c=relaxed/relaxed;", f"d={key.domain};",
                f"s={key.selector};", f"t={stamp};", "h=" + ":".join(n.decode() for n in include) + ";",
                f"bh={body_hash};", "b="]
        unsigned = _fold_tags(tags)
        name, _, value = unsigned.partition(b":")
        hasher = hashlib.sha256()
        hash_headers(hasher, policy, canonical, list(include), (name, value), {})
        digest = hasher.digest()
        if key.algorithm == RSA:
            signature = key.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        else:  # RFC 8463: Ed25519 over the SHA-256 hash of the canonicalised data
            signature = key.private.sign(digest)
        b64 = base64.b64encode(signature).decode("ascii")
        folded = "\r\n\t".join(b64[i:i + 72] for i in range(0, len(b64), 72))
        out.append(unsigned + folded.encode("ascii") + b"\r\n")
    return b"".join(out)
