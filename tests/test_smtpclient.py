"""
The outbound SMTP client against the scripted server (tests/scriptedsmtp.py) and
Postfix's smtp-sink: transactions, per-recipient outcomes, PIPELINING, several
messages per connection, dot-stuffing across write boundaries, TLS policies,
SIZE/8BITMIME/SMTPUTF8, AUTH, queue ids, and failures of the session.
"""

from __future__ import annotations

import atexit
import datetime
import os
import random
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, ssl, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from conftest import async_test
from mailrelay import tlsutil
from mailrelay.smtp import client as smtpclient, clientprotocol
from mailrelay.smtp.client import (
    CommandTimeout,
    ConnectFailure,
    ConnectionLostError,
    OutboundMessage,
    ProtocolError,
    ReplyInfo,
    SMTPClientError,
    SMTPReplyError,
    TLSFailure,
    connect,
    parse_queue_id,
)
from mailrelay.smtp.clientprotocol import CHUNK_SIZE, DotStuffer, dot_stuff
from tests.scriptedsmtp import ScriptedSMTPServer

BODY = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: test\r\n\r\nHello.\r\n"


# -- certificates ------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("mailrelay test CA"))
            .issuer_name(_name("mailrelay test CA")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def make_leaf(directory: Path, ca: x509.Certificate, ca_key, dns_name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(dns_name)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{dns_name}.crt", directory / f"{dns_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Certificates:
    """A test CA with leaves for "localhost" and "other.test", and a self-signed cert."""

    _instance: "Certificates | None" = None

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="smtpclient-certs-"))
        atexit.register(shutil.rmtree, self.dir, True)
        ca, ca_key, self.ca_path = make_ca(self.dir)
        self.ca = ssl.Certificate.loadPEM(self.ca_path.read_bytes())
        self.localhost = tlsutil.server_tls_options(*make_leaf(self.dir, ca, ca_key, "localhost"), "1.2")
        self.other = tlsutil.server_tls_options(*make_leaf(self.dir, ca, ca_key, "other.test"), "1.2")
        self.selfsigned = tlsutil.server_tls_options(*tlsutil.ensure_self_signed(self.dir, "localhost"), "1.2")

    @classmethod
    def get(cls) -> "Certificates":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


# -- base -------------------------------------------------------------------------------------------


class ClientTestCase(unittest.TestCase):
    def start_server(self, **kwargs) -> ScriptedSMTPServer:
        server = ScriptedSMTPServer(**kwargs)
        server.start()
        self.addCleanup(server.stop)
        return server

    async def open(self, server: ScriptedSMTPServer, **kwargs) -> smtpclient.ClientSession:
        kwargs.setdefault("helo_name", "client.test")
        kwargs.setdefault("tls", "none")
        kwargs.setdefault("command_timeout", 10)
        session = await connect("127.0.0.1", server.port, **kwargs)
        self.addCleanup(session.abort)
        return session

    async def expect_failure(self, awaitable, exc_type):
        try:
            await awaitable
        except exc_type as e:
            return e
        self.fail(f"{exc_type.__name__} not raised")


def message(*recipients: str, content: bytes = BODY, sender: str = "a@x.test", **kw) -> OutboundMessage:
    return OutboundMessage(sender, list(recipients or ["b@y.test"]), content, **kw)


# -- transactions ---------------------------------------------------------------------------------------


class TransactionTests(ClientTestCase):
    @async_test
    async def test_one_message(self):
        server = self.start_server()
        session = await self.open(server)
        self.assertEqual(session.remote_ip, "127.0.0.1")
        self.assertEqual(session.remote_port, server.port)
        self.assertIn("PIPELINING", session.extensions)
        self.assertEqual(session.extensions["SIZE"], "10240000")
        self.assertFalse(session.tls_active)
        outcome = await session.send(message("b@y.test"))
        [result] = outcome.recipients
        self.assertEqual(result.recipient, "b@y.test")
        self.assertEqual(result.reply, ReplyInfo(250, "2.0.0", "Ok: queued as Q1"))
        self.assertEqual(outcome.remote_queue_id, "Q1")
        self.assertEqual(session.messages_sent, 1)
        [received] = server.messages
        self.assertEqual((received.sender, received.recipients, received.body), ("a@x.test", ["b@y.test"], BODY))
        self.assertEqual(received.mail_params, [f"SIZE={len(BODY)}"])
        await session.quit()
        self.assertTrue(session.closed)
        self.assertEqual(server.commands[-1], "QUIT")
        self.assertEqual(server.commands[0], "EHLO client.test")

    @async_test
    async def test_recipient_rejected_at_rcpt(self):
        text = "<bad@y.test>: Recipient address rejected: User unknown in local recipient table"
        server = self.start_server(rcpt_replies={"bad@y.test": f"550 5.1.1 {text}"})
        session = await self.open(server)
        outcome = await session.send(message("good@y.test", "bad@y.test"))
        good, bad = outcome.recipients
        self.assertEqual(good.recipient, "good@y.test")
        self.assertEqual(good.reply.code, 250)
        self.assertTrue(good.accepted)
        self.assertEqual(bad.recipient, "bad@y.test")
        self.assertEqual(bad.reply, ReplyInfo(550, "5.1.1", text))
        self.assertTrue(bad.reply.is_permanent)
        self.assertFalse(bad.reply.is_transient)
        self.assertEqual(outcome.accepted, ["good@y.test"])
        self.assertEqual(server.messages[0].recipients, ["good@y.test"])

    @async_test
    async def test_all_recipients_rejected(self):
        server = self.start_server(rcpt_replies=lambda addr: "450 4.2.0 Mailbox busy")
        session = await self.open(server)
        outcome = await session.send(message("b@y.test", "c@y.test"))
        self.assertEqual([r.reply.code for r in outcome.recipients], [450, 450])
        self.assertTrue(outcome.recipients[0].reply.is_transient)
        self.assertEqual(server.messages, [])
        self.assertEqual(server.commands[-1], "RSET")  # the MAIL transaction is ended
        self.assertEqual(session.messages_sent, 0)
        # the session is still good for the next message
        server.rcpt_replies = None
        outcome = await session.send(message("b@y.test"))
        self.assertEqual(outcome.recipients[0].reply.code, 250)

    @async_test
    async def test_mail_from_rejected(self):
        def mail_reply(sender, params):
            return "553 5.7.1 <spam@x.test>: Sender address rejected" if sender == "spam@x.test" else None

        server = self.start_server(mail_reply=mail_reply)
        session = await self.open(server)
        outcome = await session.send(message("b@y.test", "c@y.test", sender="spam@x.test"))
        self.assertEqual([r.reply for r in outcome.recipients],
                         [ReplyInfo(553, "5.7.1", "<spam@x.test>: Sender address rejected")] * 2)
        self.assertEqual(server.messages, [])
        outcome = await session.send(message("b@y.test"))
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertEqual(len(server.messages), 1)

    @async_test
    async def test_null_sender(self):
        server = self.start_server()
        session = await self.open(server)
        await session.send(message("b@y.test", sender=""))
        self.assertIn("MAIL FROM:<> SIZE=%d" % len(BODY), server.commands)
        self.assertEqual(server.messages[0].sender, "")

    @async_test
    async def test_data_rejected_transiently(self):
        server = self.start_server(data_reply="451 4.3.0 Try again later",
                                   rcpt_replies={"bad@y.test": "550 5.1.1 No such user"})
        session = await self.open(server)
        outcome = await session.send(message("b@y.test", "bad@y.test"))
        self.assertEqual(outcome.recipients[0].reply, ReplyInfo(451, "4.3.0", "Try again later"))
        self.assertTrue(outcome.recipients[0].reply.is_transient)
        self.assertEqual(outcome.recipients[1].reply.code, 550)
        self.assertEqual(server.commands[-1], "RSET")
        self.assertEqual(server.messages, [])

    @async_test
    async def test_final_reply_transient(self):
        server = self.start_server(final_reply="452 4.3.1 Insufficient system storage")
        session = await self.open(server)
        outcome = await session.send(message("b@y.test", "c@y.test"))
        for result in outcome.recipients:
            self.assertEqual(result.reply, ReplyInfo(452, "4.3.1", "Insufficient system storage"))
        self.assertIsNone(outcome.remote_queue_id)
        self.assertEqual(session.messages_sent, 0)

    @async_test
    async def test_pipelining_used_when_offered(self):
        server = self.start_server()
        session = await self.open(server)
        await session.send(message("b@y.test", "c@y.test"))
        [read] = [r for r in server.sessions[0].reads if b"MAIL FROM" in r]
        self.assertEqual(read, f"MAIL FROM:<a@x.test> SIZE={len(BODY)}\r\nRCPT TO:<b@y.test>\r\n"
                               f"RCPT TO:<c@y.test>\r\nDATA\r\n".encode())

    @async_test
    async def test_pipelining_not_used_when_not_offered(self):
        server = self.start_server(extensions=["8BITMIME", "ENHANCEDSTATUSCODES"])
        session = await self.open(server)
        outcome = await session.send(message("b@y.test", "c@y.test"))
        self.assertEqual([r.reply.code for r in outcome.recipients], [250, 250])
        reads = server.sessions[0].reads
        for command in (b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@y.test>\r\n",
                        b"RCPT TO:<c@y.test>\r\n", b"DATA\r\n"):
            self.assertIn(command, reads)  # each command alone in its own read
        self.assertNotIn("SIZE", " ".join(server.commands))

    @async_test
    async def test_several_messages_on_one_connection(self):
        server = self.start_server(rcpt_replies={"bad@y.test": "550 5.1.1 No such user"})
        session = await self.open(server)
        first = await session.send(message("b@y.test", content=BODY + b"one\r\n"))
        failed = await session.send(message("bad@y.test", content=BODY + b"two\r\n"))
        third = await session.send(message("c@y.test", "d@y.test", content=BODY + b"three\r\n"))
        self.assertEqual(first.recipients[0].reply.code, 250)
        self.assertEqual(failed.recipients[0].reply.code, 550)
        self.assertEqual([r.reply.code for r in third.recipients], [250, 250])
        self.assertEqual((first.remote_queue_id, third.remote_queue_id), ("Q1", "Q2"))
        self.assertEqual(len(server.sessions), 1)
        self.assertEqual([m.body for m in server.messages], [BODY + b"one\r\n", BODY + b"three\r\n"])
        self.assertEqual([m.recipients for m in server.messages], [["b@y.test"], ["c@y.test", "d@y.test"]])
        self.assertEqual(session.messages_sent, 2)
        verbs = [c.split(" ")[0].split(":")[0] for c in server.commands if not c.startswith("EHLO")]
        self.assertEqual(verbs, ["MAIL", "RCPT", "DATA", "MAIL", "RCPT", "DATA", "RSET",
                                 "MAIL", "RCPT", "RCPT", "DATA"])
        await session.reset()
        self.assertEqual(server.commands[-1], "RSET")
        reply = await session.noop()
        self.assertEqual(reply.code, 250)

    @async_test
    async def test_send_refuses_concurrent_use(self):
        server = self.start_server()
        session = await self.open(server)
        first = defer.ensureDeferred(session.send(message()))
        await self.expect_failure(session.send(message()), SMTPClientError)
        outcome = await first
        self.assertEqual(outcome.recipients[0].reply.code, 250)

    @async_test
    async def test_helo_fallback(self):
        server = self.start_server(ehlo_reply="502 5.5.1 Error: command not implemented")
        session = await self.open(server)
        self.assertEqual(session.extensions, {})
        self.assertFalse(session.esmtp)
        outcome = await session.send(message())
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertEqual(server.commands[:2], ["EHLO client.test", "HELO client.test"])
        self.assertIn("MAIL FROM:<a@x.test>", server.commands)  # no SIZE=, no pipelining

    @async_test
    async def test_data_354_with_no_recipients_sends_empty_message(self):
        # A broken server answers the pipelined DATA with 354 although no RCPT was accepted.
        server = self.start_server(data_reply="354 go ahead", rcpt_replies=lambda a: "550 5.1.1 no")
        session = await self.open(server)
        outcome = await session.send(message("b@y.test"))
        self.assertEqual(outcome.recipients[0].reply.code, 550)
        self.assertEqual([m.body for m in server.messages], [b""])  # "." at once, never the body
        self.assertEqual(server.commands[-1], "RSET")

    @async_test
    async def test_421_at_rcpt_pipelined(self):
        server = self.start_server(rcpt_replies={"b@y.test": "421 4.7.0 Too many errors, closing"})
        session = await self.open(server)
        outcome = await session.send(message("a@y.test", "b@y.test", "c@y.test"))
        # a@y.test was accepted at RCPT, but DATA never came: 421 for it too
        self.assertEqual([r.reply.code for r in outcome.recipients], [421, 421, 421])
        self.assertTrue(outcome.recipients[0].reply.is_transient)
        self.assertEqual(outcome.accepted, [])
        await session._proto.when_closed()
        self.assertTrue(session.closed)
        self.assertEqual(server.messages, [])

    @async_test
    async def test_421_at_rcpt_without_pipelining(self):
        server = self.start_server(extensions=[],
                                   rcpt_replies={"b@y.test": "421 4.7.0 Too many errors, closing"})
        session = await self.open(server)
        outcome = await session.send(message("a@y.test", "b@y.test", "c@y.test"))
        self.assertEqual([r.reply.code for r in outcome.recipients], [421, 421, 421])
        self.assertNotIn("RCPT TO:<c@y.test>", server.commands)
        self.assertNotIn("DATA", server.commands)
        self.assertTrue(session.closed)

    @async_test
    async def test_421_after_data(self):
        server = self.start_server(final_reply="421 4.4.2 Timeout, closing")
        session = await self.open(server)
        outcome = await session.send(message("a@y.test"))
        self.assertEqual(outcome.recipients[0].reply, ReplyInfo(421, "4.4.2", "Timeout, closing"))
        self.assertTrue(session.closed)
        await session.quit()  # tolerated

    @async_test
    async def test_unsafe_addresses_are_not_sent(self):
        server = self.start_server()
        session = await self.open(server)
        evil = "x@y.test>\r\nRCPT TO:<victim@y.test"
        outcome = await session.send(message("b@y.test", evil))
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertEqual(outcome.recipients[1].reply.code, 501)
        self.assertEqual(outcome.recipients[1].reply.enhanced, "5.1.3")
        self.assertEqual(server.messages[0].recipients, ["b@y.test"])
        self.assertFalse(any("victim" in c for c in server.commands))
        outcome = await session.send(message("b@y.test", sender="a@x.test>\r\nRSET"))
        self.assertEqual(outcome.recipients[0].reply.enhanced, "5.1.7")
        self.assertEqual(len(server.messages), 1)


# -- message data -----------------------------------------------------------------------------------------


def build_body(chunk: int) -> bytes:
    """A body with a "." at the start of a line at, or straddling, every chunk boundary."""
    out = bytearray()

    def pad_to(target: int) -> None:
        while len(out) < target:
            left = target - len(out)
            size = min(left, 80)
            if left - size == 1:
                size -= 1
            assert size >= 2, (left, size)
            out.extend(b"x" * (size - 2) + b"\r\n")
        assert len(out) == target

    out += b".first line starts with a dot\r\n..two dots\r\n.\r\n"     # the very start
    pad_to(chunk)
    out += b".starts exactly at the second chunk\r\n.\r\n"              # "\r\n" | "."
    pad_to(2 * chunk - len(b"ends in CR\r"))
    out += b"ends in CR\r"                                               # "\r" | "\n."
    out += b"\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nsmuggled\r\n.\r\n"
    pad_to(3 * chunk - 1)
    out += b"."                                                          # "." | "\r\n"
    out += b"\r\n.\r\n..\r\nQUIT\r\n"
    pad_to(4 * chunk - 2)
    out += b"\r\n"                                                       # "\r\n" | ".\r\n"
    out += b".\r\n"
    out += b"last lines\r\n.\r\n"                                        # ends with a lone dot
    return bytes(out)


class FollowingMessageTests(ClientTestCase):
    """send(message, following): the next transaction's commands go out with this message's data."""

    @async_test
    async def test_following_message_goes_out_with_the_data(self):
        server = self.start_server()
        session = await self.open(server)
        writes = []
        transport = session._proto.transport
        original = transport.write
        transport.write = lambda data: (writes.append(data), original(data))[1]
        first, second, third = message("b@y.test"), message("c@y.test", "d@y.test"), message("e@y.test")
        outcomes = [await session.send(first, second), await session.send(second, third),
                    await session.send(third)]
        self.assertEqual([[r.reply.code for r in o.recipients] for o in outcomes], [[250], [250, 250], [250]])
        self.assertEqual([m.recipients for m in server.messages], [["b@y.test"], ["c@y.test", "d@y.test"],
                                                                    ["e@y.test"]])
        self.assertTrue(all(m.body == BODY for m in server.messages))
        # MAIL/RCPT/DATA, then data + dot + the next MAIL/RCPT/DATA (twice), then the last data
        self.assertEqual(len(writes), 4, writes)
        self.assertTrue(writes[1].endswith(b".\r\nMAIL FROM:<a@x.test> SIZE=%d\r\nRCPT TO:<c@y.test>\r\n"
                                           b"RCPT TO:<d@y.test>\r\nDATA\r\n" % len(BODY)), writes[1])
        await session.quit()
        self.assertEqual(server.commands[-1], "QUIT")

    @async_test
    async def test_following_refused_at_mail_leaves_the_session_usable(self):
        server = self.start_server(mail_reply=lambda addr, params: "452 4.3.1 Busy" if addr == "busy@x.test" else None)
        session = await self.open(server)
        second = message("c@y.test", sender="busy@x.test")
        await session.send(message("b@y.test"), second)
        outcome = await session.send(second)
        self.assertEqual([r.reply.code for r in outcome.recipients], [452])
        outcome = await session.send(message("d@y.test"))
        self.assertEqual([r.reply.code for r in outcome.recipients], [250])
        self.assertEqual([m.recipients for m in server.messages], [["b@y.test"], ["d@y.test"]])
        await session.quit()

    @async_test
    async def test_quit_instead_of_the_following_message_drops_the_connection(self):
        server = self.start_server()
        session = await self.open(server)
        second = message("c@y.test")
        await session.send(message("b@y.test"), second)
        await session.quit()  # the server is in DATA for the second: no QUIT, no "." (no empty message)
        self.assertTrue(session.closed)
        await server.wait_closed()
        self.assertEqual([m.recipients for m in server.messages], [["b@y.test"]])
        self.assertNotIn("QUIT", server.commands)

    @async_test
    async def test_another_message_than_the_following_one_drops_the_connection(self):
        server = self.start_server()
        session = await self.open(server)
        await session.send(message("b@y.test"), message("c@y.test"))
        with self.assertRaises(SMTPClientError):
            await session.send(message("d@y.test"))
        self.assertTrue(session.closed)
        await server.wait_closed()
        self.assertEqual([m.recipients for m in server.messages], [["b@y.test"]])

    @async_test
    async def test_large_message_is_not_followed_in_the_same_write(self):
        server = self.start_server()
        session = await self.open(server)
        big = b"".join(b"line %06d of a large message\r\n" % i for i in range(4000))
        second = message("c@y.test")
        outcome = await session.send(message("b@y.test", content=big), second)
        self.assertEqual([r.reply.code for r in outcome.recipients], [250])
        outcome = await session.send(second)
        self.assertEqual([r.reply.code for r in outcome.recipients], [250])
        self.assertEqual([m.body for m in server.messages], [big, BODY])
        await session.quit()


class MessageDataTests(ClientTestCase):
    def test_build_body_boundaries(self):
        body = build_body(CHUNK_SIZE)
        self.assertEqual(body[:1], b".")
        self.assertEqual(body[CHUNK_SIZE - 2:CHUNK_SIZE + 1], b"\r\n.")
        self.assertEqual(body[2 * CHUNK_SIZE - 1:2 * CHUNK_SIZE + 2], b"\r\n.")
        self.assertEqual(body[3 * CHUNK_SIZE - 3:3 * CHUNK_SIZE + 2], b"\r\n.\r\n")
        self.assertEqual(body[4 * CHUNK_SIZE - 2:4 * CHUNK_SIZE + 3], b"\r\n.\r\n")
        self.assertEqual(body.count(b"\r\n"), body.count(b"\r"))
        self.assertEqual(body.count(b"\r\n"), body.count(b"\n"))

    def test_dot_stuffer_is_independent_of_chunking(self):
        body = build_body(1000)
        expected = (b"\r\n" + body).replace(b"\r\n.", b"\r\n..")[2:]
        self.assertEqual(dot_stuff(body), expected)
        self.assertTrue(expected.startswith(b"..first"))
        rng = random.Random(1)
        for _ in range(200):
            stuffer, out, i = DotStuffer(), [], 0
            while i < len(body):
                n = rng.choice([1, 2, 3, rng.randint(1, 3000)])
                out.append(stuffer.feed(body[i:i + n]))
                i += n
            self.assertEqual(b"".join(out), expected)

    def test_line_ending_normalization(self):
        norm = clientprotocol.normalize_line_endings
        self.assertEqual(norm(b"a\nb\rc\r\nd"), b"a\r\nb\r\nc\r\nd")
        self.assertEqual(norm(b"a\r\r\nb"), b"a\r\n\r\nb")
        self.assertEqual(norm(b"\n.\n"), b"\r\n.\r\n")

    @async_test
    async def test_dots_at_every_chunk_boundary(self):
        server = self.start_server()
        session = await self.open(server)
        body = build_body(CHUNK_SIZE)
        outcome = await session.send(message("b@y.test", content=body))
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertEqual(len(server.messages), 1)
        self.assertEqual(server.messages[0].body, body)
        self.assertEqual(server.messages[0].recipients, ["b@y.test"])
        self.assertEqual(server.messages[0].raw, dot_stuff(body))
        self.assertFalse(any("evil" in c or "victim" in c for c in server.commands))
        # and the session is still in step
        outcome = await session.send(message("c@y.test"))
        self.assertEqual(outcome.remote_queue_id, "Q2")

    @async_test
    async def test_dots_at_every_chunk_boundary_with_small_chunks(self):
        self.patch(smtpclient, "CHUNK_SIZE", 777)
        server = self.start_server()
        session = await self.open(server)
        body = build_body(777)
        await session.send(message("b@y.test", content=body))
        self.assertEqual([m.body for m in server.messages], [body])

    @async_test
    async def test_bare_newlines_become_crlf_and_final_crlf_added(self):
        server = self.start_server()
        session = await self.open(server)
        await session.send(message(content=b"Subject: x\n\n.hidden\n.\nMAIL FROM:<e@x>\rend"))
        self.assertEqual(server.messages[0].body,
                         b"Subject: x\r\n\r\n.hidden\r\n.\r\nMAIL FROM:<e@x>\r\nend\r\n")
        self.assertEqual(len(server.messages), 1)

    @async_test
    async def test_empty_message(self):
        server = self.start_server()
        session = await self.open(server)
        outcome = await session.send(message(content=b""))
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertEqual(server.messages[0].body, b"")

    @async_test
    async def test_large_message_with_tls(self):
        certs = Certificates.get()
        server = self.start_server(tls_options=certs.localhost)
        session = await self.open(server, tls="verify", tls_hostname="localhost", trust_root=certs.ca)
        body = b"".join(b"%07d " % i + b"y" * 90 + b"\r\n" for i in range(30000))  # ~3 MB
        body = b"." + body
        outcome = await session.send(message(content=body))
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertEqual(server.messages[0].body, body)


# -- extensions ----------------------------------------------------------------------------------------------


class ExtensionTests(ClientTestCase):
    @async_test
    async def test_size_limit_enforced_without_sending(self):
        server = self.start_server(extensions=["PIPELINING", "SIZE 1000", "8BITMIME"])
        session = await self.open(server)
        content = b"Subject: big\r\n\r\n" + b"z" * 1998 + b"\r\n"
        outcome = await session.send(message("b@y.test", "c@y.test", content=content))
        expected = ReplyInfo(552, "5.3.4", f"message size {len(content)} exceeds remote limit 1000 (SIZE)")
        self.assertEqual([r.reply for r in outcome.recipients], [expected, expected])
        self.assertTrue(expected.is_permanent)
        self.assertFalse(any(c.startswith("MAIL") for c in server.commands))
        outcome = await session.send(message("b@y.test"))
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertEqual(server.messages[0].mail_params, [f"SIZE={len(BODY)}"])

    @async_test
    async def test_8bit_body_without_8bitmime_fails_permanently(self):
        server = self.start_server(extensions=["PIPELINING", "ENHANCEDSTATUSCODES"])
        session = await self.open(server)
        msg = message(content=b"Subject: caf\xc3\xa9\r\n\r\nna\xc3\xafve\r\n")
        self.assertTrue(msg.is_8bit)
        outcome = await session.send(msg)
        reply = outcome.recipients[0].reply
        self.assertEqual((reply.code, reply.enhanced), (554, "5.6.3"))
        self.assertTrue(reply.is_permanent)
        self.assertIn("8BITMIME", reply.text)
        self.assertFalse(any(c.startswith("MAIL") for c in server.commands))

    @async_test
    async def test_8bit_body_with_8bitmime(self):
        server = self.start_server()
        session = await self.open(server)
        content = b"Subject: caf\xc3\xa9\r\n\r\n\xff\xfe raw octets\r\n"
        await session.send(message(content=content))
        self.assertEqual(server.messages[0].body, content)
        self.assertEqual(server.messages[0].mail_params, [f"SIZE={len(content)}", "BODY=8BITMIME"])

    @async_test
    async def test_smtputf8(self):
        server = self.start_server()
        session = await self.open(server)
        content = "Subject: café\r\n\r\nhi\r\n".encode()
        await session.send(message("josé@ñ.test", content=content, sender="andré@x.test", smtputf8=True))
        [received] = server.messages
        self.assertEqual((received.sender, received.recipients), ("andré@x.test", ["josé@ñ.test"]))
        self.assertEqual(received.mail_params, [f"SIZE={len(content)}", "BODY=8BITMIME", "SMTPUTF8"])

        plain = self.start_server(extensions=["PIPELINING", "8BITMIME"])
        session = await self.open(plain)
        outcome = await session.send(message("josé@ñ.test", content=content, smtputf8=True))
        reply = outcome.recipients[0].reply
        self.assertEqual((reply.code, reply.enhanced), (553, "5.6.7"))
        self.assertIn("SMTPUTF8", reply.text)
        # a non-ASCII address needs SMTPUTF8 even when the flag was forgotten
        outcome = await session.send(message("josé@ñ.test"))
        self.assertEqual(outcome.recipients[0].reply.code, 553)
        self.assertEqual(plain.messages, [])

    @async_test
    async def test_auth_plain(self):
        server = self.start_server(auth={"user": "sécret"}, auth_mechanisms="PLAIN")
        session = await self.open(server, auth=("user", "sécret"))
        self.assertEqual(session.authenticated_as, "user")
        self.assertEqual(server.sessions[0].user, "user")
        await session.send(message())
        self.assertEqual(server.messages[0].user, "user")
        self.assertTrue(server.commands[1].startswith("AUTH PLAIN "))

    @async_test
    async def test_auth_login(self):
        server = self.start_server(auth={"user": "pw"}, auth_mechanisms="LOGIN")
        await self.open(server, auth=("user", "pw"))
        self.assertEqual(server.sessions[0].user, "user")
        self.assertEqual(server.commands[1], "AUTH LOGIN")

    @async_test
    async def test_auth_rejected(self):
        server = self.start_server(auth={"user": "pw"})
        e = await self.expect_failure(self.open(server, auth=("user", "wrong")), SMTPReplyError)
        self.assertEqual(e.reply, ReplyInfo(535, "5.7.8", "Error: authentication failed"))
        self.assertIn("AUTH", str(e))
        self.assertNotIn("wrong", str(e))
        yield_ = await server.wait_closed()
        self.assertIsNone(yield_)

    @async_test
    async def test_auth_needs_tls(self):
        server = self.start_server(auth={"user": "pw"})
        e = await self.expect_failure(self.open(server, tls="opportunistic", auth=("user", "pw")),
                                      SMTPClientError)
        self.assertIn("without TLS", str(e))
        self.assertFalse(any(c.startswith("AUTH") for c in server.commands))

    @async_test
    async def test_auth_over_starttls(self):
        certs = Certificates.get()
        server = self.start_server(auth={"user": "pw"}, tls_options=certs.localhost)
        session = await self.open(server, tls="opportunistic", auth=("user", "pw"))
        self.assertTrue(session.tls_active)
        self.assertEqual(server.sessions[0].user, "user")

    def test_queue_id_parsing(self):
        cases = {
            "Ok: queued as 4XyZ12": "4XyZ12",
            "Ok: queued as 4Vd5Lr0Xbzz3xyz": "4Vd5Lr0Xbzz3xyz",
            "<20240101.abc@mx.example.com> Queued mail for delivery": "20240101.abc@mx.example.com",
            "<a@b> [Hostname=AM0PR01MB1234.eurprd01.prod.exchangelabs.com] Queued mail for delivery":
                "a@b",
            "OK id=1rABCd-000123-Xy": "1rABCd-000123-Xy",
            "ok 1700000000 qp 12345": "1700000000 qp 12345",
            "ok <abc123>": "abc123",
            "Ok 0100018b9c1d2e3f-12345678-aaaa-bbbb-cccc-000000000000-000000":
                "0100018b9c1d2e3f-12345678-aaaa-bbbb-cccc-000000000000-000000",
            "OK  1700000000 a1b2c3d4e5si123456ejc.123 - gsmtp": "a1b2c3d4e5si123456ejc.123",
            "3F2A1B Message accepted for delivery": "3F2A1B",
            "Ok": None,
            "OK": None,
            "Accepted": None,
            "Ok: queued": None,
            "Ok: Accepted": None,
            "queued 9A8B7C6D": "9A8B7C6D",
        }
        for text, expected in cases.items():
            self.assertEqual(parse_queue_id(ReplyInfo(250, "2.0.0", text)), expected, text)
        self.assertIsNone(parse_queue_id(ReplyInfo(451, "4.0.0", "queued as ABC")))

    @async_test
    async def test_postfix_style_queue_id(self):
        server = self.start_server(final_reply="250 2.0.0 Ok: queued as 4XyZ12")
        session = await self.open(server)
        outcome = await session.send(message())
        self.assertEqual(outcome.remote_queue_id, "4XyZ12")
        self.assertEqual(outcome.recipients[0].reply.text, "Ok: queued as 4XyZ12")

    @async_test
    async def test_multiline_reply_and_enhanced_code(self):
        server = self.start_server(
            rcpt_replies={"b@y.test": "550-5.7.1 Our policy\n550-5.7.1 says no.\n550 5.7.1 See https://x.test"})
        session = await self.open(server)
        outcome = await session.send(message("b@y.test"))
        self.assertEqual(outcome.recipients[0].reply,
                         ReplyInfo(550, "5.7.1", "Our policy\nsays no.\nSee https://x.test"))
        self.assertEqual(str(outcome.recipients[0].reply), "550 5.7.1 Our policy says no. See https://x.test")

    def test_reply_parsing(self):
        make = clientprotocol._make_reply
        self.assertEqual(make(250, ["2.0.0 Ok"]), ReplyInfo(250, "2.0.0", "Ok"))
        self.assertEqual(make(250, ["Ok"]), ReplyInfo(250, "", "Ok"))
        self.assertEqual(make(550, ["2.0.0 mismatched class"]), ReplyInfo(550, "", "2.0.0 mismatched class"))
        self.assertEqual(make(421, ["4.4.2 timeout"]), ReplyInfo(421, "4.4.2", "timeout"))
        self.assertEqual(make(250, [""]), ReplyInfo(250, "", ""))


# -- TLS ----------------------------------------------------------------------------------------------------------


class TLSTests(ClientTestCase):
    @async_test
    async def test_opportunistic_uses_starttls_when_offered(self):
        server = self.start_server(tls_options=Certificates.get().selfsigned)
        session = await self.open(server, tls="opportunistic")
        self.assertTrue(session.tls_active)
        self.assertIn(session.tls_version, ("TLSv1.2", "TLSv1.3"))
        self.assertNotIn("STARTTLS", session.extensions)  # the EHLO after TLS
        outcome = await session.send(message())
        self.assertEqual(outcome.recipients[0].reply.code, 250)
        self.assertTrue(server.messages[0].tls)
        self.assertEqual(server.commands[:3], ["EHLO client.test", "STARTTLS", "EHLO client.test"])
        await session.quit()

    @async_test
    async def test_opportunistic_plaintext_when_not_offered(self):
        server = self.start_server()
        session = await self.open(server, tls="opportunistic")
        self.assertFalse(session.tls_active)
        await session.send(message())
        self.assertFalse(server.messages[0].tls)

    @async_test
    async def test_none_never_starts_tls(self):
        server = self.start_server(tls_options=Certificates.get().selfsigned)
        session = await self.open(server, tls="none")
        self.assertFalse(session.tls_active)
        self.assertNotIn("STARTTLS", server.commands)

    @async_test
    async def test_required_without_starttls(self):
        server = self.start_server()
        e = await self.expect_failure(self.open(server, tls="required"), TLSFailure)
        self.assertIn("does not offer STARTTLS", str(e))
        self.assertFalse(any(c.startswith("MAIL") for c in server.commands))
        await server.wait_closed()

    @async_test
    async def test_required_accepts_any_certificate(self):
        server = self.start_server(tls_options=Certificates.get().other)
        session = await self.open(server, tls="required", tls_hostname="mx.example.net")
        self.assertTrue(session.tls_active)

    @async_test
    async def test_starttls_refused(self):
        server = self.start_server(tls_options=Certificates.get().selfsigned,
                                   starttls_reply="454 4.7.0 TLS not available due to local problem")
        e = await self.expect_failure(self.open(server, tls="opportunistic"), TLSFailure)
        self.assertEqual(e.reply.code, 454)

    @async_test
    async def test_verify_wrong_name(self):
        certs = Certificates.get()
        server = self.start_server(tls_options=certs.other)
        e = await self.expect_failure(
            self.open(server, tls="verify", tls_hostname="localhost", trust_root=certs.ca), TLSFailure)
        self.assertIn("localhost", str(e))
        self.assertFalse(any(c.startswith("MAIL") for c in server.commands))
        await server.wait_closed()

    @async_test
    async def test_verify_untrusted_certificate(self):
        certs = Certificates.get()
        server = self.start_server(tls_options=certs.selfsigned)  # valid for localhost, unknown issuer
        e = await self.expect_failure(
            self.open(server, tls="verify", tls_hostname="localhost", trust_root=certs.ca), TLSFailure)
        self.assertIn("TLS handshake", str(e))

    @async_test
    async def test_verify_succeeds_with_test_ca(self):
        certs = Certificates.get()
        server = self.start_server(tls_options=certs.localhost)
        session = await self.open(server, tls="verify", tls_hostname="localhost", trust_root=certs.ca)
        self.assertTrue(session.tls_active)
        await session.send(message())
        self.assertTrue(server.messages[0].tls)
        # the trust root may also be a PEM file
        session = await self.open(server, tls="verify", tls_hostname="localhost",
                                  trust_root=str(certs.ca_path))
        self.assertTrue(session.tls_active)

    @async_test
    async def test_opportunistic_handshake_failure_is_tls_failure(self):
        # STARTTLS offered and answered 220, but the server then speaks plaintext.
        server = self.start_server(advertise_starttls=True)
        e = await self.expect_failure(self.open(server, tls="opportunistic"), TLSFailure)
        self.assertIn("TLS handshake", str(e))
        await server.wait_closed()

    @async_test
    async def test_starttls_response_injection(self):
        server = self.start_server(tls_options=Certificates.get().selfsigned,
                                   starttls_extra=b"250 injected\r\n")
        e = await self.expect_failure(self.open(server, tls="opportunistic"), ProtocolError)
        self.assertIn("STARTTLS", str(e))

    @async_test
    async def test_implicit_tls(self):
        certs = Certificates.get()
        server = self.start_server(implicit_tls_options=certs.localhost)
        session = await self.open(server, tls="implicit", verify=True, tls_hostname="localhost",
                                  trust_root=certs.ca)
        self.assertTrue(session.tls_active)
        self.assertNotIn("STARTTLS", server.commands)
        await session.send(message())
        self.assertTrue(server.messages[0].tls)
        await session.quit()

    @async_test
    async def test_implicit_tls_unverified_and_verify_failure(self):
        certs = Certificates.get()
        server = self.start_server(implicit_tls_options=certs.other)
        session = await self.open(server, tls="implicit")
        self.assertTrue(session.tls_active)
        await session.quit()
        await self.expect_failure(self.open(server, tls="implicit", verify=True, tls_hostname="localhost",
                                            trust_root=certs.ca), TLSFailure)


# -- failures -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FailureTests(ClientTestCase):
    @async_test
    async def test_connection_refused(self):
        port = free_port()
        e = await self.expect_failure(connect("127.0.0.1", port, helo_name="c.test"), ConnectFailure)
        self.assertEqual(str(e), f"cannot connect to 127.0.0.1 port {port}: connection refused")

    @async_test
    async def test_server_never_answers(self):
        server = self.start_server(greeting=None)
        e = await self.expect_failure(self.open(server, command_timeout=0.5), CommandTimeout)
        self.assertEqual(e.stage, "greeting")
        self.assertIn("did not answer within 0.5 seconds during greeting", str(e))
        await server.wait_closed()

    @async_test
    async def test_timeout_with_a_clock(self):
        # the same with a fake clock: the reactor parameter gives the timers
        clock = task.Clock()
        server = self.start_server(silent_on=("DATA",))
        session = await self.open(server, reactor=FakeTimers(clock), command_timeout=60)
        d = defer.ensureDeferred(session.send(message()))
        await server_saw(server, "DATA")
        clock.advance(59)
        self.assertNoResult(d)
        clock.advance(2)
        e = await self.expect_failure(d, CommandTimeout)
        self.assertEqual(e.stage, "DATA")
        self.assertTrue(session.closed)

    @async_test
    async def test_tls_handshake_timeout(self):
        clock = task.Clock()
        server = self.start_server(advertise_starttls=True, fake_tls_reply=None)
        session_d = defer.ensureDeferred(self.open(server, tls="opportunistic", reactor=FakeTimers(clock),
                                                   command_timeout=30))
        await server_saw(server, "STARTTLS")
        await server_read(server, 3)  # EHLO, STARTTLS, then the ClientHello
        clock.advance(31)
        e = await self.expect_failure(session_d, TLSFailure)
        self.assertIn("did not finish within 30 seconds", str(e))

    @async_test
    async def test_greeting_rejected(self):
        server = self.start_server(greeting="554 5.7.1 No SMTP service here")
        e = await self.expect_failure(self.open(server), SMTPReplyError)
        self.assertEqual(e.reply, ReplyInfo(554, "5.7.1", "No SMTP service here"))
        self.assertIn("554 5.7.1 No SMTP service here", str(e))
        await server.wait_closed()

    @async_test
    async def test_ehlo_transient_error(self):
        server = self.start_server(ehlo_reply="421 4.3.2 Shutting down")
        e = await self.expect_failure(self.open(server), SMTPReplyError)
        self.assertTrue(e.reply.is_transient)

    @async_test
    async def test_garbage_reply(self):
        server = self.start_server(greeting=b"HTTP/1.1 400 Bad Request\r\n")
        e = await self.expect_failure(self.open(server), ProtocolError)
        self.assertIn("not an SMTP reply", str(e))
        await server.wait_closed()

    @async_test
    async def test_overlong_reply_line(self):
        server = self.start_server(greeting=b"220 " + b"x" * 5000)
        e = await self.expect_failure(self.open(server), ProtocolError)
        self.assertIn("longer than 4096", str(e))

    @async_test
    async def test_reply_line_of_4096_octets_accepted(self):
        server = self.start_server(greeting=b"220 " + b"x" * 4092 + b"\r\n")
        session = await self.open(server)
        self.assertEqual(len(session.greeting.text), 4092)

    @async_test
    async def test_multiline_code_change_is_protocol_error(self):
        server = self.start_server(greeting=b"220-hello\r\n250 world\r\n")
        await self.expect_failure(self.open(server), ProtocolError)

    @async_test
    async def test_connection_dropped_mid_transaction(self):
        server = self.start_server(drop_on=("DATA",), extensions=["8BITMIME"])
        session = await self.open(server)
        e = await self.expect_failure(session.send(message()), ConnectionLostError)
        self.assertEqual(e.stage, "DATA")
        self.assertIn("lost during DATA", str(e))
        self.assertTrue(session.closed)
        await self.expect_failure(session.send(message()), ConnectionLostError)
        await session.quit()  # tolerated

    @async_test
    async def test_connection_dropped_during_rcpt(self):
        server = self.start_server(drop_on=("RCPT",), extensions=[])
        session = await self.open(server)
        e = await self.expect_failure(session.send(message("b@y.test", "c@y.test")), ConnectionLostError)
        self.assertEqual(e.stage, "RCPT TO")

    @async_test
    async def test_connection_dropped_during_pipelined_group(self):
        # the server drops the connection on RCPT before its 250 to MAIL got out
        server = self.start_server(drop_on=("RCPT",))
        session = await self.open(server)
        e = await self.expect_failure(session.send(message("b@y.test", "c@y.test")), ConnectionLostError)
        self.assertEqual(e.stage, "MAIL FROM")

    @async_test
    async def test_unsolicited_421_then_close(self):
        server = self.start_server()
        session = await self.open(server)
        server_proto = next(iter(server._protocols))
        server_proto.transport.write(b"421 4.3.2 Shutting down\r\n")
        server_proto.transport.loseConnection()
        await session._proto.when_closed()
        e = await self.expect_failure(session.send(message()), ConnectionLostError)
        self.assertEqual(e.reply.code, 421)

    @async_test
    async def test_cancelling_send_aborts_the_connection(self):
        server = self.start_server(silent_on=("DATA",))
        session = await self.open(server)
        d = defer.ensureDeferred(session.send(message()))
        await server_saw(server, "DATA")
        d.cancel()
        await self.expect_failure(d, defer.CancelledError)
        await session._proto.when_closed()
        self.assertTrue(session.closed)
        await server.wait_closed()

    @async_test
    async def test_bind_address_and_host_name(self):
        server = self.start_server()
        session = await self.open(server, bind_address="127.0.0.1")
        await session.send(message())
        await session.quit()
        # a host name goes through HostnameEndpoint (resolution, then every address)
        session = await connect("localhost", server.port, helo_name="client.test", tls="none",
                                bind_address="127.0.0.1")
        self.addCleanup(session.abort)
        self.assertEqual((session.remote_host, session.remote_ip), ("localhost", "127.0.0.1"))
        await session.quit()
        self.assertEqual(len(server.messages), 1)

    @async_test
    async def test_bind_address_not_local(self):
        server = self.start_server()
        await self.expect_failure(connect("127.0.0.1", server.port, helo_name="c.test",
                                          bind_address="192.0.2.1"), ConnectFailure)

    @async_test
    async def test_abort(self):
        server = self.start_server()
        session = await self.open(server)
        await session.abort()
        self.assertTrue(session.closed)
        await server.wait_closed()

    def test_bad_arguments(self):
        d = defer.ensureDeferred(connect("127.0.0.1", 25, helo_name="c.test", tls="sometimes"))
        self.failureResultOf(d, ValueError)
        d = defer.ensureDeferred(connect("127.0.0.1", 25, helo_name="bad name\r\nMAIL"))
        self.failureResultOf(d, ValueError)


class FakeTimers:
    """The real reactor for I/O, a task.Clock for timers."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock

    def __getattr__(self, name):
        return getattr(self.clock if name in ("callLater", "seconds", "getDelayedCalls") else reactor, name)


async def server_read(server: ScriptedSMTPServer, count: int) -> None:
    """Wait until the server's first session had ``count`` reads (bounded)."""
    for _ in range(500):
        if server.sessions and len(server.sessions[0].reads) >= count:
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("server never read")


async def server_saw(server: ScriptedSMTPServer, verb: str) -> None:
    """Wait until the server received a command starting with ``verb`` (bounded)."""
    for _ in range(500):
        if any(c.upper().startswith(verb) for c in server.commands):
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"server never saw {verb}")


# -- Postfix smtp-sink ------------------------------------------------------------------------------------------------


SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


class SmtpSinkTests(ClientTestCase):
    if not os.path.exists(SMTP_SINK):
        skip = "Postfix smtp-sink is not installed"

    async def start_sink(self) -> int:
        port = free_port()
        argv = [SMTP_SINK]
        if os.geteuid() == 0:
            argv += ["-u", "nobody"]
        argv += ["-c", f"127.0.0.1:{port}", "100"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def stop():
            proc.terminate()
            proc.wait(10)

        self.addCleanup(stop)
        for _ in range(200):  # until it accepts connections (at most ~10 s)
            try:
                probe = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Protocol())
            except Exception:
                if proc.poll() is not None:
                    self.fail(f"smtp-sink exited with {proc.returncode}")
                await task.deferLater(reactor, 0.05, lambda: None)
                continue
            probe.transport.abortConnection()
            await task.deferLater(reactor, 0, lambda: None)
            return port
        self.fail("smtp-sink did not start")

    @async_test
    async def test_three_messages_on_one_connection(self):
        port = await self.start_sink()
        session = await connect("127.0.0.1", port, helo_name="client.test", tls="opportunistic",
                                command_timeout=10)
        self.addCleanup(session.abort)
        self.assertIn("PIPELINING", session.extensions)
        body = build_body(CHUNK_SIZE)
        for i, content in enumerate([BODY, body, b"Subject: 8bit\r\n\r\ncaf\xc3\xa9\r\n"]):
            outcome = await session.send(message(f"r{i}@y.test", f"s{i}@y.test", content=content))
            self.assertEqual([r.reply.code for r in outcome.recipients], [250, 250])
            self.assertEqual(outcome.recipients[0].reply.enhanced, "2.0.0")
        self.assertEqual(session.messages_sent, 3)
        await session.quit()
        self.assertTrue(session.closed)
