"""
cli.cluster: ``mailrelay cluster`` (the live daemons) and ``mailrelay migrate``.

JOB
    ``mailrelay cluster`` prints one line per live daemon sharing this Redis (from the
    heartbeats :mod:`mailrelay.services.cluster` writes: host, version and data format, uptime, age
    of the last heartbeat, delivery jobs held per domain, listeners) and the stored data
    format version. ``mailrelay migrate [--force]`` runs the registered migration steps
    (``Storage.migrate``), or records the version on an empty database.

SECURITY
    Prints host names, process ids and listening addresses read from Redis, each through
    :func:`mailrelay.cli.common.clean` (no control characters reach the terminal).

STANDARDS
    None.

DIAGNOSTICS
    Storage errors and refusals (``migrate`` while live daemons do not understand the new
    format, without ``--force``) as one line on stderr, exit status 1.

CONFIGURATION
    ``[redis]`` through :mod:`mailrelay.cli.common`.
"""

from __future__ import annotations

import argparse
from typing import Any

from mailrelay.cli.common import clean, react_with_storage
from mailrelay.store import Storage
from mailrelay.timefmt import format_age


def format_members(members: list[dict[str, Any]]) -> list[str]:
    """The `mailrelay cluster` table, one line per live daemon."""
    header = ("DAEMON", "VERSION", "UP", "BEAT", "DELIVERING", "LISTENERS")
    rows = []
    for m in members:
        domains = ", ".join(f"{clean(d)} {n}" for d, n in
                            sorted(m["domains"].items(), key=lambda item: (-item[1], item[0])))
        delivering = f"{m['held']} job{'' if m['held'] == 1 else 's'}" + (f" ({domains})" if domains else "")
        rows.append((clean(m["owner"]), f"{clean(m['version'])}/data {m['data_version']}",
                     format_age(m["uptime"]), f"{m['age']:.1f}s ago", delivering,
                     ", ".join(clean(item) for item in m["listeners"]) or "-"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    return [("  ".join(f"{v:<{w}}" for v, w in zip(r, widths)) + "  " + r[-1]).rstrip()
            for r in [header, *rows]]


async def run_cluster(storage: Storage) -> None:
    members = await storage.cluster_members()
    stored = await storage.stored_data_version()
    for line in format_members(members):
        print(line)
    version = stored if stored is not None else "not recorded yet"
    print(f"{len(members)} live daemon{'' if len(members) == 1 else 's'}; "
          f"data format version {version} (this mailrelay: {storage.DATA_VERSION})")


async def run_migrate(storage: Storage, force: bool) -> None:
    before, created = await storage.bounded(storage.data_version())
    if created:
        print(f"empty database: data format version {before} recorded")
        return
    steps = await storage.migrate(force=force, report=lambda text: print(text, flush=True))
    if steps:
        print(f"migrated from data format version {before} to {steps[-1][1]}")
    else:
        print(f"data format version {before}: nothing to migrate")


def cmd_cluster(args: argparse.Namespace) -> int:
    return react_with_storage(args, run_cluster)


def cmd_migrate(args: argparse.Namespace) -> int:
    return react_with_storage(args, lambda storage: run_migrate(storage, args.force))


def add_cluster_parsers(sub: Any) -> None:
    """``mailrelay cluster`` and ``mailrelay migrate`` (called by mailrelay.cli)."""
    cluster = sub.add_parser("cluster", help="list the live daemons sharing this Redis")
    cluster.add_argument("-c", "--config", help="TOML configuration file")
    cluster.set_defaults(func=cmd_cluster)
    migrate = sub.add_parser("migrate", help="migrate the Redis data to this release's format")
    migrate.add_argument("-c", "--config", help="TOML configuration file")
    migrate.add_argument("--force", action="store_true",
                         help="migrate even while live daemons do not understand the new format")
    migrate.set_defaults(func=cmd_migrate)
