"""The one small protocol every part of a node runs behind.

A node is a list of services (the grid, the healing services, the admin API, the S3 gateway).
The node starts them in order with an :class:`~contextlib.AsyncExitStack`, so they close in
reverse order, whatever failed; it serves their routes on its one HTTP port, and its admin
``info`` is the sum of theirs. Adding a capability means adding a service, not editing the
node.

A service contributes two kinds of routes: *public* ones, served as they are (the grid's
websocket, the S3 catch-all, health checks), and *admin* ones under ``/minigrid/admin/v1``,
which the node serves behind SigV4 with the admin credentials. A service never authenticates
admin requests itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

ADMIN_PREFIX = "/minigrid/admin/v1"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One route: ``method`` (``*`` for any), a path pattern, the handler."""

    method: str
    path: str
    handler: Handler
    expect_handler: Callable[[web.Request], Awaitable[Any]] | None = None


@dataclass
class Routes:
    """What a service serves. Admin paths are relative to :data:`ADMIN_PREFIX`."""

    public: list[Route] = field(default_factory=list)
    admin: list[Route] = field(default_factory=list)


@runtime_checkable
class Service(Protocol):
    """A part of the node: started in order, closed in reverse, asked for routes and info."""

    name: str

    async def start(self) -> None:
        """Start serving; raise to stop the node from starting (it closes what started)."""

    async def close(self) -> None:
        """Stop, releasing every task and socket. Called once, even after a failed start."""

    def routes(self) -> Routes:
        """The routes to serve (asked once, after every service has started)."""

    def info(self) -> dict[str, Any]:
        """This service's part of the admin API's ``info`` (JSON-ready)."""


__all__ = ["ADMIN_PREFIX", "Handler", "Route", "Routes", "Service"]
