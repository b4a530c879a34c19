"""A simulated node: one :class:`~minigrid.session.GridSession` per peer, driven the way
:class:`~minigrid.driver.SessionDriver` drives it, on the simulation's virtual clock.

A node has its own monotonic clock (the virtual clock plus an offset, as two processes' clocks
share no epoch), a wall clock that faults may jump, and one event loop that a fault can freeze
or block: while it is stopped, everything for the node (frames, timers, its own work) waits in
order, and when it runs again its loop monitor records the stall, as
:class:`~minigrid.monitor.LoopMonitor` would have.

Connections are made as the manager makes them: only the dialing side of a pair dials (the same
:func:`~minigrid.manager.should_dial` rule), with the real challenge-response handshake
(:mod:`minigrid.handshake`) over the simulated socket, jittered backoff after failures, and
pokes from the accepting side while it is unconnected. A verified dial replaces the session
the acceptor had with that peer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import GridConfig
from ..errors import Disconnected, HandshakeError, LocalProtocolError
from ..events import (
    CallFailed,
    CallReceived,
    CallResult,
    Event,
    PeerStalled,
    SessionEnded,
    StopHandler,
    StreamChanged,
    StreamReceived,
)
from ..handlers import Registry
from ..handshake import AcceptorHandshake, Code, DialerHandshake, Hello, Purpose
from ..liveness import Cause, CauseKind, LoopStats
from ..records import Outgoing
from ..session import GridSession
from ..state import State
from ..stats import Counters
from .clock import Timer
from .handlers import GENERATE, Service
from .network import Socket

if TYPE_CHECKING:
    from .cluster import Simulation


def should_dial(local: str, remote: str) -> bool:
    """The manager's rule (:func:`minigrid.manager.should_dial`), without importing asyncio."""
    forward = hashlib.sha256(f"{local}\x00{remote}".encode()).digest()
    backward = hashlib.sha256(f"{remote}\x00{local}".encode()).digest()
    if forward != backward:
        return forward < backward
    return local < remote


class PeerLink:
    """A node's connection to one peer: its state, its current session and socket."""

    def __init__(self, node: SimNode, remote: str) -> None:
        self.node = node
        self.remote = remote
        self.dialer = should_dial(node.name, remote)
        self.state = State.UNCONNECTED
        self.counters = Counters()
        self.session: GridSession | None = None
        self.socket: Socket | None = None
        self.remote_instance = ""
        #: (virtual time, cause) of every session that ended.
        self.downs: list[tuple[float, Cause]] = []
        #: Virtual time each session came up.
        self.ups: list[float] = []
        self._timer: Timer | None = None
        self._timer_at = float("inf")
        self._room: list[tuple[Outgoing, Callable[[], None]]] = []
        self._backoff = 0.0
        self._attempt = 0  # which dial or poke this is, so stale callbacks know
        self._next_mux_id = 1

    @property
    def up(self) -> bool:
        return self.session is not None and not self.session.closed

    @property
    def waiting_for_room(self) -> bool:
        """Data messages wait for room in the session's out-queue."""
        return bool(self._room)

    # ------------------------------------------------------------------ the session

    def start(self, sock: Socket, instance: str) -> None:
        """The handshake is done: run a session on ``sock``."""
        node = self.node
        self.remote_instance = instance
        self.socket = sock
        sock.attach(
            lambda s, frame: node.run(self._on_frame, s, frame),
            lambda s, why: node.run(self._on_closed, s, why),
            lambda s: node.run(self._on_writable, s),
        )
        self.session = GridSession(
            node.config,
            node.registry,
            now=node.now(),
            loop=node.loop,
            local=node.name,
            remote=self.remote,
            counters=self.counters,
            first_mux_id=self._next_mux_id,
        )
        self.state = State.CONNECTED
        self.ups.append(node.sim.scheduler.now)
        self._backoff = 0.0
        self.flush()

    def flush(self) -> None:
        """After any work on the session: act on its events, write what fits in the socket's
        window, retry what waited for room, and re-arm the one timer."""
        session, sock = self.session, self.socket
        if session is None or sock is None:
            return
        for _ in range(10_000):
            events = session.take_events()
            if events:
                self.handle(session, events)
            if session.closed:
                return
            freed = 0
            while sock.writable and (taken := session.next_frame()) is not None:
                sock.send(taken[0])
                session.frame_written()
                freed += taken[1]
            if not (freed and self._room and self._retry_room(session)):
                break
        when = session.next_timer()
        if when < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = when
            self._timer = self.node.at_local(when, self._on_timer, session)

    def push(self, outgoing: Outgoing, done: Callable[[], None]) -> None:
        """Queue ``outgoing`` now or when there is room, then call ``done``."""
        session = self.session
        if session is None or session.closed:
            return
        if session.push(outgoing):
            done()
        else:
            self._room.append((outgoing, done))

    def _retry_room(self, session: GridSession) -> bool:
        """Push what waited for room, in order; True if any of it went in."""
        moved = False
        while self._room:
            outgoing, done = self._room[0]
            if not session.push(outgoing):
                break
            self._room.pop(0)
            moved = True
            done()
        return moved

    def _on_timer(self, session: GridSession) -> None:
        if session is not self.session:
            return
        self._timer, self._timer_at = None, float("inf")
        self.handle(session, session.tick(self.node.now()))
        self.flush()

    def _on_frame(self, sock: Socket, frame: bytes) -> None:
        sock.read(frame)
        session = self.session
        if sock is not self.socket or session is None:
            return
        self.handle(session, session.receive_frame(frame, self.node.now()))
        self.flush()

    def _on_writable(self, sock: Socket) -> None:
        if sock is self.socket:
            self.flush()

    def _on_closed(self, sock: Socket, why: str) -> None:
        session = self.session
        if sock is not self.socket or session is None:
            return
        self.handle(session, session.close(Cause(CauseKind.RESET, why), self.node.now()))

    def drop(self, why: str = "dropped on request") -> None:
        """End the session as if the socket had been reset (a fault)."""
        session = self.session
        if session is not None and not session.closed:
            self.handle(session, session.close(Cause(CauseKind.RESET, why), self.node.now()))

    def handle(self, session: GridSession, events: list[Event]) -> None:
        node = self.node
        for event in events:
            if isinstance(event, CallResult):
                node.sim.ledger.call_ended(node.name, session, event.mux_id, "ok")
            elif isinstance(event, CallFailed):
                node.sim.ledger.call_ended(node.name, session, event.mux_id, event.error)
            elif isinstance(event, CallReceived):
                node.service.start_call(self, session, event.call)
            elif isinstance(event, StreamReceived):
                node.service.start_stream(self, session, event.mux)
            elif isinstance(event, StopHandler):
                node.service.stop(self, session, event.work)
            elif isinstance(event, StreamChanged):
                node.service.changed(self, session, event.mux)
            elif isinstance(event, PeerStalled):
                node.sim.trace(f"{node.name}->{self.remote}: peer stalled {event.seconds:.1f}s")
            elif isinstance(event, SessionEnded):
                self._ended(session, event.cause)

    def _ended(self, session: GridSession, cause: Cause) -> None:
        node = self.node
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, float("inf")
        self._room.clear()
        self._next_mux_id = session.new_mux_id()
        self.downs.append((node.sim.scheduler.now, cause))
        node.sim.trace(f"{node.name}->{self.remote} down: {cause}")
        if self.socket is not None:
            self.socket.close()
        self.socket = None
        self.session = None
        self.state = State.ERROR
        node.service.forget_session(session)
        node.sim.ledger.session_ended(node.name, session)
        self._reconnect(was_up=True)

    # ------------------------------------------------------------------ reconnecting

    def begin(self) -> None:
        """The node starts: the dialer dials, the acceptor pokes. Nodes do not all start in the
        same instant: each pair connects at a random point of the first ping interval, so the
        cluster's pings are not all in step."""
        self._attempt += 1
        config = self.node.config
        if self.dialer:
            start = config.ping_interval * self.node.sim.scheduler.random.random()
            self.node.after_local(start, self.dial, self._attempt)
        else:
            self.node.after_local(config.poke_interval, self._poke, self._attempt)

    def _reconnect(self, *, was_up: bool) -> None:
        """Only the dialer redials: at once after a session that was up, then with jittered
        backoff; the acceptor pokes the dialer while it is unconnected."""
        config, rnd = self.node.config, self.node.sim.scheduler.random
        self._attempt += 1
        if not self.dialer:
            self.node.after_local(config.poke_interval * rnd.random(), self._poke, self._attempt)
            return
        if was_up:
            delay = config.first_redial_max * rnd.random()
        elif self._backoff == 0:
            delay = config.backoff_initial * (1 + rnd.random())
        else:
            delay = min(config.backoff_cap, self._backoff * 2) * (0.75 + rnd.random() * 0.25)
        self._backoff = delay
        self.node.after_local(delay, self.dial, self._attempt)

    def dial(self, attempt: int) -> None:
        if attempt != self._attempt or self.up or self.node.closed:
            return
        node = self.node
        self.state = State.CONNECTING
        self._attempt += 1
        attempt = self._attempt
        self.counters.dial_attempts += 1
        handshake = DialerHandshake(
            node.sim.key, node.name, node.instance, self.remote, nonce=node.nonce()
        )
        node.after_local(node.config.handshake_timeout, self._dial_timeout, attempt)
        node.sim.network.connect(
            node.name,
            self.remote,
            lambda sock, why: node.run(self._dialed, attempt, handshake, sock, why),
            lambda sock: node.sim.nodes[self.remote].run_accept(sock),
        )

    def _dialed(
        self, attempt: int, handshake: DialerHandshake, sock: Socket | None, why: str
    ) -> None:
        if attempt != self._attempt:
            if sock is not None:
                sock.close()
            return
        if sock is None:
            self._failed(f"dial failed: {why}")
            return
        self.socket = sock
        sock.attach(
            lambda s, frame: self.node.run(self._handshake_step, attempt, handshake, s, frame),
            lambda s, why: self.node.run(self._dial_closed, attempt, s, why),
        )

    def _handshake_step(
        self, attempt: int, handshake: DialerHandshake, sock: Socket, frame: bytes
    ) -> None:
        sock.read(frame)
        if attempt != self._attempt or sock is not self.socket:
            return
        try:
            if handshake.peer is None:  # the challenge; our answer goes back
                sock.send(handshake.receive_challenge(frame))
                return
            acceptor: Hello = handshake.receive_response(frame)
        except (HandshakeError, LocalProtocolError) as exc:
            sock.close()
            self._failed(f"handshake failed: {exc}")
            return
        self._attempt += 1  # the dial is done: its timeout no longer applies
        self.start(sock, acceptor.instance)

    def _dial_closed(self, attempt: int, sock: Socket, why: str) -> None:
        if attempt == self._attempt and sock is self.socket and not self.up:
            self._failed(f"dial failed: {why}")

    def _dial_timeout(self, attempt: int) -> None:
        if attempt == self._attempt and not self.up:
            if self.socket is not None:
                self.socket.close()
            self._failed("dial failed: timed out")

    def _failed(self, why: str) -> None:
        self.socket = None
        self.state = State.ERROR
        self.node.sim.trace(f"{self.node.name}->{self.remote} {why}")
        self._reconnect(was_up=False)

    def _poke(self, attempt: int) -> None:
        """As the acceptor, while unconnected: tell the dialer to dial now."""
        if attempt != self._attempt or self.up or self.node.closed:
            return
        self.node.sim.poke(self.node.name, self.remote)
        self._attempt += 1
        self.node.after_local(self.node.config.poke_interval, self._poke, self._attempt)

    def poked(self) -> None:
        """The acceptor says it is reachable: dial now unless a session is up or a dial runs."""
        if self.dialer and not self.up and self.state is not State.CONNECTING:
            self._attempt += 1
            self.dial(self._attempt)

    def accept(self, sock: Socket, handshake: AcceptorHandshake, dialer: Hello) -> None:
        """A verified dial from the peer: it replaces whatever session we had."""
        session = self.session
        if session is not None and not session.closed:
            replaced = Cause(CauseKind.REPLACED, "by a new dial")
            self.handle(session, session.close(replaced, self.node.now()))
        self._attempt += 1  # no poke is pending any more
        sock.send(handshake.accept())
        self.start(sock, dialer.instance)


class SimNode:
    """One simulated process."""

    def __init__(self, sim: Simulation, name: str, config: GridConfig, registry: Registry) -> None:
        self.sim = sim
        self.name = name
        self.config = config
        self.registry = registry
        rnd = sim.scheduler.random
        #: Monotonic clocks of different processes share no epoch.
        self.mono_offset = rnd.uniform(1_000.0, 1_000_000.0)
        self.wall_offset = 1.7e9 + rnd.uniform(0, 1e6)
        self.instance = f"{rnd.getrandbits(128):032x}"
        self.loop = LoopStats()
        self.service = Service(self)
        self.peers: dict[str, PeerLink] = {}
        self.closed = False
        self.stopped_since: float | None = None
        self._backlog: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    # ------------------------------------------------------------------ time and the loop

    def now(self) -> float:
        """This node's monotonic clock."""
        return self.sim.scheduler.now + self.mono_offset

    def wall(self) -> float:
        """This node's wall clock (faults may jump it; nothing in the grid may use it)."""
        return self.sim.scheduler.now + self.wall_offset

    def at_local(self, when: float, fn: Callable[..., None], *args: Any) -> Timer:
        """Run ``fn`` on this node's loop at ``when`` on its own monotonic clock."""
        return self.sim.scheduler.at(when - self.mono_offset, self.run, fn, *args)

    def after_local(self, delay: float, fn: Callable[..., None], *args: Any) -> Timer:
        return self.sim.scheduler.after(delay, self.run, fn, *args)

    def run(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on this node's loop now, or when it runs again if it is stopped."""
        if self.stopped_since is not None:
            self._backlog.append((fn, args))
            return
        fn(*args)

    def stop(self) -> None:
        """The loop stops (SIGSTOP, or a handler hogging it): nothing runs until :meth:`resume`."""
        if self.stopped_since is None:
            self.stopped_since = self.sim.scheduler.now

    def resume(self) -> None:
        """The loop runs again: the monitor notes the stall, then the backlog runs in order."""
        if self.stopped_since is None:
            return
        stalled = self.sim.scheduler.now - self.stopped_since
        self.stopped_since = None
        self.loop.record(self.now(), stalled)
        backlog, self._backlog = self._backlog, []
        for fn, args in backlog:
            self.run(fn, *args)  # waits again if something in the backlog stops the loop

    def nonce(self) -> bytes:
        return self.sim.scheduler.random.getrandbits(256).to_bytes(32, "big")

    # ------------------------------------------------------------------ connections

    def start(self, peers: list[str]) -> None:
        for peer in peers:
            if peer != self.name:
                self.peers[peer] = PeerLink(self, peer)
        for link in self.peers.values():
            link.begin()

    def run_accept(self, sock: Socket) -> None:
        """A dialer reached us: challenge it; a verified dialer gets a session."""
        handshake = AcceptorHandshake(
            self.sim.key,
            self.name,
            self.instance,
            Purpose.DIAL,
            admit=self._admit,
            nonce=self.nonce(),
        )

        sock.attach(lambda s, frame: self.run(self._accept_step, handshake, s, frame))
        self.run(sock.send, handshake.challenge())

    def _admit(self, host: str) -> tuple[Code, str] | None:
        link = self.peers.get(host)
        if link is None or link.dialer:
            return Code.WRONG_SIDE, f"{host} does not dial {self.name}"
        return None

    def _accept_step(self, handshake: AcceptorHandshake, sock: Socket, frame: bytes) -> None:
        sock.read(frame)
        if not sock.open or handshake.peer is not None:
            return
        try:
            dialer = handshake.receive_connect(frame)
        except HandshakeError:
            sock.close()
            return
        self.peers[dialer.host].accept(sock, handshake, dialer)

    # ------------------------------------------------------------------ work

    def call(
        self, peer: str, handler_id: int, payload: bytes, timeout: float, call_id: int
    ) -> None:
        """Start call ``call_id`` of the ledger on ``peer``; the ledger records how it ends."""
        ledger = self.sim.ledger
        link = self.peers[peer]
        session = link.session
        if session is None or session.closed:
            ledger.settle(call_id, Disconnected("not connected"))
            return
        mux_id, outgoing = session.calls.start(handler_id, payload, timeout=timeout, now=self.now())
        ledger.bind(call_id, session, mux_id)
        if outgoing is not None:
            link.push(outgoing, lambda: None)
        link.flush()

    def open_stream(
        self,
        peer: str,
        payload: bytes,
        count: int,
        timeout: float | None,
        read_delay: float,
        cancel_after: float | None,
    ) -> None:
        """Open a GENERATE stream of ``count`` items from ``peer`` and read it at
        ``read_delay`` a item; nothing if the peer is down."""
        link = self.peers[peer]
        session = link.session
        if session is None or session.closed:
            return
        mux, outgoing = session.streams.open(
            session.new_mux_id(), GENERATE, payload, timeout=timeout, now=self.now()
        )
        self.service.consume(link, session, mux, count, read_delay, cancel_after)
        if outgoing is not None:
            link.push(outgoing, lambda: None)
        link.flush()
