"""Fixtures for the storage tests: drive sets in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from storage.local import LocalDrive
from storage.objects import HealReport, ObjectLayer
from storage.testing import FaultyDrive, local_layer


@pytest_asyncio.fixture
async def drive(tmp_path: Path) -> AsyncIterator[LocalDrive]:
    yield await LocalDrive.open(str(tmp_path / "drive"))


@pytest.fixture
def heal_reports() -> list[HealReport]:
    return []


@pytest_asyncio.fixture
async def faulty_set(
    tmp_path: Path, heal_reports: list[HealReport]
) -> AsyncIterator[tuple[ObjectLayer, list[FaultyDrive]]]:
    """An 8-drive set (4+4) of FaultyDrive-wrapped local drives with a bucket ``bkt``."""
    layer, drives = await local_layer(
        str(tmp_path / "drives"), 8, faulty=True, heal_hook=heal_reports.append, hedge_floor=0.01
    )
    await layer.make_bucket("bkt")
    yield layer, drives
