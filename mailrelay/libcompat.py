"""
libcompat: every use of a library's private internals, each with a public fallback.

JOB
    mailrelay reads or replaces a few private parts of its libraries where their
    public API has no way to do what it needs, or only a slower one. They all live
    here, one small function each, so that a library upgrade is checked in one
    place (tests/test_libcompat.py fails when an internal is gone or changed):

    txredisapi 1.6.0
        :func:`redis_pool_factory` (``ConnectionHandler._factory``),
        :func:`idle_redis_connections` (``RedisFactory.connectionQueue.pending``),
        :func:`redis_pool_connections` (``RedisFactory.pool`` and ``.slots``),
        :func:`with_command_encoder` (overrides ``BaseRedisProtocol._build_command``),
        :func:`use_redis_protocol` (sets ``RedisFactory.protocol`` of a made pool).
    Twisted 26.10.0
        :func:`tcp_send_buffer_empty` (``FileDescriptor._tempDataLen``, ``offset``,
        ``dataBuffer``), :func:`request_disconnected` (``http.Request._disconnected``),
        :func:`quiet_http_connection_pool` (``HTTPConnectionPool._factory``).

    When an internal is missing, each function takes its fallback: the public API
    (e.g. ``request.channel is None``) or the slower generic path (the pool's own
    ``execute_command``, txredisapi's own command encoding, ``transport.write``),
    and logs once, at warning level, that the fast path is off.

SECURITY
    Reads no input. The internals are read, never trusted for more than their
    documented meaning in the versions named above: a change of meaning (not just
    a removal) could reorder bytes on a socket (:func:`tcp_send_buffer_empty`) or
    send a command on a connection another caller holds (:func:`idle_redis_connections`),
    which is why the tests check the behaviour assumed, not only the names.

STANDARDS
    None.

DIAGNOSTICS
    ``<library> internal <name> is missing (written against <version>): <what is
    lost>; using <fallback>``: once per internal and process, at warning level.

CONFIGURATION
    None: reads no config key and owns no file or Redis data.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

log = Logger()

#: The versions the internals below were written against (checked by tests/test_libcompat.py).
TXREDISAPI_VERSION = "1.6.0"
TWISTED_VERSION = "26.10.0"

_warned: set[str] = set()


def _fast_path_off(library: str, internal: str, version: str, lost: str, fallback: str) -> None:
    """Log, once per internal, that it is missing and which fallback is used."""
    if internal in _warned:
        return
    _warned.add(internal)
    log.warn("{library} internal {internal} is missing (written against {version}): {lost}; "
             "using {fallback}", library=library, internal=internal, version=version,
             lost=lost, fallback=fallback)


# -- txredisapi ---------------------------------------------------------------------------


def redis_pool_factory(pool: Any) -> Any | None:
    """
    The ``RedisFactory`` behind a txredisapi connection pool (``ConnectionHandler._factory``,
    txredisapi 1.6.0), or None when the pool has none.
    """
    factory = getattr(pool, "_factory", None)
    if factory is None:
        _fast_path_off("txredisapi", "ConnectionHandler._factory", TXREDISAPI_VERSION,
                       "the pool's connections cannot be reached", "the pool's public methods only")
    return factory


def idle_redis_connections(pool: Any) -> list[Any] | None:
    """
    The live list of the pool's idle connections (``RedisFactory.connectionQueue``, a
    ``PeekableQueue``, and its ``DeferredQueue.pending``, txredisapi 1.6.0): those neither
    taken by a pipeline or transaction nor waited for. A command may be sent on any of them
    directly. None when it cannot be found: callers then use ``pool.execute_command``.
    """
    queue = getattr(redis_pool_factory(pool), "connectionQueue", None)
    pending = getattr(queue, "pending", None)
    if not isinstance(pending, list):
        _fast_path_off("txredisapi", "RedisFactory.connectionQueue", TXREDISAPI_VERSION,
                       "commands cannot be sent on an idle connection directly",
                       "the pool's execute_command (slower)")
        return None
    return pending


def redis_pool_connections(pool: Any) -> set[Any]:
    """
    Every connection of the pool: connected ones (``RedisFactory.pool``) and those of each
    reconnecting slot (``RedisFactory.slots[i].protocol``, txredisapi 1.6.0). Without slots,
    the connected ones only; without the factory, none.
    """
    factory = redis_pool_factory(pool)
    if factory is None:
        return set()
    connections = set(getattr(factory, "pool", ()))
    slots = getattr(factory, "slots", None)
    if slots is None:
        _fast_path_off("txredisapi", "RedisFactory.slots", TXREDISAPI_VERSION,
                       "a connection still handshaking is not found",
                       "the connected ones only")
        return connections
    connections.update(slot.protocol for slot in slots if getattr(slot, "protocol", None) is not None)
    return connections


def with_command_encoder(protocol_class: type, encode: Callable[[tuple[Any, ...]], bytes]) -> type:
    """
    A subclass of a txredisapi protocol whose commands are encoded by ``encode(args)``
    (overriding ``BaseRedisProtocol._build_command(*args, **kwargs)``, txredisapi 1.6.0; its
    result is written to the transport as is). Without that method, ``protocol_class``
    itself: txredisapi encodes (the same bytes, more slowly).
    """
    if not callable(getattr(protocol_class, "_build_command", None)):
        _fast_path_off("txredisapi", "BaseRedisProtocol._build_command", TXREDISAPI_VERSION,
                       "commands cannot be encoded in one join", "txredisapi's own encoding")
        return protocol_class

    def _build_command(self: Any, *args: Any, **kwargs: Any) -> bytes:
        return encode(args)

    return type(protocol_class.__name__, (protocol_class,), {"_build_command": _build_command})


def use_redis_protocol(pool: Any, protocol_class: type) -> None:
    """Make a lazy pool's later connections (and reconnections) ``protocol_class``
    (``RedisFactory.protocol``, txredisapi 1.6.0); without the factory, they stay txredisapi's."""
    factory = redis_pool_factory(pool)
    if factory is not None:
        factory.protocol = protocol_class


# -- Twisted ------------------------------------------------------------------------------


def tcp_send_buffer_empty(transport: Any) -> bool:
    """
    Nothing waits in a ``tcp.Connection``'s write buffer (``abstract.FileDescriptor``,
    Twisted 26.10.0: ``dataBuffer`` from ``offset`` on, plus ``_tempDataLen`` bytes not yet
    joined into it), so bytes sent straight to the socket now cannot overtake any. False
    (the caller then uses ``transport.write``) when those attributes are missing.
    """
    try:
        return not transport._tempDataLen and transport.offset == len(transport.dataBuffer)
    except AttributeError:
        _fast_path_off("Twisted", "FileDescriptor._tempDataLen", TWISTED_VERSION,
                       "replies cannot skip the write buffer", "transport.write (one more reactor turn)")
        return False


def request_disconnected(request: Any) -> bool:
    """
    The client of a ``twisted.web`` request has gone away (``http.Request._disconnected``,
    Twisted 26.10.0, set by ``connectionLost``). Without it, the public sign of the same
    event: ``connectionLost`` also sets ``request.channel`` to None.
    """
    try:
        return request._disconnected
    except AttributeError:
        _fast_path_off("Twisted", "Request._disconnected", TWISTED_VERSION,
                       "nothing", "request.channel is None")
        return getattr(request, "channel", None) is None


def quiet_http_connection_pool(pool: Any) -> None:
    """
    Stop a ``twisted.web.client.HTTPConnectionPool`` logging "Starting factory" for every
    connection it opens: its per-connection factory class (``HTTPConnectionPool._factory``,
    ``_HTTP11ClientFactory`` in Twisted 26.10.0) is replaced by a subclass with
    ``noisy = False``. Without it, the pool stays noisy.
    """
    factory = getattr(pool, "_factory", None)
    if not isinstance(factory, type):
        _fast_path_off("Twisted", "HTTPConnectionPool._factory", TWISTED_VERSION,
                       "each HTTP connection logs a line", "the default (noisy) factory")
        return
    pool._factory = type("Quiet" + factory.__name__.lstrip("_"), (factory,), {"noisy": False})
