"""An in-memory network of simulated TCP connections between named nodes.

A :class:`Socket` is one end of one connection. Frames arrive in order, after the link's
latency plus a seeded jitter (never reordered: a frame waits for the one before it), and count
against the sender's window until the receiving node has read them: a node that does not read
fills its peer's window, as a frozen process fills a TCP buffer.

Faults, per pair of nodes:

* a **silent** partition (iptables DROP) holds every frame, FIN included, until it heals; TCP
  would retransmit them, so they arrive then, if both ends are still open;
* a **reset** partition (REJECT with tcp-reset) loses the frame and resets the sender's end
  one latency later;
* latency and jitter can change at any time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .clock import Scheduler

Mode = Literal["silent", "reset"]
#: Bytes a sender may have on the wire and unread by its peer (a TCP buffer, roughly).
WINDOW = 4 << 20


@dataclass
class LinkShape:
    """Latency (seconds, one way) and jitter (uniform, added) between two nodes."""

    latency: float = 0.0005
    jitter: float = 0.0


class Socket:
    """One end of a simulated connection. The owner sets the three callbacks."""

    def __init__(self, net: Network, local: str, remote: str, conn_id: int) -> None:
        self.net = net
        self.local = local
        self.remote = remote
        self.conn_id = conn_id
        self.peer: Socket | None = None
        self.open = True
        #: Bytes sent and not yet read by the peer.
        self.unread = 0
        #: A frame arrived (the owner reads it later, when its loop runs: see :meth:`read`).
        self.on_frame: Callable[[Socket, bytes], None] | None = None
        #: The connection ended under us: "closed by peer" (FIN) or "reset" (RST).
        self.on_closed: Callable[[Socket, str], None] = lambda sock, why: None
        #: The window has room again.
        self.on_writable: Callable[[Socket], None] = lambda sock: None
        self._last_arrival = 0.0
        self._held: list[tuple[str, bytes]] = []
        self._unclaimed: list[bytes] = []  # arrived before the owner attached

    def attach(
        self,
        on_frame: Callable[[Socket, bytes], None],
        on_closed: Callable[[Socket, str], None] | None = None,
        on_writable: Callable[[Socket], None] | None = None,
    ) -> None:
        """Take delivery: frames that arrived before now are handed over first, in order."""
        self.on_frame = on_frame
        if on_closed is not None:
            self.on_closed = on_closed
        if on_writable is not None:
            self.on_writable = on_writable
        unclaimed, self._unclaimed = self._unclaimed, []
        for frame in unclaimed:
            on_frame(self, frame)

    @property
    def writable(self) -> bool:
        return self.open and self.unread < WINDOW

    def send(self, frame: bytes) -> None:
        """Send one frame (the caller checks :attr:`writable` first to respect the window)."""
        if not self.open or self.peer is None:
            return
        self.unread += len(frame)
        self.net.stats_frame(self.local, frame)
        self._transmit("data", frame)

    def read(self, frame: bytes) -> None:
        """The owner processed ``frame``: it no longer counts against the sender's window."""
        sender = self.peer
        if sender is None:
            return
        was_full = not sender.writable
        sender.unread -= len(frame)
        if was_full and sender.writable:
            sender.on_writable(sender)

    def close(self) -> None:
        """Close our end; the peer hears FIN after everything we sent."""
        if not self.open:
            return
        self.open = False
        self._transmit("fin", b"")

    def reset(self, why: str = "reset") -> None:
        """Our end is reset (by the network, or a dropped connection): we hear it at once."""
        if not self.open:
            return
        self.open = False
        self.on_closed(self, why)

    def _transmit(self, kind: str, frame: bytes) -> None:
        net = self.net
        mode = net.blocked(self.local, self.remote)
        if mode == "silent":
            self._held.append((kind, frame))
            net.hold(self)
            return
        if mode == "reset":
            if kind == "data":
                net.scheduler.after(net.shape(self.local, self.remote).latency, self.reset)
            return
        self._deliver(kind, frame)

    def _deliver(self, kind: str, frame: bytes) -> None:
        net = self.net
        arrival = max(net.scheduler.now + net.delay(self.local, self.remote), self._last_arrival)
        self._last_arrival = arrival
        net.scheduler.at(arrival, self._arrive, kind, frame)

    def _arrive(self, kind: str, frame: bytes) -> None:
        peer = self.peer
        if peer is None or not peer.open:
            return
        if kind == "fin":
            peer.open = False
            peer.on_closed(peer, "closed by peer")
        else:
            peer.receive(frame)

    def receive(self, frame: bytes) -> None:
        """A frame reached our end: to the owner, or held until it attaches."""
        if self.on_frame is None:
            self._unclaimed.append(frame)
        else:
            self.on_frame(self, frame)

    def release_held(self) -> None:
        """The partition healed: what TCP retransmits now arrives, in order."""
        held, self._held = self._held, []
        for kind, frame in held:
            self._transmit(kind, frame)


class Network:
    """Nodes by name, the shape of every link, partitions, and counts of what was sent."""

    def __init__(self, scheduler: Scheduler, default: LinkShape | None = None) -> None:
        self.scheduler = scheduler
        self.default = default or LinkShape()
        self._shapes: dict[tuple[str, str], LinkShape] = {}
        self._blocked: dict[tuple[str, str], Mode] = {}
        self._holding: set[Socket] = set()
        self._delay_log: list[tuple[float, float]] = []  # (when, max_delay() from then on)
        self._conn_ids = 0
        #: Frames and bytes each node sent.
        self.frames_sent: dict[str, int] = {}
        self.bytes_sent: dict[str, int] = {}

    def stats_frame(self, node: str, frame: bytes) -> None:
        self.frames_sent[node] = self.frames_sent.get(node, 0) + 1
        self.bytes_sent[node] = self.bytes_sent.get(node, 0) + len(frame)

    def shape(self, a: str, b: str) -> LinkShape:
        return self._shapes.get((a, b), self.default)

    def set_shape(self, a: str, b: str, shape: LinkShape) -> None:
        """Both directions between ``a`` and ``b`` get ``shape``."""
        self._shapes[(a, b)] = self._shapes[(b, a)] = shape
        self._delay_log.append((self.scheduler.now, self.max_delay()))

    def delay(self, a: str, b: str) -> float:
        shape = self.shape(a, b)
        jitter = self.scheduler.random.uniform(0, shape.jitter) if shape.jitter else 0.0
        return shape.latency + jitter

    def max_delay(self) -> float:
        """The longest one-way delay any link may take now."""
        shapes = [self.default, *self._shapes.values()]
        return max(shape.latency + shape.jitter for shape in shapes)

    def peak_delay(self, since: float) -> float:
        """The longest one-way delay any link could take at any time since ``since``: a frame
        sent under an earlier, slower shape may still be on its way."""
        peak = self.max_delay()
        for when, delay in reversed(self._delay_log):
            peak = max(peak, delay)
            if when < since:
                break  # the shape in effect at ``since``
        return peak

    def blocked(self, a: str, b: str) -> Mode | None:
        return self._blocked.get((a, b))

    def partition(self, side: set[str], others: set[str], mode: Mode) -> None:
        """Cut every link between ``side`` and ``others``, both ways."""
        for a in side:
            for b in others:
                self._blocked[(a, b)] = self._blocked[(b, a)] = mode

    def heal(self) -> None:
        """Every partition ends; frames held by a silent one are delivered."""
        self._blocked.clear()
        holding, self._holding = self._holding, set()
        for sock in sorted(holding, key=lambda s: (s.conn_id, s.local)):
            sock.release_held()

    def hold(self, sock: Socket) -> None:
        self._holding.add(sock)

    def connect(
        self,
        dialer: str,
        acceptor: str,
        on_done: Callable[[Socket | None, str], None],
        on_accept: Callable[[Socket], None],
    ) -> None:
        """Dial ``acceptor``. Its end goes to ``on_accept`` one latency later; ours to
        ``on_done(socket, "")`` one round trip later, or ``on_done(None, why)`` if refused.
        Through a silent partition nothing happens at all: the dialer's timeout decides."""
        mode = self.blocked(dialer, acceptor)
        rtt = 2 * self.shape(dialer, acceptor).latency
        if mode == "silent":
            return
        if mode == "reset":
            self.scheduler.after(rtt, on_done, None, "connection refused (reset)")
            return
        self._conn_ids += 1
        ours = Socket(self, dialer, acceptor, self._conn_ids)
        theirs = Socket(self, acceptor, dialer, self._conn_ids)
        ours.peer, theirs.peer = theirs, ours
        self.scheduler.after(rtt / 2, on_accept, theirs)
        self.scheduler.after(rtt, on_done, ours, "")
