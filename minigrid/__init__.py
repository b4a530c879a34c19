"""minigrid: a multiplexed websocket grid between the nodes of a cluster.

One websocket per pair of nodes carries single-payload calls and streams, with liveness pings.
The protocol core (:mod:`minigrid.protocol`, :mod:`minigrid.state`) is sans-IO; the asyncio
layer (:mod:`minigrid.connection`, :mod:`minigrid.manager`) drives it.
"""

from .config import GridConfig, profile
from .connection import Connection
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
from .manager import GRID_PATH, Manager
from .state import State
from .stats import ConnStats

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
