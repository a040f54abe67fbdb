"""
interfaces: the narrow, typed views of the store that services, the web and the CLI depend on.

JOB
    Names, as :class:`typing.Protocol` classes, the store methods each consumer calls, one
    protocol per data area and role (the queue's entrance, the delivery queue, the
    suppression list, bounces, tracking reads, the admin queue, webhooks, the archiver's
    feed, DKIM keys, the cluster registry, ...), and composes them into one protocol per consumer (bottom of the
    module: ``InjectorStorage``, ``DeliveryStorage``, ``WebStorage``, ...). A consumer
    annotates its ``storage`` parameter with its protocol, never with ``Any`` nor the whole
    :class:`mailrelay.store.Storage`: what it may call is written down, and a reader sees
    which data a module touches. Signatures are copied from the store (same names,
    ``async def`` where the store's is a coroutine, the same parameters); the composed
    ``Storage`` satisfies every protocol here, which tests/test_store_interfaces.py checks
    (a store method renamed without its protocol fails there). A protocol lists only
    methods some consumer calls: a store method no protocol names is store-internal or
    used only by the composition roots (``mailrelay.service``, ``mailrelay.cli.common``),
    which build the concrete ``Storage`` and keep its type.

SECURITY
    None of its own: types only, no code runs. The protocols do not widen what a consumer
    could do (it receives the whole store at run time); they document and let a type
    checker enforce what it does.

STANDARDS
    PEP 544 (protocols: structural subtyping), PEP 526 (variable annotations for the
    store attributes a consumer reads).

DIAGNOSTICS
    None at run time. A consumer calling a method its protocol lacks is a type-checker
    error (mypy); a protocol out of step with the store fails tests/test_store_interfaces.py
    with the member's name.

CONFIGURATION
    None. (The store's own keys are listed by the store modules that own them.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Protocol, Sequence

if TYPE_CHECKING:
    from twisted.internet import defer

    from mailrelay.store import AuthClaim, ClaimedJob, Event, NewMessage, StorageError
    from mailrelay.store.archivefeed import ArchiveLag, FeedEntry
    from mailrelay.store.archiverecords import ArchiveBatch
    from mailrelay.store.archiverelease import Released
    from mailrelay.store.streams import StreamEntry
    from mailrelay.store.records import (AdminMessage, BounceRecord, MessageRecord, MessageSummary, Suppression,
                                         TimelineEvent)


# -- the queue ------------------------------------------------------------------------


class QueueEntrance(Protocol):
    """Storing a new message: stored unsettled, then confirmed (queued) or cancelled."""

    async def enqueue(self, message: NewMessage,
                      dedupe: tuple[str | None, str, float] | None = None) -> str: ...

    def confirm(self, message_id: str) -> defer.Deferred: ...

    def cancel(self, message_id: str) -> None: ...


class DeliveryQueue(Protocol):
    """The delivery side of the queue: due domains, leased jobs and their outcomes."""

    async def due_domains(self, limit: int = 100) -> list[str]: ...

    async def claim(self, domain: str, limit: int, owner: str, lease_seconds: float,
                    body_budget: int = ...) -> list[ClaimedJob]: ...

    async def record_many(self, outcomes: list[tuple[ClaimedJob, str, Event, int | None]],
                          owner: str) -> list[str]: ...

    async def release(self, jobs: list[ClaimedJob], owner: str) -> int: ...

    async def renew(self, jobs: list[str], lease_seconds: float) -> int: ...

    async def requeue_expired_leases(self) -> int: ...

    def decompress_body(self, stored: bytes) -> bytes: ...


class UnsettledSweep(Protocol):
    """Confirming what a dead daemon left unsettled (the cluster heartbeat runs it)."""

    async def sweep_unsettled(self, heartbeat_ttl: float, min_age: float,
                              max_age: float | None = None) -> list[tuple[str, str]]: ...


class RedisClock(Protocol):
    """Redis's clock as measured by the store (times in stored data are on it)."""

    def now_ms(self) -> int: ...

    async def measure_clock(self) -> None: ...


class Health(Protocol):
    """Whether Redis answers (health checks, /metrics)."""

    async def ping(self) -> bool: ...


# -- sending limits ---------------------------------------------------------------------


class SendingLimits(Protocol):
    """Per-user sending rates and per-client AUTH failure counts, shared by all daemons."""

    async def hit_user_rate(self, user: str, limit: int, period: float) -> bool: ...

    async def claim_auth_check(self, client: str, limit: int, period: float) -> AuthClaim: ...

    async def refund_auth_check(self, client: str, token: str) -> None: ...


# -- suppression -------------------------------------------------------------------------


class SuppressionCheck(Protocol):
    """RCPT's look-up of one address, batched per reactor turn, with the list's version."""

    #: The clock ``suppressions_version``'s read time is measured on (an IReactorTime: typed
    #: Any, as zope interfaces are not types to mypy without its zope plugin).
    clock: Any
    #: (change counter of the suppression list as last read, when it was read).
    suppressions_version: tuple[str | None, float]

    def suppression_of(self, address: str) -> defer.Deferred: ...


class SuppressionLookup(Protocol):
    """The suppression entries of many addresses at once (delivery, before sending)."""

    async def suppressions(self, addresses: list[str]) -> dict[str, Suppression]: ...


class SuppressionList(Protocol):
    """The whole suppression list, and changing it by hand (API, CLI)."""

    async def list_suppressions(self) -> list[Suppression]: ...

    async def add_suppression(self, address: str, entry: dict[str, Any]) -> bool: ...

    async def remove_suppression(self, address: str) -> bool: ...


# -- bounces -----------------------------------------------------------------------------


class VerpKey(Protocol):
    """The VERP HMAC key shared through Redis (when not configured)."""

    async def verp_secret(self) -> bytes: ...


class BounceWriter(Protocol):
    """Storing a bounce (and what it proves: recipient state, suppression) in one step."""

    async def record_bounce(self, record: dict[str, Any], raw: bytes, *, message_id: str | None,
                            rcpt: int | None, state: str | None, event: Event | None,
                            suppress: dict[str, Any] | None, max_unmatched: int = 1000,
                            max_per_recipient: int = 10) -> bool | None: ...


class BounceRecords(Protocol):
    """Stored bounce records and their raw copies, by id and searched."""

    async def get_bounce(self, bounce_id: str) -> BounceRecord | None: ...

    async def get_bounce_raw(self, bounce_id: str) -> bytes | None: ...

    async def search_bounces(self, *, type: str | None = None, recipient: str | None = None,
                             since_ms: int | None = None, limit: int = 50,
                             cursor: tuple[int, str] | None = None
                             ) -> tuple[list[BounceRecord], tuple[int, str] | None]: ...


class BounceReader(BounceRecords, Protocol):
    """Stored bounce records, their raw copies, and every bounce id (reclassification)."""

    def bounce_ids(self, batch: int = 1000) -> AsyncIterator[str]: ...


class BounceReclassifier(Protocol):
    """Rewriting a stored bounce's classification (``mailrelay bounces reclassify``)."""

    async def reclassify_bounce(self, bounce_id: str, fields: dict[str, Any], *,
                                reactivate: str | None = None) -> tuple[bool, bool]: ...


# -- tracking ----------------------------------------------------------------------------


class MessageReader(Protocol):
    """One message's record, timeline and body."""

    async def get_message(self, message_id: str) -> MessageRecord | None: ...

    async def get_timeline(self, message_id: str) -> tuple[TimelineEvent, ...]: ...

    async def get_body(self, message_id: str) -> bytes | None: ...


class MessageSearch(Protocol):
    """Message search newest first with cursors, and messages per status."""

    async def search_messages(self, *, recipient: str | None = None, tag: str | None = None,
                              status: str | None = None, since_ms: int | None = None,
                              until_ms: int | None = None, limit: int = 50,
                              cursor: tuple[int, str] | None = None
                              ) -> tuple[list[MessageSummary], tuple[int, str] | None]: ...

    async def status_counts(self, since_ms: int | None = None) -> dict[str, int]: ...


class ArchiveReads(MessageReader, MessageSearch, BounceRecords, Protocol):
    """The archive's reads, answered alike by the Redis stores and by PostgreSQL
    (mailrelay.store.archiveread.ArchiveReader): same signatures, same records, same cursors."""


class TrackingSearch(MessageSearch, Protocol):
    """Message search and the event counters (API, status page, /metrics)."""

    async def counters(self, resolution: str, buckets: int) -> list[tuple[int, dict[str, int]]]: ...


# -- administration of the queue ---------------------------------------------------------


class QueueSummary(Protocol):
    """The queue's size by domain (``mailrelay queue list``, stats, status page, /metrics)."""

    async def admin_queue_summary(self) -> dict[str, Any]: ...


class AdminQueue(QueueSummary, Protocol):
    """``mailrelay queue``: one message's jobs, retrying and deleting them."""

    async def admin_message(self, message_id: str) -> AdminMessage | None: ...

    async def admin_retry_message(self, message_id: str) -> tuple[int, int] | None: ...

    async def admin_retry_domain(self, domain: str) -> tuple[int, int]: ...

    async def admin_retry_all(self) -> tuple[int, int]: ...

    async def admin_delete(self, message_id: str, recipient: str | None = None,
                           detail: str = ...) -> int | None: ...


# -- webhooks ----------------------------------------------------------------------------


class WebhookQueue(Protocol):
    """The event stream's consumer group and the webhook job queue."""

    #: The consumer group's name (for the log).
    WEBHOOK_GROUP: str

    async def webhook_create_group(self) -> bool: ...

    async def webhook_read_events(self, consumer: str, count: int) -> list[StreamEntry]: ...

    async def webhook_reclaim_events(self, consumer: str, min_idle_seconds: float,
                                     count: int) -> list[StreamEntry]: ...

    async def webhook_ack_events(self, entry_ids: list[str]) -> int: ...

    async def webhook_prune_consumers(self, keep: str, idle_seconds: float) -> int: ...

    async def webhook_event_source(self, message_id: str, rcpt: int, bounce_id: str, *,
                                   find_bounce: bool = False, at_ms: int = 0,
                                   window_ms: int = 60_000) -> dict[str, Any]: ...

    async def webhook_enqueue(self, entry_id: str, jobs: list[dict[str, Any]], due_ms: int) -> int: ...

    async def webhook_claim(self, owner: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]: ...

    async def webhook_finish(self, job: dict[str, Any], owner: str, outcome: str, *,
                             due_ms: int | None = None, attempts: int = 0, error: str = "",
                             event: Event | None = None) -> str: ...


# -- the archiver ------------------------------------------------------------------------


class ArchiveFeed(Protocol):
    """The archiver's consumer group on the event stream: batches, snapshots, marks, trims, lag."""

    #: The consumer group's name (for the log, and the groups that count when trimming).
    ARCHIVE_GROUP: str

    async def archive_create_group(self) -> bool: ...

    async def archive_read(self, consumer: str, count: int) -> list[FeedEntry]: ...

    async def archive_take_over(self, consumer: str, min_idle_seconds: float, count: int) -> list[FeedEntry]: ...

    async def archive_keep(self, consumer: str, entry_ids: list[str]) -> int: ...

    async def archive_prune_consumers(self, keep: str, idle_seconds: float) -> int: ...

    async def archive_snapshot(self, entries: Sequence[FeedEntry]) -> ArchiveBatch: ...

    async def archive_mark(self, batch: ArchiveBatch, entry_ids: Sequence[str]) -> int: ...

    async def archive_trim(self, groups: Sequence[str], keep_seconds: float = ...) -> int | None: ...

    async def archive_lag(self) -> ArchiveLag | None: ...


# -- sender domains and their DKIM keys --------------------------------------------------


class DkimSigningKeys(Protocol):
    """What the signer reads (keys, their change counter) and writes (a message sent unsigned)."""

    async def dkim_version(self) -> int: ...

    async def dkim_domains(self) -> dict[str, dict[str, Any]]: ...

    async def record_unsigned(self, message_id: str, recipients: list[str], detail: str) -> bool: ...


class DomainRegistry(Protocol):
    """The sender domains: records (compare-and-set by their stored text) and DNS check results."""

    async def dkim_domains(self) -> dict[str, dict[str, Any]]: ...

    async def dkim_domain(self, domain: str) -> tuple[dict[str, Any] | None, str]: ...

    async def dkim_put_domain(self, domain: str, record: dict[str, Any] | None, expected: str) -> bool: ...

    async def dkim_checks(self) -> dict[str, dict[str, Any]]: ...

    async def dkim_record_check(self, domain: str, result: dict[str, Any]) -> None: ...


# -- the cluster -------------------------------------------------------------------------


class ClusterMembership(Protocol):
    """A daemon's heartbeat, and its data version check at start."""

    #: The Redis data format version this code reads and writes.
    DATA_VERSION: int

    @property
    def DataVersionError(self) -> type[StorageError]:
        """What check_data_version raises for data of a version this code cannot use."""

    async def check_data_version(self) -> int: ...

    async def heartbeat(self, owner: str, info: dict[str, Any], ttl: float) -> tuple[int, int | None]: ...

    async def leave_cluster(self, owner: str) -> None: ...


class ClusterView(Protocol):
    """The live daemons (stats API)."""

    async def cluster_members(self) -> list[dict[str, Any]]: ...


class ArchiveLagView(Protocol):
    """How far the archiver is behind the event stream (stats API)."""

    async def archive_lag(self) -> ArchiveLag | None: ...


# -- what each consumer uses -------------------------------------------------------------


class InjectorStorage(QueueEntrance, SendingLimits, SuppressionCheck, DkimSigningKeys, Protocol):
    """mailrelay.services.inject.Injector, the one door into the queue (with its
    NotSuppressedCache and SenderDomains); also mailrelay.services.submission.SubmissionHandler,
    which adds its AuthThrottle and builds an Injector when it is given none."""


class DeliveryStorage(DeliveryQueue, MessageReader, SuppressionLookup, RedisClock, VerpKey, BounceWriter,
                      InjectorStorage, Protocol):
    """mailrelay.services.delivery.DeliveryService (with its BounceRecorder; it builds the
    Injector for its DSNs when it is given none)."""


class BounceListenerStorage(VerpKey, BounceWriter, Protocol):
    """The bounce listener (mailrelay.service.BounceListener, services.bounces.BounceHandler);
    it reads the messages reports name through the archive's reads (ArchiveReads: an
    ArchiveView over this storage and the PostgreSQL archive)."""


class BounceReclassifyStorage(SuppressionList, BounceReader, BounceReclassifier, Protocol):
    """mailrelay.services.bounces.reclassify_bounces (at data version 2 with the PostgreSQL
    archive's bounces too: mailrelay.store.archivebounces)."""


class DataVersionView(Protocol):
    """The data format version as stored (``mailrelay cluster``, and the admin commands that
    read the PostgreSQL archive once the data is at the version that moved it there)."""

    async def stored_data_version(self) -> str | None: ...


class BounceReclassifyAdminStorage(BounceReclassifyStorage, DataVersionView, Protocol):
    """``mailrelay bounce reclassify`` (which reads the data version to find the archive)."""


class SuppressionAdminStorage(RedisClock, VerpKey, SuppressionList, ArchiveReads, DataVersionView, Protocol):
    """``mailrelay suppressions`` (list, add, remove; unproven: its bounces and messages through
    an ArchiveView over this storage and the PostgreSQL archive, mailrelay.services.bounces.
    unproven_suppressions)."""


class WebhookStorage(WebhookQueue, RedisClock, Protocol):
    """mailrelay.services.webhooks.WebhookService."""


class ArchiveRelease(Protocol):
    """Releasing the Redis keys of what is final and archived (mailrelay.store.archiverelease)."""

    async def release_archived(self, limit: int = 500) -> Released: ...


class ArchiverStorage(ArchiveFeed, ArchiveRelease, Protocol):
    """mailrelay.services.archiver.ArchiverService."""

    #: This daemon's identity: the archiver's consumer name.
    owner: str
    #: The webhook service's consumer group (it counts when trimming, when webhooks run).
    WEBHOOK_GROUP: str


class ClusterStorage(ClusterMembership, UnsettledSweep, RedisClock, Protocol):
    """mailrelay.services.cluster.ClusterService."""


class MetricsStorage(Health, TrackingSearch, QueueSummary, Protocol):
    """The cluster-wide figures of /metrics (mailrelay.web.api)."""


class StatusPageStorage(Health, TrackingSearch, MessageReader, BounceReader, QueueSummary,
                        DomainRegistry, Protocol):
    """mailrelay.web.statuspage.StatusPage."""


class ApiStorage(Health, TrackingSearch, MessageReader, BounceReader, QueueSummary, SuppressionList,
                 ClusterView, ArchiveLagView, DomainRegistry, Protocol):
    """mailrelay.web.api.ApiResource (the JSON API and the stats)."""


class WebStorage(ApiStorage, StatusPageStorage, MetricsStorage, Protocol):
    """mailrelay.web.server.WebService: the API, the status page and /metrics."""
