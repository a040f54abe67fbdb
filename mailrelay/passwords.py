"""
Password hashes for SMTP AUTH users: scrypt (``hashlib.scrypt``), salted.

The stored form is ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>`` with the
salt and hash in unpadded base64, the format passlib also reads.

:func:`check_password` runs :func:`verify_password` in the reactor's thread pool,
at most :data:`MAX_CONCURRENT_CHECKS` at once for the whole process; further
checks wait their turn (in order) without blocking the reactor. Each check takes
about 16 MiB and 50 ms of one core: unbounded, a burst of AUTH on a cold cache
ran one per pool thread (up to 10) and took the daemon from 60 to 220 MB.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re

from twisted.internet import defer, threads

#: scrypt cost: N = 2**14, r = 8, p = 1 (about 16 MiB and 50 ms per check).
DEFAULT_LOG_N = 14
DEFAULT_R = 8
DEFAULT_P = 1

#: scrypt checks that may run at once in the process; the others queue. Two use
#: both cores of a small machine and bound the memory to about 32 MiB.
MAX_CONCURRENT_CHECKS = 2
_checks = defer.DeferredSemaphore(MAX_CONCURRENT_CHECKS)

#: The key derivation; a module attribute so that tests can observe the calls.
_scrypt = hashlib.scrypt

_HASH_RE = re.compile(
    r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$"
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, log_n: int = DEFAULT_LOG_N) -> str:
    """A new salted scrypt hash of ``password``."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**log_n, r=DEFAULT_R,
                            p=DEFAULT_P, maxmem=2**26, dklen=32)
    return f"$scrypt$ln={log_n},r={DEFAULT_R},p={DEFAULT_P}${_b64(salt)}${_b64(digest)}"


def is_password_hash(text: str) -> bool:
    """Whether ``text`` looks like a hash made by :func:`hash_password`."""
    return _HASH_RE.match(text) is not None


def verify_password(password: str | bytes, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed``. CPU-heavy: call it off the reactor."""
    match = _HASH_RE.match(hashed)
    if match is None:
        return False
    log_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    salt, expected = _unb64(match.group(4)), _unb64(match.group(5))
    if isinstance(password, str):
        password = password.encode()
    try:
        digest = _scrypt(password, salt=salt, n=2**log_n, r=r, p=p,
                         maxmem=2**27, dklen=len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def check_password(password: str | bytes, hashed: str) -> "defer.Deferred[bool]":
    """:func:`verify_password` off the reactor, at most MAX_CONCURRENT_CHECKS at once."""
    return _checks.run(threads.deferToThread, verify_password, password, hashed)
