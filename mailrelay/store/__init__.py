"""The Redis store: the only code that names a Redis key. What services use is re-exported here."""
from mailrelay.store.base import new_owner
from mailrelay.store.connection import connect_redis
from mailrelay.store.datastore import Storage
from mailrelay.store.errors import DataVersionError, RedisFailed, StorageError, StorageFull, StorageUnavailable
from mailrelay.store.events import Event
from mailrelay.store.protocol import encode_command
from mailrelay.store.queue import NOT_LOOKED_UP, ClaimedJob, NewMessage
from mailrelay.store.ratelimits import AuthClaim
from mailrelay.store.tracking import MESSAGE_STATUSES

__all__ = ["MESSAGE_STATUSES", "NOT_LOOKED_UP", "AuthClaim", "ClaimedJob", "DataVersionError", "Event",
           "NewMessage", "RedisFailed", "Storage", "StorageError", "StorageFull", "StorageUnavailable", "connect_redis",
           "encode_command", "new_owner"]
