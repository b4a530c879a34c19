"""Quorum: the one place that turns per-drive results into a value or the right error.

Every operation on an erasure set asks each drive and gets back one result per drive: a value
or a :class:`~storage.errors.StorageError`. :func:`reduce_quorum` decides what those results
mean, with one rule for every caller (modelled on MinIO's ``reduceReadQuorumErrs`` and
``reduceWriteQuorumErrs``):

1. Results are grouped into *outcomes*: successful values that agree (same ``version``), or
   errors of the same class. Errors listed in ``counts_as_ok`` join the success side (a delete
   that finds the object already gone has done its job).
2. An outcome *wins* when at least ``quorum`` drives share it. Success wins over any error; among
   successful versions that each reach quorum (possible only when k <= m, mid-overwrite), the
   latest (largest ``version``) wins.
3. Only the errors named in ``verdicts`` can win, each mapped to the error the caller raises
   (``VolumeNotFound`` -> ``BucketNotFound``), checked in order; a key may name several classes
   that mean the same thing (a drive without the bucket has no object either). An unnamed
   error shared by a quorum (drives offline, timeouts) says nothing about the object, so it can
   never win.
4. When nothing wins, the caller's quorum error is raised with a summary of what each drive said.

:func:`find_agreement` is rules 1-2 alone, for callers that skip rather than fail (a listing
leaves out a key no quorum agrees on). The table test in ``tests/storage/test_quorum_rules.py``
states each rule.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from storage.errors import StorageError

T = TypeVar("T")

#: One error class, or several that mean the same thing for a verdict.
ErrorClasses = type[StorageError] | tuple[type[StorageError], ...]

_OK = "ok"


@dataclass(frozen=True)
class Agreement(Generic[T]):
    """What a quorum agreed on: one of the agreeing values and the drives that hold it.

    ``value`` is None when the agreeing drives returned nothing (a write) or only errors
    counted as success."""

    value: T | None
    positions: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.positions)

    def require(self) -> T:
        """The agreed value, for callers whose successful results are never None."""
        if self.value is None:
            raise TypeError("the drives agreed on no value")
        return self.value


def summarize(results: Sequence[object]) -> str:
    """``FileNotFound x3, DriveOffline x1``: what the drives that failed said."""
    counts = Counter(type(r).__name__ for r in results if isinstance(r, StorageError))
    return ", ".join(f"{name} x{count}" for name, count in counts.most_common()) or "none"


def count_ok(results: Sequence[object]) -> int:
    """How many drives answered without an error."""
    return sum(1 for r in results if not isinstance(r, StorageError))


def _unversioned(_value: Any) -> Hashable:
    return None


def _latest(outcome: Any) -> tuple[bool, Any]:
    version = outcome[1]
    return (version is not None, version)


def _is_error(outcome: object, classes: ErrorClasses) -> bool:
    return isinstance(outcome, type) and issubclass(outcome, classes)


def _tally(
    results: Sequence[T | StorageError],
    counts_as_ok: tuple[type[StorageError], ...],
    version: Callable[[T], Any],
) -> tuple[dict[Hashable, list[int]], dict[Hashable, T | None]]:
    groups: dict[Hashable, list[int]] = {}
    values: dict[Hashable, T | None] = {}
    for position, result in enumerate(results):
        outcome: Any
        if isinstance(result, StorageError):
            if isinstance(result, counts_as_ok):
                outcome = (_OK, None)
                values.setdefault(outcome, None)
            else:
                outcome = type(result)
        else:
            outcome = (_OK, version(result))
            values.setdefault(outcome, result)
        groups.setdefault(outcome, []).append(position)
    return groups, values


def _agreed(
    groups: dict[Hashable, list[int]], values: dict[Hashable, T | None], quorum: int
) -> Agreement[T] | None:
    winners = [o for o in values if len(groups[o]) >= quorum]
    if not winners:
        return None
    best = max(winners, key=_latest) if len(winners) > 1 else winners[0]
    return Agreement(values[best], tuple(groups[best]))


def find_agreement(
    results: Sequence[T | StorageError],
    quorum: int,
    *,
    counts_as_ok: tuple[type[StorageError], ...] = (),
    version: Callable[[T], Any] = _unversioned,
) -> Agreement[T] | None:
    """The successful outcome at least ``quorum`` drives share, or None (rules 1 and 2)."""
    groups, values = _tally(results, counts_as_ok, version)
    return _agreed(groups, values, quorum)


def reduce_quorum(
    results: Sequence[T | StorageError],
    quorum: int,
    *,
    short: Callable[[str], StorageError],
    verdicts: Mapping[ErrorClasses, StorageError] | None = None,
    counts_as_ok: tuple[type[StorageError], ...] = (),
    version: Callable[[T], Any] = _unversioned,
) -> Agreement[T]:
    """Reduce one result per drive to what at least ``quorum`` drives agree on.

    Returns the :class:`Agreement` on success. Raises the first ``verdicts`` entry whose error
    classes a quorum of drives failed with, else ``short(summary)``.
    """
    groups, values = _tally(results, counts_as_ok, version)
    agreement = _agreed(groups, values, quorum)
    if agreement is not None:
        return agreement
    for classes, error in (verdicts or {}).items():
        held = sum(len(p) for o, p in groups.items() if _is_error(o, classes))
        if held >= quorum:
            raise error
    raise short(summarize(results))


__all__ = ["Agreement", "count_ok", "find_agreement", "reduce_quorum", "summarize"]
