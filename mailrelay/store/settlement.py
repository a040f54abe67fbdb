"""
settlement: settling acknowledgements: a stored message is confirmed once its 250 is sent, or cancelled.

JOB
    A message is stored *unsettled* (mailrelay.store.queue): its jobs wait in no queue
    until this daemon settles it. :meth:`SettlementStore.confirm` (the 250 was sent)
    moves its jobs into their domain queues, due now; :meth:`SettlementStore.cancel`
    (the client was answered 451 after all) deletes it with its jobs. Settlements ride on
    the next group commit call (mailrelay.store.queue) or are sent alone after
    SETTLE_DELAY, and are retried every SETTLE_RETRY seconds until Redis answers; with
    ``min_replicas`` they are done once replicated. :meth:`SettlementStore.sweep_unsettled`
    confirms what daemons without a heartbeat left unsettled (they died between storing
    and settling: the client may have had its 250).

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P queue:unsettled``  ZSET  messages stored but not settled yet (their jobs are in no
                           queue until confirmed; the message hash's ``unsettled`` field
                           names the daemon that stored them), by time stored (ms).
    Reads ``P cluster`` (mailrelay.store.cluster: live daemons) and moves jobs into the
    queue of mailrelay.store.queue (``P msg:<id>``, ``P queue:d:<domain>``,
    ``P queue:domains``, ``P events``, ``P timeline:<id>``).
    Scripts: settle.lua, sweep_unsettled.lua (both include _settle.lua).

SECURITY
    Trusts Redis; an acknowledged message is never dropped: whatever cannot be settled
    now is retried, or confirmed by a sweeper.

STANDARDS
    RFC 5321 section 6.1 (a server that answered 250 has taken responsibility for the
    message); Redis ``WAIT`` for ``min_replicas``.

DIAGNOSTICS
    ``storage: cancelled <id>: it was stored, but its client was answered 451``;
    ``storage: could not settle N acknowledgement(s) (...); retrying every 1s until Redis
    answers``; ``storage: acknowledgements settled again``; ``storage: could not cancel
    <id> (...): its client was answered 451, but it was confirmed first and will be
    delivered`` (a partition longer than the heartbeat TTL); ``storage: <id> was
    acknowledged but is no longer stored (deleted)``; the sweeper's ``storage: confirmed N
    acknowledged message(s) left unsettled by <daemon> (no heartbeat: stopped or died)``;
    at shutdown, ``storage: N acknowledgement(s) not settled at shutdown``.

CONFIGURATION
    ``[redis]`` timeout, min_replicas, min_replicas_timeout.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from mailrelay.store.base import StoreBase
from mailrelay.store.errors import StorageUnavailable
from mailrelay.store.scripts import (SCRIPTS, SETTLE_ARGV, SETTLE_KEYS, SETTLE_SCRIPT_ARGV, SWEEP_UNSETTLED_ARGV,
                                     SWEEP_UNSETTLED_KEYS, ordered)

log = Logger()

SETTLE_SCRIPT = SCRIPTS["settle"]
SWEEP_UNSETTLED_SCRIPT = SCRIPTS["sweep_unsettled"]

#: Settling acknowledgements (Storage.confirm/cancel): a confirmation waits up to
#: SETTLE_DELAY seconds for a group commit call to ride on; a settlement call that fails is
#: sent again every SETTLE_RETRY seconds until Redis answers.
SETTLE_DELAY = 0.02
SETTLE_RETRY = 1.0
#: The sweeper confirms a message unsettled for this many seconds even when its daemon still
#: has a heartbeat: a live daemon that reaches Redis settles within milliseconds (retrying
#: every SETTLE_RETRY seconds), so this is a safety net, e.g. for a settlement lost with a
#: primary that failed before replicating it.
UNSETTLED_MAX_AGE = 60.0
#: Unsettled messages examined per sweep.
SWEEP_LIMIT = 1000


class SettlementStore(StoreBase):
    """Confirming and cancelling stored messages (their acknowledgement), and the sweeper."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # acknowledgements to settle (confirm/cancel): message id -> action, not sent yet
        self._settlements: dict[str, str] = {}
        self._unsettled: dict[str, str] = {}   # every settlement decided and not done (sent or not)
        self._settle_calls: set[defer.Deferred] = set()   # calls carrying settlements
        self._settle_call: Any = None                      # the timer of _send_settlements
        self._confirm_waiters: dict[str, list[defer.Deferred]] = {}
        self._settle_failing = False

    def stop(self) -> None:
        super().stop()
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()

    def confirm(self, message_id: str) -> defer.Deferred:
        """
        Settle a stored message as acknowledged (its 250 is sent): its jobs go into their
        domain queues, due now. The confirmation rides on the next group commit call, or is
        sent alone after SETTLE_DELAY; it is retried until Redis answers. The Deferred fires
        (it never fails) with _SETTLE's result once that is done.
        """
        d: defer.Deferred = defer.Deferred()
        self._confirm_waiters.setdefault(message_id, []).append(d)
        self._settlements[message_id] = self._unsettled[message_id] = "confirm"
        self._schedule_settlements(SETTLE_DELAY)
        return d

    def cancel(self, message_id: str) -> None:
        """
        Settle a message whose client was not told it is queued (451): if it was stored, it
        is deleted with its jobs, before anything can claim them. Sent at once, retried
        until Redis answers (harmless when nothing was stored).
        """
        self._settlements[message_id] = self._unsettled[message_id] = "cancel"
        self._schedule_settlements(0)

    @property
    def unsettled_count(self) -> int:
        """Settlements of this daemon not done yet (queued or in flight)."""
        return len(self._unsettled)

    def _schedule_settlements(self, delay: float) -> None:
        from twisted.internet import reactor  # as the group commit: real time, whatever self.clock

        call = self._settle_call
        if call is not None and call.active():
            if call.getTime() <= reactor.seconds() + delay:
                return
            call.cancel()
        self._settle_call = reactor.callLater(delay, self._send_settlements)

    def _take_settlements(self) -> list[tuple[str, str]]:
        """The settlements not sent yet, as (message id, action); they are now in flight."""
        if not self._settlements:
            return []
        taken = list(self._settlements.items())
        self._settlements.clear()
        if self._settle_call is not None and self._settle_call.active():
            self._settle_call.cancel()
        self._settle_call = None
        return taken

    def _return_settlements(self, taken: list[tuple[str, str]]) -> None:
        """Settlements taken but not sent after all: queued again."""
        for message_id, action in taken:
            self._settlements.setdefault(message_id, action)
        if taken:
            self._schedule_settlements(0)

    def _send_settlements(self) -> None:
        self._settle_call = None
        taken = self._take_settlements()
        if not taken:
            return
        flat: list[Any] = ordered(SETTLE_SCRIPT_ARGV, **self.keys.names(SETTLE_ARGV), owner=self.owner)
        for message_id, action in taken:
            flat += [action, message_id]
        try:
            if self.min_replicas:  # done once replicated: a failover must not lose it
                d = self._timed(defer.ensureDeferred(self._settle_and_wait(flat)),
                                self.timeout + self.replica_timeout_ms / 1000)
            else:
                d = self._timed(self._eval(SETTLE_SCRIPT, self._settle_keys(), flat), self.timeout)
        except Exception as e:  # e.g. "Not connected"
            d = defer.fail(e)

        def replied(results: Any) -> None:
            if not isinstance(results, list) or len(results) != len(taken):
                self._settle_failed(taken, StorageUnavailable(f"unexpected reply {results!r:.200}"))
            else:
                self._settled(taken, results)

        d.addCallbacks(replied, lambda failure: self._settle_failed(taken, failure))
        self._track_settle_call(d)

    def _settle_keys(self) -> list[str]:
        """The first KEYS of every script that settles (SETTLE_KEYS)."""
        return list(self.keys.names(SETTLE_KEYS).values())

    async def _settle_and_wait(self, args: list[Any]) -> Any:
        """SETTLE_SCRIPT and WAIT min_replicas on one connection; fails when fewer confirm
        (the settlement is then sent again: it is idempotent)."""
        results, replicas = await self._eval_and_wait(self._settle_keys(), args, SETTLE_SCRIPT)
        if int(replicas or 0) < self.min_replicas:
            raise StorageUnavailable(f"only {replicas} of {self.min_replicas} replicas confirmed "
                                     "the settlement")
        return results

    def _track_settle_call(self, d: defer.Deferred) -> None:
        if d.called:
            return
        self._settle_calls.add(d)
        d.addBoth(lambda result: (self._settle_calls.discard(d), result)[1])

    def _settled(self, taken: list[tuple[str, str]], results: list[Any]) -> None:
        if self._settle_failing:
            self._settle_failing = False
            log.info("storage: acknowledgements settled again")
        for (message_id, action), result in zip(taken, results):
            outcome = result.decode() if isinstance(result, bytes) else str(result)
            if message_id not in self._settlements:  # not decided again meanwhile
                self._unsettled.pop(message_id, None)
            if action == "confirm":
                if outcome == "GONE":
                    log.warn("storage: {id} was acknowledged but is no longer stored (deleted)",
                             id=message_id)
                for waiter in self._confirm_waiters.pop(message_id, []):
                    waiter.callback(outcome)
            elif outcome == "CANCELLED":
                log.info("storage: cancelled {id}: it was stored, but its client was answered "
                         "451; it will not be delivered", id=message_id)
            elif outcome in ("SETTLED", "OTHER"):
                log.error("storage: could not cancel {id} ({outcome}): its client was answered "
                          "451, but it was confirmed first and will be delivered", id=message_id,
                          outcome=outcome)

    def _settle_failed(self, taken: list[tuple[str, str]], failure: Any) -> None:
        for message_id, action in taken:
            self._settlements.setdefault(message_id, action)
        if not self._settle_failing:
            self._settle_failing = True
            error = failure.getErrorMessage() if hasattr(failure, "getErrorMessage") else str(failure)
            log.warn("storage: could not settle {n} acknowledgement(s) ({e}); retrying every "
                     "{s:g}s until Redis answers", n=len(taken), e=error or "timeout", s=SETTLE_RETRY)
        if self._settlements and not self._stopped:
            self._schedule_settlements(SETTLE_RETRY)

    async def settle_pending(self, timeout: float) -> int:
        """
        At shutdown: send the settlements not sent yet and wait for them, for up to
        ``timeout`` seconds. Returns how many are left (a confirmation left is done by the
        sweeper of another daemon, or of this one once restarted; a cancellation left is a
        message that may be delivered although its client got 451).
        """
        from twisted.internet import reactor

        deadline = reactor.seconds() + timeout
        while self.unsettled_count and reactor.seconds() < deadline:
            if self._settlements:
                self._send_settlements()
            if self._settle_calls:  # each call is bounded by [redis] timeout
                await defer.DeferredList(list(self._settle_calls), consumeErrors=True)
            else:  # a call failed at once (not connected): not a busy loop
                await task.deferLater(reactor, 0.1, lambda: None)
        left = self.unsettled_count
        if left:
            log.warn("storage: {n} acknowledgement(s) not settled at shutdown: acknowledged "
                     "messages are confirmed by the sweeper of another daemon (or of this one "
                     "once restarted)", n=left)
        return left

    async def sweep_unsettled(self, heartbeat_ttl: float, min_age: float,
                              max_age: float | None = None) -> list[tuple[str, str]]:
        """
        Confirm the messages that daemons without a live heartbeat left unsettled for at
        least ``min_age`` seconds (they died between storing a message and settling it; the
        client may have had its 250), and any unsettled for ``max_age`` seconds
        (UNSETTLED_MAX_AGE). Returns [(message id, daemon)].
        """
        reply = await self._timed(self._eval(
            SWEEP_UNSETTLED_SCRIPT, list(self.keys.names(SWEEP_UNSETTLED_KEYS).values()),
            ordered(SWEEP_UNSETTLED_ARGV, **self.keys.names(SETTLE_ARGV), owner=self.owner, min_age_ms=int(min_age * 1000),
                    max_age_ms=int((UNSETTLED_MAX_AGE if max_age is None else max_age) * 1000),
                    heartbeat_ttl_ms=int(heartbeat_ttl * 1000), limit=SWEEP_LIMIT)), self.timeout)
        confirmed = [(reply[k].decode(), reply[k + 1].decode()) for k in range(0, len(reply), 2)]
        if confirmed:
            owners = sorted({owner for _, owner in confirmed})
            log.warn("storage: confirmed {n} acknowledged message(s) left unsettled by {owners} "
                     "(no heartbeat: stopped or died): {ids}", n=len(confirmed),
                     owners=", ".join(owners), ids=" ".join(i for i, _ in confirmed[:20])
                     + (" ..." if len(confirmed) > 20 else ""))
        return confirmed

