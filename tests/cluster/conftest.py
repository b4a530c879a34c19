"""Fixtures for the cluster tests: real node processes, one cluster per test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.cluster import pid_alive
from tests.cluster.helpers import LocalCluster


def started_cluster(root: os.PathLike[str] | str) -> Iterator[LocalCluster]:
    """Start a 4 x 2 cluster (parity 4); stop it afterwards, even when the tests failed."""
    cluster = LocalCluster(Path(root))
    try:
        cluster.start()
        yield cluster
    finally:
        pids = [(p.pid, p.ticks) for p in cluster.load().processes] if cluster.file else []
        cluster.stop()
        assert not any(pid_alive(pid, ticks) for pid, ticks in pids), "a node outlived stop"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from started_cluster(tmp_path_factory.mktemp("cluster"))
