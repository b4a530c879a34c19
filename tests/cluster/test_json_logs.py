"""``--log-format json``: every line of a real node's log is a JSON object with the fields a log
pipeline needs, and a peer disconnect says who, why and how the peer looked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.helpers import http_status, metrics_text, wait_for

SECRETS = {
    "MINIGRID_SECRET": "json-log-test-cluster-secret",
    "MINIGRID_ACCESS_KEY": "JSONLOGACCESS",
    "MINIGRID_SECRET_KEY": "json-log-test-secret-key",
}


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]  # a line being written is read next time
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[str], Path]]:
    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    hosts = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    nodes = " ".join(
        f"http://{host}={tmp_path}/n{i}/d1,{tmp_path}/n{i}/d2" for i, host in enumerate(hosts)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIGRID_")}
    env.update(SECRETS, MINIGRID_NODES=nodes, MINIGRID_PARITY="2", MINIGRID_FSYNC="off")
    processes = []
    try:
        for index, sock in enumerate(sockets):
            argv = [sys.executable, "-m", "cli.main", "node", "run", "--node", str(index),
                    "--listen-fd", str(sock.fileno()), "--log-format", "json",
                    "--log-file", str(tmp_path / f"node{index}.log")]  # fmt: skip
            processes.append(subprocess.Popen(argv, env=env, pass_fds=(sock.fileno(),),
                                              stdin=subprocess.DEVNULL))  # fmt: skip
            sock.close()
        yield processes, hosts, tmp_path
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_json_lines_carry_the_fields_and_a_disconnect_says_why(
    two_nodes: tuple[list[subprocess.Popen[bytes]], list[str], Path],
) -> None:
    processes, hosts, folder = two_nodes
    log = folder / "node0.log"
    wait_for(lambda: http_status(f"http://{hosts[0]}/minigrid/health/ready") == 200, 45,
             "node 0 to be ready", interval=0.2)  # fmt: skip
    lines = json_lines(log)
    assert lines, "node 0 wrote nothing"
    for line in lines:
        assert {"time", "level", "node", "component", "event"} <= line.keys(), line
        assert line["node"] == hosts[0]
        assert line["time"].endswith("+00:00") and line["level"] in ("info", "warning")
    serving = next(line for line in lines if line["event"].startswith("node 0 of 2 serving"))
    assert serving["component"] == "node"
    up = next(line for line in lines if line.get("remote") == hosts[1])
    assert up["component"] == "minigrid.grid" and up["state"] == "connected"

    # Once node 1 has answered a ping, node 0 knows its loop lag (null before that).
    lag = f'minigrid_grid_peer_loop_lag_seconds{{peer="{hosts[1]}"}}'

    def answered() -> bool:
        try:
            return lag in metrics_text(f"http://{hosts[0]}")
        except OSError:
            return False  # slow to answer under load: ask again

    wait_for(answered, 20, "a pong from node 1")
    processes[1].send_signal(signal.SIGKILL)
    processes[1].wait(timeout=10)

    def disconnect() -> dict[str, Any] | None:
        for line in json_lines(log):
            if line.get("remote") == hosts[1] and line.get("state") == "error":
                return line
        return None

    lost = wait_for(disconnect, 20, "node 0 to log the lost peer")
    assert {"local", "remote", "cause", "handler", "subroute", "last_seen_s",
            "peer_loop_lag_s"} <= lost.keys()  # fmt: skip
    assert lost["local"] == hosts[0] and lost["cause"] in ("reset", "network-silent")
    assert isinstance(lost["last_seen_s"], float) and lost["last_seen_s"] >= 0
    assert isinstance(lost["peer_loop_lag_s"], float)
    assert lost["cause_detail"].startswith(lost["cause"])
    assert lost["level"] == "info" and "connected -> error" in lost["event"]
