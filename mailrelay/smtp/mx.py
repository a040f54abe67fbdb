"""
mx: find the hosts that accept mail for a domain, in the order to try them.

JOB
    :meth:`MXResolver.resolve` turns the domain of a recipient address into a
    list of :class:`MailHost` (name, MX preference, IP addresses), best first,
    for the delivery service. It asks ``twisted.names`` for the MX records and
    for the A and AAAA records of each mail exchanger, and does the selection
    itself: ``twisted.mail.relaymanager.MXCalculator`` returns one host only,
    raises ``TypeError`` on two MX records of equal preference and ignores a
    null MX (see the project's notes).

    The rules, from RFC 5321 section 5.1:

    * MX records are sorted by preference; hosts of equal preference are
      shuffled, so that load spreads over them. A host named twice keeps its
      best preference. At most ``max_hosts`` hosts are looked up.
    * The addresses of a host come from the additional section of the MX
      answer when it holds them (per address family), otherwise from A and
      AAAA queries made concurrently, for all hosts at once. With
      ``prefer_ipv4`` (the default) a host's IPv4 addresses come before its
      IPv6 ones.
    * A host that does not exist or has no address is skipped. A host whose
      lookups fail temporarily is skipped too, as long as another host
      resolved; if none did, the result is a temporary error.
    * A domain with no MX record (NOERROR, no data) has an implicit MX: the
      domain itself, preference 0, with its own A/AAAA addresses.
    * An address literal, ``[192.0.2.1]`` or ``[IPv6:2001:db8::1]``, is one
      host with that address; DNS is not asked.
    * With a ``destinations`` policy (:class:`mailrelay.smtp.destinations.DestinationPolicy`),
      addresses it refuses (loopback, private, link-local...) are dropped
      from every host, address literals included; a host left with none is
      skipped. When nothing is left and no lookup failed temporarily, the
      result is :class:`RefusedDestination` (permanent, status 5.4.4).
    * Internationalized domain names are converted with Python's ``idna``
      codec (IDNA 2003), falling back to the UTF-8 octets when that fails;
      names are case-folded and may end with a dot.

    :meth:`MXResolver.lookup_txt` reads TXT records (DKIM keys, SPF policies).

SECURITY
    The answers come from the network and are only as good as the resolver
    that gives them: use a validating resolver you trust. Records in the
    additional section are used only when their owner is the mail exchanger
    itself. Non-public addresses (loopback, private networks...) are dropped
    when a ``destinations`` policy is given (delivery gives one in direct
    mode): the addresses returned are the ones delivery connects to, so the
    check holds whatever the names resolve to later (DNS rebinding).

STANDARDS
    RFC 5321 section 5.1 (locating the target host), RFC 7505 (null MX),
    RFC 1035 (DNS), RFC 3596 (AAAA), RFC 2308 (NXDOMAIN and NODATA),
    RFC 3490 (IDNA 2003, as implemented by Python's ``idna`` codec).

DIAGNOSTICS
    Failures raise :class:`DNSError`, whose message is a sentence for people
    (it ends up in bounces and logs): :class:`PermanentDNSError` (bounce now:
    :class:`NXDomain`, :class:`NullMX`, no address at all,
    :class:`RefusedDestination`: only non-public addresses) or
    :class:`TemporaryDNSError` (SERVFAIL, REFUSED, timeouts, network errors:
    try again later). Skipped hosts are logged through ``twisted.logger``.

CONFIGURATION
    ``[delivery] nameservers``: a list of ``"host:port"`` strings (IP
    addresses; ``"[::1]:53"`` for IPv6; the port defaults to 53), parsed by
    :func:`parse_nameservers`. Empty or absent: the system's nameservers
    from ``/etc/resolv.conf`` (re-read when it changes; ``/etc/hosts`` is not
    consulted, as for Postfix's DNS lookups). Like the C library's resolver,
    a query moves on to the next nameserver after a timeout or an error
    answer (SERVFAIL, REFUSED), which ``twisted.names.client.Resolver`` alone
    does only after a timeout.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Iterable

from twisted.internet import defer
from twisted.internet import error as ierror
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as derror

from mailrelay.smtp.destinations import SETTING, DestinationPolicy, refused_message

log = Logger()

__all__ = [
    "MailHost",
    "DNSError",
    "PermanentDNSError",
    "TemporaryDNSError",
    "NXDomain",
    "NullMX",
    "RefusedDestination",
    "MXResolver",
    "parse_nameservers",
]

#: The system's resolver configuration, used when no nameservers are configured.
RESOLV_CONF = "/etc/resolv.conf"


@dataclass(frozen=True)
class MailHost:
    """
    One host to try: its name (the MX exchange, the domain itself for an
    implicit MX, or the address literal such as ``[192.0.2.1]``), its MX
    preference and its addresses (IPv4 and IPv6 strings, in the order to try).
    """

    name: str
    preference: int
    addresses: tuple[str, ...]


# -- errors --------------------------------------------------------------------


class DNSError(Exception):
    """A failed lookup; ``str(e)`` is a sentence for people, ``e.domain`` the name looked up."""

    def __init__(self, message: str, domain: str = "") -> None:
        super().__init__(message)
        self.domain = domain


class PermanentDNSError(DNSError):
    """The domain cannot receive mail and never will as it stands: bounce at once."""


class NXDomain(PermanentDNSError):
    """The name does not exist (NXDOMAIN)."""


class NullMX(PermanentDNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail."""


class RefusedDestination(PermanentDNSError):
    """
    Every address found is one the destination policy refuses (loopback, private...):
    bounce at once. The message starts with the enhanced status code 5.4.4.
    """


class TemporaryDNSError(DNSError):
    """The answer could not be had now (SERVFAIL, REFUSED, timeout, network): try later."""


# -- configuration -------------------------------------------------------------


def parse_nameservers(values: Iterable[str]) -> list[tuple[str, int]]:
    """
    Parse ``[delivery] nameservers``: ``"192.0.2.53"``, ``"192.0.2.53:5353"``,
    ``"[2001:db8::53]:53"`` or ``"2001:db8::53"`` -> ``[(host, port), ...]``.
    Hosts must be IP addresses (the resolver cannot resolve its own servers).
    Raises ``ValueError`` with a readable message.
    """
    servers = []
    for value in values:
        text = str(value).strip()
        host, port = text, "53"
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or (text[end + 1:] and not text[end + 1:].startswith(":")):
                raise ValueError(f"nameserver {value!r}: expected [IPv6 address]:port")
            host, port = text[1:end], text[end + 2:] or "53"
        elif text.count(":") == 1:
            host, port = text.split(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"nameserver {value!r}: {host!r} is not an IP address") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"nameserver {value!r}: {port!r} is not a port number")
        servers.append((str(address), int(port)))
    return servers


# -- names ---------------------------------------------------------------------


def _domain_to_ascii(domain: str) -> tuple[str, bytes]:
    """(display form, DNS form) of a domain: lowercased, no trailing dot, IDNA-encoded."""
    display = domain.strip().lower()
    if display.endswith("."):
        display = display[:-1]
    if not display:
        raise PermanentDNSError("the domain is empty", domain)
    try:
        qname = display.encode("idna")
    except UnicodeError:
        qname = display.encode("utf-8", "surrogatepass")
    labels = qname.split(b".")
    if len(qname) > 253 or any(not 0 < len(label) <= 63 for label in labels):
        raise PermanentDNSError(f"{display}: not a valid domain name", display)
    return display, qname


def _parse_address_literal(domain: str) -> MailHost:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 4.1.3) -> one MailHost."""
    inner = domain.strip()[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            if "%" in inner:
                raise ValueError
            address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv6Address(inner[5:])
            name = f"[IPv6:{address}]"
        elif ":" in inner:
            raise PermanentDNSError(
                f"{domain}: unsupported address literal (only IPv4 and IPv6: are defined)", domain)
        else:
            address = ipaddress.IPv4Address(inner)
            name = f"[{address}]"
    except ValueError:
        raise PermanentDNSError(f"{domain}: not a valid address literal", domain) from None
    return MailHost(name=name, preference=0, addresses=(str(address),))


def _name(value: Any) -> bytes:
    """The lowercased name of a ``dns.Name`` without trailing dot."""
    return value.name.lower().rstrip(b".")


def _text(name: bytes) -> str:
    return name.decode("ascii", "backslashreplace")


def _address(record: Any) -> str:
    """The address string of a Record_A or Record_AAAA."""
    return str(ipaddress.ip_address(record.address))


_RTYPE_NAMES = {dns.MX: "MX", dns.A: "A", dns.AAAA: "AAAA", dns.TXT: "TXT"}


# -- the resolver --------------------------------------------------------------


class _ClientResolver(client.Resolver):
    """``client.Resolver`` that says when its TCP connections (used after truncation) are gone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._all_lost: list[defer.Deferred[None]] = []
        super().__init__(*args, **kwargs)

    def connectionLost(self, protocol: Any) -> None:
        super().connectionLost(protocol)
        if not self.connections:
            waiting, self._all_lost = self._all_lost, []
            for d in waiting:
                d.callback(None)

    def close(self) -> defer.Deferred[None]:
        call = getattr(self, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()
        if not self.connections:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._all_lost.append(d)
        for protocol in list(self.connections):
            protocol.transport.abortConnection()
        return d


@dataclass
class _HostLookup:
    """What the A/AAAA lookups of one name gave."""

    addresses: tuple[str, ...]
    temporary: list[TemporaryDNSError]
    permanent: list[PermanentDNSError]


class MXResolver:
    """
    Resolves mail domains to :class:`MailHost` lists (see the module documentation).

    ``nameservers``: ``[(ip, port), ...]`` to ask, in order; ``None`` or empty:
    the system's (``/etc/resolv.conf``). ``timeout``: one round of tries per
    element, each nameserver in turn waiting that many seconds; a server that
    times out or answers SERVFAIL/REFUSED passes the query to the next one, so
    a query gives up after ``len(nameservers) * sum(timeout)`` seconds at most.
    ``prefer_ipv4``: a host's IPv4 addresses first. ``max_hosts``: MX hosts
    looked up at most. ``rng``: the ``random.Random`` that shuffles hosts of
    equal preference. ``destinations``: the policy whose refused addresses are
    dropped (``None``: none are). Call :meth:`close` when done (it cancels the periodic
    re-reading of resolv.conf and closes TCP connections to nameservers).
    """

    def __init__(
        self,
        nameservers: list[tuple[str, int]] | None = None,
        timeout: tuple[int, ...] = (2, 4),
        reactor: Any = None,
        *,
        prefer_ipv4: bool = True,
        max_hosts: int = 10,
        rng: random.Random | None = None,
        destinations: DestinationPolicy | None = None,
    ) -> None:
        if not timeout:
            raise ValueError("timeout must have at least one element")
        self.nameservers = [(str(h), int(p)) for h, p in nameservers] if nameservers else []
        self.timeout = tuple(timeout)
        self.prefer_ipv4 = prefer_ipv4
        self.max_hosts = max_hosts
        self.destinations = destinations
        self._random = rng if rng is not None else random.Random()
        self._reactor = reactor
        # One client.Resolver per nameserver: client.Resolver moves on to the next server only
        # on a timeout, not on SERVFAIL or REFUSED, so we do the rotation ourselves (_ask).
        self._per_server: dict[tuple[str, int], _ClientResolver] = {}
        # Without configured servers, this one only reads (and re-reads) resolv.conf.
        self._system = None if self.nameservers else _ClientResolver(
            resolv=RESOLV_CONF, timeout=self.timeout, reactor=reactor)

    def close(self) -> defer.Deferred[None]:
        """Stop background work and close nameserver connections; fires when done."""
        resolvers = list(self._per_server.values()) + ([self._system] if self._system else [])
        self._per_server = {}
        return defer.gatherResults([r.close() for r in resolvers]).addCallback(lambda _: None)

    def _servers(self) -> list[tuple[str, int]]:
        if self.nameservers:
            return self.nameservers
        assert self._system is not None
        return list(self._system.dynServers)

    def _resolver_for(self, server: tuple[str, int]) -> _ClientResolver:
        resolver = self._per_server.get(server)
        if resolver is None:
            resolver = _ClientResolver(servers=[server], timeout=self.timeout, reactor=self._reactor)
            self._per_server[server] = resolver
        return resolver

    # -- public API

    async def resolve(self, domain: str) -> list[MailHost]:
        """The hosts to try for ``domain``, best first. Raises :class:`DNSError`."""
        if domain.strip().startswith("[") and domain.strip().endswith("]"):
            host = _parse_address_literal(domain)
            reason = self._refusal(host.addresses[0])
            if reason is not None:
                raise RefusedDestination(refused_message(
                    host.name, "the address literal is not a public address", [reason]), host.name)
            return [host]
        display, qname = _domain_to_ascii(domain)

        answers, _authority, additional = await self._ask(
            "lookupMailExchange", qname, dns.MX, display)
        records = [rr.payload for rr in answers if rr.type == dns.MX]

        if not records:
            # RFC 5321 5.1: no MX at all -> the domain itself is the implicit MX.
            found = await self._lookup_host(qname, {})
            allowed, refused = self._allowed(found.addresses, _text(qname), display)
            if allowed:
                return [MailHost(_text(qname), 0, allowed)]
            if refused and not found.temporary:
                raise RefusedDestination(refused_message(
                    display, "it has no MX record and its own addresses are not public",
                    [f"{_text(qname)}[{a}]: {r}" for a, r in refused]), display)
            if found.temporary:
                raise TemporaryDNSError(
                    f"{display}: has no MX record, and looking up its address failed: "
                    f"{found.temporary[0]}", display)
            if any(isinstance(e, NXDomain) for e in found.permanent):
                raise NXDomain(f"{display}: domain does not exist (NXDOMAIN)", display)
            raise PermanentDNSError(
                f"{display}: domain has no MX record and no A/AAAA address: it cannot receive mail",
                display)

        # Best preference per exchange; "." is the null MX (RFC 7505).
        best: dict[bytes, int] = {}
        null_mx = False
        for record in records:
            exchange = _name(record.name)
            if not exchange:
                null_mx = True
                continue
            if exchange not in best or record.preference < best[exchange]:
                best[exchange] = record.preference
        if not best:
            raise NullMX(f"{display} publishes a null MX (RFC 7505): it accepts no mail", display)
        if null_mx:
            log.warn("{domain} publishes a null MX together with other MX records (RFC 7505 forbids it); "
                     "using the others", domain=display)

        # Shuffle, then a stable sort by preference: equal preferences end up in random order.
        # (Sort by key: Record_MX objects themselves do not compare, see the notes.)
        exchanges = list(best.items())
        self._random.shuffle(exchanges)
        exchanges.sort(key=lambda item: item[1])
        if len(exchanges) > self.max_hosts:
            log.warn("{domain} has {n} MX hosts; trying the first {max} only",
                     domain=display, n=len(exchanges), max=self.max_hosts)
            exchanges = exchanges[:self.max_hosts]

        glue = self._glue(additional)
        lookups = await self._gather([self._lookup_host(name, glue.get(name, {})) for name, _ in exchanges])

        hosts: list[MailHost] = []
        failures: list[str] = []
        refused_any = False
        temporary = False
        for (name, preference), found in zip(exchanges, lookups):
            allowed, refused = self._allowed(found.addresses, _text(name), display)
            if allowed:
                hosts.append(MailHost(_text(name), preference, allowed))
                if found.temporary:
                    log.info("{host} (MX of {domain}): using its addresses {addresses}, "
                             "though {error}", host=_text(name), domain=display,
                             addresses=found.addresses, error=str(found.temporary[0]))
                continue
            if found.temporary:
                temporary = True
                reason = str(found.temporary[0])
            elif refused:
                reason = "; ".join(f"{_text(name)}[{a}]: {r}" for a, r in refused)
                refused_any = True
            elif found.permanent:
                reason = str(found.permanent[0])
            else:
                reason = f"{_text(name)}: has no A/AAAA address"
            failures.append(reason)
            log.info("skipping MX host {host} of {domain}: {reason}",
                     host=_text(name), domain=display, reason=reason)

        if hosts:
            return hosts
        summary = "; ".join(failures)
        if temporary:
            raise TemporaryDNSError(
                f"{display}: none of its mail exchangers could be resolved now ({summary})", display)
        if refused_any:
            raise RefusedDestination(refused_message(
                display, "none of its mail exchangers has a public address", failures), display)
        raise PermanentDNSError(
            f"{display}: none of its mail exchangers has an address ({summary})", display)

    async def lookup_txt(self, name: str) -> list[str]:
        """
        The TXT records of ``name``, each one's strings joined (RFC 7208 3.3,
        RFC 6376 3.6.2.2) and decoded as UTF-8; ``[]`` when the name exists but
        has none. Raises :class:`NXDomain` when the name does not exist,
        :class:`TemporaryDNSError` when there is no answer now.
        """
        display, qname = _domain_to_ascii(name)
        answers, _authority, _additional = await self._ask(
            "lookupText", qname, dns.TXT, display)
        return [b"".join(rr.payload.data).decode("utf-8", "replace")
                for rr in answers if rr.type == dns.TXT]

    # -- internals

    def _refusal(self, address: str) -> str | None:
        return self.destinations.refusal(address) if self.destinations is not None else None

    def _allowed(self, addresses: tuple[str, ...], host: str, domain: str
                 ) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
        """(addresses the policy allows, [(address, why refused), ...]); refusals are logged."""
        allowed: list[str] = []
        refused: list[tuple[str, str]] = []
        for address in addresses:
            reason = self._refusal(address)
            if reason is None:
                allowed.append(address)
            else:
                refused.append((address, reason))
                log.info("not using {host}[{address}] (mail host of {domain}): {reason} "
                         "({setting} is false)", host=host, address=address, domain=domain,
                         reason=reason, setting=SETTING)
        return tuple(allowed), refused

    async def _ask(self, method: str, qname: bytes, rtype: int, display: str) -> Any:
        """
        One lookup (``method`` of ``client.Resolver``), like resolv.conf's resolver: each
        element of ``timeout`` is a round in which every nameserver is tried in turn, moving
        on after a timeout or an error answer (SERVFAIL, REFUSED...); an answer or NXDOMAIN
        ends it. Returns (answers, authority, additional); raises :class:`DNSError`.
        """
        last: TemporaryDNSError | None = None
        for seconds in self.timeout:
            for server in self._servers():
                try:
                    return await self._query(
                        getattr(self._resolver_for(server), method), qname, rtype, display, seconds)
                except TemporaryDNSError as e:
                    log.debug("{server}: {error}", server=server, error=str(e))
                    last = e
        if last is None:
            raise TemporaryDNSError(f"{display}: no DNS server to ask", display)
        raise last

    async def _query(self, method: Callable[..., Any], qname: bytes, rtype: int, display: str,
                     seconds: int) -> Any:
        """One try; translate ``twisted.names`` failures into :class:`DNSError`."""
        what = _RTYPE_NAMES.get(rtype, str(rtype))
        try:
            return await method(qname, timeout=(seconds,))
        except derror.DNSNameError:
            raise NXDomain(f"{display}: domain does not exist (NXDOMAIN)", display) from None
        except derror.DNSServerError:
            problem = "the DNS server failed (SERVFAIL)"
        except derror.DNSQueryRefusedError:
            problem = "the DNS server refused the query (REFUSED)"
        except derror.DNSFormatError:
            problem = "the DNS server could not parse the query (FORMERR)"
        except derror.DNSNotImplementedError:
            problem = "the DNS server does not implement the query (NOTIMP)"
        except derror.DNSUnknownError as e:
            code = getattr(e.args[0], "rCode", "?") if e.args else "?"
            problem = f"the DNS server answered with error code {code}"
        except (defer.TimeoutError, derror.DNSQueryTimeoutError):
            problem = "no answer from the DNS server (timeout)"
        except (OSError, ierror.ConnectError, ierror.ConnectionClosed, ierror.CannotListenError) as e:
            problem = f"network error talking to the DNS server ({e.__class__.__name__}: {e})"
        raise TemporaryDNSError(f"{display}: {what} lookup failed: {problem}", display)

    def _glue(self, additional: list[Any]) -> dict[bytes, dict[int, list[str]]]:
        """Addresses in the additional section, by owner name and type."""
        glue: dict[bytes, dict[int, list[str]]] = {}
        for rr in additional:
            if rr.type in (dns.A, dns.AAAA):
                glue.setdefault(_name(rr.name), {}).setdefault(rr.type, []).append(_address(rr.payload))
        return glue

    async def _lookup_host(self, qname: bytes, known: dict[int, list[str]]) -> _HostLookup:
        """A and AAAA of one name, concurrently, except for families already ``known``."""
        display = _text(qname)
        families: dict[int, list[str]] = {}
        queries = []
        for rtype, method in ((dns.A, "lookupAddress"), (dns.AAAA, "lookupIPV6Address")):
            if known.get(rtype):
                families[rtype] = known[rtype]
            else:
                queries.append((rtype, self._ask(method, qname, rtype, display)))
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(coro) for _, coro in queries], consumeErrors=True)

        temporary: list[TemporaryDNSError] = []
        permanent: list[PermanentDNSError] = []
        for (rtype, _), (ok, result) in zip(queries, results):
            if ok:
                answers = result[0]
                families[rtype] = [_address(rr.payload) for rr in answers if rr.type == rtype]
            elif result.check(TemporaryDNSError):
                temporary.append(result.value)
            elif result.check(PermanentDNSError):
                permanent.append(result.value)
            else:
                result.raiseException()

        v4, v6 = families.get(dns.A, []), families.get(dns.AAAA, [])
        ordered = v4 + v6 if self.prefer_ipv4 else v6 + v4
        return _HostLookup(tuple(dict.fromkeys(ordered)), temporary, permanent)

    @staticmethod
    async def _gather(coros: list[Coroutine[Any, Any, _HostLookup]]) -> list[_HostLookup]:
        """Run the coroutines concurrently; the first exception (a bug) propagates."""
        try:
            results = await defer.gatherResults(
                [defer.Deferred.fromCoroutine(c) for c in coros], consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()
        return list(results)
