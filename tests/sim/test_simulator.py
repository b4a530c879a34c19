"""Whole clusters of real sessions in one process, on a virtual clock (minigrid.sim).

Per CI run: ``SEEDS`` random schedules of 60 virtual seconds each (``MINIGRID_SIM_SEEDS``,
default 24) and ``EXAMPLES`` Hypothesis-driven stateful runs of up to ``STEPS`` rules each
(``MINIGRID_SIM_EXAMPLES``, default 30), plus the fixed scenarios below. A longer search is
``MINIGRID_SIM_SEEDS=2000 pytest tests/sim`` or ``python -m minigrid.sim --seeds 0:2000``;
a failing seed replays exactly with ``python -m minigrid.sim --seed N --trace``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from minigrid import session as session_module
from minigrid.config import GridConfig
from minigrid.liveness import CauseKind
from minigrid.mux import End
from minigrid.muxtable import StreamTable
from minigrid.records import Mux
from minigrid.sim import Simulation
from minigrid.sim.schedule import random_run
from minigrid.state import Role

SEEDS = int(os.environ.get("MINIGRID_SIM_SEEDS", "24"))
EXAMPLES = int(os.environ.get("MINIGRID_SIM_EXAMPLES", "30"))
STEPS = 25


@pytest.fixture(autouse=True)
def quiet_grid() -> Iterator[None]:
    """The simulated nodes log what real ones would: thousands of lines nobody reads here."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def explain(sim: Simulation, violations: list[str]) -> str:
    return (
        f"seed {sim.scheduler.seed}: {violations[:3]}\n"
        f"replay: python -m minigrid.sim --seed {sim.scheduler.seed} --trace\n"
        + "\n".join(sim.recent()[-40:])
    )


# ------------------------------------------------------------------ random schedules


@pytest.mark.parametrize("seed", range(SEEDS))
def test_a_random_schedule_keeps_every_promise(seed: int) -> None:
    result = random_run(seed)
    assert result.violations == [], (
        f"seed {seed}: {result.violations[:3]}\n"
        f"replay: python -m minigrid.sim --seed {seed} --trace\n" + "\n".join(result.trace[-40:])
    )
    assert result.calls > 0


def test_a_seed_replays_exactly() -> None:
    first, second = random_run(11), random_run(11)
    assert first.digest == second.digest
    assert first.trace == second.trace
    assert (first.calls, first.streams, first.downs) == (second.calls, second.streams, second.downs)
    assert random_run(12).digest != first.digest


# ------------------------------------------------------------------ fixed scenarios


@pytest.mark.parametrize("size", [3, 8])
def test_a_frozen_node_is_declared_down_by_every_peer_within_the_window(size: int) -> None:
    sim = Simulation(size, seed=size)
    sim.run(3.0)
    assert sim.all_connected()
    frozen_at = sim.now
    sim.freeze("n001")
    sim.run(sim.config.dead_after + 1.0)
    for name, node in sim.nodes.items():
        if name == "n001":
            continue
        ((when, cause),) = node.peers["n001"].downs
        assert 0 < when - frozen_at <= sim.config.dead_after + 0.01, (name, when, cause)
        assert cause.kind is CauseKind.NETWORK_SILENT
        assert all(not link.downs for peer, link in node.peers.items() if peer != "n001")
    assert sim.settle() == [], explain(sim, sim.ledger.violations)


@pytest.mark.parametrize("mode", ["silent", "reset"])
def test_a_partitioned_half_is_declared_down_on_both_sides(mode: str) -> None:
    sim = Simulation(6, seed=3)
    sim.run(3.0)
    start = sim.now
    side = {"n000", "n001", "n002"}
    sim.partition(side, mode)  # type: ignore[arg-type]
    sim.run(sim.config.dead_after + 1.0)
    for a, b in sim.links():
        downs = sim.nodes[a].peers[b].downs
        if (a in side) != (b in side):
            assert downs and downs[0][0] - start <= sim.config.dead_after + 0.01, (a, b)
        else:
            assert not downs, (a, b, downs)
    assert sim.settle() == [], explain(sim, sim.ledger.violations)


def test_a_healthy_but_slow_cluster_never_loses_a_peer() -> None:
    sim = Simulation(5, seed=5)
    names = sorted(sim.nodes)
    for a in names:
        for b in names:
            if a < b:
                sim.shape(a, b, 0.4, 0.25)  # slow and jittery, but not dead
    sim.run(5.0)
    rnd = sim.scheduler.random
    for second in range(120):
        if second % 7 == 0:  # a loop busy for up to 1.2 s now and then: slow, not dead
            sim.block(rnd.choice(names), rnd.uniform(0.1, 1.2))
        if second % 11 == 0:
            sim.jump_wall_clock(rnd.choice(names), rnd.choice([-3600.0, 3600.0]))
        a, b = rnd.sample(names, 2)
        sim.call(a, b, timeout=5.0)
        sim.stream(b, a, 20, read_delay=0.05)
        sim.run(1.0)
        assert sim.check() == [], explain(sim, sim.ledger.violations)
    downs = [(a, b, link.downs) for a in names for b, link in sim.nodes[a].peers.items()]
    assert all(not found for _, _, found in downs), downs
    assert sim.settle() == [], explain(sim, sim.ledger.violations)
    outcomes = {record.outcome for record in sim.ledger.calls}
    assert outcomes == {"ok"}, outcomes


def busy_in_bursts(config: GridConfig) -> dict[str, list[tuple[float, CauseKind]]]:
    """On fast links, n002's loop is blocked in bursts that grow from 0.5 s to 2.2 s, with
    0.75 s of catching up between them; what each peer saw of it (``downs``)."""
    sim = Simulation(3, seed=21, config=config)
    sim.run(3.0)
    assert sim.all_connected()
    for burst in (0.5, 0.8, 1.1, 1.4, 1.7, 2.0, 2.2):
        sim.block("n002", burst)
        sim.run(burst + 0.75)
    assert sim.check() == [], explain(sim, sim.ledger.violations)
    assert sim.settle() == [], explain(sim, sim.ledger.violations)
    return {
        name: [(when, cause.kind) for when, cause in sim.nodes[name].peers["n002"].downs]
        for name in ("n000", "n001")
    }


def test_a_node_busy_in_growing_bursts_that_reports_its_lag_is_never_declared_down() -> None:
    """Each burst's lag is in n002's next pongs, so its peers give it the time its lag calls
    for (up to ``dead_after_max``) and it is never cut off, though the last bursts are longer
    than ``dead_after``."""
    config = GridConfig()
    assert config.dead_after < 2.2
    assert busy_in_bursts(config) == {"n000": [], "n001": []}


def test_with_a_fixed_window_the_same_bursts_are_declared_down() -> None:
    """The control: with the window fixed at ``dead_after`` (no allowance for a reported
    lag), the bursts longer than the window cut n002 off."""
    downs = busy_in_bursts(GridConfig(lag_allowance=0.0))
    assert all(downs[name] for name in ("n000", "n001")), downs


def test_every_pair_reconnects_once_every_fault_heals() -> None:
    sim = Simulation(5, seed=9)
    sim.run(3.0)
    sim.freeze("n004")
    sim.partition({"n000", "n001"}, "silent")
    sim.shape("n002", "n003", 0.5, 0.25)
    sim.drop("n002", "n003")
    for _ in range(30):
        sim.call("n002", "n003", timeout=1.0)
        sim.call("n000", "n003", timeout=1.0)
    sim.run(20.0)
    assert not sim.all_connected()
    assert sim.settle() == [], explain(sim, sim.ledger.violations)
    assert sim.all_connected()
    after = [sim.call(a, b) for a, b in sim.links()]
    sim.run(3.0)  # n002-n003 is slow: up to 1.5 s a round trip
    assert {sim.ledger.calls[i].outcome for i in after} == {"ok"}


def test_a_node_that_never_notices_silence_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker can fail: a session that ignores silence breaks the detection promise."""
    original = session_module.GridSession._check_liveness  # noqa: SLF001 - the bug under test

    def deaf(self: session_module.GridSession, now: float) -> None:
        self.last_seen = max(self.last_seen, now - 1.0)
        original(self, now)

    monkeypatch.setattr(session_module.GridSession, "_check_liveness", deaf)
    sim = Simulation(3, seed=1)
    sim.run(3.0)
    sim.freeze("n002")
    sim.run(10.0)
    assert any("did not declare n002 down" in v for v in sim.check())


def test_a_credit_that_never_goes_back_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The credit invariant can fail: a reader that takes one item without granting its credit
    back leaves the stream one credit short (it still completes, so nothing else notices)."""
    original = StreamTable.take_item
    lost = []

    def forgetful(self: StreamTable, mux: Mux) -> bytes | End | None:
        inbox = mux.inbox
        if not lost and mux.role is Role.CLIENT and inbox is not None and inbox.spent:
            lost.append(mux)
            return inbox.take()  # taken, and its credit never goes back
        return original(self, mux)

    monkeypatch.setattr(StreamTable, "take_item", forgetful)
    sim = Simulation(2, seed=1)
    sim.run(3.0)
    sim.stream("n000", "n001", 40, read_delay=0.05)
    violations: list[str] = []
    while not violations and sim.now < 10.0:
        sim.run(0.01)
        violations = sim.check()
    assert lost
    assert violations and "credits and" in violations[0], violations


# ------------------------------------------------------------------ Hypothesis, stateful


NODE = st.integers(0, 3)


class GridCluster(RuleBasedStateMachine):
    """Random schedules of work and faults, chosen and shrunk by Hypothesis; the invariants
    are checked after every step and once everything has healed."""

    def __init__(self) -> None:
        super().__init__()
        self.sim: Simulation | None = None

    def name(self, index: int) -> str:
        assert self.sim is not None
        return sorted(self.sim.nodes)[index % len(self.sim.nodes)]

    def pair(self, a: int, b: int) -> tuple[str, str]:
        first = self.name(a)
        second = self.name(b if self.name(b) != first else a + 1)
        return first, second

    @initialize(nodes=st.integers(2, 4), seed=st.integers(0, 2**32 - 1))
    def start(self, nodes: int, seed: int) -> None:
        self.sim = Simulation(nodes, seed)
        self.sim.run(2.0)

    @rule(a=NODE, b=NODE, count=st.integers(1, 20), timeout=st.floats(0.05, 3.0))
    def calls(self, a: int, b: int, count: int, timeout: float) -> None:
        assert self.sim is not None
        src, dst = self.pair(a, b)
        for _ in range(count):
            self.sim.call(src, dst, timeout=timeout)

    @rule(a=NODE, b=NODE, sleep=st.floats(0.0, 4.0), timeout=st.floats(0.05, 3.0))
    def slow_call(self, a: int, b: int, sleep: float, timeout: float) -> None:
        assert self.sim is not None
        self.sim.call(*self.pair(a, b), timeout=timeout, sleep=sleep)

    @rule(
        a=NODE,
        b=NODE,
        count=st.integers(0, 40),
        read_delay=st.floats(0.0, 0.2),
        cancel_after=st.none() | st.floats(0.0, 1.0),
        timeout=st.none() | st.floats(0.1, 5.0),
    )
    def stream(
        self,
        a: int,
        b: int,
        count: int,
        read_delay: float,
        cancel_after: float | None,
        timeout: float | None,
    ) -> None:
        assert self.sim is not None
        src, dst = self.pair(a, b)
        self.sim.stream(
            src, dst, count, read_delay=read_delay, cancel_after=cancel_after, timeout=timeout
        )

    @rule(node=NODE, seconds=st.floats(0.5, 15.0))
    def freeze(self, node: int, seconds: float) -> None:
        assert self.sim is not None
        name = self.name(node)
        self.sim.freeze(name)
        self.sim.scheduler.after(seconds, self.sim.thaw, name)

    @rule(node=NODE, seconds=st.floats(0.01, 6.0))
    def block(self, node: int, seconds: float) -> None:
        assert self.sim is not None
        self.sim.block(self.name(node), seconds)

    @precondition(lambda self: self.sim is not None and len(self.sim.nodes) > 2)
    @rule(node=NODE, mode=st.sampled_from(["silent", "reset"]), seconds=st.floats(0.5, 15.0))
    def partition(self, node: int, mode: str, seconds: float) -> None:
        assert self.sim is not None
        self.sim.partition({self.name(node)}, mode)  # type: ignore[arg-type]
        self.sim.scheduler.after(seconds, self.sim.heal)

    @rule(a=NODE, b=NODE, latency=st.floats(0.0, 0.5), jitter=st.floats(0.0, 0.25))
    def shape(self, a: int, b: int, latency: float, jitter: float) -> None:
        assert self.sim is not None
        self.sim.shape(*self.pair(a, b), latency, jitter)

    @rule(a=NODE, b=NODE)
    def drop(self, a: int, b: int) -> None:
        assert self.sim is not None
        self.sim.drop(*self.pair(a, b))

    @rule(node=NODE, seconds=st.sampled_from([-86400.0, -3600.0, 3600.0, 1e6]))
    def jump_wall_clock(self, node: int, seconds: float) -> None:
        assert self.sim is not None
        self.sim.jump_wall_clock(self.name(node), seconds)

    @rule(seconds=st.floats(0.01, 8.0))
    def advance(self, seconds: float) -> None:
        assert self.sim is not None
        self.sim.run(seconds)

    @invariant()
    def promises_hold(self) -> None:
        if self.sim is not None:
            violations = self.sim.check()
            assert violations == [], explain(self.sim, violations)

    def teardown(self) -> None:
        if self.sim is not None:
            violations = self.sim.settle()
            assert violations == [], explain(self.sim, violations)


GridCluster.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_hypothesis_drives_random_clusters = GridCluster.TestCase
