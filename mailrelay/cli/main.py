"""
cli.main: the ``mailrelay`` administration command: the entry point that assembles the subcommands.

JOB
    Parses the command line and runs one subcommand::

        mailrelay check-config [-c FILE]   validate and print the effective configuration
        mailrelay hash-password            read a password on stdin, print a hash for [submission] users
        mailrelay version                  print the version
        mailrelay queue list|show|retry|delete ...
                                           the delivery queue (mailrelay.cli.queue)
        mailrelay suppressions list [--unproven] | add ADDRESS [--reason R] | remove ADDRESS [-c FILE]
                                           the addresses mail is not sent to (mailrelay.cli.suppressions)
        mailrelay bounce classify FILE... | reclassify [--dry-run] [-c FILE]
                                           parse bounce messages; classify the stored bounces again
                                           (mailrelay.cli.bounces)
        mailrelay cluster [-c FILE]        the live daemons sharing the Redis: heartbeat age, what
                                           each is delivering, version (see mailrelay.services.cluster)
        mailrelay migrate [--force] [-c FILE]
                                           migrate the Redis data to this release's format version
        mailrelay domains add DOMAIN [--selector S] [--ed25519] [-c FILE]
                                           declare a sender domain: DKIM key generated (stored in Redis,
                                           encrypted), DNS records to publish printed
        mailrelay domains list|show|remove|rotate|verify [DOMAIN] [-c FILE]
                                           sender domains, their keys and DNS records (mailrelay.services.domains)
        mailrelay archive status [--json] [-c FILE]
                                           the archive in PostgreSQL: database, schema version, partitions
                                           per table, sizes (mailrelay.cli.archive)

    ``check-config``, ``hash-password`` and ``version`` live here. Each other subcommand's
    parser and actions live in its own module, which registers them on the parser built by
    :func:`build_parser`: :mod:`mailrelay.cli.queue`, :mod:`mailrelay.cli.suppressions`,
    :mod:`mailrelay.cli.bounces`, :mod:`mailrelay.cli.cluster` (``cluster`` and
    ``migrate``), :mod:`mailrelay.cli.domains` and :mod:`mailrelay.cli.archive` (which reads
    the archive's PostgreSQL, not Redis). Those that talk to the daemon's Redis
    do it through :func:`mailrelay.cli.common.run_with_storage`: the managed one through
    ``state_dir/redis/redis.sock`` (a relative state_dir is taken from the current
    directory, so run them where the daemon runs, or use an absolute state_dir), else
    ``[redis] url`` or ``sentinels``. They use only :class:`mailrelay.store.Storage` and
    give up after ``[redis] timeout`` per request. :func:`mailrelay.cli.common.load_or_exit`
    also serves the twistd plugin.

SECURITY
    Run by the operator, whose command line and configuration are trusted; whoever can run
    it with the daemon's configuration can change the queue and the suppressions (see each
    subcommand's module). ``hash-password`` reads the password without echo from a
    terminal (asked twice) or as the first line of stdin, and prints only the hash;
    ``check-config`` masks secrets. What the subcommands print from Redis goes through
    :func:`mailrelay.cli.common.clean`, which escapes control characters so that stored text
    cannot drive the terminal. The managed Redis socket is probed before use, so a missing
    daemon is one line, not a hang.

STANDARDS
    None implemented here.

DIAGNOSTICS
    Output on stdout; errors are one line on stderr and exit status 1 (``SystemExit`` with
    a message; argparse usage errors exit 2): ``mailrelay: configuration error:
    <ConfigError>``, ``mailrelay: passwords differ``, ``mailrelay: empty password``, and
    each subcommand's own (see its module; the Redis connection errors are
    :mod:`mailrelay.cli.common`'s). ``check-config`` writes ``mailrelay: warning:
    <warning>`` lines on stderr and exits 0.

CONFIGURATION
    ``-c FILE`` (the whole configuration is validated); ``check-config`` loads ``[tls]``
    cert, key, min_version and prints every section. The subcommands' keys are listed in
    their modules. Owns no file or Redis data.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from mailrelay import __version__
from mailrelay.cli.archive import add_archive_parser
from mailrelay.cli.bounces import add_bounce_parser
from mailrelay.cli.cluster import add_cluster_parsers
from mailrelay.cli.common import load_or_exit
from mailrelay.cli.domains import add_domains_parser
from mailrelay.cli.queue import add_queue_parser
from mailrelay.cli.suppressions import add_suppressions_parser
from mailrelay.config import ConfigError, config_warnings, render_config
from mailrelay.passwords import hash_password
from mailrelay.tlsutil import server_tls_options


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    if config.tls.cert:
        try:
            server_tls_options(config.tls.cert, config.tls.key, config.tls.min_version)
        except ConfigError as e:
            raise SystemExit(f"mailrelay: configuration error: {e}")
    for warning in config_warnings(config):
        sys.stderr.write(f"mailrelay: warning: {warning}\n")
    source = args.config or "built-in defaults"
    sys.stdout.write(f"# effective configuration ({source}); secrets masked\n")
    sys.stdout.write(render_config(config))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise SystemExit("mailrelay: passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise SystemExit("mailrelay: empty password")
    print(hash_password(password))
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    print(f"mailrelay {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailrelay", description="mailrelay administration")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check-config", help="validate and print the effective configuration")
    check.add_argument("-c", "--config", help="TOML configuration file")
    check.set_defaults(func=cmd_check_config)
    hashp = sub.add_parser("hash-password", help="read a password on stdin, print its hash")
    hashp.set_defaults(func=cmd_hash_password)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=cmd_version)
    add_queue_parser(sub)
    add_cluster_parsers(sub)
    add_bounce_parser(sub)
    add_suppressions_parser(sub)
    add_domains_parser(sub)
    add_archive_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
