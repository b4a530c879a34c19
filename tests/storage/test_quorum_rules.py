"""The quorum rules, as a table: per-drive results in, the value or the error out."""

from __future__ import annotations

from typing import Any

import pytest

from storage.errors import (
    BucketExists,
    BucketNotFound,
    DriveNotFound,
    DriveOffline,
    FileCorrupt,
    FileNotFound,
    ObjectNotFound,
    ReadQuorum,
    StorageError,
    VolumeExists,
    VolumeNotFound,
    WriteQuorum,
)
from storage.quorum import count_ok, find_agreement, reduce_quorum, summarize

OK = "ok"  # a successful result with no version
NF = FileNotFound("missing")
VNF = VolumeNotFound("no bucket")
OFF = DriveOffline("offline")
CORRUPT = FileCorrupt("bad")


def _v(version: int) -> tuple[str, int]:
    """A successful result of the given version."""
    return ("v", version)


def _version(result: tuple[str, int]) -> int:
    return result[1]


VERDICTS = {
    VolumeNotFound: BucketNotFound("bucket"),
    (FileNotFound, VolumeNotFound): ObjectNotFound("object"),
}

# (name, results, quorum, expected): expected is the winning version, "ok", or an error class.
TABLE = [
    ("all agree", [_v(1)] * 8, 4, 1),
    ("exactly quorum agrees", [_v(1)] * 4 + [OFF] * 4, 4, 1),
    ("one short of quorum: offline drives never win", [_v(1)] * 3 + [OFF] * 5, 4, ReadQuorum),
    ("the latest of two versions that both reach quorum", [_v(1)] * 4 + [_v(2)] * 4, 4, 2),
    ("a version below quorum loses to one above", [_v(2)] * 3 + [_v(1)] * 5, 4, 1),
    ("no version reaches quorum", [_v(1)] * 3 + [_v(2)] * 3 + [OFF] * 2, 4, ReadQuorum),
    ("success wins a tie with not-found", [_v(1)] * 4 + [NF] * 4, 4, 1),
    ("not found on a quorum", [NF] * 4 + [_v(1)] * 3 + [OFF], 4, ObjectNotFound),
    ("not found counts drives without the bucket", [NF] * 2 + [VNF] * 2 + [OFF] * 4, 4,
     ObjectNotFound),
    ("bucket gone on a quorum", [VNF] * 5 + [OFF] * 3, 4, BucketNotFound),
    ("not found below quorum is a quorum error", [NF] * 3 + [OFF] * 5, 4, ReadQuorum),
    ("corrupt copies never win", [CORRUPT] * 8, 4, ReadQuorum),
    ("an unnamed shared error never wins", [DriveNotFound("gone")] * 8, 4, ReadQuorum),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "results", "quorum", "expected"), TABLE, ids=[t[0] for t in TABLE]
)
def test_reduce_quorum_table(name: str, results: list[Any], quorum: int, expected: object) -> None:
    def reduce() -> object:
        agreement = reduce_quorum(
            results,
            quorum,
            version=_version,
            verdicts=VERDICTS,
            short=lambda why: ReadQuorum(why),
        )
        return _version(agreement.require())

    if isinstance(expected, type) and issubclass(expected, StorageError):
        with pytest.raises(expected):
            reduce()
    else:
        assert reduce() == expected


def test_agreement_names_the_drives_that_hold_the_value() -> None:
    results = [_v(1), OFF, _v(1), NF, _v(1), _v(1)]
    agreement = reduce_quorum(results, 4, version=_version, short=ReadQuorum)
    assert agreement.positions == (0, 2, 4, 5)
    assert agreement.count == 4


def test_counts_as_ok_joins_errors_to_success() -> None:
    """A delete that finds the object already gone has done its job."""
    results: list[Any] = [None, None, NF, NF, NF, OFF, OFF, OFF]
    with pytest.raises(WriteQuorum):
        reduce_quorum(results, 5, short=WriteQuorum)
    agreement = reduce_quorum(results, 5, counts_as_ok=(FileNotFound,), short=WriteQuorum)
    assert agreement.positions == (0, 1, 2, 3, 4)
    assert agreement.value is None


def test_verdicts_are_checked_in_order() -> None:
    results: list[Any] = [VNF] * 5 + [NF] * 3
    with pytest.raises(BucketNotFound):
        reduce_quorum(results, 4, verdicts=VERDICTS, short=ReadQuorum)


def test_an_error_a_quorum_shares_wins_only_when_named() -> None:
    results: list[Any] = [VolumeExists("there")] * 5 + [None] * 3
    with pytest.raises(WriteQuorum):
        reduce_quorum(results, 5, short=WriteQuorum)
    with pytest.raises(BucketExists):
        reduce_quorum(
            results, 5, verdicts={VolumeExists: BucketExists("exists")}, short=WriteQuorum
        )


def test_quorum_error_says_what_each_drive_said() -> None:
    results: list[Any] = [OK, NF, NF, OFF]
    with pytest.raises(ReadQuorum, match="FileNotFound x2, DriveOffline x1"):
        reduce_quorum(results, 3, short=ReadQuorum)
    assert summarize([OK]) == "none"
    assert count_ok(results) == 1


def test_find_agreement_returns_none_instead_of_raising() -> None:
    assert find_agreement([_v(1), NF, NF], 2, version=_version) is None
    found = find_agreement([_v(1), _v(1), NF], 2, version=_version)
    assert found is not None and found.require() == _v(1)
