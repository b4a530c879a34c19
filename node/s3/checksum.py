"""Object checksums a client can send and ask for (``x-amz-checksum-<algorithm>``).

The value is the base64 of the big-endian digest. All five algorithms S3 defines are computed
and verified: SHA-1 and SHA-256 with the standard library, CRC32 with zlib, CRC32C and
CRC64NVME with awscrt (the native library botocore itself uses for them).

A multipart object's checksum is either *composite* (the checksum of the parts' binary
checksums, then ``-<parts>``) or *full object* (for the CRCs: the parts' CRCs combined, the
same value a single PUT of the whole object would have).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from collections.abc import Sequence
from typing import Any

from awscrt import checksums as crt

HEADER_PREFIX = "x-amz-checksum-"
KNOWN = frozenset({"crc32", "crc32c", "crc64nvme", "sha1", "sha256"})
#: Every algorithm is verified now; kept for callers that ask.
VERIFIED = KNOWN
CRCS = frozenset({"crc32", "crc32c", "crc64nvme"})
_WIDTH = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}
#: S3's default checksum type of a multipart upload, per algorithm (CRC64NVME has only one).
DEFAULT_TYPE = {
    "crc32": "COMPOSITE",
    "crc32c": "COMPOSITE",
    "sha1": "COMPOSITE",
    "sha256": "COMPOSITE",
    "crc64nvme": "FULL_OBJECT",
}
#: The types each algorithm allows for a multipart upload.
ALLOWED_TYPES = {
    "crc32": ("COMPOSITE", "FULL_OBJECT"),
    "crc32c": ("COMPOSITE", "FULL_OBJECT"),
    "crc64nvme": ("FULL_OBJECT",),
    "sha1": ("COMPOSITE",),
    "sha256": ("COMPOSITE",),
}


def _crc(algorithm: str, data: bytes, previous: int) -> int:
    if algorithm == "crc32":
        return zlib.crc32(data, previous)
    if algorithm == "crc32c":
        return int(crt.crc32c(data, previous))
    return int(crt.crc64nvme(data, previous))


class PayloadChecksum:
    """A running checksum of one algorithm."""

    def __init__(self, algorithm: str) -> None:
        if algorithm not in KNOWN:
            raise ValueError(f"unknown checksum algorithm {algorithm!r}")
        self.algorithm = algorithm
        self.supported = True
        self._crc = 0
        self._hash: Any = hashlib.new(algorithm) if algorithm in ("sha1", "sha256") else None

    @property
    def header(self) -> str:
        return HEADER_PREFIX + self.algorithm

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        else:
            self._crc = _crc(self.algorithm, data, self._crc)

    def digest(self) -> bytes:
        if self._hash is not None:
            raw: bytes = self._hash.digest()
            return raw
        return self._crc.to_bytes(_WIDTH[self.algorithm], "big")

    def digest_b64(self) -> str:
        return base64.b64encode(self.digest()).decode()

    def matches(self, given_b64: str) -> bool:
        """True when the running checksum equals ``given_b64``."""
        return self.digest_b64() == given_b64.strip()


def algorithm_of(header_name: str) -> str | None:
    """``x-amz-checksum-crc32`` -> ``crc32``; None for other names (and the -mode/-type/
    -algorithm control headers)."""
    name = header_name.lower()
    if not name.startswith(HEADER_PREFIX):
        return None
    algorithm = name[len(HEADER_PREFIX) :]
    return algorithm if algorithm in KNOWN else None


def decode(algorithm: str, value: str) -> bytes | None:
    """The raw digest in a base64 checksum value, or None when it is not one of this
    algorithm (wrong length, not base64)."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _WIDTH[algorithm] else None


def composite(algorithm: str, part_values: Sequence[str]) -> str:
    """S3's composite checksum: the checksum of the parts' binary checksums, ``-<parts>``."""
    running = PayloadChecksum(algorithm)
    for value in part_values:
        raw = decode(algorithm, value)
        if raw is None:
            raise ValueError(f"a part's {algorithm} checksum {value[:60]!r} is malformed")
        running.update(raw)
    return f"{running.digest_b64()}-{len(part_values)}"


def full_object(algorithm: str, parts: Sequence[tuple[str, int]]) -> str:
    """The CRC of the whole object from each part's ``(base64 CRC, size)``, combined."""
    if algorithm not in CRCS:
        raise ValueError(f"{algorithm} has no full-object form for multipart uploads")
    combine = {
        "crc32": crt.combine_crc32,
        "crc32c": crt.combine_crc32c,
        "crc64nvme": crt.combine_crc64nvme,
    }[algorithm]
    total = 0
    for index, (value, size) in enumerate(parts):
        raw = decode(algorithm, value)
        if raw is None:
            raise ValueError(f"a part's {algorithm} checksum {value[:60]!r} is malformed")
        crc = int.from_bytes(raw, "big")
        total = crc if index == 0 else int(combine(total, crc, size))
    return base64.b64encode(total.to_bytes(_WIDTH[algorithm], "big")).decode()
