"""Labs around healing and the network under it: missed pings, heal speed against foreground
latency, and a NAT that forgets idle flows."""

from __future__ import annotations

import re
from typing import Any

from cli.labs.runner import (
    MIB,
    LabContext,
    LabError,
    Reader,
    fill,
    percentile,
    quoted,
    rounded,
)

HEAL_PANELS = [
    ("loop_lag_s", "loop lag (s)", "nodes"),
    ("heal_bytes", "bytes healed", "nodes"),
    ("get_latency_s", "GET via node 0 (s)", "points"),
    ("connected", "link up", "links"),
]
QUICK_HEAL = {"heal_speed": "fastest", "drive_check_interval": 0.5, "mrf_delay": 0.2,
              "scanner_interval": 0.5}  # fmt: skip
STARVED = r"(canceling remote connection|remote-stalled)"


def _healing(lab: LabContext, node: int) -> bool:
    assert lab.admin is not None
    return bool(lab.admin.call(node, "GET", "/heal/status")["drives_healing"])


def _heal_once(lab: LabContext, node: int, until_starved: bool = False) -> float:
    """Wipe drive 0 of ``node``; return the seconds its heal took (or until a starved line)."""
    assert lab.admin is not None
    began = lab.mark(f"wipe node {node} drive 0")
    lab.admin.call(node, "POST", "/fault/wipe-drive", drive=0)
    seen = False

    def finished() -> bool:
        nonlocal seen
        if until_starved and any(re.search(STARVED, lab.live_log(n))
                                 for n in range(4) if n != node):  # fmt: skip
            return True
        healing = _healing(lab, node)
        seen = seen or healing
        return seen and not healing

    lab.wait_for(finished, 170, "the drive heal to finish", interval=0.2)
    lab.mark("healed")
    return lab.now() - began


def missed_ping(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    size = 160 * MIB if lab.quick else 250 * MIB
    count = 1 if lab.quick else 2
    base = {**QUICK_HEAL, "profile": "minio", "liveness_scale": 0.05}
    summary: dict[str, Any] = {}
    for mode, extra in (("unsafe", {"unsafe_inline_heal": "true",
                                    "unsafe_heal_slice_mib": size // MIB}),
                        ("default", {})):  # fmt: skip
        with lab.running(mode, {**base, **extra}):
            assert lab.cluster is not None
            fill(lab.cluster, "lab", count, size)
            before = lab.reconnects()
            since = lab.now()
            _heal_once(lab, 1, until_starved=mode == "unsafe")
            after = lab.reconnects()
            lags = [s.value for s in lab.series("loop_lag_s", node=1, since=since)]
            causes = sorted({s for n in range(4) for s in _causes(lab, n)})
        lines = lab.log_lines(STARVED, mode)
        summary[mode] = {"disconnects": after - before, "causes": causes,
                         "cancel_line": lines[0] if lines else None,
                         "worst_loop_lag_s": rounded(max(lags, default=None))}  # fmt: skip
    unsafe, default = summary["unsafe"], summary["default"]
    summary["reproduced"] = bool(unsafe["cancel_line"] or unsafe["disconnects"])
    summary["default_clean"] = default["disconnects"] == 0 and not default["cancel_line"]
    sections = [
        ("What happened", f"""
Two clusters, both on MinIO's liveness timings shrunk 20 times (`profile=minio`,
`liveness_scale=0.05`: ping every 0.5 s, a connection dropped after 1 s of silence, a stream
cancelled after 3 s without its ping). Each held {count} x {size // MIB} MiB, and drive 0 of node
1 was wiped so that node rebuilt it.

- **unsafe** (`--unsafe-inline-heal`: hashing and erasure coding on the event loop, in
  {size // MIB} MiB slices): node 1's loop lag reached **{unsafe['worst_loop_lag_s']} s**, grid
  sessions lost: **{unsafe['disconnects']}**, causes {unsafe['causes'] or '-'}.
- **default** (the same work in threads): loop lag at most **{default['worst_loop_lag_s']} s**,
  sessions lost: **{default['disconnects']}**.
"""),
        ("Key log lines", quoted(lab.log_lines(STARVED, "unsafe")
                                 + lab.log_lines(r"local loop stalled", "unsafe"), 6)),
        ("What the code does about it", """
A node whose loop is busy cannot answer pings: to its peers it looks dead, and MinIO logs
`canceling remote connection ... not seen for ...` while a node heals or scans. minigrid's
healer runs zfec and the bitrot hashes in a thread pool (zfec releases the GIL), so the loop
lag stays in milliseconds; the unsafe mode exists only to show the failure. The peers say
*why* (`remote loop stalled ... at last contact`), and the starved node logs its own stall
instead of accusing its peers (the local-pause guard).
"""),
    ]
    return summary, sections


def _observe(lab: LabContext, name: str, baseline: int, end: float) -> None:
    if name == "pings_above_timeout":
        lab.wait_for(lambda: lab.reconnects() > baseline, 60, "the NAT to break a flow")
    else:
        lab.wait_for(lambda: lab.now() >= end, end - lab.now() + 5, "the idle window")


def _causes(lab: LabContext, node: int) -> list[str]:
    assert lab.admin is not None
    try:
        grid = lab.admin.call(node, "GET", "/info")["grid"]
    except Exception:
        return []
    return [str(s["last_cause"]).split(":")[0] for s in grid.values() if s.get("last_cause")]


def heal_under_load(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    presets = ("fastest", "default") if lab.quick else ("fastest", "fast", "default", "slow")
    count, size = (12, 4 * MIB) if lab.quick else (48, 8 * MIB)
    results: dict[str, Any] = {}
    with lab.running("heal", {**QUICK_HEAL, "scanner_interval": 5}) as cluster:
        objects = fill(cluster, "lab", count, size)
        reader = Reader(lab, cluster, "lab", objects)
        reader.start()
        assert lab.admin is not None
        lab.wait_for(lambda: len(reader.results) >= 20, 60, "idle GETs")
        idle = [t for _, t, ok in reader.results if ok]
        for preset in presets:
            for node in range(4):
                lab.admin.call(node, "POST", "/scanner", speed=preset)
            before = lab.reconnects()
            start = lab.now()
            took = _heal_once(lab, 1)
            window = [t for b, t, ok in reader.between(start, lab.now()) if ok]
            results[preset] = {"heal_mbps": round(count * size / MIB / took, 1),
                               "seconds": round(took, 1),
                               "get_p99_s": rounded(percentile(window, 0.99)),
                               "missed_pings": lab.reconnects() - before}  # fmt: skip
        reader.stop()
    summary = {"objects": count, "object_mib": size // MIB,
               "idle_get_p99_s": rounded(percentile(idle, 0.99)), "presets": results}  # fmt: skip
    lab.custom_plot = lambda: _heal_plot(lab, summary)
    table = "\n".join(f"| {p} | {r['heal_mbps']} | {r['get_p99_s']} | {r['missed_pings']} |"
                      for p, r in results.items())  # fmt: skip
    sections = [
        ("What happened", f"""
{count} objects of {size // MIB} MiB on 4 nodes x 2 drives (4+4). For each preset, drive 0 of
node 1 was wiped and its node rebuilt it while a client read random objects through node 0.
Idle GET p99: {summary['idle_get_p99_s']} s.

| preset | heal MB/s (object data) | GET p99 during (s) | missed pings (sessions lost) |
|---|---|---|---|
{table}
"""),
        ("What the code does about it", """
The drive healer paces itself with MinIO's dynamic sleeper (sleep factor x the time the last
object took, capped) and waits briefly while the node has many S3 requests in flight
(`heal/pace.py`); the CPU work runs in threads, so no preset misses a ping. `benchmarks/heal.py`
measures the same at 1 GiB.
"""),
    ]
    return summary, sections


def _heal_plot(lab: LabContext, summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for preset, result in summary["presets"].items():
        colour = "red" if result["missed_pings"] else "tab:blue"
        axis.scatter(result["heal_mbps"], result["get_p99_s"] or 0, color=colour, s=40)
        label = preset + (f" ({result['missed_pings']} missed pings)"
                          if result["missed_pings"] else "")  # fmt: skip
        axis.annotate(label, (result["heal_mbps"], result["get_p99_s"] or 0), fontsize=8,
                      xytext=(4, 4), textcoords="offset points")  # fmt: skip
    if summary["idle_get_p99_s"]:
        axis.axhline(summary["idle_get_p99_s"], color="grey", linestyle="--", linewidth=0.8)
        axis.text(0, summary["idle_get_p99_s"], " idle p99", fontsize=7, va="bottom")
    axis.set_xlabel("heal speed (MB/s of object data)")
    axis.set_ylabel("foreground GET p99 (s)")
    axis.set_title("minigrid lab heal-under-load (red: missed pings)")
    figure.tight_layout()
    figure.savefig(lab.out / "plot.png", dpi=110)
    plt.close(figure)


def nat_idle(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    if not lab.netns:
        raise LabError("nat-idle needs --netns (root): a real NAT router namespace")
    idle = 2 if lab.quick else 5
    window = 8.0 if lab.quick else 30.0
    summary: dict[str, Any] = {"nat_idle_timeout_s": idle}
    variants = (("pings_below_timeout", {"profile": "fast"}),
                ("pings_above_timeout", {"profile": "minio", "liveness_scale": 0.3}))  # fmt: skip
    for name, options in variants:
        with lab.running(name, options):
            assert lab.faults is not None
            lab.wait_for(lambda: lab.grid_state(0, 1)["state"] == "connected", 20, "the link")
            before = lab.reconnects()
            lab.mark(f"NAT 0|1 idle {idle}s ({name})")
            lab.faults.nat(0, 1, idle)
            start = lab.now()
            lab.wait_for(lambda: lab.grid_state(0, 1)["state"] == "connected", 20, "via NAT")
            baseline = lab.reconnects()  # the redial through the router is not a failure
            _observe(lab, name, baseline, start + window)
            summary[name] = {"ping_interval_s": 1.0 if name.endswith("below_timeout") else 3.0,
                             "sessions_lost": lab.reconnects() - baseline,
                             "first_redial": baseline - before,
                             "observed_s": round(lab.now() - start, 1)}  # fmt: skip
    sections = [
        ("What happened", f"""
A router namespace with MASQUERADE, `nf_conntrack_tcp_timeout_established={idle}` and
`nf_conntrack_tcp_loose=0` was put between nodes 0 and 1 (packets of forgotten flows are
dropped as INVALID, silently: a home router). With pings every second the flow was never idle:
sessions lost over {summary['pings_below_timeout']['observed_s']} s:
**{summary['pings_below_timeout']['sessions_lost']}**. With pings every 3 s (the `minio` profile
at 0.3) the NAT forgot the flow between two pings, the next ping vanished, and liveness dropped
the session: **{summary['pings_above_timeout']['sessions_lost']}** lost in
{summary['pings_above_timeout']['observed_s']} s.
"""),
        ("What the code does about it", """
Pings every second keep any NAT's idle timer from expiring; TCP keepalive (idle 15 s, every 5 s)
is the backstop below common NAT timeouts (cloud NATs 4-6 minutes, some home routers 90 s), and
TCP_USER_TIMEOUT ends a connection whose data goes unacknowledged.
"""),
    ]
    return summary, sections


__all__ = ["HEAL_PANELS", "heal_under_load", "missed_ping", "nat_idle"]
