"""Per-connection statistics: cheap counters on the hot path, a frozen snapshot to read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ConnStats:
    """A snapshot of one peer connection (DESIGN §2 Observability)."""

    remote: str
    state: str
    remote_instance: str
    connected_for: float | None  # seconds in the current session, None when not connected
    reconnects: int
    dial_attempts: int
    last_seen_age: float | None  # seconds since any message arrived from the peer
    rtt_last: float | None
    rtt_p50: float | None
    rtt_max: float | None
    peer_loop_lag: float | None  # the peer's worst loop lag in its last window, from its pong
    bytes_in: int
    bytes_out: int
    messages_in: int
    messages_out: int
    frames_in: int
    frames_out: int
    queue_messages: int
    queue_bytes: int
    inflight_calls: int
    inflight_handlers: int
    inflight_streams: int
    last_cause: str
    tls: str = ""  # the TLS version of the current session ("TLSv1.3"), "" when plaintext
    #: Bytes received from the peer and held here now (see ``GridConfig.max_held_bytes``).
    held_bytes: int = 0
    #: Messages or muxes the peer sent that broke the protocol and were refused alone.
    protocol_errors: int = 0
    #: Requests and streams from the peer refused as "busy" because a cap was reached.
    refused: int = 0
    #: Senders waiting for room in a full out-queue (0 while it has room).
    queue_waiters: int = 0
    #: Sessions that ended (the current one, if up, is not counted).
    disconnects: int = 0
    #: The silence after which the peer is declared dead, at the last liveness check
    #: (``dead_after``, stretched by the evidence that the peer is slow).
    silence_window: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Counters:
    """Mutable counters owned by one :class:`~minigrid.connection.Connection`."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    sessions: int = 0
    dial_attempts: int = 0
    connected_at: float | None = None
    rtts: list[float] = field(default_factory=list)
    rtt_max: float | None = None
    peer_loop_lag: float | None = None
    tls: str = ""
    protocol_errors: int = 0
    refused: int = 0
    silence_window: float | None = None

    def session_started(self, now: float) -> None:
        self.sessions += 1
        self.connected_at = now

    def add_rtt(self, rtt: float) -> None:
        self.rtts.append(rtt)
        if len(self.rtts) > 256:
            del self.rtts[:128]
        self.rtt_max = rtt if self.rtt_max is None else max(self.rtt_max, rtt)

    def snapshot(
        self,
        *,
        now: float,
        state: str,
        remote: str,
        remote_instance: str,
        last_seen: float,
        queue_messages: int,
        queue_bytes: int,
        inflight_calls: int,
        inflight_handlers: int,
        last_cause: str,
        inflight_streams: int = 0,
        held_bytes: int = 0,
        queue_waiters: int = 0,
    ) -> ConnStats:
        connected = state == "connected" and self.connected_at is not None
        rtts = sorted(self.rtts)
        return ConnStats(
            remote=remote,
            state=state,
            remote_instance=remote_instance,
            connected_for=(now - self.connected_at) if connected and self.connected_at else None,
            reconnects=max(0, self.sessions - 1),
            dial_attempts=self.dial_attempts,
            last_seen_age=(now - last_seen) if last_seen else None,
            rtt_last=self.rtts[-1] if self.rtts else None,
            rtt_p50=rtts[len(rtts) // 2] if rtts else None,
            rtt_max=self.rtt_max,
            peer_loop_lag=self.peer_loop_lag,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            queue_messages=queue_messages,
            queue_bytes=queue_bytes,
            inflight_calls=inflight_calls,
            inflight_handlers=inflight_handlers,
            inflight_streams=inflight_streams,
            last_cause=last_cause,
            tls=self.tls if connected else "",
            held_bytes=held_bytes,
            protocol_errors=self.protocol_errors,
            refused=self.refused,
            queue_waiters=queue_waiters,
            disconnects=max(0, self.sessions - (1 if connected else 0)),
            silence_window=self.silence_window,
        )
