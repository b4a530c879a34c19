"""Labs around healing: pings missed while a node heals on its event loop, and heal speed
against foreground latency."""

from __future__ import annotations

from typing import Any

from cli.adminclient import AdminError
from cli.labs.runner import LabCluster, LabContext, LabError, LogLine, quoted
from cli.labs.workload import (
    MIB,
    Get,
    Reader,
    fill,
    finish_heals,
    gets_summary,
    heal_drive,
    percentile,
    rounded,
)
from minigrid.config import profile, scaled

HEAL_OPTIONS: dict[str, Any] = {"heal_speed": "fastest", "drive_check_interval": 0.5,
                                "mrf_delay": 0.2, "scanner_interval": 30}  # fmt: skip
#: MinIO's timings, 40 times faster: ping 0.25 s, a peer dropped after 0.5 s of silence, a
#: stream cancelled after 1.5 s without its ping. Hashing and erasure-coding one 256 MiB slice on
#: the loop takes about a second of CPU on a 2020s core: twice the window, on any machine load.
LIVENESS_SCALE = 0.025
MINIO_SCALED = scaled(profile("minio"), LIVENESS_SCALE)
STARVED = r"canceling remote connection|remote-stalled"
MISSED_PING_PANELS = [
    ("loop_lag_s", "loop lag (s)", "nodes"),
    ("loop_busy_s", "loop busy (s)", "nodes"),
    ("connected", "link up", "links"),
    ("get_latency_s", "GET via node 0 (s)", "points"),
]
HEAL_PANELS = MISSED_PING_PANELS
Result = tuple[dict[str, Any], list[tuple[str, str]]]


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _wipe(cl: LabCluster, node: int, drive: int = 0) -> None:
    cl.admin.call(node, "POST", "/fault/wipe-drive", drive=drive)


def _reader(lab: LabContext, cl: LabCluster, bucket: str, objects: dict[str, bytes]) -> Reader:
    def record(get: Get) -> None:
        lab.record(0, "get_latency_s" if get.ok else "get_failed_s", get.seconds, t=get.start)

    reader = Reader(cl.cluster, bucket, objects, clock=lab.now, on_get=record)
    reader.start()
    if not reader.wait_gets(5, 60):
        raise LabError("the reader did not get 5 objects in 60 s")
    return reader


def _causes(cl: LabCluster) -> list[str]:
    """The kinds of the last disconnect cause of every link that has one."""
    kinds = set()
    for node in range(cl.count):
        try:
            links = cl.top(node)["links"]
        except AdminError:
            continue
        kinds |= {str(link["cause"]).split(":")[0] for link in links if link.get("cause")}
    return sorted(kinds)


# --- missed pings ---------------------------------------------------------------------------


def missed_ping(lab: LabContext) -> Result:
    size = 256 * MIB if lab.quick else 384 * MIB
    count = 1
    base = {**HEAL_OPTIONS, "profile": "minio", "liveness_scale": LIVENESS_SCALE}
    summary: dict[str, Any] = {}
    for mode, extra in (("unsafe", {"unsafe_inline_heal": "true",
                                    "unsafe_heal_slice_mib": size // MIB}),
                        ("default", {})):  # fmt: skip
        summary[mode] = _missed_ping_phase(lab, mode, {**base, **extra}, count, size)
    unsafe, default = summary["unsafe"], summary["default"]
    summary["reproduced"] = bool(unsafe["disconnects"] or unsafe["cancel_line"])
    summary["default_clean"] = default["disconnects"] == 0 and not default["cancel_line"]
    lines = lab.log_lines(STARVED, "unsafe") + lab.log_lines(r"local loop stalled", "unsafe")
    return summary, _missed_ping_text(summary, count, size, lines)


def _missed_ping_phase(lab: LabContext, mode: str, options: dict[str, Any], count: int,
                       size: int) -> dict[str, Any]:  # fmt: skip
    with lab.running(mode, options) as cl:
        big = cl.new_bucket("big")
        fill(cl.cluster, big, count, size)
        small = cl.new_bucket("small")
        reader = _reader(lab, cl, small, fill(cl.cluster, small, 8, MIB))
        before = cl.reconnects()
        start = lab.mark(f"{mode}: wipe node 1 drive 0")

        def starved() -> bool:
            return mode == "unsafe" and bool(lab.live_lines(STARVED, [0, 2, 3]))

        run = heal_drive(cl.admin, 1, lambda: _wipe(cl, 1), stop_when=starved, timeout=150)
        end = lab.mark(f"{mode}: " + ("a peer gave up" if mode == "unsafe" and not run.finished
                                     else "healed"))  # fmt: skip
        lab.hold(1.0 if mode == "unsafe" else 0.5)
        reader.stop()
        disconnects = cl.reconnects() - before
        causes = _causes(cl) if disconnects else []
        if mode == "unsafe":
            finish_heals(cl.admin, cl.count, 1, timeout=150)
    lines = lab.log_lines(r"canceling remote connection", mode) or lab.log_lines(
        r"remote-stalled", mode)  # fmt: skip
    # What a dropped session cut short, by handler: "cancelled 4 handlers (READ_METADATA x4)".
    handlers = lab.log_lines(r"cancelled [1-9]\d* handlers \(", mode)
    return {
        "disconnects": disconnects,
        "causes": causes,
        "cancel_line": lines[0].quoted()[:400] if lines else None,
        "handlers_line": handlers[0].quoted()[:400] if handlers else None,
        "worst_loop_lag_s": rounded(_worst(lab, "loop_lag_s", start, end, run.loop_lag)),
        "worst_loop_busy_s": rounded(_worst(lab, "loop_busy_s", start, end, run.loop_busy)),
        "heal_s": round(run.seconds, 1),
        "heal_finished": run.finished,
        "gets": gets_summary(reader.between(start, end)),
    }


def _worst(lab: LabContext, metric: str, start: float, end: float,
           polled: list[float]) -> float | None:  # fmt: skip
    sampled = lab.worst(metric, node=1, since=start, until=end + 1.0)
    values = [v for v in (sampled, max(polled, default=None)) if v is not None]
    return max(values, default=None)


def _missed_ping_text(s: dict[str, Any], count: int, size: int,
                      lines: list[LogLine]) -> list[tuple[str, str]]:  # fmt: skip
    unsafe, default = s["unsafe"], s["default"]
    return [
        ("The failure", """
A node that does heavy CPU work on the thread that also answers pings looks dead to its peers.
MinIO logs `canceling remote connection ... not seen for ...` while a node heals or scans:
its grid's pings and stream pings miss their deadlines because the process is busy hashing and
erasure coding, and the peers cancel its streams and drop its connections, which makes the
heal fail and start over.
"""),
        ("What happened", f"""
Two clusters, both on MinIO's liveness timings shrunk {1 / LIVENESS_SCALE:.0f} times
(`profile=minio`, `liveness_scale={LIVENESS_SCALE}`: ping every
{MINIO_SCALED.ping_interval:g} s, a connection dropped after {MINIO_SCALED.dead_after:g} s of
silence, a stream cancelled after {MINIO_SCALED.stream_timeout:g} s without its ping). Each
held {count} x {size // MIB} MiB; drive 0 of node 1 was wiped and node 1 rebuilt it while a
client read 1 MiB objects through node 0.

{_table(["", "unsafe (`--unsafe-inline-heal`)", "default"], [
    ["node 1's worst loop lag", f"{unsafe['worst_loop_lag_s']} s",
     f"{default['worst_loop_lag_s']} s"],
    ["node 1's loop held by its own work (busy)", f"{unsafe['worst_loop_busy_s']} s",
     f"{default['worst_loop_busy_s']} s"],
    ["grid sessions lost", f"**{unsafe['disconnects']}**", f"**{default['disconnects']}**"],
    ["causes", ", ".join(unsafe["causes"]) or "-", ", ".join(default["causes"]) or "-"],
    ["heal", f"{unsafe['heal_s']} s" + ("" if unsafe["heal_finished"] else
                                        " (stopped once a peer gave up)"),
     f"{default['heal_s']} s"],
    ["GETs ok / failed", f"{unsafe['gets']['ok']} / {unsafe['gets']['failed']}",
     f"{default['gets']['ok']} / {default['gets']['failed']}"],
])}

*Loop lag* is how late the loop's timer fired: work on the loop and a loaded machine both
raise it. *Loop busy* is the CPU the loop's own thread burned between two ticks: only work on
the loop raises it, so a busy time close to the lag says "our own work held the loop", a busy
time near zero with a high lag says "the machine was loaded".

The line the peers logged in the unsafe run:

```
{unsafe['cancel_line'] or '(none)'}
```

and the line that says which handlers the dropped sessions cut short:

```
{unsafe['handlers_line'] or '(none: no handler was running when a session dropped)'}
```
"""),
        ("Key log lines (unsafe run)", quoted(lines, 6)),
        ("What the code does about it", """
- The healer and scanner hash and erasure-code in a thread pool (`heal/cpu.py`); zfec and
  xxhash release the GIL, so the loop stays free to answer pings and the default run loses no
  session. The unsafe mode runs the same work on the loop in large slices only to show the
  failure.
- Pongs carry the responder's loop lag, so a peer that gives up says *why*: "remote loop
  stalled ... at last contact" (`remote-stalled`) rather than "no traffic at all".
- The starved node, whose own timers fired late, logs `local loop stalled` and does not accuse
  its peers for that window (the local-pause guard).
- A lost session's line counts what it failed and names the handlers it cancelled
  (`cancelled 4 handlers (READ_METADATA x4)`); the server's cancel line for an orphaned stream
  names the handler and the subroute.
"""),
    ]


# --- heal speed against foreground latency --------------------------------------------------


def heal_under_load(lab: LabContext) -> Result:
    presets: tuple[str, ...] = ("fastest", "default")
    count, size, window = 24, 4 * MIB, 6.0
    if not lab.quick:
        presets, count, size, window = ("fastest", "fast", "default", "slow"), 32, 8 * MIB, 15.0
    results: dict[str, Any] = {}
    with lab.running("heal", {**HEAL_OPTIONS, "scanner_interval": 5}) as cl:
        bucket = cl.new_bucket("heal")
        reader = _reader(lab, cl, bucket, fill(cl.cluster, bucket, count, size))
        idle_start = lab.now()
        lab.hold(3.0 if lab.quick else 6.0)
        idle = gets_summary(reader.between(idle_start, lab.now()))
        for preset in presets:
            results[preset] = _heal_preset(lab, cl, reader, preset, count, size, window)
        reader.stop()
    summary = {"objects": count, "object_mib": size // MIB, "idle_gets": idle,
               "presets": results}  # fmt: skip
    lab.custom_plot = lambda: _heal_plot(lab, summary)
    return summary, _heal_text(summary, window)


def _heal_preset(lab: LabContext, cl: LabCluster, reader: Reader, preset: str, count: int,
                 size: int, window: float) -> dict[str, Any]:  # fmt: skip
    for node in range(cl.count):
        cl.admin.call(node, "POST", "/scanner", speed=preset)
    before = cl.reconnects()
    start = lab.mark(f"{preset}: wipe")
    windowed = window if preset in ("slow", "slowest") else None
    run = heal_drive(cl.admin, 1, lambda: _wipe(cl, 1), window=windowed, timeout=150)
    end = lab.mark(f"{preset}: " + ("healed" if run.finished else f"{window:g} s measured"))
    missed = cl.reconnects() - before
    if missed:
        lab.mark(f"{preset}: {missed} sessions lost")
    if not run.finished:
        finish_heals(cl.admin, cl.count, 1)  # the next preset starts from a whole drive
    # Finished: every object of the set is whole again (the drive healer rewrote most; MRF,
    # called by the reader's GETs, may have healed a few first). A window: what it rewrote.
    healed = count if run.finished else run.objects_healed
    gets = [g.seconds for g in reader.between(start, end) if g.ok]
    return {
        "seconds": round(run.seconds, 1),
        "finished": run.finished,
        "objects_healed": healed,
        "heal_mbps": round(healed * size / MIB / max(run.seconds, 1e-3), 1),
        "drive_write_mbps": round(run.bytes_written / MIB / max(run.seconds, 1e-3), 1),
        "get_p50_s": rounded(percentile(gets, 0.5)),
        "get_p99_s": rounded(percentile(gets, 0.99)),
        "gets": len(gets),
        "missed_pings": missed,
        "worst_loop_busy_s": rounded(max(run.loop_busy, default=None)),
        "start_s": round(start, 1),
        "end_s": round(end, 1),
    }


def _heal_text(s: dict[str, Any], window: float) -> list[tuple[str, str]]:
    rows = [[p, r["heal_mbps"], r["drive_write_mbps"], r["get_p50_s"], r["get_p99_s"],
             r["missed_pings"], f"{r['seconds']}" + ("" if r["finished"] else " (window)")]
            for p, r in s["presets"].items()]  # fmt: skip
    table = _table(["preset", "heal MB/s (object data)", "drive writes MB/s", "GET p50 (s)",
                    "GET p99 (s)", "missed pings (sessions lost)", "heal time (s)"], rows)
    idle = s["idle_gets"]
    missed = sum(r["missed_pings"] for r in s["presets"].values())
    return [
        ("The failure", """
Healing competes with the foreground for disks, network and CPU. Heal too slowly and a second
failure can find data still short of redundancy; heal too fast and the foreground's latency
suffers, and, if the work runs where pings are answered, peers start dropping the healing
node. MinIO exposes speed presets for this trade-off (fastest ... slowest).
"""),
        ("What happened", f"""
{s['objects']} objects of {s['object_mib']} MiB on 4 nodes x 2 drives (4+4). For each preset,
drive 0 of node 1 was wiped and node 1's drive healer refilled it while a client read random
objects through node 0, one at a time. Idle GETs (no heal): median {idle['p50_s']} s, p99
{idle['p99_s']} s. Slow presets are measured over a {window:g} s window and then finished at
`fastest`, so every preset starts from a whole drive.

{table}

Sessions lost over all presets: **{missed}**. `plot.png` shows heal MB/s against GET p99 (a
preset that missed pings is drawn in red) and the GET latencies over time with each preset's
window.
"""),
        ("What the code does about it", """
- The drive healer paces itself with MinIO's dynamic sleeper: after each object it sleeps a
  factor times the time the object took, up to a cap (`heal/pace.py`; fastest 0, fast 1 x up
  to 100 ms, default 2 x up to 1 s, slow 10 x up to 15 s).
- It waits briefly while the node has many S3 requests in flight (MinIO's `waitForLowIO`),
  and never stops entirely.
- Hashing and erasure coding run in threads, so no preset holds the event loop: pings go on
  being answered at any speed (the missed-ping lab shows the opposite).
- `benchmarks/heal.py` measures the same at 1 GiB and prints JSON.
"""),
    ]


def _heal_plot(lab: LabContext, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (scatter, timeline) = plt.subplots(1, 2, figsize=(13, 4.8),
                                               gridspec_kw={"width_ratios": [1, 1.6]})  # fmt: skip
    for preset, result in summary["presets"].items():
        x, y = result["heal_mbps"], result["get_p99_s"] or 0.0
        colour = "red" if result["missed_pings"] else "tab:blue"
        scatter.scatter(x, y, color=colour, s=50, zorder=3)
        label = preset + (f" ({result['missed_pings']} missed pings)"
                          if result["missed_pings"] else "")  # fmt: skip
        scatter.annotate(label, (x, y), fontsize=8, xytext=(5, 4), textcoords="offset points")
    idle = summary["idle_gets"]["p99_s"]
    if idle:
        scatter.axhline(idle, color="grey", linestyle="--", linewidth=0.8)
        scatter.annotate("idle p99", (0, idle), fontsize=7, xytext=(2, 2),
                         textcoords="offset points")  # fmt: skip
    scatter.set_xlim(left=0)
    scatter.set_ylim(bottom=0)
    scatter.set_xlabel("heal speed (MB/s of object data)")
    scatter.set_ylabel("foreground GET p99 (s)")
    scatter.set_title("heal speed vs foreground p99 (red: missed pings)", fontsize=9)
    gets = lab.series("get_latency_s")
    timeline.plot([g.t for g in gets], [g.value for g in gets], ".", markersize=3,
                  color="tab:blue", label="GET via node 0")  # fmt: skip
    failed = lab.series("get_failed_s")
    if failed:
        timeline.plot([g.t for g in failed], [g.value for g in failed], "rx", markersize=5,
                      label="failed GET")  # fmt: skip
    for preset, result in summary["presets"].items():
        colour = "mistyrose" if result["missed_pings"] else "honeydew"
        timeline.axvspan(result["start_s"], result["end_s"], color=colour, zorder=0)
        timeline.annotate(preset, (result["start_s"], 1.0), xycoords=("data", "axes fraction"),
                          xytext=(2, -10), textcoords="offset points", fontsize=8)  # fmt: skip
    for t, label in lab.marks:
        if "sessions lost" in label:
            timeline.axvline(t, color="red", linewidth=1)
    timeline.set_xlabel("seconds since the lab started")
    timeline.set_ylabel("GET latency (s)")
    timeline.set_title("GET latency over time (shaded: each preset's heal)", fontsize=9)
    timeline.legend(fontsize=7, loc="upper right")
    figure.suptitle("minigrid lab heal-under-load" + (" (--quick)" if lab.quick else ""))
    figure.tight_layout()
    figure.savefig(lab.out / "plot.png", dpi=110)
    plt.close(figure)


__all__ = ["HEAL_PANELS", "MISSED_PING_PANELS", "heal_under_load", "missed_ping"]
