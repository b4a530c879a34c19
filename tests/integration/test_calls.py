"""Single-payload calls over real loopback websockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from minigrid import (
    DeadlineExceeded,
    Disconnected,
    HandlerID,
    Manager,
    RemoteError,
    protocol,
)
from minigrid.protocol import Op
from minigrid.testing import (
    TEST_SECRET,
    LocalGrid,
    host_of,
    listening_socket,
    local_grid,
    remote_node,
    serve_manager,
)
from minigrid.typed import TypedHandler
from tests.conftest import eventually


def idle(grid: LocalGrid) -> bool:
    return all(
        stats.inflight_calls == 0 and stats.inflight_handlers == 0
        for manager in grid.managers
        for stats in manager.stats().values()
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [0, 100, 1 << 20, 3 * (1 << 20) + 17])
async def test_echo(size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    async with local_grid(2) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        assert await conn.call(HandlerID.TEST_ECHO, payload) == payload
        back = grid.managers[1].connection(grid.hosts[0])
        assert await back.call(HandlerID.TEST_ECHO, payload) == payload
        await eventually(lambda: idle(grid), what="no calls in flight")


@pytest.mark.asyncio
async def test_handler_error_reaches_the_caller_with_its_message() -> None:
    async with local_grid(2) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        with pytest.raises(RemoteError, match="disk on fire") as info:
            await conn.call(HandlerID.TEST_ERROR, b"disk on fire")
        assert info.value.handler == "TEST_ERROR"
        assert await conn.call(HandlerID.TEST_ECHO, b"still fine") == b"still fine"


@pytest.mark.asyncio
async def test_unknown_handler_and_subroute_are_clear_remote_errors() -> None:
    async with local_grid(2) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        with pytest.raises(RemoteError, match=r"unknown handler handler#999"):
            await conn.call(999)
        with pytest.raises(RemoteError, match=r"unknown subroute '/d9' for handler TEST_ECHO"):
            await conn.call(HandlerID.TEST_ECHO, b"x", subroute="/d9")
        assert await conn.call(HandlerID.TEST_ECHO, b"x", subroute="/d1") == b"x"


def tracked_sleep(started: asyncio.Event, cancelled: asyncio.Event) -> Callable[[Manager], None]:
    """Register a TEST_SLEEP that sets ``started`` on entry and ``cancelled`` when cancelled."""

    async def handler(payload: bytes) -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b""

    def register(manager: Manager) -> None:
        manager.register_single(HandlerID.TEST_SLEEP, handler)

    return register


@pytest.mark.asyncio
async def test_deadline_expiry_fails_the_call_and_cancels_the_remote_handler() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async with local_grid(2, register=tracked_sleep(started, cancelled)) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        loop = asyncio.get_running_loop()
        begun = loop.time()
        with pytest.raises(DeadlineExceeded, match="TEST_SLEEP"):
            await conn.call(HandlerID.TEST_SLEEP, timeout=0.3)
        assert loop.time() - begun < 5.0  # returned at the deadline, not the 30s default
        await asyncio.wait_for(cancelled.wait(), 5)
        await eventually(lambda: idle(grid), what="no calls in flight")


@pytest.mark.asyncio
async def test_the_deadline_travels_with_the_call() -> None:
    # The caller waits 10s, but says 0.3s on the wire: the server must give up on its own.
    started, cancelled = asyncio.Event(), asyncio.Event()

    async with local_grid(2, register=tracked_sleep(started, cancelled)) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        await conn.send_raw_frame(
            protocol.encode(
                Op.REQUEST, mux_id=10**9, deadline_ms=300, handler_id=HandlerID.TEST_SLEEP
            )
        )
        await asyncio.wait_for(cancelled.wait(), 5)


@pytest.mark.asyncio
async def test_caller_cancellation_returns_at_once_and_cancels_the_remote() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async with local_grid(2, register=tracked_sleep(started, cancelled)) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP))
        await asyncio.wait_for(started.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(call, 1)
        await asyncio.wait_for(cancelled.wait(), 5)
        await eventually(lambda: idle(grid), what="no calls in flight")


@pytest.mark.asyncio
async def test_a_thousand_concurrent_calls_on_one_connection() -> None:
    async with local_grid(2) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        payloads = [i.to_bytes(4, "big") * (i % 50) for i in range(1000)]
        results = await asyncio.gather(*(conn.call(HandlerID.TEST_ECHO, p) for p in payloads))
        assert results == payloads
        stats = conn.stats()
        assert stats.messages_out >= 1000
        assert stats.frames_out < stats.messages_out  # the writer merged messages into frames


@dataclass
class Add:
    a: int
    b: int


@dataclass
class Sum:
    total: int
    note: str


ADD = TypedHandler(HandlerID.TEST_ECHO, Add, Sum)


@pytest.mark.asyncio
async def test_typed_handler_round_trip_and_bad_payload() -> None:
    async def add(request: Add) -> Sum:
        return Sum(request.a + request.b, f"{request.a}+{request.b}")

    def register(manager: Manager) -> None:
        ADD.register(manager, add)

    async with local_grid(2, register=register) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        assert await ADD.call(conn, Add(2, 40)) == Sum(42, "2+40")
        with pytest.raises(RemoteError, match="bad Add payload"):
            await conn.call(HandlerID.TEST_ECHO, b"\x93\x01\x02\x03")


@pytest.mark.asyncio
async def test_calls_to_a_peer_that_is_not_connected_fail_at_once() -> None:
    sock = listening_socket()
    ghost = "127.0.0.1:9"  # discard port: nothing listens there
    manager = Manager(host_of(sock), [ghost], TEST_SECRET)
    runner = await serve_manager(manager, sock)
    try:
        await manager.start()
        with pytest.raises(Disconnected):
            await manager.connection(ghost).call(HandlerID.TEST_ECHO, b"x")
    finally:
        await manager.close()
        await runner.cleanup()
        sock.close()


@pytest.mark.asyncio
async def test_calls_to_a_node_in_another_process() -> None:
    async with remote_node() as remote:
        conn = remote.conn
        for size in (0, 100, 1 << 20):
            payload = socket.gethostname().encode() * (size // 8) + b"x" * (size % 8)
            assert await conn.call(HandlerID.TEST_ECHO, payload) == payload
        with pytest.raises(RemoteError, match="from afar"):
            await conn.call(HandlerID.TEST_ERROR, b"from afar")
        results = await asyncio.gather(
            *(conn.call(HandlerID.TEST_ECHO, str(i).encode()) for i in range(1000))
        )
        assert results == [str(i).encode() for i in range(1000)]
