"""
pagehtml: the status page's HTML frame and small pieces: document, cards, badges, CSS, escaping.

JOB
    Builds the pieces every page of :mod:`mailrelay.web.statuspage` is made of,
    as ``twisted.web.template`` tags: the document (head, CSS, header with the
    host, the time and the logout button), cards, table heads, status badges,
    "unavailable" notes; :func:`render_html` serializes a tree with Twisted's
    flattener.

SECURITY
    No HTML is assembled from strings: every value is a text child or an
    attribute value of a tag, which the flattener escapes (``&``, ``<``, ``>``;
    and ``"`` in attribute values); the CSS too, so it contains none of those
    characters. Status names select CSS classes only from KNOWN_STATES.
    SECURITY_HEADERS (a Content-Security-Policy with no script, nosniff, DENY
    framing, no referrer, no-store) go on every response of the status page.

STANDARDS
    HTML (WHATWG), CSP Level 3.

DIAGNOSTICS
    :func:`render_html` raises RuntimeError for a tree that does not flatten
    synchronously (a Deferred in it: a bug).

CONFIGURATION
    None.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.template import Flattenable, Tag, flattenString, tags

SECURITY_HEADERS = {
    b"Content-Security-Policy": (b"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                 b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}

#: Status and event names that have a colour; anything else is shown plain.
KNOWN_STATES = frozenset({
    "queued", "delivering", "delivered", "deferred", "bounced", "expired", "suppressed",
    "partial", "deleted", "complained", "webhook_failed",
})


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
