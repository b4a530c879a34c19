"""Hedged reads: per-drive deadlines, a stream stalled mid-object replaced block by block, and
metadata stragglers cut at their own deadline. Stalls are FaultyDrive gates that stay shut until
the read is over, so a read that completes cannot have waited for the stalled drive."""

from __future__ import annotations

import asyncio

import pytest
from storage_helpers import MIB, payload, read_all
from test_faults import Set, positions_by_shard

from storage.erasure_set import METADATA, ErasureSet
from storage.errors import FileNotFound, ObjectNotFound, VolumeNotFound
from storage.latency import DriveLatency
from storage.reader import FIRST_CHUNK, NEXT_CHUNK
from tests.conftest import eventually

# --- the estimator ------------------------------------------------------------------------


def test_one_slow_drive_raises_only_its_own_deadline() -> None:
    latency = DriveLatency(floor=0.01, ceiling=1.0, factor=2.0, min_samples=8)
    for _ in range(64):
        latency.observe("slow", NEXT_CHUNK, 0.4)
        latency.observe("fast", NEXT_CHUNK, 0.002)
    assert latency.deadline("slow", NEXT_CHUNK) == pytest.approx(0.8)
    assert latency.deadline("fast", NEXT_CHUNK) == pytest.approx(0.01)  # 2 x 2 ms, floored
    # The set-wide p95 is the slow drive's: a drive with no history of its own uses it.
    assert latency.set_percentile(NEXT_CHUNK) == pytest.approx(0.4)
    assert latency.deadline("new", NEXT_CHUNK) == pytest.approx(0.8)
    # Kinds are apart: the slow drive's chunks say nothing about its first chunk.
    assert latency.percentile("slow", FIRST_CHUNK) is None


def test_deadline_is_clamped_and_uses_the_fallback_without_history() -> None:
    latency = DriveLatency(floor=0.02, ceiling=0.5, fallback=0.1, min_samples=4)
    assert latency.deadline("d", NEXT_CHUNK) == pytest.approx(0.1)
    for _ in range(4):
        latency.observe("d", NEXT_CHUNK, 10.0)
    assert latency.deadline("d", NEXT_CHUNK) == pytest.approx(0.5)


def test_percentile_follows_the_recent_window() -> None:
    latency = DriveLatency(window=16, min_samples=8, floor=0.0, ceiling=100.0, factor=1.0)
    for _ in range(16):
        latency.observe("d", NEXT_CHUNK, 5.0)
    for _ in range(16):  # the drive recovered: the old samples have left the window
        latency.observe("d", NEXT_CHUNK, 0.01)
    assert latency.percentile("d", NEXT_CHUNK) == pytest.approx(0.01)


def test_a_late_drive_makes_its_node_suspect_until_it_answers() -> None:
    latency = DriveLatency()
    latency.mark_late("a1", "node-a")
    assert latency.suspect("a1", "node-a")
    assert latency.suspect("a2", "node-a")  # same node
    assert not latency.suspect("b1", "node-b")
    assert not latency.suspect("local", "")
    latency.observe("a1", NEXT_CHUNK, 0.01)
    assert not latency.suspect("a2", "node-a")


# --- the reader ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_stalled_mid_object_is_replaced_from_that_block(faulty_set: Set) -> None:
    layer, drives = faulty_set
    data = payload(6 * MIB + 123, seed=40)
    await layer.put_object("bkt", "obj", data)
    stalled = drives[(await positions_by_shard(layer, drives, "obj"))[1]]  # data shard 1
    gate = asyncio.Event()
    stalled.read_gate_after = 3  # blocks 0-2 arrive, then the stream stops for good
    stalled.read_gate = gate
    try:
        async with asyncio.timeout(60):
            assert await read_all(layer, "bkt", "obj") == data
        # The read ended while the stalled drive was still stopped.
        assert not gate.is_set() and stalled.reads_waiting >= 1
    finally:
        gate.set()
    # A loaded machine may hedge other chunks too; the stalled stream's own story is exact.
    late = [e for e in layer.stats.events if e.kind == "late" and e.endpoint == stalled.endpoint]
    assert late[-1].block == 3
    assert late[-1].spare and late[-1].spare != stalled.endpoint
    retired = [(e.endpoint, e.block) for e in layer.stats.events if e.kind == "retired"]
    assert (stalled.endpoint, 3) in retired
    assert layer.stats.hedges >= 1
    assert layer.stats.decodes >= 3  # blocks 3-6 came from a parity shard in its place


@pytest.mark.asyncio
async def test_a_slow_drives_history_does_not_delay_hedging_another(faulty_set: Set) -> None:
    layer, drives = faulty_set
    data = payload(4 * MIB, seed=41)
    await layer.put_object("bkt", "obj", data)
    order = await positions_by_shard(layer, drives, "obj")
    slow, stalled = drives[order[6]], drives[order[0]]
    for _ in range(64):  # a parity drive that has been slow for a while
        layer.latency.observe(slow.endpoint, NEXT_CHUNK, 0.45)
        layer.latency.observe(slow.endpoint, FIRST_CHUNK, 0.45)
    for _ in range(16):  # and a data drive that has been quick
        layer.latency.observe(stalled.endpoint, NEXT_CHUNK, 0.001)
    gate = asyncio.Event()
    stalled.read_gate_after = 1
    stalled.read_gate = gate
    try:
        async with asyncio.timeout(60):
            assert await read_all(layer, "bkt", "obj") == data
    finally:
        gate.set()
    late = next(e for e in layer.stats.events if e.kind == "late" and e.block == 1
                and e.endpoint == stalled.endpoint)  # fmt: skip
    # The stalled drive was timed by its own recent chunks, not by the slow drive's (which
    # dominate the set-wide percentile).
    assert late.allowed == pytest.approx(layer.latency.deadline(stalled.endpoint, NEXT_CHUNK))
    assert late.allowed < layer.latency.deadline(slow.endpoint, NEXT_CHUNK)
    set_wide = layer.latency.set_percentile(NEXT_CHUNK)
    assert set_wide is not None and late.allowed < set_wide


@pytest.mark.asyncio
async def test_metadata_straggler_is_cut_and_its_node_avoided(faulty_set: Set) -> None:
    layer, drives = faulty_set
    data = payload(3 * MIB, seed=42)
    await layer.put_object("bkt", "obj", data)
    order = await positions_by_shard(layer, drives, "obj")
    silent, sibling = drives[order[5]], drives[order[0]]  # a parity drive, data shard 0
    # Both are served by one (pretend) peer node; the silent one never answers metadata.
    silent.host = sibling.host = "node-x:9000"  # type: ignore[attr-defined]
    held = silent.hold("read_metadata")
    try:
        async with asyncio.timeout(60):
            assert await read_all(layer, "bkt", "obj") == data
    finally:
        held.set()
    # The silent drive was cut after the quorum, and marked late with its node ...
    assert layer.latency.suspect(silent.endpoint, "node-x:9000")
    assert layer.latency.percentile(silent.endpoint, METADATA) is None
    # ... so its node's other drive, although it holds data shard 0, was not read: a parity
    # shard of another node was preferred (and the blocks decoded).
    assert sibling.calls["read_shard"] == 0
    assert layer.stats.decodes > 0


@pytest.mark.asyncio
async def test_a_late_stream_that_catches_up_is_kept_over_its_spare(faulty_set: Set) -> None:
    layer, drives = faulty_set
    data = payload(4 * MIB, seed=43)
    await layer.put_object("bkt", "obj", data)
    order = await positions_by_shard(layer, drives, "obj")
    slow = drives[order[2]]  # data shard 2
    slow_gate, parity_gate = asyncio.Event(), asyncio.Event()
    slow.read_gate_after, slow.read_gate = 1, slow_gate
    for position in order[4:]:  # every spare is slower still: the hedge cannot win
        drives[position].read_gate = parity_gate
    try:
        async with asyncio.timeout(60):
            reading = asyncio.create_task(read_all(layer, "bkt", "obj"))
            await eventually(lambda: layer.stats.hedges >= 1, 30, "the late stream's hedge")
            slow_gate.set()  # the data shard catches up before the spare delivers anything
            assert await reading == data
    finally:
        slow_gate.set()
        parity_gate.set()
    late = next(e for e in layer.stats.events if e.kind == "late")
    assert (late.endpoint, late.block) == (slow.endpoint, 1)
    retired = [e.endpoint for e in layer.stats.events if e.kind == "retired"]
    assert late.spare in retired and slow.endpoint not in retired
    assert layer.stats.decodes == 0  # every block came from the four data shards


@pytest.mark.asyncio
async def test_stragglers_are_cut_early_only_when_they_cannot_change_the_version(
    faulty_set: Set,
) -> None:
    layer, drives = faulty_set
    await layer.put_object("bkt", "obj", payload(MIB, seed=44))
    old = await drives[0].read_metadata("bkt", "obj")
    await layer.put_object("bkt", "obj", payload(MIB, seed=45))
    new = await drives[0].read_metadata("bkt", "obj")
    assert new.version_key() > old.version_key()
    settled = layer.sets[0].metadata_settled
    assert settled([new] * 6, 2)
    assert settled([old] * 4 + [new], 2)  # 1 + 2 silent copies cannot make a quorum of 4
    assert not settled([old] * 4 + [new] * 2, 2)  # ... but 2 + 2 could: wait for them
    assert not settled([old] * 3 + [new] * 3, 2)  # no version agreed yet
    assert not settled([new] * 4, 4)  # four silent drives could hold a newer version


@pytest.mark.asyncio
async def test_a_missing_key_is_settled_without_waiting_for_a_frozen_node(
    faulty_set: Set, monkeypatch: pytest.MonkeyPatch
) -> None:
    layer, drives = faulty_set
    settled = layer.sets[0].metadata_settled
    missing, no_bucket = FileNotFound("x"), VolumeNotFound("x")
    assert settled([missing] * 6, 2)  # two silent copies cannot make a quorum of 4
    assert not settled([missing] * 4, 4)  # four could
    assert settled([missing] * 5 + [no_bucket], 2)  # nor a "no such bucket" quorum: 1 + 2 < 4
    assert not settled([missing] * 4 + [no_bucket] * 2, 2)  # 2 + 2 could make "no bucket"
    await layer.put_object("bkt", "obj", payload(MIB, seed=46))
    meta = await drives[0].read_metadata("bkt", "obj")
    assert not settled([meta] * 2 + [missing] * 4, 2)  # 2 + 2 silent copies could be a quorum
    assert settled([meta] + [missing] * 5, 2)
    # A node (two drives) frozen: they never answer. With an unbounded straggler wait, only
    # the settled rule can end the read, so the 404 proves it was applied.
    monkeypatch.setattr(ErasureSet, "straggler_wait", lambda self: 3600.0)
    holds = [drive.hold("read_metadata") for drive in drives[6:]]
    try:
        async with asyncio.timeout(60):
            with pytest.raises(ObjectNotFound):
                await layer.head_object("bkt", "nothing-here")
    finally:
        for held in holds:
            held.set()
    assert all(d.calls["read_metadata"] == 1 for d in drives[6:])  # asked, then cut off
