"""
config: the configuration: one TOML file, validated entirely before anything starts.

JOB
    Every key is declared once, in the section dataclasses below: its name,
    its type (the parser that turns the TOML value into a Python value), its
    default and a one-line description. ``docs/configuration.md`` and
    ``etc/mailrelay.toml`` describe the same keys (a test keeps them in
    step). :func:`load_config` reads and validates a file into a frozen
    :class:`Config`; :func:`render_config` prints the effective
    configuration (``mailrelay check-config``); :func:`config_warnings`
    lists settings that are valid but unwise. The value parsers each key
    names (``p_*``) and the value types (:class:`Rate`,
    :class:`RedisAddress`, durations) live in :mod:`mailrelay.configvalues`;
    the names callers use are re-exported here (``__all__``).

SECURITY
    The file is the operator's and is trusted, but nothing in it is used
    unchecked: an unknown section or key is refused (a typo never silently
    becomes a default), every value is type-checked (a boolean is not a
    number), endpoints go through Twisted's endpoint parser, file paths
    (``tls.cert``/``tls.key``, ``[[domains]] key_file``) must exist and DKIM
    keys must load, and ``[submission] users`` must hold password hashes,
    never passwords. Secrets (``redis.url``'s password, the password in
    ``archive.url`` and ``archive.read_url``, ``submission.users``,
    ``delivery.smarthost_password``, ``bounces.verp_secret``,
    ``web.api_tokens``, ``webhooks[].secret``, ``dkim.key_encryption_key``)
    are masked in :func:`render_config`.

STANDARDS
    TOML 1.0 (through :mod:`tomllib`); Redis URLs (``redis://``,
    ``unix://``); libpq connection strings (``postgresql://`` URLs, ``key=value``); RFC 5321 4.5.3.1.8 (the recipient minimum warned about).

DIAGNOSTICS
    Logs nothing. An unknown key, a wrong type, an unparsable endpoint or a
    missing file raises :class:`ConfigError` whose message names the key and
    the problem, e.g. ``<section>.<key>: expected <what>, got <type>
    <value>``, ``<section>.<key>: unknown key (known: ...)``, ``[<name>]:
    unknown section (known: ...)``, ``<key>[<i>]: '<endpoint>' is not a
    usable endpoint (<reason>)``, ``<key>: file '<path>' does not exist``,
    ``<path>: configuration file not found``, ``<path>: cannot read:
    <strerror>``, ``<path>: not valid TOML: <error>``, ``tls.cert, tls.key:
    set both (or neither, for a generated certificate)``; the daemon and the
    ``mailrelay`` command print that one line (``mailrelay: configuration
    error: <message>``) and exit with status 1. :func:`config_warnings`
    gives one line per unwise setting (``submission.max_recipients = <n> is
    below the minimum of RFC 5321 ...``), logged at start and printed by
    ``check-config``.

CONFIGURATION
    Defines every key: sections ``[server]``, ``[redis]``, ``[tls]``,
    ``[submission]``, ``[delivery]``, ``[bounces]``, ``[tracking]``,
    ``[archive]``, ``[web]``, ``[dkim]`` and the arrays ``[[webhooks]]`` and
    ``[[domains]]``. Reads the TOML file given with ``-c`` (and the DKIM key
    files, to check them); owns no Redis data.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from mailrelay.configvalues import (
    WEBHOOK_EVENTS,
    ConfigError,
    MemoryLimit,
    Rate,
    RedisAddress,
    expect,
    format_duration,
    mask_conninfo,
    p_appendfsync,
    p_bool,
    p_count,
    p_delivery_tls,
    p_domain_or_empty,
    p_domain_rates,
    p_duration,
    p_duration_list,
    p_endpoints,
    p_file,
    p_host_port,
    p_host_ports,
    p_ip_or_empty,
    p_key_encryption_key,
    p_memory_limit,
    p_networks,
    p_optional_duration,
    p_optional_rate,
    p_pg_url,
    p_positive,
    p_prefix,
    p_rate,
    p_redis_url,
    p_selector,
    p_size,
    p_smarthost_tls,
    p_str,
    p_tls_version,
    p_tokens,
    p_url,
    p_users,
    p_webhook_events,
    parse_duration,
    parse_redis_url,
)
from mailrelay.mail.dkim import load_key_file

#: The value types and parsers callers import from here (``from mailrelay.config import
#: ConfigError``): they live in mailrelay.configvalues, one place each.
__all__ = [
    "SECTIONS", "Config", "ServerConfig", "RedisConfig", "TLSConfig", "SubmissionConfig",
    "DeliveryConfig", "BouncesConfig", "TrackingConfig", "ArchiveConfig", "WebConfig", "WebhookConfig",
    "DkimConfig", "DomainConfig", "RFC5321_MIN_RECIPIENTS",
    "setting", "parse_config", "load_config", "config_warnings", "iter_settings", "render_config",
    # re-exported from mailrelay.configvalues
    "ConfigError", "MemoryLimit", "Rate", "RedisAddress", "WEBHOOK_EVENTS", "format_duration", "parse_duration",
    "parse_redis_url", "p_appendfsync", "p_selector",
]


# -- the sections --------------------------------------------------------------


def setting(default: Any, parse: Callable[[str, Any], Any], doc: str, *,
            secret: bool = False, raw_default: Any = None) -> Any:
    """Declare one configuration key: its default (as written in TOML), parser and doc."""
    raw = default if raw_default is None else raw_default
    # Endpoint defaults are known good; parsing them would import the reactor.
    value = tuple(raw) if parse is p_endpoints else parse("<default>", raw)
    meta = {"parse": parse, "doc": doc, "secret": secret, "raw_default": raw}
    if value.__class__.__hash__ is None:  # a table: dataclasses want a factory
        return field(default_factory=lambda: value, metadata=meta)
    return field(default=value, metadata=meta)


def _fqdn() -> str:
    return socket.getfqdn()


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = setting("", p_str, "name in the SMTP banner, EHLO and Received headers; \"\" = the machine's FQDN")
    state_dir: str = setting("var", p_str, "directory for the managed Redis, generated certificate and credentials")


@dataclass(frozen=True)
class RedisConfig:
    url: str = setting("", p_redis_url, '"" = a Redis managed by the daemon in state_dir; else "redis://[:password@]host:port/db" or "unix:///path?db=N"', secret=True)
    sentinels: tuple = setting([], p_host_ports, 'Sentinel addresses ["host:port", ...]; when set, master_name is followed through failovers')
    master_name: str = setting("mymaster", p_str, "the Sentinel master name")
    key_prefix: str = setting("mailrelay:", p_prefix, "prefix of every Redis key mailrelay uses")
    appendfsync: str = setting("always", p_appendfsync, 'managed Redis: AOF fsync policy, "always" (every 250 is on disk) or "everysec"')
    maxmemory: MemoryLimit = setting("25%", p_memory_limit, 'managed Redis: its memory limit, a share of the machine\'s memory ("25%"), a size ("4gb", "512mb") or "0" for none; when it is reached, submission answers 452 4.3.1')
    min_replicas: int = setting(0, p_count, "replicas that must have a message (WAIT) before it is acknowledged")
    min_replicas_timeout: float = setting("1s", p_duration, "how long to WAIT for min_replicas before answering 451")
    timeout: float = setting("5s", p_duration, "how long Redis may take to store a message before the client gets 451")


@dataclass(frozen=True)
class TLSConfig:
    cert: str = setting("", p_file, 'PEM certificate chain; "" = a self-signed certificate generated in state_dir')
    key: str = setting("", p_file, 'PEM private key; "" = generated with the certificate')
    min_version: str = setting("1.2", p_tls_version, 'lowest TLS version accepted, "1.2" or "1.3"')


@dataclass(frozen=True)
class SubmissionConfig:
    listen: tuple = setting(["tcp:2587:interface=127.0.0.1"], p_endpoints, "endpoints for SMTP submission with STARTTLS offered")
    listen_tls: tuple = setting(["tcp:2465:interface=127.0.0.1"], p_endpoints, "endpoints for SMTP submission over implicit TLS (RFC 8314)")
    users: Mapping = setting({}, p_users, "username = hash from `mailrelay hash-password`; empty = one generated user (see state_dir/credentials)", secret=True)
    trusted_networks: tuple = setting([], p_networks, "client networks (CIDR) allowed to send without AUTH")
    max_message_size: int = setting(10485760, p_size, "largest message accepted, in bytes (SIZE)")
    max_recipients: int = setting(100, p_positive, "most RCPT per message; more get 452 4.5.3 (RFC 5321 asks for at least 100: less is allowed, with a warning)")
    require_tls_for_auth: bool = setting(True, p_bool, "offer and accept AUTH only over TLS")
    idle_timeout: float = setting("5m", p_duration, "time allowed for each command, from the previous reply (and for each line of DATA), before 421 4.4.2")
    data_timeout: float = setting("10m", p_duration, "time allowed for the whole DATA phase before 421 4.4.2")
    max_connections_per_ip: int = setting(20, p_positive, "simultaneous connections from one client address; more get 421 4.7.0")
    max_connections: int = setting(500, p_positive, "simultaneous connections to the submission listeners in all; more get 421 4.7.0")
    max_header_size: int = setting(102400, p_size, "largest header of a message, in bytes; a bigger one gets 552 5.3.4 at the end of DATA")
    auth_failures_per_ip: Rate = setting("10/5m", p_rate, "failed AUTH attempts per client address (IPv6: per /64), counted in Redis for all daemons, before 421 until the window passes")
    rate_limit_per_user: Rate | None = setting("", p_optional_rate, 'messages per authenticated user, e.g. "1000/1m"; over it 451 4.7.0; "" = no limit')
    require_known_domain: bool = setting(False, p_bool, "refuse (550 5.7.1) a message whose From domain is not a sender domain (false: send it unsigned, with an \"unsigned\" event)")
    dedupe_window: float = setting("", p_optional_duration, 'a message with the Message-ID of one the same user queued within this window is not queued again (250 with the first id); "" = off')


@dataclass(frozen=True)
class DeliveryConfig:
    enabled: bool = setting(True, p_bool, "deliver queued mail from this daemon (false: accept and queue only)")
    lease_timeout: float = setting("2m", p_duration, "how long a claimed delivery job stays reserved without renewal (a dead daemon's jobs are retried after it)")
    retry_schedule: tuple = setting(["1m", "5m", "10m", "30m", "1h", "2h", "4h"], p_duration_list, "delays between attempts; the last one repeats")
    max_queue_lifetime: float = setting("3d", p_duration, "age after which an undelivered message expires (bounce)")
    rate_limit_per_domain: Mapping = setting({}, p_domain_rates, 'messages per destination domain and daemon, e.g. { "gmail.com" = "600/1m" }')
    nameservers: tuple = setting([], p_host_ports, 'DNS servers for MX lookups ["host:port", ...]; empty = the system\'s')
    mx_port: int = setting(25, p_positive, "TCP port of destination mail servers")
    smarthost: tuple | None = setting("", p_host_port, '"host:port" of a relay that receives all mail instead of the MX hosts; "" = deliver directly')
    smarthost_username: str = setting("", p_str, "AUTH user for the smarthost (\"\" = no AUTH)")
    smarthost_password: str = setting("", p_str, "AUTH password for the smarthost", secret=True)
    smarthost_tls: str = setting("starttls", p_smarthost_tls, '"none", "starttls" (required) or "tls" (implicit) toward the smarthost')
    tls: str = setting("opportunistic", p_delivery_tls, '"opportunistic" (STARTTLS when offered), "required", or "verify" (certificate checked against the MX name)')
    max_messages_per_connection: int = setting(100, p_positive, "messages sent over one connection before it is closed")
    pipeline_messages: bool = setting(True, p_bool, "send a message's data and the next message's MAIL/RCPT/DATA in one write to servers offering PIPELINING (false: one message at a time)")
    idle_timeout: float = setting("30s", p_duration, "an unused outbound connection is closed after this")
    concurrency_per_domain: int = setting(10, p_positive, "simultaneous connections to one destination domain")
    max_connections: int = setting(200, p_positive, "simultaneous outbound connections in all")
    helo_name: str = setting("", p_str, 'name sent in EHLO; "" = [server] hostname')
    bind_address: str = setting("", p_ip_or_empty, 'source IP address for outbound connections; "" = any')
    connect_timeout: float = setting("30s", p_duration, "time allowed to open a connection to a destination")
    command_timeout: float = setting("5m", p_duration, "time allowed for each reply of a destination server")
    allow_private_destinations: bool = setting(False, p_bool, "direct (MX) mode: also deliver to MX hosts and address literals at loopback, private, link-local and other non-public addresses (off: refused with a 5.4.4 bounce; the smarthost is never checked)")


@dataclass(frozen=True)
class BouncesConfig:
    domain: str = setting("", p_domain_or_empty, 'the bounce domain: return paths become b+<token>@domain (VERP); "" = no VERP, no bounce listener')
    verp_secret: str = setting("", p_str, 'key of the VERP token HMAC; "" = generated once and kept in Redis (shared by all daemons)', secret=True)
    listen: tuple = setting(["tcp:2525:interface=127.0.0.1"], p_endpoints, "endpoints of the inbound bounce listener (production: port 25 of the bounce domain's MX)")
    max_message_size: int = setting(10485760, p_size, "largest bounce message accepted, in bytes")
    max_stored_bounce_size: int = setting(262144, p_size, "raw bounce messages are stored truncated to this many bytes")
    max_unmatched_bounces: int = setting(1000, p_positive, "unmatched reports (those that prove nothing) kept, the newest; older ones are deleted with their raw message")
    max_connections: int = setting(100, p_positive, "simultaneous connections to the bounce listener in all; more get 421 4.7.0")
    notify_sender: bool = setting(False, p_bool, "also mail an RFC 3464 DSN to the original sender on permanent failure (off: applications learn of bounces through the API)")


@dataclass(frozen=True)
class TrackingConfig:
    retention: float = setting("45d", p_duration, "how long message records, timelines, bounces and search indexes are kept")
    content_retention: float = setting("7d", p_duration, "how long raw message bodies are kept (compressed; at least until delivery ends)")


@dataclass(frozen=True)
class ArchiveConfig:
    """``[archive]``: the PostgreSQL database of the archive (issue 18; mailrelay/services/archive.py)."""

    url: str = setting("", p_pg_url, '"" = a PostgreSQL managed by the daemon in state_dir; else "postgresql://user:password@host:port/db" or "host=... dbname=..."', secret=True)
    read_url: str = setting("", p_pg_url, 'a read replica for the API, the status page and the CLI; "" = url', secret=True)
    statement_timeout: float = setting("5s", p_duration, "longest an archive query may run before it is cancelled (the API answers 503)")
    connect_timeout: float = setting("3s", p_duration, "time allowed to connect to the archive database (rounded up to whole seconds; libpq waits at least 2s)")
    release_after: float = setting("1m", p_duration, "how long a message's Redis keys stay after it is final and archived (the archive at data version 2; reads then go to PostgreSQL)")


@dataclass(frozen=True)
class WebConfig:
    listen: tuple = setting(["tcp:8025:interface=127.0.0.1"], p_endpoints, "endpoints of the JSON API, /metrics, health checks and the status page")
    api_tokens: tuple = setting([], p_tokens, "Bearer tokens accepted by /api and the status page; empty = one generated token in state_dir/api-token", secret=True)
    public_status: bool = setting(False, p_bool, "show the status page without a token")
    max_auth_failures: int = setting(10, p_count, "failed authentications (wrong API tokens, failed logins) a client IP may have within auth_failure_window before it is refused with 429; 0 = no limit")
    auth_failure_window: float = setting("1m", p_duration, "the sliding window of max_auth_failures")
    max_connections: int = setting(200, p_positive, "connections the web listeners hold at once; more are answered 503 and closed")
    request_timeout: float = setting("1m", p_duration, "time for a request's head and body to arrive, from the connection or the previous response; input that completes no request does not extend it")


@dataclass(frozen=True)
class WebhookConfig:
    url: str = setting("http://127.0.0.1/", p_url, "where events are POSTed as JSON")
    events: tuple = setting(list(WEBHOOK_EVENTS), p_webhook_events, "event types sent to this URL")
    secret: str = setting("", p_str, 'key of the X-Mailrelay-Signature HMAC; "" = unsigned', secret=True)


@dataclass(frozen=True)
class DkimConfig:
    """``[dkim]``: settings of the sender domains' DKIM keys (mailrelay/services/domains.py)."""

    key_encryption_key: str = setting("", p_key_encryption_key, 'secret that encrypts the DKIM private keys kept in Redis, the same on every daemon; "" = keys cannot be stored in Redis (declare [[domains]] with key files)', secret=True)


@dataclass(frozen=True)
class DomainConfig:
    """One ``[[domains]]`` table: a sender domain whose key the user manages (a PEM file)."""

    name: str = setting("", p_domain_or_empty, "the sender domain (From domain, or a parent of it)")
    selector: str = setting("default", p_selector, "the DKIM selector: the public key is published at <selector>._domainkey.<name>")
    key_file: str = setting("", p_file, "PEM private key, RSA (at least 1024 bits; 2048 advised) or Ed25519 (RFC 8463)")


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "redis": RedisConfig,
    "tls": TLSConfig,
    "submission": SubmissionConfig,
    "delivery": DeliveryConfig,
    "bounces": BouncesConfig,
    "tracking": TrackingConfig,
    "archive": ArchiveConfig,
    "web": WebConfig,
    "dkim": DkimConfig,
}


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    bounces: BouncesConfig = field(default_factory=BouncesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    web: WebConfig = field(default_factory=WebConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    webhooks: tuple = ()  # of WebhookConfig, from [[webhooks]]
    domains: tuple = ()  # of DomainConfig, from [[domains]] (sender domains with key files)
    source: str | None = None

    @property
    def hostname(self) -> str:
        return self.server.hostname or _fqdn()

    @property
    def state_dir(self) -> Path:
        return Path(self.server.state_dir)


def parse_config(data: dict[str, Any], source: str | None = None) -> Config:
    """Validate a parsed TOML document and return the effective configuration."""
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name == "webhooks":
            sections["webhooks"] = _parse_webhooks(value)
            continue
        if name == "domains":
            sections["domains"] = _parse_domains(value)
            continue
        if name not in SECTIONS:
            known = ", ".join(f"[{s}]" for s in SECTIONS)
            raise ConfigError(f"[{name}]: unknown section (known: {known})")
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a [{name}] table")
        sections[name] = _parse_section(name, SECTIONS[name], value)
    config = Config(**sections, source=source)
    if bool(config.tls.cert) != bool(config.tls.key):
        raise ConfigError("tls.cert, tls.key: set both (or neither, for a generated certificate)")
    if config.redis.sentinels and config.redis.url:
        raise ConfigError("redis.sentinels: set either redis.url or redis.sentinels, not both")
    return config


#: RFC 5321 4.5.3.1.8: a server must accept at least this many recipients per message.
RFC5321_MIN_RECIPIENTS = 100


def config_warnings(config: Config) -> list[str]:
    """Settings that are valid but unwise: one line each, shown by check-config and logged at start."""
    warnings = []
    if config.submission.max_recipients < RFC5321_MIN_RECIPIENTS:
        warnings.append(
            f"submission.max_recipients = {config.submission.max_recipients} is below the minimum of "
            f"RFC 5321 ({RFC5321_MIN_RECIPIENTS}, section 4.5.3.1.8): clients must split messages "
            "with more recipients")
    return warnings


def _parse_domains(value: Any) -> tuple:
    """``[[domains]]``: name, selector and key_file required; the key must load (RSA or
    Ed25519); at most one RSA and one Ed25519 key per domain, selectors distinct."""
    expect("domains", value, list, "[[domains]] tables (not a [domains] table: the key "
            "encryption key is [dkim] key_encryption_key)")
    entries = []
    seen: dict[tuple[str, str], int] = {}
    for i, table in enumerate(value):
        expect(f"domains[{i}]", table, dict, "a [[domains]] table")
        for required in ("name", "selector", "key_file"):
            if not table.get(required):
                raise ConfigError(f"domains[{i}].{required}: required")
        entry = _parse_section(f"domains[{i}]", DomainConfig, table)
        try:
            algorithm = load_key_file(entry.key_file).algorithm
        except ValueError as e:
            raise ConfigError(f"domains[{i}].key_file: {e}") from None
        for (name, kind), j in seen.items():
            if name == entry.name and kind == algorithm:
                raise ConfigError(f"domains[{i}]: {entry.name} already has a {algorithm} key "
                                  f"(domains[{j}]); one RSA and one Ed25519 key per domain")
        if any(d.name == entry.name and d.selector == entry.selector for d in entries):
            raise ConfigError(f"domains[{i}].selector: {entry.name} uses selector "
                              f"{entry.selector!r} twice")
        seen[(entry.name, algorithm)] = i
        entries.append(entry)
    return tuple(entries)


def _parse_webhooks(value: Any) -> tuple:
    expect("webhooks", value, list, "[[webhooks]] tables")
    hooks = []
    for i, table in enumerate(value):
        expect(f"webhooks[{i}]", table, dict, "a [[webhooks]] table")
        if "url" not in table:
            raise ConfigError(f"webhooks[{i}].url: required")
        hooks.append(_parse_section(f"webhooks[{i}]", WebhookConfig, table))
    return tuple(hooks)


def _parse_section(name: str, cls: type, table: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, raw in table.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(fields)})")
        values[key] = fields[key].metadata["parse"](f"{name}.{key}", raw)
    return cls(**values)


def load_config(path: str | None) -> Config:
    """Read and validate a TOML file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, source=path)


def iter_settings(config: Config):
    """Yield (section, key, value, field) for every key, in declaration order."""
    for section in SECTIONS:
        obj = getattr(config, section)
        for f in dataclasses.fields(obj):
            yield section, f.name, getattr(obj, f.name), f


def _render(value: Any, f: dataclasses.Field) -> str:
    parse = f.metadata["parse"]
    if parse is p_duration:
        return f'"{format_duration(value)}"'
    if parse is p_optional_duration:
        return f'"{format_duration(value)}"' if value else '""'
    if parse is p_duration_list:
        return "[" + ", ".join(f'"{format_duration(v)}"' for v in value) + "]"
    if parse is p_domain_rates:
        value = {k: str(v) for k, v in value.items()}
    if parse is p_host_port:
        return f'"{value[0]}:{value[1]}"' if value else '""'
    if parse in (p_rate, p_optional_rate):
        return f'"{value or ""}"'
    if parse is p_memory_limit:
        return _quote(str(value))
    if parse is p_networks:
        value = [str(n) for n in value]
    if parse is p_host_ports:
        value = [f"{h}:{p}" for h, p in value]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_quote(str(v)) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_quote(k)} = {_quote(str(v))}" for k, v in value.items()) + " }"
    if isinstance(value, str):
        return _quote(value)
    return str(value)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _mask_setting(value: Any, f: dataclasses.Field) -> Any:
    """A secret setting's value as check-config shows it."""
    if f.metadata["parse"] is p_pg_url:
        return mask_conninfo(value)  # host, port, db and user stay visible
    return _mask(value)


def _mask(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple("********" for _ in value)
    if isinstance(value, Mapping):
        return {k: "********" for k in value}
    if isinstance(value, str) and value:
        parts = urlsplit(value)
        if parts.password:
            return value.replace(":" + parts.password + "@", ":********@", 1)
        if "password=" in parts.query:
            return re.sub(r"password=[^&]*", "password=********", value)
        if parts.scheme in ("redis", "unix"):
            return value
        return "********"
    return value


def render_config(config: Config) -> str:
    """The effective configuration as TOML, with secrets masked."""
    lines: list[str] = []
    current = None
    for section, key, value, f in iter_settings(config):
        if section != current:
            if current is not None:
                lines.append("")
            lines.append(f"[{section}]")
            current = section
        if f.metadata["secret"]:
            value = _mask_setting(value, f)
        lines.append(f"{key} = {_render(value, f)}")
    for hook in config.webhooks:
        lines += ["", "[[webhooks]]"]
        for f in dataclasses.fields(hook):
            value = getattr(hook, f.name)
            lines.append(f"{f.name} = {_render(_mask_setting(value, f) if f.metadata['secret'] else value, f)}")
    for domain in config.domains:
        lines += ["", "[[domains]]"]
        for f in dataclasses.fields(domain):
            lines.append(f"{f.name} = {_render(getattr(domain, f.name), f)}")
    return "\n".join(lines) + "\n"
