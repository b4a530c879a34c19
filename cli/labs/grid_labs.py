"""The grid's failure labs: a frozen peer, partitions, clock jumps, a full queue at reconnect,
and a dead peer with hundreds of calls queued to it."""

from __future__ import annotations

import concurrent.futures
import signal
import time
from typing import Any

from cli.adminclient import AdminError
from cli.labs.runner import (
    MIB,
    LabContext,
    Reader,
    fill,
    percentile,
    quoted,
    rounded,
    s3_client,
)

FAST = {"profile": "fast", "mrf_delay": 0.5}
LINK_PANELS = [
    ("last_seen_age_s", "last seen (s)", "links"),
    ("get_latency_s", "GET via node 0 (s)", "points"),
    ("loop_lag_s", "loop lag (s)", "nodes"),
]


def _host(lab: LabContext, node: int) -> str:
    assert lab.cluster is not None
    return lab.cluster.urls[node].split("://", 1)[1]


def _state(lab: LabContext, node: int, peer: int) -> str:
    try:
        return str(lab.grid_state(node, peer)["state"])
    except AdminError:
        return "unknown"  # a slow answer while a peer is frozen: ask again


def _down(lab: LabContext, node: int, peer: int) -> bool:
    return _state(lab, node, peer) not in ("connected", "unknown")


def _up(lab: LabContext, node: int, peer: int) -> bool:
    return _state(lab, node, peer) == "connected"


def _pause(lab: LabContext, seconds: float) -> None:
    """Let the workload run for ``seconds`` (a measuring window, not a synchronisation)."""
    end = lab.now() + seconds
    lab.wait_for(lambda: lab.now() >= end, seconds + 5, "a measuring window")


def _gets(reader: Reader, start: float, end: float) -> dict[str, Any]:
    window = reader.between(start, end)
    ok = [took for _, took, good in window if good]
    return {"ok": len(ok), "failed": sum(1 for *_, good in window if not good),
            "worst_s": rounded(max(ok, default=None)),
            "p50_s": rounded(percentile(ok, 0.5))}  # fmt: skip


def frozen_peer(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    hold = 6.0 if lab.quick else 15.0
    with lab.running("frozen", FAST) as cluster:
        objects = fill(cluster, "lab", 12, MIB)
        reader = Reader(lab, cluster, "lab", objects)
        reader.start()
        lab.wait_for(lambda: len(reader.results) >= 10, 30, "healthy GETs")
        healthy_until = lab.now()
        assert lab.faults is not None
        frozen_at = lab.mark("freeze node 2")
        lab.faults.signal(2, signal.SIGSTOP)
        lab.wait_for(lambda: _down(lab, 0, 2), 30, "node 0 to give up on node 2")
        detected = lab.now() - frozen_at
        lab.mark("detected")
        lab.wait_for(lambda: lab.now() - frozen_at > hold, hold + 5, "the frozen window")
        thawed_at = lab.mark("thaw")
        lab.faults.signal(2, signal.SIGCONT)
        lab.wait_for(lambda: _up(lab, 0, 2), 30, "node 2 to be back")
        back = lab.now() - thawed_at
        lab.mark("reconnected")
        lab.wait_for(lambda: lab.now() - thawed_at > 2, 5, "reads after the thaw")
        reader.stop()
        cause = lab.grid_state(0, 2)["last_cause"]
    healthy = _gets(reader, 0, healthy_until)
    during = _gets(reader, frozen_at, thawed_at)
    summary = {"detection_s": round(detected, 2), "cause": cause,
               "gets_while_frozen": during, "gets_healthy": healthy,
               "reconnect_after_thaw_s": round(back, 2)}  # fmt: skip
    lines = lab.log_lines(r"node0.*(->.*: connected -> error|revised|most likely)", "frozen")
    lines = lab.log_lines(r"(connected -> error|most likely|back online|offline \()", "frozen")
    sections = [
        ("What happened", f"""
Node 2 was stopped with SIGSTOP at {frozen_at:.1f}s while node 0 served GETs of 1 MiB objects
(4+4 erasure coding over 4 nodes x 2 drives). Its sockets stayed open: the kernel kept ACKing,
nothing closed, nothing reset. Node 0 gave up on it **{detected:.2f}s** later (the `fast`
profile's window is 4s of silence, checked 4 times a second; sampled here every 0.2s).

While it was frozen, node 0 served **{during['ok']} GETs** ({during['failed']} failed), the
slowest in {during['worst_s']}s against {healthy['worst_s']}s when healthy: reads need any 4
of 8 shards, a read of a frozen drive is hedged after the observed latency, and once the peer
is marked offline its drives are skipped without a call. After SIGCONT the connection was back
in **{back:.2f}s**, and the cause was revised to what the returning peer's pong reported.
"""),
        ("Key log lines", quoted(lines, 8)),
        ("What the code does about it", """
Liveness counts any inbound frame as proof of life and pings every second; 4s of silence ends
the session (`minigrid/connection.py`, `_liveness_loop`), every call in flight fails at once
with `Disconnected`, and the peer table marks the node's drives offline so new reads skip them
(`storage/peers.py`). The diagnosis is revised when the peer comes back and reports its stall.
MinIO's grid takes about 20s (`minio` profile) to reach the same conclusion.
"""),
    ]
    return summary, sections


def partition_lab(lab: LabContext, mode: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    hold = 6.0 if lab.quick else 12.0
    phase = f"{mode}-partition"
    with lab.running(phase, FAST) as cluster:
        objects = fill(cluster, "lab", 12, MIB)
        reader = Reader(lab, cluster, "lab", objects)
        reader.start()
        lab.wait_for(lambda: len(reader.results) >= 10, 30, "healthy GETs")
        assert lab.faults is not None and lab.admin is not None
        # Calls in flight at the cut: slow disk reads on node 1, so GETs wait on it.
        lab.admin.call(1, "POST", "/fault/slow-drive", drive=0, ms=300)
        lab.admin.call(1, "POST", "/fault/slow-drive", drive=1, ms=300)
        lab.wait_for(lambda: lab.grid_state(0, 1)["inflight_calls"]
                     + lab.grid_state(0, 1)["inflight_streams"] > 0, 20,
                     "calls in flight from node 0 to node 1")  # fmt: skip
        cut = lab.mark(f"partition 0|1 ({mode})")
        lab.faults.partition(0, 1, mode)
        lab.wait_for(lambda: _down(lab, 0, 1), 30, "node 0 to see the partition")
        detected = lab.now() - cut
        lab.mark("detected")
        lab.wait_for(lambda: lab.now() - cut > hold, hold + 5, "the partition window")
        healed = lab.mark("unpartition")
        lab.faults.unpartition()
        lab.admin.call(1, "POST", "/fault/clear")
        lab.wait_for(lambda: _up(lab, 0, 1), 30, "the link to come back")
        back = lab.now() - healed
        reader.stop()
        cause = lab.grid_state(0, 1)["last_cause"]
    failed_fast = [took for began, took, good in reader.between(cut - 1, cut + detected)
                   if not good]  # fmt: skip
    during = _gets(reader, cut, healed)
    lost = lab.log_lines(r"node0: .*session lost", phase)
    peer_lines = lab.log_lines(r"node0: .*peer \S+ (offline|back online)", phase)
    summary = {"mode": mode, "detection_s": round(detected, 2), "cause": cause,
               "gets_during": during, "failed_gets_at_cut": len(failed_fast),
               "peer_table_lines": len([x for x in peer_lines if "offline" in x]),
               "session_lost_lines": len(lost),
               "reconnect_after_heal_s": round(back, 2)}  # fmt: skip
    what = ("every packet between nodes 0 and 1 vanished (no RST, no FIN): TCP alone would "
            "retransmit for many minutes" if mode == "silent" else
            "every packet between nodes 0 and 1 was answered with a TCP reset")
    how = ("iptables DROP in both namespaces" if lab.netns else
           "acted out by the grid on loopback (`Manager.partition`: reads and writes held, "
           "dials left unanswered)" if mode == "silent" else
           "acted out by the grid on loopback (`Manager.partition`: the session dropped as by "
           "an RST, dials refused)")  # fmt: skip
    sections = [
        ("What happened", f"""
At {cut:.1f}s {what}; {how}. Node 1's drives were slowed (300 ms per operation) first, so
GETs through node 0 had calls in flight to node 1 at the cut. Node 0 noticed in
**{detected:.2f}s** (cause `{cause}`); in-flight work failed at once rather than after a TCP
timeout, and GETs went on from the other 6 drives: {during['ok']} succeeded during the
partition, {during['failed']} failed. The peer table logged **{summary['peer_table_lines']}**
offline line for node 1 and the grid **{len(lost)}** "session lost" line, however many calls
were cut. After the partition healed the link was back in {back:.2f}s.
"""),
        ("Key log lines", quoted(lost + peer_lines, 6)),
        ("What the code does about it", """
A silent partition is found by liveness (4s of silence, `network-silent`); a reset one at the
next packet (`reset`). Either way `_teardown` fails every call, stream and queue waiter of the
session at once with `Disconnected`, logs one line naming what was lost, and the peer table
marks the peer's drives offline before the next operation (`storage/peers.py`). The dialing side
redials with jittered backoff; the accepting side pokes it every 2s so it does not wait out a
long backoff when the partition heals.
"""),
    ]
    return summary, sections


def clock_jump(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    hold = 4.0 if lab.quick else 10.0
    detector_window = 20.0  # MinIO's grid: a peer not seen for 20s (unix seconds) is dropped
    with lab.running("clock", FAST) as cluster:
        objects = fill(cluster, "lab", 8, 256 * 1024)
        reader = Reader(lab, cluster, "lab", objects)
        reader.start()
        assert lab.admin is not None
        lab.wait_for(lambda: len(reader.results) >= 10, 30, "healthy GETs")
        before = lab.reconnects()
        mtimes = {}
        s3 = s3_client(cluster, 1)
        for jump in (3600.0, -7200.0):
            lab.mark(f"node 1 clock {jump:+.0f}s")
            lab.admin.call(1, "POST", "/fault/clock-jump", seconds=jump)
            offset = lab.admin.call(1, "GET", "/fault")["clock_offset_s"]
            s3.put_object(Bucket="lab", Key=f"written-at-{offset:+.0f}", Body=b"x")
            stamp = s3.head_object(Bucket="lab", Key=f"written-at-{offset:+.0f}")
            mtimes[f"{offset:+.0f}"] = stamp["LastModified"].timestamp() - time.time()
            _pause(lab, hold)
        lab.mark("clock back")
        lab.admin.call(1, "POST", "/fault/clear")
        _pause(lab, 1.0)
        reader.stop()
        after = lab.reconnects()
        ages = [s.value for s in lab.series("last_seen_age_s", node=0, peer="1")]
    worst_age = max(ages, default=0.0)
    summary = {"jumps_s": [3600, -3600], "disconnects": after - before,
               "worst_last_seen_age_s": round(worst_age, 3),
               "wall_clock_detector": {
                   "after_+3600s": f"peer seen {3600 + worst_age:.0f}s ago > {detector_window:g}s:"
                                   " false disconnect at once",
                   "after_-3600s": f"peer seen {-3600 + worst_age:.0f}s ago: a really dead peer "
                                   f"goes unnoticed for {3600 + detector_window:.0f}s"},
               "last_modified_offset_s": {k: round(v) for k, v in mtimes.items()},
               "gets_failed": sum(1 for *_, ok in reader.results if not ok)}  # fmt: skip
    sections = [
        ("What happened", f"""
Node 1's wall clock jumped +1 h, then to -1 h, while GETs ran through node 0. Grid sessions
lost anywhere in the cluster: **{summary['disconnects']}**. The monotonic last-seen age of node
1 (seen from node 0) never went above {worst_age:.2f}s.

What a wall-clock detector would have concluded, as MinIO's grid does (it stores `LastPing` as
unix seconds and compares with `time.Now()` on the same node): after the +1 h jump the peer
looks {3600 + worst_age:.0f}s silent, far over a {detector_window:g}s window, so every
connection of that node would be dropped at once; after the -1 h jump the age is negative and a
peer that really died would go unnoticed for about {3600 + detector_window:.0f}s.

The jump is not invisible: objects written through node 1 carry its clock
(Last-Modified off by {summary['last_modified_offset_s']} seconds), which is what a wall clock
*should* be used for.
"""),
        ("Key log lines", quoted(lab.log_lines(r"wall clock jumped", "clock"), 4)),
        ("What the code does about it", """
Everything in the liveness path uses the monotonic clock (`loop.time()`): ping times, RTT,
silence, stream deadlines; deadlines cross the wire as time *remaining*, never as a timestamp.
The handshake uses fresh nonces, not timestamps. The fault shifts `time.time()` in the node
process (`node/faults.py`); only object modification times and log timestamps move.
"""),
    ]
    return summary, sections


def reconnect_deadlock(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    size = 4 * MIB if lab.quick else 8 * MIB
    with lab.running("deadlock", FAST) as cluster:
        s3 = s3_client(cluster, 0, timeout=30)
        s3.create_bucket(Bucket="lab")
        assert lab.faults is not None
        lab.wait_for(lambda: _up(lab, 0, 2), 20, "the grid")
        lab.mark("freeze node 2")
        lab.faults.signal(2, signal.SIGSTOP)
        body = bytes(size)
        depth: list[int] = []

        def put(n: int) -> bool:
            try:
                s3.put_object(Bucket="lab", Key=f"big/{n}", Body=body)
            except Exception:
                return False
            return True

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(put, n) for n in range(8)]

            def dropped() -> bool:
                depth.append(int(lab.grid_state(0, 2)["queue_bytes"]))
                return _down(lab, 0, 2)

            lab.wait_for(dropped, 30, "node 0 to drop node 2")
            lab.mark("dropped")
            thawed = lab.mark("thaw")
            lab.faults.signal(2, signal.SIGCONT)
            lab.wait_for(lambda: _up(lab, 0, 2), 30, "the new session")
            back = lab.now() - thawed
            results = [f.result() for f in futures]
        lab.mark("back")
        s3.put_object(Bucket="lab", Key="after", Body=b"ok")
    summary = {"queued_bytes_at_drop": max(depth, default=0),
               "reconnect_after_thaw_s": round(back, 2), "within_2s": back <= 2.0,
               "puts_ok": sum(results), "puts_failed": len(results) - sum(results)}  # fmt: skip
    sections = [
        ("What happened", f"""
Node 2 was frozen while eight {size // MIB} MiB PUTs through node 0 streamed shards to it, so
node 0's out-queue to node 2 filled up (up to {summary['queued_bytes_at_drop']} bytes were seen
queued). Liveness dropped the session with the queue full; every queued send failed at once.
After SIGCONT the new session was up in **{back:.2f}s**. PUTs: {summary['puts_ok']} acknowledged
(write quorum without node 2), {summary['puts_failed']} failed.
"""),
        ("Key log lines", quoted(lab.log_lines(r"node0: .*(session lost|->.*connected)",
                                               "deadlock"), 6)),
        ("What the code does about it", """
In MinIO a connection whose queue was full could not be torn down: the code ending it waited to
send on the full queue, and the peer's return was never noticed. Here no code path awaits a send
while holding anything a reconnect needs: `_teardown` fails the queue's waiters and empties it
before the socket is closed, so the new session never waits on the old one.
"""),
    ]
    return summary, sections


def dead_peer_table(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    calls = 200 if lab.quick else 500
    with lab.running("deadpeer", FAST) as cluster:
        objects = fill(cluster, "lab", 16, 64 * 1024)
        assert lab.faults is not None and lab.admin is not None
        s3 = s3_client(cluster, 0, timeout=30)
        lab.admin.call(3, "POST", "/fault/slow-drive", drive=0, ms=2000)
        lab.admin.call(3, "POST", "/fault/slow-drive", drive=1, ms=2000)
        keys = sorted(objects)

        def head(n: int) -> tuple[float, float, bool]:
            began = lab.now()
            try:
                s3.head_object(Bucket="lab", Key=keys[n % len(keys)])
            except Exception:
                return began, lab.now() - began, False
            return began, lab.now() - began, True

        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            burst = [pool.submit(head, n) for n in range(calls)]
            lab.wait_for(lambda: lab.grid_state(0, 3)["inflight_calls"] >= 20, 30,
                         "calls queued to node 3")  # fmt: skip
            queued = lab.grid_state(0, 3)["inflight_calls"]
            cut = lab.mark(f"node 3 silent ({queued} calls queued)")
            lab.faults.partition(0, 3, "silent")
            lab.wait_for(lambda: _down(lab, 0, 3), 30, "node 0 to drop node 3")
            detected = lab.now() - cut
            lab.mark("detected")
            done = [f.result() for f in burst]
        after = [head(n) for n in range(40)]
        lab.faults.unpartition()
    ends = [began + took for began, took, _ in done]
    summary = {"calls_queued_at_cut": queued, "detection_s": round(detected, 2),
               "all_done_within_s": round(max(ends) - cut, 2),
               "burst_ok": sum(1 for *_, ok in done if ok),
               "burst_failed": sum(1 for *_, ok in done if not ok),
               "new_ops_p50_s": rounded(percentile([t for _, t, ok in after if ok], 0.5)),
               "new_ops_failed": sum(1 for *_, ok in after if not ok),
               "log_lines_about_node3": 0}  # fmt: skip
    lines = lab.log_lines(r"node0: .*(session lost|peer \S+ offline)", "deadpeer")
    summary["log_lines_about_node3"] = len(lines)
    sections = [
        ("What happened", f"""
Node 3's drives were slowed to 2 s per operation, and {calls} HEADs were fired at node 0, 64 at
a time: **{queued} calls** were waiting on node 3 when it went silent at {cut:.1f}s. Node 0
dropped it {detected:.2f}s later; every queued call failed at that moment and its HEAD was
answered from the other drives: all {calls} finished within {summary['all_done_within_s']}s of
the cut ({summary['burst_failed']} failed). The log holds **{len(lines)}** lines about it, not
one per call. New HEADs right after skipped node 3 without a call: median
{summary['new_ops_p50_s']}s, {summary['new_ops_failed']} failed.
"""),
        ("Key log lines", quoted(lines, 6)),
        ("What the code does about it", """
Tahoe-LAFS ticket #502: queries kept going to a server that had vanished, hundreds queued up,
failed together minutes later and set off a storm of log incidents. Here a lost session fails
every call at once with one summary line (`session lost ...: failed N calls`), and the peer
table marks the peer's drives offline *before* the next operation, so nothing new is sent its
way (`storage/peers.py`, one line per state change).
"""),
    ]
    return summary, sections


__all__ = ["clock_jump", "dead_peer_table", "frozen_peer", "partition_lab", "reconnect_deadlock"]
