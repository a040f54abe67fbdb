"""
web: the HTTP side of the daemon: JSON API, health checks, Prometheus metrics, status page.

JOB
    Serves, on the ``[web] listen`` endpoints (twisted.web):

    ``/api/v1/...``   the JSON API over the sent-mail archive (messages, their
                      per-recipient timelines and raw content, bounces, the
                      suppression list, statistics and the daemons sharing
                      the Redis); see docs/api.md and the OpenAPI document
                      docs/openapi.json.
    ``/healthz``      200 ``ok`` while the process runs.
    ``/readyz``       200 when Redis answers PING within ``[redis] timeout``
                      and every configured SMTP listener is listening; 503
                      with a JSON reason otherwise.
    ``/metrics``      Prometheus text format (a dedicated registry).
    anything else     the status page (:mod:`mailrelay.web.statuspage`, when
                      installed): ``/``, ``/messages/<id>``, ``/login``, ``POST /logout``.

    Handlers never block the reactor: every Redis read is asynchronous and
    bounded in time, and the cluster-wide metrics are refreshed from Redis by a
    LoopingCall (Redis is pinged every METRICS_INTERVAL seconds; the queue summary
    and the last hour's totals are read every QUEUE_METRICS_EVERY-th time), so
    that a scrape only reads memory. ``/metrics`` exports this process's work as
    counters (:mod:`mailrelay.metrics`: Prometheus' ``sum()`` over the daemons is
    the cluster's figure) and the cluster-wide figures as ``mailrelay_cluster_*``
    gauges (the same on every daemon: ``max()``); docs/api.md lists them.

SECURITY
    Listens on 127.0.0.1 by default. Every ``/api`` request needs
    ``Authorization: Bearer <token>`` with a token of ``[web] api_tokens``,
    compared in constant time; with no tokens configured, one is generated
    once into ``state_dir/api-token`` (mode 0600) and its path logged. A
    missing or wrong token gets 401 with ``WWW-Authenticate: Bearer``.
    ``/healthz``, ``/readyz`` and ``/metrics`` carry no mail data and need no
    token. Every value that comes from mail (subjects, addresses, bounce
    texts) is data: it leaves only JSON-encoded, with ``<``, ``>`` and ``&``
    escaped, as ``application/json; charset=utf-8`` with
    ``X-Content-Type-Options: nosniff``, ``Cache-Control: no-store`` and a
    ``Content-Security-Policy`` that forbids everything; raw messages are sent
    as ``message/rfc822`` attachments. No CORS headers: browsers on other
    origins cannot read the API.

    Requests are admitted from their head, before their body is read
    (:class:`Gate` through :mod:`mailrelay.web.limits`): the token is checked
    first (401), then the endpoint's body limit (413: ADMIN_API_MAX_BODY under
    /api, the status page's BODY_LIMITS for its forms, none elsewhere); a
    refused body is never stored, an admitted one is kept in memory. Failed
    authentications (wrong Bearer tokens anywhere, failed logins) are counted
    per client IP (:class:`~mailrelay.web.limits.FailureThrottle`); a client
    over ``[web] max_auth_failures`` within ``auth_failure_window`` gets 429
    with Retry-After for every request that presents credentials, the right
    token too, until the window lets it in. Bodies are parsed defensively:
    invalid JSON, nesting too deep for the parser and strings UTF-8 cannot
    encode (lone surrogates) get 400 naming the field.

STANDARDS
    RFC 9110 (HTTP semantics: 401/404/405/409/413/414 and their headers), RFC 6585
    (429, 431), RFC 6750 (Bearer tokens), RFC 8259 (JSON), RFC 3339 (times, UTC
    ``Z``), RFC 4648 (base64url cursors), OpenAPI 3.1 (docs/openapi.json), the
    Prometheus text exposition format 0.0.4.

DIAGNOSTICS
    ``web listening on <host>:<port> (plain)`` per listener; ``no [web]
    api_tokens configured: API token in <path> (mode 0600)``; ``web: <client>
    throttled after <n> failed authentications in <window>s``. Errors are JSON
    ``{"error": "...", "code": N}`` (400 names the query parameter or body
    field, and also gives it as ``parameter``); 503 when Redis does not answer
    in time; unexpected failures are logged with a traceback and answered 500.
    A failing metrics refresh is logged once (and once when it recovers);
    ``mailrelay_redis_up`` is 0 meanwhile.

CONFIGURATION
    ``[web]`` listen, api_tokens, public_status (read by the status page),
    max_auth_failures, auth_failure_window, max_connections, request_timeout
    (see :mod:`mailrelay.web.limits`); ``[redis] timeout`` bounds each
    Redis read (requests get 3x that in all). Files: ``state_dir/api-token``.
    Redis data: through :mod:`mailrelay.store` only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import os
import re
import secrets
import time
from collections import Counter as Tally
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import quote, unquote_to_bytes

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.http_headers import Headers

from mailrelay.mail import bounceparse
from mailrelay.config import Config
from mailrelay.services.domains import domain_states
from mailrelay.web.limits import FailureThrottle, GuardedSite, Refusal, RequestHead
from mailrelay.libcompat import request_disconnected
from mailrelay.metrics import BOUNCE_LABELS, DELIVERY_OUTCOMES, PROCESS
from mailrelay.store import MESSAGE_STATUSES, Event, RedisFailed, StorageError
from mailrelay.services.submission import SMTPListenerService, describe_address
from mailrelay.timefmt import rfc3339, rfc3339_ms as format_ms

log = Logger()

#: The file holding the generated API token (when ``[web] api_tokens`` is empty).
API_TOKEN_FILE = "api-token"
#: Page sizes of the list endpoints.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Largest request body the admin API (/api) reads; longest query parameter.
ADMIN_API_MAX_BODY = 2 * 1024 * 1024
MAX_PARAMETER = 1000
#: Seconds between metric refreshes from Redis (a PING for mailrelay_redis_up); the queue
#: summary (a walk over every domain queue) and the last hour's totals (60 per-minute
#: counters) are read every QUEUE_METRICS_EVERY-th time.
METRICS_INTERVAL = 5.0
QUEUE_METRICS_EVERY = 3
#: Recipient states as the API shows them (a job being delivered right now is "queued").
RECIPIENT_STATES = ("queued", "deferred", "delivered", "bounced", "expired", "suppressed", "deleted")
#: Bounce types that count toward the bounce rate (not delay notices, auto-replies, complaints).
BOUNCE_RATE_TYPES = ("HardBounce", "SoftBounce", "DnsError", "Blocked", "Unknown")

_JSON = b"application/json; charset=utf-8"
#: The Prometheus text exposition format that every Prometheus version reads.
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
_MESSAGE_ID = re.compile(r"^[0-9a-f]{20}$")
_BOUNCE_ID = re.compile(r"^[0-9a-f]{1,64}$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,200}={0,2}$")
_FORBIDDEN_IN_ADDRESS = re.compile(r"[\s\x00-\x1f\x7f<>\"\\,;()\[\]]")


# -- tokens ------------------------------------------------------------------------------


def ensure_api_token(state_dir: Path) -> tuple[str, Path]:
    """
    The generated API token and its file: written once to ``state_dir/api-token``
    (mode 0600, the token alone on one line) and read back on later starts.
    """
    path = state_dir / API_TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ValueError(f"{path}: not a usable API token (delete the file to generate a new one)")
        return token, path
    token = secrets.token_urlsafe(32)
    state_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, path


def bearer_token(request: Any) -> str | None:
    """The token of a single ``Authorization: Bearer <token>`` header, else None."""
    return bearer_token_of(request.requestHeaders)


def bearer_token_of(headers: Headers) -> str | None:
    """The token of a single ``Authorization: Bearer <token>`` header in ``headers``, else None."""
    values = headers.getRawHeaders(b"authorization") or []
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token.decode("utf-8", "replace")


class TokenAuth:
    """Checks Bearer tokens against the configured (or generated) ones, in constant time."""

    def __init__(self, tokens: Iterable[str]) -> None:
        self._tokens = [t.encode() for t in tokens]

    def check_token(self, token: str) -> bool:
        candidate = token.encode("utf-8", "replace")
        ok = False
        for known in self._tokens:  # every token compared: the time does not say which matched
            ok |= hmac.compare_digest(candidate, known)
        return ok

    def check_header(self, request: Any) -> bool:
        token = bearer_token(request)
        return token is not None and self.check_token(token)


# -- values ------------------------------------------------------------------------------


class ApiError(Refusal):
    """An error answered as ``{"error": message, "code": status}`` (a Refusal, for the Gate)."""

    def __init__(self, code: int, message: str, parameter: str | None = None,
                 headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(code, message, headers)
        self.parameter = parameter


def encode_json(value: Any) -> bytes:
    """Compact JSON in UTF-8, with <, > and & escaped (harmless even if misread as HTML)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from metadata JSON: escape everything
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
        data = text.encode("ascii")
    return (data.replace(b"<", b"\\u003c").replace(b">", b"\\u003e").replace(b"&", b"\\u0026")
            + b"\n")


def parse_time(name: str, text: str) -> int:
    """An RFC 3339 time (``2026-11-28T09:15:00Z``, offsets allowed) -> ms since the epoch."""
    match = _RFC3339.match(text)
    if not match:
        raise ApiError(400, f"{name}: {text!r} is not an RFC 3339 time like 2026-11-28T09:15:00Z", name)
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    try:
        if offset in ("Z", "z"):
            zone = timezone.utc
        else:
            sign = -1 if offset[0] == "-" else 1
            zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        moment = datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError as e:
        raise ApiError(400, f"{name}: {text!r} is not a valid time ({e})", name) from None
    ms = int(moment.timestamp()) * 1000
    if fraction:
        ms += int((fraction[1:] + "000")[:3])
    return ms


def encode_cursor(score: int, member: str) -> str:
    """The opaque page cursor: base64url of ``"<score>:<member>"``, unpadded."""
    return base64.urlsafe_b64encode(f"{score}:{member}".encode()).rstrip(b"=").decode()


def decode_cursor(text: str) -> tuple[int, str]:
    bad = ApiError(400, "cursor: not a cursor returned by this API (next_cursor)", "cursor")
    if not _CURSOR.match(text):
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text.rstrip("=") + "=" * (-len(text.rstrip("=")) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad from None
    score, _, member = raw.partition(":")
    if not score.isdigit() or not _BOUNCE_ID.match(member):
        raise bad
    return int(score), member


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit: must be a whole number from 1 to {MAX_LIMIT}, got {text!r}", "limit")
    return int(text)


def valid_address(text: Any) -> str | None:
    """A plain ``local@domain`` address (lowercased), or None."""
    if not isinstance(text, str) or not is_unicode(text):
        return None
    address = text.strip()
    local, at, domain = address.rpartition("@")
    if (not at or not local or not domain or "@" in local or len(address) > 254 or len(local) > 64
            or _FORBIDDEN_IN_ADDRESS.search(address) or domain.startswith(".") or domain.endswith(".")
            or ".." in domain):
        return None
    return address.lower()


def is_unicode(text: str) -> bool:
    """False for a string that UTF-8 cannot encode: one with a lone surrogate (JSON "\\ud800")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_body(request: Any, shape: str) -> dict[str, Any]:
    """
    The request's body as a JSON object (its size was bounded before it was read, see
    httplimits); 400 for anything else, nesting too deep for the parser included.
    """
    data = request.content.read() if request.content is not None else b""
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, f"the body must be {shape}")
    return body


def _json_list(text: str | None) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _json_object(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int(text: Any, default: int = 0) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return default


def query(request: Any, allowed: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each given once, all of them known; empty values count as absent."""
    params: dict[str, str] = {}
    for key, values in request.args.items():
        name = key.decode("utf-8", "replace")
        if name not in allowed:
            raise ApiError(400, f"{name}: unknown query parameter (known: {', '.join(allowed) or 'none'})", name)
        if len(values) != 1:
            raise ApiError(400, f"{name}: given more than once", name)
        try:
            value = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, f"{name}: not valid UTF-8", name) from None
        if len(value) > MAX_PARAMETER:
            raise ApiError(400, f"{name}: longer than {MAX_PARAMETER} characters", name)
        if value != "":
            params[name] = value
    return params


# -- JSON shapes -------------------------------------------------------------------------


_EVENT_FIELDS = [f for f in Event.__dataclass_fields__]


def event_json(entry: dict[str, Any]) -> dict[str, Any]:
    """A timeline entry in the Event shape (every field present; extra fields kept)."""
    out = {name: entry.get(name) for name in _EVENT_FIELDS}
    out["detail"] = out["detail"] or ""
    out.update({k: v for k, v in entry.items() if k not in out})
    return out


def message_summary(row: dict[str, str]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "received_at": format_ms(row.get("received_at")),
        "from": row.get("from") or "",
        "to": _json_list(row.get("to")),
        "subject": row.get("subject") or "",
        "tag": row.get("tag") or None,
        "status": row.get("status") or "queued",
    }


def message_detail(message_id: str, fields: dict[str, str], timeline: list[dict[str, Any]]) -> dict[str, Any]:
    count = _int(fields.get("rcpt_count"))
    addresses = [fields.get(f"rcpt:{i}", "") for i in range(count)]
    events: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    for entry in timeline:
        if not isinstance(entry, dict):
            continue
        index = entry.get("rcpt")
        if not isinstance(index, int) or not 0 <= index < count:
            wanted = str(entry.get("recipient") or "").lower()
            index = next((i for i, a in enumerate(addresses) if a.lower() == wanted), None)
        if index is not None:
            events[index].append(event_json(entry))
    recipients = []
    for i, address in enumerate(addresses):
        state = fields.get(f"state:{i}") or "queued"
        if state not in RECIPIENT_STATES:
            state = "queued"  # "delivering": an attempt is under way
        recipients.append({"address": address, "status": state,
                           "attempts": _int(fields.get(f"attempts:{i}")), "events": events[i]})
    return {
        "id": message_id,
        "received_at": format_ms(fields.get("received_at")),
        "from": fields.get("from") or "",
        "to": _json_list(fields.get("to")),
        "cc": _json_list(fields.get("cc")),
        "subject": fields.get("subject") or "",
        "message_id_header": fields.get("message_id") or None,
        "tag": fields.get("tag") or None,
        "metadata": _json_object(fields.get("metadata")),
        "status": fields.get("status") or "queued",
        "size": _int(fields.get("size")),
        "sender": fields.get("sender") or "",
        "user": fields.get("user") or None,
        "recipients": recipients,
    }


def bounce_summary(row: dict[str, str]) -> dict[str, Any]:
    return {
        "id": row.get("id") or "",
        "message_id": row.get("message_id") or None,
        "recipient": row.get("recipient") or None,
        "type": row.get("type") or "Unknown",
        "type_code": _int(row.get("type_code")),
        "description": row.get("description") or "",
        "details": row.get("details") or "",
        "at": row.get("at") or None,
        "inactive": row.get("inactive") == "1",
        "proof": row.get("proof") or "",
    }


def suppression_json(address: str, entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": address,
        "since": entry.get("since") or None,
        "type": entry.get("type") or "ManuallyDeactivated",
        "reason": entry.get("reason") or None,
    }


def stats_window(buckets: list[tuple[int, dict[str, int]]]) -> dict[str, Any]:
    """Totals of counter buckets, with bounces by type and the delivery and bounce rates."""
    totals: Tally[str] = Tally()
    for _, counts in buckets:
        totals.update(counts)
    out: dict[str, Any] = {name: totals.get(name, 0)
                           for name in ("accepted", "recipients", *DELIVERY_OUTCOMES)}
    bounces = {name[len("bounce:"):]: n for name, n in sorted(totals.items()) if name.startswith("bounce:")}
    ended = out["delivered"] + out["bounced"] + out["expired"]
    bounced = sum(bounces.get(t, 0) for t in BOUNCE_RATE_TYPES)
    out["bounces"] = bounces
    out["delivery_rate"] = round(out["delivered"] / ended, 4) if ended else None
    out["bounce_rate"] = round(min(1.0, bounced / ended), 4) if ended else None
    return out


def queue_totals(summary: dict[str, Any]) -> dict[str, Any]:
    """admin_queue_summary() -> {"queued", "deferred", "delivering", "domains", "oldest_age_seconds"}."""
    domains = summary.get("domains", {})
    out: dict[str, Any] = {state: sum(row[state] for row in domains.values())
                           for state in ("queued", "deferred", "delivering")}
    out["domains"] = len(domains)
    oldest = [row["oldest_ms"] for row in domains.values() if row.get("oldest_ms") is not None]
    out["oldest_age_seconds"] = (round(max(0, summary["now_ms"] - min(oldest)) / 1000, 3)
                                 if oldest else None)
    return out


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


# -- the listeners' state ----------------------------------------------------------------


def smtp_listener_status(root: Any, config: Config) -> dict[str, dict[str, Any]]:
    """
    The SMTP listeners found under ``root``, and those the configuration expects:
    ``{name: {"listening": bool, "sessions": n, "addresses": ["host:port", ...]}}``.
    Reads only memory (service objects and their factories' ``sessions`` sets).
    """
    expected = []
    if config.submission.listen:
        expected.append("submission")
    if config.submission.listen_tls:
        expected.append("submission-tls")
    if config.bounces.domain and config.bounces.listen:
        expected.append("bounces")
    found: dict[str, Any] = {}
    stack = [root]
    while stack:
        parent = stack.pop()
        for child in list(parent):
            if isinstance(child, SMTPListenerService):
                found[child.name] = child
            elif isinstance(child, service.MultiService):
                stack.append(child)
    status = {}
    for name in expected + sorted(set(found) - set(expected)):
        child = found.get(name)
        ports = list(child.ports) if child is not None else []
        status[name] = {
            "listening": bool(child is not None and child.running and ports),
            "sessions": len(child.factory.sessions) if child is not None else 0,
            "addresses": [describe_address(p.getHost()) for p in ports],
        }
    return status


# -- metrics -------------------------------------------------------------------------------


class Metrics:
    """
    The ``/metrics`` output: this registry's gauges, then the per-process counters of
    :mod:`mailrelay.metrics`. The ``mailrelay_cluster_*`` gauges are cluster-wide figures
    read from Redis by :meth:`refresh` (called by a LoopingCall): the queue and the last
    hour's totals, the same on every daemon sharing that Redis (aggregate them with
    ``max()``, never ``sum()``). SMTP sessions and ``mailrelay_redis_up`` are this
    process's own.
    """

    def __init__(self, sessions: Callable[[], dict[str, int]]) -> None:
        self.sessions = sessions
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        same = "; cluster-wide, the same on every daemon: use max(), not sum()"
        self.accepted = Gauge("mailrelay_cluster_messages_accepted_last_hour",
                              "Messages accepted in the last hour" + same, registry=r)
        self.recipients = Gauge("mailrelay_cluster_recipients_accepted_last_hour",
                                "Recipients of the messages accepted in the last hour" + same, registry=r)
        self.deliveries = Gauge("mailrelay_cluster_deliveries_last_hour",
                                "Delivery attempt outcomes per recipient in the last hour" + same,
                                ["status"], registry=r)
        self.bounces = Gauge("mailrelay_cluster_bounces_last_hour",
                             "Bounce records by type in the last hour" + same, ["type"], registry=r)
        self.queue_jobs = Gauge("mailrelay_cluster_queue_jobs", "Delivery jobs in the queue by state" + same,
                                ["state"], registry=r)
        self.queue_oldest = Gauge("mailrelay_cluster_queue_oldest_seconds",
                                  "Age of the oldest message with a job in the queue (0 when empty)" + same,
                                  registry=r)
        self.smtp_sessions = Gauge("mailrelay_smtp_sessions", "Open SMTP sessions of this process by listener",
                                   ["service"], registry=r)
        self.redis_up = Gauge("mailrelay_redis_up",
                              "1 when this process's last metrics refresh from Redis succeeded", registry=r)
        for status in DELIVERY_OUTCOMES:
            self.deliveries.labels(status)
        for kind in BOUNCE_LABELS:
            self.bounces.labels(kind)
        for state in ("queued", "deferred", "delivering"):
            self.queue_jobs.labels(state)
        self._ticks = 0
        self._failing = False

    async def refresh(self, storage: Any, timeout: float) -> None:
        """Read the cluster-wide figures from Redis (every QUEUE_METRICS_EVERY-th call)."""
        try:
            if self._ticks % QUEUE_METRICS_EVERY == 0:
                await _bounded(self._refresh_totals(storage), timeout * 2)
                await _bounded(self._refresh_queue(storage), timeout * 2)
            elif not await _bounded(storage.ping(), timeout):
                raise StorageError("Redis does not answer PING")
            self._ticks += 1
        except Exception as e:
            self.redis_up.set(0)
            if not self._failing:
                self._failing = True
                log.warn("web: metrics refresh from Redis failed: {e}", e=_describe(e))
            return
        self.redis_up.set(1)
        if self._failing:
            self._failing = False
            log.info("web: metrics refresh from Redis works again")

    async def _refresh_totals(self, storage: Any) -> None:
        hour = stats_window(await storage.counters("m", 60))
        self.accepted.set(hour["accepted"])
        self.recipients.set(hour["recipients"])
        for status in DELIVERY_OUTCOMES:
            self.deliveries.labels(status).set(hour[status])
        for kind in {*BOUNCE_LABELS, *hour["bounces"]}:
            self.bounces.labels(kind).set(hour["bounces"].get(kind, 0))

    async def _refresh_queue(self, storage: Any) -> None:
        totals = queue_totals(await storage.admin_queue_summary())
        for state in ("queued", "deferred", "delivering"):
            self.queue_jobs.labels(state).set(totals[state])
        self.queue_oldest.set(totals["oldest_age_seconds"] or 0)

    def render(self) -> bytes:
        for name, count in self.sessions().items():
            self.smtp_sessions.labels(name).set(count)
        return generate_latest(self.registry) + generate_latest(PROCESS)


async def _bounded(coroutine: Awaitable[Any], seconds: float) -> Any:
    from twisted.internet import reactor

    return await defer.ensureDeferred(coroutine).addTimeout(seconds, reactor)


def _describe(e: BaseException) -> str:
    if isinstance(e, defer.TimeoutError):
        return "Redis did not answer in time"
    return str(e) or type(e).__name__


# -- resources ------------------------------------------------------------------------------


def _secure_headers(request: Any) -> None:
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
    request.setHeader(b"referrer-policy", b"no-referrer")


def _finish(request: Any, code: int, body: bytes = b"", content_type: bytes | None = _JSON,
            headers: dict[bytes, bytes] | None = None) -> None:
    """Send a whole response unless the client has gone away."""
    if request.finished or request_disconnected(request):
        return
    request.setResponseCode(code)
    _secure_headers(request)
    for name, value in (headers or {}).items():
        request.setHeader(name, value)
    if code == 204:
        request.finish()
        return
    if content_type is not None:
        request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


def send_json(request: Any, code: int, value: Any, headers: dict[bytes, bytes] | None = None) -> None:
    _finish(request, code, encode_json(value), _JSON, headers)


def send_error(request: Any, error: ApiError) -> None:
    body: dict[str, Any] = {"error": error.message, "code": error.code}
    if error.parameter is not None:
        body["parameter"] = error.parameter
    send_json(request, error.code, body, error.headers)


def not_found(what: str = "no such resource") -> ApiError:
    return ApiError(404, what)


def _method(request: Any) -> str:
    method = request.method.decode("ascii", "replace").upper()
    return "GET" if method == "HEAD" else method


def _leaf_path_ok(request: Any) -> bool:
    return request.postpath in ([], [b""])


def _run(request: Any, handler: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    """Run an async handler for ``request``; its result (or error) becomes the response."""
    from twisted.internet import reactor

    d = defer.ensureDeferred(handler())
    d.addTimeout(timeout, reactor)

    def failed(failure: Any) -> None:
        if failure.check(ApiError):
            send_error(request, failure.value)
        elif isinstance(failure.value, RedisFailed):  # connection lost, error reply
            log.warn("web: {uri}: Redis failed: {e}", uri=request.uri.decode("ascii", "replace"),
                     e=_describe(failure.value))
            send_error(request, ApiError(503, f"storage unavailable: {_describe(failure.value)}"))
        elif failure.check(defer.TimeoutError, StorageError):
            send_error(request, ApiError(503, f"storage unavailable: {_describe(failure.value)}"))
        elif failure.check(defer.CancelledError) and request_disconnected(request):
            pass  # the client went away
        else:
            log.failure("web: {method} {uri} failed", failure, method=request.method.decode("ascii", "replace"),
                        uri=request.uri.decode("ascii", "replace"))
            send_error(request, ApiError(500, "internal error"))

    d.addErrback(failed)
    request.notifyFinish().addErrback(lambda _: d.cancel())
    return server.NOT_DONE_YET


class JsonNotFound(resource.Resource):
    """404 for every path and method, as JSON."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        send_error(request, not_found())
        return server.NOT_DONE_YET


class HealthResource(resource.Resource):
    """``GET /healthz``: the process is alive (nothing else is checked)."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        if not _leaf_path_ok(request):
            send_error(request, not_found())
        elif _method(request) != "GET":
            send_error(request, ApiError(405, "method not allowed", headers={b"allow": b"GET, HEAD"}))
        else:
            _finish(request, 200, b"ok\n", b"text/plain; charset=utf-8")
        return server.NOT_DONE_YET


class ReadyResource(resource.Resource):
    """``GET /readyz``: 200 when Redis answers and the SMTP listeners are up, else 503."""

    isLeaf = True

    def __init__(self, health: Callable[[], Awaitable[dict[str, Any]]], timeout: float) -> None:
        super().__init__()
        self.health = health
        self.timeout = timeout

    def render(self, request: Any) -> Any:
        if not _leaf_path_ok(request):
            send_error(request, not_found())
            return server.NOT_DONE_YET
        if _method(request) != "GET":
            send_error(request, ApiError(405, "method not allowed", headers={b"allow": b"GET, HEAD"}))
            return server.NOT_DONE_YET

        async def handle() -> None:
            state = await self.health()
            send_json(request, 200 if state["ready"] else 503, state)

        return _run(request, handle, self.timeout)


class MetricsResource(resource.Resource):
    """``GET /metrics``: the Prometheus text format, from memory."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render(self, request: Any) -> Any:
        if not _leaf_path_ok(request):
            send_error(request, not_found())
        elif _method(request) != "GET":
            send_error(request, ApiError(405, "method not allowed", headers={b"allow": b"GET, HEAD"}))
        else:
            _finish(request, 200, self.metrics.render(), PROMETHEUS_TEXT)
        return server.NOT_DONE_YET


#: A path parameter in a route pattern.
PARAM = None


class ApiResource(resource.Resource):
    """``/api/...``: Bearer authentication, then the routes of API version 1."""

    isLeaf = True

    def __init__(self, storage: Any, config: Config, auth: TokenAuth) -> None:
        super().__init__()
        self.storage = storage
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
        return _run(request, lambda: handler(request, *params), self.timeout)

    def route(self, request: Any) -> tuple[Callable[..., Awaitable[Any]], list[str]]:
        segments = list(request.postpath)
        if len(segments) > 1 and segments[-1] == b"":
            segments.pop()  # a trailing slash
        try:
            path = [unquote_to_bytes(s).decode("utf-8") for s in segments]
        except UnicodeDecodeError:
            raise not_found() from None
        allowed: list[str] = []
        method = _method(request)
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
        rows, _ = await self.storage.search_messages(
            recipient=q.get("recipient"), tag=q.get("tag"), status=status, since_ms=since,
            until_ms=None if until is None else until - 1,  # until is exclusive
            limit=limit + 1, cursor=cursor)
        send_json(request, 200, {"messages": [message_summary(r) for r in rows[:limit]],
                                 "next_cursor": self._next(rows, limit)})

    @staticmethod
    def _next(rows: list[dict[str, Any]], limit: int) -> str | None:
        """One row more than a page was asked for: there is a next page, after the page's last row."""
        if len(rows) <= limit:
            return None
        last = rows[limit - 1]
        return encode_cursor(last["_score"], last["id"])

    async def get_message(self, request: Any, message_id: str) -> None:
        query(request, ())
        fields = await self._message(message_id)
        timeline = await self.storage.get_timeline(message_id)
        send_json(request, 200, message_detail(message_id, fields, timeline))

    async def _message(self, message_id: str) -> dict[str, str]:
        fields = await self.storage.get_message(message_id) if _MESSAGE_ID.match(message_id) else None
        if not fields:
            raise not_found(f"no message {message_id}")
        return fields

    async def get_raw(self, request: Any, message_id: str) -> None:
        query(request, ())
        await self._message(message_id)
        body = await self.storage.get_body(message_id)
        if body is None:
            raise not_found(f"the content of message {message_id} is no longer kept ([tracking] content_retention)")
        _finish(request, 200, body, b"message/rfc822",
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
        rows, _ = await self.storage.search_bounces(type=kind, recipient=q.get("recipient"), since_ms=since,
                                                    limit=limit + 1, cursor=cursor)
        send_json(request, 200, {"bounces": [bounce_summary(r) for r in rows[:limit]],
                                 "next_cursor": self._next(rows, limit)})

    async def get_bounce(self, request: Any, bounce_id: str) -> None:
        query(request, ())
        record = await self.storage.get_bounce(bounce_id) if _BOUNCE_ID.match(bounce_id) else None
        if not record:
            raise not_found(f"no bounce {bounce_id}")
        raw = await self.storage.get_bounce_raw(bounce_id)
        body = bounce_summary(record)
        body.update({
            "status": record.get("status") or None,
            "remote_mta": record.get("remote_mta") or None,
            "source": record.get("source") or None,
            "rule": record.get("rule") or None,
            "reason": record.get("reason") or None,
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
        entries = await self.storage.list_suppressions()
        items = sorted((suppression_json(a, e) for a, e in entries.items()),
                       key=lambda s: (s["since"] or "", s["address"]), reverse=True)
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
        send_json(request, 201, suppression_json(address, entry),
                  {b"location": f"/api/v1/suppressions/{quote(address, safe='@')}".encode()})

    async def delete_suppression(self, request: Any, address: str) -> None:
        query(request, ())
        if not await self.storage.remove_suppression(address):
            raise not_found(f"{address} is not suppressed")
        log.info("web: {address} reactivated through the API", address=address.lower())
        _finish(request, 204)

    # -- stats --------------------------------------------------------------------------------

    async def stats(self, request: Any) -> None:
        q = query(request, ("since",))
        since = parse_time("since", q["since"]) if "since" in q else None
        counts = await self.storage.status_counts(since)
        hour = await self.storage.counters("m", 60)
        day = await self.storage.counters("h", 24)
        queue = queue_totals(await self.storage.admin_queue_summary())
        members = await self.storage.cluster_members()
        send_json(request, 200, {
            "since": format_ms(since) if since is not None else None,
            "messages": {**counts, "total": sum(counts.values())},
            "last_hour": stats_window(hour),
            "last_day": stats_window(day),
            "queue": queue,
            "cluster": {"members": [cluster_member(m) for m in members]},
        })


_BOUNCE_TYPES: tuple[str, ...] | None = None


def bounce_type_names() -> tuple[str, ...]:
    """The bounce type names of :mod:`mailrelay.mail.bounceparse` (HardBounce, SoftBounce, ...)."""
    global _BOUNCE_TYPES
    if _BOUNCE_TYPES is None:
        _BOUNCE_TYPES = tuple(sorted({v.name for v in vars(bounceparse).values()
                                      if isinstance(v, bounceparse.BounceType)}))
    return _BOUNCE_TYPES


class RootResource(resource.Resource):
    """``/api``, ``/healthz``, ``/readyz``, ``/metrics``; everything else goes to the status page."""

    def __init__(self, page: Any = None) -> None:
        super().__init__()
        self.page = page

    def getChild(self, path: bytes, request: Any) -> Any:
        if self.page is None:
            return JsonNotFound()
        if getattr(self.page, "isLeaf", False):
            # a leaf page routes on the whole path: give it back the segment consumed for us
            request.postpath.insert(0, request.prepath.pop())
            return self.page
        return self.page.getChildWithDefault(path, request)

    def render(self, request: Any) -> Any:  # only reached without a page ("/" with no segment)
        send_error(request, not_found())
        return server.NOT_DONE_YET


def is_api(path: bytes) -> bool:
    return path == b"/api" or path.startswith(b"/api/")


class Gate:
    """
    The web listener's admission policy (:mod:`mailrelay.web.limits`), run on each request's
    head before its body is read: a throttled client gets 429 for every request that presents
    credentials (an ``Authorization`` header, anything under /api, ``POST /login``), right
    token or not, until the window lets it in again; a wrong Bearer token counts as a
    failure (wherever it is presented); /api without a valid token gets 401; then the
    endpoint's body limit applies. A ``POST /login`` counts as a failure when its head
    arrives (its token is in the body); the status page refunds it when the login succeeds.
    """

    def __init__(self, auth: TokenAuth, throttle: FailureThrottle, page: Any = None) -> None:
        self.auth = auth
        self.throttle = throttle
        self.page_limits: dict[bytes, int] = dict(getattr(page, "BODY_LIMITS", {}))

    def body_limit(self, path: bytes) -> int:
        """The largest body the endpoint at ``path`` reads: ADMIN_API_MAX_BODY under /api, the
        status page's BODY_LIMITS for its forms, none (0) anywhere else."""
        return ADMIN_API_MAX_BODY if is_api(path) else self.page_limits.get(path, 0)

    def admit(self, head: RequestHead) -> int:
        api = is_api(head.path)
        presented = head.headers.hasHeader(b"authorization")
        if api or presented or (head.path == b"/login" and head.method == b"POST"):
            wait = self.throttle.retry_after(head.client)
            if wait is not None:
                seconds = max(1, math.ceil(wait))
                raise Refusal(429, f"too many failed authentications from {head.client}: "
                                   f"try again in {seconds} s", {b"retry-after": b"%d" % seconds})
        if head.path == b"/login" and head.method == b"POST":
            # the token is in the body: counted as a failure now, refunded by the page on success,
            # so that logins sent at once on many connections cannot pass the limit together
            self.throttle.failed(head.client)
        token = bearer_token_of(head.headers)
        valid = token is not None and self.auth.check_token(token)
        if token is not None and not valid:
            self.throttle.failed(head.client)
        if api and not valid:
            raise unauthorized(token is not None)
        return self.body_limit(head.path)


def unauthorized(token_given: bool) -> ApiError:
    challenge = b'Bearer realm="mailrelay"'
    if token_given:
        challenge += b', error="invalid_token"'
    return ApiError(401, "a valid Authorization: Bearer <token> header is required",
                    headers={b"www-authenticate": challenge})


class QuietSite(GuardedSite):
    """
    The web listener's Site: requests admitted from their head (:class:`Gate`), refusals
    answered as JSON under /api and by the status page elsewhere; the access log leaves out
    the probes (/healthz, /readyz, /metrics).
    """

    QUIET = (b"/healthz", b"/readyz", b"/metrics")

    def log(self, request: Any) -> None:
        if request.path.rstrip(b"/") in self.QUIET:
            return
        super().log(request)


def load_status_page() -> Any:
    """The status page class, or None when :mod:`mailrelay.web.statuspage` is not installed."""
    try:  # optional: a build may leave the status page out (the only lazy mailrelay import here)
        from mailrelay.web.statuspage import StatusPage
    except ModuleNotFoundError as e:
        if e.name != "mailrelay.web.statuspage":
            raise
        return None
    return StatusPage


# -- the service ------------------------------------------------------------------------------


class WebService(service.Service):
    """The HTTP listeners (started once Redis is connected and the SMTP listeners are up)."""

    name = "web"

    def __init__(self, config: Config, get_storage: Callable[[], Any],
                 listeners: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.config = config
        self.get_storage = get_storage
        self.listeners = listeners
        self.ports: list[Any] = []
        self.storage: Any = None
        self.auth: TokenAuth | None = None
        self.throttle = FailureThrottle(config.web.max_auth_failures, config.web.auth_failure_window)
        self.metrics = Metrics(lambda: {name: s["sessions"] for name, s in self.listeners().items()})
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        service.Service.startService(self)  # listening starts in when_ready

    async def when_ready(self) -> None:
        from twisted.internet import reactor

        settings = self.config.web
        if not settings.listen:
            return
        self.storage = self.get_storage()
        tokens = list(settings.api_tokens)
        if not tokens:
            token, path = ensure_api_token(self.config.state_dir)
            tokens = [token]
            log.info("no [web] api_tokens configured: API token in {path} (mode 0600)", path=str(path.resolve()))
        self.auth = TokenAuth(tokens)
        root = self.build_root()
        gate = Gate(self.auth, self.throttle, root.page)
        site = QuietSite(root, admit=gate.admit, refuse=self._refuse_with(root.page),
                         parsePOSTFormSubmission=False, timeout=settings.request_timeout,
                         max_connections=settings.max_connections)
        site.noisy = False
        site.displayTracebacks = False
        for description in settings.listen:
            port = await endpoints.serverFromString(reactor, description).listen(site)
            self.ports.append(port)
            log.info("{service} listening on {address} ({mode})", service=self.name,
                     address=describe_address(port.getHost()), mode="plain")
        self._loop = task.LoopingCall(self._refresh)
        self._loop.start(METRICS_INTERVAL, now=True).addErrback(
            lambda f: log.failure("web: metrics loop failed", f))

    def build_root(self) -> RootResource:
        assert self.auth is not None
        page_class = load_status_page()
        page = (page_class(self.storage, self.config, self.service_health, self.auth, throttle=self.throttle)
                if page_class else None)
        root = RootResource(page)
        root.putChild(b"api", ApiResource(self.storage, self.config, self.auth))
        root.putChild(b"healthz", HealthResource())
        root.putChild(b"readyz", ReadyResource(self.health, self.config.redis.timeout * 2))
        root.putChild(b"metrics", MetricsResource(self.metrics))
        return root

    @staticmethod
    def _refuse_with(page: Any) -> Callable[[Any, Refusal], None]:
        """How a request refused from its head is answered: JSON under /api, else by the page."""
        def refuse(request: Any, refusal: Refusal) -> None:
            if page is not None and not is_api(request.path) and request.path not in QuietSite.QUIET:
                page.refuse(request, refusal.code, refusal.message, refusal.headers)
            else:
                send_error(request, refusal if isinstance(refusal, ApiError)
                           else ApiError(refusal.code, refusal.message, headers=refusal.headers))
        return refuse

    def _refresh(self) -> defer.Deferred:
        return defer.ensureDeferred(self.metrics.refresh(self.storage, self.config.redis.timeout))

    async def health(self) -> dict[str, Any]:
        """
        The daemon's health, for /readyz and the status page: ``{"ready": bool, "reason":
        str | None, "redis": {"ok": bool, "latency_ms": float | None}, "listeners": {name:
        {"listening": bool, "sessions": n, "addresses": [...]}}}``. Never raises; waits at
        most ``[redis] timeout``.
        """
        timeout = self.config.redis.timeout
        started = time.monotonic()
        try:
            redis_ok = bool(await _bounded(self.storage.ping(), timeout))
        except Exception:
            redis_ok = False
        latency = round((time.monotonic() - started) * 1000, 1) if redis_ok else None
        listeners = self.listeners()
        reasons = []
        if not redis_ok:
            reasons.append(f"Redis did not answer PING within {timeout:g}s")
        reasons += [f"the {name} listener is not listening" for name, s in listeners.items() if not s["listening"]]
        return {"ready": not reasons, "reason": "; ".join(reasons) or None,
                "redis": {"ok": redis_ok, "latency_ms": latency}, "listeners": listeners}

    async def service_health(self) -> dict[str, dict[str, Any]]:
        """The same, per service, for the status page: ``{name: {"ok": bool, "detail": str}}``."""
        state = await self.health()
        redis = state["redis"]
        services = {"redis": {"ok": redis["ok"], "detail": (
            f"PING answered in {redis['latency_ms']:g} ms" if redis["ok"]
            else f"no answer to PING within {self.config.redis.timeout:g}s")}}
        for name, listener in state["listeners"].items():
            detail = (f"listening on {', '.join(listener['addresses'])}; {listener['sessions']} session(s)"
                      if listener["listening"] else "not listening")
            services[name] = {"ok": listener["listening"], "detail": detail}
        services["web"] = {"ok": bool(self.ports), "detail": "listening on " + ", ".join(
            describe_address(p.getHost()) for p in self.ports)}
        return services

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports],
                                   consumeErrors=True).addCallback(lambda _: None)
