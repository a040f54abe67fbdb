"""
bounces: VERP return paths, the inbound bounce listener, bounce records and suppression.

JOB
    Gives every outgoing copy a return path ``b+<token>@<[bounces] domain>``
    and an ``X-Mailrelay-Recipient-Token: <token>`` header field, whose token
    names the delivery job (message and recipient) and carries a truncated
    HMAC (the codec, :class:`mailrelay.mail.verp.VERP`, made here by
    :func:`load_verp` with the configured or shared secret); receives the
    bounces and complaints sent back, classifies them
    (:mod:`mailrelay.mail.bounceparse`), ties those that prove it to the message
    and recipient, and suppresses addresses that hard-bounced or complained.
    The same recorder handles in-band refusals (5xx at delivery). The
    message a report names is read through the archive's reads (an
    ArchiveView: Redis while its keys exist, else the PostgreSQL archive at
    data version 2), so that a report that comes after the message's keys
    were released is matched too; its event then reaches the archived
    message through the archiver (docs/archive.md, "Bounces after the keys
    are gone").
    ``mailrelay suppressions list --unproven`` finds the suppressions made
    before reports had to prove themselves (:func:`unproven_suppressions`);
    ``mailrelay bounce reclassify`` runs the classifier again over the stored
    bounces, in Redis and (data version 2) in the PostgreSQL archive, and
    reactivates the addresses whose suppression no longer holds
    (:func:`reclassify_bounces`).

SECURITY
    The listener talks to any mail server on the Internet and trusts none:
    it accepts RCPT only for VERP addresses whose HMAC verifies and for
    ``fbl@``, ``abuse@`` and ``postmaster@`` of the bounce domain; everything
    else gets ``550 5.1.1``. It is never a relay and offers no AUTH. A report
    changes state (recipient bounced, timeline and webhook event,
    suppression) only when it proves which recipient it is about: it came
    to that recipient's VERP address, or it carries that recipient's token
    (in the returned original, a quoted copy). The effect goes to the
    token's recipient, never to another address the report names; an
    X-Mailrelay-ID in a bounce proves nothing (every recipient sees it).
    Anything else is stored as unmatched and changes nothing; only the
    newest ``max_unmatched_bounces`` are kept, so that a flood of them
    cannot fill Redis. At most MAX_REPORTS_PER_RECIPIENT reports are stored
    about one recipient of a message (more change nothing: whoever holds
    the copy cannot store raw messages or fire webhooks without end).
    The token is per recipient because a co-recipient sees the
    message's headers; it is never DKIM-signed (added at delivery, after
    signing). Raw bounces are stored truncated.

STANDARDS
    RFC 5321 (return path, 64-octet local part), RFC 3464 (DSN), RFC 3463
    (status codes), RFC 5965 (ARF), RFC 4648 (base32).

DIAGNOSTICS
    One log line per bounce: message id (``unmatched`` for an unproven
    report), recipient, type, whether the address became inactive. A
    report that could not be matched or stored (Redis, or the PostgreSQL
    archive a released message is read from, not answering) gets ``451
    4.3.0`` (``452 4.3.1`` when Redis is full) and ``bounces: could not
    store a bounce from <client>`` is logged with the failure. Bounce
    records and suppression entries store their ``proof`` (``verp``,
    ``token``, ``delivery``; empty: unmatched).

CONFIGURATION
    ``[bounces]`` domain, verp_secret, listen, max_connections, max_message_size,
    max_stored_bounce_size, max_unmatched_bounces, notify_sender. Redis data (through
    :mod:`mailrelay.store`): ``bounce:<id>``, ``bounce:raw:<id>``,
    ``bounces``, ``bounces:unmatched``, ``suppressed``, ``verp:secret``,
    ``reports:<id>.<rcpt>``; the PostgreSQL archive through
    :mod:`mailrelay.store.archiveview` and :mod:`mailrelay.store.archivebounces`.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

from twisted.internet import defer
from twisted.logger import Logger

from mailrelay import metrics
from mailrelay.mail import bounceclassify, bounceparse
from mailrelay.mail.verp import VERP
from mailrelay.smtp import session as smtpsession
from mailrelay.config import Config
from mailrelay.smtp.session import Reply, Session, Transaction
from mailrelay.store import Event, readmodel
from mailrelay.store.archivebounces import ArchiveBounceStore
from mailrelay.store.interfaces import (ArchiveReads, BounceRecords, BounceReclassifyStorage,
                                        BounceWriter, MessageReader, SuppressionList, VerpKey)
from mailrelay.store.records import BounceRecord, MessageRecord, Suppression
from mailrelay.timefmt import rfc3339

log = Logger()

#: Reports stored about one recipient of one message, at most (in-band refusals included):
#: whoever holds the copy could otherwise store raw messages and fire webhooks without end.
MAX_REPORTS_PER_RECIPIENT = 10

NOT_A_BOUNCE_ADDRESS = Reply(550, "5.1.1", "No such mailbox here: this domain only receives bounces")
BOUNCE_ACCEPTED = Reply(250, "2.0.0", "Ok: bounce received")


async def load_verp(config: Config, storage: VerpKey) -> VERP | None:
    """The VERP codec for this configuration, or None when no bounce domain is set."""
    if not config.bounces.domain:
        return None
    secret = config.bounces.verp_secret.encode() if config.bounces.verp_secret else await storage.verp_secret()
    return VERP(config.bounces.domain, secret)


def new_bounce_id() -> str:
    return os.urandom(8).hex()


#: How a bounce proved which recipient it is about (``proof`` of bounce records and
#: suppression entries): it came to the recipient's VERP return path; the bounce carried the
#: recipient's token (its returned original, or a quoted copy); the recipient's server refused
#: the message while we delivered it. A record with no proof is unmatched.
PROOF_VERP = "verp"
PROOF_TOKEN = "token"
PROOF_DELIVERY = "delivery"


class ProvenJob(NamedTuple):
    """A delivery job a received bounce proved it is about, and how."""

    message_id: str
    rcpt: int
    address: str
    proof: str


class BounceRecorder:
    """Turns a classified bounce into a record, a timeline event and maybe a suppression."""

    def __init__(self, storage: BounceWriter, max_stored: int, clock: Any, max_unmatched: int = 1000) -> None:
        self.storage = storage
        self.max_stored = max_stored
        self.clock = clock
        self.max_unmatched = max_unmatched

    async def record(self, report: bounceclassify.BounceReport, *, job: ProvenJob | None, raw: bytes, source: str,
                     remote_mta: str | None = None, final: bool = False) -> dict[str, Any]:
        """
        Store one bounce. Only a ``job`` (a proven message and recipient) changes state:
        the recipient's state and timeline, a webhook event, a suppression of the job's
        address. Without one the bounce is stored as unmatched and changes nothing.
        ``final`` means the delivery attempt itself failed (in-band): the queue has
        already ended the job, so no state change here.
        """
        kind = report.type
        now = self.clock.seconds()
        address = (job.address if job else report.recipient or "").lower() or None
        record = {
            "id": new_bounce_id(),
            "message_id": job.message_id if job else "",
            "recipient": address or "",
            "type": kind.name,
            "type_code": kind.code,
            "description": report.description,
            "details": report.diagnostic,
            "status": report.status or "",
            "remote_mta": remote_mta or report.remote_mta or "",
            "at": rfc3339(now),
            "source": source,
            "proof": job.proof if job else "",
            # what an unmatched report claims (untrusted), for whoever looks at it
            "claimed_message_id": (report.mailrelay_id or "") if job is None else "",
            # which classification rule decided, and why (``mailrelay bounce reclassify`` redoes it)
            "rule": report.rule,
            "reason": report.reason[:1000],
        }
        suppress = None
        if job is not None and address and kind in bounceclassify.SUPPRESSING_TYPES:
            suppress = {"address": address, "since": rfc3339(now), "type": kind.name,
                        "reason": report.diagnostic[:500], "bounce_id": record["id"],
                        "message_id": job.message_id, "proof": job.proof}
        event = state = None
        if job is not None and not final:
            if kind == bounceclassify.SPAM_COMPLAINT:
                event_type = "complained"
            elif kind == bounceclassify.TRANSIENT:
                event_type = "deferred"   # a delay notice: the queue keeps its own schedule
            else:
                event_type = "bounced"
                state = "bounced"
            event = Event(type=event_type, at=record["at"], recipient=address or "", rcpt=job.rcpt,
                          detail=f"{kind.name}: {report.diagnostic or report.description}"[:1000],
                          enhanced_code=report.status, remote_host=record["remote_mta"] or None)
        inactive = await self.storage.record_bounce(
            record, raw[: self.max_stored], message_id=job.message_id if job else None,
            rcpt=job.rcpt if job else None, state=state, event=event, suppress=suppress,
            max_unmatched=self.max_unmatched, max_per_recipient=MAX_REPORTS_PER_RECIPIENT)
        if inactive is None:
            log.info("bounce from {source} about message {msg} to <{rcpt}> not stored: it already has "
                     "{n} reports", source=source, msg=job.message_id if job else "-", rcpt=address or "?",
                     n=MAX_REPORTS_PER_RECIPIENT)
            record["stored"] = False
            record["inactive"] = False
            return record
        record["inactive"] = inactive
        metrics.count_bounce(kind.name, matched=job is not None)
        log.info("bounce {id}: message {msg} to <{rcpt}>: {type} ({status}){inactive}",
                 id=record["id"], msg=job.message_id if job else "unmatched", rcpt=address or "?", type=kind.name,
                 status=report.status or "-", inactive=", address suppressed" if inactive else "")
        return record


class BounceHandler:
    """The policy of the inbound bounce listener (an SMTPHandler). ``messages`` reads the message
    a report names: the archive's reads (mailrelay.store.archiveview.ArchiveView: Redis while
    the message's keys exist, then PostgreSQL), so that a report that comes after the keys were
    released is still matched."""

    def __init__(self, verp: VERP, messages: MessageReader, recorder: BounceRecorder) -> None:
        self.verp = verp
        self.messages = messages
        self.recorder = recorder

    def auth_offered(self, session: Session) -> bool:
        return False

    def auth_throttled(self, session: Session) -> bool:
        return False

    def authenticate(self, session: Session, username: str, password: bytes) -> bool:
        return False

    def check_sender(self, session: Session, sender: str) -> None:
        return None

    def check_recipient(self, session: Session, recipient: str) -> Reply | None:
        if self.verp.decode(recipient) is not None or self.verp.is_feedback_mailbox(recipient):
            return None
        return NOT_A_BOUNCE_ADDRESS

    def accept_message(self, session: Session, transaction: Transaction, content: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self._accept(session, transaction, content))

    async def _accept(self, session: Session, transaction: Transaction, content: bytes) -> Reply:
        # any failure, Redis's or the PostgreSQL archive's (ArchiveUnavailable while it is down):
        # 451, the reporting server tries again later; nothing was stored when matching failed
        try:
            await self.process(transaction.recipients, content, client=session.peer_host)
        except Exception as e:
            log.failure("bounces: could not store a bounce from {client}", client=session.peer_host)
            return smtpsession.STORAGE_UNAVAILABLE if "OOM" not in str(e) else smtpsession.STORAGE_FULL
        return BOUNCE_ACCEPTED

    async def process(self, recipients: list[str], content: bytes, client: str | None = None) -> list[dict[str, Any]]:
        """Parse, match and record one received bounce message."""
        reports = bounceparse.parse_bounce(content)
        jobs = await self.proven_jobs(recipients, reports[0].recipient_tokens)
        records = []
        for report, job in pair_reports(reports, jobs):
            source = "arf" if report.type == bounceclassify.SPAM_COMPLAINT else "dsn"
            records.append(await self.recorder.record(report, job=job, raw=content, source=source))
        return records

    async def proven_jobs(self, recipients: list[str], tokens: tuple[str, ...]) -> list[ProvenJob]:
        """
        The jobs a bounce proves it is about: the VERP addresses it was sent to, then the
        recipient tokens it carries, when their HMAC verifies and the recipient is still
        known. Nothing else the bounce says (an X-Mailrelay-ID, a recipient address) is
        evidence: every recipient of a message sees those of its co-recipients.
        """
        claimed: dict[tuple[str, int], str] = {}
        for address in recipients:
            job = self.verp.decode(address)
            if job is not None:
                claimed.setdefault(job, PROOF_VERP)
        for token in tokens:
            job = self.verp.verify_token(token)
            if job is not None:
                claimed.setdefault(job, PROOF_TOKEN)
        messages: dict[str, MessageRecord | None] = {}  # read each message once
        for message_id, _ in claimed:
            if message_id not in messages:
                messages[message_id] = await readmodel.message(self.messages, message_id, timeline=False)
        proven = []
        for (message_id, rcpt), proof in claimed.items():
            message = messages[message_id]
            recipient = message.recipient(rcpt) if message is not None else None
            if recipient is not None:
                proven.append(ProvenJob(message_id, rcpt, recipient.address, proof))
        return proven


def pair_reports(reports: list[bounceclassify.BounceReport],
                 jobs: list[ProvenJob]) -> list[tuple[bounceclassify.BounceReport, ProvenJob | None]]:
    """
    Which proven job each report is about (None: unmatched). A report naming a proven
    job's address is about that job. A proven job no report names (a forwarded address, a
    redacted complaint) takes the first report left over, only when it is the only such
    job: the effect is bound to the proven recipient, never to the address the report
    names. Every other report is unmatched, whatever address it names.
    """
    by_address = {job.address.lower(): job for job in reversed(jobs)}
    paired: list[ProvenJob | None] = []
    used: set[ProvenJob] = set()
    for report in reports:
        job = by_address.get((report.recipient or "").lower())
        if job is not None and job not in used:
            used.add(job)
            paired.append(job)
        else:
            paired.append(None)
    left = [job for job in jobs if job not in used]
    if len(left) == 1 and None in paired:
        paired[paired.index(None)] = left[0]
    return list(zip(reports, paired))


async def unproven_suppressions(storage: SuppressionList, archive: ArchiveReads,
                                verp: VERP | None) -> list[tuple[Suppression, str]]:
    """
    The suppressions made from received bounces that would be unmatched today: (suppression,
    why), by address. Entries made since reports must prove themselves carry their
    ``proof``; those made by an operator (CLI, API) name no bounce; in-band refusals have a
    bounce record whose source is ``smtp``. Any other entry counts as proven only when its
    stored raw bounce carries a token (VERP address or token header) of that message and
    address, as a bounce sent to the recipient's VERP address usually does (its To: field).
    The bounces and messages are read from ``archive`` (an ArchiveView: Redis, then the
    PostgreSQL archive once the data is at version 2, where they live after their release).
    """
    found = []
    for entry in sorted(await storage.list_suppressions(), key=lambda s: s.address):
        why = await _why_unproven(archive, verp, entry)
        if why:
            found.append((entry, why))
    return found


async def _why_unproven(archive: ArchiveReads, verp: VERP | None, entry: Suppression) -> str | None:
    if entry.proof or not entry.bounce_id:
        return None
    message_id = entry.message_id
    if not message_id:
        return "made from an unmatched report"
    record = await archive.get_bounce(entry.bounce_id)
    if record is None:
        return "its bounce record has expired: cannot be checked"
    if record.source == "smtp":
        return None   # refused by the recipient's server while we delivered
    if verp is None:
        return "no [bounces] domain: tokens cannot be checked"
    raw = await archive.get_bounce_raw(entry.bounce_id) or b""
    tokens = bounceparse.parse_bounce(raw)[0].recipient_tokens if raw else ()
    message = None
    for token in tokens:
        job = verp.verify_token(token)
        if job is None or job[0] != message_id:
            continue
        message = message or await readmodel.message(archive, message_id, timeline=False)
        if message is None:
            return "its message has expired: cannot be checked"
        recipient = message.recipient(job[1])
        if recipient is not None and recipient.address.lower() == entry.address:
            return None
    return "matched by X-Mailrelay-ID or by address only: the bounce carries no token of this recipient"


class Reclassification(NamedTuple):
    """One stored bounce whose type the current classifier decides differently."""

    bounce_id: str
    address: str
    old_type: str
    new_type: str
    reason: str
    #: The bounce made the address's current suppression, which the new type does not justify.
    reactivates: bool
    #: Applied: the record was rewritten (and the address reactivated when ``reactivates``).
    applied: bool = False


async def reclassify_bounces(storage: BounceReclassifyStorage, *, apply: bool,
                             archive: ArchiveBounceStore | None = None) -> list[Reclassification]:
    """
    Run the classifier again over every stored bounce: the raw message when one was stored,
    else (a refusal at delivery, source ``smtp``) the stored status and reply. Each bounce
    whose type changes is listed; an address is reactivated only when its suppression
    entry names that bounce (``bounce_id``) and the new type does not suppress: operator
    suppressions (no bounce) and those another bounce made are left alone, and a bounce whose
    new type would suppress suppresses nobody new (a repair, not a second pass of
    suppression). With ``apply``, the record's type is rewritten (with ``rule``, ``reason``
    and the previous type in ``reclassified_from``) and the suppression removed, atomically.

    At data version 2 the caller gives ``archive`` (the PostgreSQL archive's bounces, where
    bounces live once released from Redis): the bounces still in Redis come first (their
    record rewritten in Redis and in the archive's row when it has one), then, in pages, those
    only the archive holds (their row rewritten; the suppression is Redis's either way).
    """
    suppressions = {s.address: s for s in await storage.list_suppressions()}
    changes: list[Reclassification] = []
    in_redis: set[str] = set()
    async for bounce_id in storage.bounce_ids():
        in_redis.add(bounce_id)
        change = await _reclassify(storage, storage, archive, bounce_id, suppressions, apply)
        if change is not None:
            changes.append(change)
    if archive is not None:
        async for bounce_id in archive.bounce_ids():
            if bounce_id not in in_redis:
                change = await _reclassify(storage, archive, archive, bounce_id, suppressions, apply)
                if change is not None:
                    changes.append(change)
    return changes


async def _reclassify(storage: BounceReclassifyStorage, records: BounceRecords, archive: ArchiveBounceStore | None,
                      bounce_id: str, suppressions: dict[str, Suppression], apply: bool) -> Reclassification | None:
    """One bounce of reclassify_bounces, its record read from ``records`` (Redis, or the archive)."""
    record = await records.get_bounce(bounce_id)
    if record is None:
        return None   # expired meanwhile
    old = record.type
    report = await _reclassified_report(records, bounce_id, record)
    if report is None or report.type.name == old:
        return None
    address = record.recipient.lower()
    entry = suppressions.get(address) if address else None
    reactivates = bool(entry and entry.bounce_id == bounce_id and not report.type.suppresses)
    change = Reclassification(bounce_id, address, old, report.type.name, report.reason, reactivates)
    if not apply:
        return change
    fields = {"type": report.type.name, "type_code": report.type.code,
              "description": report.type.description, "rule": report.rule,
              "reason": report.reason[:1000], "reclassified_from": old}
    if reactivates:
        fields["inactive"] = "0"
    # Redis first: the record while it is there, and the suppression (which only Redis holds)
    updated, removed = await storage.reclassify_bounce(bounce_id, fields, reactivate=address if reactivates else None)
    if archive is not None:
        updated = await archive.update_bounce(bounce_id, fields) or updated
    log.info("bounce {id}: reclassified {old} -> {new}{reactivated}", id=bounce_id, old=old,
             new=report.type.name, reactivated=f", {address} reactivated" if removed else "")
    return change._replace(applied=updated, reactivates=removed if updated else reactivates)


async def _reclassified_report(storage: BounceRecords, bounce_id: str,
                               record: BounceRecord) -> bounceclassify.BounceReport | None:
    """What the classifier says today about a stored bounce record (None: cannot tell)."""
    if record.type in ("ManuallyDeactivated",):
        return None
    raw = await storage.get_bounce_raw(bounce_id)
    if record.source == "smtp" or not raw:
        if record.source != "smtp" or record.type == bounceclassify.TRANSIENT.name:
            # no raw message to read again; a Transient refusal may be an expired job's last
            # reply (the queue gave up): its state is not in the record, keep it
            return None
        return bounceclassify.reply_report(record.recipient or None, None, record.status or None,
                                           record.details)
    reports = bounceparse.parse_bounce(raw)
    recipient = record.recipient.lower()
    named = [r for r in reports if (r.recipient or "").lower() == recipient]
    # the report naming the record's recipient; else, as pair_reports does for a proven
    # recipient no report names, the first report
    return named[0] if named else reports[0]
