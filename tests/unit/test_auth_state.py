"""The dialing rule, grid URLs, the connection state table and the profiles.

The handshake itself is tested in ``test_handshake.py``."""

from __future__ import annotations

import itertools

import pytest

from minigrid.config import profile
from minigrid.errors import LocalProtocolError
from minigrid.manager import grid_url, should_dial
from minigrid.state import TRANSITIONS, State, check_transition


def test_exactly_one_side_of_every_pair_dials() -> None:
    hosts = [f"127.0.0.1:{9000 + i}" for i in range(12)] + ["node-a:9000", "http://node-b:9000"]
    for local, remote in itertools.permutations(hosts, 2):
        assert should_dial(local, remote) != should_dial(remote, local)


def test_grid_url() -> None:
    assert grid_url("127.0.0.1:9001") == "http://127.0.0.1:9001/minigrid/grid/v1"
    assert grid_url("https://n1:9000/") == "https://n1:9000/minigrid/grid/v1"
    assert grid_url("127.0.0.1:9001", tls=True) == "https://127.0.0.1:9001/minigrid/grid/v1"


def test_state_table_allows_only_listed_transitions() -> None:
    for current, new in itertools.product(State, State):
        if new in TRANSITIONS[current]:
            check_transition(current, new)
        else:
            with pytest.raises(LocalProtocolError, match="illegal"):
                check_transition(current, new)
    assert TRANSITIONS[State.SHUTDOWN] == frozenset()


def test_profiles() -> None:
    minio = profile("minio")
    assert (
        minio.ping_interval,
        minio.dead_after,
        minio.stream_ping_interval,
        minio.stream_timeout,
    ) == (10.0, 20.0, 15.0, 60.0)
    # MinIO's window is fixed: no evidence of a slow peer stretches it.
    assert (minio.dead_after_max, minio.lag_allowance) == (20.0, 0.0)
    fast = profile("fast", dead_after=3.0)
    assert fast.ping_interval == 0.25 and fast.dead_after == 3.0 and fast.dead_after_max == 4.0
    with pytest.raises(ValueError, match="unknown liveness profile"):
        profile("slow")
