"""``Range: bytes=...`` headers (one range; S3 serves no multi-range responses)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"^bytes=(?:(\d{1,19})-(\d{1,19})?|-(\d{1,19}))$")


@dataclass(frozen=True)
class ByteRange:
    """``bytes=first-last``, ``bytes=first-`` (last None) or ``bytes=-suffix``."""

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def resolve(self, size: int) -> tuple[int, int] | None:
        """``(offset, length)`` within an object of ``size`` bytes; None if unsatisfiable."""
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                return None
            length = min(self.suffix, size)
            return size - length, length
        assert self.first is not None
        if self.first >= size:
            return None
        end = size - 1 if self.last is None else min(self.last, size - 1)
        return self.first, end - self.first + 1


def parse_range(header: str | None) -> ByteRange | None:
    """The requested range, or None to serve the whole object.

    As RFC 9110 allows, a header that does not parse (or asks for several ranges, or has
    last < first) is ignored rather than refused.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        return ByteRange(suffix=int(suffix))
    start = int(first)
    end = None if last is None else int(last)
    if end is not None and end < start:
        return None
    return ByteRange(first=start, last=end)
