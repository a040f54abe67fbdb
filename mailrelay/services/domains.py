"""
domains: sender domains, their DKIM keys, signing, and the DNS records a user must publish.

JOB
    Keeps the list of sender domains (the domains mail is sent From) and one DKIM key per
    algorithm for each: RSA (2048 bits, ``rsa-sha256``) always, Ed25519 (RFC 8463,
    ``ed25519-sha256``) as an option, signed in addition to RSA. Domains come from two places:
    ``mailrelay domains add`` (keys generated here, kept in Redis encrypted) and ``[[domains]]``
    in the configuration (keys in PEM files the user manages); the configuration wins when a
    domain is in both.

    Signing happens once per message, at submission, before the message is queued: the
    DKIM-Signature fields are put on top of the stored message, so every recipient, every
    retry and every daemon delivers the same signed bytes, with no extra Redis round trip at
    delivery. The signing domain (``d=``) is the From address's domain, or its nearest parent
    that is a sender domain (relaxed DMARC alignment). Canonicalisation is relaxed/relaxed
    (dkimpy's); the signed header fields are From, To, Cc, Subject, Date, Message-ID,
    MIME-Version, Content-Type, Content-Transfer-Encoding and Reply-To, each as often as it
    occurs, and From once more (no From can be added). ``X-Mailrelay-*`` fields (the
    X-Mailrelay-ID; the recipient token each copy gets at delivery, which proves a bounce is
    about that recipient) stay in the message but are never signed.
    Hashing and the private-key operation (``cryptography``, i.e. OpenSSL) run in the
    reactor's thread pool, so a large body or a slow key never stalls the reactor.

    A message whose From domain is not a sender domain is refused at the end of DATA with
    ``550 5.7.1`` when ``[submission] require_known_domain`` is true; otherwise it is sent
    unsigned and, once at least one sender domain exists, its timeline gets an ``unsigned``
    event per recipient (with no sender domain at all DKIM is simply not set up, which the
    daemon logs at start).

    Running daemons notice added, rotated and removed domains within a second (a change
    counter in Redis, checked at most once a second, and at once for an unknown domain).

    ``mailrelay domains add|list|show|remove|rotate|verify`` (see :mod:`mailrelay.cli.domains`)
    manages the domains and prints the DNS records to publish: the DKIM key
    (``<selector>._domainkey.<domain>`` TXT), the bounce domain's MX (and SPF) when
    ``[bounces] domain`` is set, and SPF and DMARC suggestions. ``verify`` looks them up
    through ``[delivery] nameservers`` and says which are present and right. ``rotate`` makes
    a new key under a new selector; the old public key must stay published for the overlap
    (default 7 days, at least ``[delivery] max_queue_lifetime`` + 1 day: queued mail carries
    the old signature), which ``show`` lists as "keep until <date>".

    :func:`domain_states` gives each domain with its keys, records and last DNS check, for
    the status page and the API.

SECURITY
    Private keys stored in Redis are encrypted with AES-256-GCM under a key derived from
    ``[dkim] key_encryption_key`` by scrypt (n=2^14, r=8, p=1, a random salt per key); the
    domain and selector are authenticated data, so a stored key cannot be moved to another
    domain. Without that secret (``""``) keys cannot be stored in Redis at all. The plaintext
    (PKCS#8 DER) exists only in the daemons' memory and, at generation, in the
    ``mailrelay domains`` process. A rotated-out key's private half is deleted at once (only
    its public key is kept, for the records to publish). Key files of ``[[domains]]`` are
    read by the daemon; keep them mode 0600, owned by its user.

STANDARDS
    RFC 6376 (DKIM), RFC 8301 (RSA keys of at least 1024 bits, rsa-sha256 only; 2048 bits
    generated), RFC 8463 (Ed25519-SHA256), RFC 7489 (DMARC, alignment), RFC 7208 (SPF),
    RFC 5321 (MX of the bounce domain).

DIAGNOSTICS
    Submission: ``550 5.7.1 <domain> is not a sender domain of this server ...`` (unknown From
    domain with require_known_domain); ``451 4.3.5 cannot DKIM-sign for <domain> now ...`` (a
    sender domain whose key cannot be used: key_encryption_key missing or different from the
    one the key was stored with, unreadable key file; logged as an error). ``mailrelay
    domains``: one line on stderr and exit status 1 for errors (e.g. "cannot store private keys
    in Redis: set [dkim] key_encryption_key ..."); ``verify`` prints one line per record and
    exits 1 when a required record is missing or wrong.

CONFIGURATION
    ``[dkim] key_encryption_key``; ``[[domains]]`` name, selector, key_file;
    ``[submission] require_known_domain``; ``[bounces] domain``, ``[server] hostname`` and
    ``[delivery] helo_name`` (in the records to publish); ``[delivery] nameservers`` (verify).
    Redis data, through :mod:`mailrelay.store` only: ``P dkim:domains``, ``P dkim:version``,
    ``P dkim:checks``.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from mailrelay.config import Config, ConfigError, p_selector
from mailrelay.mail.dkim import (ED25519, KEY_TYPES, RSA, DomainError, KeyDecryptError, SigningKey,
                                dkim_txt_value, decrypt_private_key, encrypt_private_key,
                                generate_key, key_algorithm, load_der_key, load_key_file, private_der,
                                sign_message)
from mailrelay.smtp.mx import DNSError, NXDomain, TemporaryDNSError
from mailrelay.smtp.session import STORAGE_UNAVAILABLE, Reply
from mailrelay.store.interfaces import DkimSigningKeys, DomainRegistry
from mailrelay.timefmt import rfc3339

log = Logger()


#: How long a rotated-out public key stays published by default (never less than the
#: queue lifetime plus a day: queued mail still carries signatures made with it).
DEFAULT_OVERLAP = 7 * 86400
#: Running daemons look for changes to the sender domains at most this often (seconds).
REFRESH_INTERVAL = 1.0
#: ... and at once for an unknown From domain, unless they looked this recently.
MISS_REFRESH_INTERVAL = 0.1



# -- the sender domains -------------------------------------------------------------------


def now_text(seconds: float | None = None) -> str:
    return rfc3339(time.time() if seconds is None else seconds)


def parse_time(text: str | None) -> float | None:
    """``2026-11-28T09:15:00Z`` -> seconds since the epoch (None stays None)."""
    if not text:
        return None
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def normalize_domain(name: str) -> str:
    """Lowercase, no trailing dot, IDNA (A-labels); raises DomainError for a non-domain."""
    text = name.strip().rstrip(".").lower()
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise DomainError(f"{name!r} is not a domain name") from None
    if not re.match(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$", text):
        raise DomainError(f"{name!r} is not a domain name")
    return text


def from_domain(address: str) -> str:
    """The domain of a From address, as sender domains are keyed ("" if there is none)."""
    if "@" not in address:
        return ""
    domain = address.rpartition("@")[2].strip().rstrip(".").lower()
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            pass
    return domain


def candidates(domain: str) -> list[str]:
    """``a.b.example.com`` -> itself, then its parents down to two labels (DMARC relaxed
    alignment: a parent's signature is aligned with a subdomain's From)."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(0, max(len(labels) - 1, 1))]


@dataclass
class DomainKey:
    """One key of a sender domain (its private half is only ever in ``sealed``, encrypted)."""

    selector: str
    algorithm: str
    public: str
    bits: int = 0
    state: str = "active"             # active | retiring (rotated out: only DNS still needs it)
    created_at: str = ""
    keep_until: str | None = None     # retiring: the public record must stay until then
    sealed: dict | None = None        # Redis: the encrypted private key
    key_file: str | None = None       # [[domains]]: the PEM file

    def record_name(self, domain: str) -> str:
        return f"{self.selector}._domainkey.{domain}"

    def to_json(self) -> dict[str, Any]:
        data = {"selector": self.selector, "algorithm": self.algorithm, "public": self.public,
                "bits": self.bits, "state": self.state, "created_at": self.created_at,
                "keep_until": self.keep_until}
        if self.sealed is not None:
            data["private"] = self.sealed
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DomainKey":
        return cls(selector=data["selector"], algorithm=data["algorithm"], public=data["public"],
                   bits=int(data.get("bits") or 0), state=data.get("state", "active"),
                   created_at=data.get("created_at", ""), keep_until=data.get("keep_until"),
                   sealed=data.get("private"))


@dataclass
class SenderDomain:
    """A sender domain: where it is declared (``redis`` or ``config``) and its keys."""

    name: str
    source: str
    keys: list[DomainKey] = field(default_factory=list)
    created_at: str = ""
    shadowed: bool = False            # config: a record of the same name in Redis is ignored

    @property
    def active(self) -> list[DomainKey]:
        return [k for k in self.keys if k.state == "active"]

    @property
    def retiring(self) -> list[DomainKey]:
        return [k for k in self.keys if k.state == "retiring"]

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.name, "created_at": self.created_at,
                "keys": [k.to_json() for k in self.keys]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SenderDomain":
        return cls(name=data["domain"], source="redis", created_at=data.get("created_at", ""),
                   keys=[DomainKey.from_json(k) for k in data.get("keys", [])])


def config_domains(config: Config) -> dict[str, SenderDomain]:
    """The ``[[domains]]`` of the configuration (key files read for their public keys)."""
    found: dict[str, SenderDomain] = {}
    for entry in config.domains:
        try:
            key = load_key_file(entry.key_file)
        except ValueError as e:  # checked when the configuration was read; changed since
            raise DomainError(f"[[domains]] {entry.name}: {e}") from None
        domain = found.setdefault(entry.name, SenderDomain(entry.name, "config"))
        domain.keys.append(DomainKey(selector=entry.selector, algorithm=key.algorithm,
                                     public=key.public, bits=key.bits, key_file=entry.key_file))
    return found


async def all_domains(config: Config, storage: DomainRegistry) -> list[SenderDomain]:
    """Every sender domain, configuration and Redis, sorted by name."""
    stored = {name: SenderDomain.from_json(data) for name, data in (await storage.dkim_domains()).items()}
    merged = dict(stored)
    for name, domain in config_domains(config).items():
        domain.shadowed = name in stored
        merged[name] = domain
    return [merged[name] for name in sorted(merged)]


async def find_domain(config: Config, storage: DomainRegistry, name: str) -> SenderDomain | None:
    name = normalize_domain(name)
    data, _ = await storage.dkim_domain(name)
    from_config = config_domains(config).get(name)
    if from_config is not None:
        from_config.shadowed = data is not None
        return from_config
    return None if data is None else SenderDomain.from_json(data)


def default_selector(existing: set[str], prefix: str = "mr") -> str:
    """``mr20261128`` (today, UTC), with a letter added if the domain used it already."""
    base = f"{prefix}{time.strftime('%Y%m%d', time.gmtime())}"
    selector, letter = base, ord("b")
    while selector in existing or f"{selector}-ed25519" in existing:
        selector = base + chr(letter)
        letter += 1
    return selector


def _new_key(config: Config, domain: str, selector: str, algorithm: str) -> DomainKey:
    """Generate and seal a key (CPU: scrypt and RSA generation; run off the reactor)."""
    loaded = generate_key(algorithm)
    sealed = encrypt_private_key(config.dkim.key_encryption_key, private_der(loaded.private), domain, selector)
    return DomainKey(selector=selector, algorithm=algorithm, public=loaded.public, bits=loaded.bits,
                     created_at=now_text(), sealed=sealed)


def _check_selector(selector: str) -> str:
    try:
        return p_selector("--selector", selector)
    except ConfigError as e:
        raise DomainError(str(e)) from None


def _not_in_config(config: Config, name: str, action: str) -> None:
    if any(entry.name == name for entry in config.domains):
        raise DomainError(f"{name} is declared in the configuration ([[domains]] in "
                          f"{config.source or 'the configuration'}): {action} it there")


async def add_domain(config: Config, storage: DomainRegistry, name: str, selector: str | None = None,
                     ed25519: bool = False) -> SenderDomain:
    """Declare ``name``: generate its key(s), store them encrypted. Raises DomainError."""
    from twisted.internet import threads

    name = normalize_domain(name)
    _not_in_config(config, name, "change")
    if not config.dkim.key_encryption_key:
        encrypt_private_key("", b"", name, "")  # raises the DomainError that says what to set
    current, raw = await storage.dkim_domain(name)
    if current is not None:
        raise DomainError(f"{name} is already a sender domain: see `mailrelay domains show {name}`, "
                          f"or make a new key with `mailrelay domains rotate {name}`")
    selector = _check_selector(selector) if selector else default_selector(set())
    algorithms = [(selector, RSA)] + ([(f"{selector}-ed25519", ED25519)] if ed25519 else [])
    keys = [await threads.deferToThread(_new_key, config, name, s, a) for s, a in algorithms]
    domain = SenderDomain(name, "redis", keys, created_at=now_text())
    if not await storage.dkim_put_domain(name, domain.to_json(), raw):
        raise DomainError(f"{name} was added meanwhile by someone else; nothing changed")
    return domain


def overlap_for(config: Config, requested: float | None) -> float:
    minimum = config.delivery.max_queue_lifetime + 86400
    if requested is not None:
        return requested
    return max(DEFAULT_OVERLAP, minimum)


async def rotate_domain(config: Config, storage: DomainRegistry, name: str, selector: str | None = None,
                        overlap: float | None = None) -> SenderDomain:
    """
    New key(s) under a new selector for a Redis-stored domain; the previous active keys
    become ``retiring`` (public key only, keep_until = now + overlap); retiring keys whose
    overlap ended are dropped. Raises DomainError.
    """
    from twisted.internet import threads

    name = normalize_domain(name)
    _not_in_config(config, name, "rotate")
    data, raw = await storage.dkim_domain(name)
    if data is None:
        raise DomainError(f"{name} is not a sender domain (add it with `mailrelay domains add {name}`)")
    if not config.dkim.key_encryption_key:
        encrypt_private_key("", b"", name, "")
    domain = SenderDomain.from_json(data)
    existing = {k.selector for k in domain.keys}
    selector = _check_selector(selector) if selector else default_selector(existing)
    if selector in existing or f"{selector}-ed25519" in existing:
        raise DomainError(f"{name} already uses selector {selector}: choose a new one")
    now = time.time()
    keep_until = now_text(now + overlap_for(config, overlap))
    algorithms = [k.algorithm for k in domain.active] or [RSA]
    new_keys = []
    for algorithm in [RSA] + [a for a in algorithms if a == ED25519]:
        chosen = selector if algorithm == RSA else f"{selector}-ed25519"
        new_keys.append(await threads.deferToThread(_new_key, config, name, chosen, algorithm))
    kept = []
    for key in domain.keys:
        if key.state == "active":
            key.state, key.keep_until, key.sealed = "retiring", keep_until, None
        elif (parse_time(key.keep_until) or 0) <= now:
            continue  # its overlap is over: nothing needs it any more
        kept.append(key)
    domain.keys = new_keys + kept
    if not await storage.dkim_put_domain(name, domain.to_json(), raw):
        raise DomainError(f"{name} was changed meanwhile by someone else; nothing changed, try again")
    return domain


async def remove_domain(config: Config, storage: DomainRegistry, name: str) -> SenderDomain:
    name = normalize_domain(name)
    _not_in_config(config, name, "remove")
    data, raw = await storage.dkim_domain(name)
    if data is None:
        raise DomainError(f"{name} is not a sender domain")
    if not await storage.dkim_put_domain(name, None, raw):
        raise DomainError(f"{name} was changed meanwhile by someone else; nothing changed, try again")
    return SenderDomain.from_json(data)


# -- DNS records -------------------------------------------------------------------------------


@dataclass
class DNSRecord:
    """A record to publish: what, where, and whether mail depends on it."""

    kind: str          # dkim | bounce-mx | bounce-spf | spf | dmarc
    name: str
    type: str          # TXT | MX
    value: str
    required: bool
    title: str
    note: str = ""
    key: DomainKey | None = None
    keep_until: str | None = None     # a retiring key's record: needed until then

    def zone_line(self) -> str:
        """The record as a zone-file line; long TXT values split into 255-octet strings."""
        if self.type == "TXT":
            chunks = [self.value[i:i + 255] for i in range(0, len(self.value), 255)] or [""]
            text = " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
            if len(chunks) > 1:
                text = f"( {text} )"
            return f"{self.name}. IN TXT {text}"
        return f"{self.name}. IN {self.type} {self.value}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "type": self.type, "value": self.value,
                "required": self.required, "title": self.title, "note": self.note,
                "keep_until": self.keep_until}


def _spf_host(config: Config) -> str:
    return config.delivery.helo_name or config.hostname


def dns_records(config: Config, domain: SenderDomain) -> list[DNSRecord]:
    """The records to publish for ``domain``, required ones first."""
    records = []
    for key in domain.active:
        records.append(DNSRecord("dkim", key.record_name(domain.name), "TXT",
                                 dkim_txt_value(key.algorithm, key.public), True,
                                 f"DKIM key {key.algorithm}, selector {key.selector}", key=key))
    for key in domain.retiring:
        records.append(DNSRecord(
            "dkim", key.record_name(domain.name), "TXT", dkim_txt_value(key.algorithm, key.public),
            True, f"previous DKIM key {key.algorithm}, selector {key.selector}",
            note=f"keep until {key.keep_until}: mail signed before the rotation is still checked "
                 "with it; remove it after that date", key=key, keep_until=key.keep_until))
    host = config.hostname
    spf_host = _spf_host(config)
    bounce = config.bounces.domain
    if bounce:
        records.append(DNSRecord("bounce-mx", bounce, "MX", f"10 {host}.", True,
                                 "bounce domain MX (the return path of every message)",
                                 note=f"bounces come back to b+<token>@{bounce}; {host} must be "
                                      "this daemon's bounce listener"))
        records.append(DNSRecord("bounce-spf", bounce, "TXT", f"v=spf1 a:{spf_host} ~all", False,
                                 "SPF of the bounce domain",
                                 note="receivers check SPF against the return path's domain"))
    note = (f"one SPF record per name: if {domain.name} has one, add a:{spf_host} to it"
            + ("; DMARC passes through DKIM alignment, the return path is the bounce domain"
               if bounce else "; the return path is the sender's own address"))
    records.append(DNSRecord("spf", domain.name, "TXT", f"v=spf1 a:{spf_host} ~all", False,
                             "SPF", note=note))
    records.append(DNSRecord("dmarc", f"_dmarc.{domain.name}", "TXT",
                             f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain.name}", False,
                             "DMARC",
                             note="start with p=none and read the reports; then p=quarantine "
                                  "or p=reject"))
    return records


def _tags(text: str) -> dict[str, str]:
    tags = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags[name.strip().lower()] = value.strip()
    return tags


@dataclass
class Check:
    """The outcome of looking one record up."""

    record: DNSRecord
    status: str        # ok | missing | wrong | error | different (a suggestion differs) | done
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.record.required and self.status in ("missing", "wrong", "error")

    def to_json(self) -> dict[str, Any]:
        return {**self.record.to_json(), "status": self.status, "detail": self.detail}


async def check_record(resolver: Any, record: DNSRecord) -> Check:
    """Look ``record`` up and compare it with what it should be."""
    if record.keep_until and (parse_time(record.keep_until) or 0) <= time.time():
        return Check(record, "done", f"overlap ended {record.keep_until}: the record may be removed")
    try:
        if record.type == "MX":
            hosts = await resolver.resolve(record.name)
            names = [h.name.lower().rstrip(".") for h in hosts]
            wanted = record.value.split()[1].rstrip(".").lower()
            if wanted in names:
                return Check(record, "ok", f"MX hosts: {', '.join(names)}")
            return Check(record, "wrong", f"the MX hosts are {', '.join(names)}, not {wanted}")
        texts = await resolver.lookup_txt(record.name)
    except NXDomain:
        return Check(record, "missing", f"{record.name} does not exist")
    except TemporaryDNSError as e:
        return Check(record, "error", str(e))
    except DNSError as e:
        return Check(record, "wrong" if record.type == "MX" else "missing", str(e))
    if record.kind == "dkim":
        keys = [_tags(t) for t in texts if "p=" in t]
        if not keys:
            return Check(record, "missing", "no DKIM key record" + (f" (found: {texts[0][:60]})" if texts else ""))
        wanted_p = re.sub(r"\s+", "", record.key.public)
        wanted_k = KEY_TYPES[record.key.algorithm]
        for tags in keys:
            if re.sub(r"\s+", "", tags.get("p", "")) == wanted_p and tags.get("k", "rsa").lower() == wanted_k:
                return Check(record, "ok", "the published key is this key")
        published = keys[0].get("p", "")
        return Check(record, "wrong", "a different key is published"
                     + (f" (p={published[:24]}...)" if published else " (p= is empty: revoked)"))
    prefix, what = ("v=spf1", "SPF") if record.kind in ("spf", "bounce-spf") else ("v=dmarc1", "DMARC")
    found = [t for t in texts if t.strip().lower().startswith(prefix)]
    if not found:
        return Check(record, "missing", f"no {what} record")
    if len(found) > 1:
        return Check(record, "wrong" if record.required else "different",
                     f"{len(found)} {what} records: there must be one")
    if record.kind == "dmarc":
        return Check(record, "ok", f"policy p={_tags(found[0]).get('p', '?')}")
    host = record.value.split()[1].partition(":")[2].lower()
    if host and host in found[0].lower():
        return Check(record, "ok", found[0])
    return Check(record, "different", f"{found[0]!r} does not name {host}: make sure it allows "
                                      "this server's addresses")


async def verify_domain(config: Config, domain: SenderDomain, resolver: Any) -> list[Check]:
    records = dns_records(config, domain)
    results = await defer.gatherResults(
        [defer.ensureDeferred(check_record(resolver, r)) for r in records], consumeErrors=True)
    return list(results)


def check_summary(checks: list[Check]) -> dict[str, Any]:
    """The stored form of a verification (``P dkim:checks``)."""
    return {"at": now_text(), "ok": not any(c.failed for c in checks),
            "records": [c.to_json() for c in checks]}


async def domain_states(config: Config, storage: DomainRegistry) -> list[dict[str, Any]]:
    """
    For the status page and the API: every sender domain with its keys, the records to
    publish, and the last DNS check (``mailrelay domains verify``)::

        [{"name", "source": "redis"|"config", "created_at", "keys": [{"selector",
          "algorithm", "bits", "state": "active"|"retiring", "created_at", "keep_until"}],
          "records": [{"kind", "name", "type", "value", "required", "title", "note",
          "keep_until"}], "dns_check": {"at", "ok", "records": [... + "status", "detail"]}
          or None}]

    No private key material is in it.
    """
    checks = await storage.dkim_checks()
    out = []
    for domain in await all_domains(config, storage):
        out.append({
            "name": domain.name, "source": domain.source, "created_at": domain.created_at,
            "keys": [{k: v for k, v in key.to_json().items() if k != "private"} for key in domain.keys],
            "records": [r.to_json() for r in dns_records(config, domain)],
            "dns_check": checks.get(domain.name),
        })
    return out


# -- the signer in the daemon ---------------------------------------------------------------


@dataclass
class SignResult:
    """What submission does with a message after :meth:`SenderDomains.sign`."""

    refused: Any = None               # a smtp.session.Reply: refuse the message with it
    unsigned: str | None = None       # sent unsigned: the timeline says why
    domain: str | None = None         # the d= it was signed for


class SenderDomains:
    """The daemon's view of the sender domains: usable keys in memory, kept up to date."""

    def __init__(self, config: Config, storage: DkimSigningKeys | None, clock: Any = None) -> None:
        self.config = config
        self.storage = storage
        self.require_known = config.submission.require_known_domain
        self.clock = clock
        self.keys: dict[str, list[SigningKey]] = {}     # domain -> its active keys
        self.broken: dict[str, str] = {}                # domain -> why its keys cannot be used
        self.version: int | None = None
        self.checked_at = float("-inf")
        self._loaded: dict[str, Any] = {}               # sealed key or file -> private key object
        self._waiters: list[defer.Deferred] | None = None
        self._described = None
        if storage is not None:
            from twisted.internet import reactor
            (clock or reactor).callLater(0, self._first_load)

    def _now(self) -> float:
        if self.clock is None:
            from twisted.internet import reactor
            self.clock = reactor
        return self.clock.seconds()

    def _first_load(self) -> None:
        d = defer.ensureDeferred(self.refresh(force=True))
        d.addErrback(lambda f: log.warn("DKIM: cannot read the sender domains yet: {e}", e=f.getErrorMessage()))

    # -- keeping up to date

    async def refresh(self, force: bool = False, interval: float = REFRESH_INTERVAL) -> None:
        """Reload the keys when the change counter moved (looked at most every ``interval`` s)."""
        if not force and self._now() - self.checked_at < interval:
            return
        if self._waiters is not None:   # a refresh is running: wait for it
            d: defer.Deferred = defer.Deferred()
            self._waiters.append(d)
            await d
            return
        self._waiters = []
        try:
            version = await self.storage.dkim_version()
            if version != self.version:
                records = await self.storage.dkim_domains() if version else {}
                from twisted.internet import threads
                keys, broken = await threads.deferToThread(self._load, records)
                self.keys, self.broken, self.version = keys, broken, version
                self._describe()
            self.checked_at = self._now()
        finally:
            waiters, self._waiters = self._waiters, None
            for waiter in waiters:
                waiter.callback(None)

    def _load(self, records: dict[str, dict[str, Any]]) -> tuple[dict[str, list[SigningKey]], dict[str, str]]:
        """(In a thread.) The usable keys of every domain, and why some cannot be used."""
        keys: dict[str, list[SigningKey]] = {}
        broken: dict[str, str] = {}
        loaded: dict[str, Any] = {}
        secret = self.config.dkim.key_encryption_key
        config_names = {entry.name for entry in self.config.domains}
        for name, data in records.items():
            if name in config_names:
                continue
            for key in SenderDomain.from_json(data).active:
                cache_key = json.dumps(key.sealed, sort_keys=True)
                try:
                    private = self._loaded.get(cache_key)
                    if private is None:
                        if key.sealed is None:
                            raise KeyDecryptError(f"the active key {key.selector} of {name} has no private key")
                        private = load_der_key(decrypt_private_key(secret, key.sealed, name, key.selector)).private
                    loaded[cache_key] = private
                    keys.setdefault(name, []).append(SigningKey(name, key.selector, key.algorithm, private))
                except (DomainError, ValueError) as e:
                    broken[name] = str(e)
        for entry in self.config.domains:
            cache_key = "file:" + entry.key_file
            try:
                private = self._loaded.get(cache_key) or load_key_file(entry.key_file).private
                loaded[cache_key] = private
                keys.setdefault(entry.name, []).append(
                    SigningKey(entry.name, entry.selector, key_algorithm(private), private))
            except ValueError as e:
                broken[entry.name] = str(e)
        for name in broken:
            keys.pop(name, None)
        self._loaded = loaded
        return keys, broken

    def _describe(self) -> None:
        described = (sorted((d, tuple(sorted((k.algorithm, k.selector) for k in ks))) for d, ks in self.keys.items()),
                     sorted(self.broken.items()))
        if described == self._described:
            return
        self._described = described
        if not self.keys and not self.broken:
            log.info("DKIM: no sender domains declared: mail is sent without a DKIM signature "
                     "(`mailrelay domains add DOMAIN`, see docs/dkim.md)")
        for name, keys in sorted(self.keys.items()):
            log.info("DKIM: signing mail from {domain} ({keys})", domain=name,
                     keys=", ".join(f"{k.algorithm} s={k.selector}" for k in keys))
        for name, why in sorted(self.broken.items()):
            log.error("DKIM: cannot sign mail from {domain}: {why}; such mail gets 451 4.3.5",
                      domain=name, why=why)

    @property
    def any_declared(self) -> bool:
        return bool(self.keys or self.broken)

    def find(self, domain: str) -> str | None:
        """The sender domain that signs for ``domain``: itself or its nearest declared parent."""
        for candidate in candidates(domain) if domain else []:
            if candidate in self.keys or candidate in self.broken:
                return candidate
        return None

    # -- signing

    def sign_now(self, new: Any) -> SignResult | None:
        """
        What :meth:`sign` would decide for ``new`` when that needs neither Redis (the keys
        were checked recently enough) nor a signing thread (nothing to sign); else None.
        The common case of a daemon without sender domains, decided without a coroutine.
        """
        elapsed = self._now() - self.checked_at
        if elapsed >= MISS_REFRESH_INTERVAL or self.version is None:
            return None
        domain = from_domain(str(new.summary.get("from") or ""))
        if self.find(domain) is not None:
            return None
        return self._not_found(domain)

    def _not_found(self, domain: str) -> SignResult:
        """The outcome for mail From a domain that no sender domain signs for."""
        what = (f"its From domain {domain} is not a sender domain" if domain
                else "it has no From address")
        if self.require_known:
            text = (f"{domain} is not a sender domain of this server: add it with "
                    f"`mailrelay domains add {domain}` (or send From a sender domain)" if domain
                    else "The message has no From address: it cannot be DKIM-signed")
            return SignResult(refused=Reply(550, "5.7.1", text))
        if not self.any_declared:
            return SignResult()
        return SignResult(unsigned=f"Sent without a DKIM signature: {what}"
                                   + (f" (mailrelay domains add {domain})" if domain else ""))

    async def sign(self, new: Any) -> SignResult:
        """Sign ``new`` (a storage.NewMessage) in place, or say why not (see SignResult)."""
        from twisted.internet import threads

        domain = from_domain(str(new.summary.get("from") or ""))
        try:
            await self.refresh()
            found = self.find(domain)
            if found is None:
                await self.refresh(interval=MISS_REFRESH_INTERVAL)
                found = self.find(domain)
        except Exception as e:
            if self.version is None:  # nothing known yet: neither sign nor send unsigned
                log.warn("DKIM: cannot read the sender domains: {e}", e=e)
                return SignResult(refused=STORAGE_UNAVAILABLE)
            log.warn("DKIM: cannot check for changes to the sender domains ({e}); using the keys known", e=e)
            found = self.find(domain)
        if found is None:
            return self._not_found(domain)
        if found in self.broken:
            log.error("DKIM: message from <{sender}> refused (451): cannot sign for {domain}: {why}",
                      sender=new.summary.get("from"), domain=found, why=self.broken[found])
            return SignResult(refused=Reply(451, "4.3.5", f"Cannot DKIM-sign for {found} now, try again later"))
        keys = self.keys[found]
        try:
            header = await threads.deferToThread(sign_message, new.content, keys)
        except Exception as e:
            log.error("DKIM: signing for {domain} failed: {e}", domain=found, e=e)
            return SignResult(refused=Reply(451, "4.3.5", f"Cannot DKIM-sign for {found} now, try again later"))
        new.content = header + new.content
        return SignResult(domain=found)

    async def record_unsigned(self, new: Any, detail: str) -> None:
        try:
            await self.storage.record_unsigned(new.id, list(new.recipients), detail)
        except Exception as e:
            log.warn("DKIM: could not record the unsigned event of {id}: {e}", id=new.id, e=e)
