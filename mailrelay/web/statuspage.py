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
    through :mod:`mailrelay.store` (search_messages, search_bounces,
    counters, status_counts, get_message, get_timeline, admin_queue_summary,
    ping).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence
from urllib.parse import parse_qs, quote, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.template import Flattenable, Tag, flattenString, tags

from mailrelay.clientkey import client_key
from mailrelay.services.domains import domain_states
from mailrelay.libcompat import request_disconnected
from mailrelay.store import readmodel
from mailrelay.store.records import (BounceRecord, MessageRecord, MessageSummary, TimelineEvent,
                                     decode_timeline)
from mailrelay.timefmt import display_rfc3339, display_time, display_time_ms, format_age

log = Logger()

#: Name of the session cookie.
COOKIE_NAME = b"mailrelay_session"

#: How long a session lasts (seconds); also the cookie's Max-Age.
SESSION_LIFETIME = 8 * 3600

#: Most sessions kept at once; the oldest is dropped beyond it.
MAX_SESSIONS = 10_000

#: Largest login form body read (bytes).
MAX_FORM_SIZE = 4096

#: Rows in the latest messages and latest bounces tables.
LATEST = 20

#: Domains shown in the queue table (the largest queues first).
MAX_QUEUE_ROWS = 50

#: Seconds between automatic reloads of the overview (a meta refresh, no script).
REFRESH_SECONDS = 60

SECURITY_HEADERS = {
    b"Content-Security-Policy": (b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}

MESSAGE_ID_RE = re.compile(r"^[0-9a-f]{20}$")
MESSAGE_PATH_RE = re.compile(r"^/messages/([0-9a-f]{20})$")

#: Status and event names that have a colour; anything else is shown plain.
KNOWN_STATES = frozenset({
    "queued", "delivering", "delivered", "deferred", "bounced", "expired", "suppressed",
    "partial", "deleted", "complained", "webhook_failed",
})



SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def render_html(root: Flattenable) -> bytes:
    """
    ``root`` (tags, strings, lists of them) serialized by twisted.web.template's flattener,
    which escapes every string: ``&``, ``<``, ``>`` in text, and ``"`` too in attribute values.
    The page's trees hold no Deferred, so the flattening has finished when this returns.
    """
    results: list[Any] = []
    flattenString(None, root).addBoth(results.append)
    if not results:
        raise RuntimeError("a status page tree did not flatten synchronously (a Deferred in it?)")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def _text(value: Any) -> str:
    """Any value as the text the page shows (the flattener escapes it)."""
    return "" if value is None else str(value)


def _muted(text: str) -> Tag:
    return tags.span(text, class_="muted")


def _card(title: Flattenable, *content: Flattenable) -> Tag:
    return tags.section(tags.h2(title), *content, class_="card")


def _head_row(*names: str, numeric: Sequence[str] = ()) -> Tag:
    return tags.thead(tags.tr(*[tags.th(name, class_="num") if name in numeric else tags.th(name)
                                for name in names]))


def _state_class(state: str) -> str:
    return f"st st-{state}" if state in KNOWN_STATES else "st"


def _badge(state: str) -> Tag:
    return tags.span(state or "-", class_=_state_class(state))


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= value (at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _fmt_num(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


# -- sessions -------------------------------------------------------------------------------


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


# -- the page's frame ---------------------------------------------------------------------

CSS = """
:root { --fg:#1d2430; --muted:#667085; --line:#e4e7ec; --bg:#f5f6f8; --card:#fff;
  --ok:#12805c; --bad:#c4320a; --warn:#b54708; --info:#175cd3; --grey:#667085; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
  color:var(--fg); background:var(--bg); }
header { display:flex; align-items:center; gap:16px; padding:10px 24px; background:#1d2430; color:#fff; }
header h1 { font-size:17px; margin:0; font-weight:600; }
header h1 a { color:#fff; text-decoration:none; }
header .meta { color:#c0c6d0; font-size:12px; margin-left:auto; }
header form { margin:0; }
header button { font:inherit; font-size:12px; color:#fff; background:transparent;
  border:1px solid #5b6577; border-radius:4px; padding:3px 10px; cursor:pointer; }
main { max-width:1240px; margin:0 auto; padding:16px 24px 32px; }
h2 { font-size:15px; margin:0 0 10px; font-weight:600; }
h3 { font-size:13px; margin:12px 0 6px; font-weight:600; color:var(--muted); }
section.card { background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:14px 16px; margin-bottom:16px; overflow-x:auto; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:16px; }
.grid2 section.card { margin-bottom:0; min-width:0; }
.row { margin-bottom:16px; }
.health { display:flex; flex-wrap:wrap; gap:10px; }
.svc { flex:1 1 180px; border:1px solid var(--line); border-radius:6px; padding:8px 10px; min-width:0; }
.svc .name { font-weight:600; }
.svc .detail { color:var(--muted); font-size:12px; overflow-wrap:anywhere; }
.dot { display:inline-block; width:9px; height:9px; border-radius:50%; margin-right:6px; }
.dot.ok { background:var(--ok); } .dot.bad { background:var(--bad); }
.svc.bad { border-color:#f5b8a3; background:#fff6f3; }
.tiles { display:flex; flex-wrap:wrap; gap:8px; }
.tile { border:1px solid var(--line); border-radius:6px; padding:6px 12px; min-width:96px; }
.tile .n { font-size:18px; font-weight:600; }
.tile .l { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:5px 8px; border-bottom:1px solid var(--line); vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
td.time { white-space:nowrap; font-variant-numeric:tabular-nums; color:var(--muted); }
td.wrap { overflow-wrap:anywhere; max-width:420px; }
td.ellipsis { max-width:320px; overflow:hidden; text-overflow:ellipsis; white-space:nowrap; }
tr.total td { font-weight:600; border-bottom:none; }
a { color:var(--info); text-decoration:none; }
a:hover { text-decoration:underline; }
table.events { table-layout:fixed; }
table.events th:nth-child(1) { width:110px; } table.events th:nth-child(2) { width:165px; }
table.events th:nth-child(3) { width:180px; } table.events th:nth-child(4) { width:95px; }
table.events td { overflow-wrap:anywhere; }
.crumbs { margin:0 0 12px; font-size:13px; color:var(--muted); }
code, .mono { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; }
.st { display:inline-block; padding:0 7px; border-radius:9px; font-size:12px; background:#eef0f3; color:#344054; white-space:nowrap; }
.st-delivered { background:#dcfae6; color:var(--ok); }
.st-queued, .st-delivering { background:#e0eaff; color:var(--info); }
.st-deferred, .st-partial { background:#fef0c7; color:var(--warn); }
.st-bounced, .st-complained, .st-webhook_failed { background:#fee4e2; color:var(--bad); }
.st-expired, .st-suppressed, .st-deleted { background:#eaecf0; color:#475467; }
.muted { color:var(--muted); }
.err { color:var(--bad); }
svg.chart { width:100%; height:auto; display:block; }
svg.chart text { font:10px system-ui,sans-serif; fill:#667085; }
svg.chart .grid { stroke:#eaecf0; stroke-width:1; }
svg.chart .axis { stroke:#98a2b3; stroke-width:1; }
.b-delivered { fill:#32d583; } .b-deferred { fill:#fdb022; } .b-bounced { fill:#f97066; } .b-expired { fill:#98a2b3; }
.t-accepted { stroke:#1d2430; stroke-width:2; }
.l-rate { stroke:#d92d20; stroke-width:1.6; fill:none; }
.p-rate { fill:#d92d20; }
.legend { display:flex; flex-wrap:wrap; gap:4px 14px; font-size:12px; color:var(--muted); margin-top:4px; }
.sw { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:4px; vertical-align:-1px; }
.sw.delivered { background:#32d583; } .sw.deferred { background:#fdb022; } .sw.bounced { background:#f97066; }
.sw.expired { background:#98a2b3; } .sw.accepted { background:#1d2430; height:3px; vertical-align:2px; }
.sw.rate { background:#d92d20; height:3px; vertical-align:2px; }
dl.kv { display:grid; grid-template-columns:max-content 1fr; gap:4px 16px; margin:0; }
dl.kv dt { color:var(--muted); }
dl.kv dd { margin:0; overflow-wrap:anywhere; }
.login { max-width:380px; margin:80px auto; }
.login input[type=password] { width:100%; font:inherit; padding:7px 9px; border:1px solid #d0d5dd; border-radius:6px; margin:6px 0 12px; }
.login button { font:inherit; padding:6px 16px; border-radius:6px; border:1px solid #175cd3; background:#175cd3; color:#fff; cursor:pointer; }
@media (max-width: 900px) { .grid2 { grid-template-columns:1fr; } }
"""



def _logout_button() -> Tag:
    return tags.form(tags.button("Log out", type="submit"), method="post", action="/logout")


def _document(title: str, body: Flattenable, *, logout: bool = False, refresh: int | None = None,
              subtitle: str = "") -> bytes:
    head = tags.head(
        tags.meta(charset="utf-8"),
        tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
        tags.meta(name="referrer", content="no-referrer"),
        tags.meta(**{"http-equiv": "refresh", "content": str(int(refresh))}) if refresh else "",
        tags.title(title), tags.style(CSS))
    header = tags.header(tags.h1(tags.a("mailrelay", href="/")), tags.span(subtitle, class_="meta"),
                         _logout_button() if logout else "")
    page = tags.html(head, "\n", tags.body(header, "\n", Tag("main", children=["\n", body, "\n"])), lang="en")
    return b"<!DOCTYPE html>\n" + render_html(page) + b"\n"


def _unavailable(what: str, error: BaseException | None) -> Tag:
    reason = "Redis did not answer in time" if isinstance(error, defer.TimeoutError) else (
        str(error) or type(error).__name__ if error is not None else "unknown error")
    return tags.p(f"{what} unavailable: {reason}", class_="err")


# -- charts ---------------------------------------------------------------------------------


def _svg(name: str, attributes: dict[str, Any], *children: Flattenable) -> Tag:
    """An SVG element (``tags`` knows only HTML names); attribute values as text."""
    return Tag(name, attributes={key: str(value) for key, value in attributes.items()},
               children=list(children))


def svg_chart(label: str, times_ms: list[int], resolution: str, *,
              stacks: Iterable[tuple[str, list[float]]] = (), line: tuple[str, list[float | None]] | None = None,
              ticks: tuple[str, list[float]] | None = None, percent: bool = False, width: int = 560,
              height: int = 150) -> Tag:
    """
    An inline SVG chart of one value per bucket: stacked bars (``stacks``: css name, values),
    a short mark per bucket (``ticks``: css name, values) and/or a line (``line``: name,
    values, None for no value); y from 0 to a round maximum, x labelled with start, middle and
    end times (UTC). Each bucket carries a ``<title>`` tooltip with its numbers.
    """
    stacks = list(stacks)
    n = len(times_ms)
    left, right, top, bottom = 40, 8, 8, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for _, values in stacks) for i in range(n)]
    peak = max(totals + [v for v in (line[1] if line else []) if v is not None]
               + (ticks[1] if ticks else []) + [0])
    y_max = _nice_ceiling(peak) if not percent else max(1, min(100, _nice_ceiling(peak)))
    slot = plot_w / max(n, 1)

    def y(value: float) -> float:
        return top + plot_h - value / y_max * plot_h

    unit = "%" if percent else ""
    chart = _svg("svg", {"class": "chart", "viewBox": f"0 0 {width} {height}", "role": "img",
                         "aria-label": label, "xmlns": SVG_NAMESPACE})
    for fraction in (0, 0.5, 1):
        value = y_max * fraction
        gy = f"{y(value):.1f}"
        chart(_svg("line", {"class": "grid", "x1": left, "x2": width - right, "y1": gy, "y2": gy}),
              _svg("text", {"x": left - 5, "y": f"{y(value) + 3:.1f}", "text-anchor": "end"},
                   _fmt_num(value) + unit))
    axis_y = f"{y(0):.1f}"
    chart(_svg("line", {"class": "axis", "x1": left, "x2": width - right, "y1": axis_y, "y2": axis_y}))
    fmt = "%H:%M"
    for index in sorted({0, n // 2, n - 1}) if n else ():
        x = left + slot * (index + 0.5)
        anchor = "start" if index == 0 else "end" if index == n - 1 else "middle"
        if index == 0:
            x = left
        elif index == n - 1:
            x = width - right
        chart(_svg("text", {"x": f"{x:.1f}", "y": height - 5, "text-anchor": anchor},
                   time.strftime(fmt, time.gmtime(times_ms[index] / 1000))))
    bar_w = max(1.0, slot * 0.72)
    for i in range(n):
        base = 0.0
        x = left + slot * i + (slot - bar_w) / 2
        tip = [display_time(times_ms[i] / 1000, minutes_only=True) + " UTC"]
        marks: list[Tag] = []
        for name, values in stacks:
            value = values[i]
            if value > 0:
                y_top, y_bottom = y(base + value), y(base)
                marks.append(_svg("rect", {"class": f"b-{name}", "x": f"{x:.1f}", "y": f"{y_top:.1f}",
                                           "width": f"{bar_w:.1f}",
                                           "height": f"{max(0.5, y_bottom - y_top):.1f}"}))
                base += value
            tip.append(f"{name} {value:g}")
        if ticks is not None and ticks[1][i] > 0:
            ty = f"{y(ticks[1][i]):.1f}"
            marks.append(_svg("line", {"class": f"t-{ticks[0]}", "x1": f"{x - 1:.1f}",
                                       "x2": f"{x + bar_w + 1:.1f}", "y1": ty, "y2": ty}))
            tip.insert(1, f"{ticks[0]} {ticks[1][i]:g}")
        if line is not None and line[1][i] is not None:
            tip.append(f"{line[0]} {line[1][i]:.1f}{unit}" if percent else f"{line[0]} {line[1][i]:g}")
        if marks or (line is not None and line[1][i] is not None):
            # an invisible full-height target carries the tooltip of the bucket
            chart(_svg("g", {}, _svg("title", {}, " · ".join(tip)), *marks,
                       _svg("rect", {"x": f"{left + slot * i:.1f}", "y": top, "width": f"{slot:.1f}",
                                     "height": plot_h, "fill": "transparent"})))
    if line is not None:
        name, values = line
        segment: list[tuple[str, str]] = []
        segments: list[list[tuple[str, str]]] = []
        for i, value in enumerate(values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append((f"{left + slot * (i + 0.5):.1f}", f"{y(value):.1f}"))
        if segment:
            segments.append(segment)
        css = "rate" if percent else name
        for points in segments:
            if len(points) > 1:
                chart(_svg("polyline", {"class": f"l-{css}", "points": " ".join(f"{cx},{cy}" for cx, cy in points)}))
            if percent or len(points) == 1:
                for cx, cy in points:
                    chart(_svg("circle", {"class": "p-rate", "cx": cx, "cy": cy, "r": 2}) if percent else
                          _svg("circle", {"cx": cx, "cy": cy, "r": 2, "fill": "#175cd3"}))
    return chart


OUTCOMES = ("delivered", "deferred", "bounced", "expired")


def charts_section(title: str, rows: list[tuple[int, dict[str, int]]], resolution: str) -> Tag:
    times = [start for start, _ in rows]
    get = lambda name: [float(c.get(name, 0)) for _, c in rows]  # noqa: E731
    stacks = [(name, get(name)) for name in OUTCOMES]
    throughput = svg_chart(f"{title}: throughput", times, resolution, stacks=stacks,
                           ticks=("accepted", get("recipients")))
    rates: list[float | None] = []
    for _, c in rows:
        delivered, bounced = c.get("delivered", 0), c.get("bounced", 0)
        rates.append(100.0 * bounced / (delivered + bounced) if delivered + bounced else None)
    rate_chart = svg_chart(f"{title}: bounce rate", times, resolution, line=("bounce rate", rates),
                           percent=True, height=120)
    totals = {name: sum(int(c.get(name, 0)) for _, c in rows)
              for name in ("accepted", "recipients") + OUTCOMES}
    legend = [tags.span(tags.span(class_="sw accepted"),
                        f"accepted {totals['recipients']:,} ({totals['accepted']:,} messages)")]
    legend += [tags.span(tags.span(class_=f"sw {name}"), f"{name} {totals[name]:,}") for name in OUTCOMES]
    ended = totals["delivered"] + totals["bounced"]
    overall = f"{100.0 * totals['bounced'] / ended:.1f}%" if ended else "-"
    by_type: dict[str, int] = {}
    for _, c in rows:
        for key, value in c.items():
            if key.startswith("bounce:"):
                by_type[key[len("bounce:"):]] = by_type.get(key[len("bounce:"):], 0) + int(value)
    reports = ", ".join(f"{kind} {count:,}" for kind, count in sorted(by_type.items()) if count) or "none"
    return _card(title,
                 tags.h3("Throughput (recipients)"), throughput,
                 tags.div(legend, class_="legend"),
                 tags.h3("Bounce rate (bounced / (delivered + bounced))"), rate_chart,
                 tags.div(tags.span(tags.span(class_="sw rate"), f"bounce rate {overall}"),
                          tags.span(f"bounce reports: {reports}"), class_="legend"))


# -- the resource ---------------------------------------------------------------------------


class StatusPage(resource.Resource):
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

    def __init__(self, storage: Any, config: Any, health: Callable[[], Awaitable[dict]], auth: Any, *,
                 throttle: Any = None, clock: Any = None) -> None:
        super().__init__()
        from twisted.internet import reactor

        self._storage = storage
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
    def storage(self) -> Any:
        storage = self._storage
        if storage is not None and not hasattr(storage, "search_messages") and callable(storage):
            storage = storage()
        return storage

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

    # -- the overview -------------------------------------------------------------------

    # -- the overview -------------------------------------------------------------------

    async def _overview(self, request: server.Request) -> bytes:
        storage = self.storage
        now_ms = int(self.clock.seconds() * 1000)
        health_d = defer.ensureDeferred(self._health())
        reads = {
            "queue": self._read(lambda: storage.admin_queue_summary()),
            "hour": self._read(lambda: storage.counters("m", 60)),
            "day": self._read(lambda: storage.counters("h", 24)),
            "statuses": self._read(lambda: storage.status_counts(now_ms - 86_400_000)),
            "messages": self._read(lambda: self._latest_messages(storage)),
            "bounces": self._read(lambda: storage.search_bounces(limit=LATEST)),
            "domains": self._read(lambda: self._domain_states(storage)),
        }
        results = dict(zip(reads, await defer.gatherResults(list(reads.values()))))
        health = await health_d
        body = [
            _card("Health", health),
            _card("Messages in the last 24 hours", self._statuses(*results["statuses"])),
            tags.div(self._charts("Last hour, per minute", *results["hour"], "m"),
                     self._charts("Last 24 hours, per hour", *results["day"], "h"), class_="grid2 row"),
            _card("Queue by destination domain", self._queue(*results["queue"])),
            _card("Latest messages", self._messages_table(*results["messages"])),
            _card("Latest bounces", self._bounces_table(*results["bounces"])),
            _card("Sender domains (DKIM)", self._domains(*results["domains"])),
        ]
        return self._page(request, "Status", [[section, "\n"] for section in body], refresh=REFRESH_SECONDS)

    async def _health(self) -> Tag:
        try:
            d = defer.ensureDeferred(self.health())
            d.addTimeout(2 * self.timeout, self.clock)  # health() itself waits up to [redis] timeout
            services = dict(await d)
        except Exception as error:
            return _unavailable("Service health", error)
        if "redis" not in services:
            storage = self.storage
            ok = False if storage is None else (await self._read(lambda: storage.ping()))[1] is True
            services = {"redis": {"ok": ok, "detail": "PING answered" if ok else "no answer to PING"},
                        **services}
        cards = []
        for name, state in services.items():
            state = state if isinstance(state, dict) else {"ok": bool(state)}
            ok = bool(state.get("ok"))
            cards.append(tags.div(
                tags.div(tags.span(class_="dot ok" if ok else "dot bad"), _text(name), " ",
                         _muted("up" if ok else "DOWN"), class_="name"),
                tags.div(_text(state.get("detail", "")), class_="detail"),
                class_="svc" if ok else "svc bad"))
        return tags.div(cards, class_="health")

    @staticmethod
    def _statuses(ok: bool, value: Any) -> Tag:
        if not ok:
            return _unavailable("Counts", value)
        return tags.div([tags.div(tags.div(f"{int(n):,}", class_="n"), tags.div(_badge(_text(status)), class_="l"),
                                  class_="tile") for status, n in value.items()], class_="tiles")

    @staticmethod
    def _charts(title: str, ok: bool, value: Any, resolution: str) -> Tag:
        if not ok:
            return _card(title, _unavailable("Counters", value))
        return charts_section(title, value, resolution)

    async def _domain_states(self, storage: Any) -> list[dict[str, Any]]:
        return await domain_states(self.config, storage)

    @staticmethod
    def _domains(ok: bool, value: Any) -> Tag:
        """Each sender domain: selectors, algorithms, and the last DNS check."""
        if not ok:
            return _unavailable("Sender domains", value)
        if not value:
            return tags.p("No sender domains: mail is sent without a DKIM signature (",
                          tags.code("mailrelay domains add DOMAIN"), ").", class_="muted")
        rows = []
        for domain in value:
            keys = ", ".join(f"{key.get('selector')} ({key.get('algorithm')}"
                             f"{', ' + str(key.get('state')) if key.get('state') not in (None, 'active') else ''})"
                             for key in domain.get("keys", []))
            check = domain.get("dns_check")
            if not check:
                dns_state = "never checked (mailrelay domains verify)"
            else:
                # what makes ok false: required records missing, wrong or not looked up
                bad = [r for r in check.get("records", [])
                       if r.get("required") and r.get("status") in ("missing", "wrong", "error")]
                dns_state = ("ok" if check.get("ok") else
                             "; ".join(f"{r.get('name')} {r.get('type')}: {r.get('status')}" for r in bad) or "problems")
                dns_state += f" (checked {check.get('at', '?')})"
            rows.append(tags.tr(tags.td(_text(domain.get("name"))), tags.td(_text(domain.get("source"))),
                                tags.td(keys), tags.td(dns_state)))
        return tags.table(_head_row("domain", "source", "keys (selector, algorithm)", "DNS"), tags.tbody(rows))

    @staticmethod
    def _queue(ok: bool, value: Any) -> Flattenable:
        if not ok:
            return _unavailable("Queue", value)
        now_ms = int(value.get("now_ms") or 0)
        domains = value.get("domains", {})
        if not domains:
            return tags.p("The queue is empty.", class_="muted")

        def size(row: dict[str, Any]) -> int:
            return int(row.get("queued", 0)) + int(row.get("deferred", 0)) + int(row.get("delivering", 0))
        ordered = sorted(domains.items(), key=lambda item: (-size(item[1]), item[0]))
        rows = []
        totals = {"queued": 0, "deferred": 0, "delivering": 0}
        oldest_all = None
        for domain, row in ordered:
            for name in totals:
                totals[name] += int(row.get(name, 0))
            oldest = row.get("oldest_ms")
            if oldest is not None and (oldest_all is None or oldest < oldest_all):
                oldest_all = oldest
        for domain, row in ordered[:MAX_QUEUE_ROWS]:
            oldest = row.get("oldest_ms")
            age = format_age((now_ms - oldest) / 1000, spaced=True) if oldest is not None else "-"
            rows.append(tags.tr(tags.td(_text(domain)),
                                *[tags.td(f"{int(row.get(name, 0)):,}", class_="num") for name in totals],
                                tags.td(age, class_="num")))
        more: Flattenable = ""
        if len(ordered) > MAX_QUEUE_ROWS:
            more = tags.p(f"and {len(ordered) - MAX_QUEUE_ROWS:,} more domains", class_="muted")
        age_all = format_age((now_ms - oldest_all) / 1000, spaced=True) if oldest_all is not None else "-"
        rows.append(tags.tr(tags.td(f"all {len(ordered):,} domains"),
                            *[tags.td(f"{totals[name]:,}", class_="num") for name in totals],
                            tags.td(age_all, class_="num"), class_="total"))
        numeric = ("Queued", "Deferred", "Delivering", "Oldest")
        return [tags.table(_head_row("Domain", *numeric, numeric=numeric), tags.tbody(rows)), more]

    @staticmethod
    async def _latest_messages(storage: Any) -> list[MessageSummary]:
        return await readmodel.latest_messages(storage, LATEST)

    @staticmethod
    def _message_link(message_id: str, content: Flattenable) -> Flattenable:
        if MESSAGE_ID_RE.match(message_id or ""):
            return tags.a(content, href=f"/messages/{message_id}")
        return content

    def _messages_table(self, ok: bool, value: Any) -> Tag:
        """The latest messages: summaries (or ``search_messages`` rows, decoded here)."""
        if not ok:
            return _unavailable("Messages", value)
        if not value:
            return tags.p("No messages yet.", class_="muted")
        rows = []
        for row in value:
            summary = row if isinstance(row, MessageSummary) else MessageSummary.decode(row)
            recipient: list[Flattenable] = [summary.first_recipient]
            if summary.recipient_count > 1:
                recipient += [" ", _muted(f"+{summary.recipient_count - 1}")]
            rows.append(tags.tr(
                tags.td(self._message_link(summary.id, display_time_ms(summary.received_ms)), class_="time"),
                tags.td(summary.header_from or summary.sender, class_="wrap"),
                tags.td(recipient, class_="wrap"),
                tags.td(self._message_link(summary.id, summary.subject or _muted("(no subject)")), class_="wrap"),
                tags.td(_badge(summary.status))))
        return tags.table(_head_row("Received (UTC)", "From", "Recipient", "Subject", "Status"), tags.tbody(rows))

    def _bounces_table(self, ok: bool, value: Any) -> Tag:
        """The latest bounces: (records or ``search_bounces`` rows, cursor)."""
        if not ok:
            return _unavailable("Bounces", value)
        rows_data, _ = value
        if not rows_data:
            return tags.p("No bounces.", class_="muted")
        rows = []
        for row in rows_data:
            bounce = row if isinstance(row, BounceRecord) else BounceRecord.decode(row)
            when = display_time_ms(bounce.score) or display_rfc3339(bounce.at)
            message_id = bounce.message_id
            rows.append(tags.tr(
                tags.td(self._message_link(message_id, when) if message_id else when, class_="time"),
                tags.td(bounce.recipient or _muted("?"), class_="wrap"),
                tags.td(bounce.type, " ", _muted(bounce.status)),
                tags.td(bounce.description,
                        [tags.br(), tags.span(bounce.details, class_="muted mono")] if bounce.details else "",
                        class_="wrap"),
                tags.td(self._message_link(message_id, "message") if message_id else _muted("unmatched"))))
        return tags.table(_head_row("Time (UTC)", "Recipient", "Type", "Description", ""), tags.tbody(rows))

    # -- one message --------------------------------------------------------------------

    async def _message_page(self, request: server.Request, message_id: str) -> tuple[int, bytes]:
        storage = self.storage
        message_r, timeline_r = await defer.gatherResults([
            self._read(lambda: readmodel.message(storage, message_id, timeline=False)),
            self._read(lambda: readmodel.message_timeline(storage, message_id)),
        ])
        title = f"Message {message_id}"
        if not message_r[0]:
            return 503, self._page(request, title, _card(title, _unavailable("Message", message_r[1])))
        record = message_r[1]
        if record is None:
            return 404, self._page(request, title, _card(
                title, tags.p("No such message (unknown, or past retention)."),
                tags.p(tags.a("Back to the overview", href="/"))))
        events = timeline_r[1] if timeline_r[0] else None
        return 200, self._page(request, title, self._message_html(message_id, record, events,
                                                                  None if timeline_r[0] else timeline_r[1]))

    def _message_html(self, message_id: str, message: MessageRecord | Mapping[str, str],
                      events: Iterable[Any] | None, timeline_error: BaseException | None) -> list[Flattenable]:
        """
        One message's page: ``message`` a record (or ``get_message``'s hash, decoded here),
        ``events`` its timeline (records or ``get_timeline``'s entries); a field that did not
        decode shows its stored text.
        """
        record = message if isinstance(message, MessageRecord) else MessageRecord.decode(message_id, message)
        record = record.with_timeline(decode_timeline(events))
        stored = record.undecoded

        def item(label: str, value: Flattenable) -> list[Tag]:
            return [tags.dt(label), tags.dd(value)]

        def text(value: str, empty: str = "-") -> Flattenable:
            return value or _muted(empty)

        def addresses(name: str, values: tuple[str, ...]) -> Flattenable:
            return ", ".join(values) if values else stored.get(name) or _muted("-")

        size: Flattenable = f"{record.size:,} bytes" if "size" not in stored else stored["size"]
        overview = [
            item("Subject", text(record.subject, "(no subject)")),
            item("Status", _badge(record.status)),
            item("Received", display_time_ms(record.received_ms) + " UTC"),
            item("Envelope sender", text(record.sender, "<>")),
            item("Envelope recipients", ", ".join(r.address for r in record.recipients)),
            item("From", text(record.header_from)),
            item("To", addresses("to", record.to)),
            item("Cc", addresses("cc", record.cc)),
            item("Message-ID", tags.span(record.message_id_header, class_="mono")),
            item("Tag", text(record.tag)),
            item("Size", size),
            item("Submitted by", text(record.user)),
            item("Client", text(record.client)),
        ]
        metadata_html: Flattenable = tags.p("No metadata.", class_="muted")
        if record.metadata:
            metadata_html = tags.table(_head_row("Key", "Value"), tags.tbody([
                tags.tr(tags.td(key, class_="wrap"),
                        tags.td(value if isinstance(value, str) else json.dumps(value), class_="wrap"))
                for key, value in record.metadata.items()]))
        elif stored.get("metadata"):
            metadata_html = tags.p(stored["metadata"], class_="mono")
        parts: list[Flattenable] = [
            tags.p(tags.a("Overview", href="/"), " \u203a message", class_="crumbs"),
            tags.section(tags.h2("Message ", tags.span(message_id, class_="mono")),
                         tags.dl(overview, class_="kv"), class_="card"),
            _card("Metadata", metadata_html)]
        for recipient in record.recipients:
            attempts = recipient.undecoded.get("attempts", str(recipient.attempts))
            heading = tags.h2(recipient.address, " ", _badge(recipient.state), " ",
                              _muted(f"{attempts} attempt{'' if attempts == '1' else 's'}"))
            if timeline_error is not None:
                table = _unavailable("Timeline", timeline_error)
            else:
                table = self._events_table(recipient.events)
            parts.append(tags.section(heading, table, class_="card"))
        if record.unattributed:
            parts.append(_card("Other events", self._events_table(record.unattributed)))
        return [[part, "\n"] for part in parts]

    @staticmethod
    def _events_table(events: Sequence[TimelineEvent]) -> Tag:
        if not events:
            return tags.p("No events.", class_="muted")
        rows = []
        for event in events:
            ip = event.remote_ip or ""
            remote = [event.remote_host or "", [" ", _muted(f"[{ip}]")] if ip else ""]
            code = " ".join(str(c) for c in (event.smtp_code, event.enhanced_code) if c)
            detail: list[Flattenable] = [event.detail]
            if event.remote_queue_id:
                detail += [" ", _muted(f"(remote id {event.remote_queue_id})")]
            rows.append(tags.tr(tags.td(_badge(event.type or "")),
                                tags.td(display_rfc3339(event.at), class_="time"),
                                tags.td(remote, class_="wrap"), tags.td(code, class_="mono"),
                                tags.td(event.response or "", class_="wrap mono"),
                                tags.td(detail, class_="wrap")))
        return tags.table(_head_row("Event", "Time (UTC)", "Remote host", "Code", "Response", "Detail"),
                          tags.tbody(rows), class_="events")
