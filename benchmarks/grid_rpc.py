"""Single-call RPC throughput and latency: minigrid against grpcio and aiohttp keep-alive HTTP.

Each system runs its server in a child process and its client in this process, on one event
loop. Callers echo 100-byte payloads. Rounds alternate the systems (minigrid, grpc, http,
minigrid, …) so that a noisy machine hurts all three alike, and the report gives medians across
rounds. Throughput is measured with 64 concurrent callers, latency with one caller at a time.

Run from the repository root::

    .venv/bin/python benchmarks/grid_rpc.py [--rounds N] [--seconds S] [--quick] [--uvloop]

Exactly one JSON object goes to stdout; progress goes to stderr. The same file is also the
grpc and HTTP echo servers (``--serve grpc|http``), started as children by the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

SYSTEMS = ("minigrid", "grpc", "http")
GRPC_SERVICE = "bench.Echo"
GRPC_METHOD = "Echo"
HTTP_PATH = "/echo"
TARGET_VS_GRPC = 5.0
TARGET_VS_HTTP = 2.5

Call = Callable[[bytes], Awaitable[bytes]]


def log(message: str) -> None:
    print(f"[grid_rpc] {message}", file=sys.stderr, flush=True)


def run_loop(coro: Coroutine[Any, Any, Any], use_uvloop: bool) -> Any:
    """Run ``coro`` on uvloop or on the stock asyncio loop."""
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# --------------------------------------------------------------------------- server children


async def _stop_requested() -> None:
    """Return on SIGTERM/SIGINT, or when the parent closes our stdin (so no orphans remain)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def on_stdin() -> None:
        try:
            data = os.read(stdin, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(stdin)
            stop.set()

    stdin = sys.stdin.fileno()
    # A manual run may have a file or /dev/null on stdin, which cannot be watched: then only
    # signals stop the server.
    with contextlib.suppress(OSError, ValueError):
        loop.add_reader(stdin, on_stdin)
    await stop.wait()


def _ready(port: int) -> None:
    loop = type(asyncio.get_running_loop())
    print(f"READY {port} {loop.__module__}.{loop.__name__}", flush=True)


async def serve_grpc(port: int) -> None:
    """A grpc.aio echo server with a generic handler and raw bytes (no (de)serializers)."""
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        GRPC_SERVICE, {GRPC_METHOD: grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _ready(bound)
    try:
        await _stop_requested()
    finally:
        await server.stop(grace=None)


async def serve_http(port: int) -> None:
    """An aiohttp echo server: POST /echo answers with the request body."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application()
    app.router.add_post(HTTP_PATH, echo)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    assert site._server is not None and site._server.sockets  # type: ignore[attr-defined]
    _ready(site._server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
    try:
        await _stop_requested()
    finally:
        await runner.cleanup()


class ServerProcess:
    """This script in ``--serve`` mode as a child; it prints ``READY <port>`` when listening."""

    def __init__(self, kind: str, use_uvloop: bool) -> None:
        self.kind = kind
        self.args = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", "0"]
        if use_uvloop:
            self.args.append("--uvloop")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.loop_name = ""

    def spawn(self) -> None:
        # stdin is a pipe only we hold: if this process dies, the child sees EOF and exits.
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def wait_ready(self, timeout: float = 20.0) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while not line.startswith(b"READY"):
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self.proc.stdout], [], [], max(0.0, remaining))
            if not readable:
                raise RuntimeError(f"{self.kind} server did not start within {timeout}s")
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.wait()}")
        _, port, self.loop_name = line.decode().split()
        self.port = int(port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 5s) and reap."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
        code = proc.wait()
        if code not in (0, -signal.SIGTERM):
            log(f"{self.kind} server exited with {code}")
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


# --------------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    warmup: float
    latency_seconds: float
    concurrency: int
    payload: bytes


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all threads, from /proc (NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Throughput:
    rps: float
    calls: int
    #: CPU use over the measured window, in percent of one core: which side is the bottleneck.
    client_cpu: float
    server_cpu: float


async def measure_rps(call: Call, plan: Plan, server_pid: int) -> Throughput:
    """Calls per second with ``plan.concurrency`` callers, counted after a warm-up."""
    done = 0
    running = True

    async def caller() -> None:
        nonlocal done
        payload = plan.payload
        while running:
            await call(payload)
            done += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(plan.concurrency):
            group.create_task(caller())
        await asyncio.sleep(plan.warmup)
        start_count, start = done, time.perf_counter()
        client_cpu, server_cpu = time.process_time(), process_cpu_seconds(server_pid)
        await asyncio.sleep(plan.seconds)
        calls, elapsed = done - start_count, time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        server_cpu = process_cpu_seconds(server_pid) - server_cpu
        running = False
    return Throughput(
        calls / elapsed, calls, 100 * client_cpu / elapsed, 100 * server_cpu / elapsed
    )


async def measure_p50_us(call: Call, plan: Plan) -> tuple[float, int]:
    """Median latency of sequential calls (concurrency 1), in microseconds."""
    payload = plan.payload
    for _ in range(50):
        await call(payload)
    samples: list[int] = []
    clock = time.perf_counter_ns
    end = clock() + int(plan.latency_seconds * 1e9)
    while clock() < end and len(samples) < 50_000:
        start = clock()
        await call(payload)
        samples.append(clock() - start)
    return statistics.median(samples) / 1000, len(samples)


async def run_rounds(
    calls: dict[str, Call], plan: Plan, server_pids: dict[str, int]
) -> dict[str, list[float]]:
    """Alternate the systems for ``plan.rounds`` rounds; return every round's raw values."""
    keys = ("rps", "p50_us", "client_cpu_pct", "server_cpu_pct")
    raw: dict[str, list[float]] = {f"{name}_{key}": [] for name in SYSTEMS for key in keys}
    for round_no in range(1, plan.rounds + 1):
        for name in SYSTEMS:
            load = await measure_rps(calls[name], plan, server_pids[name])
            p50, samples = await measure_p50_us(calls[name], plan)
            raw[f"{name}_rps"].append(round(load.rps, 1))
            raw[f"{name}_p50_us"].append(round(p50, 1))
            raw[f"{name}_client_cpu_pct"].append(round(load.client_cpu))
            raw[f"{name}_server_cpu_pct"].append(round(load.server_cpu))
            log(
                f"round {round_no}/{plan.rounds} {name:8s} {load.rps:7.0f} rps"
                f" (cpu client {load.client_cpu:3.0f}% server {load.server_cpu:3.0f}%)"
                f"  p50 {p50:6.1f} us ({samples} sequential calls)"
            )
    return raw


# ----------------------------------------------------------------------------------- clients


@contextlib.asynccontextmanager
async def minigrid_client(client_sock: socket.socket, server_host: str) -> Any:
    from minigrid import HandlerID, Manager
    from minigrid.testing import TEST_SECRET, host_of, serve_manager

    manager = Manager(host_of(client_sock), [server_host], TEST_SECRET)
    runner = await serve_manager(manager, client_sock)
    try:
        await manager.start()
        await manager.wait_connected(15.0)
        connection = manager.connection(server_host)

        async def call(payload: bytes) -> bytes:
            return await connection.call(HandlerID.TEST_ECHO, payload)

        yield call
    finally:
        await manager.close()
        await runner.cleanup()


@contextlib.asynccontextmanager
async def grpc_client(port: int) -> Any:
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        async with asyncio.timeout(15.0):
            await channel.channel_ready()
        # None is grpcio's identity (de)serializer: bytes go through untouched, no extra call.
        stub = channel.unary_unary(
            f"/{GRPC_SERVICE}/{GRPC_METHOD}",
            request_serializer=None,
            response_deserializer=None,
        )

        async def call(payload: bytes) -> bytes:
            response: bytes = await stub(payload)
            return response

        yield call


@contextlib.asynccontextmanager
async def http_client(port: int, concurrency: int) -> Any:
    import aiohttp

    url = f"http://127.0.0.1:{port}{HTTP_PATH}"
    connector = aiohttp.TCPConnector(limit=max(64, concurrency), keepalive_timeout=60.0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(payload: bytes) -> bytes:
            async with session.post(url, data=payload) as response:
                response.raise_for_status()
                return await response.read()

        yield call


async def client_main(
    plan: Plan,
    client_sock: socket.socket,
    server_host: str,
    ports: dict[str, int],
    server_pids: dict[str, int],
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        calls: dict[str, Call] = {
            "minigrid": await stack.enter_async_context(minigrid_client(client_sock, server_host)),
            "grpc": await stack.enter_async_context(grpc_client(ports["grpc"])),
            "http": await stack.enter_async_context(http_client(ports["http"], plan.concurrency)),
        }
        for name, call in calls.items():
            answer = await call(plan.payload)
            if answer != plan.payload:
                raise RuntimeError(f"{name} echo returned {len(answer)} bytes, not the request")
        loop = type(asyncio.get_running_loop())
        log(f"all connected; client loop {loop.__module__}.{loop.__name__}")
        raw = await run_rounds(calls, plan, server_pids)
        return {"raw": raw, "client_loop": f"{loop.__module__}.{loop.__name__}"}


# -------------------------------------------------------------------------------------- main


def report(plan: Plan, outcome: dict[str, Any], servers: dict[str, str]) -> dict[str, Any]:
    import aiohttp
    import grpc

    raw: dict[str, list[float]] = outcome["raw"]
    medians = {key: round(statistics.median(values), 1) for key, values in raw.items()}
    vs_grpc = medians["minigrid_rps"] / medians["grpc_rps"]
    vs_http = medians["minigrid_rps"] / medians["http_rps"]
    return {
        "benchmark": "grid_rpc",
        **{f"{name}_rps": medians[f"{name}_rps"] for name in SYSTEMS},
        **{f"{name}_p50_us": medians[f"{name}_p50_us"] for name in SYSTEMS},
        "cpu_pct_at_64": {
            name: {
                "client": medians[f"{name}_client_cpu_pct"],
                "server": medians[f"{name}_server_cpu_pct"],
            }
            for name in SYSTEMS
        },
        "minigrid_vs_grpc": round(vs_grpc, 3),
        "minigrid_vs_http": round(vs_http, 3),
        "target": {"minigrid_vs_grpc": TARGET_VS_GRPC, "minigrid_vs_http": TARGET_VS_HTTP},
        "meets_target": vs_grpc >= TARGET_VS_GRPC and vs_http >= TARGET_VS_HTTP,
        "rounds": plan.rounds,
        "seconds_per_round": plan.seconds,
        "warmup_seconds": plan.warmup,
        "latency_seconds": plan.latency_seconds,
        "concurrency": plan.concurrency,
        "payload_bytes": len(plan.payload),
        "per_round": raw,
        "python": platform.python_version(),
        "uvloop": outcome["client_loop"].startswith("uvloop"),
        "client_loop": outcome["client_loop"],
        "server_loops": servers,
        "grpcio": grpc.__version__,
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
    }


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from minigrid.testing import NodeProcess, host_of, listening_socket

    plan = make_plan(args)
    # SIGTERM unwinds like Ctrl-C so the finally below reaps every child.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    client_sock, server_sock = listening_socket(), listening_socket()
    extra = ["--uvloop"] if args.uvloop else []
    node = NodeProcess(server_sock, peers=[host_of(client_sock)], extra_args=extra)
    servers = {kind: ServerProcess(kind, args.uvloop) for kind in ("grpc", "http")}
    try:
        for server in servers.values():
            server.spawn()  # start them side by side; wait for READY after the grid node
        node.start()
        for server in servers.values():
            server.wait_ready()
        ports = {kind: server.port for kind, server in servers.items()}
        loops = {kind: server.loop_name for kind, server in servers.items()}
        loops["minigrid"] = "uvloop" if args.uvloop else "asyncio"
        log(f"servers up: minigrid {node.host}, grpc :{ports['grpc']}, http :{ports['http']}")
        pids = {kind: server.pid for kind, server in servers.items()}
        assert node.proc is not None
        pids["minigrid"] = node.proc.pid
        outcome = run_loop(client_main(plan, client_sock, node.host, ports, pids), args.uvloop)
    finally:
        node.stop()
        for server in servers.values():
            server.stop()
        client_sock.close()
        server_sock.close()
    return report(plan, outcome, loops)


def make_plan(args: argparse.Namespace) -> Plan:
    seconds = args.seconds if args.seconds is not None else (0.5 if args.quick else 2.5)
    return Plan(
        rounds=args.rounds,
        seconds=seconds,
        warmup=0.2 if args.quick else 0.5,
        latency_seconds=0.2 if args.quick else 0.75,
        concurrency=args.concurrency,
        payload=bytes(range(256))[: args.payload_size].ljust(args.payload_size, b"x"),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system (default 3)")
    parser.add_argument("--seconds", type=float, help="measured seconds per throughput phase")
    parser.add_argument("--quick", action="store_true", help="short rounds for a smoke run")
    parser.add_argument("--uvloop", action="store_true", help="uvloop in the client and servers")
    parser.add_argument("--concurrency", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--payload-size", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=("grpc", "http"), help="internal: run an echo server")
    parser.add_argument("--port", type=int, default=0, help="port for --serve (0: any free)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or (args.seconds is not None and args.seconds <= 0):
        parser.error("--rounds must be >= 1 and --seconds > 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve = serve_grpc if args.serve == "grpc" else serve_http
        run_loop(serve(args.port), args.uvloop)
        return
    try:
        result = benchmark(args)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({str(exc) or 'SIGINT'}); every server child was stopped")
        sys.exit(130)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
