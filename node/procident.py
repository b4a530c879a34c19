"""Which process a node is, precisely enough to send it a signal from another node.

A node reports its identity in ``top`` (over the grid, authenticated): its PID, the kernel's
start time of that PID (clock ticks since boot, from ``/proc/PID/stat``), the machine's boot ID
and the PID namespace it lives in. Another node may signal that PID only when all four match
what *it* sees: the same boot (the same machine, since it last started), the same PID
namespace (not another container), and a process with that PID that started at that very tick
(not a later process that got the PID after the node exited), run by the same user from the
same executable. The console's freeze and thaw use this (``POST /fault/freeze``): a node cannot
thaw itself once stopped, so the signal has to come from a peer on the same machine.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")


class NotLocal(Exception):
    """The process cannot be signalled from here; the message says why."""


def _stat_fields(pid: int | str) -> list[str]:
    """``/proc/PID/stat`` after the command name (which may hold spaces and parentheses)."""
    text = (PROC / str(pid) / "stat").read_text()
    return text[text.rfind(")") + 2 :].split()


def _start_ticks(pid: int | str) -> int:
    return int(_stat_fields(pid)[19])  # field 22 of stat: starttime


@dataclass(frozen=True)
class ProcessIdentity:
    """One process, as the kernel knows it (see the module docstring)."""

    pid: int
    start_ticks: int
    boot_id: str
    pid_ns: str

    @classmethod
    def current(cls) -> ProcessIdentity | None:
        """This process (None where there is no /proc to say)."""
        try:
            return cls(
                pid=os.getpid(), start_ticks=_start_ticks("self"),
                boot_id=(PROC / "sys/kernel/random/boot_id").read_text().strip(),
                pid_ns=os.readlink(PROC / "self/ns/pid"),
            )  # fmt: skip
        except (OSError, ValueError, IndexError):
            return None

    @classmethod
    def from_dict(cls, raw: Any) -> ProcessIdentity:
        """From a peer's report; ValueError when it is malformed."""
        if not isinstance(raw, dict):
            raise ValueError("a process identity is an object")
        try:
            identity = cls(int(raw["pid"]), int(raw["start_ticks"]), str(raw["boot_id"]),
                           str(raw["pid_ns"]))  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise ValueError(f"a process identity needs pid, start_ticks, boot_id, pid_ns: "
                             f"{exc}") from None  # fmt: skip
        if identity.pid <= 1:
            raise ValueError(f"pid {identity.pid} is not a node's")
        return identity

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_local(self) -> None:
        """Raise :class:`NotLocal` unless this identity is a live process this one may signal."""
        here = ProcessIdentity.current()
        if here is None:
            raise NotLocal("this node cannot read /proc, so it cannot check the process")
        if self.pid == here.pid:
            raise NotLocal("that is this node's own process (a stopped node cannot thaw itself)")
        if self.boot_id != here.boot_id:
            raise NotLocal("it runs on another machine (another boot ID)")
        if self.pid_ns != here.pid_ns:
            raise NotLocal("it runs in another PID namespace (another container)")
        try:
            ticks = _start_ticks(self.pid)
            same_user = (PROC / str(self.pid)).stat().st_uid == os.getuid()
            same_exe = os.readlink(PROC / str(self.pid) / "exe") == os.readlink(PROC / "self/exe")
        except (OSError, ValueError, IndexError):
            raise NotLocal(f"process {self.pid} is gone") from None
        if ticks != self.start_ticks:
            raise NotLocal(f"process {self.pid} is another process now (the node exited)")
        if not (same_user and same_exe):
            raise NotLocal(f"process {self.pid} is not a node run by this user and executable")

    def stopped(self) -> bool:
        """Whether the process is stopped by a signal now (SIGSTOP)."""
        try:
            return _stat_fields(self.pid)[0] in ("T", "t")
        except (OSError, IndexError):
            return False


__all__ = ["NotLocal", "ProcessIdentity"]
