"""Grid configuration: a frozen dataclass with named liveness profiles.

``fast`` (the default) pings four times a second and declares a silent peer dead after 1.75s
without any inbound traffic when the peer has looked healthy, so a frozen or partitioned peer is
detected in under 2s; a peer whose pongs report a late loop (or that answers slowly) gets a
longer window, up to 4s (see :class:`minigrid.liveness.SilenceWindow`). ``minio`` reproduces
MinIO's fixed timings so the two can be compared side by side.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final


@dataclass(frozen=True, slots=True)
class GridConfig:
    """Every tunable of the grid. Use :func:`profile` to start from a named profile."""

    profile: str = "fast"
    #: Connection ping interval; any inbound message also counts as proof of life.
    ping_interval: float = 0.25
    #: Disconnect when nothing at all has arrived from the peer for this long, if the peer
    #: has looked healthy (the silence window's floor; also the peer-not-reading window).
    dead_after: float = 1.75
    #: The most the silence window may grow to for a peer that shows it is slow.
    dead_after_max: float = 4.0
    #: The window grows by this many times the evidence of slowness: the worst loop lag the
    #: peer reported, the worst round-trip time, the worst inbound gap beyond the ping
    #: interval (0 keeps the window fixed at ``dead_after``, as MinIO's is).
    lag_allowance: float = 2.0
    #: How long that evidence is remembered (seconds).
    evidence_memory: float = 30.0
    #: Per-stream ping interval (client → server) on long-lived streams.
    stream_ping_interval: float = 2.0
    #: The server cancels a stream whose client has been silent this long.
    stream_timeout: float = 10.0
    #: The client fails a stream whose server has not answered a stream ping for this long.
    stream_client_timeout: float = 10.0
    #: How often the loop-lag monitor ticks.
    lag_interval: float = 0.1
    #: Default deadline of a call.
    call_timeout: float = 30.0
    #: Time allowed for dialing plus the Connect exchange; on the accepting side, the most an
    #: unauthenticated websocket may live before its proof arrives.
    handshake_timeout: float = 5.0
    #: Unauthenticated handshakes in progress at once, in all and from one remote address.
    #: Past either cap an upgrade gets 503 at once: nobody can hold many sockets (each may
    #: buffer one frame) for long without the secret.
    max_pending_handshakes: int = 32
    max_pending_per_address: int = 8
    #: Reconnect backoff: the first delay is uniform in [initial, 2 × initial], doubling to cap.
    backoff_initial: float = 1.0
    backoff_cap: float = 10.0
    #: After a session that was up ends, the first redial waits only up to this long: most
    #: drops are transient, and this is not a retry of a failed dial.
    first_redial_max: float = 0.25
    #: While unconnected, the accepting side pokes the dialing side this often ("I am here,
    #: dial me now"), so a reachable peer never waits out a long backoff.
    poke_interval: float = 2.0
    #: Bounds of the out-queue of data messages.
    max_queue_messages: int = 4096
    max_queue_bytes: int = 32 << 20
    #: Bound of the out-queue of control messages (pongs, acks, credit grants, cancels, error
    #: replies). It only fills when the peer stops reading while it keeps sending; going over
    #: it ends the session (cause ``peer-not-reading``). A session whose data queue stays full
    #: with nothing written for ``dead_after`` ends the same way.
    max_control_messages: int = 16384
    #: Single calls the peer may have running here at once; more get an immediate "busy"
    #: error reply, not a task.
    max_inflight_handlers: int = 4096
    #: Streams the peer may have open here at once; more are refused with a "busy" error.
    max_inflight_streams: int = 1024
    #: Bytes this node may hold for the peer at once, across every mux: what it received and
    #: has not consumed (payloads being reassembled, unread stream items, the payloads of
    #: running calls and open streams) and the replies and stream items its handlers produced
    #: for the peer that wait for credit or queue room. Each piece also costs
    #: ``minigrid.mux.HELD_OVERHEAD``. What would go over it is refused: that call or stream
    #: fails ("busy"), the connection lives on. A legitimate peer comes near it only when this
    #: node's disks or handlers fall far behind; raise it for many drives under heavy load.
    max_held_bytes: int = 128 << 20
    #: A merged frame holds at most this many messages and this many bytes.
    merge_max_messages: int = 512
    merge_max_bytes: int = 512 << 10
    #: TCP keepalive (seconds) and TCP_USER_TIMEOUT (seconds; 0 leaves the kernel default).
    tcp_keepidle: int = 15
    tcp_keepintvl: int = 5
    tcp_keepcnt: int = 3
    tcp_user_timeout: float = 10.0
    #: Add an xxh3-64 checksum to every payload (the websocket already has TCP's checksum).
    checksum_payloads: bool = False

    def replace(self, **changes: Any) -> GridConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


PROFILES: Final[dict[str, GridConfig]] = {
    "fast": GridConfig(),
    "minio": GridConfig(
        profile="minio",
        ping_interval=10.0,
        dead_after=20.0,
        dead_after_max=20.0,
        lag_allowance=0.0,
        stream_ping_interval=15.0,
        stream_timeout=60.0,
        stream_client_timeout=60.0,
        handshake_timeout=10.0,
        tcp_user_timeout=30.0,
    ),
}


#: The timings :func:`scaled` multiplies: how often to ping and how long silence may last.
LIVENESS_TIMINGS: Final = (
    "ping_interval",
    "dead_after",
    "dead_after_max",
    "evidence_memory",
    "stream_ping_interval",
    "stream_timeout",
    "stream_client_timeout",
)


def scaled(config: GridConfig, factor: float) -> GridConfig:
    """``config`` with its liveness timings multiplied by ``factor`` (labs run the ``minio``
    profile at 0.1: the same ratios, in a tenth of the time)."""
    if factor == 1:
        return config
    return config.replace(**{name: getattr(config, name) * factor for name in LIVENESS_TIMINGS})


def profile(name: str, **overrides: Any) -> GridConfig:
    """The named profile (``fast`` or ``minio``), with any field overridden."""
    try:
        base = PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown liveness profile {name!r}; choose one of {sorted(PROFILES)}"
        ) from None
    return base.replace(**overrides) if overrides else base
