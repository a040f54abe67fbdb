"""
clientkey: the key a client's failures are counted under, for every throttle.

JOB
    Maps a peer address to the key the AUTH throttle (SMTP, counted in Redis) and the web
    listener's throttle count failures under: an IPv4 address as it is, an IPv4-mapped
    IPv6 address as its IPv4 address, any other IPv6 address as its /64 (one subscriber's
    network: counting single IPv6 addresses would limit nobody), anything else (a UNIX
    socket's path) as its text, and no address as ``local``.

SECURITY
    The address is the TCP peer's, never a header's: nothing the client sends chooses
    the key. Whoever holds a /64 shares one count.

STANDARDS
    RFC 4291 (IPv6 addressing: IPv4-mapped addresses), RFC 6177 (/64 per subscriber
    network as the smallest assignment).

DIAGNOSTICS
    None.

CONFIGURATION
    None.
"""

from __future__ import annotations

import ipaddress


def client_key(host: str | None) -> str:
    """The throttle's key of a peer address: an IPv4 address, an IPv6 /64, or the text itself."""
    if not host:
        return "local"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # a UNIX socket's path, for instance
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
