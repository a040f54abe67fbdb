"""
The status page (mailrelay/web/statuspage.py) through the real daemon: real SMTP submissions,
deliveries to Postfix's smtp-sink (MX from the local DNS server), a DSN received by the bounce
listener, then the page over HTTP on the daemon's web listener and in headless Chromium
(Debian's ``chromium``, installed by ``scripts/dev.sh test``).

Covered: the redirect to /login without a token, 401 for other methods, the Bearer header, the
login form and its session cookie (HttpOnly, SameSite=Strict, not the token), logout ending the
session on the server, cross-origin login refused, the security headers, the latest messages and
bounces, the queue table, the per-message page with its timeline, hostile values from mail
(subject, recipient address, metadata, tag, a bounce diagnostic with "]]></svg>") shown as text: in the HTML
source and in the DOM Chromium builds from it (no <script> element at all), and the page still
answering, section by section "unavailable", while Redis is down. The Chromium screenshots are
kept in the test's tmp dir and copied to test-artifacts/ at the repository root. Without a
daemon: every field each section shows (message, timeline, lists, queue, charts' labels and
legends, errors, the page's frame) built from hostile values and checked as a browser's tokenizer
reads it: the values come back whole as text or attribute values, no element or on* attribute
comes from them.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import shutil
import signal
import smtplib
import struct
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import pytest

from conftest import EPHEMERAL, wait_archived
from peers import BOUNCE_DOMAIN, QUEUED, dsn, received_headers

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
TOKEN = "t" * 24

XSS_SUBJECT = "<script>alert(1)</script>"
HOSTILE_RECIPIENT = '"<b>bold</b>"@example.test'
QUOTE_RECIPIENT = "o'brien&co@example.test"
ATTRIBUTE_RECIPIENT = '"x\\"><img src=x onerror=alert(4)>"@example.test'
HOSTILE_METADATA = '<b>x</b> & "y" <img src=x onerror=alert(2)>'
HOSTILE_TAG = "<i>welcome</i>"
HOSTILE_DIAGNOSTIC = "smtp; 550 5.1.1 <img src=x onerror=alert(3)> User unknown ]]></svg>"


def text_escaped(value: str) -> str:
    """``value`` as the page's serializer (twisted.web.template) writes it in text: ``&``, ``<``
    and ``>`` escaped (quotes need no escaping in text; they are in attribute values)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- helpers ---------------------------------------------------------------------------------


def page_config(daemon_config, redis_server, prefix, dns, sink_port, *, public=False):
    return daemon_config(
        redis_server, prefix,
        submission={"trusted_networks": ["127.0.0.0/8"]},
        delivery={"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": sink_port},
        bounces={"domain": BOUNCE_DOMAIN, "listen": [EPHEMERAL]},
        web={"listen": [EPHEMERAL], "api_tokens": [TOKEN], "public_status": public},
    )


def submit(port: int, recipients: list[str], content: bytes) -> str:
    """One message over SMTP from a trusted network; RCPT sent raw (quoted local parts)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        assert s.docmd("MAIL FROM:<app@example.com>")[0] == 250
        for rcpt in recipients:
            code, text = s.docmd(f"RCPT TO:<{rcpt}>")
            assert code == 250, (rcpt, text)
        code, text = s.data(content)
    assert code == 250, text
    return QUEUED.search(text.decode()).group(1)


def wait_for_all(d, patterns: list[str], timeout: float = 30) -> None:
    """Wait until the daemon has logged a line matching each pattern, in any order."""
    d.wait_for_lines(patterns, timeout)


def fill(d, sink) -> dict[str, str]:
    """Submit the test mail, wait for its delivery, bounce one recipient; returns message ids."""
    port = d.ports["submission"]
    hostile = submit(port, [HOSTILE_RECIPIENT, QUOTE_RECIPIENT, ATTRIBUTE_RECIPIENT], (
        "From: App <app@example.com>\r\n"
        "To: \"<b>Bob</b>\" <bob@example.test>\r\n"
        f"Subject: {XSS_SUBJECT}\r\n"
        f"X-Mailrelay-Tag: {HOSTILE_TAG}\r\n"
        f"X-Mailrelay-Metadata-note: {HOSTILE_METADATA}\r\n"
        "X-Mailrelay-Metadata-customer: 42\r\n"
        "\r\nHello\r\n").encode())
    plain = submit(port, ["alice@example.test", "bounce-me@example.test"],
                   b"From: app@example.com\r\nTo: alice@example.test\r\nSubject: Your receipt\r\n\r\nHi\r\n")
    # broken.test's DNS fails (SERVFAIL): deferred, it stays in the queue
    waiting = submit(port, ["someone@broken.test"],
                     b"From: app@example.com\r\nSubject: Password reset\r\n\r\nHi\r\n")
    # A quoted local part with angle brackets is a valid address: it is delivered.
    wait_for_all(d, [rf"{message_id}: to=<{re.escape(rcpt)}>.*status={status}"
                     for message_id, rcpt, status in (
                         (hostile, HOSTILE_RECIPIENT, "sent"), (hostile, QUOTE_RECIPIENT, "sent"),
                         (hostile, ATTRIBUTE_RECIPIENT, "sent"),
                         (plain, "alice@example.test", "sent"), (plain, "bounce-me@example.test", "sent"),
                         (waiting, "someone@broken.test", "deferred"))])
    # a DSN for bounce-me arrives later; it returns the headers of bounce-me's copy
    with smtplib.SMTP("127.0.0.1", d.ports["bounces"], timeout=20) as s:
        s.ehlo("mx.example.test")
        s.mail("")
        assert s.rcpt(f"postmaster@{BOUNCE_DOMAIN}")[0] == 250
        code, text = s.data(dsn(f"postmaster@{BOUNCE_DOMAIN}", "bounce-me@example.test", plain,
                                 diagnostic=HOSTILE_DIAGNOSTIC,
                                 original=received_headers(sink, "bounce-me@example.test")))
    assert code == 250, text
    wait_for_all(d, [rf"bounce \w+: message {plain} to <bounce-me@example\.test>: HardBounce"])
    wait_archived(d.ports["web"], TOKEN)  # the lists read the archive
    return {"hostile": hostile, "plain": plain, "waiting": waiting}


def request(port: int, method: str, path: str, *, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode("utf-8")
    finally:
        conn.close()


def login(port: int, token: str, *, origin: str | None = None, next_path: str | None = None):
    form = {"token": token}
    if next_path is not None:
        form["next"] = next_path
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if origin is not None:
        headers["Origin"] = origin
    return request(port, "POST", "/login", headers=headers, body=urlencode(form).encode())


def session_cookie(headers: http.client.HTTPMessage) -> tuple[str, str]:
    """(value, the whole Set-Cookie line) of mailrelay_session."""
    for line in headers.get_all("Set-Cookie") or []:
        name, _, rest = line.partition("=")
        if name.strip() == "mailrelay_session":
            return rest.split(";")[0], line
    raise AssertionError(f"no mailrelay_session cookie in {headers.get_all('Set-Cookie')}")


def assert_security_headers(headers: http.client.HTTPMessage) -> None:
    csp = headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "style-src 'unsafe-inline'", "img-src data:",
                      "form-action 'self'"):
        assert directive in csp, csp
    assert "script-src" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"


def assert_escaped(source: str) -> None:
    """The hostile values appear as escaped text only, never as markup."""
    assert html.escape(XSS_SUBJECT, quote=True) in source          # &lt;script&gt;alert(1)...
    assert "<script" not in source.lower()
    assert "<b>" not in source and "<i>" not in source and "<img" not in source


# -- over HTTP -----------------------------------------------------------------------------


def test_status_page_auth_listing_and_message_page(start_daemon, daemon_config, redis_server,
                                                   unique_prefix, dns, sink):
    d = start_daemon(page_config(daemon_config, redis_server, unique_prefix, dns, sink.port))
    assert d.find_lines(r"web listening on 127\.0\.0\.1:\d+ \(plain\)")
    port = d.ports["web"]
    ids = fill(d, sink)

    # no token: GET is sent to the login form, other methods get 401
    status, headers, _ = request(port, "GET", "/")
    assert status == 303 and headers["Location"] == "/login"
    assert_security_headers(headers)
    status, headers, _ = request(port, "GET", f"/messages/{ids['plain']}")
    assert status == 303 and headers["Location"] == f"/login?next=%2Fmessages%2F{ids['plain']}"
    status, headers, _ = request(port, "POST", "/", body=b"")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, headers, _ = request(port, "GET", "/", headers={"Authorization": "Bearer " + "x" * 24})
    assert status == 303
    status, headers, _ = request(port, "GET", "/", headers={"Cookie": "mailrelay_session=forged"})
    assert status == 303

    # the Bearer header alone is enough
    status, headers, page = request(port, "GET", "/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, page
    assert headers["Content-Type"].startswith("text/html")

    # the login form, a wrong token, a cross-origin post, then the right token
    status, headers, form = request(port, "GET", "/login")
    assert status == 200 and 'name="token"' in form and 'action="/login"' in form
    assert_security_headers(headers)
    status, headers, form = login(port, "wrong-token-wrong-token")
    assert status == 401 and "not valid" in form and headers.get_all("Set-Cookie") is None
    status, headers, _ = login(port, TOKEN, origin="http://evil.example")
    assert status == 403 and headers.get_all("Set-Cookie") is None
    status, headers, _ = login(port, TOKEN, origin=f"http://127.0.0.1:{port}")
    assert status == 303 and headers["Location"] == "/"
    cookie, line = session_cookie(headers)
    attributes = [a.strip().lower() for a in line.split(";")[1:]]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    assert TOKEN not in line and len(cookie) >= 32
    # a login with next= goes back to the message page it came from
    status, headers, _ = login(port, TOKEN, next_path=f"/messages/{ids['plain']}")
    assert status == 303 and headers["Location"] == f"/messages/{ids['plain']}"
    status, headers, _ = login(port, TOKEN, next_path="//evil.example/")
    assert status == 303 and headers["Location"] == "/"

    # the overview with the cookie
    status, headers, page = request(port, "GET", "/", headers={"Cookie": f"mailrelay_session={cookie}"})
    assert status == 200, page
    assert_security_headers(headers)
    assert headers["Cache-Control"] == "no-store"
    for section in ("Health", "Queue by destination domain", "Latest messages", "Latest bounces",
                    "Last hour, per minute", "Last 24 hours, per hour"):
        assert section in page
    assert page.count("<svg") == 4
    for message_id in ids.values():
        assert f'href="/messages/{message_id}"' in page
    assert "Your receipt" in page and "alice@example.test" in page
    assert_escaped(page)
    assert "&lt;b&gt;bold&lt;/b&gt;" in page                     # the first recipient
    # the bounce: recipient, type, escaped diagnostic
    assert "bounce-me@example.test" in page and "HardBounce" in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "]]&gt;&lt;/svg&gt;" in page and "]]></svg>" not in page
    assert 'class="dot ok"' in page                                # health of the services
    # the queue table: broken.test with its deferred message
    queue = page[page.index("Queue by destination domain"):page.index("Latest messages")]
    assert re.search(r"<td>broken\.test</td><td class=\"num\">0</td><td class=\"num\">1</td>", queue), queue

    # the message page: envelope, metadata and each recipient's timeline
    status, headers, page = request(port, "GET", f"/messages/{ids['hostile']}",
                                    headers={"Cookie": f"mailrelay_session={cookie}"})
    assert status == 200, page
    assert_security_headers(headers)
    assert_escaped(page)
    assert text_escaped(HOSTILE_METADATA) in page
    assert html.escape(HOSTILE_TAG, quote=True) in page
    assert text_escaped(QUOTE_RECIPIENT) in page                      # o'brien&amp;co@...
    assert text_escaped(ATTRIBUTE_RECIPIENT) in page                  # "x\"&gt;&lt;img ...
    assert "customer" in page and ">42<" in page
    assert "app@example.com" in page
    assert page.count("mx1.example.test") >= 2                        # one delivery per recipient
    assert "st-queued" in page and "st-delivered" in page and "250" in page

    status, _, page = request(port, "GET", f"/messages/{ids['plain']}",
                              headers={"Cookie": f"mailrelay_session={cookie}"})
    assert status == 200
    assert "bounce-me@example.test" in page and "st-bounced" in page
    assert "HardBounce" in page and "5.1.1" in page

    status, _, _ = request(port, "GET", "/messages/0123456789abcdef0123",
                           headers={"Cookie": f"mailrelay_session={cookie}"})
    assert status == 404
    status, _, _ = request(port, "GET", "/nothing-here", headers={"Cookie": f"mailrelay_session={cookie}"})
    assert status == 404

    # logout ends the session on the server too: the old cookie no longer opens the page
    status, headers, _ = request(port, "POST", "/logout", body=b"",
                                 headers={"Cookie": f"mailrelay_session={cookie}"})
    assert status == 303 and headers["Location"] == "/login"
    _, line = session_cookie(headers)
    assert "max-age=0" in line.lower()
    status, headers, _ = request(port, "GET", "/", headers={"Cookie": f"mailrelay_session={cookie}"})
    assert status == 303 and headers["Location"] == "/login"


# -- in headless Chromium -----------------------------------------------------------------


def chromium_executable() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (scripts/dev.sh test installs it)")
    return exe


def chromium(tmp_path: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium once (own profile, own process group); returns its stdout."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    command = [chromium_executable(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", *args]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, errors="replace",
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"chromium did not finish within {timeout}s: {' '.join(command)}\n{err[-4000:]}")
    assert process.returncode == 0, f"chromium exited {process.returncode}:\n{err[-4000:]}"
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


class DOM(HTMLParser):
    """The elements and the text of a serialized DOM."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[str] = []
        self.texts: list[tuple[str, str]] = []   # (enclosing element, text)
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]
        if tag not in ("meta", "link", "br", "input", "rect", "line", "circle", "polyline"):
            self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in self._open:
            while self._open and self._open.pop() != tag:
                pass

    def handle_data(self, data):
        if data.strip():
            self.texts.append((self._open[-1] if self._open else "", data))


def test_status_page_in_headless_chromium(start_daemon, daemon_config, redis_server, unique_prefix,
                                          dns, sink, tmp_path):
    d = start_daemon(page_config(daemon_config, redis_server, unique_prefix, dns, sink.port, public=True))
    ids = fill(d, sink)
    base = f"http://127.0.0.1:{d.ports['web']}"
    ARTIFACTS.mkdir(exist_ok=True)

    for path, name in (("/", "status-page.png"), (f"/messages/{ids['hostile']}", "status-message.png")):
        screenshot = tmp_path / name
        chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,1600", base + path)
        assert png_size(screenshot) == (1280, 1600)
        assert screenshot.stat().st_size > 20_000     # a rendered page, not a blank one
        shutil.copyfile(screenshot, ARTIFACTS / name)

    for path in ("/", f"/messages/{ids['hostile']}"):
        dom_text = chromium(tmp_path, "--dump-dom", base + path)
        assert "Latest messages" in dom_text or "Metadata" in dom_text, dom_text[:2000]
        # the subject is text inside an element, escaped in the serialization
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom_text
        dom = DOM()
        dom.feed(dom_text)
        dom.close()
        assert "script" not in dom.tags
        assert "b" not in dom.tags and "i" not in dom.tags and "img" not in dom.tags
        assert not [a for a in dom.attributes if a.startswith("on")]
        assert [tag for tag, text in dom.texts if XSS_SUBJECT in text], "the subject is not shown as text"
    # the link from the overview leads to the message
    assert f'href="/messages/{ids["hostile"]}"' in chromium(tmp_path, "--dump-dom", base + "/")


# -- sender domains ------------------------------------------------------------------------


def test_sender_domains_section_is_escaped():
    """The "Sender domains" section: each domain with its selectors, algorithms and DNS state;
    every value (here hostile ones, as a tampered Redis could hold) shown as text only.
    (Through the daemon, after `mailrelay domains add`: tests/test_web_api.py test_sender_domains.)"""
    from mailrelay.web.pagehtml import render_html
    from mailrelay.web.statuspage import StatusPage

    def domain(name, selector, check):
        return {"name": name, "source": "redis", "created_at": "2026-11-28T09:00:00Z",
                "keys": [{"selector": selector, "algorithm": "rsa-sha256", "public": "MIIB", "bits": 2048,
                          "state": "active", "created_at": "2026-11-28T09:00:00Z", "keep_until": None}],
                "records": [], "dns_check": check}

    section = render_html(StatusPage._domains(True, [
        domain("example.test", "mr1", None),
        domain("ok.test", "s2", {"at": "2026-11-28T10:00:00Z", "ok": True, "records": []}),
        domain(XSS_SUBJECT, HOSTILE_TAG, {"at": HOSTILE_METADATA, "ok": False, "records": [
            {"kind": "dkim", "name": HOSTILE_DIAGNOSTIC, "type": "TXT", "value": "", "required": True,
             "status": "missing"},
            {"kind": "dmarc", "name": "_dmarc.x.test", "type": "TXT", "value": "", "required": False,
             "status": "missing"}]}),
    ])).decode()
    assert "<td>example.test</td>" in section and "mr1 (rsa-sha256)" in section
    assert "never checked" in section and "ok (checked 2026-11-28T10:00:00Z)" in section
    assert text_escaped(f"{HOSTILE_DIAGNOSTIC} TXT: missing (checked {HOSTILE_METADATA})") in section
    assert "_dmarc.x.test" not in section                      # suggestions do not make it fail
    assert html.escape(XSS_SUBJECT, quote=True) in section and html.escape(HOSTILE_TAG) in section
    assert "<script" not in section and "<i>" not in section and "<img" not in section and "<b>" not in section
    assert "No sender domains" in render_html(StatusPage._domains(True, [])).decode()
    assert "Sender domains unavailable: Redis is down" in render_html(
        StatusPage._domains(False, RuntimeError("Redis is down"))).decode()


# -- Redis down ---------------------------------------------------------------------------


def test_status_page_renders_while_redis_is_down(start_daemon, daemon_config, unique_prefix, tmp_path):
    from conftest import start_redis

    redis = start_redis(tmp_path / "private-redis")
    try:
        d = start_daemon(daemon_config(redis, unique_prefix, redis={"timeout": "1s"},
                                       web={"listen": [EPHEMERAL], "api_tokens": [TOKEN],
                                            "public_status": True}))
        status, _, page = request(d.ports["web"], "GET", "/")
        assert status == 200 and "unavailable" not in page
        redis.stop()
        started = time.monotonic()
        status, headers, page = request(d.ports["web"], "GET", "/")
        assert time.monotonic() - started < 10
        assert status == 200, page
        assert_security_headers(headers)
        assert 'class="dot bad"' in page                       # Redis shown down
        assert page.count("unavailable:") >= 4                 # each section says so
        status, _, _ = request(d.ports["web"], "GET", "/messages/0123456789abcdef0123")
        assert status == 503
    finally:
        redis.stop()


# -- every field, hostile -------------------------------------------------------------------

HOSTILE_ADDRESS = '"x\\"><img src=x onerror=alert(4)>"@example.test'
HOSTILE_BOUNCE = "5.0.0 ]]></svg><script>alert(5)</script> & <![CDATA[ x"
HOSTILE_VALUES = (XSS_SUBJECT, HOSTILE_ADDRESS, HOSTILE_BOUNCE, HOSTILE_METADATA, HOSTILE_TAG)


class Markup(HTMLParser):
    """The elements, attributes and text nodes of a page, as a browser's tokenizer sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str | None]] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.attributes += attrs

    def handle_data(self, data):
        self.texts.append(data)


def assert_shown_as_text(page: str, fields: dict[str, str]) -> None:
    """Each field's value appears, whole, as text or an attribute value; none of them made markup."""
    markup = Markup()
    markup.feed(page)
    markup.close()
    assert not {"script", "img", "b", "i"} & markup.tags, markup.tags
    assert not [name for name, _ in markup.attributes if name.startswith("on")]
    assert "<script" not in page and "<img" not in page and "]]></svg>" not in page
    values = "\n".join(markup.texts) + "\n" + "\n".join(value or "" for _, value in markup.attributes)
    missing = [name for name, value in fields.items() if value not in values]
    assert not missing, f"not shown as text: {missing}"


def test_every_field_the_page_shows_is_escaped():
    """Each section built from hostile values (mail, remote replies, a tampered Redis): the values
    are shown as text and the page has no element or attribute from them, chart labels and the
    tooltips included."""
    from mailrelay.web.pagehtml import _document, _unavailable, render_html
    from mailrelay.web.statuscharts import charts_section
    from mailrelay.web.statuspage import StatusPage
    from mailrelay.store.records import BounceRecord, MessageRecord, MessageSummary, decode_timeline

    now_ms = 1_764_320_000_000
    message = {
        "subject": XSS_SUBJECT, "status": HOSTILE_TAG, "received_at": str(now_ms), "sender": HOSTILE_ADDRESS,
        "rcpt_count": "2", "rcpt:0": HOSTILE_ADDRESS, "rcpt:1": QUOTE_RECIPIENT, "state:0": XSS_SUBJECT,
        "attempts:0": HOSTILE_BOUNCE, "state:1": "delivered", "attempts:1": "1",
        "from": HOSTILE_ADDRESS, "to": json.dumps([HOSTILE_RECIPIENT]), "cc": HOSTILE_BOUNCE,
        "message_id": f"<{HOSTILE_BOUNCE}>", "tag": HOSTILE_TAG, "size": HOSTILE_METADATA,
        "user": HOSTILE_METADATA + " user", "client": HOSTILE_BOUNCE + " client",
        "metadata": json.dumps({HOSTILE_TAG: HOSTILE_METADATA, "n": [XSS_SUBJECT]}),
    }
    event = {"type": HOSTILE_TAG, "at": HOSTILE_BOUNCE + " at", "rcpt": 0, "remote_host": HOSTILE_ADDRESS,
             "remote_ip": XSS_SUBJECT, "smtp_code": 550, "enhanced_code": HOSTILE_TAG + " code",
             "response": HOSTILE_BOUNCE + " response", "detail": HOSTILE_DIAGNOSTIC,
             "remote_queue_id": HOSTILE_METADATA + " qid"}
    stray = dict(event, rcpt=7, detail="stray " + HOSTILE_BOUNCE)
    page = StatusPage.__new__(StatusPage)
    sections = [
        # the records the store returns, decoded from hostile stored data
        page._message_html("0123456789abcdef0123", MessageRecord.decode("0123456789abcdef0123", message),
                           decode_timeline([event, stray]), None),
        page._message_html("0123456789abcdef0123", MessageRecord.decode(
                               "0123456789abcdef0123", {**message, "metadata": HOSTILE_BOUNCE + " raw"}), (),
                           RuntimeError(HOSTILE_BOUNCE + " timeline")),
        page._messages_table(True, [MessageSummary.decode(row) for row in (
                                    {"id": "0123456789abcdef0123", "_score": now_ms, "from": HOSTILE_ADDRESS,
                                     "first_recipient": QUOTE_RECIPIENT, "rcpt_count": 3,
                                     "subject": XSS_SUBJECT, "status": HOSTILE_TAG},
                                    {"id": HOSTILE_ADDRESS, "_score": "x", "sender": HOSTILE_BOUNCE + " s",
                                     "first_recipient": HOSTILE_ADDRESS + " r", "subject": "",
                                     "status": "queued"})]),
        page._bounces_table(True, ([BounceRecord.decode(
                                    {"_score": None, "at": HOSTILE_BOUNCE + " when", "message_id": HOSTILE_TAG,
                                     "recipient": HOSTILE_ADDRESS + " b", "type": HOSTILE_TAG + " type",
                                     "status": XSS_SUBJECT + " st", "description": HOSTILE_DIAGNOSTIC + " d",
                                     "details": HOSTILE_BOUNCE + " details"})], None)),
        StatusPage._queue(True, {"now_ms": now_ms, "domains": {
            HOSTILE_ADDRESS + " q": {"queued": 1, "deferred": 2, "delivering": 0, "oldest_ms": now_ms - 5000}}}),
        StatusPage._statuses(True, {HOSTILE_TAG + " status": 3}),
        charts_section(HOSTILE_ADDRESS + " chart", [(now_ms, {"delivered": 2, "bounced": 1, "recipients": 3,
                                                          f"bounce:{HOSTILE_BOUNCE}": 1})], "m"),
        _unavailable(HOSTILE_TAG + " what", RuntimeError(HOSTILE_BOUNCE + " error")),
    ]
    body = render_html(sections).decode()
    document = _document(HOSTILE_TAG + " title", sections, subtitle=HOSTILE_ADDRESS + " sub").decode()
    assert body in document
    assert_shown_as_text(document, {
        "subject": XSS_SUBJECT, "status": HOSTILE_TAG, "sender": HOSTILE_ADDRESS, "recipient": QUOTE_RECIPIENT,
        "attempts": f"{HOSTILE_BOUNCE} attempts", "to": HOSTILE_RECIPIENT, "cc": HOSTILE_BOUNCE,
        "message-id": f"<{HOSTILE_BOUNCE}>", "size": HOSTILE_METADATA, "user": HOSTILE_METADATA + " user",
        "client": HOSTILE_BOUNCE + " client", "metadata value": HOSTILE_METADATA,
        "metadata list": json.dumps([XSS_SUBJECT]), "raw metadata": HOSTILE_BOUNCE + " raw",
        "event at": HOSTILE_BOUNCE + " at", "remote ip": f"[{XSS_SUBJECT}]", "code": f"550 {HOSTILE_TAG} code",
        "response": HOSTILE_BOUNCE + " response", "detail": HOSTILE_DIAGNOSTIC,
        "remote id": f"(remote id {HOSTILE_METADATA} qid)", "stray event": "stray " + HOSTILE_BOUNCE,
        "timeline error": f"Timeline unavailable: {HOSTILE_BOUNCE} timeline",
        "list sender": HOSTILE_BOUNCE + " s", "list recipient": HOSTILE_ADDRESS + " r",
        "bounce time": HOSTILE_BOUNCE + " when", "bounce recipient": HOSTILE_ADDRESS + " b",
        "bounce type": HOSTILE_TAG + " type", "bounce status": XSS_SUBJECT + " st",
        "bounce description": HOSTILE_DIAGNOSTIC + " d", "bounce details": HOSTILE_BOUNCE + " details",
        "queue domain": HOSTILE_ADDRESS + " q", "status tile": HOSTILE_TAG + " status",
        "chart title": HOSTILE_ADDRESS + " chart", "chart label": f"{HOSTILE_ADDRESS} chart: throughput",
        "bounce reports": f"bounce reports: {HOSTILE_BOUNCE} 1",
        "unavailable": f"{HOSTILE_TAG} what unavailable: {HOSTILE_BOUNCE} error",
        "title": HOSTILE_TAG + " title", "subtitle": HOSTILE_ADDRESS + " sub",
    })
    # the chart's label is an attribute value: quotes escaped there too
    assert 'aria-label="' + text_escaped(HOSTILE_ADDRESS).replace('"', "&quot;") + ' chart: throughput"' in document
    # a message id that is not one links nowhere; status names pick no class of their own
    assert 'href="/messages/0123456789abcdef0123"' in document and "/messages/&quot;" not in document
    assert "st-&lt;" not in document and 'class="st"' in document
