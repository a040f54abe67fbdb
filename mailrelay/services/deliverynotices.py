"""
deliverynotices: what a refusal at delivery leaves behind: a bounce record and the sender's DSN.

JOB
    When a job ends bounced or expired, :class:`RefusalNotices` tells the two parties
    that care: the bounce records (the refusal is classified by
    :mod:`mailrelay.mail.bounceclassify` and recorded by
    :class:`mailrelay.services.bounces.BounceRecorder`, proven by the delivery itself,
    which may suppress the address; an expiry after temporary failures is recorded as
    transient, never suppressing) and, with ``[bounces] notify_sender``, the original
    sender: an RFC 3464 DSN (:mod:`mailrelay.mail.dsn`) from ``<>``, queued through the
    one door into the queue (:mod:`mailrelay.services.inject`, source NOTICE: none of
    the checks meant for applications). Called by
    :mod:`mailrelay.services.deliveryoutcomes` once the outcome is recorded.

SECURITY
    The remote server's reply text goes into the bounce record and the DSN's
    diagnostic verbatim (:mod:`mailrelay.mail.dsn` collapses it into one line); the
    DSN quotes the original message's header only, never its body. Notices are sent from
    ``<>``, so a DSN that cannot be delivered does not cause another one.

STANDARDS
    RFC 3464 (delivery status notifications), RFC 3463 (status codes), RFC 5321 4.5.5
    (notices from the null reverse path).

DIAGNOSTICS
    ``<id>: sender non-delivery notification <dsn id> queued to <sender>`` (info);
    ``delivery: could not record the bounce of <job>: <error>`` (warning: the outcome
    is recorded all the same, the notice is lost).

CONFIGURATION
    ``[bounces]``: notify_sender, max_stored_bounce_size, max_unmatched_bounces;
    ``[server] hostname`` (the DSN's reporting MTA). Redis data: through
    :mod:`mailrelay.store` (bounce records, suppressions; the notice's message and job).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from mailrelay.config import Config
from mailrelay.mail import bounceclassify
from mailrelay.mail.dsn import make_dsn
from mailrelay.services.bounces import PROOF_DELIVERY, BounceRecorder, ProvenJob
from mailrelay.services.deliveryattempt import EXPIRED, Route, log, reply_line
from mailrelay.services.inject import Draft, Injector, Source
from mailrelay.smtp.client import ReplyInfo
from mailrelay.store import ClaimedJob
from mailrelay.store.interfaces import DeliveryStorage


class RefusalNotices:
    """Records a refusal at delivery as a bounce and, with notify_sender, sends the sender a DSN."""

    def __init__(self, config: Config, storage: DeliveryStorage, clock: Any, *,
                 get_injector: Callable[[], Injector] | None, on_queued: Callable[[], None]) -> None:
        self.config = config
        self.storage = storage
        self.clock = clock
        self.recorder = BounceRecorder(storage, config.bounces.max_stored_bounce_size, clock,
                                       config.bounces.max_unmatched_bounces)
        #: The door into the queue for notices (DSNs); without one, built at the first notice.
        self.get_injector = get_injector
        self.on_queued = on_queued
        self._injector: Injector | None = None

    async def record(self, job: ClaimedJob, state: str, detail: str, reply: ReplyInfo | None,
                     route: Route | None) -> None:
        """A refusal at delivery is a bounce too: classify it, record it, maybe suppress."""
        if reply is not None:
            report = bounceclassify.reply_report(job.recipient, reply.code, reply.enhanced or None,
                                                 reply_line(reply), route.name if route else None)
        else:  # no reply: DNS or connection failures
            report = bounceclassify.reply_report(job.recipient, None, None, detail, None)
        if state == EXPIRED and report.type in bounceclassify.SUPPRESSING_TYPES:
            # gave up after temporary failures: not a sign of a dead address
            report = dataclasses.replace(report, type=bounceclassify.TRANSIENT)
        try:
            await self.recorder.record(report, job=ProvenJob(job.message_id, job.rcpt, job.recipient, PROOF_DELIVERY),
                                       raw=b"", source="smtp", final=True)
            if self.config.bounces.notify_sender and job.sender:
                await self.notify_sender(job, report, route)
        except Exception as e:
            log.warn("delivery: could not record the bounce of {job}: {e}", job=job.job, e=e)

    async def notify_sender(self, job: ClaimedJob, report: Any, route: Route | None) -> None:
        """Queue an RFC 3464 DSN to the original sender (``[bounces] notify_sender``), from ``<>``."""
        body = await self.storage.get_body(job.message_id) or b""
        header_end = body.find(b"\r\n\r\n")
        content = make_dsn(hostname=self.config.hostname, original_sender=job.sender, recipient=job.recipient,
                           message_id=job.message_id, action="failed",
                           status=report.status or "5.0.0", diagnostic=report.diagnostic,
                           remote_mta=route.name if route else None,
                           original_headers=body[: header_end + 2] if header_end >= 0 else b"")
        # through the one door, with the notice's policy: none of the checks meant for applications
        result = await self.injector().inject(Draft(sender="", recipients=[job.sender], content=content, tag="dsn"),
                                              source=Source.NOTICE)
        log.info("{id}: sender non-delivery notification {dsn} queued to <{to}>", id=job.message_id,
                 dsn=result.id, to=job.sender)

    def injector(self) -> Injector:
        """The door into the queue: the daemon's (shared with submission), or this service's own."""
        if self._injector is None:
            self._injector = (self.get_injector() if self.get_injector is not None
                              else Injector(self.config, self.storage, self.clock, on_queued=self.on_queued))
        return self._injector
