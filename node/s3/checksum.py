"""Whole-payload checksums a client can send (``x-amz-checksum-<algorithm>``).

The value is the base64 of the big-endian digest. CRC32, SHA-1 and SHA-256 are computed with
the standard library and verified; CRC32C and CRC64NVME need a native library we do not ship,
so they are accepted without verification (see docs/s3.md).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any

HEADER_PREFIX = "x-amz-checksum-"
VERIFIED = frozenset({"crc32", "sha1", "sha256"})
KNOWN = VERIFIED | {"crc32c", "crc64nvme"}


class PayloadChecksum:
    """A running checksum of one algorithm; ``supported`` is false for the unverified ones."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self.supported = algorithm in VERIFIED
        self._crc = 0
        self._hash: Any = hashlib.new(algorithm) if algorithm in ("sha1", "sha256") else None

    @property
    def header(self) -> str:
        return HEADER_PREFIX + self.algorithm

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        elif self.algorithm == "crc32":
            self._crc = zlib.crc32(data, self._crc)

    def digest_b64(self) -> str:
        raw = self._hash.digest() if self._hash is not None else self._crc.to_bytes(4, "big")
        return base64.b64encode(raw).decode()

    def matches(self, given_b64: str) -> bool:
        """True when the running checksum equals ``given_b64`` (always true if unsupported)."""
        return not self.supported or self.digest_b64() == given_b64.strip()


def algorithm_of(header_name: str) -> str | None:
    """``x-amz-checksum-crc32`` -> ``crc32``; None for other names (and the -mode/-type/
    -algorithm control headers)."""
    name = header_name.lower()
    if not name.startswith(HEADER_PREFIX):
        return None
    algorithm = name[len(HEADER_PREFIX) :]
    return algorithm if algorithm in KNOWN else None
