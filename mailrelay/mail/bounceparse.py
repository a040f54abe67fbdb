"""
bounceparse: parse the messages that report delivery failures into one report per recipient.

JOB
    :func:`parse_bounce` reads a message that came back (an RFC 3464
    delivery status notification, an RFC 5965 abuse report, a plain-text
    bounce from qmail, Exim, Exchange, Sendmail, Postfix, Gmail or Yahoo, an
    Amazon SES notification, an auto-reply, a challenge, ...) and returns
    one :class:`~mailrelay.mail.bounceclassify.BounceReport` per affected
    recipient, classified by :func:`mailrelay.mail.bounceclassify.explain`
    (the taxonomy, the classifier and its rules live there), with the
    ``X-Mailrelay-ID`` of the returned original when the bounce includes it,
    and the recipient tokens it carries (read by
    :mod:`mailrelay.mail.bouncemessage`, which also finds the returned
    original and where the bounce's own text ends).

REPORTS
    In a DSN, ``Action: delayed`` is Transient (a SoftBounce when the text
    says the message expired: OpenSMTPD), and a ``failed`` recipient with a
    4.X.X status (given up after temporary failures: the message expired)
    is a SoftBounce, a DnsError for 4.4.3 or a DNS text, or the type of the
    cause its last permanent reply names. A recipient without
    Diagnostic-Code takes the reason of its own line in the human part.
    Relayed, delivered and expanded recipients are not reported. A plain-text bounce's reason is the
    line most like a server reply in the recipient's paragraph (or the whole
    text); when it names no cause, the paragraph, then the whole bounce is
    read for one; a failure notice that names none is a SoftBounce, a delay
    notice Transient. A failure notice (not a delay notice) whose reply is
    temporary was given up: the non-address cause the bounce names, else a
    SoftBounce (``failure-notice-given-up``).
    An Amazon SES bounce or complaint notification (its JSON, e-mailed by
    SNS, also inside an SNS envelope's ``Message``) gives one report per
    recipient, from its status and diagnosticCode, else from bounceType and
    bounceSubType (only Permanent/NoEmail is a HardBounce; a Transient SES
    bounce never suppresses).
    A message that is not a delivery report is, in this order, an Amazon SES
    notification (below), a VirusNotification, a SpamNotification (a filter's notice about a
    *delivered* message), a plain-text bounce (X-Failed-Recipients, a
    daemon sender, or the phrases of qmail, Exim, Sendmail, Postfix,
    Exchange, Lotus Notes, GroupWise, MDaemon, Courier, OpenSMTPD, Yahoo,
    ...), a ChallengeVerification, an AddressChange, an AutoResponder
    (Auto-Submitted, X-Autoreply, "Out of Office", "Automatic reply:") or an
    Unsubscribe request. ARF reports are SpamComplaint (``Feedback-Type:
    virus`` is a VirusNotification; ``not-spam`` and ``auth-failure`` are
    Unknown; a recipient redacted as ``redacted@...`` (RFC 6590) is none).

RECIPIENTS
    In order of trust: a DSN's Original-Recipient, then Final-Recipient;
    X-Failed-Recipients; per-recipient paragraphs of a plain-text bounce
    (those the returned original's To/Cc names first); the returned
    original's only recipient; an address in the reason or near a failure
    phrase. Every failed recipient of a bounce gets its own report.

SECURITY
    Bounces come from anyone: every byte is untrusted. Parsing never raises
    (any error gives one Unknown report), looks at the first
    :data:`MAX_INPUT` bytes (and, through :mod:`mailrelay.mail.bouncemessage`,
    a bounded number of MIME parts and characters of text), returns at most
    :data:`~mailrelay.mail.bouncemessage.MAX_REPORTS` reports, and its
    regular expressions run in linear time. Anyone can forge a bounce naming
    any recipient and any ``X-Mailrelay-ID``: a caller must check that the
    message exists and that the recipient was one of its recipients before
    suppressing an address (see
    :data:`~mailrelay.mail.bounceclassify.SUPPRESSING_TYPES`);
    :mod:`mailrelay.services.bounces` does so only with a verified recipient
    token. Recipients found by the plain-text heuristics are guesses.

STANDARDS
    RFC 3464 and RFC 6533 (delivery status notifications), RFC 6522
    (multipart/report), RFC 5965 (ARF), RFC 6590 (redacted addresses in
    ARF), RFC 3834 (Auto-Submitted), RFC 2045-2047 (MIME, through the
    ``email`` package); the classification's standards are
    :mod:`mailrelay.mail.bounceclassify`'s.

DIAGNOSTICS
    None: :func:`parse_bounce` returns at least one report, an Unknown one
    with no recipient when it finds nothing.

CONFIGURATION
    None: reads no config key and owns no file or Redis data.
"""

from __future__ import annotations

import json
import re
from email.message import Message
from typing import Any

from mailrelay.mail.bounceclassify import (
    ADDRESS_CHANGE, AUTO_RESPONDER, BLOCKED, CHALLENGE_VERIFICATION, DNS_ERROR, HARD_BOUNCE, SOFT_BOUNCE,
    SPAM_COMPLAINT, SPAM_NOTIFICATION, SUPPRESSING_TYPES, TRANSIENT, UNKNOWN, UNSUBSCRIBE, VIRUS_NOTIFICATION,
    BounceReport, BounceType, Verdict, explain, normalize_status, one_line, reply_code, text_cause)
from mailrelay.mail.bouncemessage import (
    DAEMONS, MAX_REPORTS, MAX_TEXT, BounceMessage, addresses_of, all_headers, best_reason, clean_reply,
    decoded_header, field_blocks, find_addresses, has_code, recipient_blocks, strip_type, typed_address)

#: Bytes of a bounce that are parsed; the rest is ignored.
MAX_INPUT = 1024 * 1024

_FLAGS = re.I | re.X

_NDR_BODY = re.compile(r"""
    \bcould\s*n[o']t\s+be\s+delivered\b | \bcould\s+not\s+be\s+delivered\b | \bwas(?:\s+not|n't)\s+delivered\b
  | \b(?:unable|not\s+able|wasn't\s+able)\s+to\s+deliver\b | \bdelivery\s+(?:has\s+)?failed\b
  | \bfailed\s+permanently\b | \bpermanent\s+(?:fatal\s+)?(?:error|failure)s?\b | \bqmail-send\s+program\b
  | \bmail\s+delivery\s+(?:software|system|subsystem)\b
  | \bthis\s+is\s+the\s+mail\s+system\s+at\b | \bdelivery\s+status\s+notification\b | \bundeliverable\b
  | \bcould\s+not\s+deliver\b | \bhas\s+not\s+yet\s+been\s+delivered\b | \bfollowing\s+addresse?s?\s+(?:had|failed)\b
  | \bfailed\s+to\s+these\s+recipients\b | \bcannot\s+be\s+reached\b | \bdid\s+not\s+reach\b
  | \bdelivery\s+to\s+the\s+following\s+recipients?\b | \bnicht\s+zugestellt\b | \bunzustellbar\b
  | \btranscript\s+of\s+session\s+follows\b | \bpermanent\s+fatal\s+(?:delivery\s+)?errors?\b
  | \b(?:was|were)\s+not\s+delivered\s+to\b | \bundeliverable\s+to\s+the\s+following\b
  | \bdid\s+not\s+reach\s+(?:the\s+following|some\s+or\s+all)\b | \bfailed\s+to\s+deliver\b
  | \bunable\s+to\s+deliver\s+(?:your\s+)?message\s+to\s+the\s+following\b
  | \ban\s+error\s+has\s+occurred\s+while\s+attempting\s+to\s+deliver\b | \bthis\s+is\s+the\s+mailer-daemon\b
  | \bdelivery\s+has\s+failed\s+to\s+these\s+recipients\b | \brecipient's\s+e-?mail\s+provider\s+rejected\b
  | \bcouldn't\s+be\s+delivered\b | \bwasn't\s+found\s+at\b | \bundeliverable\s+mail\b
  | \bcourier\s+mail\s+server\b | \bwasn't\s+able\s+to\s+deliver\b | \bmessage\s+delivery\s+failed\b
  | \bnot\s+(?:been\s+)?delivered\s+to\s+(?:one\s+or\s+more|the\s+following)\b
  | \bkonnte\s+nicht\s+zugestellt\b | \bn'a\s+pas\s+pu\s+(?:être|etre)\s+(?:remis|distribu)
  | \bno\s+se\s+(?:ha\s+)?pudo\s+entregar\b | \bnon\s+(?:è|e')\s+stato\s+possibile\s+consegnare\b""", _FLAGS)
_NDR_SUBJECT = re.compile(r"""
    undeliver | returned\s+mail | delivery\s+(?:status|failure|failed|has\s+failed|problem|report|error|notification)
  | mail\s+delivery\s+(?:failed|failure|system|subsystem) | failure\s+notice | non-?deliver
  | could\s+not\s+be\s+delivered
  | delivery\s+unsuccessful | mail\s+system\s+error | returned\s+to\s+sender | delayed\s+mail | \bwarning:\s+message
  | message\s+not\s+delivered | unzustellbar | nicht\s+zustellbar | \bnot\s+delivered\b | \bnon\s+remis\b
  | permanent\s+delivery\s+failure | mail\s+delivery\s+status | returned\s+mail | delivery\s+status\s+notification
  | \bno\s+entregado\b | \bnon\s+recapitato\b""", _FLAGS)
_DELAY = re.compile(r"""
    \bhas\s+not\s+yet\s+been\s+delivered\b | \bwill\s+(?:continue|keep)\s+(?:to\s+)?(?:try|trying|retry)
  | \bdelivery\s+attempts\s+will\s+continue\b | \bstill\s+(?:trying|being\s+retried)\b | \bdelayed\b
  | \bwill\s+(?:be\s+)?retr(?:y|ied)\b""", _FLAGS)

_VIRUS_NOTICE = re.compile(r"""
    \bvirus(?:es)?\s+(?:found|detected|alert|warning|notification)\b | \bvirus\s*\( | \binfected\s*:
  | \binfected\s+(?:with\s+(?:an?\s+)?(?:virus|malware|trojan)|file|attachment|message|e-?mail|content)\b
  | \b(?:found|detected|contains?|containing|identified|with)\s+(?:an?\s+|the\s+)?(?:virus|malware|trojan)\b
  | \bmalware\s+(?:found|detected)\b | \bbanned\s+(?:file|attachment)""", _FLAGS)
_SPAM_NOTICE = re.compile(r"""
    \b(?:identified|classified|marked|flagged|detected|tagged|considered)\s+(?:as\s+)?
        (?:possible\s+|potential\s+|likely\s+|probable\s+)?(?:spam|junk|bulk)\b
  | \bquarantin(?:e|ed)\b
  | \bdelivered\s+to\s+(?:the\s+)?(?:recipient'?s\s+)?(?:junk|spam|bulk)\s+(?:e-?mail\s+)?folder
  | \bspam\s+(?:report|notification|quarantine)\b""", _FLAGS)
#: An Amazon SES notification (its JSON, e-mailed by SNS).
_SES_NOTIFICATION = re.compile(r'"(?:notificationType|eventType|Type)"\s*:\s*"(?:Bounce|Complaint|Notification)"'
                               r'[^\n]{0,200}|\\?"notificationType\\?"\s*:\s*\\?"(?:Bounce|Complaint)')
#: What an SES bounce type/subtype means when the recipient's status and diagnostic say nothing:
#: only NoEmail (the address does not exist) suppresses.
_SES_SUBTYPES: dict[tuple[str, str], BounceType] = {
    ("Permanent", "NoEmail"): HARD_BOUNCE,
    ("Permanent", "General"): SOFT_BOUNCE,
    ("Permanent", "Suppressed"): BLOCKED,
    ("Permanent", "OnAccountSuppressionList"): BLOCKED,
    ("Transient", "General"): SOFT_BOUNCE,
    ("Transient", "MailboxFull"): SOFT_BOUNCE,
    ("Transient", "MessageTooLarge"): SOFT_BOUNCE,
    ("Transient", "ContentRejected"): BLOCKED,
    ("Transient", "AttachmentRejected"): BLOCKED,
}
_CHALLENGE = re.compile(r"""
    \bchallenge[\s-]+response\b | \bboxbe\b | \bspam\s?arrest\b | \bmailfrontier\b
  | \bverify\s+(?:that\s+)?you(?:'re|\s+are)\s+(?:a\s+)?(?:human|real\s+person|not\s+a\s+(?:robot|spammer))
  | \b(?:to\s+have|for)\s+your\s+(?:message|e-?mail)\s+(?:to\s+be\s+)?delivered,?\s+
      (?:please\s+)?(?:click|visit|reply|go\s+to|follow)
  | \bplease\s+verify\s+(?:your(?:self)?|that\s+you|you\s+are|you're)\b | \bawaiting\s+(?:your\s+)?verification\b
  | \bverify\s+your\s+(?:e-?mail|message|identity)\b
  | \bclick\s+(?:on\s+)?(?:the|this)\s+link\s+(?:below\s+)?to\s+(?:verify|confirm|release)\b
  | \bpara\s+que\s+(?:sua|su)\s+mensagem?\s+(?:seja|sea)\s+entregue?\w*,?\s+(?:confirme|haga|clique|verifique)
  | \bpour\s+que\s+votre\s+message\s+soit\s+(?:remis|d[ée]livr[ée]|distribu[ée]),?\s+(?:veuillez|cliquez|merci)
  | \bdamit\s+ihre\s+(?:nachricht|e-?mail)\s+zugestellt\s+wird\b
  | \bconfirme\s+o\s+envio\b | \bconfirme\s+el\s+env[ií]o\b""", _FLAGS)
_ADDRESS_CHANGE = re.compile(r"""
    \b(?:e-?mail\s+)?address\s+(?:has\s+)?changed\b
  | \bhas\s+changed\s+(?:(?:his|her|their|my|our)\s+)?(?:e-?mail\s+)?address
  | \bnew\s+e-?mail\s+address\b | \bmy\s+new\s+address\b | \bnew\s+address\s+is\b
  | \bplease\s+update\s+(?:your\s+(?:records|address\s+book|contacts?)|my\s+(?:e-?mail\s+)?address)""", _FLAGS)
_AUTO_SUBJECT = re.compile(r"""
    ^\s*(?:(?:re|aw|fwd?|sv|vs)\s*:\s*)*(?:auto(?:matic)?[\s-]*(?:reply|response|antwort|respuesta)|auto\s*:
      | out\s+of\s+(?:the\s+)?office | ooo\b | on\s+vacation | vacation\b | abwesen | absence | away\s+from
      | autoreply | autoresponse | r[ée]ponse\s+automatique | risposta\s+automatica | resposta\s+autom[áa]tica)""",
                           _FLAGS)
_AUTO_BODY = re.compile(r"""
    \b(?:i\s+am|i'm|i\s+will\s+be)\s+(?:currently\s+)?(?:out\s+of\s+(?:the\s+)?office|away|
                                                    on\s+(?:vacation|holiday|leave|annual\s+leave|parental\s+leave))
  | \bout\s+of\s+(?:the\s+)?office\b | \bwith\s+limited\s+access\s+to\s+(?:my\s+)?e-?mail
  | \bthis\s+is\s+an\s+auto(?:matic|mated)?(?:ally\s+generated)?[\s-]*(?:reply|response|message)""", _FLAGS)
_UNSUBSCRIBE_SUBJECT = re.compile(r"^\s*(?:(?:re|aw|fwd?)\s*:\s*)*(?:unsubscribe|remove(?:\s+me)?|opt[\s-]?out)\b",
                                  re.I)
_UNSUBSCRIBE_BODY = re.compile(
    r"\A\s*(?:unsubscribe|remove\s+me|please\s+(?:unsubscribe|remove)\s+me|opt[\s-]?out)\b", re.I)
_REMOTE_HOST = re.compile(r"""
    \bhost\s+([A-Za-z0-9][A-Za-z0-9.-]{0,252}\.[A-Za-z]{2,63})\.?\s*\[
  | \bwhile\s+talking\s+to\s+([A-Za-z0-9][A-Za-z0-9.-]{0,252})\.?:
  | \bby\s+([A-Za-z0-9][A-Za-z0-9.-]{0,252}\.[A-Za-z]{2,63})\.?\s+\[\d""", re.I | re.X)


def parse_bounce(raw: bytes) -> list[BounceReport]:
    """Every recipient a bounce (or reply, or complaint) reports on; at least one report.

    Never raises: malformed input gives one Unknown report with no recipient.
    """
    try:
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        data = bytes(raw[:MAX_INPUT])
        reports = _Bounce(data).reports()
    except Exception:  # defensive: the email package on hostile input, or a bug here
        reports = []
    return reports[:MAX_REPORTS] or [BounceReport(type=UNKNOWN)]


class _Bounce(BounceMessage):
    """A parsed message and the reports it makes: one method per kind of report."""

    # -- dispatch ------------------------------------------------------------------------

    def reports(self) -> list[BounceReport]:
        for part in self.parts:
            ctype = part.get_content_type()
            if ctype == "message/feedback-report":
                return self.arf_reports(part)
        for part in self.parts:
            ctype = part.get_content_type()
            if ctype in ("message/delivery-status", "message/global-delivery-status"):
                reports = self.dsn_reports(part)
                if reports:
                    return reports
        return self.text_reports()

    # -- RFC 3464 ------------------------------------------------------------------------

    def dsn_reports(self, part: Message) -> list[BounceReport]:
        reports: list[BounceReport] = []
        skipped: list[str] = []
        seen: set[str | None] = set()
        blocks = field_blocks(part)
        reporting_mta = ""
        # a recipient block without Final-Recipient: the next less trusted sources, in order
        fallback_recipients = self.failed_recipients() or self.original_recipients()[:1]
        for block in blocks:
            final = typed_address(decoded_header(block, "Final-Recipient"))
            original = typed_address(decoded_header(block, "Original-Recipient"))
            action = decoded_header(block, "Action").strip().lower().split(" ")[0] or None
            status = normalize_status(decoded_header(block, "Status"))
            if not (final or original or action or status):
                reporting_mta = reporting_mta or strip_type(decoded_header(block, "Reporting-MTA"))
                continue
            if action is None:
                action = {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[0] if status else "5")
            if action in ("delivered", "relayed", "expanded"):
                skipped.append(action)
                continue
            if (original or final) in seen:
                continue  # one report per recipient
            seen.add(original or final)
            diagnostic = clean_reply(strip_type(decoded_header(block, "Diagnostic-Code")))
            remote = strip_type(decoded_header(block, "Remote-MTA")).split(" ")[0].rstrip(".") or None
            recipient = original or final or (fallback_recipients.pop(0) if fallback_recipients else None)
            # no Diagnostic-Code (OpenSMTPD, Exim): the recipient's own line of the human part
            text = diagnostic or self.human_reason(final or recipient, blocks)
            found = text_cause(text) if text else None
            if action == "delayed":
                if found and found[0].name == "expired":
                    # OpenSMTPD reports an expired envelope as "delayed"
                    verdict = Verdict(SOFT_BOUNCE, "dsn-delayed-but-expired", status, matched=found[1],
                                      meaning="Action: delayed, but the text says the message expired")
                else:
                    verdict = Verdict(TRANSIENT, "dsn-delayed", status, meaning="Action: delayed (the server retries)")
            elif status and status[0] == "4":
                # given up after temporary failures (expired): the address is not known bad
                if status == "4.4.3" or (found and found[0].name == "dns-temporary"):
                    verdict = Verdict(DNS_ERROR, "dsn-failed-temporary-dns", status, matched=found[1] if found else "",
                                      meaning="Action: failed after DNS lookups that kept failing")
                elif found and not found[0].about_address and found[0].type not in (TRANSIENT, HARD_BOUNCE) \
                        and (reply_code(text) or 0) // 100 == 5:
                    # the last reply was a permanent refusal naming its cause (Postfix gives a
                    # 554 at connection time a 4.7.1 status)
                    verdict = Verdict(found[0].type, "dsn-failed-temporary-status+text", status, matched=found[1],
                                      meaning=f"Action: failed; the last reply, permanent, {found[0].meaning}")
                else:
                    verdict = Verdict(SOFT_BOUNCE, "dsn-failed-temporary-status", status,
                                      meaning="Action: failed after temporary failures (the message expired)")
            else:
                verdict = explain(status, text, recipient=final or recipient)
            reports.append(self.report(verdict.type, recipient, status=status or verdict.status, action=action,
                                       diagnostic=diagnostic, remote_mta=remote, rule=verdict.rule,
                                       reason=verdict.reason))
            if len(reports) >= MAX_REPORTS:
                break
        if not reports and skipped:
            reports.append(self.report(UNKNOWN, None, action=skipped[0],
                                       diagnostic=f"delivery status notification without failures ({skipped[0]})",
                                       rule="dsn-no-failure", reason=f"dsn-no-failure; Action: {skipped[0]}"))
        return reports


    def arf_reports(self, part: Message) -> list[BounceReport]:
        fields = field_blocks(part)
        first = fields[0] if fields else Message()
        feedback_type = (decoded_header(first, "Feedback-Type").strip().lower() or None)
        if feedback_type == "virus":
            kind = VIRUS_NOTIFICATION
        elif feedback_type in ("not-spam", "auth-failure"):
            kind = UNKNOWN
        else:
            kind = SPAM_COMPLAINT
        found: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for block in fields:
            for value in all_headers(block, "Original-Rcpt-To"):
                found.update(dict.fromkeys(find_addresses(value)))
        recipients = [r for r in found if not _REDACTED.match(r)][:MAX_REPORTS]
        if not recipients:
            recipients = [r for r in self.original_recipients() if not _REDACTED.match(r)][:1]
        agent = decoded_header(first, "User-Agent").strip()
        diagnostic = one_line(f"Feedback-Type: {feedback_type or '-'}" + (f"; User-Agent: {agent}" if agent else ""))
        source = decoded_header(first, "Reported-Domain").strip() or None
        return [self.report(kind, r, diagnostic=diagnostic, feedback_type=feedback_type, remote_mta=source,
                            rule="arf", reason=f"arf; RFC 5965 report, Feedback-Type {feedback_type or '-'}")
                for r in (recipients or [None])]

    # -- everything else -----------------------------------------------------------------

    def text_reports(self) -> list[BounceReport]:
        notification = self.ses_reports()
        if notification:
            return notification
        head = self.human[:16384]
        probe = self.subject + "\n" + head
        failed = bool(all_headers(self.msg, "X-Failed-Recipients"))
        ndr = failed or bool(_NDR_BODY.search(head)) or bool(_NDR_SUBJECT.search(self.subject))
        from_daemon = any(a.split("@")[0].lower() in DAEMONS for a in self.from_addrs)
        if _VIRUS_NOTICE.search(probe):
            return [self.report(VIRUS_NOTIFICATION, self.guess_recipient(), diagnostic=one_line(self.subject),
                                **_why("virus-notice", _VIRUS_NOTICE, probe, "a filter's notice of a virus"))]
        if _SPAM_NOTICE.search(probe) and not _NDR_BODY.search(head):
            return [self.report(SPAM_NOTIFICATION, self.guess_recipient(), diagnostic=one_line(self.subject),
                                **_why("spam-notice", _SPAM_NOTICE, probe,
                                       "a filter's notice about a delivered message"))]
        if _CHALLENGE.search(probe) and not (failed or _NDR_BODY.search(head)):
            return [self.report(CHALLENGE_VERIFICATION, self.responder(challenge=True),
                                diagnostic=one_line(self.subject),
                                **_why("challenge", _CHALLENGE, probe, "asks the sender to prove it is a person"))]
        if ndr or from_daemon:
            return self.ndr_reports()
        if _ADDRESS_CHANGE.search(head):
            return [self.report(ADDRESS_CHANGE, self.responder(), diagnostic=one_line(self.subject),
                                **_why("address-change", _ADDRESS_CHANGE, head, "a reply giving a new address"))]
        if self.is_auto_reply():
            return [self.report(AUTO_RESPONDER, self.responder(), diagnostic=one_line(self.subject),
                                rule="auto-reply", reason=f"auto-reply; {self.auto_reply_evidence()}")]
        if _UNSUBSCRIBE_SUBJECT.search(self.subject) or _UNSUBSCRIBE_BODY.search(head):
            return [self.report(UNSUBSCRIBE, self.responder(), diagnostic=one_line(self.subject),
                                rule="unsubscribe", reason="unsubscribe; the subject or first words ask to be removed")]
        return [self.report(UNKNOWN, None, diagnostic=one_line(self.subject), rule="not-a-report",
                            reason="not-a-report; no delivery report, failure notice or auto-reply found")]

    def ses_reports(self) -> list[BounceReport]:
        """An Amazon SES bounce or complaint notification (JSON, as SNS e-mails it, or inside an
        SNS envelope's ``Message``): one report per bounced or complaining recipient."""
        text = self.human[:MAX_TEXT]
        if not _SES_NOTIFICATION.search(text):
            return []
        data = _json_object(text)
        if isinstance(data, dict) and isinstance(data.get("Message"), str):   # the SNS envelope
            data = _json_object(data["Message"])
        if not isinstance(data, dict):
            return []
        kind = data.get("notificationType") or data.get("eventType")
        reports = []
        if kind == "Complaint" and isinstance(data.get("complaint"), dict):
            feedback = str(data["complaint"].get("complaintFeedbackType") or "abuse")[:40]
            for entry in _json_list(data["complaint"].get("complainedRecipients")):
                reports.append(self.report(SPAM_COMPLAINT, _json_address(entry), feedback_type=feedback,
                                           diagnostic=f"Amazon SES complaint ({feedback})", rule="ses-complaint",
                                           reason=f"ses-complaint; Amazon SES complaint notification ({feedback})"))
        elif kind == "Bounce" and isinstance(data.get("bounce"), dict):
            bounce = data["bounce"]
            bounce_type = str(bounce.get("bounceType") or "")[:40]
            subtype = str(bounce.get("bounceSubType") or "")[:40]
            for entry in _json_list(bounce.get("bouncedRecipients")):
                recipient = _json_address(entry)
                status = normalize_status(str(entry.get("status") or "")) if isinstance(entry, dict) else None
                diagnostic = clean_reply(strip_type(str(entry.get("diagnosticCode") or ""))) \
                    if isinstance(entry, dict) else ""
                verdict = explain(status, diagnostic, recipient=recipient) if status or diagnostic else None
                if verdict is None or verdict.type is UNKNOWN or verdict.rule in _NO_CAUSE_RULES:
                    kind_by_subtype = _SES_SUBTYPES.get((bounce_type, subtype), SOFT_BOUNCE)
                    verdict = Verdict(kind_by_subtype, "ses-bounce-type", status,
                                      meaning=f"Amazon SES bounceType {bounce_type or '-'}/{subtype or '-'}")
                elif bounce_type != "Permanent" and verdict.type in SUPPRESSING_TYPES:
                    # SES itself judged the failure not permanent: never suppress on it
                    verdict = Verdict(SOFT_BOUNCE, "ses-transient", status, meaning=f"Amazon SES bounceType "
                                      f"{bounce_type or '-'}/{subtype or '-'}: not permanent")
                reports.append(self.report(verdict.type, recipient, status=status, action="failed",
                                           diagnostic=diagnostic, rule=verdict.rule, reason=verdict.reason))
        return reports[:MAX_REPORTS]

    def is_auto_reply(self) -> bool:
        return bool(self.auto_reply_evidence())

    def auto_reply_evidence(self) -> str:
        """What shows that the message is an automatic reply ("" when nothing does)."""
        auto = decoded_header(self.msg, "Auto-Submitted").strip().lower()
        if auto and not auto.startswith("no"):
            return f"Auto-Submitted: {auto[:40]}"
        for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Autoreply-From", "X-Mail-Autoreply"):
            if self.msg.get(name) is not None:
                return f"header {name}"
        for name in ("Precedence", "X-Precedence"):
            if decoded_header(self.msg, name).strip().lower() == "auto_reply":
                return f"{name}: auto_reply"
        m = _AUTO_SUBJECT.search(self.subject) or _AUTO_BODY.search(self.human[:16384])
        return f"text {' '.join(m.group(0).split())[:80]!r}" if m else ""

    def responder(self, challenge: bool = False) -> str | None:
        """The recipient a reply is about: the original's single To, else who replied."""
        if self.original is not None:
            to = addresses_of(self.original, "To")
            if len(to) == 1:
                return to[0]
        if challenge:
            found = self.guess_recipient(fallback=False)
            if found:
                return found
        for a in self.from_addrs:
            if a.split("@")[0].lower() not in DAEMONS:
                return a
        return None
    def guess_recipient(self, fallback: bool = True) -> str | None:
        """The failed recipient when no paragraph names it: the returned original's only
        recipient, else an address in the reason, near a failure phrase, in the text."""
        found = self.candidates(self.human)
        original = self.original_recipients()
        if fallback and len(original) == 1:
            return original[0]
        lowered = {a.lower() for a in original}
        confirmed = [a for a in found if a.lower() in lowered]
        reason = best_reason(self.human)
        if reason:
            in_reason = [a for a in self.candidates(reason[0]) if a in found]
            if in_reason:
                return in_reason[0]
        if confirmed:
            return confirmed[0]
        m = _NDR_BODY.search(self.human)
        if m:
            near = self.candidates(self.human[m.start():m.end() + 400])
            if near:
                return near[0]
        if found:
            return found[0]
        return None

    def ndr_reports(self) -> list[BounceReport]:
        """A plain-text bounce: one report per failed recipient, in the order of trust
        X-Failed-Recipients, per-recipient paragraphs (those the returned original names
        first), the returned original's only recipient, an address in the text."""
        human = self.human
        blocks = recipient_blocks(human.splitlines()[:5000], self)
        original = {a.lower() for a in self.original_recipients()}
        named = [a for a in blocks if a.lower() in original]
        recipients: list[str | None] = list(self.failed_recipients() or named or list(blocks)
                                            or self.listed_recipients())
        if not recipients:
            recipients = [self.guess_recipient()]
        global_reason = best_reason(human)
        head = human[:16384]
        delayed = bool(_DELAY.search(self.subject + "\n" + head))
        failure_notice = bool(_NDR_BODY.search(head) or _NDR_SUBJECT.search(self.subject) or self.failed_recipients())
        reports = []
        for recipient in recipients[:MAX_REPORTS]:
            block = blocks.get(recipient, "") if recipient else ""
            own = best_reason(block) if block else None
            others = [r for r in recipients if r and r != recipient]
            usable = global_reason if global_reason and not any(
                r.lower() in global_reason[0].lower() for r in others) else None
            reason = own if has_code(own) else usable if has_code(usable) else own or usable
            if reason:
                text, status, code = reason
                verdict = explain(status, text, code, recipient=recipient)
                if block and (verdict.rule in _NO_CAUSE_RULES or verdict.type is UNKNOWN):
                    in_block = explain(status, block, code, recipient=recipient)
                    if in_block.rule not in _NO_CAUSE_RULES:
                        verdict = in_block
            else:
                text, status, code = "", None, None
                verdict = explain(None, block, recipient=recipient) if block else Verdict(UNKNOWN, "no-evidence")
            permanent = (code is not None and code // 100 == 5) or (status is not None and status[0] == "5")
            if verdict.type is UNKNOWN or (verdict.rule in _NO_CAUSE_RULES and not verdict.matched):
                found = text_cause(head)
                if found and found[0].about_address and others:
                    found = None   # the text's "user unknown" may be about another recipient: never suppress on it
                if delayed and not permanent:
                    verdict = Verdict(TRANSIENT, "text-delay-notice", status, code, meaning="a delay notice")
                elif found and found[0].name != "transient":
                    cause, matched = found
                    verdict = Verdict(cause.type, "text-of-bounce", status, code, matched,
                                      f"the bounce {cause.meaning}")
                elif verdict.type is UNKNOWN and found:
                    verdict = Verdict(SOFT_BOUNCE if permanent or _NDR_BODY.search(head) else TRANSIENT,
                                      "text-of-bounce", status, code, found[1],
                                      "the bounce says the failure is temporary")
                elif verdict.type is UNKNOWN:
                    verdict = Verdict(SOFT_BOUNCE, "failure-notice-no-cause", status, code,
                                      meaning="a delivery failure notice that names no cause")
            if verdict.type is TRANSIENT and not delayed and failure_notice:
                # a failure notice, not a delay notice, whose reason is temporary: delivery was
                # given up after temporary failures; the bounce may name a cause that is not the
                # address ("mailbox is full ... try again later"), never evidence the address is gone
                found = text_cause(block) if block else None
                if not found or found[0].type is TRANSIENT:
                    found = text_cause(head)
                if found and found[0].type is not TRANSIENT and not found[0].about_address:
                    verdict = Verdict(found[0].type, "failure-notice-given-up+text", status, code, found[1],
                                      f"a failure notice whose reply is temporary; the bounce {found[0].meaning}")
                else:
                    verdict = Verdict(SOFT_BOUNCE, "failure-notice-given-up", status, code, verdict.matched,
                                      "a failure notice (not a delay notice) whose reply is temporary: "
                                      "given up after temporary failures")
            remote = _REMOTE_HOST.search(block or head)
            reports.append(self.report(
                verdict.type, recipient, status=status, action="delayed" if verdict.type is TRANSIENT else "failed",
                diagnostic=one_line(text or block), remote_mta=next((g for g in remote.groups() if g), None)
                if remote else None, rule=verdict.rule, reason=verdict.reason))
        return reports


#: Rules that decide without the text naming a cause (a bare code): a paragraph or the
#: whole bounce may say more.
_NO_CAUSE_RULES = {"permanent-no-cause", "reply-code", "routing-status", "no-evidence", "temporary"}


# -- helpers --------------------------------------------------------------------------------


def _why(rule: str, pattern: re.Pattern[str], text: str, meaning: str) -> dict[str, str]:
    """``rule`` and ``reason`` for a report decided by ``pattern`` matching ``text``."""
    m = pattern.search(text)
    words = f"; text {' '.join(m.group(0).split())[:80]!r}" if m else ""
    return {"rule": rule, "reason": f"{rule}{words}; {meaning}"}


#: A recipient address a feedback loop redacted (RFC 6590): no address at all.
_REDACTED = re.compile(r"(?:redacted|x{3,}|\*{3,})@", re.I)


def _json_object(text: str) -> Any:
    """The JSON object that starts at the first "{" of ``text`` (None when there is none)."""
    start = text.find("{")
    if start < 0:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:MAX_TEXT])
    except (ValueError, RecursionError):
        return None
    return value


def _json_list(value: Any) -> list[Any]:
    return value[:MAX_REPORTS] if isinstance(value, list) else []


def _json_address(entry: Any) -> str | None:
    found = find_addresses(str(entry.get("emailAddress") or "")[:1000]) if isinstance(entry, dict) else []
    return found[0] if found else None

