"""``minigrid grid …``: look at the grid on its own."""

from __future__ import annotations

import asyncio
import logging
import time

import click
from rich.console import Console
from rich.table import Table

from minigrid import HandlerID, Manager, RemoteError
from minigrid.testing import TEST_SECRET, NodeProcess, host_of, listening_socket, serve_manager


@click.group()
def grid() -> None:
    """Grid commands."""


@grid.command()
@click.option("--calls", default=2000, show_default=True, help="Echo calls to make.")
@click.option("-v", "--verbose", is_flag=True, help="Show the grid's state-change log lines.")
def demo(calls: int, verbose: bool) -> None:
    """Start two grid nodes (this process and a child process) and make calls between them."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_demo(calls))


async def _demo(calls: int) -> None:
    console = Console()
    local_sock, remote_sock = listening_socket(), listening_socket()
    local_host = host_of(local_sock)
    node = NodeProcess(remote_sock, [local_host])
    manager = Manager(local_host, [node.host], TEST_SECRET)
    runner = await serve_manager(manager, local_sock)
    try:
        console.print(f"starting node [bold]{node.host}[/] in a child process ...")
        await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(15)
        conn = manager.connection(node.host)
        console.print(f"[green]connected[/] {local_host} -> {node.host} "
                      f"({'we dial' if conn.dialer else 'it dials'})")
        reply = await conn.call(HandlerID.TEST_ECHO, b"hello, grid")
        console.print(f"echo: {reply!r}")
        try:
            await conn.call(HandlerID.TEST_ERROR, b"handlers can fail, and say why")
        except RemoteError as exc:
            console.print(f"error round trip: RemoteError({exc.message!r})")
        started = time.perf_counter()
        results = await asyncio.gather(
            *(conn.call(HandlerID.TEST_ECHO, b"x" * 100) for _ in range(calls))
        )
        elapsed = time.perf_counter() - started
        assert all(result == b"x" * 100 for result in results)
        console.print(f"{calls} concurrent 100-byte echo calls in {elapsed * 1000:.0f} ms")
        stats = conn.stats()
        table = Table(title=f"connection {local_host} -> {node.host}")
        table.add_column("statistic")
        table.add_column("value", justify="right")
        for key, value in stats.as_dict().items():
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
        console.print(table)
    finally:
        await manager.close()
        await runner.cleanup()
        await asyncio.to_thread(node.stop)
        local_sock.close()
        remote_sock.close()
