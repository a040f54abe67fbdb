"""
bounceclassify: the bounce types, and the classifier that gives a delivery failure its type.

JOB
    The taxonomy and the one classifier for both ends of a bounce. At
    delivery, :func:`classify` turns a remote server's reply (enhanced
    status code, text, reply code) into a :class:`BounceType`, and
    :func:`reply_report` into a :class:`BounceReport`;
    :mod:`mailrelay.mail.bounceparse` classifies what a returned bounce says
    about each recipient with the same :func:`explain`. The type names and
    codes (:data:`BOUNCE_TYPES`) are Postmark's; :data:`SUPPRESSING_TYPES`
    are those that deactivate an address, :data:`COARSE_CLASSES` groups the
    types into hard, soft, complaint, autoreply and unknown (bench/bounces.py
    measures them).

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

SECURITY
    The texts classified come from remote servers and from bounces anyone
    can forge: every byte is untrusted. Only the first 16,384 characters of
    a text (4,096 for a status or reply code) are searched, and the regular
    expressions run in linear time. A forged bounce can choose its type, so
    the classifier errs towards not suppressing: only the address-level
    causes above, and complaints, suppress (:data:`SUPPRESSING_TYPES`); a
    caller must still check that the message and recipient are its own before
    suppressing (:mod:`mailrelay.services.bounces` does so with a verified
    recipient token).

STANDARDS
    RFC 3463 and RFC 5248 (enhanced status codes), RFC 5321 (reply codes),
    RFC 7504 (521, 556), RFC 7505 (null MX, 5.1.10, 5.7.27), RFC 7372
    (5.7.20-5.7.26), RFC 7293 (5.7.17, 5.7.18). Type names and codes:
    Postmark's bounce types (BadEmailAddress 100000, DMARCPolicy 100009
    included).

DIAGNOSTICS
    None: :func:`explain` always returns a :class:`Verdict` (Unknown, rule
    ``no-evidence``, when nothing decides), whose ``reason`` names the rule,
    status, reply code and words of the text that decided.

CONFIGURATION
    None: reads no config key and owns no file or Redis data. It recognises
    mailrelay's own refusal of a non-public destination by the setting that
    text names (:data:`PRIVATE_DESTINATIONS_SETTING`, which :mod:`mailrelay.smtp.destinations` quotes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

#: The setting that allows delivery to private addresses; the refusal and its bounce name it.
PRIVATE_DESTINATIONS_SETTING = "[delivery] allow_private_destinations"


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
ENHANCED_STATUS = re.compile(r"(?<![\w.])([245])\.([0-7])\.(\d{1,3})(?![\w]|\.\d)")
#: A reply code at the start of a line (after punctuation such as ``#``, ``<<<``, ``(``).
REPLY_START = re.compile(r"^[\s#(<'\"\[]*([245]\d\d)(?=[\s:-]|$)")
#: A reply code after a word that introduces one.
REPLY_AFTER = re.compile(r"(?:said|returned|reason|error|<<<|response|smtp)\W{0,4}([245]\d\d)(?=[\s:-]|$)", re.I)


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
               re.escape(f"({PRIVATE_DESTINATIONS_SETTING} = false)")),
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
    m = ENHANCED_STATUS.search(value[:4096])
    return f"{m.group(1)}.{m.group(2)}.{int(m.group(3))}" if m else None


def reply_code(text: str) -> int | None:
    """The SMTP reply code that ``text`` starts with (or that follows "said:" and the like)."""
    head = text[:4096]
    m = REPLY_START.search(head) or REPLY_AFTER.search(head)
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
                        diagnostic=one_line(text), remote_mta=remote_mta, rule=verdict.rule,
                        reason=verdict.reason)


def one_line(text: str) -> str:
    """``text`` on one line, white space folded, at most :data:`MAX_DIAGNOSTIC` characters."""
    return " ".join(text.split())[:MAX_DIAGNOSTIC]
