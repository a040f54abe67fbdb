"""
netio: send what a protocol wrote now, instead of on the reactor's next turn.

JOB
    Twisted's ``transport.write()`` only buffers: the bytes leave in
    ``doWrite()``, when the reactor next reports the socket writable. For a
    request/response protocol that answers one command at a time (SMTP
    without pipelining, a Redis command awaited at once) that is one more
    trip through the reactor per reply (an ``epoll_wait`` wake-up and its
    dispatch), which on the submission hot path costs as much as handling the
    command itself. :func:`flush` writes the buffer out at once when the
    transport is a plain socket (TCP or UNIX, with or without TLS: the TLS
    layer has already put its records in the socket's buffer) that is not
    closing; anything the kernel does not take stays buffered and the reactor
    sends it as usual, and an error is left for the reactor to find on its
    next ``doWrite()`` (the transport is still registered for writing), so
    connection loss is reported exactly as without it. Other transports (TLS,
    test transports) are left alone.

    :func:`send` goes one step further for a protocol that writes its replies
    in one piece: when nothing is buffered before them, the bytes go straight
    to the socket, without the two ``epoll_ctl`` calls of registering the
    socket for writing and unregistering it.

    Call :func:`flush` once after a batch of writes (the replies to one read
    of pipelined commands), not after each write, and only when something was
    written (with nothing buffered it would still make an empty ``send``).
    Used by :mod:`mailrelay.smtp.server`, :mod:`mailrelay.smtp.client` and
    :mod:`mailrelay.store`.

SECURITY
    Reads no input: it only sends bytes its caller wrote, in the same order
    and no others. :func:`send` reads Twisted's private buffer state of
    ``tcp.Connection`` through :func:`mailrelay.libcompat.tcp_send_buffer_empty`
    only to know that nothing waits before the new bytes: were those internals
    to change meaning in a Twisted upgrade, bytes could be reordered, so
    tests/test_libcompat.py checks them.

STANDARDS
    None.

DIAGNOSTICS
    None: logs nothing and raises nothing; a write error is left for the
    reactor to report as connection loss.

CONFIGURATION
    None: reads no config key and owns no file or Redis data.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import abstract, tcp
from twisted.protocols.tls import TLSMemoryBIOProtocol

from mailrelay.libcompat import tcp_send_buffer_empty

#: A transport whose write buffer :func:`flush` may send: a socket ``FileDescriptor``.
_FLUSHABLE = abstract.FileDescriptor


def flush(transport: Any) -> None:
    """Send ``transport``'s buffered bytes now when it is an open socket (or TLS over one)."""
    if isinstance(transport, TLSMemoryBIOProtocol):  # implicit TLS: its records are
        transport = transport.transport              # already in the socket's buffer
    if isinstance(transport, _FLUSHABLE) and transport.connected and not transport.disconnecting:
        transport.doWrite()


def send(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, sent at once (see the module docstring)."""
    if (isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected
            and not transport.disconnecting and tcp_send_buffer_empty(transport)):
        # Nothing waits before these bytes in Twisted's buffer (see libcompat);
        # what the kernel does not take is buffered.
        sent = transport.writeSomeData(data)
        if isinstance(sent, int) and sent >= 0:
            if sent == len(data):
                return
            data = data[sent:]
        # else: the connection is broken; write() leaves it to the reactor to report
    transport.write(data)
    flush(transport)
