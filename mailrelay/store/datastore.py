"""
datastore: the one storage object the services receive, composed of one store per data area.

JOB
    :class:`Storage` is built from the data-area stores (as Synapse's ``DataStore``):
    mailrelay.store.queue (messages and delivery jobs, with .settlement and
    .suppression), .bounces (with .tracking), .ratelimits, .admin, .webhooks and
    .archivefeed (consumer groups on the event stream, through .streams), .domains
    .cluster, .archiverelease and .archiveexport (the Redis archive read out for the
    migration to PostgreSQL), all on mailrelay.store.base. A change to one data area
    is a change to its store; this class only lists them. Each store's header names
    the Redis keys it owns and the Lua scripts it runs; mailrelay.store.keys builds
    every key name.

SECURITY
    As the stores': Redis is trusted (see mailrelay.store.connection).

STANDARDS
    None beyond the stores'.

DIAGNOSTICS
    The stores' (mailrelay.store.errors: StorageUnavailable, StorageFull,
    DataVersionError).

CONFIGURATION
    ``[redis]``, ``[tracking]``, ``[delivery] max_queue_lifetime`` (through
    mailrelay.store.base).
"""

from __future__ import annotations

from mailrelay.store.admin import AdminStore
from mailrelay.store.archiveexport import ArchiveExportStore
from mailrelay.store.archivefeed import ArchiveFeedStore
from mailrelay.store.archiverelease import ArchiveReleaseStore
from mailrelay.store.bounces import BounceStore
from mailrelay.store.cluster import ClusterStore
from mailrelay.store.domains import SenderDomainStore
from mailrelay.store.queue import QueueStore
from mailrelay.store.ratelimits import RateLimitStore
from mailrelay.store.webhooks import WebhookStore


class Storage(QueueStore, BounceStore, RateLimitStore, AdminStore, WebhookStore, ArchiveFeedStore,
              SenderDomainStore, ClusterStore, ArchiveReleaseStore, ArchiveExportStore):
    """The storage layer: the connection to Redis plus every store's operations."""
