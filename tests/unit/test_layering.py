"""The protocol core imports without the asyncio layer (import-linter checks the static graph)."""

from __future__ import annotations

import subprocess
import sys


def test_the_session_and_the_simulator_run_without_asyncio_or_aiohttp() -> None:
    probe = (
        "import sys, minigrid, minigrid.protocol, minigrid.mux, minigrid.state, "
        "minigrid.session, minigrid.handshake, minigrid.trace, minigrid.sim, minigrid.sim.pair; "
        "minigrid.sim.Simulation(3, 1).run(3.0); "
        "print(sorted(m for m in ('asyncio', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"


def test_the_asyncio_layer_still_loads_on_first_use() -> None:
    import minigrid
    from minigrid.manager import Manager

    assert minigrid.Manager is Manager
    assert minigrid.GRID_PATH == "/minigrid/grid/v1"
