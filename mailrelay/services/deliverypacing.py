"""
deliverypacing: how fast this daemon sends to each destination domain.

JOB
    :class:`DomainPacing` keeps what this daemon knows about each destination domain
    (:class:`DomainState`: its connections, their limit, a pause, the recent sends) and
    applies the two brakes on it: the operator's ``rate_limit_per_domain`` (a message
    is sent only while fewer than N went out in the period; otherwise the domain pauses
    until the oldest leaves the window) and the destination's own requests to slow down
    (a 421 or 4.7.x reply, see :func:`mailrelay.services.deliveryattempt.is_throttling`):
    the domain pauses THROTTLE_PAUSE seconds, doubling on a repeat up to THROTTLE_MAX,
    its connections are halved, and after the pause and a calm period as long again
    they are doubled back step by step up to ``concurrency_per_domain``. Each pause ends by waking
    the service's queue scan. The limits are per daemon: several daemons sending to one
    domain each keep their own. Owned by
    :class:`mailrelay.services.delivery.DeliveryService`, which schedules connections by
    this state; :mod:`mailrelay.services.deliverytransactions` asks it before each
    message.

SECURITY
    A destination's reply can only slow delivery to its own domain down (never below
    one connection, never paused longer than THROTTLE_MAX); the reply text plays no
    part.

STANDARDS
    RFC 5321 4.2.3 and 3.8 (421: service not available, closing), RFC 3463 (4.7.x:
    security or policy status, as used by large providers for rate limiting).

DIAGNOSTICS
    ``delivery: <domain> is throttling us: pausing <s>s, at most <n> connection(s)``
    (info).

CONFIGURATION
    ``[delivery]``: rate_limit_per_domain, concurrency_per_domain. No Redis data: the
    state is this process's.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from mailrelay.config import DeliveryConfig
from mailrelay.services.deliveryattempt import log

#: A throttled destination pauses this long at first, doubling up to THROTTLE_MAX.
THROTTLE_PAUSE = 60.0
THROTTLE_MAX = 900.0


@dataclass
class DomainState:
    """What this daemon knows about one destination domain."""

    active: int = 0
    limit: int = 10
    paused_until: float = 0.0
    throttle_pause: float = THROTTLE_PAUSE
    last_throttle: float = 0.0
    sent_times: deque = field(default_factory=deque)
    idle_waiters: list = field(default_factory=list)


class DomainPacing:
    """Per destination domain: its state, its rate limit, and the throttling it asks for."""

    def __init__(self, settings: DeliveryConfig, clock: Any, wake: Callable[[], Any]) -> None:
        self.settings = settings
        self.clock = clock
        #: Called when a pause ends or a domain may open more connections: scan the queue.
        self.wake = wake
        self.domains: dict[str, DomainState] = {}

    def domain(self, name: str) -> DomainState:
        state = self.domains.get(name)
        if state is None:
            state = self.domains[name] = DomainState(limit=self.settings.concurrency_per_domain)
        return state

    def allows(self, domain: str, state: DomainState) -> bool:
        """Whether the rate limit lets one more message go to ``domain`` now (if not, pause it)."""
        rate = self.settings.rate_limit_per_domain.get(domain)
        if rate is None:
            return True
        now = self.clock.seconds()
        times = state.sent_times
        while times and times[0] <= now - rate.period:
            times.popleft()
        if len(times) < rate.count:
            return True
        state.paused_until = times[0] + rate.period
        self.clock.callLater(state.paused_until - now, self.wake)
        return False

    def sent(self, state: DomainState) -> None:
        """A message went out: it counts against the rate limit."""
        state.sent_times.append(self.clock.seconds())

    def throttle(self, domain: str, state: DomainState) -> None:
        """Pause the domain, halve its connections; a repeat within the calm period pauses longer."""
        now = self.clock.seconds()
        pause = state.throttle_pause
        state.limit = max(1, state.limit // 2)
        state.paused_until = now + pause
        state.last_throttle = now
        log.info("delivery: {domain} is throttling us: pausing {pause:.0f}s, at most {limit} connection(s)",
                 domain=domain, pause=pause, limit=state.limit)
        state.throttle_pause = min(pause * 2, THROTTLE_MAX)
        self.clock.callLater(pause, self.wake)
        # After the pause, run with fewer connections for a calm period as long again.
        self.clock.callLater(2 * pause, self._recover, domain, now)

    def _recover(self, domain: str, throttled_at: float) -> None:
        """Restore concurrency step by step once a calm period passed without throttling."""
        state = self.domain(domain)
        if state.last_throttle != throttled_at:
            return  # throttled again meanwhile: that throttle schedules its own recovery
        state.limit = min(self.settings.concurrency_per_domain, state.limit * 2)
        state.throttle_pause = THROTTLE_PAUSE
        if state.limit < self.settings.concurrency_per_domain:
            self.clock.callLater(THROTTLE_PAUSE, self._recover, domain, throttled_at)
        self.wake()
