"""The grid's failure labs: a frozen peer, partitions, clock jumps, a full queue at reconnect,
and a dead peer with hundreds of calls queued to it.

They all run on a 4-node cluster with the ``fast`` liveness profile (:data:`GRID_OPTIONS`), so
quick runs in the tests can share one cluster. Times come from the nodes' own log lines where
they can (a state change is logged when it happens, to the millisecond), and from polling
``admin top`` otherwise.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from typing import Any

from cli.adminclient import AdminError
from cli.labs.runner import LabCluster, LabContext, LabError, LogLine, quoted
from cli.labs.workload import (
    MIB,
    Get,
    Reader,
    fill,
    gets_summary,
    rounded,
    s3_client,
)
from minigrid.config import GridConfig, profile
from minigrid.manager import should_dial

GRID_OPTIONS: dict[str, Any] = {"profile": "fast", "mrf_delay": 0.5}
SLOW_MS = 1000
#: The deadlock lab's out-queue cap (the default is 32 MiB): a few PUTs fill it.
QUEUE_MIB = 1
#: Freezes the deadlock lab tries before it reports a drop without a full queue.
ATTEMPTS = 3
FAST: GridConfig = profile("fast")
LINK_PANELS = [
    ("last_seen_age_s", "last seen (s)", "links"),
    ("get_latency_s", "GET via node 0 (s)", "points"),
    ("loop_lag_s", "loop lag (s)", "nodes"),
]
QUEUE_PANELS = [
    ("queue_bytes", "out-queue (bytes)", "links"),
    ("connected", "link up", "links"),
    ("loop_lag_s", "loop lag (s)", "nodes"),
]
CALLS_PANELS = [
    ("calls_out", "calls in flight", "links"),
    ("connected", "link up", "links"),
    ("loop_lag_s", "loop lag (s)", "nodes"),
]
Result = tuple[dict[str, Any], list[tuple[str, str]]]


def _state(cl: LabCluster, node: int, peer: int) -> str:
    try:
        return str(cl.link(node, peer)["state"])
    except AdminError:
        return "unknown"  # no answer in time: ask again


def _down(cl: LabCluster, node: int, peer: int) -> bool:
    return _state(cl, node, peer) not in ("connected", "unknown")


def _up(cl: LabCluster, node: int, peer: int) -> bool:
    return _state(cl, node, peer) == "connected"


def _reader(lab: LabContext, cl: LabCluster, bucket: str, objects: dict[str, bytes],
            node: int = 0) -> Reader:  # fmt: skip
    def record(get: Get) -> None:
        lab.record(node, "get_latency_s" if get.ok else "get_failed_s", get.seconds, t=get.start)

    reader = Reader(cl.cluster, bucket, objects, node=node, clock=lab.now, on_get=record)
    reader.start()
    if not reader.wait_gets(8, 60):
        raise LabError("the reader did not get 8 objects in 60 s")
    return reader


def _cause(line: LogLine | None) -> str | None:
    """The cause in a ``connected -> error (CAUSE)`` state-change line."""
    if line is None:
        return None
    found = re.search(r"connected -> error \((.*)\)\s*$", line.text)
    return found.group(1) if found else None


def _window(cause: str | None) -> float:
    """The silence window the grid allowed, as its cause says (``... (window 2.09s); ...``):
    ``dead_after`` for a peer that looked healthy, more for one that showed it was slow."""
    found = re.search(r"\(window ([0-9.]+)s\)", cause or "")
    return float(found.group(1)) if found else FAST.dead_after


def _first(lines: list[LogLine], after: float) -> LogLine | None:
    return next((line for line in lines if line.t is not None and line.t >= after), None)


def _since(line: LogLine | None, moment: float, fallback: float | None = None) -> float | None:
    if line is None or line.t is None:
        return None if fallback is None else round(fallback, 2)
    return round(line.t - moment, 2)


def _guarded(lab: LabContext, phase: str, node: int, peer_host: str, cut: float,
             down: LogLine | None) -> float:  # fmt: skip
    """Seconds from ``cut`` to the last time ``node``'s local-pause guard restarted its window
    for ``peer_host`` before giving up (0: it never did). A loop that fires late (a loaded
    machine) does not accuse its peer for that time, so detection can take this much longer
    than the window."""
    until = down.t if down is not None and down.t is not None else float("inf")
    times = [line.t for line in lab.log_lines(rf"->{peer_host}: local loop stalled", phase,
                                              node=node, since=cut)
             if line.t is not None and line.t <= until]  # fmt: skip
    return round(max(times) - cut, 2) if times else 0.0


def _guard_text(s: dict[str, Any]) -> str:
    if not s.get("window_restarted_after_s"):
        return ""
    return (f" Node 0's own loop fired late during the window (this machine was loaded), so its "
            f"local-pause guard restarted the window {s['window_restarted_after_s']} s after the "
            "cut instead of accusing the peer for its own stall; detection is that plus the "
            "window.")  # fmt: skip


def _about(lab: LabContext, phase: str, node: int, peer_host: str, since: float) -> list[LogLine]:
    """What ``node`` logged about ``peer_host`` from ``since`` on (the grid and peer table)."""
    return lab.log_lines(rf"{peer_host}\b", phase, node=node, since=since)


# --- frozen peer ----------------------------------------------------------------------------


def frozen_peer(lab: LabContext) -> Result:
    hold = 6.0 if lab.quick else 15.0
    with lab.running("frozen", GRID_OPTIONS) as cl:
        bucket = cl.new_bucket("frozen")
        reader = _reader(lab, cl, bucket, fill(cl.cluster, bucket, 12, MIB))
        lab.hold(2.0)
        frozen_at = lab.mark("SIGSTOP node 2")
        cl.faults.signal(2, signal.SIGSTOP)
        lab.wait_for(lambda: _down(cl, 0, 2), 30, "node 0 to give up on node 2")
        polled = lab.now() - frozen_at
        lab.mark("node 0 gives up")
        lab.wait_for(lambda: lab.now() - frozen_at > hold, hold + 5, "the frozen window")
        thawed_at = lab.mark("SIGCONT")
        cl.faults.signal(2, signal.SIGCONT)
        lab.wait_for(lambda: _up(cl, 0, 2), 30, "node 2 to be back")
        back_polled = lab.now() - thawed_at
        lab.hold(2.0)
        reader.stop()
        cause = cl.link(0, 2)["cause"]
    host = cl.host(2)
    down = _first(lab.log_lines(rf"->{host}: connected -> error", "frozen", node=0), frozen_at)
    up = _first(lab.log_lines(rf"->{host}: \S+ -> connected", "frozen", node=0), thawed_at)
    lost = lab.log_lines(rf"->{host}: session lost", "frozen", node=0, since=frozen_at)
    detection = _since(down, frozen_at, polled)
    given_up = frozen_at + (detection or polled)
    healthy = gets_summary(reader.between(0, frozen_at))
    during = gets_summary(reader.between(frozen_at, thawed_at))
    hedged = gets_summary(reader.between(frozen_at, given_up))
    skipped = gets_summary(reader.between(given_up, thawed_at))
    ratio = during["worst_s"] / healthy["p50_s"] if during["worst_s"] and healthy["p50_s"] else None
    summary = {
        "detection_s": detection,
        "window_s": _window(_cause(down)),
        "window_restarted_after_s": _guarded(lab, "frozen", 0, host, frozen_at, down),
        "cause": _cause(down),
        "cause_revised": cause,
        # None: nothing was waiting on node 2 when the session ended, so no "session lost" line.
        "failed_at_once": _failed_count(lost[0].text) if lost else None,
        "gets_healthy": healthy,
        "gets_while_frozen": during,
        "gets_until_detected": hedged,
        "gets_after_detected": skipped,
        "worst_vs_healthy_median": rounded(ratio, 1),
        "reconnect_after_thaw_s": _since(up, thawed_at, back_polled),
    }
    lines = _about(lab, "frozen", 0, host, frozen_at - 0.5)
    return summary, _frozen_text(summary, frozen_at, lines)


def _frozen_text(s: dict[str, Any], frozen_at: float,
                 lines: list[LogLine]) -> list[tuple[str, str]]:  # fmt: skip
    healthy, during = s["gets_healthy"], s["gets_while_frozen"]
    hedged, skipped = s["gets_until_detected"], s["gets_after_detected"]
    return [
        ("The failure", """
A process that is stopped (SIGSTOP, a swapped-out VM, a long GC pause) keeps its sockets open:
the kernel goes on ACKing, nothing closes, nothing resets. Only traffic from the process itself
can tell that it is gone. MinIO's grid notices after 20 s without a pong (the `minio` profile).
"""),
        ("What happened", f"""
Node 2 was stopped with SIGSTOP at {frozen_at:.1f} s while a client read 1 MiB objects through
node 0 (4+4 erasure coding on 4 nodes x 2 drives). Node 0 gave up on it **{s['detection_s']} s**
later (the `fast` profile drops a peer after {FAST.dead_after:g} s without any traffic if it
looked healthy, longer if it showed it was slow: here {s['window_s']:g} s; the time is node 0's
own log line), with the cause `{s['cause']}`, revised when node 2 came back to
`{s['cause_revised']}`.{_guard_text(s)}

GETs while node 2 was frozen: **{during['ok']} ok, {during['failed']} failed**, the slowest
in {during['worst_s']} s, {s['worst_vs_healthy_median']} times the healthy median
({healthy['p50_s']} s; healthy worst {healthy['worst_s']} s). Until node 0 gave up, each GET
waited for node 2's shards one hedge delay and then read the others instead (median
{hedged['p50_s']} s over {hedged['ok']} GETs); after it, node 2's drives were skipped without
a call (median {skipped['p50_s']} s over {skipped['ok']} GETs). {_casualties_text(s)} After
SIGCONT the link was back in **{s['reconnect_after_thaw_s']} s**.

In the plot, the last-seen age of the links to node 2 climbs until node 0 gives up, and the
GETs that were waiting on node 2's drives at the freeze are the slow dots right after it.
"""),
        ("Key log lines (node 0)", quoted(lines, 8)),
        ("What the code does about it", """
- Liveness counts every inbound frame as proof of life and pings every second; 4 s of silence
  ends the session (`minigrid/connection.py`, `_liveness_loop`), and every call in flight fails
  at once with `Disconnected`.
- Reads need any 4 of the 8 shards and start the next shard read when one is slower than the
  observed latency (a hedge), so a frozen drive costs a GET one hedge delay, not a timeout.
- The peer table marks the node's drives offline on the state change (`storage/peers.py`), so
  reads after it skip them without a call.
- When the peer returns, its first pong reports how long its loop stalled, and the cause is
  revised from `network-silent` to `remote-stalled`.
"""),
    ]


def _casualties_text(s: dict[str, Any]) -> str:
    if s["failed_at_once"] is None:
        return ("No call was waiting on node 2 when node 0 gave up (the GETs had already read "
                "around it), so the grid logged no \"session lost\" line.")
    return (f"The {s['failed_at_once']} calls and streams still waiting on node 2 failed at "
            "once with the session (one \"session lost\" line, below).")


# --- partitions -----------------------------------------------------------------------------


def partition_lab(lab: LabContext, mode: str) -> Result:
    hold = 6.0 if lab.quick else 12.0
    phase = f"{mode}-partition"
    with lab.running(phase, GRID_OPTIONS) as cl:
        bucket = cl.new_bucket(mode)
        objects = fill(cl.cluster, bucket, 12, MIB)
        reader = _reader(lab, cl, bucket, objects)
        others = [_reader(lab, cl, bucket, objects) for _ in range(2)]
        # Slow disks on node 1, so GETs through node 0 have calls in flight to it at the cut.
        for drive in (0, 1):
            cl.admin.call(1, "POST", "/fault/slow-drive", drive=drive, ms=SLOW_MS)
        inflight = lab.wait_for(lambda: _inflight(cl, 0, 1), 20,
                                "calls in flight from node 0 to node 1")  # fmt: skip
        cut = lab.mark(f"partition 0|1 ({mode})")
        cl.faults.partition(0, 1, mode)
        lab.wait_for(lambda: _down(cl, 0, 1), 30, "node 0 to see the partition")
        polled = lab.now() - cut
        lab.mark("node 0 gives up")
        lab.wait_for(lambda: lab.now() - cut > hold, hold + 5, "the partition window")
        healed = lab.mark("partition lifted")
        cl.faults.unpartition()
        cl.admin.call(1, "POST", "/fault/clear")
        lab.wait_for(lambda: _up(cl, 0, 1), 30, "the link to come back")
        back_polled = lab.now() - healed
        lab.hold(1.0)
        for each in (reader, *others):
            each.stop()
    host = cl.host(1)
    down = _first(lab.log_lines(rf"->{host}: connected -> error", phase, node=0), cut)
    lost = lab.log_lines(rf"->{host}: session lost", phase, node=0, since=cut)
    offline = lab.log_lines(rf"peer {host} offline", phase, node=0, since=cut)
    up = _first(lab.log_lines(rf"->{host}: \S+ -> connected", phase, node=0), healed)
    gets = sorted((g for each in (reader, *others) for g in each.gets), key=lambda g: g.start)
    spanning = [g for g in gets if g.start < cut < g.start + g.seconds]
    worst_spanning = max((g.seconds for g in spanning), default=None)
    summary = {
        "mode": mode,
        "how": "iptables in the nodes' namespaces" if lab.netns else "acted out by the grid",
        "detection_s": _since(down, cut, polled),
        "window_s": _window(_cause(down)) if mode == "silent" else None,
        "window_restarted_after_s": _guarded(lab, phase, 0, host, cut, down),
        "cause": _cause(down),
        "inflight_at_cut": inflight,
        "failed_at_once": _failed_count(lost[0].text) if lost else None,
        "failed_after_s": _since(lost[0] if lost else None, cut),
        "gets_spanning_cut": {"count": len(spanning), "ok": sum(g.ok for g in spanning),
                              "worst_s": rounded(worst_spanning)},
        "gets_during": gets_summary([g for g in gets if cut <= g.start < healed]),
        "peer_table_lines": len(offline),
        "session_lost_lines": len(lost),
        "reconnect_after_lift_s": _since(up, healed, back_polled),
    }
    return summary, _partition_text(summary, cut, lost + offline, lab.netns)


def _inflight(cl: LabCluster, node: int, peer: int) -> int:
    try:
        link = cl.link(node, peer)
    except AdminError:
        return 0
    return int(link["calls_out"]) + int(link["streams"])


def _failed_count(line: str) -> int | None:
    """N calls + M streams from a ``session lost (...): failed N calls and M streams`` line."""
    found = re.search(r"failed (\d+) calls and (\d+) streams", line)
    return int(found.group(1)) + int(found.group(2)) if found else None


def _cancelled_count(line: str) -> int | None:
    """K from a ``session lost (...): ...; cancelled K handlers (...)`` line: the handlers this
    node was running for the peer (here, the shard streams it served)."""
    found = re.search(r"cancelled (\d+) handlers", line)
    return int(found.group(1)) if found else None


def _partition_text(s: dict[str, Any], cut: float, lines: list[LogLine],
                    netns: bool) -> list[tuple[str, str]]:  # fmt: skip
    silent = s["mode"] == "silent"
    failure = ("""
A silent partition: a firewall rule, a dead switch port or a broken route makes every packet
between two nodes vanish. No RST, no FIN: TCP retransmits for many minutes (15 by default on
Linux) before it gives up, and a client that waits on TCP waits that long.
""" if silent else """
A reset partition: a firewall or a restarted NAT answers the packets with TCP resets. The
connection breaks at the next packet, which is the easy case, if the code notices at once and
does not leave calls waiting on a connection that is gone.
""")  # fmt: skip
    how = ("real iptables rules (DROP, or REJECT with tcp-reset) in the two nodes' namespaces"
           if netns else "acted out by the grid on loopback (`Manager.partition`: " + (
               "reads and writes held, dials left unanswered" if silent else
               "the session dropped as by an RST, dials refused") + ")")  # fmt: skip
    spans = s["gets_spanning_cut"]
    return [
        ("The failure", failure),
        ("What happened", f"""
At {cut:.1f} s nodes 0 and 1 were cut off from each other ({how}). Node 1's drives had been
slowed ({SLOW_MS} ms per operation) and three clients read through node 0, so that it had calls
in flight to node 1:
**{s['inflight_at_cut']}** calls and streams at the cut. Node 0 noticed in
**{s['detection_s']} s** (cause `{s['cause']}`).{_guard_text(s)} The calls in flight then
failed together
({s['failed_at_once']} of them, {s['failed_after_s']} s after the cut), not after a TCP
timeout. {spans['count']} GETs were running at the cut; {spans['ok']} still succeeded from
the other drives, the slowest in {spans['worst_s']} s. During the partition
{s['gets_during']['ok']} GETs succeeded and {s['gets_during']['failed']} failed.

Node 0 logged **{s['session_lost_lines']}** "session lost" line and the peer table
**{s['peer_table_lines']}** "offline" line for node 1, however many calls were cut. After the
partition was lifted the link was back in {s['reconnect_after_lift_s']} s.
"""),
        ("Key log lines (node 0)", quoted(lines, 6)),
        ("What the code does about it", f"""
- {"Liveness finds a silent partition: no frame for 4 s ends the session with "
   "`network-silent` (and says the peer's loop was healthy at last contact, so it was the "
   "network)." if silent else "A reset ends the session at the next read or write, with "
   "the cause `reset`."}
- Ending a session fails every call, stream and queued send of it at once with
  `Disconnected` (`Connection._teardown`), and logs one line that counts them.
- The peer table marks the peer's drives offline on the state change, before the next
  operation (`storage/peers.py`), one line per change.
- The dialing side redials with jittered backoff; the accepting side pokes it every 2 s, so
  the link comes back soon after the partition heals.
"""),
    ]


# --- clock jumps ----------------------------------------------------------------------------


def clock_jump(lab: LabContext) -> Result:
    hold = 4.0 if lab.quick else 10.0
    detector_window = 20.0  # MinIO's grid drops a peer not seen for 20 s, in unix seconds
    with lab.running("clock", GRID_OPTIONS) as cl:
        bucket = cl.new_bucket("clock")
        reader = _reader(lab, cl, bucket, fill(cl.cluster, bucket, 8, 256 * 1024))
        before = cl.reconnects()
        via_node1 = s3_client(cl.cluster, 1)
        stamps: dict[str, float] = {}
        starts = []
        for jump in (3600.0, -7200.0):
            starts.append(lab.mark(f"node 1 clock {jump:+.0f}s"))
            offset = cl.admin.call(1, "POST", "/fault/clock-jump", seconds=jump)["clock_offset_s"]
            key = f"written-at-{offset:+.0f}"
            via_node1.put_object(Bucket=bucket, Key=key, Body=b"x")
            modified = via_node1.head_object(Bucket=bucket, Key=key)["LastModified"]
            stamps[f"{offset:+.0f}"] = round(modified.timestamp() - time.time())
            via_node1.put_object(Bucket=bucket, Key="overwritten", Body=f"{offset:+.0f}".encode())
            lab.hold(hold)
        lab.mark("clock back")
        cl.admin.call(1, "POST", "/fault/clear")
        latest = s3_client(cl.cluster, 0).get_object(Bucket=bucket, Key="overwritten")
        last_write = latest["Body"].read().decode()
        lab.hold(1.0)
        reader.stop()
        after = cl.reconnects()
    ages = [s.value for s in lab.series("last_seen_age_s", since=starts[0])
            if s.node == 1 or s.peer == "1"]  # fmt: skip
    worst = max(ages, default=0.0)
    summary = {
        "jumps_s": [3600, -3600],
        "disconnects": after - before,
        "worst_last_seen_age_s": round(worst, 3),
        "gets": gets_summary(reader.between(starts[0], lab.now())),
        "last_modified_offset_s": stamps,
        "last_write_wins": last_write == "-3600",
        "wall_clock_detector": {
            "window_s": detector_window,
            "after_+3600s": {"apparent_silence_s": round(3600 + worst),
                             "conclusion": "every peer looks dead: all dropped at once"},
            "after_-3600s": {"apparent_silence_s": round(-3600 + worst),
                             "conclusion": f"a peer that really dies goes unnoticed for "
                                           f"{3600 + detector_window:.0f} s"},
        },
    }  # fmt: skip
    lines = lab.log_lines(r"wall clock jumped|fault: cleared", "clock", node=1)
    return summary, _clock_text(summary, lines)


def _clock_text(s: dict[str, Any], lines: list[LogLine]) -> list[tuple[str, str]]:
    detector = s["wall_clock_detector"]
    return [
        ("The failure", """
Wall clocks jump: NTP steps a clock that drifted, a VM resumes after migration, a laptop wakes
up, someone fixes a wrong time zone by hand. Code that measures intervals with the wall clock
then sees hours pass in a second, or time run backwards. MinIO's grid keeps a peer's `LastPing`
as unix seconds and compares it with `time.Now()`.
"""),
        ("What happened", f"""
Node 1's wall clock jumped +1 h, and later to -1 h, while GETs ran through node 0. Grid
sessions lost anywhere in the cluster: **{s['disconnects']}**. The last-seen age of node 1's
links (monotonic time) never went above **{s['worst_last_seen_age_s']} s**. GETs during the
jumps: {s['gets']['ok']} ok, {s['gets']['failed']} failed.

What a wall-clock detector with a {detector['window_s']:g} s window would have concluded on
node 1:

- after the +1 h jump the peers look {detector['after_+3600s']['apparent_silence_s']} s
  silent: {detector['after_+3600s']['conclusion']};
- after the -1 h jump they look {detector['after_-3600s']['apparent_silence_s']} s silent
  (negative): {detector['after_-3600s']['conclusion']}.

The jump is not invisible, and should not be: objects written through node 1 carry its clock
(Last-Modified off by {s['last_modified_offset_s']} seconds). A key written at +1 h and
overwritten at -1 h (an older timestamp) reads back as the later write:
**{s['last_write_wins']}**.
"""),
        ("Key log lines (node 1)", quoted(lines, 4)),
        ("What the code does about it", """
- Everything in the liveness path uses the monotonic clock (`loop.time()`): ping times, RTT,
  silence, stream deadlines. Deadlines cross the wire as time *remaining*, never as a
  timestamp, and the handshake uses fresh nonces, not timestamps.
- The fault shifts `time.time()` inside the node process (`node/faults.py`); only object
  modification times and log timestamps move.
- The healer commits only onto the copy it judged, comparing versions by identity rather than
  by modification time, so a node whose clock jumped can neither block a heal nor have a newer
  write undone.
"""),
    ]


# --- a full queue at reconnect --------------------------------------------------------------


def reconnect_deadlock(lab: LabContext) -> Result:
    # Clients read large objects through node 2, so node 0 serves shard streams to node 2 from
    # its drives as fast as the disks go. A sender may have a stream's whole credit outstanding
    # (4 x 256 KiB); frozen, node 2 takes nothing more and grants nothing, and cancels nothing
    # either. With this many streams that is more than the sockets' buffers and a 1 MiB queue
    # hold, so the queue is full when the session drops. (Writes are no good for this: a PUT
    # gives up on a straggling drive once a write quorum has answered, cancelling its streams.)
    readers, objects, size = (16, 4, 16 * MIB) if lab.quick else (24, 8, 16 * MIB)
    options = {**GRID_OPTIONS, "grid_queue_mib": QUEUE_MIB}
    with lab.running("deadlock", options) as cl:
        bucket = cl.new_bucket("deadlock")
        keys = sorted(fill(cl.cluster, bucket, objects, size))
        via2 = s3_client(cl.cluster, 2, timeout=15, pool=readers)
        stop = threading.Event()
        gets: list[Get] = []
        seen: list[tuple[float, dict[str, Any]]] = []

        def read(index: int) -> None:
            n = index
            while not stop.is_set():
                began = lab.now()
                try:
                    via2.get_object(Bucket=bucket, Key=keys[n % len(keys)])["Body"].read()
                    ok = True
                except Exception:  # counted: node 2 was frozen under it
                    ok = False
                gets.append(Get(began, lab.now() - began, ok))
                n += 1

        def look() -> dict[str, Any]:
            try:
                link = cl.link(0, 2)
            except AdminError:
                return seen[-1][1] if seen else {}
            seen.append((lab.now(), link))
            return link

        threads = [threading.Thread(target=read, args=(i,), daemon=True)
                   for i in range(readers)]  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            # On a heavily loaded machine the streams may have spent their credit before the
            # freeze; then the queue does not fill, and the lab tries again (at most 3 times).
            for attempt in range(1, ATTEMPTS + 1):
                lab.wait_for(lambda: _streams(cl, 0, 2) >= readers // 2, 60,
                             "shard streams from node 0 to node 2")  # fmt: skip
                streams = _streams(cl, 0, 2)
                frozen = lab.mark("SIGSTOP node 2" + (f" (try {attempt})" if attempt > 1 else ""))
                cl.faults.signal(2, signal.SIGSTOP)
                lab.wait_for(lambda: look().get("queue_waiters") or _down(cl, 0, 2), 30,
                             "node 0's queue to node 2 to fill")  # fmt: skip
                full = bool(seen and seen[-1][1].get("queue_waiters"))
                full_at = lab.mark("queue full") if full else None
                lab.wait_for(lambda: look().get("state") not in (None, "connected"), 30,
                             "node 0 to drop node 2")  # fmt: skip
                dropped = lab.mark("node 0 drops node 2")
                if full or attempt == ATTEMPTS:
                    stop.set()  # no new GETs: those waiting on node 2 end after the thaw
                lab.hold(0.5)
                thawed = lab.mark("SIGCONT")
                cl.faults.signal(2, signal.SIGCONT)
                lab.wait_for(lambda: _up(cl, 0, 2), 30, "the new session")
                back_polled = lab.now() - thawed
                if stop.is_set():
                    break
        finally:
            stop.set()
            for thread in threads:
                thread.join(20)
        s3 = s3_client(cl.cluster, 0)
        s3.put_object(Bucket=bucket, Key="after", Body=b"ok")
        after_ok = via2.get_object(Bucket=bucket, Key="after")["Body"].read() == b"ok"
    host = cl.host(2)
    down = _first(lab.log_lines(rf"->{host}: connected -> error", "deadlock", node=0), frozen)
    up = _first(lab.log_lines(rf"->{host}: \S+ -> connected", "deadlock", node=0), thawed)
    lost = lab.log_lines(rf"->{host}: session lost", "deadlock", node=0, since=frozen)
    last = [link for t, link in seen if t <= dropped and link.get("state") == "connected"]
    at_drop = last[-1] if last else {}
    back = _since(up, thawed, back_polled)
    summary = {
        "dialer": 0 if should_dial(cl.host(0), host) else 2,
        "queue_cap_bytes": QUEUE_MIB << 20,
        "queued_bytes_at_drop": at_drop.get("queue_bytes"),
        "senders_waiting_at_drop": at_drop.get("queue_waiters"),
        "queue_full": bool(at_drop.get("queue_waiters")),
        "full_after_s": None if full_at is None else round(full_at - frozen, 2),
        "cause": _cause(down),
        "detection_s": _since(down, frozen),
        "window_restarted_after_s": _guarded(lab, "deadlock", 0, host, frozen, down),
        "failed_at_drop": _failed_count(lost[0].text) if lost else None,
        "handlers_cancelled_at_drop": _cancelled_count(lost[0].text) if lost else None,
        "reconnect_after_thaw_s": back,
        "within_2s": back is not None and back <= 2.0,
        "streams_at_freeze": streams,
        "attempt": attempt,
        "gets_via_node2": gets_summary(gets),
        "put_and_get_after": after_ok,
    }
    lines = lab.log_lines(rf"{host}\b", "deadlock", node=0, since=frozen)
    return summary, _deadlock_text(summary, readers, size, lines)


def _streams(cl: LabCluster, node: int, peer: int) -> int:
    try:
        return int(cl.link(node, peer)["streams"])
    except AdminError:
        return 0


def _deadlock_text(s: dict[str, Any], readers: int, size: int,
                   lines: list[LogLine]) -> list[tuple[str, str]]:  # fmt: skip
    retry = "" if s["attempt"] == 1 else (
        f" (freeze {s['attempt']}: the queue of an earlier one did not fill; it was thawed and "
        "the lab tried again)")  # fmt: skip
    return [
        ("The failure", """
MinIO's grid had a deadlock on reconnect (fixed in 2024): when a peer stopped reading, the
connection's outgoing queue filled up, and the code that tears a connection down had to send
on that full queue before it could finish, so the connection was never torn down and the peer's
return was never noticed. Any design where a reconnect waits on what the old connection left
behind has this shape.
"""),
        ("What happened", f"""
{readers} clients read {size // MIB} MiB objects through node 2 in a loop, so node 0 served
shard streams to node 2 from its drives, with the grid's out-queue capped at
{s['queue_cap_bytes'] >> 20} MiB (`-o grid_queue_mib={s['queue_cap_bytes'] >> 20}`; 32 MiB by
default). With {s['streams_at_freeze']} streams running, node 2 was frozen with SIGSTOP{retry}. Each
stream could still send what its credit allowed (4 x 256 KiB), more in all than the sockets'
buffers and the queue hold: node 0's queue to node 2 was full {s['full_after_s']} s after the
freeze. When liveness dropped the session, {s['detection_s']} s after the freeze
({s['cause']}),{_guard_text(s)} **{s['queued_bytes_at_drop']} bytes** were queued and
**{s['senders_waiting_at_drop']} senders** were waiting for room (full: {s['queue_full']}).
Ending the session failed {s['failed_at_drop']} calls and streams of node 0's own, cancelled
the {s['handlers_cancelled_at_drop']} shard-stream handlers it was serving to node 2 (the line
names each handler and drive), and emptied the queue, all at once.

After SIGCONT the new session was up in **{s['reconnect_after_thaw_s']} s** (within 2 s:
{s['within_2s']}; node {s['dialer']} dials this pair). GETs through node 2:
{s['gets_via_node2']['ok']} ok, {s['gets_via_node2']['failed']} failed (the ones running at
the freeze waited for node 2 to come back; the slowest took {s['gets_via_node2']['worst_s']} s).
A PUT and a GET afterwards worked: {s['put_and_get_after']}.
"""),
        ("Key log lines (node 0)", quoted(lines, 6)),
        ("What the code does about it", """
- No code path awaits a send while holding anything a reconnect needs. Ending a session
  (`Connection._teardown`) fails every queued send's waiter and empties the queue *before* the
  socket is closed, and closing the socket has a 1 s limit.
- Control messages (pings, pongs, credit) go ahead of queued data, so a full data queue never
  delays the liveness checks that end the session.
- The new session starts from an empty queue and a fresh budget: nothing of the old one is
  waited on.
"""),
    ]


# --- a dead peer with hundreds of queued calls ----------------------------------------------


def dead_peer_table(lab: LabContext) -> Result:
    clients = 120 if lab.quick else 250
    with lab.running("deadpeer", GRID_OPTIONS) as cl:
        bucket = cl.new_bucket("deadpeer")
        keys = sorted(fill(cl.cluster, bucket, 16, 64 * 1024))
        s3 = s3_client(cl.cluster, 0, timeout=60, pool=clients)
        # Node 3's disks answer after 60 s: node 0's calls to it wait, unanswered.
        for drive in (0, 1):
            cl.admin.call(3, "POST", "/fault/slow-drive", drive=drive, ms=60_000)
        heads: list[Get] = []
        stop = threading.Event()

        def client(index: int) -> None:
            n = index
            while not stop.is_set():
                began = lab.now()
                try:
                    s3.head_object(Bucket=bucket, Key=keys[n % len(keys)])
                    ok = True
                except Exception:  # counted
                    ok = False
                heads.append(Get(began, lab.now() - began, ok))
                n += 1

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(clients)]  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            queued = lab.wait_for(lambda: _at_least(cl, 0, 3, clients), 60,
                                  f"{clients} calls queued to node 3")  # fmt: skip
            lab.hold(1.0)
            queued = max(queued, _inflight(cl, 0, 3))
            cut = lab.mark(f"node 3 goes silent ({queued} calls queued)")
            cl.faults.partition(0, 3, "silent")
            lab.wait_for(lambda: _down(cl, 0, 3), 30, "node 0 to drop node 3")
            polled = lab.now() - cut
            detected = lab.mark("node 0 drops node 3")
            lab.hold(2.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        calls_after = _inflight(cl, 0, 3)
    host = cl.host(3)
    lost = lab.log_lines(rf"->{host}: session lost", "deadpeer", node=0, since=cut)
    down = _first(lab.log_lines(rf"->{host}: connected -> error", "deadpeer", node=0), cut)
    lines = lab.log_lines(rf"{host}\b", "deadpeer", node=0, since=cut)
    in_window = [line for line in lines if line.t is not None and line.t <= detected + 2
                 and "fault injection" not in line.text]  # fmt: skip
    summary = {
        "clients": clients,
        "calls_queued_at_cut": queued,
        "detection_s": _since(down, cut, polled),
        "window_s": _window(_cause(down)),
        "window_restarted_after_s": _guarded(lab, "deadpeer", 0, host, cut, down),
        "failed_at_once": _failed_count(lost[0].text) if lost else None,
        "failed_after_s": _since(lost[0] if lost else None, cut),
        "log_lines_at_detection": len(in_window),
        "session_lost_lines": len(lost),
        "heads_until_detected": gets_summary([h for h in heads if cut <= h.start < detected]),
        "new_ops_after": {**gets_summary([h for h in heads if h.start >= detected]),
                          "calls_to_node3": calls_after},
    }  # fmt: skip
    return summary, _deadpeer_text(summary, in_window)


def _at_least(cl: LabCluster, node: int, peer: int, count: int) -> int:
    """The calls in flight from ``node`` to ``peer`` once there are ``count`` (else 0)."""
    calls = _inflight(cl, node, peer)
    return calls if calls >= count else 0


def _deadpeer_text(s: dict[str, Any], lines: list[LogLine]) -> list[tuple[str, str]]:
    after = s["new_ops_after"]
    return [
        ("The failure", """
Tahoe-LAFS ticket #502: a storage server vanished without closing its connections. Clients
kept sending it queries; hundreds queued up on the dead connection, and when TCP finally gave
up many minutes later they all failed together, each one logging an incident: a log storm,
and operations that had waited minutes for a peer that was never coming back.
"""),
        ("What happened", f"""
Node 3's drives were slowed to answer after 60 s, and {s['clients']} clients sent HEAD
requests through node 0 in a loop. Each HEAD reads the metadata of every drive, gets its
quorum from the other drives and gives up on node 3's, so node 0 had a steady pile of calls
waiting on node 3: **{s['calls_queued_at_cut']} calls** when node 3 went silent (a silent
partition). Node 0 dropped it **{s['detection_s']} s** later (window {s['window_s']:g}
s).{_guard_text(s)} At that moment **{s['failed_at_once']}** calls and streams failed together,
{s['failed_after_s']} s after the cut. Node 0 logged **{s['log_lines_at_detection']}** lines
about node 3 around it (the grid's state change, one "session lost" line counting the failed
calls, the peer table's "offline" line), not one per call.

HEADs while node 3 was silent but not yet dropped: {s['heads_until_detected']['ok']} ok,
{s['heads_until_detected']['failed']} failed, median {s['heads_until_detected']['p50_s']} s.
HEADs after node 0 dropped it: {after['ok']} ok, {after['failed']} failed, median
{after['p50_s']} s; calls in flight to node 3 then: {after['calls_to_node3']} (its drives are
skipped without a call). The two medians are about the same on purpose: a HEAD answers from a
quorum of the other drives either way, so neither waits for node 3, and both measure what
{s['clients']} clients in a loop cost node 0 on this machine. What the drop changes is what
piles up: before it, every HEAD left a call parked on node 3; after it, none.
"""),
        ("Key log lines (node 0)", quoted(lines, 6)),
        ("What the code does about it", """
- A lost session fails every call, stream and queued send at once with `Disconnected` and
  logs one summary line: `session lost (cause): failed N calls and M streams`.
- The peer table marks the peer's drives offline on the state change, *before* the next
  operation, so nothing new is sent its way (`storage/peers.py`), and logs one line per state
  change, not one per failed request.
- Liveness, not TCP, decides the peer is gone: 4 s of silence, not 15 minutes of retransmits.
"""),
    ]


__all__ = [
    "CALLS_PANELS",
    "GRID_OPTIONS",
    "LINK_PANELS",
    "QUEUE_PANELS",
    "clock_jump",
    "dead_peer_table",
    "frozen_peer",
    "partition_lab",
    "reconnect_deadlock",
]
