"""
Webhooks (mailrelay.services.webhooks): events POSTed as signed JSON to local HTTP receivers, over real
HTTP on 127.0.0.1.

Daemon-level tests run the real daemon (twistd) with ``[[webhooks]]`` entries, submit mail over
SMTP and let it be delivered to Postfix's smtp-sink (or refused by it); the receiver is a small
``http.server`` in a thread of the pytest process that records every request and can answer
500 to the first N. In-process tests (trial) run the WebhookService on a task.Clock against a
twisted.web receiver, with a short retry schedule, to reach the last attempt and the
``webhook_failed`` timeline event without waiting for real time. Nothing sleeps: tests wait for
requests at the receiver, daemon log lines or state in Redis.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import queue
import re
import smtplib
import threading
import time
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from uuid import uuid4

import pytest
from twisted.internet import reactor, task
from twisted.trial import unittest
from twisted.web import resource, server

from conftest import async_test
from mailrelay.services import webhooks
from mailrelay.config import parse_config
from mailrelay.metrics import PROCESS
from mailrelay.store import Event, NewMessage, Storage, connect_redis
from mailrelay.services.webhooks import WebhookService, build_payload, matching_event, sign, verify
from peers import BOUNCE_DOMAIN, QUEUED, Sink, arf, dsn, received_headers, timeline, wait_until
from storeinspect import webhook_jobs

SECRET = "whsec-0123456789abcdef"


# -- the receiver (a thread of the test process) ---------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]   # names lowercased
    body: bytes
    answered: int

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers ``codes`` in turn, then 200."""

    def __init__(self, codes: tuple[int, ...] = ()) -> None:
        self.codes = list(codes)
        self.requests: list[Request] = []
        self._queue: queue.Queue[Request] = queue.Queue()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    code = receiver.codes.pop(0) if receiver.codes else 200
                answer = b"ok" if code == 200 else b"try again later"
                self.send_response(code)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body, code)
                receiver.requests.append(request)
                receiver._queue.put(request)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook-receiver")
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def next(self, timeout: float = 30) -> Request:
        """The next request received (in arrival order), waiting up to ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no webhook request within {timeout}s; received: {self.requests}") from None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(*codes: int) -> Receiver:
        made.append(Receiver(codes))
        return made[-1]

    yield make
    for r in made:
        r.stop()


# -- helpers ----------------------------------------------------------------------------------


def hook_toml(url: str, events: list[str], secret: str = "") -> str:
    text = f'\n[[webhooks]]\nurl = "{url}"\nevents = {json.dumps(events)}\n'
    return text + (f'secret = "{secret}"\n' if secret else "")


def webhook_config(daemon_config, redis_server, prefix, dns, port, *hooks: str, bounces: bool = True) -> str:
    sections: dict[str, Any] = {
        "submission": {"trusted_networks": ["127.0.0.0/8"]},
        "delivery": {"nameservers": [f"127.0.0.1:{dns.port}"], "mx_port": port, "lease_timeout": "5s"},
    }
    if bounces:
        sections["bounces"] = {"domain": BOUNCE_DOMAIN, "listen": ["tcp:0:interface=127.0.0.1"]}
    # render_toml writes plain tables only: the [[webhooks]] array of tables goes at the end
    return daemon_config(redis_server, prefix, **sections) + "".join(hooks)


def webhook_attempts(daemon) -> dict[str, float]:
    """mailrelay_webhook_attempts_total{result} of a daemon's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['web']}/metrics", timeout=20) as r:
        text = r.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r'^mailrelay_webhook_attempts_total\{result="(\w+)"\} (\S+)$',
                                                    text, re.M)}


def submit(port: int, recipients: list[str], headers: str = "") -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo()
        s.mail("app@example.com")
        for r in recipients:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(("From: app@example.com\r\nSubject: webhook test\r\n" + headers
                             + "\r\nHello\r\n").encode())
    assert code == 250, text
    return QUEUED.search(text.decode()).group(1)


def send_bounce(port: int, content: bytes, mailbox: str = "postmaster") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("mx.example.test")
        s.mail("")
        assert s.rcpt(f"{mailbox}@{BOUNCE_DOMAIN}")[0] == 250
        code, text = s.data(content)
    assert code == 250, text


def hgetall(client, key: str) -> dict[str, str]:
    reply = client.command("HGETALL", key)
    return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}


def bounce_records(client, prefix: str, message_id: str) -> list[dict[str, str]]:
    ids = [b.decode() for b in client.command("ZRANGE", f"{prefix}bounces", 0, -1)]
    return [r for r in (hgetall(client, f"{prefix}bounce:{i}") for i in ids) if r.get("message_id") == message_id]


def typed(record: dict[str, str]) -> dict[str, Any]:
    return {**record, "type_code": int(record["type_code"]), "inactive": record["inactive"] == "1"}


def receiver_check(secret: str, request: Request) -> bool:
    """Signature verification as documented in docs/webhooks.md (written out, not our helper)."""
    header = request.headers["x-mailrelay-signature"]
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + request.body, hashlib.sha256).hexdigest()
    return abs(time.time() - int(parts["t"])) < 300 and hmac.compare_digest(expected, parts["v1"])


# -- through the daemon ---------------------------------------------------------------------------


def test_delivered_and_bounced_events_are_posted_signed(start_daemon, daemon_config, redis_server,
                                                        unique_prefix, dns, sink, receiver):
    signed, unsigned = receiver(), receiver()
    d = start_daemon(webhook_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                                    hook_toml(signed.url, ["delivered"], SECRET),
                                    hook_toml(unsigned.url, ["bounced", "spam_complaint"])))
    message_id = submit(d.ports["submission"], ["Reader@example.test"],
                        "X-Mailrelay-Tag: welcome\r\nX-Mailrelay-Metadata-customer: 42\r\n")
    request = signed.next()
    payload = request.json
    assert payload["event"] == "delivered" and payload["message_id"] == message_id
    assert payload["recipient"] == "Reader@example.test"
    assert payload["tag"] == "welcome" and payload["metadata"] == {"customer": "42"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", payload["at"])
    assert payload["remote_host"] == "mx1.example.test" and payload["remote_ip"] == "127.0.0.1"
    assert payload["smtp_code"] == 250 and payload["response"]
    assert payload["detail"] == "Delivered to mx1.example.test" and "bounce" not in payload
    [[entry_id, fields]] = redis_server.client().command("XRANGE", f"{unique_prefix}events",
                                                         payload["event_id"], payload["event_id"])
    assert dict(zip(fields[::2], fields[1::2]))[b"type"] == b"delivered"
    assert request.headers["x-mailrelay-event-id"] == payload["event_id"]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("mailrelay/")
    assert request.headers["x-mailrelay-event"] == "delivered" and request.headers["x-mailrelay-attempt"] == "1"
    # the signature verifies with the hook's secret, and not with another one or another body
    assert receiver_check(SECRET, request)
    assert verify(SECRET, request.headers["x-mailrelay-signature"], request.body)
    assert not receiver_check("another-secret-0123", request)
    assert not verify("another-secret-0123", request.headers["x-mailrelay-signature"], request.body)
    assert not verify(SECRET, request.headers["x-mailrelay-signature"], request.body.replace(b"42", b"43"))
    d.wait_for_line(rf"webhook delivered for {message_id} to <Reader@example\.test>: .* answered 200 \(attempt 1\)")

    # later the recipient's server bounces it: the bounced event carries the bounce record
    send_bounce(d.ports["bounces"], dsn(f"postmaster@{BOUNCE_DOMAIN}", "reader@example.test", message_id,
                                        original=received_headers(sink, "reader@example.test")))
    request = unsigned.next()
    payload = request.json
    client = redis_server.client()
    [record] = bounce_records(client, unique_prefix, message_id)
    assert payload["event"] == "bounced" and payload["message_id"] == message_id
    assert payload["recipient"] == "Reader@example.test" and payload["tag"] == "welcome"
    assert payload["bounce"] == typed(record)
    assert payload["bounce"]["type"] == "HardBounce" and payload["bounce"]["status"] == "5.1.1"
    assert payload["enhanced_code"] == "5.1.1" and payload["detail"].startswith("HardBounce")
    assert "x-mailrelay-signature" not in request.headers   # no secret, no signature
    d.wait_for_line(rf"webhook bounced for {message_id} .* answered 200 \(attempt 1\)")

    # and the reader complains: a spam_complaint event, with the complaint's record
    send_bounce(d.ports["bounces"], arf("reader@example.test", message_id,
                                        original=received_headers(sink, "reader@example.test")), "fbl")
    payload = unsigned.next().json
    [complaint] = [r for r in bounce_records(client, unique_prefix, message_id) if r["id"] != record["id"]]
    assert payload["event"] == "spam_complaint" and payload["message_id"] == message_id
    assert payload["recipient"] == "Reader@example.test" and payload["metadata"] == {"customer": "42"}
    assert payload["bounce"] == typed(complaint) and payload["bounce"]["type"] == "SpamComplaint"
    assert payload["bounce"]["source"] == "arf" and payload["detail"].startswith("SpamComplaint")
    d.wait_for_line(rf"webhook spam_complaint for {message_id} .* answered 200 \(attempt 1\)")
    # each hook got only the events it subscribed to, and nothing is left to send
    assert [r.json["event"] for r in signed.requests] == ["delivered"]
    assert [r.json["event"] for r in unsigned.requests] == ["bounced", "spam_complaint"]
    assert client.command("ZCARD", f"{unique_prefix}webhook:queue") == 0
    assert client.command("XPENDING", f"{unique_prefix}events", "webhooks")[0] == 0


def test_in_band_bounce(start_daemon, daemon_config, redis_server, unique_prefix, dns, tmp_path, receiver):
    hook = receiver()
    hard = Sink(tmp_path / "hard", "-f", "RCPT", "-B", "550 5.1.1 User unknown")
    try:
        d = start_daemon(webhook_config(daemon_config, redis_server, unique_prefix, dns, hard.port,
                                        hook_toml(hook.url, ["bounced", "delivered"], SECRET)))
        message_id = submit(d.ports["submission"], ["gone@example.test"])
        request = hook.next()
    finally:
        hard.stop()
    payload = request.json
    assert payload["event"] == "bounced" and payload["message_id"] == message_id
    assert payload["recipient"] == "gone@example.test"
    assert payload["smtp_code"] == 550 and payload["enhanced_code"] == "5.1.1"
    assert "User unknown" in payload["response"] and payload["remote_host"] == "mx1.example.test"
    assert verify(SECRET, request.headers["x-mailrelay-signature"], request.body)
    # The bounce record of an in-band refusal is stored by delivery just after the event, and
    # not named in the stream entry: the webhook service looks it up (waiting briefly for it).
    [record] = bounce_records(redis_server.client(), unique_prefix, message_id)
    assert record["source"] == "smtp" and record["type"] == "HardBounce"
    assert payload["bounce"] == typed(record)


def test_failed_requests_are_retried_across_a_restart(start_daemon, daemon_config, redis_server, unique_prefix,
                                                      dns, sink, receiver, tmp_path):
    hook = receiver(500, 500)   # the first two attempts fail, the third succeeds
    config = webhook_config(daemon_config, redis_server, unique_prefix, dns, sink.port,
                            hook_toml(hook.url, ["delivered"], SECRET), bounces=False)
    first = start_daemon(config, tmp_path / "first")
    message_id = submit(first.ports["submission"], ["later@example.test"])
    assert hook.next().answered == 500
    first.wait_for_line(rf"webhook delivered for {message_id} .*failed \(attempt 1\): HTTP 500 try again later; "
                        r"retrying in 2s")
    # each daemon counts the requests it sent itself (the sum over the daemons is the total)
    assert webhook_attempts(first) == {"ok": 0, "retry": 1, "failed": 0}
    # the daemon stops before the retry: the job waits in Redis
    first.stop()
    assert first.find_lines(r"mailrelay stopped$")
    client = redis_server.client()
    [job_id] = [j.decode() for j in client.command("ZRANGE", f"{unique_prefix}webhook:queue", 0, -1)]
    job = hgetall(client, f"{unique_prefix}webhook:job:{job_id}")
    assert job["attempts"] == "1" and job["last_error"].startswith("HTTP 500") and "owner" not in job
    # another daemon (a restart) sends it: once more refused, then accepted
    second = start_daemon(config, tmp_path / "second")
    assert hook.next().answered == 500
    second.wait_for_line(rf"webhook delivered for {message_id} .*failed \(attempt 2\): HTTP 500 .*retrying in 10s")
    assert hook.next().answered == 200
    second.wait_for_line(rf"webhook delivered for {message_id} .*answered 200 \(attempt 3\)")
    assert webhook_attempts(second) == {"ok": 1, "retry": 1, "failed": 0}
    bodies = {r.body for r in hook.requests}
    assert len(hook.requests) == 3 and len(bodies) == 1   # the same event, the same payload
    assert [r.headers["x-mailrelay-attempt"] for r in hook.requests] == ["1", "2", "3"]
    assert all(receiver_check(SECRET, r) for r in hook.requests)
    assert client.command("ZCARD", f"{unique_prefix}webhook:queue") == 0
    assert client.command("EXISTS", f"{unique_prefix}webhook:job:{job_id}") == 0
    assert [e["type"] for e in timeline(redis_server, unique_prefix, message_id)] == ["queued", "delivered"]


# -- pure functions ----------------------------------------------------------------------------


def test_signature_scheme():
    body = b'{"event":"delivered"}'
    header = sign("k", 1_700_000_000, body)
    mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={mac}"
    assert verify("k", header, body, now=1_700_000_100)
    assert not verify("k", header, body, now=1_700_001_000)     # too old: a replay
    assert not verify("other", header, body, now=1_700_000_100)
    assert not verify("k", header, body + b" ", now=1_700_000_100)
    assert not verify("k", "garbage", body)


def test_payload_takes_the_matching_timeline_entry():
    timeline_ = [
        {"type": "queued", "at": "2026-11-28T09:00:00Z", "recipient": "a@x.test", "rcpt": 0, "detail": "q"},
        {"type": "deferred", "at": "2026-11-28T09:00:01Z", "recipient": "a@x.test", "rcpt": 0, "detail": "first"},
        {"type": "deferred", "at": "2026-11-28T09:00:01Z", "recipient": "b@x.test", "rcpt": 1, "detail": "other"},
        {"type": "deferred", "at": "2026-11-28T09:05:01Z", "recipient": "a@x.test", "rcpt": 0, "detail": "second",
         "smtp_code": 451},
    ]
    at_ms = calendar.timegm((2026, 11, 28, 9, 5, 1, 0, 0, 0)) * 1000
    assert matching_event(timeline_, "deferred", 0, at_ms)["detail"] == "second"
    assert matching_event(timeline_, "deferred", 0, at_ms - 300_000)["detail"] == "first"
    fields = {"type": "deferred", "msg": "m1", "rcpt": "0", "at": str(at_ms)}
    source = {"tag": "t", "metadata": '{"k": "v"}', "recipient": "a@x.test", "timeline": timeline_, "bounces": []}
    payload = build_payload("deferred", "1-0", fields, source, None)
    assert payload == {"event": "deferred", "event_id": "1-0", "message_id": "m1", "recipient": "a@x.test",
                       "at": "2026-11-28T09:05:01Z", "tag": "t", "metadata": {"k": "v"}, "detail": "second",
                       "remote_host": None, "remote_ip": None, "smtp_code": 451, "enhanced_code": None,
                       "response": None, "remote_queue_id": None}


def test_a_late_report_s_payload_takes_the_event_its_entry_carries():
    """A report about a released message: no record, no timeline in Redis; the entry has the event."""
    event = {"type": "bounced", "at": "2026-11-28T09:05:01Z", "recipient": "a@x.test", "rcpt": 0,
             "detail": "HardBounce: 550 5.1.1 no such user", "enhanced_code": "5.1.1"}
    fields = {"type": "bounced", "msg": "m1", "rcpt": "0", "at": "1795856701000", "bounce": "b1", "late": "1",
              "event": json.dumps(event), "state": "bounced"}
    source = {"tag": None, "metadata": None, "recipient": None, "timeline": [], "bounces": []}
    payload = build_payload("bounced", "1-0", fields, source, {"id": "b1", "recipient": "a@x.test"})
    assert (payload["recipient"], payload["at"], payload["detail"], payload["enhanced_code"]) == (
        "a@x.test", "2026-11-28T09:05:01Z", "HardBounce: 550 5.1.1 no such user", "5.1.1")
    assert (payload["tag"], payload["metadata"], payload["bounce"]["id"]) == ("", {}, "b1")


# -- in process: the service on a task.Clock ----------------------------------------------------


class Hook(resource.Resource):
    """A twisted.web receiver: answers ``codes`` in turn, then 200; records (headers, body)."""

    isLeaf = True

    def __init__(self, codes: list[int]) -> None:
        super().__init__()
        self.codes = list(codes)
        self.received: list[tuple[dict[str, str], bytes]] = []

    def render_POST(self, request: Any) -> bytes:
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.received.append((headers, request.content.read()))
        request.setResponseCode(self.codes.pop(0) if self.codes else 200)
        return b"service unavailable"


class WebhookServiceTests(unittest.TestCase):
    timeout = 60

    @pytest.fixture(autouse=True)
    def _redis(self, redis_server):
        self.redis_server = redis_server

    def setUp(self) -> None:
        self.prefix = f"t{uuid4().hex[:8]}:"
        self.clock = task.Clock()
        self.clock.advance(time.time())

    def listen(self, hook: Hook) -> str:
        site = server.Site(hook, timeout=None)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}/hook"

    def make_storage(self, url: str, **hook: Any) -> Storage:
        self.config = parse_config({
            "redis": {"url": self.redis_server.url, "key_prefix": self.prefix},
            "webhooks": [{"url": url, "events": ["delivered"], **hook}],
        })
        redis = connect_redis(self.config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        self.storage = Storage(self.config, redis, clock=self.clock)
        return self.storage

    async def start(self, url: str | None = None, schedule: tuple[float, ...] = (1.0, 1.0),
                    **hook: Any) -> WebhookService:
        if url is not None:
            self.make_storage(url, **hook)
        service = WebhookService(self.config, lambda: self.storage, clock=self.clock, reactor=reactor,
                                 retry_schedule=schedule)
        await service.when_ready()
        self.addCleanup(service.stopService)
        self.service = service
        return service

    async def wait_for(self, predicate: Callable[[], Any], what: str, limit: float = 20.0) -> Any:
        return await wait_until(predicate, what, limit)

    def catch_up(self) -> None:
        behind = time.time() - self.clock.seconds()
        if behind > 0:
            self.clock.advance(behind + 0.001)

    async def delivered(self, recipient: str = "a@example.test") -> str:
        """A message whose recipient was delivered: real queue scripts, timeline and event."""
        message = NewMessage(sender="app@example.com", recipients=[recipient], content=b"Subject: x\r\n\r\nx\r\n",
                             tag="t1", metadata={"k": "v"})
        message_id = await self.storage.enqueue(message)
        await self.storage.confirm(message_id)  # as submission does once its 250 is sent
        self.catch_up()
        [job] = await self.storage.claim("example.test", 10, "test", 60)
        event = Event(type="delivered", at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), recipient=recipient,
                      rcpt=0, detail="Delivered to mx1.example.test", smtp_code=250)
        assert await self.storage.record(job, "test", "delivered", event) == "OK"
        return message_id

    async def redis(self, *args: Any) -> Any:
        return await self.storage.redis.execute_command(*args)

    async def job(self) -> dict[str, str]:
        ids = await self.redis("ZRANGE", self.prefix + "webhook:queue", 0, -1)
        if not ids:
            return {}
        [job_id] = ids
        reply = await self.redis("HGETALL", self.prefix + "webhook:job:" + job_id.decode())
        return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply), 2)}

    @async_test
    async def test_gives_up_after_the_last_attempt(self) -> None:
        hook = Hook([503] * 10)
        url = self.listen(hook)

        def counted(result: str) -> float:
            return PROCESS.get_sample_value("mailrelay_webhook_attempts_total", {"result": result})

        before = {result: counted(result) for result in ("ok", "retry", "failed")}
        service = await self.start(url, schedule=(1.0, 5.0))
        message_id = await self.delivered()
        service.consume()
        await self.wait_for(lambda: len(hook.received) == 1, "the first attempt")

        async def attempts(n: int) -> bool:
            return not service.inflight and (await self.job()).get("attempts") == str(n)

        await self.wait_for(lambda: attempts(1), "the first failure to be recorded")
        self.clock.advance(0.9)   # not due yet
        await self.wait_for(lambda: not service._dispatching, "the queue poll")
        self.assertEqual(len(hook.received), 1)
        self.clock.advance(0.2)
        await self.wait_for(lambda: len(hook.received) == 2, "the second attempt")
        await self.wait_for(lambda: attempts(2), "the second failure to be recorded")
        self.clock.advance(5.1)
        await self.wait_for(lambda: len(hook.received) == 3, "the third (last) attempt")

        async def failed() -> list[Any]:
            return [e for e in await self.storage.get_timeline(message_id) if e.type == "webhook_failed"]

        [event] = await self.wait_for(failed, "the webhook_failed event")
        self.assertEqual(event.recipient, "a@example.test")
        self.assertEqual(event.rcpt, 0)
        self.assertIn(url, event.detail)
        self.assertIn("after 3 attempts", event.detail)
        self.assertIn("HTTP 503 service unavailable", event.detail)
        self.assertEqual(await self.redis("ZCARD", self.prefix + "webhook:queue"), 0)
        self.assertEqual([h["x-mailrelay-attempt"] for h, _ in hook.received], ["1", "2", "3"])
        self.assertEqual(len({body for _, body in hook.received}), 1)
        payload = json.loads(hook.received[0][1])
        self.assertEqual((payload["event"], payload["message_id"], payload["tag"], payload["metadata"]),
                         ("delivered", message_id, "t1", {"k": "v"}))
        # counted once recorded: two retries, then the give-up
        await self.wait_for(lambda: counted("failed") == before["failed"] + 1, "the give-up to be counted")
        self.assertEqual({result: counted(result) - before[result] for result in before},
                         {"ok": 0, "retry": 2, "failed": 1})

    @async_test
    async def test_unreachable_receiver_is_retried(self) -> None:
        service = await self.start("http://127.0.0.1:1/hook")   # nothing listens on port 1
        await self.delivered()
        service.consume()
        job = await self.wait_for(lambda: self.job_when_attempted(1), "the failed attempt")
        self.assertIn("refused", job["last_error"].lower())

    async def job_when_attempted(self, n: int) -> dict[str, str] | None:
        if self.service.inflight:
            return None
        job = await self.job()
        return job if job.get("attempts") == str(n) else None

    @async_test
    async def test_events_left_by_a_dead_consumer_are_taken_over(self) -> None:
        self.patch(webhooks, "RECLAIM_IDLE", 0.0)
        hook = Hook([])
        storage = self.make_storage(self.listen(hook))
        self.assertTrue(await storage.webhook_create_group())
        await self.delivered()
        # a daemon reads both events (queued, delivered) and dies before acknowledging them
        reply = await self.redis("XREADGROUP", "GROUP", "webhooks", "dead-daemon", "COUNT", 10,
                                 "STREAMS", self.prefix + "events", ">")
        self.assertEqual(len(reply[0][1]), 2)
        await self.start()   # its first poll takes over what others left pending
        await self.wait_for(lambda: len(hook.received) == 1, "the webhook of the taken-over event")
        self.assertFalse(await storage.webhook_create_group())   # it existed: nothing replayed
        self.assertEqual(json.loads(hook.received[0][1])["event"], "delivered")
        pending = await self.redis("XPENDING", self.prefix + "events", "webhooks")
        self.assertEqual(pending[0], 0)

    @async_test
    async def test_entry_types_without_a_webhook_event_are_acknowledged(self) -> None:
        hook = Hook([])
        storage = self.make_storage(self.listen(hook), events=["delivered", "bounced"])
        service = await self.start()
        # an unmatched bounce reaches the stream as 'bounce_stored' (for the archiver) and a
        # reclassification as 'bounce_changed': no webhook event is made of either
        record = {"id": "b0001", "message_id": "", "recipient": "x@example.test", "type": "HardBounce",
                  "at": "2030-01-01T00:00:00Z"}
        self.assertIs(await storage.record_bounce(record, b"raw", message_id=None, rcpt=None, state=None,
                                                  event=None, suppress=None), False)
        await storage.reclassify_bounce("b0001", {"type": "SoftBounce"})
        types = [e[1][1] for e in await self.redis("XRANGE", self.prefix + "events", "-", "+")]
        self.assertEqual(types, [b"bounce_stored", b"bounce_changed"])
        service.consume()
        await self.wait_for(lambda: service._consuming is None, "the events to be read")
        [group] = await self.redis("XINFO", "GROUPS", self.prefix + "events")
        info = dict(zip(group[::2], group[1::2]))
        self.assertEqual((info[b"pending"], info[b"lag"]), (0, 0))  # both read and acknowledged
        self.assertEqual(await self.job(), {})
        self.assertEqual(hook.received, [])

    @async_test
    async def test_stop_waits_briefly_then_hands_the_job_back(self) -> None:
        class Silent(resource.Resource):
            isLeaf = True
            requests: list[Any] = []

            def render_POST(self, request: Any) -> Any:
                self.requests.append(request)
                return server.NOT_DONE_YET   # never answers

        silent = Silent()
        service = await self.start(self.listen(silent))
        await self.delivered()
        service.consume()
        await self.wait_for(lambda: silent.requests and service.inflight, "the request to hang")
        stopped = service.stopService()
        await self.wait_for(lambda: self.clock.getDelayedCalls(), "the shutdown grace timer")
        self.assertFalse(stopped.called)   # waiting for the request
        self.clock.advance(webhooks.SHUTDOWN_GRACE)
        await stopped
        self.assertEqual(service.inflight, {})
        # not an attempt: the job is due again now, for the next daemon to send
        job = await self.job()
        self.assertEqual(job["attempts"], "0")
        self.assertNotIn("owner", job)
        [(_, due)] = await webhook_jobs(self.storage)
        self.assertLessEqual(due, self.storage.now_ms())
