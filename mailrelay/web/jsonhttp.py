"""
jsonhttp: the JSON-over-HTTP pieces of the web listener: errors, parameters, cursors, responses.

JOB
    What every JSON resource of the web listener (:mod:`mailrelay.web.api`,
    :mod:`mailrelay.web.server`, :mod:`mailrelay.web.metrics`) shares:
    :class:`ApiError` and its JSON form, the parsing of query parameters, RFC 3339
    times, page limits and cursors, request bodies and addresses, and the sending
    of whole responses with the security headers. :func:`run_handler` runs an
    async handler for a request, bounded in time, and turns its failure into the
    right status (400..., 503 when Redis does not answer, 500 with a logged
    traceback); a client that goes away cancels it.

SECURITY
    Every value leaves JSON-encoded with ``<``, ``>`` and ``&`` escaped, as
    ``application/json; charset=utf-8`` with ``X-Content-Type-Options: nosniff``,
    ``Cache-Control: no-store``, ``Referrer-Policy: no-referrer`` and a
    ``Content-Security-Policy`` that forbids everything. Parameters are checked
    before use: unknown, repeated, too long (MAX_PARAMETER) or not UTF-8 ones get
    400 naming them; bodies that are not the JSON object expected, nest too deep
    for the parser, or hold strings UTF-8 cannot encode get 400.

STANDARDS
    RFC 9110 (status codes and headers), RFC 8259 (JSON), RFC 3339 (times, UTC
    ``Z``, offsets accepted), RFC 4648 (base64url cursors).

DIAGNOSTICS
    Errors are JSON ``{"error": "...", "code": N}`` (400 also gives the
    ``parameter``); ``web: <uri>: Redis failed: <error>`` when a Redis call fails
    with a connection error or an error reply (answered 503); ``web: <method>
    <uri> failed`` with a traceback for anything unexpected (answered 500).

CONFIGURATION
    None of its own: the callers give the timeouts (``[redis] timeout``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Awaitable, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from mailrelay.libcompat import request_disconnected
from mailrelay.store import RedisFailed, StorageError
from mailrelay.web.limits import Refusal

log = Logger()

#: Page sizes of the list endpoints.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
#: Longest query parameter (characters).
MAX_PARAMETER = 1000
_JSON = b"application/json; charset=utf-8"
#: A bounce id (a page cursor names one too).
BOUNCE_ID_RE = re.compile(r"^[0-9a-f]{1,64}$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")
_CURSOR = re.compile(r"^[A-Za-z0-9_-]{1,200}={0,2}$")
_FORBIDDEN_IN_ADDRESS = re.compile(r"[\s\x00-\x1f\x7f<>\"\\,;()\[\]]")


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
    if not score.isdigit() or not BOUNCE_ID_RE.match(member):
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


async def bounded(coroutine: Awaitable[Any], seconds: float) -> Any:
    from twisted.internet import reactor

    return await defer.ensureDeferred(coroutine).addTimeout(seconds, reactor)


def describe_error(e: BaseException) -> str:
    if isinstance(e, defer.TimeoutError):
        return "Redis did not answer in time"
    return str(e) or type(e).__name__


def secure_headers(request: Any) -> None:
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
    request.setHeader(b"referrer-policy", b"no-referrer")


def finish(request: Any, code: int, body: bytes = b"", content_type: bytes | None = _JSON,
            headers: dict[bytes, bytes] | None = None) -> None:
    """Send a whole response unless the client has gone away."""
    if request.finished or request_disconnected(request):
        return
    request.setResponseCode(code)
    secure_headers(request)
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
    finish(request, code, encode_json(value), _JSON, headers)


def send_error(request: Any, error: ApiError) -> None:
    body: dict[str, Any] = {"error": error.message, "code": error.code}
    if error.parameter is not None:
        body["parameter"] = error.parameter
    send_json(request, error.code, body, error.headers)


def not_found(what: str = "no such resource") -> ApiError:
    return ApiError(404, what)


def request_method(request: Any) -> str:
    method = request.method.decode("ascii", "replace").upper()
    return "GET" if method == "HEAD" else method


def leaf_path_ok(request: Any) -> bool:
    return request.postpath in ([], [b""])


def refused_unless_get(request: Any) -> bool:
    """For a GET-only leaf resource: answer 404 (a longer path) or 405 (another method) and
    return True; return False when the request is a GET (or HEAD) of the resource itself."""
    if not leaf_path_ok(request):
        send_error(request, not_found())
    elif request_method(request) != "GET":
        send_error(request, ApiError(405, "method not allowed", headers={b"allow": b"GET, HEAD"}))
    else:
        return False
    return True


def run_handler(request: Any, handler: Callable[[], Awaitable[Any]], timeout: float) -> Any:
    """Run an async handler for ``request``; its result (or error) becomes the response."""
    from twisted.internet import reactor

    d = defer.ensureDeferred(handler())
    d.addTimeout(timeout, reactor)

    def failed(failure: Any) -> None:
        if failure.check(ApiError):
            send_error(request, failure.value)
        elif failure.check(RedisFailed):  # connection lost, error reply
            log.warn("web: {uri}: Redis failed: {e}", uri=request.uri.decode("ascii", "replace"),
                     e=describe_error(failure.value))
            send_error(request, ApiError(503, f"storage unavailable: {describe_error(failure.value)}"))
        elif failure.check(defer.TimeoutError, StorageError):
            send_error(request, ApiError(503, f"storage unavailable: {describe_error(failure.value)}"))
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
