"""
statuspage: the operator's status page, small server-rendered HTML on the web listener.

JOB
    Serves every path of ``[web] listen`` that is not ``/api``, ``/healthz``,
    ``/readyz`` or ``/metrics`` (the web service mounts :class:`StatusPage`
    there):

    ``GET /``
        the overview: the health of each service and of Redis; the queue
        depth per destination domain; throughput and bounce-rate charts for
        the last hour (per minute) and the last day (per hour) as inline SVG;
        messages per status over the last 24 hours; the latest 20 messages
        and the latest 20 bounces, each linked to its message page.
    ``GET /messages/<id>``
        one message: envelope, header summary, tag, metadata, and for each
        recipient its status and timeline (type, time, remote host, code,
        response, detail).
    ``GET /login``, ``POST /login``
        a form that takes an API token and opens a session (a cookie).
    ``POST /logout``
        ends the session and clears the cookie (the header's "Log out" button). Any
        other method gets 405 and changes nothing (a GET must not log out: a link or
        a prefetch would); its page carries the button.

    The throughput chart stacks the delivery outcomes per bucket (delivered,
    deferred, bounced, expired) and marks the recipients accepted; the
    bounce-rate chart is bounced / (delivered + bounced) per bucket, with the
    bounce reports received in the window listed by type below it. Both
    come from the per-minute and per-hour counters of
    :meth:`Storage.counters <mailrelay.store.Storage.counters>`.

    This module routes, authenticates and answers; the overview and the message
    page are built by :mod:`mailrelay.web.statusviews`, the charts by
    :mod:`mailrelay.web.statuscharts`, the HTML frame by :mod:`mailrelay.web.pagehtml`.

    Rendering is asynchronous (``NOT_DONE_YET``): the sections are read from
    Redis concurrently, each bounded by ``[redis] timeout``; a section whose
    read fails shows "unavailable" and the rest of the page still renders.
    A client that goes away cancels the reads.

SECURITY
    The page shows addresses, subjects and diagnostics, so it is behind the
    API tokens unless ``[web] public_status = true``. A request is let in
    with a valid ``Authorization: Bearer <token>`` header (checked by the web
    service's ``auth.check_header``) or a valid session cookie; otherwise a
    GET is redirected (303) to ``/login`` and any other method gets 401.

    Sessions: ``POST /login`` checks the token with ``auth.check_token``; on
    success it sets the cookie ``mailrelay_session`` (``HttpOnly``,
    ``SameSite=Strict``, ``Path=/``, ``Max-Age`` 8 hours, ``Secure`` when the
    request came over TLS) to base64url(HMAC-SHA256(per-process random key,
    random nonce || token)) - never the token itself - and redirects to
    ``/``. The session table lives in this process's memory only: a restart
    logs everyone out, ``POST /logout`` ends the session on the server, and every
    request re-checks the token the session was opened with, so a token
    that stops being valid ends its sessions. POSTs whose ``Origin`` is not
    this host get 403 (login and logout CSRF); the cookie is never sent
    cross-site. Every ``POST /login`` counts against the client in the web
    service's throttle (``[web] max_auth_failures``) when it arrives, and a
    successful one is refunded here: a throttled client's ``POST /login``
    gets 429 before its form is read. The login form's body is read only up
    to MAX_FORM_SIZE (4096 bytes, in BODY_LIMITS; the web service refuses a
    larger one with 413 before reading it).

    The page is a tree of ``twisted.web.template`` tags (SVG elements as
    ``Tag("svg")`` ...) serialized by Twisted's flattener; no HTML is
    assembled from strings. Every value that comes from mail or from a
    remote server (subjects, addresses, metadata, diagnostics, SMTP replies,
    chart labels and tooltips), and everything else the page prints, is a
    text child or an attribute value of a tag, which the flattener escapes
    (``&``, ``<``, ``>``; and ``"`` in attribute values); the page's own CSS
    too, so it contains none of those characters. Status names select CSS
    classes only from a fixed list. Every response carries
    ``Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline';
    img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri
    'none'``, ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
    ``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``. The page
    has no JavaScript and loads nothing else.

STANDARDS
    HTML (WHATWG), SVG 1.1, RFC 9110 (303, 401, 405), RFC 6750 (Bearer),
    RFC 6265 and draft-ietf-httpbis-rfc6265bis (HttpOnly, SameSite), CSP
    Level 3.

DIAGNOSTICS
    Unauthenticated: 303 to ``/login`` (GET, HEAD) or 401 with
    ``WWW-Authenticate: Bearer``. A wrong token at ``/login``: the form
    again, with 401 (``status page: failed login from <client>``). ``GET
    /logout``: 405 with the logout button. A request refused from its head by
    the web service (413 body too large, 429 throttled) gets a page saying
    so. Unknown path or message: 404. Unsupported method: 405. Cross-origin
    POST: 403. A bug while rendering: 500 and a logged
    traceback. Redis slow or down: the affected sections say "unavailable".

CONFIGURATION
    ``[web] public_status``; ``[web] api_tokens`` through the web service's
    auth object; ``[redis] timeout`` bounds each read. Redis data: only
    through :mod:`mailrelay.store` (the read model :mod:`mailrelay.store.readmodel`
    for messages and bounces; counters, status_counts, admin_queue_summary, ping).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.template import Flattenable, tags

from mailrelay.clientkey import client_key
from mailrelay.libcompat import request_disconnected
from mailrelay.store.interfaces import ArchiveReads, StatusPageStorage
from mailrelay.timefmt import display_time
from mailrelay.web.pagehtml import SECURITY_HEADERS, _card, _document, _logout_button
from mailrelay.web.statusviews import MESSAGE_PATH_RE, StatusViews

log = Logger()

#: Name of the session cookie.
COOKIE_NAME = b"mailrelay_session"

#: How long a session lasts (seconds); also the cookie's Max-Age.
SESSION_LIFETIME = 8 * 3600

#: Most sessions kept at once; the oldest is dropped beyond it.
MAX_SESSIONS = 10_000

#: Largest login form body read (bytes).
MAX_FORM_SIZE = 4096



class Sessions:
    """Login sessions of this process: cookie value -> (expiry, the token it was opened with)."""

    def __init__(self, check_token: Callable[[str], bool], *, lifetime: float = SESSION_LIFETIME,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = os.urandom(32)
        self._check_token = check_token
        self.lifetime = lifetime
        self._clock = clock
        self._live: dict[str, tuple[float, str]] = {}

    def open(self, token: str) -> str:
        """A new session for a token already checked; returns the cookie value."""
        now = self._clock()
        for value in [v for v, (expiry, _) in self._live.items() if expiry <= now]:
            del self._live[value]
        while len(self._live) >= MAX_SESSIONS:
            del self._live[next(iter(self._live))]
        mac = hmac.new(self._key, os.urandom(16) + token.encode(), hashlib.sha256).digest()
        value = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
        self._live[value] = (now + self.lifetime, token)
        return value

    def valid(self, value: str | None) -> bool:
        if not value:
            return False
        entry = self._live.get(value)
        if entry is None:
            return False
        expiry, token = entry
        if expiry <= self._clock() or not self._check_token(token):
            self._live.pop(value, None)
            return False
        return True

    def close(self, value: str | None) -> None:
        if value:
            self._live.pop(value, None)

    def __len__(self) -> int:
        return len(self._live)


# -- the resource ---------------------------------------------------------------------------


class StatusPage(StatusViews, resource.Resource):
    """
    The status page (see the module docstring). ``storage`` is a
    :class:`~mailrelay.store.Storage` or a callable returning one (or None
    while Redis is not connected yet); ``health()`` returns
    ``{service: {"ok": bool, "detail": str}}``; ``auth`` has
    ``check_header(request) -> bool`` and ``check_token(token) -> bool``.
    """

    isLeaf = False

    #: The largest body each path reads (the web service refuses larger ones before reading them).
    BODY_LIMITS = {b"/login": MAX_FORM_SIZE, b"/logout": MAX_FORM_SIZE}

    def __init__(self, storage: StatusPageStorage | Callable[[], StatusPageStorage | None] | None,
                 config: Any, health: Callable[[], Awaitable[dict]], auth: Any, *,
                 throttle: Any = None, clock: Any = None, archive: ArchiveReads | None = None) -> None:
        super().__init__()
        from twisted.internet import reactor

        self._storage = storage
        self._archive = archive
        self.config = config
        self.health = health
        self.auth = auth
        self.clock = clock or reactor
        self.sessions = Sessions(auth.check_token)
        self.throttle = throttle
        self.timeout = float(config.redis.timeout)
        self.public = bool(config.web.public_status)
        self.hostname = config.hostname

    # Every path below this resource is rendered by it (routing is on request.path).
    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return self

    @property
    def storage(self) -> StatusPageStorage | None:
        storage = self._storage
        if storage is not None and not hasattr(storage, "search_messages") and callable(storage):
            storage = storage()
        return storage

    @property
    def archive(self) -> ArchiveReads | None:
        """The sent-mail archive's reads (mailrelay.store.archiveview); the Redis store without one."""
        return self._archive if self._archive is not None else self.storage

    # -- dispatch -----------------------------------------------------------------------

    def render(self, request: server.Request) -> Any:
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        gone = request.notifyFinish()
        d = defer.ensureDeferred(self._dispatch(request))
        gone.addErrback(lambda _: d.cancel())  # the client went away: stop reading Redis
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def _dispatch(self, request: server.Request) -> None:
        try:
            path = request.path.decode("ascii")
        except UnicodeDecodeError:
            path = ""
        method = request.method
        if path == "/login":
            if method in (b"GET", b"HEAD"):
                return self._login_form(request)
            if method == b"POST":
                return self._login(request)
            return self._method_not_allowed(request, b"GET, HEAD, POST")
        if path == "/logout":
            if method == b"POST":
                return self._logout(request)
            return self._logout_form(request)
        if not self._authorized(request):
            if method in (b"GET", b"HEAD"):
                target = "/login"
                if MESSAGE_PATH_RE.match(path):
                    target += "?next=" + quote(path, safe="")
                return self._redirect(request, target)
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="mailrelay"')
            return self._send(request, 401, _document("Unauthorized", tags.p("A token is needed.")))
        if method not in (b"GET", b"HEAD"):
            return self._method_not_allowed(request, b"GET, HEAD")
        if path == "/":
            return self._send(request, 200, await self._overview(request))
        match = MESSAGE_PATH_RE.match(path)
        if match:
            status, body = await self._message_page(request, match.group(1))
            return self._send(request, status, body)
        return self._send(request, 404, self._page(request, "Not found",
                                                   _card("Not found", tags.p(tags.a("Back to the overview", href="/")))))

    def _failed(self, failure: Any, request: server.Request) -> None:
        if failure.check(defer.CancelledError) and request_disconnected(request):
            return  # the client went away
        log.failure("status page: rendering {path} failed", failure, path=request.path)
        if not request.startedWriting and not request.finished and not request_disconnected(request):
            self._send(request, 500, _document("Error", tags.p("Internal error; see the daemon's log.")))

    # -- responses ----------------------------------------------------------------------

    def _send(self, request: server.Request, code: int, body: bytes,
              content_type: bytes = b"text/html; charset=utf-8") -> None:
        if request.finished or request_disconnected(request):
            return
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", content_type)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    def _redirect(self, request: server.Request, location: str) -> None:
        request.setHeader(b"Location", location.encode("ascii"))
        self._send(request, 303, b"", b"text/plain; charset=utf-8")

    def _method_not_allowed(self, request: server.Request, allow: bytes) -> None:
        request.setHeader(b"Allow", allow)
        self._send(request, 405, _document("Method not allowed", tags.p("Method not allowed.")))

    def _page(self, request: server.Request, title: str, body: Flattenable, *, refresh: int | None = None) -> bytes:
        logged_in = self.sessions.valid(self._cookie(request))
        subtitle = (f"{self.hostname} · "
                    + display_time(self.clock.seconds()) + " UTC")
        return _document(f"{title} - mailrelay", body, logout=logged_in, refresh=refresh, subtitle=subtitle)

    # -- authentication -----------------------------------------------------------------

    @staticmethod
    def _cookie(request: server.Request) -> str | None:
        raw = request.getCookie(COOKIE_NAME)
        try:
            return raw.decode("ascii") if raw else None
        except UnicodeDecodeError:
            return None

    def _authorized(self, request: server.Request) -> bool:
        if self.public:
            return True
        if request.getHeader(b"authorization") is not None and self.auth.check_header(request):
            return True
        return self.sessions.valid(self._cookie(request))

    @staticmethod
    def _same_origin(request: server.Request) -> bool:
        origin = request.getHeader(b"origin")
        if origin is None:
            return True   # not a browser form post, or an old browser: SameSite still holds
        host = request.getHeader(b"host") or b""
        try:
            netloc = urlsplit(origin.decode("ascii")).netloc
        except (UnicodeDecodeError, ValueError):
            return False
        return bool(netloc) and netloc.lower() == host.decode("ascii", "replace").lower()

    @staticmethod
    def _form(request: server.Request) -> dict[str, str]:
        """The fields of a urlencoded POST body (read here: the Site may not parse forms)."""
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if request.method != b"POST" or content_type != b"application/x-www-form-urlencoded":
            return {}
        request.content.seek(0)
        body = request.content.read(MAX_FORM_SIZE + 1)
        if len(body) > MAX_FORM_SIZE:
            return {}
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        return {name: values[0] for name, values in fields.items()}

    @staticmethod
    def _next_target(request: server.Request, form: dict[str, str] | None = None) -> str:
        target = (form or {}).get("next")
        if target is None:
            values = request.args.get(b"next") or [b"/"]
            target = values[0].decode("utf-8", "replace")
        return target if target == "/" or MESSAGE_PATH_RE.match(target) else "/"

    def _login_form(self, request: server.Request, *, error: str = "", code: int = 200,
                    target: str | None = None) -> None:
        target = target or self._next_target(request)
        if code == 200 and (self.public or self.sessions.valid(self._cookie(request))):
            return self._redirect(request, target)
        body = tags.section(
            tags.h2("Log in"),
            tags.p("Use an API token (", tags.code("[web] api_tokens"), ", or the generated ",
                   tags.code("api-token"), " file in the state directory).", class_="muted"),
            tags.p(error, class_="err") if error else "",
            tags.form(tags.input(type="hidden", name="next", value=target),
                      tags.label("Token", for_="token"),
                      tags.input(id="token", type="password", name="token", autocomplete="current-password",
                                 required="", autofocus=""),
                      tags.button("Log in", type="submit"), method="post", action="/login"),
            class_="card login")
        self._send(request, code, _document("Log in - mailrelay", body))

    def _login(self, request: server.Request) -> None:
        if not self._same_origin(request):
            return self._send(request, 403, _document("Forbidden", tags.p("Cross-origin request refused.")))
        form = self._form(request)
        token = form.get("token", "").strip()
        client = client_key(getattr(request.getClientAddress(), "host", None))
        if not token or not self.auth.check_token(token):
            # counted by the web service's Gate when the request's head came in
            log.info("status page: failed login from {client}", client=client)
            return self._login_form(request, error="That token is not valid.", code=401,
                                    target=self._next_target(request, form))
        if self.throttle is not None:
            self.throttle.refund(client)
        value = self.sessions.open(token)
        request.addCookie(COOKIE_NAME, value.encode("ascii"), path=b"/", max_age=b"%d" % SESSION_LIFETIME,
                          httpOnly=True, sameSite="strict", secure=request.isSecure() or None)
        self._redirect(request, self._next_target(request, form))

    def _logout_form(self, request: server.Request) -> None:
        """Any other method than POST at /logout (a link, a prefetch): 405, nothing changes;
        the page carries the logout button for a person who came here."""
        request.setHeader(b"Allow", b"POST")
        body = tags.section(tags.h2("Log out"), _logout_button(), class_="card login")
        self._send(request, 405, _document("Log out - mailrelay", body))

    def refuse(self, request: server.Request, code: int, message: str, headers: dict[bytes, bytes]) -> None:
        """A request refused from its head (mailrelay.web.limits: 413, 429 ...), as a page."""
        for name, value in {**SECURITY_HEADERS, **headers}.items():
            request.setHeader(name, value)
        self._send(request, code, _document("Refused - mailrelay", tags.p(message, class_="err")))

    def _logout(self, request: server.Request) -> None:
        if not self._same_origin(request):
            return self._send(request, 403, _document("Forbidden", tags.p("Cross-origin request refused.")))
        self.sessions.close(self._cookie(request))
        request.addCookie(COOKIE_NAME, b"", path=b"/", max_age=b"0",
                          expires=b"Thu, 01 Jan 1970 00:00:00 GMT", httpOnly=True, sameSite="strict",
                          secure=request.isSecure() or None)
        self._redirect(request, "/" if self.public else "/login")

    # -- reading, bounded -----------------------------------------------------------------

    def _read(self, make: Callable[[], Awaitable[Any]]) -> defer.Deferred:
        """Run one storage read with the [redis] timeout; fires with (ok, value or error)."""
        storage = self.storage
        if storage is None:
            return defer.succeed((False, RuntimeError("Redis is not connected yet")))
        try:
            d = defer.ensureDeferred(make())
        except Exception as error:
            return defer.succeed((False, error))
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(lambda value: (True, value), lambda failure: (False, failure.value))
        return d
