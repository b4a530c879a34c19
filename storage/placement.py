"""Placement: the parity table, which set an object lives in, and its shard order.

Everything here is a pure function of names and counts, so every node computes the same answer.
Hashes are xxh3-64, never Python's ``hash()``, which changes from run to run.
"""

from __future__ import annotations

import xxhash

from storage.errors import InvalidArgument

MIN_SET_DRIVES = 4
MAX_SET_DRIVES = 16


def default_parity(set_drive_count: int) -> int:
    """MinIO's default parity: 4-5 drives → 2, 6-7 → 3, 8 or more → 4."""
    if set_drive_count < MIN_SET_DRIVES or set_drive_count > MAX_SET_DRIVES:
        raise InvalidArgument(f"an erasure set holds 4-16 drives, not {set_drive_count}")
    if set_drive_count <= 5:
        return 2
    if set_drive_count <= 7:
        return 3
    return 4


def check_parity(set_drive_count: int, parity: int) -> int:
    """Validate an overridden parity: at least 1, and no more than half the set."""
    if parity < 1 or parity > set_drive_count // 2:
        raise InvalidArgument(
            f"parity {parity} is not allowed for {set_drive_count} drives "
            f"(1..{set_drive_count // 2})"
        )
    return parity


def write_quorum(data: int, parity: int) -> int:
    """Drives that must accept a write: k, or k+1 when k equals m.

    With k = m, two halves of the set could otherwise each accept a different version.
    """
    return data + 1 if data == parity else data


def read_quorum(data: int) -> int:
    """Drives that must agree for a read: k."""
    return data


def set_index(bucket: str, key: str, set_count: int, seed: int = 0) -> int:
    """The erasure set holding ``bucket/key``: a stable hash modulo the number of sets."""
    if set_count < 1:
        raise InvalidArgument("there must be at least one erasure set")
    return xxhash.xxh3_64_intdigest(f"{bucket}/{key}".encode(), seed) % set_count


def seed_from_deployment(deployment_id: str) -> int:
    """A hash seed derived from the deployment ID."""
    return xxhash.xxh3_64_intdigest(deployment_id.encode())


def shard_distribution(bucket: str, key: str, drive_count: int) -> tuple[int, ...]:
    """``distribution[position]`` is the shard index stored on the drive at that position.

    The order is a rotation chosen by a hash of ``bucket/key``, so data shards (indices
    ``0..k-1``) land on different drives for different objects.
    """
    start = xxhash.xxh3_64_intdigest(f"{bucket}/{key}".encode(), 0x5EED) % drive_count
    return tuple((position - start) % drive_count for position in range(drive_count))
