"""
Reading the store's Redis data in tests, by the key names of mailrelay.store.keys (what the
product never needs to read: it lived in Storage as ``queued_jobs`` and ``webhook_jobs``).
"""

from __future__ import annotations

from mailrelay.store import Storage


async def queued_jobs(storage: Storage, domain: str) -> list[str]:
    """Job ids queued for a destination domain, earliest first."""
    reply = await storage.redis.execute_command("ZRANGE", storage.keys.domain_queue(domain.lower()), 0, -1)
    return [m.decode() for m in reply]


async def webhook_jobs(storage: Storage) -> list[tuple[str, int]]:
    """Queued webhook jobs with their due time (or lease expiry) in ms, earliest first."""
    reply = await storage.redis.execute_command("ZRANGE", storage.keys.webhook_queue, 0, -1, "WITHSCORES")
    return [(reply[i].decode(), int(float(reply[i + 1]))) for i in range(0, len(reply), 2)]
