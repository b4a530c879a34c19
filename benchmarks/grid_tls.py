"""What TLS and the challenge–response handshake cost the grid: plaintext and TLS side by side.

Two grid pairs run at once, each a node in a child process (``minigrid.testing.NodeProcess``)
and a client ``Manager`` in this process: one pair plaintext, one with ``--tls-cert`` from a
private CA made for the run. In rounds that alternate the two (so a noisy machine hurts them
alike), it measures:

* **handshake**: one full authenticated exchange, as a fresh connection pays it: TCP connect,
  the TLS handshake (TLS pair), the websocket upgrade and the challenge–response. It is timed
  as a *poke* from the client's own host string (the node dials the client, so a poke is the
  exchange that peer really makes; a verified poke from the connected instance changes nothing);
* **calls**: 100-byte echo calls with 64 concurrent callers on the established session;
* **stream**: MiB/s of 1 MiB items from the node to this process (``TEST_STREAM_GENERATE``).

Run from the repository root::

    .venv/bin/python benchmarks/grid_tls.py [--rounds N] [--seconds S] [--stream-mib M] [--quick]

Exactly one JSON object goes to stdout; progress goes to stderr. Medians across rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from minigrid import HandlerID, Manager
from minigrid.handshake import DialerHandshake, Purpose, derive_key
from minigrid.manager import POKE_PATH, grid_url, should_dial
from minigrid.testing import (
    TEST_SECRET,
    NodeProcess,
    TLSFiles,
    generate_request,
    host_of,
    listening_socket,
    make_test_tls,
    serve_manager,
)

MODES = ("plain", "tls")
MIB = 1 << 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _sockets() -> tuple[socket.socket, socket.socket]:
    """(client, node) sockets such that the node dials the client: the client may poke it."""
    while True:
        client, node = listening_socket(), listening_socket()
        if should_dial(host_of(node), host_of(client)):
            return client, node
        client.close()
        node.close()


@contextlib.asynccontextmanager
async def grid_pair(tls: TLSFiles | None) -> AsyncIterator[tuple[Manager, NodeProcess]]:
    client_sock, node_sock = _sockets()
    node = NodeProcess(node_sock, [host_of(client_sock)], tls=tls)
    manager = Manager(host_of(client_sock), [node.host], TEST_SECRET,
                      tls=tls.client() if tls else None)  # fmt: skip
    runner = await serve_manager(manager, client_sock, ssl_context=tls.server() if tls else None)
    try:
        await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(20)
        yield manager, node
    finally:
        await manager.close()
        await runner.cleanup()
        await asyncio.to_thread(node.stop)
        client_sock.close()
        node_sock.close()


async def handshake_ms(manager: Manager, node_host: str, tls: TLSFiles | None, count: int) -> float:
    """Median milliseconds of one poke exchange on a fresh connection."""
    key = derive_key(TEST_SECRET)
    url = grid_url(node_host, tls=tls is not None, path=POKE_PATH)
    ssl_context = tls.client() if tls is not None else None
    times = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True, ssl=ssl_context or True)
    ) as session:
        for _ in range(count):
            started = time.perf_counter()
            async with session.ws_connect(url) as ws:
                handshake = DialerHandshake(
                    key, manager.local, manager.instance_id, node_host, Purpose.POKE
                )
                challenge = await ws.receive_bytes()
                await ws.send_bytes(handshake.receive_challenge(challenge))
                handshake.receive_response(await ws.receive_bytes())
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def calls_per_second(manager: Manager, node_host: str, seconds: float) -> float:
    conn = manager.connection(node_host)
    payload = bytes(100)
    done = 0
    deadline = asyncio.get_running_loop().time() + seconds

    async def caller() -> None:
        nonlocal done
        while asyncio.get_running_loop().time() < deadline:
            await conn.call(HandlerID.TEST_ECHO, payload)
            done += 1

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(64):
            group.create_task(caller())
    return done / (time.perf_counter() - started)


async def stream_mib_s(manager: Manager, node_host: str, mib: int) -> float:
    conn = manager.connection(node_host)
    total = 0
    started = time.perf_counter()
    async with conn.stream(HandlerID.TEST_STREAM_GENERATE, generate_request(mib, MIB)) as stream:
        async for item in stream:
            total += len(item)
    if total != mib * MIB:
        raise RuntimeError(f"stream moved {total} bytes, expected {mib * MIB}")
    return mib / (time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="grid-tls-") as folder:
        tls = make_test_tls(Path(folder))
        results: dict[str, dict[str, list[float]]] = {
            mode: {"handshake_ms": [], "calls_per_s": [], "stream_mib_s": []} for mode in MODES
        }
        async with grid_pair(None) as plain, grid_pair(tls) as secure:
            pairs = {"plain": (plain, None), "tls": (secure, tls)}
            for round_index in range(args.rounds):
                for mode in MODES:
                    (manager, node), files = pairs[mode]
                    stats = manager.connection(node.host).stats()
                    assert (stats.tls != "") == (mode == "tls"), stats
                    out = results[mode]
                    out["handshake_ms"].append(
                        await handshake_ms(manager, node.host, files, args.handshakes)
                    )
                    out["calls_per_s"].append(
                        await calls_per_second(manager, node.host, args.seconds)
                    )
                    out["stream_mib_s"].append(
                        await stream_mib_s(manager, node.host, args.stream_mib)
                    )
                    log(f"round {round_index + 1} {mode}: " + ", ".join(
                        f"{k}={v[-1]:.1f}" for k, v in out.items()
                    ))  # fmt: skip
            tls_version = secure[0].connection(secure[1].host).stats().tls
    medians = {
        f"{mode}_{key}": round(statistics.median(values), 2)
        for mode, keys in results.items()
        for key, values in keys.items()
    }
    return {
        "benchmark": "grid_tls",
        "python": platform.python_version(),
        "tls_version": tls_version,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "stream_mib": args.stream_mib,
        "handshakes_per_round": args.handshakes,
        **medians,
        "tls_calls_vs_plain": round(medians["tls_calls_per_s"] / medians["plain_calls_per_s"], 3),
        "tls_stream_vs_plain": round(
            medians["tls_stream_mib_s"] / medians["plain_stream_mib_s"], 3
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--stream-mib", type=int, default=512)
    parser.add_argument("--handshakes", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="1 round, short phases")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.stream_mib, args.handshakes = 1, 0.5, 64, 10
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
