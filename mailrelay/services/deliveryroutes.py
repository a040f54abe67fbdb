"""
deliveryroutes: where mail for a domain goes, and the SMTP session to get it there.

JOB
    :class:`Router` answers the two questions a delivery connection starts with: which
    hosts to try, in order (:meth:`Router.routes`: the smarthost, or the domain's MX
    hosts and their addresses from :class:`mailrelay.smtp.mx.MXResolver`), and which of
    them gives a usable session (:meth:`Router.connect`: the first that does, trying a
    host again without TLS when opportunistic TLS failed). A failure applies to the whole
    attempt: :class:`mailrelay.services.deliveryattempt.AttemptFailed`, bounced for a
    permanent DNS answer (NXDOMAIN, null MX, no public address), deferred otherwise.
    Owned by :class:`mailrelay.services.delivery.DeliveryService`.

SECURITY
    In direct (MX) mode, MX hosts and address literals are chosen by whoever controls
    the recipient domain or address: unless ``allow_private_destinations`` is set, the
    resolver drops addresses that are not public (:mod:`mailrelay.smtp.destinations`)
    and :mod:`mailrelay.smtp.client` checks the address it connects to once more. The
    smarthost is the operator's choice and is not checked. ``tls = "verify"`` checks
    certificates against the MX name; opportunistic TLS falls back to plain text on a
    TLS failure (as RFC 7435 allows), verify and required never do.

STANDARDS
    RFC 5321 section 5 (MX), RFC 7505 (null MX), RFC 3207 (STARTTLS), RFC 8314
    (implicit TLS to a smarthost), RFC 4954 (AUTH to a smarthost).

DIAGNOSTICS
    None of its own: a failure's detail (``TLS with <host> failed: ...``, ``<host>
    refused the session: ...``, ``connection to <host>[<ip>]:<port> failed: ...``, ``no
    mail host to connect to``, the resolver's messages) becomes the event detail and the
    log line of every job of the attempt.

CONFIGURATION
    ``[delivery]``: nameservers, mx_port, smarthost (+ username, password, tls), tls,
    helo_name (default ``[server] hostname``), bind_address, connect_timeout,
    command_timeout, allow_private_destinations. No Redis data.
"""

from __future__ import annotations

from typing import Any

from mailrelay.config import Config
from mailrelay.services.deliveryattempt import BOUNCED, DEFERRED, AttemptFailed, Route
from mailrelay.smtp import client as smtpclient
from mailrelay.smtp.destinations import DestinationPolicy
from mailrelay.smtp.mx import MXResolver, PermanentDNSError, TemporaryDNSError


class Router:
    """The hosts to try for a domain and the session to the first one that answers."""

    def __init__(self, config: Config, reactor: Any, resolver: MXResolver | None = None) -> None:
        self.settings = config.delivery
        self.reactor = reactor
        self.resolver = resolver
        #: Where direct delivery may connect (the smarthost is not checked).
        self.destinations = DestinationPolicy.from_config(config)
        self.helo_name = self.settings.helo_name or config.hostname

    def start(self) -> None:
        """Make the MX resolver (direct delivery, none given)."""
        if self.resolver is None and self.settings.smarthost is None:
            self.resolver = MXResolver(list(self.settings.nameservers) or None, reactor=self.reactor,
                                       destinations=self.destinations)

    async def close(self) -> None:
        if self.resolver is not None and hasattr(self.resolver, "close"):
            await self.resolver.close()

    async def routes(self, domain: str) -> list[Route]:
        """Where to send mail for ``domain``, in order; raises AttemptFailed."""
        settings = self.settings
        if settings.smarthost is not None:
            host, port = settings.smarthost
            tls = {"none": "none", "starttls": "required", "tls": "implicit"}[settings.smarthost_tls]
            return [Route(host, host, port, tls)]
        try:
            hosts = await self.resolver.resolve(domain)
        except PermanentDNSError as e:
            raise AttemptFailed(BOUNCED, str(e)) from None
        except TemporaryDNSError as e:
            raise AttemptFailed(DEFERRED, str(e)) from None
        return [Route(h.name, address, settings.mx_port, settings.tls)
                for h in hosts for address in h.addresses]

    async def connect(self, routes: list[Route]) -> Any:
        """The first route that gives a usable session; raises AttemptFailed (deferred) if none."""
        settings = self.settings
        auth = None
        if settings.smarthost is not None and settings.smarthost_username:
            auth = (settings.smarthost_username, settings.smarthost_password)
        # The resolver has dropped refused addresses; smtpclient checks the one it connects to.
        destinations = self.destinations if settings.smarthost is None else None
        last: AttemptFailed | None = None
        for route in routes:
            modes = [route.tls] + (["none"] if route.tls == "opportunistic" else [])
            for mode in modes:
                try:
                    session = await smtpclient.connect(
                        route.address, route.port, helo_name=self.helo_name, tls=mode,
                        tls_hostname=route.name, bind_address=settings.bind_address or None,
                        connect_timeout=settings.connect_timeout, command_timeout=settings.command_timeout,
                        auth=auth, reactor=self.reactor, destinations=destinations)
                except smtpclient.TLSFailure as e:
                    last = AttemptFailed(DEFERRED, f"TLS with {route.name} failed: {e}", None, route, route.address)
                    continue  # opportunistic: try the same host without TLS
                except smtpclient.SMTPReplyError as e:
                    last = AttemptFailed(DEFERRED, f"{route.name} refused the session: {e}", e.reply, route, route.address)
                    break
                except smtpclient.SMTPClientError as e:
                    last = AttemptFailed(DEFERRED, f"connection to {route.name}[{route.address}]:{route.port} failed: {e}",
                                   None, route, route.address)
                    break
                session.route = route
                return session
        raise last or AttemptFailed(DEFERRED, "no mail host to connect to")
