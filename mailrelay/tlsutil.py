"""
tlsutil: TLS for the listeners: a generated self-signed certificate, server options, implicit TLS.

JOB
    :func:`ensure_self_signed` makes ``state_dir/tls/selfsigned.{crt,key}``
    once (EC P-256, 10 years, SAN = the hostname, localhost and 127.0.0.1)
    for a server with no ``tls.cert``/``tls.key``. :func:`server_tls_options`
    loads a PEM chain and key into Twisted ``CertificateOptions``, checking
    them first so a bad file is one ``ConfigError`` line naming ``tls.cert``
    or ``tls.key``; the OpenSSL context is built at once (errors surface at
    start-up) with ``MODE_RELEASE_BUFFERS`` so idle sessions give back their
    record buffers. :func:`implicit_tls_factory` wraps any protocol factory
    for TLS from the first byte (RFC 8314 submissions), whatever the
    endpoint. Nothing here imports the reactor.

SECURITY
    Trusts the operator's certificate and key files (checked to parse and to
    match each other, not to chain to any CA). TLS 1.2 is offered only with
    AEAD suites and forward secrecy (``SERVER_CIPHERS``: ECDHE with AES-GCM
    or ChaCha20-Poly1305, RFC 7525 / BCP 195); no CBC (SHA-1 or SHA-2 MAC),
    no static RSA key exchange. TLS 1.3's suites are all AEAD with forward
    secrecy. ``tls.min_version`` raises the floor to 1.3. The generated key
    is written atomically with mode 0600 (the certificate 0644) in a
    ``tls`` directory of mode 0700; an encrypted key is refused rather than
    prompted for.

STANDARDS
    RFC 8446 and RFC 5246 (TLS 1.3 and 1.2, through OpenSSL), RFC 8314
    (implicit TLS), RFC 7525 / BCP 195 (cipher choice), RFC 5280 (the
    generated certificate).

DIAGNOSTICS
    Logs ``generated a self-signed certificate for <hostname> in <path>``
    and a warning ``tls.cert: <path> expired on <ISO date>``. Raises
    :class:`mailrelay.config.ConfigError` with one of:
    ``server.state_dir: cannot create '<dir>': <strerror>``,
    ``server.state_dir: cannot write '<dir>': <strerror>``,
    ``tls.min_version: must be "1.2" or "1.3", got '<v>'``,
    ``tls.cert: cannot read '<path>': <strerror>`` (likewise ``tls.key``),
    ``tls.cert: '<path>' is not a PEM certificate chain``,
    ``tls.key: '<path>' is encrypted; give a key without a passphrase``,
    ``tls.key: '<path>' is not a PEM private key``,
    ``tls.key: '<key>' does not match the certificate in '<cert>'``,
    ``tls.cert: '<path>' cannot be used: <OpenSSL error>``.

CONFIGURATION
    Given by its callers (:mod:`mailrelay.service`, ``mailrelay
    check-config``): ``[tls]`` cert, key, min_version; ``[server]``
    state_dir and hostname. Owns the files ``state_dir/tls/selfsigned.crt``
    and ``state_dir/tls/selfsigned.key``; no Redis data.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from mailrelay.config import ConfigError

log = Logger()

CERT_NAME = "selfsigned.crt"
KEY_NAME = "selfsigned.key"
VALIDITY = datetime.timedelta(days=3650)
TLS_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}
#: The listeners' TLS 1.2 suites (OpenSSL cipher string): AEAD with forward secrecy only.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return x509.DNSName(name.encode("idna").decode("ascii"))
    except UnicodeError:
        return x509.DNSName(name)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, created with ``mode``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_self_signed(state_dir: Path, hostname: str) -> tuple[Path, Path]:
    """Return (cert_path, key_path) of the self-signed certificate, making it if missing."""
    tls_dir = Path(state_dir) / "tls"
    cert_path, key_path = tls_dir / CERT_NAME, tls_dir / KEY_NAME
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    try:
        tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(tls_dir, 0o700)
    except OSError as e:
        raise ConfigError(f"server.state_dir: cannot create {str(tls_dir)!r}: {e.strerror}") from None

    key = ec.generate_private_key(ec.SECP256R1())
    names = [hostname] + [n for n in ("localhost", "127.0.0.1") if n != hostname]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names if n]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        _write_private(key_path, key_pem, 0o600)  # the key first: both must exist to be reused
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as e:
        raise ConfigError(f"server.state_dir: cannot write {str(tls_dir)!r}: {e.strerror}") from None
    log.info("generated a self-signed certificate for {hostname} in {path}",
             hostname=hostname, path=str(cert_path))
    return cert_path, key_path


def _read(key: str, path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {str(path)!r}: {e.strerror}") from None


def _spki(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _openssl_takes_cryptography_objects() -> bool:
    """pyOpenSSL 24.3+ takes cryptography keys and certificates in SSL.Context."""
    import OpenSSL

    try:
        major, minor = (int(x) for x in OpenSSL.__version__.split(".")[:2])
    except ValueError:
        return True
    return (major, minor) >= (24, 3)


def server_tls_options(cert_path: Path | str, key_path: Path | str,
                       min_version: str) -> CertificateOptions:
    """CertificateOptions for a server: the PEM chain (leaf first) and its key."""
    from OpenSSL import SSL, crypto

    if min_version not in TLS_VERSIONS:
        raise ConfigError(f'tls.min_version: must be "1.2" or "1.3", got {min_version!r}')
    try:
        chain = x509.load_pem_x509_certificates(_read("tls.cert", Path(cert_path)))
    except ValueError:
        raise ConfigError(f"tls.cert: {str(cert_path)!r} is not a PEM certificate chain") from None
    try:
        private_key = serialization.load_pem_private_key(_read("tls.key", Path(key_path)), None)
    except TypeError:
        raise ConfigError(f"tls.key: {str(key_path)!r} is encrypted; give a key without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"tls.key: {str(key_path)!r} is not a PEM private key") from None
    leaf = chain[0]
    if _spki(private_key.public_key()) != _spki(leaf.public_key()):
        raise ConfigError(
            f"tls.key: {str(key_path)!r} does not match the certificate in {str(cert_path)!r}"
        )
    if leaf.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc):
        log.warn("tls.cert: {path} expired on {date}", path=str(cert_path),
                 date=leaf.not_valid_after_utc.isoformat())
    if _openssl_takes_cryptography_objects():
        pkey, certs = private_key, chain
    else:  # pyOpenSSL < 24.3 wants its own wrappers (later versions deprecate them)
        pkey = crypto.PKey.from_cryptography_key(private_key)
        certs = [crypto.X509.from_cryptography(c) for c in chain]
    try:
        options = CertificateOptions(
            privateKey=pkey,
            certificate=certs[0],
            extraCertChain=list(certs[1:]),
            raiseMinimumTo=TLS_VERSIONS[min_version],
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(SERVER_CIPHERS),
        )
        # Build the context now, so errors surface at start-up; CertificateOptions keeps
        # it, and every server connection (STARTTLS and implicit TLS) is made from it.
        context = options.getContext()
        # Idle sessions give back their record buffers (about 34 KiB each). Twisted's
        # CertificateOptions sets this mode already (26.10): explicit, so that an idle TLS
        # session stays at about 28 kB without depending on that default.
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    except (SSL.Error, TypeError, ValueError) as e:
        raise ConfigError(f"tls.cert: {str(cert_path)!r} cannot be used: {e}") from None
    return options


def implicit_tls_factory(options: CertificateOptions,
                         wrapped_factory: IProtocolFactory) -> TLSMemoryBIOFactory:
    """Wrap ``wrapped_factory`` so every connection is TLS from the first byte."""
    return TLSMemoryBIOFactory(options, False, wrapped_factory)
