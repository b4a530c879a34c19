"""Random schedules of work and faults, one per seed, for searching seeds for bugs.

:func:`random_run` builds a cluster of 2-5 nodes and, for a stretch of virtual time, throws
calls, streams and faults at it at random, checking the invariants after every step; then it
heals everything and checks what must hold once the dust settles. Everything comes from the
seed, so a failing seed replays exactly: ``python -m minigrid.sim --seed N`` prints its trace.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .cluster import Simulation

#: The longest link delay a schedule sets (latency plus jitter): a slow link, not a dead one.
MAX_LATENCY = 0.5
MAX_JITTER = 0.25


@dataclass
class RunResult:
    seed: int
    nodes: int
    digest: str
    violations: list[str]
    calls: int
    streams: int
    downs: int
    trace: list[str] = field(default_factory=list)


def random_run(seed: int, *, seconds: float = 60.0, nodes: int | None = None) -> RunResult:
    """One random schedule on a fresh cluster; see the module docstring."""
    plan = random.Random(seed * 7919 + 1)  # the schedule's choices; the network has its own
    size = nodes or plan.randint(2, 5)
    sim = Simulation(size, seed)
    names = sorted(sim.nodes)
    sim.run(2.0)
    actions = _actions(sim, plan, names)
    weights = [weight for weight, _ in actions]
    while sim.now < seconds:
        ((_, act),) = plan.choices(actions, weights)
        act()
        sim.run(plan.expovariate(1.0))
        if sim.check():
            break
    violations = sim.settle()
    downs = sum(len(link.downs) for node in sim.nodes.values() for link in node.peers.values())
    return RunResult(
        seed, size, sim.digest(), violations, len(sim.ledger.calls), len(sim.ledger.streams),
        downs, sim.recent(),
    )  # fmt: skip


def _actions(
    sim: Simulation, plan: random.Random, names: list[str]
) -> list[tuple[int, Callable[[], None]]]:
    def pair() -> tuple[str, str]:
        a, b = plan.sample(names, 2)
        return a, b

    def calls() -> None:
        a, b = pair()
        for _ in range(plan.randint(1, 20)):
            sleep = plan.uniform(0, 4) if plan.random() < 0.2 else None
            sim.call(a, b, timeout=plan.uniform(0.05, 3.0), sleep=sleep)

    def stream() -> None:
        a, b = pair()
        cancel = plan.uniform(0.0, 1.0) if plan.random() < 0.3 else None
        timeout = plan.uniform(0.2, 5.0) if plan.random() < 0.2 else None
        sim.stream(a, b, plan.randint(0, 40), read_delay=plan.uniform(0, 0.1),
                   cancel_after=cancel, timeout=timeout)  # fmt: skip

    def freeze() -> None:
        name = plan.choice(names)
        sim.freeze(name)
        sim.scheduler.after(plan.uniform(1.0, 15.0), sim.thaw, name)

    def block() -> None:
        sim.block(plan.choice(names), plan.uniform(0.05, 6.0))

    def partition() -> None:
        side = set(plan.sample(names, plan.randint(1, len(names) - 1)))
        sim.partition(side, "silent" if plan.random() < 0.7 else "reset")
        sim.scheduler.after(plan.uniform(1.0, 15.0), sim.heal)

    def shape() -> None:
        a, b = pair()
        sim.shape(a, b, plan.uniform(0, MAX_LATENCY), plan.uniform(0, MAX_JITTER))

    def drop() -> None:
        sim.drop(*pair())

    def jump() -> None:
        sim.jump_wall_clock(plan.choice(names), plan.choice([-3600.0, 3600.0, -86400.0, 1e6]))

    return [
        (30, calls), (15, stream), (4, freeze), (6, block), (4, partition), (6, shape),
        (3, drop), (3, jump),
    ]  # fmt: skip
