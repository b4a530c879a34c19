"""Where the healer's and scanner's CPU work runs: in threads, or (unsafe) on the event loop.

Hashing and erasure coding are CPU-bound. zfec and xxhash release the GIL, so in threads they
run beside the event loop, which stays free to answer pings. The *unsafe* mode runs the same
work on the event loop itself, in large slices with no pause between them: it exists only to
reproduce what happens to a node whose loop is busy healing (MinIO's missed pings and
``canceling remote connection ... not seen for ...``), and must never be used otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("heal")

UNSAFE_WARNING = (
    "UNSAFE INLINE HEAL MODE: hashing and erasure coding run ON THE EVENT LOOP in large slices "
    "with no pauses. This exists to starve grid pings on purpose (the missed-ping lab); never "
    "run a real cluster like this"
)


#: How much data the unsafe mode processes in one go on the event loop.
UNSAFE_SLICE = 256 << 20


class CpuPolicy:
    """Runs CPU-heavy calls for the heal services.

    ``inline=False`` (the default): every call goes to the default thread pool, one erasure
    block at a time. ``inline=True`` (``--unsafe-inline-heal``): calls run on the event loop,
    blocking it, and the healer gathers ``slice_bytes`` of blocks before each call.
    """

    def __init__(self, *, inline: bool = False, slice_bytes: int = UNSAFE_SLICE) -> None:
        self.inline = inline
        self.slice_bytes = slice_bytes if inline else 0

    def slice_full(self, pending_bytes: int) -> bool:
        """Whether the healer has gathered enough blocks to hand over one slice of work."""
        return pending_bytes >= self.slice_bytes

    async def run(self, func: Callable[..., T], *args: object) -> T:
        if self.inline:
            return func(*args)
        return await asyncio.get_running_loop().run_in_executor(None, func, *args)


__all__ = ["UNSAFE_SLICE", "UNSAFE_WARNING", "CpuPolicy"]
