"""
protocol: the Redis client's wire protocol as mailrelay uses it: RESP commands encoded in one join.

JOB
    :func:`encode_command` writes a command in RESP exactly as txredisapi's
    ``_build_command`` does with ``charset=None``, faster (a batch of queued messages is
    one command of some 40 arguments per message); :func:`redis_protocols` gives
    txredisapi's protocol classes (plain and Sentinel) that use it (through
    mailrelay.libcompat). :func:`quiet_connection_errors` keeps a lazy pool's failed
    handshakes from surfacing as unhandled errors. Used by mailrelay.store.connection and
    mailrelay.store.sentinel.

SECURITY
    Arguments are length-prefixed (RESP bulk strings): no argument can be read as a
    second command, whatever bytes it holds.

STANDARDS
    RESP 2 (the Redis serialization protocol): arrays of bulk strings.

DIAGNOSTICS
    None here: a connection's failure is logged by txredisapi and reaches callers through
    the store (mailrelay.store.errors).

CONFIGURATION
    None.
"""

from __future__ import annotations

from typing import Any

from mailrelay import libcompat


def quiet_connection_errors(pool: Any) -> None:
    """
    A lazy pool's factory fails its ``deferred`` when a connection's AUTH or SELECT fails (e.g.
    the pool is closed while connecting, at shutdown); nobody waits on it, and txredisapi has
    logged the reason already, so the failure must not surface as "Unhandled error in Deferred".
    """
    connected = getattr(libcompat.redis_pool_factory(pool), "deferred", None)
    if connected is not None:
        connected.addErrback(lambda failure: None)


def encode_command(args: tuple[Any, ...] | list[Any]) -> bytes:
    """
    A Redis command in RESP, as txredisapi's ``_build_command`` makes it with ``charset=None``
    (str as UTF-8, float as ``format(x, "f")``, bytes-like as their bytes, anything else as
    ``str(x)``), in one join instead of a bytearray extended token by token: a batch of
    queued messages is a command of some 40 arguments per message.
    """
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for arg in args:
        if type(arg) is not bytes:
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, float):
                arg = format(arg, "f").encode()
            elif isinstance(arg, (bytes, bytearray, memoryview)):
                arg = bytes(arg)
            else:
                arg = str(arg).encode()
        if len(arg) < 4096:
            append(b"$%d\r\n%b\r\n" % (len(arg), arg))
        else:  # not copied twice
            parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
    return b"".join(parts)


_REDIS_PROTOCOLS: tuple[type, type] | None = None


def redis_protocols() -> tuple[type, type]:
    """txredisapi's protocol and its Sentinel variant, with :func:`encode_command`
    (built on first use: importing txredisapi installs the reactor)."""
    global _REDIS_PROTOCOLS
    if _REDIS_PROTOCOLS is None:
        import txredisapi

        _REDIS_PROTOCOLS = (
            libcompat.with_command_encoder(txredisapi.RedisProtocol, encode_command),
            libcompat.with_command_encoder(txredisapi.SentinelRedisProtocol, encode_command),
        )
    return _REDIS_PROTOCOLS
