"""
passwords: password hashes for SMTP AUTH users: scrypt (``hashlib.scrypt``), salted.

JOB
    Makes (:func:`hash_password`, for ``mailrelay hash-password``), recognises
    (:func:`is_password_hash`, for the config check) and checks
    (:func:`verify_password`) password hashes. The stored form is
    ``$scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt>$<hash>`` with the salt and hash
    in unpadded base64, the format passlib also reads.

    :class:`PasswordChecker` (a service, started and stopped with the daemon)
    runs :func:`verify_password` in a thread pool of its own with
    :data:`MAX_CONCURRENT_CHECKS` threads; further checks wait their turn (in
    order) without blocking the reactor.

SECURITY
    The passwords checked come from SMTP clients (AUTH) and are untrusted;
    the hashes come from the operator's config and are trusted. Each check
    takes about 16 MiB and 50 ms of one core, and glibc keeps a malloc arena,
    grown to that size, for every thread that ever ran one: run in the
    reactor's pool (up to 10 threads), a flood of AUTH took the daemon from
    64 to 230 MB for good. Two threads bound that to about 32 MiB. A hash
    whose cost needs more than 128 MiB (``maxmem``) matches nothing. Digests
    are compared in constant time (``hmac.compare_digest``).

    :func:`decoy_hash` makes a hash nobody's password matches, with the cost
    of the real ones: checking an unknown user's password against it costs
    what a wrong password of a known user costs, so the time of the answer
    does not tell whether a user exists.

STANDARDS
    RFC 7914 (scrypt), RFC 4648 (base64, unpadded).

DIAGNOSTICS
    Logs nothing. Every check is counted in ``mailrelay_password_checks_total``
    on ``/metrics``. A malformed hash or a password that does not match gives
    ``False``; :meth:`PasswordChecker.check` on a stopped checker fails with
    ``RuntimeError("password checks are stopped")``.

CONFIGURATION
    None read here: the hashes are ``[submission] users``, validated by
    :mod:`mailrelay.config` with :func:`is_password_hash`. Owns no file or
    Redis data.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import os
import re
from typing import Iterable

from twisted.application import service
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from mailrelay.metrics import PASSWORD_CHECKS

#: scrypt cost: N = 2**14, r = 8, p = 1 (about 16 MiB and 50 ms per check).
DEFAULT_LOG_N = 14
DEFAULT_R = 8
DEFAULT_P = 1

#: Threads that run scrypt checks (so: checks at once in the process); the others
#: queue. Two use both cores of a small machine and bound the memory to about 32 MiB.
MAX_CONCURRENT_CHECKS = 2

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


def decoy_hash(like: Iterable[str]) -> str:
    """
    A hash no password matches (random salt and digest) with the cost parameters, salt
    and digest lengths most of the hashes in ``like`` have (the defaults when none is
    valid). Users whose hashes have other parameters can still be told apart by timing:
    hash every password with the same cost.
    """
    shapes: collections.Counter[tuple[int, int, int, int, int]] = collections.Counter()
    for hashed in like:
        match = _HASH_RE.match(hashed)
        if match is not None:
            log_n, r, p = (int(match.group(i)) for i in (1, 2, 3))
            shapes[(log_n, r, p, len(_unb64(match.group(4))), len(_unb64(match.group(5))))] += 1
    if shapes:
        # the most common; among equals, the costliest
        (log_n, r, p, salt_len, digest_len), _ = max(shapes.items(), key=lambda s: (s[1], s[0]))
    else:
        log_n, r, p, salt_len, digest_len = DEFAULT_LOG_N, DEFAULT_R, DEFAULT_P, 16, 32
    return f"$scrypt$ln={log_n},r={r},p={p}${_b64(os.urandom(salt_len))}${_b64(os.urandom(digest_len))}"


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


class PasswordChecker(service.Service):
    """Runs :func:`verify_password` off the reactor in a pool of ``threads`` threads."""

    name = "passwords"

    def __init__(self, threads: int = MAX_CONCURRENT_CHECKS) -> None:
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="scrypt")

    def startService(self) -> None:
        service.Service.startService(self)
        self.pool.start()

    def stopService(self) -> None:
        service.Service.stopService(self)
        self.pool.stop()  # waits for the checks under way (at most one per thread)

    def check(self, password: str | bytes, hashed: str) -> "defer.Deferred[bool]":
        """Whether ``password`` matches ``hashed``, computed in the pool (queued when busy)."""
        if not self.running:
            return defer.fail(RuntimeError("password checks are stopped"))
        from twisted.internet import reactor

        return threads.deferToThreadPool(reactor, self.pool, _counted_verify, password, hashed)


def _counted_verify(password: str | bytes, hashed: str) -> bool:
    PASSWORD_CHECKS.inc()
    return verify_password(password, hashed)
