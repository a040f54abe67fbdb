"""
destinations: which network addresses an outbound connection may go to.

JOB
    One rule for every outbound connection to an address that comes from mail
    or from DNS (MX hosts, their A/AAAA records, address literals such as
    ``user@[10.0.0.1]``; later: policy fetches and report POSTs): a hosted
    sender must not be steered into the networks it runs in. :func:`refusal`
    says why an address is not a public one (or ``None`` when it is);
    :class:`DestinationPolicy` applies ``[delivery] allow_private_destinations``
    to it: :meth:`~DestinationPolicy.refusal` and
    :meth:`~DestinationPolicy.check` for IP addresses about to be connected to,
    and :meth:`~DestinationPolicy.reactor` for connections made by name
    (``HostnameEndpoint``, treq): a reactor whose name resolver drops refused
    addresses, so that the address actually connected to is the one checked
    and a name that resolves differently the second time (DNS rebinding)
    gains nothing.

    An address is refused when the standard library's ``ipaddress`` module
    does not call it globally reachable (``is_global`` false: private-use
    RFC 1918 and fc00::/7, loopback, link-local, unspecified, shared address
    space 100.64/10, documentation and benchmarking ranges, reserved, the
    IPv6 prefixes of RFC 6890 that are not global), or it is multicast,
    reserved, IPv6 site-local (fec0::/10), or an IPv4-mapped (::ffff:0:0/96)
    or 6to4 (2002::/16) IPv6 address whose IPv4 address is refused. The
    ranges are the standard library's (its IANA special-purpose registries);
    none is written out here.

SECURITY
    Without this rule anyone who can make the daemon send mail (a sender, or
    a recipient domain's owner through its MX records) can make it connect
    to loopback services or to hosts on its private networks and talk SMTP
    at them (server-side request forgery). The check is made on IP
    addresses, never on names. Connections the operator configured (the
    smarthost, the ``[[webhooks]]`` URLs, Redis, nameservers) are trusted and
    not checked.

STANDARDS
    RFC 6890 (special-purpose address registries), RFC 1918, RFC 4193
    (unique local IPv6), RFC 6598 (shared address space), RFC 4291 2.5.5.2
    (IPv4-mapped), RFC 3056 (6to4), RFC 3463 (X.4.4: unable to route, the
    status a refused destination is reported with).

DIAGNOSTICS
    :func:`refusal` returns a phrase such as ``"127.0.0.1 is a loopback
    address"``; :class:`DestinationRefused` carries it. Addresses the name
    resolver of :meth:`DestinationPolicy.reactor` drops are logged at info
    level.

CONFIGURATION
    ``[delivery] allow_private_destinations`` (default false): true lets mail
    go to such addresses, for a relay inside a private network or for tests.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.interfaces import IHostnameResolver, IReactorPluggableNameResolver, IResolutionReceiver
from twisted.logger import Logger
from zope.interface import directlyProvides, implementer, providedBy

from mailrelay.mail.bounceclassify import PRIVATE_DESTINATIONS_SETTING

log = Logger()

__all__ = ["refusal", "refused_message", "DestinationPolicy", "DestinationRefused", "STATUS", "SETTING"]

#: The enhanced status code (RFC 3463 X.4.4, "unable to route") of a destination refused here.
STATUS = "5.4.4"
#: The setting that allows them, named in refusal messages.
SETTING = PRIVATE_DESTINATIONS_SETTING

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _kind(address: IPAddress) -> str | None:
    """What makes ``address`` non-public, as an adjective phrase; None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped
        if embedded is not None:
            inner = _kind(embedded)
            return f"the IPv4-mapped form of {embedded}, {inner}" if inner else None
        embedded = address.sixtofour
        if embedded is not None:
            inner = _kind(embedded)
            if inner:
                return f"the 6to4 form of {embedded}, {inner}"
        if address.is_site_local:
            return "a site-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "an address that is not globally reachable"
    return None


def refusal(address: str | IPAddress) -> str | None:
    """
    Why a connection to ``address`` (an IPv4 or IPv6 address, optionally in
    brackets) would leave the public Internet, as a phrase (``"10.0.0.1 is a
    private address"``), or None when the address is public. A string that is
    not an IP address is refused too (names must be resolved first).
    """
    if isinstance(address, str):
        text = address.strip()
        try:
            parsed: IPAddress = ipaddress.ip_address(text[1:-1] if text.startswith("[") else text)
        except ValueError:
            return f"{address!r} is not an IP address"
    else:
        parsed = address
    kind = _kind(parsed)
    return f"{parsed} is {kind}" if kind else None


def refused_message(subject: str, what: str, reasons: list[str]) -> str:
    """
    The sentence a bounce and the timeline give when mail is not sent because its only
    destinations are refused: starts with :data:`STATUS` (so that the bounce is classified
    "unable to route", which suppresses nobody), names ``subject`` (the domain or address
    literal), says ``what``, lists the ``reasons`` and the setting.
    """
    return (f"{STATUS} {subject}: not sent: {what} ({'; '.join(reasons)}); delivery to "
            f"private and internal networks is disabled ({SETTING} = false)")


class DestinationRefused(Exception):
    """A connection to an address :class:`DestinationPolicy` does not allow; ``str()`` says why."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(reason)
        self.address = address
        self.reason = reason


class DestinationPolicy:
    """
    ``[delivery] allow_private_destinations`` applied to addresses taken from mail or DNS.

    ``allow_private``: every address is allowed (the opt-in); otherwise only
    public ones (:func:`refusal`).
    """

    def __init__(self, allow_private: bool = False) -> None:
        self.allow_private = allow_private

    @classmethod
    def from_config(cls, config: Any) -> "DestinationPolicy":
        """The policy of a :class:`mailrelay.config.Config`."""
        return cls(allow_private=config.delivery.allow_private_destinations)

    def __repr__(self) -> str:
        return f"DestinationPolicy(allow_private={self.allow_private})"

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` may not be connected to, or None when it may."""
        return None if self.allow_private else refusal(address)

    def check(self, address: str | IPAddress) -> None:
        """Raise :class:`DestinationRefused` unless ``address`` may be connected to."""
        reason = self.refusal(address)
        if reason is not None:
            raise DestinationRefused(str(address), reason)

    def reactor(self, reactor: Any) -> Any:
        """
        ``reactor`` itself when every address is allowed; otherwise a stand-in
        whose ``nameResolver`` passes on only allowed addresses. Give it to
        ``HostnameEndpoint`` or to treq's ``Agent``: they connect only to the
        addresses the resolver reports, IP literals included, so a name that
        resolves to nothing allowed fails like a name that does not resolve.
        """
        if self.allow_private:
            return reactor
        return _ReactorWithResolver(reactor, _FilteringResolver(self, reactor.nameResolver))


@implementer(IResolutionReceiver)
class _FilteringReceiver:
    """Passes on the resolved addresses that the policy allows."""

    def __init__(self, policy: DestinationPolicy, receiver: Any, name: str) -> None:
        self._policy, self._receiver, self._name = policy, receiver, name

    def resolutionBegan(self, resolution: Any) -> None:
        self._receiver.resolutionBegan(resolution)

    def addressResolved(self, address: Any) -> None:
        reason = self._policy.refusal(address.host)
        if reason is None:
            self._receiver.addressResolved(address)
        else:
            log.info("not connecting to {name}: {reason} ({setting} is false)",
                     name=self._name, reason=reason, setting=SETTING)

    def resolutionComplete(self) -> None:
        self._receiver.resolutionComplete()


@implementer(IHostnameResolver)
class _FilteringResolver:
    """An ``IHostnameResolver`` that drops the addresses the policy refuses."""

    def __init__(self, policy: DestinationPolicy, resolver: Any) -> None:
        self._policy, self._resolver = policy, resolver

    def resolveHostName(self, resolutionReceiver: Any, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> Any:
        return self._resolver.resolveHostName(
            _FilteringReceiver(self._policy, resolutionReceiver, hostName), hostName,
            portNumber, addressTypes, transportSemantics)


class _ReactorWithResolver:
    """The reactor, with another ``nameResolver`` (everything else is the reactor's own)."""

    def __init__(self, reactor: Any, resolver: Any) -> None:
        self._reactor = reactor
        self.nameResolver = resolver
        directlyProvides(self, providedBy(reactor), IReactorPluggableNameResolver)

    def installNameResolver(self, resolver: Any) -> Any:
        raise NotImplementedError("the destination policy's reactor has a fixed name resolver")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)
