"""
cli.common: what every ``mailrelay`` subcommand shares: the configuration, the way to the
daemon's Redis, and safe printing.

JOB
    Loads the configuration or exits with its one-line reason (:func:`load_or_exit`),
    connects to the daemon's Redis (the managed one through its Unix socket, else
    ``[redis] url`` or the Sentinels) and runs one admin action against a ``Storage``
    in a reactor (:func:`run_with_storage`, :func:`react_with_storage`); finds the
    archive's database as the daemon does (:func:`archive_conninfo_or_exit`) and opens it
    for the commands that read or rewrite archived data (:func:`open_archive_database`;
    :func:`with_archive`: only once the Redis data is at the version that moved the
    archive there, data version 2); :func:`clean`
    makes stored text safe to print on a terminal.

SECURITY
    Text read from Redis (addresses, replies from remote servers) can carry control
    characters: :func:`clean` replaces them before printing, so stored data cannot drive
    the terminal. The admin command connects with the daemon's own Redis credentials.

STANDARDS
    None.

DIAGNOSTICS
    ``mailrelay: configuration error: ...``; ``mailrelay: the daemon's managed Redis is not
    running (no socket at PATH)``; ``mailrelay: cannot connect to <Redis>: ...``;
    ``mailrelay: <Redis>: <storage error>``; ``mailrelay: the daemon's managed PostgreSQL
    is not running (no socket in DIR)``; ``mailrelay: archive database at <where>:
    <error>``; each one line, exit status 1.

CONFIGURATION
    ``[redis]`` (url, sentinels, timeout, key_prefix), ``[archive]`` (url, read_url,
    statement_timeout, connect_timeout), ``[server] state_dir`` (the managed Redis's and
    PostgreSQL's sockets).
"""

from __future__ import annotations

import argparse
import math
import re
import socket
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from twisted.internet import defer, task

from mailrelay.config import Config, ConfigError, load_config, parse_redis_url
from mailrelay.configvalues import parse_conninfo
from mailrelay.services.archive import archive_conninfos, one_line_error
from mailrelay.store import Storage, StorageError, connect_redis
from mailrelay.store.archivedb import ArchiveDatabase, describe_conninfo
from mailrelay.store.cluster import archive_in_postgres
from mailrelay.store.errors import ArchiveUnavailable
from mailrelay.store.interfaces import DataVersionView

T = TypeVar("T")


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """``-c/--config``; SUPPRESS: it may come before or after a subcommand without one hiding
    the other."""
    parser.add_argument("-c", "--config", default=argparse.SUPPRESS, help="TOML configuration file")


def load_or_exit(path: str | None) -> Config:
    """Load the configuration, or print the one-line reason and exit with status 1."""
    try:
        return load_config(path)
    except ConfigError as e:
        raise SystemExit(f"mailrelay: configuration error: {e}")


def managed_socket_path(config: Config) -> Path | None:
    """The managed Redis's socket (as ManagedRedis.socket_path), or None for an external Redis."""
    if config.redis.url or config.redis.sentinels:
        return None
    return Path(config.server.state_dir).absolute() / "redis" / "redis.sock"


def archive_conninfo_or_exit(config: Config) -> str:
    """The archive's (write) database as the daemon finds it
    (:func:`mailrelay.services.archive.archive_conninfos`); with no ``[archive] url`` the
    managed PostgreSQL's, or SystemExit with one line when that is not running."""
    url, _ = archive_conninfos(config)
    if not config.archive.url:
        socket_dir = Path(parse_conninfo(url)["host"])
        if not any(socket_dir.glob(".s.PGSQL.*")):
            raise SystemExit(f"mailrelay: the daemon's managed PostgreSQL is not running "
                             f"(no socket in {socket_dir})")
    return url


def open_archive_database(config: Config, *, write: bool = False) -> ArchiveDatabase:
    """The PostgreSQL archive's database for one admin command (:func:`archive_conninfo_or_exit`;
    ``[archive] read_url``, when set, unless ``write``): one connection, ``[archive]``'s
    timeouts. Close it when done."""
    url = archive_conninfo_or_exit(config)
    if not write:
        url = archive_conninfos(config)[1]
    return ArchiveDatabase(url, statement_timeout=config.archive.statement_timeout,
                           connect_timeout=math.ceil(config.archive.connect_timeout), pool_max=1)


async def with_archive(config: Config, storage: DataVersionView,
                       action: Callable[[ArchiveDatabase | None], Awaitable[T]], *, write: bool = False) -> T:
    """``await action(database)`` with the PostgreSQL archive's database once the Redis data is at
    the version that moved the archive there (else None: Redis holds the whole archive); the
    archive's failures as one line (SystemExit)."""
    if not archive_in_postgres(await storage.stored_data_version()):
        return await action(None)
    database = open_archive_database(config, write=write)
    try:
        return await action(database)
    except ArchiveUnavailable as e:
        raise SystemExit(f"mailrelay: archive database at {describe_conninfo(database.conninfo)}: "
                         f"{one_line_error(e, database.conninfo)}")
    finally:
        database.close()


def describe_redis(config: Config) -> str:
    path = managed_socket_path(config)
    if path is not None:
        return f"the daemon's managed Redis at unix:{path}"
    if config.redis.sentinels:
        return "Redis via Sentinel " + ", ".join(f"{h}:{p}" for h, p in config.redis.sentinels)
    address = parse_redis_url(config.redis.url)
    where = f"unix:{address.path}" if address.path else f"{address.host}:{address.port}"
    return f"Redis at {where} db {address.db}"


def connect_admin_redis(config: Config) -> Any:
    """A connection to the daemon's Redis, or SystemExit with one line saying why not."""
    path = managed_socket_path(config)
    if path is None:
        try:
            return connect_redis(config, None)
        except Exception as e:  # e.g. an unusable Sentinel setup
            raise SystemExit(f"mailrelay: cannot connect to {describe_redis(config)}: {e}")
    if not path.exists():
        raise SystemExit(f"mailrelay: the daemon's managed Redis is not running (no socket at {path})")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(config.redis.timeout)
        probe.connect(str(path))
    except OSError as e:
        raise SystemExit(f"mailrelay: cannot connect to the daemon's managed Redis at {path}: "
                         f"{e.strerror or e}")
    finally:
        probe.close()
    return connect_redis(config, str(path))


_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean(value: Any) -> str:
    """Text for the terminal: control characters (from clients, remote servers) escaped."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", "" if value is None else str(value))


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


async def run_with_storage(config: Config, action: Callable[[Storage], Awaitable[None]]) -> None:
    """Connect to the daemon's Redis, run ``await action(storage)``, disconnect.

    Failures become one-line SystemExit messages. Every admin subcommand that needs
    Redis goes through here.
    """
    redis = connect_admin_redis(config)  # SystemExit when the managed Redis is not there
    try:
        storage = Storage(config, redis)
    except Exception as e:
        raise SystemExit(f"mailrelay: cannot connect to {describe_redis(config)}: {e}")
    try:
        await action(storage)
    except StorageError as e:
        raise SystemExit(f"mailrelay: {describe_redis(config)}: {e}")
    finally:
        # txredisapi fails this Deferred (and Twisted prints "Unhandled error in Deferred")
        # when a pool connection still being set up is closed by the disconnect below.
        connected = getattr(redis, "_connected", None)
        if isinstance(connected, defer.Deferred):
            connected.addErrback(lambda f: None)
        try:
            d = redis.disconnect()
            if isinstance(d, defer.Deferred):
                d.addTimeout(1, storage.clock)
                await d
        except Exception:
            pass


def react_with_storage(args: argparse.Namespace, action: Callable[[Storage], Awaitable[None]],
                       config: Config | None = None) -> int:
    """Run an admin action against Redis in a reactor (with ``config``, or the one ``args``
    names); exits the process."""
    config = config or load_or_exit(getattr(args, "config", None))
    task.react(lambda reactor: run_with_storage(config, action))
    return 0  # not reached: react exits
