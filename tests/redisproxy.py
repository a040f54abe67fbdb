"""
A TCP proxy between daemons and a real Redis that can freeze the conversation at an exact
moment: right after a command carrying a chosen marker reached Redis (and ran there).

``stall``: from then on nothing passes in either direction on any connection (commands wait in
the proxy, replies too), as a SIGSTOP of redis-server right after it ran that command would
(its AOF write done, its reply not sent); :meth:`StallingProxy.release` forwards everything
held, in order, and the conversation goes on.

``hold_commands``: from then on commands wait in the proxy but replies pass: the daemon gets
the reply of that command and whatever it sends afterwards never reaches Redis (as a daemon
cut from Redis, or killed, right after its write was acknowledged).

Threads, plain sockets; the daemon connects to ``redis://127.0.0.1:<proxy.port>/0``.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

TO_REDIS, TO_CLIENT = "to_redis", "to_client"


@dataclass
class _Pipe:
    source: socket.socket
    target: socket.socket
    direction: str
    tail: bytes = b""                  # the end of the last chunk (a marker may span two reads)
    held: list[bytes] = field(default_factory=list)


class StallingProxy:
    def __init__(self, redis_host: str, redis_port: int) -> None:
        self.redis = (redis_host, redis_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pipes: list[_Pipe] = []
        self._sockets: list[socket.socket] = []
        self._marker: bytes | None = None
        self._armed_holds: frozenset[str] = frozenset()
        self._holding: frozenset[str] = frozenset()
        self.triggered = threading.Event()   # set when the armed marker went through
        self.stalls = 0                       # how many times a marker triggered a hold
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="redis-proxy-accept").start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    # -- control -------------------------------------------------------------------------------

    def arm(self, marker: bytes, mode: str = "stall") -> None:
        """Hold traffic right after the next command that carries ``marker`` was sent to Redis."""
        holds = {"stall": frozenset({TO_REDIS, TO_CLIENT}), "hold_commands": frozenset({TO_REDIS})}[mode]
        with self._lock:
            self.triggered.clear()
            self._marker = marker
            self._armed_holds = holds

    def disarm(self) -> None:
        with self._lock:
            self._marker = None

    @property
    def holding(self) -> bool:
        return bool(self._holding)

    def release(self) -> None:
        """Forward everything held, in order, and stop holding."""
        with self._lock:
            self._holding = frozenset()
            for pipe in self._pipes:
                held, pipe.held = pipe.held, []
                for chunk in held:
                    try:
                        pipe.target.sendall(chunk)
                    except OSError:
                        break   # that connection is gone (e.g. its daemon was killed)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for s in [self._listener, *self._sockets]:
                try:
                    s.close()
                except OSError:
                    pass

    # -- forwarding ----------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.redis)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            to_redis = _Pipe(client, upstream, TO_REDIS)
            to_client = _Pipe(upstream, client, TO_CLIENT)
            with self._lock:
                if self._closed:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
                self._pipes += [to_redis, to_client]
            for pipe in (to_redis, to_client):
                threading.Thread(target=self._pump, args=(pipe,), daemon=True,
                                 name=f"redis-proxy-{pipe.direction}").start()

    def _pump(self, pipe: _Pipe) -> None:
        try:
            while True:
                data = pipe.source.recv(65536)
                if not data:
                    break
                with self._lock:
                    marker = self._marker
                    if pipe.direction == TO_REDIS and marker is not None:
                        window = pipe.tail + data
                        pipe.tail = window[-len(marker):]
                        if marker in window and pipe.direction not in self._holding:
                            # the command runs on Redis; then everything chosen is held
                            pipe.target.sendall(data)
                            self._marker = None
                            self._holding = self._armed_holds
                            self.stalls += 1
                            self.triggered.set()
                            continue
                    if pipe.direction in self._holding:
                        pipe.held.append(data)
                    else:
                        pipe.target.sendall(data)
        except OSError:
            pass
        finally:
            for s in (pipe.source, pipe.target):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
