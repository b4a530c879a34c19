"""Each lab in its --quick form, asserting on its summary (real node processes on 127.0.0.1).

The grid labs (frozen peer, partitions, clock jump, dead peer) share one 4-node cluster: each
lab clears its faults and waits for every link before it hands the cluster back. The others
start their own, as a learner's run does. Timing assertions leave room for a loaded machine:
detection is held to the liveness window plus whatever the local-pause guard added (the
detecting node's own loop fired late), which the lab measures from the node's log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.lab import LABS, run_lab
from cli.labs.grid_labs import GRID_OPTIONS
from cli.labs.runner import LabCluster
from cli.labs.soak import Op, check, schedule, traced, value_bytes
from cli.main import main
from cli.netns import unavailable

NETNS = unavailable()
#: Slack on top of the window (seconds): the liveness tick (0.25 s), the last frame before the
#: cut, and timers that fire late on a loaded machine by less than the local-pause guard's
#: threshold (half the window), which it does not report.
SLACK = 2.5


def detected_in_time(summary: dict[str, Any]) -> bool:
    window = summary["window_s"] or 0.0  # a reset needs no window
    return bool(summary["detection_s"] <= window + summary["window_restarted_after_s"] + SLACK)


def wrote_everything(out: Path, *words: str) -> str:
    """The lab wrote its three files; the report names ``words``. Returns the report."""
    assert (out / "plot.png").stat().st_size > 10_000
    assert len((out / "series.csv").read_text().splitlines()) > 50
    report = (out / "report.md").read_text()
    for word in words:
        assert word in report, f"{word!r} not in the report"
    return report


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    cluster = LabCluster(tmp_path_factory.mktemp("lab") / "grid", GRID_OPTIONS)
    try:
        yield cluster
    finally:
        cluster.stop()


# --- without a cluster ---------------------------------------------------------------------


def test_lab_list_names_every_lab() -> None:
    result = CliRunner().invoke(main, ["lab", "list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == list(LABS)


def test_a_seed_reproduces_its_schedule_and_another_does_not() -> None:
    assert schedule(7, 120) == schedule(7, 120)
    assert schedule(7, 120) != schedule(8, 120)
    kinds = {event["fault"] for seed in range(5) for event in schedule(seed, 120)}
    assert {"freeze", "kill", "partition-silent", "wipe-drive", "corrupt"} <= kinds


def test_the_checker_finds_wrong_lost_and_stuck() -> None:
    data = value_bytes("1/0/1", 5000)
    assert traced(data, ranged=False) == ("1/0/1", "")
    assert traced(data[:-1] + b"?", ranged=False)[1] == "bytes differ from the write"
    assert traced(b"no id here", ranged=False)[1] == "bytes that no write made"
    put = Op(0, "put", "k00", "1/0/1", 5000, 0.0, 1.0, "ok")
    later = Op(1, "put", "k00", "1/1/1", 10, 2.0, 3.0, "ok")
    sizes = {"1/0/1": 5000, "1/1/1": 10}
    assert check([put, later], {"k00": ("1/1/1", "")}, sizes)["lost"] == 0
    assert check([put, later], {"k00": ("1/0/1", "")}, sizes)["lost"] == 1  # went backwards
    assert check([put, later], {"k00": ("", "")}, sizes)["lost"] == 1  # vanished
    failed = Op(2, "put", "k00", "1/2/1", 10, 4.0, 5.0, "error")
    assert check([put, later, failed], {"k00": ("1/2/1", "")}, sizes)["lost"] == 0  # may land
    deleted = Op(3, "delete", "k00", "", 0, 6.0, 7.0, "ok")
    assert check([put, later, deleted], {"k00": ("1/1/1", "")}, sizes)["lost"] == 1  # undead
    ghost = Op(0, "get", "k00", "9/9/9", 0, 1.0, 2.0, "ok")
    assert check([put, ghost], {"k00": ("1/0/1", "")}, sizes)["wrong"] == 1
    hung = Op(0, "get", "k00", "", 0, 1.0, None)
    assert check([put, hung], {"k00": ("1/0/1", "")}, sizes)["stuck"] == 1


# --- the grid labs, on one shared cluster ----------------------------------------------------


@pytest.mark.timeout(120)
def test_frozen_peer(grid: LabCluster, tmp_path: Path) -> None:
    s = run_lab("frozen-peer", quick=True, out=tmp_path, shared=grid)
    assert detected_in_time(s), s
    assert s["cause"].startswith("network-silent")
    assert s["cause_revised"].startswith("remote-stalled")  # the peer says it was frozen
    assert s["gets_while_frozen"]["ok"] > 0 and s["gets_while_frozen"]["failed"] == 0
    assert s["reconnect_after_thaw_s"] is not None
    # Whether any call was still waiting on node 2 when it was given up depends on the hedges.
    casualties = "no \"session lost\" line" if s["failed_at_once"] is None else "session lost ("
    wrote_everything(tmp_path, f"**{s['detection_s']} s**", "SIGSTOP", "connected -> error",
                     casualties)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["silent", "reset"])
def test_partition(grid: LabCluster, tmp_path: Path, mode: str) -> None:
    s = run_lab(f"{mode}-partition", quick=True, out=tmp_path, shared=grid)
    assert detected_in_time(s), s
    assert s["cause"].startswith("network-silent" if mode == "silent" else "reset")
    # The calls in flight fail with the session (the two log lines are a millisecond apart).
    assert s["failed_at_once"] >= 1 and abs(s["failed_after_s"] - s["detection_s"]) < 0.1
    assert s["peer_table_lines"] == 1 and s["session_lost_lines"] == 1
    wrote_everything(tmp_path, "peer 127.0.0.1", "offline")


@pytest.mark.timeout(120)
def test_clock_jump(grid: LabCluster, tmp_path: Path) -> None:
    s = run_lab("clock-jump", quick=True, out=tmp_path, shared=grid)
    assert s["disconnects"] == 0
    assert abs(s["last_modified_offset_s"]["+3600"] - 3600) < 60
    assert abs(s["last_modified_offset_s"]["-3600"] + 3600) < 60
    assert s["last_write_wins"] is True
    assert s["gets"]["failed"] == 0
    wrote_everything(tmp_path, "wall clock jumped", "every peer looks dead")


@pytest.mark.timeout(120)
def test_dead_peer_table(grid: LabCluster, tmp_path: Path) -> None:
    s = run_lab("dead-peer-table", quick=True, out=tmp_path, shared=grid)
    assert s["calls_queued_at_cut"] >= 100
    assert detected_in_time(s), s
    assert s["failed_at_once"] >= 50 and s["session_lost_lines"] == 1
    assert s["log_lines_at_detection"] <= 3  # one state change, one count, one peer-table line
    assert s["new_ops_after"]["calls_to_node3"] == 0 and s["new_ops_after"]["failed"] == 0
    wrote_everything(tmp_path, "Tahoe-LAFS", "session lost")


# --- labs with a cluster of their own --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_reconnect_deadlock(tmp_path: Path) -> None:
    s = run_lab("reconnect-deadlock", quick=True, out=tmp_path)
    assert s["queue_full"] and s["senders_waiting_at_drop"] >= 1
    assert s["failed_at_drop"] + s["handlers_cancelled_at_drop"] >= 1
    # A deadlock would be "never": the bound is loose because this machine is shared.
    assert s["reconnect_after_thaw_s"] is not None and s["reconnect_after_thaw_s"] < 10
    assert s["put_and_get_after"]
    wrote_everything(tmp_path, "senders", "session lost")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_nat_idle_on_loopback(tmp_path: Path) -> None:
    s = run_lab("nat-idle", quick=True, out=tmp_path)
    assert s["pings_below_timeout"]["sessions_lost"] == 0
    assert s["pings_above_timeout"]["sessions_lost"] >= 1
    assert s["keepalive_below_timeout"] is None  # not measurable through a userspace proxy
    wrote_everything(tmp_path, "NAT forgot flow", "network-silent")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_missed_ping_unsafe_versus_default(tmp_path: Path) -> None:
    s = run_lab("missed-ping", quick=True, out=tmp_path)
    unsafe, default = s["unsafe"], s["default"]
    assert unsafe["disconnects"] >= 1 and unsafe["cancel_line"], unsafe
    assert "remote-stalled" in unsafe["causes"] or "canceling remote" in unsafe["cancel_line"]
    assert default["disconnects"] == 0 and default["heal_finished"], default
    assert unsafe["worst_loop_busy_s"] > default["worst_loop_busy_s"]
    wrote_everything(tmp_path, "local loop stalled", "unsafe")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_heal_under_load(tmp_path: Path) -> None:
    s = run_lab("heal-under-load", quick=True, out=tmp_path)
    for preset in s["presets"].values():
        assert preset["finished"] and preset["objects_healed"] == s["objects"], preset
        assert preset["missed_pings"] == 0 and preset["heal_mbps"] > 0
    wrote_everything(tmp_path, "fastest", "heal MB/s")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_soak_two_minutes_fixed_seed(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["lab", "run", "chaos-soak", "--seed", "1", "--duration",
                                       "120", "--json", "--out", str(tmp_path)])  # fmt: skip
    summary = json.loads(result.output.splitlines()[-1])
    assert (summary["lost"], summary["wrong"], summary["stuck"]) == (0, 0, 0), summary["details"]
    assert result.exit_code == 0
    assert summary["ops"] > 100
    assert summary["faults"] + summary["faults_skipped"] == len(schedule(1, 120))
    assert summary["faults"] >= 5
    assert summary["full_redundancy_after_s"] is not None
    wrote_everything(tmp_path, "lost 0, wrong 0, stuck 0", "--seed 1")


# --- real namespaces (root) ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.skipif(bool(NETNS), reason=NETNS or "runs")
@pytest.mark.timeout(120)
def test_reset_partition_with_iptables(tmp_path: Path) -> None:
    s = run_lab("reset-partition", quick=True, out=tmp_path, netns=True)
    assert s["how"] == "iptables in the nodes' namespaces"
    assert s["cause"].startswith("reset")  # the RST got through: not a silent timeout
    assert s["peer_table_lines"] == 1 and s["session_lost_lines"] == 1
    wrote_everything(tmp_path, "iptables")


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.skipif(bool(NETNS), reason=NETNS or "runs")
@pytest.mark.timeout(240)
def test_nat_idle_with_conntrack(tmp_path: Path) -> None:
    s = run_lab("nat-idle", quick=True, out=tmp_path, netns=True)
    assert s["nat"] == "router namespace (conntrack)"
    assert s["pings_below_timeout"]["sessions_lost"] == 0
    assert s["pings_above_timeout"]["sessions_lost"] >= 1
    assert s["keepalive_below_timeout"]["sessions_lost"] == 0  # keepalive kept the flow
    wrote_everything(tmp_path, "MASQUERADE", "keepalive")
