"""Tests for mailrelay.tlsutil: certificate generation, loading, real TLS handshakes."""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol
from twisted.trial import unittest

from mailrelay.config import ConfigError
from mailrelay.tlsutil import ensure_self_signed, implicit_tls_factory, server_tls_options


def write_pem(path: Path, *objects) -> Path:
    data = b""
    for obj in objects:
        if isinstance(obj, x509.Certificate):
            data += obj.public_bytes(serialization.Encoding.PEM)
        else:
            data += obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
    path.write_bytes(data)
    return path


def make_cert(cn: str, issuer_cert=None, issuer_key=None, ca: bool = False, san=()):
    """A key and certificate for ``cn``, signed by the issuer (or self-signed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in san]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


@pytest.fixture
def state_dir():
    path = Path(tempfile.mkdtemp(prefix="mrtls", dir="/tmp"))
    yield path
    shutil.rmtree(path, True)


# -- generation ------------------------------------------------------------------


def test_self_signed_generated_once(state_dir):
    cert_path, key_path = ensure_self_signed(state_dir, "mail.example.test")
    assert cert_path == state_dir / "tls" / "selfsigned.crt"
    assert key_path == state_dir / "tls" / "selfsigned.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "tls").stat().st_mode) == 0o700
    before = (cert_path.read_bytes(), key_path.read_bytes(), cert_path.stat().st_mtime_ns)

    again = ensure_self_signed(state_dir, "mail.example.test")
    assert again == (cert_path, key_path)
    assert (cert_path.read_bytes(), key_path.read_bytes(), cert_path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in (state_dir / "tls").iterdir()) == ["selfsigned.crt", "selfsigned.key"]


def test_self_signed_contents(state_dir):
    cert_path, key_path = ensure_self_signed(state_dir, "mail.example.test")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "mail.example.test"
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime >= datetime.timedelta(days=3650)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()


def test_self_signed_for_localhost_has_no_duplicate(state_dir):
    cert_path, _ = ensure_self_signed(state_dir, "localhost")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]


def test_self_signed_regenerated_when_half_missing(state_dir):
    cert_path, key_path = ensure_self_signed(state_dir, "a.example.test")
    key_path.unlink()
    cert_path2, key_path2 = ensure_self_signed(state_dir, "a.example.test")
    server_tls_options(cert_path2, key_path2, "1.2")  # a matching pair again


# -- loading errors ----------------------------------------------------------------


def test_key_not_matching_cert(state_dir):
    cert_path, _ = ensure_self_signed(state_dir, "mail.example.test")
    other_key, _ = make_cert("other")
    wrong = write_pem(state_dir / "wrong.key", other_key)
    with pytest.raises(ConfigError) as info:
        server_tls_options(cert_path, wrong, "1.2")
    message = str(info.value)
    assert message.startswith("tls.key: ")
    assert "does not match" in message
    assert "\n" not in message


def test_cert_not_pem(state_dir):
    _, key_path = ensure_self_signed(state_dir, "mail.example.test")
    junk = state_dir / "junk.crt"
    junk.write_text("this is not a certificate\n")
    with pytest.raises(ConfigError) as info:
        server_tls_options(junk, key_path, "1.2")
    assert str(info.value).startswith("tls.cert: ")
    assert "not a PEM certificate" in str(info.value)


def test_key_not_pem(state_dir):
    cert_path, _ = ensure_self_signed(state_dir, "mail.example.test")
    with pytest.raises(ConfigError) as info:
        server_tls_options(cert_path, cert_path, "1.2")  # a certificate is not a key
    assert str(info.value).startswith("tls.key: ")
    assert "not a PEM private key" in str(info.value)


def test_encrypted_key(state_dir):
    cert_path, key_path = ensure_self_signed(state_dir, "mail.example.test")
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    locked = state_dir / "locked.key"
    locked.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(ConfigError) as info:
        server_tls_options(cert_path, locked, "1.2")
    assert str(info.value).startswith("tls.key: ")
    assert "passphrase" in str(info.value)


def test_missing_files(state_dir):
    cert_path, key_path = ensure_self_signed(state_dir, "mail.example.test")
    with pytest.raises(ConfigError, match=r"^tls\.cert: cannot read"):
        server_tls_options(state_dir / "nope.crt", key_path, "1.2")
    with pytest.raises(ConfigError, match=r"^tls\.key: cannot read"):
        server_tls_options(cert_path, state_dir / "nope.key", "1.2")


def test_bad_min_version(state_dir):
    cert_path, key_path = ensure_self_signed(state_dir, "mail.example.test")
    with pytest.raises(ConfigError, match=r"^tls\.min_version: "):
        server_tls_options(cert_path, key_path, "1.1")


# -- real handshakes -----------------------------------------------------------------


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


def tls_client(port: int, cafile: str, maximum: ssl.TLSVersion | None = None) -> tuple[str, bytes]:
    """Blocking client (run in a thread): handshake, echo a line; (version, reply)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if maximum is not None:
        ctx.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"hello\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = tls.recv(100)
                if not chunk:
                    break
                reply += chunk
            return tls.version(), reply


class HandshakeTests(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mrtls", dir="/tmp"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def listen(self, options) -> int:
        from twisted.internet import reactor

        factory = implicit_tls_factory(options, protocol.Factory.forProtocol(Echo))
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def connect(self, port: int, cafile: Path, maximum=None) -> defer.Deferred:
        from twisted.internet import reactor
        from twisted.internet.threads import deferToThread

        return deferToThread(tls_client, port, str(cafile), maximum).addTimeout(20, reactor)

    @defer.inlineCallbacks
    def test_min_12_accepts_12_and_13(self):
        cert, key = ensure_self_signed(self.dir, "mail.example.test")
        port = self.listen(server_tls_options(cert, key, "1.2"))
        version, reply = yield self.connect(port, cert)
        self.assertEqual((version, reply), ("TLSv1.3", b"hello\r\n"))
        version, reply = yield self.connect(port, cert, ssl.TLSVersion.TLSv1_2)
        self.assertEqual((version, reply), ("TLSv1.2", b"hello\r\n"))

    @defer.inlineCallbacks
    def test_min_13_refuses_12(self):
        cert, key = ensure_self_signed(self.dir, "mail.example.test")
        port = self.listen(server_tls_options(cert, key, "1.3"))
        version, _ = yield self.connect(port, cert)
        self.assertEqual(version, "TLSv1.3")
        with self.assertRaises(ssl.SSLError):
            yield self.connect(port, cert, ssl.TLSVersion.TLSv1_2)

    @defer.inlineCallbacks
    def test_chain_is_sent(self):
        # root -> intermediate -> leaf; the client trusts only the root, so the
        # handshake verifies only if the server sends the intermediate.
        root_key, root = make_cert("Test Root", ca=True)
        mid_key, mid = make_cert("Test Intermediate", root, root_key, ca=True)
        leaf_key, leaf = make_cert("localhost", mid, mid_key, san=["localhost"])
        chain = write_pem(self.dir / "chain.crt", leaf, mid)
        key = write_pem(self.dir / "leaf.key", leaf_key)
        os.chmod(key, 0o600)
        root_file = write_pem(self.dir / "root.crt", root)
        port = self.listen(server_tls_options(chain, key, "1.2"))
        version, reply = yield self.connect(port, root_file)
        self.assertEqual(reply, b"hello\r\n")
