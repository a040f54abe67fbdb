"""
dsn: the delivery status notification (RFC 3464) sent to the sender of undeliverable mail.

JOB
    :func:`make_dsn` composes the notice ``[bounces] notify_sender`` sends: a
    ``multipart/report; report-type=delivery-status`` message From ``Mail Delivery
    System <MAILER-DAEMON@<hostname>>`` with a human-readable part, the
    ``message/delivery-status`` part (per-message fields: Reporting-MTA and the
    X-Mailrelay-ID of the original; per-recipient fields: Final-Recipient, Action,
    Status, Remote-MTA, Diagnostic-Code) and the original's header as
    ``text/rfc822-headers``. It is built with the standard library's ``email``
    package and serialised with its SMTP policy (CRLF). The caller queues it from
    ``<>`` through :mod:`mailrelay.services.inject` (source NOTICE). Pure: no I/O.

SECURITY
    The diagnostic is a remote server's reply and the original header a client's:
    both are untrusted. The diagnostic's whitespace is collapsed into one line in
    Diagnostic-Code (no field injection through line breaks); elsewhere it is text
    of the human-readable part. The header part is decoded with undecodable bytes
    replaced. The addresses are envelope addresses the SMTP server already checked.
    Only the original's header is returned, never its body.
    ``Auto-Submitted: auto-replied`` (RFC 3834) tells other systems not to answer it.

STANDARDS
    RFC 3464 (DSN), RFC 6522 (multipart/report), RFC 3463 (status codes), RFC 3834
    (Auto-Submitted), RFC 5322.

DIAGNOSTICS
    None: logs nothing; the caller logs the notice it queues.

CONFIGURATION
    None read here (the caller passes ``[server] hostname``); owns no file or Redis data.
"""

from __future__ import annotations

import email.utils
from email import policy
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


def make_dsn(*, hostname: str, original_sender: str, recipient: str, message_id: str, action: str,
             status: str, diagnostic: str, remote_mta: str | None, original_headers: bytes) -> bytes:
    """An RFC 3464 delivery status notification for the original sender (``notify_sender``)."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{hostname}>"
    report["To"] = original_sender
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = email.utils.formatdate(localtime=True)
    report["Message-ID"] = email.utils.make_msgid("dsn", domain=hostname)
    report["Auto-Submitted"] = "auto-replied"
    human = (f"This is the mail system at {hostname}.\n\n"
             f"Your message {message_id} could not be delivered to <{recipient}>:\n\n"
             f"    {diagnostic}\n")
    report.attach(MIMEText(human, "plain", "utf-8"))
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {hostname}"
    per_message["X-Mailrelay-ID"] = message_id
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    if remote_mta:
        per_recipient["Remote-MTA"] = f"dns; {remote_mta}"
    per_recipient["Diagnostic-Code"] = f"smtp; {' '.join(diagnostic.split())}"
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([per_message, per_recipient])  # RFC 3464: blocks of fields
    report.attach(status_part)
    headers_part = MIMEBase("text", "rfc822-headers")
    headers_part.set_payload(original_headers.decode("utf-8", "replace"))
    report.attach(headers_part)
    return report.as_bytes(policy=policy.SMTP)
