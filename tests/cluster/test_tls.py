"""A cluster started with ``cluster up --tls``: real node processes with certificates from the
private CA that ``up`` made, S3 over HTTPS verified by boto3, and the grid over wss://."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest

from minigrid.tls import make_ca
from tests.cluster.helpers import MIB, LocalCluster, payload


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("tls-cluster"), tls=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_up_makes_a_private_ca_and_owner_only_keys(tls_cluster: LocalCluster) -> None:
    config = tls_cluster.config
    assert all(url.startswith("https://127.0.0.1:") for url in tls_cluster.urls)
    folder = tls_cluster.root / "tls"
    assert config["tls_ca"] == str(folder / "ca.crt")
    keys = sorted(p.name for p in folder.glob("*.key"))
    assert keys == ["ca.key", *[f"node{n}.key" for n in range(tls_cluster.nodes)]]
    for key in folder.glob("*.key"):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    # Each node certificate verifies against the CA, for 127.0.0.1 and localhost.
    context = ssl.create_default_context(cafile=config["tls_ca"])
    port = int(tls_cluster.urls[0].rsplit(":", 1)[1])
    for name in ("127.0.0.1", "localhost"):
        connection = http.client.HTTPSConnection(name, port, context=context, timeout=5)
        connection.request("GET", "/minigrid/health/live")
        assert connection.getresponse().status == 200
        connection.close()


def test_boto3_round_trip_verifies_the_ca_and_the_grid_runs_over_tls(
    tls_cluster: LocalCluster,
) -> None:
    s3 = tls_cluster.boto(0)  # verify=<the cluster's CA>
    s3.create_bucket(Bucket="secure")
    data = payload(3 * MIB + 17, seed=9)  # erasure-coded: shards go to every node over the grid
    s3.put_object(Bucket="secure", Key="blob", Body=data)
    assert tls_cluster.boto(2).get_object(Bucket="secure", Key="blob")["Body"].read() == data

    view = tls_cluster.info()
    assert [node["state"] for node in view["nodes"]] == ["ok"] * tls_cluster.nodes
    pairs = tls_cluster.nodes * (tls_cluster.nodes - 1)
    assert len(view["grid"]) == pairs
    for conn in view["grid"]:
        assert conn["state"] == "connected" and conn["tls"].startswith("TLSv1."), conn
    status = json.loads(tls_cluster.admin(1).call("GET", "/minigrid/admin/v1/info"))
    assert status["node"]["tls"] is True


def test_clients_that_do_not_trust_the_ca_or_speak_plaintext_are_refused(
    tls_cluster: LocalCluster,
) -> None:
    untrusting = tls_cluster.boto(0, verify=True)  # the system's trust store only
    with pytest.raises(botocore.exceptions.SSLError):
        untrusting.list_buckets()
    plain_url = tls_cluster.urls[1].replace("https://", "http://") + "/minigrid/health/live"
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        urllib.request.urlopen(plain_url, timeout=5).close()
    # The node shrugged both off: it is still ready, and logged no traceback for them.
    assert tls_cluster.ready(1)[0]
    log_text = Path(tls_cluster.load().process(1).log).read_text()
    assert "Traceback" not in log_text


def test_the_cli_verifies_with_the_recorded_ca(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(payload(200_000, seed=3))
    assert tls_cluster.cli("mb", "cli-secure").exit_code == 0
    put = tls_cluster.cli("put", str(source), "cli-secure/x")
    assert put.exit_code == 0, put.output
    got = tmp_path / "out.bin"
    result = tls_cluster.cli("get", "cli-secure/x", str(got))
    assert result.exit_code == 0, result.output
    assert got.read_bytes() == source.read_bytes()
    info = tls_cluster.cli("admin", "info", "--json")
    assert info.exit_code == 0, info.output
    assert all(c["tls"].startswith("TLSv1.") for c in json.loads(info.output)["grid"])
    # Another CA given explicitly wins over cluster.json's, and is refused with a clear error.
    other = tmp_path / "other-ca.pem"
    other.write_text(make_ca(tmp_path / "other").cert.read_text())
    refused = tls_cluster.cli("ls", "cli-secure", "--tls-ca", str(other))
    assert refused.exit_code == 1
    assert "certificate is not trusted" in refused.stderr
