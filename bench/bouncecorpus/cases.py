"""
cases: every failure the bounce corpus provokes, the little world it happens in, and the label
each bounce gets.

A *case* is one message: its envelope sender (``mailer+<id>@sender.example``, so that the
bounce comes back to an address that names the case), its recipients, and how the world makes
each recipient fail: the reply the scripted destination server gives at MAIL, RCPT or end of
DATA, or a DNS answer (NXDOMAIN, null MX, no records, SERVFAIL), a refused connection, a
greeting that refuses. The label is decided here, from the cause, before any MTA runs; the
MTAs only decide how the failure is worded.

Recipient local parts are neutral names (``m.weber17``): an address never says what happens to
it, so that a classifier cannot read the answer from the address.

Coarse classes: ``hard`` (the address is gone: the only class that suppresses), ``soft`` (any
failure that says nothing against the address), ``complaint``, ``autoreply``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

SENDER_DOMAIN = "sender.example"
MTA_HOSTNAME = "mta.relay.test"
MTA_IP = "127.0.0.1"
DNS_IP = "127.0.0.1"
COLLECTOR_IP = "127.0.0.3"
REFUSED_IP = "127.0.0.9"          # nothing listens there: connection refused

GMAIL = "https://support.google.com/a/answer/3726730"
MICROSOFT = ("https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/"
             "non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online")
YAHOO = "https://senders.yahooinc.com/smtp-error-codes/ (also https://help.yahoo.com/kb/SLN3444.html)"
APPLE = "https://smtp.codes/icloud (Apple's postmaster page: https://support.apple.com/en-us/HT204137)"
GMX = ("https://smtp.codes/unitedinternet/ and https://newsroom.gmx.net/2017/09/28/"
       "unzustellbar-fehlermeldungen-email/")
WEBDE = "https://postmaster.web.de/de/fehlermeldungen"
ORANGE = ("https://bentonow.com/smtp-errors/orange (Orange's postmaster page: https://postmaster.orange.fr); "
          "OFR_999: https://www.suped.com/knowledge/email-deliverability/technical/"
          "what-causes-email-delays-and-ofr_999-errors-when-sending-to-orangefr")
MAILRU = ("https://errorsmaster.ru/oshibka-550-spam-message-rejected, "
          "https://viws.ru/en/poterya-pochtovyh-soobshchenii-oshibki-pochtovoi-sistemy.html, "
          "https://mailout.ru/2015/09")
QQ = "https://smtp.codes/qq (QQ's own help pages: http://service.exmail.qq.com/cgi-bin/help?subtype=1&&id=20022)"


@dataclass(frozen=True)
class Host:
    """One scripted destination SMTP server (its own loopback address and host name)."""
    key: str
    ip: str
    hostname: str
    domains: tuple[str, ...]
    greeting: Optional[str] = None      # None: "220 <hostname> ESMTP"


HOSTS = [
    Host("dest", "127.0.0.2", "mx.dest.example", ("dest.example", "dest2.example")),
    Host("connect554", "127.0.0.4", "mx.rbl-reject.example", ("rbl-reject.example",),
         "554 5.7.1 mx.rbl-reject.example Service unavailable; Client host [127.0.0.1] blocked "
         "using zen.dnsbl.example; https://dnsbl.example/query/ip/127.0.0.1"),
    Host("connect421", "127.0.0.5", "mx.busy.example", ("busy.example",),
         "421 4.7.0 mx.busy.example Too many concurrent SMTP connections; please try again later."),
    Host("gmail", "127.0.0.10", "mx.gmail.example", ("gmail.example",),
         "220 mx.gmail.example ESMTP d9443c01a7336-21c2ac3f3b4si - gsmtp"),
    Host("microsoft", "127.0.0.11", "contoso-example.mail.protection.outlook.example",
         ("contoso.example", "outlook.example"),
         "220 BN8NAM12FT012.mail.protection.outlook.example Microsoft ESMTP MAIL Service ready"),
    Host("yahoo", "127.0.0.12", "mta7.am0.yahoodns.example", ("yahoo.example",),
         "220 mta7.am0.yahoodns.example ESMTP ready"),
    Host("apple", "127.0.0.13", "mx01.mail.icloud.example", ("icloud.example",),
         "220 mx01.mail.icloud.example ESMTP"),
    Host("gmx", "127.0.0.14", "mx00.emig.gmx.example", ("gmx.example", "webde.example"),
         "220 gmx.example (mxgmx001) Nemesis ESMTP Service ready"),
    Host("orange", "127.0.0.15", "smtp-in.orange.example", ("orange.example",),
         "220 mwinf5c10 ME ESMTP server ready"),
    Host("mailru", "127.0.0.16", "mxs.mail.example", ("mailru.example",),
         "220 mx.mail.example ESMTP ready"),
    Host("qq", "127.0.0.17", "mx3.qq.example", ("qq.example",),
         "220 newxmesmtplogicsvrszb6.qq.example XMail Esmtp QQ Mail Server."),
]


@dataclass(frozen=True)
class Rcpt:
    """One recipient and how it fails. ``rcpt``/``data``: the scripted reply (None = accept)."""
    address: str
    type: Optional[str]                 # Postmark type; None = delivered, not a failure
    cls: Optional[str] = None
    rcpt: Optional[str] = None
    data: Optional[str] = None
    why: str = ""


@dataclass(frozen=True)
class Case:
    name: str
    rcpts: tuple[Rcpt, ...]
    mail: Optional[str] = None          # reply to MAIL FROM (refuses the sender)
    source: Optional[str] = None        # where the provider documents the reply
    expires: bool = False               # temporary failure: the bounce is a queue expiry
    mtas: Optional[tuple[str, ...]] = None   # None: every MTA
    profile: str = "fail"               # "delay": the MTA keeps retrying; the bounce is its delay warning
    dsn: tuple[str, ...] = ()           # DSN options for the sendmail command (-N, -R, -V)

    @property
    def failed(self) -> list[Rcpt]:
        return [r for r in self.rcpts if r.type is not None]


NEUTRAL_NAMES = ("m.weber", "anna.k", "jlopez", "p.novak", "sofia", "t.nguyen", "olga.i", "k.tanaka",
                 "lea.martin", "r.singh", "e.rossi", "h.kim", "n.berg", "carla.m", "d.osei", "y.chen")


def R(domain: str, type: Optional[str], cls: Optional[str] = None, *, rcpt: Optional[str] = None,
      data: Optional[str] = None, why: str = "") -> Rcpt:
    """A recipient at ``domain`` whose neutral local part is chosen later from the case's name."""
    return Rcpt(f"?@{domain}", type, cls, rcpt, data, why)


def _name_recipients(all_cases: list[Case]) -> list[Case]:
    """Give every "?@domain" recipient a neutral local part derived from its case's name and
    position only, so that adding a case never renames the recipients of another."""
    import dataclasses
    import hashlib
    taken: set[str] = set()
    named = []
    for case in all_cases:
        rcpts = []
        for i, r in enumerate(case.rcpts):
            if r.address.startswith("?@"):
                digest = int.from_bytes(hashlib.sha256(f"{case.name}/{i}".encode()).digest()[:8], "big")
                n = 10 + digest % 900
                while True:
                    address = f"{NEUTRAL_NAMES[digest % len(NEUTRAL_NAMES)]}{n}{r.address[1:]}"
                    if address not in taken:
                        break
                    n += 1
                r = dataclasses.replace(r, address=address)
            taken.add(r.address)
            rcpts.append(r)
        named.append(dataclasses.replace(case, rcpts=tuple(rcpts)))
    return named


def H(domain: str, rcpt: str, why: str, **kw) -> Rcpt:
    return R(domain, "HardBounce", "hard", rcpt=rcpt, why=why, **kw)


def S(domain: str, type: str, why: str, *, rcpt: Optional[str] = None, data: Optional[str] = None) -> Rcpt:
    return R(domain, type, "soft", rcpt=rcpt, data=data, why=why)


D = "dest.example"
# OpenSMTPD 6.8 implements neither null MX nor "no MX and no address": it retries such a domain
# until the queue lifetime runs out, and its report says only "Envelope expired". Nothing in
# that bounce could tell a classifier the cause, so those cases are not run on it.
NO_EVIDENCE_ON_OPENSMTPD = ("postfix", "exim", "sendmail", "haraka", "courier")
# Courier reports an MX that points at a missing host as "No such domain.", the same words as
# for NXDOMAIN: its bounce would contradict the cause (the domain exists), so not run there.
NOT_ON_COURIER = ("postfix", "exim", "opensmtpd", "sendmail", "haraka")
GONE = "the destination says the mailbox does not exist: the address is gone"
EXPIRED = ("every attempt got a temporary reply until the MTA's queue lifetime ran out: "
           "the message was given up, nothing is said against the address")

CASES: list[Case] = [
    # -- the address is gone -----------------------------------------------------------------
    Case("unknown-postfix-virtual", (H(D, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table", GONE),)),
    Case("unknown-postfix-local", (H(D, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table", GONE),)),
    Case("unknown-exim-unrouteable", (H(D, "550 Unrouteable address", "an Exim destination: no router accepts the local part, the address does not exist there"),)),
    Case("unknown-sendmail", (H(D, "550 5.1.1 <{rcpt}>... User unknown", GONE),)),
    Case("unknown-exchange-onprem", (H(D, "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found", GONE),)),
    Case("unknown-qmail", (H(D, "550 sorry, no mailbox here by that name. (#5.1.1)", GONE),)),
    Case("unknown-generic-550", (H(D, "550 User unknown", "a generic 550 without enhanced code whose text says user unknown"),)),
    Case("unknown-generic-550-no-such-user", (H(D, "550 No such user here", "a 550 without enhanced code that says no such user"),)),
    Case("unknown-5.0.0-does-not-exist", (H(D, "550 5.0.0 <{rcpt}>: mailbox does not exist", "generic 5.0.0 but the text says the mailbox does not exist"),)),
    Case("unknown-554-invalid-recipient", (H(D, "554 5.1.1 <{rcpt}>: Invalid recipient", GONE),)),
    Case("unknown-dovecot-lmtp", (H(D, "550 5.1.1 <{rcpt}> User doesn't exist: {rcpt}", GONE),)),
    Case("unknown-5.1.10", (H(D, "550 5.1.10 <{rcpt}>: Recipient address rejected: not found", "5.1.10: recipient not found"),)),
    Case("unknown-domain-at-mx", (H(D, "550 5.1.2 <{rcpt}>: Recipient address rejected: Domain not found", "the receiving MX says the recipient's domain does not exist (5.1.2)"),)),
    Case("bad-address-syntax", (R(D, "BadEmailAddress", "hard", rcpt="553 5.1.3 <{rcpt}>: Recipient address rejected: bad address syntax", why="the destination calls the address itself invalid (5.1.3): it can never be delivered"),)),
    Case("moved-551", (H(D, "551 5.1.6 User not local; please try <new.address@dest2.example>", "551 5.1.6: the mailbox has moved; the issue counts an address moved as gone"),)),
    # -- mailbox exists but cannot take it now ----------------------------------------------
    Case("disabled-5.2.1", (S(D, "SoftBounce", "550 5.2.1 disabled mailbox: Postmark's SoftBounce covers 'account disabled', and the issue counts a disabled mailbox as a working address", rcpt="550 5.2.1 <{rcpt}>: Mailbox disabled, not accepting messages"),)),
    Case("disabled-inactive", (S(D, "SoftBounce", "5.2.1 inactive account: the mailbox exists, it may be reactivated", rcpt="550 5.2.1 <{rcpt}>... User account is inactive"),)),
    Case("quota-552-5.2.2", (S(D, "SoftBounce", "destination answered 552 5.2.2 mailbox full", rcpt="552 5.2.2 <{rcpt}>: Mailbox full"),)),
    Case("quota-550-5.2.2", (S(D, "SoftBounce", "5.2.2 is a full mailbox whatever its class digit", rcpt="550 5.2.2 <{rcpt}>: user is over quota"),)),
    Case("quota-552-no-enhanced", (S(D, "SoftBounce", "552 without enhanced code: exceeded storage allocation is a full mailbox", rcpt="552 Requested mail action aborted: exceeded storage allocation"),)),
    Case("quota-550-text", (S(D, "SoftBounce", "a 550 without enhanced code whose text says the quota is exceeded", rcpt="550 Mailbox quota exceeded for this recipient"),)),
    Case("quota-dovecot-data", (S(D, "SoftBounce", "after DATA the store says quota exceeded (5.2.2)", data="552 5.2.2 <{rcpt}> Quota exceeded (mailbox for user is full)"),)),
    Case("quota-452-expired", (S(D, "SoftBounce", "452 4.2.2 mailbox full on every attempt; " + EXPIRED, rcpt="452 4.2.2 <{rcpt}>: Mailbox full, try again later"),), expires=True),
    Case("too-big-5.3.4", (S(D, "SoftBounce", "the message is too big for the server (552 5.3.4): the address is fine", data="552 5.3.4 Message size exceeds fixed maximum message size"),)),
    Case("too-big-5.2.3", (S(D, "SoftBounce", "the message exceeds the mailbox's size limit (5.2.3): the address is fine", data="552 5.2.3 Message exceeds local size limit."),)),
    Case("system-full-4.3.1-expired", (S(D, "SoftBounce", "452 4.3.1 insufficient system storage; " + EXPIRED, rcpt="452 4.3.1 Insufficient system storage"),), expires=True),
    # -- policy / spam / reputation / authentication ------------------------------------------
    Case("spam-content-5.7.1", (S(D, "SpamNotification", "the content was rejected as spam after DATA", data="550 5.7.1 Message rejected as spam by Content Filtering."),)),
    Case("spam-554-score", (S(D, "SpamNotification", "spam score too high after DATA", data="554 5.7.1 Rejected: message looks like spam (score 12.5 > 5.0)"),)),
    Case("content-policy-554", (S(D, "Blocked", "content refused by policy, not the address", data="554 5.7.1 Message rejected due to content restrictions"),)),
    Case("rbl-rcpt-554", (S(D, "Blocked", "our sending IP is on a block list (reputation)", rcpt="554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.dnsbl.example"),)),
    Case("rbl-connect-554", (R("rbl-reject.example", "Blocked", "soft", why="the destination refused the connection in its greeting: our IP is block-listed"),)),
    Case("relay-denied", (S(D, "Blocked", "the host refused to relay for that domain: says nothing about the mailbox", rcpt="554 5.7.1 <{rcpt}>: Relay access denied"),)),
    Case("recipient-access-denied", (S(D, "Blocked", "a recipient-side access rule refused us; the mailbox is not said to be missing", rcpt="550 5.7.1 <{rcpt}>: Recipient address rejected: Access denied"),)),
    Case("dmarc-5.7.1", (S(D, "DMARCPolicy", "rejected because our domain's DMARC policy failed", data="550 5.7.1 Email rejected per DMARC policy for sender.example"),)),
    Case("spf-5.7.23", (S(D, "Blocked", "SPF authentication failed: about us, not the address", data="550 5.7.23 The message was rejected because of Sender Policy Framework violation"),)),
    Case("tls-required", (S(D, "Blocked", "the server requires TLS; the address is fine", rcpt="530 5.7.0 Must issue a STARTTLS command first"),)),
    Case("virus", (S(D, "VirusNotification", "the content was refused as infected after DATA", data="554 5.7.0 Message rejected: infected by Eicar-Signature"),)),
    Case("blocked-generic-550", (S(D, "Blocked", "a 550 without enhanced code that says blocked", rcpt="550 Message blocked"),)),
    Case("sender-refused-553-5.1.8", (R(D, "Blocked", "soft", why="MAIL FROM refused: the server refuses our sender (5.1.8), nothing about the recipient"),),
         mail="553 5.1.8 <{sender}>: Sender address rejected: Domain not found"),
    Case("sender-refused-550-5.7.1", (R(D, "Blocked", "soft", why="MAIL FROM refused by an access rule on our sender"),),
         mail="550 5.7.1 <{sender}>: Sender address rejected: Access denied"),
    Case("sender-refused-at-rcpt", (S(D, "Blocked", "refused at RCPT, but the text says our *sender* is rejected", rcpt="554 5.7.1 <{sender}>: Sender address rejected: Access denied"),)),
    # -- temporary failures that expire ------------------------------------------------------
    Case("greylist-450-expired", (S(D, "SoftBounce", "greylisting 450 4.2.0 on every attempt; " + EXPIRED, rcpt="450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see http://postgrey.example/help/dest.example"),), expires=True),
    Case("greylist-451-expired", (S(D, "SoftBounce", "greylisting 451 4.7.1 on every attempt; " + EXPIRED, rcpt="451 4.7.1 Please try again later (greylisted)"),), expires=True),
    Case("ratelimit-450-expired", (S(D, "SoftBounce", "rate limiting 450 4.7.1; " + EXPIRED, rcpt="450 4.7.1 <{rcpt}>: Rate limit exceeded, try again later"),), expires=True),
    Case("ratelimit-421-rcpt-expired", (S(D, "SoftBounce", "421 4.7.0 at RCPT and the server closes; " + EXPIRED, rcpt="421 4.7.0 mx.dest.example Too many messages from your IP, slow down"),), expires=True),
    Case("busy-connect-421-expired", (R("busy.example", "SoftBounce", "soft", why="the greeting is 421 on every attempt; " + EXPIRED),), expires=True),
    Case("connection-refused-expired", (R("refused.example", "SoftBounce", "soft", why="the MX refuses TCP connections on every attempt; " + EXPIRED),), expires=True),
    Case("local-error-451-expired", (S(D, "SoftBounce", "451 4.3.0 local error on every attempt; " + EXPIRED, rcpt="451 4.3.0 Requested action aborted: local error in processing"),), expires=True),
    # -- DNS ---------------------------------------------------------------------------------
    Case("dns-nxdomain", (R("no-such-domain.example", "HardBounce", "hard", why="the recipient's domain does not exist (NXDOMAIN): no such domain, the address is gone"),)),
    Case("dns-null-mx", (R("nullmx.example", "HardBounce", "hard", why="the domain publishes a null MX (RFC 7505): it accepts no mail, the address cannot exist"),), mtas=NO_EVIDENCE_ON_OPENSMTPD),
    Case("dns-no-mx-no-address", (R("nomx.example", "HardBounce", "hard", why="the domain exists but has neither MX nor address records: by RFC 5321 section 5.1 it has no mail service at all (like a null MX), so no address there can receive mail"),), mtas=NO_EVIDENCE_ON_OPENSMTPD),
    Case("dns-mx-target-missing", (R("badmx.example", "DnsError", "soft", why="the MX points at a host name that does not exist: the domain's DNS is broken, the address may be fine"),), mtas=NOT_ON_COURIER),
    Case("dns-servfail-expired", (R("servfail.example", "DnsError", "soft", why="the domain's DNS answers SERVFAIL on every attempt until the queue lifetime ran out"),), expires=True),
    # -- several recipients in one message ---------------------------------------------------
    Case("multi-unknown-3", (H(D, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table", GONE),
                             H(D, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table", GONE),
                             H(D, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table", GONE))),
    Case("multi-mixed-unknown-full", (H(D, "550 5.1.1 <{rcpt}>... User unknown", GONE),
                                      S(D, "SoftBounce", "destination answered 552 5.2.2 mailbox full", rcpt="552 5.2.2 <{rcpt}>: Mailbox full"),
                                      R(D, None, why="accepted and delivered: not a failure"))),
    Case("multi-partial-one-unknown", (R(D, None, why="accepted and delivered: not a failure"),
                                       H(D, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in local recipient table", GONE))),
    Case("multi-blocked-and-disabled", (S(D, "Blocked", "recipient-side access rule", rcpt="550 5.7.1 <{rcpt}>: Recipient address rejected: Access denied"),
                                        S(D, "SoftBounce", "disabled mailbox (5.2.1): exists, not gone", rcpt="550 5.2.1 <{rcpt}>: Mailbox disabled, not accepting messages"))),
]

# -- providers: their documented replies, given by our server so the real MTAs wrap them ------
G = "gmail.example"
GMAIL_CASES = [
    Case("gmail-no-such-user", (H(G, "550-5.1.1 The email account that you tried to reach does not exist. Please try\n550-5.1.1 double-checking the recipient's email address for typos or\n550-5.1.1 unnecessary spaces. For more information, go to\n550 5.1.1  https://support.google.com/mail/?p=NoSuchUser d9443c01a7336si - gsmtp", "Gmail's documented 550 5.1.1: the account does not exist"),), source=GMAIL),
    Case("gmail-disabled", (S(G, "SoftBounce", "Gmail's 550 5.2.1 account disabled: the mailbox exists (Postmark: account disabled is SoftBounce)", rcpt="550-5.2.1 The email account that you tried to reach is disabled. For more\n550 5.2.1 information, go to https://support.google.com/mail/?p=DisabledUser d9443c01a7336si - gsmtp"),), source=GMAIL),
    Case("gmail-over-quota-552", (S(G, "SoftBounce", "Gmail's 552 5.2.2 over quota", rcpt="552-5.2.2 The email account that you tried to reach is over quota. Please direct\n552 5.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaPerm d9443c01a7336si - gsmtp"),), source=GMAIL),
    Case("gmail-over-quota-452-expired", (S(G, "SoftBounce", "Gmail's 452 4.2.2 out of storage on every attempt; " + EXPIRED, rcpt="452-4.2.2 The recipient's inbox is out of storage space. Please direct the\n452-4.2.2 recipient to\n452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp d9443c01a7336si - gsmtp"),), source=GMAIL, expires=True),
    Case("gmail-too-big", (S(G, "SoftBounce", "Gmail's 552 5.3.4 size limit: the address is fine", data="552-5.3.4 Your message exceeded Google's message size limits. For more information,\n552 5.3.4 go to https://support.google.com/mail/?p=MaxSizeError d9443c01a7336si - gsmtp"),), source=GMAIL),
    Case("gmail-dmarc-5.7.26", (S(G, "DMARCPolicy", "Gmail's 550 5.7.26 unauthenticated mail refused under the sender domain's DMARC policy", data="550-5.7.26 Unauthenticated email from sender.example is not accepted due to domain's\n550-5.7.26 DMARC policy. Please contact the administrator of sender.example domain if\n550-5.7.26 this was a legitimate mail. To learn about the DMARC initiative, go to\n550 5.7.26  https://support.google.com/mail/?p=DmarcRejection d9443c01a7336si - gsmtp"),), source=GMAIL),
    Case("gmail-spam-5.7.1", (S(G, "SpamNotification", "Gmail's 550 5.7.1 likely unsolicited mail: content judged spam", data="550-5.7.1 [127.0.0.1] Our system has detected that this message is likely\n550-5.7.1 unsolicited mail. To reduce the amount of spam sent to Gmail, this message\n550-5.7.1 has been blocked. For more information, go to\n550 5.7.1  https://support.google.com/mail/?p=UnsolicitedMessageError d9443c01a7336si - gsmtp"),), source=GMAIL),
    Case("gmail-policy-gcdp", (S(G, "Blocked", "a Workspace administrator's custom policy refused the message", data="550 5.7.1 This message violates example.com email policy. - gcdp d9443c01a7336si - gsmtp"),), source=GMAIL),
    Case("gmail-no-ptr-5.7.25", (S(G, "Blocked", "our IP has no PTR record: about us, not the address", rcpt="550-5.7.25 [127.0.0.1] The IP address sending this message does not have a PTR\n550-5.7.25 record setup, or the corresponding forward DNS entry does not point to the\n550-5.7.25 sending IP. As a policy, Gmail does not accept messages from IPs with\n550 5.7.25 missing PTR records. d9443c01a7336si - gsmtp"),), source=GMAIL),
    Case("gmail-rate-421-expired", (S(G, "SoftBounce", "Gmail's 421 4.7.0 unusual rate of unsolicited mail, on every attempt; " + EXPIRED, rcpt="421-4.7.0 [127.0.0.1] Our system has detected an unusual rate of\n421-4.7.0 unsolicited mail originating from your IP address. To protect our\n421 4.7.0 users from spam, mail sent from your IP address has been temporarily rate limited. d9443c01a7336si - gsmtp"),), source=GMAIL, expires=True),
    Case("gmail-receiving-too-fast-expired", (S(G, "SoftBounce", "Gmail's 450 4.2.1 user receiving mail too quickly; " + EXPIRED, rcpt="450-4.2.1 The user you are trying to contact is receiving mail too quickly.\n450-4.2.1 Please resend your message at a later time. If the user is able to\n450 4.2.1 receive mail at that time, your message will be delivered. d9443c01a7336si - gsmtp"),), source=GMAIL, expires=True),
]
M = "contoso.example"
MICROSOFT_CASES = [
    Case("m365-recipient-not-found", (H(M, "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient {rcpt} not found by SMTP address lookup", "Exchange Online 5.1.10: recipient not found"),), source=MICROSOFT),
    Case("m365-dbeb-access-denied", (H(M, "550 5.4.1 Recipient address rejected: Access denied. For more information see https://aka.ms/EXOSmtpErrors [BN8NAM12FT012.eop-nam12.prod.protection.outlook.example]", "Exchange Online 5.4.1 'Recipient address rejected: Access denied' is Directory Based Edge Blocking: the recipient does not exist in the organization"),), source=MICROSOFT),
    Case("m365-banned-ip", (S(M, "Blocked", "Microsoft 5.7.606 banned sending IP: reputation", rcpt="550 5.7.606 Access denied, banned sending IP [127.0.0.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430)"),), source=MICROSOFT),
    Case("m365-dmarc-5.7.509", (S(M, "DMARCPolicy", "Microsoft 5.7.509: the sending domain fails DMARC with policy reject", data="550 5.7.509 Access denied, sending domain sender.example does not pass DMARC verification and has a DMARC policy of reject."),), source=MICROSOFT),
    Case("m365-ip-not-accepted-5.7.708", (S(M, "Blocked", "Microsoft 5.7.708 traffic not accepted from this IP: reputation", rcpt="550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP. For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653 AS(843)"),), source=MICROSOFT),
    Case("m365-mailbox-full", (S(M, "SoftBounce", "Exchange: the recipient's mailbox is full (5.2.2)", data="554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded"),), source=MICROSOFT),
    Case("m365-spam-5.7.501", (S(M, "Blocked", "Microsoft 5.7.501 spam abuse detected from our account: about the sender", rcpt="550 5.7.501 Access denied, spam abuse detected. For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653"),), source=MICROSOFT),
    Case("outlook-blocklist-s3150", (S("outlook.example", "Blocked", "Outlook.com: our network is on their block list", rcpt="550 5.7.1 Unfortunately, messages from [127.0.0.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors."),), source=MICROSOFT),
    Case("m365-server-busy-expired", (S(M, "SoftBounce", "Exchange Online 451 4.7.500 server busy on every attempt; " + EXPIRED, rcpt="451 4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719) [BN8NAM12FT012.eop-nam12.prod.protection.outlook.example]"),), source=MICROSOFT, expires=True),
]
Y = "yahoo.example"
YAHOO_CASES = [
    Case("yahoo-dd-no-account", (H(Y, "554 delivery error: dd This user doesn't have a yahoo.example account ({rcpt}) [0] - mta7.am0.yahoodns.example", "Yahoo's documented 'dd This user doesn't have a ... account': the user ID does not exist"),), source=YAHOO),
    Case("yahoo-dd-disabled", (S(Y, "SoftBounce", "Yahoo: the account is disabled or discontinued: Postmark's SoftBounce covers account disabled", rcpt="554 delivery error: dd Sorry your message to {rcpt} cannot be delivered. This mailbox is disabled (554.30). - mta7.am0.yahoodns.example"),), source=YAHOO),
    Case("yahoo-tss04-expired", (S(Y, "SoftBounce", "Yahoo's 421 4.7.0 [TSS04] deferral on every attempt; " + EXPIRED, rcpt="421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"),), source=YAHOO, expires=True),
    Case("yahoo-bl21-spamhaus", (S(Y, "Blocked", "Yahoo refuses our IP because of a Spamhaus listing", rcpt="553 5.7.1 [BL21] Connections will not be accepted from 127.0.0.1, because the ip is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes"),), source=YAHOO),
    Case("yahoo-policy-5.7.9", (S(Y, "Blocked", "Yahoo refuses the message for policy reasons", data="554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes"),), source=YAHOO),
    Case("yahoo-unauthenticated", (S(Y, "Blocked", "Yahoo refuses unauthenticated mail (neither SPF nor DKIM)", data="550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM."),), source=YAHOO),
    Case("yahoo-resources-421-expired", (S(Y, "SoftBounce", "Yahoo's 421 resources temporarily unavailable on every attempt; " + EXPIRED, rcpt="421 Resources temporarily unavailable. Please try again later"),), source=YAHOO, expires=True),
]
A = "icloud.example"
APPLE_CASES = [
    Case("icloud-user-does-not-exist", (H(A, "550 5.1.1 <{rcpt}>: user does not exist", "iCloud's 550 5.1.1 user does not exist"),), source=APPLE),
    Case("icloud-cs01-policy", (S(A, "Blocked", "iCloud [CS01] local policy rejection: filtering, not the address", data="550 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137"),), source=APPLE),
    Case("icloud-dmarc", (S(A, "DMARCPolicy", "iCloud rejects the message because of the sender domain's DMARC policy", data="550 5.7.1 Your message was rejected due to sender.example's DMARC policy. See https://support.apple.com/en-us/HT204137"),), source=APPLE),
    Case("icloud-spamhaus-dbl", (S(A, "Blocked", "a domain in the message is on Spamhaus DBL: content reputation", data="550 5.7.1 Your email was rejected due to having a domain present in the Spamhaus DBL -- see https://www.spamhaus.org/dbl/"),), source=APPLE),
    Case("icloud-excessive-volume-expired", (S(A, "SoftBounce", "iCloud's 421 4.7.1 excessive volume on every attempt; " + EXPIRED, rcpt="421 4.7.1 Messages to {rcpt} deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137"),), source=APPLE, expires=True),
    Case("icloud-service-unavailable-expired", (S(A, "SoftBounce", "iCloud's 451 4.7.1 service unavailable on every attempt; " + EXPIRED, rcpt="451 4.7.1 Service unavailable - try again later"),), source=APPLE, expires=True),
]
X = "gmx.example"
GMX_CASES = [
    Case("gmx-mailbox-unavailable", (H(X, "550 Requested action not taken: mailbox unavailable", "GMX documents this 550 as 'the specified recipient does not exist'"),), source=GMX),
    Case("gmx-quota", (S(X, "SoftBounce", "GMX: exceeded storage allocation, quota exceeded: a full mailbox", rcpt="552 Requested mail action aborted: exceeded storage allocation, Quota exceeded"),), source=GMX),
    Case("gmx-spf-reject", (S(X, "Blocked", "GMX refuses mail whose originating IP the domain's SPF does not permit: authentication of the sender", rcpt="550 <{sender}>: Reject due to SPF policy. The originating IP of the message is not permitted by the domain owner"),), source=GMX),
    Case("gmx-rate-limit-expired", (S(X, "SoftBounce", "GMX's 421 rate limit reached on every attempt; " + EXPIRED, rcpt="421 Rate limit reached. Please try again later"),), source=GMX, expires=True),
    Case("webde-storage-exhausted", (S("webde.example", "SoftBounce", "Web.de: the user has exhausted the allowed storage space (a full mailbox)", rcpt="550 Benutzer hat das Speichervolumen ueberschritten. / User has exhausted allowed storage space."),), source=WEBDE + " ; text: http://www.sitepackage.de/service/dokumentation/auswertung/typische-fehlermeldungen-bei-unzustellbarkeit.html"),
]
O = "orange.example"
ORANGE_CASES = [
    Case("orange-too-many-connections-expired", (S(O, "SoftBounce", "Orange's 421 OFR004_104 too many connections on every attempt; " + EXPIRED, rcpt="421 mwinf5c10 ME Trop de connexions, veuillez verifier votre configuration. Too many connections, slow down. OFR004_104 [104]"),), source=ORANGE, expires=True),
    Case("orange-service-refused-expired", (S(O, "SoftBounce", "Orange's 421 OFR_999 service refused on every attempt; " + EXPIRED, rcpt="421 mwinf5c10 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR_999 [999]"),), source=ORANGE, expires=True),
]
MR = "mailru.example"
MAILRU_CASES = [
    Case("mailru-spam-rejected", (S(MR, "SpamNotification", "Mail.ru's anti-spam filter rejected the content", data="550 spam message rejected. Please visit https://help.mail.ru/notspam-support/id?c=AbCdEf0123 or report details to abuse@corp.mail.example. Error code: AbCdEf0123. ID: 0123456789ABCDEF."),), source=MAILRU),
    Case("mailru-dmarc", (S(MR, "DMARCPolicy", "Mail.ru rejects under the domain owner's DMARC policy", data="550 5.7.1 This message was not accepted due to domain owner DMARC policy (RFC 7489) https://help.mail.ru/mail-help/postmaster/dmarc"),), source=MAILRU),
    Case("mailru-user-not-found", (H(MR, "550 Message was not accepted -- invalid mailbox. Local mailbox {rcpt} is unavailable: user not found", "Mail.ru: 'user not found' means the mailbox does not exist"),), source=MAILRU),
    Case("mailru-quota", (S(MR, "SoftBounce", "Mail.ru: user quota exceeded, a full mailbox", rcpt="552 Message was not accepted -- mailbox full. Local mailbox {rcpt} is unavailable: user quota exceeded"),), source=MAILRU),
]
Q = "qq.example"
QQ_CASES = [
    Case("qq-mailbox-not-found", (H(Q, "550 Mailbox not found. http://service.exmail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000728", "QQ documents 'Mailbox not found' as: this recipient does not exist"),), source=QQ),
    Case("qq-content-denied", (S(Q, "SpamNotification", "QQ: mail content denied, reported as spam by many users", data="550 Mail content denied. http://service.exmail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726"),), source=QQ),
    Case("qq-mailbox-unavailable-flood", (S(Q, "Blocked", "QQ documents 'Mailbox unavailable or access denied' as a temporary anti-flood block on a recipient receiving too much mail: the mailbox exists", rcpt="550 Mailbox unavailable or access denied [MJa2WvX2X1EvaNQT5h8FRjY=]. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000729"),), source=QQ),
    Case("qq-sender-frequency", (S(Q, "Blocked", "QQ: the sender exceeded its sending frequency limit", rcpt="550 Sender frequency limited. http://service.exmail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000723"),), source=QQ),
    Case("qq-rejected-by-recipient", (S(Q, "Blocked", "QQ: the recipient's personal blacklist or filter refused us; the mailbox exists", rcpt="550 Mail is rejected by recipients [MJa2WvX2X1EvaNQT5h8FRjY=]. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000742"),), source=QQ),
    Case("qq-dmarc", (S(Q, "DMARCPolicy", "QQ: DMARC check failed", data="550 DMARC check failed. http://service.mail.qq.com/cgi-bin/help?subtype=1&&no=1001508&&id=16"),), source=QQ),
]

# DSN parameters (RFC 3461) given at submission: RET=HDRS returns only the headers, ENVID is
# echoed as Original-Envelope-Id. Only where the sendmail command takes -N/-R/-V: Exim's -N
# means "do not deliver", OpenSMTPD 6.8's enqueuer answers "Unsupported option RET=HDRS",
# Haraka is given mail over SMTP.
DSN_MTAS = ("postfix", "sendmail", "courier")
DSN_CASES = [
    Case("dsn-ret-hdrs-unknown", (H(D, "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table", GONE),),
         mtas=DSN_MTAS, dsn=("-N", "failure,delay", "-R", "HDRS", "-V", "order-4711")),
    Case("dsn-ret-hdrs-quota", (S(D, "SoftBounce", "destination answered 552 5.2.2 mailbox full", rcpt="552 5.2.2 <{rcpt}>: Mailbox full"),),
         mtas=DSN_MTAS, dsn=("-N", "failure", "-R", "HDRS", "-V", "order-4712")),
    Case("dsn-ret-full-spam", (S(D, "SpamNotification", "the content was rejected as spam after DATA", data="550 5.7.1 Message rejected as spam by Content Filtering."),),
         mtas=DSN_MTAS, dsn=("-N", "failure", "-R", "FULL", "-V", "order-4713")),
]
MULTI_DOMAIN_CASES = [
    Case("multi-domain-providers", (H(G, "550-5.1.1 The email account that you tried to reach does not exist. Please try\n550-5.1.1 double-checking the recipient's email address for typos or\n550-5.1.1 unnecessary spaces. For more information, go to\n550 5.1.1  https://support.google.com/mail/?p=NoSuchUser d9443c01a7336si - gsmtp", "Gmail's documented 550 5.1.1: the account does not exist"),
                                    S(Y, "SoftBounce", "Yahoo: the mailbox is disabled (554.30): exists, not gone", rcpt="554 delivery error: dd Sorry your message to {rcpt} cannot be delivered. This mailbox is disabled (554.30). - mta7.am0.yahoodns.example"),
                                    S(M, "Blocked", "Microsoft 5.7.606 banned sending IP: reputation", rcpt="550 5.7.606 Access denied, banned sending IP [127.0.0.1]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430)")),
         source=f"{GMAIL} ; {YAHOO} ; {MICROSOFT}"),
    Case("multi-domain-unknown-and-nxdomain", (H(D, "550 5.1.1 <{rcpt}>... User unknown", GONE),
                                               R("no-such-domain.example", "HardBounce", "hard", why="the recipient's domain does not exist (NXDOMAIN)"))),
]

DELAYED = ("the MTA is still retrying after temporary failures and says so in a delay warning "
           "(Action: delayed): nothing has failed yet")


def T(domain: str, rcpt: Optional[str], cause: str) -> Rcpt:
    return R(domain, "Transient", "soft", rcpt=rcpt, why=f"{cause}; {DELAYED}")


DELAY_CASES = [
    Case("delayed-greylist-450", (T(D, "450 4.2.0 <{rcpt}>: Recipient address rejected: Greylisted, see http://postgrey.example/help/dest.example", "greylisting 450 4.2.0"),), profile="delay"),
    Case("delayed-mailbox-full-452", (T(D, "452 4.2.2 <{rcpt}>: Mailbox full, try again later", "452 4.2.2 mailbox full"),), profile="delay"),
    Case("delayed-rate-limit-421", (T(D, "421 4.7.0 mx.dest.example Too many messages from your IP, slow down", "421 4.7.0 rate limit at RCPT"),), profile="delay"),
    Case("delayed-local-error-451", (T(D, "451 4.3.0 Requested action aborted: local error in processing", "451 4.3.0 local error"),), profile="delay"),
    Case("delayed-connection-refused", (T("refused.example", None, "the MX refuses TCP connections"),), profile="delay"),
    Case("delayed-dns-servfail", (T("servfail.example", None, "the domain's DNS answers SERVFAIL"),), profile="delay"),
    Case("delayed-gmail-over-quota", (T(G, "452-4.2.2 The recipient's inbox is out of storage space. Please direct the\n452-4.2.2 recipient to\n452 4.2.2  https://support.google.com/mail/?p=OverQuotaTemp d9443c01a7336si - gsmtp", "Gmail's 452 4.2.2 out of storage"),), profile="delay", source=GMAIL),
    Case("delayed-yahoo-tss04", (T(Y, "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", "Yahoo's 421 4.7.0 [TSS04] deferral"),), profile="delay", source=YAHOO),
    Case("delayed-m365-server-busy", (T(M, "451 4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719) [BN8NAM12FT012.eop-nam12.prod.protection.outlook.example]", "Exchange Online's 451 4.7.500 server busy"),), profile="delay", source=MICROSOFT),
    Case("delayed-icloud-volume", (T(A, "421 4.7.1 Messages to {rcpt} deferred due to excessive volume. Try again later - https://support.apple.com/en-us/HT204137", "iCloud's 421 4.7.1 excessive volume"),), profile="delay", source=APPLE),
]

# -- auto-replies: real vacation responders on the MTA's own host ------------------------------
# login -> (MTA, responder, subject prefix, body). Postfix delivers to Debian's vacation(1)
# through ~/.forward; Exim answers with its filter language's own "vacation" command.
VACATION_USERS: dict[str, tuple[str, str, str]] = {
    "k.tanaka": ("postfix", "Out of office: ",
                 "Thank you for your email. I am out of the office until Monday 14 December\n"
                 "with limited access to email. For urgent matters please contact\n"
                 "support@mta.relay.test.\n\nKenji Tanaka\n"),
    "j.mueller": ("postfix", "Abwesenheitsnotiz: ",
                  "Vielen Dank für Ihre Nachricht. Ich bin bis einschließlich 14. Dezember\n"
                  "nicht im Büro und lese meine E-Mails nur eingeschränkt. In dringenden\n"
                  "Fällen wenden Sie sich bitte an support@mta.relay.test.\n\nJulia Müller\n"),
    "c.dubois": ("postfix", "Absence du bureau : ",
                 "Bonjour,\n\nJe suis absente du bureau jusqu'au 14 décembre inclus et n'aurai\n"
                 "qu'un accès limité à ma messagerie. Pour toute urgence, merci d'écrire à\n"
                 "support@mta.relay.test.\n\nClaire Dubois\n"),
    "a.smith": ("postfix", "Re: ",
                "I'm on vacation until the 14th and will reply to your message when I get\n"
                "back. Cheers, Alex\n"),
    "l.rossi": ("exim", "Out of office: ",
                "Thank you for your message. I am travelling until 14 December and will\n"
                "answer when I am back.\n\nLuca Rossi\n"),
    "m.schmidt": ("exim", "Abwesenheitsnotiz: ",
                  "Vielen Dank fuer Ihre Nachricht. Ich bin bis zum 14. Dezember im Urlaub\n"
                  "und beantworte sie nach meiner Rueckkehr.\n\nMarkus Schmidt\n"),
    "e.moreau": ("exim", "Absent : ",
                 "Bonjour, je suis en conges jusqu'au 14 decembre. Je vous repondrai des\n"
                 "mon retour.\n\nEmma Moreau\n"),
    "b.jones": ("exim", "Auto: ",
                "I am away from my desk this week and will reply when I return.\n\nBen\n"),
}
RESPONDERS = {
    "postfix": "Debian's vacation(1) through ~/.forward",
    "exim": "an Exim filter's vacation command",
    "sieve": "a Sieve vacation action run by Dovecot's LDA (Pigeonhole) as Postfix's mailbox_command",
}
# Sieve users: delivered by Postfix to dovecot-lda, whose ~/.dovecot.sieve answers
SIEVE_USERS: dict[str, tuple[str, str]] = {
    "s.ito": ("Automatic reply: ", "I am out of the office until 14 December and will reply on my return."),
    "p.lefevre": ("Réponse automatique : ", "Je suis en congés jusqu'au 14 décembre inclus. Je vous répondrai à mon retour."),
    "h.schulz": ("Automatische Antwort: ", "Ich bin bis 14. Dezember nicht erreichbar. Ihre Nachricht wird nicht weitergeleitet."),
}


def _autoreply(responder: str, login: str, mta: str) -> Case:
    return Case(f"autoreply-{mta if responder != 'sieve' else 'sieve'}-{login.split('.')[-1]}",
                (Rcpt(f"{login}@{MTA_HOSTNAME}", "AutoResponder", "autoreply",
                      why=f"the recipient's real vacation responder answered ({RESPONDERS[responder]}): "
                          "the message was delivered, the address works"),),
                mtas=(mta,))


# -- the MTA's own host refuses: local delivery ---------------------------------------------
# sendmail, Courier and OpenSMTPD refuse an unknown local user at submission (no bounce);
# Haraka has no local delivery
LOCAL_MTAS = ("postfix", "exim")
QUOTA_USER = "q.full"      # Postfix pipes its mail to Dovecot's LDA with a 1-byte quota
LOCAL_CASES = [
    Case("local-unknown-user", (Rcpt(f"zz.nobody@{MTA_HOSTNAME}", "HardBounce", "hard",
                                     why="the MTA's own local delivery has no such user: the address is gone"),),
         mtas=LOCAL_MTAS),
    Case("local-quota-dovecot-lda", (Rcpt(f"{QUOTA_USER}@{MTA_HOSTNAME}", "SoftBounce", "soft",
                                          why="Dovecot's LDA refused the message: the mailbox is over its quota "
                                              "(a full mailbox; Dovecot sends its own rejection notice)"),),
         mtas=("postfix",)),
]

AUTOREPLY_CASES = [_autoreply(mta, login, mta) for login, (mta, _prefix, _body) in VACATION_USERS.items()]
SIEVE_CASES = [_autoreply("sieve", login, "postfix") for login in SIEVE_USERS]

CASES += GMAIL_CASES + MICROSOFT_CASES + YAHOO_CASES + APPLE_CASES + GMX_CASES + ORANGE_CASES + MAILRU_CASES + QQ_CASES + DELAY_CASES + AUTOREPLY_CASES + DSN_CASES + MULTI_DOMAIN_CASES + SIEVE_CASES + LOCAL_CASES

CASES = _name_recipients(CASES)
assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
CASE_IDS = {case.name: f"c{i:03d}" for i, case in enumerate(CASES)}
CASES_BY_ID = {CASE_IDS[case.name]: case for case in CASES}
RCPTS = {r.address: (case, r) for case in CASES for r in case.rcpts}


def sender_of(case: Case) -> str:
    return f"mailer+{CASE_IDS[case.name]}@{SENDER_DOMAIN}"


def zones() -> dict:
    """The DNS data (tests/dnsserver.py's zone format)."""
    z: dict = {
        SENDER_DOMAIN: {"MX": [(10, f"mx.{SENDER_DOMAIN}")]},
        f"mx.{SENDER_DOMAIN}": {"A": [COLLECTOR_IP]},
        MTA_HOSTNAME: {"A": [MTA_IP]},
        "relay.test": {"MX": [(10, MTA_HOSTNAME)]},
        "nullmx.example": {"MX": [(0, ".")]},
        "nomx.example": {"TXT": ["v=spf1 -all"]},
        "badmx.example": {"MX": [(10, "mx.nowhere.example")]},
        "servfail.example": {"SERVFAIL": True},
        "refused.example": {"MX": [(10, "mx.refused.example")]},
        "mx.refused.example": {"A": [REFUSED_IP]},
        "1.0.0.127.in-addr.arpa": {"PTR": [MTA_HOSTNAME]},
    }
    for host in HOSTS:
        z[host.hostname] = {"A": [host.ip]}
        for domain in host.domains:
            z[domain] = {"MX": [(10, host.hostname)]}
    return z
