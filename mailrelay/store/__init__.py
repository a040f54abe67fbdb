"""The Redis store: the only code that names a Redis key. What services use is re-exported here."""
from mailrelay.store.storage import (MESSAGE_STATUSES, NOT_LOOKED_UP, AuthClaim, ClaimedJob, Event,
                                     NewMessage, Storage, StorageError, StorageFull, StorageUnavailable,
                                     connect_redis, encode_command, new_owner)

__all__ = ["MESSAGE_STATUSES", "NOT_LOOKED_UP", "AuthClaim", "ClaimedJob", "Event", "NewMessage", "Storage",
           "StorageError", "StorageFull", "StorageUnavailable", "connect_redis", "encode_command", "new_owner"]
