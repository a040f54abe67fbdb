"""
inject: the one door into the queue: prepare, sign, enqueue, settle (Postfix's cleanup).

JOB
    Every message that enters the queue comes through :meth:`Injector.inject`: mail that
    applications submit (:mod:`mailrelay.services.submission`) and the notices the daemon
    writes itself (a DSN to the sender of a message that could not be delivered,
    :mod:`mailrelay.services.delivery` with ``[bounces] notify_sender``). The message, a
    :class:`Draft`, goes through the same steps whatever its source:

    1. prepare (:meth:`Injector.prepare`): the tag and metadata header fields are taken
       out, every other ``X-Mailrelay-*`` field a client sent is removed, the Received
       field of the hop that brought it (when it came over SMTP), the X-Mailrelay-ID,
       Message-ID and Date are added where the source's policy asks and the message has
       none, and the summary (From, To, Cc, Subject, Message-ID) is read;
    2. the sender-domain step (:class:`mailrelay.services.domains.SenderDomains`): a
       From domain that is not a sender domain is refused (``require_known_domain``) or
       recorded as sent unsigned, and the DKIM-Signature is put on top;
    3. enqueue: the message and one job per recipient are stored unsettled, or, with
       ``dedupe_window``, the id of the message queued earlier with the same Message-ID
       is returned instead;
    4. settle: the message is confirmed (its jobs become claimable) and delivery is woken;
       cancelled when a step after the enqueue fails.

    The :class:`Source` decides which policy applies (:data:`POLICIES`). A SUBMISSION gets
    every check meant for applications: the sender-domain step, the per-user rate limit,
    the suppression list, dedupe, the X-Mailrelay-ID. A NOTICE is sent from ``<>`` by the
    daemon about mail it already accepted: it skips the sender-domain step (the From is
    MAILER-DAEMON at ``[server] hostname``, not an application's domain, and notices are
    not DKIM-signed), the rate and suppression checks (a notice to a suppressed or
    throttled sender is still the daemon's duty; delivery checks the suppression list
    again before sending) and dedupe (each notice is new), and gets no X-Mailrelay-ID on
    top (it carries the id of the message it reports on in its delivery-status part, and
    nothing bounces back to ``<>``).

    The rate and suppression checks answer an SMTP client at MAIL and RCPT time, before
    there is a message: :meth:`Injector.check_sender` and :meth:`Injector.check_recipient`
    take the source and are called by the protocol at that stage (submission today, the
    HTTP API later before it injects); :meth:`inject` does not repeat them.

SECURITY
    A draft's content is a client's and untrusted: preparation removes every
    ``X-Mailrelay-*`` field it carries (our namespace: a forged X-Mailrelay-ID would tie
    bounces to another message) before adding ours. Which checks apply is decided by the
    source the caller names, never by the message: only the daemon's own code injects a
    NOTICE. A message is confirmed only after every step that can refuse it has passed; a
    storage failure leaves nothing claimable (see :meth:`mailrelay.store.Storage.enqueue`).

STANDARDS
    RFC 5322 (header fields, Message-ID, Date), RFC 5321 4.4 (Received), RFC 6376 (DKIM,
    through :mod:`mailrelay.services.domains`), RFC 3464 (the notices, made by
    :mod:`mailrelay.mail.dsn`).

DIAGNOSTICS
    ``<source>: suppression check failed: <error>`` (warning, RCPT answered 451);
    :meth:`Injector.inject` raises :class:`mailrelay.store.StorageFull` and
    :class:`mailrelay.store.StorageUnavailable` (nothing queued): the caller answers and
    logs; policy refusals come back in :class:`InjectResult` ``refused``. The DKIM lines
    are :mod:`mailrelay.services.domains`'.

CONFIGURATION
    ``[server] hostname`` (generated Message-IDs); ``[submission] rate_limit_per_user``,
    ``dedupe_window``, ``require_known_domain`` (through SenderDomains); ``[dkim]`` and
    ``[[domains]]`` (signing). Redis data: through :mod:`mailrelay.store` only (the queue,
    the suppression list, rate counters, dedupe entries).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from twisted.internet import defer
from twisted.logger import Logger

from mailrelay import metrics
from mailrelay.config import Config
from mailrelay.mail import message as msg
from mailrelay.services.domains import SenderDomains, SignResult
from mailrelay.smtp import session as smtpsession
from mailrelay.smtp.session import Reply
from mailrelay.store import NewMessage, StorageUnavailable
from mailrelay.store.interfaces import InjectorStorage, SuppressionCheck
from mailrelay.store.queue import new_message_id
from mailrelay.store.records import Suppression

log = Logger()

#: The header that carries mailrelay's message id in delivered mail (bounces match on it).
ID_HEADER = "X-Mailrelay-ID"
#: Header fields that carry the tag and metadata; removed before delivery.
TAG_HEADERS = ("x-mailrelay-tag", "x-pm-tag")
METADATA_PREFIXES = ("x-mailrelay-metadata-", "x-pm-metadata-")
#: Our own namespace: every X-Mailrelay-* field a client sends is removed.
OWN_HEADER_PREFIX = "x-mailrelay-"


class Source(enum.Enum):
    """Who hands a message to the injector; decides its :class:`Policy`."""

    #: An application, through SMTP submission.
    SUBMISSION = "submission"
    #: The daemon itself, from ``<>``: a delivery status notification to a sender.
    NOTICE = "notice"


@dataclass(frozen=True)
class Policy:
    """The checks and additions mail of one source gets."""

    #: The From domain must be a sender domain (``require_known_domain``), DKIM-signed.
    sender_domain: bool
    #: ``[submission] rate_limit_per_user``, at MAIL (:meth:`Injector.check_sender`).
    user_rate: bool
    #: The suppression list, at RCPT (:meth:`Injector.check_recipient`).
    suppression: bool
    #: ``[submission] dedupe_window`` on the client's Message-ID.
    dedupe: bool
    #: An X-Mailrelay-ID field on top, which ties bounces and complaints to the message.
    id_header: bool


POLICIES: dict[Source, Policy] = {
    Source.SUBMISSION: Policy(sender_domain=True, user_rate=True, suppression=True, dedupe=True, id_header=True),
    Source.NOTICE: Policy(sender_domain=False, user_rate=False, suppression=False, dedupe=False, id_header=False),
}


@dataclass
class Draft:
    """A message handed to the injector, as it came: its envelope and raw content."""

    sender: str
    recipients: list[str]
    content: bytes
    #: The id the message gets (known before injecting, for the caller's log lines).
    id: str = field(default_factory=new_message_id)
    user: str | None = None
    client: str | None = None
    #: The Received field of the hop that brought it (SMTP), put on top; None: made here.
    received: msg.HeaderField | None = None
    #: The tag when the source sets it (a tag header in the content wins).
    tag: str = ""


class InjectResult(NamedTuple):
    """What became of an injected draft (storage failures raise instead)."""

    #: The queued message's id; with ``duplicate``, the id of the one queued earlier.
    id: str
    #: Not queued: the policy's answer (``550 5.7.1`` unknown sender domain, ``451 4.3.5``...).
    refused: Reply | None = None
    #: Not queued again: the same Message-ID was queued earlier (``dedupe_window``).
    duplicate: bool = False
    #: Bytes queued (the prepared and signed content); 0 when nothing was queued.
    size: int = 0


def suppressed_reply(recipient: str, entry: Suppression) -> Reply:
    """550 5.1.1 for an address on the suppression list, saying why and since when."""
    return Reply(550, "5.1.1", f"<{recipient}> is suppressed since {entry.since or '?'} "
                               f"({entry.type}); reactivate it to send to it again")


class NotSuppressedCache:
    """
    Recipients Redis recently said are not suppressed, so that RCPT to them needs no round
    trip. An answer is reused only while the suppression list's change counter is the one
    it was read at and that counter was read less than VERSION_FRESHNESS seconds ago (every
    message queued reads it, so under load it is always fresh), and for at most ENTRY_TTL
    seconds. A change made by this process clears it at once; one made by another daemon
    or the CLI is seen within VERSION_FRESHNESS seconds. Suppressed answers are never
    cached. Delivery checks the list again before sending (jobs end ``suppressed``), so a
    stale answer can only let RCPT accept mail that is then not sent.
    """

    VERSION_FRESHNESS = 1.0
    ENTRY_TTL = 60.0
    MAX_ENTRIES = 100_000

    def __init__(self, storage: SuppressionCheck) -> None:
        self.storage = storage
        self._version: str | None = None
        self._read_at: dict[str, float] = {}   # lowercased address -> when Redis said so

    def known(self, address: str) -> bool:
        """True when ``address`` is known not to be suppressed (no Redis round trip needed)."""
        version, version_read_at = self.storage.suppressions_version
        if version != self._version:
            self._read_at.clear()
            self._version = version
            return False
        now = self.storage.clock.seconds()
        read_at = self._read_at.get(address.lower())
        return (read_at is not None and now - version_read_at < self.VERSION_FRESHNESS
                and now - read_at < self.ENTRY_TTL)

    def remember(self, address: str) -> None:
        """Redis just said ``address`` is not suppressed (at storage.suppressions_version)."""
        version = self.storage.suppressions_version[0]
        if version is None:
            return
        if version != self._version or len(self._read_at) >= self.MAX_ENTRIES:
            self._read_at.clear()
            self._version = version
        self._read_at[address.lower()] = self.storage.clock.seconds()


class Injector:
    """The one way into the queue; :meth:`inject` applies the policy of the draft's source."""

    def __init__(self, config: Config, storage: InjectorStorage, clock: Any,
                 on_queued: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.settings = config.submission
        self.hostname = config.hostname
        self.storage = storage
        self.on_queued = on_queued  # e.g. wake this daemon's delivery service
        self.not_suppressed = NotSuppressedCache(storage)
        self.sender_domains = SenderDomains(config, storage, clock)  # DKIM: [submission] require_known_domain

    # -- the checks made before there is a message (MAIL, RCPT)

    def check_sender(self, source: Source, user: str | None) -> Reply | None | defer.Deferred:
        """``[submission] rate_limit_per_user`` for a new transaction of ``user`` (None: allowed)."""
        rate = self.settings.rate_limit_per_user
        if rate is None or user is None or not POLICIES[source].user_rate:
            return None
        d = defer.ensureDeferred(self.storage.hit_user_rate(user, rate.count, rate.period))

        def decided(allowed: bool) -> Reply | None:
            return None if allowed else smtpsession.RATE_LIMITED

        def failed(failure: Any) -> Reply:
            failure.trap(StorageUnavailable)
            return smtpsession.STORAGE_UNAVAILABLE

        return d.addCallbacks(decided, failed)

    def check_recipient(self, source: Source, recipient: str) -> Reply | None | defer.Deferred:
        """The suppression list for ``recipient`` (None: allowed); a lookup times out after [redis] timeout."""
        if not POLICIES[source].suppression or self.not_suppressed.known(recipient):
            return None
        d = self.storage.suppression_of(recipient)

        def decided(entry: dict | None) -> Reply | None:
            if entry is None:
                self.not_suppressed.remember(recipient)
                return None
            return suppressed_reply(recipient, entry)

        def failed(failure: Any) -> Reply:
            log.warn("{source}: suppression check failed: {e}", source=source.value, e=failure.getErrorMessage())
            return smtpsession.STORAGE_UNAVAILABLE

        return d.addCallbacks(decided, failed)

    # -- the door

    async def inject(self, draft: Draft, *, source: Source) -> InjectResult:
        """
        Prepare, sign, enqueue and settle ``draft`` under its source's policy. Raises
        StorageFull or StorageUnavailable when Redis did not store it (nothing is queued).
        """
        policy = POLICIES[source]
        new = self.prepare(draft, source)
        dkim: SignResult | None = None
        if policy.sender_domain:
            dkim = self.sender_domains.sign_now(new)
            if dkim is None:
                dkim = await self.sender_domains.sign(new)  # DKIM-Signature put on top, or why not
            if dkim.refused is not None:
                return InjectResult(new.id, refused=dkim.refused)
        dedupe = None
        own_message_id = new.summary.get("message_id") != f"<{new.id}@{self.hostname}>"
        if policy.dedupe and self.settings.dedupe_window and own_message_id:  # not one prepare() generated
            dedupe = (new.user, new.summary["message_id"], self.settings.dedupe_window)
        if dedupe is None:
            message_id = await self.storage.enqueue(new)
        else:
            message_id = await self.storage.enqueue(new, dedupe=dedupe)
        if message_id != new.id:
            return InjectResult(message_id, duplicate=True)
        # Stored, unsettled: the confirmation below makes its jobs claimable; if anything
        # fails before it, the message is cancelled (not delivered).
        try:
            if dkim is not None and dkim.unsigned is not None:
                await self.sender_domains.record_unsigned(new, dkim.unsigned)
        except BaseException:
            self.storage.cancel(message_id)
            raise
        confirmed = self.storage.confirm(message_id)
        metrics.count_queued(len(new.recipients))
        if self.on_queued is not None:
            on_queued = self.on_queued
            confirmed.addCallback(lambda _: on_queued())
        return InjectResult(message_id, size=len(new.content))

    def prepare(self, draft: Draft, source: Source) -> NewMessage:
        """Complete the message for delivery and collect its tag, metadata and summary."""
        new = NewMessage(sender=draft.sender, recipients=list(draft.recipients), content=b"", id=draft.id,
                         user=draft.user, client=draft.client, tag=draft.tag)
        fields, rest = msg.split_header(draft.content)
        kept: list[msg.HeaderField] = []
        first: dict[str, msg.HeaderField] = {}  # lowercased name -> the first field kept so named
        for f in fields:
            lower = f.name.lower()
            if lower in TAG_HEADERS:
                new.tag = f.decoded
            elif lower.startswith(METADATA_PREFIXES):
                name = f.name[len("x-pm-metadata-") if lower.startswith("x-pm-") else len("x-mailrelay-metadata-"):]
                new.metadata[name] = f.decoded
            elif not lower.startswith(OWN_HEADER_PREFIX):
                kept.append(f)
                first.setdefault(lower, f)
        added = [] if draft.received is None else [draft.received]
        if POLICIES[source].id_header:
            added.append(msg.make_field(ID_HEADER, new.id))  # ties complaints and bounces to the message
        message_id_field = first.get("message-id")
        if message_id_field is None:
            message_id_field = msg.make_field("Message-ID", f"<{new.id}@{self.hostname}>")
            added.append(message_id_field)
        if "date" not in first:
            added.append(msg.make_field("Date", msg.date_now()))
        if rest and not rest.startswith(b"\r\n"):
            rest = b"\r\n" + rest  # the body had no header, or no blank line before it
        new.content = msg.join_header(added + kept, rest)
        from_addresses = msg.addresses(first.get("from"))
        subject = first.get("subject")
        new.summary = {
            "from": from_addresses[0] if from_addresses else "",
            "to": msg.addresses(first.get("to")),
            "cc": msg.addresses(first.get("cc")),
            "subject": subject.decoded if subject else "",
            "message_id": message_id_field.value,
        }
        return new
