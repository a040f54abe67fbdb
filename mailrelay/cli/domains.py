"""
cli.domains: ``mailrelay domains add|list|show|remove|rotate|verify``.

JOB
    Manages the sender domains kept by :mod:`mailrelay.services.domains` and prints the DNS records
    a user must publish: the DKIM key (``<selector>._domainkey.<domain>`` TXT), the bounce
    domain's MX (and SPF) when ``[bounces] domain`` is set, and SPF and DMARC suggestions.
    ``verify`` looks them up through ``[delivery] nameservers`` (:class:`mailrelay.smtp.mx.MXResolver`)
    and says which are present and right; ``show`` lists a rotated-out key as "keep until
    <date>".

SECURITY
    Generated private keys exist in this process's memory and are stored in Redis sealed
    (see :mod:`mailrelay.mail.dkim`); nothing private is printed. Text read from Redis or DNS
    is printed through :func:`mailrelay.cli.common.clean`.

STANDARDS
    RFC 6376 (DKIM records), RFC 7208 (SPF), RFC 7489 (DMARC), RFC 5321 (MX).

DIAGNOSTICS
    One line on stderr and exit status 1 for errors (e.g. "cannot store private keys in
    Redis: set [dkim] key_encryption_key ..."); ``verify`` prints one line per record and
    exits 1 when a required record is missing or wrong.

CONFIGURATION
    ``[dkim] key_encryption_key``, ``[bounces] domain``, ``[server] hostname``,
    ``[delivery] helo_name`` and ``nameservers``, ``[redis]`` (through
    :mod:`mailrelay.cli.common`).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from twisted.logger import Logger

from mailrelay.cli.common import add_config_option, clean, load_or_exit, react_with_storage
from mailrelay.config import Config, format_duration, parse_duration
from mailrelay.services.domains import (KEY_TYPES, DomainError, SenderDomain, add_domain, all_domains,
                               check_summary, dns_records, find_domain, normalize_domain,
                               parse_time, remove_domain, rotate_domain, verify_domain)
from mailrelay.smtp.mx import MXResolver
from mailrelay.store.interfaces import DomainRegistry

log = Logger()


def _print_records(config: Config, domain: SenderDomain) -> None:
    print(f"DNS records for {domain.name}:")
    for record in dns_records(config, domain):
        label = "required" if record.required and not record.keep_until else (
            f"keep until {record.keep_until}" if record.keep_until else "suggested")
        print(f"\n  [{label}] {record.title}")
        print(f"    name:  {record.name}")
        print(f"    type:  {record.type}")
        print(f"    value: {record.value}")
        print(f"    zone:  {record.zone_line()}")
        if record.note:
            print(f"    note:  {record.note}")


def _print_domain(config: Config, domain: SenderDomain) -> None:
    print(f"Domain {clean(domain.name)}")
    source = ("configuration ([[domains]])" if domain.source == "config"
              else "Redis (private keys encrypted)")
    print(f"  source:   {source}" + ("; a Redis record of the same name is ignored" if domain.shadowed else ""))
    if domain.created_at:
        print(f"  created:  {domain.created_at}")
    for key in domain.keys:
        if key.state == "active":
            state = "active, signing"
        elif (parse_time(key.keep_until) or 0) > time.time():
            state = f"retired, keep its DNS record until {key.keep_until}"
        else:
            state = f"retired, its overlap ended {key.keep_until}: the DNS record may be removed"
        extra = f", key file {key.key_file}" if key.key_file else ""
        print(f"  key:      {key.algorithm} ({key.bits} bits) selector {key.selector}: {state}{extra}")
    print()
    _print_records(config, domain)


async def _cmd_add(config: Config, storage: DomainRegistry, args: argparse.Namespace) -> int:
    domain = await add_domain(config, storage, args.domain, args.selector, args.ed25519)
    keys = "; ".join(f"{k.algorithm} ({k.bits} bits), selector {k.selector}" for k in domain.keys)
    print(f"Added sender domain {domain.name}: {keys}.")
    print("The private keys are stored in Redis, encrypted with [dkim] key_encryption_key.")
    print("Mail From this domain (and its subdomains) is DKIM-signed from now on.\n")
    _print_records(config, domain)
    print(f"\nOnce published: mailrelay domains verify {domain.name}")
    return 0


async def _cmd_list(config: Config, storage: DomainRegistry, args: argparse.Namespace) -> int:
    domains = await all_domains(config, storage)
    checks = await storage.dkim_checks()
    if not domains:
        print("No sender domains: mail is sent without a DKIM signature. "
              "Add one with `mailrelay domains add DOMAIN`.")
        return 0
    rows = [("DOMAIN", "SOURCE", "SELECTORS", "RETIRING", "DNS")]
    for d in domains:
        check = checks.get(d.name)
        dns = "unchecked" if check is None else (
            f"{'ok' if check['ok'] else 'INCOMPLETE'} {check['at']}")
        rows.append((clean(d.name), d.source,
                     ",".join(f"{k.selector}({KEY_TYPES[k.algorithm]})" for k in d.active) or "-",
                     ",".join(f"{k.selector}<{(k.keep_until or '')[:10]}" for k in d.retiring) or "-",
                     dns))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


async def _cmd_show(config: Config, storage: DomainRegistry, args: argparse.Namespace) -> int:
    domain = await find_domain(config, storage, args.domain)
    if domain is None:
        raise DomainError(f"{normalize_domain(args.domain)} is not a sender domain")
    _print_domain(config, domain)
    return 0


async def _cmd_remove(config: Config, storage: DomainRegistry, args: argparse.Namespace) -> int:
    domain = await remove_domain(config, storage, args.domain)
    print(f"Removed sender domain {domain.name} and its keys; its mail is no longer signed.")
    print("Messages already queued keep their signature: leave the DKIM records published "
          f"until they are delivered (up to {format_duration(config.delivery.max_queue_lifetime)}), "
          "then remove:")
    for key in domain.keys:
        print(f"  {key.record_name(domain.name)} TXT")
    return 0


async def _cmd_rotate(config: Config, storage: DomainRegistry, args: argparse.Namespace) -> int:
    overlap = None
    if args.overlap:
        try:
            overlap = parse_duration(args.overlap)
        except ValueError as e:
            raise DomainError(f"--overlap: {e}") from None
    minimum = config.delivery.max_queue_lifetime
    domain = await rotate_domain(config, storage, args.domain, args.selector, overlap)
    new = ", ".join(f"{k.selector} ({k.algorithm})" for k in domain.active)
    print(f"Rotated {domain.name}: new key(s) {new} sign its mail from now on.")
    if overlap is not None and overlap < minimum:
        print(f"warning: the overlap {args.overlap} is shorter than [delivery] max_queue_lifetime "
              f"({format_duration(minimum)}): queued mail signed with the old key may fail DKIM")
    print("Publish the new record(s) now; keep the previous one(s) until the date shown.\n")
    _print_records(config, domain)
    return 0


async def _cmd_verify(config: Config, storage: DomainRegistry, args: argparse.Namespace) -> int:
    from twisted.internet import reactor  # the resolver runs in the reactor react() started

    if args.domain:
        domain = await find_domain(config, storage, args.domain)
        if domain is None:
            raise DomainError(f"{normalize_domain(args.domain)} is not a sender domain")
        domains = [domain]
    else:
        domains = await all_domains(config, storage)
        if not domains:
            raise DomainError("there are no sender domains to verify")
    servers = list(config.delivery.nameservers)
    resolver = MXResolver(servers or None, timeout=(2, 4), reactor=reactor)
    via = ", ".join(f"{h}:{p}" for h, p in servers) or "the system's nameservers"
    failed = False
    try:
        for domain in domains:
            checks = await verify_domain(config, domain, resolver)
            print(f"{clean(domain.name)}: DNS records (looked up via {via})")
            for check in checks:
                record = check.record
                status = check.status.upper() if check.failed else check.status
                kind = "required" if record.required else "suggested"
                print(f"  {status:<9} {record.name} {record.type} ({record.title}; {kind}): {clean(check.detail)}")
                if check.status in ("missing", "wrong", "different") and not check.record.keep_until:
                    print(f"            publish: {record.value}")
            bad = [c for c in checks if c.failed]
            required = [c for c in checks if c.record.required and c.status != "done"]
            print(f"  {len(required) - len(bad)} of {len(required)} required records are right"
                  + (": mail from this domain passes DKIM" if not bad else ""))
            failed = failed or bool(bad)
            try:
                await storage.dkim_record_check(domain.name, check_summary(checks))
            except Exception as e:
                log.debug("could not store the check: {e}", e=e)
    finally:
        await resolver.close()
    return 1 if failed else 0


DOMAIN_ACTIONS = {"add": _cmd_add, "list": _cmd_list, "show": _cmd_show, "remove": _cmd_remove,
                  "rotate": _cmd_rotate, "verify": _cmd_verify}


def cmd_domains(args: argparse.Namespace) -> int:
    """Run one ``domains`` action against the daemon's Redis (mailrelay.cli's helper); exits."""
    async def action(storage: DomainRegistry) -> None:
        try:
            status = await DOMAIN_ACTIONS[args.domains_command](config, storage, args)
        except DomainError as e:
            raise SystemExit(f"mailrelay: {clean(str(e))}")
        sys.stdout.flush()
        if status:
            raise SystemExit(status)

    config = load_or_exit(getattr(args, "config", None))
    return react_with_storage(args, action, config)


def add_domains_parser(sub: Any) -> None:
    """``mailrelay domains add|list|show|remove|rotate|verify`` (see the module documentation)."""
    domains = sub.add_parser("domains", help="sender domains: DKIM keys and the DNS records to publish")
    add_config_option(domains)
    actions = domains.add_subparsers(dest="domains_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="declare a sender domain: generate its DKIM key, print the DNS records")
    add.add_argument("domain", metavar="DOMAIN")
    add.add_argument("--selector", metavar="S", help="DKIM selector (default: mr<YYYYMMDD>)")
    add.add_argument("--ed25519", action="store_true",
                     help="also an Ed25519 key (RFC 8463), selector S-ed25519, signed in addition to RSA")
    add_config_option(add)
    lister = actions.add_parser("list", help="the sender domains, their selectors and DNS state")
    add_config_option(lister)
    show = actions.add_parser("show", help="a domain's keys and the DNS records to publish")
    show.add_argument("domain", metavar="DOMAIN")
    add_config_option(show)
    remove = actions.add_parser("remove", help="forget a sender domain and its keys")
    remove.add_argument("domain", metavar="DOMAIN")
    add_config_option(remove)
    rotate = actions.add_parser("rotate", help="new key(s) under a new selector; the old record stays for the overlap")
    rotate.add_argument("domain", metavar="DOMAIN")
    rotate.add_argument("--selector", metavar="S", help="the new selector (default: mr<YYYYMMDD>)")
    rotate.add_argument("--overlap", metavar="DURATION",
                        help="how long the old public key stays published (default: 7d, at least "
                             "[delivery] max_queue_lifetime + 1d)")
    add_config_option(rotate)
    verify = actions.add_parser("verify", help="look the DNS records up and say which are present and right")
    verify.add_argument("domain", metavar="DOMAIN", nargs="?", help="default: every sender domain")
    add_config_option(verify)
    domains.set_defaults(func=cmd_domains)
