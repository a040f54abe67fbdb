"""
bounces: VERP return paths, the inbound bounce listener, bounce records and suppression.

JOB
    Gives every outgoing message a return path ``b+<token>@<[bounces] domain>``
    whose token names the delivery job (message and recipient) and carries a
    truncated HMAC, receives the bounces and complaints sent back to it,
    classifies them (:mod:`mailrelay.bounceparse`), ties them to the message
    and recipient, and suppresses addresses that hard-bounced or complained.
    The same recorder handles in-band refusals (5xx at delivery).

SECURITY
    The listener talks to any mail server on the Internet and trusts none:
    it accepts RCPT only for VERP addresses whose HMAC verifies and for
    ``fbl@``, ``abuse@`` and ``postmaster@`` of the bounce domain; everything
    else gets ``550 5.1.1``. It is never a relay and offers no AUTH. A forged
    or mangled token is refused; a message that matches no job is stored as
    unmatched, never dropped. Raw bounces are stored truncated.

STANDARDS
    RFC 5321 (return path, 64-octet local part), RFC 3464 (DSN), RFC 3463
    (status codes), RFC 5965 (ARF), RFC 4648 (base32).

DIAGNOSTICS
    One log line per bounce: message id, recipient, type, whether the address
    became inactive.

CONFIGURATION
    ``[bounces]`` domain, verp_secret, listen, max_connections, max_message_size,
    max_stored_bounce_size, notify_sender. Redis data (through
    :mod:`mailrelay.storage`): ``bounce:<id>``, ``bounce:raw:<id>``,
    ``bounces``, ``bounces:unmatched``, ``suppressed``, ``verp:secret``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailrelay import bounceparse, smtpserver
from mailrelay.config import Config
from mailrelay.smtpserver import Reply, Session, Transaction
from mailrelay.storage import Event, Storage, rfc3339

log = Logger()

#: Local-part prefix of VERP addresses.
VERP_PREFIX = "b+"
#: Mailboxes of the bounce domain for complaint feedback loops and RFC 2142 roles.
FEEDBACK_MAILBOXES = ("fbl", "abuse", "postmaster")
#: Bytes of HMAC-SHA256 kept in a token (64 bits).
MAC_BYTES = 8

NOT_A_BOUNCE_ADDRESS = Reply(550, "5.1.1", "No such mailbox here: this domain only receives bounces")
BOUNCE_ACCEPTED = Reply(250, "2.0.0", "Ok: bounce received")


class VERP:
    """Encodes delivery jobs into return paths and back (case-insensitive, HMAC-checked)."""

    def __init__(self, domain: str, secret: bytes) -> None:
        self.domain = domain.lower()
        self.secret = secret

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.secret, payload, hashlib.sha256).digest()[:MAC_BYTES]

    def address(self, message_id: str, rcpt: int) -> str:
        """``b+<lowercase base32 of id, index and MAC>@domain`` (34-octet local part)."""
        payload = bytes.fromhex(message_id) + rcpt.to_bytes(2, "big")
        token = base64.b32encode(payload + self._mac(payload)).decode().lower()
        return f"{VERP_PREFIX}{token}@{self.domain}"

    def decode(self, address: str) -> tuple[str, int] | None:
        """(message id, recipient index) for a valid VERP address of our domain, else None."""
        local, _, domain = address.rpartition("@")
        if domain.lower() != self.domain or not local.lower().startswith(VERP_PREFIX):
            return None
        token = local[len(VERP_PREFIX):].upper()
        try:
            raw = base64.b32decode(token + "=" * (-len(token) % 8))
        except (binascii.Error, ValueError):
            return None
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if len(payload) != 12 or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        return payload[:10].hex(), int.from_bytes(payload[10:], "big")

    def is_feedback_mailbox(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        return domain.lower() == self.domain and local.lower() in FEEDBACK_MAILBOXES


async def load_verp(config: Config, storage: Storage) -> VERP | None:
    """The VERP codec for this configuration, or None when no bounce domain is set."""
    if not config.bounces.domain:
        return None
    secret = config.bounces.verp_secret.encode() if config.bounces.verp_secret else await storage.verp_secret()
    return VERP(config.bounces.domain, secret)


def new_bounce_id() -> str:
    return os.urandom(8).hex()


class BounceRecorder:
    """Turns a classified bounce into a record, a timeline event and maybe a suppression."""

    def __init__(self, storage: Storage, max_stored: int, clock: Any) -> None:
        self.storage = storage
        self.max_stored = max_stored
        self.clock = clock

    async def record(self, report: bounceparse.BounceReport, *, message_id: str | None, rcpt: int | None,
                     recipient: str | None, raw: bytes, source: str, remote_mta: str | None = None,
                     final: bool = False) -> dict[str, Any]:
        """
        Store one bounce. ``final`` means the delivery attempt itself failed
        (in-band): the queue has already ended the job, so no state change here.
        """
        kind = report.type
        now = self.clock.seconds()
        address = (recipient or report.recipient or "").lower() or None
        record = {
            "id": new_bounce_id(),
            "message_id": message_id or "",
            "recipient": address or "",
            "type": kind.name,
            "type_code": kind.code,
            "description": report.description,
            "details": report.diagnostic,
            "status": report.status or "",
            "remote_mta": remote_mta or report.remote_mta or "",
            "at": rfc3339(now),
            "source": source,
        }
        suppress = None
        if address and kind in bounceparse.SUPPRESSING_TYPES:
            suppress = {"address": address, "since": rfc3339(now), "type": kind.name,
                        "reason": report.diagnostic[:500], "bounce_id": record["id"],
                        "message_id": message_id or ""}
        event = state = None
        if message_id is not None and rcpt is not None and not final:
            if kind == bounceparse.SPAM_COMPLAINT:
                event_type = "complained"
            elif kind == bounceparse.TRANSIENT:
                event_type = "deferred"   # a delay notice: the queue keeps its own schedule
            else:
                event_type = "bounced"
                state = "bounced"
            event = Event(type=event_type, at=record["at"], recipient=address or "", rcpt=rcpt,
                          detail=f"{kind.name}: {report.diagnostic or report.description}"[:1000],
                          enhanced_code=report.status, remote_host=record["remote_mta"] or None)
        inactive = await self.storage.record_bounce(
            record, raw[: self.max_stored], message_id=message_id, rcpt=rcpt, state=state, event=event,
            suppress=suppress)
        record["inactive"] = inactive
        log.info("bounce {id}: message {msg} to <{rcpt}>: {type} ({status}){inactive}",
                 id=record["id"], msg=message_id or "unmatched", rcpt=address or "?", type=kind.name,
                 status=report.status or "-", inactive=", address suppressed" if inactive else "")
        return record


class BounceHandler:
    """The policy of the inbound bounce listener (an SMTPHandler)."""

    def __init__(self, verp: VERP, storage: Storage, recorder: BounceRecorder) -> None:
        self.verp = verp
        self.storage = storage
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
        try:
            await self.process(transaction.recipients, content, client=session.peer_host)
        except Exception as e:
            log.failure("bounces: could not store a bounce from {client}", client=session.peer_host)
            return smtpserver.STORAGE_UNAVAILABLE if "OOM" not in str(e) else smtpserver.STORAGE_FULL
        return BOUNCE_ACCEPTED

    async def process(self, recipients: list[str], content: bytes, client: str | None = None) -> list[dict[str, Any]]:
        """Parse, match and record one received bounce message."""
        reports = bounceparse.parse_bounce(content)
        verp_jobs = [job for job in (self.verp.decode(r) for r in recipients) if job is not None]
        records = []
        for report in reports:
            message_id, rcpt, recipient = await self._match(report, verp_jobs)
            source = "arf" if report.type == bounceparse.SPAM_COMPLAINT else "dsn"
            records.append(await self.recorder.record(report, message_id=message_id, rcpt=rcpt,
                                                      recipient=recipient, raw=content, source=source))
        return records

    async def _match(self, report: bounceparse.BounceReport,
                     verp_jobs: list[tuple[str, int]]) -> tuple[str | None, int | None, str | None]:
        """Find the job a report is about: the VERP token first, then the id header."""
        candidates = list(verp_jobs)
        if report.mailrelay_id:
            message = await self.storage.get_message(report.mailrelay_id)
            if message is not None:
                count = int(message.get("rcpt_count", 0))
                candidates += [(report.mailrelay_id, i) for i in range(count)]
        wanted = (report.recipient or "").lower()
        fallback = None
        for message_id, rcpt in candidates:
            message = await self.storage.get_message(message_id)
            if message is None:
                continue
            address = message.get(f"rcpt:{rcpt}")
            if address is None:
                continue
            if not wanted or address.lower() == wanted:
                return message_id, rcpt, address
            if fallback is None and (message_id, rcpt) in verp_jobs:
                fallback = (message_id, rcpt, address)
        if fallback is not None and not wanted:
            return fallback
        if fallback is not None and len(verp_jobs) == 1:
            # The token names exactly one recipient: trust it over a rewritten address.
            return fallback
        return None, None, None


def make_dsn(*, hostname: str, original_sender: str, recipient: str, message_id: str, action: str,
             status: str, diagnostic: str, remote_mta: str | None, original_headers: bytes) -> bytes:
    """An RFC 3464 delivery status notification for the original sender (``notify_sender``)."""
    import email.utils
    from email import policy
    from email.message import Message
    from email.mime.base import MIMEBase
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = original_sender
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid("dsn", domain=hostname)
    report["Auto-Submitted"] = "auto-replied"
    human = (f"This is the mail system at {hostname}.\n\n"
             f"Your message {message_id} could not be delivered to <{recipient}>:\n\n"
             f"    {diagnostic}\n")
    report.attach(MIMEText(human, "plain", "utf-8"))
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Mailrelay-ID"] = message_id
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    if remote_mta:
        per_recipient["Remote-MTA"] = f"dns; {remote_mta}"
    per_recipient["Diagnostic-Code"] = f"smtp; {' '.join(diagnostic.split())}"
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([per_message, per_recipient])  # RFC 3464: blocks of fields
    report.attach(status_part)
    headers_part = MIMEBase("text", "rfc822-headers")
    headers_part.set_payload(original_headers.decode("utf-8", "replace"))
    report.attach(headers_part)
    return report.as_bytes(policy=policy.SMTP)
