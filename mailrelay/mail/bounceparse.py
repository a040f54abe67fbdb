"""
bounceparse: classify delivery failures and parse the messages that report them.

JOB
    One classifier for both ends of a bounce. At delivery, :func:`classify`
    turns a remote server's reply (enhanced status code, text, reply code)
    into a :class:`BounceType`. Later, :func:`parse_bounce` reads a message
    that came back (an RFC 3464 delivery status notification, an RFC 5965
    abuse report, a plain-text bounce from qmail, Exim, Exchange, Sendmail,
    Postfix, Gmail or Yahoo, an auto-reply, a challenge, ...) and returns one
    :class:`BounceReport` per affected recipient, classified by the same
    function, with the ``X-Mailrelay-ID`` of the returned original when the
    bounce includes it, and the recipient tokens it carries (see
    :data:`RECIPIENT_TOKEN_HEADER`). The taxonomy and type codes are Postmark's.

CLASSIFICATION
    Decided from the reason, not from the first digit: only a failure that
    says the *address* is gone (no such user or mailbox, no such domain or
    null MX, moved, not an address at all) suppresses; everything else gets
    the Postmark type that says what happened. :func:`explain` returns the
    type with the rule that decided, the status, reply code and words of the
    text used (``rule`` and ``reason`` of each report, printed by ``mailrelay
    bounce classify``). The most specific evidence wins:

    1. The text's *cause*: the first of :data:`CAUSES` whose phrases match,
       in this order (a cause about the sender, content or rate comes before
       one about the address, so "5.1.1 ... rejected as spam" never
       suppresses): mailrelay's own refusal of a non-public destination
       (DnsError), virus (VirusNotification), dmarc (DMARCPolicy), sender
       refused, relaying denied (Blocked), mailbox full or over quota,
       message too big, delivery expired (SoftBounce), the message judged
       spam (SpamNotification), block list, reputation, policy,
       authentication, reverse DNS, other spam (Blocked), rate limit
       (SoftBounce), DNS failed for now, MX records pointing to hosts that
       do not exist (DnsError), domain does not exist or is not registered,
       NXDOMAIN, null MX, unroutable (HardBounce; a DnsError when the failed lookup named
       another host than the recipient's domain), bad address syntax
       (BadEmailAddress), moved (HardBounce), mailbox disabled, suspended,
       inactive (SoftBounce), no such user or mailbox, account closed
       (HardBounce), "mailbox unavailable" (RFC 5321's 550 text: HardBounce),
       mail loop (DnsError), temporary, try later, timeout (Transient).
    2. The enhanced status code (RFC 3463; a generic X.0.0 gives way to a
       specific one in the text) and reply code:

    =========================  ==================================================
    evidence                   type (rule)
    =========================  ==================================================
    2.X.X / 2xx                Unknown, not a failure (``success``)
    4.X.X / 4xx                Transient (``temporary``); SoftBounce when the
                               text says full or expired, for 4.2.2 and 4.3.1,
                               and in a 5xx reply (given up)
    5.1.1 5.1.2 5.1.6 5.1.10   HardBounce (``address-status``) unless the text
    5.7.17 5.7.18 5.4.310      names a cause that is not the address, which wins
                               (``text-over-address-status``: "5.1.1 ... spam"
                               is Blocked, Orange's "552 5.1.1 ... overquota" a
                               SoftBounce); 5.1.2 with a DNS failure for now is
                               a DnsError
    5.1.3                      BadEmailAddress (suppresses), same exceptions
    5.2.2 5.2.3 5.3.4 5.3.1    SoftBounce whatever the class digit or the text
    5.4.7 5.1.4 5.5.3 ...      (``cause-status``); only a virus or DMARC text
                               refines them
    5.2.1                      SoftBounce (disabled: the address exists); a
                               text saying the user does not exist makes it a
                               HardBounce, a rate, policy or quota text the
                               matching soft type (Gmail, AOL use 5.2.1)
    5.1.7 5.1.8 5.7.27         Blocked (our sender is refused)
    5.7.26 5.7.509             DMARCPolicy
    5.4.3 5.4.6 5.4.8 5.4.14   DnsError (routing, loops)
    5.4.1 + "Recipient         HardBounce: Microsoft 365's directory-based
      address rejected:        edge blocking, the recipient is not in the
      Access denied"           directory (Microsoft's NDR documentation)
    5.7.X                      Blocked (``policy-status``), VirusNotification
                               or DMARCPolicy by the text, another soft type
                               when the text says quota, size, rate or expired;
                               5.7.1 (the generic "delivery not authorized")
                               with a text that only says the user or domain
                               does not exist is a HardBounce: no policy word
                               matched before it
    5.0.0, 5.X.0, 5.5.X,       the text's cause (``text``); else by reply
    5.6.X, 5xx without         code: 551 (user not local: moved), 521 and 556
    status                     (RFC 7504, accepts no mail) HardBounce, 552
                               SoftBounce; any other 5xx SoftBounce
                               (``permanent-no-cause``: a permanent failure
                               that names no cause is no evidence that the
                               address is gone); 5.4.X DnsError
    nothing                    the text's cause, else Unknown
    =========================  ==================================================

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
    SoftBounce (``failure-notice-given-up``). The bounce's own text ends where
    the copy of the original starts: at a line announcing it, or at three
    header fields in a row, one of them Received, Return-Path, Message-ID,
    DKIM-Signature, ... (a quoted DKIM-Signature is no DKIM refusal).
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
    :data:`COARSE_CLASSES` groups the types into hard, soft,
    complaint, autoreply and unknown (bench/bounces.py measures them).

RECIPIENTS
    In order of trust: a DSN's Original-Recipient, then Final-Recipient;
    X-Failed-Recipients; per-recipient paragraphs of a plain-text bounce
    (those the returned original's To/Cc names first); the returned
    original's only recipient; an address in the reason or near a failure
    phrase. Every failed recipient of a bounce gets its own report.

SECURITY
    Bounces come from anyone: every byte is untrusted. Parsing never raises
    (any error gives one Unknown report), looks at the first
    :data:`MAX_INPUT` bytes, :data:`MAX_PARTS` MIME parts and
    :data:`MAX_TEXT` characters of text, and its regular expressions run in
    linear time. Anyone can forge a bounce naming any recipient and any
    ``X-Mailrelay-ID``: a caller must check that the message exists and
    that the recipient was one of its recipients before suppressing an
    address (see :data:`SUPPRESSING_TYPES`); :mod:`mailrelay.services.bounces` does so
    only with a verified recipient token. An ``X-Mailrelay-ID`` is only
    returned when it has the shape of a mailrelay id (20 hex digits); the
    recipient tokens are only candidates, with the shape of a token, that
    the caller must verify (their HMAC is the proof, not where they were found).
    Recipients found by the plain-text heuristics are guesses. A forged
    bounce can choose its type, so the classifier errs towards not
    suppressing: only the address-level causes above, and complaints,
    suppress (:data:`SUPPRESSING_TYPES`).

STANDARDS
    RFC 3463 and RFC 5248 (enhanced status codes), RFC 3464 and RFC 6533
    (delivery status notifications), RFC 6522 (multipart/report), RFC 5965
    (ARF), RFC 6590 (redacted addresses in ARF), RFC 3834 (Auto-Submitted), RFC 5321 (reply codes), RFC 7504 (521,
    556), RFC 7505 (null MX, 5.1.10, 5.7.27), RFC 7372 (5.7.20-5.7.26), RFC
    7293 (5.7.17, 5.7.18), RFC 2045-2047 (MIME, through the ``email``
    package). Type names and codes: Postmark's bounce types (BadEmailAddress
    100000, DMARCPolicy 100009 included).

DIAGNOSTICS
    None: :func:`parse_bounce` returns at least one report, an Unknown one
    with no recipient when it finds nothing.

CONFIGURATION
    None: reads no config key and owns no file or Redis data. It recognises
    mailrelay's own refusal of a non-public destination by the setting that
    text names (:data:`mailrelay.smtp.destinations.SETTING`).
"""

from __future__ import annotations

import email
import email.header
import email.utils
import html.parser
import json
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from typing import Any, NamedTuple

from mailrelay.smtp.destinations import SETTING as DESTINATION_SETTING

#: Bytes of a bounce that are parsed; the rest is ignored.
MAX_INPUT = 1024 * 1024
#: Characters of decoded text that the heuristics look at.
MAX_TEXT = 256 * 1024
#: MIME parts looked at, and how deep.
MAX_PARTS = 100
MAX_DEPTH = 8
#: Reports returned for one bounce, at most.
MAX_REPORTS = 100
#: The header field that carries each recipient's token in its copy (added at delivery),
#: and the local-part prefix of a VERP return path, which carries the same token.
RECIPIENT_TOKEN_HEADER = "X-Mailrelay-Recipient-Token"
VERP_PREFIX = "b+"
#: Candidate recipient tokens returned for one bounce, at most.
MAX_TOKENS = 10
#: Characters kept of a diagnostic.
MAX_DIAGNOSTIC = 1000


class BounceType(NamedTuple):
    """A bounce type: Postmark's name and numeric code."""

    name: str
    code: int

    @property
    def description(self) -> str:
        return DESCRIPTIONS.get(self.name, "")

    @property
    def suppresses(self) -> bool:
        """Whether a bounce of this type deactivates the address."""
        return self in SUPPRESSING_TYPES

    @property
    def coarse_class(self) -> str:
        """hard, soft, complaint, autoreply or unknown (see :data:`COARSE_CLASSES`)."""
        return COARSE_CLASSES.get(self.name, "unknown")


HARD_BOUNCE = BounceType("HardBounce", 1)
TRANSIENT = BounceType("Transient", 2)
UNSUBSCRIBE = BounceType("Unsubscribe", 16)
AUTO_RESPONDER = BounceType("AutoResponder", 64)
ADDRESS_CHANGE = BounceType("AddressChange", 128)
DNS_ERROR = BounceType("DnsError", 256)
SPAM_NOTIFICATION = BounceType("SpamNotification", 512)
UNKNOWN = BounceType("Unknown", 2048)
SOFT_BOUNCE = BounceType("SoftBounce", 4096)
VIRUS_NOTIFICATION = BounceType("VirusNotification", 8192)
CHALLENGE_VERIFICATION = BounceType("ChallengeVerification", 16384)
BAD_EMAIL_ADDRESS = BounceType("BadEmailAddress", 100000)
SPAM_COMPLAINT = BounceType("SpamComplaint", 100001)
MANUALLY_DEACTIVATED = BounceType("ManuallyDeactivated", 100002)
BLOCKED = BounceType("Blocked", 100006)
DMARC_POLICY = BounceType("DMARCPolicy", 100009)

BOUNCE_TYPES: dict[str, BounceType] = {t.name: t for t in (
    HARD_BOUNCE, TRANSIENT, UNSUBSCRIBE, AUTO_RESPONDER, ADDRESS_CHANGE, DNS_ERROR, SPAM_NOTIFICATION,
    UNKNOWN, SOFT_BOUNCE, VIRUS_NOTIFICATION, CHALLENGE_VERIFICATION, BAD_EMAIL_ADDRESS, SPAM_COMPLAINT,
    MANUALLY_DEACTIVATED, BLOCKED, DMARC_POLICY)}
BOUNCE_TYPES_BY_CODE: dict[int, BounceType] = {t.code: t for t in BOUNCE_TYPES.values()}

#: Types that deactivate the address: the address is gone (HardBounce), is not an address at
#: all (BadEmailAddress), or its owner complained (SpamComplaint).
SUPPRESSING_TYPES = frozenset({HARD_BOUNCE, BAD_EMAIL_ADDRESS, SPAM_COMPLAINT})

#: The coarse class each type belongs to, which the suppression decision depends on:
#: ``hard`` (suppresses), ``soft`` (a failure that does not), ``complaint``, ``autoreply`` (a
#: reply rather than a failure) and ``unknown``.
COARSE_CLASSES: dict[str, str] = {
    "HardBounce": "hard", "BadEmailAddress": "hard", "SpamComplaint": "complaint",
    "Transient": "soft", "SoftBounce": "soft", "Blocked": "soft", "DnsError": "soft", "DMARCPolicy": "soft",
    "SpamNotification": "soft", "VirusNotification": "soft", "ManuallyDeactivated": "soft",
    "AutoResponder": "autoreply", "AddressChange": "autoreply", "ChallengeVerification": "autoreply",
    "Unsubscribe": "autoreply", "Unknown": "unknown",
}

DESCRIPTIONS: dict[str, str] = {
    "HardBounce": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
    "Transient": "The server could not temporarily deliver your message "
                 "(ex: message is delayed due to network troubles).",
    "Unsubscribe": "Unsubscribe or remove request.",
    "AutoResponder": "Automatic email responder (ex: \"Out of Office\" or \"On Vacation\").",
    "AddressChange": "The recipient has requested an address change.",
    "DnsError": "A DNS error: the recipient's domain or mail server could not be found.",
    "SpamNotification": "The message was delivered, but was either blocked by the user, "
                        "or classified as spam, bulk mail, or had rejected content.",
    "Unknown": "Unable to classify the bounce.",
    "SoftBounce": "Unable to deliver the message for now, but the address may work later "
                  "(ex: mailbox full, over quota, message too large).",
    "VirusNotification": "The bounce is actually a virus notification warning about a virus/code "
                         "infected message.",
    "ChallengeVerification": "The bounce is a challenge asking for verification you actually sent the "
                             "email (ex: Boxbe, Spam Arrest).",
    "SpamComplaint": "The recipient explicitly marked this message as spam.",
    "ManuallyDeactivated": "The address was manually deactivated.",
    "Blocked": "Blocked by the receiving server due to content, reputation or policy "
               "(ex: spam filter, block list, rate).",
    "BadEmailAddress": "Invalid email address: the address is not a valid email address.",
    "DMARCPolicy": "Rejected because the sender domain's DMARC policy failed.",
}


@dataclass
class BounceReport:
    """What one bounce says about one recipient."""

    type: BounceType
    recipient: str | None = None
    status: str | None = None
    action: str | None = None
    diagnostic: str = ""
    remote_mta: str | None = None
    original_message_id: str | None = None
    mailrelay_id: str | None = None
    #: Strings shaped like recipient tokens found in the bounce (unverified).
    recipient_tokens: tuple[str, ...] = ()
    feedback_type: str | None = None
    description: str = ""
    #: Which rule decided the type (``address-status``, ``text-over-address-status``, ...) and
    #: why, in one line: the status, reply code and words of the text that decided.
    rule: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.description:
            self.description = self.type.description

    def to_json(self, file: str | None = None) -> dict[str, Any]:
        """The fields ``mailrelay bounce classify`` prints."""
        return {"file": file, "type": self.type.name, "type_code": self.type.code,
                "recipient": self.recipient, "status": self.status, "description": self.description,
                "rule": self.rule, "reason": self.reason}


# -- classify -------------------------------------------------------------------------------

_FLAGS = re.I | re.X

#: An enhanced status code (RFC 3463); not a version number or part of an IP address.
_STATUS = re.compile(r"(?<![\w.])([245])\.([0-7])\.(\d{1,3})(?![\w]|\.\d)")
#: A reply code at the start of a line (after punctuation such as ``#``, ``<<<``, ``(``).
_REPLY_START = re.compile(r"^[\s#(<'\"\[]*([245]\d\d)(?=[\s:-]|$)")
#: A reply code after a word that introduces one.
_REPLY_AFTER = re.compile(r"(?:said|returned|reason|error|<<<|response|smtp)\W{0,4}([245]\d\d)(?=[\s:-]|$)", re.I)


@dataclass(frozen=True)
class Cause:
    """What a diagnostic text can say about a failure: a name, the type it gives, and whether
    it is about the address itself (only those may suppress)."""

    name: str
    type: BounceType
    about_address: bool
    meaning: str
    pattern: re.Pattern[str]


def _cause(name: str, kind: BounceType, meaning: str, pattern: str, about_address: bool = False) -> Cause:
    return Cause(name, kind, about_address, meaning, re.compile(pattern, _FLAGS))


#: Texts from RFC 3463/5321, Postfix, Exim, Sendmail, qmail, OpenSMTPD, Courier, Exchange and
#: Microsoft 365, Lotus Notes, GroupWise and the documented replies of Gmail, Outlook.com,
#: Yahoo/AOL, iCloud, GMX/Web.de, Orange, Mail.ru and QQ.
def _causes() -> tuple[Cause, ...]:
    return (
        # mailrelay's own refusal of private destinations (destinations.refused_message):
        # a routing decision of ours, never evidence about the address
        _cause("destination-policy", DNS_ERROR, "is mailrelay's refusal of a non-public destination",
               re.escape(f"({DESTINATION_SETTING} = false)")),
        _cause("virus", VIRUS_NOTIFICATION, "names a virus or malware", r"""
            \bvirus(?:es)?\b | \binfected\b | \bmalware\b | \btrojan\b | \beicar\b"""),
        _cause("dmarc", DMARC_POLICY, "names the sender domain's DMARC policy", r"""
            \bdmarc\b"""),
        _cause("sender", BLOCKED, "refuses the sender address, not the recipient", r"""
            \bsender\s+(?:address\s+|domain\s+|e-?mail\s+)?(?:rejected|unknown|not\s+found|blocked|denied|refused|
                                                  verify\s+failed|verification\s+failed|is\s+not\s+allowed|invalid)
          | \bsender\s+(?:address\s+)?has\s+null\s+mx\b | \bdomain\s+of\s+sender\s+address\b
          | \b(?:bad|invalid|unknown)\s+sender\b | \bsender\s+denied\b | \bbad\s+outbound\s+sender\b
          | \bsender\s+(?:is\s+)?not\s+(?:authori[sz]ed|allowed|permitted)
          | \b(?:connected\s+to\s+\S+\s+but\s+)?sender\s+was\s+rejected\b
          | \bnot\s+in\s+(?:the\s+)?allowed[\s-]senders?\b | \bsender\s+frequency\s+limited\b
          | \bsender(?:'s)?\s+(?:address\s+|domain\s+)?(?:\S+\s+){0,4}?(?:does\s+not\s+exist|has\s+no\s+mx|
                                                                    not\s+resolv\w*|unresolvable|invalid)
          | \b(?:your|the)\s+(?:sender|sending|from)\s+(?:address|domain)\b
          | \bdomain\s+of\s+(?:your\s+|the\s+)?sender\b
          | \bmail\s+from\s+(?:address|domain)\s+(?:\S+\s+){0,3}?(?:rejected|invalid|not|does)\b | \babsender\b
          | \bremitente\b | \bexp[ée]diteur\b | \bmittente\b | \bremetente\b | \bотправител"""),
        _cause("relay", BLOCKED, "refuses to relay for the domain (a routing or policy refusal)", r"""
            \brelay(?:ing)?\s+(?:access\s+)?(?:denied|not\s+permitted|prohibited|not\s+allowed)
          | \b(?:unable|not\s+permitted|not\s+allowed)\s+to\s+relay\b | \bwe\s+do\s+not\s+relay\b
          | \bnot\s+in\s+my\s+list\s+of\s+allowed\s+rcpthosts\b | \bno\s+relaying\b
          | \bnot\s+(?:a\s+)?local\s+(?:domain|host)\b | \bisn't\s+in\s+my\s+control/locals\s+file\b"""),
        _cause("quota", SOFT_BOUNCE, "says the mailbox is full or over quota", r"""
            (?<!sending\s)(?<!\brate\s)(?<!\bsubmission\s)\bquota\b(?!\s+of\s+(?:messages|recipients))
          | \bover\W?quota\b | \boverquota
          | \b(?:mail\s?box|inbox|mail\s?folder|mail\s?drop|disk|storage|mailfile|mail\s+file|account|boite|postfach)
            \s+(?:\S+\s+){0,3}?(?:is\s+|was\s+|has\s+become\s+)?(?:full|pleine|voll)\b
          | \bmailboxfull\b | \bfull\s+mail\s?box\b | \binsufficient\s+(?:system\s+)?storage\b
          | \bout\s+of\s+(?:disk\s+|storage\s+)?space\b | \bnot\s+enough\s+(?:disk\s+|storage\s+)?space\b
          | \bexceeded\s+storage\s+allocation\b | \bstorage\s+(?:allocation|limit|space)\s+exceeded\b
          | \bmailbox\s+size\s+limit\b | \bmailbox\s+(?:has\s+)?exceeded\b | \bdisk\s+quota\b
          | \bexceeds?\s+(?:the\s+)?(?:mailbox|storage|disk)\s+(?:size\s+)?(?:limit|quota)
          | \bmailbox\s+is\s+over\b | \bcannot\s+accept\s+(?:any\s+)?more\s+(?:messages|mail)\b
          | \bbo[iî]te\s+(?:aux\s+lettres\s+|de\s+r[ée]ception\s+)?(?:du\s+destinataire\s+)?pleine\b
          | \bbuz[oó]n\s+(?:\S+\s+)?lleno\b | \bcasella\s+(?:di\s+posta\s+)?piena\b | \bcaixa\s+(?:postal\s+)?cheia\b
          | \bspeichervolumen\b | \bpostfach\s+(?:ist\s+)?voll\b | \bящик\s+переполнен | \bпревышен\w*\s+квот
          | 邮箱已满 | 空间不足 | 容量不足 | 容量超過 | メールボックスが(?:いっぱい|一杯)"""),
        _cause("size", SOFT_BOUNCE, "says the message is too big", r"""
            \bmessage\s+(?:is\s+)?too\s+(?:big|large|long)\b | \b(?:message|mail)\s+size\s+(?:\d+\s+)?exceeds?
          | \bsize\s+(?:limit\s+)?exceeded\b | \bexceeds?\s+(?:the\s+)?(?:maximum\s+|fixed\s+)?(?:maximum\s+)?
            (?:message\s+)?size\b | \bsize\s+exceeds\b | \btoo\s+big\b | \bmessage\s+length\s+exceeds\b
          | \bexceeded\s+(?:\S+\s+)?(?:message\s+)?size\s+limits?\b | \bdatabytes\s+limit\b
          | \brecipsizelimit\b | \bmaximum\s+message\s+size\b | \bmessage\s+too\s+large\b
          | \bexceeds\s+(?:my|our|the)\s+(?:databytes|size)\b | \bfile\s+too\s+large\b"""),
        _cause("expired", SOFT_BOUNCE, "says delivery was given up after temporary failures", r"""
            \b(?:message|delivery|queue\s+entry|mail|envelope)\s+(?:time\s+)?(?:has\s+)?expired\b
          | \bdelivery\s+time\s+expired\b | \bmessage\s+expired\b | \bqueue\.expired\b | \bexpired\s+in\s+queue\b
          | \bretry\s+time(?:out)?\s+(?:exceeded|not\s+reached\s+for\s+any\s+host)
          | \b(?:too\s+long\s+in\s+(?:the\s+)?queue|in\s+the\s+queue\s+too\s+long)\b
          | \bcould\s+not\s+be\s+delivered\s+(?:with)?in\s+(?:the\s+(?:last|past)\s+)?\d+\s+(?:days?|hours?)\b
          | \b(?:could|can)\s*(?:not|n't)\s+(?:send|deliver)\s+(?:(?:this\s+)?message\s+)?for\s+(?:the\s+past\s+)?
            \d+\s+(?:days?|hours?)\b | \bcannot\s+send\s+message\s+for\s+\d+ | \bnot\s+going\s+to\s+try\s+again\b
          | \bmaximum\s+(?:delivery\s+)?time\s+(?:has\s+been\s+)?(?:exceeded|reached)\b | \blifetime\s+exceeded\b
          | \btoo\s+many\s+(?:delivery\s+)?failures\b | \btried\s+all\s+mx(?:s|\s+hosts)?\b   # Haraka: given up"""),
        _cause("spam", SPAM_NOTIFICATION, "says the message itself was judged spam", r"""
            \b(?:message|mail|e-?mail|content|this)\b[^.;\n]{0,40}?
            \b(?:looks?\s+like|is\s+likely|likely|classified\s+as|
              detected\s+as|identified\s+as|considered(?:\s+as)?|rejected\s+as|determined\s+to\s+be|appears\s+to\s+be|
              marked\s+as|scored\s+as)\s+(?:an?\s+)?(?:possible\s+|probable\s+)?(?:spam|unsolicited|junk|bulk)\b
          | \bspam\s+(?:message|content|score)\b | \brejected\s+as\s+spam\b | \bcontent\s+(?:denied|rejected)\b
          | \blikely\s+unsolicited\b | \bspam\s+detected\b(?!.{0,20}abuse)"""),
        _cause("blocked", BLOCKED, "names spam, content, reputation, a block list or a policy", r"""
            \bspam | \bblocked\b | \bblock\s?(?:ed\s)?list | \bblack\s?list | \bdeny\s?list | \bblacklisted\b
          | \breputation\b | \bpolic(?:y|ies)\b | \bspamhaus\b | \bspamcop\b | \bsorbs\b | \bbarracuda\b
          | \b(?:rbl|dnsbl|uribl|surbl)\b | \bspf\b | \bdkim\b | \bunsolicited\b | \bbulk\s+(?:e-?)?mail\b
          | \bjunk\b | (?<!not\s)\blisted\s+(?:at|on|by)\b | \bcontent\s+(?:rejected|denied|refused)\b
          | \bmessage\s+(?:content\s+)?(?:rejected|refused)\b | \brejected\s+(?:due\s+to|because\s+of|for)\b
          | \bnot\s+authori[sz]ed\b | \bprohibited\b | \bbanned\b | \bsuspicious\b | \bphish | \bTSS\d+\b
          | \bclient\s+host\s+rejected\b | \bcannot\s+find\s+your\s+(?:reverse\s+)?hostname\b
          | \bmailbox\s+unavailable\s+or\s+access\s+denied\b   # QQ: too much mail for this recipient
          | \bunauthenticated\b | \bauthentication\s+(?:failed|failure|required|checks?)\b | \bnot\s+authenticated\b
          | \bptr\s+record\b | \breverse\s+dns\b | \brdns\b | \bno\s+reverse\b | \bbad\s+dns\s+ptr\b
          | \bwill\s+not\s+accept\s+(?:delivery|this|your|mail\s+from)\b | \bnot\s+accepted\s+for\s+policy\b
          | \bdelivery\s+not\s+authori[sz]ed\b | \baccess\s+denied,\s+(?!.*\brecipient\s+address\s+rejected)
          | \brejected\s+by\s+(?:recipients?|the\s+recipient|user)\b | \bmail\s+(?:is\s+)?rejected\s+by\b
          | \bservice\s+(?:refused|refuse)\b | \bpersonal\s+(?:black|block)\s?list\b | \bhigh\s+probability\b
          | \babuse\s+detected\b | \b(?:message|mail|content)\s+(?:was\s+)?filtered\b | \bnot\s+allowed\s+to\s+send\b
          | \bnot\s+permitted\b | \bhelo\s+command\s+rejected\b | \b(?:invalid|bad)\s+e?helo\b | \bopen\s+relay\b
          | \bdynamic\s+ip\b | \bmail\s+flood\b | \bcontent\s+filter"""),
        _cause("rate", SOFT_BOUNCE, "says mail arrives too fast (a rate limit)", r"""
            \brate\s*limit | \brate[\s-]limited\b | \bat\s+a\s+rate\b
          | \btoo\s+(?:many|much)\s+(?:mail|messages|e-?mails|
            connections|recipients|concurrent|sessions|simultaneous)\b
          | \breceiving\s+mail\s+(?:too\s+quickly|at\s+a\s+rate)
          | \bthrottl | \bfrequency\s+limited\b | \bsending\s+(?:quota|limit)\b | \b(?:daily|hourly)\s+
            (?:user\s+)?(?:sending\s+)?(?:quota|limit)\b | \bexceeded\s+the\s+max\s+(?:emails|defers)
          | \bunexpected\s+volume\b | \bslow\s+down\b
          | \bspeed\s+limit\b | \b(?:message|receive)\s+(?:rate\s+)?limit\s+(?:exceeded|reached)\b"""),
        _cause("dns-temporary", DNS_ERROR, "says a DNS lookup failed for now", r"""
            \bhost\s+not\s+found,\s+try\s+again\b | \bservfail\b | \bname\s+server\s+timeout\b
          | \bdns\s+(?:timeout|query\s+failed|temporary|lookup\s+timed\s+out|server\s+failure|problem)\b
          | \btemporary\s+(?:dns|lookup|name\s+server)\s+failure\b | \bhost\s+lookup\s+did\s+not\s+complete\b
          | \btemporary\s+failure\s+in\s+name\s+resolution\b | \bdns\s+query\s+error\b
          | \bmx\s+(?:record\s+)?points?\s+to\s+(?:local\s?host|itself)\b
          | \bdns\s+server\s+returned\s+general\s+failure\b"""),
        _cause("mail-host-missing", DNS_ERROR, "says the domain's mail hosts do not exist (its DNS is broken)", r"""
            \bmx\s+records?\s+points?\s+to\s+non-?existent\s+hosts?\b
          | \bmail\s+exchangers?\s+(?:\S+\s+){0,3}?could\s+not
            \s+be\s+resolved\b | \bnone\s+of\s+its\s+mail\s+exchangers\s+has\s+an\s+address\b"""),
        _cause("domain", HARD_BOUNCE, "says the recipient's domain does not exist or accepts no mail", r"""
            \bhost\s+(?:or\s+domain\s+name\s+)?not\s+found\b | \bdomain\s+(?:name\s+)?not\s+found\b
          | \b(?:unknown|non-?existent|unresolvable)\s+(?:host|domain)\b | \bnxdomain\b | \bhost\s+unknown\b
          | \bno\s+(?:valid\s+)?mx\b | \bnull\s*mx\b | \bunroute?able\b | \bunable\s+to\s+route\b
          | \bdomain\s+(?:name\s+)?(?:[^\s;]{1,253}\s+)?(?:does\s+not|doesn't|did\s+not|does\s+no)\s+exist\b
          | \bdns\s+domain\s+(?:\S+\s+)?(?:does\s+not|doesn't)\s+exist\b
          | \b(?:could\s+not|couldn't|unable\s+to|failed\s+to)\s+(?:resolve|find\s+(?:any\s+host|a\s+mail\s+exchanger))
          | \baddress\s+resolution\b[^;\n]{0,80}?\bfailed\b | \bhost\s+address\s+lookups?\s+failed\s+permanently\b
          | \bname\s+or\s+service\s+not\s+known\b | \bnonexistentdomain\b | \bno\s+such\s+domain\b
          | \bdomain\s+(?:\S+\s+)?does\s+not\s+accept\s+mail\b | \bnot\s+able\s+to\s+find\s+the\s+recipient\s+domain\b
          | \bweren't\s+able\s+to\s+find\s+the\s+recipient\s+domain\b | \bpoint\s+to\s+non-?existent\s+hosts\b
          | \bdomaine?\s+(?:inexistant|inconnu)\b | \bno\s+mail\s+exchanger\b
          | \bindicated\s+no\s+smtp\s+service\b
          | \bdomain\s+(?:name\s+)?(?:\S+\s+){0,2}?(?:does\s+not\s+appear\s+to\s+be|is\s+not|isn't)\s+registered\b
            """, about_address=True),
        _cause("syntax", BAD_EMAIL_ADDRESS, "says the address is not a valid address", r"""
            \b(?:bad|invalid|illegal|malformed)\s+(?:recipient\s+|destination\s+|e-?mail\s+)?address\s+syntax\b
          | \baddress\s+syntax\b | \bsyntax\s+error\s+in\s+(?:the\s+)?(?:recipient\s+)?address\b
          | \bmalformed\s+(?:recipient\s+|e-?mail\s+)?address\b
          | \bnot\s+a\s+valid\s+rfc\s*(?:5321|2821|5322|2822|822)\s+address\b
          | \binvalid\s+(?:recipient\s+)?address\s+format\b | \baddress\s+(?:is\s+)?malformed\b
          | \bdomain\s+name\s+required\b | \buser\s+address\s+required\b | \bunbalanced\s+['"<(]
          | \bnot\s+a\s+valid\s+(?:domain\s+name|address\s+literal)\b | \binvalid\s+domain\s+name\b
          | \bunsupported\s+address\s+literal\b""",
               about_address=True),
        _cause("moved", HARD_BOUNCE, "says the mailbox has moved", r"""
            \b(?:mailbox|user|address|recipient)\s+has\s+moved\b | \buser\s+not\s+local\b
          | \bmailbox\s+owner\s+has\s+changed\b | \bdomain\s+owner\s+has\s+changed\b""", about_address=True),
        _cause("disabled", SOFT_BOUNCE, "says the mailbox exists but is disabled or inactive", r"""
            \b(?:account|mailbox|user|recipient|address|inbox)\s+(?:\S+\s+){0,5}?
            (?:has\s+been\s+|is\s+|was\s+)(?:temporarily\s+)?
            (?:disabled|suspended|inactive|deactivated|locked|frozen|blocked|archived|on\s+hold|not\s+activated)\b
          | \b(?:disabled|suspended|inactive|deactivated|locked|frozen|archived)\s+(?:e-?mail\s+)?
            (?:account|mailbox|user|recipient)\b | \baccount\s+(?:disabled|suspended|inactive|locked)\b
          | \bmailbox\s+(?:disabled|suspended|inactive|locked)\b | \buser\s+account\s+disabled\b
          | \bnot\s+(?:activated|enabled)\s+(?:for\s+)?(?:e-?mail|mail)\b
          | \bboite\s+du\s+destinataire\s+archivee\b"""),
        _cause("user", HARD_BOUNCE, "says there is no such user or mailbox", r"""
            \buser\s+unknown\b
          | \bunknown\s+(?:user|recipient|mailbox|address|local[\s-]?part|alias|addressee|e-?mail)\b
          | \baddressee\s+unknown\b
          | \bno\s+such\s+(?:user|mailbox|recipient|address|account|person|local\s+user|e-?mail)\b
          | \b(?:does\s+not|doesn't|did\s+not|no\s+longer|does\s+no|is\s+not|not)\s+exists?\b
          | \bdoes(?:\s+not|n't)\s+have\s+an?\s+[\w.-]+\s+account\b
          | (?<!\bip\s)(?<!\bsender\s)(?<!\bfrom\s)
            \b(?:recipient|user|mailbox|address|account|addressee)s?\s+(?:\S+\s+)?(?:is\s+)?(?:not\s+found|unknown|
             not\s+listed|not\s+known|not\s+valid|invalid|nonexistent|non-existent)\b
          | \b(?:address|recipient|mailbox|account|user)\b[^.;\n]{0,40}?
            \b(?:couldn't|could\s+not|cannot|can't|wasn't|was\s+not)\s+be(?:en)?\s+found\b
          | \bwasn't\s+found\s+at\b | \brecipnotfound\b | \brecipientnotfound\b | \bno\s+mailbox\b
          | \bmailbox\s+not\s+found\b | \bbad\s+destination\s+mailbox\b
          | \bnot\s+listed\s+in\s+(?:the\s+)?(?:domino|public)
          | \bnicht\s+im\s+[\w-]*verzeichnis\s+aufgef\w*     # Domino in German
          | \bne\s+figure\s+pas\s+dans\s+l'annuaire\b
          | \bnot\s+a\s+(?:valid|known)\s+(?:user|recipient|mailbox|account)\b
          | \binvalid\s+(?:recipient|mailbox|user|account|e-?mail\s+address|address)\b
          | \bunknown\s+or\s+illegal\s+alias\b | \bnot\s+our\s+customer\b
          | \bno\s+(?:such\s+)?(?:person|user)\s+(?:at|here)\b
          | \baccount\s+(?:has\s+been\s+|was\s+)?(?:closed|deleted|removed|terminated|discontinued|cancelled|canceled)\b
          | \b(?:mailbox|user|address)\s+(?:has\s+been\s+|was\s+)?(?:closed|deleted|removed|terminated|discontinued)\b
          | \bno\s+longer\s+(?:in\s+use|valid|available|with|employed|works?|accept|at\s+this)
          | \bmailfile\s+does\s+not\s+exist\b | \bno\s+matching\s+(?:person|entry)\b | \bunavailable\s+mail\s+user\b
          | \bmailbox\s+name\s+(?:not\s+allowed|invalid)\b | \bunbekannt\b | \bexistiert\s+nicht\b
          | \b(?:utilisateur|destinataire|adresse)\s+(?:\S+\s+)?(?:inconnu|inexistant|invalide)e?\b
          | \bn'existe\s+pas\b | \bno\s+existe\b | \bn[aã]o\s+existe\b | \binesistente\b | \bsconosciuto\b
          | \bнет\s+такого\b | \bне\s+существует\b | \bпользовател\w*\s+не\s+найден | 该用户不存在 | 用户不存在
          | 收件人不存在 | 存在しません | 宛先不明 | \bdesconocido\b | \bdesconhecido\b | \bunbekannter\s+(?:empf|benutzer)
          | \bgibt\s+es\s+nicht\b""", about_address=True),
        _cause("mailbox-unavailable", HARD_BOUNCE, "says the mailbox is unavailable (RFC 5321's 550 text)", r"""
            \bmailbox\s+(?:is\s+)?(?:unavailable|not\s+available)\b | \brequested\s+action\s+not\s+taken:\s+mailbox\b
          | \bmailbox\s+\S+\s+is\s+unavailable\b""", about_address=True),
        _cause("loop", DNS_ERROR, "says the mail loops (a routing mistake)", r"""
            \bloops?\s+back\s+to\s+myself\b | \bmail\s+loop | \brouting\s+loop\b | \bloop\s+detected\b
          | \bhop\s+count\s+exceeded\b | \btoo\s+many\s+hops\b | \bexceeded\s+\d+\s+hops\b
          | \bmessage\s+is\s+looping\b
          | \bmaximum\s+hop\s+count\b"""),
        _cause("transient", TRANSIENT, "says the failure is temporary", r"""
            \bdelay(?:ed)?\b | \bwill\s+(?:be\s+)?retr(?:y|ied)\b | \bstill\s+(?:being\s+)?(?:trying|retried)\b
          | \bwill\s+(?:continue|keep)\s+(?:to\s+)?(?:try|trying|retry|retrying)\b | \bnot\s+yet\s+been\s+delivered\b
          | \btry\s+(?:again\s+)?later\b | \btemporar(?:y|ily)\b | \bgr[ae]ylist | \bdeferred\b | \btimed?\s+out\b
          | \btimeout\b | \bconnection\s+(?:refused|reset|lost|closed)\b | \bno\s+route\s+to\s+host\b
          | \bnetwork\s+is\s+unreachable\b | \blost\s+connection\b | \bnetwork\s+error\b
          | \bcould\s+not\s+connect\b | \bunable\s+to\s+connect\b | \bno\s+answer\b | \bsystem\s+(?:problem|busy)\b
          | \bservice\s+(?:not\s+)?(?:temporarily\s+)?(?:unavailable|available)\b | \bresources\s+temporarily\b"""),
    )


#: Statuses (RFC 3463, RFC 5248, RFC 7293, RFC 7372, RFC 7505, Microsoft's x.y.zzz) whose
#: meaning is the address itself: (type, meaning). A text cause that is not about the address
#: overrides them (the text is more specific about *why* than a receiver's choice of code).
_ADDRESS_STATUS: dict[str, tuple[BounceType, str]] = {
    "5.1.1": (HARD_BOUNCE, "bad destination mailbox address"),
    "5.1.2": (HARD_BOUNCE, "bad destination system (domain) address"),
    "5.1.3": (BAD_EMAIL_ADDRESS, "bad destination mailbox address syntax"),
    "5.1.6": (HARD_BOUNCE, "destination mailbox has moved"),
    "5.1.10": (HARD_BOUNCE, "recipient address has null MX"),
    "5.7.17": (HARD_BOUNCE, "mailbox owner has changed"),
    "5.7.18": (HARD_BOUNCE, "domain owner has changed"),
    "5.4.310": (HARD_BOUNCE, "DNS domain does not exist (Microsoft)"),
}
#: Statuses that name a cause that is not the address: (type, meaning). Only a text cause of the
#: same family (virus, DMARC, ...) refines them; a text saying "user unknown" does not make
#: them suppress, except for the generic policy code 5.7.1 (see :func:`explain`).
_CAUSE_STATUS: dict[str, tuple[BounceType, str]] = {
    "5.1.4": (SOFT_BOUNCE, "destination mailbox address ambiguous"),
    "5.1.7": (BLOCKED, "bad sender's mailbox address syntax"),
    "5.1.8": (BLOCKED, "bad sender's system address"),
    "5.1.90": (SOFT_BOUNCE, "sender's daily recipient limit reached (Microsoft)"),
    "5.2.1": (SOFT_BOUNCE, "mailbox disabled, not accepting messages"),
    "5.2.2": (SOFT_BOUNCE, "mailbox full"),
    "5.2.3": (SOFT_BOUNCE, "message length exceeds administrative limit"),
    "5.2.4": (SOFT_BOUNCE, "mailing list expansion problem"),
    "5.3.1": (SOFT_BOUNCE, "mail system full"),
    "5.3.2": (SOFT_BOUNCE, "system not accepting network messages"),
    "5.3.4": (SOFT_BOUNCE, "message too big for system"),
    "5.4.3": (DNS_ERROR, "directory server (DNS) failure"),
    "5.4.6": (DNS_ERROR, "routing loop detected"),
    "5.4.8": (DNS_ERROR, "MX points to the local host (Microsoft)"),
    "5.4.14": (DNS_ERROR, "hop count exceeded (Microsoft)"),
    "5.4.7": (SOFT_BOUNCE, "delivery time expired"),
    "5.4.300": (SOFT_BOUNCE, "message expired (Microsoft)"),
    "5.4.312": (DNS_ERROR, "DNS query failed (Microsoft)"),
    "5.4.316": (SOFT_BOUNCE, "message expired, connection refused (Microsoft)"),
    "5.5.3": (SOFT_BOUNCE, "too many recipients"),
    "5.7.13": (SOFT_BOUNCE, "user account disabled"),
    "5.7.26": (DMARC_POLICY, "multiple authentication checks (DMARC) failed"),
    "5.7.27": (BLOCKED, "sender address has null MX"),
    "5.7.509": (DMARC_POLICY, "sending domain does not pass DMARC (Microsoft)"),
}
#: Text causes that refine a fixed cause status (e.g. 5.7.26 stays DMARCPolicy unless a virus).
_REFINING = {"virus", "dmarc"}
#: Text causes that override 5.2.1 ("mailbox disabled").
_OVER_5_2_1 = {"user", "virus", "dmarc", "sender", "relay", "blocked", "rate", "quota", "size"}


@dataclass(frozen=True)
class Verdict:
    """A classification and why: the rule that decided, the status and reply code it used,
    and the words of the text that matched (empty when the text did not decide)."""

    type: BounceType
    rule: str
    status: str | None = None
    smtp_code: int | None = None
    matched: str = ""
    meaning: str = ""

    @property
    def reason(self) -> str:
        """One line for an operator: which rule, status and text decided."""
        parts = [self.rule]
        if self.status:
            parts.append(f"status {self.status}")
        if self.smtp_code:
            parts.append(f"reply {self.smtp_code}")
        if self.matched:
            parts.append(f"text {self.matched!r}")
        if self.meaning:
            parts.append(self.meaning)
        return "; ".join(parts)


#: The causes a text can name, most specific first: the first that matches is the text's
#: cause. A cause about the sender, the content or the rate of mail comes before one about
#: the address, so that "5.1.1 ... blocked as spam" or "user ... is over quota" never
#: suppresses.
CAUSES: tuple[Cause, ...] = _causes()
_CAUSES_BY_NAME = {cause.name: cause for cause in CAUSES}


def normalize_status(value: str | None) -> str | None:
    """The first enhanced status code in ``value`` ("5.1.1"), or None."""
    if not value:
        return None
    m = _STATUS.search(value[:4096])
    return f"{m.group(1)}.{m.group(2)}.{int(m.group(3))}" if m else None


def reply_code(text: str) -> int | None:
    """The SMTP reply code that ``text`` starts with (or that follows "said:" and the like)."""
    head = text[:4096]
    m = _REPLY_START.search(head) or _REPLY_AFTER.search(head)
    return int(m.group(1)) if m else None


def text_cause(text: str) -> tuple[Cause, str] | None:
    """The first cause (see :data:`CAUSES`) that ``text`` names, with the words that matched."""
    text = text[:16384]
    for cause in CAUSES:
        m = cause.pattern.search(text)
        if m:
            if cause.name == "domain" and _TEMPORARY_LOOKUP.search(text):
                # "Host not found, try again", "looking up its address failed: timeout": the
                # lookup failed for now, which says nothing about the domain
                cause = _CAUSES_BY_NAME["dns-temporary"]
            return cause, " ".join(m.group(0).split())
    return None


#: The name a failed lookup was about (Postfix: "Name service error for name=mx.example.org type=A").
#: The name whose lookup failed: Postfix's "name=", sendmail's "(Name server: <name>: host not found)".
_LOOKED_UP_NAME = re.compile(r"(?:\bname=|\bname\s+server:\s*)([A-Za-z0-9][A-Za-z0-9.-]{0,252})", re.I)
_TEMPORARY_LOOKUP = re.compile(r"\btry\s+again\b | \btemporar | \btimed?\s*out\b | \btimeout\b | \bservfail\b"
                               r" | \bdid\s+not\s+complete\b | \bfor\s+now\b", _FLAGS)


def text_label(text: str) -> str | None:
    """The name of the cause ``text`` names (``"user"``, ``"quota"``, ...), or None."""
    found = text_cause(text)
    return found[0].name if found else None


def _pick_status(status: str | None, text: str) -> str | None:
    """The given status, unless it is generic (X.0.0) and the text has a specific one."""
    given = normalize_status(status)
    in_text = normalize_status(text)
    if given is None:
        return in_text
    if given.endswith(".0.0") and in_text and in_text[0] == given[0] and not in_text.endswith(".0.0"):
        return in_text
    return given


def classify(status: str | None, text: str, smtp_code: int | None = None, *,
             recipient: str | None = None) -> BounceType:
    """The bounce type of a failure; see :func:`explain`."""
    return explain(status, text, smtp_code, recipient=recipient).type


def explain(status: str | None, text: str, smtp_code: int | None = None, *,
            recipient: str | None = None) -> Verdict:
    """Classify a failure from its enhanced status code, its text and its reply code, and say why.

    ``status`` may be None (it is then looked for in ``text``); ``smtp_code`` likewise. The most
    specific evidence wins; see CLASSIFICATION in the module documentation. ``recipient``, when
    known, tells a domain that does not exist from a mail host of it that does not (Postfix's
    "name=", sendmail's "Name server:" of the failed lookup).
    """
    text = text or ""
    norm = _pick_status(status, text)
    if smtp_code is None:
        smtp_code = reply_code(text)
    found = text_cause(text)
    if found and found[0].name == "domain" and recipient and "@" in recipient:
        looked_up = _LOOKED_UP_NAME.search(text)
        domain = recipient.rpartition("@")[2].rstrip(".").lower()
        if looked_up and looked_up.group(1).rstrip(".").lower() != domain:
            found = (_CAUSES_BY_NAME["mail-host-missing"], found[1])
    cause, matched = found if found else (None, "")
    klass = int(norm[0]) if norm else (smtp_code // 100 if smtp_code and 200 <= smtp_code < 600 else None)

    def by_text(rule: str) -> Verdict:
        assert cause is not None
        return Verdict(cause.type, rule, norm, smtp_code, matched, f"the text {cause.meaning}")

    if klass == 2:
        return Verdict(UNKNOWN, "success", norm, smtp_code, meaning="not a failure")
    if klass == 4:
        if cause is not None and cause.name in ("quota", "expired"):
            return by_text("temporary+text")
        if smtp_code is not None and smtp_code // 100 == 5:
            return Verdict(SOFT_BOUNCE, "temporary-status-given-up", norm, smtp_code, matched if cause else "",
                           "a temporary status in a permanent reply: given up after temporary failures")
        if norm in ("4.2.2", "4.3.1"):
            return Verdict(SOFT_BOUNCE, "temporary-status", norm, smtp_code, meaning="mailbox or system full")
        return Verdict(TRANSIENT, "temporary", norm, smtp_code, matched if cause else "",
                       "a temporary failure: the server will retry")
    if klass == 5:
        return _explain_permanent(norm, smtp_code, cause, matched, by_text, text)
    if cause is not None:
        return by_text("text")
    return Verdict(UNKNOWN, "no-evidence", norm, smtp_code, meaning="no status, reply code or known text")


def _explain_permanent(norm: str | None, smtp_code: int | None, cause: Cause | None, matched: str,
                       by_text: Any, text: str) -> Verdict:
    if cause is not None and cause.type is TRANSIENT:
        # a permanent failure after temporary ones ("Service unavailable", "timed out"):
        # given up, and no evidence against the address
        return Verdict(SOFT_BOUNCE, "permanent-after-temporary", norm, smtp_code, matched,
                       "a permanent failure whose text says the cause was temporary")
    if norm in _ADDRESS_STATUS:
        kind, meaning = _ADDRESS_STATUS[norm]
        if cause is not None and not cause.about_address:
            return by_text("text-over-address-status")   # "5.1.1 ... spam", "5.1.1 ... over quota"
        if norm == "5.1.2" and cause is not None and cause.name == "dns-temporary":
            return by_text("text-over-address-status")
        if cause is not None and cause.name == "syntax":
            return by_text("address-status+text")
        return Verdict(kind, "address-status", norm, smtp_code, matched, meaning)
    if norm in _CAUSE_STATUS:
        kind, meaning = _CAUSE_STATUS[norm]
        if cause is not None and cause.name in _REFINING and cause.type is not kind:
            return by_text("text-refines-status")
        if norm == "5.2.1" and cause is not None and cause.name in _OVER_5_2_1:
            # receivers use 5.2.1 for more than a disabled mailbox: "does not exist" (the
            # address is gone), a rate (Gmail), a policy refusal (AOL)
            return by_text("text-over-status")
        agreeing = matched if cause is not None and cause.type is kind else ""
        return Verdict(kind, "cause-status", norm, smtp_code, agreeing, meaning)
    subject = int(norm.split(".")[1]) if norm else None
    if subject == 7:
        if norm == "5.7.1" and cause is not None and cause.name in ("user", "domain"):
            # The generic "delivery not authorized" code, with a text that only says the address
            # is gone (policy words would have matched first): the text is the more specific.
            return by_text("text-over-policy-status")
        if cause is not None and not cause.about_address and cause.type is not BLOCKED:
            return by_text("text-refines-policy-status")
        return Verdict(BLOCKED, "policy-status", norm, smtp_code, matched,
                       "security or policy status (RFC 3463 X.7.X)")
    if norm == "5.4.1" and _ACCESS_DENIED.search(text):
        # Microsoft 365's directory-based edge blocking: the recipient is not in the
        # organisation's directory ("Recipient address rejected: Access denied").
        return Verdict(HARD_BOUNCE, "microsoft-recipient-not-in-directory", norm, smtp_code,
                       _ACCESS_DENIED.search(text).group(0), "the recipient does not exist (Microsoft 365 5.4.1)")
    if cause is not None:
        return by_text("text" if norm is None or norm.endswith(".0.0") else "text-over-status")
    if subject == 4:
        return Verdict(DNS_ERROR, "routing-status", norm, smtp_code, "", "network or routing status (RFC 3463 X.4.X)")
    if smtp_code in _REPLY5:
        kind, meaning = _REPLY5[smtp_code]
        return Verdict(kind, "reply-code", norm, smtp_code, "", meaning)
    return Verdict(SOFT_BOUNCE, "permanent-no-cause", norm, smtp_code, "",
                   "a permanent failure that names no cause: not evidence that the address is gone")


_ACCESS_DENIED = re.compile(r"recipient\s+address\s+rejected:\s+access\s+denied", re.I)
#: Reply codes with a specific meaning, when neither status nor text names a cause.
_REPLY5: dict[int, tuple[BounceType, str]] = {
    551: (HARD_BOUNCE, "user not local (RFC 5321): the address has moved"),
    552: (SOFT_BOUNCE, "exceeded storage allocation (RFC 5321)"),
    521: (HARD_BOUNCE, "the host does not accept mail (RFC 7504)"),
    556: (HARD_BOUNCE, "the domain does not accept mail (RFC 7504)"),
}


def reply_report(recipient: str | None, smtp_code: int | None, status: str | None, text: str,
                 remote_mta: str | None = None) -> BounceReport:
    """A report for a reply received at delivery (the in-band case)."""
    verdict = explain(status, text, smtp_code, recipient=recipient)
    status = verdict.status
    kind = verdict.type
    action = "delayed" if kind is TRANSIENT or (smtp_code or 0) // 100 == 4 else "failed"
    return BounceReport(type=kind, recipient=recipient, status=status, action=action,
                        diagnostic=_one_line(text), remote_mta=remote_mta, rule=verdict.rule,
                        reason=verdict.reason)


# -- parse_bounce ---------------------------------------------------------------------------

_ADDR = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
_ADDRESS = re.compile(rf"(?<![\w.!#$%&'*+/=?^`{{|}}~-])({_ADDR})(?![\w-]|\.[A-Za-z0-9])")
_ID = re.compile(r"[0-9a-f]{20}")
#: A recipient token (base32 of 20 bytes) in its header field (also quoted, ``> X-...:``) or in
#: a VERP address (``b+<token>@``), in any case.
_TOKEN = re.compile(r"(?:^[ \t>]*" + re.escape(RECIPIENT_TOKEN_HEADER) + r":[ \t]*|(?<![\w.+-])"
                    + re.escape(VERP_PREFIX) + r")([a-z2-7]{32})(?![\w])", re.I | re.M)
_MSGID = re.compile(r"<[^<>\s]{1,250}>")

#: A line that starts a per-recipient paragraph of a plain-text bounce: the address alone
#: (Exim, Sendmail, Gmail, Exchange: "addr (addr)", "addr on <date>") or followed by a colon
#: (qmail, Yahoo, Postfix: "<addr>: host ... said: 550 ..."), or a DSN-like field.
_BLOCK_START = re.compile(rf"""
    ^[ \t>]*(?:(?:Final|Original)-Recipient:\s*(?:[\w-]+;\s*)?)?['"]?<?({_ADDR})>?['"]?(?:<mailto:[^>\s]*>)?
    (?: \s*:(?P<rest>.*) | (?:\s*\([^()\n]{{0,200}}\)|\s+on\s+[^\n]{{0,60}}|\s*\.\.\.[^\n]{{0,200}})?\s*$ )""", re.X)

#: Where the copy of the original message starts in a plain-text bounce or reply.
_COPY_MARKER = re.compile(r"""
    ^[ \t>]*(?:-+[ \t]*)?(?:below\s+this\s+line\s+is\s+a\s+copy\s+of\s+the\s+message
                 | this\s+is\s+a\s+copy\s+of\s+the\s+message
                 | (?:original|unsent|received|returned|undelivered)\s+message\s+(?:follows|headers)
                 | (?:the\s+)?(?:original\s+)?message\s+headers\s+(?:follow|are\s+below)
                 | (?:a\s+)?copy\s+of\s+(?:the\s+)?original\s+message
                 | begin\s+headers | below\s+is\s+a\s+copy\s+of\s+the\s+original\s+message
                 | original\s+message\s*-+ | original\s+message\s*$ )""", re.I | re.X | re.M)

#: Three or more consecutive header fields of a message (a returned original's), one of them a
#: field only a message has (Received, Return-Path, Message-ID, DKIM-Signature, ...). A field
#: starts with its name (or "> " quoting), a continuation line with white space: the two never
#: overlap, so the search stays linear.
_QUOTED_HEADERS = re.compile(r"""
    ^(?=(?:(?:>[ \t]?)*[A-Za-z][A-Za-z0-9-]{0,40}:[^\n]*\n(?:[ \t][^\n]*\n){0,20}){0,3}?
          (?:>[ \t]?)*(?:Received|Return-Path|Message-ID|DKIM-Signature|Authentication-Results|MIME-Version):)
    (?:(?:>[ \t]?)*[A-Za-z][A-Za-z0-9-]{0,40}:[^\n]*\n(?:[ \t][^\n]*\n){0,20}){3}""", re.M | re.X)

#: A line listing the failed recipients (Haraka: "Intended Recipients: <a@b>, <c@d>").
_RECIPIENTS_LINE = re.compile(
    r"^[ \t]*(?:intended\s+|failed\s+|undeliverable\s+)?recipients?(?:\(s\))?:[ \t]*(.{3,2000})$", re.I | re.M)

_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "double-bounce", "mail.daemon"}

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


class _Bounce:
    """One parsed message and what the heuristics need from it."""

    def __init__(self, data: bytes) -> None:
        self.msg = email.message_from_bytes(data, policy=compat32)
        self.parts = _walk(self.msg)
        self.subject = _header(self.msg, "Subject")[:1000]
        self.from_addrs = _addresses_of(self.msg, "From")
        self.own: set[str] = set()
        for name in ("From", "To", "Cc", "Reply-To", "Sender", "Return-Path", "Delivered-To"):
            self.own.update(a.lower() for a in _addresses_of(self.msg, name))
        text = _body_text(self.parts)
        marker = _COPY_MARKER.search(text)
        self.human = text[:marker.start()] if marker else text
        self.copy = text[text.find("\n", marker.end()) + 1:] if marker and "\n" in text[marker.end():] else ""
        if marker is None:
            # a copy of the original's header fields with no line announcing it: the text ends
            # where they start (their DKIM-Signature, Received, ... name no cause of the failure)
            quoted = _QUOTED_HEADERS.search(text[:MAX_TEXT])
            if quoted:
                self.human, self.copy = text[:quoted.start()], text[quoted.start():]
        self.original = self._original()
        if self.original is not None:
            for name in ("From", "Sender", "Return-Path", "Reply-To"):
                self.own.update(a.lower() for a in _addresses_of(self.original, name))
        self.original_message_id, self.mailrelay_id = self._original_ids(text)
        self.recipient_tokens = self._recipient_tokens(data, text)
        self._human_blocks: dict[str, str] | None = None

    # -- the returned original ------------------------------------------------------------

    def _original(self) -> Message | None:
        for part in self.parts:
            ctype = part.get_content_type()
            if ctype in ("message/rfc822", "message/global"):
                payload = part.get_payload()
                if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                    return payload[0]
            elif ctype in ("text/rfc822-headers", "message/rfc822-headers", "message/global-headers"):
                return _parse_headers(_part_text(part))
        if self.copy:
            headers = _parse_headers(self.copy.lstrip("\r\n"))
            if any(headers.get(n) is not None for n in ("Message-ID", "X-Mailrelay-ID", "From", "Subject")):
                return headers
        return None

    def _original_ids(self, text: str) -> tuple[str | None, str | None]:
        message_id = mailrelay_id = None
        if self.original is not None:
            message_id = _msgid(_header(self.original, "Message-ID"))
            mailrelay_id = _mailrelay_id(_header(self.original, "X-Mailrelay-ID"))
        if mailrelay_id is None:
            m = re.search(r"^[ \t>]*X-Mailrelay-ID:[ \t]*([0-9A-Fa-f]{20})\b", text, re.M | re.I)
            mailrelay_id = m.group(1).lower() if m else None
        if message_id is None and self.copy:
            m = re.search(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]{1,250}>)", self.copy, re.M | re.I)
            message_id = m.group(1) if m else None
        return message_id, mailrelay_id

    def _recipient_tokens(self, data: bytes, text: str) -> tuple[str, ...]:
        """Token-shaped strings in the raw message (headers, a message/rfc822 original),
        in its decoded text (quoted copies, encoded parts) and in the returned original's
        header fields; lower case, first seen first."""
        sources = [data.decode("latin-1"), text]
        if self.original is not None:
            sources.append("".join(f"{name}: {' '.join(str(value).split())}\n"
                                   for name, value in self.original.items()))
        tokens: dict[str, None] = {}
        for source in sources:
            for m in _TOKEN.finditer(source):
                tokens.setdefault(m.group(1).lower(), None)
                if len(tokens) >= MAX_TOKENS:
                    return tuple(tokens)
        return tuple(tokens)

    def report(self, kind: BounceType, recipient: str | None, **fields: Any) -> BounceReport:
        message_id = self.original_message_id
        if message_id is None and kind not in (HARD_BOUNCE, SOFT_BOUNCE, TRANSIENT, DNS_ERROR, BLOCKED):
            message_id = _msgid(_header(self.msg, "In-Reply-To"))
        return BounceReport(type=kind, recipient=recipient, original_message_id=message_id,
                            mailrelay_id=self.mailrelay_id, recipient_tokens=self.recipient_tokens, **fields)

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
        blocks = _field_blocks(part)
        reporting_mta = ""
        # a recipient block without Final-Recipient: the next less trusted sources, in order
        fallback_recipients = self.failed_recipients() or self.original_recipients()[:1]
        for block in blocks:
            final = _typed_address(_header(block, "Final-Recipient"))
            original = _typed_address(_header(block, "Original-Recipient"))
            action = _header(block, "Action").strip().lower().split(" ")[0] or None
            status = normalize_status(_header(block, "Status"))
            if not (final or original or action or status):
                reporting_mta = reporting_mta or _strip_type(_header(block, "Reporting-MTA"))
                continue
            if action is None:
                action = {"5": "failed", "4": "delayed", "2": "delivered"}.get(status[0] if status else "5")
            if action in ("delivered", "relayed", "expanded"):
                skipped.append(action)
                continue
            if (original or final) in seen:
                continue  # one report per recipient
            seen.add(original or final)
            diagnostic = _clean_reply(_strip_type(_header(block, "Diagnostic-Code")))
            remote = _strip_type(_header(block, "Remote-MTA")).split(" ")[0].rstrip(".") or None
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

    def human_reason(self, recipient: str | None, dsn_blocks: list[Message]) -> str:
        """The reason the human-readable part gives for ``recipient``: its own paragraph's,
        else the whole text's best reply line unless that line names another recipient."""
        if self._human_blocks is None:
            self._human_blocks = _recipient_blocks(self.human.splitlines()[:5000], self)
        lowered = (recipient or "").lower()
        for address, block in self._human_blocks.items():
            if address.lower() == lowered and block:
                own = _best_reason(block)
                return own[0] if own else block
        reason = _best_reason(self.human)
        if reason is None:
            return ""
        others = {a for b in dsn_blocks for a in _find_addresses(_header(b, "Final-Recipient"))} - {recipient}
        if any(other and other.lower() in reason[0].lower() for other in others):
            return ""
        return reason[0]

    # -- RFC 5965 ------------------------------------------------------------------------

    def arf_reports(self, part: Message) -> list[BounceReport]:
        fields = _field_blocks(part)
        first = fields[0] if fields else Message()
        feedback_type = (_header(first, "Feedback-Type").strip().lower() or None)
        if feedback_type == "virus":
            kind = VIRUS_NOTIFICATION
        elif feedback_type in ("not-spam", "auth-failure"):
            kind = UNKNOWN
        else:
            kind = SPAM_COMPLAINT
        found: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for block in fields:
            for value in _all_headers(block, "Original-Rcpt-To"):
                found.update(dict.fromkeys(_find_addresses(value)))
        recipients = [r for r in found if not _REDACTED.match(r)][:MAX_REPORTS]
        if not recipients:
            recipients = [r for r in self.original_recipients() if not _REDACTED.match(r)][:1]
        agent = _header(first, "User-Agent").strip()
        diagnostic = _one_line(f"Feedback-Type: {feedback_type or '-'}" + (f"; User-Agent: {agent}" if agent else ""))
        source = _header(first, "Reported-Domain").strip() or None
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
        failed = bool(_all_headers(self.msg, "X-Failed-Recipients"))
        ndr = failed or bool(_NDR_BODY.search(head)) or bool(_NDR_SUBJECT.search(self.subject))
        from_daemon = any(a.split("@")[0].lower() in _DAEMONS for a in self.from_addrs)
        if _VIRUS_NOTICE.search(probe):
            return [self.report(VIRUS_NOTIFICATION, self.guess_recipient(), diagnostic=_one_line(self.subject),
                                **_why("virus-notice", _VIRUS_NOTICE, probe, "a filter's notice of a virus"))]
        if _SPAM_NOTICE.search(probe) and not _NDR_BODY.search(head):
            return [self.report(SPAM_NOTIFICATION, self.guess_recipient(), diagnostic=_one_line(self.subject),
                                **_why("spam-notice", _SPAM_NOTICE, probe,
                                       "a filter's notice about a delivered message"))]
        if _CHALLENGE.search(probe) and not (failed or _NDR_BODY.search(head)):
            return [self.report(CHALLENGE_VERIFICATION, self.responder(challenge=True),
                                diagnostic=_one_line(self.subject),
                                **_why("challenge", _CHALLENGE, probe, "asks the sender to prove it is a person"))]
        if ndr or from_daemon:
            return self.ndr_reports()
        if _ADDRESS_CHANGE.search(head):
            return [self.report(ADDRESS_CHANGE, self.responder(), diagnostic=_one_line(self.subject),
                                **_why("address-change", _ADDRESS_CHANGE, head, "a reply giving a new address"))]
        if self.is_auto_reply():
            return [self.report(AUTO_RESPONDER, self.responder(), diagnostic=_one_line(self.subject),
                                rule="auto-reply", reason=f"auto-reply; {self.auto_reply_evidence()}")]
        if _UNSUBSCRIBE_SUBJECT.search(self.subject) or _UNSUBSCRIBE_BODY.search(head):
            return [self.report(UNSUBSCRIBE, self.responder(), diagnostic=_one_line(self.subject),
                                rule="unsubscribe", reason="unsubscribe; the subject or first words ask to be removed")]
        return [self.report(UNKNOWN, None, diagnostic=_one_line(self.subject), rule="not-a-report",
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
                diagnostic = _clean_reply(_strip_type(str(entry.get("diagnosticCode") or ""))) \
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
        auto = _header(self.msg, "Auto-Submitted").strip().lower()
        if auto and not auto.startswith("no"):
            return f"Auto-Submitted: {auto[:40]}"
        for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponse", "X-Autoreply-From", "X-Mail-Autoreply"):
            if self.msg.get(name) is not None:
                return f"header {name}"
        for name in ("Precedence", "X-Precedence"):
            if _header(self.msg, name).strip().lower() == "auto_reply":
                return f"{name}: auto_reply"
        m = _AUTO_SUBJECT.search(self.subject) or _AUTO_BODY.search(self.human[:16384])
        return f"text {' '.join(m.group(0).split())[:80]!r}" if m else ""

    def responder(self, challenge: bool = False) -> str | None:
        """The recipient a reply is about: the original's single To, else who replied."""
        if self.original is not None:
            to = _addresses_of(self.original, "To")
            if len(to) == 1:
                return to[0]
        if challenge:
            found = self.guess_recipient(fallback=False)
            if found:
                return found
        for a in self.from_addrs:
            if a.split("@")[0].lower() not in _DAEMONS:
                return a
        return None

    def candidates(self, text: str) -> list[str]:
        out: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for a in _find_addresses(text):
            if a not in out and a.lower() not in self.own and a.split("@")[0].lower() not in _DAEMONS:
                out[a] = None
        return list(out)

    def failed_recipients(self) -> list[str]:
        """The addresses of X-Failed-Recipients (Exim, Gmail, Microsoft), in order."""
        failed: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for value in _all_headers(self.msg, "X-Failed-Recipients"):
            failed.update(dict.fromkeys(_find_addresses(value)))
        return list(failed)[:MAX_REPORTS]

    def listed_recipients(self) -> list[str]:
        """The addresses of a "Recipients: a, b" line (Haraka's "Intended Recipients:")."""
        m = _RECIPIENTS_LINE.search(self.human[:16384])
        return self.candidates(m.group(1))[:MAX_REPORTS] if m else []

    def original_recipients(self) -> list[str]:
        """The recipients the returned original names (To, Cc), when it is returned."""
        if self.original is None:
            return []
        out: dict[str, None] = {}  # a dict: membership in constant time (a list made this quadratic)
        for name in ("To", "Cc"):
            out.update(dict.fromkeys(a for a in _addresses_of(self.original, name) if a.lower() not in self.own))
        return list(out)

    def guess_recipient(self, fallback: bool = True) -> str | None:
        """The failed recipient when no paragraph names it: the returned original's only
        recipient, else an address in the reason, near a failure phrase, in the text."""
        found = self.candidates(self.human)
        original = self.original_recipients()
        if fallback and len(original) == 1:
            return original[0]
        lowered = {a.lower() for a in original}
        confirmed = [a for a in found if a.lower() in lowered]
        reason = _best_reason(self.human)
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
        blocks = _recipient_blocks(human.splitlines()[:5000], self)
        original = {a.lower() for a in self.original_recipients()}
        named = [a for a in blocks if a.lower() in original]
        recipients: list[str | None] = list(self.failed_recipients() or named or list(blocks)
                                            or self.listed_recipients())
        if not recipients:
            recipients = [self.guess_recipient()]
        global_reason = _best_reason(human)
        head = human[:16384]
        delayed = bool(_DELAY.search(self.subject + "\n" + head))
        failure_notice = bool(_NDR_BODY.search(head) or _NDR_SUBJECT.search(self.subject) or self.failed_recipients())
        reports = []
        for recipient in recipients[:MAX_REPORTS]:
            block = blocks.get(recipient, "") if recipient else ""
            own = _best_reason(block) if block else None
            others = [r for r in recipients if r and r != recipient]
            usable = global_reason if global_reason and not any(
                r.lower() in global_reason[0].lower() for r in others) else None
            reason = own if _has_code(own) else usable if _has_code(usable) else own or usable
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
                diagnostic=_one_line(text or block), remote_mta=next((g for g in remote.groups() if g), None)
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
    found = _find_addresses(str(entry.get("emailAddress") or "")[:1000]) if isinstance(entry, dict) else []
    return found[0] if found else None


def _walk(msg: Message) -> list[Message]:
    """The message's parts in order, not descending into attached messages; bounded."""
    out: list[Message] = []
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack and len(out) < MAX_PARTS:
        part, depth = stack.pop()
        out.append(part)
        if part.get_content_maintype() == "multipart" and depth < MAX_DEPTH:
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((p, depth + 1) for p in reversed(payload[:MAX_PARTS]) if isinstance(p, Message))
    return out


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", "replace")
    except Exception:  # unknown or non-text codec
        return data.decode("utf-8", "replace")


def _part_text(part: Message) -> str:
    """A leaf part's text: transfer encoding and charset decoded, at most MAX_TEXT characters."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        payload = None
    if payload is None:
        raw = part.get_payload()
        return raw[:MAX_TEXT] if isinstance(raw, str) else ""
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode(payload[:MAX_TEXT * 4], charset)[:MAX_TEXT]


class _HTMLText(html.parser.HTMLParser):
    BLOCKS = {"br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "table", "pre", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.out.append(data)


def _html_text(source: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(source[:MAX_TEXT])
        parser.close()
    except Exception:
        pass
    return re.sub(r"[ \t\xa0]+", " ", "".join(parser.out))


def _body_text(parts: list[Message]) -> str:
    """The plain text of the message's own text parts (HTML only when there is no plain text)."""
    plain, markup = [], []
    size = 0
    for part in parts:
        ctype = part.get_content_type()
        if ctype == "text/plain" and not part.is_multipart():
            text = _part_text(part)
            plain.append(text)
            size += len(text)
        elif ctype == "text/html" and not part.is_multipart():
            markup.append(_part_text(part))
        if size >= MAX_TEXT:
            break
    text = "\n".join(plain) if plain else "\n".join(_html_text(m) for m in markup[:4])
    return text.replace("\r\n", "\n").replace("\r", "\n")[:MAX_TEXT]


def _header(msg: Message, name: str) -> str:
    """A header field's value, RFC 2047 decoded, as text ("" when absent)."""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, str):
        value = value[:MAX_TEXT]
    try:
        chunks = email.header.decode_header(value)
        text = "".join(_decode(c, cs) if isinstance(c, bytes) else c for c, cs in chunks)
    except Exception:
        text = str(value)
    return text[:MAX_TEXT]


def _all_headers(msg: Message, name: str) -> list[str]:
    try:
        values = msg.get_all(name) or []
    except Exception:
        return []
    out = []
    for value in values[:MAX_REPORTS]:
        try:
            out.append(str(value)[:MAX_TEXT])
        except Exception:
            continue
    return out


def _addresses_of(msg: Message, name: str) -> list[str]:
    out: list[str] = []
    for value in _all_headers(msg, name)[:10]:
        try:
            pairs = email.utils.getaddresses([_header_value(value[:16384])])
        except Exception:
            pairs = []
        for _, addr in pairs[:50]:
            found = _find_addresses(addr)
            if found and found[0] not in out:
                out.append(found[0])
    return out


def _header_value(value: str) -> str:
    try:
        return "".join(_decode(c, cs) if isinstance(c, bytes) else c for c, cs in email.header.decode_header(value))
    except Exception:
        return value


def _normalize_address(addr: str) -> str:
    local, _, domain = addr.rpartition("@")
    return f"{local}@{domain.rstrip('.').lower()}"


def _find_addresses(text: str) -> list[str]:
    return [_normalize_address(m.group(1)) for m in _ADDRESS.finditer(text[:MAX_TEXT])]


def _typed_address(value: str) -> str | None:
    """``rfc822; <user@example.org>`` -> ``user@example.org``."""
    found = _find_addresses(_strip_type(value))
    return found[0] if found else None


def _strip_type(value: str) -> str:
    """A DSN field without its type (``smtp;``, ``dns;``, ``X-Postfix;``), on one line."""
    value = " ".join(value.split())
    m = re.match(r"[A-Za-z0-9-]{1,40}\s*;\s*", value)
    return value[m.end():] if m else value


def _one_line(text: str) -> str:
    return " ".join(text.split())[:MAX_DIAGNOSTIC]


def _clean_reply(text: str) -> str:
    """A multi-line reply on one line: ``550-5.1.1 a 550-5.1.1 b`` -> ``550 5.1.1 a b``."""
    text = _one_line(text)
    m = re.match(r"([245]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3})\s+)?", text)
    if not m:
        return text
    code, status = m.group(1), m.group(2)
    prefix = rf"\s{code}[ -](?:{re.escape(status)}\s+)?" if status else rf"\s{code}[ -]"
    rest = re.sub(prefix, " ", text[m.end():])
    return " ".join(f"{code} {status + ' ' if status else ''}{rest}".split())[:MAX_DIAGNOSTIC]


def _msgid(value: str) -> str | None:
    m = _MSGID.search(value or "")
    return m.group(0) if m else None


def _mailrelay_id(value: str) -> str | None:
    value = (value or "").strip().lower()
    return value if _ID.fullmatch(value) else None


def _parse_headers(text: str) -> Message:
    return HeaderParser(policy=compat32).parsestr(text[:MAX_TEXT], headersonly=True)


def _field_blocks(part: Message) -> list[Message]:
    """The field blocks of a message/delivery-status or message/feedback-report part."""
    payload = part.get_payload()
    blocks: list[Message] = []
    texts: list[str] = []
    if isinstance(payload, list):
        for sub in payload[:MAX_REPORTS * 2]:
            if not isinstance(sub, Message):
                continue
            if len(sub.keys()):
                blocks.append(sub)
            body = sub.get_payload()
            if isinstance(body, str) and body.strip():
                texts.append(body)
    else:
        texts.append(_part_text(part))
    cte = _header(part, "Content-Transfer-Encoding").strip().lower()
    if not blocks and texts and cte in ("base64", "quoted-printable"):
        # Some servers encode the report; decode it the way the email package decodes a body.
        carrier = Message()
        carrier["Content-Transfer-Encoding"] = cte
        carrier.set_payload("\n".join(texts))
        texts = [_part_text(carrier)]
    for text in texts:
        for chunk in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n")[:MAX_TEXT])[:MAX_REPORTS * 2]:
            if chunk.strip():
                headers = _parse_headers(chunk.strip("\n") + "\n")
                if len(headers.keys()):
                    blocks.append(headers)
    return blocks


def _best_reason(text: str) -> tuple[str, str | None, int | None] | None:
    """The line of ``text`` most likely to be the remote server's reply, with the following
    lines that continue it: (reason from the reply code on, enhanced status, reply code)."""
    lines = text[:65536].splitlines()
    best, best_score = -1, 0
    for i, line in enumerate(lines[:2000]):
        if len(line) > 2000:
            continue
        code_m = _REPLY_START.search(line) or _REPLY_AFTER.search(line)
        code = int(code_m.group(1)) if code_m and code_m.group(1)[0] in "45" else None
        status = _STATUS.search(line)
        if status and status.group(1) == "2":
            status = None
        score = (2 if code else 0) + (2 if status and code else 1 if status else 0) \
            + (1 if (code or status or len(line) < 300) and text_label(line) else 0)
        if score > best_score:
            best, best_score = i, score
    if best < 0:
        return None
    line = lines[best]
    code_m = _REPLY_START.search(line) or _REPLY_AFTER.search(line)
    code = int(code_m.group(1)) if code_m and code_m.group(1)[0] in "45" else None
    start = code_m.start(1) if code else 0
    parts = [line[start:]]
    indent = len(line) - len(line.lstrip())
    for follow in lines[best + 1:best + 8]:
        stripped = follow.strip()
        if not stripped:
            break
        continued = code is not None and re.match(rf"[\s#]*{code}[ -]", follow)
        if continued:
            parts.append(re.sub(rf"^[\s#]*{code}[ -](?:[245]\.\d{{1,3}}\.\d{{1,3}}\s+)?", "", follow))
        elif len(follow) - len(follow.lstrip()) > indent or (indent and len(follow) - len(follow.lstrip()) == indent
                                                             and not _BLOCK_START.match(follow)
                                                             and not _REPLY_START.search(follow)):
            parts.append(stripped)
        else:
            break
    reason = _clean_reply(" ".join(parts)).strip("'\"<> #")
    if reason.endswith(")") and reason.count(")") > reason.count("("):
        reason = reason[:-1]
    status_m = _STATUS.search(reason)
    status = normalize_status(status_m.group(0)) if status_m and status_m.group(1) != "2" else None
    return reason, status, code


def _recipient_blocks(lines: list[str], bounce: _Bounce) -> dict[str, str]:
    """Per-recipient paragraphs of a plain-text bounce: address -> the paragraph's text."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        m = _BLOCK_START.match(line) if len(line) < 1000 else None
        if m:
            addr = _normalize_address(m.group(1))
            if current is not None and blocks.get(addr) is current:
                current.append(line)  # the reply repeats the address (Postfix)
                continue
            if addr.lower() in bounce.own or addr.split("@")[0].lower() in _DAEMONS:
                current = None
                continue
            current = blocks.setdefault(addr, [])
            if current:
                current.append("")
            rest = (m.group("rest") or "").strip()
            if rest:
                current.append(rest)
            continue
        if current is None:
            continue
        if not line.strip():
            if any(s.strip() for s in current):
                current = None
            continue
        if len(current) < 40:
            current.append(line)
    out = {}
    for addr, text in blocks.items():
        paragraphs = "\n".join(text).split("\n\n")
        # Prefer the paragraph with a reply code when the address appears twice (Exchange).
        scored = sorted(paragraphs, key=lambda p: -((_best_reason(p) or ("", None, None))[2] is not None))
        out[addr] = scored[0] if scored else ""
    return out


def _has_code(reason: tuple[str, str | None, int | None] | None) -> bool:
    return bool(reason and (reason[1] or reason[2]))
