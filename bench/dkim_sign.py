#!/usr/bin/env python3
"""
bench/dkim_sign.py: what a DKIM signature costs per message.

Measures, on a typical transactional message (about 4 KB; ``--size`` to change it):

``rsa-sha256 (cryptography)``   mailrelay's signer (mailrelay.mail.dkim.sign_message): dkimpy's
                                relaxed/relaxed canonicalisation, the RSA-2048 operation by
                                ``cryptography`` (OpenSSL). This is what the daemon does.
``ed25519-sha256 (cryptography)``  the same with an Ed25519 key (RFC 8463).
``rsa+ed25519``                 both signatures at once (``domains add --ed25519``).
``rsa-sha256 (dkimpy)``         dkimpy's own ``dkim.sign`` with its pure-Python RSA, for
                                comparison (what mailrelay avoids).
``canonicalise + hash only``    the part without the private-key operation.

Prints one line per case: milliseconds per signature (median of ``--rounds`` rounds of
``--count`` signatures, after a warm-up) and signatures per second on one core. The daemon runs
the signer in the reactor's thread pool, so this time is added to the submission reply's
latency but does not block other sessions.

    python bench/dkim_sign.py [--count 200] [--rounds 5] [--size 4000] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def message(size: int) -> bytes:
    header = (b"Received: from app.example.com ([192.0.2.7]) by mx.example.net (mailrelay) with ESMTPSA\r\n"
              b"X-Mailrelay-ID: 0193a1b2c3d4e5f60718\r\n"
              b"From: Example Shop <orders@example.com>\r\nTo: Customer <customer@example.org>\r\n"
              b"Subject: Your order #12345 has shipped\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
              b"Message-ID: <0193a1b2c3d4e5f60718@mx.example.net>\r\nMIME-Version: 1.0\r\n"
              b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n")
    line = b"Thank you for your order. Your parcel is on its way and should arrive soon.  \r\n"
    return header + line * max(1, size // len(line))


def timed(function, count: int, rounds: int) -> float:
    """Median seconds per call over ``rounds`` rounds of ``count`` calls (after one warm-up round)."""
    for _ in range(max(1, count // 10)):
        function()
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(count):
            function()
        results.append((time.perf_counter() - start) / count)
    return statistics.median(results)


def main() -> int:
    parser = argparse.ArgumentParser(description="DKIM signing cost per message")
    parser.add_argument("--count", type=int, default=200, help="signatures per round (dkimpy: a tenth)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=4000, help="approximate message size in bytes")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args()

    import dkim
    from cryptography.hazmat.primitives import serialization
    from dkim.canonicalization import CanonicalizationPolicy

    from mailrelay.mail.dkim import ED25519, RSA, SigningKey, _headers_and_body, generate_key, sign_message

    msg = message(args.size)
    rsa, ed = generate_key(RSA), generate_key(ED25519)
    rsa_key = SigningKey("example.com", "s1", RSA, rsa.private)
    ed_key = SigningKey("example.com", "s1-ed25519", ED25519, ed.private)
    pkcs1 = rsa.private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                      serialization.NoEncryption())
    include = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type",
               b"content-transfer-encoding", b"from"]
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")

    def canonical_only() -> None:
        headers, body = _headers_and_body(msg)
        hashlib.sha256(policy.canonicalize_body(body)).digest()
        policy.canonicalize_headers(headers)

    cases = [
        ("rsa-sha256 (cryptography)", lambda: sign_message(msg, [rsa_key]), args.count),
        ("ed25519-sha256 (cryptography)", lambda: sign_message(msg, [ed_key]), args.count),
        ("rsa+ed25519 (cryptography)", lambda: sign_message(msg, [rsa_key, ed_key]), args.count),
        ("rsa-sha256 (dkimpy pure Python)", lambda: dkim.sign(msg, b"s1", b"example.com", pkcs1,
                                                               canonicalize=(b"relaxed", b"relaxed"),
                                                               include_headers=include),
         max(1, args.count // 10)),
        ("canonicalise + hash only", canonical_only, args.count),
    ]
    results = {}
    for name, function, count in cases:
        results[name] = timed(function, count, args.rounds) * 1000
    if args.json:
        print(json.dumps({"message_bytes": len(msg), "ms_per_signature": results}))
        return 0
    print(f"DKIM signing cost, message of {len(msg)} bytes (median of {args.rounds} rounds)")
    for name, ms in results.items():
        print(f"  {name:<34} {ms:8.3f} ms   {1000 / ms:9.0f} /s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
