"""Limits on the node's HTTP server: connections, slow request heads, accept errors.

The node serves S3, admin and the grid from one aiohttp server. Without limits a client can
hold it with idle or half-sent connections until the process runs out of file descriptors.
:class:`ServerLimits` adds, around aiohttp's own server:

- **a connection cap** (:class:`ConnectionCap`): the protocol factory counts open
  connections; one accepted over the cap gets a short ``503 SlowDown`` and is closed at once,
  so its descriptor is freed in the same loop turn and the open count never passes the cap;
- **a header-read timeout**: aiohttp's ``keepalive_timeout``. aiohttp arms that timer when a
  connection opens and again after each response, and when it fires while the connection is
  still waiting for a *complete* request head, it closes the connection. Bytes that dribble in
  do not push the deadline back (it is absolute, not an inactivity timer), so this is exactly a
  header timeout, and it also ends idle keep-alive connections. Once a head is parsed the
  request is the handler's: the S3 gateway bounds the body with its own inactivity timeout;
- **accept errors logged once per interval** (:class:`AcceptErrorLog`): when ``accept()``
  fails with EMFILE/ENFILE, asyncio pauses accepting for a second and reports every failed
  ``accept()`` to the loop's exception handler, which by default logs a traceback for each.
  This handler logs one line per interval instead, with the count;
- **a file-descriptor check** at startup (:func:`ensure_fd_limit`): raise the soft
  ``RLIMIT_NOFILE`` towards what the cap needs, or say plainly that it cannot.

aiohttp's own bounds stay as they are: request line and each header field at most 8190 bytes,
at most 128 header fields (``max_line_size``, ``max_field_size``, ``max_headers``). aiohttp
logs a request it cannot parse (an over-long header, garbage on the port) with a traceback;
:class:`ServerLog` makes that one line, as for any other client mistake.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import ssl
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from aiohttp.http import HttpProcessingError

log = logging.getLogger("node.http")

DEFAULT_MAX_CONNECTIONS: Final = 1024
DEFAULT_HEADER_TIMEOUT: Final = 15.0
DEFAULT_BODY_TIMEOUT: Final = 30.0
#: aiohttp's per-connection read buffer limit; reading pauses at twice this. aiohttp's default
#: (64 KiB) is below one socket read (256 KiB), so an upload paused and resumed the socket on
#: every read, an epoll re-registration each time: a put's profile showed 7% of the loop there.
#: 512 KiB lets a body run a block ahead of the put (at most about 1.25 MiB per connection).
DEFAULT_READ_BUFSIZE: Final = 512 * 1024
#: Descriptors the node needs besides client connections: drives, grid, logs, the loop.
FD_RESERVE: Final = 256
LOG_INTERVAL: Final = 60.0
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_REFUSAL_BODY: Final = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Too many connections; retry later.</Message></Error>"
)
_REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/xml\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class OncePerInterval:
    """Log an ongoing condition at most once per ``interval`` seconds, with a count of the
    occurrences in between (the first one is logged at once)."""

    def __init__(self, logger: logging.Logger, interval: float, clock: Callable[[], float]) -> None:
        self._log = logger
        self.interval = interval
        self._clock = clock
        self._last: float | None = None
        self._since = 0

    def report(self, text: str) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            self._since += 1
            return
        if self._last is not None and self._since:
            text += f" ({self._since} more in the last {now - self._last:.0f}s)"
        self._log.warning(text)
        self._last = now
        self._since = 0


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """The logger aiohttp's server writes to: a request the client got wrong (it could not be
    parsed, or the client hung up) is one INFO line; anything else keeps its traceback."""

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError | ConnectionError):
            text = str(msg) % args if args else str(msg)
            detail = " ".join(str(exc_info).split())[:300]  # aiohttp's messages span lines
            self.logger.info("%s: %s: %s", text, type(exc_info).__name__, detail)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


class _Slot:
    """One place under the cap; giving it back twice is harmless."""

    __slots__ = ("_cap",)

    def __init__(self, cap: ConnectionCap) -> None:
        self._cap: ConnectionCap | None = cap

    def release(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.open -= 1


class _Counted(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol, and gives its slot back when it ends.

    The slot goes back in ``connection_lost`` or, when that never comes (a TLS handshake that
    failed: asyncio then drops the protocol without calling it), when the protocol is freed.
    """

    def __init__(self, inner: asyncio.Protocol, slot: _Slot) -> None:
        self._inner = inner
        self._slot = slot
        weakref.finalize(self, slot.release)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._slot.release()
        self._inner.connection_lost(exc)


class _Refused(asyncio.Protocol):
    """A connection over the cap: answer 503 and close, without reading the request."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        try:
            transport.write(_REFUSAL)
        finally:
            transport.close()


class ConnectionCap:
    """A protocol factory that lets at most ``limit`` connections in at a time."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], limit: int) -> None:
        self._factory = factory
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._log = OncePerInterval(log, LOG_INTERVAL, asyncio.get_running_loop().time)

    def __call__(self) -> asyncio.Protocol:
        # Counted at accept time, not at connection_made: asyncio accepts a whole backlog
        # in one loop turn before any connection_made runs.
        if self.open >= self.limit:
            self.refused += 1
            self._log.report(
                f"connection limit reached: {self.open} connections open (max_connections "
                f"{self.limit}); refusing new ones with 503"
            )
            return _Refused()
        self.open += 1
        return _Counted(self._factory(), _Slot(self))


class CappedSockSite(web.SockSite):
    """aiohttp's ``SockSite`` with a :class:`ConnectionCap` in front of the server."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._max_connections = max_connections
        self.cap: ConnectionCap | None = None

    async def start(self) -> None:
        # SockSite.start() without its create_server call, which would use the bare factory.
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self.cap = ConnectionCap(server, self._max_connections)
        self._server = await asyncio.get_running_loop().create_server(
            self.cap, sock=self._sock, ssl=self._ssl_context, backlog=self._backlog
        )


class AcceptErrorLog:
    """A loop exception handler that turns asyncio's per-``accept()`` resource errors into one
    line per interval; every other context goes to the previous handler."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = LOG_INTERVAL) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._log = OncePerInterval(log, interval, loop.time)
        self._paused_accepting = False
        loop.set_exception_handler(self)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, ValueError) and "_start_serving" in repr(context.get("handle")):
            # asyncio re-arms accepting a second after EMFILE; when the server was closed in
            # that second, its socket is gone (fd -1). The node is stopping: nothing to say.
            log.debug("accepting was re-armed after the server closed; ignored")
            return
        if (
            isinstance(exc, OSError)
            and exc.errno in _RESOURCE_ERRNOS
            and "accept" in str(context.get("message", ""))
        ):
            self._paused_accepting = True
            name = errno.errorcode.get(exc.errno or 0, "?")
            self._log.report(
                f"cannot accept connections: {os.strerror(exc.errno or 0)} ({name}); "
                f"the open-file limit is {fd_limit()}; retrying every second"
            )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def close(self) -> None:
        """Put the previous handler back (if nobody replaced this one since).

        After an accept error asyncio has a re-arm timer pending; this handler stays in place
        for the loop's life then, so the timer firing after the server closed stays quiet."""
        if self._loop.get_exception_handler() is self and not self._paused_accepting:
            self._loop.set_exception_handler(self._previous)


def fd_limit() -> int:
    """The process's soft limit on open file descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def ensure_fd_limit(max_connections: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to fit ``max_connections`` plus a reserve, as far as
    the hard limit allows; warn when it cannot (connections would then fail with EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            log.info("raised the open-file limit from %d to %d", soft, raised)
            soft = raised
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open-file limit is %d, but max_connections %d needs about %d: connections "
            "may fail with EMFILE before the cap applies (raise ulimit -n or lower "
            "max_connections)", soft, max_connections, wanted,
        )  # fmt: skip


@dataclass(frozen=True)
class ServerLimits:
    """The node's HTTP limits; see the module docstring."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    read_bufsize: int = DEFAULT_READ_BUFSIZE

    def runner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``web.AppRunner`` (passed on to aiohttp's protocol)."""
        return {
            "keepalive_timeout": self.header_timeout,
            "read_bufsize": self.read_bufsize,
            "logger": ServerLog(logging.getLogger("aiohttp.server")),
        }

    async def serve(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> CappedSockSite:
        """Start serving ``runner`` on ``sock`` behind the connection cap."""
        ensure_fd_limit(self.max_connections)
        site = CappedSockSite(
            runner, sock, max_connections=self.max_connections, ssl_context=ssl_context
        )
        await site.start()
        return site


__all__ = [
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "AcceptErrorLog",
    "CappedSockSite",
    "ConnectionCap",
    "OncePerInterval",
    "ServerLimits",
    "ensure_fd_limit",
    "fd_limit",
]
