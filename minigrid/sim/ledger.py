"""What every simulated call and stream was asked to do and how it ended, checked as it goes.

The ledger is where the simulator's invariants about work live: a call ends exactly once
(a result, an error, a deadline or a disconnect), and never stays open past the end of its
session; a stream that ends normally delivered every item in order; a stream its reader
cancelled never ends normally unless its end had already arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import CallError, DeadlineExceeded, Disconnected, RemoteError
from ..session import GridSession


@dataclass
class CallRecord:
    node: str
    peer: str
    timeout: float
    issued: float
    session: GridSession | None = None
    mux_id: int = 0
    #: "ok", "remote-error", "deadline", "disconnected"; None while it runs.
    outcome: str | None = None
    ended: float = 0.0


@dataclass
class StreamRecord:
    node: str
    peer: str
    count: int
    got: list[int] = field(default_factory=list)
    #: "complete" or the error's class name; None while it runs.
    outcome: str | None = None
    cancelled: bool = False
    over_before_cancel: bool = False


def kind_of(outcome: CallError | str) -> str:
    if isinstance(outcome, str):
        return outcome
    if isinstance(outcome, DeadlineExceeded):
        return "deadline"
    if isinstance(outcome, Disconnected):
        return "disconnected"
    if isinstance(outcome, RemoteError):
        return "remote-error"
    return type(outcome).__name__


class Ledger:
    """Every call and stream of a simulation, and every broken promise found so far."""

    def __init__(self, clock: object) -> None:
        self._clock = clock
        self.calls: list[CallRecord] = []
        self.streams: list[StreamRecord] = []
        self.violations: list[str] = []
        self._by_mux: dict[tuple[str, int, int], int] = {}

    def _now(self) -> float:
        return float(self._clock.now)  # type: ignore[attr-defined]

    def violation(self, text: str) -> None:
        self.violations.append(f"t={self._now():.3f}: {text}")

    # ------------------------------------------------------------------ calls

    def new_call(self, node: str, peer: str, timeout: float) -> int:
        self.calls.append(CallRecord(node, peer, timeout, self._now()))
        return len(self.calls) - 1

    def bind(self, call_id: int, session: GridSession, mux_id: int) -> None:
        """Call ``call_id`` started now on ``session`` as ``mux_id``."""
        record = self.calls[call_id]
        record.session, record.mux_id, record.issued = session, mux_id, self._now()
        self._by_mux[(record.node, id(session), mux_id)] = call_id

    def settle(self, call_id: int, outcome: CallError | str) -> None:
        record = self.calls[call_id]
        if record.outcome is not None:
            self.violation(f"call {call_id} ({record.node}->{record.peer}) ended twice")
            return
        record.outcome = kind_of(outcome)
        record.ended = self._now()
        if record.outcome == "deadline" and record.ended - record.issued < record.timeout - 1e-6:
            self.violation(f"call {call_id} hit its deadline early")

    def call_ended(
        self,
        node: str,
        session: GridSession,
        mux_id: int,
        outcome: CallError | str,
    ) -> None:
        call_id = self._by_mux.pop((node, id(session), mux_id), None)
        if call_id is None:
            self.violation(f"{node}: an answer for call mux {mux_id} that nobody made")
            return
        self.settle(call_id, outcome)

    def session_ended(self, node: str, session: GridSession) -> None:
        """Every call of a session that ended must have failed with it, at once."""
        for (owner, key, mux_id), call_id in list(self._by_mux.items()):
            if owner == node and key == id(session):
                self.violation(f"{node}: call {call_id} (mux {mux_id}) outlived its session")
                del self._by_mux[(owner, key, mux_id)]

    def open_calls(self) -> list[int]:
        return [index for index, record in enumerate(self.calls) if record.outcome is None]

    # ------------------------------------------------------------------ streams

    def new_stream(self, node: str, peer: str, count: int) -> int:
        self.streams.append(StreamRecord(node, peer, count))
        return len(self.streams) - 1

    def stream_item(self, stream_id: int, index: int) -> None:
        record = self.streams[stream_id]
        if record.outcome is not None:
            self.violation(f"stream {stream_id} delivered an item after it ended")
        elif index != len(record.got):
            self.violation(f"stream {stream_id} delivered item {index} after {len(record.got)}")
        record.got.append(index)

    def stream_cancelled(self, stream_id: int, over: bool) -> None:
        record = self.streams[stream_id]
        record.cancelled = True
        record.over_before_cancel = over

    def stream_ended(self, stream_id: int, error: CallError | None) -> None:
        record = self.streams[stream_id]
        if record.outcome is not None:
            self.violation(f"stream {stream_id} ended twice")
            return
        if error is not None:
            record.outcome = type(error).__name__
            return
        record.outcome = "complete"
        if record.got != list(range(record.count)):
            self.violation(
                f"stream {stream_id} looked complete with {len(record.got)} of {record.count} items"
            )
        if record.cancelled and not record.over_before_cancel:
            self.violation(f"stream {stream_id} was cancelled but delivered a complete end")
