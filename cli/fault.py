"""``minigrid fault ...``: break a local cluster on purpose (nodes started with --allow-faults).

Process faults are signals sent by PID from ``cluster.json`` (``freeze``/``thaw`` are
SIGSTOP/SIGCONT, ``kill`` is SIGKILL, ``restart`` stops and starts a node). Network faults are
real iptables rules in the nodes' namespaces on a ``--netns`` cluster, and acted out by the
grid on loopback (see :mod:`minigrid.links`). Everything else is asked of the node through its
admin API (:mod:`node.faults`), which refuses unless the node runs with ``--allow-faults``.
``fault list`` shows what is active; ``fault clear`` undoes all of it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.adminclient import AdminClient, AdminError
from cli.cluster import (
    ClusterError,
    ClusterFile,
    cluster_up,
    resolve_data_dir,
    stop_nodes,
)
from cli.netns import NetnsError
from minigrid.manager import should_dial
from node.config import drive_order, parse_nodes

FAULTS_FILE = "faults.json"
SIGNAL_SETTLE_S = 5.0


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def process_state(cluster: ClusterFile, node: int) -> str:
    """``running``, ``frozen`` (stopped by a signal) or ``down``."""
    entry = cluster.process(node)
    if not entry.alive() or entry.pid is None:
        return "down"
    try:
        text = Path(f"/proc/{entry.pid}/stat").read_text()
    except OSError:
        return "down"
    return "frozen" if text[text.rfind(")") + 2 :].split()[0] in ("T", "t") else "running"


class Faults:
    """One cluster's faults: its nodes, its admin API and the network rules made here."""

    def __init__(self, data_dir: Path) -> None:
        cluster = ClusterFile.load(data_dir)
        if cluster is None:
            raise ClusterError(f"no cluster in {data_dir} (start one with 'minigrid cluster up "
                               "--allow-faults')")  # fmt: skip
        if str(cluster.config.get("allow_faults", "")).lower() not in ("true", "1", "yes", "on"):
            # Signals and iptables are the CLI's own acts, so the nodes' 403 cannot stop them:
            # the same consent is checked here, for every fault command alike.
            raise ClusterError(
                f"the cluster in {data_dir} was not started with --allow-faults, so its nodes "
                "refuse fault injection; start a new cluster with 'minigrid cluster up "
                "--allow-faults' to break it on purpose"
            )
        self.cluster = cluster
        self.admin = AdminClient(cluster)
        self.count = len(cluster.urls)
        self._file = cluster.data_dir / FAULTS_FILE

    # --- bookkeeping of network rules (netns) ------------------------------------------------

    def _rules(self) -> list[dict[str, Any]]:
        try:
            rules: list[dict[str, Any]] = json.loads(self._file.read_text())
        except (OSError, ValueError):
            return []
        return rules

    def _save_rules(self, rules: list[dict[str, Any]]) -> None:
        self._file.write_text(json.dumps(rules))
        self._file.chmod(0o600)

    def node(self, value: int) -> int:
        if not 0 <= value < self.count:
            raise ClusterError(f"node {value} does not exist: the nodes are 0-{self.count - 1}")
        return value

    def host(self, node: int) -> str:
        return self.cluster.urls[node].split("://", 1)[1]

    # --- processes ----------------------------------------------------------------------------

    def signal(self, node: int, signum: signal.Signals) -> str:
        entry = self.cluster.process(self.node(node))
        if not entry.signal(signum):
            raise ClusterError(f"node {node} is not running")
        # A signal is delivered asynchronously: wait (briefly) until the kernel shows its effect,
        # so that "freeze" returns with the node stopped and "thaw" with it running again.
        wanted = {signal.SIGSTOP: "frozen", signal.SIGCONT: "running"}.get(signum)
        if wanted is not None:
            deadline = time.monotonic() + SIGNAL_SETTLE_S
            while process_state(self.cluster, node) not in (wanted, "down"):
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"node {node} (pid {entry.pid}) got {signum.name} but is still not "
                        f"{wanted} after {SIGNAL_SETTLE_S:.0f} s"
                    )
                time.sleep(0.005)
        return f"node {node} (pid {entry.pid}): {signum.name}"

    def restart(self, node: int) -> str:
        self.node(node)
        self.cluster.process(node).signal(signal.SIGCONT)
        stop_nodes(self.cluster, [node])
        result = cluster_up(self.cluster.data_dir)
        self.cluster = result.cluster
        return f"node {node} restarted (pid {self.cluster.process(node).pid})"

    # --- network ------------------------------------------------------------------------------

    def partition(self, a: int, b: int, mode: str) -> str:
        a, b = self.node(a), self.node(b)
        if a == b:
            raise ClusterError("a partition needs two different nodes")
        topology = self.cluster.topology
        if topology is not None:
            topology.partition(a, b, mode)
            self._save_rules([*self._rules(), {"kind": "partition", "a": a, "b": b,
                                               "mode": mode}])  # fmt: skip
            return f"iptables: nodes {a} and {b} {'DROP' if mode == 'silent' else 'REJECT'} " \
                   "each other's packets"
        self.admin.call(a, "POST", "/fault/partition", peer=self.host(b), mode=mode)
        self.admin.call(b, "POST", "/fault/partition", peer=self.host(a), mode=mode)
        return f"nodes {a} and {b} partitioned ({mode}, acted out by the grid on loopback)"

    def unpartition(self) -> list[str]:
        done = []
        topology = self.cluster.topology
        rules = self._rules()
        for rule in [r for r in rules if r["kind"] == "partition"]:
            if topology is not None:
                topology.unpartition(rule["a"], rule["b"], rule["mode"])
            done.append(f"partition {rule['a']}-{rule['b']}")
        self._save_rules([r for r in rules if r["kind"] != "partition"])
        for node in self._up_nodes():
            answer = self.admin.call(node, "DELETE", "/fault/partition")
            done += [f"node {node}: partition from {peer}" for peer in answer["lifted"]]
        return done

    def dialer(self, a: int, b: int) -> tuple[int, int]:
        """``(the node that dials the other, the other)`` for the pair ``a``, ``b``."""
        return (a, b) if should_dial(self.host(a), self.host(b)) else (b, a)

    def nat(self, a: int, b: int, idle_timeout: float, mode: str = "drop") -> str:
        a, b = self.node(a), self.node(b)
        if a == b:
            raise ClusterError("a NAT sits between two different nodes")
        topology = self.cluster.topology
        if topology is None:
            dialer, other = self.dialer(a, b)
            self.admin.call(dialer, "POST", "/fault/nat", peer=self.host(other),
                            idle_timeout=idle_timeout, mode=mode)  # fmt: skip
            return (f"NAT proxy on node {dialer}'s link to node {other} (it dials): a flow idle "
                    f"{idle_timeout:g}s is forgotten ({mode})")  # fmt: skip
        if mode != "drop":
            raise ClusterError("--netns NATs drop packets of forgotten flows (conntrack "
                               "INVALID); --mode reset is the loopback proxy's")  # fmt: skip
        seconds = max(1, round(idle_timeout))  # conntrack counts whole seconds
        changed = topology.nat_timeout(a, b, seconds)
        if changed is not None:
            self.cluster.netns = topology.to_dict()
            self.cluster.save()
            return f"NAT router {changed} between nodes {a} and {b}: idle timeout now {seconds}s"
        router = topology.nat(a, b, seconds)
        self.cluster.netns = topology.to_dict()
        self.cluster.save()
        # The old flow never crossed the router: its next packets are INVALID there. Redial.
        dialer, other = self.dialer(a, b)
        self.admin.call(dialer, "POST", "/fault/reconnect", peer=self.host(other))
        return f"NAT router {router} between nodes {a} and {b}: idle flows forgotten after " \
               f"{seconds}s"

    def delay(self, node: int, ms: float, jitter: float) -> list[str]:
        """Add ``ms`` (plus or minus ``jitter``) to every byte ``node`` sends to a peer, as
        netem on its interface would: a proxy on each of its links, on the dialing side."""
        node = self.node(node)
        done = []
        for peer in range(self.count):
            if peer == node:
                continue
            dialer, other = self.dialer(node, peer)
            out_ms, in_ms = (ms, 0.0) if dialer == node else (0.0, ms)
            self.admin.call(dialer, "POST", "/fault/delay", peer=self.host(other),
                            out_ms=out_ms, in_ms=in_ms, jitter_ms=jitter)  # fmt: skip
            done.append(f"link {node}->{peer}: +{ms:g} ms (jitter {jitter:g} ms; proxy on "
                        f"node {dialer})" if ms else f"link {node}-{peer}: no delay")  # fmt: skip
        return done

    def _up_nodes(self) -> list[int]:
        return [n for n in range(self.count) if process_state(self.cluster, n) == "running"]

    # --- listing and clearing -----------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        rows = []
        rules = self._rules()
        topology = self.cluster.topology
        for node in range(self.count):
            state = process_state(self.cluster, node)
            row: dict[str, Any] = {"node": node, "process": state}
            if state == "running":
                try:
                    row["faults"] = self.admin.call(node, "GET", "/fault")
                except AdminError as exc:
                    row["error"] = str(exc)
            row["iptables"] = [r for r in rules if node in (r.get("a"), r.get("b"))]
            if topology is not None:
                row["nat"] = [k for k, r in topology.routers.items() if node in (r["a"], r["b"])]
            rows.append(row)
        return rows

    def clear(self) -> list[str]:
        undone = []
        for node in range(self.count):
            if process_state(self.cluster, node) == "frozen":
                self.signal(node, signal.SIGCONT)
                undone.append(f"node {node} thawed")
        undone += self.unpartition()
        topology = self.cluster.topology
        if topology is not None:
            for key in list(topology.routers):
                topology.remove_nat(key)
                undone.append(f"NAT {key}")
            self.cluster.netns = topology.to_dict()
            self.cluster.save()
        down = [n for n in range(self.count) if process_state(self.cluster, n) == "down"]
        if down:
            self.cluster = cluster_up(self.cluster.data_dir).cluster
            undone.append(f"nodes {down} restarted")
        for node in range(self.count):
            answer = self.admin.call(node, "POST", "/fault/clear")
            undone += [f"node {node}: {what}" for what in answer["cleared"]]
        return undone

    def drive_owner(self, position: int) -> tuple[int, str]:
        """The node and path of the drive at global ``position`` (as ``admin info`` numbers)."""
        order = drive_order(parse_nodes(self.cluster.config["nodes"]))
        if not 0 <= position < len(order):
            raise ClusterError(f"drive {position} does not exist: the drives are "
                               f"0-{len(order) - 1} (see 'minigrid admin info')")  # fmt: skip
        return order[position]


def _shape_text(info: dict[str, Any]) -> str:
    parts = []
    if "delay_ms" in info:
        delay = info["delay_ms"]
        parts.append(f"delay out {delay['out']:g} ms, in {delay['in']:g} ms, jitter "
                     f"{delay['jitter']:g} ms")  # fmt: skip
    if "nat" in info:
        parts.append(f"NAT idle {info['nat']['idle_timeout_s']:g}s ({info['nat']['mode']}), "
                     f"{info['forgotten']} flow(s) forgotten")  # fmt: skip
    return "; ".join(parts)


def _run(data_dir: str | None, action: Any) -> None:
    try:
        faults = Faults(resolve_data_dir(data_dir))
        result = action(faults)
    except (ClusterError, AdminError, NetnsError) as exc:
        _fail(str(exc))
        return
    if isinstance(result, list):
        click.echo("\n".join(result) if result else "nothing to do")
    elif isinstance(result, dict):
        click.echo(json.dumps(result))
    else:
        click.echo(result)


data_dir_option = click.option(
    "--data-dir", default=None, metavar="DIR",
    help="the cluster's directory [env MINIGRID_DATA_DIR; default ./.minigrid]",
)  # fmt: skip
NODE = click.argument("node", type=int)


@click.group()
def fault() -> None:
    """Break the cluster on purpose (nodes started with 'cluster up --allow-faults')."""


@fault.command()
@NODE
@data_dir_option
def freeze(node: int, data_dir: str | None) -> None:
    """Stop NODE with SIGSTOP: its sockets stay open, nothing answers."""
    _run(data_dir, lambda f: f.signal(node, signal.SIGSTOP))


@fault.command()
@NODE
@data_dir_option
def thaw(node: int, data_dir: str | None) -> None:
    """Resume a frozen NODE (SIGCONT)."""
    _run(data_dir, lambda f: f.signal(node, signal.SIGCONT))


@fault.command()
@NODE
@data_dir_option
def kill(node: int, data_dir: str | None) -> None:
    """Kill NODE with SIGKILL (no goodbye to its peers)."""
    _run(data_dir, lambda f: f.signal(node, signal.SIGKILL))


@fault.command()
@NODE
@data_dir_option
def restart(node: int, data_dir: str | None) -> None:
    """Stop NODE (if running) and start it again: a new instance ID, as after a crash."""
    _run(data_dir, lambda f: f.restart(node))


@fault.command()
@click.argument("a", type=int)
@click.argument("b", type=int)
@click.option("--mode", type=click.Choice(["silent", "reset"]), default="silent",
              show_default=True,
              help="silent: packets vanish (iptables DROP); reset: answered with a TCP RST")
@data_dir_option  # fmt: skip
def partition(a: int, b: int, mode: str, data_dir: str | None) -> None:
    """Cut nodes A and B off from each other."""
    _run(data_dir, lambda f: f.partition(a, b, mode))


@fault.command()
@data_dir_option
def unpartition(data_dir: str | None) -> None:
    """Lift every partition."""
    _run(data_dir, lambda f: f.unpartition())


@fault.command()
@click.argument("a", type=int)
@click.argument("b", type=int)
@click.option("--idle-timeout", type=click.FloatRange(0.1, 3600), required=True, metavar="S",
              help="seconds after which the NAT forgets an idle flow")
@click.option("--mode", type=click.Choice(["drop", "reset"]), default="drop", show_default=True,
              help="what the NAT does with a forgotten flow's packets (loopback proxy only)")
@data_dir_option  # fmt: skip
def nat(a: int, b: int, idle_timeout: float, mode: str, data_dir: str | None) -> None:
    """Put a NAT that forgets idle flows between nodes A and B.

    On a --netns cluster a router namespace (MASQUERADE, conntrack timeout S, loose off); on
    loopback a proxy on the link that blackholes (drop) or resets a flow idle for S seconds.
    'fault clear' takes it away."""
    _run(data_dir, lambda f: f.nat(a, b, idle_timeout, mode))


@fault.command()
@NODE
@click.option("--ms", type=click.FloatRange(0, 60_000), required=True,
              help="milliseconds added to what NODE sends (0: lift the delay)")
@click.option("--jitter", type=click.FloatRange(0, 60_000), default=0.0, metavar="J",
              help="each chunk's delay varies by up to J ms either way (order is kept)")
@data_dir_option  # fmt: skip
def delay(node: int, ms: float, jitter: float, data_dir: str | None) -> None:
    """Add latency to everything NODE sends to its peers (a userspace proxy on each of its grid
    links: this kernel has no netem). S3 and admin traffic are not delayed."""
    _run(data_dir, lambda f: f.delay(node, ms, jitter))


@fault.command("loop-block")
@NODE
@click.option("--seconds", type=click.FloatRange(0.001, 120), required=True,
              help="how long each block lasts")
@click.option("--every", type=click.FloatRange(0, 3600), default=0.0,
              help="repeat every T seconds (0: once)")
@data_dir_option  # fmt: skip
def loop_block(node: int, seconds: float, every: float, data_dir: str | None) -> None:
    """Make NODE's event loop do blocking work: nothing else runs meanwhile, pongs included."""
    _run(data_dir, lambda f: f.admin.call(f.node(node), "POST", "/fault/loop-block",
                                          seconds=seconds, every=every))  # fmt: skip


@fault.command("clock-jump", context_settings={"ignore_unknown_options": True})
@NODE
@click.option("--seconds", type=float, required=True, help="the jump, e.g. 3600 or -3600")
@data_dir_option
def clock_jump(node: int, seconds: float, data_dir: str | None) -> None:
    """Jump NODE's wall clock by ±S seconds (its monotonic clock is untouched)."""
    _run(data_dir, lambda f: f.admin.call(f.node(node), "POST", "/fault/clock-jump",
                                          seconds=seconds))  # fmt: skip


@fault.command()
@click.argument("target", metavar="BUCKET/KEY")
@click.option("--drive", type=int, required=True,
              help="the drive's number in 'minigrid admin info'")
@data_dir_option  # fmt: skip
def corrupt(target: str, drive: int, data_dir: str | None) -> None:
    """Flip a byte of an object's copy on one drive (bitrot)."""
    bucket, _, key = target.partition("/")
    if not bucket or not key:
        raise click.BadParameter("give BUCKET/KEY", param_hint="BUCKET/KEY")

    def act(f: Faults) -> Any:
        node, path = f.drive_owner(drive)
        return f.admin.call(node, "POST", "/fault/corrupt", drive=path, bucket=bucket, key=key)

    _run(data_dir, act)


@fault.command("wipe-drive")
@NODE
@click.argument("drive", metavar="DRIVE")
@data_dir_option
def wipe_drive(node: int, drive: str, data_dir: str | None) -> None:
    """Erase DRIVE of NODE (its index on the node, or its path): a new, empty disk."""
    _run(data_dir, lambda f: f.admin.call(f.node(node), "POST", "/fault/wipe-drive",
                                          drive=drive))  # fmt: skip


@fault.command("slow-drive")
@NODE
@click.argument("drive", metavar="DRIVE")
@click.option("--ms", type=click.FloatRange(0, 60_000), required=True,
              help="milliseconds added to every operation (0: back to normal)")
@data_dir_option  # fmt: skip
def slow_drive(node: int, drive: str, ms: float, data_dir: str | None) -> None:
    """Make DRIVE of NODE slow: every operation waits M ms first."""
    _run(data_dir, lambda f: f.admin.call(f.node(node), "POST", "/fault/slow-drive",
                                          drive=drive, ms=ms))  # fmt: skip


@fault.command("list")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_faults(data_dir: str | None, as_json: bool) -> None:
    """What is broken now, node by node."""

    def show(f: Faults) -> Any:
        rows = f.listing()
        if as_json:
            return {"nodes": rows}
        lines = []
        for row in rows:
            active = row.get("faults", {})
            parts = [row["process"]]
            parts += [f"partitioned from {p} ({m})" for p, m in active.get("partitions",
                                                                         {}).items()]
            if active.get("loop_block"):
                parts.append(f"loop-block {active['loop_block']}")
            if active.get("clock_offset_s"):
                parts.append(f"clock {active['clock_offset_s']:+g}s")
            parts += [f"slow drive {d} (+{ms} ms)" for d, ms in
                      active.get("slow_drives", {}).items()]
            parts += [f"proxy to {peer}: {_shape_text(info)}" for peer, info in
                      active.get("proxies", {}).items()]
            for rule in row["iptables"]:
                other = rule["b"] if rule["a"] == row["node"] else rule["a"]
                parts.append(f"iptables {rule['mode']} with node {other}")
            parts += [f"NAT {k}" for k in row.get("nat", [])]
            lines.append(f"node {row['node']}: " + ", ".join(parts))
        return lines  # fmt: skip

    _run(data_dir, show)


@fault.command()
@data_dir_option
def clear(data_dir: str | None) -> None:
    """Undo every fault: thaw, restart what was killed, lift partitions, NATs and delays, reset
    clocks, stop loop blocks and slow drives."""
    _run(data_dir, lambda f: f.clear())


__all__ = ["Faults", "fault", "process_state"]
