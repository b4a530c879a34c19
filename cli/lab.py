"""``minigrid lab list`` and ``minigrid lab run NAME [--quick] [--out DIR] [--json]``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cli.labs import grid_labs, heal_labs, net_labs, soak
from cli.labs.report import Panel, fresh_out, plot, write_report, write_series
from cli.labs.runner import LabCluster, LabContext, LabError
from cli.netns import NetnsError

Result = tuple[dict[str, Any], list[tuple[str, str]]]


@dataclass(frozen=True)
class Lab:
    name: str
    about: str
    run: Callable[[LabContext], Result]
    panels: tuple[Panel, ...] = tuple(grid_labs.LINK_PANELS)


LABS = {lab.name: lab for lab in (
    Lab("missed-ping", "heal under load with --unsafe-inline-heal, then the default mode",
        heal_labs.missed_ping, tuple(heal_labs.MISSED_PING_PANELS)),
    Lab("frozen-peer", "SIGSTOP a node: detection time, hedged reads, reconnect after thaw",
        grid_labs.frozen_peer),
    Lab("silent-partition", "packets between two nodes vanish: detection, in-flight calls",
        lambda lab: grid_labs.partition_lab(lab, "silent")),
    Lab("reset-partition", "packets between two nodes are answered with RST",
        lambda lab: grid_labs.partition_lab(lab, "reset")),
    Lab("nat-idle", "a NAT forgets idle flows: pings under its timeout keep them alive",
        net_labs.nat_idle, tuple(net_labs.NAT_PANELS)),
    Lab("clock-jump", "a node's wall clock jumps +-1 h: zero disconnects",
        grid_labs.clock_jump),
    Lab("reconnect-deadlock", "a full out-queue when the session drops; back within 2 s",
        grid_labs.reconnect_deadlock, tuple(grid_labs.QUEUE_PANELS)),
    Lab("dead-peer-table", "hundreds of calls queued to a peer that goes silent (Tahoe #502)",
        grid_labs.dead_peer_table, tuple(grid_labs.CALLS_PANELS)),
    Lab("heal-under-load", "heal speed presets against foreground p99, missed pings marked",
        heal_labs.heal_under_load, tuple(heal_labs.HEAL_PANELS)),
    Lab("chaos-soak", "seeded workload against seeded faults; a checker counts lost/wrong/stuck",
        soak.chaos_soak, tuple(soak.SOAK_PANELS)),
)}  # fmt: skip


def run_lab(name: str, *, quick: bool = False, out: Path | None = None, netns: bool = False,
            options: dict[str, Any] | None = None,
            shared: LabCluster | None = None) -> dict[str, Any]:  # fmt: skip
    """Run one lab; returns its summary (with the paths of what it wrote).

    ``shared``: a running cluster that phases with the same options borrow instead of
    starting their own (the tests run several quick labs on one)."""
    lab = LABS[name]
    folder = fresh_out(out, name)
    context = LabContext(folder, quick, netns=netns, shared=shared)
    context.options = dict(options or {})
    try:
        summary, sections = lab.run(context)
    finally:
        context.close()
    summary = {"lab": name, "quick": quick, **summary, "seconds": round(context.now(), 1)}
    write_series(context)
    if context.custom_plot is not None:
        context.custom_plot()
    else:
        plot(context, f"minigrid lab {name}" + (" (--quick)" if quick else ""), list(lab.panels))
    write_report(context, f"Lab: {name}", sections, summary)
    summary["report"] = str(folder / "report.md")
    summary["plot"] = str(folder / "plot.png")
    return summary


@click.group()
def lab() -> None:
    """One-command failure experiments, each with a report, a CSV and a plot."""


@lab.command("list")
def list_labs() -> None:
    """Every lab, with what it shows."""
    for entry in LABS.values():
        click.echo(f"{entry.name:20} {entry.about}")


@lab.command()
@click.argument("name", type=click.Choice(list(LABS)))
@click.option("--quick", is_flag=True, help="a short version (under 45 s; what CI runs)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where report.md, series.csv and plot.png go [./lab-NAME]")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
@click.option("--netns", is_flag=True,
              help="root: each node in its own network namespace (real iptables and NAT)")
@click.option("--duration", type=click.FloatRange(5, 86400), default=None,
              help="chaos-soak: seconds of faults [120; --quick 30]")
@click.option("--seed", type=int, default=None, help="chaos-soak: the schedule's seed [1]")
def run(name: str, quick: bool, out: Path | None, as_json: bool, netns: bool,
        duration: float | None, seed: int | None) -> None:  # fmt: skip
    """Run lab NAME: start a cluster, break it, measure, explain."""
    options = {k: v for k, v in (("duration", duration), ("seed", seed)) if v is not None}
    try:
        summary = run_lab(name, quick=quick, out=out, netns=netns, options=options)
    except (LabError, NetnsError) as exc:
        click.echo(f"error: lab {name}: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"lab {name} done in {summary['seconds']} s: {summary['report']}")
    if summary.get("verdict") == "fail":
        sys.exit(3)
