"""Multipart uploads in the object layer, with faults injected into the drives."""

from __future__ import annotations

import asyncio

import pytest

from storage.erasure_set import MAX_STRAGGLER_WAIT
from storage.errors import UploadNotFound
from storage.objects import ObjectLayer
from storage.testing import FaultyDrive, payload, read_all
from tests.conftest import eventually

Set = tuple[ObjectLayer, list[FaultyDrive]]


@pytest.mark.asyncio
async def test_a_slow_drive_is_waited_for_when_a_part_is_staged(faulty_set: Set) -> None:
    """A part's commit waits for every drive, however slow, instead of cutting the slow one
    off as a straggler: a drive missing any part could not take the completed object (a 1 GiB
    upload of 128 parts on a loaded machine once failed that way)."""
    layer, drives = faulty_set
    layer.min_part_size = 0
    upload = await layer.create_multipart("bkt", "slow")
    gate = drives[3].hold("commit_part")
    task = asyncio.create_task(layer.upload_part("bkt", "slow", upload, 1, payload(3000, 1)))
    await eventually(lambda: drives[3].held["commit_part"] == 1)
    await eventually(lambda: sum(d.calls["commit_part"] for d in drives) == 8)
    # Far past the longest straggler cut-off, the part is still waiting for drive 3.
    done, _ = await asyncio.wait({task}, timeout=2.5 * MAX_STRAGGLER_WAIT)
    assert not done
    gate.set()
    part = await task
    for drive in drives:
        assert [p.etag for p in await drive.list_parts("bkt", upload)] == [part.etag]
    await layer.complete_multipart("bkt", "slow", upload, [(1, part.etag)])
    drives[0].offline = drives[1].offline = drives[2].offline = drives[4].offline = True
    assert await read_all(layer, "bkt", "slow") == payload(3000, 1)  # drive 3 carries it


@pytest.mark.asyncio
async def test_complete_with_a_drive_that_missed_a_part(faulty_set: Set) -> None:
    """A drive that missed a part cannot take the object; the others (a write quorum) do,
    and the drive is reported for healing."""
    layer, drives = faulty_set
    layer.min_part_size = 0
    upload = await layer.create_multipart("bkt", "gap")
    first = await layer.upload_part("bkt", "gap", upload, 1, b"a" * 5000)
    drives[6].offline = True
    second = await layer.upload_part("bkt", "gap", upload, 2, b"b" * 5000)
    drives[6].offline = False
    info = await layer.complete_multipart("bkt", "gap", upload, [(1, first.etag), (2, second.etag)])
    assert info.etag.endswith("-2")
    assert await read_all(layer, "bkt", "gap") == b"a" * 5000 + b"b" * 5000
    with pytest.raises(UploadNotFound):
        await layer.list_parts("bkt", "gap", upload)
