"""The grid's receive limits, between two managers on loopback in this process.

The attacker is a real Manager that writes raw frames on its session
(:meth:`Connection.send_raw_frame`); the victim runs with small caps, so each limit is reached
with a few messages. The hostile peer in its own process, against a real node with the default
caps, is in ``tests/hostile``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgpack
import pytest

from minigrid import (
    Cancelled,
    Connection,
    GridConfig,
    GridError,
    HandlerID,
    Manager,
    RemoteError,
    State,
)
from minigrid.protocol import CHUNK_SIZE, MAX_REASSEMBLED, Flags, Op, encode, merge
from minigrid.testing import (
    TEST_SECRET,
    host_of,
    listening_socket,
    local_grid,
    register_test_handlers,
    serve_manager,
)
from tests.conftest import eventually

RAW = 1 << 48  # raw mux ids start here, far above the managers' own
MORE = int(Flags.MORE)


@dataclass
class Pair:
    victim: Connection  # the victim's connection to the attacker
    attacker: Connection  # the attacker's connection to the victim


@contextlib.asynccontextmanager
async def pair(victim_config: GridConfig, attacker_config: GridConfig) -> AsyncIterator[Pair]:
    """Two connected managers with their own configurations, both with the test handlers."""
    sockets = [listening_socket(), listening_socket()]
    hosts = [host_of(sock) for sock in sockets]
    managers = [
        Manager(hosts[0], hosts, TEST_SECRET, config=victim_config),
        Manager(hosts[1], hosts, TEST_SECRET, config=attacker_config),
    ]
    runners = []
    try:
        for manager, sock in zip(managers, sockets, strict=True):
            register_test_handlers(manager)
            runners.append(await serve_manager(manager, sock))
        for manager in managers:
            await manager.start()
        await asyncio.gather(*(manager.wait_connected(10) for manager in managers))
        yield Pair(managers[0].connection(hosts[1]), managers[1].connection(hosts[0]))
    finally:
        for manager in managers:
            await manager.close()
        for runner in runners:
            await runner.cleanup()
        for sock in sockets:
            sock.close()


def request(mux_id: int, handler: int, payload: bytes = b"", *, flags: int = 0,
            seq: int = 0) -> bytes:  # fmt: skip
    return encode(Op.REQUEST, mux_id=mux_id, handler_id=handler, flags=flags, seq=seq,
                  payload=payload, deadline_ms=60_000)  # fmt: skip


# --- calls ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_calls_past_the_handler_cap_get_an_immediate_busy_reply() -> None:
    config = GridConfig(max_inflight_handlers=4)
    async with local_grid(2, config=config) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        sleepers = [asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"60")) for _ in range(4)]
        await eventually(lambda: server.stats().inflight_handlers == 4, what="4 handlers")
        with pytest.raises(RemoteError, match=r"^busy: 4 calls on this connection are already "
                                              r"running \(cap 4\); retry later$"):  # fmt: skip
            await conn.call(HandlerID.TEST_ECHO, b"one too many")
        assert server.stats().inflight_handlers == 4  # no task was made for it
        assert server.stats().refused == 1
        for task in sleepers:
            task.cancel()
        await eventually(lambda: server.stats().inflight_handlers == 0, what="handlers gone")
        assert await conn.call(HandlerID.TEST_ECHO, b"room again") == b"room again"
        assert server.stats().held_bytes == 0


@pytest.mark.asyncio
async def test_a_request_reusing_a_running_mux_id_is_refused_not_orphaned() -> None:
    async with pair(GridConfig(), GridConfig()) as p:
        first = p.attacker.expect_raw_reply(RAW + 1)
        await p.attacker.send_raw_frame(request(RAW + 1, HandlerID.TEST_SLEEP, b"60"))
        await eventually(lambda: p.victim.stats().inflight_handlers == 1, what="the sleeper")
        await p.attacker.send_raw_frame(request(RAW + 1, HandlerID.TEST_SLEEP, b"60"))
        with pytest.raises(RemoteError, match=f"protocol error: mux {RAW + 1} is already a "):
            await asyncio.wait_for(first, 10)  # the refusal answers on that mux id
        assert p.victim.stats().inflight_handlers == 1  # tracked, so still cancellable
        await p.attacker.send_raw_frame(encode(Op.DISCONNECT_SERVER_MUX, mux_id=RAW + 1))
        await eventually(lambda: p.victim.stats().inflight_handlers == 0, what="cancelled")
        assert p.victim.stats().held_bytes == 0


@pytest.mark.asyncio
async def test_fragments_out_of_order_refuse_the_payload_and_its_rest_is_dropped() -> None:
    async with pair(GridConfig(), GridConfig()) as p:
        reply = p.attacker.expect_raw_reply(RAW + 2)
        await p.attacker.send_raw_frame(merge([
            request(RAW + 2, HandlerID.TEST_ECHO, b"a", flags=MORE, seq=0),
            request(RAW + 2, HandlerID.TEST_ECHO, b"c", flags=MORE, seq=2),
        ]))  # fmt: skip
        with pytest.raises(RemoteError, match="request: fragment 2 out of order"):
            await asyncio.wait_for(reply, 10)
        # The rest of that payload is dropped, never run as a truncated request.
        late = p.attacker.expect_raw_reply(RAW + 2)
        await p.attacker.send_raw_frame(request(RAW + 2, HandlerID.TEST_ECHO, b"d", seq=3))
        assert await p.attacker.call(HandlerID.TEST_ECHO, b"after") == b"after"
        assert not late.done()
        late.cancel()
        assert p.victim.stats().held_bytes == 0
        assert p.victim.stats().reconnects == 0


@pytest.mark.asyncio
async def test_the_largest_payload_still_round_trips_and_nothing_stays_held() -> None:
    """The caps leave room for what the protocol allows: a 64 MiB call (request and reply
    fragmented into 64 chunks each) with the default max_held_bytes."""
    payload = bytes(range(256)) * (MAX_REASSEMBLED // 256)
    async with local_grid(2) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        assert await conn.call(HandlerID.TEST_ECHO, payload, timeout=60) == payload
        async with conn.stream(HandlerID.TEST_STREAM_ECHO) as stream:
            big = payload[: 3 * CHUNK_SIZE + 5]
            await stream.send(big)
            assert await stream.recv() == big
        for side in (conn, server):
            await eventually(lambda side=side: side.stats().held_bytes == 0, what="released")


# --- streams --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_streams_past_the_stream_cap_are_refused_as_busy() -> None:
    config = GridConfig(max_inflight_streams=2)
    async with local_grid(2, config=config) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        async with (
            conn.stream(HandlerID.TEST_STREAM_STALL),
            conn.stream(HandlerID.TEST_STREAM_STALL),
        ):
            await eventually(lambda: server.stats().inflight_streams == 2, what="2 streams")
            async with conn.stream(HandlerID.TEST_STREAM_STALL) as third:
                with pytest.raises(RemoteError, match=r"^busy: 2 streams on this connection "):
                    await asyncio.wait_for(third.recv(), 10)
        await eventually(lambda: server.stats().inflight_streams == 0, what="streams gone")
        assert server.stats().held_bytes == 0


@pytest.mark.asyncio
async def test_unread_items_across_muxes_stop_at_the_held_bytes_cap() -> None:
    """Eight streams to a handler that never reads (in capacity 5), each sent five 64 KiB
    items: within every mux's credit, 2.5 MiB in all. With a 1 MiB cap the streams that go
    over fail as busy, alone; the others hold their items; and all of it is given back."""
    config = GridConfig(max_held_bytes=1 << 20)
    item = bytes(64 << 10)
    async with local_grid(2, config=config) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        async with contextlib.AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(conn.stream(HandlerID.TEST_STREAM_STALL))
                for _ in range(8)
            ]
            for stream in streams:
                for _ in range(5):
                    await stream.send(item)
            # 15 items fit in 1 MiB (64 KiB each, plus HELD_OVERHEAD per item and per stream):
            # the first three streams hold their five items, the other five fail at their first.
            await eventually(lambda: server.stats().refused == 5, what="5 streams to fail")
            assert server.stats().held_bytes <= config.max_held_bytes
            busy = (
                r"^busy: TEST_STREAM_STALL requests: the connection already holds \d+ "
                r"received bytes \(cap 1048576\)$"
            )
            for stream in streams[3:]:
                with pytest.raises(Cancelled, match=busy):
                    await asyncio.wait_for(stream.recv(), 10)
            assert not any(stream.done for stream in streams[:3])
        await eventually(lambda: server.stats().held_bytes == 0, what="everything given back")
        assert server.stats().reconnects == 0


@pytest.mark.asyncio
async def test_ack_mux_with_capacities_out_of_range_fails_only_that_stream() -> None:
    async with pair(GridConfig(), GridConfig()) as p:
        # The attacker stops reading so that its own Manager cannot acknowledge first.
        p.attacker.pause_reading()
        stream = await p.victim.stream(HandlerID.TEST_STREAM_ECHO).open()
        ack = msgpack.packb({"in": 1 << 40, "out": -1})
        await p.attacker.send_raw_frame(encode(Op.ACK_MUX, mux_id=stream.mux_id, payload=ack))
        with pytest.raises(RemoteError, match=r"ACK_MUX capacities in=1099511627776 out=-1 "
                                              r"outside 0-1024"):  # fmt: skip
            await asyncio.wait_for(stream.recv(), 10)
        p.attacker.pause_reading(False)
        assert await p.victim.call(HandlerID.TEST_ECHO, b"still up") == b"still up"
        assert p.victim.stats().reconnects == 0
        assert p.victim.stats().protocol_errors == 1


@pytest.mark.asyncio
async def test_a_credit_grant_over_four_bytes_fails_only_that_stream() -> None:
    async with pair(GridConfig(), GridConfig()) as p:
        async with p.victim.stream(HandlerID.TEST_STREAM_ECHO) as stream:
            await stream.send(b"x")
            assert await stream.recv() == b"x"  # acknowledged and running
            grant = encode(Op.UNBLOCK_CLIENT, mux_id=stream.mux_id, payload=b"\x00" * 5)
            await p.attacker.send_raw_frame(grant)
            with pytest.raises(RemoteError, match=r"credit grant of 5 bytes \(at most 4\)"):
                await asyncio.wait_for(stream.recv(), 10)
        assert await p.victim.call(HandlerID.TEST_ECHO, b"still up") == b"still up"
        assert p.victim.stats().reconnects == 0


# --- a peer that does not read ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_control_queue_overflow_cuts_the_session_with_a_clear_cause() -> None:
    victim = GridConfig(max_control_messages=64)
    attacker = GridConfig(dead_after=3600.0)
    async with pair(victim, attacker) as p:
        p.attacker.pause_reading()
        frame = merge([encode(Op.PING, payload=msgpack.packb({"t": 1.0}))] * 4096)
        with contextlib.suppress(GridError, ConnectionError):
            for _ in range(200):  # far more pongs than the socket buffers hold
                if p.victim.counters.sessions > 1 or not p.victim.is_connected:
                    break
                await p.attacker.send_raw_frame(frame)
        await eventually(
            lambda: p.victim.last_cause.startswith(
                "peer-not-reading: 64 control messages queued and unsent (cap 64)"
            ),
            timeout=20,
            what="the victim to cut the session",
        )
        p.attacker.pause_reading(False)
        await p.victim.wait_state(State.CONNECTED, 15)
        assert await p.victim.call(HandlerID.TEST_ECHO, b"back") == b"back"


@pytest.mark.asyncio
async def test_an_out_queue_full_for_the_window_cuts_a_peer_that_never_reads() -> None:
    """The attacker keeps pinging (so it is alive) but never reads: the victim's queue fills
    with echo replies and the writer makes no progress. After dead_after, the victim cuts."""
    victim = GridConfig(dead_after=1.5, ping_interval=0.25, max_queue_bytes=256 << 10)
    attacker = GridConfig(dead_after=3600.0, ping_interval=0.25)
    async with pair(victim, attacker) as p:
        p.attacker.pause_reading()
        payload = bytes(CHUNK_SIZE)
        for index in range(40):  # 40 MiB of replies: more than socket buffers and the queue
            await p.attacker.send_raw_frame(request(RAW + index, HandlerID.TEST_ECHO, payload))
        await eventually(
            lambda: p.victim.last_cause.startswith("peer-not-reading: out-queue full for "),
            timeout=20,
            what="the victim to cut the session",
        )
        assert "with nothing written" in p.victim.last_cause
        p.attacker.pause_reading(False)
        await p.victim.wait_state(State.CONNECTED, 15)
        assert await p.victim.call(HandlerID.TEST_ECHO, b"back") == b"back"
