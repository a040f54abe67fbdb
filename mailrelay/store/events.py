"""
events: one entry of a recipient's timeline and of the event stream, as the store writes it.

JOB
    :class:`Event` is the shape every service and the API use for what happened to a
    recipient (queued, delivered, deferred, bounced, ...). The stores append it as JSON
    (:data:`COMPACT_JSON`) to ``P timeline:<id>`` and, through their Lua scripts, add an
    entry to the stream ``P events``, which the archiver (mailrelay.store.archivefeed)
    and the webhook service (mailrelay.store.webhooks) read. The stream is trimmed only
    below what their consumer groups still need (ArchiveFeedStore.archive_trim), never to
    a fixed length: a PostgreSQL outage makes it grow instead of losing events.

SECURITY
    Event details carry remote servers' replies (untrusted text): they are stored as JSON
    strings and escaped by whoever renders them.

STANDARDS
    RFC 3339 times (``at``); JSON (RFC 8259) as UTF-8 text.

DIAGNOSTICS
    None.

CONFIGURATION
    None (timelines expire with ``[tracking] retention``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

#: The JSON encoder of what is stored (compact, UTF-8 text kept as is), made once:
#: ``json.dumps`` with options builds a new encoder per call.
COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass
class Event:
    """One entry of a recipient's timeline (the shape every service and the API use)."""

    type: str
    at: str
    recipient: str
    rcpt: int
    detail: str = ""
    remote_host: str | None = None
    remote_ip: str | None = None
    smtp_code: int | None = None
    enhanced_code: str | None = None
    response: str | None = None
    remote_queue_id: str | None = None

    def to_json(self) -> str:
        return COMPACT_JSON.encode(self.__dict__)
