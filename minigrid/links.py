"""Simulated network faults between this node and one peer, for fault injection and labs.

A real partition needs root (iptables in network namespaces). On loopback, the grid can act one
out itself, per peer, on both ends (each node is told about the other):

- ``silent``: as if every packet were dropped. The session stops reading and writing (what was
  queued stays queued, as in a socket buffer), so the peer goes quiet and liveness notices.
  Dials and pokes hang until their handshake timeout; a dial that reaches us is not answered.
- ``reset``: as if the peer answered every packet with a TCP reset. The session ends at once
  with a ``reset`` cause, and every dial, poke or accept fails at once.

Lifting the fault lets a silent session carry on where it stopped, if liveness has not given up
on it yet (TCP would retransmit), and lets the dialer connect again.

A link can also be *routed*: the dialer connects to another address (a proxy in front of the
peer that adds latency or acts as a NAT) while the handshake still names the peer's own host.
"""

from __future__ import annotations

import asyncio
import enum


class LinkFault(enum.Enum):
    """What a simulated partition does to the packets of one peer."""

    SILENT = "silent"
    RESET = "reset"


class Links:
    """The simulated faults per peer host. Nothing is faulted until :meth:`set` says so."""

    def __init__(self) -> None:
        self._faults: dict[str, LinkFault] = {}
        self._cleared: dict[str, asyncio.Event] = {}
        self._routes: dict[str, str] = {}

    def get(self, remote: str) -> LinkFault | None:
        """The fault on the link to ``remote``, or None."""
        return self._faults.get(remote)

    def faults(self) -> dict[str, str]:
        """Every faulted link: ``{peer host: "silent" | "reset"}``."""
        return {host: fault.value for host, fault in sorted(self._faults.items())}

    def set(self, remote: str, fault: LinkFault | None) -> None:
        """Fault the link to ``remote`` (None lifts it and wakes whatever waited on it)."""
        if fault is None:
            self._faults.pop(remote, None)
            event = self._cleared.pop(remote, None)
            if event is not None:
                event.set()
        else:
            self._faults[remote] = fault

    def route(self, remote: str) -> str | None:
        """The ``host:port`` to dial instead of ``remote``, or None (dial it directly)."""
        return self._routes.get(remote)

    def routes(self) -> dict[str, str]:
        """Every routed link: ``{peer host: address dialed instead}``."""
        return dict(sorted(self._routes.items()))

    def set_route(self, remote: str, address: str | None) -> None:
        """Dial ``remote`` at ``address`` from now on (None: directly again)."""
        if address is None:
            self._routes.pop(remote, None)
        else:
            self._routes[remote] = address

    async def wait_clear(self, remote: str) -> None:
        """Return once the link to ``remote`` is not silent (at once if it is not)."""
        while self._faults.get(remote) is LinkFault.SILENT:
            event = self._cleared.setdefault(remote, asyncio.Event())
            await event.wait()


__all__ = ["LinkFault", "Links"]
