"""A NAT that forgets idle flows: pings shorter than its timeout keep the grid's connection
alive, pings longer than it let the NAT drop it.

On loopback the NAT is a proxy on the link between nodes 0 and 1 (``minigrid fault nat``, see
:mod:`node.linkproxy`); with ``--netns`` (root) it is a router namespace with MASQUERADE and a
short conntrack timeout, and a third run shows TCP keepalive keeping the flow alive.
"""

from __future__ import annotations

from typing import Any

from cli.adminclient import AdminError
from cli.labs.runner import LabCluster, LabContext, LogLine, quoted
from minigrid.config import profile, scaled

#: MinIO's timings at 0.3: a ping every 3 s, a peer dropped after 6 s without traffic. The NAT
#: timeouts are set around the 3 s ping interval.
LIVENESS_SCALE = 0.3
TIMINGS = scaled(profile("minio"), LIVENESS_SCALE)
#: A cluster with no background traffic to speak of: only the pings cross the NAT.
NAT_OPTIONS: dict[str, Any] = {"profile": "minio", "liveness_scale": LIVENESS_SCALE,
                               "scanner_interval": 600}  # fmt: skip
ALIVE_TIMEOUT, BROKEN_TIMEOUT = 5, 2  # seconds: above and below the ping interval
NAT_PANELS = [
    ("last_seen_age_s", "last seen (s)", "links"),
    ("connected", "link up", "links"),
    ("reconnects", "reconnects (the first: the move onto the NAT)", "links"),
]
Result = tuple[dict[str, Any], list[tuple[str, str]]]


def _pair_losses(cl: LabCluster) -> int:
    """Sessions lost so far on the link between nodes 0 and 1 (node 0's count)."""
    try:
        return int(cl.link(0, 1)["reconnects"])
    except AdminError:
        return 0


def _connected(cl: LabCluster) -> bool:
    try:
        return bool(cl.link(0, 1)["state"] == "connected")
    except AdminError:
        return False


def _fresh(cl: LabCluster, age: float) -> bool:
    """Whether both ends of the link between nodes 0 and 1 run a session younger than
    ``age`` seconds (one made after the NAT was put in the path)."""
    try:
        links = (cl.link(0, 1), cl.link(1, 0))
    except AdminError:
        return False
    return all(link["state"] == "connected" and link.get("connected_s") is not None
               and float(link["connected_s"]) < age for link in links)  # fmt: skip


def _observe(lab: LabContext, cl: LabCluster, name: str, timeout: int, window: float,
             until_lost: int, *, new: bool) -> dict[str, Any]:  # fmt: skip
    """Put the NAT in the path (``new``) or retune it, wait for the session through it, then
    count the sessions it costs."""
    lab.mark(f"NAT idle {timeout}s ({name})")
    called = lab.now()
    cl.faults.nat(0, 1, timeout)
    if new:  # the old session was dropped to move it onto the NAT: wait for both ends' new one
        lab.wait_for(lambda: _fresh(cl, lab.now() - called), 30, "a session through the NAT")
    else:
        lab.wait_for(lambda: _connected(cl), 30, "the session through the NAT")
    baseline = _pair_losses(cl)
    start = lab.now()
    if until_lost:
        lab.wait_for(lambda: _pair_losses(cl) - baseline >= until_lost, window + 30,
                     f"the NAT to break the flow {until_lost} time(s)")  # fmt: skip
    else:
        lab.hold(window)
    return {"nat_idle_timeout_s": timeout, "ping_interval_s": TIMINGS.ping_interval,
            "sessions_lost": _pair_losses(cl) - baseline,
            "observed_s": round(lab.now() - start, 1)}  # fmt: skip


def nat_idle(lab: LabContext) -> Result:
    window = 6.0 if lab.quick else 30.0  # longer than the 5 s NAT timeout: it had its chance
    summary: dict[str, Any] = {"nat": "router namespace (conntrack)" if lab.netns else
                               "proxy on the link (loopback)"}  # fmt: skip
    with lab.running("nat", NAT_OPTIONS) as cl:
        lab.wait_for(lambda: _connected(cl), 30, "the link between nodes 0 and 1")
        summary["pings_below_timeout"] = _observe(lab, cl, "pings below", ALIVE_TIMEOUT,
                                                  window, 0, new=True)  # fmt: skip
        summary["pings_above_timeout"] = _observe(lab, cl, "pings above", BROKEN_TIMEOUT,
                                                  window, 1 if lab.quick else 2,
                                                  new=False)  # fmt: skip
    if lab.netns:
        keepalive = {**NAT_OPTIONS, "tcp_keepidle": 1, "tcp_keepintvl": 1}
        with lab.running("nat-keepalive", keepalive) as cl:
            lab.wait_for(lambda: _connected(cl), 30, "the link between nodes 0 and 1")
            summary["keepalive_below_timeout"] = {
                **_observe(lab, cl, "keepalive 1 s", BROKEN_TIMEOUT, window, 0, new=True),
                "tcp_keepidle_s": 1}  # fmt: skip
    else:
        summary["keepalive_below_timeout"] = None  # a userspace proxy never sees keepalives
    # The NAT's own lines and the sessions it cost; not the move onto the NAT, which the
    # dialer logs as "moved" and the other end sees as a normal close (code 1000).
    lines = lab.log_lines(r"NAT forgot|session lost|fault: link|connected -> error \((?!reset: "
                          r"moved|reset: closed by peer \(code 1000\)|reset: dropped on request)")
    lines.sort(key=lambda line: (line.t is None, line.t or 0.0))
    return summary, _nat_text(summary, lab.netns, lines)


def _nat_text(s: dict[str, Any], netns: bool, lines: list[LogLine]) -> list[tuple[str, str]]:
    below, above, keep = (s["pings_below_timeout"], s["pings_above_timeout"],
                          s["keepalive_below_timeout"])  # fmt: skip
    where = ("""a router namespace between nodes 0 and 1 with MASQUERADE,
`nf_conntrack_tcp_timeout_established` set to the timeout and `nf_conntrack_tcp_loose=0`:
packets of a flow it has forgotten are INVALID and dropped, silently (a home router)""" if netns
             else """a proxy on the link between nodes 0 and 1 (`minigrid fault nat`,
`node/linkproxy.py`): a flow that carried no byte for the timeout is forgotten, and every byte
after that vanishes""")  # fmt: skip
    keep_text = (f"""With pings still every {above['ping_interval_s']:g} s but TCP keepalive
probing after 1 s idle (`-o tcp_keepidle=1 -o tcp_keepintvl=1`), the kernel's probes crossed
the NAT and refreshed the flow: sessions lost over {keep['observed_s']} s with the
{keep['nat_idle_timeout_s']} s NAT: **{keep['sessions_lost']}**.""" if keep else """TCP keepalive
cannot be shown on loopback: the proxy's kernel answers the keepalive probes itself and they
never reach the proxy, so they cannot refresh the flow. Run the lab with `--netns` (root) to
see keepalive keep a real NAT's flow alive.""")  # fmt: skip
    again = ", which the NAT forgot again in turn" if above["sessions_lost"] >= 2 else ""
    return [
        ("The failure", """
NATs and stateful firewalls forget a TCP flow that has been idle for a while: cloud NAT
gateways and load balancers after 4-6 minutes, some home routers after 90 s. The flow's next
packets are dropped (or answered with a reset), and a connection that looked fine simply stops
working, often hours into an idle night. Pings more frequent than the timeout keep the flow
alive; so does TCP keepalive, if its idle time is below the NAT's.
"""),
        ("What happened", f"""
The NAT was {where}. The grid ran MinIO's timings at {LIVENESS_SCALE:g}: a ping every
{below['ping_interval_s']:g} s, a peer dropped after {TIMINGS.dead_after:g} s of silence, and
hardly any other traffic on the link.

- NAT timeout {below['nat_idle_timeout_s']} s, longer than the ping interval: the flow never
  went idle long enough. Sessions lost over {below['observed_s']} s:
  **{below['sessions_lost']}**.
- NAT timeout {above['nat_idle_timeout_s']} s, shorter than the ping interval: the NAT forgot
  the flow between two pings, the next ping vanished, and liveness dropped the session after
  {TIMINGS.dead_after:g} s of silence; the dialing side redialled through a new flow{again}.
  Sessions lost over {above['observed_s']} s: **{above['sessions_lost']}**.

{keep_text}
"""),
        ("Key log lines", quoted(lines, 8)),
        ("What the code does about it", """
- The `fast` profile pings every second, below any NAT's idle timeout; MinIO's 10 s is below
  common ones too. Every inbound frame counts as traffic, so a busy link needs no pings.
- TCP keepalive on every grid socket (idle 15 s, every 5 s, 3 probes by default;
  `tcp_keepidle`, `tcp_keepintvl`) is the backstop below common NAT timeouts, and
  `TCP_USER_TIMEOUT` ends a connection whose sent data goes unacknowledged.
- When a NAT does drop the flow, liveness notices within its window (`network-silent`), every
  call in flight fails at once, and the dialing side redials through a new flow.
"""),
    ]


__all__ = ["NAT_OPTIONS", "NAT_PANELS", "nat_idle"]
