"""``minigrid admin info``: every node, drive and grid connection of the cluster.

Each node's ``/minigrid/admin/v1/info`` is asked at once (signed with the admin keys), with a
short timeout, so a frozen or dead node costs one timeout, not one per question. The answers
are merged:

- a node is ``ok`` (answered, ready), ``not-ready`` (answered, no write quorum), ``offline``
  (no answer, and no node that answered holds a live grid connection to it) or
  ``unresponsive`` (no answer, but its grid connections are still up: frozen, or overloaded,
  and the failure detector has not fired yet);
- a drive's state is its own node's view when that node answered, else the first answering
  node's view (which says ``offline`` once the grid connection is down);
- every grid connection is listed from both ends.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cli.errors import S3ClientError, describe
from cli.observe import top, trace
from cli.signed import SignedClient
from cli.target import fail, resolve_target, tls_ca_option

INFO_PATH = "/minigrid/admin/v1/info"
INFO_TIMEOUT = 3.0


def fetch_info(url: str, access_key: str, secret_key: str, region: str,
               timeout: float = INFO_TIMEOUT, ca: str | None = None
               ) -> dict[str, Any] | str:  # fmt: skip
    """One node's info document, or the reason there is none."""
    client = SignedClient(url, access_key, secret_key, region=region, timeout=timeout, ca=ca)
    try:
        answer: dict[str, Any] = json.loads(client.call("GET", INFO_PATH))
    except S3ClientError as exc:
        return describe(exc)
    except ValueError as exc:
        return f"bad answer: {exc}"
    return answer


def merge(urls: list[str], answers: list[dict[str, Any] | str]) -> dict[str, Any]:
    """One cluster view from every node's answer (see the module docstring)."""
    hosts = [url.split("://", 1)[-1] for url in urls]
    grid: list[dict[str, Any]] = []
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, str):
            continue
        for peer, stats in answer.get("grid", {}).items():
            grid.append({"from": url.split("://", 1)[-1], "to": peer, **stats})
    nodes = []
    for index, (url, answer) in enumerate(zip(urls, answers, strict=True)):
        entry: dict[str, Any] = {"index": index, "url": url}
        if isinstance(answer, dict):
            ready = answer.get("ready", {})
            entry.update(
                state="ok" if ready.get("ready") else "not-ready",
                pid=answer["node"].get("pid"),
                uptime_s=answer["node"].get("uptime_s"),
                ready=ready.get("ready"),
                reason=ready.get("reason", ""),
            )
        else:
            seen_up = [c for c in grid if c["to"] == hosts[index] and c["state"] == "connected"]
            entry.update(state="unresponsive" if seen_up else "offline", ready=False,
                         reason=answer)  # fmt: skip
        entry["connected_peers"] = sum(
            1 for c in grid if c["to"] == hosts[index] and c["state"] == "connected"
        )
        nodes.append(entry)
    return {"nodes": nodes, "drives": _drives(answers), "grid": grid, "usage": _usage(answers)}


def _drives(answers: list[dict[str, Any] | str]) -> list[dict[str, Any]]:
    views = [(i, a) for i, a in enumerate(answers) if isinstance(a, dict)]
    if not views:
        return []
    drives: list[dict[str, Any]] = []
    for position, first in enumerate(views[0][1]["drives"]):
        owner = first["node"]
        own = next((a for i, a in views if i == owner), None)
        chosen = own["drives"][position] if own is not None else first
        seen_by = owner if own is not None else views[0][0]
        entry = {**chosen, "seen_by": seen_by}
        if own is not None:  # a drive being healed: its node's tracker says how far it got
            tracker = own.get("heal", {}).get("drives_healing", {}).get(chosen["endpoint"])
            if tracker is not None:
                entry["heal"] = tracker
        drives.append(entry)
    return drives


def _usage(answers: list[dict[str, Any] | str]) -> dict[str, dict[str, int]]:
    """Objects and bytes per bucket, as the scanners counted them on their last cycle.

    Each node counts the sets it holds drives of; where two nodes counted the same bucket
    (every node of a one-set cluster does), the fuller count is the more recent one."""
    usage: dict[str, dict[str, int]] = {}
    for answer in answers:
        if not isinstance(answer, dict):
            continue
        for bucket, counts in answer.get("usage", {}).items():
            have = usage.get(bucket)
            if have is None or counts["objects"] > have["objects"]:
                usage[bucket] = dict(counts)
    return dict(sorted(usage.items()))


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / (1 << 30):.1f} GiB"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


_COLOURS = {"ok": "green", "connected": "green", "not-ready": "yellow", "healing": "yellow",
            "unresponsive": "yellow", "connecting": "yellow"}  # fmt: skip


def _state(text: str) -> str:
    return f"[{_COLOURS.get(text, 'red')}]{text}[/]"


def _short(url: str) -> str:
    return url.split("://", 1)[-1]


def _table(title: str, columns: tuple[str, ...]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def render(view: dict[str, Any], console: Console) -> None:
    nodes = _table("nodes", ("node", "host", "state", "pid", "uptime", "peers up", "note"))
    for node in view["nodes"]:
        nodes.add_row(
            str(node["index"]), _short(node["url"]), _state(node["state"]),
            str(node.get("pid") or "-"),
            _seconds(node.get("uptime_s")), str(node["connected_peers"]),
            "" if node["state"] == "ok" else str(node.get("reason", "")),
        )  # fmt: skip
    console.print(nodes)
    drives = _table("drives", ("#", "set", "node", "drive", "state", "used", "total", "note"))
    for drive in view["drives"]:
        used = None if drive["total"] is None else drive["total"] - drive["free"]
        heal = drive.get("heal")
        note = drive.get("error", "")
        if heal is not None:
            note = (f"healing: {heal['objects_scanned']} checked, {heal['objects_healed']} "
                    f"rewritten, at {heal['bucket']}/{heal['key']}")  # fmt: skip
        drives.add_row(
            str(drive["position"]), str(drive.get("set", "")), str(drive["node"]),
            _short(drive["endpoint"]), _state(drive["state"]), _size(used), _size(drive["total"]),
            note,
        )  # fmt: skip
    console.print(drives)
    if view.get("usage"):
        usage = _table("buckets (scanner's last count)", ("bucket", "objects", "size"))
        for bucket, counts in view["usage"].items():
            usage.add_row(bucket, str(counts["objects"]), f"{counts['bytes'] / (1 << 20):.1f} MiB")
        console.print(usage)
    grid = _table("grid connections",
                  ("from", "to", "state", "tls", "rtt", "p50", "seen", "redials", "cause"))
    for conn in view["grid"]:
        grid.add_row(
            conn["from"], conn["to"], _state(conn["state"]), conn.get("tls") or "-",
            _ms(conn.get("rtt_last")),
            _ms(conn.get("rtt_p50")), _seconds(conn.get("last_seen_age")),
            str(conn.get("reconnects", 0)), conn.get("last_cause", ""),
        )  # fmt: skip
    console.print(grid)


def cluster_info(urls: list[str], access_key: str, secret_key: str, region: str,
                 timeout: float = INFO_TIMEOUT, ca: str | None = None
                 ) -> dict[str, Any]:  # fmt: skip
    """Ask every node at once and merge the answers (https verified against ``ca``)."""
    with ThreadPoolExecutor(max_workers=max(1, len(urls))) as pool:
        answers = list(pool.map(
            lambda url: fetch_info(url, access_key, secret_key, region, timeout, ca), urls
        ))  # fmt: skip
    return merge(urls, answers)


@click.group()
def admin() -> None:
    """Look inside the cluster (admin credentials)."""


@admin.command()
@click.option("--data-dir", default=None, metavar="DIR",
              help="the cluster's directory [env MINIGRID_DATA_DIR; ./.minigrid]")
@click.option("--endpoint", default=None, metavar="URL", help="ask only this node")
@click.option("--access-key", default=None, help="admin access key [env MINIGRID_ADMIN_ACCESS_KEY]")
@click.option("--secret-key", default=None, help="admin secret key [env MINIGRID_ADMIN_SECRET_KEY]")
@click.option("--timeout", type=float, default=INFO_TIMEOUT, show_default=True,
              help="seconds to wait for each node")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@tls_ca_option  # fmt: skip
def info(data_dir: str | None, endpoint: str | None, access_key: str | None,
         secret_key: str | None, timeout: float, as_json: bool,
         tls_ca: str | None) -> None:  # fmt: skip
    """Every node and drive with its state and capacity, and every grid connection."""
    target = resolve_target(data_dir, endpoint, access_key, secret_key, admin=True, ca=tls_ca)
    view = cluster_info(target.endpoints, target.access_key, target.secret_key, target.region,
                        timeout, target.ca)  # fmt: skip
    if not any(node["state"] in ("ok", "not-ready") for node in view["nodes"]):
        reasons = "; ".join(f"{n['url']}: {n['reason']}" for n in view["nodes"])
        fail(f"no node answered ({reasons})")
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        console = Console()
        render(view, console if console.is_terminal else Console(width=160))
    if any(node["state"] != "ok" for node in view["nodes"]):
        sys.exit(3)


admin.add_command(top)
admin.add_command(trace)
