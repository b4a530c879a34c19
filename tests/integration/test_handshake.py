"""The grid handshake against real loopback sockets: replays, wrong nonces, displacement, pokes,
unauthenticated peers, and rejections that are said once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from minigrid import Connection, GridConfig, HandlerID, Manager, State, protocol
from minigrid.errors import HandshakeRejected
from minigrid.handshake import Code, DialerHandshake, Purpose, derive_key
from minigrid.manager import should_dial
from minigrid.protocol import Op
from minigrid.testing import (
    TEST_SECRET,
    host_of,
    listening_socket,
    local_grid,
    register_test_handlers,
    serve_manager,
)
from tests.conftest import eventually
from tests.integration.wire import (
    RecordingProxy,
    address_of,
    dial_as,
    first_message,
    grid_messages,
    open_grid,
    receive_bytes,
    replay,
)

KEY = derive_key(TEST_SECRET)
NEW_INSTANCE = "f" * 32


def session_of(conn: Connection) -> tuple[Any, ...]:
    """What identifies the session that is up: if any of it changes, the session was replaced."""
    return (conn.state, conn.counters.sessions, conn.counters.connected_at, conn.remote_instance)


def rejection(messages: list[tuple[int, dict[str, object]]]) -> dict[str, object]:
    op, body = messages[-1]
    assert op == Op.CONNECT_RESPONSE, messages
    assert body["accepted"] is False, body
    return body


@dataclass
class ProxiedPair:
    """Two managers whose host strings are recording proxies, so every byte either one sends
    the other (dials, pokes) is on record. ``dialer`` dials ``acceptor``."""

    dialer: Manager
    acceptor: Manager
    dialer_proxy: RecordingProxy
    acceptor_proxy: RecordingProxy
    dialer_sock: socket.socket
    acceptor_sock: socket.socket
    runners: list[web.AppRunner]

    def conns(self) -> tuple[Connection, Connection]:
        """(the dialer's connection, the acceptor's connection)."""
        return (
            self.dialer.connection(self.acceptor.local),
            self.acceptor.connection(self.dialer.local),
        )

    async def restart_acceptor(self) -> None:
        """Stop the acceptor and start a new instance of it behind the same proxy."""
        await self.acceptor.close()
        await self.runners.pop().cleanup()
        self.acceptor_sock.close()
        self.acceptor_sock = listening_socket()
        self.acceptor_proxy.target = address_of(self.acceptor_sock)
        hosts = [self.dialer.local, self.acceptor.local]
        self.acceptor = Manager(self.acceptor.local, hosts, TEST_SECRET)
        register_test_handlers(self.acceptor)
        self.runners.append(await serve_manager(self.acceptor, self.acceptor_sock))
        await self.acceptor.start()


def _proxies() -> tuple[RecordingProxy, RecordingProxy, socket.socket, socket.socket]:
    while True:
        dialer_sock, acceptor_sock = listening_socket(), listening_socket()
        dialer_proxy = RecordingProxy(address_of(dialer_sock))
        acceptor_proxy = RecordingProxy(address_of(acceptor_sock))
        if should_dial(dialer_proxy.host, acceptor_proxy.host):
            return dialer_proxy, acceptor_proxy, dialer_sock, acceptor_sock
        for sock in (dialer_sock, acceptor_sock, dialer_proxy.sock, acceptor_proxy.sock):
            sock.close()


@contextlib.asynccontextmanager
async def proxied_pair() -> AsyncIterator[ProxiedPair]:
    dialer_proxy, acceptor_proxy, dialer_sock, acceptor_sock = _proxies()
    hosts = [dialer_proxy.host, acceptor_proxy.host]
    config = GridConfig(backoff_initial=0.05, backoff_cap=0.2)
    dialer = Manager(dialer_proxy.host, hosts, TEST_SECRET, config=config)
    acceptor = Manager(acceptor_proxy.host, hosts, TEST_SECRET)
    for manager in (dialer, acceptor):
        register_test_handlers(manager)
    pair = ProxiedPair(dialer, acceptor, dialer_proxy, acceptor_proxy, dialer_sock,
                       acceptor_sock, [])  # fmt: skip
    try:
        await dialer_proxy.start()
        await acceptor_proxy.start()
        pair.runners.append(await serve_manager(dialer, dialer_sock))
        pair.runners.append(await serve_manager(acceptor, acceptor_sock))
        # The dialer first: the acceptor's first poke then reaches a node that knows it.
        await dialer.start()
        await acceptor.start()
        await dialer.wait_connected(15)
        await pair.acceptor.wait_connected(15)
        yield pair
    finally:
        await pair.dialer.close()
        await pair.acceptor.close()
        for runner in pair.runners:
            await runner.cleanup()
        await dialer_proxy.close()
        await acceptor_proxy.close()
        pair.dialer_sock.close()
        pair.acceptor_sock.close()


@pytest.mark.asyncio
async def test_a_recorded_dial_replayed_later_is_refused_and_the_session_stays_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="minigrid.grid")
    async with proxied_pair() as p:
        # The live session's own connection is the last dial on record: a real, accepted one.
        recorded = p.acceptor_proxy.requests("/minigrid/grid/v1")[-1]
        request, frame = first_message(recorded)
        [(op, connect)] = grid_messages([frame])
        assert op == Op.CONNECT and connect["host"] == p.dialer.local
        assert connect["instance"] == p.dialer.instance_id and len(connect["proof"]) == 32  # type: ignore[arg-type]
        dialer_conn, acceptor_conn = p.conns()
        before = session_of(dialer_conn), session_of(acceptor_conn)

        answer = grid_messages(await replay(address_of(p.acceptor_sock), request, frame.raw))

        assert answer[0][0] == Op.CONNECT  # a fresh challenge, which the recording cannot meet
        assert rejection(answer)["code"] == Code.BAD_PROOF
        assert (session_of(dialer_conn), session_of(acceptor_conn)) == before
        assert await dialer_conn.call(HandlerID.TEST_ECHO, b"still up") == b"still up"
        lines = [r.getMessage() for r in caplog.records if "rejected dial from" in r.getMessage()]
        assert len([line for line in lines if "bad-proof" in line]) == 1, lines


@pytest.mark.asyncio
async def test_a_replayed_poke_is_refused_and_does_not_drop_the_session() -> None:
    async with proxied_pair() as p:
        pokes = p.dialer_proxy.requests("/minigrid/grid/v1/poke")
        assert pokes, "the acceptor never poked"
        request, frame = first_message(pokes[0])
        [(_, poke)] = grid_messages([frame])
        old_instance = poke["instance"]
        assert old_instance == p.acceptor.instance_id
        # The acceptor restarts: the recorded poke now names an instance that is gone, which
        # is exactly what would make the dialer drop its session, were the poke accepted.
        await p.restart_acceptor()
        dialer_conn = p.dialer.connection(p.acceptor.local)
        await eventually(
            lambda: (
                dialer_conn.is_connected and dialer_conn.remote_instance == p.acceptor.instance_id
            ),
            what="the dialer connected to the new instance",
        )
        before = session_of(dialer_conn)

        answer = grid_messages(await replay(address_of(p.dialer_sock), request, frame.raw))

        assert rejection(answer)["code"] == Code.BAD_PROOF
        assert session_of(dialer_conn) == before
        assert await dialer_conn.call(HandlerID.TEST_ECHO, b"x") == b"x"

        # A fresh, verified poke naming a new instance does end the session: the replay above
        # was refused, not ignored.
        async with aiohttp.ClientSession() as session:
            ws, handshake, reply = await dial_as(
                session, host_of(p.dialer_sock), KEY, p.acceptor.local, NEW_INSTANCE,
                purpose=Purpose.POKE, expected=p.dialer.local,
            )  # fmt: skip
            handshake.receive_response(reply)
            await ws.close()
        await eventually(
            lambda: dialer_conn.counters.sessions > before[1], what="the poked session to end"
        )
        assert "poked by new instance" in dialer_conn.last_cause
        await dialer_conn.wait_state(State.CONNECTED, timeout=10)


@pytest.mark.asyncio
async def test_a_proof_over_another_connections_nonce_is_refused() -> None:
    async with local_grid(2) as grid:
        acceptor = next(m for m in grid.managers if not m.connection(m.peers[0]).dialer)
        dialer_host = acceptor.peers[0]
        conn = acceptor.connection(dialer_host)
        before = session_of(conn)
        async with aiohttp.ClientSession() as session:
            stale_ws = await open_grid(session, acceptor.local)
            stale = await receive_bytes(stale_ws)
            ws = await open_grid(session, acceptor.local)
            await receive_bytes(ws)  # this connection's challenge, ignored
            handshake = DialerHandshake(KEY, dialer_host, NEW_INSTANCE, acceptor.local)
            await ws.send_bytes(handshake.receive_challenge(stale))
            with pytest.raises(HandshakeRejected) as info:
                handshake.receive_response(await receive_bytes(ws))
            assert info.value.code == Code.BAD_PROOF
            for socket_ in (ws, stale_ws):
                await socket_.close()
        assert session_of(conn) == before
        assert await conn.call(HandlerID.TEST_ECHO, b"x") == b"x"


@pytest.mark.asyncio
async def test_only_a_verified_dial_from_the_right_peer_displaces_the_session() -> None:
    async with local_grid(3) as grid:
        # A node that accepts from one peer and dials another.
        acceptor, dialer_host, dialed_host = next(
            (m, a, b)
            for m in grid.managers
            for a in m.peers
            for b in m.peers
            if not m.connection(a).dialer and m.connection(b).dialer
        )
        conn = acceptor.connection(dialer_host)
        real_instance = conn.remote_instance
        before = session_of(conn)
        # Every session installed for this peer, by instance, as it comes up (no polling race).
        installed: list[str] = []
        acceptor.state_listeners.append(
            lambda c, _old, new, _cause: (
                installed.append(c.remote_instance)
                if c is conn and new is State.CONNECTED
                else None
            )
        )
        attempts = [
            (derive_key("another secret"), dialer_host, Code.BAD_PROOF),
            (KEY, "127.0.0.1:1", Code.UNKNOWN_HOST),
            (KEY, dialed_host, Code.WRONG_SIDE),  # a peer it dials, dialing it
        ]
        async with aiohttp.ClientSession() as session:
            for key, claimed, code in attempts:
                ws, handshake, reply = await dial_as(
                    session, acceptor.local, key, claimed, NEW_INSTANCE
                )
                with pytest.raises(HandshakeRejected) as info:
                    handshake.receive_response(reply)
                assert info.value.code == code
                await ws.close()
                assert session_of(conn) == before, code

            # The right peer, proven: it may replace the session (it thinks the old one died,
            # or it restarted). Here it claims a restart.
            ws, handshake, reply = await dial_as(
                session, acceptor.local, KEY, dialer_host, NEW_INSTANCE
            )
            assert handshake.receive_response(reply).host == acceptor.local
            # Ours replaced the real session.
            await eventually(lambda: installed[:1] == [NEW_INSTANCE], what="displacement")
            # The real dialer lost its session, redials, and displaces ours in turn.
            await eventually(
                lambda: installed[-1:] == [real_instance] and conn.is_connected,
                timeout=15,
                what="the real dialer back",
            )
            await ws.close()
        assert installed == [NEW_INSTANCE, real_instance]
        assert conn.counters.sessions == before[1] + 2
        assert await conn.call(HandlerID.TEST_ECHO, b"x") == b"x"


@pytest.mark.asyncio
async def test_unauthenticated_peers_cannot_hold_handshakes_open() -> None:
    config = GridConfig(handshake_timeout=1.0, max_pending_per_address=2)
    async with local_grid(2, config=config) as grid:
        acceptor = grid.managers[0]
        conn = acceptor.connection(acceptor.peers[0])
        before = session_of(conn)
        async with aiohttp.ClientSession() as session:
            silent = [await open_grid(session, acceptor.local) for _ in range(2)]
            for ws in silent:
                await receive_bytes(ws)  # the challenge, never answered
            assert acceptor.pending_handshakes == 2
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await open_grid(session, acceptor.local)
            assert info.value.status == 503
            # The acceptor gives up on them after the handshake timeout.
            for ws in silent:
                msg = await asyncio.wait_for(ws.receive(), 15)
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
            await eventually(lambda: acceptor.pending_handshakes == 0, what="no pending")
            fresh = await open_grid(session, acceptor.local)
            assert (await receive_bytes(fresh))[:1]  # a challenge again: the caps freed up
            await fresh.close()
        assert session_of(conn) == before


@pytest.mark.asyncio
async def test_bad_connects_get_a_coded_rejection_and_the_node_keeps_serving() -> None:
    async with local_grid(2) as grid:
        acceptor = next(m for m in grid.managers if not m.connection(m.peers[0]).dialer)
        conn = acceptor.connection(acceptor.peers[0])
        before = session_of(conn)
        async with aiohttp.ClientSession() as session:
            cases: list[tuple[bytes, str]] = [
                (b"\x93garbage", Code.MALFORMED),
                (b"", Code.MALFORMED),
            ]
            for frame, code in cases:
                ws = await open_grid(session, acceptor.local)
                await receive_bytes(ws)
                await ws.send_bytes(frame)
                answer = grid_messages_from(await receive_bytes(ws))
                assert answer["code"] == code
                await ws.close()
            # A newer (or older) peer: the version is checked first, and named.
            ws = await open_grid(session, acceptor.local)
            challenge = grid_messages_from(await receive_bytes(ws))
            assert challenge["version"] == 2 and challenge["host"] == acceptor.local
            handshake = DialerHandshake(KEY, acceptor.peers[0], NEW_INSTANCE, acceptor.local)
            hello = {**handshake.hello.to_map(), "version": 99, "proof": bytes(32)}
            await ws.send_bytes(protocol.encode(Op.CONNECT, payload=protocol.pack_obj(hello)))
            answer = grid_messages_from(await receive_bytes(ws))
            assert answer["code"] == Code.VERSION
            assert "peer speaks 99, we speak 2" in str(answer["reason"])
            await ws.close()
        assert session_of(conn) == before
        assert await conn.call(HandlerID.TEST_ECHO, b"alive") == b"alive"


def grid_messages_from(frame: bytes) -> dict[str, object]:
    [message] = protocol.decode_frame(frame)
    return protocol.unpack_map(message.payload, "test")


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
            lambda: sum("rejected poke from" in r.getMessage() for r in caplog.records) > 0,
            what="a rejected poke",
        )
        assert conn.state is not State.CONNECTED

        def lines(text: str) -> list[str]:
            return [r.getMessage() for r in caplog.records if text in r.getMessage()]

        # Many dials and pokes were refused, both ways; each side said so once.
        assert len(lines("rejected by peer")) == 2, lines("rejected by peer")  # dial + poke
        assert len(lines("rejected dial from")) == 1
        assert len(lines("rejected poke from")) == 1
        for line in lines("rejected"):
            assert "bad-proof" in line and "cluster secret" in line, line
    finally:
        for manager in managers:
            await manager.close()
        for runner in runners:
            await runner.cleanup()
        for sock in sockets:
            sock.close()


@pytest.mark.asyncio
async def test_a_flood_of_made_up_hosts_is_said_once_per_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="minigrid.grid")
    async with local_grid(2) as grid:
        acceptor = grid.managers[0]
        conn = acceptor.connection(acceptor.peers[0])
        before = session_of(conn)
        async with aiohttp.ClientSession() as session:
            for index in range(40):
                claimed = f"attacker-{index}.example:{index}" + "x" * 200
                ws, handshake, reply = await dial_as(
                    session, acceptor.local, KEY, claimed, NEW_INSTANCE
                )
                with pytest.raises(HandshakeRejected) as info:
                    handshake.receive_response(reply)
                assert info.value.code == Code.UNKNOWN_HOST
                await ws.close()
        lines = [r.getMessage() for r in caplog.records if "rejected dial from" in r.getMessage()]
        # Keyed by the address and the code, not by the host each attempt made up.
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"grid {acceptor.local}: rejected dial from 127.0.0.1 claiming")
        assert len(lines[0]) < 400  # made-up text reaches the log cut short
        assert session_of(conn) == before
