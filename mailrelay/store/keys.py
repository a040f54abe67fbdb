"""
keys: the name of every Redis key mailrelay uses, under ``[redis] key_prefix``.

JOB
    :class:`Keys` is the only place a key name is built, for Python's commands and for
    the Lua scripts: they get their fixed keys as KEYS, and the prefixes of the keys they
    derive from ids or values (``P msg:``, ``P idx:rcpt:``, ``P idx:stats:m:``, ...) as
    ARGV, from here; no script adds a fragment of its own to a key name
    (tests/test_lua_scripts.py checks this). The stores' headers say which store owns
    which key; docs/architecture.md has the same table.

SECURITY
    Addresses, tags and user names become parts of key names as they are (ASCII-lowercased
    where noted); a Message-ID only as its SHA-256. Everything lives under one prefix, so
    several installations can share a Redis database.

STANDARDS
    Redis key names are binary-safe strings; ``:`` separates the parts by convention.

DIAGNOSTICS
    None: building a name cannot fail.

CONFIGURATION
    ``[redis] key_prefix`` (written ``P`` in the stores' headers).
"""

from __future__ import annotations

import hashlib


def recipient_domain(address: str) -> str:
    """The queue's domain key: ASCII-lowercased, as Lua's string.lower does it."""
    return address.rpartition("@")[2].encode().lower().decode()


class Keys:
    """The names of every Redis key, under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._names: dict[tuple[str, ...], dict[str, str]] = {}
        # the delivery queue (mailrelay.store.queue, .settlement, .admin)
        self.queue_domains = prefix + "queue:domains"
        self.leases = prefix + "queue:leases"
        self.unsettled = prefix + "queue:unsettled"
        self.domain_queue_prefix = prefix + "queue:d:"
        # messages and their tracking (mailrelay.store.queue writes, .tracking reads)
        self.msg_prefix = prefix + "msg:"
        self.body_prefix = prefix + "body:"
        self.timeline_prefix = prefix + "timeline:"
        self.events = prefix + "events"
        # search indexes and counters (written by the queue's scripts, read by .tracking)
        self.index_prefix = prefix + "idx:"
        self.time_index = self.index_prefix + "time"
        self.rcpt_index_prefix = self.index_prefix + "rcpt:"
        self.tag_index_prefix = self.index_prefix + "tag:"
        self.status_index_prefix = self.index_prefix + "status:"
        self.stats_minute_prefix = self.index_prefix + "stats:m:"
        self.stats_hour_prefix = self.index_prefix + "stats:h:"
        # bounces and suppression (mailrelay.store.bounces, .suppression)
        self.bounce_prefix = prefix + "bounce:"
        self.bounce_raw_prefix = self.bounce_prefix + "raw:"
        self.bounces = prefix + "bounces"
        self.bounces_unmatched = prefix + "bounces:unmatched"
        self.verp_secret = prefix + "verp:secret"
        self.late_reports_prefix = prefix + "reports:"
        self.suppressed = prefix + "suppressed"
        self.suppressed_version = prefix + "suppressed:version"
        # webhooks (mailrelay.store.webhooks)
        self.webhook_queue = prefix + "webhook:queue"
        self.webhook_job_prefix = prefix + "webhook:job:"
        # sender domains (mailrelay.store.domains)
        self.dkim_domains = prefix + "dkim:domains"
        self.dkim_version = prefix + "dkim:version"
        self.dkim_checks = prefix + "dkim:checks"
        # cluster and data version (mailrelay.store.cluster)
        self.cluster = prefix + "cluster"
        self.cluster_member_prefix = prefix + "cluster:"
        self.data_version = prefix + "meta:version"
        self.migration_lock = prefix + "meta:migrating"
        # the archive's release of archived messages' keys (mailrelay.store.archiverelease)
        self.archive_release = prefix + "archive:release"

    # -- messages -----------------------------------------------------------------------

    def msg(self, message_id: str) -> str:
        return self.msg_prefix + message_id

    def body(self, message_id: str) -> str:
        return self.body_prefix + message_id

    def timeline(self, message_id: str) -> str:
        return self.timeline_prefix + message_id

    def domain_queue(self, domain: str) -> str:
        return self.domain_queue_prefix + domain

    # -- search indexes and counters -------------------------------------------------------

    def recipient_index(self, address: str) -> str:
        return self.rcpt_index_prefix + address.lower()

    def tag_index(self, tag: str) -> str:
        return self.tag_index_prefix + tag

    def status_index(self, status: str) -> str:
        return self.status_index_prefix + status

    def counters(self, resolution: str, bucket: int) -> str:
        """``P idx:stats:m:<minute>`` (resolution "m") or ``P idx:stats:h:<hour>`` ("h")."""
        return {"m": self.stats_minute_prefix, "h": self.stats_hour_prefix}[resolution] + str(bucket)

    # -- bounces ------------------------------------------------------------------------------

    def bounce(self, bounce_id: str) -> str:
        return self.bounce_prefix + bounce_id

    def bounce_raw(self, bounce_id: str) -> str:
        return self.bounce_raw_prefix + bounce_id

    def late_reports(self, message_id: str, rcpt: int | str) -> str:
        """``P reports:<id>.<rcpt>``: reports stored about a recipient of a released message."""
        return f"{self.late_reports_prefix}{message_id}.{rcpt}"

    # -- submission throttles ----------------------------------------------------------------

    def user_rate(self, user: str, window: int) -> str:
        return f"{self.prefix}rate:user:{user}:{window}"

    def auth_failures(self, client: str) -> str:
        return f"{self.prefix}auth:fail:{client}"

    def dedupe(self, user: str | None, message_id_header: str) -> str:
        """``P dedupe:<user>:<sha256 of the Message-ID>`` (no user: ``-``; the Message-ID with
        its whitespace folded, case kept)."""
        normalized = " ".join(message_id_header.split())
        digest = hashlib.sha256(normalized.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{self.prefix}dedupe:{user or '-'}:{digest}"

    # -- webhooks, cluster --------------------------------------------------------------------

    def webhook_job(self, job_id: str) -> str:
        return self.webhook_job_prefix + job_id

    def cluster_member(self, owner: str) -> str:
        return self.cluster_member_prefix + owner

    def names(self, layout: tuple[str, ...]) -> dict[str, str]:
        """The fixed keys or key prefixes a script's layout names (mailrelay.store.scripts:
        each name a Keys attribute), by name, in the layout's order. Built once per layout
        (the names do not change): callers must not modify it."""
        found = self._names.get(layout)
        if found is None:
            found = self._names[layout] = {name: getattr(self, name) for name in layout}
        return found

    def data_markers(self) -> list[str]:
        """Keys whose existence means the database holds mailrelay data (for a missing version)."""
        return [self.queue_domains, self.leases, self.time_index, self.events, self.suppressed,
                self.bounces, self.verp_secret, self.bounces_unmatched]
