"""
server: the web listener: the web service, its site and root, admission, health checks.

JOB
    :class:`WebService` starts, once Redis is connected and the SMTP listeners
    are up, one twisted.web site on each ``[web] listen`` endpoint, with:

    ``/api/v1/...``   the JSON API (:mod:`mailrelay.web.api`);
    ``/healthz``      200 ``ok`` while the process runs;
    ``/readyz``       200 when Redis answers PING within ``[redis] timeout``
                      and every configured SMTP listener is listening; 503
                      with a JSON reason otherwise; either way it reports
                      how far the archiver is behind (``archive_lag_entries``,
                      ``archive_lag_seconds``), which never makes it unready:
                      mail is accepted and delivered while the archive lags;
    ``/metrics``      the Prometheus text format (:mod:`mailrelay.web.metrics`,
                      refreshed from Redis by a LoopingCall);
    anything else     the status page (:mod:`mailrelay.web.statuspage`, when
                      installed): ``/``, ``/messages/<id>``, ``/login``, ``POST /logout``.

    Handlers never block the reactor: every Redis read is asynchronous and
    bounded in time. :func:`smtp_listener_status` reads the SMTP listeners'
    state from memory, for /readyz and the status page.

SECURITY
    Listens on 127.0.0.1 by default. Requests are admitted from their head,
    before their body is read (:class:`Gate` through :mod:`mailrelay.web.limits`):
    the token is checked first (401 under /api, :mod:`mailrelay.web.auth`), then
    the endpoint's body limit (413: ADMIN_API_MAX_BODY under /api, the status
    page's BODY_LIMITS for its forms, none elsewhere); a refused body is never
    stored, an admitted one is kept in memory. Failed authentications (wrong
    Bearer tokens anywhere, failed logins) are counted per client IP
    (:class:`~mailrelay.web.limits.FailureThrottle`); a client over ``[web]
    max_auth_failures`` within ``auth_failure_window`` gets 429 with Retry-After
    for every request that presents credentials, the right token too, until the
    window lets it in. ``/healthz``, ``/readyz`` and ``/metrics`` carry no mail
    data and need no token. No CORS headers: browsers on other origins cannot
    read the API.

STANDARDS
    RFC 9110 (HTTP semantics: 404/405/413/414 and their headers), RFC 6585 (429,
    431), RFC 6750 (Bearer tokens).

DIAGNOSTICS
    ``web listening on <host>:<port> (plain)`` per listener; ``no [web]
    api_tokens configured: API token in <path> (mode 0600)``; ``web: <client>
    throttled after <n> failed authentications in <window>s`` (from the
    throttle); ``web: metrics loop failed`` with a traceback if the refresh loop
    dies. Refusals are JSON under /api and pages elsewhere.

CONFIGURATION
    ``[web]`` listen, api_tokens, public_status (read by the status page),
    max_auth_failures, auth_failure_window, max_connections, request_timeout
    (see :mod:`mailrelay.web.limits`); ``[redis] timeout`` bounds each Redis
    read. Files: ``state_dir/api-token``. Redis data: through :mod:`mailrelay.store` only.
"""

from __future__ import annotations

import math
import time
from typing import Any, Awaitable, Callable

from twisted.application import service
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger
from twisted.web import resource, server

from mailrelay.config import Config
from mailrelay.store.interfaces import ArchiveReads, WebStorage
from mailrelay.services.archiver import ArchiverState
from mailrelay.services.submission import SMTPListenerService, describe_address
from mailrelay.web.api import ADMIN_API_MAX_BODY, ApiResource
from mailrelay.web.auth import TokenAuth, bearer_token_of, ensure_api_token, unauthorized
from mailrelay.web.jsonhttp import (ApiError, JsonNotFound, bounded, finish, not_found, refused_unless_get,
                                    run_handler, send_error, send_json)
from mailrelay.web.limits import FailureThrottle, GuardedSite, Refusal, RequestHead
from mailrelay.web.metrics import METRICS_INTERVAL, Metrics, MetricsResource

log = Logger()

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


def archiver_detail(state: ArchiverState) -> str:
    """The archiver's state in a few words, for the status page."""
    lag = state.lag
    if lag is None:
        behind = "lag not measured yet"
    elif lag.entries == 0:
        behind = "up to date"
    else:
        behind = f"{lag.entries} event(s) behind, the oldest {lag.oldest_age_seconds:.0f}s old"
    return behind if state.problem is None else f"{state.problem}; {behind}"


class HealthResource(resource.Resource):
    """``GET /healthz``: the process is alive (nothing else is checked)."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        if not refused_unless_get(request):
            finish(request, 200, b"ok\n", b"text/plain; charset=utf-8")
        return server.NOT_DONE_YET


class ReadyResource(resource.Resource):
    """``GET /readyz``: 200 when Redis answers and the SMTP listeners are up, else 503."""

    isLeaf = True

    def __init__(self, health: Callable[[], Awaitable[dict[str, Any]]], timeout: float) -> None:
        super().__init__()
        self.health = health
        self.timeout = timeout

    def render(self, request: Any) -> Any:
        if refused_unless_get(request):
            return server.NOT_DONE_YET

        async def handle() -> None:
            state = await self.health()
            send_json(request, 200 if state["ready"] else 503, state)

        return run_handler(request, handle, self.timeout)


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


class WebService(service.Service):
    """The HTTP listeners (started once Redis is connected and the SMTP listeners are up)."""

    name = "web"

    def __init__(self, config: Config, get_storage: Callable[[], WebStorage],
                 listeners: Callable[[], dict[str, dict[str, Any]]],
                 get_archive: Callable[[], ArchiveReads | None] | None = None,
                 archiver: Callable[[], ArchiverState | None] | None = None) -> None:
        self.config = config
        self.get_storage = get_storage
        self.get_archive = get_archive
        #: The archiver's state (lag, whether it writes), read from memory; None: no archiver.
        self.archiver = archiver or (lambda: None)
        self.archive: ArchiveReads | None = None
        self.listeners = listeners
        self.ports: list[Any] = []
        self.storage: WebStorage | None = None
        self.auth: TokenAuth | None = None
        self.throttle = FailureThrottle(config.web.max_auth_failures, config.web.auth_failure_window)
        self.metrics = Metrics(lambda: {name: s["sessions"] for name, s in self.listeners().items()},
                               self.archiver)
        self._loop: task.LoopingCall | None = None

    def startService(self) -> None:
        service.Service.startService(self)  # listening starts in when_ready

    async def when_ready(self) -> None:
        from twisted.internet import reactor

        settings = self.config.web
        if not settings.listen:
            return
        self.storage = self.get_storage()
        self.archive = self.get_archive() if self.get_archive is not None else None
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
        page = (page_class(self.storage, self.config, self.service_health, self.auth, throttle=self.throttle,
                           archive=self.archive)
                if page_class else None)
        root = RootResource(page)
        root.putChild(b"api", ApiResource(self.storage, self.config, self.auth, self.archive))
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
        {"listening": bool, "sessions": n, "addresses": [...]}}, "archive_lag_entries": n |
        None, "archive_lag_seconds": s | None}`` (the archive's lag: None until measured; it
        never makes the daemon unready). Never raises; waits at most ``[redis] timeout``.
        """
        timeout = self.config.redis.timeout
        started = time.monotonic()
        try:
            redis_ok = bool(await bounded(self.storage.ping(), timeout))
        except Exception:
            redis_ok = False
        latency = round((time.monotonic() - started) * 1000, 1) if redis_ok else None
        listeners = self.listeners()
        reasons = []
        if not redis_ok:
            reasons.append(f"Redis did not answer PING within {timeout:g}s")
        reasons += [f"the {name} listener is not listening" for name, s in listeners.items() if not s["listening"]]
        archiver = self.archiver()
        lag = archiver.lag if archiver is not None else None
        return {"ready": not reasons, "reason": "; ".join(reasons) or None,
                "redis": {"ok": redis_ok, "latency_ms": latency}, "listeners": listeners,
                "archive_lag_entries": lag.entries if lag is not None else None,
                "archive_lag_seconds": lag.oldest_age_seconds if lag is not None else None}

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
        archiver = self.archiver()
        if archiver is not None:
            services["archiver"] = {"ok": archiver.writing, "detail": archiver_detail(archiver)}
        return services

    def stopService(self) -> defer.Deferred:
        service.Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        ports, self.ports = self.ports, []
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports],
                                   consumeErrors=True).addCallback(lambda _: None)
