"""Silent partitions and forgetful NATs, built from real namespaces, veth pairs and iptables.

The test process is one grid node in the root namespace; the other node runs in its own
namespace. Root only: without it every test here is skipped with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from minigrid import Disconnected, GridConfig, HandlerID, Manager, State
from minigrid.liveness import cause_kind
from minigrid.manager import should_dial
from minigrid.testing import TEST_SECRET, NodeProcess, register_test_handlers, serve_manager
from tests.chaos import netlab
from tests.conftest import eventually

REASON = netlab.skip_reason()
pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.skipif(bool(REASON), reason=REASON or "runs"),
]


def bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, 0))
    sock.listen(64)
    return sock


def dialing_pair(local_addr: str, remote_addr: str) -> tuple[socket.socket, str]:
    """A socket on ``local_addr`` and a remote host string such that the local side dials."""
    spare = []
    try:
        for port in range(9100, 9400):
            sock = bound(local_addr)
            local = f"{local_addr}:{sock.getsockname()[1]}"
            remote = f"{remote_addr}:{port}"
            if should_dial(local, remote):
                return sock, remote
            spare.append(sock)
        raise RuntimeError("no dialing pair found")
    finally:
        for sock in spare:
            sock.close()


@contextlib.asynccontextmanager
async def node_pair(
    sock: socket.socket,
    remote: str,
    netns: str,
    tmp_path: Path,
    config: GridConfig,
    overrides: dict[str, float],
) -> AsyncIterator[tuple[Manager, NodeProcess]]:
    local = f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"
    node = NodeProcess(
        None,
        [local],
        listen=remote,
        overrides=overrides,
        log_path=str(tmp_path / "node.log"),
        prefix=["ip", "netns", "exec", netns],
    )
    manager = Manager(local, [remote], TEST_SECRET, config=config)
    register_test_handlers(manager)
    runner = await serve_manager(manager, sock)
    try:
        await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(20)
        yield manager, node
    finally:
        await manager.close()
        await runner.cleanup()
        await asyncio.to_thread(node.kill)
        sock.close()


@pytest.mark.asyncio
async def test_silent_partition_is_detected_and_heals(tmp_path: Path) -> None:
    with netlab.lab() as lab:
        net = netlab.subnet(0)
        ns = lab.netns("p")
        lab.link("", f"{net}.1", ns, f"{net}.2")
        sock, remote = dialing_pair(f"{net}.1", f"{net}.2")
        async with node_pair(sock, remote, ns, tmp_path, GridConfig(), {}) as (manager, _node):
            conn = manager.connection(remote)
            call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"60", timeout=60))
            await eventually(lambda: conn.stats().inflight_calls == 1)
            cut_at = time.monotonic()
            for chain in ("INPUT", "OUTPUT"):
                netlab.run("iptables", "-A", chain, "-j", "DROP", netns=ns)
            with pytest.raises(Disconnected) as info:
                await asyncio.wait_for(call, 15)
            detected = time.monotonic() - cut_at
            print(f"\nsilent partition: detected in {detected:.2f}s ({info.value.cause})")
            assert detected <= 5.0
            assert cause_kind(info.value.cause) == "network-silent"
            healed_at = time.monotonic()
            netlab.run("iptables", "-F", netns=ns)
            await conn.wait_state(State.CONNECTED, timeout=20)
            assert await conn.call(HandlerID.TEST_ECHO, b"healed") == b"healed"
            print(f"reconnected {time.monotonic() - healed_at:.2f}s after the partition healed")


def _nat_lab(lab: netlab.Lab, timeout: int) -> tuple[str, str, str]:
    """root (client) -- router (MASQUERADE, short conntrack timeout) -- server namespace."""
    inside, outside = netlab.subnet(1), netlab.subnet(2)
    router, server = lab.netns("r"), lab.netns("s")
    lab.link("", f"{inside}.2", router, f"{inside}.1")
    _, router_out = lab.link(server, f"{outside}.2", router, f"{outside}.1")
    lab.route("", f"{outside}.0/24", f"{inside}.1")
    netlab.run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=router)
    netlab.run(
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        router_out,
        "-j",
        "MASQUERADE",
        netns=router,
    )
    # A home router: packets of flows it has forgotten are dropped, silently.
    netlab.run(
        "iptables",
        "-A",
        "FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
        netns=router,
    )
    try:
        netlab.run(
            "sysctl",
            "-qw",
            f"net.netfilter.nf_conntrack_tcp_timeout_established={timeout}",
            netns=router,
        )
        netlab.run("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0", netns=router)
    except RuntimeError as exc:
        pytest.skip(f"conntrack timeouts cannot be set per namespace here: {exc}")
    return f"{inside}.2", f"{outside}.2", server


def _flows(router_ns: str) -> int:
    with contextlib.suppress(RuntimeError):
        return netlab.run("cat", "/proc/net/nf_conntrack", netns=router_ns).count("ESTABLISHED")
    return -1


NAT_TIMEOUT = 3


@pytest.mark.asyncio
async def test_pings_keep_a_nat_flow_alive_through_idle_periods(tmp_path: Path) -> None:
    with netlab.lab() as lab:
        client_addr, server_addr, server_ns = _nat_lab(lab, NAT_TIMEOUT)
        sock, remote = dialing_pair(client_addr, server_addr)
        async with node_pair(sock, remote, server_ns, tmp_path, GridConfig(), {}) as (manager, _):
            conn = manager.connection(remote)
            pongs = len(conn.counters.rtts)
            # Idle (no calls) for three NAT timeouts; only pings cross the NAT.
            await eventually(
                lambda: len(conn.counters.rtts) >= pongs + 3 * NAT_TIMEOUT + 1,
                timeout=30,
                what="idle time of three NAT timeouts",
            )
            assert conn.stats().reconnects == 0
            assert await conn.call(HandlerID.TEST_ECHO, b"through", timeout=5) == b"through"


@pytest.mark.asyncio
async def test_without_pings_a_nat_forgets_the_flow_and_the_grid_recovers(tmp_path: Path) -> None:
    silent = {
        "ping_interval": 3600.0,
        "dead_after": 7200.0,
        "tcp_keepidle": 600.0,
        "tcp_user_timeout": 3.0,
    }
    config = GridConfig().replace(**silent)
    with netlab.lab() as lab:
        client_addr, server_addr, server_ns = _nat_lab(lab, NAT_TIMEOUT)
        router_ns = next(ns for ns in lab.namespaces if ns.startswith("mgr"))
        sock, remote = dialing_pair(client_addr, server_addr)
        async with node_pair(sock, remote, server_ns, tmp_path, config, silent) as (manager, _):
            conn = manager.connection(remote)
            assert await conn.call(HandlerID.TEST_ECHO, b"before") == b"before"
            idle_since = time.monotonic()
            if _flows(router_ns) >= 0:
                await eventually(
                    lambda: _flows(router_ns) == 0,
                    timeout=NAT_TIMEOUT + 30,
                    what="the NAT forgetting the idle flow",
                )
            else:  # no conntrack listing here: idle for twice the NAT timeout instead
                await asyncio.sleep(2 * NAT_TIMEOUT)
            print(f"\nNAT forgot the flow after {time.monotonic() - idle_since:.1f}s idle")
            sent_at = time.monotonic()
            with pytest.raises(Disconnected):
                await conn.call(HandlerID.TEST_ECHO, b"lost", timeout=30)
            print(
                f"broken flow detected {time.monotonic() - sent_at:.2f}s after the next send "
                f"({conn.stats().last_cause})"
            )
            await conn.wait_state(State.CONNECTED, timeout=20)
            assert await conn.call(HandlerID.TEST_ECHO, b"after") == b"after"
            assert conn.stats().reconnects >= 1
