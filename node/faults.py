"""The fault service: breaking a node on purpose, through the admin API (``--allow-faults``).

Every route is under ``/minigrid/admin/v1/fault`` (admin SigV4). A node started without
``--allow-faults`` answers every one of them 403 ``FaultsDisabled``, whatever the route.

| route | fault |
|---|---|
| ``GET /fault`` | what is active on this node |
| ``POST /fault/partition?peer=HOST&mode=silent\\|reset`` | act out a partition from a peer |
| ``DELETE /fault/partition[?peer=HOST]`` | lift it (every peer's without ``peer``) |
| ``POST /fault/loop-block?seconds=S[&every=T]`` | block the event loop S seconds (every T s) |
| ``POST /fault/clock-jump?seconds=±S`` | shift the wall clock Python code reads |
| ``POST /fault/slow-drive?drive=D&ms=M`` | add M ms to every operation of a local drive |
| ``POST /fault/wipe-drive?drive=D`` | erase a local drive, format included (a new disk) |
| ``POST /fault/corrupt?drive=D&bucket=B&key=K`` | flip a byte of an object's copy on a drive |
| ``POST /fault/reconnect?peer=HOST`` | drop the session to a peer (it is redialled) |
| ``POST /fault/delay?peer=HOST&out_ms=M&in_ms=M&jitter_ms=J`` | latency on the link (all 0: lift) |
| ``POST /fault/nat?peer=HOST&idle_timeout=S&mode=drop\\|reset`` | a NAT on the link (0: lift) |
| ``POST /fault/clear`` | undo everything above that can be undone |

``D`` is a local drive's path or its index on this node (0, 1, ...). A partition is acted out
by the grid itself (:meth:`minigrid.Manager.partition`); the CLI tells both ends. Delay and the
loopback NAT are a proxy (:mod:`node.linkproxy`) that the *dialing* node of the pair puts on
its link (:meth:`minigrid.Manager.route`): only the dialer can, and the other end says so. Process
faults (freeze, kill) and real iptables rules are the CLI's job: a node cannot thaw itself.

The clock jump shifts ``time.time()`` and ``time.time_ns()`` for the whole process, as
libfaketime would (libfaketime 0.9 itself breaks Python's ``time.sleep`` when it leaves the
monotonic clock alone). Object modification times and log timestamps move; ``loop.time()`` and
``time.monotonic()``, which the grid's liveness runs on, do not. The SigV4 checks took their
clock at start and keep the real one, so the admin API stays reachable to undo the jump.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from minigrid import Manager
from node.linkproxy import NAT_MODES, LinkProxy
from node.services import Route, Routes
from storage.local import LocalDrive
from storage.names import DATA_DIR_PREFIX, SHARD_FILE, object_location, safe_join
from storage.testing import flip_byte, wipe_drive

log = logging.getLogger("node.faults")

MAX_BLOCK_SECONDS = 120.0
MAX_CLOCK_JUMP = 10 * 365 * 86400.0
MAX_DRIVE_DELAY_MS = 60_000.0
MAX_LINK_DELAY_MS = 60_000.0
_REAL_TIME = time.time
_REAL_TIME_NS = time.time_ns


class FaultError(ValueError):
    """A fault request that cannot be done as asked (400, with the message)."""


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _number(request: web.Request, name: str, low: float, high: float,
            default: float | None = None) -> float:  # fmt: skip
    text = request.query.get(name)
    if text is None or text == "":
        if default is None:
            raise FaultError(f"give {name}=NUMBER")
        return default
    try:
        value = float(text)
    except ValueError:
        raise FaultError(f"{name} must be a number, not {text!r}") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise FaultError(f"{name} must be between {low:g} and {high:g}, not {text}")
    return value


class WallClock:
    """The process's wall clock as Python reads it, shifted by ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def jump(self, seconds: float) -> float:
        """Move the wall clock by ``seconds`` more (negative: back); returns the offset."""
        self.offset += seconds
        if self.offset:
            offset, offset_ns = self.offset, int(self.offset * 1e9)
            time.time = lambda: _REAL_TIME() + offset
            time.time_ns = lambda: _REAL_TIME_NS() + offset_ns
        else:
            self.reset()
        return self.offset

    def reset(self) -> None:
        self.offset = 0.0
        time.time = _REAL_TIME
        time.time_ns = _REAL_TIME_NS


class LoopBlocker:
    """Blocks the event loop (a synchronous sleep, as a blocking disk or DNS call does)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.every = 0.0
        self.blocks = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, seconds: float, every: float) -> None:
        self.stop()
        self.seconds, self.every = seconds, every
        self._task = asyncio.create_task(self._run(), name="fault loop-block")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0)  # the route's answer goes out before the first block
            log.warning("fault: blocking the event loop for %.1fs", self.seconds)
            time.sleep(self.seconds)  # noqa: ASYNC251 - blocking the loop is the fault
            self.blocks += 1
            if not self.every:
                self._task = None
                return
            await asyncio.sleep(max(0.0, self.every - self.seconds))

    @property
    def active(self) -> bool:
        return self._task is not None and not self._task.done()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class FaultService:
    """Fault injection on this node, refused unless ``allowed``."""

    name = "faults"

    def __init__(self, allowed: bool, manager: Manager,
                 local_drives: Mapping[str, LocalDrive]) -> None:  # fmt: skip
        self.allowed = allowed
        self.manager = manager
        self.drives = dict(local_drives)
        self.clock = WallClock()
        self.blocker = LoopBlocker()
        #: The proxies on links this node dials (delay, NAT), by peer host.
        self.proxies: dict[str, LinkProxy] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self.blocker.close()
        self.clock.reset()
        for peer in list(self.proxies):
            await self._unproxy(peer)

    def routes(self) -> Routes:
        if not self.allowed:
            return Routes(admin=[Route("*", "/fault", self.refuse),
                                 Route("*", "/fault/{name:.*}", self.refuse)])  # fmt: skip
        guarded = {
            ("POST", "/fault/partition"): self.partition,
            ("DELETE", "/fault/partition"): self.unpartition,
            ("POST", "/fault/loop-block"): self.loop_block,
            ("POST", "/fault/clock-jump"): self.clock_jump,
            ("POST", "/fault/slow-drive"): self.slow_drive,
            ("POST", "/fault/wipe-drive"): self.wipe_drive,
            ("POST", "/fault/corrupt"): self.corrupt,
            ("POST", "/fault/reconnect"): self.reconnect,
            ("POST", "/fault/delay"): self.delay,
            ("POST", "/fault/nat"): self.nat,
            ("POST", "/fault/clear"): self.clear_route,
        }
        routes = [Route("GET", "/fault", self.list_route)]
        routes += [Route(method, path, self._checked(handler))
                   for (method, path), handler in guarded.items()]  # fmt: skip
        routes.append(Route("*", "/fault/{name:.*}", self.unknown))
        return Routes(admin=routes)

    def info(self) -> dict[str, Any]:
        return {"faults": self.active()} if self.allowed else {}

    def active(self) -> dict[str, Any]:
        """Every fault active on this node (JSON-ready)."""
        return {
            "partitions": self.manager.links.faults(),
            "loop_block": {"seconds": self.blocker.seconds, "every": self.blocker.every,
                           "blocks": self.blocker.blocks} if self.blocker.active else None,
            "clock_offset_s": self.clock.offset,
            "slow_drives": {path: round(drive.injected_delay * 1000, 3)
                            for path, drive in self.drives.items() if drive.injected_delay},
            "proxies": {peer: proxy.info() for peer, proxy in sorted(self.proxies.items())},
        }  # fmt: skip

    # --- routes -------------------------------------------------------------------------------

    async def refuse(self, _request: web.Request) -> web.Response:
        return json_error(403, "FaultsDisabled",
                          "fault injection is disabled; start the node with --allow-faults "
                          "(cluster up --allow-faults)")  # fmt: skip

    async def unknown(self, request: web.Request) -> web.Response:
        return json_error(404, "NoSuchFault", f"no fault endpoint {request.method} {request.path}")

    def _checked(self, handler: Any) -> Any:
        async def checked(request: web.Request) -> web.Response:
            try:
                answer: dict[str, Any] = await handler(request)
            except FaultError as exc:
                return json_error(400, "InvalidArgument", str(exc))
            return web.json_response({**answer, "active": self.active()})

        return checked

    async def list_route(self, _request: web.Request) -> web.Response:
        return web.json_response(self.active())

    async def partition(self, request: web.Request) -> dict[str, Any]:
        peer = self._peer(request)
        mode = request.query.get("mode", "silent")
        if mode not in ("silent", "reset"):
            raise FaultError(f"mode must be silent or reset, not {mode!r}")
        self.manager.partition(peer, mode)
        return {"partitioned": peer, "mode": mode}

    async def unpartition(self, request: web.Request) -> dict[str, Any]:
        peers = [self._peer(request)] if request.query.get("peer") else list(
            self.manager.links.faults())  # fmt: skip
        for peer in peers:
            self.manager.partition(peer, None)
        return {"lifted": peers}

    async def reconnect(self, request: web.Request) -> dict[str, Any]:
        peer = self._peer(request)
        dropped = self.manager.connection(peer).drop("reset: dropped on request (fault injection)")
        return {"dropped": peer if dropped else None}

    async def delay(self, request: web.Request) -> dict[str, Any]:
        peer = self._peer(request)
        out_ms = _number(request, "out_ms", 0.0, MAX_LINK_DELAY_MS, default=0.0)
        in_ms = _number(request, "in_ms", 0.0, MAX_LINK_DELAY_MS, default=0.0)
        jitter_ms = _number(request, "jitter_ms", 0.0, MAX_LINK_DELAY_MS, default=0.0)
        shape = await self._shape(peer, out_delay=out_ms / 1000, in_delay=in_ms / 1000,
                                  jitter=jitter_ms / 1000)  # fmt: skip
        log.warning("fault: link to %s delayed %.0f ms out, %.0f ms in (jitter %.0f ms)",
                    peer, out_ms, in_ms, jitter_ms)  # fmt: skip
        return {"peer": peer, "shape": shape}

    async def nat(self, request: web.Request) -> dict[str, Any]:
        peer = self._peer(request)
        idle = _number(request, "idle_timeout", 0.0, 86400.0)
        mode = request.query.get("mode", "drop")
        if mode not in NAT_MODES:
            raise FaultError(f"mode must be drop or reset, not {mode!r}")
        shape = await self._shape(peer, nat_idle=idle, nat_mode=mode)
        if idle:
            log.warning("fault: link to %s crosses a NAT that forgets a flow idle %.1fs (%s)",
                        peer, idle, mode)  # fmt: skip
        return {"peer": peer, "shape": shape}

    async def _shape(self, peer: str, **changes: Any) -> dict[str, Any]:
        """Reshape the proxy on the link to ``peer``: put one there first (and move the session
        onto it), or take it away when nothing is left for it to do."""
        conn = self.manager.connection(peer)
        if not conn.dialer:
            raise FaultError(f"this node does not dial {peer}: the proxy goes on the dialing side "
                             f"(ask {peer})")  # fmt: skip
        proxy = self.proxies.get(peer)
        if proxy is None:
            proxy = LinkProxy(peer, _address(peer))
            await proxy.start()
            self.proxies[peer] = proxy
            self.manager.route(peer, proxy.address)
            conn.drop("reset: moved onto the fault proxy (fault injection)")
        shape = proxy.reshape(**changes)
        if shape.empty:
            await self._unproxy(peer)
        return shape.as_dict()

    async def _unproxy(self, peer: str) -> None:
        proxy = self.proxies.pop(peer, None)
        if proxy is None:
            return
        self.manager.route(peer, None)
        self.manager.connection(peer).drop("reset: the fault proxy was taken away")
        await proxy.close()

    async def loop_block(self, request: web.Request) -> dict[str, Any]:
        seconds = _number(request, "seconds", 0.001, MAX_BLOCK_SECONDS)
        every = _number(request, "every", 0.0, 3600.0, default=0.0)
        if every and every <= seconds:
            raise FaultError(f"every ({every:g}) must be longer than seconds ({seconds:g})")
        self.blocker.start(seconds, every)
        return {"loop_block": {"seconds": seconds, "every": every}}

    async def clock_jump(self, request: web.Request) -> dict[str, Any]:
        seconds = _number(request, "seconds", -MAX_CLOCK_JUMP, MAX_CLOCK_JUMP)
        offset = self.clock.jump(seconds)
        log.warning("fault: wall clock jumped %+.1fs (now %+.1fs off); monotonic time untouched",
                    seconds, offset)  # fmt: skip
        return {"clock_offset_s": offset}

    async def slow_drive(self, request: web.Request) -> dict[str, Any]:
        path, drive = self._drive(request)
        delay_ms = _number(request, "ms", 0.0, MAX_DRIVE_DELAY_MS)
        drive.injected_delay = delay_ms / 1000
        log.warning("fault: drive %s slowed by %.0f ms per operation", path, delay_ms)
        return {"drive": path, "ms": delay_ms}

    async def wipe_drive(self, request: web.Request) -> dict[str, Any]:
        path, _drive = self._drive(request)
        await asyncio.get_running_loop().run_in_executor(None, wipe_drive, path)
        log.warning("fault: drive %s wiped (everything on it, its format included)", path)
        return {"wiped": path}

    async def corrupt(self, request: web.Request) -> dict[str, Any]:
        path, _drive = self._drive(request)
        bucket, key = request.query.get("bucket", ""), request.query.get("key", "")
        try:
            rel_dir, meta_name = object_location(key)
            folder = safe_join(path, bucket, rel_dir) if bucket else ""
        except ValueError as exc:
            raise FaultError(f"bad bucket or key: {exc}") from exc
        if not bucket or not folder:
            raise FaultError("give bucket= and key=")
        target = await asyncio.get_running_loop().run_in_executor(
            None, _corrupt_copy, Path(folder), meta_name)
        log.warning("fault: corrupted %s/%s on drive %s (%s)", bucket, key, path, target.name)
        return {"corrupted": str(target)}

    async def clear_route(self, _request: web.Request) -> dict[str, Any]:
        return {"cleared": await self.clear()}

    async def clear(self) -> list[str]:
        """Undo every fault this node can undo; returns what was undone."""
        undone = []
        for peer in list(self.manager.links.faults()):
            self.manager.partition(peer, None)
            undone.append(f"partition {peer}")
        if self.blocker.active:
            undone.append("loop-block")
        await self.blocker.close()
        if self.clock.offset:
            undone.append(f"clock {self.clock.offset:+g}s")
        self.clock.reset()
        for path, drive in self.drives.items():
            if drive.injected_delay:
                drive.injected_delay = 0.0
                undone.append(f"slow-drive {path}")
        for peer in list(self.proxies):
            await self._unproxy(peer)
            undone.append(f"proxy to {peer}")
        if undone:
            log.info("fault: cleared %s", ", ".join(undone))
        return undone

    # --- arguments ----------------------------------------------------------------------------

    def _peer(self, request: web.Request) -> str:
        peer = request.query.get("peer", "")
        if peer not in self.manager.peers:
            raise FaultError(f"peer must be one of {', '.join(self.manager.peers)}, not {peer!r}")
        return peer

    def _drive(self, request: web.Request) -> tuple[str, LocalDrive]:
        which = request.query.get("drive", "")
        paths = list(self.drives)
        if which.isdigit() and int(which) < len(paths):
            which = paths[int(which)]
        drive = self.drives.get(which)
        if drive is None:
            raise FaultError(f"drive must be a local drive's index (0-{len(paths) - 1}) or path "
                             f"({', '.join(paths)}), not {which!r}")  # fmt: skip
        return which, drive


def _address(host: str) -> tuple[str, int]:
    """``(host, port)`` to connect to for a peer's host string (``127.0.0.1:9001``, ``http://n2:9000``)."""
    netloc = host.split("://", 1)[-1].split("/", 1)[0]
    name, _, port = netloc.rpartition(":")
    return name.strip("[]"), int(port)


def _corrupt_copy(folder: Path, meta_name: str) -> Path:
    """Flip a byte in the middle of the object's shard on this drive, or of its metadata file
    when the data is inline (small objects). Raises FaultError when the drive has no copy."""
    shards = sorted(folder.glob(f"{DATA_DIR_PREFIX}*/{SHARD_FILE}"))
    target = shards[0] if shards else folder / meta_name
    try:
        size = os.path.getsize(target)
    except FileNotFoundError:
        raise FaultError(f"the drive holds no copy of that object ({folder})") from None
    if size == 0:
        raise FaultError(f"{target} is empty: nothing to corrupt")
    flip_byte(str(target), size // 2)
    return target


__all__ = ["FaultError", "FaultService", "LoopBlocker", "WallClock"]
