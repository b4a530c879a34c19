"""What a lab leaves behind: ``series.csv``, ``plot.png`` and ``report.md``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from cli.labs.runner import LabContext, Sample

#: A panel of the time-series plot: (metric, y label, how), ``how`` being ``links`` (one line
#: per node->peer link), ``nodes`` (one line per node) or ``points`` (a dot per sample).
Panel = tuple[str, str, str]


def fresh_out(out: Path | None, name: str) -> Path:
    folder = out or Path(f"lab-{name}")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    return folder


def write_series(lab: LabContext) -> Path:
    """Every sample (t_s, node, peer, metric, value) and every mark (metric ``mark``)."""
    path = lab.out / "series.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["t_s", "node", "peer", "metric", "value"])
        for s in sorted(lab.samples, key=lambda s: s.t):
            writer.writerow([f"{s.t:.3f}", s.node, s.peer, s.metric, f"{s.value:.6g}"])
        for t, label in lab.marks:
            writer.writerow([f"{t:.3f}", "", "", "mark", label])
    return path


def _groups(samples: list[Sample], how: str) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        if how == "links":
            key = f"{s.node}->{s.peer}"
        elif how == "nodes":
            key = f"node {s.node}"
        else:
            key = ""
        groups.setdefault(key, []).append(s)
    return groups


def _draw_marks(axis: Any, marks: list[tuple[float, str]], labels: bool) -> None:
    """Dashed lines at the marks; labels staggered in height so close ones stay readable."""
    top = axis.get_ylim()[1]
    for index, (t, label) in enumerate(marks):
        axis.axvline(t, color="grey", linestyle="--", linewidth=0.8)
        if labels:
            axis.annotate(label, (t, top), xytext=(2, -8 - 9 * (index % 3)),
                          textcoords="offset points", fontsize=7, va="top",
                          color="dimgrey")  # fmt: skip


def _draw_phases(axis: Any, phases: list[tuple[str, float, float]], labels: bool) -> None:
    """Shade each phase of a lab that has several (each on a cluster of its own)."""
    if len(phases) < 2:
        return
    for index, (name, start, end) in enumerate(phases):
        axis.axvspan(start, end, color=("#eef3fb", "#fbf3ea")[index % 2], zorder=0)
        if labels:
            axis.annotate(name, (start, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                          textcoords="offset points", fontsize=8, color="grey")  # fmt: skip


def _broken(xs: list[float], ys: list[float], gap: float = 1.5) -> tuple[list[float], list[float]]:
    """The points with a NaN wherever no sample came for ``gap`` seconds (between phases, or
    while a node did not answer), so a line is not drawn across what was not measured."""
    out_x: list[float] = []
    out_y: list[float] = []
    for index, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if index and x - xs[index - 1] > gap:
            out_x.append(xs[index - 1] + 0.25)  # a step-post line ends one sample later
            out_y.append(float("nan"))
        out_x.append(x)
        out_y.append(y)
    return out_x, out_y


def plot(lab: LabContext, title: str, panels: list[Panel],
         span: tuple[float, float] | None = None) -> Path:  # fmt: skip
    """``plot.png``: one panel per metric over time, the marks as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(panels), 1, figsize=(11, 2.4 * len(panels) + 0.7),
                                sharex=True, squeeze=False)  # fmt: skip
    for row, (axis, (metric, label, how)) in enumerate(zip(axes[:, 0], panels, strict=True)):
        groups = _groups(lab.series(metric), how)
        if len(groups) > 10:  # 12 links: the default cycle of 10 colours would repeat
            axis.set_prop_cycle(color=[plt.get_cmap("tab20")(i) for i in range(20)])
        for key, points in sorted(groups.items()):
            xs, ys = _broken([p.t for p in points], [p.value for p in points])
            if how == "points":
                axis.plot(xs, ys, ".", markersize=3, label=label)
            else:
                axis.plot(xs, ys, linewidth=1, label=key, drawstyle="steps-post")
        if metric == "get_latency_s":
            failed = lab.series("get_failed_s")
            if failed:
                axis.plot([p.t for p in failed], [p.value for p in failed], "rx",
                          markersize=5, label="failed GET")  # fmt: skip
        _draw_phases(axis, lab.phases, labels=row == 0)
        _draw_marks(axis, lab.marks, labels=row == 0)
        axis.set_ylabel(label, fontsize=8)
        if 1 < len(groups) <= 12 or metric == "get_latency_s":
            axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.005, 1.0),
                        ncol=1 if len(groups) <= 6 else 2)  # fmt: skip
    if span is not None:
        axes[-1, 0].set_xlim(*span)
    axes[-1, 0].set_xlabel("seconds since the lab started")
    figure.suptitle(title)
    figure.tight_layout()
    path = lab.out / "plot.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(lab: LabContext, title: str, sections: list[tuple[str, str]],
                 summary: dict[str, Any]) -> Path:  # fmt: skip
    lines = [f"# {title}", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    lines += ["## Summary (`--json`)", "", "```json", json.dumps(summary, indent=2), "```", "",
              "Files: `series.csv` (every sample: t_s, node, peer, metric, value; the marks as "
              "metric `mark`), `plot.png`, and what each node logged during each phase in "
              "`logs/`.", ""]  # fmt: skip
    path = lab.out / "report.md"
    path.write_text("\n".join(lines))
    return path


__all__ = ["Panel", "fresh_out", "plot", "write_report", "write_series"]
