"""
cli.queue: ``mailrelay queue list|show|retry|delete``, the delivery queue seen and handled by
the operator.

JOB
    Registers the ``queue`` subcommand (:func:`add_queue_parser`, called by
    :mod:`mailrelay.cli.main`) and runs its actions against the daemon's Redis through
    :func:`mailrelay.cli.common.run_with_storage`::

        mailrelay queue list [-c FILE]     per destination domain: queued, deferred, delivering, oldest
        mailrelay queue show MESSAGE_ID [-c FILE]
                                           a message's envelope, recipients (state, attempts) and events
        mailrelay queue retry (MESSAGE_ID | --domain DOMAIN | --all) [-c FILE]
                                           make waiting delivery jobs due now
        mailrelay queue delete MESSAGE_ID [--recipient ADDRESS] [-c FILE]
                                           drop a message's pending jobs (recorded as "deleted" events)

    A message id is taken case-insensitively (stripped, lowercased). ``list`` and ``show``
    only read; ``retry`` and ``delete`` change the queue through the storage's ``admin_*``
    methods.

SECURITY
    Whoever can run it with the daemon's configuration can reschedule and drop queued
    mail. What it prints from Redis (addresses, subjects, remote replies: written by
    clients and remote servers) goes through :func:`mailrelay.cli.common.clean`, so stored
    text cannot drive the terminal.

STANDARDS
    None.

DIAGNOSTICS
    Output on stdout; errors one line on stderr, exit status 1: ``mailrelay: no message
    <id>``, ``mailrelay: message <id> has no recipient <address>`` (``delete
    --recipient``), and the configuration and Redis connection errors of
    :mod:`mailrelay.cli.common`. argparse usage errors exit 2.

CONFIGURATION
    ``-c FILE`` (before or after the action); ``[server] state_dir`` and ``[redis]``
    through :mod:`mailrelay.cli.common`. Owns no file or Redis data.
"""

from __future__ import annotations

import argparse
from typing import Any

from mailrelay.cli.common import add_config_option, clean, load_or_exit, plural, run_with_storage
from mailrelay.config import Config
from mailrelay.store.interfaces import AdminQueue
from mailrelay.store.records import AdminMessage
from mailrelay.timefmt import format_age, rfc3339_ms as format_ms


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


def print_message(message_id: str, info: AdminMessage) -> None:
    now = info.now_ms
    msg = info.message
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
    jobs = info.jobs
    rw = max([len(clean(j.recipient)) for j in jobs] + [0])
    sw = max([len(clean(j.state)) for j in jobs] + [0])
    unsettled = info.unsettled
    for job in jobs:
        if unsettled and job.state == "queued":
            when = f"unsettled: not deliverable until {clean(unsettled)} confirms its acknowledgement"
        elif job.lease_until_ms is not None:
            when = f"being delivered (lease until {format_ms(job.lease_until_ms)})"
        elif job.due_ms is not None:
            due = job.due_ms
            when = ("due now" if due <= now
                    else f"next attempt {format_ms(due)} (in {format_age((due - now) / 1000)})")
        else:
            when = ""
        print(f"  {job.index:>2}  {clean(job.recipient):<{rw}}  {clean(job.state):<{sw}}  "
              f"{plural(job.attempts, 'attempt')}  {when}".rstrip())

    print("Events:")
    timeline = info.timeline
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


async def queue_list(storage: AdminQueue, args: argparse.Namespace) -> None:
    print_queue_list(await storage.admin_queue_summary())


async def queue_show(storage: AdminQueue, args: argparse.Namespace) -> None:
    message_id = normalize_id(args.message_id)
    info = await storage.admin_message(message_id)
    if info is None:
        raise SystemExit(f"mailrelay: no message {clean(message_id)}")
    print_message(message_id, info)


async def queue_retry(storage: AdminQueue, args: argparse.Namespace) -> None:
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


async def queue_delete(storage: AdminQueue, args: argparse.Namespace) -> None:
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
