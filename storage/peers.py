"""The peer table: this node's view of every peer, driven by the grid's connection state.

The grid calls :meth:`PeerTable._on_state` synchronously on every connection state change
(``manager.state_listeners``). The table decides there and then, with no I/O:

- a peer whose connection leaves CONNECTED is **offline**: every RemoteDrive on it is marked
  offline at once, so new operations skip it (``is_online()`` is False) and calls that slip
  through fail with DriveOffline before touching the grid. Calls already in flight fail at once
  too: the grid fails them with Disconnected, which RemoteDrive turns into DriveOffline;
- a peer whose connection reaches CONNECTED is **online** again, and so are its drives.

Each change is logged once, as one line (``peer 127.0.0.1:9002 offline (reset: ...)``,
``peer 127.0.0.1:9002 back online after 3.2s``). Redials that keep failing while a peer is
offline only update its ``last_cause``, and failed requests are never logged here or in
RemoteDrive: hundreds of queued requests failing together must not set off a storm of log
lines (Tahoe-LAFS ticket #502).

A peer lost moments ago is usually redialling. :meth:`PeerTable.rejoin` lets an operation that
is short of a quorum of online drives wait a bounded moment (``REJOIN_WAIT``) for such peers
instead of failing at once: a node thawed after SIGSTOP finds every session gone together and
would otherwise answer the requests that queued while it was frozen with 503 a few milliseconds
before its links are back. A peer offline for longer than ``REJOIN_WINDOW`` is not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from minigrid.connection import Connection
from minigrid.manager import Manager
from minigrid.state import State
from storage.drive import Drive
from storage.remote import RemoteDrive

log = logging.getLogger("storage.peers")

#: Peers that went offline at most this long ago (seconds) are worth waiting for.
REJOIN_WINDOW = 5.0
#: The longest an operation waits for them (seconds).
REJOIN_WAIT = 3.0


@dataclass(frozen=True)
class PeerInfo:
    """A snapshot of one peer for the admin API."""

    host: str
    online: bool
    state: str  # the grid connection state: connected, connecting, error, ...
    since: float  # loop time (monotonic) of the last online/offline change
    for_seconds: float  # how long the peer has been online (or offline)
    last_cause: str  # why the connection last went down or failed to come up
    changes: int  # online/offline changes seen since the table started
    drives: tuple[str, ...]  # endpoints of this peer's drives in use here

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class _Peer:
    host: str
    online: bool
    state: State
    since: float
    ever_online: bool
    last_cause: str = ""
    changes: int = 0
    drives: list[RemoteDrive] = field(default_factory=list)


class PeerTable:
    """Follows every peer's grid connection and keeps its RemoteDrives' availability in step.

    Create it once per node, after the manager and before (or after) ``manager.start()``, and
    build remote drives with :meth:`remote_drive` (or register them with :meth:`add_drive`).
    """

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self._loop = asyncio.get_running_loop()
        self._peers: dict[str, _Peer] = {}
        #: Set (and replaced) whenever a peer comes back online: what :meth:`rejoin` waits on.
        self._back = asyncio.Event()
        for host in manager.peers:
            self._entry(host)
        manager.state_listeners.append(self._on_state)

    def _entry(self, host: str) -> _Peer:
        peer = self._peers.get(host)
        if peer is None:
            state = State.UNCONNECTED
            cause = ""
            try:
                conn = self.manager.connection(host)
            except KeyError:
                pass  # the manager has not started yet; its first state change fills this in
            else:
                state, cause = conn.state, conn.last_cause
            online = state is State.CONNECTED
            peer = _Peer(host, online, state, self._loop.time(), online, last_cause=cause)
            self._peers[host] = peer
        return peer

    def close(self) -> None:
        """Stop following the grid."""
        if self._on_state in self.manager.state_listeners:
            self.manager.state_listeners.remove(self._on_state)

    # --- drives -------------------------------------------------------------------------------

    def remote_drive(self, host: str, path: str, **options: Any) -> RemoteDrive:
        """A RemoteDrive for drive ``path`` on peer ``host``, kept in step with the peer's state.

        ``options`` go to :class:`~storage.remote.RemoteDrive` (timeouts, cache TTL)."""
        drive = RemoteDrive(self.manager.connection(host), path, **options)
        self.add_drive(drive)
        return drive

    def add_drive(self, drive: RemoteDrive) -> None:
        """Keep ``drive``'s availability in step with its peer's connection."""
        peer = self._entry(drive.host)
        peer.drives.append(drive)
        drive.set_online(peer.online)

    def is_online(self, host: str) -> bool:
        """Whether the table holds ``host`` online (False for an unknown host)."""
        peer = self._peers.get(host)
        return peer is not None and peer.online

    def _rejoining(self, drive: Drive) -> bool:
        """Whether ``drive`` is on a peer lost moments ago that may be back soon."""
        peer = self._peers.get(drive.host) if isinstance(drive, RemoteDrive) else None
        return (
            peer is not None
            and not peer.online
            and peer.ever_online
            and peer.state is not State.SHUTDOWN
            and self._loop.time() - peer.since <= REJOIN_WINDOW
        )

    async def rejoin(self, drives: Sequence[Drive], needed: int) -> None:
        """Wait until ``needed`` of ``drives`` are online again, while enough of them are on
        peers lost less than ``REJOIN_WINDOW`` ago, for at most ``REJOIN_WAIT``. Returns
        without waiting when they could not make ``needed`` anyway (a drive of this node, or
        a peer down for longer, is not coming back in a moment)."""
        deadline = self._loop.time() + REJOIN_WAIT
        while True:
            back = sum(1 for drive in drives if drive.is_online())
            coming = sum(
                1
                for drive in drives
                if not drive.is_online() and self._rejoining(drive)
            )
            remaining = deadline - self._loop.time()
            if back >= needed or back + coming < needed or remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._back.wait()

    # --- following the grid -------------------------------------------------------------------

    def _on_state(self, conn: Connection, old: State, new: State, cause: str) -> None:
        """The grid's synchronous state listener: bookkeeping first, one log line per change."""
        peer = self._entry(conn.remote)
        peer.state = new
        if new is not State.CONNECTED and cause:
            peer.last_cause = cause
        online = new is State.CONNECTED
        if online == peer.online:
            return
        now = self._loop.time()
        elapsed = now - peer.since
        peer.online, peer.since = online, now
        peer.changes += 1
        for drive in peer.drives:
            drive.set_online(online)
        if online:
            self._back.set()
            self._back = asyncio.Event()
        if online and peer.ever_online:
            log.info("peer %s back online after %.1fs", peer.host, elapsed)
        elif online:
            log.info("peer %s online", peer.host)
        elif new is State.SHUTDOWN:  # this node is shutting down: nothing is wrong
            log.info("peer %s offline (local shutdown)", peer.host)
        else:
            log.warning("peer %s offline (%s)", peer.host, peer.last_cause or new.value)
        peer.ever_online = peer.ever_online or online

    # --- admin API ----------------------------------------------------------------------------

    def _last_cause(self, peer: _Peer) -> str:
        # The grid may revise a diagnosis later (a pong reporting a stall, a new instance ID)
        # without a state change, so read the connection's current word on it.
        try:
            return self.manager.connection(peer.host).last_cause or peer.last_cause
        except KeyError:
            return peer.last_cause

    def snapshot(self) -> dict[str, PeerInfo]:
        """Every peer's state, since when, the last cause and its drives, by host."""
        now = self._loop.time()
        return {
            host: PeerInfo(
                host=host,
                online=peer.online,
                state=peer.state.value,
                since=peer.since,
                for_seconds=round(now - peer.since, 3),
                last_cause=self._last_cause(peer),
                changes=peer.changes,
                drives=tuple(drive.endpoint for drive in peer.drives),
            )
            for host, peer in sorted(self._peers.items())
        }


__all__ = ["PeerInfo", "PeerTable"]
