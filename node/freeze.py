"""Freezing a peer from a node: ``POST /fault/freeze?peer=HOST`` and ``/fault/thaw?peer=HOST``.

A frozen process (SIGSTOP) answers nothing, so it cannot be asked to thaw itself: the signal has
to come from outside. ``minigrid fault freeze`` sends it by the PID in ``cluster.json``; these two
admin routes let a *node* send it to a peer instead, which is what the console's buttons use (a
browser cannot send signals). A node signals a peer only when the peer runs on the same machine
and is the very process that reported itself over the grid (:mod:`node.procident`: boot ID, PID
namespace, the PID's start tick, same user and executable); anything else is refused with the
reason, so a stale or forged report can never make it signal an unrelated process.

Both routes exist only with ``--allow-faults`` (without it, the fault service answers every
``/fault/...`` route 403 ``FaultsDisabled``). They answer like the fault service's routes:
``{"frozen": HOST, "pid": PID}`` or ``{"thawed": ...}``; 400 ``InvalidArgument`` with the reason.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from node.procident import NotLocal, ProcessIdentity
from node.services import Route, Routes

log = logging.getLogger("node.faults")

#: Asks a peer for its process identity over the grid (None: it did not answer).
AskProcess = Callable[[str], Awaitable[dict[str, Any] | None]]
#: The identity a peer reported last (None: never), for a peer that can no longer answer.
LastProcess = Callable[[str], dict[str, Any] | None]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


class FreezeService:
    """The freeze and thaw admin routes (see the module docstring)."""

    name = "freeze"

    def __init__(self, allowed: bool, peers: Sequence[str], ask: AskProcess,
                 last: LastProcess) -> None:  # fmt: skip
        self.allowed = allowed
        self.peers = list(peers)
        self._ask = ask
        self._last = last

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def routes(self) -> Routes:
        if not self.allowed:
            return Routes()  # the fault service refuses every /fault route
        return Routes(admin=[Route("POST", "/fault/freeze", self.freeze),
                             Route("POST", "/fault/thaw", self.thaw)])  # fmt: skip

    def info(self) -> dict[str, Any]:
        return {}

    async def freeze(self, request: web.Request) -> web.Response:
        peer = request.query.get("peer", "")
        if peer not in self.peers:
            return self._bad_peer(peer)
        # A running peer answers: ask it now, so the PID is the one running at this moment.
        raw = await self._ask(peer)
        return self._signal(peer, raw, signal.SIGSTOP, "frozen")

    async def thaw(self, request: web.Request) -> web.Response:
        peer = request.query.get("peer", "")
        if peer not in self.peers:
            return self._bad_peer(peer)
        # A frozen peer cannot answer: use what it said before it stopped.
        return self._signal(peer, self._last(peer), signal.SIGCONT, "thawed")

    def _bad_peer(self, peer: str) -> web.Response:
        if not self.peers:
            return _error(400, "InvalidArgument", "this node has no peers (and never signals "
                          "itself: a stopped node could not thaw itself)")  # fmt: skip
        return _error(400, "InvalidArgument",
                      f"peer must be one of {', '.join(self.peers)}, not {peer!r}")  # fmt: skip

    def _signal(self, peer: str, raw: dict[str, Any] | None, signum: int,
                done: str) -> web.Response:  # fmt: skip
        if raw is None:
            return _error(400, "InvalidArgument",
                          f"{peer} has not reported its process to this node (is it up?)")
        try:
            identity = ProcessIdentity.from_dict(raw)
            identity.check_local()
        except (ValueError, NotLocal) as exc:
            return _error(400, "InvalidArgument", f"cannot signal {peer} from this node: {exc}")
        try:
            os.kill(identity.pid, signum)
        except OSError as exc:
            return _error(400, "InvalidArgument", f"cannot signal {peer}: {exc.strerror}")
        log.warning("fault: %s %s (pid %d, %s sent by this node)", done, peer, identity.pid,
                    signal.Signals(signum).name)  # fmt: skip
        return web.json_response({done: peer, "pid": identity.pid})


__all__ = ["FreezeService"]
