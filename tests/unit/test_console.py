"""The console's bookkeeping without sockets: link states, S3 rates, the timeline and journals,
sessions and sign-in links, and how clicks become admin requests."""

from __future__ import annotations

import datetime as dt
import logging
import os
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import make_mocked_request

from node.console.actions import ActionError, Planner
from node.console.picture import Picture, S3Rates, link_state, percentile
from node.console.sessions import LoginLinks, LoginRefused, Sessions, login_link
from node.journal import Journal, JournalHandler, event_kind
from node.procident import NotLocal, ProcessIdentity
from node.s3.auth import Authenticator

HOSTS = ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"]


# --- links -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("views", "state"), [
    ([], "unknown"),
    ([{"state": "connected"}, {"state": "connected"}], "connected"),
    ([{"state": "connected"}], "connected"),  # the other end did not answer (frozen)
    ([{"state": "connecting", "cause": ""}], "connecting"),  # the first dial
    ([{"state": "connecting", "cause": "network-silent: no traffic"}], "down"),  # a redial
    ([{"state": "connected"}, {"state": "error", "cause": "reset"}], "down"),
    ([{"state": "shutdown"}], "down"),
])  # fmt: skip
def test_a_link_state_from_the_views_of_its_ends(views: list[dict[str, Any]],
                                                 state: str) -> None:  # fmt: skip
    assert link_state(views) == state


def top(host: str, peers: dict[str, dict[str, Any]], **more: Any) -> dict[str, Any]:
    links = [{"peer": peer, "rtt_s": 0.001, "last_seen_s": 0.2, **view}
             for peer, view in peers.items()]  # fmt: skip
    return {"host": host, "pid": 10, "loop_lag_s": 0.01, "ready": True, "links": links, **more}


def test_the_picture_joins_both_ends_of_each_link_and_keeps_lag_history() -> None:
    picture = Picture(HOSTS, HOSTS[0])
    up = {"state": "connected"}
    picture.update({"time": 100.0, "nodes": [
        top(HOSTS[0], {HOSTS[1]: up, HOSTS[2]: up}),
        top(HOSTS[1], {HOSTS[0]: up, HOSTS[2]: up}),
        {"node": "http://" + HOSTS[2], "error": "Disconnected"},
    ]})  # fmt: skip
    assert [(link["a"], link["b"], link["state"]) for link in picture.links] == [
        (0, 1, "connected"), (0, 2, "connected"), (1, 2, "connected")]
    assert picture.nodes[2]["state"] == "unreachable"
    lost = {"state": "connecting", "cause": "network-silent: no traffic at all for 4.1s"}
    picture.update({"time": 104.0, "nodes": [
        top(HOSTS[0], {HOSTS[1]: up, HOSTS[2]: lost}),
        top(HOSTS[1], {HOSTS[0]: up, HOSTS[2]: lost}),
        {"node": HOSTS[2], "error": "Disconnected"},
    ]})  # fmt: skip
    link = picture.links[1]
    assert (link["state"], link["since"], link["cause"]) == ("down", 104.0, lost["cause"])
    assert picture.frame(0)["nodes"][0]["lag_history"] == [0.01, 0.01]
    assert picture.frame(0)["nodes"][2]["lag_history"] == [None, None]


def test_the_timeline_merges_journals_in_time_order_and_reads_each_once() -> None:
    picture = Picture(HOSTS[:2], HOSTS[0])

    def journal(epoch: str, events: list[tuple[int, float, str]]) -> dict[str, Any]:
        return {"epoch": epoch, "seq": events[-1][0] if events else 0, "missed": 0,
                "events": [{"seq": s, "time": t, "text": x, "kind": "log"}
                           for s, t, x in events]}  # fmt: skip

    picture.update({"time": 1.0, "nodes": [
        top(HOSTS[0], {}, journal=journal("a", [(1, 10.0, "a1"), (2, 12.0, "a2")])),
        top(HOSTS[1], {}, journal=journal("b", [(1, 11.0, "b1")])),
    ]})  # fmt: skip
    assert [e["text"] for e in picture.frame(0)["events"]] == ["a1", "b1", "a2"]
    assert picture.events_since() == {HOSTS[0]: 2, HOSTS[1]: 1}
    after = picture.frame(0)["events"][-1]["id"]
    # Node 1 restarted: a new epoch; its numbering starts over and is read from the start.
    picture.update({"time": 2.0, "nodes": [
        top(HOSTS[0], {}, journal=journal("a", [])),
        top(HOSTS[1], {}, journal=journal("c", [(1, 20.0, "c1")])),
    ]})  # fmt: skip
    assert picture.events_since()[HOSTS[1]] == 0
    picture.update({"time": 3.0, "nodes": [
        top(HOSTS[0], {}, journal=journal("a", [])),
        top(HOSTS[1], {}, journal=journal("c", [(1, 20.0, "c1")])),
    ]})  # fmt: skip
    assert [e["text"] for e in picture.frame(after)["events"]] == ["c1"]


def test_s3_rates_come_from_counter_differences_and_survive_a_restart() -> None:
    rates = S3Rates()
    le = [0.01, 0.1, 1.0]

    def totals(requests: int, counts: list[int], sent: int = 0) -> dict[str, Any]:
        return {"requests": requests, "errors": 0, "received_bytes": 0, "sent_bytes": sent,
                "latency_le": le, "latency_counts": counts, "latency_total": requests}

    rates.update(0.0, {"n0#1": totals(100, [50, 100, 100])})
    rates.update(2.0, {"n0#1": totals(120, [50, 110, 120], sent=2048)})
    summary = rates.summary()
    assert summary["requests_per_s"] == 10.0 and summary["sent_per_s"] == 1024.0
    assert summary["p50_s"] == 0.1 and summary["p99_s"] == 1.0  # of the 20 new requests only
    rates.update(4.0, {"n0#2": totals(3, [3, 3, 3])})  # a new process: no rate from it yet
    assert rates.history[-1] == 0
    assert percentile(le, [0, 0, 1], 2, 0.99) == float("inf")
    assert percentile(le, [0, 0, 0], 0, 0.5) is None


# --- the journal -------------------------------------------------------------------------------


def test_the_journal_keeps_numbered_events_and_says_what_it_lost() -> None:
    journal = Journal(capacity=3)
    for n in range(5):
        journal.record("info", "node", f"e{n}", float(n))
    answer = journal.since(0)
    assert [e["text"] for e in answer["events"]] == ["e2", "e3", "e4"]
    assert answer["missed"] == 2 and answer["seq"] == 5
    assert journal.since(4)["events"][0]["text"] == "e4" and journal.since(4)["missed"] == 0
    assert journal.since(5)["events"] == []


def test_journal_events_are_log_lines_with_their_fields() -> None:
    journal = Journal()
    root, logger = logging.getLogger(), logging.getLogger("minigrid.grid")
    handler = JournalHandler(journal)
    root.addHandler(handler)  # as the node adds it: every logger's lines reach it
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("grid a->b: connected -> error (%s)", "reset",
                    extra={"state": "error", "cause": "reset", "remote": "b"})  # fmt: skip
        logging.getLogger("aiohttp.access").warning("not ours")
    finally:
        root.removeHandler(handler)
        logger.setLevel(level)
    [event] = journal.since(0)["events"]
    assert event["kind"] == "disconnect" and event["text"].endswith("(reset)")
    assert event["fields"] == {"state": "error", "cause": "reset", "remote": "b"}
    assert event_kind("node.faults", "fault: frozen x", {}) == "fault"
    assert event_kind("heal.drives", "drive d healed", {}) == "heal"
    assert event_kind("minigrid.grid", "canceling remote connection", {"handler": "R"}) == "cancel"


# --- sessions and sign-in links --------------------------------------------------------------


def test_sessions_end_when_idle_at_their_lifetime_and_when_ended() -> None:
    now = [0.0]
    sessions = Sessions(clock=lambda: now[0], lifetime=100.0, idle=10.0, capacity=2)
    token, session = sessions.create()
    assert sessions.find(token) is session and sessions.find("forged") is None
    now[0] = 9.0
    assert sessions.find(token) is session  # used: the idle clock starts again
    now[0] = 18.0
    assert sessions.find(token) is session
    now[0] = 28.5
    assert sessions.find(token) is None  # idle for 10.5 s
    token, session = sessions.create()
    for t in range(29, 140, 5):
        now[0] = float(t)
        if sessions.find(token) is None:
            break
    assert now[0] - session.created >= 100.0  # the lifetime, however busy
    first, _ = sessions.create()
    sessions.create()
    sessions.create()  # at capacity: the oldest goes
    assert sessions.find(first) is None and len(sessions) == 2


def _request(link: str) -> Any:
    parts = urlsplit(link)
    return make_mocked_request("GET", f"{parts.path}?{parts.query}",
                               headers={"Host": parts.netloc})  # fmt: skip


def test_a_sign_in_link_is_accepted_once_for_its_node_run() -> None:
    auth = Authenticator({"adm": "adm-secret"}, "us-east-1", time.time)
    links = LoginLinks(auth, lambda: "run-1")
    url = "http://127.0.0.1:9000"
    link = login_link(url, "run-1", "adm", "adm-secret", "us-east-1", expires=60)
    links.redeem(_request(link))
    with pytest.raises(LoginRefused, match="used already"):
        links.redeem(_request(link))
    with pytest.raises(LoginRefused, match="earlier run"):
        links.redeem(_request(login_link(url, "run-0", "adm", "adm-secret", "us-east-1")))
    with pytest.raises(LoginRefused, match="signature"):
        links.redeem(_request(login_link(url, "run-1", "adm", "wrong", "us-east-1")))
    old = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    with pytest.raises(LoginRefused, match="signature"):  # expired
        links.redeem(_request(login_link(url, "run-1", "adm", "adm-secret", "us-east-1",
                                         expires=60, now=old)))  # fmt: skip
    with pytest.raises(LoginRefused, match="not a sign-in link"):
        links.redeem(make_mocked_request("GET", "/minigrid/console/login?nonce=ab"))
    with pytest.raises(ValueError, match=r"1-3600"):
        login_link(url, "run-1", "adm", "adm-secret", "us-east-1", expires=7200)


# --- clicks ------------------------------------------------------------------------------------


def test_clicks_become_the_admin_requests_minigrid_fault_sends() -> None:
    planner = Planner(HOSTS, [2, 2, 2], me=0)
    plan = planner.plan({"action": "partition", "a": 1, "b": 2, "mode": "silent"})
    assert [(c.node, c.method, c.path, dict(c.query)) for c in plan.calls] == [
        (1, "POST", "/fault/partition", {"peer": HOSTS[2], "mode": "silent"}),
        (2, "POST", "/fault/partition", {"peer": HOSTS[1], "mode": "silent"}),
    ]
    assert plan.command == "minigrid fault partition 1 2 --mode silent"
    [call] = planner.plan({"action": "freeze", "node": 2}).calls
    assert (call.node, call.path, dict(call.query)) == (0, "/fault/freeze", {"peer": HOSTS[2]})
    [call] = planner.plan({"action": "wipe-drive", "node": 1, "drive": 1}).calls
    assert (call.node, call.path, dict(call.query)) == (1, "/fault/wipe-drive", {"drive": "1"})
    clear = planner.plan({"action": "clear"})
    assert [c.path for c in clear.calls] == ["/fault/thaw"] * 2 + ["/fault/clear"] * 3
    assert all(c.optional for c in clear.calls[:2])


@pytest.mark.parametrize(("params", "message"), [
    ({"action": "reboot"}, "action must be one of"),
    ({"action": "freeze", "node": 0}, "cannot thaw itself"),
    ({"action": "freeze", "node": 3}, "node must be"),
    ({"action": "freeze", "node": True}, "node must be"),
    ({"action": "partition", "a": 1, "b": 1, "mode": "silent"}, "two different nodes"),
    ({"action": "partition", "a": 1, "b": 2, "mode": "loud"}, "mode must be"),
    ({"action": "loop-block", "node": 1, "seconds": float("nan")}, "seconds must be"),
    ({"action": "wipe-drive", "node": 1, "drive": 2}, "drive must be"),
    ({"action": "scanner", "speed": "ludicrous"}, "speed must be"),
])  # fmt: skip
def test_a_click_that_makes_no_sense_is_refused_with_the_reason(params: dict[str, Any],
                                                                 message: str) -> None:  # fmt: skip
    with pytest.raises(ActionError, match=message):
        Planner(HOSTS, [2, 2, 2], me=0).plan(params)


# --- process identity --------------------------------------------------------------------------


def test_a_process_identity_is_signalled_only_when_it_is_that_very_process() -> None:
    me = ProcessIdentity.current()
    if me is None:
        pytest.skip("no /proc here")
    with pytest.raises(NotLocal, match="own process"):
        me.check_local()
    # A live process of ours that is not a node (the test runner's parent may be PID 1, whose
    # /proc entry a container can hide).
    with subprocess.Popen(["sleep", "60"]) as other:
        try:
            stranger = ProcessIdentity(other.pid, 0, me.boot_id, me.pid_ns)
            with pytest.raises(NotLocal, match=r"another process now|not a node"):
                stranger.check_local()  # a start tick that is not that process's
        finally:
            other.kill()
    with pytest.raises(NotLocal, match="another machine"):
        ProcessIdentity(os.getppid(), 0, "other-boot", me.pid_ns).check_local()
    with pytest.raises(NotLocal, match="another PID namespace"):
        ProcessIdentity(os.getppid(), 0, me.boot_id, "pid:[1]").check_local()
    with pytest.raises(ValueError, match="not a node"):
        ProcessIdentity.from_dict({**me.to_dict(), "pid": 1})
    with pytest.raises(ValueError, match="needs pid"):
        ProcessIdentity.from_dict({"pid": 5})
