"""Each lab in its --quick form, asserting on its summary (real node processes on 127.0.0.1).

Cost: each quick lab starts its own 4-node cluster and runs 20-45 s; they are marked slow.
The soak's schedule is a pure function of its seed, checked without a cluster.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.lab import LABS, run_lab
from cli.labs.soak import check, schedule, traced, value_bytes
from cli.main import main
from cli.netns import unavailable

NETNS = unavailable()


def test_lab_list_names_every_lab() -> None:
    result = CliRunner().invoke(main, ["lab", "list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == list(LABS)


def test_a_seed_reproduces_its_schedule_and_another_does_not() -> None:
    assert schedule(7, 120) == schedule(7, 120)
    assert schedule(7, 120) != schedule(8, 120)


def test_the_checker_finds_wrong_and_lost_data() -> None:
    data = value_bytes("1/0/1", 5000)
    assert traced(data, ranged=False) == ("1/0/1", "")
    assert traced(data[:-1] + b"?", ranged=False)[1] == "bytes differ from the write"
    from cli.labs.soak import Op

    put = Op(0, "put", "k00", "1/0/1", 5000, 0.0, 1.0, "ok")
    later = Op(1, "put", "k00", "1/1/1", 10, 2.0, 3.0, "ok")
    sizes = {"1/0/1": 5000, "1/1/1": 10}
    assert check([put, later], {"k00": ("1/1/1", "")}, sizes)["lost"] == 0
    assert check([put, later], {"k00": ("1/0/1", "")}, sizes)["lost"] == 1  # went backwards
    assert check([put, later], {"k00": ("", "")}, sizes)["lost"] == 1  # vanished


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_frozen_peer_quick(tmp_path: Path) -> None:
    summary = run_lab("frozen-peer", quick=True, out=tmp_path)
    assert summary["detection_s"] < 6.0  # the fast profile's 4 s window, sampled every 0.2 s
    assert summary["gets_while_frozen"]["ok"] > 0
    assert summary["reconnect_after_thaw_s"] < 10
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert "detection" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("mode", ["silent", "reset"])
def test_partition_quick(tmp_path: Path, mode: str) -> None:
    summary = run_lab(f"{mode}-partition", quick=True, out=tmp_path)
    assert summary["detection_s"] < (6.0 if mode == "silent" else 2.0)
    assert summary["peer_table_lines"] == 1
    assert summary["session_lost_lines"] <= 1


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_clock_jump_quick(tmp_path: Path) -> None:
    summary = run_lab("clock-jump", quick=True, out=tmp_path)
    assert summary["disconnects"] == 0
    assert abs(summary["last_modified_offset_s"]["+3600"] - 3600) < 60


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_chaos_soak_fixed_seed(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["lab", "run", "chaos-soak", "--seed", "1", "--duration",
                                       "120", "--json", "--out", str(tmp_path)])
    summary = json.loads(result.output.splitlines()[-1])
    assert (summary["lost"], summary["wrong"], summary["stuck"]) == (0, 0, 0), summary
    assert summary["ops"] > 100 and summary["faults"] >= 5


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.skipif(bool(NETNS), reason=NETNS or "runs")
@pytest.mark.timeout(200)
def test_nat_idle_quick(tmp_path: Path) -> None:
    summary = run_lab("nat-idle", quick=True, out=tmp_path, netns=True)
    assert summary["pings_below_timeout"]["sessions_lost"] == 0
    assert summary["pings_above_timeout"]["sessions_lost"] >= 1
