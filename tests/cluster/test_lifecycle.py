"""``cluster up`` / ``status`` / ``down``: restarts keep the data, failures are named clearly."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from click.testing import CliRunner

from cli.cluster import ClusterFile, pid_alive
from cli.main import main
from tests.cluster.helpers import LocalCluster, payload


def test_down_stops_every_process_and_up_brings_the_data_back(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c")
    try:
        cluster.start()
        data = payload(2_000_000, seed=20)
        s3 = cluster.boto(1)
        s3.create_bucket(Bucket="keep")
        s3.put_object(Bucket="keep", Key="it", Body=data)
        processes = [(p.pid, p.ticks) for p in cluster.load().processes]
        assert len(processes) == 4 and all(pid_alive(pid, t) for pid, t in processes)

        down = cluster.cli("cluster", "down")
        assert down.exit_code == 0 and "stopped 4 node(s)" in down.stdout
        assert not any(pid_alive(pid, ticks) for pid, ticks in processes)
        assert all(p.pid is None for p in cluster.load().processes)
        assert "no node was running" in cluster.cli("cluster", "down").stdout
        status = cluster.cli("cluster", "status", "--json")
        assert status.exit_code == 1
        assert [row["alive"] for row in json.loads(status.stdout)] == [False] * 4

        up = cluster.cli("cluster", "up")
        assert up.exit_code == 0, up.output
        assert "cluster ready: 4 nodes" in up.stdout
        assert cluster.boto(3).get_object(Bucket="keep", Key="it")["Body"].read() == data
    finally:
        cluster.stop()
    assert all(p.pid is None for p in cluster.load().processes)


def test_up_names_a_port_that_is_taken(tmp_path: Path) -> None:
    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        port = blocker.getsockname()[1]
        result = CliRunner().invoke(
            main, ["cluster", "up", "--data-dir", str(tmp_path), "--base-port", str(port)]
        )
    finally:
        blocker.close()
    assert result.exit_code == 1
    assert f"port {port} (node 0) is already in use" in result.stderr
    assert ClusterFile.load(tmp_path) is None  # nothing was started


def test_up_names_the_node_that_does_not_come_up(tmp_path: Path) -> None:
    broken = tmp_path / "node2" / "d0"
    broken.parent.mkdir(parents=True)
    broken.write_text("a file where a drive directory should be")
    result = CliRunner().invoke(
        main, ["cluster", "up", "--data-dir", str(tmp_path), "--base-port", "0"]
    )
    assert result.exit_code == 1
    message = result.stderr
    assert "node 2 (http://127.0.0.1:" in message and "exited during startup" in message
    assert str(tmp_path / "logs" / "node2.log") in message
    assert "cannot open drive" in message  # the log's last lines are quoted
    cluster = ClusterFile.load(tmp_path)
    assert cluster is not None
    assert all(p.pid is None for p in cluster.processes)  # the others were stopped again
