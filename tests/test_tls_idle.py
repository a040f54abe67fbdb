"""The server TLS context frees each connection's record buffers while it is idle."""

from __future__ import annotations

import tempfile

from OpenSSL import SSL
from twisted.trial import unittest

from mailrelay import tlsutil


class ReleaseBuffersTests(unittest.TestCase):
    def test_server_context_releases_buffers(self):
        state = tempfile.mkdtemp(prefix="mailrelay-tls-")
        options = tlsutil.server_tls_options(*tlsutil.ensure_self_signed(state, "localhost"), "1.2")
        context = options.getContext()
        self.assertIs(context, options.getContext())  # the one every connection is made from
        mode = context.set_mode(0)  # SSL_CTX_set_mode returns the mode in force
        self.assertTrue(mode & SSL.MODE_RELEASE_BUFFERS, hex(mode))
