"""The healing service: MRF, the scanner and drive replacement, and their admin endpoints.

It wires the heal package into a node:

- the object layer's heal hook feeds the MRF queue (puts that missed drives, reads that found
  damage);
- a peer coming back online (the grid's state listener) makes the parked MRF entries due;
- the scanner walks the sets that hold this node's drives; the drive healer watches the local
  drives; both pace themselves with the node's heal speed and yield to in-flight S3 requests.

Admin endpoints (under ``/minigrid/admin/v1``, admin SigV4):

- ``POST /heal?bucket=&prefix=&deep=&dry-run=&remove-dangling=`` runs a heal and streams JSON
  lines: one per object (``{"object": …}``), progress every half second (``{"progress": …}``)
  and a last ``{"summary": …}``;
- ``GET /heal/status``: MRF depth, drives healing with their trackers (and, under
  ``drives_healed``, each drive's last finished heal), the scanner's cycle, position and speed;
- ``POST /scanner?speed=PRESET`` changes the scanner's and healers' speed at run time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from heal.cpu import UNSAFE_WARNING, CpuPolicy
from heal.drives import DriveHealer
from heal.mrf import Mrf
from heal.object import ObjectHealer
from heal.pace import PRESETS, Foreground, Speed, check_preset
from heal.scanner import Scanner
from heal.sequence import HealRun
from minigrid import Connection, State
from node.services import Route, Routes
from storage.errors import StorageError
from storage.format import FormatInfo
from storage.local import LocalDrive
from storage.objects import ObjectLayer
from storage.peers import PeerTable

log = logging.getLogger("node.healing")

PROGRESS_EVERY = 0.5


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "")
    if value.lower() in ("", "0", "false", "no", "off"):
        return False
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name} must be true or false, not {value!r}")


class HealingService:
    """Runs MRF, the scanner and the drive healer as tasks it owns."""

    name = "heal"

    def __init__(
        self,
        layer: ObjectLayer,
        peers: PeerTable,
        local_drives: Mapping[str, LocalDrive],
        formats: Mapping[str, FormatInfo],
        *,
        inflight: Callable[[], int],
        speed: str = "default",
        deep: bool = False,
        unsafe_inline: bool = False,
        unsafe_slice_mib: int = 256,
        drive_check_every: float = 10.0,
        scanner_pause: float = 1.0,
        mrf_delay: float = 1.0,
        stale_upload_age: float = 86_400.0,
    ) -> None:
        self.layer = layer
        self.peers = peers
        self.speed = Speed(check_preset(speed))
        self.cpu = CpuPolicy(inline=unsafe_inline, slice_bytes=unsafe_slice_mib << 20)
        self.foreground = Foreground(inflight)
        self.healer = ObjectHealer(layer, cpu=self.cpu)
        self.mrf = Mrf(
            self.healer,
            delay=mrf_delay,
            speed=self.speed if unsafe_inline else Speed("fast"),
            foreground=self.foreground,
        )
        local = set(map(id, local_drives.values()))
        self.scanner = Scanner(
            layer,
            self.healer,
            lambda drive: id(drive) in local,
            speed=self.speed,
            deep=deep,
            foreground=self.foreground,
            pause_between_cycles=scanner_pause,
            stale_upload_age=stale_upload_age,
        )
        self.drives = DriveHealer(
            layer,
            self.healer,
            local_drives,
            formats,
            check_every=drive_check_every,
            speed=self.speed,
            foreground=self.foreground,
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def replaced(self, path: str) -> None:
        """The node formatted a blank drive at start: heal its set onto it."""
        self.drives.replaced(path)

    async def start(self) -> None:
        if self.cpu.inline:
            log.warning("%s", UNSAFE_WARNING)
        self.layer.heal_hook = self.mrf.add
        self.peers.manager.state_listeners.append(self._on_peer_state)
        for name, work in (
            ("mrf", self.mrf.run()),
            ("scanner", self.scanner.run()),
            ("drive-heal", self.drives.run()),
        ):
            task = asyncio.create_task(work, name=f"heal {name}")
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped", task.get_name(), exc_info=task.exception())

    def _on_peer_state(self, _conn: Connection, _old: State, new: State, _cause: str) -> None:
        if new is State.CONNECTED:
            self.mrf.resume()  # pending heals whose drives were offline are due again

    async def close(self) -> None:
        self.layer.heal_hook = None
        if self._on_peer_state in self.peers.manager.state_listeners:
            self.peers.manager.state_listeners.remove(self._on_peer_state)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def routes(self) -> Routes:
        return Routes(
            admin=[
                Route("POST", "/heal", self.heal_route),
                Route("GET", "/heal/status", self.status_route),
                Route("POST", "/scanner", self.scanner_route),
            ]
        )

    def status(self) -> dict[str, Any]:
        return {
            "speed": self.speed.preset,
            "unsafe_inline": self.cpu.inline,
            "mrf": self.mrf.status(),
            "drives_healing": self.drives.status(),
            "drives_healed": self.drives.healed(),
            "scanner": self.scanner.status(),
        }

    def info(self) -> dict[str, Any]:
        return {"heal": self.status(), "usage": self.scanner.usage()}

    # --- admin --------------------------------------------------------------------------------

    async def status_route(self, _request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def scanner_route(self, request: web.Request) -> web.Response:
        speed = request.query.get("speed", "")
        if speed not in PRESETS:
            wanted = ", ".join(PRESETS)
            message = f"speed must be one of {wanted}, not {speed!r}"
            return json_error(400, "InvalidArgument", message)
        self.speed.set(speed)
        log.info("heal and scanner speed set to %s", speed)
        return web.json_response({"speed": speed})

    async def heal_route(self, request: web.Request) -> web.StreamResponse:
        try:
            run = HealRun(
                self.layer,
                self.healer,
                bucket=request.query.get("bucket", ""),
                prefix=request.query.get("prefix", ""),
                deep=_flag(request, "deep"),
                dry_run=_flag(request, "dry-run"),
                remove_dangling=_flag(request, "remove-dangling"),
                expected=self._expected(request.query.get("bucket", "")),
            )
        except (ValueError, StorageError) as exc:
            return json_error(400, "InvalidArgument", str(exc))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        last = time.monotonic()
        try:
            async for result in run.results():
                await response.write(_line({"object": result.to_dict()}))
                if time.monotonic() - last >= PROGRESS_EVERY:
                    last = time.monotonic()
                    await response.write(_line({"progress": run.progress.as_dict()}))
            await response.write(_line({"summary": run.progress.as_dict()}))
        except StorageError as exc:
            await response.write(_line({"error": str(exc), "summary": run.progress.as_dict()}))
        except ConnectionError:
            log.info("admin heal: the client went away; the run stops here")
            return response
        await response.write_eof()
        return response

    def _expected(self, bucket: str) -> int | None:
        usage = self.scanner.usage()
        if not usage:
            return None
        if bucket:
            return usage.get(bucket, {}).get("objects")
        return sum(u["objects"] for u in usage.values())


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


__all__ = ["HealingService"]
