"""
deliveryattempt: what one delivery attempt is and how it ends (no I/O).

JOB
    The words the delivery modules share: the states an attempt ends a job in
    (delivered, bounced, deferred, expired, suppressed), the :class:`Route` it took,
    :class:`AttemptFailed` (the whole attempt failed before per-recipient replies: DNS,
    connection, TLS), one job's :class:`Outcome` as it is recorded and logged, and the
    reading of a recipient's SMTP reply: its state (:func:`state_for`), its event
    detail (:func:`describe`), its one-line form (:func:`reply_line`) and whether the
    destination asks us to slow down (:func:`is_throttling`). Used by
    :mod:`mailrelay.services.delivery` and its parts
    (:mod:`~mailrelay.services.deliveryroutes`,
    :mod:`~mailrelay.services.deliverytransactions`,
    :mod:`~mailrelay.services.deliverypacing`,
    :mod:`~mailrelay.services.deliveryoutcomes`,
    :mod:`~mailrelay.services.deliverynotices`).

SECURITY
    A remote server's reply is untrusted: only its code (and enhanced code) decides the
    state; its text is carried verbatim into the event and the log line, never
    interpreted.

STANDARDS
    RFC 5321 4.2 (reply codes: 2xx delivered, 5xx bounced, other deferred), RFC 3463
    (enhanced status codes: 4.7.x asks the client to slow down).

DIAGNOSTICS
    None of its own; it holds the logger every delivery module writes with (namespace
    ``mailrelay.services.delivery``) and the status words of the per-recipient log line
    of :mod:`mailrelay.services.deliveryoutcomes` (``STATUS_WORDS``).

CONFIGURATION
    None. No Redis data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from twisted.logger import Logger

from mailrelay.smtp.client import ReplyInfo
from mailrelay.store import ClaimedJob, Event

#: The delivery modules log under the service's name, as one module did before they were
#: split: ``[mailrelay.services.delivery#info]`` in the log, whichever part writes the line.
log = Logger(namespace="mailrelay.services.delivery")

DELIVERED, BOUNCED, DEFERRED, EXPIRED, SUPPRESSED = "delivered", "bounced", "deferred", "expired", "suppressed"

#: The status word of the Postfix-style log line, per state.
STATUS_WORDS = {DELIVERED: "sent", BOUNCED: "bounced", DEFERRED: "deferred", EXPIRED: "expired",
                SUPPRESSED: "suppressed"}


@dataclass
class Route:
    """One host to try: where to connect and how."""

    name: str          # the MX (or smarthost) name, for TLS verification and logs
    address: str       # IP address or host name to connect to
    port: int
    tls: str           # smtpclient tls mode


class AttemptFailed(Exception):
    """A whole attempt failed before per-recipient replies: applies to every job."""

    def __init__(self, state: str, detail: str, reply: ReplyInfo | None = None,
                 route: Route | None = None, remote_ip: str | None = None) -> None:
        super().__init__(detail)
        self.state, self.detail, self.reply, self.route, self.remote_ip = state, detail, reply, route, remote_ip


class Outcome(NamedTuple):
    """One job's attempt, as recorded and logged."""

    job: ClaimedJob
    state: str
    event: Event
    due_ms: int | None
    detail: str
    reply: ReplyInfo | None
    route: Route | None
    remote_ip: str | None
    age: float


def state_for(reply: ReplyInfo) -> str:
    """The state a recipient's reply puts its job in."""
    if 200 <= reply.code < 300:
        return DELIVERED
    if reply.code >= 500:
        return BOUNCED
    return DEFERRED


def reply_line(reply: ReplyInfo) -> str:
    """A reply as one line: code, enhanced code (when there is one) and text."""
    return f"{reply.code} {reply.enhanced} {reply.text}".replace("  ", " ")


def describe(reply: ReplyInfo, route: Route) -> str:
    """The event detail of a recipient's reply."""
    if 200 <= reply.code < 300:
        return f"Delivered to {route.name}"
    verdict = "rejected" if reply.code >= 500 else "temporarily refused"
    return f"{route.name} {verdict} the message: {reply_line(reply)}"


def is_throttling(reply: ReplyInfo) -> bool:
    """421, or a 4.7.x enhanced code: the destination asks us to slow down."""
    return reply.code == 421 or (reply.code // 100 == 4 and reply.enhanced.startswith("4.7."))
