"""A TCP proxy in front of a node that lets a budget of bytes through, then holds the rest.

It makes "a transfer is in progress" a state a test can wait for instead of a race: once
``budget`` bytes have gone the chosen way, :attr:`StallProxy.stalled` is set and from then on
that direction carries at most ``trickle`` bytes a second (0: nothing at all, a stalled
server) until :meth:`StallProxy.release`. The other direction is never held.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Literal

Direction = Literal["down", "up"]
PIECE = 64 * 1024


class StallProxy:
    """``url`` forwards to ``target`` (``host:port``); see the module docstring."""

    def __init__(self, target: str, *, direction: Direction, budget: int, trickle: int = 0) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.direction = direction
        self.trickle = trickle
        self.stalled = threading.Event()
        self._budget = budget
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._released = threading.Event()
        self._wake = threading.Event()  # set by release() and close()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._closed.is_set():  # close() ran while this connection was being made
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
            self._spawn(self._pump, client, server, "up")
            self._spawn(self._pump, server, client, "down")

    def _allowance(self, direction: Direction, wanted: int) -> int:
        """How many of ``wanted`` bytes may pass now (held ones wait, then trickle)."""
        if direction != self.direction:
            return wanted
        with self._lock:
            allowed = min(wanted, self._budget)
            self._budget -= allowed
            if self._budget == 0:
                self.stalled.set()
        return allowed

    def _pump(self, source: socket.socket, sink: socket.socket, direction: Direction) -> None:
        with contextlib.suppress(OSError):
            while not self._closed.is_set():
                data = source.recv(PIECE)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                for piece in self._metered(direction, data):
                    sink.sendall(piece)

    def _metered(self, direction: Direction, data: bytes) -> Iterator[bytes]:
        allowed = self._allowance(direction, len(data))
        if allowed:
            yield data[:allowed]
        rest = data[allowed:]
        while rest:
            if self._released.is_set():
                yield rest
                return
            if not self.trickle:
                # Held until released (or for good: a stalled server).
                self._wake.wait()
                if self._closed.is_set():
                    return
                continue
            # Emulating a slow link, not synchronising a test: the pace is the point.
            self._closed.wait(1.0)
            if self._closed.is_set():
                return
            yield rest[: self.trickle]
            rest = rest[self.trickle :]

    def release(self) -> None:
        """Let everything through from now on, held bytes first."""
        with self._lock:
            self._budget = 1 << 62
        self._released.set()
        self._wake.set()

    def close(self) -> None:
        """Drop every connection (both ends see a reset or EOF) and stop."""
        self._closed.set()
        self._wake.set()
        self._listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> StallProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["StallProxy"]
