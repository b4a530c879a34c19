"""Run the very node commands of compose/ and compose/k8s/ as the deployment would, each node in
its own network namespace with its own address, its hostname resolving as in the container
network, and its drives mounted at the paths the volumes use; then use the cluster from outside
through one node. Root only (namespaces, mounts); skipped with the reason otherwise."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from click.testing import CliRunner

from cli.main import main
from tests.chaos import netlab
from tests.cluster.helpers import http_status, wait_for
from tests.deploy.deployments import (
    NodeCommand,
    compose_nodes,
    k8s_nodes,
    load_k8s,
    read_dockerfile,
)

REASON = netlab.skip_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(REASON), reason=REASON or "runs")]

MINIGRID = str(Path(sys.executable).with_name("minigrid"))
DATA = Path("/data")  # where every deployment mounts its drives (/data/drive1, /data/drive2)
PORT = 9000


def s3_client(url: str, access_key: str, secret_key: str) -> Any:
    """A boto3 client for one node (path-style, one try)."""
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )  # fmt: skip


@contextlib.contextmanager
def hosts_files(namespaces: list[str], names: dict[str, str]) -> Iterator[None]:
    """``/etc/netns/NS/hosts`` for each namespace: ``ip netns exec`` shows it as /etc/hosts."""
    made = []
    parent = Path("/etc/netns")
    created = not parent.exists()
    try:
        for ns in namespaces:
            folder = Path("/etc/netns") / ns
            folder.mkdir(parents=True, exist_ok=False)
            made.append(folder)
            lines = ["127.0.0.1 localhost"] + [f"{addr} {name}" for name, addr in names.items()]
            (folder / "hosts").write_text("\n".join(lines) + "\n")
        yield
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                parent.rmdir()


@contextlib.contextmanager
def mount_point() -> Iterator[None]:
    """/data must exist to mount over it (inside each node's own mount namespace only)."""
    created = not DATA.exists()
    DATA.mkdir(exist_ok=True)
    try:
        yield
    finally:
        if created:
            with contextlib.suppress(OSError):
                DATA.rmdir()


@contextlib.contextmanager
def network(count: int) -> Iterator[tuple[list[str], list[str], netlab.Lab]]:
    """``count`` namespaces behind a router namespace, reachable from the host:
    (namespaces, addresses, lab)."""
    with netlab.lab() as lab:
        router = lab.netns("rt")
        netlab.run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=router)
        namespaces, addresses = [], []
        for index in range(count):
            ns = lab.netns(f"n{index}")
            prefix = netlab.subnet(index)
            lab.link(router, f"{prefix}.1", ns, f"{prefix}.2")
            lab.route(ns, "default", f"{prefix}.1")
            namespaces.append(ns)
            addresses.append(f"{prefix}.2")
        uplink = netlab.subnet(count)
        lab.link("", f"{uplink}.2", router, f"{uplink}.1")
        for index in range(count):
            lab.route("", f"{netlab.subnet(index)}.0/24", f"{uplink}.1")
        yield namespaces, addresses, lab


def start(node: NodeCommand, ns: str, drives: Path, log: Path) -> subprocess.Popen[bytes]:
    """The node's own command line, in its namespace, with ``drives`` mounted at /data."""
    assert node.argv[0] == "minigrid"
    command = [MINIGRID, *node.argv[1:]]
    script = 'mount --bind "$1" /data && shift && exec "$@"'
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **node.env}
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns, "sh", "-c", script, "sh", str(drives), *command],
            env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def health_probe(argv: list[str]) -> list[str]:
    """The image's HEALTHCHECK command; ``python`` is the image's interpreter (stdlib only),
    here the test's own."""
    return [sys.executable if argv[0] == "python" else argv[0], *argv[1:]]


@pytest.mark.parametrize("kind", ["compose", "k8s"])
def test_deployment_commands_run_in_namespaces_and_serve_a_round_trip(
    kind: str, tmp_path: Path
) -> None:
    nodes = compose_nodes() if kind == "compose" else k8s_nodes()
    with network(len(nodes)) as (namespaces, addresses, _lab), mount_point():
        names = {node.hostname: addr for node, addr in zip(nodes, addresses, strict=True)}
        with hosts_files(namespaces, names):
            processes = []
            try:
                for node, ns in zip(nodes, namespaces, strict=True):
                    drives = tmp_path / node.name
                    drives.mkdir(mode=0o700)
                    processes.append(start(node, ns, drives, tmp_path / f"{node.name}.log"))
                check_cluster(kind, nodes, namespaces, addresses, tmp_path)
            finally:
                stop(processes)
    for node in nodes:  # the drives were written where the volumes would be
        assert (tmp_path / node.name / "drive1" / ".minigrid.sys").is_dir()


def check_cluster(kind: str, nodes: list[NodeCommand], namespaces: list[str],
                  addresses: list[str], logs: Path) -> None:  # fmt: skip
    urls = [f"http://{addr}:{PORT}" for addr in addresses]

    def all_ready() -> bool:
        return all(http_status(url + "/minigrid/health/ready") == 200 for url in urls)

    try:
        wait_for(all_ready, 45, "every node to be ready", interval=0.2)
    except AssertionError:
        tails = {p.name: p.read_text()[-1500:] for p in sorted(logs.glob("*.log"))}
        raise AssertionError(f"not ready; logs: {json.dumps(tails, indent=1)}") from None
    probe = health_probe(read_dockerfile().healthcheck)
    for ns in namespaces:
        done = subprocess.run(["ip", "netns", "exec", ns, *probe], capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
    if kind == "k8s":
        (statefulset,) = [d for d in load_k8s() if d["kind"] == "StatefulSet"]
        (container,) = statefulset["spec"]["template"]["spec"]["containers"]
        for probe_name in ("readinessProbe", "livenessProbe"):
            path = container[probe_name]["httpGet"]["path"]
            assert all(http_status(url + path) == 200 for url in urls), probe_name

    env = nodes[0].env
    data = random.Random(14).randbytes(3 * (1 << 20) + 5)
    writer = s3_client(urls[0], env["MINIGRID_ACCESS_KEY"], env["MINIGRID_SECRET_KEY"])
    writer.create_bucket(Bucket="deployed")
    writer.put_object(Bucket="deployed", Key="round/trip.bin", Body=data)
    reader = s3_client(urls[2], env["MINIGRID_ACCESS_KEY"], env["MINIGRID_SECRET_KEY"])
    assert reader.get_object(Bucket="deployed", Key="round/trip.bin")["Body"].read() == data

    top = CliRunner().invoke(main, [
        "admin", "top", "--json", "--count", "1", "--endpoint", urls[0],
        "--access-key", env["MINIGRID_ADMIN_ACCESS_KEY"],
        "--secret-key", env["MINIGRID_ADMIN_SECRET_KEY"],
    ], env={"MINIGRID_DATA_DIR": str(logs / "no-cluster")}, catch_exceptions=False)  # fmt: skip
    assert top.exit_code == 0, top.output
    frame = json.loads(top.stdout)
    hosts = sorted(f"{node.hostname}:{PORT}" for node in nodes)
    assert sorted(n["host"] for n in frame["nodes"]) == hosts
    assert all(link["state"] == "connected" for n in frame["nodes"] for link in n["links"])
