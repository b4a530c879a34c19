"""Single-payload calls over real loopback websockets."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from minigrid import (
    DeadlineExceeded,
    Disconnected,
    GridConfig,
    HandlerID,
    Manager,
    RemoteError,
    State,
    auth,
    protocol,
)
from minigrid.manager import should_dial
from minigrid.protocol import Op
from minigrid.testing import (
    TEST_SECRET,
    LocalGrid,
    NodeProcess,
    host_of,
    listening_socket,
    local_grid,
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
        await conn._put_data(
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
async def test_wrong_secret_is_rejected_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="minigrid.grid")
    sockets = [listening_socket(), listening_socket()]
    hosts = [host_of(sock) for sock in sockets]
    fast_retry = GridConfig(backoff_initial=0.02, backoff_cap=0.05, poke_interval=0.05)
    managers = [
        Manager(hosts[0], hosts, "secret-A", config=fast_retry),
        Manager(hosts[1], hosts, "secret-B", config=fast_retry),
    ]
    runners = [await serve_manager(m, s) for m, s in zip(managers, sockets, strict=True)]
    try:
        for manager in managers:
            await manager.start()
        dialer = next(m for m in managers if m.connection(m.peers[0]).dialer)
        conn = dialer.connection(dialer.peers[0])
        await eventually(lambda: conn.stats().dial_attempts >= 5, what="five dial attempts")
        await eventually(
            lambda: any("rejected poke from" in r.getMessage() for r in caplog.records),
            what="a rejected poke",
        )
        assert conn.state is not State.CONNECTED
        with pytest.raises(Disconnected):
            await conn.call(HandlerID.TEST_ECHO)
        dialer_lines = [r for r in caplog.records if "rejected by peer" in r.getMessage()]
        acceptor_lines = [r for r in caplog.records if "rejected dial from" in r.getMessage()]
        assert len(dialer_lines) == 1, [r.getMessage() for r in dialer_lines]
        assert "HTTP 403" in dialer_lines[0].getMessage()
        assert len(acceptor_lines) == 1
        poke_lines = [r for r in caplog.records if "rejected poke from" in r.getMessage()]
        assert len(poke_lines) == 1  # many "dial me" pokes were refused; said once
        assert "bad token signature" in acceptor_lines[0].getMessage()
    finally:
        for manager in managers:
            await manager.close()
        for runner in runners:
            await runner.cleanup()
        for sock in sockets:
            sock.close()


@pytest.mark.asyncio
async def test_unauthenticated_upgrades_are_refused_and_the_node_keeps_serving() -> None:
    async with local_grid(2) as grid:
        url = f"http://{grid.hosts[1]}/minigrid/grid/v1"
        async with aiohttp.ClientSession() as session:
            for headers, status in (({}, 401), ({"Authorization": "Bearer v1.x.1.y"}, 403)):
                with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                    await session.ws_connect(url, headers=headers)
                assert info.value.status == status
            # A valid token for a host the node does not know.
            token = auth.make_token(auth.derive_key(TEST_SECRET), "127.0.0.1:1")
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(url, headers={"Authorization": f"Bearer {token}"})
            assert info.value.status == 403
        conn = grid.managers[0].connection(grid.hosts[1])
        assert conn.state is State.CONNECTED
        assert await conn.call(HandlerID.TEST_ECHO, b"alive") == b"alive"


@pytest.mark.asyncio
async def test_version_mismatch_is_rejected_with_a_reason() -> None:
    sock = listening_socket()
    host = host_of(sock)
    # A peer host string that our node accepts from (rather than dials), so we can play it.
    impostor = next(
        f"127.0.0.1:{port}" for port in range(2, 60000) if should_dial(f"127.0.0.1:{port}", host)
    )
    manager = Manager(host, [impostor], TEST_SECRET)
    runner = await serve_manager(manager, sock)
    try:
        await manager.start()
        token = auth.make_token(auth.derive_key(TEST_SECRET), impostor)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                f"http://{host}/minigrid/grid/v1", headers={"Authorization": f"Bearer {token}"}
            )
            hello = {"host": impostor, "instance": "x" * 32, "version": 99}
            await ws.send_bytes(protocol.encode(Op.CONNECT, payload=protocol.pack_obj(hello)))
            reply = await ws.receive()
            [message] = protocol.decode_frame(reply.data)
            answer = protocol.unpack_map(message.payload, "reply")
            assert answer["accepted"] is False
            assert "protocol version mismatch" in answer["reason"]
            await ws.close()
        assert manager.connection(impostor).state is not State.CONNECTED
    finally:
        await manager.close()
        await runner.cleanup()
        sock.close()


@pytest.mark.asyncio
async def test_calls_to_a_node_in_another_process() -> None:
    local_sock, remote_sock = listening_socket(), listening_socket()
    local_host = host_of(local_sock)
    node = NodeProcess(remote_sock, [local_host])
    manager = Manager(local_host, [node.host], TEST_SECRET)
    runner = await serve_manager(manager, local_sock)
    try:
        await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(15)
        conn = manager.connection(node.host)
        for size in (0, 100, 1 << 20):
            payload = socket.gethostname().encode() * (size // 8) + b"x" * (size % 8)
            assert await conn.call(HandlerID.TEST_ECHO, payload) == payload
        with pytest.raises(RemoteError, match="from afar"):
            await conn.call(HandlerID.TEST_ERROR, b"from afar")
        results = await asyncio.gather(
            *(conn.call(HandlerID.TEST_ECHO, str(i).encode()) for i in range(1000))
        )
        assert results == [str(i).encode() for i in range(1000)]
    finally:
        await manager.close()
        await runner.cleanup()
        await asyncio.to_thread(node.stop)
        local_sock.close()
        remote_sock.close()
