"""
sentinel: following the primary of a Sentinel-monitored Redis through failovers.

JOB
    :class:`SentinelFollower` is the connection pool to the primary named by ``[redis]
    master_name``: it asks the Sentinels for the primary's address before each
    connection (in short rounds during a failover), checks ``ROLE`` once connected,
    subscribes to ``+switch-master`` on every Sentinel (PINGed, reopened with backoff),
    and drops its connections when the primary moves or a command is answered
    ``READONLY`` (a demoted primary); the pool then reconnects to the new primary.

SECURITY
    Trusts the configured Sentinels to name the primary; the primary's password (from
    ``[redis] url``) is sent to it with AUTH, never to the Sentinels.

STANDARDS
    Redis Sentinel's client protocol (``SENTINEL get-master-addr-by-name``, the
    ``+switch-master`` channel), ``ROLE``; RESP 2.

DIAGNOSTICS
    ``following Redis master <name>: subscribed to +switch-master on Sentinel <address>``;
    ``Redis master <name> moved from <old> to <new> (Sentinel)``; ``Redis answered
    READONLY: it is no longer the master <name>; reconnecting via Sentinel``; ``Redis
    master <name> is now <address> (Sentinel); reconnecting`` (an announcement missed
    while a subscription was down).

CONFIGURATION
    ``[redis]`` sentinels, master_name.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay import libcompat
from mailrelay.store.protocol import quiet_connection_errors, redis_protocols

log = Logger()

#: Seconds between PINGs on a Sentinel subscription, and how long the PONG may take
#: before the connection is considered dead and reopened (with backoff).
SENTINEL_PING_INTERVAL = 10.0
SENTINEL_PING_TIMEOUT = 5.0
#: Finding the primary through the Sentinels before a connection attempt: one round of
#: questions waits this long for an answer naming a healthy primary, and rounds are repeated
#: until SENTINEL_DISCOVERY_TIMEOUT (during a failover, no Sentinel names one for a moment).
SENTINEL_DISCOVERY_ROUND = 0.5
SENTINEL_DISCOVERY_TIMEOUT = 10.0


def _is_readonly(failure: Any) -> bool:
    """The command failed because the server is a replica (a demoted primary)."""
    value = failure.value
    if isinstance(value, defer.FirstError):  # pipelines
        value = value.subFailure.value
    return str(value).startswith("READONLY")


class SentinelFollower:
    """
    The connection pool to the primary of a Sentinel-monitored Redis, following failovers.

    Used like a txredisapi connection handler (``execute_command``, ``eval``, ``pipeline``,
    ``disconnect``; anything else is passed to the pool). The pool asks the Sentinels for
    the primary's address before each connection and checks ``ROLE`` once connected.
    Besides, one subscription to ``+switch-master`` per Sentinel (reopened with backoff,
    PINGed to notice a silent Sentinel): when one announces a new address for our master,
    every pool connection is closed, and the pool reconnects to the address the Sentinels
    now give. A ``READONLY`` reply (a demoted primary, a missed announcement) does the same.
    Commands in flight on a closed connection fail (451 to the client); later ones wait
    for the new connection.
    """

    def __init__(self, sentinels: list[tuple[str, int]], master_name: str, *,
                 poolsize: int = 4, **connection_kwargs: Any) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import HostnameEndpoint

        master_factory, subscription_factory = _sentinel_factories()
        self.master_name = master_name
        self.sentinel = master_factory.sentinel_class(sentinels)
        self.pool = self.sentinel.master_for(master_name, factory_class=master_factory,
                                             poolsize=poolsize, **connection_kwargs)
        quiet_connection_errors(self.pool)
        self._generation = 0          # bumped whenever the pool's connections are dropped
        self._master: str | None = None   # "host:port" of the last +switch-master followed
        self._subscribed: set[str] = set()
        self._subscriptions = []
        for host, port in sentinels:
            factory = subscription_factory(self, f"{host}:{port}")
            factory.startConnecting(HostnameEndpoint(reactor, host, port, timeout=5))
            self._subscriptions.append(factory)

    # -- the connection handler interface ------------------------------------------------

    def execute_command(self, *args: Any, **kwargs: Any) -> defer.Deferred:
        return self._watch(self.pool.execute_command(*args, **kwargs), self._generation)

    def eval(self, script: str, keys: list[Any] = [], args: list[Any] = []) -> defer.Deferred:
        return self._watch(self.pool.eval(script, keys, args), self._generation)

    def pipeline(self) -> defer.Deferred:
        generation = self._generation
        return self.pool.pipeline().addCallback(_WatchedPipeline, self, generation)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "pool":
            raise AttributeError(name)
        attribute = getattr(self.pool, name)
        if not callable(attribute):
            return attribute

        def watched(*args: Any, **kwargs: Any) -> Any:
            generation = self._generation
            result = attribute(*args, **kwargs)
            if isinstance(result, defer.Deferred):
                return self._watch(result, generation)
            return result
        return watched

    def disconnect(self) -> defer.Deferred:
        """Close the subscriptions, the pool and the connections to the Sentinels."""
        ds = [factory.disconnect() for factory in self._subscriptions]
        ds += [self.pool.disconnect(), self.sentinel.disconnect()]
        return defer.gatherResults(ds, consumeErrors=True)

    # -- following the master ----------------------------------------------------------------

    def switch_master(self, message: Any) -> None:
        """A ``+switch-master <name> <old-ip> <old-port> <new-ip> <new-port>`` message."""
        if isinstance(message, bytes):
            message = message.decode("utf-8", "replace")
        parts = str(message).split()
        if len(parts) != 5 or parts[0] != self.master_name:
            return
        old, new = f"{parts[1]}:{parts[2]}", f"{parts[3]}:{parts[4]}"
        if new == self._master:
            return  # another Sentinel announced it first
        self._master = new
        log.warn("Redis master {name} moved from {old} to {new} (Sentinel)",
                 name=self.master_name, old=old, new=new)
        self.drop_connections()

    def drop_connections(self, only: Any = None) -> None:
        """Close the pool's connections (``only``: those); each reconnects via the Sentinels."""
        self._generation += 1
        for connection in libcompat.redis_pool_connections(self.pool):
            if only is None or connection in only:
                connection.transport.loseConnection()

    def _watch(self, d: defer.Deferred, generation: int) -> defer.Deferred:
        def check(failure: Any) -> Any:
            # Commands sent before the last drop may still report READONLY: ignore them.
            if generation == self._generation and _is_readonly(failure):
                log.warn("Redis answered READONLY: it is no longer the master {name}; "
                         "reconnecting via Sentinel", name=self.master_name)
                self.drop_connections()
            return failure
        return d.addErrback(check)

    def subscribed(self, address: str) -> None:
        """A subscription to ``+switch-master`` is (again) in place on Sentinel ``address``."""
        if address not in self._subscribed:
            self._subscribed.add(address)
            log.info("following Redis master {name}: subscribed to +switch-master on Sentinel "
                     "{address}", name=self.master_name, address=address)
            return
        # Resubscribed after losing the Sentinel: an announcement may have been missed.
        log.info("subscribed again to +switch-master on Sentinel {address}", address=address)
        d = self.sentinel.discover_master(self.master_name)
        d.addCallbacks(self._check_master, lambda f: None)

    def _check_master(self, address: tuple[str, int]) -> None:
        stale = []
        for connection in list(getattr(libcompat.redis_pool_factory(self.pool), "pool", ())):
            peer = connection.transport.getPeer()
            if (getattr(peer, "host", None), getattr(peer, "port", None)) != tuple(address):
                stale.append(connection)
        if stale:
            self._master = "{}:{}".format(*address)
            log.warn("Redis master {name} is now {new} (Sentinel); reconnecting",
                     name=self.master_name, new=self._master)
            self.drop_connections(stale)


class _WatchedPipeline:
    """A pipeline whose READONLY failure drops the follower's connections."""

    def __init__(self, connection: Any, follower: SentinelFollower, generation: int) -> None:
        self._connection = connection
        self._follower = follower
        self._generation = generation

    def execute_pipeline(self) -> defer.Deferred:
        return self._follower._watch(self._connection.execute_pipeline(), self._generation)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


_SENTINEL_FACTORIES: tuple[Any, Any] | None = None


def _sentinel_factories() -> tuple[Any, Any]:
    """The txredisapi factory classes of :class:`SentinelFollower` (built on first use:
    importing txredisapi installs the reactor)."""
    global _SENTINEL_FACTORIES
    if _SENTINEL_FACTORIES is not None:
        return _SENTINEL_FACTORIES
    import txredisapi
    from twisted.internet import reactor

    class MasterProtocol(redis_protocols()[1]):  # type: ignore[misc]
        """txredisapi's check that the server is the master, fixed for bytes replies:
        ``ROLE`` answers ``b"master"`` with ``charset=None``, which txredisapi compares to
        ``"master"`` and so never accepts a connection."""

        def connectionMade(self) -> defer.Deferred:
            def check_role(role: Any) -> Any:
                kind = role[0].decode() if isinstance(role[0], bytes) else role[0]
                if self.factory.is_master and kind != "master":
                    self.transport.loseConnection()
                    return None
                return txredisapi.RedisProtocol.connectionMade(self)

            if self.password is not None:
                self.auth(self.password, self.username)
            d = self.role().addCallback(check_role)
            d.addErrback(lambda f: self.transport.loseConnection())
            return d

    class PollingSentinel(txredisapi.Sentinel):
        """txredisapi asks the Sentinels once per connection attempt and, when none names a
        healthy primary (the old one is down, the new one not promoted yet), waits its whole
        discovery_timeout (10 s) before failing, and the pool with it: a failover then costs
        ten seconds more than it takes. Ask again in short rounds instead."""

        discovery_timeout = SENTINEL_DISCOVERY_ROUND

        def discover_master(self, service_name: str) -> defer.Deferred:
            return defer.ensureDeferred(self._discover(service_name))

        async def _discover(self, service_name: str) -> Any:
            deadline = reactor.seconds() + SENTINEL_DISCOVERY_TIMEOUT
            while True:
                try:
                    return await txredisapi.Sentinel.discover_master(self, service_name)
                except txredisapi.MasterNotFoundError:
                    if reactor.seconds() >= deadline:
                        raise

    class MasterFactory(txredisapi.SentinelConnectionFactory):
        protocol = MasterProtocol
        sentinel_class = PollingSentinel

    class SubscriptionProtocol(txredisapi.SubscriberProtocol):
        """SUBSCRIBE +switch-master once connected; PING now and then."""

        heartbeat: task.LoopingCall | None = None

        def connectionMade(self) -> Any:
            result = txredisapi.SubscriberProtocol.connectionMade(self)
            d = self.whenConnected()
            d.addCallback(lambda _: self.subscribe("+switch-master"))
            d.addCallbacks(self._subscribed, self._failed)
            return result

        def _subscribed(self, _: Any) -> None:
            self.heartbeat = task.LoopingCall(self._ping)
            self.heartbeat.start(SENTINEL_PING_INTERVAL, now=False)
            self.factory.follower.subscribed(self.factory.address)

        def _ping(self) -> defer.Deferred:
            return self.ping().addTimeout(SENTINEL_PING_TIMEOUT, reactor).addErrback(self._failed)

        def _failed(self, failure: Any) -> None:
            if self.transport is not None:
                self.transport.abortConnection()

        def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
            self.factory.follower.switch_master(message)

        def connectionLost(self, why: Any) -> None:
            if self.heartbeat is not None and self.heartbeat.running:
                self.heartbeat.stop()
            txredisapi.SubscriberProtocol.connectionLost(self, why)

    class SubscriptionFactory(txredisapi.SubscriberFactory):
        protocol = SubscriptionProtocol

        def __init__(self, follower: SentinelFollower, address: str) -> None:
            txredisapi.SubscriberFactory.__init__(self, isLazy=True)
            self.follower = follower
            self.address = address

    _SENTINEL_FACTORIES = (MasterFactory, SubscriptionFactory)
    return _SENTINEL_FACTORIES
