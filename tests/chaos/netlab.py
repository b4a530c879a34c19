"""Real network namespaces, veth pairs and iptables for chaos tests (root only).

Addresses come from 198.18.0.0/15, the block set aside for network benchmark tests, inside
namespaces these tests create and delete themselves.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cli.netns import run, unavailable

__all__ = ["run", "skip_reason"]


def skip_reason() -> str:
    """Why chaos tests cannot run here, or "" if they can (the CLI's own check)."""
    reason = unavailable()
    return f"chaos tests: {reason}" if reason else ""


@dataclass
class Lab:
    """Namespaces and links made for one test; everything is removed on exit."""

    tag: str
    namespaces: list[str] = field(default_factory=list)
    root_links: list[str] = field(default_factory=list)
    root_routes: list[str] = field(default_factory=list)

    def netns(self, name: str) -> str:
        full = f"mg{name}{self.tag}"
        run("ip", "netns", "add", full)
        self.namespaces.append(full)
        run("ip", "link", "set", "lo", "up", netns=full)
        return full

    def link(self, a_ns: str, a_addr: str, b_ns: str, b_addr: str) -> tuple[str, str]:
        """A veth pair between two namespaces ("" = the root namespace), with /24 addresses."""
        index = len(self.root_links) + len(self.namespaces)
        a_if, b_if = f"mg{self.tag}a{index}", f"mg{self.tag}b{index}"
        run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
        self.root_links.append(a_if)
        for ns, ifname, addr in ((a_ns, a_if, a_addr), (b_ns, b_if, b_addr)):
            if ns:
                run("ip", "link", "set", ifname, "netns", ns)
            run("ip", "addr", "add", f"{addr}/24", "dev", ifname, netns=ns)
            run("ip", "link", "set", ifname, "up", netns=ns)
        return a_if, b_if

    def route(self, ns: str, network: str, via: str) -> None:
        run("ip", "route", "add", network, "via", via, netns=ns)
        if not ns:
            self.root_routes.append(network)

    def close(self) -> None:
        for network in self.root_routes:
            subprocess.run(["ip", "route", "del", network], capture_output=True)
        for ifname in self.root_links:
            subprocess.run(["ip", "link", "del", ifname], capture_output=True)
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextmanager
def lab() -> Iterator[Lab]:
    tag = f"{os.getpid() % 100000:x}"
    made = Lab(tag)
    try:
        yield made
    finally:
        made.close()


def subnet(index: int) -> str:
    """A distinct 198.18.N prefix per test run and index."""
    return f"198.18.{(os.getpid() * 7 + index) % 250 + 1}"
