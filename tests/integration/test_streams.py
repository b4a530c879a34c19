"""Streams: flow control, cancellation from either end, and the known production hazards.

Every test ends with a leak check: no mux, call or handler left on either side, no task left
once the grid is closed, and nothing reported to the loop's exception handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

import pytest

from minigrid import (
    Cancelled,
    DeadlineExceeded,
    Disconnected,
    GridConfig,
    HandlerID,
    LocalProtocolError,
    Manager,
    RemoteError,
    protocol,
)
from minigrid.protocol import Op
from minigrid.streams import ServerStream
from minigrid.testing import (
    generate_request,
    generated_item,
    leak_checked_grid,
)
from tests.conftest import eventually

GEN = HandlerID.TEST_STREAM_GENERATE


@pytest.mark.asyncio
async def test_generate_echo_and_sink() -> None:
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(GEN, generate_request(50, 100)) as stream:
            items = [item async for item in stream]
        assert items == [generated_item(i, 100) for i in range(50)]

        async with conn.stream(HandlerID.TEST_STREAM_ECHO) as stream:
            # More items than in + out capacity: sending must overlap reading, or both wait.
            async def produce() -> None:
                for i in range(50):
                    await stream.send(str(i).encode())
                await stream.close_send()

            producer = asyncio.create_task(produce())
            echoed = [item async for item in stream]
            await producer
        assert echoed == [str(i).encode() for i in range(50)]

        big = bytes(random.getrandbits(8) for _ in range(1000)) * 3000  # 3 MB: fragmented
        async with conn.stream(HandlerID.TEST_STREAM_SINK) as stream:
            for _ in range(3):
                await stream.send(big)
            await stream.close_send()
            assert [item async for item in stream] == [str(3 * len(big)).encode()]

        async with conn.stream(HandlerID.TEST_STREAM_ECHO) as stream:
            await stream.send(big)
            assert await stream.recv() == big
            await stream.close_send()
            assert await stream.recv() is None
            assert await stream.recv() is None  # the end stays the end


@pytest.mark.asyncio
async def test_handler_error_ends_iteration_with_remote_error_after_the_items() -> None:
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        got = []
        with pytest.raises(RemoteError, match="generator failed after 3 items"):
            async with conn.stream(GEN, generate_request(10, 8, fail_after=3)) as stream:
                async for item in stream:
                    got.append(item)
        assert got == [generated_item(i, 8) for i in range(3)]


@pytest.mark.asyncio
async def test_unknown_stream_handler_and_wrong_kind() -> None:
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        with pytest.raises(RemoteError, match="unknown handler"):
            async with conn.stream(999) as stream:
                await stream.recv()
        with pytest.raises(RemoteError, match="single-call handler, not a stream"):
            async with conn.stream(HandlerID.TEST_ECHO) as stream:
                await stream.recv()
        with pytest.raises(RemoteError, match="stream handler, not a single call"):
            await conn.call(GEN)


@pytest.mark.asyncio
async def test_a_handler_without_requests_refuses_sends() -> None:
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(GEN, generate_request(1000, 4)) as stream:
            assert await stream.recv() == generated_item(0, 4)
            with pytest.raises(LocalProtocolError, match="takes no requests"):
                await stream.send(b"x")


@pytest.mark.asyncio
async def test_credit_returns_when_the_handler_takes_an_item() -> None:
    took = asyncio.Event()
    release = asyncio.Event()

    async def slow_taker(stream: ServerStream) -> None:
        await release.wait()
        await stream.recv()
        took.set()
        await asyncio.Event().wait()

    def register(manager: Manager) -> None:
        manager.register_stream(HandlerID.TEST_STREAM_STALL + 10, slow_taker, in_capacity=2)

    async with leak_checked_grid(register) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(HandlerID.TEST_STREAM_STALL + 10) as stream:
            await stream.send(b"1")
            await stream.send(b"2")  # both credits spent; the items arrived but nobody took them
            third = asyncio.create_task(stream.send(b"3"))
            await asyncio.sleep(0.2)  # give a wrong implementation time to let it through
            assert not third.done(), "a send went through with no credit"
            release.set()
            await asyncio.wait_for(took.wait(), 5)
            await asyncio.wait_for(third, 5)  # credit came back when the handler took one


# ---------------------------------------------------------------- hazard 1


@pytest.mark.asyncio
async def test_cancel_racing_the_final_close_never_looks_complete() -> None:
    count = 5
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        outcomes = {"complete": 0, "cancelled": 0}
        for attempt in range(200):
            got: list[bytes] = []
            async with conn.stream(GEN, generate_request(count, 16)) as stream:

                async def consume(stream: Any = stream, got: list[bytes] = got) -> str:
                    try:
                        async for item in stream:
                            got.append(item)
                    except Cancelled:
                        return "cancelled"
                    return "complete"

                consumer = asyncio.create_task(consume())
                for _ in range(attempt % 12):
                    await asyncio.sleep(0)  # move the cancel across every phase of the stream
                stream.cancel()
                outcome = await consumer
            if outcome == "complete":
                assert got == [generated_item(i, 16) for i in range(count)], got
            outcomes[outcome] += 1
        assert outcomes["complete"] > 0 and outcomes["cancelled"] > 0, outcomes


# ---------------------------------------------------------------- hazard 2


def _watched(started: asyncio.Event, cancelled: asyncio.Event) -> Any:
    async def flood(stream: ServerStream) -> None:
        started.set()
        try:
            for index in range(100):
                await stream.send(generated_item(index, 64))
        except asyncio.CancelledError:
            cancelled.set()
            raise

    return flood


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["cancel", "leave-context", "cancel-task"])
async def test_blocked_consumer_does_not_block_client_cancellation(how: str) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    def register(manager: Manager) -> None:
        manager.register_stream(
            HandlerID.TEST_STREAM_STALL + 11, _watched(started, cancelled), out_capacity=4
        )

    async with leak_checked_grid(register) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        if how == "cancel-task":
            opened = asyncio.Event()

            async def holder() -> None:
                async with conn.stream(HandlerID.TEST_STREAM_STALL + 11):
                    opened.set()
                    await asyncio.Event().wait()

            task = asyncio.create_task(holder())
            await asyncio.wait_for(opened.wait(), 5)
        else:
            stream = await conn.stream(HandlerID.TEST_STREAM_STALL + 11).open()
        await asyncio.wait_for(started.wait(), 5)
        # Nobody reads: the client's inbox fills to capacity and the handler blocks on credit.
        await eventually(lambda: server.stats().inflight_streams == 1)
        if how == "cancel":
            stream.cancel()
        elif how == "leave-context":
            await stream.__aexit__(None, None, None)
        else:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(cancelled.wait(), 5)


@pytest.mark.asyncio
async def test_blocked_consumer_does_not_block_a_server_side_error() -> None:
    async def fill_then_fail(stream: ServerStream) -> None:
        await stream.send(b"only")  # the client's one credit
        raise RuntimeError("server gave up")

    def register(manager: Manager) -> None:
        manager.register_stream(HandlerID.TEST_STREAM_STALL + 12, fill_then_fail, out_capacity=1)

    async with leak_checked_grid(register) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        async with conn.stream(HandlerID.TEST_STREAM_STALL + 12) as stream:
            # The handler finishes and releases its mux although the client has read nothing.
            await eventually(lambda: server.stats().inflight_streams == 0, timeout=5)
            assert await stream.recv() == b"only"
            with pytest.raises(RemoteError, match="server gave up"):
                await stream.recv()


@pytest.mark.asyncio
async def test_stream_deadline_cancels_the_handler_on_the_far_side() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def stall(stream: ServerStream) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def register(manager: Manager) -> None:
        manager.register_stream(HandlerID.TEST_STREAM_STALL + 13, stall)

    async with leak_checked_grid(register) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        with pytest.raises(DeadlineExceeded):
            async with conn.stream(HandlerID.TEST_STREAM_STALL + 13, timeout=0.3) as stream:
                await stream.recv()
        await asyncio.wait_for(cancelled.wait(), 5)


# ---------------------------------------------------------------- hazard 3


@pytest.mark.asyncio
async def test_opening_streams_is_not_blocked_by_a_full_data_queue() -> None:
    started = asyncio.Event()

    async def mark_started(stream: ServerStream) -> None:
        started.set()
        await stream.send(b"hello")

    def register(manager: Manager) -> None:
        manager.register_stream(HandlerID.TEST_STREAM_STALL + 15, mark_started)
        manager.register_stream(HandlerID.TEST_STREAM_STALL + 16, _flood_1mib, out_capacity=64)

    # Reading is paused for as long as a loaded machine needs to fill the queues: the
    # session must not end for silence meanwhile (that is not what this test is about).
    tight = GridConfig(max_queue_messages=4, max_queue_bytes=64 << 20, dead_after=60.0)
    async with leak_checked_grid(register, config=tight) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        bulk = await conn.stream(HandlerID.TEST_STREAM_STALL + 16).open()
        conn.pause_reading()  # the server's writer blocks, then its out-queue fills
        await eventually(lambda: server.stats().queue_messages >= 4, what="a full server queue")
        # The server must still read and open new streams: its ACK must not wait for room.
        fresh = await conn.stream(HandlerID.TEST_STREAM_STALL + 15).open()
        await asyncio.wait_for(started.wait(), 5)
        assert server.stats().queue_messages >= 4  # still full: the open did not need room
        conn.pause_reading(False)
        assert await asyncio.wait_for(fresh.recv(), 10) == b"hello"
        fresh.cancel()
        bulk.cancel()


@pytest.mark.asyncio
async def test_a_stream_cancelled_while_its_open_waits_for_room_never_reaches_the_server() -> None:
    started = asyncio.Event()

    async def mark_started(stream: ServerStream) -> None:
        started.set()
        await asyncio.Event().wait()

    def register(manager: Manager) -> None:
        manager.register_stream(HandlerID.TEST_STREAM_STALL + 17, mark_started)

    # Reading is paused for as long as a loaded machine needs to fill the queues: the
    # session must not end for silence meanwhile (that is not what this test is about).
    tight = GridConfig(max_queue_messages=4, max_queue_bytes=64 << 20, dead_after=60.0)
    async with leak_checked_grid(register, config=tight) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        server.pause_reading()  # our writes back up: socket buffers, then our data queue
        calls = [asyncio.create_task(conn.call(HandlerID.TEST_ECHO, bytes(1 << 20), timeout=30))
                 for _ in range(24)]  # fmt: skip
        # A full data queue: calls wait for room (queue_messages would count control too).
        await eventually(lambda: conn.stats().queue_waiters > 0, what="a full client queue")
        stream = conn.stream(HandlerID.TEST_STREAM_STALL + 17)
        opening = asyncio.create_task(stream.open())
        await eventually(
            lambda: conn.stats().inflight_streams == 1 and not opening.done(),
            what="the open waiting for room",
        )
        stream.cancel()  # its cancel is control, and overtakes the open: the open must not go
        server.pause_reading(False)
        await asyncio.wait_for(opening, 10)
        await asyncio.wait_for(asyncio.gather(*calls), 30)
        # Data goes in order: had the open been queued, the handler would run before this.
        assert await conn.call(HandlerID.TEST_ECHO, b"after") == b"after"
        assert not started.is_set()
        with pytest.raises(Cancelled):
            await stream.recv()


async def _flood_1mib(stream: ServerStream) -> None:
    for _ in range(64):
        await stream.send(bytes(1 << 20))


# ---------------------------------------------------------------- hazard 4


@pytest.mark.asyncio
async def test_disconnect_during_stream_setup_ends_clean_on_both_sides() -> None:
    quick_redial = GridConfig(backoff_initial=0.01, backoff_cap=0.05)
    async with leak_checked_grid(config=quick_redial) as grid:
        for attempt in range(30):
            conn = grid.managers[0].connection(grid.hosts[1])
            server = grid.managers[1].connection(grid.hosts[0])
            # Both ends must be in the new session, or drop() has nothing to end.
            await eventually(
                lambda conn=conn, server=server: (  # type: ignore[misc]
                    conn.stats().connected_for is not None and server.is_connected
                ),
                what="both sides connected",
            )
            stream = conn.stream(HandlerID.TEST_STREAM_STALL)
            opening = asyncio.create_task(stream.open())
            for _ in range(attempt % 6):
                await asyncio.sleep(0)
            assert (conn if attempt % 2 else server).drop()
            with contextlib.suppress(Disconnected):
                await opening
            with pytest.raises(Disconnected):
                await asyncio.wait_for(stream.recv(), 10)
            stream.cancel()
            await eventually(grid.quiet, what="both sides released the mux")


@pytest.mark.asyncio
async def test_connection_lost_mid_stream_is_never_a_normal_end() -> None:
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        got = 0
        with pytest.raises(Disconnected):
            async with conn.stream(GEN, generate_request(10**6, 64)) as stream:
                async for _ in stream:
                    got += 1
                    if got == 50:
                        grid.managers[1].connection(grid.hosts[0]).drop()
        assert got >= 50


# ---------------------------------------------------------------- hazard 5


@pytest.mark.asyncio
async def test_unread_stream_does_not_block_single_calls() -> None:
    async def hundred(stream: ServerStream) -> None:
        for index in range(100):
            await stream.send(generated_item(index, 32))

    def register(manager: Manager) -> None:
        manager.register_stream(HandlerID.TEST_STREAM_STALL + 14, hundred, out_capacity=1)

    async with leak_checked_grid(register) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(HandlerID.TEST_STREAM_STALL + 14) as stream:
            results = await asyncio.wait_for(
                asyncio.gather(*(conn.call(HandlerID.TEST_ECHO, b"%d" % i) for i in range(100))),
                10,
            )
            assert results == [b"%d" % i for i in range(100)]
            assert [item async for item in stream] == [generated_item(i, 32) for i in range(100)]


@pytest.mark.asyncio
async def test_stalled_handler_with_full_inbox_does_not_block_other_calls() -> None:
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(HandlerID.TEST_STREAM_STALL) as stalled:
            for index in range(5):
                await asyncio.wait_for(stalled.send(b"%d" % index), 5)  # in_capacity=5
            blocked = asyncio.create_task(stalled.send(b"6th"))
            results = await asyncio.wait_for(
                asyncio.gather(*(conn.call(HandlerID.TEST_ECHO, b"%d" % i) for i in range(100))),
                10,
            )
            assert results == [b"%d" % i for i in range(100)]
            async with conn.stream(GEN, generate_request(20, 8)) as other:
                assert len([item async for item in other]) == 20
            assert not blocked.done(), "the sixth send went through without credit"
        with pytest.raises(Cancelled):
            await blocked


# ------------------------------------------------------- protocol breaches


@pytest.mark.asyncio
@pytest.mark.parametrize("breach", ["over-credit", "out-of-order"])
async def test_a_peer_breaking_the_rules_fails_only_that_mux(breach: str) -> None:
    async with leak_checked_grid() as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(HandlerID.TEST_STREAM_STALL) as stream:
            await stream.send(b"legit")
            seqs = range(1, 7) if breach == "over-credit" else [5]
            for seq in seqs:  # forged messages that bypass the client's own checks
                await conn.send_raw_frame(
                    protocol.encode(Op.CLIENT_MSG, mux_id=stream.mux_id, seq=seq, payload=b"x")
                )
            with pytest.raises(Cancelled, match=r"credit|out of order"):
                await asyncio.wait_for(stream.recv(), 5)
        assert await conn.call(HandlerID.TEST_ECHO, b"unharmed") == b"unharmed"
