"""
A local authoritative DNS server for the tests: ``twisted.names`` on 127.0.0.1, UDP and TCP on
the same free port, records held in memory and changeable at runtime.

In the test's reactor (trial TestCase)::

    server = LocalDNS({
        "example.test": {"MX": [(10, "mx1.example.test"), (20, "mx2.example.test")]},
        "mx1.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
        "nullmx.test": {"MX": [(0, ".")]},
        "sel._domainkey.example.test": {"TXT": ["v=DKIM1; k=rsa; p=MIIB..."]},
        "broken.test": {"SERVFAIL": True},
    })
    host, port = server.start()               # ("127.0.0.1", 40123); also server.host, server.port
    self.addCleanup(server.stop)              # stop() -> Deferred
    server.update("sel._domainkey.example.test", "TXT", ["v=DKIM1; k=rsa; p=NEW..."])

From another process (a daemon under test, plain pytest code)::

    python tests/dnsserver.py --zones zones.json [--port-file PATH] [--port N] [--interface IP]

prints ``ready <port>`` on stdout once it answers on UDP and TCP (and writes the port to
``--port-file``, atomically), re-reads the zones file on SIGHUP and prints ``reloaded <n>``
(n counts the reloads), and runs until SIGTERM/SIGINT. :class:`StandaloneDNS` wraps this for
synchronous code: ``start() -> (host, port)``, ``update(name, rtype, values)``, ``stop()``.
:func:`query` sends one query synchronously (stdlib sockets, no reactor).

Zones
-----
A mapping of owner names (any case, trailing dot optional, Unicode names IDNA-encoded) to
``{rtype: values}``. Record types and their values (a single value may stand for a list of one):

``A``, ``AAAA``      address strings
``MX``               ``(preference, exchange)`` pairs; exchange ``"."`` is the null MX (RFC 7505)
``TXT``              records, each a string (one longer than 255 octets is split into
                     255-octet character-strings, as a DKIM key must be) or a list of
                     character-strings: ``["v=spf1 -all", ["part one ", "part two"]]``
``CNAME``, ``NS``, ``PTR``   target names
``SRV``              ``(priority, weight, port, target)``
``TTL``              the TTL of the name's records (default 60)

Behaviours, each ``True`` (every query type) or a list of types (e.g. ``["AAAA"]``):
``SERVFAIL`` answers SERVFAIL, ``REFUSED`` answers REFUSED, ``TIMEOUT`` never answers.

A name in no mapping key answers NXDOMAIN, unless it is an ancestor of one (an empty
non-terminal), which answers NOERROR without records (NODATA), as does a name without records
of the asked type. A CNAME is followed within the server's data. Answers to MX, NS and SRV
queries carry the targets' A/AAAA records in the additional section, unless
``server.additional`` is false. With ``server.truncate_udp`` every UDP answer is empty and
truncated (TC), so that clients retry over TCP. ``server.queries`` lists the ``(name, type)``
of every query received, e.g. ``("mx1.example.test", "AAAA")``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterable, Mapping

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.names import dns, server

__all__ = ["LocalDNS", "StandaloneDNS", "query"]

DEFAULT_TTL = 60
BEHAVIOURS = ("SERVFAIL", "REFUSED", "TIMEOUT")
_TYPES = {
    "A": dns.A, "AAAA": dns.AAAA, "MX": dns.MX, "TXT": dns.TXT, "CNAME": dns.CNAME,
    "NS": dns.NS, "PTR": dns.PTR, "SRV": dns.SRV,
}
_TYPE_NAMES = {v: k for k, v in _TYPES.items()}
_ADDITIONAL_FOR = (dns.MX, dns.NS, dns.SRV)


def _ascii(name: str | bytes) -> bytes:
    """A name as the server keys it: lowercased, no trailing dot, IDNA (UTF-8 if that fails)."""
    if isinstance(name, bytes):
        return name.lower().rstrip(b".")
    name = name.strip().lower().rstrip(".")
    try:
        return name.encode("idna")
    except UnicodeError:
        return name.encode("utf-8")


def _type_name(qtype: int) -> str:
    return _TYPE_NAMES.get(qtype) or dns.QUERY_TYPES.get(qtype) or str(qtype)


def _as_list(values: Any) -> list[Any]:
    if values is None:
        return []
    if isinstance(values, (str, bytes, int)):
        return [values]
    if isinstance(values, (list, tuple)) and values and not isinstance(values[0], (list, tuple)) \
            and len(values) in (2, 4) and isinstance(values[0], int):
        return [tuple(values)]            # one MX (pref, name) or SRV (p, w, port, target)
    return list(values)


def _txt_strings(value: str | bytes | list | tuple) -> list[bytes]:
    if isinstance(value, (list, tuple)):
        return [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]


def _payloads(rtype: str, values: Any) -> list[Any]:
    """Record payloads for ``rtype``; raises ValueError on a value that does not fit."""
    out = []
    for v in _as_list(values):
        try:
            if rtype == "A":
                out.append(dns.Record_A(str(v)))
            elif rtype == "AAAA":
                out.append(dns.Record_AAAA(str(v)))
            elif rtype == "MX":
                preference, exchange = v
                out.append(dns.Record_MX(int(preference), _ascii(exchange)))
            elif rtype == "TXT":
                out.append(dns.Record_TXT(*_txt_strings(v)))
            elif rtype == "CNAME":
                out.append(dns.Record_CNAME(_ascii(v)))
            elif rtype == "NS":
                out.append(dns.Record_NS(_ascii(v)))
            elif rtype == "PTR":
                out.append(dns.Record_PTR(_ascii(v)))
            elif rtype == "SRV":
                priority, weight, port, target = v
                out.append(dns.Record_SRV(int(priority), int(weight), int(port), _ascii(target)))
            else:
                raise ValueError(f"unsupported record type {rtype!r} (supported: {', '.join(_TYPES)})")
        except (TypeError, OSError, ValueError) as e:
            raise ValueError(f"bad {rtype} value {v!r}: {e}") from None
    return out


class _Node:
    """The data of one owner name."""

    def __init__(self) -> None:
        self.records: dict[int, list[Any]] = {}
        self.behaviours: dict[str, frozenset[int] | None] = {}   # None: every type
        self.ttl = DEFAULT_TTL

    def set(self, rtype: str, values: Any) -> None:
        rtype = rtype.upper()
        if rtype == "TTL":
            self.ttl = DEFAULT_TTL if values is None else int(values)
        elif rtype in BEHAVIOURS:
            if values is True:
                self.behaviours[rtype] = None
            elif not values:
                self.behaviours.pop(rtype, None)
            else:
                types = [t.upper() for t in _as_list(values)]
                unknown = [t for t in types if t not in _TYPES and t != "ANY"]
                if unknown:
                    raise ValueError(f"{rtype}: unknown record types {unknown}")
                self.behaviours[rtype] = frozenset(_TYPES.get(t, dns.ALL_RECORDS) for t in types)
        elif rtype in _TYPES:
            payloads = _payloads(rtype, values)
            if payloads:
                self.records[_TYPES[rtype]] = payloads
            else:
                self.records.pop(_TYPES[rtype], None)
        else:
            raise ValueError(f"unsupported record type {rtype!r} (supported: "
                             f"{', '.join([*_TYPES, 'TTL', *BEHAVIOURS])})")

    def behaviour(self, qtype: int) -> str | None:
        for name in BEHAVIOURS:
            if name in self.behaviours:
                types = self.behaviours[name]
                if types is None or qtype in types or dns.ALL_RECORDS in types:
                    return name
        return None


class _Answer:
    """What to reply: an rcode and sections, or nothing at all (``drop``)."""

    def __init__(self, rcode: int = dns.OK, answers=(), additional=(), drop: bool = False) -> None:
        self.rcode = rcode
        self.answers = list(answers)
        self.additional = list(additional)
        self.drop = drop


class _ServerFactory(server.DNSServerFactory):
    """Answers every query from the owner's data; keeps track of TCP connections."""

    def __init__(self, owner: "LocalDNS") -> None:
        super().__init__()
        self.owner = owner
        self._all_closed: list[defer.Deferred[None]] = []

    def handleQuery(self, message: dns.Message, protocol: Any, address: Any) -> None:
        q = message.queries[0]
        self.owner.queries.append((q.name.name.decode("ascii", "backslashreplace").rstrip("."),
                                   _type_name(q.type)))
        if address is not None and self.owner.truncate_udp:
            response = self._responseFromMessage(message=message)
            response.trunc = 1
            response.auth = True
            self.sendReply(protocol, response, address)
            return
        answer = self.owner.answer(q.name.name, q.type)
        if answer.drop:
            return
        response = self._responseFromMessage(message=message, rCode=answer.rcode,
                                             answers=answer.answers, additional=answer.additional)
        response.auth = answer.rcode in (dns.OK, dns.ENAME)
        self.sendReply(protocol, response, address)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        if not self.connections:
            waiting, self._all_closed = self._all_closed, []
            for d in waiting:
                d.callback(None)

    def close_connections(self) -> defer.Deferred[None]:
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._all_closed.append(d)
        for protocol in list(self.connections):
            protocol.transport.abortConnection()
        return d


class LocalDNS:
    """
    An in-process authoritative DNS server (see the module documentation).

    ``zones``: the initial records; ``interface``: the address to listen on; ``port``: 0 for a
    free one (the same number for UDP and TCP); ``reactor``: the global one by default.
    Attributes: ``host``, ``port`` (after :meth:`start`), ``queries``, ``additional``,
    ``truncate_udp``.
    """

    def __init__(self, zones: Mapping[str, Mapping[str, Any]] | None = None, *,
                 interface: str = "127.0.0.1", port: int = 0, reactor: Any = None) -> None:
        self.host = interface
        self.port = port
        self.queries: list[tuple[str, str]] = []
        self.additional = True
        self.truncate_udp = False
        self._reactor = reactor
        self._lock = threading.Lock()
        self._nodes: dict[bytes, _Node] = {}
        self._factory = _ServerFactory(self)
        self._udp: Any = None
        self._tcp: Any = None
        self.set_zones(zones or {})

    # -- data

    def set_zones(self, zones: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace all the data (validated first: on ValueError nothing changes)."""
        nodes: dict[bytes, _Node] = {}
        for name, records in zones.items():
            node = nodes.setdefault(_ascii(name), _Node())
            for rtype, values in records.items():
                node.set(rtype, values)
        with self._lock:
            self._nodes = nodes

    def update(self, name: str, rtype: str, values: Any) -> None:
        """Set the ``rtype`` records (or TTL/behaviour) of ``name``; ``None`` or ``[]`` removes them."""
        key = _ascii(name)
        with self._lock:
            node = self._nodes.get(key) or _Node()
            node.set(rtype, values)            # raises before anything is stored
            self._nodes[key] = node

    def remove(self, name: str) -> None:
        """Forget ``name``: it answers NXDOMAIN again (unless it has descendants)."""
        with self._lock:
            self._nodes.pop(_ascii(name), None)

    def answer(self, qname: bytes, qtype: int) -> _Answer:
        """The reply to a query, from the current data."""
        key = _ascii(qname)
        with self._lock:
            node = self._nodes.get(key)
            if node is None:
                suffix = b"." + key
                if any(k.endswith(suffix) for k in self._nodes) or not key:
                    return _Answer()                                   # empty non-terminal
                return _Answer(dns.ENAME)
            behaviour = node.behaviour(qtype)
            if behaviour == "TIMEOUT":
                return _Answer(drop=True)
            if behaviour is not None:
                return _Answer(dns.ESERVER if behaviour == "SERVFAIL" else dns.EREFUSED)

            answers: list[dns.RRHeader] = []
            owner, seen = key, set()
            while node is not None and owner not in seen:
                seen.add(owner)
                types = list(node.records) if qtype == dns.ALL_RECORDS else [qtype]
                found = [(t, p) for t in types for p in node.records.get(t, ())]
                if found or qtype == dns.CNAME or dns.CNAME not in node.records:
                    answers += [dns.RRHeader(owner, t, dns.IN, node.ttl, p, auth=True) for t, p in found]
                    break
                cname = node.records[dns.CNAME][0]
                answers.append(dns.RRHeader(owner, dns.CNAME, dns.IN, node.ttl, cname, auth=True))
                owner = _ascii(cname.name.name)
                node = self._nodes.get(owner)

            additional = []
            if self.additional:
                for rr in answers:
                    if rr.type in _ADDITIONAL_FOR:
                        target = _ascii(rr.payload.name.name if rr.type != dns.SRV else rr.payload.target.name)
                        tnode = self._nodes.get(target)
                        for t in (dns.A, dns.AAAA):
                            for p in tnode.records.get(t, ()) if tnode else ():
                                additional.append(dns.RRHeader(target, t, dns.IN, tnode.ttl, p, auth=True))
            return _Answer(dns.OK, answers, additional)

    # -- network

    def start(self) -> tuple[str, int]:
        """Listen on UDP and TCP, same port; returns ``(host, port)``."""
        if self._udp is not None:
            raise RuntimeError("already started")
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        for _attempt in range(100):
            udp = reactor.listenUDP(self.port, dns.DNSDatagramProtocol(self._factory), interface=self.host)
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self._factory, interface=self.host)
            except CannotListenError:
                udp.stopListening()
                if self.port:
                    raise
                continue
            self._udp, self._tcp, self.port = udp, tcp, port
            return self.host, port
        raise RuntimeError("no free port for both UDP and TCP")

    def stop(self) -> defer.Deferred[None]:
        """Stop listening and close TCP connections; fires when all is closed."""
        udp, tcp, self._udp, self._tcp = self._udp, self._tcp, None, None
        waits = [self._factory.close_connections()]
        for port in (udp, tcp):
            if port is not None:
                waits.append(defer.maybeDeferred(port.stopListening))
        return defer.gatherResults(waits).addCallback(lambda _: None)


# -- synchronous helpers (plain pytest code, other processes) -------------------------------------


def query(host: str, port: int, name: str, rtype: str = "A", *, tcp: bool = False,
          timeout: float = 5.0) -> dns.Message:
    """Send one query to ``host:port`` (UDP, or TCP) and return the parsed reply."""
    qtype = _TYPES.get(rtype.upper()) or getattr(dns, rtype.upper())
    request = dns.Message(id=random.randrange(1 << 16), recDes=1)
    request.queries = [dns.Query(_ascii(name), qtype, dns.IN)]
    data = request.toStr()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if tcp:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(data)) + data)
            buf = b""
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                chunk = s.recv(65535)
                if not chunk:
                    raise ConnectionError("connection closed before the reply")
                buf += chunk
            raw = buf[2:]
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(data, (host, port))
            raw, _ = s.recvfrom(65535)
    reply = dns.Message()
    reply.fromStr(raw)
    return reply


class StandaloneDNS:
    """
    ``python tests/dnsserver.py`` as a child process, driven synchronously::

        dns_server = StandaloneDNS(zones, tmp_path)
        host, port = dns_server.start()
        dns_server.update("example.test", "MX", [(10, "mx.example.test")])   # waits for the reload
        dns_server.stop()
    """

    def __init__(self, zones: Mapping[str, Mapping[str, Any]], directory: str | os.PathLike[str],
                 *, interface: str = "127.0.0.1", startup_timeout: float = 30.0) -> None:
        self.zones: dict[str, dict[str, Any]] = {k: dict(v) for k, v in zones.items()}
        self.directory = os.fspath(directory)
        self.zones_file = os.path.join(self.directory, "dns-zones.json")
        self.port_file = os.path.join(self.directory, "dns-port")
        self.interface = interface
        self.timeout = startup_timeout
        self.host = interface
        self.port = 0
        self.log_file = os.path.join(self.directory, "dns-server.log")
        self.process: subprocess.Popen[bytes] | None = None
        self._reloads = 0
        self._buffer = b""

    def _write_zones(self) -> None:
        tmp = self.zones_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.zones, f, indent=1)
        os.replace(tmp, self.zones_file)

    def _read_line(self, prefix: str) -> str:
        """The next line of the server's stdout that starts with ``prefix`` (others are skipped)."""
        assert self.process is not None and self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode("utf-8", "replace").strip()
                if text.startswith(prefix):
                    return text
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([fd], [], [], max(remaining, 0))
            if not readable:
                raise TimeoutError(f"dnsserver: no {prefix!r} line within {self.timeout}s; "
                                   f"see {self.log_file}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"dnsserver exited with status {self.process.wait()}; "
                                   f"see {self.log_file}")
            self._buffer += chunk

    def start(self) -> tuple[str, int]:
        self._write_zones()
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--zones", self.zones_file,
                 "--port-file", self.port_file, "--interface", self.interface],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
        try:
            self.port = int(self._read_line("ready ").split()[1])
        except BaseException:
            self.stop()
            raise
        return self.host, self.port

    def update(self, name: str, rtype: str, values: Any) -> None:
        """Change records in the running server (rewrites the zones file, SIGHUP, waits)."""
        _Node().set(rtype, values)             # ValueError here, before anything changes
        self.zones.setdefault(name, {})[rtype] = values
        self.reload()

    def reload(self) -> None:
        """Send ``self.zones`` to the running server and wait until it uses them."""
        assert self.process is not None
        self._write_zones()
        self._reloads += 1
        self.process.send_signal(signal.SIGHUP)
        while True:
            line = self._read_line("reload")
            if line == f"reloaded {self._reloads}":
                return
            if line.startswith("reload failed"):
                raise ValueError(line)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        self._buffer = b""


# -- standalone mode --------------------------------------------------------------------------


def _load(path: str) -> dict[str, dict[str, Any]]:
    with open(path) as f:
        zones = json.load(f)
    if not isinstance(zones, dict) or not all(isinstance(v, dict) for v in zones.values()):
        raise ValueError(f"{path}: expected {{name: {{type: values}}}}")
    return zones


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local authoritative DNS server for tests.")
    parser.add_argument("--zones", required=True, help="JSON file: {name: {type: values}}")
    parser.add_argument("--port-file", help="write the port number here once listening")
    parser.add_argument("--port", type=int, default=0, help="port (UDP and TCP); default: a free one")
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(list(argv) if argv is not None else None)

    from twisted.internet import reactor

    server_ = LocalDNS(_load(args.zones), interface=args.interface, port=args.port)
    host, port = server_.start()
    if args.port_file:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.port_file)))
        with os.fdopen(fd, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    reloads = 0

    def reload() -> None:
        nonlocal reloads
        reloads += 1
        try:
            server_.set_zones(_load(args.zones))
        except (OSError, ValueError) as e:
            print(f"reload failed {reloads}: {e}", flush=True)
        else:
            print(f"reloaded {reloads}", flush=True)

    signal.signal(signal.SIGHUP, lambda signum, frame: reactor.callFromThread(reload))
    print(f"ready {port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
