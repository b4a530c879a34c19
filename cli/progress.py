"""Progress bars for transfers: one rich bar per transfer, on stderr, only on a terminal.

Off a terminal (a pipe, a file, a test) nothing is drawn: :func:`bars` then hands out bars
that do nothing. With several transfers, a bar shows while its transfer runs and goes away
when it ends, under one bar for the total (which grows as the transfers are planned).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Bar:
    """One transfer's bar (this base class draws nothing)."""

    def set_total(self, total: int) -> None:
        """The transfer's size, once it is known."""

    def advance(self, amount: int) -> None:
        """``amount`` more bytes went through (called from the transfer threads)."""

    def finish(self) -> None:
        """The transfer ended (done or failed)."""


class Bars:
    """Hands out one :class:`Bar` per transfer (this base class draws nothing)."""

    def add(self, label: str, total: int | None) -> Bar:
        return Bar()


class _RichBar(Bar):
    def __init__(self, owner: _RichBars, task: TaskID) -> None:
        self._owner = owner
        self._task = task
        self._total_known = False
        self._lock = threading.Lock()

    def set_total(self, total: int) -> None:
        with self._lock:
            if self._total_known:
                return
            self._total_known = True
        self._owner.progress.update(self._task, total=total)
        self._owner.grow(total)

    def advance(self, amount: int) -> None:
        self._owner.progress.advance(self._task, amount)
        if self._owner.overall is not None:
            self._owner.progress.advance(self._owner.overall, amount)

    def finish(self) -> None:
        if self._owner.overall is not None:  # many transfers: only the running ones stay
            self._owner.progress.remove_task(self._task)


class _RichBars(Bars):
    def __init__(self, progress: Progress, many: bool) -> None:
        self.progress = progress
        self.overall = progress.add_task("total", total=0) if many else None
        self._lock = threading.Lock()
        self._total = 0

    def grow(self, size: int) -> None:
        """The total bar's size grows by each transfer's as it becomes known."""
        if self.overall is None:
            return
        with self._lock:
            self._total += size
            self.progress.update(self.overall, total=self._total)

    def add(self, label: str, total: int | None) -> Bar:
        bar = _RichBar(self, self.progress.add_task(label, total=total))
        if total is not None:
            bar.set_total(total)
        return bar


def on_terminal() -> bool:
    return sys.stderr.isatty()


@contextlib.contextmanager
def bars(*, many: bool = False, enabled: bool | None = None) -> Iterator[Bars]:
    """Progress bars on stderr when it is a terminal (or ``enabled``); else silent ones."""
    if not (on_terminal() if enabled is None else enabled):
        yield Bars()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        yield _RichBars(progress, many)


__all__ = ["Bar", "Bars", "bars", "on_terminal"]
