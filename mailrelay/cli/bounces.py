"""
cli.bounces: ``mailrelay bounce classify|reclassify``, the bounce parser and the stored bounces.

JOB
    Registers the ``bounce`` subcommand (:func:`add_bounce_parser`, called by
    :mod:`mailrelay.cli.main`)::

        mailrelay bounce classify FILE...  parse bounce messages (RFC 5322 files, "-" for stdin); print one
                                           JSON object per file and recipient: file, type, type_code,
                                           recipient, status, description, rule, reason (which rule,
                                           status, reply code and text decided)
        mailrelay bounce reclassify [--dry-run] [-c FILE]
                                           classify the stored bounces again; print each changed one
                                           (id, address, old -> new type, effect, reason); reactivate
                                           the addresses a bounce suppressed that the new type does not
                                           (never an operator's suppression)

    ``classify`` needs no configuration and no Redis (:mod:`mailrelay.mail.bounceparse`);
    ``reclassify`` runs :func:`mailrelay.services.bounces.reclassify_bounces` against the
    daemon's Redis through :func:`mailrelay.cli.common.react_with_storage`, and once the
    data is at version 2 against the PostgreSQL archive's bounces too (those released from
    Redis live there only: their rows are rewritten; :func:`mailrelay.cli.common.with_archive`).

SECURITY
    ``classify`` reads files the operator names and prints JSON (``json.dumps`` escapes
    control characters). ``reclassify`` prints text read from Redis (addresses, remote
    replies) through :func:`mailrelay.cli.common.clean`; without ``--dry-run`` it changes
    stored bounces and reactivates addresses, never an operator's suppression.

STANDARDS
    RFC 5322 messages, RFC 3464 delivery status notifications and RFC 3463 status codes, as
    read by :mod:`mailrelay.mail.bounceparse`.

DIAGNOSTICS
    ``classify``: ``mailrelay: <file>: <strerror>`` on stderr for an unreadable file; it goes
    on with the others and exits 1. ``reclassify``: the configuration, Redis connection
    and archive database errors of :mod:`mailrelay.cli.common`, one line on stderr, exit
    status 1.

CONFIGURATION
    ``classify``: none. ``reclassify``: ``-c FILE``; ``[bounces]`` (through
    :mod:`mailrelay.services.bounces`), ``[server] state_dir``, ``[redis]`` and
    ``[archive]`` through :mod:`mailrelay.cli.common`. Owns no file or Redis data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mailrelay.cli.common import clean, load_or_exit, plural, react_with_storage, with_archive
from mailrelay.mail.bounceparse import parse_bounce
from mailrelay.services.bounces import Reclassification, reclassify_bounces
from mailrelay.store.archivebounces import ArchiveBounceStore
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.interfaces import BounceReclassifyAdminStorage


def cmd_bounce_classify(args: argparse.Namespace) -> int:

    status = 0
    for name in args.files:
        try:
            data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        except OSError as e:
            print(f"mailrelay: {clean(name)}: {e.strerror or e}", file=sys.stderr)
            status = 1
            continue
        for report in parse_bounce(data):
            print(json.dumps(report.to_json(name)), flush=True)
    return status


def cmd_bounce_reclassify(args: argparse.Namespace) -> int:
    config = load_or_exit(getattr(args, "config", None))

    async def run(storage: BounceReclassifyAdminStorage) -> None:
        async def reclassify(database: ArchiveDatabase | None) -> list[Reclassification]:
            # at data version 2 the bounces released from Redis are the archive's
            archive = ArchiveBounceStore(database) if database is not None else None
            return await reclassify_bounces(storage, apply=not args.dry_run, archive=archive)
        changes = await with_archive(config, storage, reclassify, write=True)
        for change in changes:
            if change.reactivates:
                effect = "would reactivate" if args.dry_run else "reactivated"
            else:
                effect = "would update" if args.dry_run else ("updated" if change.applied else "expired")
            print(f"{clean(change.bounce_id)}\t{clean(change.address or '-')}\t{clean(change.old_type)} -> "
                  f"{clean(change.new_type)}\t{effect}\t{clean(change.reason)[:300]}")
        reactivated = sum(1 for c in changes if c.reactivates)
        verb = "would be" if args.dry_run else "were"
        addresses = "address" if reactivated == 1 else "addresses"
        print(f"{plural(len(changes), 'bounce')} reclassified, {reactivated} {addresses} {verb} reactivated"
              + (" (dry run: nothing changed)" if args.dry_run else ""))

    return react_with_storage(args, run, config)


def add_bounce_parser(sub: Any) -> None:
    bounce = sub.add_parser("bounce", help="bounce message tools")
    actions = bounce.add_subparsers(dest="bounce_command", required=True, metavar="ACTION")
    classify = actions.add_parser("classify", help="parse bounce messages; one JSON object per file and recipient")
    classify.add_argument("files", nargs="+", metavar="FILE", help='a message file, or "-" for stdin')
    classify.set_defaults(func=cmd_bounce_classify)
    reclassify = actions.add_parser(
        "reclassify", help="classify the stored bounces again; reactivate addresses whose suppression no longer holds")
    reclassify.add_argument("--dry-run", action="store_true", help="list the changes, change nothing")
    reclassify.add_argument("-c", "--config", help="TOML configuration file")
    reclassify.set_defaults(func=cmd_bounce_reclassify)
