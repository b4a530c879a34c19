"""Configuration (file, environment, flags), the drive layout, and a one-node in-process node."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.cluster import new_cluster
from cli.errors import S3ClientError
from cli.main import main
from cli.signed import SignedClient
from minigrid.testing import make_test_tls
from node.config import (
    ConfigError,
    choose_set_size,
    drive_order,
    load_config,
    parse_nodes,
    planned_formats,
)
from node.metrics import s3_operation
from node.process import Node


def _toml(path: Path) -> Path:
    path.write_text(
        'secret = "from-file"\naccess_key = "AK"\nsecret_key = "SK"\nnode = 1\n'
        "nodes = [\n"
        '  { url = "http://127.0.0.1:9000", drives = ["/d/a0", "/d/a1"] },\n'
        '  { url = "http://127.0.0.1:9001", drives = ["/d/b0", "/d/b1"] },\n'
        "]\n"
    )
    return path


def test_file_environment_and_flags_use_the_same_names(tmp_path: Path) -> None:
    path = _toml(tmp_path / "node.toml")
    config = load_config(str(path), env={})
    assert config.secret == "from-file" and config.node == 1
    assert config.admin_access_key == "AK"  # the admin keys default to the S3 keys
    env = {"MINIGRID_SECRET": "from-env", "MINIGRID_PARITY": "2", "MINIGRID_ALLOW_FAULTS": "1"}
    config = load_config(str(path), env=env)
    assert (config.secret, config.parity, config.allow_faults) == ("from-env", 2, True)
    config = load_config(str(path), env=env, flags={"secret": "from-flag", "node": "0"})
    assert config.secret == "from-flag" and config.host == "127.0.0.1:9000"
    by_url = load_config(str(path), env={"MINIGRID_NODE": "http://127.0.0.1:9001"})
    assert by_url.node == 1
    assert not load_config(str(path), env={}).allow_faults  # fault injection is off by default


def test_nodes_from_text_and_the_environment_alone() -> None:
    env = {
        "MINIGRID_NODES": "http://h1:9000=/d0,/d1; http://h2:9000=/d0,/d1",
        "MINIGRID_NODE": "1",
        "MINIGRID_SECRET": "s",
        "MINIGRID_ACCESS_KEY": "a",
        "MINIGRID_SECRET_KEY": "b",
    }
    config = load_config(None, env=env)
    assert [spec.host for spec in config.nodes] == ["h1:9000", "h2:9000"]
    assert config.layout.set_drive_count == 4 and config.layout.parity == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"secret": "s", "typo_key": 1}', "unknown option(s) typo_key"),
        ('{"nodes": [{"url": "http://h:1", "drives": ["/a"]}], "node": 0}', "missing"),
        ('{"nodes": [{"url": "h:1", "drives": ["/a"]}], "node": 0, "secret": "s", '
         '"access_key": "a", "secret_key": "b"}', "must look like http://host:port"),
        ('{"nodes": [{"url": "http://h:1", "drives": ["/a", "/b"]}], "node": 0, "secret": "s",'
         ' "access_key": "a", "secret_key": "b"}', "cannot be cut into erasure sets"),
    ],
)  # fmt: skip
def test_bad_configuration_is_explained(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(str(path), env={})


def test_tls_options_use_the_same_names_and_are_all_or_nothing(tmp_path: Path) -> None:
    files = make_test_tls(tmp_path / "tls")
    nodes = "https://127.0.0.1:9000=/d0,/d1 https://127.0.0.1:9001=/d0,/d1"
    base = {"MINIGRID_NODES": nodes, "MINIGRID_NODE": "0", "MINIGRID_SECRET": "s",
            "MINIGRID_ACCESS_KEY": "a", "MINIGRID_SECRET_KEY": "b"}  # fmt: skip
    env = {**base, "MINIGRID_TLS_CERT": str(files.cert), "MINIGRID_TLS_KEY": str(files.key)}
    config = load_config(None, env=env, flags={"tls_ca": str(files.ca)})
    assert config.tls and config.tls_ca == str(files.ca)
    assert load_config(None, env=base, flags={"tls_cert": str(files.cert),
                                             "tls_key": str(files.key)}).tls  # fmt: skip
    file = tmp_path / "node.json"
    file.write_text(json.dumps({"tls_cert": str(files.cert), "tls_key": str(files.key)}))
    assert load_config(str(file), env=base).tls
    problems = [
        (base, "https:// node URLs need tls_cert and tls_key"),
        ({**env, "MINIGRID_TLS_KEY": ""}, "tls_cert and tls_key go together"),
        ({**env, "MINIGRID_NODES": nodes.replace("https", "http")}, "must be https://"),
        ({**env, "MINIGRID_TLS_CA": str(tmp_path / "missing.pem")}, "is not a file"),
    ]
    for environment, message in problems:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(None, env=environment)


def test_layout_is_the_same_on_every_node() -> None:
    nodes = parse_nodes("http://a:1=/x,/y http://b:1=/x,/y http://c:1=/x,/y http://d:1=/x,/y")
    assert drive_order(nodes)[:5] == ((0, "/x"), (1, "/x"), (2, "/x"), (3, "/x"), (0, "/y"))
    assert choose_set_size(8, 4) == 8 and choose_set_size(32, 8) == 16
    assert choose_set_size(12, 3) == 12 and choose_set_size(24, 6) == 12
    base = {"nodes": nodes, "secret": "s", "access_key": "a", "secret_key": "b",
            "deployment_id": "d"}  # fmt: skip
    one, two = (load_config(None, env={}, flags={**base, "node": n}) for n in (0, 3))
    assert planned_formats(one.layout) == planned_formats(two.layout)
    formats = planned_formats(one.layout)
    assert len({fmt.drive_id for fmt in formats}) == 8
    assert formats[5].position() == (0, 5)


def test_s3_operation_names() -> None:
    assert s3_operation("GET", "/", []) == "ListBuckets"
    assert s3_operation("PUT", "/b", []) == "CreateBucket"
    assert s3_operation("GET", "/b", ["list-type"]) == "ListObjects"
    assert s3_operation("POST", "/b", ["delete"]) == "DeleteObjects"
    assert s3_operation("PUT", "/b/k/x", []) == "PutObject"
    assert s3_operation("HEAD", "/b/k", []) == "HeadObject"


@pytest.mark.asyncio
async def test_one_node_in_process_with_faults_allowed(tmp_path: Path) -> None:
    drives = ",".join(str(tmp_path / f"d{i}") for i in range(4))
    config = load_config(None, env={}, flags={
        "nodes": f"http://127.0.0.1:1={drives}", "node": "0", "secret": "s",
        "access_key": "ak", "secret_key": "sk", "admin_access_key": "adm",
        "admin_secret_key": "adm-secret", "listen": "127.0.0.1:0", "allow_faults": True,
    })  # fmt: skip
    node = Node(config)
    await node.start()
    try:
        assert node.readiness()["ready"]
        host, port = node.addresses[0][:2]
        url = f"http://{host}:{port}"
        admin = SignedClient(url, "adm", "adm-secret")
        with pytest.raises(S3ClientError) as unknown:
            await asyncio.to_thread(admin.call, "POST", "/minigrid/admin/v1/fault/no-such")
        assert unknown.value.status == 404 and unknown.value.code == "NoSuchFault"
        with pytest.raises(S3ClientError) as alone:  # a node freezes peers, never itself
            await asyncio.to_thread(admin.call, "POST", "/minigrid/admin/v1/fault/freeze")
        assert alone.value.status == 400 and "no peers" in alone.value.message
        before = time.time()
        jumped = json.loads(await asyncio.to_thread(
            admin.call, "POST", "/minigrid/admin/v1/fault/clock-jump", {"seconds": "-3600"}))
        assert jumped["active"]["clock_offset_s"] == -3600
        assert time.time() < before - 3500  # this process *is* the node: its clock moved
        with pytest.raises(S3ClientError) as bad:
            await asyncio.to_thread(admin.call, "POST", "/minigrid/admin/v1/fault/slow-drive",
                                    {"drive": "9", "ms": "5"})  # fmt: skip
        assert bad.value.status == 400 and "drive must be" in bad.value.message
        cleared = json.loads(await asyncio.to_thread(
            admin.call, "POST", "/minigrid/admin/v1/fault/clear"))
        assert cleared["cleared"] == ["clock -3600s"] and time.time() >= before
        config_doc = json.loads(await asyncio.to_thread(admin.call, "GET",
                                                        "/minigrid/admin/v1/config"))
        assert config_doc["secret"] == "***" and config_doc["allow_faults"] is True
        s3 = SignedClient(url, "ak", "sk")
        with pytest.raises(S3ClientError) as denied:  # S3 keys are not admin keys
            await asyncio.to_thread(s3.call, "GET", "/minigrid/admin/v1/info")
        assert denied.value.status == 403
        info = await node.info()
        assert [d["state"] for d in info["drives"]] == ["ok"] * 4
    finally:
        await node.close()


def test_fsync_is_on_unless_turned_off_by_any_of_its_names(tmp_path: Path) -> None:
    path = _toml(tmp_path / "node.toml")
    assert load_config(str(path), env={}).fsync is True  # durable by default
    assert load_config(str(path), env={"MINIGRID_FSYNC": "off"}).fsync is False
    assert load_config(str(path), env={"MINIGRID_FSYNC": "off"}, flags={"fsync": "on"}).fsync
    assert load_config(str(path), env={}, flags={"fsync": "off"}).fsync is False
    with_file = tmp_path / "node.json"
    document = {"secret": "s", "access_key": "a", "secret_key": "b", "node": 0, "fsync": "off",
                "nodes": [{"url": "http://127.0.0.1:9000", "drives": ["/a", "/b", "/c", "/d"]}]}
    with_file.write_text(json.dumps(document))  # fmt: skip
    config = load_config(str(with_file), env={})
    assert config.fsync is False and config.public_dict()["fsync"] == "off"
    with pytest.raises(ConfigError, match="fsync must be on or off, not 'maybe'"):
        load_config(str(path), env={"MINIGRID_FSYNC": "maybe"})
    refused = CliRunner().invoke(main, ["node", "run", "--config", str(path), "--fsync", "no"])
    assert refused.exit_code == 2 and "'no' is not one of 'on', 'off'" in refused.output
    # cluster up --fsync off keeps it in cluster.json, which the nodes read as their config.
    cluster = new_cluster(tmp_path / "c", 4, 1, [9000, 9001, 9002, 9003], None, "fast", False)
    assert cluster.config["fsync"] == "off"
    assert "fsync" not in new_cluster(tmp_path / "d", 4, 1, [1, 2, 3, 4], None, "fast").config
