"""The Tahoe-LAFS comparison's pure parts (``benchmarks/tahoe_grid.py``): the configuration it
writes for each Tahoe node, the encoding it derives from minigrid's erasure set, and how it turns
timings into ratios. Tahoe itself is not installed or run here (that is the benchmark's job)."""

from __future__ import annotations

import configparser
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tahoe_grid", BENCHMARKS / "tahoe_grid.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tahoe_grid"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


tahoe_grid = _load()


def _parse(text: str) -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read_string(text)
    return config


def test_encoding_mirrors_minigrids_erasure_set() -> None:
    encoding = tahoe_grid.encoding_for(4, 4, servers=4)
    assert (encoding.needed, encoding.total, encoding.happy) == (4, 8, 4)
    assert encoding.expansion == 2.0
    # With a server per share, every share must land on its own server.
    assert tahoe_grid.encoding_for(4, 4, servers=8).happy == 8
    assert tahoe_grid.encoding_for(6, 2, servers=4).expansion == pytest.approx(8 / 6)
    with pytest.raises(ValueError, match="data >= 1"):
        tahoe_grid.encoding_for(0, 4, servers=4)


def test_storage_node_config_has_the_encoding_and_listens_on_loopback() -> None:
    encoding = tahoe_grid.encoding_for(4, 4, servers=4)
    config = _parse(
        tahoe_grid.tahoe_cfg(nickname="storage0", tub_port=40001, web_port=None, encoding=encoding)
    )
    assert config["client"]["shares.needed"] == "4"
    assert config["client"]["shares.total"] == "8"
    assert config["client"]["shares.happy"] == "4"
    assert config["storage"]["enabled"] == "true"
    assert config["node"]["tub.port"] == "tcp:40001:interface=127.0.0.1"
    assert config["node"]["tub.location"] == "tcp:127.0.0.1:40001"
    assert config["node"]["web.port"] == ""
    assert config["node"]["nickname"] == "storage0"


def test_client_config_serves_only_the_web_api_and_stores_nothing() -> None:
    encoding = tahoe_grid.encoding_for(4, 4, servers=8)
    text = tahoe_grid.tahoe_cfg(nickname="client", tub_port=None, web_port=40100, encoding=encoding)
    config = _parse(text)
    assert config["storage"]["enabled"] == "false"
    assert config["node"]["tub.port"] == "disabled"
    assert config["node"]["web.port"] == "tcp:40100:interface=127.0.0.1"
    assert (config["client"]["shares.total"], config["client"]["shares.happy"]) == ("8", "8")
    # Tahoe's own key spelling, not configparser's lower-cased one.
    assert "reveal-IP-address = true" in text


def test_result_ratios_are_minigrid_over_tahoe_and_judged_against_the_target() -> None:
    times = {
        # 64 MiB: Tahoe puts in 8 s (8 MiB/s) and gets in 16 s (4 MiB/s); minigrid 1 s and 5 s.
        "tahoe": {"put": [8.0, 9.0, 7.0], "get": [16.0] * 3, "put_cpu": [1.0] * 3,
                  "get_cpu": [2.0] * 3},
        "minigrid": {"put": [1.0, 1.5, 0.5], "get": [5.0] * 3, "put_cpu": [0.5] * 3,
                     "get_cpu": [0.25] * 3},
    }  # fmt: skip
    encoding = tahoe_grid.encoding_for(4, 4, servers=4)
    result = tahoe_grid.compare_result(times, 64, 3, 4, encoding, "1.20.0")
    assert result["tahoe_put_mbps"] == 8.0 and result["minigrid_put_mbps"] == 64.0
    assert result["put_vs_tahoe"] == 8.0 and result["tahoe_put_target_met"] is True
    assert result["get_vs_tahoe"] == 3.2 and result["tahoe_get_target_met"] is False
    assert result["tahoe_target"] == 4.0
    assert result["tahoe_encoding"]["expansion"] == 2.0
    assert result["tahoe_version"] == "1.20.0"
    assert result["put_vs_tahoe_rounds"] == [8.0, 6.0, 14.0]
    assert result["put_cpu_vs_tahoe"] == 2.0 and result["get_cpu_vs_tahoe"] == 8.0
    assert result["minigrid_layout"]["fsync"] is True


def test_object_io_help_offers_the_tahoe_comparison() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "object_io.py"), "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "--compare {tahoe}" in done.stdout
    assert "--tahoe-servers" in done.stdout
    assert "--compare-fsync" in done.stdout
