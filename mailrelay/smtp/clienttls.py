"""
clienttls: the TLS options of the outbound SMTP client: verifying, or not but with SNI.

JOB
    :func:`client_tls_options` builds the client connection creator for a
    server name: with ``verify``, Twisted's ``optionsForClientTLS`` against
    a trust root (the platform's, an ``IOpenSSLTrustRoot``, or a PEM CA file);
    without, one shared ``CertificateOptions`` context that accepts any
    certificate but still sends SNI (the "opportunistic" and "required"
    policies of :func:`mailrelay.smtp.client.connect`).

SECURITY
    An unverified connection authenticates nobody: it protects against
    passive eavesdropping only, which is what opportunistic SMTP TLS is
    (RFC 7435). Verification is service-identity's (RFC 6125: the
    certificate must name the host). SNI is sent for names, never for IP
    address literals; a name that cannot be IDNA-encoded gets no SNI.

STANDARDS
    RFC 6066 (SNI), RFC 6125 via service-identity (certificate names), RFC
    7435 (opportunistic security), RFC 3207 and RFC 8314 (where the options
    are used).

DIAGNOSTICS
    None here: handshake and certificate failures are reported by
    :mod:`mailrelay.smtp.clientprotocol` as ``TLSFailure``.

CONFIGURATION
    None: the policy, ``tls_hostname`` and ``trust_root`` are arguments of
    :func:`mailrelay.smtp.client.connect`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer


def ip_version(host: str) -> int:
    """4 or 6 for an IP address literal, 0 for a name."""
    try:
        return ipaddress.ip_address(host.strip("[]")).version
    except ValueError:
        return 0


# -- TLS options --------------------------------------------------------------------------


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """TLS that accepts any certificate but still sends SNI (opportunistic/required)."""

    _shared_options: Any = None

    def __init__(self, server_name: str | None) -> None:
        from twisted.internet.ssl import CertificateOptions

        if _UnverifiedClientTLS._shared_options is None:  # one SSL context for all of them
            _UnverifiedClientTLS._shared_options = CertificateOptions()
        self._options = _UnverifiedClientTLS._shared_options
        self._sni: bytes | None = None
        if server_name and not ip_version(server_name):
            try:
                self._sni = server_name.rstrip(".").encode("idna")
            except UnicodeError:
                self._sni = None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._sni:
            connection.set_tlsext_host_name(self._sni)
        return connection


def _trust_root(trust_root: Any) -> Any:
    """``trust_root`` as an IOpenSSLTrustRoot: as given, from a PEM file, or platform trust."""
    from twisted.internet import ssl

    if trust_root is None:
        return ssl.platformTrust()
    if isinstance(trust_root, (str, Path)):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        data = Path(trust_root).read_bytes()
        certs = [ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
                 for c in x509.load_pem_x509_certificates(data)]
        return ssl.trustRootFromCertificates(certs)
    return trust_root


def client_tls_options(hostname: str, *, verify: bool, trust_root: Any = None) -> Any:
    """A client connection creator for ``hostname``: verifying or not."""
    if verify:
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(hostname.strip("[]"), trustRoot=_trust_root(trust_root))
    return _UnverifiedClientTLS(hostname)
