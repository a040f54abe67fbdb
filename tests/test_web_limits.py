"""
The web listener's request limits (mailrelay.web.limits through mailrelay.web.api and the status
page) against a real daemon over raw sockets: bodies refused from the request's head before
any byte of them is read (no token: 401; announced too large: 413; chunked past the limit:
413 while the client is still sending), nothing stored meanwhile (no temporary file in the
daemon), normal requests (keep-alive, chunked within the limit, Expect: 100-continue) still
served; the throttle of failed authentications per client (429 with Retry-After, right token
too, until the window passes); POST /logout (a GET no longer logs out); and the API's answers
to JSON nested 30,000 deep and to lone surrogates (400 naming the field, never 500).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import stat
import time
from urllib.parse import urlencode

from test_web_api import TOKEN, Api, web_config

from mailrelay.web.api import ADMIN_API_MAX_BODY

#: Longest wait for an answer the daemon owes at once.
ANSWER_TIMEOUT = 10


def raw_head(port: int, head: str) -> socket.socket:
    """A connection that has sent ``head`` (request line and headers) and nothing more."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
    sock.sendall((head.rstrip("\n") + "\n\n").replace("\n", "\r\n").encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The response the daemon sends (it closes after it); fails if none comes in time."""
    sock.settimeout(ANSWER_TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of the response"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def answered(sock: socket.socket) -> bool:
    """Whether the daemon has written something (without waiting)."""
    return bool(select.select([sock], [], [], 0)[0])


def temporary_files(pid: int) -> set[str]:
    """The regular files the process holds open (a request body spooled to disk is one)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if stat.S_ISREG(os.stat(f"/proc/{pid}/fd/{fd}").st_mode):
                found.add(f"{fd} -> {target}")
        except FileNotFoundError:
            pass
    return found


def post_head(path: str, *, token: str | None, length: int | None, extra: str = "") -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return "\n".join(lines) + "\n" + extra + "\n"


# -- item 2: bodies refused before they are read ------------------------------------------


def test_bodies_refused_from_the_head(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix))
    port = d.ports["web"]
    files_before = temporary_files(d.pid)

    # 1 GB announced without a token: 401 while the client has sent only the headers
    with raw_head(port, post_head("/api/v1/suppressions", token=None, length=10**9)) as sock:
        status, headers, body = read_response(sock)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert json.loads(body)["code"] == 401 and headers["connection"] == "close"
        # what the client sends now is dropped, not stored: the daemon holds no new file
        sock.sendall(b"x" * 1_000_000)
        assert temporary_files(d.pid) == files_before
    # the same with a wrong token (and on a path that does not exist)
    with raw_head(port, post_head("/api/v1/nothing", token="w" * 24, length=10**9)) as sock:
        status, headers, _ = read_response(sock)
        assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    # chunked without a token: 401 at once too
    with raw_head(port, post_head("/api/v1/suppressions", token=None, length=None)) as sock:
        assert read_response(sock)[0] == 401

    # the right token, but more than the admin API's limit announced: 413 before the body
    with raw_head(port, post_head("/api/v1/suppressions", token=TOKEN, length=ADMIN_API_MAX_BODY + 1,
                                  extra="Expect: 100-continue\n")) as sock:
        status, headers, body = read_response(sock)  # a final status, no 100 Continue
        assert status == 413 and str(ADMIN_API_MAX_BODY) in json.loads(body)["error"]

    # chunked past the limit: 413 as soon as the limit is passed, while the client still sends
    with raw_head(port, post_head("/api/v1/suppressions", token=TOKEN, length=None)) as sock:
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        sent = 0
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while not answered(sock):
            assert sent <= 4 * ADMIN_API_MAX_BODY, "no answer while the chunked body passed the limit"
            assert time.monotonic() < deadline
            sock.sendall(chunk)
            sent += 65536
        assert sent > ADMIN_API_MAX_BODY
        status, headers, body = read_response(sock)
        assert status == 413 and headers["connection"] == "close"
        assert temporary_files(d.pid) == files_before

    # a status page path takes no body at all; its login form at most 4096 bytes
    with raw_head(port, "POST / HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 100000\n") as sock:
        assert read_response(sock)[0] == 413
    with raw_head(port, "POST /login HTTP/1.1\nHost: 127.0.0.1\nContent-Length: 4097\n") as sock:
        status, headers, body = read_response(sock)
        assert status == 413 and headers["content-type"].startswith("text/html")

    # normal requests still work: a keep-alive connection with bodies within the limit ...
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connection.request("POST", "/api/v1/suppressions", body=json.dumps({"address": "a@example.org"}), headers=auth)
    response = connection.getresponse()
    assert response.status == 201, response.read()
    response.read()
    # ... chunked (http.client sends an iterable body chunked) ...
    connection.request("POST", "/api/v1/suppressions", body=iter([b'{"address": ', b'"b@example.org"}']),
                       headers=auth, encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 201, response.read()
    response.read()
    connection.request("GET", "/api/v1/suppressions", headers=auth)
    response = connection.getresponse()
    assert {s["address"] for s in json.loads(response.read())["suppressions"]} == {"a@example.org", "b@example.org"}
    connection.close()
    # ... and Expect: 100-continue within the limit gets its 100 Continue, then the answer
    body = json.dumps({"address": "c@example.org"}).encode()
    with raw_head(port, post_head("/api/v1/suppressions", token=TOKEN, length=len(body),
                                  extra="Expect: 100-continue\n")) as sock:
        assert sock.recv(25).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        data = b""
        while b" 201 " not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
    assert not d.find_lines(r"Traceback|Unhandled")


def test_overlong_heads_answered(start_daemon, daemon_config, redis_server, unique_prefix):
    """A head twisted.web cannot take gets a whole answer (it dropped the connection, or reset
    it under a bare status line), and the daemon stays up."""
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix))
    port = d.ports["web"]
    auth = f"Authorization: Bearer {TOKEN}"
    for head, status in ((f"GET /api/v1/messages?tag={'x' * 20000} HTTP/1.1\nHost: a\n{auth}", 414),
                         (f"GET /api/v1/messages HTTP/1.1\nHost: a\n{auth}\nX-Long: {'x' * 20000}", 431),
                         (f"GET /api/v1/messages HTTP/1.1\nHost: a\n{auth}\n"
                          + "".join(f"X-{i}: {'y' * 100}\n" for i in range(200)), 400)):
        with raw_head(port, head) as sock:
            code, headers, body = read_response(sock)
            assert (code, headers["connection"]) == (status, "close"), body
    assert Api(port).get("/api/v1/messages").status == 200


# -- item 12: the throttle of failed authentications ----------------------------------------


def login(port: int, token: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT)
    connection.request("POST", "/login", body=urlencode({"token": token}),
                       headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_failed_authentications_throttled(start_daemon, daemon_config, redis_server, unique_prefix):
    window = 3
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix, web={
        "listen": ["tcp:0:interface=127.0.0.1"], "api_tokens": [TOKEN],
        "max_auth_failures": 3, "auth_failure_window": f"{window}s"}))
    port = d.ports["web"]
    api = Api(port)
    assert api.get("/api/v1/suppressions").status == 200
    # no token at all is not a guess: not counted
    for _ in range(5):
        assert api.call("GET", "/api/v1/suppressions", token=None).status == 401
    # three wrong tokens: 401 each; then the client is refused, the right token too
    for i in range(3):
        assert api.call("GET", "/api/v1/suppressions", token=f"wrong-token-{i:012d}").status == 401
    r = api.call("GET", "/api/v1/suppressions", check=False)
    assert r.status == 429, r.body
    assert 1 <= int(r.header("retry-after")) <= window and r.json["code"] == 429
    d.wait_for_line(r"web: 127\.0\.0\.1 throttled after 3 failed authentications in 3s")
    # before its body is read: a huge upload gets the 429 while only its head was sent
    with raw_head(port, post_head("/api/v1/suppressions", token=TOKEN, length=10**9)) as sock:
        assert read_response(sock)[0] == 429
    assert login(port, TOKEN).status == 429  # the login form too
    # requests without credentials are not throttled
    assert api.call("GET", "/healthz", token=None).status == 200
    # once the window has passed, the right token works again
    deadline = time.monotonic() + window + 5
    while (r := api.get("/api/v1/suppressions")).status == 429:
        assert time.monotonic() < deadline, "still throttled after the window"
        time.sleep(0.2)  # bounded poll: the window is the daemon's clock
    assert r.status == 200
    # failed logins at /login count the same way
    for _ in range(3):
        assert login(port, "not-the-token-at-all").status == 401
    assert api.get("/api/v1/suppressions").status == 429
    assert login(port, TOKEN).status == 429

    # another client (127.0.0.2 is loopback too) is not affected; its logins sent at once on
    # five connections cannot pass the limit together: each counts when its head arrives
    form = urlencode({"token": "not-the-token-at-all"}).encode()
    head = ("POST /login HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/x-www-form-urlencoded\n"
            f"Content-Length: {len(form)}\n")
    socks = []
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT,
                                        source_address=("127.0.0.2", 0))
        sock.sendall((head + "\n").replace("\n", "\r\n").encode())
        socks.append(sock)
    statuses = []
    for sock in socks:
        with sock:
            try:
                sock.sendall(form)
            except OSError:
                pass  # refused from its head: the daemon may have closed already
            statuses.append(read_response(sock)[0])
    assert sorted(statuses) == [401, 401, 401, 429, 429], statuses


# -- item 12: POST /logout ----------------------------------------------------------------------


def test_logout_needs_a_post(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix))
    port = d.ports["web"]
    response = login(port, TOKEN)
    assert response.status == 303
    cookie = response.headers["Set-Cookie"].split(";")[0]

    def page(method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=ANSWER_TIMEOUT)
        connection.request(method, path, body=b"" if method == "POST" else None,
                           headers={"Cookie": cookie, **(headers or {})})
        r = connection.getresponse()
        text = r.read().decode()
        connection.close()
        return r.status, r.headers, text

    assert page("GET", "/")[0] == 200
    # a GET (a link, a prefetch, an <img src=/logout>) changes nothing: 405, with the button
    status, headers, text = page("GET", "/logout")
    assert status == 405 and headers["Allow"] == "POST"
    assert '<form method="post" action="/logout">' in text
    assert not any("mailrelay_session=;" in v for v in headers.get_all("Set-Cookie") or [])
    assert page("GET", "/")[0] == 200
    # a cross-origin POST is refused
    assert page("POST", "/logout", {"Origin": "http://evil.example"})[0] == 403
    assert page("GET", "/")[0] == 200
    # the page's own form logs out
    status, headers, _ = page("POST", "/logout", {"Origin": f"http://127.0.0.1:{port}"})
    assert status == 303 and headers["Location"] == "/login"
    status, headers, _ = page("GET", "/")
    assert status == 303 and headers["Location"] == "/login"


# -- item 7: bad JSON gets 400 -----------------------------------------------------------------


def test_deep_json_and_lone_surrogates(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix))
    api = Api(d.ports["web"])
    deep = b"[" * 30000 + b"]" * 30000
    for body in (deep, b'{"address": ' + deep + b"}", b'{"address": "a@example.org", "reason": ' + deep + b"}"):
        r = api.call("POST", "/api/v1/suppressions", body, headers={"Content-Type": "application/json"})
        assert r.status == 400, (body[:40], r.status, r.body)
    for body, parameter in (('{"address": "\\ud800@example.org"}', "address"),
                            ('{"address": "x@ex\\udfffample.org"}', "address"),
                            ('{"address": "x@example.org", "reason": "\\ud800"}', "reason")):
        r = api.call("POST", "/api/v1/suppressions", body.encode(), headers={"Content-Type": "application/json"})
        assert r.status == 400 and r.json["parameter"] == parameter, (body, r.status, r.body)
        assert parameter in r.json["error"]
    # and a field name with one is named (escaped) in the answer
    r = api.call("POST", "/api/v1/suppressions", b'{"address": "x@example.org", "\\ud800": 1}',
                 headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.json["parameter"] == "\ud800"
    assert api.ok("/api/v1/suppressions") == {"suppressions": []}
    assert not d.find_lines(r"Traceback|RecursionError|web: \S+ \S+ failed")


# -- found by the attacker's review of issue 15: slow clients and connection floods ---------------


def closed_by_daemon(sock: socket.socket) -> bool:
    """Whether the daemon has closed ``sock`` (without waiting)."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(65536) == b""
    except ConnectionError:
        return True


def test_trickled_heads_and_bodies_do_not_hold_a_connection(start_daemon, daemon_config, redis_server,
                                                            unique_prefix):
    """HTTPChannel restarted its idle timer on every byte: a head (or a body) trickled one byte
    at a time held a connection for ever (slowloris). A request must be whole within
    request_timeout of the connection or of the previous response."""
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix,
                                web={"listen": ["tcp:0:interface=127.0.0.1"], "api_tokens": [TOKEN],
                                     "request_timeout": "2s"}))
    port = d.ports["web"]
    head = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
    body = raw_head(port, post_head("/login", token=None, length=4000,
                                    extra="Origin: http://127.0.0.1\nContent-Type: application/x-www-form-urlencoded"))
    head.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    started = time.monotonic()
    open_socks = {"head": head, "body": body}
    while open_socks and time.monotonic() - started < 15:
        for name, sock in list(open_socks.items()):
            if closed_by_daemon(sock):
                del open_socks[name]
                continue
            try:
                sock.sendall(b"X" if name == "head" else b"a")  # one byte, far more often than 2 s
            except ConnectionError:
                del open_socks[name]
        select.select([], [], [], 0.2)  # the trickle's pace (the loop waits for the close, bounded)
    assert not open_socks, f"still open after {time.monotonic() - started:.0f} s: {sorted(open_socks)}"
    # a client that sends whole requests in time is served, on a kept-alive connection too
    kept = socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT)
    for _ in range(2):
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(kept)[0] == 200
    kept.close()


def test_connections_beyond_max_connections_get_503(start_daemon, daemon_config, redis_server, unique_prefix):
    """No cap on the web listener's connections: idle ones piled up without limit, using the
    descriptors the SMTP listeners and Redis need too."""
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix,
                                web={"listen": ["tcp:0:interface=127.0.0.1"], "api_tokens": [TOKEN],
                                     "max_connections": 3}))
    port = d.ports["web"]
    held = [socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) for _ in range(3)]
    held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert read_response(held[0])[0] == 200   # all three admitted (this one answered)
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as extra:
        code, headers, _ = read_response(extra)
        assert (code, headers["connection"]) == (503, "close")
        assert extra.recv(1) == b""   # and closed
    d.wait_for_line(r"web: 3 connections open, the most allowed \(max_connections\)")
    # a closed connection frees its slot
    held.pop().close()
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT) as again:
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            code = read_response(again)[0]
        if code == 200 or time.monotonic() > deadline:
            break
        select.select([], [], [], 0.05)  # the daemon has not seen the close yet: poll again
    assert code == 200
    for sock in held:
        sock.close()
