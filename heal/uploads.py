"""Aborting multipart uploads left unfinished: a client that started an upload and went away
leaves staged parts on the drives; the scanner removes uploads older than an age each cycle.

Each set is cleaned by one node only: the one holding the set's first online drive (so the
nodes do not all do the same work)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from storage.drive import Drive
from storage.erasure_set import ErasureSet
from storage.errors import StorageError
from storage.objects import ObjectLayer

log = logging.getLogger("heal.uploads")


def _cleaner(eset: ErasureSet) -> Drive | None:
    return next((drive for drive in eset.drives if drive.is_online()), None)


async def remove_stale_uploads(
    layer: ObjectLayer,
    sets: Sequence[ErasureSet],
    max_age: float,
    is_local: Callable[[Drive], bool],
    *,
    now_ns: int | None = None,
) -> int:
    """Abort the uploads started more than ``max_age`` seconds ago in the ``sets`` this node
    cleans; returns how many were removed. A set whose drives cannot be listed is left for
    the next cycle."""
    now = time.time_ns() if now_ns is None else now_ns
    mine = [eset for eset in sets if (drive := _cleaner(eset)) is not None and is_local(drive)]
    if not mine:
        return 0
    try:
        removed = await layer.remove_stale_uploads(now - int(max_age * 1e9), sets=mine)
    except StorageError as exc:
        log.debug("stale uploads: skipped this cycle: %s", exc)
        return 0
    for record in removed:
        log.info(
            "aborted the multipart upload %s of %s: unfinished for over %gs",
            record.upload_id, record.key, max_age,
        )  # fmt: skip
    return len(removed)
