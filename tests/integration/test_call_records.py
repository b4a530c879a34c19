"""Call records: every call and stream that ends is reported once, on both sides, as it ended."""

from __future__ import annotations

import asyncio

import pytest

from minigrid import DeadlineExceeded, Disconnected, HandlerID, RemoteError
from minigrid.testing import LocalGrid, generate_request, local_grid
from minigrid.trace import CallRecord
from tests.conftest import eventually


def recorded(grid: LocalGrid) -> tuple[list[CallRecord], list[CallRecord]]:
    """Start recording on both managers: (records of node 0, records of node 1)."""
    first: list[CallRecord] = []
    second: list[CallRecord] = []
    grid.managers[0].call_listeners.add(first.append)
    grid.managers[1].call_listeners.add(second.append)
    return first, second


@pytest.mark.asyncio
async def test_a_call_is_recorded_on_both_sides_with_sizes() -> None:
    async with local_grid(2) as grid:
        client, server = recorded(grid)
        conn = grid.managers[0].connection(grid.hosts[1])
        assert await conn.call(HandlerID.TEST_ECHO, b"x" * 300, subroute="/d1") == b"x" * 300
        await eventually(lambda: len(server) == 1, what="the server's record")
        (mine,) = client
        assert (mine.handler, mine.subroute, mine.peer) == ("TEST_ECHO", "/d1", grid.hosts[1])
        assert (mine.direction, mine.kind, mine.status) == ("client", "call", "ok")
        assert (mine.request_bytes, mine.response_bytes) == (300, 300)
        assert mine.duration >= 0
        (theirs,) = server
        assert (theirs.direction, theirs.peer, theirs.subroute) == ("server", grid.hosts[0], "/d1")
        assert (theirs.request_bytes, theirs.response_bytes, theirs.status) == (300, 300, "ok")


@pytest.mark.asyncio
async def test_errors_timeouts_and_disconnects_have_their_status() -> None:
    async with local_grid(2) as grid:
        client, server = recorded(grid)
        conn = grid.managers[0].connection(grid.hosts[1])
        with pytest.raises(RemoteError):
            await conn.call(HandlerID.TEST_ERROR, b"disk on fire")
        with pytest.raises(DeadlineExceeded):
            await conn.call(HandlerID.TEST_SLEEP, b"30", timeout=0.05)
        await eventually(lambda: len(server) == 2, what="both server records")
        assert [r.status for r in client] == ["error", "timeout"]
        assert "disk on fire" in client[0].error
        assert server[0].status == "error"
        assert server[1].status in ("cancelled", "timeout")  # the caller left, or it expired
        call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"30"))
        await eventually(lambda: conn.stats().inflight_calls == 1, what="the call to be sent")
        conn.drop()
        with pytest.raises(Disconnected):
            await call
        assert client[-1].status == "disconnected"


@pytest.mark.asyncio
async def test_a_stream_is_recorded_once_with_item_bytes() -> None:
    async with local_grid(2) as grid:
        client, server = recorded(grid)
        conn = grid.managers[0].connection(grid.hosts[1])
        request = generate_request(5, 1000)
        async with conn.stream(HandlerID.TEST_STREAM_GENERATE, request) as stream:
            items = [item async for item in stream]
        assert len(items) == 5
        await eventually(lambda: len(server) == 1 and len(client) == 1, what="both records")
        assert (client[0].kind, client[0].status) == ("stream", "ok")
        assert client[0].request_bytes == len(request)
        assert client[0].response_bytes == server[0].response_bytes == 5000
        failing = generate_request(5, 10, fail_after=2)
        async with conn.stream(HandlerID.TEST_STREAM_GENERATE, failing) as stream:
            with pytest.raises(RemoteError):
                async for _ in stream:
                    pass
        await eventually(lambda: len(server) == 2 and len(client) == 2, what="failed records")
        assert client[1].status == server[1].status == "error"
        assert "generator failed" in client[1].error


@pytest.mark.asyncio
async def test_a_listener_that_raises_does_not_break_the_call_or_the_others() -> None:
    async with local_grid(2) as grid:
        seen: list[CallRecord] = []

        def broken(_record: CallRecord) -> None:
            raise RuntimeError("listener bug")

        grid.managers[0].call_listeners.add(broken)
        grid.managers[0].call_listeners.add(seen.append)
        conn = grid.managers[0].connection(grid.hosts[1])
        assert await conn.call(HandlerID.TEST_ECHO, b"ok") == b"ok"
        assert len(seen) == 1
        grid.managers[0].call_listeners.remove(seen.append)
        grid.managers[0].call_listeners.remove(broken)
        assert not grid.managers[0].call_listeners
