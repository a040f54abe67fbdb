"""
SMTP AUTH under a burst: many sessions authenticate at once over real STARTTLS (smtplib,
each in its own thread) against the submission handler in this process, its failure
throttle in a real redis-server. At most ``passwords.MAX_CONCURRENT_CHECKS`` scrypt
computations may be under way at any moment, the others queue without blocking the reactor,
and concurrent checks of the same credentials share one computation.

The instrumented scrypt holds every computation until all the sessions' AUTH commands have
reached the password check, so the checks pile up: an unbounded implementation runs all of
them at once, in as many threads, and the peak counts show it. The threads that ever ran
scrypt are counted too: each keeps a malloc arena the size of one check (the memory bound).
"""

from __future__ import annotations

import smtplib
import ssl
import tempfile
import threading
from uuid import uuid4

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from conftest import start_module_redis, stop_module_redis
from mailrelay import passwords, tlsutil
from mailrelay.config import parse_config
from mailrelay.smtp.server import ServerLimits, SMTPServerFactory
from mailrelay.store import Storage, connect_redis
from mailrelay.services.submission import SubmissionHandler

#: Seconds anything here may wait before the test counts as failed (nothing waits that long
#: when the code works).
PATIENCE = 30

REDIS = None
_TMP: str | None = None


def setUpModule() -> None:
    global REDIS, _TMP
    REDIS, _TMP = start_module_redis("submission-auth-")


def tearDownModule() -> None:
    stop_module_redis(REDIS, _TMP)


class Counter:
    """Concurrency of a section of code entered from any thread, with its peak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.total = 0
        self.threads: set[int] = set()

    def enter(self) -> None:
        with self.lock:
            self.threads.add(threading.get_ident())
            self.now += 1
            self.total += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def login(port: int, username: str, password: str) -> tuple[int, bytes]:
    """STARTTLS then one AUTH PLAIN (``login()`` would retry with LOGIN); its reply."""
    context = ssl._create_unverified_context()  # the test certificate is self-signed
    with smtplib.SMTP("127.0.0.1", port, timeout=PATIENCE) as s:
        s.starttls(context=context)
        s.ehlo()
        s.user, s.password = username, password
        try:
            return s.auth("PLAIN", s.auth_plain)
        except smtplib.SMTPAuthenticationError as e:
            return e.smtp_code, e.smtp_error


class AuthBurstTests(unittest.TestCase):
    timeout = 120

    def setUp(self):
        state = tempfile.mkdtemp(prefix="mailrelay-auth-")
        self.tls = tlsutil.server_tls_options(*tlsutil.ensure_self_signed(state, "localhost"), "1.2")

        # Every scrypt computation: counted, and held until all the AUTH commands arrived.
        self.computing = Counter()
        self.all_arrived = threading.Event()
        real_scrypt = passwords._scrypt

        def scrypt(*args, **kwargs):
            self.computing.enter()
            try:
                if not self.all_arrived.wait(PATIENCE):
                    raise AssertionError("the AUTH commands did not all reach the password check")
                return real_scrypt(*args, **kwargs)
            finally:
                self.computing.leave()

        self.patch(passwords, "_scrypt", scrypt)

        # Every computation handed to the scrypt pool, counted in the reactor thread from the
        # hand-over until its result is back: no thread scheduling in this count.
        self.handed = Counter()
        real_defer_to_thread_pool = threads.deferToThreadPool

        def defer_to_thread_pool(reactor, pool, f, *args, **kwargs):
            if pool.name != "scrypt":  # e.g. name resolution
                return real_defer_to_thread_pool(reactor, pool, f, *args, **kwargs)
            self.handed.enter()

            def back(result):
                self.handed.leave()
                return result

            return real_defer_to_thread_pool(reactor, pool, f, *args, **kwargs).addBoth(back)

        self.patch(threads, "deferToThreadPool", defer_to_thread_pool)

    def serve(self, users: dict[str, str], expected_auths: int) -> int:
        config = parse_config({"redis": {"url": REDIS.url, "key_prefix": f"t{uuid4().hex[:12]}:"}})
        redis = connect_redis(config, None)
        self.addCleanup(lambda: redis.disconnect().addErrback(lambda f: None))
        checker = passwords.PasswordChecker()
        checker.startService()
        self.addCleanup(checker.stopService)
        handler = SubmissionHandler(config, Storage(config, redis), users=users, clock=reactor,
                                    tls_available=True, password_checker=checker)
        # arrival: past the failure throttle (a Redis round trip), at the password check
        real_check = handler.authenticator.check
        self.auths = 0

        def check(username, password):
            self.auths += 1
            if self.auths == expected_auths:
                self.all_arrived.set()
            return real_check(username, password)

        handler.authenticator.check = check
        limits = ServerLimits(hostname="localhost", idle_timeout=PATIENCE,
                              max_connections_per_ip=100)
        factory = SMTPServerFactory(limits, handler, self.tls, auth_possible=True)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: factory.shutdown(1))
        self.addCleanup(self.all_arrived.set)  # never leave a pool thread waiting
        return port.getHost().port

    def logins(self, port: int, credentials: list[tuple[str, str]]) -> defer.Deferred:
        """Each login in its own thread (not the reactor's pool, which scrypt uses)."""
        results = []
        for username, password in credentials:
            d = defer.Deferred()

            def run(d=d, username=username, password=password):
                try:
                    reply = login(port, username, password)
                except BaseException as e:
                    reactor.callFromThread(d.errback, e)
                else:
                    reactor.callFromThread(d.callback, reply)

            threading.Thread(target=run, daemon=True).start()
            results.append(d)
        return defer.gatherResults(results, consumeErrors=True)

    @defer.inlineCallbacks
    def test_concurrent_scrypt_checks_are_bounded(self):
        limit = passwords.MAX_CONCURRENT_CHECKS
        n = limit + 6  # fewer than [submission] auth_failures_per_ip's 10
        users = {f"user{i}": passwords.hash_password(f"pw{i}", log_n=8) for i in range(n)}
        credentials = [(f"user{i}", f"pw{i}") for i in range(n)]
        credentials[-1] = (f"user{n - 1}", "wrong")
        port = self.serve(users, n)

        replies = yield self.logins(port, credentials)

        self.assertEqual([code for code, _ in replies], [235] * (n - 1) + [535])
        self.assertEqual(self.computing.total, n)  # distinct credentials: one check each
        # The first checks were held until the last AUTH arrived: `limit` of them ran, in
        # `limit` threads, the others waited their turn.
        self.assertEqual(self.computing.peak, limit)
        self.assertLessEqual(len(self.computing.threads), limit)
        self.assertEqual((self.handed.now, self.computing.now), (0, 0))

    @defer.inlineCallbacks
    def test_concurrent_checks_of_the_same_credentials_share_one_computation(self):
        n = 6
        users = {"alice": passwords.hash_password("secret", log_n=8)}
        port = self.serve(users, n)

        replies = yield self.logins(port, [("alice", "secret")] * n)

        self.assertEqual([code for code, _ in replies], [235] * n)
        self.assertEqual(self.computing.total, 1)
        self.assertEqual(self.handed.total, 1)

    @defer.inlineCallbacks
    def test_shared_failure_answers_every_session(self):
        n = 4
        users = {"alice": passwords.hash_password("secret", log_n=8)}
        port = self.serve(users, n)

        replies = yield self.logins(port, [("alice", "guess")] * n)

        self.assertEqual([code for code, _ in replies], [535] * n)
        self.assertEqual(self.computing.total, 1)
