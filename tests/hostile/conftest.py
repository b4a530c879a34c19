"""Fixtures for the hostile-peer tests: one target, witness and hostile peer per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.harness import HostileGrid


@pytest.fixture(scope="module")
def grid(
    tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostileGrid]:
    hostile_grid = HostileGrid(tmp_path_factory.mktemp("hostile"))
    try:
        hostile_grid.start()
        yield hostile_grid
    finally:
        hostile_grid.stop()
