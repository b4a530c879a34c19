"""Liveness against real processes: frozen, killed and blocked peers, clock jumps, full queues.

Detection times are printed (``-s`` shows them) so the closing notes can quote them; the
assertions hold them to the ``fast`` profile's promise: within the longest silence window a
peer may be given (``dead_after_max``, 4s) plus a second for a loaded machine. How fast it
really is (about ``dead_after``, 1.75s, for a peer that looked healthy) is for
``benchmarks/failure_detection.py`` to measure, not for a test.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from minigrid import (
    Cancelled,
    Disconnected,
    GridConfig,
    HandlerID,
    State,
    profile,
)
from minigrid.liveness import CAUSES, cause_kind
from minigrid.testing import (
    RemoteNode,
    generate_request,
    local_grid,
    remote_node,
)
from tests.conftest import eventually

DETECTION_LIMIT = profile("fast").dead_after_max + 1.0  # the fast profile's promise


def pair(tmp_path: Path, *, we_dial: bool = True) -> AbstractAsyncContextManager[RemoteNode]:
    """A manager here and a node in a child process, ``we_dial`` saying which side dials."""
    return remote_node(str(tmp_path / "node.log"), we_dial=we_dial)


@pytest.mark.asyncio
@pytest.mark.parametrize("we_dial", [True, False], ids=["we-dial", "it-dials"])
async def test_frozen_peer_is_detected_within_the_window_and_comes_back(
    tmp_path: Path, we_dial: bool
) -> None:
    async with pair(tmp_path, we_dial=we_dial) as p:
        conn = p.conn
        call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"60", timeout=60))
        stream = await conn.stream(HandlerID.TEST_STREAM_STALL).open()
        await eventually(lambda: conn.stats().inflight_calls == 1)
        frozen_at = time.monotonic()
        p.node.signal(signal.SIGSTOP)
        with pytest.raises(Disconnected) as info:
            await asyncio.wait_for(call, DETECTION_LIMIT + 5)
        detected = time.monotonic() - frozen_at
        print(
            f"\nfrozen peer ({'we dial' if we_dial else 'it dials'}): detected in "
            f"{detected:.2f}s, cause {info.value.cause!r}"
        )
        assert detected <= DETECTION_LIMIT, detected
        assert cause_kind(info.value.cause) in ("network-silent", "remote-stalled")
        with pytest.raises(Disconnected):
            await stream.recv()  # the stream failed too, never a normal end
        resumed_at = time.monotonic()
        p.node.signal(signal.SIGCONT)
        await conn.wait_state(State.CONNECTED, timeout=10)
        print(f"reconnected {time.monotonic() - resumed_at:.2f}s after SIGCONT")
        assert await conn.call(HandlerID.TEST_ECHO, b"back") == b"back"
        # The peer came back reporting the stall it suffered: the diagnosis is revised.
        await eventually(
            lambda: cause_kind(conn.stats().last_cause) == "remote-stalled",
            what="diagnosis revised to remote-stalled",
        )


@pytest.mark.asyncio
async def test_killed_peer_fails_calls_promptly_and_returns_as_a_new_instance(
    tmp_path: Path,
) -> None:
    async with pair(tmp_path) as p:
        conn = p.conn
        old_instance = conn.remote_instance
        call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"60", timeout=60))
        await eventually(lambda: conn.stats().inflight_calls == 1)
        killed_at = time.monotonic()
        p.node.signal(signal.SIGKILL)
        with pytest.raises(Disconnected) as info:
            await asyncio.wait_for(call, DETECTION_LIMIT + 5)
        detected = time.monotonic() - killed_at
        print(f"\nkilled peer: detected in {detected:.2f}s, cause {info.value.cause!r}")
        assert detected <= DETECTION_LIMIT
        await asyncio.to_thread(p.restart_node)
        await conn.wait_state(State.CONNECTED, timeout=10)
        assert conn.remote_instance != old_instance
        assert cause_kind(conn.stats().last_cause) == "peer-restarted"
        assert await conn.call(HandlerID.TEST_ECHO, b"new") == b"new"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_blocked_peer_loop_is_diagnosed_as_remote_stalled(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        conn = p.conn
        blocked_at = time.monotonic()
        with pytest.raises(Disconnected):
            await conn.call(HandlerID.TEST_BLOCK_LOOP, b"10", timeout=30)
        print(f"\nblocked peer loop: detected in {time.monotonic() - blocked_at:.2f}s")
        await conn.wait_state(State.CONNECTED, timeout=15)
        await eventually(
            lambda: cause_kind(conn.stats().last_cause) == "remote-stalled",
            what="remote-stalled diagnosis",
        )
        assert "stalled" in conn.stats().last_cause
        await eventually(
            lambda: "local event loop stalled for" in p.node.log_text(),
            what="the blocked node logging its own stall",
        )


@pytest.mark.asyncio
async def test_wall_clock_jumps_cause_no_disconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    async with local_grid(2) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(HandlerID.TEST_STREAM_ECHO) as stream:
            real = time.time
            for jump in (3600.0, -3600.0):
                monkeypatch.setattr(time, "time", lambda jump=jump: real() + jump)
                pongs = len(conn.counters.rtts)
                # Several ping rounds pass under the jumped clock.
                await eventually(
                    lambda pongs=pongs: len(conn.counters.rtts) >= pongs + 3,
                    timeout=15,
                    what="three pongs",
                )
                await stream.send(b"still here")
                assert await stream.recv() == b"still here"
                assert await conn.call(HandlerID.TEST_ECHO, b"x") == b"x"
            monkeypatch.setattr(time, "time", real)
            await stream.close_send()
            assert await stream.recv() is None
        for manager in grid.managers:
            for stats in manager.stats().values():
                assert stats.reconnects == 0 and stats.state == "connected", stats


@pytest.mark.asyncio
async def test_pings_overtake_bulk_data(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        conn = p.conn
        before = len(conn.counters.rtts)
        received = 0
        async with conn.stream(
            HandlerID.TEST_STREAM_GENERATE, generate_request(1500, 1 << 20)
        ) as stream:
            async for item in stream:
                received += len(item)
        rtts = conn.counters.rtts[before:]
        print(f"\n{received >> 20} MiB streamed; {len(rtts)} pings; max RTT {max(rtts):.3f}s")
        assert received == 1500 << 20
        assert len(rtts) >= 1, "the transfer was too short to see a ping"
        assert max(rtts) < 0.5
        assert conn.stats().reconnects == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("we_dial", [True, False], ids=["we-dial", "it-dials"])
async def test_full_queue_never_blocks_the_reconnect(tmp_path: Path, we_dial: bool) -> None:
    """The MinIO deadlock: the peer stops reading, our queue fills, the connection is killed,
    the peer comes back. The new connection must be up, and calls succeed, within 2s."""
    async with pair(tmp_path, we_dial=we_dial) as p:
        conn = p.conn
        p.node.signal(signal.SIGSTOP)
        big = bytes(1 << 20)
        senders = [
            asyncio.create_task(conn.call(HandlerID.TEST_ECHO, big, timeout=60)) for _ in range(64)
        ]
        await eventually(lambda: conn.stats().queue_bytes > 0, what="a backed-up queue")
        done, _ = await asyncio.wait(senders, timeout=DETECTION_LIMIT + 5)
        assert len(done) == len(senders)  # the connection was killed and everything failed
        assert all(isinstance(task.exception(), Disconnected) for task in senders)
        assert conn.stats().queue_messages == 0  # nothing left over to block a new session
        resumed_at = time.monotonic()
        p.node.signal(signal.SIGCONT)
        await conn.wait_state(State.CONNECTED, timeout=10)
        assert await conn.call(HandlerID.TEST_ECHO, b"ok") == b"ok"
        took = time.monotonic() - resumed_at
        print(
            f"\nfull-queue reconnect ({'we dial' if we_dial else 'it dials'}): "
            f"up and answering {took:.2f}s after SIGCONT"
        )
        assert took < 2.0


@pytest.mark.asyncio
async def test_server_cancels_a_stream_whose_client_went_quiet(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="minigrid.grid")
    # The client never pings its streams; the server gives up on a stream after 0.5s.
    config = GridConfig(stream_ping_interval=3600, stream_timeout=0.5)
    async with local_grid(2, config=config) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        async with conn.stream(HandlerID.TEST_STREAM_STALL) as stream:
            with pytest.raises(Cancelled, match="not seen for"):
                await asyncio.wait_for(stream.recv(), 10)
        lines = [
            r.getMessage()
            for r in caplog.records
            if "canceling remote connection" in r.getMessage()
        ]
        assert len(lines) == 1
        assert re.search(
            r"canceling remote connection \S+->\S+ not seen for \d+\.\ds "
            r"\(handler=TEST_STREAM_STALL subroute=-\): no traffic on this stream; remote loop "
            r"healthy at last contact",
            lines[0],
        ), lines[0]


@pytest.mark.asyncio
async def test_stream_pings_keep_an_idle_stream_alive() -> None:
    config = GridConfig(stream_ping_interval=0.1, stream_timeout=0.5)
    async with local_grid(2, config=config) as grid:
        conn = grid.managers[0].connection(grid.hosts[1])
        server = grid.managers[1].connection(grid.hosts[0])
        async with conn.stream(HandlerID.TEST_STREAM_STALL) as stream:
            opened = asyncio.get_running_loop().time()
            # Idle for four stream timeouts: only stream pings keep it alive.
            await eventually(
                lambda: stream.last_seen - opened > 2.0, timeout=10, what="stream pongs for 2s"
            )
            assert server.stats().inflight_streams == 1
            assert not stream.done


def test_cause_names_are_the_documented_ones() -> None:
    assert CAUSES == (
        "remote-stalled",
        "local-stalled",
        "network-silent",
        "reset",
        "peer-restarted",
        "peer-not-reading",
    )
