"""
A tiny synchronous Redis client for tests: RESP2 over a socket, no third-party library.

    client = RedisClient("127.0.0.1", 6379)        # or RedisClient(unix_path="/path/redis.sock")
    client.command("SET", "k", b"\\x00binary")     # -> "OK"
    client.command("GET", "k")                     # -> b"\\x00binary"
    client.command("INCR", "k")                    # raises RedisError("ERR value is not an integer ...")

Replies map to Python as follows:

* simple string (``+OK``)      -> ``str``  ("OK", "PONG", "QUEUED")
* error (``-ERR ...``)          -> raised as :class:`RedisError` at the top level; inside an
  array (EXEC, pipelines) it is returned as a :class:`RedisError` instance in the list
* integer (``:5``)              -> ``int``
* bulk string (``$3``)          -> ``bytes``; the null bulk string (``$-1``) -> ``None``
* array (``*2``)                -> ``list`` (nested as needed); the null array (``*-1``) -> ``None``

Arguments may be ``bytes``, ``str`` (sent as UTF-8), ``int`` or ``float``.
"""

from __future__ import annotations

import socket
from typing import Any, Iterable, Sequence

__all__ = ["RedisClient", "RedisError", "ProtocolError", "encode_command"]


class RedisError(Exception):
    """An error reply; ``str(e)`` is the message without the leading ``-``."""

    @property
    def kind(self) -> str:
        """The error code: ``"ERR"``, ``"WRONGTYPE"``, ``"NOSCRIPT"``..."""
        return str(self).split(" ", 1)[0]


class ProtocolError(Exception):
    """The server sent something that is not RESP2, or closed the connection mid-reply."""


def _encode_arg(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, (bytearray, memoryview)):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode("utf-8")
    if isinstance(arg, bool):  # an int in Python, but Redis has no booleans
        raise TypeError(f"cannot send a boolean to Redis: {arg!r}")
    if isinstance(arg, (int, float)):
        return repr(arg).encode("ascii")
    raise TypeError(f"cannot send {type(arg).__name__} {arg!r} to Redis")


def encode_command(args: Sequence[Any]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _encode_arg(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisClient:
    """One blocking connection. Usable as a context manager (closes on exit)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 6379, *,
                 unix_path: str | None = None, db: int = 0, password: str | None = None,
                 username: str | None = None, timeout: float | None = 10.0) -> None:
        if unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(unix_path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._rfile = sock.makefile("rb")
        if password is not None:
            self.command("AUTH", *([username] if username else []), password)
        if db:
            self.command("SELECT", db)

    # -- the API ---------------------------------------------------------------

    def command(self, *args: Any) -> Any:
        """Send one command and return its reply; an error reply raises :class:`RedisError`."""
        if not args:
            raise ValueError("command() needs at least the command name")
        self._sock.sendall(encode_command(args))
        reply = self._read_reply()
        if isinstance(reply, RedisError):
            raise reply
        return reply

    def pipeline(self, commands: Iterable[Sequence[Any]]) -> list[Any]:
        """Send several commands in one write and return their replies in order.

        Error replies are returned as :class:`RedisError` instances, not raised.
        """
        commands = [tuple(c) for c in commands]
        self._sock.sendall(b"".join(encode_command(c) for c in commands))
        return [self._read_reply() for _ in commands]

    def close(self) -> None:
        try:
            self._rfile.close()
        finally:
            self._sock.close()

    def __enter__(self) -> "RedisClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- RESP2 parsing ---------------------------------------------------------

    def _read_line(self) -> bytes:
        line = self._rfile.readline()
        if not line.endswith(b"\r\n"):
            raise ProtocolError(f"connection closed or bad line from Redis: {line!r}")
        return line[:-2]

    def _read_reply(self) -> Any:
        line = self._read_line()
        if not line:
            raise ProtocolError("empty line from Redis")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode("utf-8", "replace")
        if kind == b"-":
            return RedisError(rest.decode("utf-8", "replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self._rfile.read(length + 2)
            if len(data) != length + 2 or not data.endswith(b"\r\n"):
                raise ProtocolError("connection closed in the middle of a bulk string")
            return data[:-2]
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [self._read_reply() for _ in range(count)]
        raise ProtocolError(f"unknown RESP2 reply type: {line!r}")
