"""``minigrid admin top`` and ``minigrid admin trace``: watch a live cluster from the terminal.

Both read one streaming admin endpoint of one node (``/minigrid/admin/v1/top`` or ``/trace``,
see :mod:`node.observe`), which gathers every other node's part over the grid. So a remote
cluster that publishes a single node works the same as a local one: ``--endpoint URL`` with the
admin keys. Against a local cluster (``cluster.json``) the first node that answers is used, and
if it goes away the view moves to the next one.

Everything a node sends is shown as text, never as markup or terminal control sequences: an S3
object name can hold anything.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from cli.errors import S3ClientError, describe
from cli.signed import SignedClient
from cli.target import Target, fail, pick_endpoint, resolve_target, tls_ca_option

TOP_PATH = "/minigrid/admin/v1/top"
TRACE_PATH = "/minigrid/admin/v1/trace"
#: The node sends a top line every interval and a trace heartbeat every second: a read that
#: waits this much longer than that means the node is gone.
READ_GRACE = 10.0
RECONNECT_PAUSE = 1.0


def _clean(value: object) -> str:
    """``value`` as printable text: control characters are shown escaped, never sent raw."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)


def _stream_lines(target: Target, endpoint: str, path: str, query: dict[str, str],
                  timeout: float) -> Iterator[dict[str, Any]]:  # fmt: skip
    """JSON objects from one streaming admin endpoint, until it ends."""
    client = SignedClient(endpoint, target.access_key, target.secret_key, region=target.region,
                      timeout=timeout, ca=target.ca)  # fmt: skip
    response = client.request("GET", path, query)
    try:
        while True:
            line = response.readline()
            if not line:
                return
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value
    finally:
        response.close()


def _connection_options(func: Any) -> Any:
    for option in reversed((
        click.option("--data-dir", default=None, metavar="DIR",
                     help="the cluster's directory [env MINIGRID_DATA_DIR; ./.minigrid]"),
        click.option("--endpoint", default=None, metavar="URL",
                     help="any node of the cluster [env MINIGRID_ENDPOINT]"),
        click.option("--access-key", default=None,
                     help="admin access key [env MINIGRID_ADMIN_ACCESS_KEY]"),
        click.option("--secret-key", default=None,
                     help="admin secret key [env MINIGRID_ADMIN_SECRET_KEY]"),
        tls_ca_option,
    )):  # fmt: skip
        func = option(func)
    return func


def _follow(target: Target, path: str, query: dict[str, str], timeout: float,
            forever: bool) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Lines from the first node that answers; on a break, from the next one (if ``forever``)."""
    endpoints = list(target.endpoints)
    while True:
        endpoint = pick_endpoint(endpoints, target.ca)
        try:
            yield from _stream_lines(target, endpoint, path, query, timeout)
            if not forever:
                return
            reason = "the node ended the stream"
        except S3ClientError as exc:
            if exc.status:  # the node answered: the request itself is wrong
                fail(describe(exc))
            reason = describe(exc)
        except (OSError, http.client.HTTPException) as exc:
            reason = str(exc) or type(exc).__name__
        if not forever:
            fail(f"{endpoint}: {reason}")
        click.echo(f"{endpoint}: {reason}; reconnecting", err=True)
        if len(endpoints) > 1:
            endpoints.append(endpoints.pop(endpoints.index(endpoint)))  # try another one first
        time.sleep(RECONNECT_PAUSE)


# --- top --------------------------------------------------------------------------------------


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value) * 1000:.1f}ms"


def _age(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1f}s"


_COLOURS = {"connected": "green", "ready": "green", "connecting": "yellow",
            "not-ready": "yellow", "no answer": "red"}  # fmt: skip


def _state(text: str) -> Text:
    return Text(_clean(text), style=_COLOURS.get(text, "red"))


def _heal(heal: dict[str, Any] | None) -> str:
    if not heal:
        return "-"
    parts = [
        f"mrf {heal.get('mrf_queued', 0)} queued/{heal.get('mrf_healed', 0)} healed",
        f"scan #{heal.get('scanner_cycle', 0)} {heal.get('scanner_scanned', 0)} objs",
    ]
    for drive in heal.get("drives", []):
        parts.append(f"drive {_clean(drive.get('drive', ''))}: {drive.get('healed', 0)} healed "
                     f"of {drive.get('scanned', 0)}")  # fmt: skip
    return ", ".join(parts)


def _node_row(node: dict[str, Any]) -> list[Text | str]:
    name = _clean(node.get("host") or node.get("node", "?"))
    if "error" in node:
        return [name, _state("no answer"), "-", "-", "-", "-", "-", _clean(node["error"])[:80]]
    state = "ready" if node.get("ready") else "not-ready"
    lag = _ms(node.get("loop_lag_s"))
    if node.get("loop_stall_s"):
        lag += f" (stall {_age(node['loop_stall_s'])})"
    return [
        name, _state(state), lag, str(node.get("s3_inflight", 0)),
        f"{node.get('grid_calls_out', 0)} out / {node.get('grid_calls_in', 0)} in",
        str(node.get("grid_streams", 0)),
        f"{node.get('drives_online', 0)}/{node.get('drives', 0)}", _heal(node.get("heal")),
    ]  # fmt: skip


def render_top(frame: dict[str, Any], endpoint: str) -> Group:
    """One screen of ``top`` from one line of the top stream."""
    when = dt.datetime.fromtimestamp(float(frame.get("time", 0))).strftime("%H:%M:%S")
    header = Text(f"minigrid top  {when}  via {_clean(endpoint)}  (Ctrl-C quits)")
    nodes = Table(title="nodes", title_justify="left", expand=True)
    for column in ("node", "state", "loop lag", "s3 in flight", "grid calls", "streams",
                   "drives up", "heal"):  # fmt: skip
        nodes.add_column(column, overflow="fold")
    links = Table(title="grid links", title_justify="left", expand=True)
    for column in ("from", "to", "state", "rtt", "last seen", "peer lag", "queue", "redials",
                   "cause"):  # fmt: skip
        links.add_column(column, overflow="fold")
    for node in frame.get("nodes", []):
        if not isinstance(node, dict):
            continue
        nodes.add_row(*_node_row(node))
        for link in node.get("links", []):
            links.add_row(
                _clean(node.get("host", "?")), _clean(link.get("peer", "?")),
                _state(str(link.get("state", "?"))), _ms(link.get("rtt_s")),
                _age(link.get("last_seen_s")), _ms(link.get("peer_loop_lag_s")),
                str(link.get("queue", 0)), str(link.get("reconnects", 0)),
                _clean(link.get("cause", ""))[:70],
            )  # fmt: skip
    return Group(header, nodes, links)


@click.command()
@_connection_options
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="seconds between refreshes",
)
@click.option(
    "--count",
    type=click.IntRange(0),
    default=None,
    help="stop after this many screens (default: until Ctrl-C on a terminal, "
    "1 when the output is not a terminal)",
)
@click.option("--json", "as_json", is_flag=True, help="print each refresh as one JSON line")
def top(data_dir: str | None, endpoint: str | None, access_key: str | None,
        secret_key: str | None, tls_ca: str | None, interval: float, count: int | None,
        as_json: bool) -> None:  # fmt: skip
    """A live view of every node: loop lag, in-flight S3 requests and grid calls, heal
    progress, and every grid link's state, round-trip time, last-seen age and last cause."""
    target = resolve_target(data_dir, endpoint, access_key, secret_key, admin=True, ca=tls_ca)
    console = Console()
    if count is None:
        count = 0 if console.is_terminal and not as_json else 1
    query = {"interval": str(interval), "count": str(count)}
    frames = _follow(target, TOP_PATH, query, interval + READ_GRACE, forever=count == 0)
    shown = 0
    if as_json or not console.is_terminal:
        wide = console if console.is_terminal else Console(width=180)
        for frame in frames:
            if as_json:
                click.echo(json.dumps(frame))
            else:
                wide.print(render_top(frame, target.endpoints[0]))
            shown += 1
            if count and shown >= count:
                return
        return
    with Live(console=console, screen=True, auto_refresh=False) as live:
        try:
            for frame in frames:
                live.update(render_top(frame, target.endpoints[0]), refresh=True)
                shown += 1
                if count and shown >= count:
                    return
        except KeyboardInterrupt:
            return


# --- trace ------------------------------------------------------------------------------------


def _size(value: Any) -> str:
    size = float(value or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GiB"


def format_entry(entry: dict[str, Any]) -> str:
    """One trace entry as one line of text."""
    when = dt.datetime.fromtimestamp(float(entry.get("time", 0))).strftime("%H:%M:%S.%f")[:-3]
    node = _clean(entry.get("node", "?")).split("://", 1)[-1]
    took = _ms(entry.get("duration"))
    sizes = f"in {_size(entry.get('request_bytes'))} out {_size(entry.get('response_bytes'))}"
    if entry.get("type") == "s3":
        return (f"{when} {node} s3   {_clean(entry.get('api', '?')):<20} "
                f"{_clean(entry.get('method', ''))} {_clean(entry.get('path', ''))} "
                f"from {_clean(entry.get('remote', ''))} {entry.get('status')} {took} "
                f"{sizes}")  # fmt: skip
    arrow = "->" if entry.get("direction") == "client" else "<-"
    error = f" ({_clean(entry['error'])[:100]})" if entry.get("error") else ""
    route = _clean(entry.get("subroute", ""))
    return (f"{when} {node} grid {_clean(entry.get('handler', '?')):<20} "
            f"{entry.get('kind', 'call')} {arrow} {_clean(entry.get('peer', '?'))}"
            f"{' ' + route if route else ''} {entry.get('status')} {took} {sizes}"
            f"{error}")  # fmt: skip


def _min_duration(value: str) -> float:
    """``0.25``, ``250ms`` or ``2s`` as seconds."""
    text = value.strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    try:
        seconds = float(text) * scale
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration (0.25, 250ms or 2s)") from None
    if seconds < 0:
        raise click.BadParameter("the minimum duration cannot be negative")
    return seconds


@click.command()
@_connection_options
@click.option(
    "--handler",
    default="",
    metavar="NAME",
    help="only this grid handler (ReadShard) or S3 API (PutObject), any case",
)
@click.option(
    "--peer",
    default="",
    metavar="HOST",
    help="only grid calls with this peer (or S3 requests from this address); "
    "part of a host is enough",
)
@click.option(
    "--min-duration",
    default="0",
    metavar="DURATION",
    help="only calls that took at least this long: 0.25, 250ms, 2s",
)
@click.option(
    "--kind",
    type=click.Choice(["all", "grid", "s3"]),
    default="all",
    show_default=True,
    help="grid calls, S3 requests, or both",
)
@click.option(
    "--node-only", is_flag=True, help="only the node you are connected to, not every node"
)
@click.option("--count", type=click.IntRange(1), default=None, help="stop after this many records")
@click.option(
    "--seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="stop after this long",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line, for scripts")
def trace(data_dir: str | None, endpoint: str | None, access_key: str | None,
          secret_key: str | None, tls_ca: str | None, handler: str, peer: str,
          min_duration: str, kind: str, node_only: bool, count: int | None,
          seconds: float | None, as_json: bool) -> None:  # fmt: skip
    """A live stream of grid calls and S3 requests (handler, subroute, peer, duration, status,
    sizes) from every node, until Ctrl-C, --count or --seconds."""
    target = resolve_target(data_dir, endpoint, access_key, secret_key, admin=True, ca=tls_ca)
    query = {
        "handler": handler, "peer": peer, "min_duration": str(_min_duration(min_duration)),
        "kind": "grid,s3" if kind == "all" else kind, "scope": "node" if node_only else "cluster",
    }  # fmt: skip
    deadline = None if seconds is None else time.monotonic() + seconds
    shown = dropped = 0
    try:
        for entry in _follow(target, TRACE_PATH, query, READ_GRACE, forever=True):
            if entry.get("type") == "heartbeat":
                now_dropped = int(entry.get("dropped", 0))
                if now_dropped > dropped:
                    click.echo(f"({now_dropped - dropped} records dropped: the trace is "
                               f"reading too slowly)", err=True)  # fmt: skip
                    dropped = now_dropped
            else:
                click.echo(json.dumps(entry) if as_json else format_entry(entry))
                shown += 1
            if (count and shown >= count) or (deadline and time.monotonic() >= deadline):
                return
    except KeyboardInterrupt:
        return
    finally:
        sys.stdout.flush()


__all__ = ["format_entry", "render_top", "top", "trace"]
