"""minigrid: a multiplexed websocket grid between the nodes of a cluster.

One websocket per pair of nodes carries single-payload calls and streams, with liveness pings.
The protocol core (:mod:`minigrid.protocol`, :mod:`minigrid.mux`, :mod:`minigrid.state`) is
sans-IO; the asyncio layer (:mod:`minigrid.connection`, :mod:`minigrid.manager`) drives it.

Importing this package, or the protocol core, does not import asyncio or aiohttp: the asyncio
layer's names (:class:`Manager`, :class:`Connection`, ``GRID_PATH``) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import GridConfig, profile
from .errors import (
    CallError,
    Cancelled,
    DeadlineExceeded,
    Disconnected,
    GridError,
    HandshakeError,
    HandshakeRejected,
    LocalProtocolError,
    ProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from .handlers import HandlerID
from .state import State
from .stats import ConnStats

if TYPE_CHECKING:
    from .connection import Connection
    from .manager import GRID_PATH, Manager

# Names of the asyncio layer, and the module each one lives in.
_LAZY = {"Connection": "connection", "Manager": "manager", "GRID_PATH": "manager"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'minigrid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "GRID_PATH",
    "CallError",
    "Cancelled",
    "ConnStats",
    "Connection",
    "DeadlineExceeded",
    "Disconnected",
    "GridConfig",
    "GridError",
    "HandlerID",
    "HandshakeError",
    "HandshakeRejected",
    "LocalProtocolError",
    "Manager",
    "ProtocolError",
    "RemoteError",
    "RemoteProtocolError",
    "State",
    "profile",
]
