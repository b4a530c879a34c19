"""The node's own HTTP routes: health checks, the admin JSON API and ``/metrics``.

- ``GET /minigrid/health/live``: 200 while the process serves HTTP at all.
- ``GET /minigrid/health/ready``: 200 when every erasure set has a write quorum of usable
  drives, else 503; both with a JSON body saying why.
- ``GET /minigrid/admin/v1/info``: this node, every drive of the cluster as this node sees it,
  every grid connection and the peer table. ``GET /minigrid/admin/v1/config``: the
  configuration with the secrets hidden. Fault injection (``/minigrid/admin/v1/fault...``) is
  :mod:`node.faults`, refused unless the node runs with ``--allow-faults``.
- ``GET /metrics``: Prometheus text, unauthenticated (as a scrape target usually is). A
  *signed* ``GET /metrics`` is an S3 request for the bucket ``metrics`` and goes to the gateway.

The admin API is authenticated with AWS Signature V4 and the **admin** credentials (service
``s3``, the node's region), the same scheme MinIO's admin API uses, so any SigV4 signer works.
No signature is 401; a wrong key or signature is 403. Errors are JSON:
``{"error": "...", "code": "SignatureDoesNotMatch"}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Protocol

from aiohttp import web

from node.config import NodeConfig
from node.metrics import CONTENT_TYPE
from node.s3 import errors as s3_errors
from node.s3.auth import Authenticator
from node.services import ADMIN_PREFIX, Handler, Route, Routes
from storage.drive import Drive
from storage.errors import (
    FileCorrupt,
    FormatMismatch,
    StorageError,
    UnformattedDrive,
)
from storage.format import FormatInfo
from storage.local import LocalDrive

DRIVE_INFO_TIMEOUT = 2.0


def json_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


async def drive_report(drive: Drive, expected: FormatInfo) -> dict[str, Any]:
    """One drive's state: ok, offline, healing, corrupt or unformatted, with its capacity.

    ``corrupt`` also covers a drive whose format names another deployment or another slot."""
    report: dict[str, Any] = {
        "endpoint": drive.endpoint,
        "local": isinstance(drive, LocalDrive),
        "state": "ok",
        "total": None,
        "free": None,
        "used": None,
        "error": "",
    }
    if not drive.is_online():
        report.update(state="offline", error=_offline_cause(drive))
        return report
    try:
        async with asyncio.timeout(DRIVE_INFO_TIMEOUT):
            info, fmt = await asyncio.gather(drive.disk_info(), drive.read_format())
    except TimeoutError:
        report.update(state="offline", error=f"no answer within {DRIVE_INFO_TIMEOUT:.0f}s")
        return report
    except UnformattedDrive as exc:
        report.update(state="unformatted", error=str(exc))
        return report
    except (FileCorrupt, FormatMismatch) as exc:
        report.update(state="corrupt", error=str(exc))
        return report
    except StorageError as exc:
        report.update(state="offline", error=str(exc))
        return report
    report.update(total=info.total, free=info.free, used=info.used, drive_id=info.drive_id)
    if fmt.drive_id != expected.drive_id or not fmt.same_layout(expected):
        report.update(state="corrupt", error="the drive's format belongs to another deployment")
    elif info.healing:
        report["state"] = "healing"
    return report


def _offline_cause(drive: Drive) -> str:
    conn = getattr(drive, "conn", None)
    cause = getattr(conn, "last_cause", "") if conn is not None else ""
    return f"offline ({cause})" if cause else "offline"


class NodeView(Protocol):
    """What the admin API may see of a node: read-only, and nothing else."""

    @property
    def config(self) -> NodeConfig: ...

    def readiness(self) -> dict[str, Any]: ...

    async def info(self) -> dict[str, Any]: ...

    async def metrics_text(self) -> bytes: ...


class AdminAuth:
    """SigV4 with the admin credentials, for every admin route of every service."""

    def __init__(self, config: NodeConfig) -> None:
        self._auth = Authenticator(
            {config.admin_access_key: config.admin_secret_key}, config.region, time.time
        )

    def guard(self, handler: Handler) -> Handler:
        """``handler`` behind admin authentication: 401 unsigned, 403 for a bad signature."""

        async def authenticated(request: web.Request) -> web.StreamResponse:
            if "Authorization" not in request.headers and "X-Amz-Signature" not in request.query:
                return json_error(401, "Unauthenticated", "sign admin requests with SigV4")
            try:
                self._auth.authenticate(request)
            except s3_errors.S3Error as exc:
                return json_error(exc.status if exc.status in (400, 403) else 403, exc.code,
                                  exc.message)  # fmt: skip
            return await handler(request)

        return authenticated


async def unknown_admin_route(request: web.Request) -> web.Response:
    return json_error(404, "NotFound", f"no admin endpoint {request.path}")


class AdminService:
    """Health checks, ``/metrics`` and the node's own admin endpoints (info, config).

    ``s3_fallback`` answers a *signed* ``GET /metrics``: that is S3's ListObjects on the bucket
    named ``metrics``, not a scrape."""

    name = "admin"

    def __init__(self, view: NodeView, s3_fallback: Handler) -> None:
        self.view = view
        self._s3_fallback = s3_fallback

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def routes(self) -> Routes:
        return Routes(
            public=[
                Route("GET", "/minigrid/health/live", self.live),
                Route("GET", "/minigrid/health/ready", self.ready),
                Route("GET", "/metrics", self.metrics),
            ],
            admin=[
                Route("GET", "/info", self.info_route),
                Route("GET", "/config", self.config_route),
            ],
        )

    def info(self) -> dict[str, Any]:
        return {}

    # --- health -------------------------------------------------------------------------------

    async def live(self, _request: web.Request) -> web.Response:
        return web.json_response({"live": True, "node": self.view.config.me.url})

    async def ready(self, _request: web.Request) -> web.Response:
        report = self.view.readiness()
        return web.json_response(report, status=200 if report["ready"] else 503)

    # --- admin --------------------------------------------------------------------------------

    async def info_route(self, _request: web.Request) -> web.Response:
        return web.json_response(await self.view.info())

    async def config_route(self, _request: web.Request) -> web.Response:
        return web.json_response(self.view.config.public_dict())

    # --- metrics ------------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        if "Authorization" in request.headers or "X-Amz-Signature" in request.query:
            return await self._s3_fallback(request)  # S3: the bucket named "metrics"
        body = await self.view.metrics_text()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def drive_reports(
    drives: Sequence[Drive], expected: Sequence[FormatInfo], owners: Sequence[int]
) -> list[dict[str, Any]]:
    reports = await asyncio.gather(
        *(drive_report(drive, fmt) for drive, fmt in zip(drives, expected, strict=True))
    )
    for position, (report, owner) in enumerate(zip(reports, owners, strict=True)):
        report["position"] = position
        report["node"] = owner
    return list(reports)


__all__ = [
    "ADMIN_PREFIX",
    "AdminAuth",
    "AdminService",
    "NodeView",
    "drive_report",
    "drive_reports",
    "unknown_admin_route",
]
