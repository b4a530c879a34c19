"""Metrics, ``admin top`` and ``admin trace`` against a real 4-node cluster under traffic."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.helpers import LocalCluster, metrics_text, payload, wait_for
from tests.deploy.deployments import COMPOSE_DIR

MIB = 1 << 20
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample of a Prometheus text page."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match:
            found[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return found


def total(page: dict[str, float], name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        value
        for key, value in page.items()
        if key.split("{", 1)[0] == name and all(w in key for w in wanted)
    )


def put(cluster: LocalCluster, key: str, size: int, node: int = 0, s3: Any = None) -> None:
    """Put through ``s3`` (made before a traffic thread starts: making a boto3 client reads
    os.environ, which the CLI runner changes while it runs), else a new client."""
    (s3 or cluster.boto(node)).put_object(Bucket="observe", Key=key, Body=payload(size))


@pytest.fixture(scope="module")
def bucket(cluster: LocalCluster) -> Iterator[str]:
    cluster.boto(0).create_bucket(Bucket="observe")
    yield "observe"


def test_key_series_exist_and_move_after_traffic(cluster: LocalCluster, bucket: str) -> None:
    url = cluster.urls[0]
    before = samples(metrics_text(url))
    peers = [u.split("://", 1)[1] for u in cluster.urls[1:]]
    per_peer = ("minigrid_grid_connected", "minigrid_grid_rtt_seconds",
                "minigrid_grid_last_seen_age_seconds", "minigrid_grid_queue_messages",
                "minigrid_grid_sent_messages_total", "minigrid_grid_reconnects_total")  # fmt: skip
    for name in per_peer:
        for peer in peers:
            assert f'{name}{{peer="{peer}"}}' in before, (name, peer)
    for peer in peers:
        assert f'minigrid_grid_disconnects_total{{cause="network-silent",peer="{peer}"}}' in before
    for name in ("minigrid_loop_lag_seconds_count", "minigrid_node_ready",
                 "minigrid_mrf_queued_objects", "minigrid_scanner_cycle",
                 "minigrid_s3_inflight_requests"):  # fmt: skip
        assert name in before, name
    assert total(before, "minigrid_drive_total_bytes") > 0
    assert total(before, "minigrid_drive_state", state="ok") == 2  # this node's two drives

    for index in range(3):
        put(cluster, f"moving-{index}", 2 * MIB)
    body = cluster.boto(0).get_object(Bucket=bucket, Key="moving-0")["Body"]
    assert len(body.read()) == 2 * MIB

    def moved() -> dict[str, float] | None:
        after = samples(metrics_text(url))
        grew = after["minigrid_loop_lag_seconds_count"] > before["minigrid_loop_lag_seconds_count"]
        return after if grew else None

    after = wait_for(moved, 10, "the loop-lag histogram to take samples")
    assert total(after, "minigrid_s3_requests_total", api="PutObject", status="200") >= 3 + total(
        before, "minigrid_s3_requests_total", api="PutObject", status="200"
    )
    assert total(after, "minigrid_s3_request_seconds_count", api="GetObject") > total(
        before, "minigrid_s3_request_seconds_count", api="GetObject"
    )
    assert total(after, "minigrid_s3_received_bytes_total", api="PutObject") >= 6 * MIB
    for name in ("minigrid_grid_sent_bytes_total", "minigrid_grid_sent_messages_total",
                 "minigrid_drive_operation_seconds_count"):  # fmt: skip
        assert total(after, name) > total(before, name), name
    created = total(after, "minigrid_grid_calls_total", direction="client", kind="stream")
    assert created > total(before, "minigrid_grid_calls_total", direction="client", kind="stream")


def test_top_shows_every_node_and_link(cluster: LocalCluster) -> None:
    frames = cluster.cli("admin", "top", "--json", "--count", "2", "--interval", "0.3")
    assert frames.exit_code == 0, frames.output
    lines = [json.loads(line) for line in frames.stdout.splitlines()]
    assert len(lines) == 2
    for frame in lines:
        nodes = frame["nodes"]
        assert sorted(n["node"] for n in nodes) == sorted(cluster.urls)
        for node in nodes:
            assert node["ready"] is True and node["loop_lag_s"] >= 0
            assert {link["state"] for link in node["links"]} == {"connected"}
            assert all(link["rtt_s"] is not None for link in node["links"])
            assert "mrf_queued" in node["heal"]
    screen = cluster.cli("admin", "top")  # not a terminal: one screen, then exit
    assert screen.exit_code == 0, screen.output
    for url in cluster.urls:
        assert url.split("://", 1)[1] in screen.stdout
    assert "grid links" in screen.stdout and "loop lag" in screen.stdout
    assert screen.stdout.count("connected") >= 12  # 4 nodes x 3 links


def _trace(cluster: LocalCluster, *args: str) -> list[dict[str, object]]:
    """``admin trace --json ARGS`` while another thread puts objects through node 1."""
    stop = threading.Event()
    s3 = cluster.boto(1)

    def traffic() -> None:
        index = 0
        while not stop.is_set():
            put(cluster, f"traced-{index}", 300_000, s3=s3)
            index += 1

    writer = threading.Thread(target=traffic, daemon=True)
    writer.start()
    try:
        result = cluster.cli("admin", "trace", "--json", "--seconds", "20", *args)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_trace_streams_grid_calls_and_s3_requests_from_every_node(
    cluster: LocalCluster, bucket: str
) -> None:
    entries = _trace(cluster, "--count", "60")
    assert len(entries) == 60
    kinds = {entry["type"] for entry in entries}
    assert "grid" in kinds and kinds <= {"grid", "s3"}
    nodes = {entry["node"] for entry in entries}
    assert len(nodes) >= 2, nodes  # the endpoint (node 0) gathers its peers' records too
    for entry in entries:
        if entry["type"] == "grid":
            assert entry["direction"] in ("client", "server")
            assert entry["status"] in ("ok", "error", "timeout", "cancelled", "disconnected")
            assert isinstance(entry["duration"], float) and entry["duration"] >= 0
            assert entry["handler"] not in ("NODE_TOP", "NODE_TRACE")

    s3 = _trace(cluster, "--count", "2", "--kind", "s3", "--handler", "putobject")
    assert [(e["type"], e["api"], e["status"]) for e in s3] == [("s3", "PutObject", 200)] * 2
    assert {e["node"] for e in s3} == {cluster.urls[1]}  # the traffic goes through node 1
    assert all(e["request_bytes"] == 300_000 for e in s3)

    peer = cluster.urls[2].split("://", 1)[1]
    grid = _trace(cluster, "--count", "10", "--kind", "grid", "--peer", peer)
    assert grid and all(e["peer"] == peer for e in grid)

    renames = _trace(cluster, "--count", "3", "--handler", "rename_data")
    assert [(e["handler"], e["kind"]) for e in renames] == [("RENAME_DATA", "call")] * 3

    slow = _trace(cluster, "--count", "5", "--kind", "grid", "--min-duration", "1ms")
    assert len(slow) == 5 and all(e["duration"] >= 0.001 for e in slow)


def test_trace_text_lines_and_bad_filters(cluster: LocalCluster, bucket: str) -> None:
    bad = cluster.cli("admin", "trace", "--min-duration", "soon", "--count", "1")
    assert bad.exit_code != 0 and "not a duration" in bad.output
    stop = threading.Event()
    s3 = cluster.boto(0)

    def traffic() -> None:
        while not stop.is_set():
            put(cluster, "text-line", 1000, s3=s3)

    writer = threading.Thread(target=traffic, daemon=True)
    writer.start()
    try:
        text = cluster.cli("admin", "trace", "--kind", "s3", "--count", "3", "--seconds", "20")
    finally:
        stop.set()
        writer.join(timeout=30)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert len(lines) == 3
    assert all(" s3 " in line and "PutObject" in line and "/observe/text-line" in line
               for line in lines)  # fmt: skip


def test_a_lost_peer_counts_a_disconnect_by_cause(cluster: LocalCluster) -> None:
    peer = cluster.urls[3].split("://", 1)[1]
    key = f'minigrid_grid_disconnects_total{{cause="reset",peer="{peer}"}}'
    before = samples(metrics_text(cluster.urls[0]))[key]
    cluster.kill(3)
    try:
        wait_for(lambda: samples(metrics_text(cluster.urls[0]))[key] > before, 15,
                 "node 0 to count the lost session")  # fmt: skip
        page = samples(metrics_text(cluster.urls[0]))
        assert page[f'minigrid_grid_connected{{peer="{peer}"}}'] == 0
        screen = cluster.cli("admin", "top", "--json", "--count", "1")
        frame = json.loads(screen.stdout)
        lost = next(n for n in frame["nodes"] if n.get("node") == peer or n.get("host") == peer)
        assert "error" in lost  # it cannot answer
        link = next(x for n in frame["nodes"] if n.get("host") == cluster.urls[0].split("://")[1]
                    for x in n["links"] if x["peer"] == peer)  # fmt: skip
        # The session ended with a reset; the dialing side's redials then fail to connect.
        assert link["state"] != "connected"
        assert link["cause"].startswith(("reset", "dial failed")), link["cause"]
    finally:
        cluster.restore()


def test_every_series_the_dashboard_plots_exists(cluster: LocalCluster) -> None:
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "minigrid.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    names = {name for expr in exprs for name in re.findall(r"\bminigrid_[a-z0-9_]+", expr)}
    assert len(names) >= 15
    page = metrics_text(cluster.urls[0])
    served = {line.split("{", 1)[0].split(" ", 1)[0] for line in page.splitlines()
              if line and not line.startswith("#")}  # fmt: skip
    # A labelled series with no sample yet (no S3 error so far, say) is still declared.
    for declared, kind in re.findall(r"^# TYPE (\S+) (\S+)$", page, re.MULTILINE):
        served.add(declared)
        if kind == "histogram":
            served.update(declared + suffix for suffix in ("_bucket", "_count", "_sum"))
    missing = sorted(names - served)
    assert not missing, f"the dashboard plots series no node serves: {missing}"


def test_top_on_a_terminal_draws_full_screen_frames(cluster: LocalCluster) -> None:
    """On a terminal (a real pty), top takes the alternate screen and redraws each refresh."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "MINIGRID_DATA_DIR": str(cluster.root), "COLUMNS": "200",
           "LINES": "50", "TERM": "xterm-256color"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "admin", "top", "--count", "2", "--interval", "0.5"],
        stdin=terminal, stdout=terminal, stderr=terminal, env=env, close_fds=True,
    )  # fmt: skip
    os.close(terminal)
    screen = b""
    deadline = time.monotonic() + 40
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                screen += chunk
            elif process.poll() is not None:
                break
        assert process.wait(timeout=20) == 0, screen[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    text = screen.decode(errors="replace")
    assert "\x1b[?1049h" in text and "\x1b[?1049l" in text  # entered and left the alternate screen
    assert text.count("grid links") >= 2  # two refreshes drawn
    for url in cluster.urls:
        assert url.split("://", 1)[1] in text
