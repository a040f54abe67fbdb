"""
The ``mailrelay`` administration command.

    mailrelay check-config [-c FILE]   validate and print the effective configuration
    mailrelay hash-password            read a password on stdin, print a hash for [submission] users
    mailrelay version                  print the version

Every subcommand that reads the configuration takes ``-c FILE``; errors are
one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from mailrelay import __version__
from mailrelay.config import Config, ConfigError, load_config, render_config


def load_or_exit(path: str | None) -> Config:
    """Load the configuration, or print the one-line reason and exit with status 1."""
    try:
        return load_config(path)
    except ConfigError as e:
        raise SystemExit(f"mailrelay: configuration error: {e}")


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    if config.tls.cert:
        from mailrelay.tlsutil import server_tls_options
        try:
            server_tls_options(config.tls.cert, config.tls.key, config.tls.min_version)
        except ConfigError as e:
            raise SystemExit(f"mailrelay: configuration error: {e}")
    source = args.config or "built-in defaults"
    sys.stdout.write(f"# effective configuration ({source}); secrets masked\n")
    sys.stdout.write(render_config(config))
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from mailrelay.passwords import hash_password

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
