"""Failures on a real 4-node cluster (2 drives each, parity 4 of 8: read quorum 4, write 5).

Every test leaves the cluster as it found it (``restore`` in ``finally``): all nodes running,
every node seeing every drive.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cli.adminclient import AdminClient
from cli.cluster import bind_port
from cli.signed import SignedClient, object_path
from node.s3 import sigv4
from tests.cluster.helpers import MIB, LocalCluster, payload, wait_for

BUCKET = "failures"
FAST_DEAD_AFTER = 4.0  # minigrid.profile("fast").dead_after


@pytest.fixture(scope="module", autouse=True)
def bucket(cluster: LocalCluster) -> None:
    cluster.boto(0).create_bucket(Bucket=BUCKET)


@pytest.fixture
def restored(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The cluster, put back together after the test (thawed, restarted, reconnected)."""
    try:
        yield cluster
    finally:
        cluster.restore()


def put_bytes(s3: Any, key: str, data: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=data)


def get_bytes(s3: Any, key: str) -> bytes:
    body: bytes = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def test_get_with_two_nodes_down(restored: LocalCluster) -> None:
    cluster = restored
    data = payload(6 * MIB + 5, seed=10)
    put_bytes(cluster.boto(0), "two-down", data)
    cluster.kill(2, 3)
    assert get_bytes(cluster.boto(0), "two-down") == data
    assert get_bytes(cluster.boto(1), "two-down") == data
    ok, body = cluster.ready(0)
    assert not ok and "4 of 8 drives online" in body["reason"]  # reads work, writes would not


def test_put_with_one_node_down_then_below_quorum(restored: LocalCluster, tmp_path: Path) -> None:
    cluster = restored
    cluster.kill(3)
    data = payload(3 * MIB, seed=11)
    put_bytes(cluster.boto(0), "one-down", data)  # 6 of 8 drives >= write quorum 5
    assert get_bytes(cluster.boto(1), "one-down") == data

    cluster.kill(1, 2)
    upload = tmp_path / "late.bin"
    upload.write_bytes(payload(2 * MIB, seed=12))
    result = cluster.cli("put", str(upload), f"{BUCKET}/below-quorum")
    assert result.exit_code == 1
    assert "(ServiceUnavailable)" in result.stderr and "quorum" in result.stderr
    ok, body = cluster.ready(0)
    assert not ok and body["drives_online"] == 2

    cluster.restore()
    with pytest.raises(ClientError) as absent:
        cluster.boto(2).head_object(Bucket=BUCKET, Key="below-quorum")
    assert absent.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert get_bytes(cluster.boto(3), "one-down") == data


def test_frozen_node_does_not_stall_reads(restored: LocalCluster) -> None:
    cluster = restored
    data = payload(24 * MIB, seed=13)
    client = cluster.boto(0, timeout=30)
    put_bytes(client, "frozen", data)

    def timed_get() -> float:
        started = time.monotonic()
        assert get_bytes(client, "frozen") == data
        return time.monotonic() - started

    healthy = statistics.median(timed_get() for _ in range(3))
    frozen_at = time.monotonic()
    assert cluster.signal(3, signal.SIGSTOP)
    during = timed_get()
    # The straggler wait (4 hedge delays, 0.2-2 s) stands in for "the hedge delay": the read
    # may wait that long once a quorum answered, never for the failure detector (4 s).
    bound = 2 * healthy + 0.5
    print(f"healthy get {healthy:.3f}s, with node 3 frozen {during:.3f}s")
    assert during < bound, f"get took {during:.2f}s with a node frozen (healthy {healthy:.2f}s)"
    assert time.monotonic() - frozen_at < FAST_DEAD_AFTER, "the read waited for the detector"

    def frozen_node_offline() -> bool:
        view = cluster.info(timeout=1.0)
        return view["nodes"][3]["state"] == "offline" and all(
            drive["state"] == "offline" for drive in view["drives"] if drive["node"] == 3
        )

    wait_for(frozen_node_offline, 10, "admin info to show node 3 offline")
    detected = time.monotonic() - frozen_at
    assert detected < FAST_DEAD_AFTER + 2.5, f"node 3 shown offline only after {detected:.1f}s"
    table = cluster.cli("admin", "info")
    assert table.exit_code == 3  # not every node is ok
    assert "offline" in table.stdout


def _read_counters(cluster: LocalCluster) -> dict[str, int]:
    """Node 0's read counters (hedges, replacements, retired streams, decodes)."""
    lines = AdminClient(cluster.load()).lines(0, "GET", "/top", scope="node", count=1)
    counters: dict[str, int] = lines[0]["nodes"][0]["reads"]
    return counters


def test_node_frozen_mid_get_is_replaced_block_by_block(restored: LocalCluster) -> None:
    cluster = restored
    data = payload(32 * MIB, seed=14)
    put_bytes(cluster.boto(0), "frozen-mid", data)
    before = _read_counters(cluster)
    # Every node holds one data shard of every object (the set's drive order is drive-major),
    # so node 2's data stream is one of the four node 0 reads from.
    response = cluster.client(0, timeout=60).request("GET", object_path(BUCKET, "frozen-mid"))
    received = bytearray()
    frozen = False
    while piece := response.read1(MIB):
        received += piece
        if not frozen and len(received) >= len(data) // 4:
            frozen = cluster.signal(2, signal.SIGSTOP)
    response.close()
    assert frozen and bytes(received) == data
    after = _read_counters(cluster)
    # Node 2's stream was replaced mid-object: by a hedge when it missed its deadline, or (on
    # a machine so loaded that the grid gave up on node 2 first) after it failed.
    moved = (after["hedges"] + after["replacements"]) - (before["hedges"] + before["replacements"])
    assert moved >= 1
    assert after["decodes"] > before["decodes"]  # blocks after the freeze came from parity


def _start_raw_put(
    url: str, client: SignedClient, key: str, size: int
) -> http.client.HTTPConnection:
    """Send the headers of a ``size``-byte PUT and return the connection, body not sent."""
    raw_path = object_path(BUCKET, key)
    headers = client.sign("PUT", raw_path, {}, sigv4.UNSIGNED_PAYLOAD)
    conn = http.client.HTTPConnection(url.split("://", 1)[1], timeout=30)
    conn.putrequest("PUT", raw_path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    return conn


def test_sigkill_during_put_leaves_no_torn_object(restored: LocalCluster) -> None:
    cluster = restored
    size = 32 * MIB
    data = payload(size, seed=14)
    conn = _start_raw_put(cluster.urls[1], cluster.client(1), "torn", size)
    try:
        conn.send(data[: 8 * MIB])
        # Shards are being written into the temporary areas of (at least) a write quorum.
        wait_for(lambda: len(cluster.temp_files()) >= 5, 20, "shard files in the temp areas")
        cluster.kill(1)  # the node coordinating the put
    finally:
        conn.close()
    cluster.restore()
    try:
        stored = get_bytes(cluster.boto(0), "torn")
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NoSuchKey", exc
    else:
        assert stored == data  # complete and correct, never a mix
    wait_for(lambda: cluster.temp_files() == [], 10, "the temp areas to be empty")


def test_node_with_another_secret_cannot_join(restored: LocalCluster, tmp_path: Path) -> None:
    cluster = restored
    cluster.kill(3)
    url = cluster.urls[3]
    impostor_host = url.split("://", 1)[1]
    sock = bind_port(int(url.rsplit(":", 1)[1]), 3, grace=5)
    log_path = tmp_path / "impostor.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIGRID_")}
    with open(log_path, "wb") as log:
        impostor = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "node", "run", "--config",
             str(cluster.root / "cluster.json"), "--node", "3", "--secret", "another-secret",
             "--listen-fd", str(sock.fileno())],
            stdout=log, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()], env=env,
        )  # fmt: skip
    sock.close()
    try:
        peers = [u.split("://", 1)[1] for u in cluster.urls[:3]]

        def refused_by_every_peer() -> bool:
            text = log_path.read_text()
            return all(
                f"rejected dial from {peer}: bad-proof" in text
                or f"{impostor_host}->{peer}: rejected by peer: bad-proof" in text
                for peer in peers
            )

        wait_for(refused_by_every_peer, 15, "every peer to try the impostor and be refused")
        for node in range(3):
            view = json.loads(cluster.admin(node).call("GET", "/minigrid/admin/v1/info"))
            assert view["grid"][impostor_host]["state"] != "connected"
            assert not view["peers"][impostor_host]["online"]
        ok, body = cluster.ready(3)
        assert not ok and body["drives_online"] == 2  # only its own drives
    finally:
        impostor.terminate()
        impostor.wait(10)
