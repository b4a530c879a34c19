"""Fixtures for the hostile-peer tests: one target, witness and hostile peer per module."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.hostile.harness import HostileGrid


@pytest.fixture(scope="module", autouse=True)
def _isolated_aws_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the developer's ~/.aws files and AWS_* variables out of boto3."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    for name in saved:
        del os.environ[name]
    empty = tmp_path_factory.mktemp("aws") / "none"
    os.environ["AWS_CONFIG_FILE"] = str(empty)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(empty)
    yield
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(saved)


@pytest.fixture(scope="module")
def grid(
    tmp_path_factory: pytest.TempPathFactory, _isolated_aws_config: None
) -> Iterator[HostileGrid]:
    hostile_grid = HostileGrid(tmp_path_factory.mktemp("hostile"))
    try:
        hostile_grid.start()
        yield hostile_grid
    finally:
        hostile_grid.stop()
