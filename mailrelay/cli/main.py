"""
cli.main: the ``mailrelay`` administration command.

JOB
    Parses the command line and runs one subcommand::

        mailrelay check-config [-c FILE]   validate and print the effective configuration
        mailrelay hash-password            read a password on stdin, print a hash for [submission] users
        mailrelay version                  print the version
        mailrelay queue list [-c FILE]     per destination domain: queued, deferred, delivering, oldest
        mailrelay queue show MESSAGE_ID [-c FILE]
                                           a message's envelope, recipients (state, attempts) and events
        mailrelay queue retry (MESSAGE_ID | --domain DOMAIN | --all) [-c FILE]
                                           make waiting delivery jobs due now
        mailrelay queue delete MESSAGE_ID [--recipient ADDRESS] [-c FILE]
                                           drop a message's pending jobs (recorded as "deleted" events)
        mailrelay suppressions list [--unproven] | add ADDRESS [--reason R] | remove ADDRESS [-c FILE]
                                           the addresses mail is not sent to
        mailrelay bounce classify FILE...  parse bounce messages (RFC 5322 files, "-" for stdin); print one
                                           JSON object per file and recipient: file, type, type_code,
                                           recipient, status, description, rule, reason (which rule,
                                           status, reply code and text decided)
        mailrelay bounce reclassify [--dry-run] [-c FILE]
                                           classify the stored bounces again; print each changed one
                                           (id, address, old -> new type, effect, reason); reactivate
                                           the addresses a bounce suppressed that the new type does not
                                           (never an operator's suppression)
        mailrelay cluster [-c FILE]        the live daemons sharing the Redis: heartbeat age, what
                                           each is delivering, version (see mailrelay.services.cluster)
        mailrelay migrate [--force] [-c FILE]
                                           migrate the Redis data to this release's format version
        mailrelay domains add DOMAIN [--selector S] [--ed25519] [-c FILE]
                                           declare a sender domain: DKIM key generated (stored in Redis,
                                           encrypted), DNS records to publish printed
        mailrelay domains list|show|remove|rotate|verify [DOMAIN] [-c FILE]
                                           sender domains, their keys and DNS records (mailrelay.services.domains)

    The ``cluster``, ``migrate`` and ``domains`` parsers and actions live in
    :mod:`mailrelay.cli.cluster` and :mod:`mailrelay.cli.domains`. The ``queue``,
    ``suppressions``, ``bounce reclassify``, ``cluster``, ``migrate`` and
    ``domains`` subcommands talk to the daemon's Redis through
    :func:`mailrelay.cli.common.run_with_storage`: the managed one
    through ``state_dir/redis/redis.sock`` (a relative state_dir is taken from
    the current directory, so run them where the daemon runs, or use an
    absolute state_dir), else ``[redis] url`` or ``sentinels``. They use only
    :class:`mailrelay.store.Storage` and give up after ``[redis] timeout``
    per request. :func:`load_or_exit` also serves the twistd plugin.

SECURITY
    Run by the operator, whose command line and configuration are trusted;
    whoever can run it with the daemon's configuration can change the queue
    and the suppressions. What it prints from Redis (addresses, replies,
    reasons: written by clients and remote servers) goes through
    :func:`clean`, which escapes control characters so that stored text
    cannot drive the terminal. ``hash-password`` reads the password without
    echo from a terminal (asked twice) or as the first line of stdin, and
    prints only the hash; ``check-config`` masks secrets. The managed Redis
    socket is probed before use, so a missing daemon is one line, not a hang.

STANDARDS
    None implemented here (``bounce classify`` reads RFC 5322 files through
    :mod:`mailrelay.mail.bounceparse`).

DIAGNOSTICS
    Output on stdout; errors are one line on stderr and exit status 1
    (``SystemExit`` with a message; argparse usage errors exit 2):
    ``mailrelay: configuration error: <ConfigError>``, ``mailrelay:
    passwords differ``, ``mailrelay: empty password``, ``mailrelay: cannot
    connect to <redis>: <error>``, ``mailrelay: the daemon's managed Redis is
    not running (no socket at <path>)``, ``mailrelay: cannot connect to the
    daemon's managed Redis at <path>: <strerror>``, ``mailrelay: <redis>:
    <StorageError>``, ``mailrelay: no message <id>``, ``mailrelay: <address>
    is already suppressed`` / ``is not suppressed``, ``mailrelay: <address>:
    <AddressError>``. ``check-config`` writes ``mailrelay: warning:
    <warning>`` lines on stderr and exits 0. ``bounce classify`` prints
    ``mailrelay: <file>: <strerror>`` for an unreadable file, goes on with
    the others and exits 1. <redis> is ``the daemon's managed Redis at
    unix:<path>``, ``Redis via Sentinel <host:port, ...>`` or ``Redis at
    <host:port | unix:path> db <n>``.

CONFIGURATION
    ``-c FILE`` (the whole configuration is validated); used: ``[server]``
    state_dir; ``[redis]`` url, sentinels, timeout (and what
    :class:`mailrelay.store.Storage` reads); ``[tls]`` cert, key,
    min_version (``check-config`` loads them); ``[bounces]`` (the VERP
    secret, for ``suppressions list --unproven``). Owns no file or Redis
    data: it changes Redis only through the storage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from mailrelay import __version__
from mailrelay.mail.bounceparse import parse_bounce
from mailrelay.services.bounces import load_verp, reclassify_bounces, unproven_suppressions
from mailrelay.cli.cluster import add_cluster_parsers
from mailrelay.cli.common import add_config_option, clean, load_or_exit, plural, react_with_storage, run_with_storage
from mailrelay.cli.domains import add_domains_parser
from mailrelay.config import Config, ConfigError, config_warnings, render_config
from mailrelay.passwords import hash_password
from mailrelay.smtp.server import AddressError, validate_mailbox
from mailrelay.store.records import MessageRecord, decode_timeline
from mailrelay.timefmt import format_age, rfc3339, rfc3339_ms as format_ms
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


# -- mailrelay queue -----------------------------------------------------------------------














def print_queue_list(summary: dict[str, Any]) -> None:
    now = summary["now_ms"]
    columns = ("QUEUED", "DEFERRED", "DELIVERING")
    rows = []
    totals = {"queued": 0, "deferred": 0, "delivering": 0, "oldest_ms": None}
    for domain in sorted(summary["domains"]):
        row = summary["domains"][domain]
        rows.append((clean(domain), row))
        for name in ("queued", "deferred", "delivering"):
            totals[name] += row[name]
        if row["oldest_ms"] is not None and (totals["oldest_ms"] is None
                                             or row["oldest_ms"] < totals["oldest_ms"]):
            totals["oldest_ms"] = row["oldest_ms"]
    rows.append(("TOTAL", totals))
    width = max(len("DOMAIN"), *(len(name) for name, _ in rows))

    def line(name: str, values: list[str]) -> str:
        return (f"{name:<{width}}  " + "  ".join(f"{v:>{len(c)}}" for v, c in zip(values[:3], columns))
                + f"  {values[3]}").rstrip()

    print(line("DOMAIN", [*columns, "OLDEST"]))
    for name, row in rows:
        oldest = "-" if row["oldest_ms"] is None else format_age((now - row["oldest_ms"]) / 1000)
        print(line(name, [str(row["queued"]), str(row["deferred"]), str(row["delivering"]), oldest]))
    if summary.get("unsettled"):
        print(f"{plural(summary['unsettled'], 'message')} stored but not settled yet (not "
              "deliverable until their acknowledgement is confirmed)")


def print_message(message_id: str, info: dict[str, Any]) -> None:
    now = info["now_ms"]
    msg = MessageRecord.decode(message_id, info["message"])
    print(f"Message {clean(message_id)}")
    fields = [("sender", f"<{clean(msg.sender)}>")]
    if msg.received_ms is not None:
        fields.append(("received", f"{format_ms(msg.received_ms)} ({format_age((now - msg.received_ms) / 1000)} ago)"))
    if msg.size:
        fields.append(("size", f"{msg.size} bytes"))
    fields.append(("tag", clean(msg.tag) or "-"))
    fields.append(("subject", clean(msg.subject) or "-"))
    if msg.message_id_header:
        fields.append(("message-id", clean(msg.message_id_header)))
    if msg.user or msg.client:
        fields.append(("submitted", " ".join(filter(None, [
            f"by user {clean(msg.user)}" if msg.user else "",
            f"from {clean(msg.client)}" if msg.client else ""]))))
    for name, value in fields:
        print(f"  {name + ':':<12}{value}")

    print("Recipients:")
    jobs = info["jobs"]
    rw = max([len(clean(j["recipient"])) for j in jobs] + [0])
    sw = max([len(clean(j["state"])) for j in jobs] + [0])
    unsettled = info.get("unsettled")
    for job in jobs:
        if unsettled and job["state"] == "queued":
            when = f"unsettled: not deliverable until {clean(unsettled)} confirms its acknowledgement"
        elif job["lease_until_ms"] is not None:
            when = f"being delivered (lease until {format_ms(job['lease_until_ms'])})"
        elif job["due_ms"] is not None:
            due = job["due_ms"]
            when = ("due now" if due <= now
                    else f"next attempt {format_ms(due)} (in {format_age((due - now) / 1000)})")
        else:
            when = ""
        print(f"  {job['index']:>2}  {clean(job['recipient']):<{rw}}  {clean(job['state']):<{sw}}  "
              f"{plural(job['attempts'], 'attempt')}  {when}".rstrip())

    print("Events:")
    timeline = decode_timeline(info["timeline"])
    if not timeline:
        print("  (none)")
    for event in timeline:
        print(f"  {clean(event.at)}  {clean(event.type):<10} "
              f"{clean(event.recipient)}: {clean(event.detail)}".rstrip())
        extra = []
        if event.remote_host or event.remote_ip:
            extra.append(f"remote {clean(event.remote_host or '')}"
                         + (f" [{clean(event.remote_ip)}]" if event.remote_ip else ""))
        if event.smtp_code is not None:
            extra.append("reply " + " ".join(clean(v) for v in (event.smtp_code, event.enhanced_code,
                                                                 event.response) if v))
        if event.remote_queue_id:
            extra.append(f"remote queue id {clean(event.remote_queue_id)}")
        if extra:
            print("      " + "; ".join(extra))






async def run_queue_command(args: argparse.Namespace, config: Config) -> None:
    """Connect, run one ``queue`` subcommand, disconnect; failures become SystemExit lines."""
    await run_with_storage(config, lambda storage: QUEUE_ACTIONS[args.queue_command](storage, args))


def normalize_id(text: str) -> str:
    return text.strip().lower()


async def queue_list(storage: Any, args: argparse.Namespace) -> None:
    print_queue_list(await storage.admin_queue_summary())


async def queue_show(storage: Any, args: argparse.Namespace) -> None:
    message_id = normalize_id(args.message_id)
    info = await storage.admin_message(message_id)
    if info is None:
        raise SystemExit(f"mailrelay: no message {clean(message_id)}")
    print_message(message_id, info)


async def queue_retry(storage: Any, args: argparse.Namespace) -> None:
    if args.all:
        total, moved = await storage.admin_retry_all()
        scope = "in all domains"
    elif args.domain:
        total, moved = await storage.admin_retry_domain(args.domain)
        scope = f"for {clean(args.domain.lower())}"
    else:
        message_id = normalize_id(args.message_id)
        result = await storage.admin_retry_message(message_id)
        if result is None:
            raise SystemExit(f"mailrelay: no message {clean(message_id)}")
        total, moved = result
        scope = f"of message {clean(message_id)}"
    print(f"{plural(total, 'job')} {scope} due now ({moved} rescheduled)")


async def queue_delete(storage: Any, args: argparse.Namespace) -> None:
    message_id = normalize_id(args.message_id)
    try:
        count = await storage.admin_delete(message_id, args.recipient)
    except LookupError as e:
        raise SystemExit(f"mailrelay: {clean(e.args[0] if e.args else e)}")
    if count is None:
        raise SystemExit(f"mailrelay: no message {clean(message_id)}")
    target = f" to {clean(args.recipient)}" if args.recipient else ""
    print(f"{plural(count, 'job')} of message {clean(message_id)}{target} deleted")


QUEUE_ACTIONS = {"list": queue_list, "show": queue_show, "retry": queue_retry, "delete": queue_delete}


def cmd_queue(args: argparse.Namespace) -> int:
    from twisted.internet import task

    config = load_or_exit(getattr(args, "config", None))
    task.react(lambda reactor: run_queue_command(args, config))
    return 0  # not reached: react exits


def add_queue_parser(sub: Any) -> None:
    queue = sub.add_parser("queue", help="inspect and manage the delivery queue")
    add_config_option(queue)
    actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    lister = actions.add_parser("list", help="per destination domain: queued, deferred, delivering, oldest")
    add_config_option(lister)
    show = actions.add_parser("show", help="a message's envelope, recipients and events")
    show.add_argument("message_id", metavar="MESSAGE_ID")
    add_config_option(show)
    retry = actions.add_parser("retry", help="make waiting delivery jobs due now")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("message_id", metavar="MESSAGE_ID", nargs="?", help="the jobs of one message")
    which.add_argument("--domain", metavar="DOMAIN", help="the jobs of one destination domain")
    which.add_argument("--all", action="store_true", help="every job in the queue")
    add_config_option(retry)
    delete = actions.add_parser("delete", help="drop a message's pending delivery jobs")
    delete.add_argument("message_id", metavar="MESSAGE_ID")
    delete.add_argument("--recipient", metavar="ADDRESS", help="only the job of this recipient")
    add_config_option(delete)
    queue.set_defaults(func=cmd_queue)


# -- mailrelay bounce ----------------------------------------------------------------------


# -- suppressions -----------------------------------------------------------------------


def cmd_suppressions(args: argparse.Namespace) -> int:
    async def run(storage: Any) -> None:
        await storage.measure_clock()
        if args.suppressions_command == "list" and args.unproven:
            unproven = await unproven_suppressions(storage, await load_verp(config, storage))
            for address, entry, why in unproven:
                print(f"{clean(address)}\t{clean(entry.get('since', '?'))}\t{clean(entry.get('type', '?'))}"
                      f"\t{clean(why)}")
            print(f"{plural(len(unproven), 'unproven suppression')} (reactivate with `mailrelay suppressions remove`)")
        elif args.suppressions_command == "list":
            entries = await storage.list_suppressions()
            for address in sorted(entries):
                entry = entries[address]
                print(f"{clean(address)}\t{clean(entry.get('since', '?'))}\t{clean(entry.get('type', '?'))}"
                      f"\t{clean(entry.get('reason', ''))[:100]}")
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
    return react_with_storage(args, run)


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
    async def run(storage: Any) -> None:
        changes = await reclassify_bounces(storage, apply=not args.dry_run)
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

    return react_with_storage(args, run)


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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
