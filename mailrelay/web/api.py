"""
api: the JSON API over the sent-mail archive: messages, timelines, raw content, bounces, suppressions, stats.

JOB
    Serves ``/api/v1/...`` on the web listener (mounted by
    :mod:`mailrelay.web.server`): the messages (search, detail with each
    recipient's status and timeline, raw content), the bounces, the suppression
    list (list, add, remove), the sender domains, and statistics with the
    daemons sharing the Redis; see docs/api.md and the OpenAPI document
    docs/openapi.json. Messages, bounces and suppressions are read through the
    read model (:mod:`mailrelay.store.readmodel`); this module only turns its
    records into the API's JSON shapes.

SECURITY
    Every request needs ``Authorization: Bearer <token>`` with a token of
    ``[web] api_tokens`` (:mod:`mailrelay.web.auth`; the web listener's Gate
    refuses others before their body is read, and this resource checks again).
    Every value that comes from mail (subjects, addresses, bounce texts) is data:
    it leaves only JSON-encoded (:mod:`mailrelay.web.jsonhttp`); raw messages are
    sent as ``message/rfc822`` attachments. Bodies (at most ADMIN_API_MAX_BODY)
    are parsed defensively: invalid JSON, nesting too deep for the parser and
    strings UTF-8 cannot encode (lone surrogates) get 400 naming the field.

STANDARDS
    RFC 9110 (HTTP semantics: 401/404/405/409/413), RFC 6750 (Bearer tokens),
    RFC 8259 (JSON), RFC 3339 (times, UTC ``Z``), RFC 4648 (base64url cursors),
    OpenAPI 3.1 (docs/openapi.json).

DIAGNOSTICS
    Errors are JSON ``{"error": "...", "code": N}`` (400 names the query
    parameter or body field, and also gives it as ``parameter``); 503 when Redis
    does not answer in time; unexpected failures are logged with a traceback and
    answered 500. ``web: <address> suppressed through the API``, ``web:
    <address> reactivated through the API``.

CONFIGURATION
    ``[web] api_tokens``; ``[redis] timeout`` bounds each Redis read (requests
    get 3x that in all). Redis data: through :mod:`mailrelay.store` only.
"""

from __future__ import annotations

import re
import time
from typing import Any, Awaitable, Callable
from urllib.parse import quote, unquote_to_bytes

from twisted.logger import Logger
from twisted.web import resource, server

from mailrelay.config import Config
from mailrelay.mail import bounceclassify
from mailrelay.services.domains import domain_states
from mailrelay.store import MESSAGE_STATUSES, readmodel
from mailrelay.store.interfaces import ApiStorage, ArchiveReads
from mailrelay.store.records import BounceRecord, MessageRecord, MessageSummary, Suppression, TimelineEvent
from mailrelay.timefmt import rfc3339, rfc3339_ms as format_ms
from mailrelay.web.auth import TokenAuth, bearer_token, unauthorized
from mailrelay.web.jsonhttp import (BOUNCE_ID_RE, ApiError, decode_cursor, encode_cursor, finish, is_unicode,
                                    json_body, not_found, parse_limit, parse_time, query, request_method,
                                    run_handler, send_error, send_json, valid_address)
from mailrelay.web.metrics import queue_totals, stats_window

log = Logger()

#: Largest request body the admin API (/api) reads; longest query parameter.
ADMIN_API_MAX_BODY = 2 * 1024 * 1024
_MESSAGE_ID = re.compile(r"^[0-9a-f]{20}$")


def event_json(event: TimelineEvent) -> dict[str, Any]:
    """A timeline entry in the Event shape (every field present; extra fields kept)."""
    return event.as_dict()


def message_summary(summary: MessageSummary) -> dict[str, Any]:
    return {
        "id": summary.id,
        "received_at": format_ms(summary.received_ms),
        "from": summary.header_from,
        "to": list(summary.to),
        "subject": summary.subject,
        "tag": summary.tag or None,
        "status": summary.status,
    }


def message_detail(record: MessageRecord) -> dict[str, Any]:
    recipients = [{"address": r.address, "status": r.status, "attempts": r.attempts,
                   "events": [event_json(e) for e in r.events]} for r in record.recipients]
    return {
        "id": record.id,
        "received_at": format_ms(record.received_ms),
        "from": record.header_from,
        "to": list(record.to),
        "cc": list(record.cc),
        "subject": record.subject,
        "message_id_header": record.message_id_header or None,
        "tag": record.tag or None,
        "metadata": dict(record.metadata),
        "status": record.status,
        "size": record.size,
        "sender": record.sender,
        "user": record.user or None,
        "recipients": recipients,
    }


def bounce_summary(bounce: BounceRecord) -> dict[str, Any]:
    return {
        "id": bounce.id,
        "message_id": bounce.message_id or None,
        "recipient": bounce.recipient or None,
        "type": bounce.type,
        "type_code": bounce.type_code,
        "description": bounce.description,
        "details": bounce.details,
        "at": bounce.at or None,
        "inactive": bounce.inactive,
        "proof": bounce.proof,
    }


def suppression_json(suppression: Suppression) -> dict[str, Any]:
    return {
        "address": suppression.address,
        "since": suppression.since or None,
        "type": suppression.type,
        "reason": suppression.reason or None,
    }


def cluster_member(member: dict[str, Any]) -> dict[str, Any]:
    """One live daemon of Storage.cluster_members() as the stats show it (what `mailrelay
    cluster` lists): who it is, since when it runs, its last heartbeat, what it delivers and
    where it listens."""
    domains = member["domains"] if isinstance(member["domains"], dict) else {}
    listeners = member["listeners"] if isinstance(member["listeners"], list) else []
    return {
        "name": member["owner"],
        "hostname": member["hostname"],
        "pid": member["pid"],
        "version": member["version"],
        "data_version": member["data_version"],
        "started_at": format_ms(member["started_ms"]) if member["started_ms"] else None,
        "uptime_seconds": round(member["uptime"], 3),
        "last_heartbeat_at": format_ms(member["beat_ms"]) if member["beat_ms"] else None,
        "heartbeat_age_seconds": round(member["age"], 3),
        "heartbeat_interval_seconds": member["interval"],
        "delivering": {"jobs": member["held"],
                       "domains": {str(d): n for d, n in domains.items()
                                   if isinstance(n, int) and not isinstance(n, bool) and n >= 0}},
        "listeners": [str(item) for item in listeners],
    }


_BOUNCE_TYPES: tuple[str, ...] | None = None


def bounce_type_names() -> tuple[str, ...]:
    """The bounce type names of :mod:`mailrelay.mail.bounceclassify` (HardBounce, SoftBounce, ...)."""
    global _BOUNCE_TYPES
    if _BOUNCE_TYPES is None:
        _BOUNCE_TYPES = tuple(sorted({v.name for v in vars(bounceclassify).values()
                                      if isinstance(v, bounceclassify.BounceType)}))
    return _BOUNCE_TYPES


#: A path parameter in a route pattern.
PARAM = None


class ApiResource(resource.Resource):
    """``/api/...``: Bearer authentication, then the routes of API version 1."""

    isLeaf = True

    def __init__(self, storage: ApiStorage, config: Config, auth: TokenAuth,
                 archive: ArchiveReads | None = None) -> None:
        super().__init__()
        self.storage = storage
        # the sent-mail archive's reads (mailrelay.store.archiveview); the Redis store without one
        self.archive: ArchiveReads = archive if archive is not None else storage
        self.config = config
        self.auth = auth
        self.timeout = config.redis.timeout * 3
        self.routes: list[tuple[str, tuple[str | None, ...], Callable[..., Awaitable[Any]]]] = [
            ("GET", ("v1", "messages"), self.list_messages),
            ("GET", ("v1", "messages", PARAM), self.get_message),
            ("GET", ("v1", "messages", PARAM, "raw"), self.get_raw),
            ("GET", ("v1", "bounces"), self.list_bounces),
            ("GET", ("v1", "bounces", PARAM), self.get_bounce),
            ("GET", ("v1", "suppressions"), self.list_suppressions),
            ("POST", ("v1", "suppressions"), self.add_suppression),
            ("DELETE", ("v1", "suppressions", PARAM), self.delete_suppression),
            ("GET", ("v1", "stats"), self.stats),
            ("GET", ("v1", "domains"), self.list_domains),
        ]

    def render(self, request: Any) -> Any:
        if not self.auth.check_header(request):  # the Gate refused it already; kept for other sites
            send_error(request, unauthorized(bearer_token(request) is not None))
            return server.NOT_DONE_YET
        try:
            handler, params = self.route(request)
        except ApiError as e:
            send_error(request, e)
            return server.NOT_DONE_YET
        return run_handler(request, lambda: handler(request, *params), self.timeout)

    def route(self, request: Any) -> tuple[Callable[..., Awaitable[Any]], list[str]]:
        segments = list(request.postpath)
        if len(segments) > 1 and segments[-1] == b"":
            segments.pop()  # a trailing slash
        try:
            path = [unquote_to_bytes(s).decode("utf-8") for s in segments]
        except UnicodeDecodeError:
            raise not_found() from None
        allowed: list[str] = []
        method = request_method(request)
        for route_method, pattern, handler in self.routes:
            if len(pattern) != len(path):
                continue
            if any(p is not PARAM and p != s for p, s in zip(pattern, path)):
                continue
            params = [s for p, s in zip(pattern, path) if p is PARAM]
            if any(not s for s in params):
                continue
            if route_method == method:
                return handler, params
            allowed.append(route_method)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            raise ApiError(405, f"method {request.method.decode('ascii', 'replace')} not allowed here",
                           headers={b"allow": ", ".join(allowed).encode()})
        raise not_found()

    # -- messages --------------------------------------------------------------------------

    async def list_messages(self, request: Any) -> None:
        q = query(request, ("recipient", "tag", "status", "since", "until", "limit", "cursor"))
        status = q.get("status")
        if status is not None and status not in MESSAGE_STATUSES:
            raise ApiError(400, f"status: must be one of {', '.join(MESSAGE_STATUSES)}; got {status!r}", "status")
        since = parse_time("since", q["since"]) if "since" in q else None
        until = parse_time("until", q["until"]) if "until" in q else None
        limit = parse_limit(q.get("limit"))
        cursor = decode_cursor(q["cursor"]) if "cursor" in q else None
        rows, _ = await self.archive.search_messages(
            recipient=q.get("recipient"), tag=q.get("tag"), status=status, since_ms=since,
            until_ms=None if until is None else until - 1,  # until is exclusive
            limit=limit + 1, cursor=cursor)
        send_json(request, 200, {"messages": [message_summary(r) for r in rows[:limit]],
                                 "next_cursor": self._next([(r.score, r.id) for r in rows], limit)})

    @staticmethod
    def _next(places: list[tuple[int, str]], limit: int) -> str | None:
        """One row more than a page was asked for: there is a next page, after the page's last row
        (``places``: each row's index score and id)."""
        if len(places) <= limit:
            return None
        score, member = places[limit - 1]
        return encode_cursor(score, member)

    async def get_message(self, request: Any, message_id: str) -> None:
        query(request, ())
        record = await readmodel.message(self.archive, message_id) if _MESSAGE_ID.match(message_id) else None
        if record is None:
            raise not_found(f"no message {message_id}")
        send_json(request, 200, message_detail(record))

    async def get_raw(self, request: Any, message_id: str) -> None:
        query(request, ())
        if not _MESSAGE_ID.match(message_id) or not await self.archive.get_message(message_id):
            raise not_found(f"no message {message_id}")
        body = await self.archive.get_body(message_id)
        if body is None:
            raise not_found(f"the content of message {message_id} is no longer kept ([tracking] content_retention)")
        finish(request, 200, body, b"message/rfc822",
                {b"content-disposition": f'attachment; filename="{message_id}.eml"'.encode()})

    # -- bounces ------------------------------------------------------------------------------

    async def list_bounces(self, request: Any) -> None:
        q = query(request, ("type", "recipient", "since", "limit", "cursor"))
        kind = q.get("type")
        if kind is not None and kind not in bounce_type_names():
            raise ApiError(400, f"type: unknown bounce type {kind!r} (known: {', '.join(bounce_type_names())})", "type")
        since = parse_time("since", q["since"]) if "since" in q else None
        limit = parse_limit(q.get("limit"))
        cursor = decode_cursor(q["cursor"]) if "cursor" in q else None
        rows, _ = await self.archive.search_bounces(type=kind, recipient=q.get("recipient"),
                                                  since_ms=since, limit=limit + 1, cursor=cursor)
        send_json(request, 200, {"bounces": [bounce_summary(r) for r in rows[:limit]],
                                 "next_cursor": self._next([(r.score or 0, r.id) for r in rows], limit)})

    async def get_bounce(self, request: Any, bounce_id: str) -> None:
        query(request, ())
        record = await self.archive.get_bounce(bounce_id) if BOUNCE_ID_RE.match(bounce_id) else None
        if record is None:
            raise not_found(f"no bounce {bounce_id}")
        raw = await self.archive.get_bounce_raw(bounce_id)
        body = bounce_summary(record)
        body.update({
            "status": record.status or None,
            "remote_mta": record.remote_mta or None,
            "source": record.source or None,
            "rule": record.rule or None,
            "reason": record.reason or None,
            "raw": raw.decode("utf-8", "replace") if raw is not None else None,
        })
        send_json(request, 200, body)

    # -- suppressions ------------------------------------------------------------------------

    async def list_domains(self, request: Any) -> None:
        """The sender domains with their DKIM keys, the records to publish and the last DNS check."""
        query(request, ())
        send_json(request, 200, {"domains": await domain_states(self.config, self.storage)})

    async def list_suppressions(self, request: Any) -> None:
        query(request, ())
        items = [suppression_json(s) for s in await self.storage.list_suppressions()]
        send_json(request, 200, {"suppressions": items})

    async def add_suppression(self, request: Any) -> None:
        query(request, ())
        body = json_body(request, 'a JSON object like {"address": "someone@example.com"}')
        unknown = sorted(set(body) - {"address", "reason"})
        if unknown:
            raise ApiError(400, f"{unknown[0]}: unknown field (known: address, reason)", unknown[0])
        address = valid_address(body.get("address"))
        if address is None:
            raise ApiError(400, "address: a plain email address like someone@example.com is required", "address")
        reason = body.get("reason", "")
        if reason is None:
            reason = ""
        if not isinstance(reason, str) or len(reason) > 1000 or not is_unicode(reason):
            raise ApiError(400, "reason: must be a string of at most 1000 characters (valid Unicode)", "reason")
        entry = {"address": address, "since": rfc3339(time.time()), "type": "ManuallyDeactivated",
                 "reason": reason}
        if not await self.storage.add_suppression(address, entry):
            raise ApiError(409, f"{address} is already suppressed")
        log.info("web: {address} suppressed through the API", address=address)
        send_json(request, 201, suppression_json(Suppression.decode(address, entry)),
                  {b"location": f"/api/v1/suppressions/{quote(address, safe='@')}".encode()})

    async def delete_suppression(self, request: Any, address: str) -> None:
        query(request, ())
        if not await self.storage.remove_suppression(address):
            raise not_found(f"{address} is not suppressed")
        log.info("web: {address} reactivated through the API", address=address.lower())
        finish(request, 204)

    # -- stats --------------------------------------------------------------------------------

    async def stats(self, request: Any) -> None:
        q = query(request, ("since",))
        since = parse_time("since", q["since"]) if "since" in q else None
        counts = await self.archive.status_counts(since)
        hour = await self.storage.counters("m", 60)
        day = await self.storage.counters("h", 24)
        queue = queue_totals(await self.storage.admin_queue_summary())
        members = await self.storage.cluster_members()
        lag = await self.storage.archive_lag()
        send_json(request, 200, {
            "since": format_ms(since) if since is not None else None,
            "messages": {**counts, "total": sum(counts.values())},
            "last_hour": stats_window(hour),
            "last_day": stats_window(day),
            "queue": queue,
            "cluster": {"members": [cluster_member(m) for m in members]},
            # what searches do not cover yet (measured now; None: no archiver has run)
            "archive": {"lag_entries": lag.entries if lag is not None else None,
                        "lag_seconds": lag.oldest_age_seconds if lag is not None else None},
        })
