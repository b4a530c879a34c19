"""Healing one object: find the drives whose copy is missing, outdated or corrupt, rebuild their
shards from k good ones, and write them back.

1. Read the object's metadata on every drive of its set and take the latest version a read
   quorum agrees on. Each drive's copy is then *ok*, *missing*, *outdated* (another version),
   *corrupt* (metadata or shard fails its checksum) or *offline* (no answer; left for later).
2. Check the shard of every drive holding that version: in normal mode that the file exists with
   the right size, in deep mode every bitrot hash.
3. With at least k good shards, stream the object in from them (the same hedged fetcher a GET
   uses), re-encode each block, keeping only the shards the damaged drives need (a lost data
   shard is a slice of the block; zfec computes only the parity shards asked for), and stream
   them to those drives. Each drive then commits: the data is renamed into place, then the
   metadata, exactly as a put commits, under the key's write lock in this process.
4. With fewer than k good shards nothing is written: the object is *unrecoverable* when a copy
   is corrupt or a drive did not answer, and *dangling* when every drive answered and the
   missing copies are simply not there (the leftovers of a write or delete that never reached
   quorum). Dangling objects are deleted only with ``remove_dangling``.

A drive is never given an older version than it holds: just before the commit, the healer
re-reads the target's metadata and skips it when a newer version landed meanwhile.
"""

from __future__ import annotations

import asyncio
import enum
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any

from heal.cpu import CpuPolicy
from storage import bitrot
from storage.drive import Drive, ShardWriter
from storage.erasure import Erasure
from storage.erasure_set import MAX_STRAGGLER_WAIT, ErasureSet
from storage.errors import (
    FileCorrupt,
    FileNotFound,
    StorageError,
    VolumeNotFound,
)
from storage.meta import ObjectMeta
from storage.names import validate_bucket, validate_object
from storage.objects import ObjectLayer
from storage.quorum import find_agreement
from storage.reader import ShardFetcher, ShardSource

#: How long a heal waits for a slow drive once a quorum answered (a foreground read waits far
#: less): a heal would rather wait than skip the very drive it came to repair.
PATIENCE = MAX_STRAGGLER_WAIT


class DriveState(enum.StrEnum):
    """One drive's copy of an object, as the healer sees it."""

    OK = "ok"
    MISSING = "missing"
    OUTDATED = "outdated"
    CORRUPT = "corrupt"
    OFFLINE = "offline"


#: States the healer repairs (offline drives are left for when they come back).
DAMAGED = frozenset({DriveState.MISSING, DriveState.OUTDATED, DriveState.CORRUPT})


class Outcome(enum.StrEnum):
    OK = "ok"  # every drive that answered holds a good copy
    HEALED = "healed"  # every damaged drive was rewritten
    PARTIAL = "partial"  # some damaged drives could not be written (they went offline, …)
    WOULD_HEAL = "would-heal"  # dry run: damage found, nothing written
    UNRECOVERABLE = "unrecoverable"  # fewer than k good shards, some corrupt or unreachable
    DANGLING = "dangling"  # fewer than k copies, every drive said "not here"
    DELETED = "deleted"  # dangling, and removed on request
    SKIPPED = "skipped"  # too many drives offline to tell what the object is
    NOT_FOUND = "not-found"  # no drive holds any copy (deleted since it was queued)


@dataclass
class ObjectHealResult:
    """What the healer found and did, per drive position of the object's set."""

    bucket: str
    key: str
    set_index: int
    outcome: Outcome
    before: list[DriveState]
    after: list[DriveState]
    size: int = 0
    bytes_written: int = 0  # shard bytes written to the healed drives
    detail: str = ""
    endpoints: list[str] = field(default_factory=list)

    @property
    def healed_drives(self) -> list[int]:
        return [p for p, (b, a) in enumerate(zip(self.before, self.after, strict=True)) if b != a]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "key": self.key,
            "set": self.set_index,
            "outcome": self.outcome.value,
            "size": self.size,
            "bytes_written": self.bytes_written,
            "before": [s.value for s in self.before],
            "after": [s.value for s in self.after],
            "detail": self.detail,
        }


def metadata_state(copy: ObjectMeta | StorageError, version: tuple[Any, ...] | None) -> DriveState:
    """A drive's state judged from its metadata alone."""
    if isinstance(copy, ObjectMeta):
        return DriveState.OK if copy.version_key() == version else DriveState.OUTDATED
    if isinstance(copy, FileNotFound | VolumeNotFound):
        return DriveState.MISSING
    if isinstance(copy, FileCorrupt):
        return DriveState.CORRUPT
    return DriveState.OFFLINE


def _shard_state(error: StorageError | None) -> DriveState:
    if error is None:
        return DriveState.OK
    if isinstance(error, FileNotFound | VolumeNotFound):
        return DriveState.MISSING
    if isinstance(error, FileCorrupt):
        return DriveState.CORRUPT
    return DriveState.OFFLINE


async def _attempt(work: Awaitable[Any]) -> StorageError | None:
    try:
        await work
    except StorageError as exc:
        return exc
    return None


class ObjectHealer:
    """Heals objects of an :class:`ObjectLayer`, one at a time per call."""

    def __init__(self, layer: ObjectLayer, *, cpu: CpuPolicy | None = None) -> None:
        self.layer = layer
        self.cpu = cpu or CpuPolicy()

    async def heal(
        self,
        bucket: str,
        key: str,
        *,
        deep: bool = False,
        dry_run: bool = False,
        remove_dangling: bool = False,
    ) -> ObjectHealResult:
        """Check one object and repair what is damaged (see the module docstring)."""
        validate_bucket(bucket)
        validate_object(key)
        eset = self.layer.set_for(bucket, key)
        async with self.layer.locks.read((bucket, key)):
            copies = await eset.read_metadata(bucket, key, patience=PATIENCE)
        agreement = find_agreement(copies, eset.read_quorum, version=ObjectMeta.version_key)
        result = ObjectHealResult(
            bucket, key, eset.index, Outcome.OK, [], [],
            endpoints=[drive.endpoint for drive in eset.drives],
        )  # fmt: skip
        if agreement is None:
            result.before = [metadata_state(copy, None) for copy in copies]
            result.after = list(result.before)
            return await self._without_version(eset, result, copies, dry_run, remove_dangling)
        meta = agreement.require()
        result.size = meta.size
        result.before = await self._check_copies(eset, bucket, key, meta, copies, deep)
        result.after = list(result.before)
        good = [p for p, state in enumerate(result.before) if state is DriveState.OK]
        targets = [p for p, state in enumerate(result.before) if state in DAMAGED]
        if not targets:
            return result
        if len(good) < meta.erasure.data:
            return await self._too_few(eset, result, copies, dry_run, remove_dangling)
        if dry_run:
            result.outcome = Outcome.WOULD_HEAL
            return result
        written = await self._rebuild(eset, bucket, key, meta, copies, good, targets, result)
        committed = await self._commit(eset, bucket, key, meta, copies, written)
        for position in committed:
            result.after[position] = DriveState.OK
        result.outcome = Outcome.HEALED if len(committed) == len(targets) else Outcome.PARTIAL
        return result

    # --- finding the damage -----------------------------------------------------------------

    async def _check_copies(
        self,
        eset: ErasureSet,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        copies: Sequence[ObjectMeta | StorageError],
        deep: bool,
    ) -> list[DriveState]:
        version = meta.version_key()
        states = [metadata_state(copy, version) for copy in copies]
        holders = [p for p, state in enumerate(states) if state is DriveState.OK]
        if meta.inline is not None:
            if deep:
                for position in holders:
                    copy = copies[position]
                    assert isinstance(copy, ObjectMeta)
                    states[position] = await self._check_inline(meta, copy)
            return states
        checks = await asyncio.gather(
            *(self._check_shards(eset.drives[position], bucket, key, meta, deep)
              for position in holders)
        )  # fmt: skip
        for position, error in zip(holders, checks, strict=True):
            states[position] = _shard_state(error)
        return states

    @staticmethod
    async def _check_shards(
        drive: Drive, bucket: str, key: str, meta: ObjectMeta, deep: bool
    ) -> StorageError | None:
        """Check a drive's shard files (one per part of a multipart object); the first
        fault found, or None."""
        info = meta.erasure
        for part, size in meta.segments():
            error = await _attempt(
                drive.verify_shard(
                    bucket, key, meta.data_dir, chunk_size=info.shard_chunk_size(),
                    shard_size=info.shard_size(size), deep=deep, part=part,
                )
            )  # fmt: skip
            if error is not None:
                return error
        return None

    async def _check_inline(self, meta: ObjectMeta, copy: ObjectMeta) -> DriveState:
        info = meta.erasure

        def verify() -> None:
            for _chunk in bitrot.iter_verified(
                copy.inline or b"", info.shard_chunk_size(), info.shard_size(meta.size)
            ):
                pass

        try:
            await self.cpu.run(verify)
        except FileCorrupt:
            return DriveState.CORRUPT
        return DriveState.OK

    # --- when no version has k good copies --------------------------------------------------

    async def _without_version(
        self,
        eset: ErasureSet,
        result: ObjectHealResult,
        copies: Sequence[ObjectMeta | StorageError],
        dry_run: bool,
        remove_dangling: bool,
    ) -> ObjectHealResult:
        if all(state is DriveState.MISSING for state in result.before):
            result.outcome = Outcome.NOT_FOUND
            result.detail = "no drive holds any copy"
            return result
        return await self._too_few(eset, result, copies, dry_run, remove_dangling)

    async def _too_few(
        self,
        eset: ErasureSet,
        result: ObjectHealResult,
        copies: Sequence[ObjectMeta | StorageError],
        dry_run: bool,
        remove_dangling: bool,
    ) -> ObjectHealResult:
        states = result.before
        good = sum(1 for state in states if state is DriveState.OK)
        if DriveState.OFFLINE in states:
            result.outcome = Outcome.SKIPPED
            result.detail = (
                f"{good} good copies of {eset.data} needed and "
                f"{states.count(DriveState.OFFLINE)} drives did not answer: left for later"
            )
            return result
        if DriveState.CORRUPT in states:
            result.outcome = Outcome.UNRECOVERABLE
            result.detail = (
                f"only {good} good shards of {eset.data} needed "
                f"({states.count(DriveState.CORRUPT)} corrupt); nothing was changed"
            )
            return result
        result.outcome = Outcome.DANGLING
        result.detail = (
            f"{good} copies of {eset.data} needed and every other drive says it has none"
        )
        if remove_dangling and not dry_run:
            await self._remove(eset, result, copies)
        return result

    async def _remove(
        self,
        eset: ErasureSet,
        result: ObjectHealResult,
        copies: Sequence[ObjectMeta | StorageError],
    ) -> None:
        bucket, key = result.bucket, result.key
        holding = [p for p, copy in enumerate(copies) if isinstance(copy, ObjectMeta | FileCorrupt)]
        async with self.layer.locks.write((bucket, key)):
            errors = await asyncio.gather(
                *(_attempt(eset.drives[p].delete_object(bucket, key)) for p in holding)
            )
        for position, error in zip(holding, errors, strict=True):
            if error is None or isinstance(error, FileNotFound):
                result.after[position] = DriveState.MISSING
        result.outcome = Outcome.DELETED

    # --- rebuilding -------------------------------------------------------------------------

    async def _rebuild(
        self,
        eset: ErasureSet,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        copies: Sequence[ObjectMeta | StorageError],
        good: list[int],
        targets: list[int],
        result: ObjectHealResult,
    ) -> dict[int, tuple[str, bytes | None]]:
        """Stage each target's shard; returns ``{position: (upload id, inline bytes)}``."""
        info = meta.erasure
        erasure = Erasure(info.data, info.parity, info.block_size)
        wanted = sorted({info.distribution[p] for p in targets})
        upload_id = uuid.uuid4().hex
        if meta.inline is not None:
            held = [c for p in good if isinstance(c := copies[p], ObjectMeta)]
            inline = await self._rebuild_inline(meta, erasure, held, wanted)
            staged: dict[int, tuple[str, bytes | None]] = {
                p: (upload_id, inline[info.distribution[p]]) for p in targets
            }
            result.bytes_written += sum(len(shard or b"") for _, shard in staged.values())
            return staged
        alive = list(targets)
        # Each part of a multipart object is its own coded shard file: rebuild them one by
        # one into the same write in progress; a drive that fails one part is dropped.
        for part, size in meta.segments():
            alive = await self._rebuild_segment(
                eset, bucket, key, meta, good, alive, upload_id, part, size, wanted, result
            )
            if not alive:
                return {}
        return {position: (upload_id, None) for position in alive}

    async def _rebuild_segment(
        self,
        eset: ErasureSet,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        good: list[int],
        targets: list[int],
        upload_id: str,
        part: int,
        size: int,
        wanted: list[int],
        result: ObjectHealResult,
    ) -> list[int]:
        """Rebuild one shard file (``part``, ``size`` bytes of the object) onto ``targets``;
        returns the positions that now hold it staged."""
        info = meta.erasure
        erasure = Erasure(info.data, info.parity, info.block_size)
        writers = await self._open_writers(eset, targets, upload_id, part)
        if not writers:
            return []
        blocks = -(-size // info.block_size)
        fetcher = ShardFetcher(
            bucket=bucket,
            key=key,
            meta=meta,
            sources=[ShardSource(p, info.distribution[p], eset.drives[p]) for p in good],
            first_block=0,
            last_block=blocks - 1,
            hedge=self.layer.hedge,
            stats=self.layer.stats,
            report=lambda source, reason: self.layer.report(
                eset, bucket, key, source.position, reason
            ),
            part=part,
            size=size,
        )
        try:
            batch: list[bytes] = []
            for number in range(blocks):
                batch.append(await fetcher.block(number))
                if number + 1 < blocks and not self.cpu.slice_full(sum(map(len, batch))):
                    continue
                encoded = await self.cpu.run(self.encode_blocks, erasure, batch, wanted)
                batch = []
                for shards in encoded:
                    await self._write(writers, shards, info.distribution, result)
                if not writers:
                    return []
        except BaseException:
            await asyncio.gather(*(_attempt(w.abort()) for w in writers.values()))
            raise
        finally:
            await fetcher.close()
        finished = await asyncio.gather(*(_attempt(writer.commit()) for writer in writers.values()))
        return [
            position for position, error in zip(writers, finished, strict=True) if error is None
        ]

    async def _rebuild_inline(
        self, meta: ObjectMeta, erasure: Erasure, held: list[ObjectMeta], wanted: list[int]
    ) -> dict[int, bytes]:
        """Framed inline shards for ``wanted``, decoded from the good copies' inline data."""
        info = meta.erasure
        if meta.size == 0:
            return dict.fromkeys(wanted, b"")
        chunk, shard_size = info.shard_chunk_size(), info.shard_size(meta.size)

        def rebuild() -> dict[int, bytes]:
            shards = {
                copy.erasure.index: b"".join(
                    bitrot.iter_verified(copy.inline or b"", chunk, shard_size)
                )
                for copy in held[: info.data]
            }
            data = erasure.decode(shards, meta.size)
            rebuilt = erasure.encode_some(data, wanted)
            return {index: bitrot.frame_all(shard, chunk) for index, shard in rebuilt.items()}

        return await self.cpu.run(rebuild)

    def encode_blocks(
        self, erasure: Erasure, blocks: list[bytes], wanted: list[int]
    ) -> list[dict[int, bytes]]:
        """The shards ``wanted`` of each block. The unsafe mode encodes every shard, as a full
        re-encode would, so a slice costs what a naive healer pays."""
        if not self.cpu.inline:
            return [erasure.encode_some(block, wanted) for block in blocks]
        out = []
        for block in blocks:
            shards = erasure.encode(block)
            for shard in shards:
                bitrot.digest(shard)
            out.append({index: shards[index] for index in wanted})
        return out

    async def _open_writers(
        self, eset: ErasureSet, targets: list[int], upload_id: str, part: int = 0
    ) -> dict[int, ShardWriter]:
        opened = await asyncio.gather(
            *(_open_writer(eset.drives[p], upload_id, part) for p in targets)
        )
        return {p: w for p, w in zip(targets, opened, strict=True) if w is not None}

    @staticmethod
    async def _write(
        writers: dict[int, ShardWriter],
        shards: dict[int, bytes],
        distribution: Sequence[int],
        result: ObjectHealResult,
    ) -> None:
        positions = list(writers)
        errors = await asyncio.gather(
            *(_attempt(writers[p].write(shards[distribution[p]])) for p in positions)
        )
        for position, error in zip(positions, errors, strict=True):
            if error is not None:
                await _attempt(writers.pop(position).abort())
            else:
                result.bytes_written += len(shards[distribution[position]])

    # --- committing -------------------------------------------------------------------------

    async def _commit(
        self,
        eset: ErasureSet,
        bucket: str,
        key: str,
        meta: ObjectMeta,
        copies: Sequence[ObjectMeta | StorageError],
        written: dict[int, tuple[str, bytes | None]],
    ) -> list[int]:
        """Install each staged shard; returns the positions now holding a good copy."""
        info = meta.erasure

        async def install(position: int) -> bool:
            drive = eset.drives[position]
            upload_id, inline = written[position]
            if not await _unchanged(drive, bucket, key, copies[position]):
                await _attempt(drive.undo_rename(upload_id, bucket, key))
                return False
            copy = meta.for_drive(info.distribution[position], inline)
            if await _attempt(drive.rename_data(upload_id, bucket, key, copy)) is not None:
                await _attempt(drive.undo_rename(upload_id, bucket, key))
                return False
            await _attempt(drive.commit_rename(upload_id, bucket, key))
            return True

        async with self.layer.locks.write((bucket, key)):
            done = await asyncio.gather(*(install(p) for p in written))
        return [p for p, ok in zip(written, done, strict=True) if ok]


async def _open_writer(drive: Drive, upload_id: str, part: int = 0) -> ShardWriter | None:
    if not drive.is_online():
        return None
    try:
        return await drive.create_shard(upload_id, part)
    except StorageError:
        return None


async def _unchanged(
    drive: Drive, bucket: str, key: str, seen: ObjectMeta | StorageError
) -> bool:
    """Whether the drive still holds the copy the healer judged (compare and swap).

    A put that landed meanwhile changed it: the heal must not overwrite that. Versions are
    compared by identity, not by modification time, so a node whose wall clock jumped can
    neither block a heal nor have its newer write undone."""
    try:
        current = await drive.read_metadata(bucket, key)
    except (FileNotFound, VolumeNotFound, FileCorrupt):
        return not isinstance(seen, ObjectMeta)  # had a copy, now none: a delete got there
    except StorageError:
        return False  # offline or failing: not now
    return isinstance(seen, ObjectMeta) and current.version_key() == seen.version_key()


__all__ = ["DAMAGED", "DriveState", "ObjectHealResult", "ObjectHealer", "Outcome"]
