"""
cli.suppressions: ``mailrelay suppressions list|add|remove``, the addresses mail is not sent to.

JOB
    Registers the ``suppressions`` subcommand (:func:`add_suppressions_parser`, called by
    :mod:`mailrelay.cli.main`) and runs it against the daemon's Redis through
    :func:`mailrelay.cli.common.react_with_storage` (``list --unproven`` reads the bounces
    and messages from Redis, then from the PostgreSQL archive once the data is at version
    2, where they live after their release: :func:`mailrelay.cli.common.with_archive`)::

        mailrelay suppressions list [--unproven] [-c FILE]
                                           address, since, type, reason; --unproven: only the
                                           suppressions made from bounces that did not prove which
                                           recipient they are about (see mailrelay.services.bounces)
        mailrelay suppressions add ADDRESS [--reason R] [-c FILE]
                                           suppress an address (type ManuallyDeactivated)
        mailrelay suppressions remove ADDRESS [-c FILE]
                                           reactivate an address

SECURITY
    Whoever can run it with the daemon's configuration decides which addresses receive
    mail. Addresses and reasons read from Redis (from bounces written by remote servers)
    are printed through :func:`mailrelay.cli.common.clean`. ``add`` accepts only a valid
    mailbox (:func:`mailrelay.smtp.address.validate_mailbox`).

STANDARDS
    RFC 5321 and RFC 6531 mailbox syntax for ``add`` (through validate_mailbox).

DIAGNOSTICS
    Output on stdout; errors one line on stderr, exit status 1: ``mailrelay: <address> is
    already suppressed``, ``mailrelay: <address> is not suppressed``, ``mailrelay:
    <address>: <AddressError>``, and the configuration and Redis connection errors of
    :mod:`mailrelay.cli.common`.

CONFIGURATION
    ``-c FILE``; ``[bounces]`` (the VERP secret, for ``list --unproven``); ``[server]
    state_dir``, ``[redis]`` and ``[archive]`` through :mod:`mailrelay.cli.common`. Owns
    no file or Redis data: it changes the suppressions only through the storage.
"""

from __future__ import annotations

import argparse
from typing import Any

from mailrelay.cli.common import add_config_option, clean, load_or_exit, plural, react_with_storage, with_archive
from mailrelay.services.bounces import load_verp, unproven_suppressions
from mailrelay.smtp.address import AddressError, validate_mailbox
from mailrelay.store.archivedb import ArchiveDatabase
from mailrelay.store.archiveread import ArchiveReader
from mailrelay.store.archiveview import ArchiveView
from mailrelay.store.interfaces import SuppressionAdminStorage
from mailrelay.store.records import Suppression
from mailrelay.timefmt import rfc3339


def cmd_suppressions(args: argparse.Namespace) -> int:
    async def run(storage: SuppressionAdminStorage) -> None:
        await storage.measure_clock()
        if args.suppressions_command == "list" and args.unproven:
            verp = await load_verp(config, storage)

            async def audit(database: ArchiveDatabase | None) -> list[tuple[Suppression, str]]:
                # bounces and messages: Redis, then the PostgreSQL archive at data version 2
                archive = storage if database is None else ArchiveView(storage, ArchiveReader(database))
                return await unproven_suppressions(storage, archive, verp)
            unproven = await with_archive(config, storage, audit)
            for entry, why in unproven:
                print(f"{clean(entry.address)}\t{clean(entry.since or '?')}\t{clean(entry.type)}\t{clean(why)}")
            print(f"{plural(len(unproven), 'unproven suppression')} (reactivate with `mailrelay suppressions remove`)")
        elif args.suppressions_command == "list":
            entries = await storage.list_suppressions()
            for entry in sorted(entries, key=lambda s: s.address):
                print(f"{clean(entry.address)}\t{clean(entry.since or '?')}\t{clean(entry.type)}"
                      f"\t{clean(entry.reason)[:100]}")
            print(f"{plural(len(entries), 'suppressed address')}")
        elif args.suppressions_command == "add":
            try:
                validate_mailbox(args.address)
            except AddressError as e:
                raise SystemExit(f"mailrelay: {clean(args.address)}: {e}")
            entry = {"since": rfc3339(storage.now_ms() / 1000), "type": "ManuallyDeactivated",
                     "reason": args.reason or "added by administrator"}
            if not await storage.add_suppression(args.address, entry):
                raise SystemExit(f"mailrelay: {clean(args.address.lower())} is already suppressed")
            print(f"{clean(args.address.lower())} suppressed")
        else:
            if not await storage.remove_suppression(args.address):
                raise SystemExit(f"mailrelay: {clean(args.address.lower())} is not suppressed")
            print(f"{clean(args.address.lower())} reactivated")

    config = load_or_exit(getattr(args, "config", None))   # --unproven: the VERP secret
    return react_with_storage(args, run, config)


def add_suppressions_parser(sub: Any) -> None:
    group = sub.add_parser("suppressions", help="the addresses mail is not sent to")
    add_config_option(group)
    actions = group.add_subparsers(dest="suppressions_command", required=True)
    lister = actions.add_parser("list", help="list suppressed addresses (since, type, reason)")
    lister.add_argument("--unproven", action="store_true",
                        help="only those made from bounces that did not prove which recipient they "
                             "are about (before mailrelay checked): address, since, type, why")
    add = actions.add_parser("add", help="suppress an address")
    add.add_argument("address")
    add.add_argument("--reason", help="why (shown in list and in the 550 reply)")
    remove = actions.add_parser("remove", help="reactivate an address")
    remove.add_argument("address")
    group.set_defaults(func=cmd_suppressions)
    for p in (lister, add, remove):
        add_config_option(p)
        p.set_defaults(func=cmd_suppressions)
