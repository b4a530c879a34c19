"""A deterministic simulator of grid clusters: many sessions, one process, a virtual clock.

:class:`Simulation` runs N nodes (full mesh), each with a real
:class:`~minigrid.session.GridSession` per peer and the real handshake, over an in-memory
network (:mod:`minigrid.sim.network`), driven by one seeded scheduler
(:mod:`minigrid.sim.clock`). Faults freeze or block a node, partition the cluster (silent or
reset), shape links, drop connections and jump wall clocks; :meth:`Simulation.check` and
:meth:`Simulation.settle` hold the run to the grid's promises. One seed and one schedule give
one run: a failing seed replays exactly (``python -m minigrid.sim --seed N``).

Nothing here imports asyncio: the sessions are sans-IO, and so is everything around them.
"""

from __future__ import annotations

from .clock import Scheduler
from .cluster import Fault, Simulation
from .ledger import Ledger
from .network import LinkShape, Network

__all__ = ["Fault", "Ledger", "LinkShape", "Network", "Scheduler", "Simulation"]
