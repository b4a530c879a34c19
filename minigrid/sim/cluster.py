"""A whole simulated cluster: N nodes, full mesh, one seeded scheduler, faults, and the
invariants checked as it runs.

Faults (each logged with when it began and ended):

* :meth:`Simulation.freeze` / :meth:`~Simulation.thaw`: a node's loop stops (SIGSTOP);
* :meth:`~Simulation.block`: a node's loop is busy for a while, then catches up;
* :meth:`~Simulation.partition` / :meth:`~Simulation.heal`: links between two groups drop
  every packet (``silent``) or are reset (``reset``);
* :meth:`~Simulation.shape`: latency and jitter of a link;
* :meth:`~Simulation.drop`: one connection is reset;
* :meth:`~Simulation.jump_wall_clock`: a node's wall clock jumps (which nothing may notice).

Invariants (:meth:`Simulation.check`): every call ends exactly once; a stream never looks
complete unless it is; no message breaks the protocol (a peer refuses a credit granted past
its window as one); whenever nothing is on its way between two nodes, each direction of each
stream has its sender's credits plus its receiver's unread items equal to its capacity, so no
credit is lost or granted twice; a frozen or silently partitioned peer is declared down within
the watcher's silence window at the time of the fault (``dead_after`` for a peer that looked
healthy, longer for one that showed it was slow) plus the network's delay, and no session ends
without a fault that can explain it; after every fault has healed, every pair reconnects.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass

from ..config import GridConfig
from ..handshake import derive_key
from ..liveness import CauseKind
from ..session import GridSession
from ..state import MuxState, Role, State
from .clock import Scheduler
from .handlers import ECHO, SLEEP, sim_registry
from .ledger import Ledger
from .network import LinkShape, Mode, Network
from .node import SimNode

#: A session lost to one of these needs a fault to explain it.
_LIVENESS_KINDS = frozenset(
    {
        CauseKind.NETWORK_SILENT,
        CauseKind.REMOTE_STALLED,
        CauseKind.LOCAL_STALLED,
        CauseKind.PEER_NOT_READING,
        CauseKind.PROTOCOL_ERROR,
        CauseKind.RESET,
        CauseKind.REPLACED,
    }
)


_OTHER_ROLE = {Role.CLIENT: Role.SERVER, Role.SERVER: Role.CLIENT}


@dataclass
class Fault:
    """One fault, for explaining what happened near it."""

    kind: str
    nodes: frozenset[str]
    start: float
    end: float = math.inf
    #: For partitions: the other side (the fault cuts ``nodes`` from ``others``).
    others: frozenset[str] = frozenset()

    def touches(self, a: str, b: str) -> bool:
        if self.kind == "partition":
            return (a in self.nodes and b in self.others) or (b in self.nodes and a in self.others)
        return a in self.nodes or b in self.nodes


class Simulation:
    """N nodes on a virtual clock. Everything is reproducible from ``seed``."""

    def __init__(
        self,
        nodes: int,
        seed: int,
        *,
        config: GridConfig | None = None,
        shape: LinkShape | None = None,
        trace_lines: int = 200,
    ) -> None:
        self.config = config or GridConfig()
        self.scheduler = Scheduler(seed)
        self.network = Network(self.scheduler, shape)
        self.key = derive_key("minigrid-sim")
        self.ledger = Ledger(self.scheduler)
        self.faults: list[Fault] = []
        self._digest = hashlib.sha256()
        self._trace: deque[str] = deque(maxlen=trace_lines)
        self._checked_down: dict[tuple[str, str], int] = {}
        registry = sim_registry()
        names = [f"n{index:03d}" for index in range(nodes)]
        self.nodes = {name: SimNode(self, name, self.config, registry) for name in names}
        for node in self.nodes.values():
            node.start(names)

    @property
    def now(self) -> float:
        return self.scheduler.now

    def trace(self, line: str) -> None:
        """Note what happened; the digest of all notes identifies a run."""
        text = f"{self.scheduler.now:.6f} {line}"
        self._digest.update(text.encode())
        self._trace.append(text)

    def digest(self) -> str:
        return self._digest.hexdigest()

    def recent(self) -> list[str]:
        return list(self._trace)

    def run(self, seconds: float) -> None:
        self.scheduler.run_until(self.scheduler.now + seconds)

    def run_until(self, when: float) -> None:
        self.scheduler.run_until(when)

    def poke(self, src: str, dst: str) -> None:
        """``src`` pokes ``dst`` ("dial me now"), over the network like anything else."""
        if self.network.blocked(src, dst) is not None:
            return
        target = self.nodes[dst]
        delay = self.network.delay(src, dst)
        self.scheduler.after(delay, target.run, target.peers[src].poked)

    def links(self) -> list[tuple[str, str]]:
        names = sorted(self.nodes)
        return [(a, b) for a in names for b in names if a != b]

    def connected(self, a: str, b: str) -> bool:
        """Both ends of the pair have a session up."""
        return self.nodes[a].peers[b].up and self.nodes[b].peers[a].up

    def all_connected(self) -> bool:
        return all(self.connected(a, b) for a, b in self.links() if a < b)

    # ------------------------------------------------------------------ faults

    def freeze(self, name: str) -> None:
        """Stop ``name``'s loop until :meth:`thaw` (SIGSTOP)."""
        node = self.nodes[name]
        if node.stopped_since is None:
            node.stop()
            self.faults.append(Fault("freeze", frozenset({name}), self.now))
            self.trace(f"fault: freeze {name}")
            self._expect_detection({name}, set(self.nodes) - {name})

    def thaw(self, name: str) -> None:
        for fault in self.faults:
            if fault.kind == "freeze" and name in fault.nodes and fault.end == math.inf:
                fault.end = self.now
        self.trace(f"fault: thaw {name}")
        self.nodes[name].resume()

    def block(self, name: str, seconds: float) -> None:
        """``name``'s loop is busy for ``seconds`` (a handler hogging it), then catches up."""
        node = self.nodes[name]
        if node.stopped_since is not None:
            return
        node.stop()
        self.faults.append(Fault("block", frozenset({name}), self.now, self.now + seconds))
        self.trace(f"fault: block {name} {seconds:.3f}s")
        self.scheduler.after(seconds, node.resume)

    def partition(self, side: set[str], mode: Mode = "silent") -> None:
        """Cut ``side`` off from every other node."""
        others = set(self.nodes) - side
        self.network.partition(side, others, mode)
        self.faults.append(Fault("partition", frozenset(side), self.now, others=frozenset(others)))
        self.trace(f"fault: partition {sorted(side)} {mode}")
        if mode == "silent":
            self._expect_detection(side, others)
            self._expect_detection(others, side)

    def heal(self) -> None:
        """Every partition ends."""
        for fault in self.faults:
            if fault.kind == "partition" and fault.end == math.inf:
                fault.end = self.now
        self.trace("fault: heal")
        self.network.heal()

    def shape(self, a: str, b: str, latency: float, jitter: float = 0.0) -> None:
        self.network.set_shape(a, b, LinkShape(latency, jitter))
        self.trace(f"shape {a}-{b} {latency:.4f}+{jitter:.4f}")

    def drop(self, a: str, b: str) -> None:
        """Reset the connection between ``a`` and ``b`` at ``a``'s end."""
        self.faults.append(Fault("drop", frozenset({a, b}), self.now, self.now))
        self.trace(f"fault: drop {a}-{b}")
        node = self.nodes[a]
        node.run(node.peers[b].drop)

    def jump_wall_clock(self, name: str, seconds: float) -> None:
        """Move a node's wall clock; nothing in the grid reads it, so nothing may happen."""
        self.nodes[name].wall_offset += seconds
        self.trace(f"jump {name} wall clock {seconds:+.0f}s")

    def heal_all(self) -> None:
        """End every fault: thaw every node, heal every partition."""
        for name, node in self.nodes.items():
            if node.stopped_since is not None:
                self.thaw(name)
        self.heal()

    # ------------------------------------------------------------------ work

    def call(self, src: str, dst: str, *, timeout: float = 2.0, sleep: float | None = None) -> int:
        """``src`` calls ECHO (or SLEEP for ``sleep`` seconds) on ``dst``, on ``src``'s loop."""
        handler, payload = (ECHO, b"ping") if sleep is None else (SLEEP, f"{sleep}".encode())
        node = self.nodes[src]
        call_id = self.ledger.new_call(src, dst, timeout)
        node.run(node.call, dst, handler, payload, timeout, call_id)
        return call_id

    def stream(
        self,
        src: str,
        dst: str,
        count: int,
        *,
        read_delay: float = 0.0,
        cancel_after: float | None = None,
        timeout: float | None = None,
    ) -> None:
        """``src`` reads a GENERATE stream of ``count`` items from ``dst``."""
        node = self.nodes[src]
        payload = count.to_bytes(4, "big")
        node.run(node.open_stream, dst, payload, count, timeout, read_delay, cancel_after)

    # ------------------------------------------------------------------ invariants

    def _window(self, silence: float) -> float:
        """How long after a fault a peer may take to declare the node down: its silence
        window, the slowest frame that may already be on its way, and a microsecond for
        rounding. That frame may stretch the window too (a pong with a round-trip time of
        up to the peak delay, or a gap): by at most its allowance times the delay."""
        config = self.config
        in_flight = self.network.peak_delay(self.now - config.dead_after_max)
        stretched = min(config.dead_after_max, silence + config.lag_allowance * 2 * in_flight)
        return max(silence, stretched) + in_flight + 1e-6

    def _expect_detection(self, gone: set[str], watchers: set[str]) -> None:
        """Each watcher with a session up to a node in ``gone`` must end it in time: within
        the silence window its session had when the fault began."""
        start = self.now
        for watcher in sorted(watchers):
            for name in sorted(gone):
                link = self.nodes[watcher].peers[name]
                session = link.session
                if link.up and session is not None:
                    window = self._window(session.silence_window)
                    self.scheduler.at(
                        start + window, self._detected, watcher, name, start, len(link.downs)
                    )

    def _detected(self, watcher: str, name: str, start: float, downs: int) -> None:
        link = self.nodes[watcher].peers[name]
        if len(link.downs) > downs:
            return
        if not self._still_gone(watcher, name, start):
            return  # the fault ended before the window did: no promise to keep
        if self._stopped_between(watcher, start - self.config.dead_after_max, self.now):
            return  # the watcher's own loop stalled: it rightly gives a fresh window
        self.ledger.violation(
            f"{watcher} did not declare {name} down within {self.now - start:.3f}s"
        )

    def _still_gone(self, watcher: str, name: str, start: float) -> bool:
        """The node stayed unreachable for the whole window. A silent partition that healed
        meanwhile delivers frames sent before the fault, and those are proof of life too."""
        touching = [fault for fault in self.faults if fault.touches(watcher, name)]
        if any(f.kind == "partition" and start < f.end <= self.now for f in touching):
            return False
        return any(
            f.kind in ("freeze", "partition") and f.start <= start and f.end >= self.now
            for f in touching
        )

    def _stopped_between(self, name: str, begin: float, end: float) -> bool:
        return any(
            fault.kind in ("freeze", "block") and name in fault.nodes
            and fault.start <= end and fault.end >= begin
            for fault in self.faults
        )  # fmt: skip

    def _explained(self, a: str, b: str, when: float) -> bool:
        """A fault touching the pair near ``when`` can explain a session ending."""
        config = self.config
        delay = self.network.peak_delay(when - 2 * config.dead_after_max)
        reach = (
            config.dead_after_max + config.backoff_cap + config.handshake_timeout + 2 * delay + 1.0
        )
        slack = config.dead_after - config.ping_interval - 2 * delay
        for fault in self.faults:
            if fault.start > when or fault.end < when - reach or not fault.touches(a, b):
                continue
            if fault.kind == "block" and fault.end - fault.start < slack:
                continue  # a short stall must be survived, not explained
            return True
        return False

    def check(self) -> list[str]:
        """Every invariant that can be checked now; the violations found so far."""
        for a, b in self.links():
            link = self.nodes[a].peers[b]
            seen = self._checked_down.get((a, b), 0)
            for when, cause in link.downs[seen:]:
                if cause.kind in _LIVENESS_KINDS and not self._explained(a, b, when):
                    self.ledger.violation(f"{a} lost {b} with no fault to explain it: {cause}")
            self._checked_down[(a, b)] = len(link.downs)
            if link.counters.protocol_errors or link.counters.refused:
                self.ledger.violation(
                    f"{a}->{b}: {link.counters.protocol_errors} protocol errors, "
                    f"{link.counters.refused} refusals between well-behaved nodes"
                )
            if a < b:
                self._check_credit(a, b)
            session = link.session
            if session is not None:
                for mux in session.streams.muxes():
                    window, inbox = mux.window, mux.inbox
                    if window is not None and not 0 <= window.credits <= window.capacity:
                        self.ledger.violation(f"{a}->{b} {mux}: credits {window.credits}")
                    if inbox is not None and len(inbox) > inbox.capacity + 1:
                        self.ledger.violation(f"{a}->{b} {mux}: {len(inbox)} items unread")
        return list(self.ledger.violations)

    def _quiet(self, a: str, b: str) -> tuple[GridSession, GridSession] | None:
        """Both ends of one live session between ``a`` and ``b``, when nothing is on its way
        between them (no frame on the wire or unread, nothing queued or waiting for room)."""
        ends = self.nodes[a].peers[b], self.nodes[b].peers[a]
        for link in ends:
            sock, session = link.socket, link.session
            if sock is None or session is None or session.closed or not sock.open:
                return None
            if sock.unread or session.has_output or link.waiting_for_room:
                return None
        if ends[0].socket is None or ends[0].socket.peer is not ends[1].socket:
            return None  # each side is on a different connection (one is still ending)
        first, second = ends[0].session, ends[1].session
        assert first is not None and second is not None
        return first, second

    def _check_credit(self, a: str, b: str) -> None:
        """No credit is lost or granted twice: when nothing is on its way, each direction of
        each stream has its sender's credits plus what its receiver holds unread equal to the
        capacity the receiver announced."""
        sessions = self._quiet(a, b)
        if sessions is None:
            return
        first, second = sessions
        for sender, receiver, names in ((first, second, (a, b)), (second, first, (b, a))):
            peers = {(mux.role, mux.mux_id): mux for mux in receiver.streams.muxes()}
            for mux in sender.streams.muxes():
                other = peers.get((_OTHER_ROLE[mux.role], mux.mux_id))
                window, inbox = mux.window, other.inbox if other is not None else None
                if other is None or window is None or inbox is None or inbox.ended:
                    continue  # one side has ended it, or this direction is finished
                if MuxState.EXPIRED in (mux.state, other.state):
                    continue  # the server drops what arrives while its handler is cancelled
                if window.credits + inbox.spent != window.capacity:
                    self.ledger.violation(
                        f"{names[0]}->{names[1]} {mux}: {window.credits} credits and "
                        f"{inbox.spent} unread at the peer, capacity {window.capacity}"
                    )

    def settle(self, seconds: float | None = None) -> list[str]:
        """Heal everything, let the cluster reconnect and every call and stream finish, and
        check what must hold then; the violations found in the whole run."""
        config = self.config
        self.heal_all()
        start = self.now
        limit = seconds or (
            config.dead_after_max + config.backoff_cap + config.poke_interval
            + config.handshake_timeout + config.call_timeout + 5.0
        )  # fmt: skip
        self.run(limit)
        self.check()
        if not self.all_connected():
            down = [f"{a}-{b}" for a, b in self.links() if a < b and not self.connected(a, b)]
            self.ledger.violation(f"not reconnected {self.now - start:.1f}s after healing: {down}")
        for call_id in self.ledger.open_calls():
            record = self.ledger.calls[call_id]
            if self.now - record.issued > record.timeout + 1.0:
                self.ledger.violation(f"call {call_id} never ended")
        for stream_id, stream in enumerate(self.ledger.streams):
            if stream.outcome is None and not stream.cancelled:
                self.ledger.violation(f"stream {stream_id} never ended ({len(stream.got)} items)")
        for a, b in self.links():
            session = self.nodes[a].peers[b].session
            if session is not None and not session.streams.muxes() and session.budget.held:
                self.ledger.violation(f"{a}->{b} holds {session.budget.held} bytes for nobody")
        return list(self.ledger.violations)

    def states(self) -> dict[str, int]:
        """How many links are in each state."""
        counts: dict[str, int] = {}
        for a, b in self.links():
            state: State = self.nodes[a].peers[b].state
            counts[state.value] = counts.get(state.value, 0) + 1
        return counts
