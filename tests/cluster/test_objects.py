"""Objects through the CLI and through boto3 on a healthy 4-node cluster; auth, admin, metrics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from cli.cluster import cluster_up
from tests.cluster.helpers import MIB, LocalCluster, get_json, metrics_text, payload


def test_cli_put_get_list_delete(cluster: LocalCluster, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(payload(5 * MIB + 123, seed=1))
    small = tmp_path / "notes.txt"
    small.write_bytes(b"hello, cluster\n")

    made = cluster.cli("mb", "docs")
    assert made.exit_code == 0, made.output
    again = cluster.cli("mb", "docs")
    assert again.exit_code == 1
    assert 'bucket "docs" already exists (BucketAlreadyOwnedByYou)' in again.stderr

    put = cluster.cli("put", str(big), "docs/data/big.bin")
    assert put.exit_code == 0, put.output
    assert cluster.cli("put", str(small), "docs/").exit_code == 0  # key from the file name

    buckets = cluster.cli("ls")
    assert "docs/" in buckets.stdout
    top = cluster.cli("ls", "docs")
    assert "PRE  data/" in top.stdout and "notes.txt" in top.stdout
    assert "big.bin" not in top.stdout
    deep = cluster.cli("ls", "-r", "docs")
    assert f"{5 * MIB + 123}  data/big.bin" in deep.stdout

    stat = cluster.cli("stat", "docs/data/big.bin")
    assert f"size          {5 * MIB + 123}" in stat.stdout

    out = tmp_path / "copy.bin"
    got = cluster.cli("get", "docs/data/big.bin", str(out))
    assert got.exit_code == 0, got.output
    assert out.read_bytes() == big.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
    to_stdout = cluster.cli("get", "docs/notes.txt", "-")
    assert to_stdout.stdout_bytes == b"hello, cluster\n"

    assert cluster.cli("rm", "docs/notes.txt").exit_code == 0
    gone = cluster.cli("get", "docs/notes.txt", str(tmp_path / "nothing"))
    assert gone.exit_code == 1
    assert 'object "docs/notes.txt" does not exist (NoSuchKey)' in gone.stderr
    assert not (tmp_path / "nothing").exists()
    assert "notes.txt" not in cluster.cli("ls", "-r", "docs").stdout
    missing = cluster.cli("ls", "nope")
    assert missing.exit_code == 1
    assert 'bucket "nope" does not exist (NoSuchBucket)' in missing.stderr


def test_boto3_put_get_list_delete(cluster: LocalCluster) -> None:
    s3 = cluster.boto(node=2)
    try:
        s3.create_bucket(Bucket="boto")
        body = payload(3 * MIB + 7, seed=2)
        put = s3.put_object(Bucket="boto", Key="dir/one.bin", Body=body)
        s3.put_object(Bucket="boto", Key="dir/two.txt", Body=b"two")
        listing = s3.list_objects_v2(Bucket="boto", Prefix="dir/")
        assert [o["Key"] for o in listing["Contents"]] == ["dir/one.bin", "dir/two.txt"]
        got = s3.get_object(Bucket="boto", Key="dir/one.bin")
        assert got["Body"].read() == body
        assert got["ETag"] == put["ETag"]
        ranged = s3.get_object(Bucket="boto", Key="dir/one.bin", Range="bytes=1000-1999")
        assert ranged["Body"].read() == body[1000:2000]
        # Any node serves the same data.
        other = cluster.boto(node=0)
        try:
            assert other.get_object(Bucket="boto", Key="dir/two.txt")["Body"].read() == b"two"
        finally:
            other.close()
        s3.delete_object(Bucket="boto", Key="dir/one.bin")
        with pytest.raises(ClientError) as missing:
            s3.head_object(Bucket="boto", Key="dir/one.bin")
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="boto").get("Contents", [])]
        assert keys == ["dir/two.txt"]
    finally:
        s3.close()


def test_wrong_secret_key_is_refused(cluster: LocalCluster) -> None:
    s3 = cluster.boto(node=1, secret_key="not-the-secret")
    try:
        with pytest.raises(ClientError) as refused:
            s3.list_buckets()
    finally:
        s3.close()
    error = refused.value.response
    assert error["Error"]["Code"] == "SignatureDoesNotMatch"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    cli = cluster.cli("ls", "--endpoint", cluster.urls[1], "--access-key",
                      cluster.config["access_key"], "--secret-key", "wrong")  # fmt: skip
    assert cli.exit_code == 1
    assert "(SignatureDoesNotMatch)" in cli.stderr


FAULT_COMMANDS = [
    ["freeze", "1"], ["thaw", "1"], ["kill", "1"], ["restart", "1"], ["partition", "0", "1"],
    ["unpartition"], ["nat", "0", "1", "--idle-timeout", "5"], ["delay", "1", "--ms", "50"],
    ["loop-block", "1", "--seconds", "1"], ["clock-jump", "1", "--seconds", "-3600"],
    ["corrupt", "b/k", "--drive", "0"], ["wipe-drive", "1", "0"],
    ["slow-drive", "1", "0", "--ms", "50"], ["list"], ["clear"],
]


@pytest.mark.parametrize("args", FAULT_COMMANDS, ids=lambda args: args[0])
def test_every_fault_command_is_refused_without_allow_faults(cluster: LocalCluster,
                                                             args: list[str]) -> None:  # fmt: skip
    pids = [cluster.pid(node) for node in range(4)]
    result = cluster.cli("fault", *args)
    assert result.exit_code == 1
    assert "not started with --allow-faults" in result.stderr
    assert "cluster up --allow-faults" in result.stderr  # and what to do instead
    assert [cluster.pid(node) for node in range(4)] == pids
    assert all(cluster.ready(node)[0] for node in range(4))  # nothing was frozen or killed


def test_admin_api_health_and_metrics(cluster: LocalCluster) -> None:
    url = cluster.urls[0]
    assert get_json(url + "/minigrid/health/live")[0] == 200
    status, ready = get_json(url + "/minigrid/health/ready")
    assert status == 200 and ready["drives_online"] == 8
    status, body = get_json(url + "/minigrid/admin/v1/info")
    assert status == 401 and body["code"] == "Unauthenticated"
    wrong = cluster.client(0, secret_key="wrong")  # S3 keys are not admin keys
    with pytest.raises(Exception, match="InvalidAccessKeyId"):
        wrong.call("GET", "/minigrid/admin/v1/info")
    with pytest.raises(Exception, match="FaultsDisabled"):
        cluster.admin(0).call("POST", "/minigrid/admin/v1/fault/freeze")

    view = cluster.info()
    assert [n["state"] for n in view["nodes"]] == ["ok"] * 4
    assert len(view["drives"]) == 8
    assert all(d["state"] == "ok" and d["total"] > 0 for d in view["drives"])
    assert len(view["grid"]) == 12  # 4 nodes x 3 peers, seen from both ends
    assert all(c["state"] == "connected" and c["rtt_last"] is not None for c in view["grid"])
    table = cluster.cli("admin", "info")
    assert table.exit_code == 0, table.output
    assert "grid connections" in table.stdout

    cluster.boto(0).list_buckets()
    text = metrics_text(url)
    for name in ("minigrid_grid_connected", "minigrid_grid_rtt_seconds",
                 "minigrid_grid_sent_bytes_total", "minigrid_grid_inflight_calls",
                 "minigrid_grid_reconnects_total", "minigrid_drive_online",
                 'minigrid_s3_requests_total{api="ListBuckets",status="200"}'):  # fmt: skip
        assert name in text, name


def test_cluster_up_again_is_harmless(cluster: LocalCluster) -> None:
    pids = [cluster.pid(n) for n in range(4)]
    result = cluster_up(cluster.root)
    assert result.already_running and result.started == []
    assert [cluster.pid(n) for n in range(4)] == pids
    again = cluster.cli("cluster", "up")
    assert again.exit_code == 0 and "already running" in again.stdout
    status = subprocess.run(
        [sys.executable, "-m", "cli.main", "cluster", "status", "--json",
         "--data-dir", str(cluster.root)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert '"ready": true' in status.stdout


def test_multipart_across_nodes(cluster: LocalCluster, tmp_path: Path) -> None:
    """A multipart upload over real nodes: parts staged on remote drives over the grid,
    completed from another node, read back from a third, and nothing left staged."""
    data = payload(11 * MIB + 5, seed=31)
    source, back = tmp_path / "mp.bin", tmp_path / "mp-back.bin"
    source.write_bytes(data)
    s3 = cluster.boto(node=1)
    s3.create_bucket(Bucket="multi")
    s3.upload_file(str(source), "multi", "over/the/grid.bin")  # 8 MiB parts: two
    head = cluster.boto(node=3).head_object(Bucket="multi", Key="over/the/grid.bin")
    assert head["ETag"].endswith('-2"') and head["ContentLength"] == len(data)
    cluster.boto(node=2).download_file("multi", "over/the/grid.bin", str(back))
    assert back.read_bytes() == data
    # An upload started on one node is seen, and aborted, from another.
    upload = s3.create_multipart_upload(Bucket="multi", Key="left")["UploadId"]
    s3.upload_part(Bucket="multi", Key="left", UploadId=upload, PartNumber=1, Body=b"x" * 100)
    other = cluster.boto(node=0)
    listed = other.list_multipart_uploads(Bucket="multi")["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("left", upload)]
    other.abort_multipart_upload(Bucket="multi", Key="left", UploadId=upload)
    areas = [drive / ".minigrid.sys" / "multipart" for drive in cluster.drive_paths()]
    staged = [path for area in areas for path in area.rglob("*") if path.is_file()]
    assert staged == []
    assert cluster.temp_files() == []
