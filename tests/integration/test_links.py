"""Simulated partitions (``Manager.partition``): what the loopback labs use instead of iptables.

Both ends are told, as ``minigrid fault partition`` does. A silent partition must look like
dropped packets (detected by liveness as ``network-silent``, never faster than the window);
a reset partition like an RST (everything in flight fails at once with a ``reset`` cause).
"""

from __future__ import annotations

import asyncio

import pytest

from minigrid import Disconnected, GridConfig, HandlerID, State
from minigrid.liveness import cause_kind
from minigrid.testing import local_grid

CONFIG = GridConfig().replace(dead_after=1.5, ping_interval=0.3, handshake_timeout=1.0,
                              poke_interval=0.3)  # fmt: skip


@pytest.mark.asyncio
async def test_a_silent_partition_is_found_by_liveness_and_heals() -> None:
    async with local_grid(2, config=CONFIG) as grid:
        a, b = grid.managers
        conn = a.connection(b.local)
        call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"30", timeout=30))
        await asyncio.sleep(0)  # let the call be sent before the link goes quiet
        a.partition(b.local, "silent")
        b.partition(a.local, "silent")
        with pytest.raises(Disconnected) as info:
            await asyncio.wait_for(call, 10)
        assert cause_kind(info.value.cause) == "network-silent", info.value.cause
        # While partitioned, no new session comes up.
        with pytest.raises(TimeoutError):
            await conn.wait_state(State.CONNECTED, timeout=2 * CONFIG.handshake_timeout)
        assert a.links.faults() == {b.local: "silent"}
        a.partition(b.local, None)
        b.partition(a.local, None)
        await conn.wait_state(State.CONNECTED, timeout=10)
        assert await conn.call(HandlerID.TEST_ECHO, b"back", timeout=5) == b"back"


@pytest.mark.asyncio
async def test_a_short_silent_partition_is_survived_like_tcp_would() -> None:
    """Lifted before liveness gives up, the session carries on: nothing was lost."""
    config = CONFIG.replace(dead_after=30.0)
    async with local_grid(2, config=config) as grid:
        a, b = grid.managers
        conn = a.connection(b.local)
        a.partition(b.local, "silent")
        b.partition(a.local, "silent")
        call = asyncio.create_task(conn.call(HandlerID.TEST_ECHO, b"held", timeout=20))
        done, _ = await asyncio.wait({call}, timeout=0.5)
        assert not done, "a call crossed a silent partition"
        a.partition(b.local, None)
        b.partition(a.local, None)
        assert await call == b"held"
        assert conn.stats().reconnects == 0


@pytest.mark.asyncio
async def test_a_reset_partition_fails_everything_in_flight_at_once() -> None:
    async with local_grid(2, config=CONFIG) as grid:
        a, b = grid.managers
        conn = a.connection(b.local)
        calls = [asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"30", timeout=30))
                 for _ in range(20)]  # fmt: skip
        await asyncio.sleep(0)
        a.partition(b.local, "reset")
        b.partition(a.local, "reset")
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2)
        assert all(isinstance(r, Disconnected) for r in results), results
        assert {cause_kind(r.cause) for r in results if isinstance(r, Disconnected)} == {"reset"}
        with pytest.raises(TimeoutError):
            await conn.wait_state(State.CONNECTED, timeout=1.0)
        a.partition(b.local, None)
        b.partition(a.local, None)
        await conn.wait_state(State.CONNECTED, timeout=10)
