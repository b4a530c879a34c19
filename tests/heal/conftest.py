"""Fixtures for the heal tests: an 8-drive set (4+4) of local drives behind FaultyDrive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from storage.objects import ObjectLayer
from storage.testing import FaultyDrive, local_layer


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[ObjectLayer, list[FaultyDrive]]]:
    layer, drives = await local_layer(str(tmp_path / "drives"), 8, faulty=True, hedge_floor=0.01)
    await layer.make_bucket("bkt")
    yield layer, drives
