"""Tokens, the dialing rule and the connection state table."""

from __future__ import annotations

import itertools

import pytest

from minigrid import auth
from minigrid.config import profile
from minigrid.errors import LocalProtocolError
from minigrid.manager import grid_url, should_dial
from minigrid.state import TRANSITIONS, State, check_transition

KEY = auth.derive_key("secret-one")


def test_token_round_trip_names_the_host() -> None:
    token = auth.make_token(KEY, "node1:9000", now=1_000_000.0)
    assert auth.verify_token(KEY, token, now=1_000_010.0) == "node1:9000"


def test_token_from_another_secret_is_refused() -> None:
    token = auth.make_token(auth.derive_key("secret-two"), "node1:9000")
    with pytest.raises(auth.TokenError, match="signature"):
        auth.verify_token(KEY, token)


def test_token_with_a_forged_host_is_refused() -> None:
    token = auth.make_token(KEY, "node1:9000")
    version, _, stamp, mac = token.split(".")
    forged = ".".join([version, auth.make_token(KEY, "evil:1").split(".")[1], stamp, mac])
    with pytest.raises(auth.TokenError, match="signature"):
        auth.verify_token(KEY, forged)


@pytest.mark.parametrize("skew", [-16 * 60.0, 16 * 60.0])
def test_token_outside_the_skew_window_is_refused(skew: float) -> None:
    token = auth.make_token(KEY, "node1:9000", now=1_000_000.0)
    with pytest.raises(auth.TokenError, match="away from our clock"):
        auth.verify_token(KEY, token, now=1_000_000.0 + skew)


@pytest.mark.parametrize("token", ["", "v1", "v2.a.1.b", "v1.!!!.1.ab", "v1.bm9kZQ.notanint.ab"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(auth.TokenError, match=r"malformed|signature"):
        auth.verify_token(KEY, token)


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        auth.derive_key("")


def test_exactly_one_side_of_every_pair_dials() -> None:
    hosts = [f"127.0.0.1:{9000 + i}" for i in range(12)] + ["node-a:9000", "http://node-b:9000"]
    for local, remote in itertools.permutations(hosts, 2):
        assert should_dial(local, remote) != should_dial(remote, local)


def test_grid_url() -> None:
    assert grid_url("127.0.0.1:9001") == "http://127.0.0.1:9001/minigrid/grid/v1"
    assert grid_url("https://n1:9000/") == "https://n1:9000/minigrid/grid/v1"


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
    fast = profile("fast", dead_after=3.0)
    assert fast.ping_interval == 1.0 and fast.dead_after == 3.0
    with pytest.raises(ValueError, match="unknown liveness profile"):
        profile("slow")
