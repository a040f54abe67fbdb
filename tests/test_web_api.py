"""
The web service (mailrelay.web.api) over the real daemon: the JSON API after real SMTP submissions
and deliveries (smtp-sink, the local DNS server), bounces received by the bounce listener, the
suppression list as submission sees it, health checks and metrics.

Every response is checked against docs/openapi.json: its status code must be documented for
the operation (or be the documented 404/405 of an unknown path/method), its content type must
be one the document lists, and a JSON body must validate against the schema (jsonschema).
"""

from __future__ import annotations

import base64
import calendar
import http.client
import json
import os
import re
import signal
import smtplib
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from conftest import start_redis
from mailrelay.store import Storage
from mailrelay.web.api import ADMIN_API_MAX_BODY
from peers import BOUNCE_DOMAIN, QUEUED, Sink, arf, deliver_to_bounce_listener, dsn, received_headers

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = json.loads((ROOT / "docs" / "openapi.json").read_text())
REGISTRY = Registry().with_resource("urn:openapi", Resource.from_contents(OPENAPI, default_specification=DRAFT202012))
TOKEN = "t" * 24
HOSTILE = "<script>alert(1)</script>"
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


# -- the OpenAPI check ----------------------------------------------------------------------


def _pointer_escape(text: str) -> str:
    return text.replace("~", "~0").replace("/", "~1")


def _template_for(path: str) -> str | None:
    for template in OPENAPI["paths"]:
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "/?$"
        if re.match(pattern, path):
            return template
    return None


#: Answers given from a request's head, before routing: documented once, for every /api path.
REFUSED_FROM_THE_HEAD = {401: "/components/responses/Unauthorized", 413: "/components/responses/TooLarge",
                         429: "/components/responses/TooManyRequests"}


def _response_spec(method: str, path: str, status: int) -> tuple[dict[str, Any], str]:
    """The documented response (and its JSON pointer) for this method, path and status."""
    template = _template_for(path)
    operation = OPENAPI["paths"][template].get(method.lower()) if template is not None else None
    if operation is None and path.startswith("/api") and status in REFUSED_FROM_THE_HEAD:
        # refused before routing (mailrelay.web.limits), whatever the path and method
        pointer = REFUSED_FROM_THE_HEAD[status]
    elif template is None:
        assert status in (401, 404), f"{method} {path}: undocumented path answered {status}"
        pointer = "/components/responses/NotFound" if status == 404 else "/components/responses/Unauthorized"
    else:
        if operation is None:
            assert status in (401, 405), f"{method} {template}: undocumented method answered {status}"
            pointer = ("/components/responses/MethodNotAllowed" if status == 405
                       else "/components/responses/Unauthorized")
        else:
            assert str(status) in operation["responses"], f"{method} {template}: {status} is not documented"
            pointer = f"/paths/{_pointer_escape(template)}/{method.lower()}/responses/{status}"
    spec = OPENAPI
    for part in pointer.strip("/").split("/"):
        spec = spec[part.replace("~1", "/").replace("~0", "~")]
    if "$ref" in spec:
        pointer = spec["$ref"][1:]
        spec = OPENAPI
        for part in pointer.strip("/").split("/"):
            spec = spec[part]
    return spec, pointer


def check_against_openapi(method: str, path: str, response: "Response") -> None:
    spec, pointer = _response_spec(method, path, response.status)
    for name in spec.get("headers", {}):
        assert response.header(name) is not None, f"{method} {path}: header {name} missing"
    content = spec.get("content")
    if not content:
        assert response.body == b"", f"{method} {path}: {response.status} must have no body"
        return
    content_type = (response.header("content-type") or "").split(";")[0].strip()
    assert content_type in content, f"{method} {path}: content type {content_type!r} not in {list(content)}"
    if content_type == "application/json":
        schema = {"$ref": f"urn:openapi#{pointer}/content/{_pointer_escape(content_type)}/schema"}
        errors = sorted(Draft202012Validator(schema, registry=REGISTRY).iter_errors(response.json),
                        key=lambda e: list(e.path))
        assert not errors, f"{method} {path}: the body does not match {pointer}: " + "; ".join(
            f"{list(e.path)}: {e.message}" for e in errors[:5])


# -- HTTP -----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    json: Any = field(default=None)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


class Api:
    """Plain http.client calls to the daemon's web listener, each checked against the OpenAPI document."""

    def __init__(self, port: int, token: str | None = TOKEN) -> None:
        self.port = port
        self.token = token

    def call(self, method: str, path: str, body: Any = None, *, token: Any = "default",
             headers: dict[str, str] | None = None, check: bool = True) -> Response:
        token = self.token if token == "default" else token
        all_headers = dict(headers or {})
        if token is not None:
            all_headers.setdefault("Authorization", f"Bearer {token}")
        if body is not None and not isinstance(body, bytes):
            body = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=all_headers)
            raw = connection.getresponse()
            response = Response(raw.status, raw.getheaders(), raw.read())
        finally:
            connection.close()
        if (response.header("content-type") or "").startswith("application/json") and response.body:
            response.json = json.loads(response.body)
        if check:
            check_against_openapi(method, path.split("?")[0], response)
        return response

    def get(self, path: str, **params: Any) -> Response:
        return self.call("GET", path + ("?" + urlencode(params) if params else ""))

    def ok(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        assert response.status == 200, (path, params, response.status, response.body)
        return response.json

    def ids(self, **params: Any) -> list[str]:
        return [m["id"] for m in self.ok("/api/v1/messages", **params)["messages"]]

    def bad_request(self, path: str, parameter: str, **params: Any) -> None:
        response = self.get(path, **params)
        assert response.status == 400, (params, response.status, response.body)
        assert response.json["code"] == 400 and response.json["parameter"] == parameter
        assert parameter in response.json["error"], response.json


# -- mail --------------------------------------------------------------------------------------


def submit(port: int, recipients: list[str], *, subject: str = "test", tag: str | None = None,
           metadata: dict[str, str] | None = None) -> str:
    lines = ["From: App <app@example.com>", f"To: {', '.join(recipients)}", f"Subject: {subject}"]
    if tag:
        lines.append(f"X-Mailrelay-Tag: {tag}")
    lines += [f"X-Mailrelay-Metadata-{k}: {v}" for k, v in (metadata or {}).items()]
    content = ("\r\n".join(lines) + "\r\n\r\nHello\r\n").encode()
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        s.mail("app@example.com")
        for r in recipients:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(content)
    assert code == 250, text
    return QUEUED.search(text.decode()).group(1)


def rcpt_reply(port: int, recipient: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        s.mail("app@example.com")
        return s.rcpt(recipient)


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def web_config(daemon_config, redis_server, prefix, *, dns=None, port=None, **sections) -> str:
    sections.setdefault("submission", {"trusted_networks": ["127.0.0.0/8"]})
    sections.setdefault("web", {"listen": ["tcp:0:interface=127.0.0.1"], "api_tokens": [TOKEN]})
    if dns is not None:
        sections.setdefault("delivery", {"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": port,
                                         "retry_schedule": ["1h"], "lease_timeout": "5s"})
    else:
        sections.setdefault("delivery", {"enabled": False})
    return daemon_config(redis_server, prefix, **sections)


def wait_logged(daemon, regex: str, count: int = 1, timeout: float = 20) -> None:
    """Until ``count`` log lines match (in any order: deliveries finish in any order)."""
    daemon.wait_for_matches(regex, count, timeout)


def metric_value(text: str, sample: str) -> float | None:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


# -- tests --------------------------------------------------------------------------------------


def test_auth_errors_health_and_headers(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix))
    assert d.find_lines(r"web listening on 127\.0\.0\.1:\d+ \(plain\)")
    api = Api(d.ports["web"])
    # 401: no header, a wrong token, another scheme; also for paths that do not exist
    for token, headers in ((None, {}), ("w" * 24, {}), (None, {"Authorization": f"Basic {TOKEN}"}),
                           (TOKEN + "x", {}), ("", {})):
        r = api.call("GET", "/api/v1/messages", token=token, headers=headers)
        assert r.status == 401 and r.json["code"] == 401
        assert r.header("www-authenticate").startswith("Bearer")
    assert api.call("GET", "/api/v1/nothing", token=None).status == 401
    r = api.call("GET", "/api/v1/messages", token="w" * 24)
    assert 'error="invalid_token"' in r.header("www-authenticate")
    # the right token, and the headers every API response carries (no CORS, even when asked)
    r = api.call("GET", "/api/v1/messages", headers={"Origin": "https://evil.example"})
    assert r.status == 200 and r.json == {"messages": [], "next_cursor": None}
    assert r.header("content-type") == "application/json; charset=utf-8"
    assert r.header("x-content-type-options") == "nosniff"
    assert not any(k.lower().startswith("access-control-") for k, _ in r.headers)
    # unknown paths and methods
    for path in ("/api/v1/nothing", "/api/v2/messages", "/api", "/api/v1", "/api/v1/messages/x/y/z",
                 "/api/v1/messages/00000000000000000000", "/api/v1/messages/not-an-id",
                 "/api/v1/messages/00000000000000000000/raw", "/api/v1/bounces/0123456789abcdef",
                 "/api/v1/bounces/..", "/healthz/more"):
        r = api.call("GET", path)
        assert r.status == 404 and r.json["code"] == 404, path
    for method, path, allow in (("DELETE", "/api/v1/messages", "GET, HEAD"), ("POST", "/api/v1/stats", "GET, HEAD"),
                                ("PUT", "/api/v1/suppressions", "GET, POST, HEAD"),
                                ("GET", "/api/v1/suppressions/a@example.org", "DELETE"),
                                ("POST", "/healthz", "GET, HEAD"), ("DELETE", "/metrics", "GET, HEAD")):
        r = api.call(method, path)
        assert r.status == 405 and r.json["code"] == 405, (method, path)
        assert r.header("allow") == allow
    # 400 for parameters on endpoints that take none
    assert api.get("/api/v1/suppressions", limit=5).json["parameter"] == "limit"
    # health checks need no token
    r = api.call("GET", "/healthz", token=None)
    assert (r.status, r.body) == (200, b"ok\n")
    r = api.call("GET", "/readyz", token=None)
    assert r.status == 200 and r.json["ready"] is True and r.json["reason"] is None
    assert set(r.json["listeners"]) == {"submission", "submission-tls"}
    assert all(state["listening"] for state in r.json["listeners"].values())
    assert r.json["listeners"]["submission"]["addresses"] == [f"127.0.0.1:{d.ports['submission']}"]
    r = api.call("GET", "/metrics", token=None)
    assert r.status == 200 and r.header("content-type").startswith("text/plain; version=0.0.4")
    # a HEAD is a GET without the body
    r = api.call("HEAD", "/api/v1/messages", check=False)
    assert r.status == 200 and r.body == b""


def test_search_detail_raw_stats_and_metrics(start_daemon, daemon_config, redis_server, unique_prefix,
                                             dns, sink):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix, dns=dns, port=sink.port))
    api = Api(d.ports["web"])
    smtp = d.ports["submission"]
    # before the boundary: delivered, deferred (SERVFAIL), bounced (NXDOMAIN)
    m1 = submit(smtp, ["a@example.test"], tag="welcome", subject="one")
    m2 = submit(smtp, ["b@example.test"], tag="receipt", subject="two")
    m3 = submit(smtp, ["x@broken.test"], tag="welcome", subject="three")
    m4 = submit(smtp, ["x@nxdomain.test"], subject="four")
    for message_id, outcome in ((m1, "sent"), (m2, "sent"), (m3, "deferred"), (m4, "bounced")):
        wait_logged(d, rf"{message_id}: to=<[^>]+>.*status={outcome}")
    # The boundary comes from the stored data: the second after the last "before" message was
    # received (the API shows and filters whole seconds).
    last_before = max(m["received_at"] for m in api.ok("/api/v1/messages")["messages"])
    boundary = calendar.timegm(time.strptime(last_before, "%Y-%m-%dT%H:%M:%SZ")) + 1
    # Not synchronisation: the later messages must be received in a later second than the
    # earlier ones, and the daemon's clock (another process) cannot be controlled, so wall-clock
    # time has to pass the boundary (at most one second; usually already past).
    if time.time() < boundary:
        time.sleep(boundary - time.time() + 0.05)
    # after it: two recipients and a hostile subject; then two more
    m5 = submit(smtp, ["a@example.test", "c@example.test"], tag="welcome", subject=HOSTILE,
                metadata={"order": "A&B <1>", "user": "42"})
    m6 = submit(smtp, ["d@example.test"], tag="bulk", subject="six")
    m7 = submit(smtp, ["d@example.test"], tag="bulk", subject="seven")
    for message_id, count in ((m5, 2), (m6, 1), (m7, 1)):
        wait_logged(d, rf"{message_id}: to=<[^>]+>.*status=sent", count)
    newest_first = [m7, m6, m5, m4, m3, m2, m1]

    # everything, newest first; pages of 3 with the cursor: no duplicates, no gaps
    assert api.ids() == newest_first
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.ok("/api/v1/messages", **params)
        seen += [m["id"] for m in page["messages"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and len(page["messages"]) == 3
    assert pages == 3 and seen == newest_first

    # each index, and combinations
    assert api.ids(recipient="a@example.test") == [m5, m1]
    assert api.ids(recipient="A@Example.TEST") == [m5, m1]
    assert api.ids(recipient="c@example.test") == [m5]
    assert api.ids(recipient="nobody@example.test") == []
    assert api.ids(tag="welcome") == [m5, m3, m1]
    assert api.ids(tag="bulk") == [m7, m6]
    assert api.ids(status="delivered") == [m7, m6, m5, m2, m1]
    assert api.ids(status="queued") == [m3]
    assert api.ids(status="bounced") == [m4]
    assert api.ids(status="partial") == []
    assert api.ids(since=rfc3339(boundary)) == [m7, m6, m5]
    assert api.ids(until=rfc3339(boundary)) == [m4, m3, m2, m1]
    assert api.ids(since=rfc3339(boundary - 3600), until=rfc3339(boundary + 3600)) == newest_first
    assert api.ids(since=rfc3339(boundary + 3600)) == []
    assert api.ids(tag="welcome", status="delivered") == [m5, m1]
    assert api.ids(tag="welcome", until=rfc3339(boundary)) == [m3, m1]
    assert api.ids(recipient="a@example.test", since=rfc3339(boundary)) == [m5]
    assert api.ids(recipient="d@example.test", tag="bulk", status="delivered", since=rfc3339(boundary)) == [m7, m6]
    assert api.ids(recipient="a@example.test", tag="bulk") == []
    # a filtered search pages too
    page = api.ok("/api/v1/messages", tag="welcome", status="delivered", limit=1)
    assert [m["id"] for m in page["messages"]] == [m5] and page["next_cursor"]
    page = api.ok("/api/v1/messages", tag="welcome", status="delivered", limit=1, cursor=page["next_cursor"])
    assert [m["id"] for m in page["messages"]] == [m1] and page["next_cursor"] is None

    # the list row, with the hostile subject JSON-escaped (not HTML-mangled)
    response = api.get("/api/v1/messages", recipient="c@example.test")
    assert b"<script>" not in response.body
    [row] = response.json["messages"]
    assert row == {"id": m5, "received_at": row["received_at"], "from": "app@example.com",
                   "to": ["a@example.test", "c@example.test"], "subject": HOSTILE, "tag": "welcome",
                   "status": "delivered"}
    assert TIME_RE.match(row["received_at"]) and row["received_at"] >= rfc3339(boundary)

    # the detail: per-recipient status and events after delivery
    detail = api.ok(f"/api/v1/messages/{m5}")
    assert detail["subject"] == HOSTILE and detail["metadata"] == {"order": "A&B <1>", "user": "42"}
    assert (detail["id"], detail["status"], detail["tag"], detail["sender"]) == (m5, "delivered", "welcome", "app@example.com")
    assert detail["to"] == ["a@example.test", "c@example.test"] and detail["cc"] == [] and detail["user"] is None
    assert detail["size"] > 0 and detail["message_id_header"].endswith(">")
    assert [r["address"] for r in detail["recipients"]] == ["a@example.test", "c@example.test"]
    for index, recipient in enumerate(detail["recipients"]):
        assert recipient["status"] == "delivered" and recipient["attempts"] == 1
        assert [e["type"] for e in recipient["events"]] == ["queued", "delivered"]
        delivered = recipient["events"][-1]
        assert delivered["rcpt"] == index and delivered["recipient"] == recipient["address"]
        assert delivered["remote_host"] == "mx1.example.test" and delivered["smtp_code"] == 250
        assert TIME_RE.match(delivered["at"])
    deferred = api.ok(f"/api/v1/messages/{m3}")
    assert deferred["status"] == "queued" and deferred["recipients"][0]["status"] == "deferred"
    assert [e["type"] for e in deferred["recipients"][0]["events"]] == ["queued", "deferred"]
    bounced = api.ok(f"/api/v1/messages/{m4}")
    assert bounced["status"] == "bounced" and bounced["recipients"][0]["status"] == "bounced"

    # the raw message
    raw = api.get(f"/api/v1/messages/{m1}/raw")
    assert raw.status == 200 and raw.header("content-type") == "message/rfc822"
    assert raw.header("x-content-type-options") == "nosniff"
    assert b"Subject: one\r\n" in raw.body and f"X-Mailrelay-ID: {m1}".encode() in raw.body
    assert b"X-Mailrelay-Tag" not in raw.body

    # 400s name the parameter
    api.bad_request("/api/v1/messages", "since", since="yesterday")
    api.bad_request("/api/v1/messages", "since", since="2026-11-28 09:15:00")
    api.bad_request("/api/v1/messages", "until", until="2026-13-01T00:00:00Z")
    api.bad_request("/api/v1/messages", "limit", limit=1000)
    api.bad_request("/api/v1/messages", "limit", limit=0)
    api.bad_request("/api/v1/messages", "limit", limit="ten")
    api.bad_request("/api/v1/messages", "status", status="sent")
    api.bad_request("/api/v1/messages", "cursor", cursor="not a cursor!")
    api.bad_request("/api/v1/messages", "cursor", cursor=base64.urlsafe_b64encode(b"garbage").decode())
    api.bad_request("/api/v1/messages", "colour", colour="blue")
    api.bad_request("/api/v1/stats", "since", since="2026-11-28")
    assert api.ok("/api/v1/messages", limit=500)["messages"][0]["id"] == m7
    assert api.ids(since="2026-01-01T00:00:00+01:00") == newest_first

    # stats
    stats = api.ok("/api/v1/stats")
    assert stats["since"] is None
    assert stats["messages"] == {"queued": 1, "delivered": 5, "bounced": 1, "expired": 0, "suppressed": 0,
                                 "partial": 0, "total": 7}
    hour = stats["last_hour"]
    assert (hour["accepted"], hour["recipients"], hour["delivered"], hour["deferred"], hour["bounced"]) == (7, 8, 6, 1, 1)
    assert hour["delivery_rate"] == round(6 / 7, 4)
    assert stats["last_day"]["accepted"] == 7
    assert stats["queue"]["deferred"] == 1 and stats["queue"]["domains"] == 1
    assert stats["queue"]["oldest_age_seconds"] > 0
    since = api.ok("/api/v1/stats", since=rfc3339(boundary))
    assert since["since"] == rfc3339(boundary) and since["messages"]["total"] == 3

    # a message refused at the end of DATA (a line over 1,000 octets) counts as rejected
    with smtplib.SMTP("127.0.0.1", d.ports["submission"], timeout=20) as s:
        s.ehlo()
        s.mail("app@example.com")
        s.rcpt("someone@example.test")
        assert s.data(b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n")[0] == 554

    # metrics (refreshed from Redis every few seconds; counted from the daemon's start)
    deadline = time.monotonic() + 20
    while True:
        text = api.call("GET", "/metrics", token=None).body.decode()
        if (metric_value(text, "mailrelay_messages_accepted_total") == 7
                and metric_value(text, 'mailrelay_deliveries_total{status="delivered"}') == 6):
            break
        assert time.monotonic() < deadline, text
        # Bounded poll: the metrics are refreshed from Redis by a timer in the daemon that logs
        # nothing per refresh, so the condition is re-checked over HTTP twice a second.
        time.sleep(0.5)
    assert metric_value(text, "mailrelay_recipients_accepted_total") == 8
    assert metric_value(text, 'mailrelay_deliveries_total{status="deferred"}') == 1
    assert metric_value(text, 'mailrelay_deliveries_total{status="bounced"}') == 1
    assert metric_value(text, 'mailrelay_smtp_sessions{service="submission"}') == 0
    assert metric_value(text, "mailrelay_redis_up") == 1
    # measured by this process: acceptance-to-delivery latency, refusals at the end of DATA
    assert metric_value(text, "mailrelay_delivery_latency_seconds_count") == 6
    assert metric_value(text, 'mailrelay_messages_rejected_total{code="554",service="submission"}') == 1
    for name in ("mailrelay_bounces_total", 'mailrelay_cluster_queue_jobs{state="queued"}',
                 'mailrelay_cluster_queue_jobs{state="deferred"}', 'mailrelay_cluster_queue_jobs{state="delivering"}',
                 "mailrelay_cluster_queue_oldest_seconds", 'mailrelay_deliveries_total{status="expired"}',
                 'mailrelay_deliveries_total{status="suppressed"}'):
        assert name in text, name


def test_bounces(start_daemon, daemon_config, redis_server, unique_prefix, dns, sink):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix, dns=dns, port=sink.port,
                                bounces={"domain": BOUNCE_DOMAIN, "listen": ["tcp:0:interface=127.0.0.1"]}))
    api = Api(d.ports["web"])
    assert set(api.ok("/readyz")["listeners"]) == {"submission", "submission-tls", "bounces"}
    first = submit(d.ports["submission"], ["gone@example.test"])
    second = submit(d.ports["submission"], ["reader@example.test"])
    for message_id in (first, second):
        wait_logged(d, rf"{message_id}: to=<[^>]+>.*status=sent")
    before = rfc3339(time.time() - 1)
    # the destination bounces the first later (a DSN returning the recipient's copy's headers) ...
    code, text = deliver_to_bounce_listener(d.ports["bounces"], f"postmaster@{BOUNCE_DOMAIN}",
                                            dsn(f"postmaster@{BOUNCE_DOMAIN}", "gone@example.test", first,
                                                original=received_headers(sink, "gone@example.test")))
    assert code == 250, text
    wait_logged(d, rf"bounce \w+: message {first} to <gone@example\.test>: HardBounce")
    # Not synchronisation: bounces are listed by their time in ms, so the second must be
    # recorded at a later millisecond than the first for the newest-first order to be defined.
    # The first was recorded before the line waited for above: once 10 ms of wall-clock time
    # have passed, the second cannot share its millisecond.
    time.sleep(0.01)
    # ... and the reader of the second complains
    code, text = deliver_to_bounce_listener(d.ports["bounces"], f"fbl@{BOUNCE_DOMAIN}",
                                            arf("reader@example.test", second,
                                                original=received_headers(sink, "reader@example.test")))
    assert code == 250, text
    wait_logged(d, rf"bounce \w+: message {second} to <reader@example\.test>: SpamComplaint")

    listing = api.ok("/api/v1/bounces")
    assert [b["message_id"] for b in listing["bounces"]] == [second, first] and listing["next_cursor"] is None
    complaint, hard = listing["bounces"]
    assert hard["type"] == "HardBounce" and hard["type_code"] == 1 and hard["recipient"] == "gone@example.test"
    assert hard["inactive"] is True and "User unknown" in hard["details"] and TIME_RE.match(hard["at"])
    assert complaint["type"] == "SpamComplaint" and complaint["type_code"] == 100001
    # both proved their recipient with the token of the copy they returned
    assert hard["proof"] == "token" and complaint["proof"] == "token"
    # filters and pages
    assert [b["id"] for b in api.ok("/api/v1/bounces", type="HardBounce")["bounces"]] == [hard["id"]]
    assert api.ok("/api/v1/bounces", type="SoftBounce")["bounces"] == []
    assert [b["id"] for b in api.ok("/api/v1/bounces", recipient="Reader@Example.test")["bounces"]] == [complaint["id"]]
    assert api.ok("/api/v1/bounces", recipient="nobody@example.test")["bounces"] == []
    assert len(api.ok("/api/v1/bounces", since=before)["bounces"]) == 2
    assert api.ok("/api/v1/bounces", since=rfc3339(time.time() + 3600))["bounces"] == []
    page = api.ok("/api/v1/bounces", limit=1)
    assert [b["id"] for b in page["bounces"]] == [complaint["id"]]
    page = api.ok("/api/v1/bounces", limit=1, cursor=page["next_cursor"])
    assert [b["id"] for b in page["bounces"]] == [hard["id"]] and page["next_cursor"] is None
    api.bad_request("/api/v1/bounces", "type", type="Bogus")
    api.bad_request("/api/v1/bounces", "since", since="now")
    api.bad_request("/api/v1/bounces", "limit", limit=501)
    api.bad_request("/api/v1/bounces", "until", until=rfc3339(time.time()))
    # the detail, with the raw bounce
    detail = api.ok(f"/api/v1/bounces/{hard['id']}")
    assert {k: detail[k] for k in hard} == hard
    assert detail["status"] == "5.1.1" and "Undelivered Mail Returned to Sender" in detail["raw"]
    # ... and why the classifier decided HardBounce: the address status and the text that named it
    assert detail["rule"] == "address-status" and "5.1.1" in detail["reason"] and "User unknown" in detail["reason"]
    # the message shows the bounce, and the address is suppressed
    message = api.ok(f"/api/v1/messages/{first}")
    assert message["status"] == "bounced" and message["recipients"][0]["status"] == "bounced"
    assert [e["type"] for e in message["recipients"][0]["events"]] == ["queued", "delivered", "bounced"]
    suppressed = {s["address"]: s for s in api.ok("/api/v1/suppressions")["suppressions"]}
    assert suppressed["gone@example.test"]["type"] == "HardBounce"
    assert suppressed["reader@example.test"]["type"] == "SpamComplaint"
    stats = api.ok("/api/v1/stats")
    assert stats["last_hour"]["bounces"] == {"HardBounce": 1, "SpamComplaint": 1}
    assert stats["last_hour"]["bounce_rate"] == 0.5


def test_in_band_bounce(start_daemon, daemon_config, redis_server, unique_prefix, dns, tmp_path):
    hard = Sink(tmp_path / "hard", "-f", "RCPT", "-B", "550 5.1.1 User unknown")
    try:
        d = start_daemon(web_config(daemon_config, redis_server, unique_prefix, dns=dns, port=hard.port))
        api = Api(d.ports["web"])
        message_id = submit(d.ports["submission"], ["gone@example.test"], tag="welcome")
        wait_logged(d, rf"bounce \w+: message {message_id} to <gone@example\.test>: HardBounce")
        [bounce] = api.ok("/api/v1/bounces")["bounces"]
        assert (bounce["message_id"], bounce["recipient"], bounce["type"], bounce["type_code"], bounce["inactive"]) == \
            (message_id, "gone@example.test", "HardBounce", 1, True)
        assert "User unknown" in bounce["details"]
        assert api.ok(f"/api/v1/bounces/{bounce['id']}")["status"] == "5.1.1"
        message = api.ok(f"/api/v1/messages/{message_id}")
        [recipient] = message["recipients"]
        assert message["status"] == recipient["status"] == "bounced"
        refused = next(e for e in recipient["events"] if e["type"] == "bounced")
        assert refused["smtp_code"] == 550 and refused["enhanced_code"] == "5.1.1"
        assert api.ids(status="bounced", tag="welcome") == [message_id]
        [entry] = api.ok("/api/v1/suppressions")["suppressions"]
        assert (entry["address"], entry["type"]) == ("gone@example.test", "HardBounce")
        assert rcpt_reply(d.ports["submission"], "gone@example.test")[0] == 550
        assert api.call("DELETE", "/api/v1/suppressions/gone@example.test").status == 204
        assert rcpt_reply(d.ports["submission"], "gone@example.test")[0] == 250
        deadline = time.monotonic() + 20
        while metric_value(api.call("GET", "/metrics", token=None).body.decode(),
                           'mailrelay_bounces_total{type="HardBounce"}') != 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)  # bounded poll: the metrics refresh timer logs nothing (see above)
    finally:
        hard.stop()


def test_suppressions(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix))
    api = Api(d.ports["web"])
    smtp = d.ports["submission"]
    assert api.ok("/api/v1/suppressions") == {"suppressions": []}
    r = api.call("POST", "/api/v1/suppressions", {"address": "Someone@Example.org", "reason": "asked to stop <now>"})
    assert r.status == 201 and r.header("location") == "/api/v1/suppressions/someone@example.org"
    assert r.json["address"] == "someone@example.org" and r.json["type"] == "ManuallyDeactivated"
    assert r.json["reason"] == "asked to stop <now>" and TIME_RE.match(r.json["since"])
    assert api.call("POST", "/api/v1/suppressions", {"address": "other@example.org"}).status == 201
    assert {s["address"] for s in api.ok("/api/v1/suppressions")["suppressions"]} == {"someone@example.org", "other@example.org"}
    r = api.call("POST", "/api/v1/suppressions", {"address": "SOMEONE@example.org"})
    assert r.status == 409 and r.json["code"] == 409
    # submission refuses the address now ...
    code, text = rcpt_reply(smtp, "someone@example.org")
    assert code == 550 and b"suppressed since" in text and b"ManuallyDeactivated" in text
    # ... and accepts it again once reactivated
    assert api.call("DELETE", "/api/v1/suppressions/" + quote("Someone@Example.org")).status == 204
    assert rcpt_reply(smtp, "someone@example.org")[0] == 250
    r = api.call("DELETE", "/api/v1/suppressions/someone%40example.org")
    assert r.status == 404 and r.json["code"] == 404
    assert [s["address"] for s in api.ok("/api/v1/suppressions")["suppressions"]] == ["other@example.org"]
    # bad bodies
    for body, parameter in ((b"{not json", None), (b"[]", None), ({"address": "not an address"}, "address"),
                            ({"address": 5}, "address"), ({}, "address"), ({"address": "a b@example.org"}, "address"),
                            ({"address": "<x@example.org>"}, "address"),
                            ({"address": "x@example.org", "reason": 7}, "reason"),
                            ({"address": "x@example.org", "colour": "red"}, "colour")):
        r = api.call("POST", "/api/v1/suppressions", body)
        assert r.status == 400 and r.json.get("parameter") == parameter, (body, r.json)
    r = api.call("POST", "/api/v1/suppressions", b"{" + b" " * ADMIN_API_MAX_BODY + b"}")
    assert r.status == 413
    assert rcpt_reply(smtp, "x@example.org")[0] == 250


def test_readyz_503_when_redis_stops(start_daemon, daemon_config, tmp_path, unique_prefix):
    redis = start_redis(tmp_path / "redis-stopped")
    try:
        d = start_daemon(web_config(daemon_config, redis, unique_prefix, redis={"timeout": "1s"}))
        api = Api(d.ports["web"])
        assert api.call("GET", "/readyz", token=None).status == 200
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            r = api.call("GET", "/readyz", token=None)
            assert r.status == 503 and r.json["ready"] is False and r.json["redis"]["ok"] is False
            assert "Redis did not answer PING within 1s" in r.json["reason"]
            assert time.monotonic() - started < 4
            r = api.get("/api/v1/messages")
            assert r.status == 503 and r.json["code"] == 503
            assert api.get("/api/v1/domains").status == 503
            assert api.call("GET", "/healthz", token=None).status == 200
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while api.call("GET", "/readyz", token=None).status != 200:
            assert time.monotonic() < deadline
            # Bounded poll: /readyz PINGs Redis on each request, so each call re-checks; the
            # daemon logs nothing when Redis answers again after the SIGCONT.
            time.sleep(0.2)
        assert api.ok("/api/v1/messages")["messages"] == []
    finally:
        redis.stop()


def test_generated_token(start_daemon, daemon_config, redis_server, unique_prefix, tmp_path):
    config = web_config(daemon_config, redis_server, unique_prefix, web={"listen": ["tcp:0:interface=127.0.0.1"]})
    d = start_daemon(config)
    path = tmp_path / "state" / "api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"API token in {path}" in d.log_text()
    token = path.read_text().strip()
    assert len(token) >= 32 and token not in d.log_text()
    assert Api(d.ports["web"], token).get("/api/v1/messages").status == 200
    assert Api(d.ports["web"], TOKEN).get("/api/v1/messages").status == 401
    d.stop()
    d = start_daemon(config)  # written once: the same token after a restart
    assert path.read_text().strip() == token
    assert Api(d.ports["web"], token).get("/api/v1/messages").status == 200


def cluster_of(api: Api) -> dict[int, dict[str, Any]]:
    """The stats' cluster members by pid (one machine: pids are unique)."""
    members = api.ok("/api/v1/stats")["cluster"]["members"]
    by_pid = {m["pid"]: m for m in members}
    assert len(by_pid) == len(members), members
    return by_pid


def test_stats_list_the_cluster(start_daemon, daemon_config, redis_server, unique_prefix, tmp_path):
    """Three daemons on one Redis: each lists all three; one stopped cleanly leaves the list at
    once; one killed stays listed with a growing heartbeat age until its heartbeat expires."""
    from mailrelay import __version__
    from mailrelay.services.cluster import HEARTBEAT_INTERVAL, HEARTBEAT_MISSES

    daemons = {}
    for name in ("a", "b", "c"):
        config = web_config(daemon_config, redis_server, unique_prefix,
                            server={"state_dir": str(tmp_path / name / "state")})
        daemons[name] = start_daemon(config, tmp_path / name)
    a, b, c = daemons.values()
    apis = {name: Api(d.ports["web"]) for name, d in daemons.items()}

    # every daemon is listed by each of them (a daemon records its first heartbeat before it
    # says it is ready), with what `mailrelay cluster` shows
    for api in apis.values():
        members = cluster_of(api)
        assert set(members) == {a.pid, b.pid, c.pid}
        for d in daemons.values():
            m = members[d.pid]
            assert re.fullmatch(rf".+:{d.pid}:[0-9a-f]+", m["name"]), m
            assert m["hostname"] and m["name"].startswith(m["hostname"] + ":")
            assert (m["version"], m["data_version"]) == (__version__, Storage.DATA_VERSION)
            assert TIME_RE.match(m["started_at"]) and TIME_RE.match(m["last_heartbeat_at"])
            assert m["started_at"] <= m["last_heartbeat_at"]
            assert m["heartbeat_interval_seconds"] == HEARTBEAT_INTERVAL
            assert 0 <= m["heartbeat_age_seconds"] < HEARTBEAT_INTERVAL * HEARTBEAT_MISSES
            assert m["uptime_seconds"] >= 0
            assert m["delivering"] == {"jobs": 0, "domains": {}}
            assert f"submission 127.0.0.1:{d.ports['submission']}" in m["listeners"], m
            assert f"submission-tls 127.0.0.1:{d.ports['submission-tls']}" in m["listeners"], m
            assert f"web 127.0.0.1:{d.ports['web']}" in m["listeners"], m
    # in start order
    assert [m["pid"] for m in apis["a"].ok("/api/v1/stats")["cluster"]["members"]] == [a.pid, b.pid, c.pid]

    # a clean stop removes the heartbeat before the process exits
    assert c.stop() == -signal.SIGTERM and c.find_lines(r"mailrelay stopped$")  # twistd re-raises SIGTERM
    assert set(cluster_of(apis["a"])) == {a.pid, b.pid}

    # a killed daemon cannot: it stays listed, its heartbeat getting older, until the
    # heartbeat expires (HEARTBEAT_MISSES intervals after the last one)
    assert b.stop(signal.SIGKILL) == -signal.SIGKILL
    ttl = HEARTBEAT_INTERVAL * HEARTBEAT_MISSES
    deadline = time.monotonic() + ttl + 15
    seen: list[tuple[float, dict[str, Any]]] = []   # (time before the request, b as listed)
    while True:
        before = time.monotonic()
        members = cluster_of(apis["a"])
        after = time.monotonic()
        assert a.pid in members and c.pid not in members
        if b.pid not in members:
            break
        seen.append((before, members[b.pid]))
        assert after < deadline, f"the killed daemon is still listed after {ttl + 15}s: {members[b.pid]}"
        # Bounded poll: the heartbeat expires inside Redis; nothing logs it.
        time.sleep(0.2)
    assert seen, "the killed daemon was gone at once: its heartbeat must outlive it"
    # no heartbeat after the kill: the same last beat, an age that only grows ...
    assert len({m["last_heartbeat_at"] for _, m in seen}) == 1
    ages = [m["heartbeat_age_seconds"] for _, m in seen]
    assert ages == sorted(ages)
    # ... past the interval (it missed heartbeats: stale) while still listed
    assert ages[-1] > HEARTBEAT_INTERVAL, ages
    # and gone only once the heartbeat had expired: the last beat was at or after
    # (request start - listed age), so at least ttl before the answer that no longer lists it
    last_beat = max(before - m["heartbeat_age_seconds"] for before, m in seen)
    assert after - last_beat >= ttl - 0.1, (after - last_beat, ages)


def test_openapi_document_covers_the_api():
    """Every route of mailrelay.web.api is in the document, with bearer auth on /api only."""
    from mailrelay.config import Config
    from mailrelay.web.api import ApiResource, TokenAuth

    documented = {(method.upper(), path) for path, ops in OPENAPI["paths"].items() for method in ops}
    routes = ApiResource(None, Config(), TokenAuth([])).routes
    served = {(method, "/api/" + "/".join(p or "{}" for p in pattern)) for method, pattern, _ in routes}
    assert served == {(m, re.sub(r"\{\w+\}", "{}", p)) for m, p in documented if p.startswith("/api/")}
    expected = {("GET", "/api/v1/messages"), ("GET", "/api/v1/messages/{id}"), ("GET", "/api/v1/messages/{id}/raw"),
                ("GET", "/api/v1/bounces"), ("GET", "/api/v1/bounces/{id}"), ("GET", "/api/v1/suppressions"),
                ("POST", "/api/v1/suppressions"), ("DELETE", "/api/v1/suppressions/{address}"),
                ("GET", "/api/v1/stats"), ("GET", "/api/v1/domains"), ("GET", "/healthz"), ("GET", "/readyz"),
                ("GET", "/metrics")}
    assert documented == expected
    assert OPENAPI["openapi"].startswith("3.1") and OPENAPI["security"] == [{"bearer": []}]
    assert OPENAPI["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "a token of [web] api_tokens"}
    for path, ops in OPENAPI["paths"].items():
        for op in ops.values():
            assert ("security" in op) == (not path.startswith("/api")), path
            if path.startswith("/api"):
                assert "401" in op["responses"], path
    for schema in OPENAPI["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_sender_domains(start_daemon, daemon_config, redis_server, unique_prefix, dns):
    """GET /api/v1/domains and the status page's section, after `mailrelay domains add` and
    `mailrelay domains verify` (through the local DNS server)."""
    import subprocess
    import sys

    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix,
                                delivery={"enabled": False, "nameservers": [f"127.0.0.1:{dns.port}"]},
                                dkim={"key_encryption_key": "k" * 24}))
    api = Api(d.ports["web"], TOKEN)

    def domains(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mailrelay.cli", "domains", *args, "-c", str(d.config_path)],
                              capture_output=True, text=True, timeout=60)

    def status_page() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", d.ports["web"], timeout=20)
        try:
            conn.request("GET", "/", headers={"Authorization": f"Bearer {TOKEN}"})
            page = conn.getresponse()
            assert page.status == 200
            return page.read().decode()
        finally:
            conn.close()

    assert api.ok("/api/v1/domains") == {"domains": []}
    assert "No sender domains" in status_page()
    added = domains("add", "example.test", "--selector", "mr1")
    assert added.returncode == 0, added.stderr
    [domain] = api.ok("/api/v1/domains")["domains"]     # validated against the OpenAPI schema
    assert domain["name"] == "example.test" and domain["source"] == "redis"
    assert domain["dns_check"] is None and TIME_RE.match(domain["created_at"])
    [key] = domain["keys"]
    assert set(key) == {"selector", "algorithm", "public", "bits", "state", "created_at", "keep_until"}
    assert (key["selector"], key["algorithm"], key["bits"], key["state"]) == ("mr1", "rsa-sha256", 2048, "active")
    [dkim_record] = [r for r in domain["records"] if r["kind"] == "dkim"]
    assert dkim_record["name"] == "mr1._domainkey.example.test" and dkim_record["type"] == "TXT"
    assert dkim_record["value"] == f"v=DKIM1; k=rsa; p={key['public']}" and dkim_record["required"]
    assert {r["kind"] for r in domain["records"]} == {"dkim", "spf", "dmarc"}
    body = api.get("/api/v1/domains").body.decode()
    assert "PRIVATE KEY" not in body and "nonce" not in body and "private" not in body
    assert api.call("GET", "/api/v1/domains", token=None).status == 401
    assert api.call("GET", "/api/v1/domains?x=1").status == 400
    page = status_page()
    assert "Sender domains (DKIM)" in page and "example.test" in page
    assert "mr1 (rsa-sha256)" in page and "never checked" in page

    # nothing published: the check says which record is missing, and when it ran
    assert domains("verify", "example.test").returncode == 1
    check = api.ok("/api/v1/domains")["domains"][0]["dns_check"]
    assert check["ok"] is False and TIME_RE.match(check["at"])
    assert [r["status"] for r in check["records"] if r["kind"] == "dkim"] == ["missing"]
    assert f"mr1._domainkey.example.test TXT: missing (checked {check['at']})" in status_page()
    # published
    dns.update("mr1._domainkey.example.test", "TXT", [dkim_record["value"]])
    verified = domains("verify", "example.test")
    assert verified.returncode == 0, verified.stdout
    check = api.ok("/api/v1/domains")["domains"][0]["dns_check"]
    assert check["ok"] is True and [r["status"] for r in check["records"] if r["kind"] == "dkim"] == ["ok"]
    assert f"ok (checked {check['at']})" in status_page()
