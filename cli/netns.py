"""Network namespaces, a bridge, veth pairs and iptables: real multi-address clusters (root only).

``minigrid cluster up --netns`` puts each node in its own network namespace with its own
address on a bridge this module creates, on a private /24 it picks and checks is unused. The
nodes run the same ``minigrid node run`` a multi-host deployment runs; only the addresses are
local. Everything made is named from a short tag of the cluster's directory
(``mg<tag>br``, ``mg<tag>n0``, ...), recorded in ``cluster.json``, and removed by ``cluster
down`` (``--force`` also sweeps by name after a crash).

Faults on a namespaced cluster are real packets being dropped:

- a **partition** is iptables in both nodes' namespaces: ``DROP`` (silent) or ``REJECT
  --reject-with tcp-reset`` (reset) for the peer's address;
- a **NAT** between two nodes is a router namespace on the path between them, with
  ``MASQUERADE``, a short ``nf_conntrack_tcp_timeout_established`` and
  ``nf_conntrack_tcp_loose=0``, dropping packets of flows it has forgotten (a home router).

The chaos tests use the same helpers (:func:`run`, :func:`unavailable`).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Where cluster subnets are picked from: 10.213.1.0/24 ... 10.213.254.0/24.
SUBNET_BASE = "10.213"
NODE_OFFSET = 10
ROUTER_OFFSET = 200


class NetnsError(Exception):
    """A namespace operation failed; the message names the command and its error."""


def unavailable() -> str:
    """Why namespaces cannot be used here, or "" if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns, veth pairs and iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing (apt-get install iproute2 iptables)"
    probe = f"mgprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ""


def run(*args: str, netns: str = "") -> str:
    """Run a command (inside ``netns`` if given); raise NetnsError with its stderr."""
    command = [*(["ip", "netns", "exec", netns] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return done.stdout


def quiet(*args: str, netns: str = "") -> None:
    """Run a cleanup command; failures (already gone) are fine."""
    command = [*(["ip", "netns", "exec", netns] if netns else []), *args]
    subprocess.run(command, capture_output=True)


def tag_for(data_dir: Path) -> str:
    """A short tag for a cluster directory: the names of what it makes start with it."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:6]


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address or a route in."""
    networks = []
    for line in run("ip", "-4", "-o", "addr").splitlines() + run("ip", "-4", "route").splitlines():
        for word in line.split():
            if "/" in word or word.count(".") == 3:
                try:
                    networks.append(ipaddress.ip_network(word, strict=False))
                except ValueError:
                    continue
    return [n for n in networks if isinstance(n, ipaddress.IPv4Network)]


def pick_subnet(tag: str) -> str:
    """A /24 of 10.213.0.0/16 that nothing on this machine uses (starting from the tag)."""
    used = used_networks()
    start = int(tag, 16) % 254
    for step in range(254):
        third = (start + step) % 254 + 1
        candidate = ipaddress.ip_network(f"{SUBNET_BASE}.{third}.0/24")
        if not any(candidate.overlaps(n) for n in used if n.prefixlen > 0):
            return f"{SUBNET_BASE}.{third}"
    raise NetnsError(f"no free /24 left in {SUBNET_BASE}.0.0/16")


@dataclass
class Topology:
    """What ``cluster up --netns`` made, as recorded in ``cluster.json``."""

    tag: str
    subnet: str  # "10.213.7": the /24's first three octets
    nodes: int
    routers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def bridge(self) -> str:
        return f"mg{self.tag}br"

    def namespace(self, node: int) -> str:
        return f"mg{self.tag}n{node}"

    def veth(self, node: int) -> str:
        return f"mg{self.tag}v{node}"

    def address(self, node: int) -> str:
        return f"{self.subnet}.{NODE_OFFSET + node}"

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Topology:
        return cls(str(raw["tag"]), str(raw["subnet"]), int(raw["nodes"]),
                   dict(raw.get("routers", {})))  # fmt: skip

    # --- building -----------------------------------------------------------------------------

    def create(self) -> None:
        """The bridge, and one namespace per node with its veth and address. All or nothing."""
        try:
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            # With br_netfilter, bridged packets cross the root FORWARD chain: let ours through.
            run("iptables", "-I", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT")
            for node in range(self.nodes):
                self._node_namespace(node)
        except NetnsError:
            self.destroy()
            raise

    def _node_namespace(self, node: int) -> None:
        ns, veth = self.namespace(node), self.veth(node)
        run("ip", "netns", "add", ns)
        run("ip", "link", "set", "lo", "up", netns=ns)
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}i")
        run("ip", "link", "set", veth, "master", self.bridge)
        run("ip", "link", "set", veth, "up")
        run("ip", "link", "set", f"{veth}i", "netns", ns)
        run("ip", "link", "set", f"{veth}i", "name", "eth0", netns=ns)
        run("ip", "addr", "add", f"{self.address(node)}/24", "dev", "eth0", netns=ns)
        run("ip", "link", "set", "eth0", "up", netns=ns)
        run("ip", "route", "add", "default", "via", self.gateway, netns=ns)

    def destroy(self) -> None:
        """Remove everything this topology may have made (safe to repeat)."""
        for key in list(self.routers):
            self.remove_nat(key)
        for node in range(self.nodes):
            for pid in quiet_pids(self.namespace(node)):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
            quiet("ip", "netns", "del", self.namespace(node))
            quiet("ip", "link", "del", self.veth(node))
        quiet("iptables", "-D", "FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT")
        quiet("ip", "link", "del", self.bridge)

    # --- faults -------------------------------------------------------------------------------

    def partition(self, a: int, b: int, mode: str) -> None:
        """Drop (silent) or reset (reset) every packet between nodes ``a`` and ``b``."""
        for here, there in ((a, b), (b, a)):
            for rule in _partition_rules(self.address(there), mode):
                run("iptables", "-A", *rule, netns=self.namespace(here))

    def unpartition(self, a: int, b: int, mode: str) -> None:
        for here, there in ((a, b), (b, a)):
            for rule in _partition_rules(self.address(there), mode):
                quiet("iptables", "-D", *rule, netns=self.namespace(here))

    def nat(self, a: int, b: int, idle_timeout: int) -> str:
        """Put a NAT router between nodes ``a`` and ``b``; returns its namespace."""
        key = f"{a}-{b}"
        if key in self.routers:
            raise NetnsError(f"nodes {a} and {b} already have a NAT between them")
        index = len(self.routers)
        router = f"mg{self.tag}r{index}"
        link = f"mg{self.tag}l{index}"  # router <-> node a, on a /30 of its own
        leg = f"mg{self.tag}w{index}"  # router <-> the bridge
        inner = ipaddress.ip_network(f"169.254.{index * 4 % 256}.0/30")
        router_in, node_in = (str(h) for h in inner.hosts())
        router_bridge = f"{self.subnet}.{ROUTER_OFFSET + index}"
        self.routers[key] = {"namespace": router, "link": link, "leg": leg, "a": a, "b": b,
                             "idle_timeout": idle_timeout}  # fmt: skip
        try:
            run("ip", "netns", "add", router)
            run("ip", "link", "set", "lo", "up", netns=router)
            run("ip", "link", "add", link, "type", "veth", "peer", "name", f"{link}i")
            run("ip", "link", "set", link, "netns", router)
            run("ip", "link", "set", f"{link}i", "netns", self.namespace(a))
            run("ip", "addr", "add", f"{router_in}/30", "dev", link, netns=router)
            run("ip", "link", "set", link, "up", netns=router)
            run("ip", "addr", "add", f"{node_in}/30", "dev", f"{link}i", netns=self.namespace(a))
            run("ip", "link", "set", f"{link}i", "up", netns=self.namespace(a))
            run("ip", "link", "add", leg, "type", "veth", "peer", "name", f"{leg}i")
            run("ip", "link", "set", leg, "master", self.bridge)
            run("ip", "link", "set", leg, "up")
            run("ip", "link", "set", f"{leg}i", "netns", router)
            run("ip", "addr", "add", f"{router_bridge}/24", "dev", f"{leg}i", netns=router)
            run("ip", "link", "set", f"{leg}i", "up", netns=router)
            # Node a is on the router's bridge subnet too: without this the router would send
            # what comes for a back out onto the bridge, past its link, when b dials a.
            run("ip", "route", "add", f"{self.address(a)}/32", "via", node_in, netns=router)
            self._router_rules(router, f"{leg}i", a, idle_timeout)
            # Both directions between a and b go through the router (a NAT sees whole flows).
            # ``src``: else node a would send from its /30 address, which the MASQUERADE rule
            # (``-s`` a's address) does not match and node b cannot answer.
            run("ip", "route", "add", f"{self.address(b)}/32", "via", router_in, "src",
                self.address(a), netns=self.namespace(a))  # fmt: skip
            run("ip", "route", "add", f"{self.address(a)}/32", "via", router_bridge,
                netns=self.namespace(b))  # fmt: skip
        except NetnsError:
            self.remove_nat(key)
            raise
        return router

    def _router_rules(self, router: str, out: str, a: int, idle_timeout: int) -> None:
        run("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=router)
        run("iptables", "-t", "nat", "-A", "POSTROUTING", "-s", self.address(a), "-o", out,
            "-j", "MASQUERADE", netns=router)  # fmt: skip
        # A home router: packets of flows it has forgotten are dropped, silently.
        run("iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP",
            netns=router)  # fmt: skip
        run("sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_established={idle_timeout}",
            netns=router)  # fmt: skip
        run("sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0", netns=router)

    def nat_timeout(self, a: int, b: int, idle_timeout: int) -> str | None:
        """Change the idle timeout of the NAT between ``a`` and ``b``; its namespace, or None
        when there is no NAT there."""
        entry = self.routers.get(f"{a}-{b}") or self.routers.get(f"{b}-{a}")
        if entry is None:
            return None
        run("sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_established={idle_timeout}",
            netns=str(entry["namespace"]))  # fmt: skip
        entry["idle_timeout"] = idle_timeout
        return str(entry["namespace"])

    def remove_nat(self, key: str) -> None:
        entry = self.routers.pop(key, None)
        if entry is None:
            return
        a, b = int(entry["a"]), int(entry["b"])
        quiet("ip", "route", "del", f"{self.address(b)}/32", netns=self.namespace(a))
        quiet("ip", "route", "del", f"{self.address(a)}/32", netns=self.namespace(b))
        quiet("ip", "netns", "del", str(entry["namespace"]))
        quiet("ip", "link", "del", str(entry["leg"]))

    def flush_node(self, node: int) -> None:
        """Remove every iptables rule in a node's namespace (``fault clear``)."""
        quiet("iptables", "-F", netns=self.namespace(node))


def _partition_rules(peer: str, mode: str) -> list[tuple[str, ...]]:
    if mode == "silent":
        return [("INPUT", "-s", peer, "-j", "DROP"), ("OUTPUT", "-d", peer, "-j", "DROP")]
    reject = ("-j", "REJECT", "--reject-with", "tcp-reset")
    # The peer's own resets must get in: they are what tells this side the connection is
    # gone. Rejecting them too (a RST is never answered) would make the partition silent.
    return [("INPUT", "-s", peer, "-p", "tcp", "!", "--tcp-flags", "RST", "RST", *reject),
            ("OUTPUT", "-d", peer, "-p", "tcp", *reject)]  # fmt: skip


def quiet_pids(namespace: str) -> list[int]:
    """The processes running in ``namespace`` (none if it is gone)."""
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
    return [int(word) for word in done.stdout.split() if word.isdigit()]


def sweep(tag: str) -> list[str]:
    """Remove every namespace and link whose name starts with ``mg<tag>`` (``down --force``)."""
    removed = []
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                               text=True).stdout.splitlines():  # fmt: skip
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"mg{tag}"):
            for pid in quiet_pids(name):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
            quiet("ip", "netns", "del", name)
            removed.append(name)
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if name.startswith(f"mg{tag}"):
            quiet("ip", "link", "del", name)
            removed.append(name)
    bridge = f"mg{tag}br"
    quiet("iptables", "-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT")
    return removed


__all__ = [
    "NetnsError",
    "Topology",
    "pick_subnet",
    "quiet",
    "run",
    "sweep",
    "tag_for",
    "unavailable",
]
