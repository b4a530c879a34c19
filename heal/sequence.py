"""One heal run over a bucket or a prefix, as ``minigrid admin heal`` starts it.

The run walks every erasure set (not just this node's) for the buckets asked, heals each
object, and yields every :class:`~heal.object.ObjectHealResult` as it goes, so the admin API
can stream them. :class:`HealProgress` keeps the counters the CLI shows live (scanned, healed,
failed, bytes, rate, ETA) and a per-drive summary of states before and after.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from heal.object import ObjectHealer, ObjectHealResult, Outcome
from heal.walk import set_buckets, walk_set
from storage.errors import StorageError
from storage.names import validate_bucket
from storage.objects import ObjectLayer


@dataclass
class HealProgress:
    started: float = field(default_factory=time.monotonic)
    scanned: int = 0
    healed: int = 0
    ok: int = 0
    failed: int = 0  # unrecoverable, dangling (kept) or errors
    skipped: int = 0  # drives offline: left for later
    deleted: int = 0  # dangling objects removed on request
    bytes_written: int = 0
    expected: int | None = None  # objects the run expects to walk (for the ETA), when known
    #: per drive endpoint: Counter of states before and after
    before: dict[str, Counter[str]] = field(default_factory=dict)
    after: dict[str, Counter[str]] = field(default_factory=dict)

    def add(self, result: ObjectHealResult) -> None:
        self.scanned += 1
        self.bytes_written += result.bytes_written
        outcome = result.outcome
        if outcome is Outcome.HEALED:
            self.healed += 1
        elif outcome in (Outcome.OK, Outcome.NOT_FOUND, Outcome.WOULD_HEAL):
            self.ok += 1
        elif outcome in (Outcome.SKIPPED, Outcome.PARTIAL):
            self.skipped += 1
        elif outcome is Outcome.DELETED:
            self.deleted += 1
        else:
            self.failed += 1
        for endpoint, before, after in zip(
            result.endpoints, result.before, result.after, strict=True
        ):
            self.before.setdefault(endpoint, Counter())[before.value] += 1
            self.after.setdefault(endpoint, Counter())[after.value] += 1

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.scanned / elapsed
        eta = None
        if self.expected is not None and rate > 0:
            eta = round(max(0, self.expected - self.scanned) / rate, 1)
        return {
            "scanned": self.scanned,
            "healed": self.healed,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "deleted": self.deleted,
            "bytes_written": self.bytes_written,
            "elapsed_s": round(elapsed, 3),
            "objects_per_s": round(rate, 1),
            "bytes_per_s": round(self.bytes_written / elapsed, 1),
            "expected": self.expected,
            "eta_s": eta,
            "drives": {
                endpoint: {"before": dict(self.before[endpoint]), "after": dict(counts)}
                for endpoint, counts in sorted(self.after.items())
            },
        }


class HealRun:
    """Heal every object of ``bucket`` (all buckets when empty) under ``prefix``."""

    def __init__(
        self,
        layer: ObjectLayer,
        healer: ObjectHealer,
        *,
        bucket: str = "",
        prefix: str = "",
        deep: bool = False,
        dry_run: bool = False,
        remove_dangling: bool = False,
        expected: int | None = None,
    ) -> None:
        if bucket:
            validate_bucket(bucket)
        self.layer = layer
        self.healer = healer
        self.bucket = bucket
        self.prefix = prefix
        self.deep = deep
        self.dry_run = dry_run
        self.remove_dangling = remove_dangling
        self.progress = HealProgress(expected=expected)

    async def results(self) -> AsyncIterator[ObjectHealResult]:
        """Heal object after object, yielding each result."""
        for eset in self.layer.sets:
            buckets = [self.bucket] if self.bucket else await set_buckets(eset)
            for bucket in buckets:
                async for info in walk_set(eset, bucket, prefix=self.prefix):
                    try:
                        result = await self.healer.heal(
                            bucket, info.key, deep=self.deep, dry_run=self.dry_run,
                            remove_dangling=self.remove_dangling,
                        )  # fmt: skip
                    except StorageError as exc:
                        self.progress.failed += 1
                        self.progress.scanned += 1
                        result = ObjectHealResult(
                            bucket, info.key, eset.index, Outcome.SKIPPED, [], [],
                            detail=f"heal failed: {exc}",
                        )  # fmt: skip
                        yield result
                        continue
                    self.progress.add(result)
                    yield result
