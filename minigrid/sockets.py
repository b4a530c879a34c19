"""Socket options for grid connections: no Nagle delay, keepalive below NAT idle timeouts, and a
bound on how long unacknowledged data may sit before the kernel gives up on the peer."""

from __future__ import annotations

import logging
import socket
from typing import Any

from .config import GridConfig

log = logging.getLogger("minigrid.grid")


def tune(sock: Any, config: GridConfig) -> None:
    """Apply TCP_NODELAY, keepalive and TCP_USER_TIMEOUT where the platform has them."""
    if sock is None:
        return
    options: list[tuple[int, int, int]] = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (
        ("TCP_KEEPIDLE", config.tcp_keepidle),
        ("TCP_KEEPINTVL", config.tcp_keepintvl),
        ("TCP_KEEPCNT", config.tcp_keepcnt),
        ("TCP_USER_TIMEOUT", int(config.tcp_user_timeout * 1000)),
    ):
        option = getattr(socket, name, None)
        if option is not None and value > 0:
            options.append((socket.IPPROTO_TCP, option, int(value)))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:  # pragma: no cover - platform dependent
            log.debug("setsockopt(%s, %s) failed: %s", level, option, exc)
