"""
domains: the sender domains' DKIM records, their change counter, and their DNS checks.

JOB
    Used by mailrelay.services.domains: signing at submission, ``mailrelay domains``, and
    the state of each domain for the status page and the API. Stores each sender domain's
    record (selector, algorithm, public key, state, dates; a private key only sealed with
    ``[dkim] key_encryption_key``), changed only if it is still what the caller read
    (:meth:`SenderDomainStore.dkim_put_domain`), and bumps a change counter daemons poll
    to reload their keys. Records a message that goes out unsigned
    (:meth:`SenderDomainStore.record_unsigned`). Calls are bounded by ``[redis] timeout``.

DATA (under ``[redis] key_prefix``, written ``P``)
    ``P dkim:domains``   HASH    domain -> JSON record.
    ``P dkim:version``   STRING  change counter, bumped on every change.
    ``P dkim:checks``    HASH    domain -> JSON result of the last ``mailrelay domains verify``.
    The ``unsigned`` event goes to the message's ``P timeline:<id>``, ``P events`` and the
    counters (``P idx:stats:...``).
    Scripts: dkim_put.lua, record_unsigned.lua.

SECURITY
    A private key reaches this store sealed with ``[dkim] key_encryption_key`` by
    mailrelay.services.domains; records are stored as given.

STANDARDS
    RFC 6376 (DKIM) records, as JSON.

DIAGNOSTICS
    StorageUnavailable when Redis does not answer within ``[redis] timeout``.

CONFIGURATION
    ``[dkim]`` (read by the service); ``[redis] timeout``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mailrelay.store.base import StoreBase
from mailrelay.store.events import Event
from mailrelay.store.scripts import SCRIPTS
from mailrelay.timefmt import rfc3339

DKIM_PUT_SCRIPT = SCRIPTS["dkim_put"]
RECORD_UNSIGNED_SCRIPT = SCRIPTS["record_unsigned"]


class SenderDomainStore(StoreBase):
    """The sender domains (DKIM) and their DNS checks."""

    async def dkim_version(self) -> int:
        """The change counter of the sender domains (0: never changed)."""
        value = await self.bounded(self._call("GET", self.keys.dkim_version))
        return int(value or 0)

    async def dkim_domains(self) -> dict[str, dict[str, Any]]:
        """Every sender domain stored in Redis: ``{domain: record}`` (see mailrelay.services.domains)."""
        reply = await self.bounded(self._call("HGETALL", self.keys.dkim_domains))
        return {reply[i].decode(): json.loads(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def dkim_domain(self, domain: str) -> tuple[dict[str, Any] | None, str]:
        """One domain's record (None if not stored) and its stored text, for :meth:`dkim_put_domain`."""
        raw = await self.bounded(self._call("HGET", self.keys.dkim_domains, domain))
        if raw is None:
            return None, ""
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return json.loads(text), text

    async def dkim_put_domain(self, domain: str, record: dict[str, Any] | None, expected: str) -> bool:
        """
        Store (``record``) or delete (None) a domain's record if it is still ``expected``
        (its text from :meth:`dkim_domain`; "" = not stored), and bump the change counter.
        False when another change came first (nothing written).
        """
        new = "" if record is None else json.dumps(record, sort_keys=True, separators=(",", ":"))
        keys = [self.keys.dkim_domains, self.keys.dkim_version, self.keys.dkim_checks]
        return int(await self.bounded(self._eval(DKIM_PUT_SCRIPT, keys, [domain, expected, new]))) == 1

    async def dkim_record_check(self, domain: str, result: dict[str, Any]) -> None:
        """Keep the result of a DNS check of ``domain`` (the last one only)."""
        await self.bounded(self._call("HSET", self.keys.dkim_checks, domain,
                                     json.dumps(result, separators=(",", ":"))))

    async def dkim_checks(self) -> dict[str, dict[str, Any]]:
        """The last DNS check of each domain: ``{domain: result}``."""
        reply = await self.bounded(self._call("HGETALL", self.keys.dkim_checks))
        return {reply[i].decode(): json.loads(reply[i + 1]) for i in range(0, len(reply), 2)}

    async def record_unsigned(self, message_id: str, recipients: list[str], detail: str) -> bool:
        """
        Record that a queued message goes out without a DKIM signature: an ``unsigned``
        event per recipient in its timeline, one in the event stream, and the ``unsigned``
        counter. False when the message is no longer stored.
        """
        at = rfc3339(time.time())
        events = [Event(type="unsigned", at=at, recipient=rcpt, rcpt=i, detail=detail).to_json()
                  for i, rcpt in enumerate(recipients)]
        keys = [self.keys.msg(message_id), self.keys.timeline(message_id), self.keys.events]
        args = [message_id, self.now_ms(), self.keys.stats_minute_prefix, self.keys.stats_hour_prefix,
                *events]
        return int(await self.bounded(self._eval(RECORD_UNSIGNED_SCRIPT, keys, args))) == 1

