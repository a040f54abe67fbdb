"""
statusviews: the status page's views: the overview's sections and one message's page.

JOB
    :class:`StatusViews` (a part of :class:`mailrelay.web.statuspage.StatusPage`)
    reads and renders what the page shows: the overview (service health, messages
    per status over 24 hours, the charts of :mod:`mailrelay.web.statuscharts`, the
    queue per destination domain, the latest LATEST messages and bounces, the
    sender domains) and ``/messages/<id>`` (envelope, header summary, tag,
    metadata, and per recipient its status and timeline, then the events that
    belong to no recipient). Messages and bounces come from the read model
    (:mod:`mailrelay.store.readmodel`) as records; a field that did not decode
    (``undecoded``) is shown as the text stored. The sections are read
    concurrently, each bounded by ``[redis] timeout`` (the page's ``_read``); a
    section whose read fails shows "unavailable" and the rest still renders.

SECURITY
    Every value from mail or from remote servers is a text child of a tag
    (:mod:`mailrelay.web.pagehtml`), escaped by the flattener; message links are
    made only from ids that are message ids (20 hex digits).

STANDARDS
    HTML (WHATWG).

DIAGNOSTICS
    "<Section> unavailable: <reason>" in the page when a read fails or times
    out; 503 for a message page whose message cannot be read, 404 for an unknown
    one.

CONFIGURATION
    ``[redis] timeout`` (through the page). Redis data: through
    :mod:`mailrelay.store.readmodel` and the store's counters, status_counts,
    admin_queue_summary and ping.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Sequence

from twisted.internet import defer
from twisted.web import server
from twisted.web.template import Flattenable, Tag, tags

from mailrelay.services.domains import domain_states
from mailrelay.store import readmodel
from mailrelay.store.interfaces import ArchiveReads, DomainRegistry, StatusPageStorage
from mailrelay.store.records import BounceRecord, MessageRecord, MessageSummary, TimelineEvent
from mailrelay.timefmt import display_rfc3339, display_time_ms, format_age
from mailrelay.web.pagehtml import _badge, _card, _head_row, _muted, _text, _unavailable
from mailrelay.web.statuscharts import charts_section

#: Rows in the latest messages and latest bounces tables.
LATEST = 20

#: Domains shown in the queue table (the largest queues first).
MAX_QUEUE_ROWS = 50

#: Seconds between automatic reloads of the overview (a meta refresh, no script).
REFRESH_SECONDS = 60

MESSAGE_ID_RE = re.compile(r"^[0-9a-f]{20}$")

MESSAGE_PATH_RE = re.compile(r"^/messages/([0-9a-f]{20})$")


class StatusViews:
    """
    The overview and the message page of :class:`~mailrelay.web.statuspage.StatusPage`,
    which provides ``storage``, ``config``, ``health``, ``timeout``, ``clock``,
    ``_read(make)`` (one bounded read: (ok, value or error)) and ``_page(request,
    title, body)`` (the document around a page's body).
    """

    storage: StatusPageStorage | None
    archive: ArchiveReads | None
    config: Any
    health: Any
    timeout: float
    clock: Any

    def _read(self, make: Any) -> defer.Deferred:
        raise NotImplementedError

    def _page(self, request: server.Request, title: str, body: Flattenable, *,
              refresh: int | None = None) -> bytes:
        raise NotImplementedError

    # -- the overview -------------------------------------------------------------------

    async def _overview(self, request: server.Request) -> bytes:
        storage, archive = self.storage, self.archive
        now_ms = int(self.clock.seconds() * 1000)
        health_d = defer.ensureDeferred(self._health())
        reads = {
            "queue": self._read(lambda: storage.admin_queue_summary()),
            "hour": self._read(lambda: storage.counters("m", 60)),
            "day": self._read(lambda: storage.counters("h", 24)),
            "statuses": self._read(lambda: archive.status_counts(now_ms - 86_400_000)),
            "messages": self._read(lambda: self._latest_messages(archive)),
            "bounces": self._read(lambda: archive.search_bounces(limit=LATEST)),
            "domains": self._read(lambda: self._domain_states(storage)),
        }
        results = dict(zip(reads, await defer.gatherResults(list(reads.values()))))
        health = await health_d
        body = [
            _card("Health", health),
            _card("Messages in the last 24 hours", self._statuses(*results["statuses"])),
            tags.div(self._charts("Last hour, per minute", *results["hour"], "m"),
                     self._charts("Last 24 hours, per hour", *results["day"], "h"), class_="grid2 row"),
            _card("Queue by destination domain", self._queue(*results["queue"])),
            _card("Latest messages", self._messages_table(*results["messages"])),
            _card("Latest bounces", self._bounces_table(*results["bounces"])),
            _card("Sender domains (DKIM)", self._domains(*results["domains"])),
        ]
        return self._page(request, "Status", [[section, "\n"] for section in body], refresh=REFRESH_SECONDS)

    async def _health(self) -> Tag:
        try:
            d = defer.ensureDeferred(self.health())
            d.addTimeout(2 * self.timeout, self.clock)  # health() itself waits up to [redis] timeout
            services = dict(await d)
        except Exception as error:
            return _unavailable("Service health", error)
        if "redis" not in services:
            storage = self.storage
            ok = False if storage is None else (await self._read(lambda: storage.ping()))[1] is True
            services = {"redis": {"ok": ok, "detail": "PING answered" if ok else "no answer to PING"},
                        **services}
        cards = []
        for name, state in services.items():
            state = state if isinstance(state, dict) else {"ok": bool(state)}
            ok = bool(state.get("ok"))
            cards.append(tags.div(
                tags.div(tags.span(class_="dot ok" if ok else "dot bad"), _text(name), " ",
                         _muted("up" if ok else "DOWN"), class_="name"),
                tags.div(_text(state.get("detail", "")), class_="detail"),
                class_="svc" if ok else "svc bad"))
        return tags.div(cards, class_="health")

    @staticmethod
    def _statuses(ok: bool, value: Any) -> Tag:
        if not ok:
            return _unavailable("Counts", value)
        return tags.div([tags.div(tags.div(f"{int(n):,}", class_="n"), tags.div(_badge(_text(status)), class_="l"),
                                  class_="tile") for status, n in value.items()], class_="tiles")

    @staticmethod
    def _charts(title: str, ok: bool, value: Any, resolution: str) -> Tag:
        if not ok:
            return _card(title, _unavailable("Counters", value))
        return charts_section(title, value, resolution)

    async def _domain_states(self, storage: DomainRegistry) -> list[dict[str, Any]]:
        return await domain_states(self.config, storage)

    @staticmethod
    def _domains(ok: bool, value: Any) -> Tag:
        """Each sender domain: selectors, algorithms, and the last DNS check."""
        if not ok:
            return _unavailable("Sender domains", value)
        if not value:
            return tags.p("No sender domains: mail is sent without a DKIM signature (",
                          tags.code("mailrelay domains add DOMAIN"), ").", class_="muted")
        rows = []
        for domain in value:
            keys = ", ".join(f"{key.get('selector')} ({key.get('algorithm')}"
                             f"{', ' + str(key.get('state')) if key.get('state') not in (None, 'active') else ''})"
                             for key in domain.get("keys", []))
            check = domain.get("dns_check")
            if not check:
                dns_state = "never checked (mailrelay domains verify)"
            else:
                # what makes ok false: required records missing, wrong or not looked up
                bad = [r for r in check.get("records", [])
                       if r.get("required") and r.get("status") in ("missing", "wrong", "error")]
                dns_state = ("ok" if check.get("ok") else
                             "; ".join(f"{r.get('name')} {r.get('type')}: {r.get('status')}" for r in bad) or "problems")
                dns_state += f" (checked {check.get('at', '?')})"
            rows.append(tags.tr(tags.td(_text(domain.get("name"))), tags.td(_text(domain.get("source"))),
                                tags.td(keys), tags.td(dns_state)))
        return tags.table(_head_row("domain", "source", "keys (selector, algorithm)", "DNS"), tags.tbody(rows))

    @staticmethod
    def _queue(ok: bool, value: Any) -> Flattenable:
        if not ok:
            return _unavailable("Queue", value)
        now_ms = int(value.get("now_ms") or 0)
        domains = value.get("domains", {})
        if not domains:
            return tags.p("The queue is empty.", class_="muted")

        def size(row: dict[str, Any]) -> int:
            return int(row.get("queued", 0)) + int(row.get("deferred", 0)) + int(row.get("delivering", 0))
        ordered = sorted(domains.items(), key=lambda item: (-size(item[1]), item[0]))
        rows = []
        totals = {"queued": 0, "deferred": 0, "delivering": 0}
        oldest_all = None
        for domain, row in ordered:
            for name in totals:
                totals[name] += int(row.get(name, 0))
            oldest = row.get("oldest_ms")
            if oldest is not None and (oldest_all is None or oldest < oldest_all):
                oldest_all = oldest
        for domain, row in ordered[:MAX_QUEUE_ROWS]:
            oldest = row.get("oldest_ms")
            age = format_age((now_ms - oldest) / 1000, spaced=True) if oldest is not None else "-"
            rows.append(tags.tr(tags.td(_text(domain)),
                                *[tags.td(f"{int(row.get(name, 0)):,}", class_="num") for name in totals],
                                tags.td(age, class_="num")))
        more: Flattenable = ""
        if len(ordered) > MAX_QUEUE_ROWS:
            more = tags.p(f"and {len(ordered) - MAX_QUEUE_ROWS:,} more domains", class_="muted")
        age_all = format_age((now_ms - oldest_all) / 1000, spaced=True) if oldest_all is not None else "-"
        rows.append(tags.tr(tags.td(f"all {len(ordered):,} domains"),
                            *[tags.td(f"{totals[name]:,}", class_="num") for name in totals],
                            tags.td(age_all, class_="num"), class_="total"))
        numeric = ("Queued", "Deferred", "Delivering", "Oldest")
        return [tags.table(_head_row("Domain", *numeric, numeric=numeric), tags.tbody(rows)), more]

    @staticmethod
    async def _latest_messages(archive: ArchiveReads) -> list[MessageSummary]:
        return await readmodel.latest_messages(archive, LATEST)

    @staticmethod
    def _message_link(message_id: str, content: Flattenable) -> Flattenable:
        if MESSAGE_ID_RE.match(message_id or ""):
            return tags.a(content, href=f"/messages/{message_id}")
        return content

    def _messages_table(self, ok: bool, value: Any) -> Tag:
        """The latest messages (summaries joined with their first recipient)."""
        if not ok:
            return _unavailable("Messages", value)
        if not value:
            return tags.p("No messages yet.", class_="muted")
        rows = []
        for row in value:
            summary: MessageSummary = row
            recipient: list[Flattenable] = [summary.first_recipient]
            if summary.recipient_count > 1:
                recipient += [" ", _muted(f"+{summary.recipient_count - 1}")]
            rows.append(tags.tr(
                tags.td(self._message_link(summary.id, display_time_ms(summary.received_ms)), class_="time"),
                tags.td(summary.header_from or summary.sender, class_="wrap"),
                tags.td(recipient, class_="wrap"),
                tags.td(self._message_link(summary.id, summary.subject or _muted("(no subject)")), class_="wrap"),
                tags.td(_badge(summary.status))))
        return tags.table(_head_row("Received (UTC)", "From", "Recipient", "Subject", "Status"), tags.tbody(rows))

    def _bounces_table(self, ok: bool, value: Any) -> Tag:
        """The latest bounces: (records or ``search_bounces`` rows, cursor)."""
        if not ok:
            return _unavailable("Bounces", value)
        rows_data, _ = value
        if not rows_data:
            return tags.p("No bounces.", class_="muted")
        rows = []
        for row in rows_data:
            bounce: BounceRecord = row
            when = display_time_ms(bounce.score) or display_rfc3339(bounce.at)
            message_id = bounce.message_id
            rows.append(tags.tr(
                tags.td(self._message_link(message_id, when) if message_id else when, class_="time"),
                tags.td(bounce.recipient or _muted("?"), class_="wrap"),
                tags.td(bounce.type, " ", _muted(bounce.status)),
                tags.td(bounce.description,
                        [tags.br(), tags.span(bounce.details, class_="muted mono")] if bounce.details else "",
                        class_="wrap"),
                tags.td(self._message_link(message_id, "message") if message_id else _muted("unmatched"))))
        return tags.table(_head_row("Time (UTC)", "Recipient", "Type", "Description", ""), tags.tbody(rows))

    # -- one message --------------------------------------------------------------------

    async def _message_page(self, request: server.Request, message_id: str) -> tuple[int, bytes]:
        archive = self.archive
        message_r, timeline_r = await defer.gatherResults([
            self._read(lambda: readmodel.message(archive, message_id, timeline=False)),
            self._read(lambda: archive.get_timeline(message_id)),
        ])
        title = f"Message {message_id}"
        if not message_r[0]:
            return 503, self._page(request, title, _card(title, _unavailable("Message", message_r[1])))
        record = message_r[1]
        if record is None:
            return 404, self._page(request, title, _card(
                title, tags.p("No such message (unknown, or past retention)."),
                tags.p(tags.a("Back to the overview", href="/"))))
        events = timeline_r[1] if timeline_r[0] else None
        return 200, self._page(request, title, self._message_html(message_id, record, events,
                                                                  None if timeline_r[0] else timeline_r[1]))

    def _message_html(self, message_id: str, message: MessageRecord, events: Iterable[TimelineEvent] | None,
                      timeline_error: BaseException | None) -> list[Flattenable]:
        """
        One message's page: ``message`` its record, ``events`` its timeline (None: could not be
        read); a field that did not decode shows its stored text.
        """
        record = message.with_timeline(events or ())
        stored = record.undecoded

        def item(label: str, value: Flattenable) -> list[Tag]:
            return [tags.dt(label), tags.dd(value)]

        def text(value: str, empty: str = "-") -> Flattenable:
            return value or _muted(empty)

        def addresses(name: str, values: tuple[str, ...]) -> Flattenable:
            return ", ".join(values) if values else stored.get(name) or _muted("-")

        size: Flattenable = f"{record.size:,} bytes" if "size" not in stored else stored["size"]
        overview = [
            item("Subject", text(record.subject, "(no subject)")),
            item("Status", _badge(record.status)),
            item("Received", display_time_ms(record.received_ms) + " UTC"),
            item("Envelope sender", text(record.sender, "<>")),
            item("Envelope recipients", ", ".join(r.address for r in record.recipients)),
            item("From", text(record.header_from)),
            item("To", addresses("to", record.to)),
            item("Cc", addresses("cc", record.cc)),
            item("Message-ID", tags.span(record.message_id_header, class_="mono")),
            item("Tag", text(record.tag)),
            item("Size", size),
            item("Submitted by", text(record.user)),
            item("Client", text(record.client)),
        ]
        metadata_html: Flattenable = tags.p("No metadata.", class_="muted")
        if record.metadata:
            metadata_html = tags.table(_head_row("Key", "Value"), tags.tbody([
                tags.tr(tags.td(key, class_="wrap"),
                        tags.td(value if isinstance(value, str) else json.dumps(value), class_="wrap"))
                for key, value in record.metadata.items()]))
        elif stored.get("metadata"):
            metadata_html = tags.p(stored["metadata"], class_="mono")
        parts: list[Flattenable] = [
            tags.p(tags.a("Overview", href="/"), " \u203a message", class_="crumbs"),
            tags.section(tags.h2("Message ", tags.span(message_id, class_="mono")),
                         tags.dl(overview, class_="kv"), class_="card"),
            _card("Metadata", metadata_html)]
        for recipient in record.recipients:
            attempts = recipient.undecoded.get("attempts", str(recipient.attempts))
            heading = tags.h2(recipient.address, " ", _badge(recipient.state), " ",
                              _muted(f"{attempts} attempt{'' if attempts == '1' else 's'}"))
            if timeline_error is not None:
                table = _unavailable("Timeline", timeline_error)
            else:
                table = self._events_table(recipient.events)
            parts.append(tags.section(heading, table, class_="card"))
        if record.unattributed:
            parts.append(_card("Other events", self._events_table(record.unattributed)))
        return [[part, "\n"] for part in parts]

    @staticmethod
    def _events_table(events: Sequence[TimelineEvent]) -> Tag:
        if not events:
            return tags.p("No events.", class_="muted")
        rows = []
        for event in events:
            ip = event.remote_ip or ""
            remote = [event.remote_host or "", [" ", _muted(f"[{ip}]")] if ip else ""]
            code = " ".join(str(c) for c in (event.smtp_code, event.enhanced_code) if c)
            detail: list[Flattenable] = [event.detail]
            if event.remote_queue_id:
                detail += [" ", _muted(f"(remote id {event.remote_queue_id})")]
            rows.append(tags.tr(tags.td(_badge(event.type or "")),
                                tags.td(display_rfc3339(event.at), class_="time"),
                                tags.td(remote, class_="wrap"), tags.td(code, class_="mono"),
                                tags.td(event.response or "", class_="wrap mono"),
                                tags.td(detail, class_="wrap")))
        return tags.table(_head_row("Event", "Time (UTC)", "Remote host", "Code", "Response", "Detail"),
                          tags.tbody(rows), class_="events")
