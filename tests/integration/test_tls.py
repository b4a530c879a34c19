"""The grid over TLS: sessions say so, plaintext and untrusted peers fail cleanly."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from minigrid import HandlerID, Manager, State
from minigrid.manager import should_dial
from minigrid.testing import (
    TEST_SECRET,
    NodeProcess,
    host_of,
    listening_socket,
    local_grid,
    make_test_tls,
    serve_manager,
)
from tests.conftest import eventually


@pytest.mark.asyncio
async def test_the_grid_runs_over_tls(tmp_path: Path) -> None:
    async with local_grid(3, tls=make_test_tls(tmp_path)) as grid:
        for manager in grid.managers:
            assert manager.tls
            for stats in manager.stats().values():
                assert stats.state == "connected" and stats.tls.startswith("TLSv1."), stats
        conn = grid.managers[0].connection(grid.hosts[1])
        payload = bytes(range(256)) * 8192  # 2 MiB: several chunks and frames
        assert await conn.call(HandlerID.TEST_ECHO, payload) == payload


@pytest.mark.asyncio
async def test_plaintext_and_tls_peers_fail_cleanly_and_the_tls_node_keeps_serving(
    tmp_path: Path,
) -> None:
    """A TLS node process with two peers: one speaks TLS (connects), one plaintext (never
    does). The plaintext one dials the TLS node; the TLS node pokes it over TLS. Both fail
    without a traceback, and the TLS node says so once."""
    files = make_test_tls(tmp_path / "tls")
    while True:
        plain_sock, node_sock, good_sock = (
            listening_socket(),
            listening_socket(),
            listening_socket(),
        )
        if should_dial(host_of(plain_sock), host_of(node_sock)):
            break
        for sock in (plain_sock, node_sock, good_sock):
            sock.close()
    plain_host, good_host = host_of(plain_sock), host_of(good_sock)
    node = NodeProcess(node_sock, [plain_host, good_host], tls=files,
                       log_path=str(tmp_path / "node.log"))  # fmt: skip
    hosts = [plain_host, node.host, good_host]
    plain = Manager(plain_host, hosts, TEST_SECRET)
    good = Manager(good_host, hosts, TEST_SECRET, tls=files.client())
    runners = [
        await serve_manager(plain, plain_sock),
        await serve_manager(good, good_sock, ssl_context=files.server()),
    ]
    try:
        await asyncio.to_thread(node.start)
        for manager in (plain, good):
            await manager.start()
        good_conn = good.connection(node.host)
        await good_conn.wait_state(State.CONNECTED, timeout=15)
        assert good_conn.stats().tls.startswith("TLSv1.")
        plain_conn = plain.connection(node.host)
        await eventually(
            lambda: plain_conn.counters.dial_attempts >= 3, timeout=30, what="three dials"
        )
        await eventually(
            lambda: f"poke to {plain_host}" in node.log_text(), what="the failed poke logged"
        )
        assert plain_conn.state is not State.CONNECTED
        assert await good_conn.call(HandlerID.TEST_ECHO, b"still serving") == b"still serving"
        log_text = node.log_text()
        assert "Traceback" not in log_text, log_text
        poke_lines = [line for line in log_text.splitlines() if f"poke to {plain_host}" in line]
        assert len(poke_lines) == 1, poke_lines  # failed every 2s, said once
    finally:
        for manager in (plain, good):
            await manager.close()
        for runner in runners:
            await runner.cleanup()
        await asyncio.to_thread(node.stop)
        for sock in (plain_sock, node_sock, good_sock):
            sock.close()


@pytest.mark.asyncio
@pytest.mark.timeout(150)
async def test_a_certificate_from_another_ca_is_refused_and_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="minigrid.grid")
    ours, theirs = make_test_tls(tmp_path / "ours"), make_test_tls(tmp_path / "theirs")
    while True:
        dialer_sock, acceptor_sock = listening_socket(), listening_socket()
        if should_dial(host_of(dialer_sock), host_of(acceptor_sock)):
            break
        dialer_sock.close()
        acceptor_sock.close()
    hosts = [host_of(dialer_sock), host_of(acceptor_sock)]
    # The dialer trusts only its own CA; the acceptor's certificate comes from another.
    dialer = Manager(hosts[0], hosts, TEST_SECRET, tls=ours.client())
    runner = await serve_manager(dialer, dialer_sock, ssl_context=ours.server())
    acceptor_runner = None
    try:
        acceptor = Manager(hosts[1], hosts, TEST_SECRET, tls=theirs.client())
        acceptor_runner = await serve_manager(acceptor, acceptor_sock, ssl_context=theirs.server())
        await dialer.start()
        await acceptor.start()
        conn = dialer.connection(hosts[1])
        # The third dial starts only after the second one failed (and was not logged again);
        # it waits out a doubled backoff, which a loaded machine can stretch a lot.
        await eventually(lambda: conn.counters.dial_attempts >= 3, timeout=90, what="three dials")
        assert conn.state is not State.CONNECTED
        lines = [
            r.getMessage()
            for r in caplog.records
            if f"{hosts[0]}->{hosts[1]}" in r.getMessage() and "dial failed" in r.getMessage()
        ]
        assert len(lines) == 1 and "certificate" in lines[0].lower(), lines
        await acceptor.close()
    finally:
        await dialer.close()
        await runner.cleanup()
        if acceptor_runner is not None:
            await acceptor_runner.cleanup()
        dialer_sock.close()
        acceptor_sock.close()
