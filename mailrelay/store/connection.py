"""
connection: the connection to the configured Redis (managed socket, URL, or Sentinel).

JOB
    :func:`connect_redis` makes the lazy txredisapi connection pool the store uses (bytes
    replies, commands encoded by mailrelay.store.protocol): to the managed Redis's unix
    socket, to ``[redis] url``, or, with ``[redis] sentinels``, a
    :class:`~mailrelay.store.sentinel.SentinelFollower` that follows the primary.

SECURITY
    Trusts the Redis it is configured with (managed: a unix socket in state_dir, mode
    0700; external: URL with optional user name and password, or Sentinel). The password
    is sent with AUTH by txredisapi, never logged.

STANDARDS
    Redis URLs (``redis://[user:password@]host[:port][/db]``, ``unix://path?db=n``); RESP 2.

DIAGNOSTICS
    None of its own: a pool connects later and reconnects by itself; txredisapi logs why a
    connection failed, and callers see StorageUnavailable (mailrelay.store.errors).

CONFIGURATION
    ``[redis]`` url, sentinels, master_name.
"""

from __future__ import annotations

from typing import Any

from mailrelay import libcompat
from mailrelay.config import Config, RedisAddress, parse_redis_url
from mailrelay.store.protocol import quiet_connection_errors, redis_protocols
from mailrelay.store.sentinel import SentinelFollower


def connect_redis(config: Config, managed_socket: str | None) -> Any:
    """
    A lazy txredisapi connection pool to the configured Redis (bytes replies), its commands
    encoded by :func:`~mailrelay.store.protocol.encode_command`. With ``[redis] sentinels``
    it is a :class:`SentinelFollower`, used the same way.
    """
    import txredisapi

    common = dict(charset=None, convertNumbers=False)
    if config.redis.sentinels:
        return SentinelFollower(list(config.redis.sentinels), config.redis.master_name,
                                poolsize=4, **common)
    if managed_socket is not None:
        pool = txredisapi.lazyUnixConnectionPool(managed_socket, poolsize=4, reconnect=True, **common)
    else:
        address: RedisAddress = parse_redis_url(config.redis.url)
        if address.path:
            pool = txredisapi.lazyUnixConnectionPool(address.path, dbid=address.db, poolsize=4,
                                                     password=address.password, reconnect=True,
                                                     **common)
        else:
            pool = txredisapi.lazyConnectionPool(address.host, address.port, dbid=address.db,
                                                 poolsize=4, password=address.password,
                                                 username=address.username, connectTimeout=5,
                                                 reconnect=True, **common)
    # The pool connects on a later reactor turn (and reconnects) with its factory's protocol.
    libcompat.use_redis_protocol(pool, redis_protocols()[0])
    quiet_connection_errors(pool)
    return pool
