"""
Fuzzing the JSON API of a real daemon (hypothesis): every operation of docs/openapi.json under
/api, with random query parameters (declared names and others, values of any bytes, percent-
encoded: lone surrogates' UTF-8 forms, NUL, huge numbers, odd times), random path parameters
and random bodies (any JSON, fields of the right names with values of any type, nesting up to
50,000 deep, any bytes). No answer may be a 5xx, every answer must be one the document lists
for the operation (status, content type, JSON schema), and the daemon must log no traceback.

Quick scale in the suite (MAILRELAY_WEB_FUZZ_EXAMPLES, default 150 requests, a few seconds);
full scale: ``python bench/web_fuzz.py`` (5,000 by default).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_web_api import OPENAPI, Api, check_against_openapi, web_config

EXAMPLES = int(os.environ.get("MAILRELAY_WEB_FUZZ_EXAMPLES", "150"))

#: (method, path template, declared query parameters) of every /api operation.
OPERATIONS = [(method.upper(), path, [p["name"] for p in op.get("parameters", []) if p.get("in") == "query"])
              for path, ops in OPENAPI["paths"].items() if path.startswith("/api") for method, op in ops.items()]

#: Values that have broken parsers before: surrogates, NUL, numbers and times at the edges.
EDGE_VALUES = ["\ud800", "a\udfffb", "\x00", "", " ", "-1", "0", "1" * 5000, "1e999", "NaN", "Infinity",
               "2026-13-45T99:99:99Z", "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59",
               "0000-01-01T00:00:00Z", "2026-11-28T09:15:00.9999999999Z", "====", "AAAA", "MDo=",
               "OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk6YQ",
               "a@b", "@", "x@[127.0.0.1]", "\u00e9@\u00e9.example", "a" * 300 + "@example.org",
               "queued", "HardBounce", "..", "%", "%2F"]


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


raw_values = st.one_of(st.sampled_from(EDGE_VALUES).map(encode), st.text(max_size=40).map(encode),
                       st.binary(max_size=40))


@st.composite
def query_strings(draw: Any, declared: list[str]) -> str:
    names = st.one_of(st.sampled_from(declared).map(str.encode), raw_values) if declared else raw_values
    pairs = draw(st.lists(st.tuples(names, raw_values), max_size=4))
    return "&".join(f"{quote_from_bytes(k, safe='')}={quote_from_bytes(v, safe='')}" for k, v in pairs)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.sampled_from(EDGE_VALUES),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8)


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


bodies = st.one_of(
    st.fixed_dictionaries({}, optional={"address": json_values, "reason": json_values,
                                        "other": json_values}).map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 50_000).map(deep),
    st.integers(1, 50_000).map(lambda n: b'{"address": ' + deep(n) + b"}"),
    st.binary(max_size=200),
)


@st.composite
def requests(draw: Any) -> tuple[str, str, bytes | None]:
    method, template, declared = draw(st.sampled_from(OPERATIONS))
    path = re.sub(r"\{\w+\}", lambda _: quote_from_bytes(draw(raw_values), safe="@") or "x", template)
    query = draw(query_strings(declared))
    body = draw(bodies) if method in ("POST", "DELETE") and draw(st.booleans()) else None
    return method, path + ("?" + query if query else ""), body


def test_fuzz_the_api(start_daemon, daemon_config, redis_server, unique_prefix):
    d = start_daemon(web_config(daemon_config, redis_server, unique_prefix))
    api = Api(d.ports["web"])
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests())
    # the attacks of issue 15 item 7, tried on every run besides the random ones
    @example(("POST", "/api/v1/suppressions", deep(30_000)))
    @example(("POST", "/api/v1/suppressions", b'{"address": "\\ud800@example.org"}'))
    @example(("GET", "/api/v1/messages?recipient=%ED%A0%80&tag=%00", None))
    def one(request: tuple[str, str, bytes | None]) -> None:
        method, target, body = request
        headers = {"Content-Type": "application/json"} if body is not None else {}
        response = api.call(method, target, body, headers=headers, check=False)
        assert response.status < 500, (method, target, body and body[:200], response.status, response.body)
        if response.status == 414:  # a transport limit, before any route: the request line > 16 KiB
            assert len(target) > 16000, (target, response.body)
        else:
            check_against_openapi(method, target.split("?")[0], response)
        seen[response.status] = seen.get(response.status, 0) + 1

    one()
    assert not d.find_lines(r"Traceback|RecursionError|web: \S+ \S+ failed"), d.log_text()
    # the fuzzing reached past the checks, not only the 400s and 404s
    assert seen.get(400) and (seen.get(200) or seen.get(201) or seen.get(204)), seen
