"""
Writes the hold-out bounce set (issue 16): realistic bounces, auto-replies and complaints from
MTAs and providers that tests/bounces does not cover, each labelled from the cause written in.

    python tests/bounces/holdout/make_holdout.py      # rewrites *.eml and labels.json here

The texts follow the MTAs' own templates and the providers' documented replies as remembered by
the author (no sample message of another bounce parser was used). Label rule (issue 16): "hard"
only when the address is permanently gone (no such user or mailbox, no such domain or null MX,
moved); everything else is "soft", "complaint" or "autoreply".
"""

from __future__ import annotations

import base64
import hashlib
import json
import quopri
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABELS: dict[str, dict] = {}
FILES: dict[str, bytes] = {}
SENDER = "noreply@shop.example.com"
DATE = "Tue, 01 Dec 2026 09:14:22 +0000"


def token(seed: str) -> str:
    return base64.b32encode(hashlib.sha256(seed.encode()).digest()[:20]).decode().lower()


def mrid(seed: str) -> str:
    return "018f" + hashlib.sha256(seed.encode()).hexdigest()[:16]


def original_headers(rcpt: str, seed: str, subject: str = "Your order #48213 has shipped",
                     token_header: bool = True) -> str:
    tok = token(seed)
    lines = [
        f"Return-Path: <b+{tok}@bounces.shop.example.com>",
        "Received: from relay1.shop.example.com (relay1.shop.example.com [203.0.113.25])",
        f"\tby mx.remote.invalid with ESMTPS; {DATE}",
        "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.example.com; s=mr1;",
        "\th=from:to:subject:date:message-id; bh=4Xo2fl0cXzYvHdmI2lR8P0q0m1kGxWcJb7cR7n2k1aA=;",
        "\tb=Qm9ndXMgc2lnbmF0dXJlIGZvciB0ZXN0cyBvbmx5",
        f"From: \"Example Shop\" <{SENDER}>",
        f"To: {rcpt}",
        f"Subject: {subject}",
        f"Date: {DATE}",
        f"Message-ID: <{mrid(seed)}@shop.example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        f"X-Mailrelay-ID: {mrid(seed)}",
    ]
    if token_header:
        lines.append(f"X-Mailrelay-Recipient-Token: {tok}")
    return "\n".join(lines) + "\n"


ORIGINAL_BODY = "Hello,\n\nyour order #48213 is on its way. Track it at https://shop.example.com/t/48213\n"


def label(name: str, type_: str, klass: str, recipients: list[str], status: str | None, why: str) -> None:
    LABELS[name] = {"type": type_, "class": klass, "recipients": recipients, "status": status, "why": why}


def save(name: str, text: str, charset_bytes: bytes | None = None) -> None:
    data = charset_bytes if charset_bytes is not None else text.replace("\n", "\r\n").encode("utf-8")
    FILES[name] = data


def enc_qp(text: str, charset: str = "utf-8") -> str:
    return quopri.encodestring(text.encode(charset)).decode("ascii")


def enc_b64(text: str, charset: str = "utf-8") -> str:
    raw = base64.b64encode(text.encode(charset)).decode("ascii")
    return "\n".join(raw[i:i + 76] for i in range(0, len(raw), 76))


def dsn(name: str, *, from_: str, subject: str, human: str, reporting: str, rcpts: list[dict],
        seed: str | None = None, to_rcpt: str | None = None, full: bool = False, html: str | None = None,
        human_charset: str = "us-ascii", human_cte: str = "7bit", extra: str = "", boundary: str | None = None,
        arrival: bool = True, received_from: str | None = None, orig_subject: str | None = None) -> None:
    """An RFC 3464 multipart/report; rcpts: dicts with final, original, action, status, diag, remote."""
    seed = seed or name
    first = rcpts[0]["final"] if rcpts else (to_rcpt or "x@example.org")
    to_rcpt = to_rcpt or first
    b = boundary or f"{hashlib.md5(name.encode()).hexdigest()[:12]}.{len(name)}/{reporting.split('.')[0]}"
    tok = token(seed)
    out = [f"Return-Path: <>",
           f"Received: from {reporting} ({reporting} [198.51.100.7])",
           f"\tby mx1.bounces.shop.example.com (mailrelay) with ESMTPS; {DATE}",
           f"From: {from_}", f"To: <b+{tok}@bounces.shop.example.com>", f"Subject: {subject}",
           f"Date: {DATE}", f"Message-ID: <{hashlib.md5((name + 'm').encode()).hexdigest()}@{reporting}>",
           "MIME-Version: 1.0",
           f"Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{b}\""]
    if extra:
        out.append(extra.rstrip("\n"))
    out += ["", "This is a MIME-encapsulated message.", "", f"--{b}"]
    body = human if human_cte != "base64" else enc_b64(human, human_charset)
    if human_cte == "quoted-printable":
        body = enc_qp(human, human_charset)
    if html is not None:
        alt = b + "_alt"
        out += [f"Content-Type: multipart/alternative; boundary=\"{alt}\"", "", f"--{alt}",
                f"Content-Type: text/plain; charset={human_charset}", f"Content-Transfer-Encoding: {human_cte}", "",
                body, f"--{alt}", "Content-Type: text/html; charset=utf-8", "Content-Transfer-Encoding: quoted-printable",
                "", enc_qp(html), f"--{alt}--", "", f"--{b}"]
    else:
        out += [f"Content-Description: Notification", f"Content-Type: text/plain; charset={human_charset}",
                f"Content-Transfer-Encoding: {human_cte}", "", body, "", f"--{b}"]
    fields = [f"Reporting-MTA: dns; {reporting}"]
    if received_from:
        fields.append(f"Received-From-MTA: dns; {received_from}")
    if arrival:
        fields.append(f"Arrival-Date: {DATE}")
    blocks = ["\n".join(fields)]
    for r in rcpts:
        f = []
        if r.get("original"):
            f.append(f"Original-Recipient: rfc822;{r['original']}")
        f.append(f"Final-Recipient: rfc822;{r['final']}")
        f.append(f"Action: {r.get('action', 'failed')}")
        f.append(f"Status: {r['status']}")
        if r.get("remote"):
            f.append(f"Remote-MTA: dns;{r['remote']}")
        if r.get("diag"):
            f.append(f"Diagnostic-Code: {r.get('diagtype', 'smtp')};{r['diag']}")
        if r.get("last"):
            f.append(f"Last-Attempt-Date: {DATE}")
        if r.get("will"):
            f.append(f"Will-Retry-Until: {r['will']}")
        blocks.append("\n".join(f))
    out += ["Content-Description: Delivery report", "Content-Type: message/delivery-status", "",
            "\n\n".join(blocks), "", f"--{b}"]
    hdrs = original_headers(to_rcpt, seed, orig_subject or "Your order #48213 has shipped")
    if full:
        out += ["Content-Description: Undelivered Message", "Content-Type: message/rfc822", "", hdrs, ORIGINAL_BODY]
    else:
        out += ["Content-Description: Undelivered Message Headers", "Content-Type: text/rfc822-headers", "", hdrs]
    out += [f"--{b}--", ""]
    save(name, "\n".join(out))


def plain(name: str, *, from_: str, subject: str, body: str, seed: str | None = None, extra: str = "",
          charset: str = "us-ascii", cte: str = "7bit", to: str | None = None, reporting: str = "mx.remote.invalid",
          ctype: str = "text/plain") -> None:
    """A single-part message (plain-text bounce, auto-reply, notice)."""
    seed = seed or name
    tok = token(seed)
    if cte == "base64":
        payload = enc_b64(body, charset)
    elif cte == "quoted-printable":
        payload = enc_qp(body, charset)
    else:
        payload = body
    out = [f"Return-Path: <>" if "MAILER-DAEMON" in from_.upper() or "postmaster" in from_.lower() else
           f"Return-Path: <{from_.split('<')[-1].rstrip('>')}>",
           f"Received: from {reporting} ({reporting} [198.51.100.9])",
           f"\tby mx1.bounces.shop.example.com (mailrelay) with ESMTP; {DATE}",
           f"From: {from_}", f"To: {to or f'<b+{tok}@bounces.shop.example.com>'}", f"Subject: {subject}",
           f"Date: {DATE}", f"Message-ID: <{hashlib.md5((name + 'p').encode()).hexdigest()}@{reporting}>"]
    if extra:
        out.append(extra.rstrip("\n"))
    out += ["MIME-Version: 1.0", f"Content-Type: {ctype}; charset={charset}", f"Content-Transfer-Encoding: {cte}",
            "", payload, ""]
    save(name, "\n".join(out))


def multipart_mixed(name: str, *, from_: str, subject: str, parts: list[tuple[str, str]], seed: str | None = None,
                    extra: str = "", to: str | None = None, reporting: str = "mx.remote.invalid",
                    subtype: str = "mixed") -> None:
    """multipart/<subtype> of (content-type header lines, body) parts."""
    seed = seed or name
    tok = token(seed)
    b = "----=_Part_" + hashlib.md5(name.encode()).hexdigest()[:16]
    out = [f"Return-Path: <>",
           f"Received: from {reporting} ({reporting} [198.51.100.11])",
           f"\tby mx1.bounces.shop.example.com (mailrelay) with ESMTP; {DATE}",
           f"From: {from_}", f"To: {to or f'<b+{tok}@bounces.shop.example.com>'}", f"Subject: {subject}",
           f"Date: {DATE}", f"Message-ID: <{hashlib.md5((name + 'x').encode()).hexdigest()}@{reporting}>"]
    if extra:
        out.append(extra.rstrip("\n"))
    out += ["MIME-Version: 1.0", f"Content-Type: multipart/{subtype}; boundary=\"{b}\"", ""]
    for headers, body in parts:
        out += [f"--{b}", headers.rstrip("\n"), "", body]
    out += [f"--{b}--", ""]
    save(name, "\n".join(out))


def copy_of(rcpt: str, seed: str) -> str:
    return original_headers(rcpt, seed) + "\n" + ORIGINAL_BODY


# ---------------------------------------------------------------------------------------------
# -- qmail / netqmail / vpopmail ---------------------------------------------------------------

QMAIL_HEAD = ("Hi. This is the qmail-send program at {host}.\n"
              "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
              "This is a permanent error; I've given up. Sorry it didn't work out.\n\n")


def qmail(name, rcpt, para, klass, type_, status, why, host="mail.hostingco.invalid", seed=None):
    body = QMAIL_HEAD.format(host=host) + f"<{rcpt}>:\n{para}\n\n--- Below this line is a copy of the message.\n\n" \
        + copy_of(rcpt, seed or name)
    plain(name, from_=f"MAILER-DAEMON@{host}", subject="failure notice", body=body, reporting=host)
    label(name, type_, klass, [rcpt], status, why)


qmail("qmail-vpopmail-no-mailbox.eml", "info@bakery-lindner.de",
      "Sorry, no mailbox here by that name. vpopmail (#5.1.1)", "hard", "HardBounce", "5.1.1",
      "vpopmail: the virtual user does not exist")
qmail("qmail-vpopmail-over-quota.eml", "kontakt@praxis-weber.de",
      "user is over quota", "soft", "SoftBounce", None, "vdelivermail: the mailbox is over its quota")
qmail("qmail-remote-user-unknown-postfix.eml", "m.rossi@studiolegale.invalid",
      "192.0.2.44 does not like recipient.\nRemote host said: 550 5.1.1 <m.rossi@studiolegale.invalid>: "
      "Recipient address rejected: User unknown in virtual mailbox table\nGiving up on 192.0.2.44.",
      "hard", "HardBounce", "5.1.1", "netqmail relaying to a Postfix host that does not know the user")
qmail("qmail-remote-spamhaus.eml", "orders@tools-direct.invalid",
      "192.0.2.81 does not like recipient.\nRemote host said: 554 5.7.1 Service unavailable; Client host "
      "[203.0.113.25] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/203.0.113.25\n"
      "Giving up on 192.0.2.81.", "soft", "Blocked", "5.7.1", "the relay's IP is on a block list")
qmail("qmail-no-host.eml", "anna@nonexistent-domain-4821.invalid",
      "Sorry, I couldn't find any host named nonexistent-domain-4821.invalid. (#5.1.2)",
      "hard", "HardBounce", "5.1.2", "the recipient domain does not exist")
qmail("qmail-queue-lifetime.eml", "sales@slow-mx.invalid",
      "I'm not going to try again; this message has been in the queue too long.", "soft", "SoftBounce", None,
      "the remote host kept timing out until queuelifetime expired")
qmail("qmail-connect-refused-final.eml", "hr@closed-port.invalid",
      "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
      "I'm not going to try again; this message has been in the queue too long.", "soft", "SoftBounce", "4.4.1",
      "connections refused until the queue lifetime expired")
qmail("qmail-remote-message-too-big.eml", "press@newsdesk.invalid",
      "192.0.2.17 failed after I sent the message.\nRemote host said: 552 5.3.4 Message size exceeds fixed "
      "limit\nGiving up on 192.0.2.17.", "soft", "SoftBounce", "5.3.4", "the message exceeds the remote size limit")
qmail("qmail-rcpthosts.eml", "support@former-customer.invalid",
      "Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
      "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)", "soft", "DnsError", "5.4.6",
      "a misconfigured MX: the host does not consider the domain local")
qmail("qmail-remote-greylist-expired.eml", "office@greylist-forever.invalid",
      "192.0.2.90 does not like recipient.\nRemote host said: 451 4.7.1 <office@greylist-forever.invalid>: "
      "Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/greylist-forever.invalid."
      "html\nI'm not going to try again; this message has been in the queue too long.",
      "soft", "SoftBounce", "4.7.1", "greylisting never let the message in before the queue lifetime ran out")
qmail("qmail-mailbox-disabled.eml", "old.account@webhost-nl.invalid",
      "This mailbox has been disabled by the administrator. (#5.2.1)", "soft", "SoftBounce", "5.2.1",
      "the mailbox exists but is disabled")

# -- sendmail without DSN (old versions) ---------------------------------------------------------


def sendmail_old(name, rcpt, transcript, klass, type_, status, why, subject="Returned mail: see transcript for "
                 "details", header="----- The following addresses had permanent fatal errors -----",
                 host="mail.unix-shop.invalid"):
    body = (f"The original message was received at Tue, 1 Dec 2026 09:14:25 +0100\n"
            f"from relay1.shop.example.com [203.0.113.25]\n\n   {header}\n<{rcpt}>\n\n"
            f"   ----- Transcript of session follows -----\n{transcript}\n\n"
            f"   ----- Original message follows -----\n\n" + copy_of(rcpt, name))
    plain(name, from_=f"Mail Delivery Subsystem <MAILER-DAEMON@{host}>", subject=subject, body=body,
          reporting=host)
    label(name, type_, klass, [rcpt], status, why)


sendmail_old("sendmail8-user-unknown.eml", "jsmith@cs.univ-example.invalid",
             "... while talking to mailhost.cs.univ-example.invalid.:\n>>> RCPT To:<jsmith@cs.univ-example.invalid>\n"
             "<<< 550 <jsmith@cs.univ-example.invalid>... User unknown\n550 <jsmith@cs.univ-example.invalid>... "
             "User unknown", "hard", "HardBounce", None, "sendmail 8.9: the remote user does not exist",
             subject="Returned mail: User unknown")
sendmail_old("sendmail8-local-no-such-user.eml", "kpeters@unix-shop.invalid",
             "550 kpeters@unix-shop.invalid... User unknown", "hard", "HardBounce", None,
             "local delivery, no such user")
sendmail_old("sendmail8-cannot-send-5-days.eml", "admin@dead-host.invalid",
             "451 admin@dead-host.invalid... reply: read error from mx.dead-host.invalid.\n"
             "admin@dead-host.invalid... Deferred: Connection timed out with mx.dead-host.invalid.\n"
             "Message could not be delivered for 5 days\nMessage will be deleted from queue",
             "soft", "SoftBounce", None, "connection timeouts for five days, then the queue gave up",
             subject="Returned mail: Cannot send message for 5 days")
sendmail_old("sendmail8-host-unknown.eml", "someone@no-such-domain-7731.invalid",
             "550 5.1.2 someone@no-such-domain-7731.invalid... Host unknown (Name server: "
             "no-such-domain-7731.invalid: host not found)", "hard", "HardBounce", "5.1.2",
             "the domain does not exist", subject="Returned mail: Host unknown (Name server: "
             "no-such-domain-7731.invalid: host not found)")
sendmail_old("sendmail8-mailbox-full.eml", "p.novak@firma-cz.invalid",
             "... while talking to mail.firma-cz.invalid.:\n>>> DATA\n<<< 552 <p.novak@firma-cz.invalid>... Mailbox "
             "full\n554 5.0.0 Service unavailable", "soft", "SoftBounce", None, "the mailbox is full")
sendmail_old("sendmail8-relay-denied.eml", "billing@partner-co.invalid",
             "... while talking to mx.partner-co.invalid.:\n>>> RCPT To:<billing@partner-co.invalid>\n<<< 550 5.7.1 "
             "<billing@partner-co.invalid>... Relaying denied\n550 5.7.1 <billing@partner-co.invalid>... Relaying "
             "denied", "soft", "Blocked", "5.7.1", "stale MX: the host no longer handles the domain and refuses to relay")
sendmail_old("sendmail8-service-unavailable-rbl.eml", "events@citycouncil.invalid",
             "... while talking to smtp.citycouncil.invalid.:\n>>> MAIL From:<b+x@bounces.shop.example.com>\n"
             "<<< 550 5.7.1 Mail from 203.0.113.25 refused - see http://www.barracudacentral.org/\n"
             "554 5.0.0 Service unavailable", "soft", "Blocked", "5.7.1", "Barracuda reputation block list")

# -- Lotus Notes / Domino ------------------------------------------------------------------------


def domino(name, rcpt, because, klass, type_, status, why, subject=None, display="John Smith"):
    body = (f"Your message\n\n  Subject: Your order #48213 has shipped\n\nwas not delivered to:\n\n  {rcpt}\n\n"
            f"because:\n\n  {because}\n")
    multipart_mixed(name, from_=f"Postmaster@acme-industries.invalid", subject=subject or f"DELIVERY FAILURE: {because}",
                    parts=[("Content-Type: text/plain; charset=US-ASCII", body),
                           ("Content-Type: message/rfc822", copy_of(rcpt, name))], reporting="notes1.acme-industries.invalid")
    label(name, type_, klass, [rcpt], status, why)


domino("domino-not-listed.eml", "r.meyer@acme-industries.invalid",
       "User r.meyer (r.meyer@acme-industries.invalid) not listed in Domino Directory", "hard", "HardBounce", None,
       "Domino: the user is not in the directory")
domino("domino-mailfile-full.eml", "t.baker@acme-industries.invalid",
       "Unable to deliver message to T Baker/ACME: the recipient's mail file is over its size quota",
       "soft", "SoftBounce", None, "Domino: the mail file exceeds its quota")
domino("domino-remote-550-policy.eml", "c.lee@partner-bank.invalid",
       "Error transferring to smtp.partner-bank.invalid; SMTP Protocol Returned a Permanent Error 550 5.7.1 "
       "Message rejected due to content restrictions", "soft", "Blocked", "5.7.1",
       "Domino relaying: the next hop refused the content")

# -- Novell GroupWise -----------------------------------------------------------------------------

gw_body = ("The message that you sent was undeliverable to the following:\n"
           "\tlkowalski (user not found)\n\nPossible causes: Incorrect user name or the user was deleted.\n\n"
           "Original message follows:\n" + copy_of("lkowalski@county-gov.invalid", "gw1"))
plain("groupwise-user-not-found-short.eml", from_="GroupWise Postmaster <postmaster@county-gov.invalid>",
      subject="Undeliverable Mail", body=gw_body, seed="gw1", reporting="gwia.county-gov.invalid")
label("groupwise-user-not-found-short.eml", "HardBounce", "hard", ["lkowalski@county-gov.invalid"], None,
      "GroupWise names only the user id; the original's To: has the address")

gw2 = ("Message status - undeliverable\n\n  Subject: Your order #48213 has shipped\n\n"
       "The following recipients did not receive the message:\n\n"
       "  mgarcia@county-gov.invalid  (Mailbox is full / exceeded quota)\n\n"
       "Original message follows:\n" + copy_of("mgarcia@county-gov.invalid", "gw2"))
plain("groupwise-mailbox-full.eml", from_="Mail Administrator <postmaster@county-gov.invalid>",
      subject="Message status - undeliverable", body=gw2, seed="gw2", reporting="gwia.county-gov.invalid")
label("groupwise-mailbox-full.eml", "SoftBounce", "soft", ["mgarcia@county-gov.invalid"], None, "GroupWise: full mailbox")

# -- MDaemon -------------------------------------------------------------------------------------


def mdaemon(name, rcpt, transcript, klass, type_, status, why, subject="Permanent Delivery Failure"):
    body = ("The attached message had PERMANENT fatal delivery errors!\n\n"
            "After one or more unsuccessful delivery attempts the attached message has been removed from the "
            "mail queue on this server.  The number and frequency of delivery attempts are determined by local "
            "configuration parameters.\n\nYOU DO NOT NEED TO RESEND YOUR MESSAGE.\n\n"
            "The following information may be helpful in determining the cause of the failure:\n\n"
            "--- Session Transcript ---\n" + transcript + "\n--- End Transcript ---\n")
    multipart_mixed(name, from_="MDaemon at mail.smallbiz-it.invalid <MDaemon@mail.smallbiz-it.invalid>",
                    subject=subject, parts=[("Content-Type: text/plain; charset=us-ascii", body),
                                            ("Content-Type: message/rfc822", copy_of(rcpt, name))],
                    reporting="mail.smallbiz-it.invalid")
    label(name, type_, klass, [rcpt], status, why)


mdaemon("mdaemon-remote-user-unknown.eml", "ceo@client-firm.invalid",
        f" Tue 2026-12-01 10:14:25: Session 1482; child 1\n Tue 2026-12-01 10:14:25: Parsing message "
        f"<pd0000021.msg>\n Tue 2026-12-01 10:14:25: *  From: noreply@shop.example.com\n Tue 2026-12-01 10:14:25: *"
        f"  To: ceo@client-firm.invalid\n Tue 2026-12-01 10:14:26: Attempting SMTP connection to "
        f"[mx.client-firm.invalid : 25]\n Tue 2026-12-01 10:14:26: Connected to [192.0.2.50:25]\n"
        f" Tue 2026-12-01 10:14:26: >>> RCPT TO:<ceo@client-firm.invalid>\n Tue 2026-12-01 10:14:26: <<< 550 5.1.1 "
        f"<ceo@client-firm.invalid>: Recipient address rejected: User unknown in local recipient table\n"
        f" Tue 2026-12-01 10:14:26: --> Delivery to ceo@client-firm.invalid failed!",
        "hard", "HardBounce", "5.1.1", "MDaemon as smart host; the remote user does not exist")
mdaemon("mdaemon-remote-rate-limited.eml", "list@club-forum.invalid",
        " Tue 2026-12-01 10:14:25: Attempting SMTP connection to [mx.club-forum.invalid : 25]\n"
        " Tue 2026-12-01 10:14:26: >>> RCPT TO:<list@club-forum.invalid>\n"
        " Tue 2026-12-01 10:14:26: <<< 550 5.7.1 Too many messages from your IP address, slow down\n"
        " Tue 2026-12-01 10:14:26: --> Delivery to list@club-forum.invalid failed!",
        "soft", "SoftBounce", "5.7.1", "the receiver rate-limits the sending IP")

# -- Kerio Connect, hMailServer, IceWarp, MailEnable --------------------------------------------

kerio = ("Your message did not reach some or all of the intended recipients.\n\n"
         "   Subject:\tYour order #48213 has shipped\n   Sent:\t01.12.2026 10:14\n\n"
         "The following recipient(s) could not be reached:\n\n"
         "   novak@stavby-kerio.invalid\n      Error Type: SMTP\n"
         "      Remote server 192.0.2.60 (mail.stavby-kerio.invalid) issued an error.\n"
         "      Remote server replied: 552 5.2.2 Mailbox quota exceeded (novak@stavby-kerio.invalid)\n")
multipart_mixed("kerio-quota.eml", from_="Mail Delivery Subsystem <MAILER-DAEMON@kerio.hosting.invalid>",
                subject="Undelivered mail: Your order #48213 has shipped",
                parts=[("Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit", kerio),
                       ("Content-Type: message/rfc822", copy_of("novak@stavby-kerio.invalid", "kerio-quota.eml"))],
                reporting="kerio.hosting.invalid")
label("kerio-quota.eml", "SoftBounce", "soft", ["novak@stavby-kerio.invalid"], "5.2.2", "Kerio: mailbox quota")

hmail = ("Your message did not reach some or all of the intended recipients.\n\n"
         "   Sent: Tue, 01 Dec 2026 10:14:25 +0100\n   Subject: Your order #48213 has shipped\n\n"
         "The following recipient(s) could not be reached:\n\n"
         "frank@ghost-address.invalid\n   Error Type: SMTP\n"
         "   Remote server (192.0.2.66) issued an error.\n"
         "   hMailServer sent: RCPT TO:<frank@ghost-address.invalid>\n"
         "   Remote server replied: 550 No such recipient here\n\n")
plain("hmailserver-no-such-recipient.eml", from_="mailer-daemon@win-smtp.invalid",
      subject="Message undeliverable: Your order #48213 has shipped", body=hmail, reporting="win-smtp.invalid")
label("hmailserver-no-such-recipient.eml", "HardBounce", "hard", ["frank@ghost-address.invalid"], None,
      "hMailServer relay; the remote says no such recipient")

icewarp = ("This message was created automatically by mail delivery software.\n\n"
           "A message that you sent could not be delivered to one or more of its recipients.\n"
           "This is a permanent error. The following address(es) failed:\n\n"
           "<k.dvorak@icewarp-client.invalid>\n"
           "  SMTP error from remote server after RCPT command:\n"
           "  host mail.icewarp-client.invalid [192.0.2.71]: 550 5.7.1 Rejected by DNSBL bl.spamcop.net\n")
multipart_mixed("icewarp-dnsbl.eml", from_="Postmaster <postmaster@icewarp-host.invalid>",
                subject="Undeliverable message",
                parts=[("Content-Type: text/plain; charset=utf-8", icewarp),
                       ("Content-Type: message/rfc822", copy_of("k.dvorak@icewarp-client.invalid", "icewarp-dnsbl.eml"))],
                reporting="icewarp-host.invalid")
label("icewarp-dnsbl.eml", "Blocked", "soft", ["k.dvorak@icewarp-client.invalid"], "5.7.1", "SpamCop DNSBL listing")

icewarp2 = ("Message delivery failed\n\nThe following recipient's mailbox is full and cannot accept messages now:\n"
            "  lucia.ferri@icewarp-client.invalid\n\nPlease try again later.\n")
plain("icewarp-local-full.eml", from_="postmaster@icewarp-client.invalid", subject="Undeliverable: mailbox full",
      body=icewarp2, reporting="icewarp-client.invalid")
label("icewarp-local-full.eml", "SoftBounce", "soft", ["lucia.ferri@icewarp-client.invalid"], None, "IceWarp local: full")

me = ("MailEnable: Message could not be delivered to some recipients.\n\n"
      "The following recipient(s) could not be reached:\n\n"
      "\tRecipient: [SMTP:owner@unregistered-shopfront.invalid]\n"
      "\tReason: The message could not be delivered because the domain name (unregistered-shopfront.invalid) "
      "does not appear to be registered.\n\nThe message headers follow:\n" + original_headers(
          "owner@unregistered-shopfront.invalid", "me1"))
plain("mailenable-domain-not-registered.eml", from_="POSTMASTER@mailenable-host.invalid",
      subject="Message Delivery Failure", body=me, seed="me1", reporting="mailenable-host.invalid")
label("mailenable-domain-not-registered.eml", "HardBounce", "hard", ["owner@unregistered-shopfront.invalid"], None,
      "the domain does not exist")

me2 = ("MailEnable: Message could not be delivered to some recipients.\n\n"
       "The following recipient(s) could not be reached:\n\n"
       "\tRecipient: [SMTP:accounts@clinic-me.invalid]\n"
       "\tReason: Remote SMTP Server Returned: 554 5.7.1 Message rejected because of SPF failure (sender IP not "
       "permitted)\n\nThe message headers follow:\n" + original_headers("accounts@clinic-me.invalid", "me2"))
plain("mailenable-spf.eml", from_="POSTMASTER@mailenable-host.invalid", subject="Message Delivery Failure",
      body=me2, seed="me2", reporting="mailenable-host.invalid")
label("mailenable-spf.eml", "Blocked", "soft", ["accounts@clinic-me.invalid"], "5.7.1", "SPF failure")

# -- Courier ------------------------------------------------------------------------------------

courier_human = ("This is a delivery status notification from mail.courier-isp.invalid,\n"
                 "running the Courier mail server, version 1.1.8.\n\n"
                 "The original message was received on Tue, 01 Dec 2026 10:14:25 +0100\n"
                 "from relay1.shop.example.com (relay1.shop.example.com [203.0.113.25])\n\n"
                 "---------------------------------------------------------------------------\n\n"
                 "                           UNDELIVERABLE MAIL\n\n"
                 "Your message to the following recipients cannot be delivered:\n\n"
                 "<gbianchi@courier-isp.invalid>:\n"
                 "    mail.courier-isp.invalid [192.0.2.80]:\n"
                 ">>> RCPT TO:<gbianchi@courier-isp.invalid>\n"
                 "<<< 550 User unknown.\n\n"
                 "---------------------------------------------------------------------------\n")
dsn("courier-user-unknown.eml", from_="Courier mail server at mail.courier-isp.invalid <@>",
    subject="DELIVERY FAILURE: User unknown.", human=courier_human, reporting="mail.courier-isp.invalid",
    rcpts=[{"final": "gbianchi@courier-isp.invalid", "status": "5.0.0", "remote": "mail.courier-isp.invalid",
            "diag": "smtp; 550 User unknown."}])
label("courier-user-unknown.eml", "HardBounce", "hard", ["gbianchi@courier-isp.invalid"], "5.0.0", "Courier: user unknown")

courier2 = courier_human.replace("gbianchi", "rosa").replace("<<< 550 User unknown.",
                                                          "<<< 552 Mail quota exceeded.")
dsn("courier-quota.eml", from_="Courier mail server at mail.courier-isp.invalid <@>",
    subject="DELIVERY FAILURE: Mail quota exceeded.", human=courier2, reporting="mail.courier-isp.invalid",
    rcpts=[{"final": "rosa@courier-isp.invalid", "status": "5.0.0", "remote": "mail.courier-isp.invalid",
            "diag": "smtp; 552 Mail quota exceeded."}])
label("courier-quota.eml", "SoftBounce", "soft", ["rosa@courier-isp.invalid"], "5.0.0", "Courier: over quota")

# -- Microsoft Exchange 2010 / 2013 / 2016 / Exchange Online ------------------------------------


def exchange2010(name, rcpt, user_text, diag_line, status, klass, type_, why, lang="en", remote_diag=None,
                 gen="EXCH01.contoso-corp.invalid", action="failed"):
    heads = {
        "en": ("Delivery has failed to these recipients or groups:", "Diagnostic information for administrators:",
               "Generating server:", "Original message headers:", "Undeliverable: "),
        "de": ("Die Zustellung an diese Empfänger oder Gruppen ist fehlgeschlagen:",
               "Diagnoseinformationen für Administratoren:", "Generierender Server:", "Ursprüngliche Nachrichtenkopfzeilen:",
               "Unzustellbar: "),
        "fr": ("La remise à ces destinataires ou groupes a échoué :", "Informations de diagnostic pour les administrateurs :",
               "Serveur de génération :", "En-têtes de message d'origine :", "Non remis : "),
        "es": ("Error en la entrega a estos destinatarios o grupos:", "Información de diagnóstico para administradores:",
               "Servidor de generación:", "Encabezados de mensaje originales:", "No se puede entregar: "),
    }[lang]
    if action == "delayed":
        heads = ("Delivery is delayed to these recipients or groups:",) + heads[1:4] + ("Delivery delayed: ",)
    text = (f"{heads[0]}\n\n{rcpt}\n{user_text}\n\n\n\n\n\n\n\n{heads[1]}\n\n{heads[2]} {gen}\n\n"
            f"{rcpt}\n{diag_line}\n\n{heads[3]}\n\n" + original_headers(rcpt, name))
    html = (f"<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\"></head><body>"
            f"<p><b><font color=\"#000066\" size=\"3\" face=\"Arial\">{heads[0]}</font></b></p>"
            f"<font color=\"#000000\" size=\"2\" face=\"Tahoma\"><p><a href=\"mailto:{rcpt}\">{rcpt}</a><br>"
            f"{user_text}<br></p></font><br><br><br><br><br><br><br><br>"
            f"<font color=\"#808080\" size=\"2\" face=\"Tahoma\"><p><b>{heads[1]}</b></p>{heads[2]} {gen}<br><br>"
            f"{rcpt}<br>{diag_line}<br><br>{heads[3]}<br></font></body></html>")
    dsn(name, from_="Microsoft Exchange <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@contoso-corp.invalid>",
        subject=heads[4] + "Your order #48213 has shipped", human=text, html=html, human_charset="utf-8",
        human_cte="quoted-printable", reporting=gen,
        rcpts=[{"final": rcpt, "status": status, "diag": remote_diag or diag_line.strip("#").strip(), "action": action}],
        extra="Content-Language: " + {"en": "en-US", "de": "de-DE", "fr": "fr-FR", "es": "es-ES"}[lang]
              + "\nX-MS-Exchange-Message-Is-Ndr: \nAuto-Submitted: auto-replied", arrival=True)
    label(name, type_, klass, [rcpt], status, why)


exchange2010("exchange2010-recipnotfound.eml", "d.fischer@contoso-corp.invalid",
             "The e-mail address you entered couldn't be found. Please check the recipient's e-mail address and try "
             "to resend the message. If the problem continues, please contact your helpdesk.",
             "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##", "5.1.1", "hard", "HardBounce",
             "Exchange 2010: the address is not in the directory")
exchange2010("exchange2010-de-recipnotfound.eml", "k.wagner@contoso-corp.invalid",
             "Die eingegebene E-Mail-Adresse wurde nicht gefunden. Überprüfen Sie die E-Mail-Adresse des Empfängers, "
             "und versuchen Sie, die Nachricht erneut zu senden. Wenden Sie sich an das Helpdesk, wenn das Problem "
             "weiterhin besteht.", "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##", "5.1.1", "hard",
             "HardBounce", "German Exchange 2010 NDR, unknown recipient", lang="de")
exchange2010("exchange2010-fr-quota.eml", "m.dubois@contoso-corp.invalid",
             "La boîte aux lettres du destinataire est pleine et ne peut pas accepter de messages pour le moment. "
             "Réessayez d'envoyer le message ultérieurement ou contactez directement le destinataire.",
             "#550 5.2.2 STOREDRV.Deliver: mailbox full. The following information should help identify the cause: "
             "\"MapiExceptionShutoffQuotaExceeded:16.18969:DD000000 ...\". ##", "5.2.2", "soft", "SoftBounce",
             "French Exchange NDR: mailbox full", lang="fr")
exchange2010("exchange2010-es-recipnotfound.eml", "j.martinez@contoso-corp.invalid",
             "La dirección de correo electrónico que escribió no se encuentra. Compruebe la dirección de correo "
             "electrónico del destinatario e intente reenviar el mensaje. Si el problema continúa, póngase en "
             "contacto con el departamento de soporte técnico.", "#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##",
             "5.1.1", "hard", "HardBounce", "Spanish Exchange NDR, unknown recipient", lang="es")
exchange2010("exchange2013-remote-user-unknown.eml", "alice@partner-remote.invalid",
             "A problem occurred during the delivery of this message to this e-mail address. Try sending this message "
             "again. If the problem continues, please contact your helpdesk.",
             "mx.partner-remote.invalid #550 5.1.1 <alice@partner-remote.invalid>... User unknown ##",
             "5.1.1", "hard", "HardBounce", "Exchange 2013 relaying; the remote user does not exist",
             remote_diag="550 5.1.1 <alice@partner-remote.invalid>... User unknown")
exchange2010("exchange2013-remote-blocked.eml", "bob@partner-remote.invalid",
             "A problem occurred during the delivery of this message to this e-mail address. Try sending this message "
             "again. If the problem continues, please contact your helpdesk.",
             "mx.partner-remote.invalid #554 5.7.1 Your access to this mail system has been rejected due to the "
             "sending MTA's poor reputation. If you believe that this failure is in error, please contact the "
             "intended recipient via alternate means. ##", "5.7.1", "soft", "Blocked",
             "Cisco IronPort (SenderBase reputation) behind an Exchange relay",
             remote_diag="554 5.7.1 Your access to this mail system has been rejected due to the sending MTA's poor "
                         "reputation.")
exchange2010("exchange2016-expired.eml", "ops@unreachable-mx.invalid",
             "Delivery to this recipient has failed because the message has been in the queue for too long.",
             "#550 4.4.7 QUEUE.Expired; message expired ##", "4.4.7", "soft", "SoftBounce",
             "Exchange 2016: queue expiry after the remote host kept deferring",
             remote_diag="550 4.4.7 QUEUE.Expired; message expired")
exchange2010("exchange2016-size.eml", "design@bigfiles-agency.invalid",
             "This message couldn't be delivered because it's too large. The message is larger than the size limit "
             "of the recipient's mailbox.",
             "#550 5.2.3 RESOLVER.RST.RecipSizeLimit; message too large for this recipient ##", "5.2.3", "soft",
             "SoftBounce", "Exchange: over the recipient's size limit")
exchange2010("exchange2016-auth-required.eml", "all-staff@contoso-corp.invalid",
             "Your message wasn't delivered because the recipient is only accepting mail from specific senders.",
             "#550 5.7.1 RESOLVER.RST.AuthRequired; authentication required ##", "5.7.1", "soft", "Blocked",
             "distribution group accepting only internal senders")


def exo(name, rcpt, headline, explanation, remote, status, klass, type_, why, extra_rcpts=None):
    domain = rcpt.split("@")[1]
    text = (f"Your message to {rcpt} couldn't be delivered.\n\n{headline}\n\n"
            f"noreply   Office 365   {domain.split('.')[0]}\n   Action Required                     Recipient\n\n"
            f"{explanation}\n\nHow to Fix It\n{explanation}\n\n"
            "Was this helpful? Send feedback to Microsoft.\n\n"
            "________________________________\n\nMore Info for Email Admins\nStatus code: "
            f"{remote.split(' ')[1] if ' ' in remote else status}\n\n"
            "Original Message Details\nCreated Date:   12/1/2026 9:14:22 AM\n"
            f"Sender Address: b+{token(name)}@bounces.shop.example.com\nRecipient Address:      {rcpt}\n"
            "Subject:        Your order #48213 has shipped\n\nError Details\n"
            f"Reported error:  {remote}\nDSN generated by:       AM0PR04MB1234.eurprd04.prod.outlook.invalid\n\n"
            "Message Hops\nHOP  TIME (UTC)   FROM   TO   WITH   RELAY TIME\n"
            "1  12/1/2026 9:14:23 AM  relay1.shop.example.com  AM5EUR02FT011.mail.protection.outlook.invalid  "
            "Microsoft SMTP Server  1 sec\n\nOriginal Message Headers\n\n" + original_headers(rcpt, name))
    html = ("<html><body><table><tr><td><p>Your message to <a href=\"mailto:" + rcpt + "\">" + rcpt
            + "</a> couldn't be delivered.</p><p><b>" + headline + "</b></p></td></tr><tr><td>" + explanation
            + "</td></tr><tr><td><b>Reported error:</b> " + remote + "</td></tr></table></body></html>")
    dsn(name, from_="Microsoft Outlook <MAILER-DAEMON@AM0PR04MB1234.eurprd04.prod.outlook.invalid>",
        subject="Undeliverable: Your order #48213 has shipped", human=text, html=html, human_charset="utf-8",
        human_cte="quoted-printable", reporting="AM0PR04MB1234.eurprd04.prod.outlook.invalid",
        rcpts=[{"final": rcpt, "status": status, "diag": remote, "remote": "AM5EUR02FT011.mail.protection.outlook.invalid"}],
        extra="X-MS-Exchange-Message-Is-Ndr: \nAuto-Submitted: auto-replied\nContent-Language: en-US", full=True)
    label(name, type_, klass, [rcpt], status, why)


exo("exo-recipient-not-found.eml", "h.jansen@fabrikam-nl.invalid", "h.jansen wasn't found at fabrikam-nl.invalid.",
    "The email address couldn't be found at the destination domain. It might be misspelled or it might not exist. "
    "Try to fix the problem by doing one or more of the following: 1. Send the message again, but before you do, "
    "retype or select the email address from the To or Cc box.",
    "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup", "5.1.10", "hard",
    "HardBounce", "Exchange Online: the recipient does not exist")
exo("exo-mailbox-full.eml", "s.olsen@fabrikam-nl.invalid", "s.olsen's mailbox is full.",
    "The recipient's mailbox is full and can't accept messages now. Please try resending your message later, or "
    "contact the recipient directly.",
    "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded; "
    "Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot open mailbox.",
    "5.2.2", "soft", "SoftBounce", "Exchange Online: mailbox full")
exo("exo-external-forwarding-disabled.eml", "p.nguyen@fabrikam-nl.invalid",
    "Your message couldn't be delivered because the recipient's organization does not allow external forwarding.",
    "Your organization's policy doesn't allow email to be forwarded to external recipients.",
    "550 5.7.520 Access denied, Your organization does not allow external forwarding. Please contact your "
    "administrator for further assistance. AS(7555)", "5.7.520", "soft", "Blocked",
    "outbound forwarding policy of the recipient's tenant")
exo("exo-banned-ip.eml", "kim@northwind-traders.invalid",
    "Your message couldn't be delivered. The Domain Name System (DNS) reported that the recipient's domain does "
    "not exist.".replace("The Domain Name System (DNS) reported that the recipient's domain does not exist.",
                         "The recipient's email system rejected your message."),
    "Your message wasn't delivered because the recipient's email provider rejected it.",
    "550 5.7.606 Access denied, banned sending IP [203.0.113.25]. To request removal from this list please visit "
    "https://sender.office.com/ and follow the directions. For more information please go to "
    "http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430)", "5.7.606", "soft", "Blocked",
    "Microsoft's banned IP list")
exo("exo-domain-not-found.eml", "info@mistyped-domian.invalid",
    "mistyped-domian.invalid couldn't be found.",
    "The Domain Name System (DNS) reported that the recipient's domain does not exist.",
    "550 5.4.310 DNS domain mistyped-domian.invalid does not exist [Message=InfoDomainNonexistent] "
    "[LastAttemptedServerName=mistyped-domian.invalid] [DM6NAM11FT012.eop-nam11.prod.protection.outlook.invalid]",
    "5.4.310", "hard", "HardBounce", "the recipient domain does not exist")
exo("exo-sender-not-authenticated-group.eml", "board@northwind-traders.invalid",
    "Your message couldn't be delivered because delivery to this group is restricted to authenticated senders.",
    "Only senders inside the organization may send to this group.",
    "550 5.7.133 RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required; Delivery restriction "
    "check failed as sender not authenticated for group", "5.7.133", "soft", "Blocked",
    "the group accepts only authenticated senders")
exo("exo-message-expired.eml", "service@flaky-host.invalid",
    "Delivery to the following recipient has failed: the message expired.",
    "The destination server didn't respond and the message expired after repeated attempts.",
    "550 4.4.7 Message expired: unable to deliver in 2 days.; Error: 451 4.4.0 Primary target IP address "
    "responded with: \"421 4.4.2 Connection dropped due to SocketError.\" Attempted failover to alternate host, "
    "but that did not succeed.", "4.4.7", "soft", "SoftBounce", "EXO gave up after 2 days of connection failures")
exo("exo-access-denied-recipient.eml", "former.employee@northwind-traders.invalid",
    "Your message to former.employee@northwind-traders.invalid couldn't be delivered.",
    "The email address you entered couldn't be found.",
    "550 5.4.1 Recipient address rejected: Access denied. For more information see "
    "https://aka.ms/EXOSmtpErrors [AM4PEPF00027A5C.eurprd04.prod.outlook.invalid]", "5.4.1", "hard",
    "HardBounce", "directory-based edge blocking: the recipient is not in the tenant")

# Outlook.com / Hotmail through a forwarding MTA (Postfix), documented replies


def postfix(name, rcpt, said, status, klass, type_, why, host="mail.forwarder-isp.invalid", remote="mx.remote.invalid",
            lang="en", action="failed", orig=None, delayed=False, extra_rcpts=(), own=None, diagtype="smtp"):
    if lang == "en":
        intro = (f"This is the mail system at host {host}.\n\n"
                 + ("####################################################################\n"
                    "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #\n"
                    "####################################################################\n\n"
                    "Your message could not be delivered for more than 4 hour(s).\n"
                    "It will be retried until it is 5 day(s) old.\n\n" if delayed else
                    "I'm sorry to have to inform you that your message could not\n"
                    "be delivered to one or more recipients. It's attached below.\n\n"
                    "For further assistance, please send mail to postmaster.\n\n"
                    "If you do so, please include this problem report. You can\n"
                    "delete your own text from the attached returned message.\n\n")
                 + "                   The mail system\n\n")
    else:
        intro = lang
    paras = [f"<{rcpt}>: " + (own or f"host {remote}[192.0.2.99] said: {said}")] + \
        [f"<{r}>: host {remote}[192.0.2.99] said: {s}" for r, s, *_ in extra_rcpts]
    human = intro + "\n\n".join(paras) + "\n"
    rc = [{"final": rcpt, "original": orig or rcpt, "status": status, "remote": None if own else remote,
           "diagtype": diagtype, "diag": (own or "") if own else said.replace(" (in reply to RCPT TO command)", "").replace(" (in reply to end of DATA command)", ""),
           "action": action}]
    for r, s, st, *_ in extra_rcpts:
        rc.append({"final": r, "original": r, "status": st, "remote": remote, "diag": s, "action": "failed"})
    dsn(name, from_=f"MAILER-DAEMON@{host} (Mail Delivery System)",
        subject="Delayed Mail (still being retried)" if delayed else "Undelivered Mail Returned to Sender",
        human=human, reporting=host, rcpts=rc, human_charset="utf-8" if lang != "en" else "us-ascii",
        human_cte="8bit" if lang != "en" else "7bit",
        boundary=f"{hashlib.md5(name.encode()).hexdigest()[:10].upper()}.1764580462/{host}")
    label(name, type_, klass, [rcpt] + [r for r, *_ in extra_rcpts], status, why)


postfix("postfix-outlookcom-mailbox-unavailable.eml", "tom.baker1988@outlook.com",
        "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302). "
        "[BN8NAM11FT059.eop-nam11.prod.protection.outlook.com] (in reply to RCPT TO command)", "5.5.0", "hard",
        "HardBounce", "Outlook.com answers 5.5.0 'mailbox unavailable' for an account that does not exist",
        remote="outlook-com.olc.protection.outlook.com")
postfix("postfix-outlookcom-s3150.eml", "lena.k@hotmail.com",
        "550 5.7.1 Unfortunately, messages from [203.0.113.25] weren't sent. Please contact your Internet service "
        "provider since part of their network is on our block list (S3150). You can also refer your provider to "
        "http://mail.live.com/mail/troubleshooting.aspx#errors. [VI1EUR05FT012.eop-eur05.prod.protection.outlook.com] "
        "(in reply to MAIL FROM command)", "5.7.1", "soft", "Blocked", "Outlook.com's IP block list",
        remote="hotmail-com.olc.protection.outlook.com")
postfix("postfix-outlookcom-rate.eml", "mike.t@live.com",
        "451 4.7.650 The mail server [203.0.113.25] has been temporarily rate limited due to IP reputation. For e-mail "
        "delivery information, see https://aka.ms/postmaster (S775) (in reply to MAIL FROM command)", "4.7.650",
        "soft", "Transient", "temporary rate limit (delay notice)", remote="live-com.olc.protection.outlook.com",
        action="delayed", delayed=True)
postfix("postfix-outlookcom-5.2.2-quota.eml", "granny.mae@msn.com",
        "552 5.2.2 Requested action not taken: mailbox unavailable. Mailbox full (in reply to RCPT TO command)",
        "5.2.2", "soft", "SoftBounce", "mailbox full, said with 'mailbox unavailable'", remote="msn-com.olc.protection.outlook.com")

# -- Google Workspace / Gmail DSNs (Gmail as an intermediate: forwarding, groups) ---------------


def gmail(name, rcpt, title, lead, response, status, klass, type_, why, action="failed", diag=None):
    text = (f"\n** {title} **\n\n{lead}\n\n" + ("The response was:\n\n" if response else "") + (response or "") + "\n")
    html = (f"<html><head></head><body><div><table><tr><td><h1 style=\"font-size:22px\">{title}</h1></td></tr>"
            f"<tr><td><p>{lead}</p></td></tr>" + (f"<tr><td><p>The response was:</p><p style=\"font-family:"
                                                    f"monospace\">{response}</p></td></tr>" if response else "")
            + "</table></div></body></html>")
    dsn(name, from_="Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        subject="Delivery Status Notification (" + ("Delay" if action == "delayed" else "Failure") + ")",
        human=text, html=html, human_charset="UTF-8", human_cte="quoted-printable", reporting="googlemail.com",
        rcpts=[{"final": rcpt, "status": status, "diag": diag or response, "remote": "mx.remote.invalid",
                "action": action, "last": True}],
        extra=f"X-Failed-Recipients: {rcpt}" if action == "failed" else "", full=True, arrival=False)
    label(name, type_, klass, [rcpt], status, why)


gmail("gmail-address-not-found.eml", "sophie.laurent@gmail.com", "Address not found",
      "Your message wasn't delivered to sophie.laurent@gmail.com because the address couldn't be found, or is "
      "unable to receive mail.", "The email account that you tried to reach does not exist. Please try "
      "double-checking the recipient's email address for typos or unnecessary spaces. For more information, go to "
      "https://support.google.com/mail/?p=NoSuchUser", "5.1.1", "hard", "HardBounce",
      "Gmail: no such account", diag="550-5.1.1 The email account that you tried to reach does not exist. Please "
      "try double-checking the recipient's email address for typos or unnecessary spaces. For more information, go "
      "to https://support.google.com/mail/?p=NoSuchUser ffacd0b85a97d-3a1b2c3d4e5si1234567f8a.123 - gsmtp")
gmail("gmail-domain-not-found.eml", "mark@shop-exmaple.invalid", "Address not found",
      "Your message wasn't delivered to mark@shop-exmaple.invalid because the domain shop-exmaple.invalid couldn't "
      "be found. Check for typos or unnecessary spaces and try again.",
      "DNS Error: DNS type 'mx' lookup of shop-exmaple.invalid responded with code NXDOMAIN Domain name not found: "
      "shop-exmaple.invalid", "5.1.2", "hard", "HardBounce", "the domain does not exist (NXDOMAIN)",
      diag="DNS Error: DNS type 'mx' lookup of shop-exmaple.invalid responded with code NXDOMAIN")
gmail("gmail-over-quota-inactive.eml", "bert.v@gmail.com", "Message not delivered",
      "There was a problem delivering your message to bert.v@gmail.com. See the technical details below.",
      "The recipient's inbox is out of storage space and inactive. Please direct the recipient to "
      "https://support.google.com/mail/?p=OverQuotaPerm", "5.2.2", "soft", "SoftBounce",
      "Gmail: full and inactive mailbox (5.2.2)", diag="552-5.2.2 The recipient's inbox is out of storage space "
      "and inactive. Please direct the recipient to https://support.google.com/mail/?p=OverQuotaPerm - gsmtp")
gmail("gmail-disabled.eml", "old.nick@gmail.com", "Address not found",
      "Your message wasn't delivered to old.nick@gmail.com because the address couldn't be found, or is unable to "
      "receive mail.", "The email account that you tried to reach is disabled.", "5.2.1", "soft", "SoftBounce",
      "Gmail: the account is disabled", diag="550-5.2.1 The email account that you tried to reach is disabled. "
      "For more information, go to https://support.google.com/mail/?p=DisabledUser - gsmtp")
gmail("gmail-unsolicited.eml", "peter.h@googlemail.com", "Message blocked",
      "Your message to peter.h@googlemail.com has been blocked. See technical details below for more information.",
      "Our system has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to "
      "Gmail, this message has been blocked.", "5.7.1", "soft", "SpamNotification",
      "Gmail: the message looks like spam", diag="550-5.7.1 [203.0.113.25] Our system has detected that this "
      "message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been "
      "blocked. For more information, go to https://support.google.com/mail/?p=UnsolicitedMessageError - gsmtp")
gmail("gmail-workspace-policy.eml", "finance@client-workspace.invalid", "Message blocked",
      "Your message to finance@client-workspace.invalid has been blocked. See technical details below for more "
      "information.", "The user or domain that you are sending to (or from) has a policy that prohibited the mail "
      "that you sent. Please contact your domain administrator for further details.", "5.7.1", "soft", "Blocked",
      "Google Workspace admin content policy", diag="550 5.7.1 The user or domain that you are sending to (or from) "
      "has a policy that prohibited the mail that you sent. Please contact your domain administrator for further "
      "details. For more information, go to https://support.google.com/a/answer/172179 - gsmtp")
gmail("gmail-delay.eml", "j.kowal@remote-slow.invalid", "Delivery incomplete",
      "There was a temporary problem delivering your message to j.kowal@remote-slow.invalid. Gmail will retry for 45 "
      "more hours. You'll be notified if the delivery fails permanently.",
      "The recipient server did not accept our requests to connect. Learn more at "
      "https://support.google.com/mail/answer/7720 [mx.remote-slow.invalid 192.0.2.33: timed out]", "4.4.1", "soft",
      "Transient", "delay notice: connection timeouts", action="delayed")
gmail("gmail-size.eml", "archive@records-office.invalid", "Message not delivered",
      "Your message couldn't be delivered to archive@records-office.invalid because the remote server is "
      "misconfigured. See technical details below for more information.".replace(
          "because the remote server is misconfigured. See technical details below for more information.",
          "because it is too large."),
      "552 5.3.4 Message size exceeds fixed maximum message size", "5.3.4", "soft", "SoftBounce",
      "the remote server's size limit")
gmail("gmail-remote-user-unknown-exim.eml", "w.schulz@handwerk-net.invalid", "Address not found",
      "Your message wasn't delivered to w.schulz@handwerk-net.invalid because the address couldn't be found, or is "
      "unable to receive mail.", "550 Unrouteable address", "5.0.0", "hard", "HardBounce",
      "Exim answering 'Unrouteable address' for a local part it has no router for")

# -- Yahoo / AOL (old style, qmail-derived) -------------------------------------------------------


def yahoo_old(name, rcpt, para, status, klass, type_, why):
    body = ("Sorry, we were unable to deliver your message to the following address.\n\n"
            f"<{rcpt}>:\n{para}\n\n--- Below this line is a copy of the message.\n\n" + copy_of(rcpt, name))
    plain(name, from_="MAILER-DAEMON@yahoo.com", subject="Failure Notice", body=body,
          reporting="nm21-vm3.bullet.mail.ne1.yahoo.com", extra="X-YMailISG: ac_8vz8WLDuN8yOQ3yIGh1YtE1bVYnz2")
    label(name, type_, klass, [rcpt], status, why)


yahoo_old("yahoo-old-remote-user-unknown.eml", "sales@allgemeine-ag.invalid",
          "Remote host said: 550 5.1.1 <sales@allgemeine-ag.invalid>: Recipient address rejected: User unknown in "
          "virtual alias table [RCPT_TO]", "5.1.1", "hard", "HardBounce", "the remote Postfix does not know the user")
yahoo_old("yahoo-old-over-quota.eml", "lisa.m@isp-mail.invalid",
          "Remote host said: 552 5.2.2 <lisa.m@isp-mail.invalid>: Recipient address rejected: Over quota [RCPT_TO]",
          "5.2.2", "soft", "SoftBounce", "over quota")
yahoo_old("yahoo-old-spamhaus.eml", "kontakt@dach-firma.invalid",
          "Remote host said: 554 5.7.1 Service unavailable; Client host [98.136.218.100] blocked using "
          "zen.spamhaus.org; https://www.spamhaus.org/query/ip/98.136.218.100 [RCPT_TO]", "5.7.1", "soft", "Blocked",
          "the forwarding host's IP on Spamhaus")
yahoo_old("yahoo-old-no-yahoo-account.eml", "dave_1977@yahoo.com",
          "554 delivery error: dd This user doesn't have a yahoo.com account (dave_1977@yahoo.com) [0] - "
          "mta1055.mail.ne1.yahoo.com", None, "hard", "HardBounce", "Yahoo: no such account")
yahoo_old("yahoo-old-mailbox-disabled.eml", "carol_k@yahoo.com",
          "554 delivery error: dd Sorry your message to carol_k@yahoo.com cannot be delivered. This mailbox is "
          "disabled (554.30). - mta1212.mail.bf1.yahoo.com", None, "soft", "SoftBounce",
          "Yahoo: disabled (inactive) mailbox")
yahoo_old("yahoo-old-timeout.eml", "desk@slowpoke.invalid",
          "Connected to 192.0.2.120 but connection died. (#4.4.2)\n"
          "I'm not going to try again; this message has been in the queue too long.", "4.4.2", "soft", "SoftBounce",
          "the remote host kept dropping the connection until the queue lifetime ran out")

# Yahoo/AOL modern (DSN from a forwarder), documented replies
postfix("postfix-yahoo-tss04.eml", "gina.r@yahoo.com",
        "421 4.7.0 [TSS04] Messages from 203.0.113.25 temporarily deferred due to unexpected volume or user "
        "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes (in reply to MAIL FROM command)",
        "4.7.0", "soft", "SoftBounce", "Yahoo deferred the IP until the queue gave up",
        remote="mta7.am0.yahoodns.net")
postfix("postfix-yahoo-policy.eml", "hank.p@yahoo.com",
        "554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes "
        "(in reply to end of DATA command)", "5.7.9", "soft", "Blocked", "Yahoo content policy",
        remote="mta5.am0.yahoodns.net")
postfix("postfix-aol-user-unknown.eml", "irene1950@aol.com",
        "554 5.1.1 <irene1950@aol.com>: Recipient address rejected: aol.com (in reply to RCPT TO command)", "5.1.1",
        "hard", "HardBounce", "AOL: unknown recipient", remote="mx-aol.mail.gm0.yahoodns.net")
postfix("postfix-yahoo-mailbox-not-found.eml", "jack.o@yahoo.com",
        "552 1 Requested mail action aborted, mailbox not found (in reply to end of DATA command)", "5.0.0", "hard",
        "HardBounce", "Yahoo: mailbox not found", remote="mta6.am0.yahoodns.net")

# -- Apple iCloud ----------------------------------------------------------------------------------
postfix("postfix-icloud-no-user.eml", "kate.w@icloud.com",
        "550 5.1.1 <kate.w@icloud.com>: user does not exist (in reply to RCPT TO command)", "5.1.1", "hard",
        "HardBounce", "iCloud: the user does not exist", remote="mx01.mail.icloud.com")
postfix("postfix-icloud-cs01.eml", "leo.m@me.com",
        "554 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137 "
        "(in reply to end of DATA command)", "5.7.1", "soft", "Blocked", "iCloud content policy",
        remote="mx02.mail.icloud.com")
postfix("postfix-icloud-quota.eml", "mia.k@mac.com",
        "552 5.2.2 <mia.k@mac.com>: user is over quota (in reply to RCPT TO command)", "5.2.2", "soft", "SoftBounce",
        "iCloud: over quota", remote="mx03.mail.icloud.com")

# -- GMX / Web.de -----------------------------------------------------------------------------------
postfix("postfix-gmx-mailbox-unavailable.eml", "nina.schulz@gmx.de",
        "550 Requested action not taken: mailbox unavailable (in reply to RCPT TO command)", None, "hard", "HardBounce",
        "GMX: unknown mailbox", remote="mx01.emig.gmx.net")
postfix("postfix-webde-policy.eml", "olaf.b@web.de",
        "554-Transaction failed 554-Reject due to policy restrictions. 554 For explanation visit "
        "https://web.de/email/senderguidelines?ip=203.0.113.25&c=hi (in reply to end of DATA command)", None, "soft",
        "Blocked", "Web.de policy rejection", remote="mx-ha03.web.de")
postfix("postfix-gmx-quota.eml", "paul.k@gmx.net",
        "552-Requested mail action aborted: exceeded storage allocation 552 Mailbox quota exceeded "
        "(in reply to RCPT TO command)", None, "soft", "SoftBounce", "GMX: quota", remote="mx00.emig.gmx.net")

# -- Mail.ru / Yandex ------------------------------------------------------------------------------
postfix("postfix-mailru-user-not-found.eml", "ivanov.ivan@mail.ru",
        "550 Message was not accepted -- invalid mailbox.  Local mailbox ivanov.ivan@mail.ru is unavailable: user "
        "not found (in reply to end of DATA command)", None, "hard", "HardBounce", "Mail.ru: no such user",
        remote="mxs.mail.ru")
postfix("postfix-mailru-blocked.eml", "olga.p@bk.ru",
        "550 spam message rejected. Please visit http://help.mail.ru/notspam-support/id?c=abc123 or report details to "
        "abuse@corp.mail.ru. Error code: 8B1F2A. ID: 00000001. (in reply to end of DATA command)", None, "soft",
        "SpamNotification", "Mail.ru judged the message spam", remote="mxs.mail.ru")
postfix("postfix-yandex-no-such-user.eml", "petrov.p@yandex.ru",
        "550 5.7.1 No such user! (in reply to end of DATA command)", "5.7.1", "hard", "HardBounce",
        "Yandex answers 5.7.1 'No such user!' for unknown accounts", remote="mx.yandex.ru")
postfix("postfix-yandex-spam.eml", "sidorova@yandex.ru",
        "554 5.7.1 [2] Message rejected under suspicion of SPAM; https://ya.cc/1IrBc 1764580462-aBcDeF12 "
        "(in reply to end of DATA command)", "5.7.1", "soft", "SpamNotification", "Yandex spam filter",
        remote="mx.yandex.ru")
postfix("postfix-yandex-over-quota.eml", "kuznetsov.a@ya.ru",
        "552 5.2.2 Mailbox size limit exceeded (in reply to end of DATA command)", "5.2.2", "soft", "SoftBounce",
        "Yandex: mailbox full", remote="mx.yandex.ru")

# -- QQ / 163.com ----------------------------------------------------------------------------------
postfix("postfix-qq-content-denied.eml", "88776655@qq.com",
        "550 Mail content denied. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000726 "
        "(in reply to end of DATA command)", None, "soft", "Blocked", "QQ content filter", remote="mx3.qq.com")
postfix("postfix-163-user-not-found.eml", "wangfang2019@163.com",
        "550 User not found: wangfang2019@163.com (in reply to RCPT TO command)", None, "hard", "HardBounce",
        "163.com: no such user", remote="163mx01.mxmail.netease.com")
postfix("postfix-163-dt-spm.eml", "zhangwei88@163.com",
        "554 DT:SPM 163 mx21,Y8mowAD3j1xUv1Fn1X2zCg--.41157S2 1764580462, please see "
        "http://mail.163.com/help/help_spam_16.htm?ip=203.0.113.25&hostid=mx21&time=1764580462 (in reply to end of "
        "DATA command)", None, "soft", "SpamNotification", "NetEase spam filter (DT:SPM)",
        remote="163mx02.mxmail.netease.com")
postfix("postfix-126-mailbox-full.eml", "liu.yang@126.com",
        "552 Requested mail action aborted: exceeded mailsize limit (in reply to end of DATA command)", None, "soft",
        "SoftBounce", "NetEase: the message exceeds the size limit", remote="126mx01.mxmail.netease.com")

# -- Orange / Wanadoo / Free.fr --------------------------------------------------------------------
postfix("postfix-orange-ofr-416.eml", "jean.dupont@orange.fr",
        "550 5.1.1 <jean.dupont@orange.fr>: Recipient address rejected: Adresse d au moins un destinataire invalide. "
        "Invalid recipient. OFR_416 [416] (in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce",
        "Orange: invalid recipient", remote="smtp-in.orange.fr")
postfix("postfix-wanadoo-ofr-104.eml", "marie.curie@wanadoo.fr",
        "421 mwinf5c10 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR004_104 "
        "[104] (in reply to end of DATA command)", "4.0.0", "soft", "SoftBounce",
        "Orange refused the IP for a while (reputation), the queue gave up", remote="smtp-in.orange.fr")
postfix("postfix-free-quota.eml", "pierre.martin@free.fr",
        "552 5.2.2 Quota exceeded (mailbox for user is full) (in reply to RCPT TO command)", "5.2.2", "soft",
        "SoftBounce", "Free.fr: mailbox full", remote="mx1.free.fr")
postfix("postfix-free-too-many-spams.eml", "lucie.blanc@free.fr",
        "421 Too many spams from your IP (203.0.113.25), please visit http://postmaster.free.fr/ (in reply to MAIL "
        "FROM command)", "4.0.0", "soft", "SoftBounce", "Free.fr IP reputation deferrals until expiry",
        remote="mx2.free.fr")

# -- security gateways behind a relay: Mimecast, Proofpoint, Barracuda, IronPort -------------------
postfix("postfix-mimecast-invalid-recipient.eml", "j.wright@lawfirm-uk.invalid",
        "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 "
        "[aBcDeFgHiJkLmNoPqRsT.uk123] (in reply to RCPT TO command)", None, "hard", "HardBounce",
        "Mimecast: the recipient is not a valid address", remote="eu-smtp-inbound-1.mimecast.com")
postfix("postfix-mimecast-envelope-blocked.eml", "r.evans@lawfirm-uk.invalid",
        "550 Administrative prohibition - envelope blocked - https://community.mimecast.com/docs/DOC-1369#550 "
        "[xYz123.uk456] (in reply to RCPT TO command)", None, "soft", "Blocked",
        "Mimecast: the admin blocked our envelope sender", remote="eu-smtp-inbound-2.mimecast.com")
postfix("postfix-mimecast-temp.eml", "d.hughes@lawfirm-uk.invalid",
        "451 Internal resource temporarily unavailable - https://community.mimecast.com/docs/DOC-1369#451 "
        "(in reply to RCPT TO command)", "4.0.0", "soft", "Transient", "Mimecast temporary failure (delay notice)",
        remote="eu-smtp-inbound-1.mimecast.com", action="delayed", delayed=True)
postfix("postfix-proofpoint-blocked.eml", "a.chen@bigcorp-pp.invalid",
        "554 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.25 (in reply to MAIL FROM command)", None,
        "soft", "Blocked", "Proofpoint IP reputation", remote="mx0a-001b2d01.pphosted.com")
postfix("postfix-proofpoint-user-unknown.eml", "b.lopez@bigcorp-pp.invalid",
        "550 5.1.1 User Unknown (in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce",
        "Proofpoint recipient verification", remote="mx0b-001b2d01.pphosted.com")
postfix("postfix-barracuda-reputation.eml", "c.ward@smallcity-gov.invalid",
        "554 Service unavailable; Client host [203.0.113.25] blocked using Barracuda Reputation; "
        "http://www.barracudanetworks.com/reputation/?r=1&ip=203.0.113.25 (in reply to RCPT TO command)", None,
        "soft", "Blocked", "Barracuda reputation", remote="d123456a.ess.barracudanetworks.com")
postfix("postfix-barracuda-permanent-failure.eml", "d.price@smallcity-gov.invalid",
        "550 permanent failure for one or more recipients (d.price@smallcity-gov.invalid:blocked) (in reply to end of "
        "DATA command)", None, "soft", "Blocked", "Barracuda ESS blocked the message for that recipient",
        remote="d123456b.ess.barracudanetworks.com")
postfix("postfix-ironport-address-rejected.eml", "e.king@manufacturer-ip.invalid",
        "550 #5.1.0 Address rejected. (in reply to RCPT TO command)", "5.1.0", "hard", "HardBounce",
        "IronPort LDAP accept query: the address is not in the directory", remote="esa1.manufacturer-ip.iphmx.com")
postfix("postfix-sorbs.eml", "f.young@oldschool-isp.invalid",
        "554 5.7.1 Service unavailable; Client host [203.0.113.25] blocked using dnsbl.sorbs.net; Currently Sending "
        "Spam See: http://www.sorbs.net/lookup.shtml?203.0.113.25 (in reply to RCPT TO command)", "5.7.1", "soft",
        "Blocked", "SORBS listing", remote="mx.oldschool-isp.invalid")
postfix("postfix-dmarc-reject.eml", "g.hall@strict-receiver.invalid",
        "550 5.7.1 Email rejected per DMARC policy for shop.example.com (in reply to end of DATA command)", "5.7.1",
        "soft", "DMARCPolicy", "DMARC failure", remote="mx.strict-receiver.invalid")
postfix("postfix-dkim-fail.eml", "h.allen@strict-receiver.invalid",
        "550 5.7.20 Message rejected: no valid DKIM signature found (in reply to end of DATA command)", "5.7.20",
        "soft", "Blocked", "DKIM failure", remote="mx.strict-receiver.invalid")
postfix("postfix-sender-rejected.eml", "i.scott@picky-host.invalid",
        "553 5.1.8 <b+abc@bounces.shop.example.com>: Sender address rejected: Domain not found (in reply to MAIL FROM "
        "command)", "5.1.8", "soft", "Blocked", "the receiver could not resolve our bounce domain",
        remote="mx.picky-host.invalid")
postfix("postfix-null-mx.eml", "j.green@no-mail-here.invalid",
        "", "5.1.10", "hard", "HardBounce", "the domain publishes a null MX", remote="no-mail-here.invalid",
        own="Domain no-mail-here.invalid does not accept mail (nullMX)", diagtype="X-Postfix")
postfix("postfix-multi-mixed.eml", "k.adams@mixed-corp.invalid",
        "550 5.1.1 <k.adams@mixed-corp.invalid>: Recipient address rejected: User unknown in local recipient table "
        "(in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce", "two recipients: one unknown, one over quota",
        remote="mail.mixed-corp.invalid",
        extra_rcpts=[("l.baker@mixed-corp.invalid", "552 5.2.2 <l.baker@mixed-corp.invalid>: Recipient address "
                      "rejected: Mailbox is full (in reply to RCPT TO command)", "5.2.2")])
# the mixed file: each recipient labelled on its own
LABELS["postfix-multi-mixed.eml"]["failures"] = [
    {"recipient": "k.adams@mixed-corp.invalid", "type": "HardBounce", "class": "hard", "why": "user unknown"},
    {"recipient": "l.baker@mixed-corp.invalid", "type": "SoftBounce", "class": "soft", "why": "mailbox full"}]
postfix("postfix-zimbra-quota.eml", "m.clark@zimbra-school.invalid",
        "452 4.2.2 <m.clark@zimbra-school.invalid>: Recipient address rejected: Over quota, try again later "
        "(in reply to RCPT TO command)", "4.2.2", "soft", "SoftBounce", "Zimbra over quota; the queue gave up",
        remote="mail.zimbra-school.invalid")
postfix("postfix-zimbra-account-closed.eml", "n.lewis@zimbra-school.invalid",
        "550 5.1.1 <n.lewis@zimbra-school.invalid>: Recipient address rejected: account closed "
        "(in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce", "Zimbra: the account was closed",
        remote="mail.zimbra-school.invalid")
postfix("postfix-no-mx-host-not-found.eml", "o.walker@typo-domain-xx.invalid",
        "", "5.4.4", "hard", "HardBounce", "the domain has neither MX nor A: Host or domain name not found",
        remote="typo-domain-xx.invalid", own="Host or domain name not found. Name service error for "
        "name=typo-domain-xx.invalid type=AAAA: Host not found", diagtype="X-Postfix")
postfix("postfix-helo-rejected.eml", "p.hill@pedantic-mx.invalid",
        "504 5.5.2 <relay1>: Helo command rejected: need fully-qualified hostname (in reply to RCPT TO command)",
        "5.5.2", "soft", "Blocked", "the relay's HELO name was not fully qualified", remote="mx.pedantic-mx.invalid")
postfix("postfix-moved.eml", "q.turner@oldfirm.invalid",
        "551 5.1.6 User has moved; please try <q.turner@newfirm.invalid> (in reply to RCPT TO command)", "5.1.6",
        "hard", "HardBounce", "the mailbox has moved", remote="mail.oldfirm.invalid")
postfix("postfix-greylist-forever.eml", "r.young@greylister.invalid",
        "450 4.2.0 <r.young@greylister.invalid>: Recipient address rejected: Greylisted, see "
        "http://postgrey.schweikert.ch/help/greylister.invalid.html (in reply to RCPT TO command)", "4.2.0", "soft",
        "SoftBounce", "greylisting until the queue gave up", remote="mx.greylister.invalid")

# -- Exim with customised and translated texts ------------------------------------------------


def exim(name, rcpts, intro, klass, type_, status, why, host="mx.webhoster-ru.invalid", subject=None,
         charset="utf-8", cte="8bit", failed_header=True, labels=None):
    paras = "\n\n".join(f"  {r}\n    {t}" for r, t in rcpts)
    body = intro + "\n\n" + paras + "\n\n------ This is a copy of the message, including all the headers. ------\n\n" \
        + copy_of(rcpts[0][0], name)
    extra = ("X-Failed-Recipients: " + ", ".join(r for r, _ in rcpts) + "\n" if failed_header else "") \
        + "Auto-Submitted: auto-replied"
    plain(name, from_=f"Mail Delivery System <Mailer-Daemon@{host}>",
          subject=subject or "Mail delivery failed: returning message to sender", body=body, extra=extra,
          charset=charset, cte=cte, reporting=host)
    label(name, type_, klass, [r for r, _ in rcpts], status, why)


exim("exim-ru-user-not-found.eml", [("smirnov@company-ru.invalid",
     "SMTP error from remote mail server after RCPT TO:<smirnov@company-ru.invalid>:\n"
     "    host mx.company-ru.invalid [192.0.2.140]: 550 5.1.1 <smirnov@company-ru.invalid>: Recipient address "
     "rejected: User unknown in virtual mailbox table")],
     "Это сообщение создано автоматически программой доставки почты.\n\n"
     "Ваше сообщение не может быть доставлено одному или нескольким получателям.\n"
     "Это постоянная ошибка. Адреса, на которые не удалось доставить:",
     "hard", "HardBounce", "5.1.1", "Russian Exim template; remote user unknown",
     subject="Ошибка доставки почты: возврат сообщения отправителю")
exim("exim-ru-mailbox-full.eml", [("volkova@company-ru.invalid",
     "Mailbox quota exceeded\n    Ящик получателя переполнен.")],
     "Это сообщение создано автоматически программой доставки почты.\n\n"
     "Ваше сообщение не может быть доставлено одному или нескольким получателям.\n"
     "Это постоянная ошибка. Адреса, на которые не удалось доставить:",
     "soft", "SoftBounce", None, "Russian Exim template; local mailbox full")
exim("exim-custom-hosting-unrouteable.eml", [("webmaster@parked-domain.invalid", "Unrouteable address")],
     "Hello, this is the mail server of ExampleHosting.\n\n"
     "We tried to deliver your message but it was rejected. This is a permanent error. The following address(es) "
     "failed:", "hard", "HardBounce", None, "customised Exim text; no router accepted the domain (unknown local domain)")
exim("exim-custom-retry-timeout.eml", [("info@down-for-weeks.invalid",
     "retry timeout exceeded")],
     "This message was created automatically by mail delivery software.\n\n"
     "A message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error. "
     "The following address(es) failed:", "soft", "SoftBounce", None,
     "Exim gave up after its retry rules timed out")
exim("exim-cpanel-blackhole.eml", [("noreply-inbox@cpanel-site.invalid",
     "SMTP error from remote mail server after end of data:\n"
     "    host cpanel-site.invalid [192.0.2.150]: 550 No Such User Here\"")],
     "This message was created automatically by mail delivery software.\n\n"
     "A message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error. "
     "The following address(es) failed:", "hard", "HardBounce", None, "cPanel: 'No Such User Here'")
exim("exim-cpanel-hourly-limit.eml", [("client@shared-host.invalid",
     "Domain shop.example.com has exceeded the max emails per hour (100/100 (100%)) allowed.  Message discarded.")],
     "This message was created automatically by mail delivery software.\n\n"
     "A message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error. "
     "The following address(es) failed:", "soft", "SoftBounce", None, "cPanel outbound hourly limit of a forwarder")
exim("exim-two-recipients.eml", [("alpha@duo-corp.invalid",
     "SMTP error from remote mail server after RCPT TO:<alpha@duo-corp.invalid>:\n"
     "    host mx.duo-corp.invalid [192.0.2.160]: 550 5.1.1 <alpha@duo-corp.invalid>: Recipient address rejected: "
     "undeliverable address: unknown user"), ("beta@duo-corp.invalid",
     "SMTP error from remote mail server after RCPT TO:<beta@duo-corp.invalid>:\n"
     "    host mx.duo-corp.invalid [192.0.2.160]: 550 5.1.1 <beta@duo-corp.invalid>: Recipient address rejected: "
     "undeliverable address: unknown user")],
     "This message was created automatically by mail delivery software.\n\n"
     "A message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error. "
     "The following address(es) failed:", "hard", "HardBounce", "5.1.1", "two unknown users")
exim("exim-de-quota.eml", [("h.becker@stadtwerke-de.invalid",
     "SMTP error from remote mail server after RCPT TO:<h.becker@stadtwerke-de.invalid>:\n"
     "    host mail.stadtwerke-de.invalid [192.0.2.170]: 552 5.2.2 Das Postfach des Empfängers ist voll")],
     "Diese Nachricht wurde automatisch vom Mailsystem erstellt.\n\n"
     "Ihre Nachricht konnte nicht an alle Empfänger zugestellt werden. Dies ist ein permanenter Fehler.\n"
     "Die folgenden Adressen schlugen fehl:", "soft", "SoftBounce", "5.2.2", "German Exim template; full mailbox",
     subject="Unzustellbar: Ihre Nachricht wurde zurückgesandt")

# -- Postfix with non-English templates, Japanese, Chinese, Portuguese, Spanish ------------------
postfix("postfix-ja-user-unknown.eml", "tanaka.h@kaisha-jp.invalid",
        "550 5.1.1 <tanaka.h@kaisha-jp.invalid>: Recipient address rejected: User unknown in local recipient table "
        "(in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce", "Japanese Postfix template; user unknown",
        host="mail.kaisha-jp.invalid", remote="mx.kaisha-jp.invalid",
        lang="こちらは mail.kaisha-jp.invalid のメールシステムです。\n\n"
             "申し訳ありませんが、お送りいただいたメッセージを以下の宛先に配送できませんでした。\n"
             "詳しくはシステム管理者にお問い合わせください。\n\n                   メールシステム\n\n")
postfix("postfix-ja-quota.eml", "suzuki.k@kaisha-jp.invalid",
        "552 5.2.2 <suzuki.k@kaisha-jp.invalid>: メールボックスの容量を超えています (in reply to RCPT TO command)",
        "5.2.2", "soft", "SoftBounce", "Japanese: over the mailbox capacity", host="mail.kaisha-jp.invalid",
        remote="mx.kaisha-jp.invalid",
        lang="こちらは mail.kaisha-jp.invalid のメールシステムです。\n\n"
             "申し訳ありませんが、お送りいただいたメッセージを以下の宛先に配送できませんでした。\n\n")
postfix("postfix-pt-br-mailbox-full.eml", "joao.silva@empresa-br.invalid",
        "552 5.2.2 <joao.silva@empresa-br.invalid>: Caixa postal cheia (in reply to RCPT TO command)", "5.2.2", "soft",
        "SoftBounce", "Brazilian Portuguese: full mailbox", host="smtp.provedor-br.invalid",
        remote="mx.empresa-br.invalid",
        lang="Este é o sistema de correio do servidor smtp.provedor-br.invalid.\n\n"
             "Lamentamos informar que sua mensagem não pôde ser entregue a um ou mais destinatários.\n\n")
postfix("postfix-pt-br-nao-existe.eml", "maria.souza@empresa-br.invalid",
        "550 5.1.1 <maria.souza@empresa-br.invalid>: Usuario nao existe (in reply to RCPT TO command)", "5.1.1",
        "hard", "HardBounce", "Brazilian Portuguese: the user does not exist", host="smtp.provedor-br.invalid",
        remote="mx.empresa-br.invalid",
        lang="Este é o sistema de correio do servidor smtp.provedor-br.invalid.\n\n"
             "Lamentamos informar que sua mensagem não pôde ser entregue a um ou mais destinatários.\n\n")
postfix("postfix-es-buzon-lleno.eml", "carmen.ruiz@empresa-es.invalid",
        "552 5.2.2 <carmen.ruiz@empresa-es.invalid>: El buzón del destinatario está lleno (in reply to RCPT TO command)",
        "5.2.2", "soft", "SoftBounce", "Spanish: full mailbox", host="correo.isp-es.invalid",
        remote="mx.empresa-es.invalid",
        lang="Este es el sistema de correo del servidor correo.isp-es.invalid.\n\n"
             "Lamentamos informarle de que su mensaje no se ha podido entregar a uno o más destinatarios.\n\n")

# Chinese provider bounce (NetEase style), plain text, GB18030
cn = ("您好！\n\n很抱歉，您发送的邮件被退回了。\n\n"
      "原邮件信息：\n时　间：2026-12-01 17:14:22\n主　题：Your order #48213 has shipped\n"
      "收件人：chenjing@company-cn.invalid\n\n"
      "退信原因：\n收件人邮箱已满，无法接收新邮件。\n"
      "Remote server said: 552 5.2.2 Mailbox is full\n\n"
      "建议解决方案：\n请稍后重新发送，或通过其他方式联系收件人。\n\n此为系统邮件，请勿回复。\n")
plain("netease-cn-mailbox-full.eml", from_="postmaster@126.com", subject="系统退信",
      body=cn, charset="GB18030", cte="base64", reporting="m15-112.126.com")
label("netease-cn-mailbox-full.eml", "SoftBounce", "soft", ["chenjing@company-cn.invalid"], "5.2.2",
      "Chinese bounce: the mailbox is full")
cn2 = ("您好！\n\n很抱歉，您发送的邮件被退回了。\n\n"
       "原邮件信息：\n时　间：2026-12-01 17:14:22\n主　题：Your order #48213 has shipped\n"
       "收件人：zhaolei@company-cn.invalid\n\n"
       "退信原因：\n收件人不存在。\n"
       "Remote server said: 550 User not found: zhaolei@company-cn.invalid\n\n此为系统邮件，请勿回复。\n")
plain("netease-cn-user-not-found.eml", from_="postmaster@163.com", subject="系统退信",
      body=cn2, charset="GB18030", cte="base64", reporting="m12-33.163.com")
label("netease-cn-user-not-found.eml", "HardBounce", "hard", ["zhaolei@company-cn.invalid"], None,
      "Chinese bounce: the recipient does not exist")
qq = ("您好，\n\n您发送的邮件未能成功投递。\n\n收件人：qianwu@partner-cn.invalid\n"
      "失败原因：对方服务器拒收 (550 5.7.1 Message rejected as spam by Content Filtering)\n\n"
      "原始邮件：\n主题：Your order #48213 has shipped\n")
plain("qq-cn-rejected-spam.eml", from_="PostMaster <postmaster@qq.com>", subject="退信：Your order #48213 has shipped",
      body=qq, charset="utf-8", cte="base64", reporting="smtpbg.qq.com")
label("qq-cn-rejected-spam.eml", "SpamNotification", "soft", ["qianwu@partner-cn.invalid"], "5.7.1",
      "QQ relays the remote's spam rejection")

# sendmail DSN, Japanese human part (ISO-2022-JP is what Japanese MTAs use)
jp = ("送信されたメールは以下の理由で配送できませんでした。\n\n"
      "   ----- The following addresses had permanent fatal errors -----\n<sato.y@keitai-jp.invalid>\n"
      "    (reason: 550 Unknown user sato.y@keitai-jp.invalid)\n\n"
      "   ----- Transcript of session follows -----\n... while talking to mx.keitai-jp.invalid.:\n"
      ">>> DATA\n<<< 550 Unknown user sato.y@keitai-jp.invalid\n550 5.1.1 <sato.y@keitai-jp.invalid>... User unknown\n"
      "<<< 503 5.0.0 Need RCPT (recipient)\n")
dsn("sendmail-ja-unknown-user.eml", from_="Mail Delivery Subsystem <MAILER-DAEMON@relay.jp-isp.invalid>",
    subject="Returned mail: see transcript for details", human=jp, human_charset="utf-8", human_cte="base64",
    reporting="relay.jp-isp.invalid", received_from="relay1.shop.example.com",
    rcpts=[{"final": "sato.y@keitai-jp.invalid", "original": "sato.y@keitai-jp.invalid", "status": "5.1.1",
            "remote": "mx.keitai-jp.invalid", "diag": "550 Unknown user sato.y@keitai-jp.invalid", "last": True}])
label("sendmail-ja-unknown-user.eml", "HardBounce", "hard", ["sato.y@keitai-jp.invalid"], "5.1.1",
      "Japanese sendmail; unknown user")

# -- Amazon SES notification forwarded by an application (JSON in the body) ----------------------
ses = json.dumps({"notificationType": "Bounce", "bounce": {
    "feedbackId": "0100018a-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-000000", "bounceType": "Transient",
    "bounceSubType": "MailboxFull", "bouncedRecipients": [{"emailAddress": "quinn.r@ses-client.invalid",
    "action": "failed", "status": "5.2.2", "diagnosticCode": "smtp; 552 5.2.2 Mailbox full"}],
    "timestamp": "2026-12-01T09:14:30.000Z", "reportingMTA": "dns; a8-12.smtp-out.amazonses.com"},
    "mail": {"timestamp": "2026-12-01T09:14:22.000Z", "source": "noreply@shop.example.com",
             "destination": ["quinn.r@ses-client.invalid"]}}, indent=2)
plain("ses-forwarded-mailboxfull.eml", from_="AWS Notifications <no-reply@sns.amazonaws.com>",
      subject="AWS Notification Message", body=ses + "\n\n--\nIf you wish to stop receiving notifications from this "
      "topic, please click or visit the link below to unsubscribe:\nhttps://sns.us-east-1.amazonaws.com/unsubscribe."
      "html?SubscriptionArn=arn:aws:sns:us-east-1:123456789012:ses-bounces\n", reporting="a8-50.smtp-out.amazonses.com")
label("ses-forwarded-mailboxfull.eml", "SoftBounce", "soft", ["quinn.r@ses-client.invalid"], "5.2.2",
      "SES bounce notification (Transient/MailboxFull) relayed by SNS e-mail")
ses2 = json.dumps({"notificationType": "Bounce", "bounce": {
    "bounceType": "Permanent", "bounceSubType": "General", "bouncedRecipients": [
        {"emailAddress": "rita.s@ses-client.invalid", "action": "failed", "status": "5.1.1",
         "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
    "timestamp": "2026-12-01T09:14:30.000Z", "reportingMTA": "dns; b224-13.smtp-out.amazonses.com"},
    "mail": {"source": "noreply@shop.example.com", "destination": ["rita.s@ses-client.invalid"]}}, indent=2)
plain("ses-forwarded-user-unknown.eml", from_="AWS Notifications <no-reply@sns.amazonaws.com>",
      subject="AWS Notification Message", body=ses2 + "\n", reporting="a8-50.smtp-out.amazonses.com")
label("ses-forwarded-user-unknown.eml", "HardBounce", "hard", ["rita.s@ses-client.invalid"], "5.1.1",
      "SES bounce notification, permanent, user unknown")

# -- ARF complaints -------------------------------------------------------------------------------


def arf(name, rcpt_label, fields, human, from_, subject, orig_to, orig_extra="", redact=False):
    hdrs = original_headers(orig_to, name)
    if orig_extra:
        hdrs = orig_extra + hdrs
    multipart_mixed(name, from_=from_, subject=subject, subtype="report; report-type=feedback-report",
                    parts=[("Content-Type: text/plain; charset=\"US-ASCII\"\nContent-Transfer-Encoding: 7bit", human),
                           ("Content-Type: message/feedback-report", fields),
                           ("Content-Type: message/rfc822\nContent-Disposition: inline", hdrs + "\n" + ORIGINAL_BODY)],
                    to="fbl@bounces.shop.example.com", reporting=from_.split("@")[-1].rstrip(">"))
    label(name, "SpamComplaint", "complaint", [rcpt_label] if rcpt_label else [], None, "a feedback-loop complaint")


arf("arf-microsoft-jmrp.eml", "sam.b@hotmail.com",
    "Feedback-Type: abuse\nUser-Agent: Hotmail FBL\nVersion: 1\nOriginal-Mail-From: <b+x@bounces.shop.example.com>\n"
    "Arrival-Date: Tue, 01 Dec 2026 09:14:25 -0800\nSource-IP: 203.0.113.25\nReported-Domain: shop.example.com\n"
    "Authentication-Results: hotmail.com; spf=pass; dkim=pass header.d=shop.example.com\n",
    "This is an email abuse report for an email message received from IP 203.0.113.25 on Tue, 01 Dec 2026 "
    "09:14:25 -0800.\nFor more information about this format please see http://tools.ietf.org/html/rfc5965.\n",
    "staff@hotmail.com", "complaint about message from 203.0.113.25", "sam.b@hotmail.com",
    orig_extra="X-HmXmrOriginalRecipient: <sam.b@hotmail.com>\n")
arf("arf-yahoo-fbl.eml", "tina.c@yahoo.com",
    "Feedback-Type: abuse\nUser-Agent: Yahoo!-Mail-Feedback/2.0\nVersion: 0.1\n"
    "Original-Mail-From: <b+x@bounces.shop.example.com>\nOriginal-Rcpt-To: tina.c@yahoo.com\n"
    "Received-Date: Tue, 01 Dec 2026 09:14:25 -0800\nReported-Domain: shop.example.com\n"
    "Authentication-Results: mta1000.mail.ne1.yahoo.com  from=shop.example.com; domainkeys=neutral (no sig);  "
    "from=shop.example.com; dkim=pass (ok)\n",
    "This is an email abuse report for an email message from shop.example.com on Tue, 01 Dec 2026 09:14:25 -0800\n",
    "feedback@arf.mail.yahoo.com", "FW: Your order #48213 has shipped", "tina.c@yahoo.com")
arf("arf-aol-redacted.eml", None,
    "Feedback-Type: abuse\nUser-Agent: AOL SComp\nVersion: 0.1\nReceived-Date: Tue, 01 Dec 2026 12:14:25 -0500\n"
    "Source-IP: 203.0.113.25\nReported-Domain: shop.example.com\nRedacted-Address: redacted\n",
    "This is an email abuse report for an email message received from IP 203.0.113.25 on Tue, 01 Dec 2026 "
    "12:14:25 -0500.\n", "scomp@aol.net", "Email Feedback Report for IP 203.0.113.25", "redacted@aol.com")

# -- auto-replies ---------------------------------------------------------------------------------
plain("autoreply-exchange-oof.eml", from_="Uwe Krause <u.krause@contoso-corp.invalid>",
      subject="Automatische Antwort: Your order #48213 has shipped",
      body="Vielen Dank für Ihre Nachricht. Ich bin bis zum 14.12. nicht im Büro und habe keinen Zugriff auf meine "
           "E-Mails. In dringenden Fällen wenden Sie sich bitte an info@contoso-corp.invalid.\n",
      charset="utf-8", cte="quoted-printable", reporting="EXCH01.contoso-corp.invalid",
      extra="Auto-Submitted: auto-generated\nX-Auto-Response-Suppress: All\nThread-Topic: Your order #48213 has "
            "shipped\nIn-Reply-To: <x@shop.example.com>\nX-MS-Exchange-Inbox-Rules-Loop: u.krause@contoso-corp.invalid")
label("autoreply-exchange-oof.eml", "AutoResponder", "autoreply", ["u.krause@contoso-corp.invalid"], None,
      "German Exchange out-of-office reply")
plain("autoreply-gmail-vacation.eml", from_="Vera Ortiz <vera.ortiz@gmail.com>",
      subject="Re: Your order #48213 has shipped",
      body="Hi! I'm travelling until December 10th with limited access to email. I'll reply when I'm back.\n\nVera\n",
      reporting="mail-sor-f41.google.com", extra="Auto-Submitted: auto-replied\nPrecedence: bulk\n"
                                                 "In-Reply-To: <x@shop.example.com>")
label("autoreply-gmail-vacation.eml", "AutoResponder", "autoreply", ["vera.ortiz@gmail.com"], None, "Gmail vacation")
plain("autoreply-fr-absence.eml", from_="Claire Morel <c.morel@mairie-fr.invalid>",
      subject="Réponse automatique : Your order #48213 has shipped",
      body="Bonjour,\n\nJe suis absente du bureau jusqu'au lundi 7 décembre. Pour toute urgence, merci de contacter "
           "l'accueil au 01 23 45 67 89.\n\nCordialement,\nClaire Morel\n", charset="iso-8859-1",
      cte="quoted-printable", reporting="smtp.mairie-fr.invalid")
label("autoreply-fr-absence.eml", "AutoResponder", "autoreply", ["c.morel@mairie-fr.invalid"], None,
      "French absence reply, no Auto-Submitted field")
plain("autoreply-helpdesk-ticket.eml", from_="Support <support@saas-helpdesk.invalid>",
      subject="[Ticket #884213] Your order #48213 has shipped",
      body="Dear customer,\n\nThank you for contacting us. This is an automated response confirming the receipt of "
           "your ticket. Our team will get back to you as soon as possible.\n\nTicket ID: 884213\n",
      reporting="mailer.saas-helpdesk.invalid", extra="Auto-Submitted: auto-replied\nX-Autoreply: yes")
label("autoreply-helpdesk-ticket.eml", "AutoResponder", "autoreply", ["support@saas-helpdesk.invalid"], None,
      "ticket system acknowledgement")
plain("autoreply-left-company.eml", from_="Walter Ng <w.ng@logistics-co.invalid>",
      subject="Automatic reply: Your order #48213 has shipped",
      body="Walter no longer works at Logistics Co. Please direct your enquiries to orders@logistics-co.invalid.\n",
      reporting="mail.logistics-co.invalid", extra="Auto-Submitted: auto-replied\nX-Auto-Response-Suppress: All")
label("autoreply-left-company.eml", "AutoResponder", "autoreply", ["w.ng@logistics-co.invalid"], None,
      "an auto-reply saying the person left (the mailbox still delivers)")
plain("autoreply-es-vacaciones.eml", from_="Ana Torres <ana.torres@empresa-es.invalid>",
      subject="Respuesta automática: Your order #48213 has shipped",
      body="Estoy de vacaciones hasta el 15 de diciembre. Responderé a su correo a mi regreso.\n", charset="utf-8",
      cte="quoted-printable", reporting="mx.empresa-es.invalid", extra="Auto-Submitted: auto-replied")
label("autoreply-es-vacaciones.eml", "AutoResponder", "autoreply", ["ana.torres@empresa-es.invalid"], None,
      "Spanish vacation reply")
plain("autoreply-ja.eml", from_="=?UTF-8?B?5bGx55Sw5aSq6YOO?= <yamada.t@kaisha-jp.invalid>",
      subject="=?UTF-8?B?6Ieq5YuV5b+c562UOiBZb3VyIG9yZGVyICM0ODIxMyBoYXMgc2hpcHBlZA==?=",
      body="お世話になっております。\n12月8日まで不在にしております。戻り次第ご連絡いたします。\n", charset="utf-8",
      cte="base64", reporting="mx.kaisha-jp.invalid", extra="Auto-Submitted: auto-replied")
label("autoreply-ja.eml", "AutoResponder", "autoreply", ["yamada.t@kaisha-jp.invalid"], None, "Japanese absence reply")

# -- virus notices, spam notices, challenge/response ----------------------------------------------
plain("virus-gateway-notice.eml", from_="Security Gateway <postmaster@secure-gw.invalid>",
      subject="VIRUS ALERT: Your message to x.li@secure-client.invalid",
      body="The message you sent to x.li@secure-client.invalid was blocked because it contains a virus.\n\n"
           "   Virus name: Eicar-Signature\n   Attachment: invoice.zip\n\nNo action was taken on the recipient's "
           "side. Please clean your system before sending again.\n", reporting="secure-gw.invalid")
label("virus-gateway-notice.eml", "VirusNotification", "soft", ["x.li@secure-client.invalid"], None,
      "gateway virus notice")
plain("virus-sophos-quarantine.eml", from_="PureMessage <puremessage@university-uk.invalid>",
      subject="Message quarantined: Your order #48213 has shipped",
      body="A message you sent to y.hart@university-uk.invalid was quarantined.\n\n"
           "Reason: The attachment \"label.pdf.exe\" matches a blocked file type policy (executable).\n"
           "The message will not be delivered.\n", reporting="pmx.university-uk.invalid")
label("virus-sophos-quarantine.eml", "Blocked", "soft", ["y.hart@university-uk.invalid"], None,
      "a quarantine notice for a blocked attachment type (policy, no virus found)")
plain("challenge-spamarrest.eml", from_="Zoe Park <zoe.park@personal-mail.invalid>",
      subject="Re: Your order #48213 has shipped [SpamArrest verification]",
      body="Hello,\n\nI use Spam Arrest to protect my inbox. Please click the link below to verify that you are a "
           "real person, and your message will be delivered:\n\n"
           "https://www.spamarrest.com/verify?id=abcdef123456\n\nThank you.\n", reporting="mx.spamarrest.com",
      extra="Auto-Submitted: auto-replied")
label("challenge-spamarrest.eml", "ChallengeVerification", "autoreply", ["zoe.park@personal-mail.invalid"], None,
      "Spam Arrest challenge")
plain("challenge-uol-antispam.eml", from_="UOL AntiSpam <antispam@uol.com.br>",
      subject="Confirmação de envio de mensagem para fabio.lima@uol.com.br",
      body="Olá,\n\nVocê enviou uma mensagem para fabio.lima@uol.com.br, que utiliza o UOL AntiSpam.\n"
           "Para que sua mensagem seja entregue, confirme o envio digitando os caracteres da imagem na página:\n\n"
           "http://antispam.uol.com.br/confirm?id=999888777\n\nSua mensagem ficará retida até a confirmação.\n",
      charset="utf-8", cte="quoted-printable", reporting="a-mx.uol.com.br")
label("challenge-uol-antispam.eml", "ChallengeVerification", "autoreply", ["fabio.lima@uol.com.br"], None,
      "UOL AntiSpam challenge (Portuguese)")

# -- delay notices --------------------------------------------------------------------------------
dsn("sendmail-dsn-delay-4h.eml", from_="Mail Delivery Subsystem <MAILER-DAEMON@relay.slowcorp.invalid>",
    subject="Warning: could not send message for past 4 hours",
    human=("    **********************************************\n"
           "    **      THIS IS A WARNING MESSAGE ONLY      **\n"
           "    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **\n"
           "    **********************************************\n\n"
           "The original message was received at Tue, 1 Dec 2026 05:14:25 -0500\n"
           "from relay1.shop.example.com [203.0.113.25]\n\n"
           "   ----- Transcript of session follows -----\n"
           "<z.moss@slowcorp-branch.invalid>... Deferred: Connection timed out with mx.slowcorp-branch.invalid.\n"
           "Warning: message still undelivered after 4 hours\nWill keep trying until message is 5 days old\n"),
    reporting="relay.slowcorp.invalid", received_from="relay1.shop.example.com",
    rcpts=[{"final": "z.moss@slowcorp-branch.invalid", "original": "z.moss@slowcorp-branch.invalid", "action": "delayed",
            "status": "4.4.1", "remote": "mx.slowcorp-branch.invalid", "last": True,
            "will": "Sun, 6 Dec 2026 05:14:25 -0500"}])
label("sendmail-dsn-delay-4h.eml", "Transient", "soft", ["z.moss@slowcorp-branch.invalid"], "4.4.1", "delay warning")
exchange2010("exchange2010-delay.eml", "a.ford@branch-office.invalid",
             "This message hasn't been delivered yet. Delivery will continue to be attempted.",
             "#451 4.4.0 Primary target IP address responded with: \"421 4.2.1 Unable to connect.\" Attempted "
             "failover to alternate host, but that did not succeed. ##", "4.4.0", "soft", "Transient",
             "Exchange delay notification", action="delayed")
# the delay notification says "delayed", not "failed"

# -- more provider and gateway replies, relayed by a forwarding Postfix ----------------------------
for _name, _rcpt, _said, _status, _klass, _type, _why, _remote in [
    ("postfix-comcast-not-our-customer.eml", "ray.d@comcast.net",
     "550 5.1.1 <ray.d@comcast.net> Not our Customer (in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce",
     "Comcast: no such customer", "mx1a1.comcast.net"),
    ("postfix-comcast-bl.eml", "sue.w@comcast.net",
     "554 resimta-po-12v.sys.comcast.net resimta-po-12v.sys.comcast.net 203.0.113.25 Comcast block for spam.  "
     "Please see http://postmaster.comcast.net/smtp-error-codes.php#BL000000 (in reply to MAIL FROM command)",
     None, "soft", "Blocked", "Comcast block list", "mx2a1.comcast.net"),
    ("postfix-att-dnsbl.eml", "earl.g@att.net",
     "553 5.3.0 flpd575 DNSBL:RBL 521< 203.0.113.25 >_is_blocked.For assistance forward this error to "
     "abuse_rbl@abuse-att.net (in reply to MAIL FROM command)", "5.3.0", "soft", "Blocked", "AT&T DNSBL",
     "al-ip4-mx-vip1.prodigy.net"),
    ("postfix-godaddy-spamhaus.eml", "fay@godaddy-site.invalid",
     "554 p3plibsmtp03-10.prod.phx3.secureserver.net bizsmtp IB103 203.0.113.25 Connection refused. Connection "
     "refused due to sender IP address listed on SpamHaus. (in reply to MAIL FROM command)", None, "soft", "Blocked",
     "GoDaddy inbound: IP on Spamhaus", "mailstore1.secureserver.net"),
    ("postfix-zoho-user-not-exist.eml", "gus@zoho-client.invalid",
     "550 5.1.1 User does not exist - <gus@zoho-client.invalid> (in reply to RCPT TO command)", "5.1.1", "hard",
     "HardBounce", "Zoho: the user does not exist", "mx.zoho.eu"),
    ("postfix-zoho-policy.eml", "hal@zoho-client.invalid",
     "554 5.7.7 Email policy violation detected (in reply to end of DATA command)", "5.7.7", "soft", "Blocked",
     "Zoho policy", "mx2.zoho.eu"),
    ("postfix-tonline-bl.eml", "ida.m@t-online.de",
     "554 IP=203.0.113.25 - A problem occurred. (Ask your postmaster for help or to contact tosa@rx.t-online.de to "
     "clarify.) (BL) (in reply to MAIL FROM command)", None, "soft", "Blocked",
     "T-Online refuses the IP (its block list)", "mx00.t-online.de"),
    ("postfix-seznam-no-mailbox.eml", "jan.novak@seznam.cz",
     "550 5.1.1 Mailbox does not exist (in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce",
     "Seznam: no such mailbox", "mx1.seznam.cz"),
    ("postfix-libero-inesistente.eml", "marco.b@libero.it",
     "550 5.1.1 <marco.b@libero.it>: Recipient address rejected: utente inesistente (in reply to RCPT TO command)",
     "5.1.1", "hard", "HardBounce", "Libero: the user does not exist (Italian)", "smtp-in.libero.it"),
    ("postfix-libero-casella-piena.eml", "paola.r@libero.it",
     "552 5.2.2 <paola.r@libero.it>: casella piena / mailbox full (in reply to RCPT TO command)", "5.2.2", "soft",
     "SoftBounce", "Libero: full mailbox", "smtp-in.libero.it"),
    ("postfix-laposte-full.eml", "remi.g@laposte.net",
     "552 5.2.2 <remi.g@laposte.net>: Recipient address rejected: this mailbox is full (in reply to RCPT TO "
     "command)", "5.2.2", "soft", "SoftBounce", "La Poste: mailbox full", "smtp-in.laposte.net"),
    ("postfix-inactive-blocked.eml", "stan@old-webmail.invalid",
     "554 5.7.1 <stan@old-webmail.invalid>: Recipient address rejected: This mailbox has been blocked due to "
     "inactivity (in reply to RCPT TO command)", "5.7.1", "soft", "SoftBounce",
     "the mailbox exists but is frozen for inactivity", "mx.old-webmail.invalid"),
    ("postfix-client-host-rejected.eml", "tara@fussy-isp.invalid",
     "554 5.7.1 <relay1.shop.example.com[203.0.113.25]>: Client host rejected: Access denied (in reply to RCPT TO "
     "command)", "5.7.1", "soft", "Blocked", "the receiver refuses our host", "mx.fussy-isp.invalid"),
    ("postfix-relay-access-denied.eml", "ugo@former-mx.invalid",
     "554 5.7.1 <ugo@former-mx.invalid>: Relay access denied (in reply to RCPT TO command)", "5.7.1", "soft",
     "Blocked", "an outdated MX that no longer serves the domain", "mx.former-mx.invalid"),
    ("postfix-too-many-hops.eml", "vic@loopy-domain.invalid",
     "554 5.4.6 Too many hops (in reply to end of DATA command)", "5.4.6", "soft", "DnsError", "mail loop",
     "mx.loopy-domain.invalid"),
    ("postfix-too-many-recipients.eml", "wes@strict-limits.invalid",
     "452 4.5.3 Error: too many recipients (in reply to RCPT TO command)", "4.5.3", "soft", "SoftBounce",
     "recipient limit per message; the queue gave up", "mx.strict-limits.invalid"),
    ("postfix-local-policy-violation.eml", "xena@corp-policy.invalid",
     "550 5.7.0 Local Policy Violation (in reply to end of DATA command)", "5.7.0", "soft", "Blocked",
     "receiver's local policy", "mx.corp-policy.invalid"),
    ("postfix-bare-lf.eml", "yuri@exchange-strict.invalid",
     "550 5.6.11 SMTPSEND.BareLinefeedsAreIllegal; message contains bare linefeeds, which cannot be sent via DATA "
     "(in reply to end of DATA command)", "5.6.11", "soft", "SoftBounce", "a formatting problem of the message",
     "mail.exchange-strict.invalid"),
    ("postfix-exo-relay-denied-tenant.eml", "zara@tenant-moved.invalid",
     "550 5.7.64 TenantAttribution; Relay Access Denied [SN1NAM02FT012.eop-nam02.prod.protection.outlook.com] "
     "(in reply to RCPT TO command)", "5.7.64", "soft", "Blocked", "EXO tenant attribution (connector) refusal",
     "tenant-moved-invalid.mail.protection.outlook.com"),
    ("postfix-exo-spam-detected.eml", "abe@fabrikam-us.invalid",
     "550 5.7.350 Remote server returned message detected as spam -> 554 5.7.1 Message rejected as spam by Content "
     "Filtering (in reply to end of DATA command)", "5.7.350", "soft", "SpamNotification",
     "the recipient's downstream filter judged the message spam", "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-exo-recipient-not-found-by-exo.eml", "bea@fabrikam-us.invalid",
     "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient bea@fabrikam-us.invalid not found by SMTP address lookup "
     "(in reply to RCPT TO command)", "5.1.10", "hard", "HardBounce", "EXO: the recipient does not exist",
     "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-exim-sender-verify.eml", "cal@verifying-host.invalid",
     "550-Verification failed for <b+abc@bounces.shop.example.com> 550-Unrouteable address 550 Sender verify failed "
     "(in reply to RCPT TO command)", None, "soft", "Blocked", "the receiver's callout could not verify our sender",
     "mx.verifying-host.invalid"),
    ("postfix-rcpthosts.eml", "dee@not-hosted-here.invalid",
     "553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1) (in reply to RCPT TO command)", "5.7.1",
     "soft", "Blocked", "qmail: the host does not handle the domain any more (stale MX)", "mx.not-hosted-here.invalid"),
    ("postfix-mailbox-inactive-550.eml", "eve.old@bigisp.invalid",
     "550 5.2.1 <eve.old@bigisp.invalid>: Recipient address rejected: Mailbox inactive (in reply to RCPT TO "
     "command)", "5.2.1", "soft", "SoftBounce", "the mailbox exists but is inactive", "mx.bigisp.invalid"),
    ("postfix-smtputf8-required.eml", "fay@ascii-only.invalid",
     "553 5.6.7 SMTPUTF8 is required, but was not offered by host mx.ascii-only.invalid[192.0.2.200]", "5.6.7", "soft",
     "SoftBounce", "the message needs SMTPUTF8, the host lacks it", "mx.ascii-only.invalid"),
    ("postfix-550-no-code-blocked-country.eml", "gil@geo-filter.invalid",
     "550 Connections from your country are not accepted (in reply to MAIL FROM command)", None, "soft", "Blocked",
     "geographic filtering", "mx.geo-filter.invalid"),
    ("postfix-550-recipient-rejected-generic.eml", "hana@ldap-check.invalid",
     "550 5.1.1 <hana@ldap-check.invalid>: Recipient address rejected: undeliverable address: host "
     "ldap.ldap-check.invalid[192.0.2.210] said: 550 5.1.1 <hana@ldap-check.invalid>: Recipient address rejected: "
     "User unknown in virtual mailbox table (in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce",
     "recipient verification: the user does not exist downstream", "mx.ldap-check.invalid"),
]:
    postfix(_name, _rcpt, _said, _status or "5.0.0", _klass, _type, _why, remote=_remote)

# Google Groups: posting not permitted
gmail("gmail-groups-no-permission.eml", "announce@client-workspace.invalid", "Message not delivered",
      "You don't have permission to post to announce@client-workspace.invalid. Contact the group owners.",
      "Only members of the group can post; your address is not a member.", "5.7.0", "soft", "Blocked",
      "Google Groups: posting restricted to members")
# Mailman list: held for moderation is not a failure at all -> autoreply
plain("mailman-held-for-moderation.eml", from_="staff-owner@lists.club.invalid",
      subject="Your message to Staff awaits moderator approval",
      body="Your mail to 'Staff' with the subject\n\n    Your order #48213 has shipped\n\nIs being held until the "
           "list moderator can review it for approval.\n\nThe reason it is being held:\n\n    Post by non-member to a "
           "members-only list\n\nEither the message will get posted to the list, or you will receive notification of "
           "the moderator's decision.\n", reporting="lists.club.invalid",
      extra="Auto-Submitted: auto-replied\nX-List-Administrivia: yes\nPrecedence: bulk")
label("mailman-held-for-moderation.eml", "AutoResponder", "autoreply", ["staff@lists.club.invalid"], None,
      "Mailman's held-for-moderation notice: an automatic reply about the list address, not a failure")
# InterScan content notice (not a virus)
plain("interscan-content-blocked.eml", from_="InterScan MSS <postmaster@corp-trend.invalid>",
      subject="Message blocked by content filter",
      body="The message you sent to ian.k@corp-trend.invalid was blocked by InterScan Messaging Security Suite.\n\n"
           "Rule: Outbound attachment size limit / inbound content rule 'Marketing words'\n"
           "Action: Delete entire message\n", reporting="imss.corp-trend.invalid")
label("interscan-content-blocked.eml", "Blocked", "soft", ["ian.k@corp-trend.invalid"], None,
      "a content-filter deletion notice")
# Domino multilingual (German)
domino("domino-de-nicht-aufgefuehrt.eml", "b.keller@acme-industries.invalid",
       "Benutzer b.keller (b.keller@acme-industries.invalid) ist nicht im Domino-Verzeichnis aufgeführt", "hard",
       "HardBounce", None, "German Domino: the user is not in the directory",
       subject="Unzustellbar: Benutzer b.keller ist nicht im Domino-Verzeichnis aufgeführt")
# Exchange 2010 internal: mailbox disabled (user left, mailbox disconnected but address kept)
exchange2010("exchange2010-mailbox-disabled.eml", "c.roth@contoso-corp.invalid",
             "The recipient's mailbox has been disabled and can't accept messages at this time.",
             "#550 5.2.1 STOREDRV.Deliver: mailbox disabled ##", "5.2.1", "soft", "SoftBounce",
             "Exchange: mailbox disabled")
# Yahoo old style: sendmail-like, domain has no MX and no A
yahoo_old("yahoo-old-no-mx.eml", "guy@dead-domain-yahoo.invalid",
          "Sorry, I couldn't find any host by that name. (#4.1.2)\n"
          "I'm not going to try again; this message has been in the queue too long.", None, "soft", "DnsError",
          "the lookups of the domain kept failing temporarily until the queue gave up")

# -- documented provider replies (Yahoo's, Google's and Microsoft's public error references) ------
yahoo_old("yahoo-old-dd-over-quota.eml", "nora_b@yahoo.com",
          "554 delivery error: dd Sorry, your message to nora_b@yahoo.com cannot be delivered. This account is over "
          "quota. - mta1140.mail.ir2.yahoo.com", None, "soft", "SoftBounce", "Yahoo: the account is over quota")
for _name, _rcpt, _said, _status, _klass, _type, _why, _remote in [
    ("postfix-yahoo-vs1-ip.eml", "otto_k@yahoo.com",
     "451 VS1-IP Excessive unknown recipients - possible Open Relay (#4.1.8) (in reply to MAIL FROM command)",
     "4.1.8", "soft", "SoftBounce", "Yahoo deprioritised the IP until the queue gave up", "mta6.am0.yahoodns.net"),
    ("postfix-yahoo-553-spamhaus.eml", "pam_l@yahoo.com",
     "553 5.7.1 Connections will not be accepted from 203.0.113.25, because the ip is in Spamhaus's list; see "
     "http://postmaster.yahoo.com/errors/550-bl23.html (in reply to MAIL FROM command)", "5.7.1", "soft", "Blocked",
     "Yahoo: the IP is on Spamhaus", "mta7.am0.yahoodns.net"),
    ("postfix-gmail-tls-required.eml", "quentin@client-workspace.invalid",
     "421-4.7.0 TLS required for RCPT domain, closing connection. For more information, go to "
     "https://support.google.com/a/answer/2520500 - gsmtp (in reply to RCPT TO command)", "4.7.0", "soft",
     "SoftBounce", "the domain requires TLS; the relay never offered it, the queue gave up", "aspmx.l.google.com"),
    ("postfix-gmail-receiving-too-quickly.eml", "rosa.m@gmail.com",
     "450-4.2.1 The user you are trying to contact is receiving mail too quickly. Please resend your message at a "
     "later time. If the user is able to receive mail at that time, your message will be delivered. - gsmtp "
     "(in reply to RCPT TO command)", "4.2.1", "soft", "SoftBounce", "per-user rate limit until expiry",
     "gmail-smtp-in.l.google.com"),
    ("postfix-gmail-no-ptr.eml", "sven.a@gmail.com",
     "550-5.7.25 [203.0.113.25] The IP address sending this message does not have a PTR record setup, or the "
     "corresponding forward DNS entry does not point to the sending IP. As a policy, Gmail does not accept messages "
     "from IPs with missing PTR records. - gsmtp (in reply to end of DATA command)", "5.7.25", "soft", "Blocked",
     "Gmail: no PTR record", "gmail-smtp-in.l.google.com"),
    ("postfix-gmail-unauthenticated.eml", "tilda.n@gmail.com",
     "550-5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail requires all senders to "
     "authenticate with either SPF or DKIM. Authentication results: DKIM = did not pass SPF [shop.example.com] with "
     "ip: [203.0.113.25] = did not pass - gsmtp (in reply to end of DATA command)", "5.7.26", "soft", "DMARCPolicy",
     "Gmail: neither SPF nor DKIM passed (5.7.26, multiple authentication checks failed)", "gmail-smtp-in.l.google.com"),
    ("postfix-exo-account-disabled.eml", "ulla.w@fabrikam-us.invalid",
     "550 5.7.13 STOREDRV.Deliver.Exception:AccountDisabledException.MapiExceptionADUserDisabledAndHidden; Failed "
     "to process message due to a permanent exception with message [BeginDiagnosticData]Cannot open mailbox. "
     "(in reply to end of DATA command)", "5.7.13", "soft", "SoftBounce", "EXO: the account is disabled",
     "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-exo-anonymous-not-allowed.eml", "vera.p@fabrikam-us.invalid",
     "530 5.7.57 SMTP; Client was not authenticated to send anonymous mail during MAIL FROM "
     "[AM6PR0732BE0065.eurprd07.prod.outlook.com] (in reply to MAIL FROM command)", "5.7.57", "soft", "Blocked",
     "the tenant rejects anonymous senders", "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-exo-exrecipnotfound.eml", "walt.r@fabrikam-us.invalid",
     "550 5.1.1 RESOLVER.ADR.ExRecipNotFound; not found (in reply to end of DATA command)", "5.1.1", "hard",
     "HardBounce", "EXO: the recipient is not in the directory", "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-exo-bad-outbound-sender.eml", "xavier.s@fabrikam-us.invalid",
     "550 5.1.8 Access denied, bad outbound sender AS(42003) (in reply to MAIL FROM command)", "5.1.8", "soft",
     "Blocked", "Microsoft refuses our sender", "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-exo-mime-header-size.eml", "yvonne.t@fabrikam-us.invalid",
     "554 5.6.211 Invalid MIME Content: Single text value size (32004) exceeded allowed maximum (32000) for the "
     "'X-Long' header. (in reply to end of DATA command)", "5.6.211", "soft", "SoftBounce",
     "a header field too long for Exchange", "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-exo-relay-access-denied-541.eml", "zeno.u@moved-away.invalid",
     "550 5.4.1 Relay Access Denied [DM6NAM11FT044.eop-nam11.prod.protection.outlook.com] (in reply to RCPT TO "
     "command)", "5.4.1", "soft", "Blocked", "the domain's MX points at a tenant that no longer accepts it",
     "moved-away-invalid.mail.protection.outlook.com"),
    ("postfix-exo-708.eml", "adam.v@fabrikam-us.invalid",
     "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP. For more information "
     "please go to http://go.microsoft.com/fwlink/?LinkId=526653 AS(2600) (in reply to MAIL FROM command)", "5.7.708",
     "soft", "Blocked", "EXO refuses the IP", "fabrikam-us-invalid.mail.protection.outlook.com"),
    ("postfix-hop-count.eml", "bert.w@looping.invalid",
     "554 5.4.14 Hop count exceeded - possible mail loop ATTR34 [BN1NAM02FT003.eop-nam02.prod.protection.outlook.com] "
     "(in reply to end of DATA command)", "5.4.14", "soft", "DnsError", "mail loop",
     "looping-invalid.mail.protection.outlook.com"),
    ("postfix-icloud-proofpoint.eml", "cara.x@icloud.com",
     "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=203.0.113.25 (in reply to MAIL FROM "
     "command)", "5.7.0", "soft", "Blocked", "iCloud's Proofpoint block list", "mx01.mail.icloud.com"),
    ("postfix-relay-recipient-table.eml", "dora.y@gateway-corp.invalid",
     "550 5.1.1 <dora.y@gateway-corp.invalid>: Recipient address rejected: User unknown in relay recipient table "
     "(in reply to RCPT TO command)", "5.1.1", "hard", "HardBounce", "the gateway's relay recipient map lacks the user",
     "gw.gateway-corp.invalid"),
    ("postfix-cox-sender-rejected.eml", "emil.z@cox.net",
     "550 5.1.0 <b+abc@bounces.shop.example.com> sender rejected. Refer to Error Codes section at "
     "https://www.cox.com/residential/support/email-error-codes.html for more information. AUP#CXSNDR (in reply to "
     "MAIL FROM command)", "5.1.0", "soft", "Blocked", "Cox refuses our sender", "cxr.mx.a.cloudfilter.net"),
]:
    postfix(_name, _rcpt, _said, _status, _klass, _type, _why, remote=_remote)


def outlook_text(name, rcpt, line, klass, type_, status, why):
    """An Exchange 2007-style plain-text NDR, as Outlook also renders them ("Remote Server returned")."""
    body = ("Your message did not reach some or all of the intended recipients.\n\n"
            "      Subject:  Your order #48213 has shipped\n      Sent:     01/12/2026 10:14\n\n"
            "The following recipient(s) cannot be reached:\n\n"
            f"      {rcpt} on 01/12/2026 10:14\n            {line}\n")
    plain(name, from_="System Administrator <postmaster@contoso-corp.invalid>",
          subject="Undeliverable: Your order #48213 has shipped", body=body, reporting="EXCH02.contoso-corp.invalid")
    label(name, type_, klass, [rcpt], status, why)


outlook_text("exchange-text-remote-server-returned-5.1.10.eml", "f.meier@contoso-corp.invalid",
             "Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address "
             "lookup'", "hard", "HardBounce", "5.1.10", "Outlook's text of an EXO NDR: the recipient does not exist")
outlook_text("exchange-text-remote-server-returned-quota.eml", "g.huber@contoso-corp.invalid",
             "Remote Server returned '554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException."
             "MapiExceptionShutoffQuotaExceeded; Failed to process message due to a permanent exception'", "soft",
             "SoftBounce", "5.2.2", "Outlook's text of an EXO NDR: mailbox full")
outlook_text("exchange-text-remote-server-returned-relay.eml", "h.vogel@contoso-corp.invalid",
             "Remote Server returned '550 5.1.351 Remote server returned not permitted to relay -> 550 5.7.1 Unable to "
             "relay'", "soft", "Blocked", "5.1.351", "Exchange 2007: the next hop refused to relay")


def main() -> None:
    for old in HERE.glob("*.eml"):
        old.unlink()
    for name, data in FILES.items():
        (HERE / name).write_bytes(data)
    (HERE / "labels.json").write_text(json.dumps(dict(sorted(LABELS.items())), indent=1, ensure_ascii=False) + "\n")
    print(f"{len(FILES)} messages, {sum(len(v.get('failures') or v['recipients'] or [None]) for v in LABELS.values())}"
          " cases")


if __name__ == "__main__":
    main()
