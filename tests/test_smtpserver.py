"""
The SMTP server protocol on a real TCP socket, with a recording handler:
grammar, PIPELINING order, limits, and every SMTP smuggling variant.
"""

from __future__ import annotations

import socket

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from mailrelay.smtp import address, server as smtpserver
from mailrelay.smtp.server import Reply, ServerLimits, SMTPServerFactory


class RecordingHandler:
    """Accepts everything from everyone and records the messages; can delay replies."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.delay: float = 0.0

    def auth_offered(self, session):
        return True

    def auth_throttled(self, session):
        return False

    def authenticate(self, session, username, password):
        return username == "user" and password == b"secret"

    def check_sender(self, session, sender):
        return self._later(None)

    def check_recipient(self, session, recipient):
        if recipient.startswith("reject"):
            return Reply(550, "5.1.1", "No such user")
        return self._later(None)

    def accept_message(self, session, transaction, content):
        self.messages.append((transaction.sender, list(transaction.recipients), content))
        return self._later(Reply(250, "2.0.0", f"Ok: queued as {len(self.messages)}"))

    def _later(self, value):
        if not self.delay:
            return value
        d = defer.Deferred()
        reactor.callLater(self.delay, d.callback, value)
        return d


def converse(port: int, payload: bytes, *, read_until_close: bool = True) -> bytes:
    """Send ``payload`` after the greeting and return everything the server said."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def codes(transcript: bytes) -> list[str]:
    """Reply codes of the final lines of each reply (multi-line continuations skipped)."""
    out = []
    for line in transcript.split(b"\r\n"):
        if len(line) >= 4 and line[:3].isdigit() and line[3:4] == b" ":
            out.append(line[:3].decode())
    return out


class ProtocolTests(unittest.TestCase):
    max_size = 100_000

    def setUp(self):
        self.handler = RecordingHandler()
        limits = ServerLimits(hostname="mx.test", max_message_size=self.max_size,
                              max_recipients=3, idle_timeout=5, data_timeout=5,
                              max_connections_per_ip=2)
        self.factory = SMTPServerFactory(limits, self.handler)
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(lambda: self.factory.shutdown(1))

    def talk(self, payload: bytes) -> defer.Deferred:
        return threads.deferToThread(converse, self.port.getHost().port, payload)

    @defer.inlineCallbacks
    def test_pipelined_transaction_replies_in_order(self):
        self.handler.delay = 0.01  # every decision is a Deferred
        out = yield self.talk(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n"
                              b"RCPT TO:<reject@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
                              b"Subject: t\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "250", "250", "550", "250", "354", "250", "221"])
        self.assertEqual(self.handler.messages,
                         [("a@x.test", ["b@y.test", "c@y.test"], b"Subject: t\r\n\r\nhello\r\n")])

    @defer.inlineCallbacks
    def test_ehlo_advertises_extensions(self):
        out = yield self.talk(b"EHLO c\r\nQUIT\r\n")
        for ext in (b"PIPELINING", b"SIZE 100000", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES"):
            self.assertIn(b"250-" + ext + b"\r\n", out)

    @defer.inlineCallbacks
    def test_dot_unstuffing(self):
        yield self.talk(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
                        b"..leading dot\r\n..\r\n.x\r\nend\r\n.\r\nQUIT\r\n")
        self.assertEqual(self.handler.messages[0][2], b".leading dot\r\n.\r\nx\r\nend\r\n")

    @defer.inlineCallbacks
    def test_empty_message(self):
        yield self.talk(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n.\r\nQUIT\r\n")
        self.assertEqual(self.handler.messages[0][2], b"")

    @defer.inlineCallbacks
    def check_smuggling(self, separator: bytes):
        """A bare-newline "end of data" never ends DATA, and the message is rejected."""
        smuggled = (b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
                    b"Subject: outer\r\n\r\nbody" + separator +
                    b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n"
                    b"Subject: smuggled\r\n\r\nevil\r\n.\r\nQUIT\r\n")
        out = yield self.talk(smuggled)
        self.assertEqual(self.handler.messages, [])
        self.assertEqual(codes(out), ["220", "250", "250", "250", "354", "500", "221"])
        self.assertIn(b"500 5.5.2", out)

    def test_smuggling_lf_dot_lf(self):
        return self.check_smuggling(b"\n.\n")

    def test_smuggling_cr_dot_cr(self):
        return self.check_smuggling(b"\r.\r")

    def test_smuggling_lf_dot_crlf(self):
        return self.check_smuggling(b"\n.\r\n")

    def test_smuggling_crlf_dot_lf(self):
        return self.check_smuggling(b"\r\n.\n")

    def test_smuggling_cr_dot_crlf(self):
        return self.check_smuggling(b"\r.\r\n")

    @defer.inlineCallbacks
    def test_long_data_line_rejected_and_not_read_as_commands(self):
        body = b"x" * 5000 + b"\r\nMAIL FROM:<evil@x.test>\r\n"
        out = yield self.talk(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
                              + body + b".\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "250", "250", "354", "554", "250", "221"])
        self.assertIn(b"554 5.6.0", out)
        self.assertEqual(self.handler.messages, [])

    @defer.inlineCallbacks
    def test_line_of_exactly_1000_octets_accepted(self):
        line = b"y" * 998
        out = yield self.talk(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
                              + line + b"\r\n.\r\nQUIT\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued", out)
        self.assertEqual(self.handler.messages[0][2], line + b"\r\n")

    @defer.inlineCallbacks
    def test_message_over_size_limit(self):
        body = (b"z" * 900 + b"\r\n") * (self.max_size // 900 + 10)
        out = yield self.talk(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
                              + body + b".\r\nRSET\r\nQUIT\r\n")
        self.assertIn(b"552 5.3.4", out)
        self.assertEqual(codes(out)[-2:], ["250", "221"])  # session still usable
        self.assertEqual(self.handler.messages, [])

    @defer.inlineCallbacks
    def test_declared_size_too_big(self):
        out = yield self.talk(b"EHLO c\r\nMAIL FROM:<a@x.test> SIZE=100001\r\nQUIT\r\n")
        self.assertIn(b"552 5.3.4", out)

    @defer.inlineCallbacks
    def test_too_many_recipients(self):
        out = yield self.talk(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n" +
                              b"".join(b"RCPT TO:<r%d@y.test>\r\n" % i for i in range(4)) + b"QUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "250", "250", "250", "250", "452", "221"])
        self.assertIn(b"452 4.5.3", out)

    @defer.inlineCallbacks
    def test_overlong_command_line(self):
        out = yield self.talk(b"EHLO c\r\nNOOP " + b"a" * 2000 + b"\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "500", "250", "221"])
        self.assertIn(b"500 5.5.2", out)

    @defer.inlineCallbacks
    def test_overlong_command_without_newline_is_not_rescanned(self):
        # 1 MB with no line end: one error, then the rest of that line is discarded.
        out = yield self.talk(b"EHLO c\r\n" + b"A" * 1_000_000 + b"\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "500", "250", "221"])

    @defer.inlineCallbacks
    def test_sequence_errors(self):
        out = yield self.talk(b"MAIL FROM:<a@x.test>\r\nEHLO c\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"
                              b"MAIL FROM:<a@x.test>\r\nDATA\r\nMAIL FROM:<a@x.test>\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "503", "250", "503", "503", "250", "503", "503", "221"])

    @defer.inlineCallbacks
    def test_bad_addresses(self):
        out = yield self.talk(b"EHLO c\r\n"
                              b"MAIL FROM:<" + b"l" * 65 + b"@x.test>\r\n"
                              b"MAIL FROM:<no-at-sign>\r\n"
                              b"MAIL FROM:<a@bad_domain!>\r\n"
                              b"MAIL FROM:<a@x.test> FOO=bar\r\n"
                              b"MAIL FROM:<j\xc3\xb6rg@x.test>\r\n"
                              b"MAIL FROM:<j\xc3\xb6rg@x.test> SMTPUTF8\r\n"
                              b"RCPT TO:<b@[127.0.0.1]>\r\n"
                              b"RCPT TO:<b@[IPv6:::1]>\r\n"
                              b"RCPT TO:<b@[999.0.0.1]>\r\n"
                              b"QUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "501", "501", "501", "555", "553", "250",
                                      "250", "250", "501", "221"])

    @defer.inlineCallbacks
    def test_auth_plain_and_malformed(self):
        import base64
        bad_two_fields = base64.b64encode(b"user\x00secret")
        good = base64.b64encode(b"\x00user\x00secret")
        out = yield self.talk(b"EHLO c\r\nAUTH PLAIN " + bad_two_fields + b"\r\n"
                              b"AUTH PLAIN !!!notbase64\r\n"
                              b"AUTH PLAIN " + base64.b64encode(b"\x00user\x00wrong") + b"\r\n"
                              b"AUTH PLAIN " + good + b"\r\nAUTH PLAIN " + good + b"\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "501", "501", "535", "235", "503", "221"])

    @defer.inlineCallbacks
    def test_auth_login_and_cancel(self):
        import base64
        out = yield self.talk(b"EHLO c\r\nAUTH LOGIN\r\n*\r\nAUTH LOGIN\r\n" + base64.b64encode(b"user") +
                              b"\r\n" + base64.b64encode(b"secret") + b"\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "250", "334", "501", "334", "334", "235", "221"])

    @defer.inlineCallbacks
    def test_connection_limit_per_ip(self):
        first = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        second = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(first.close)
        self.addCleanup(second.close)
        yield threads.deferToThread(first.recv, 100)
        yield threads.deferToThread(second.recv, 100)
        out = yield self.talk(b"")
        self.assertTrue(out.startswith(b"421 4.7.0"), out)

    @defer.inlineCallbacks
    def test_unknown_and_unimplemented_commands(self):
        out = yield self.talk(b"FOO\r\nEXPN x\r\nHELP\r\nVRFY x\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(codes(out), ["220", "500", "502", "214", "252", "250", "221"])

    @defer.inlineCallbacks
    def test_too_many_errors_closes(self):
        out = yield self.talk(b"FOO\r\n" * 25)
        self.assertEqual(codes(out).count("500"), smtpserver.MAX_ERRORS - 1)
        self.assertTrue(out.rstrip().endswith(b"Too many errors, closing connection"))

    @defer.inlineCallbacks
    def test_starttls_unavailable_without_certificate(self):
        out = yield self.talk(b"EHLO c\r\nSTARTTLS\r\nQUIT\r\n")
        self.assertIn(b"454 4.7.0", out)
        self.assertNotIn(b"STARTTLS\r\n", out.split(b"454")[0])


class ParsingTests(unittest.SynchronousTestCase):
    def test_parse_path(self):
        self.assertEqual(address.parse_path("<a@b.c> SIZE=10", allow_null=False), ("a@b.c", "SIZE=10"))
        self.assertEqual(address.parse_path("<>", allow_null=True), ("", ""))
        self.assertEqual(address.parse_path("<@r1,@r2:a@b.c>", allow_null=False), ("a@b.c", ""))
        self.assertEqual(address.parse_path('<"x y>z"@b.c>', allow_null=False), ('"x y>z"@b.c', ""))
        for bad in ("<a@b.c", "<>", "<a@b.c>x", "<a..b@c.d>", "<a@-b.c>"):
            with self.assertRaises(address.AddressError, msg=bad):
                address.parse_path(bad, allow_null=False)

    def test_reply_encoding(self):
        self.assertEqual(Reply(250, "", "a\nb\nc").encode(), b"250-a\r\n250-b\r\n250 c\r\n")
        self.assertEqual(smtpserver.OK.encode(), b"250 2.0.0 Ok\r\n")
