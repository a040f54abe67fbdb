"""
suppression: the suppression list: addresses mail is not sent to, and its change counter.

JOB
    Answers RCPT's question "is this address suppressed?" (:meth:`SuppressionStore.suppression_of`:
    the lookups of one reactor turn share one script call, which also returns the list's
    change counter, so submission can cache "not suppressed" until the counter moves), and
    adds, removes and lists entries (``mailrelay suppressions``, the API, bounce
    processing through mailrelay.store.bounces).

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P suppressed``          HASH   suppressed address (lowercased) -> JSON (since, type,
                                     reason, bounce_id, message_id, proof: how the bounce
                                     proved its recipient).
    ``P suppressed:version``  STRING change counter of ``P suppressed``, incremented by every
                                     change made through the store (RCPT's cache of "not
                                     suppressed").
    Scripts: suppression_of.lua, change_suppression.lua.

SECURITY
    Addresses are compared lowercased (the whole address: a conservative choice, as
    local parts may be case-sensitive). An entry's JSON is parsed per lookup: a bad entry
    fails its own lookup only.

STANDARDS
    RFC 5321 addresses (compared case-insensitively here).

DIAGNOSTICS
    A lookup fails with ``defer.TimeoutError`` when Redis does not answer within
    ``[redis] timeout``, with StorageUnavailable (``unexpected reply ...``) when the
    script's reply has the wrong shape.

CONFIGURATION
    ``[redis] timeout``.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer

from mailrelay.store.base import StoreBase
from mailrelay.store.errors import StorageUnavailable
from mailrelay.store.records import Suppression, decode_suppressions
from mailrelay.store.scripts import SCRIPTS

CHANGE_SUPPRESSION_SCRIPT = SCRIPTS["change_suppression"]
SUPPRESSION_OF_SCRIPT = SCRIPTS["suppression_of"]


class SuppressionStore(StoreBase):
    """The suppression list and its change counter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (change counter of the suppression list as last read, when): see suppression_of
        self.suppressions_version: tuple[str | None, float] = (None, 0.0)
        self._suppression_changes = 0   # changes made by this process (see suppressions_changed)
        self._suppression_lookups: list[tuple[str, defer.Deferred]] = []   # waiting for this turn's call

    def suppression_of(self, address: str) -> defer.Deferred:
        """
        The :class:`Suppression` of one address, or None (a plain Deferred: the RCPT hot path).
        The lookups asked for in one reactor turn share one Redis call (as enqueue does), and
        the suppression list's change counter comes with it (:attr:`suppressions_version`).
        Fails with ``defer.TimeoutError`` when Redis does not answer within ``[redis] timeout``.
        """
        waiter: defer.Deferred = defer.Deferred()
        self._suppression_lookups.append((address.lower(), waiter))
        if len(self._suppression_lookups) == 1:
            from twisted.internet import reactor
            reactor.callLater(0, self._send_suppression_lookups)
        return waiter

    def _send_suppression_lookups(self) -> None:
        batch, self._suppression_lookups = self._suppression_lookups, []
        changes_when_sent = self._suppression_changes
        try:
            d = self._timed(self._eval(SUPPRESSION_OF_SCRIPT,
                                       [self.keys.suppressed, self.keys.suppressed_version],
                                       [address for address, _ in batch]), self.timeout)
        except Exception:  # e.g. txredisapi's "Not connected"
            d = defer.fail()

        def replied(reply: list[Any]) -> None:
            if not isinstance(reply, list) or len(reply) != len(batch) + 1:
                return failed(StorageUnavailable(f"unexpected reply {reply!r:.200}"))
            self._saw_suppressions_version(reply[0], changes_when_sent)
            for (address, waiter), entry in zip(batch, reply[1:]):
                try:
                    value = None if entry is None else Suppression.decode(address, json.loads(entry))
                except ValueError as e:  # a bad entry fails this lookup only
                    waiter.errback(e)
                else:
                    waiter.callback(value)

        def failed(failure: Any) -> None:
            for _, waiter in batch:
                waiter.errback(failure)

        d.addCallbacks(replied, failed)

    def _saw_suppressions_version(self, version: Any, changes_when_sent: int) -> None:
        """
        A reply carried the change counter of the suppression list. A reply to a call sent
        before this process's last change is ignored: it may predate that change.
        """
        if changes_when_sent != self._suppression_changes:
            return
        if isinstance(version, bytes):
            version = version.decode()
        self.suppressions_version = (str(version or "0"), self.clock.seconds())

    def suppressions_changed(self) -> None:
        """This process changed the suppression list: what was read before is stale."""
        self._suppression_changes += 1
        self.suppressions_version = (None, self.clock.seconds())

    async def suppressions(self, addresses: list[str]) -> dict[str, Suppression]:
        """The suppressions of those addresses that are suppressed, by lowercased address."""
        if not addresses:
            return {}
        lowered = [a.lower() for a in addresses]
        reply = await self._call("HMGET", self.keys.suppressed, *lowered)
        return {addr: Suppression.decode(addr, _json_value(v)) for addr, v in zip(lowered, reply) if v is not None}

    async def add_suppression(self, address: str, entry: dict[str, Any]) -> bool:
        return await self._change_suppression("add", address, json.dumps(entry))

    async def remove_suppression(self, address: str) -> bool:
        return await self._change_suppression("remove", address)

    async def _change_suppression(self, action: str, address: str, entry: str = "") -> bool:
        changed = await self._eval(CHANGE_SUPPRESSION_SCRIPT,
                                   [self.keys.suppressed, self.keys.suppressed_version],
                                   [action, address.lower(), entry])
        self.suppressions_changed()
        return int(changed) == 1

    async def list_suppressions(self) -> list[Suppression]:
        """Every suppressed address, newest first (then by address)."""
        reply = await self._call("HGETALL", self.keys.suppressed)
        return decode_suppressions({reply[i].decode(errors="replace"): _json_value(reply[i + 1])
                                    for i in range(0, len(reply), 2)})


def _json_value(text: bytes) -> Any:
    """A stored JSON entry decoded; one that does not decode is None (a record of defaults)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None

