"""
configvalues: the value parsers of the configuration, and the value types they return.

JOB
    Turns one raw TOML value into a checked Python value, or raises
    :class:`ConfigError` naming the key. Each ``p_*`` parser takes (dotted
    key name, raw value): ``p_str``, ``p_bool``, ``p_size``, ``p_count``,
    ``p_positive``, ``p_duration``, ``p_rate``, ``p_endpoints``,
    ``p_networks``, ``p_host_ports``, ``p_users``, ``p_redis_url``,
    ``p_choice(...)``, ``p_selector`` and the others; :mod:`mailrelay.config`
    declares every key with one of them. Also the value types and their
    text forms shared by the rest of the package: :func:`parse_duration` /
    :func:`format_duration`, :class:`Rate` / :func:`parse_rate`,
    :class:`RedisAddress` / :func:`parse_redis_url`, :class:`MemoryLimit` /
    :func:`parse_memory_limit` (and :func:`format_bytes`), PostgreSQL connection
    strings (:func:`p_pg_url`, :func:`parse_conninfo`, :func:`mask_conninfo`),
    and :data:`WEBHOOK_EVENTS`. :mod:`mailrelay.config` re-exports the names its
    callers use, so ``from mailrelay.config import ConfigError`` keeps working.

SECURITY
    Values come from the operator's file and are trusted, but none is used
    unchecked: a boolean is not a number, endpoints go through Twisted's
    endpoint parser (imported only when a listener value is parsed, so that
    importing this module installs no reactor), files must exist,
    ``p_users`` accepts password hashes only (never a password), a
    ``dkim.key_encryption_key`` is at least 16 characters, API tokens at
    least 16 characters.

STANDARDS
    Redis URLs (``redis://[[user]:password@]host:port/db``,
    ``unix:///path?db=N&password=...``); libpq connection strings
    (``postgresql://`` URLs and ``key=value`` conninfo, parsed by libpq
    through psycopg); Twisted endpoint strings
    (``systemd:`` ones checked for syntax only); RFC 1035 domain names and
    RFC 6376 DKIM selectors (DNS labels); IP networks in CIDR notation.

DIAGNOSTICS
    Logs nothing. Raises :class:`ConfigError` with one line naming the key:
    ``<key>: expected <what>, got <type> <value>``, ``<key>: expected
    <what>, got a boolean``, ``<key>: must be at least 1, got <n>``,
    ``<key>[<i>]: '<endpoint>' is not a usable endpoint (<reason>)``,
    ``<key>: file '<path>' does not exist``, ``<key>.<user>: not a password
    hash; make one with `mailrelay hash-password```, and the like.
    :func:`parse_duration`, :func:`parse_rate`, :func:`parse_redis_url` and
    :func:`parse_conninfo` raise :class:`ValueError` (their callers add the
    key); a PostgreSQL connection string's password never appears in a
    message (``********``).

CONFIGURATION
    Reads no key itself: the keys are declared in :mod:`mailrelay.config`,
    each with its parser from here. Reads no file but the ones ``p_file``
    checks for existence; owns no Redis data.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from mailrelay.passwords import is_password_hash


class ConfigError(Exception):
    """The configuration is not usable; the message names the key and why."""


# -- value parsers -----------------------------------------------------------
# Each takes (dotted key name, raw TOML value) and returns the parsed value or
# raises ConfigError.

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")


def parse_duration(text: str) -> float:
    """``"30s"`` -> 30.0, ``"5m"`` -> 300.0, ``"3d"`` -> 259200.0."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like \"30s\", \"5m\", \"3d\"")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest duration string for a number of seconds."""
    for unit in ("d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(round(seconds * 1000))}ms"


@dataclass(frozen=True)
class Rate:
    """At most ``count`` events per ``period`` seconds."""

    count: int
    period: float

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.period)}"


def parse_rate(text: str) -> Rate:
    """``"1000/1m"`` -> Rate(1000, 60.0)."""
    count, sep, period = text.partition("/")
    if not sep or not count.strip().isdigit() or int(count) <= 0:
        raise ValueError(f"{text!r} is not a rate like \"1000/1m\"")
    return Rate(int(count), parse_duration(period))


_BYTE_UNITS = {"": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}  # Redis's meaning of kb, mb, gb
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|kb|mb|gb|)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MemoryLimit:
    """A memory limit as written: a share of the machine's memory (``"25%"``), a size (``"4gb"``,
    ``"512mb"``, a number of bytes), or none (``"0"``)."""

    text: str
    percent: float = 0.0  # of the machine's memory, when the text ends with %
    size: int = 0  # bytes, otherwise (0: no limit)

    def __str__(self) -> str:
        return self.text

    def bytes_of(self, machine_memory: int) -> int:
        """The limit in bytes on a machine with ``machine_memory`` bytes (0: none)."""
        return int(machine_memory * self.percent / 100) if self.percent else self.size


def parse_memory_limit(text: str) -> MemoryLimit:
    """``"25%"``, ``"4gb"`` (kb, mb, gb: 1024-based, as Redis counts), ``"1048576"``, ``"0"``."""
    match = _MEMORY_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a memory size like \"25%\", \"4gb\", \"512mb\" or \"0\"")
    number, unit = float(match.group(1)), match.group(2).lower()
    if unit == "%":
        if not 0 < number <= 100:
            raise ValueError(f"{text!r}: a share of the machine's memory is above 0% and at most 100%")
        return MemoryLimit(text.strip(), percent=number)
    return MemoryLimit(text.strip(), size=int(number * _BYTE_UNITS[unit]))


def format_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 KiB"``, ``4294967296`` -> ``"4.0 GiB"``, ``512`` -> ``"512 B"``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = 1024 ** ("KMGT".index(unit[0]) + 1)
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


def expect(key: str, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is a ``kind``, else ConfigError: ``<key>: expected <what>, got ...``."""
    # bool is an int in Python; TOML keeps them apart, and so do we.
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{key}: expected {what}, got a boolean")
    if not isinstance(value, kind):
        raise ConfigError(f"{key}: expected {what}, got {type(value).__name__} {value!r}")
    return value


def p_str(key: str, value: Any) -> str:
    return expect(key, value, str, "a string")


def p_bool(key: str, value: Any) -> bool:
    return expect(key, value, bool, "true or false")


def p_size(key: str, value: Any) -> int:
    expect(key, value, int, "an integer number of bytes")
    if value <= 0:
        raise ConfigError(f"{key}: must be a positive number of bytes, got {value}")
    return value


def p_count(key: str, value: Any) -> int:
    expect(key, value, int, "an integer")
    if value < 0:
        raise ConfigError(f"{key}: must not be negative, got {value}")
    return value


def p_positive(key: str, value: Any) -> int:
    expect(key, value, int, "an integer")
    if value <= 0:
        raise ConfigError(f"{key}: must be at least 1, got {value}")
    return value


def p_duration(key: str, value: Any) -> float:
    expect(key, value, str, 'a duration string like "30s", "5m", "3d"')
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None
    if seconds <= 0:
        raise ConfigError(f"{key}: must be longer than zero")
    return seconds


def p_optional_duration(key: str, value: Any) -> float:
    """A duration, or ``""`` for none (0.0)."""
    expect(key, value, str, 'a duration string like "30s", "5m", "3d" (or "" for none)')
    return p_duration(key, value) if value else 0.0


def p_optional_rate(key: str, value: Any) -> Rate | None:
    expect(key, value, str, 'a rate string like "1000/1m" (or "" for none)')
    if not value:
        return None
    try:
        return parse_rate(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def p_rate(key: str, value: Any) -> Rate:
    rate = p_optional_rate(key, value)
    if rate is None:
        raise ConfigError(f"{key}: a rate like \"10/5m\" is required")
    return rate


def p_str_list(key: str, value: Any) -> tuple[str, ...]:
    expect(key, value, list, "a list of strings")
    for i, item in enumerate(value):
        expect(f"{key}[{i}]", item, str, "a string")
    return tuple(value)


def p_endpoints(key: str, value: Any) -> tuple[str, ...]:
    """A list of Twisted server endpoint strings, each checked by Twisted's parser."""
    from twisted.internet import endpoints, reactor

    items = p_str_list(key, value)
    for i, description in enumerate(items):
        if description.startswith("systemd:"):
            _check_systemd_endpoint(f"{key}[{i}]", description)
            continue
        try:
            endpoints.serverFromString(reactor, description)
        except Exception as e:  # the parser raises many kinds
            reason = str(e) or type(e).__name__
            raise ConfigError(
                f"{key}[{i}]: {description!r} is not a usable endpoint ({reason})"
            ) from None
    return items


def _check_systemd_endpoint(key: str, description: str) -> None:
    """Socket activation: the sockets exist only under systemd, so check the syntax only."""
    params = dict(p.partition("=")[::2] for p in description.split(":")[1:])
    if params.get("domain") not in ("INET", "INET6", "UNIX") or not params.get("index", "").isdigit():
        raise ConfigError(f"{key}: {description!r} is not a usable endpoint "
                          "(expected systemd:domain=INET|INET6|UNIX:index=N)")


def p_networks(key: str, value: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    items = p_str_list(key, value)
    networks = []
    for i, text in enumerate(items):
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as e:
            raise ConfigError(f"{key}[{i}]: {e}") from None
    return tuple(networks)


def p_host_ports(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    items = p_str_list(key, value)
    result = []
    for i, text in enumerate(items):
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{key}[{i}]: {text!r} is not host:port")
        result.append((host.strip("[]"), int(port)))
    return tuple(result)


def p_users(key: str, value: Any) -> Mapping[str, str]:
    expect(key, value, dict, "a table of username = password hash")
    for user, hashed in value.items():
        expect(f"{key}.{user}", hashed, str, "a password hash string")
        if not is_password_hash(hashed):
            raise ConfigError(
                f"{key}.{user}: not a password hash; make one with `mailrelay hash-password`"
            )
    return MappingProxyType(dict(value))


def p_memory_limit(key: str, value: Any) -> MemoryLimit:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return parse_memory_limit(str(value))  # a number of bytes
    expect(key, value, str, 'a memory size like "25%", "4gb" or "0"')
    try:
        return parse_memory_limit(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def p_redis_url(key: str, value: Any) -> str:
    expect(key, value, str, 'a Redis URL ("redis://host:port/db", "unix:///path?db=N") or ""')
    if value:
        try:
            parse_redis_url(value)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    return value


def p_appendfsync(key: str, value: Any) -> str:
    expect(key, value, str, 'one of "always", "everysec"')
    if value not in ("always", "everysec"):
        raise ConfigError(f'{key}: must be "always" or "everysec", got {value!r}')
    return value


def p_tls_version(key: str, value: Any) -> str:
    expect(key, value, str, 'one of "1.2", "1.3"')
    if value not in ("1.2", "1.3"):
        raise ConfigError(f'{key}: must be "1.2" or "1.3", got {value!r}')
    return value


def p_file(key: str, value: Any) -> str:
    expect(key, value, str, "a file path")
    if value and not Path(value).is_file():
        raise ConfigError(f"{key}: file {value!r} does not exist")
    return value


def p_prefix(key: str, value: Any) -> str:
    expect(key, value, str, "a string")
    if not value or any(c.isspace() for c in value):
        raise ConfigError(f"{key}: must be a non-empty string without spaces")
    return value


@dataclass(frozen=True)
class RedisAddress:
    """Where an external Redis is: a TCP host/port or a unix socket path."""

    host: str | None = None
    port: int = 6379
    path: str | None = None
    db: int = 0
    password: str | None = None
    username: str | None = None


def parse_redis_url(url: str) -> RedisAddress:
    """``redis://[[user]:password@]host:port/db`` or ``unix:///path?db=N``."""
    parts = urlsplit(url)
    if parts.scheme == "redis":
        if not parts.hostname:
            raise ValueError(f"{url!r} names no host")
        try:
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        db_text = parts.path.lstrip("/") or "0"
        if not db_text.isdigit():
            raise ValueError(f"{url!r}: database {db_text!r} is not a number")
        return RedisAddress(host=parts.hostname, port=port, db=int(db_text),
                            password=parts.password, username=parts.username or None)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"{url!r} names no socket path")
        db = 0
        for pair in filter(None, parts.query.split("&")):
            name, _, val = pair.partition("=")
            if name == "db" and val.isdigit():
                db = int(val)
            elif name == "password":
                pass
            else:
                raise ValueError(f"{url!r}: unknown or invalid parameter {pair!r}")
        password = dict(p.partition("=")[::2] for p in parts.query.split("&") if p).get("password")
        return RedisAddress(path=parts.path, db=db, password=password)
    raise ValueError(f"{url!r}: scheme must be redis:// or unix://")


def p_duration_list(key: str, value: Any) -> tuple[float, ...]:
    expect(key, value, list, 'a list of durations like ["1m", "5m"]')
    if not value:
        raise ConfigError(f"{key}: needs at least one duration")
    return tuple(p_duration(f"{key}[{i}]", item) for i, item in enumerate(value))


def p_domain_rates(key: str, value: Any) -> Mapping[str, Rate]:
    expect(key, value, dict, 'a table of domain = "count/duration"')
    return MappingProxyType({domain.lower(): p_rate(f"{key}.{domain}", rate)
                             for domain, rate in value.items()})


def p_host_port(key: str, value: Any) -> tuple[str, int] | None:
    expect(key, value, str, '"host:port" (or "" for none)')
    if not value:
        return None
    return p_host_ports(key, [value])[0]


def p_choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        expect(key, value, str, "one of " + ", ".join(f'"{c}"' for c in choices))
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {', '.join(choices)}; got {value!r}")
        return value
    parse.choices = choices  # type: ignore[attr-defined]
    return parse


def p_ip_or_empty(key: str, value: Any) -> str:
    expect(key, value, str, 'an IP address (or "" for any)')
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    return value


p_delivery_tls = p_choice("opportunistic", "required", "verify")
p_smarthost_tls = p_choice("none", "starttls", "tls")


def p_domain_or_empty(key: str, value: Any) -> str:
    expect(key, value, str, 'a domain name (or "" for none)')
    value = value.strip().lower().rstrip(".")
    if value and not re.match(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$", value):
        raise ConfigError(f"{key}: {value!r} is not a domain name")
    return value


def p_tokens(key: str, value: Any) -> tuple[str, ...]:
    items = p_str_list(key, value)
    for i, token in enumerate(items):
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ConfigError(f"{key}[{i}]: a token must be at least 16 characters without spaces")
    return items


def p_url(key: str, value: Any) -> str:
    expect(key, value, str, "an http:// or https:// URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{key}: {value!r} is not an http:// or https:// URL")
    return value


#: Event types a webhook can subscribe to.
WEBHOOK_EVENTS = ("delivered", "bounced", "deferred", "spam_complaint", "suppressed")


def p_webhook_events(key: str, value: Any) -> tuple[str, ...]:
    items = p_str_list(key, value)
    for i, event in enumerate(items):
        if event not in WEBHOOK_EVENTS:
            raise ConfigError(f"{key}[{i}]: unknown event {event!r} (known: {', '.join(WEBHOOK_EVENTS)})")
    return items


def p_key_encryption_key(key: str, value: Any) -> str:
    expect(key, value, str, 'a secret of at least 16 characters (or "" for none)')
    if value and (len(value) < 16 or value != value.strip()):
        raise ConfigError(f"{key}: must be at least 16 characters without leading or trailing spaces")
    return value


_SELECTOR_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$")


def p_selector(key: str, value: Any) -> str:
    expect(key, value, str, "a DKIM selector (DNS labels, e.g. \"mr2026\")")
    value = value.strip().lower()
    if not _SELECTOR_RE.match(value):
        raise ConfigError(f"{key}: {value!r} is not a DKIM selector (letters, digits, hyphens, dots)")
    return value


# -- PostgreSQL connection strings ([archive] url, read_url) -------------------------------

_URL_SCHEMES = ("postgresql://", "postgres://")
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']\S*)")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*")
MASK = "********"


def mask_conninfo(text: str) -> str:
    """A PostgreSQL URL or key=value conninfo with its password (if any) replaced by ``********``."""
    if "://" in text:
        parts = urlsplit(text)
        try:
            password = parts.password
        except ValueError:
            password = None
        if password:
            text = text.replace(":" + password + "@", ":" + MASK + "@", 1)
        return _QUERY_PASSWORD.sub(r"\g<1>" + MASK, text)
    return _KV_PASSWORD.sub(r"\g<1>" + MASK, text)


def parse_conninfo(text: str) -> dict[str, str]:
    """libpq's reading of a ``postgresql://`` URL or ``key=value`` conninfo (through psycopg):
    ``{keyword: value}``. ValueError with one line that never shows the password."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    if "://" in text.partition("=")[0] and not text.startswith(_URL_SCHEMES):
        raise ValueError(f"{mask_conninfo(text)!r}: scheme must be postgresql:// "
                         "(or a conninfo like \"host=... dbname=...\")")
    try:
        params = {key: str(value) for key, value in conninfo_to_dict(text).items()}
    except psycopg.Error as e:
        message = " ".join(str(e).split())
        masked = mask_conninfo(text)
        if masked != text:  # a password is in there: show the masked text, and nothing of it
            message = message.replace(text, masked)
            for secret in _passwords_in(text):
                message = message.replace(secret, MASK)
        raise ValueError(f"not a PostgreSQL URL or conninfo: {message}") from None
    for port in params.get("port", "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"{mask_conninfo(text)!r}: port {port!r} is not a number from 1 to 65535")
    return params


def _passwords_in(text: str) -> list[str]:
    found = [m.group(2).strip("'") for m in _KV_PASSWORD.finditer(text)]
    found += [m.group(0).partition("=")[2] for m in _QUERY_PASSWORD.finditer(text)]
    if "://" in text:
        try:
            found.append(urlsplit(text).password or "")
        except ValueError:
            pass
    return [p for p in found if p]


def p_pg_url(key: str, value: Any) -> str:
    """``""`` or a PostgreSQL URL / conninfo libpq accepts."""
    expect(key, value, str, 'a PostgreSQL URL ("postgresql://user@host/db") or conninfo '
                            '("host=... dbname=..."), or ""')
    if value:
        try:
            parse_conninfo(value)
        except ValueError as e:
            raise ConfigError(f"{key}: {e}") from None
    return value
