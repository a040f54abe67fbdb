"""
transaction: the mail transaction commands of the SMTP server: MAIL, RCPT and DATA.

JOB
    :class:`MailTransactionCommands`, mixed into
    :class:`mailrelay.smtp.server.SMTPServerProtocol`: MAIL (sender, SIZE,
    BODY, SMTPUTF8 and AUTH parameters), RCPT (recipient, count limit), each
    asked of the :class:`~mailrelay.smtp.session.SMTPHandler`, then DATA:
    collects the message data until ``<CRLF>.<CRLF>``, checks it and hands
    the un-dot-stuffed content to the handler's ``accept_message``.

SECURITY
    Message data is untrusted. DATA ends only at ``<CRLF>.<CRLF>``; a bare CR
    or LF rejects the message (``500 5.5.2``), and so does a NUL (``554
    5.6.0``: a next hop that drops NUL could see an end of data we did not),
    so nothing is ever re-read as commands (no SMTP smuggling). Data beyond
    the size limit is counted, not kept; the header size limit, the 1,000
    octet line limit and ``data_timeout`` (the DATA phase as a whole) apply.
    A non-ASCII address needs SMTPUTF8. :func:`header_size_exceeds` reads the
    header as :func:`mailrelay.mail.message.split_header` does, so the limit
    checked is the header that will be parsed.

STANDARDS
    RFC 5321 (3.3 mail transactions, 4.5.2 transparency, 4.5.3.1 limits),
    RFC 1870 (SIZE), RFC 6152 (8BITMIME), RFC 6531 (SMTPUTF8), RFC 4954 5
    (AUTH= on MAIL), RFC 5322 2.1 and RFC 2045 (no NUL).

DIAGNOSTICS
    Refused messages are counted in the ``MESSAGES_REJECTED`` metric by
    service and reply code.

CONFIGURATION
    :class:`~mailrelay.smtp.session.ServerLimits`: ``max_message_size``,
    ``max_header_size``, ``max_recipients``, ``data_timeout``.
"""

from __future__ import annotations


from mailrelay.mail.message import split_header
from mailrelay.metrics import MESSAGES_REJECTED
from mailrelay.smtp.address import AddressError, parse_params, parse_path
from mailrelay.smtp.session import (
    BAD_RECIPIENT_SYNTAX, BAD_SENDER_SYNTAX, BARE_NEWLINE, HEADER_TOO_BIG, LINE_TOO_LONG_IN_DATA, MAX_DATA_LINE,
    MESSAGE_TOO_BIG, MODE_COMMAND, MODE_DATA, NEED_HELO, NEED_MAIL, NEED_RCPT, NESTED_MAIL, NON_ASCII_ADDRESS,
    NUL_IN_DATA, RECIPIENT_OK, SENDER_OK, START_DATA, SYNTAX_ERROR, TOO_MANY_RECIPIENTS, UNSUPPORTED_PARAMETER,
    Reply, Transaction)

_END_OF_DATA = b"\r\n.\r\n"


class MailTransactionCommands:
    """MAIL, RCPT and DATA of :class:`~mailrelay.smtp.server.SMTPServerProtocol`, which this is
    mixed into: it uses the protocol's session, limits, handler, clock, input buffer and mode,
    its DATA state (``_data_*``) and its ``_reply``, ``_error``, ``_await``,
    ``_reset_idle_timer`` and ``_timed_out``."""

    def do_MAIL(self, arg: str) -> None:
        session = self.session
        if session.helo is None:
            return self._error(NEED_HELO)
        if session.transaction is not None:
            return self._error(NESTED_MAIL)
        if arg[:5].upper() != "FROM:":
            return self._error(SYNTAX_ERROR.with_text("Syntax: MAIL FROM:<address>"))
        try:
            sender, rest = parse_path(arg[5:], allow_null=True)
            params = parse_params(rest)
        except AddressError as e:
            return self._error(BAD_SENDER_SYNTAX.with_text(f"Bad sender address syntax: {e}"))
        transaction = Transaction(sender=sender)
        for name, value in params.items():
            if name == "SIZE" and value is not None and value.isdigit():
                transaction.declared_size = int(value)
            elif name == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                transaction.body_8bit = value.upper() == "8BITMIME"
            elif name == "SMTPUTF8" and value is None:
                transaction.smtputf8 = True
            elif name == "AUTH" and value is not None:
                pass  # RFC 4954 5: accepted; we do not relay authorization identities
            else:
                return self._error(UNSUPPORTED_PARAMETER.with_text(f"Unsupported parameter {name}"))
        if not transaction.smtputf8 and not sender.isascii():
            return self._error(NON_ASCII_ADDRESS)
        if transaction.declared_size is not None and transaction.declared_size > self.limits.max_message_size:
            return self._reply(MESSAGE_TOO_BIG)

        def decided(reply: Reply | None) -> None:
            if reply is None:
                session.transaction = transaction
                self._reply(SENDER_OK)
            else:
                self._reply(reply)

        self._await(self.handler.check_sender(session, sender), decided)

    def do_RCPT(self, arg: str) -> None:
        transaction = self.session.transaction
        if transaction is None:
            return self._error(NEED_MAIL)
        if arg[:3].upper() != "TO:":
            return self._error(SYNTAX_ERROR.with_text("Syntax: RCPT TO:<address>"))
        try:
            recipient, rest = parse_path(arg[3:], allow_null=False)
            if parse_params(rest):
                return self._error(UNSUPPORTED_PARAMETER)
        except AddressError as e:
            return self._error(BAD_RECIPIENT_SYNTAX.with_text(f"Bad recipient address syntax: {e}"))
        if not transaction.smtputf8 and not recipient.isascii():
            return self._error(NON_ASCII_ADDRESS)
        if len(transaction.recipients) >= self.limits.max_recipients:
            return self._reply(TOO_MANY_RECIPIENTS)

        def decided(reply: Reply | None) -> None:
            if reply is None:
                if self.session.transaction is transaction:
                    transaction.recipients.append(recipient)
                self._reply(RECIPIENT_OK)
            else:
                self._reply(reply)

        self._await(self.handler.check_recipient(self.session, recipient), decided)

    def do_DATA(self, arg: str) -> None:
        transaction = self.session.transaction
        if arg.strip():
            return self._error(SYNTAX_ERROR.with_text("Syntax: DATA"))
        if transaction is None:
            return self._error(NEED_MAIL)
        if not transaction.recipients:
            return self._error(NEED_RCPT)
        self._mode = MODE_DATA
        self._data_chunks = [b"\r\n"]  # the CRLF that ended the DATA line
        self._data_size = 0
        self._data_tail = b"\r\n"
        self._data_overflow = False
        self._data_call = self.factory.clock.callLater(self.limits.data_timeout, self._timed_out)
        self._reply(START_DATA)

    def _data_received(self, data: bytes) -> None:
        """Collect DATA until <CRLF>.<CRLF>; the stream is kept with a leading CRLF."""
        if b"\n" in data:  # a line was completed: the next one has idle_timeout to arrive
            self._reset_idle_timer()
        window = self._data_tail + data
        found = window.find(_END_OF_DATA)
        if found == -1:
            self._data_size += len(data)
            if self._data_size <= self.limits.max_message_size + MAX_DATA_LINE:
                self._data_chunks.append(data)
            elif not self._data_overflow:
                self._data_overflow = True
                self._data_chunks = []
            self._data_tail = window[-4:]
            return
        end = found + len(_END_OF_DATA) - len(self._data_tail)  # in data
        self._buffer = data[end:] + self._buffer
        self._data_size += end
        if not self._data_overflow:
            self._data_chunks.append(data[:end])
        chunks, self._data_chunks = self._data_chunks, []
        self._mode = MODE_COMMAND
        if self._data_call is not None and self._data_call.active():
            self._data_call.cancel()
        self._end_of_data(chunks)

    def _end_of_data(self, chunks: list[bytes]) -> None:
        transaction, self.session.transaction = self.session.transaction, None
        if self._data_overflow:
            return self._data_reply(MESSAGE_TOO_BIG)
        stream = b"".join(chunks)[:-3]  # ends with CRLF; ".\r\n" dropped
        lines = stream.split(b"\r\n")
        # Every CR must start a CRLF and every LF end one (no smuggling).
        crlf = len(lines) - 1
        if stream.count(b"\r") != crlf or stream.count(b"\n") != crlf:
            self._count_rejected(BARE_NEWLINE)
            return self._error(BARE_NEWLINE)
        if b"\0" in stream:  # RFC 5322 2.1, RFC 2045 2.7/2.8, RFC 6152: no NUL outside BINARYMIME
            return self._data_reply(NUL_IN_DATA)
        content = stream.replace(b"\r\n.", b"\r\n")[2:]  # RFC 5321 4.5.2 transparency
        if len(content) > self.limits.max_message_size:
            return self._data_reply(MESSAGE_TOO_BIG)
        if max(map(len, lines)) + 2 > MAX_DATA_LINE:
            return self._data_reply(LINE_TOO_LONG_IN_DATA)
        if header_size_exceeds(content, self.limits.max_header_size):
            return self._data_reply(HEADER_TOO_BIG)
        self._await(self.handler.accept_message(self.session, transaction, content), self._data_reply)

    def _data_reply(self, reply: Reply) -> None:
        """The reply that ends a DATA phase; refusals are counted for /metrics."""
        if reply.code >= 400:
            self._count_rejected(reply)
        self._reply(reply)

    def _count_rejected(self, reply: Reply) -> None:
        MESSAGES_REJECTED.labels(self.limits.service_name, str(reply.code)).inc()


def header_size_exceeds(content: bytes, limit: int) -> bool:
    """Whether the header of ``content`` (as :func:`mailrelay.mail.message.split_header` reads
    it: up to the blank line, or the first line that is not a field) is over ``limit`` octets."""
    if content.find(b"\r\n\r\n", 0, limit + 2) != -1 or len(content) <= limit:
        return False  # the blank line comes within the limit (the usual case: no split)
    rest = split_header(content)[1]
    return len(content) - len(rest) > limit
