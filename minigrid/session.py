"""One grid session as a sans-IO state machine: bytes and ``now`` in, events and bytes out.

A :class:`GridSession` is everything one authenticated websocket between two nodes means, with
no sockets, no tasks and no clock of its own (h11 and wsproto are the model):

* :attr:`GridSession.calls` (:mod:`minigrid.calls`): single calls both ways, with their
  deadlines, reassembly and caps;
* :attr:`GridSession.streams` (:mod:`minigrid.muxtable`): streams both ways, each a
  :class:`~minigrid.state.MuxState` moved only by the transition table, with credit,
  sequence checks and stream liveness;
* the out-queue, control before data (:mod:`minigrid.outbox`), and one byte budget for all
  that the peer makes this node hold (:class:`~minigrid.mux.Budget`);
* connection liveness: pings carrying our monotonic time, pongs carrying the peer's health and
  giving the round-trip time, silence detection over a window that follows the evidence of the
  peer's slowness (:class:`~minigrid.liveness.SilenceWindow`) with the local-pause guard, a
  peer that sends but does not read, and a typed :class:`~minigrid.liveness.Cause` when the
  session ends.

A driver feeds it frames (:meth:`~GridSession.receive_frame`), writes what
:meth:`~GridSession.next_frame` returns, calls :meth:`~GridSession.tick` when
:meth:`~GridSession.next_timer` comes, and acts on the :mod:`~minigrid.events` these return.
A data message that finds the queue full comes back as an :class:`~minigrid.records.Outgoing`
to :meth:`~GridSession.push` again once the writer has made room. Once a session has ended it
stays ended: everything in it has failed, and every later call raises
:class:`~minigrid.errors.Disconnected` or does nothing.

:class:`minigrid.connection.Connection` drives one over a websocket; :mod:`minigrid.sim` drives
many over an in-memory network on a virtual clock.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from typing import Final

from . import protocol
from .calls import CallTable
from .config import GridConfig
from .errors import Disconnected, RemoteProtocolError
from .events import Event, PeerStalled, SessionEnded
from .handlers import Registry
from .link import DeadlineTarget, Link
from .liveness import (
    MAX_WIRE_TIME,
    Cause,
    CauseKind,
    Health,
    LocalLoop,
    SilenceWindow,
    diagnose_silence,
    wire_number,
)
from .mux import Budget
from .muxtable import StreamTable
from .protocol import Message, Op
from .records import Mux, Outgoing, ServerCall
from .stats import Counters

log = logging.getLogger("minigrid.grid")

_PING: Final = int(Op.PING)


class GridSession:
    """One session's protocol state. See the module docstring."""

    def __init__(
        self,
        config: GridConfig,
        registry: Registry,
        *,
        now: float,
        loop: LocalLoop,
        local: str = "",
        remote: str = "",
        counters: Counters | None = None,
        first_mux_id: int = 1,
    ) -> None:
        self.config = config
        self.local = local
        self.remote = remote
        #: Counters of the connection this session belongs to (they outlive it).
        self.counters = counters if counters is not None else Counters()
        self._link = link = Link(
            config,
            now=now,
            local=local,
            remote=remote,
            counters=self.counters,
            first_mux_id=first_mux_id,
            on_not_reading=self._end,
            still_due=self._still_due,
        )
        #: Single calls, both directions.
        self.calls = CallTable(link, registry)
        #: Streams, both ends.
        self.streams = StreamTable(link, registry)
        #: When anything last arrived from the peer.
        self.last_seen = now
        #: The health the peer reported in its last pong.
        self.peer_health: Health | None = None
        #: How long the peer may stay silent; it grows with the evidence that it is slow.
        self.silence = SilenceWindow(
            config.dead_after,
            config.dead_after_max,
            config.lag_allowance,
            config.evidence_memory,
            now,
        )
        self._loop = loop
        self._decoder: protocol.FrameDecoder | None = None  # a frame that came in parts
        self._stall_reported = False
        self._next_ping = now
        streams, calls = self.streams, self.calls
        self._dispatch: dict[int, Callable[[Message], None]] = {
            int(Op.REQUEST): calls.on_request,
            int(Op.RESPONSE): calls.on_response,
            int(Op.DISCONNECT_SERVER_MUX): self._on_disconnect_server_mux,
            _PING: self._on_ping,
            int(Op.PONG): self._on_pong,
            int(Op.CONNECT_MUX): streams.on_connect,
            int(Op.ACK_MUX): streams.on_ack,
            int(Op.CLIENT_MSG): streams.on_client_msg,
            int(Op.SERVER_MSG): streams.on_server_msg,
            int(Op.UNBLOCK_CLIENT): streams.on_unblock_client,
            int(Op.UNBLOCK_SERVER): streams.on_unblock_server,
            int(Op.DISCONNECT_CLIENT_MUX): streams.on_disconnect_client,
            int(Op.MUX_CONNECT_ERROR): streams.on_connect_error,
        }
        # A first ping at once: RTT and the peer's health are known from the start.
        self._ping(now)
        link.due = self._liveness_due()

    # ------------------------------------------------------------------ reading state

    @property
    def cause(self) -> Cause | None:
        """Why the session ended; None while it runs."""
        return self._link.cause

    @property
    def closed(self) -> bool:
        return self._link.cause is not None

    @property
    def budget(self) -> Budget:
        """What the peer makes this node hold, across every mux."""
        return self._link.budget

    @property
    def has_output(self) -> bool:
        """Messages are queued for the writer."""
        return bool(self._link.outbox)

    @property
    def queue_messages(self) -> int:
        return len(self._link.outbox)

    @property
    def queue_bytes(self) -> int:
        return self._link.outbox.data_bytes

    @property
    def inflight_calls(self) -> int:
        """Our calls waiting for an answer."""
        return self.calls.waiting

    @property
    def inflight_handlers(self) -> int:
        """The peer's calls running here."""
        return self.calls.running

    @property
    def inflight_streams(self) -> int:
        """Streams open on this session, both ends."""
        return len(self.streams)

    def health(self) -> Health:
        """This node's health as reported in pongs."""
        loop = self._loop
        return Health(
            loop_lag=loop.worst_lag(),
            queue=len(self._link.outbox),
            calls=self.calls.waiting + self.calls.running,
            streams=len(self.streams),
            stall=loop.longest_stall(),
        )

    def disconnected(self) -> Disconnected:
        """The error for work that this session can no longer do."""
        return self._link.disconnected()

    def new_mux_id(self) -> int:
        """Reserve one of our mux ids (for :meth:`StreamTable.open`)."""
        return self._link.new_mux_id()

    # ------------------------------------------------------------------ bytes in and out

    def receive_frame(self, data: bytes, now: float, *, final: bool = True) -> list[Event]:
        """A websocket frame from the peer, or with ``final=False`` the first part of one
        (the rest follows in later calls: a frame may come one byte at a time). A frame that
        breaks the protocol ends the session (its last event is
        :class:`~minigrid.events.SessionEnded`)."""
        link = self._link
        if link.cause is not None:
            return []
        link.now = now
        if now - self.last_seen > self.config.ping_interval:  # a gap longer than it should be
            self.silence.note(now, now - self.last_seen - self.config.ping_interval)
        self.last_seen = now
        counters = self.counters
        counters.bytes_in += len(data)
        try:
            if final and self._decoder is None:
                messages = protocol.decode_frame(data)  # the common case: a whole frame
            else:
                decoder = self._decoder or protocol.FrameDecoder()
                self._decoder = None if final else decoder
                messages = decoder.feed(data)
                if final:
                    decoder.end_frame()
            if final:
                counters.frames_in += 1
            counters.messages_in += len(messages)
            dispatch = self._dispatch
            for message in messages:
                handle = dispatch.get(message.op)
                if handle is None:
                    raise RemoteProtocolError(f"unexpected {Op(message.op).name} in a session")
                handle(message)
                if self.closed:
                    break
        except RemoteProtocolError as exc:
            log.warning("grid %s->%s: protocol error from peer: %s", link.local, link.remote, exc)
            self._end(Cause(CauseKind.PROTOCOL_ERROR, str(exc)))
        return self.take_events()

    def take_events(self) -> list[Event]:
        """What happened since the driver last asked (local calls produce events too: a
        credit grant that overflows the control queue ends the session, for example)."""
        link = self._link
        events = link.events
        if not events:
            return []
        link.events = []
        return events

    def next_frame(self) -> tuple[bytes, int] | None:
        """The next frame to write, control first, and how many data messages it took off
        the queue (that much room is free again); None when nothing is queued."""
        taken = self._link.outbox.take_frame()
        if taken is None:
            return None
        frame, messages, data = taken
        counters = self.counters
        counters.frames_out += 1
        counters.messages_out += messages
        counters.bytes_out += len(frame)
        return frame, data

    def frame_written(self) -> None:
        """The last frame left: the peer is reading."""
        self._link.outbox.full_since = None

    def push(self, outgoing: Outgoing) -> bool:
        """Queue what fits of ``outgoing``; True when all of it is queued. Raises
        :class:`Disconnected` once the session has ended."""
        return self._link.push(outgoing)

    def _on_disconnect_server_mux(self, message: Message) -> None:
        """The caller of a call or a stream running here gave up."""
        self.calls.on_disconnect(message.mux_id)
        self.streams.on_disconnect_server(message.mux_id)

    # ------------------------------------------------------------------ liveness

    def _ping(self, now: float) -> None:
        self._link.control(protocol.encode(_PING, payload=protocol.pack_obj({"t": now})))
        self._next_ping = now + self.config.ping_interval

    def _on_ping(self, message: Message) -> None:
        if message.mux_id:
            self.streams.on_stream_ping(message.mux_id)
            return
        try:
            ping = protocol.unpack_map(message.payload, "PING")
            sent = wire_number(ping.get("t", 0), "ping time", MAX_WIRE_TIME)
        except RemoteProtocolError as exc:
            self._link.breach(message, exc)  # that ping gets no pong; the session lives on
            return
        reply = self.health().to_wire()
        reply["t"] = sent
        self._link.control(protocol.encode(Op.PONG, payload=protocol.pack_obj(reply)))

    def _on_pong(self, message: Message) -> None:
        if message.mux_id:
            self.streams.on_stream_pong(message.mux_id)
            return
        try:
            pong = protocol.unpack_map(message.payload, "PONG")
            sent = pong.get("t")
            if sent is not None:
                sent = wire_number(sent, "pong time", MAX_WIRE_TIME)
            health = Health.from_wire(pong)
        except RemoteProtocolError as exc:
            self._link.breach(message, exc)  # that pong is ignored; the session lives on
            return
        now = self._link.now
        if sent is not None and 0 <= now - sent < 3600:
            self.counters.add_rtt(now - sent)
            self.silence.note(now, now - sent)
        self.silence.note(now, health.loop_lag)
        self.peer_health = health
        self.counters.peer_loop_lag = health.loop_lag
        if not self._stall_reported and health.stall >= self.config.dead_after / 2:
            self._stall_reported = True
            self._link.emit(PeerStalled(health.stall))

    def next_timer(self) -> float:
        """When :meth:`tick` should next run (a driver's only timer)."""
        link = self._link
        if link.cause is not None:
            return math.inf  # an ended session has nothing left to do
        deadline = link.deadlines.next
        return deadline if deadline < link.due else link.due

    def tick(self, now: float) -> list[Event]:
        """Run what is due at ``now``: expired deadlines, pings, stream pings and timeouts,
        the silence and not-reading checks. A timer that fires late by half the disconnect
        window means our own loop stalled: the peer is not accused for that window."""
        link = self._link
        if link.cause is not None:
            return self.take_events()
        link.now = now
        for target, seconds in link.deadlines.pop_due(now):
            self._expire(target, seconds)
        if now >= link.due and link.cause is None:
            self._check_liveness(now)
        return self.take_events()

    @property
    def silence_window(self) -> float:
        """The silence after which the peer is declared dead, as of now (seconds)."""
        return self.silence.window(self._link.now)

    def _liveness_due(self) -> float:
        window = self.silence.window(self._link.now)
        due = min(self._next_ping, self.last_seen + window, self.streams.due)
        full_since = self._link.outbox.full_since
        if full_since is not None:
            due = min(due, full_since + window)
        return due

    def _check_liveness(self, now: float) -> None:
        link, config = self._link, self.config
        window = self.silence.window(now)
        self.counters.silence_window = window
        half = window / 2
        late = now - link.due
        silent = now >= self.last_seen + window
        if late >= half or (silent and self._loop.stalled_during(self.last_seen, now) >= half):
            # Our own loop was stalled: the silence is ours. Give the peer a fresh window.
            log.warning(
                "grid %s->%s: local loop stalled %.1fs; not accusing the peer for that window",
                link.local,
                link.remote,
                max(late, now - self.last_seen),
            )
            self.last_seen = now
            if link.outbox.full_since is not None:
                link.outbox.full_since = now
        elif silent:
            silence = now - self.last_seen
            self._end(diagnose_silence(silence, self.peer_health, config.ping_interval, window))
            return
        elif self._peer_not_reading(now, window):
            return
        if now >= self._next_ping:
            self._ping(now)
        if now >= self.streams.due:
            self.streams.check(now, self.peer_health)
        link.due = self._liveness_due()

    def _peer_not_reading(self, now: float, window: float) -> bool:
        outbox = self._link.outbox
        full_since = outbox.full_since
        if full_since is None or now < full_since + window:
            return False
        cause = Cause(
            CauseKind.PEER_NOT_READING,
            f"out-queue full for {now - full_since:.1f}s with nothing written "
            f"({len(outbox)} messages, {outbox.data_bytes} bytes queued); "
            "the peer sends but does not read",
        )
        log.warning("grid %s->%s: disconnecting: %s", self._link.local, self._link.remote, cause)
        self._end(cause)
        return True

    # ------------------------------------------------------------------ deadlines

    def _still_due(self, target: DeadlineTarget) -> bool:
        if isinstance(target, int):
            return self.calls.is_waiting(target)
        if isinstance(target, ServerCall):
            return self.calls.is_running(target)
        return self.streams.may_expire(target)

    def _expire(self, target: int | ServerCall | Mux, seconds: float) -> None:
        if isinstance(target, int):
            self.calls.expire(target, seconds)
        elif isinstance(target, ServerCall):
            self.calls.expire_handler(target)
        else:
            self.streams.expire(target, seconds)

    # ------------------------------------------------------------------ the end

    def close(self, cause: Cause, now: float) -> list[Event]:
        """End the session (the socket closed or was reset, we were told to drop it, or the
        node shuts down): everything in flight fails at once. A reset right after our own
        loop stalled for half the window is diagnosed as ``local-stalled``."""
        self._link.now = now
        if self._link.cause is None:
            self._end(self._diagnose_reset(cause, now))
        return self.take_events()

    def _diagnose_reset(self, cause: Cause, now: float) -> Cause:
        if cause.kind is not CauseKind.RESET:
            return cause
        window = self.config.dead_after
        stall = self._loop.stalled_during(now - window, now)
        if stall < window / 2:
            return cause
        return Cause(
            CauseKind.LOCAL_STALLED,
            f"our loop stalled {stall:.1f}s and the peer gave up on us ({cause})",
        )

    def _end(self, cause: Cause) -> None:
        """Fail everything in flight, drop the queue, and say so (one log line)."""
        link = self._link
        if link.cause is not None:
            return
        self._log_casualties(cause)
        link.cause = cause
        self.calls.close()
        self.streams.close()
        link.outbox.clear()
        link.deadlines.clear()
        link.emit(SessionEnded(cause))

    def _log_casualties(self, cause: Cause) -> None:
        """One line for everything a lost session takes with it, never one per call."""
        handlers = self.calls.handler_names() + self.streams.handler_names()
        calls, streams = self.calls.waiting, self.streams.clients
        if not (handlers or calls or streams) or cause.kind is CauseKind.SHUTDOWN:
            return
        named = collections.Counter(handlers)
        listed = ", ".join(
            f"{name} x{count}" if count > 1 else name for name, count in named.items()
        )
        log.warning(
            "grid %s->%s: session lost (%s): failed %d calls and %d streams; cancelled %d "
            "handlers%s",
            self._link.local,
            self._link.remote,
            cause,
            calls,
            streams,
            len(handlers),
            f" ({listed})" if listed else "",
        )
