"""
ratelimits: submission throttles shared by every daemon: per-user sending rate, SMTP AUTH failures.

JOB
    :meth:`RateLimitStore.hit_user_rate` counts a message for a user in a fixed window and
    says whether it is over ``[submission]``'s limit; :meth:`RateLimitStore.claim_auth_check`
    counts an SMTP AUTH check of a client address as a failure *before* it runs (so
    parallel guesses are counted) unless the client is over its limit, and
    :meth:`RateLimitStore.refund_auth_check` gives the count back when the check succeeds.
    (Duplicate submissions, ``[submission] dedupe_window``, are refused by the enqueue
    script: mailrelay.store.queue.)

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P rate:user:<user>:<window>``  STRING per-user sending counter of one window
                                     (expires with it).
    ``P auth:fail:<client>``         ZSET   SMTP AUTH checks counted as failures (refunded
                                     on success) of a client address (an IPv6 /64), one
                                     member per check, by time (ms); expires after
                                     ``[submission] auth_failures_per_ip``'s period.
    Scripts: rate.lua, auth_claim.lua.

SECURITY
    The AUTH throttle is shared by all daemons, so a client cannot multiply its guesses
    by spreading them over the cluster; its claim is atomic (no race between checking and
    counting).

STANDARDS
    RFC 4954 (SMTP AUTH), whose checks are throttled here.

DIAGNOSTICS
    StorageUnavailable (``Redis did not answer in time``) when Redis does not answer
    within ``[redis] timeout``: submission then answers with a temporary failure.

CONFIGURATION
    ``[submission]`` rate limits and ``auth_failures_per_ip`` (passed by submission);
    ``[redis] timeout``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from twisted.internet import defer

from mailrelay.store.base import StoreBase
from mailrelay.store.errors import StorageUnavailable
from mailrelay.store.scripts import SCRIPTS

AUTH_CLAIM_SCRIPT = SCRIPTS["auth_claim"]
RATE_SCRIPT = SCRIPTS["rate"]


@dataclass(frozen=True)
class AuthClaim:
    """:meth:`Storage.claim_auth_check`: the claim's token, or None and the seconds to wait."""

    token: str | None
    retry_after: float


class RateLimitStore(StoreBase):
    """Per-user sending rates and the SMTP AUTH failure throttle."""

    async def hit_user_rate(self, user: str, limit: int, period: float) -> bool:
        """Count one message for ``user``; False when over ``limit`` per ``period``."""
        period_ms = int(period * 1000)
        window = int(time.time() * 1000 // period_ms)
        try:
            allowed = await self._timed(
                self._eval(RATE_SCRIPT, [self.keys.user_rate(user, window)], [limit, period_ms]),
                self.timeout)
        except defer.TimeoutError:
            raise StorageUnavailable("Redis did not answer in time") from None
        return int(allowed) == 1

    async def claim_auth_check(self, client: str, limit: int, period: float) -> AuthClaim:
        """
        Count one SMTP AUTH check of ``client`` as a failure before it runs, unless
        ``client`` already has ``limit`` within the last ``period`` seconds (on any daemon).
        A check that succeeds gives its count back (:meth:`refund_auth_check`).
        """
        token = os.urandom(8).hex()
        try:
            wait_ms = await self._timed(
                self._eval(AUTH_CLAIM_SCRIPT, [self.keys.auth_failures(client)],
                           [self.now_ms(), int(period * 1000), limit, token]),
                self.timeout)
        except defer.TimeoutError:
            raise StorageUnavailable("Redis did not answer in time") from None
        if int(wait_ms) > 0:
            return AuthClaim(None, int(wait_ms) / 1000)
        return AuthClaim(token, 0.0)

    async def refund_auth_check(self, client: str, token: str) -> None:
        """A check claimed by :meth:`claim_auth_check` succeeded: it is no failure."""
        await self._timed(self._call("ZREM", self.keys.auth_failures(client), token), self.timeout)
