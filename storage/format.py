"""The drive format file: which deployment a drive belongs to, its ID and the set layout.

Stored at the drive root as msgpack with the same magic-and-checksum framing as object
metadata. :func:`plan_format` is pure: given what every drive reported, it decides the
deployment's format and which blank drives to format.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import xxhash

from storage.errors import FileCorrupt, FormatMismatch, InvalidArgument

FORMAT_FILE = "format.mgp"
FORMAT_MAGIC = b"MGF1"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class FormatInfo:
    """A drive's format: the deployment, this drive's ID and the layout of every set."""

    deployment_id: str
    drive_id: str
    sets: tuple[tuple[str, ...], ...]  # drive IDs, set by set, in position order
    version: int = FORMAT_VERSION

    def position(self) -> tuple[int, int]:
        """``(set index, position in set)`` of this drive."""
        for set_index, drives in enumerate(self.sets):
            if self.drive_id in drives:
                return set_index, drives.index(self.drive_id)
        raise FormatMismatch(f"drive {self.drive_id} is not in its own set layout")

    def same_layout(self, other: FormatInfo) -> bool:
        return self.deployment_id == other.deployment_id and self.sets == other.sets

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "deployment": self.deployment_id,
            "drive": self.drive_id,
            "sets": [list(s) for s in self.sets],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FormatInfo:
        return cls(
            deployment_id=str(raw["deployment"]),
            drive_id=str(raw["drive"]),
            sets=tuple(tuple(str(d) for d in s) for s in raw["sets"]),
            version=int(raw["v"]),
        )

    def to_msgpack(self) -> bytes:
        packed: bytes = msgpack.packb(self.to_dict(), use_bin_type=True)
        return packed

    @classmethod
    def from_msgpack(cls, payload: bytes) -> FormatInfo:
        return cls.from_dict(msgpack.unpackb(payload, raw=False))


def encode_format(fmt: FormatInfo) -> bytes:
    payload = fmt.to_msgpack()
    return FORMAT_MAGIC + xxhash.xxh3_64_digest(payload) + payload


def decode_format(blob: bytes) -> FormatInfo:
    if len(blob) < 12 or blob[:4] != FORMAT_MAGIC:
        raise FileCorrupt("format file has a bad header")
    payload = blob[12:]
    if xxhash.xxh3_64_digest(payload) != blob[4:12]:
        raise FileCorrupt("format file checksum mismatch")
    try:
        return FormatInfo.from_msgpack(payload)
    except (ValueError, KeyError, TypeError) as exc:
        raise FileCorrupt(f"format file is malformed: {exc}") from exc


def plan_format(
    found: list[FormatInfo | None], set_drive_count: int, deployment_id: str | None = None
) -> list[FormatInfo]:
    """Decide every drive's format from what the drives hold (``None`` = blank).

    All blank: a fresh deployment, drives grouped into sets in the order given. Some
    formatted: they must agree on the layout, and each blank drive takes the place of the
    set member whose ID no formatted drive claims (a replaced drive gets a fresh format).
    """
    count = len(found)
    if set_drive_count < 4 or set_drive_count > 16 or count % set_drive_count:
        raise InvalidArgument(
            f"{count} drives cannot form sets of {set_drive_count} (sets hold 4-16 drives)"
        )
    existing = [fmt for fmt in found if fmt is not None]
    if not existing:
        dep = deployment_id or str(uuid.uuid4())
        ids = [str(uuid.uuid4()) for _ in range(count)]
        sets = tuple(tuple(ids[i : i + set_drive_count]) for i in range(0, count, set_drive_count))
        return [FormatInfo(deployment_id=dep, drive_id=ids[i], sets=sets) for i in range(count)]
    reference = existing[0]
    for fmt in existing[1:]:
        if not fmt.same_layout(reference):
            raise FormatMismatch("drives disagree on the deployment or the set layout")
    all_ids = [drive_id for s in reference.sets for drive_id in s]
    if len(all_ids) != count:
        raise FormatMismatch(f"format lists {len(all_ids)} drives but {count} were given")
    claimed = {fmt.drive_id for fmt in existing}
    # Keep each drive at the position its index implies, so a blank drive replaces the
    # member that used to sit in its slot.
    result: list[FormatInfo] = []
    for position, current in enumerate(found):
        if current is not None:
            result.append(current)
            continue
        slot_id = all_ids[position]
        if slot_id in claimed:
            raise FormatMismatch(f"blank drive at position {position} but its slot is in use")
        result.append(replace(reference, drive_id=slot_id))
    return result
