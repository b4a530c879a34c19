"""The grid service: this node's grid manager, the drive service on it, and the peer table.

Starting it serves the local drives to peers over the grid, starts dialing (or waiting for)
every peer, and begins following their connection states in the peer table, which marks a
peer's drives offline the moment its connection drops.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

from minigrid import Manager, profile
from minigrid.config import scaled
from node.config import NodeConfig
from node.services import Route, Routes
from storage.drive import Drive
from storage.drive_service import serve_drives
from storage.peers import PeerTable


class GridService:
    """The node's grid: built at once (the node needs its remote drives), started later."""

    name = "grid"

    def __init__(
        self, config: NodeConfig, local_drives: Mapping[str, Drive], tls: ssl.SSLContext | None
    ) -> None:
        grid_config = scaled(profile(config.profile), config.liveness_scale).replace(
            tcp_keepidle=config.tcp_keepidle,
            tcp_keepintvl=config.tcp_keepintvl,
            max_queue_bytes=config.grid_queue_mib << 20,
        )
        self.manager = Manager(
            config.host, config.hosts, config.secret, config=grid_config, tls=tls
        )
        serve_drives(self.manager, local_drives)
        #: Follows every peer's connection; its remote drives are the cluster's other drives.
        self.peers = PeerTable(self.manager)

    async def start(self) -> None:
        await self.manager.start()

    async def close(self) -> None:
        self.peers.close()
        await self.manager.close()

    def routes(self) -> Routes:
        return Routes(public=[Route(m, p, h) for m, p, h in self.manager.http_routes()])

    def info(self) -> dict[str, Any]:
        return {
            "grid": {host: s.as_dict() for host, s in sorted(self.manager.stats().items())},
            "peers": {host: p.as_dict() for host, p in self.peers.snapshot().items()},
            "loop_lag_s": round(self.manager.monitor.worst_lag(), 4),
            "loop_busy_s": round(self.manager.monitor.worst_busy(), 4),
        }
