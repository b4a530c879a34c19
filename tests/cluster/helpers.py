"""A real local cluster for tests: node processes started by ``cluster_up`` in a temp directory.

Ports come from below the kernel's ephemeral range (``ip_local_port_range``), so no outgoing
connection can take a killed node's port before it restarts; a base port that turns out to be
taken is simply retried with another one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from click.testing import CliRunner, Result

from cli.admin import cluster_info
from cli.cluster import (
    ClusterError,
    ClusterFile,
    cluster_up,
    readiness,
    stop_nodes,
)
from cli.main import main
from cli.signed import SignedClient

T = TypeVar("T")
MIB = 1 << 20
NODES = 4
DRIVES = 2
PARITY = 4
TMP_AREA = os.path.join(".minigrid.sys", "tmp")


def wait_for(
    predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _port_range() -> tuple[int, int]:
    try:
        low, _high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low = 32768
    return 20000, max(20100, min(low, 32768)) - NODES - 1


class LocalCluster:
    """One cluster in ``root``: start, kill, freeze, restart and talk to its nodes."""

    def __init__(self, root: Path, *, nodes: int = NODES, drives: int = DRIVES,
                 parity: int = PARITY, tls: bool = False,
                 options: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.root = root
        self.nodes = nodes
        self.drives = drives
        self.parity = parity
        self.tls = tls
        self.options = options
        self.file: ClusterFile | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self, attempts: int = 6) -> None:
        low, high = _port_range()
        for attempt in range(attempts):
            base = random.randrange(low, high)
            try:
                result = cluster_up(self.root, nodes=self.nodes, drives=self.drives,
                                    base_port=base, parity=self.parity,
                                    tls=self.tls, options=self.options)  # fmt: skip
            except ClusterError as exc:
                if "already in use" in str(exc) and attempt + 1 < attempts:
                    for leftover in self.root.glob("cluster.json"):
                        leftover.unlink()
                    continue
                raise
            self.file = result.cluster
            return

    def restore(self) -> None:
        """Thaw frozen nodes, restart dead ones, wait until every node sees every drive."""
        for node in range(self.nodes):
            self.signal(node, signal.SIGCONT)
        self.file = cluster_up(self.root).cluster
        self.wait_all_drives()

    def stop(self) -> None:
        if self.file is not None:
            for node in range(self.nodes):
                self.signal(node, signal.SIGCONT)
            stop_nodes(self.load())

    def load(self) -> ClusterFile:
        loaded = ClusterFile.load(self.root)
        assert loaded is not None
        self.file = loaded
        return loaded

    # --- processes ----------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self.load().config

    @property
    def urls(self) -> list[str]:
        return self.load().urls

    @property
    def ca(self) -> str | None:
        """The CA the nodes' certificates are signed by (None for a plaintext cluster)."""
        return self.load().ca

    def pid(self, node: int) -> int:
        pid = self.load().process(node).pid
        assert pid is not None, f"node {node} has no process"
        return pid

    def signal(self, node: int, signum: int) -> bool:
        return self.load().process(node).signal(signum)

    def kill(self, *nodes: int) -> None:
        """SIGKILL these nodes and wait until they are gone."""
        entries = [self.load().process(node) for node in nodes]
        for entry in entries:
            assert entry.signal(signal.SIGKILL), f"node {entry.node} was not running"
        for entry in entries:
            wait_for(lambda entry=entry: not entry.alive(), 10, f"node {entry.node} to die")

    # --- waiting ------------------------------------------------------------------------------

    def ready(self, node: int) -> tuple[bool, dict[str, Any]]:
        return readiness(self.urls[node], ca=self.ca)

    def wait_all_drives(self, timeout: float = 20) -> None:
        """Every node is ready and sees all the drives online (every grid connection is up)."""

        def all_online() -> bool:
            for url in self.urls:
                ok, body = readiness(url, ca=self.ca)
                if not ok or body.get("drives_online") != body.get("drives"):
                    return False
            return True

        wait_for(all_online, timeout, "every node to see every drive online")

    # --- clients ------------------------------------------------------------------------------

    def client(self, node: int = 0, *, secret_key: str | None = None,
               timeout: float = 60) -> SignedClient:  # fmt: skip
        """A raw SigV4 client with the S3 keys, for requests boto3 would not send."""
        config = self.config
        return SignedClient(self.urls[node], config["access_key"],
                            secret_key or config["secret_key"], timeout=timeout,
                            ca=self.ca)  # fmt: skip

    def admin(self, node: int = 0) -> SignedClient:
        config = self.config
        return SignedClient(self.urls[node], config["admin_access_key"],
                            config["admin_secret_key"], ca=self.ca)  # fmt: skip

    def boto(self, node: int = 0, *, secret_key: str | None = None,
             verify: str | bool | None = None, timeout: float = 60,
             signature_version: str | None = None) -> Any:  # fmt: skip
        """A boto3 client for node ``node``; https is verified against the cluster's CA
        unless ``verify`` says otherwise (``signature_version="s3v4"`` for presigned URLs:
        boto3 presigns with version 2 by default)."""
        config = self.config
        return boto3.client(
            "s3",
            verify=self.ca if verify is None else verify,
            endpoint_url=self.urls[node],
            aws_access_key_id=config["access_key"],
            aws_secret_access_key=secret_key or config["secret_key"],
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                          read_timeout=timeout, signature_version=signature_version),
        )

    def info(self, timeout: float = 3.0) -> dict[str, Any]:
        config = self.config
        return cluster_info(self.urls, config["admin_access_key"], config["admin_secret_key"],
                            "us-east-1", timeout, self.ca)  # fmt: skip

    def cli(self, *args: str, env: dict[str, str] | None = None,
            input: bytes | None = None) -> Result:  # fmt: skip
        """Run ``minigrid ARGS`` in this process (click's runner) against this cluster, with
        ``input`` on its stdin."""
        full_env = {"MINIGRID_DATA_DIR": str(self.root), **(env or {})}
        return CliRunner().invoke(main, list(args), env=full_env, input=input,
                                  catch_exceptions=False)  # fmt: skip

    # --- drives -------------------------------------------------------------------------------

    def drive_paths(self) -> Iterator[Path]:
        for node in self.config["nodes"]:
            for drive in node["drives"]:
                yield Path(drive)

    def temp_files(self) -> list[Path]:
        """Every file in any drive's temporary area (writes in progress)."""
        found: list[Path] = []
        for drive in self.drive_paths():
            area = drive / TMP_AREA
            if area.is_dir():
                found.extend(p for p in area.rglob("*") if p.is_file())
        return found


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        exc.close()
        return exc.code, body


def node_states(view: dict[str, Any]) -> Sequence[str]:
    return [node["state"] for node in view["nodes"]]


def http_status(url: str) -> int:
    """The HTTP status of a GET, or 0 while the node does not answer (yet): nothing listens,
    or it is still starting and the request waits in the accept queue past the timeout."""
    try:
        return get_json(url)[0]
    except OSError:  # URLError, ConnectionRefusedError, TimeoutError
        return 0
