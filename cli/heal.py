"""``minigrid admin heal`` and ``minigrid admin scanner``: healing on demand, and its pace.

``admin heal [BUCKET[/PREFIX]]`` asks one node to walk the objects (every set, every drive) and
heal each, streaming one JSON line per object back; the CLI shows live progress (scanned,
healed, failed, bytes, rate, ETA) and then each drive's states before and after. With
``--json`` it prints one line per object and a summary line. ``--status`` asks every node for
its MRF queue, the drives it is healing and its scanner's cycle, and heals nothing.

``admin scanner --speed PRESET`` sets the scanner's and drive healers' pace on every node.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.errors import S3ClientError, describe
from cli.signed import SignedClient
from cli.target import fail, pick_endpoint, resolve_target, tls_ca_option

HEAL_PATH = "/minigrid/admin/v1/heal"
STATUS_PATH = "/minigrid/admin/v1/heal/status"
SCANNER_PATH = "/minigrid/admin/v1/scanner"
SPEEDS = ("fastest", "fast", "default", "slow", "slowest")
#: Exit status when objects could not be healed (unrecoverable, dangling, errors).
EXIT_FAILED = 4
STREAM_TIMEOUT = 300.0

_TARGET_OPTIONS = [
    click.option("--data-dir", default=None, metavar="DIR",
                 help="the cluster's directory [env MINIGRID_DATA_DIR; ./.minigrid]"),
    click.option("--endpoint", default=None, metavar="URL", help="ask only this node"),
    click.option("--access-key", default=None,
                 help="admin access key [env MINIGRID_ADMIN_ACCESS_KEY]"),
    click.option("--secret-key", default=None,
                 help="admin secret key [env MINIGRID_ADMIN_SECRET_KEY]"),
    tls_ca_option,
]  # fmt: skip


def _target_options(func: Any) -> Any:
    for option in reversed(_TARGET_OPTIONS):
        func = option(func)
    return func


def _lines(response: Any) -> Iterator[dict[str, Any]]:
    for raw in response:
        line = raw.strip()
        if line:
            yield json.loads(line)


def _split(target: str | None) -> tuple[str, str]:
    if not target:
        return "", ""
    bucket, _, prefix = target.partition("/")
    return bucket, prefix


@click.command("heal")
@click.argument("target", required=False, metavar="[BUCKET[/PREFIX]]")
@click.option("--deep", is_flag=True, help="verify every bitrot hash, not just sizes")
@click.option("--dry-run", is_flag=True, help="report what would be healed; write nothing")
@click.option(
    "--remove-dangling",
    is_flag=True,
    help="delete dangling objects (too few copies left to ever read)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON line per object, then a summary")
@click.option(
    "--status",
    is_flag=True,
    help="show MRF, drives being healed and the scanner on every node; heal nothing",
)
@_target_options  # fmt: skip
def heal(target: str | None, deep: bool, dry_run: bool, remove_dangling: bool, as_json: bool,
         status: bool, data_dir: str | None, endpoint: str | None, access_key: str | None,
         secret_key: str | None, tls_ca: str | None) -> None:  # fmt: skip
    """Heal the objects of a bucket (or all buckets), or show healing status with --status."""
    where = resolve_target(data_dir, endpoint, access_key, secret_key, admin=True, ca=tls_ca)
    if status:
        _status(where.endpoints, where.access_key, where.secret_key, where.region, where.ca,
                as_json)  # fmt: skip
        return
    url = pick_endpoint(where.endpoints, where.ca)
    # The node streams a line at least every half second; a long wait means it is gone.
    client = SignedClient(url, where.access_key, where.secret_key, region=where.region,
                          timeout=STREAM_TIMEOUT, ca=where.ca)  # fmt: skip
    bucket, prefix = _split(target)
    flags = {"deep": deep, "dry-run": dry_run, "remove-dangling": remove_dangling}
    query = {"bucket": bucket, "prefix": prefix}
    query.update({name: str(value).lower() for name, value in flags.items()})
    try:
        response = client.request("POST", HEAL_PATH, query)
    except S3ClientError as exc:
        fail(f"heal on {url}: {describe(exc)}")
    try:
        summary = _follow(response, as_json)
    except KeyboardInterrupt:
        click.echo("Aborted: the heal stops here; what was healed stays healed.", err=True)
        sys.exit(130)
    finally:
        response.close()
    if summary.get("failed"):
        sys.exit(EXIT_FAILED)


def _follow(response: Any, as_json: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if as_json:
        for line in _lines(response):
            if "object" in line:
                click.echo(json.dumps(line["object"]))
            elif "summary" in line:
                summary = line["summary"]
                click.echo(json.dumps({"summary": summary, "error": line.get("error")}))
        return summary
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]heal[/]"), BarColumn(), TextColumn("{task.description}"),
        TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal,
    )  # fmt: skip
    with progress:
        task = progress.add_task("starting", total=None)
        for line in _lines(response):
            state = line.get("progress") or line.get("summary")
            if state is not None:
                progress.update(task, description=_describe(state), total=state.get("expected"),
                                completed=state["scanned"])  # fmt: skip
            if "summary" in line:
                summary = line["summary"]
            if line.get("error"):
                console.print(f"[red]heal stopped early: {line['error']}[/]")
    _report(summary, Console())
    return summary


def _describe(state: dict[str, Any]) -> str:
    eta = state.get("eta_s")
    return (
        f"{state['scanned']} scanned, {state['healed']} healed, {state['failed']} failed, "
        f"{_mib(state['bytes_written'])} written, {state['objects_per_s']:.0f} obj/s"
        + (f", ETA {eta:.0f}s" if eta is not None else "")
    )


def _mib(value: float) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def _report(summary: dict[str, Any], console: Console) -> None:
    if not summary:
        console.print("[red]no summary: the node stopped answering[/]")
        return
    console.print(
        f"scanned {summary['scanned']}: healed {summary['healed']}, ok {summary['ok']}, "
        f"failed {summary['failed']}, skipped {summary['skipped']}, deleted "
        f"{summary['deleted']}; {_mib(summary['bytes_written'])} written in "
        f"{summary['elapsed_s']:.1f}s"
    )
    drives = summary.get("drives", {})
    if not drives:
        return
    states = ("ok", "missing", "outdated", "corrupt", "offline")
    table = Table(title="drives: copies before -> after")
    table.add_column("drive")
    for state in states:
        table.add_column(state, justify="right")
    for endpoint, counts in drives.items():
        before, after = counts["before"], counts["after"]
        table.add_row(endpoint, *(
            f"{before.get(s, 0)} -> {after.get(s, 0)}" if before.get(s, 0) != after.get(s, 0)
            else str(after.get(s, 0)) for s in states
        ))  # fmt: skip
    console.print(table)


def _status(urls: list[str], access_key: str, secret_key: str, region: str, ca: str | None,
            as_json: bool) -> None:  # fmt: skip
    answers: dict[str, Any] = {}
    for url in urls:
        client = SignedClient(url, access_key, secret_key, region=region, timeout=3.0, ca=ca)
        try:
            answers[url] = json.loads(client.call("GET", STATUS_PATH))
        except (S3ClientError, ValueError) as exc:
            answers[url] = {"error": describe(exc) if isinstance(exc, S3ClientError) else str(exc)}
    if as_json:
        click.echo(json.dumps(answers, indent=2))
        return
    table = Table(title="healing")
    for column in ("node", "speed", "MRF queued/parked", "healed", "drives healing",
                   "scanner cycle", "position"):  # fmt: skip
        table.add_column(column)
    for url, status in answers.items():
        if "error" in status:
            table.add_row(url, f"[red]{status['error']}[/]", "", "", "", "", "")
            continue
        mrf = status["mrf"]
        current = status["scanner"].get("current") or {}
        healing = (
            ", ".join(
                f"{path} ({t['objects_scanned']} checked, {t['objects_healed']} healed, at "
                f"{t['bucket']}/{t['key']})"
                for path, t in status["drives_healing"].items()
            )
            or "-"
        )
        table.add_row(url, status["speed"], f"{mrf['queued']}/{mrf['parked']}",
                      str(mrf["healed"]), healing,
                      f"{current.get('cycle', '-')} ({current.get('scanned', 0)} scanned)",
                      current.get("position", "") or "-")  # fmt: skip
    Console().print(table)


@click.command("scanner")
@click.option(
    "--speed",
    type=click.Choice(SPEEDS),
    required=True,
    help="pace of the scanner and drive healers (MinIO's presets)",
)
@_target_options  # fmt: skip
def scanner(speed: str, data_dir: str | None, endpoint: str | None, access_key: str | None,
            secret_key: str | None, tls_ca: str | None) -> None:  # fmt: skip
    """Set the scanner's and drive healers' speed on every node, while they run."""
    where = resolve_target(data_dir, endpoint, access_key, secret_key, admin=True, ca=tls_ca)
    failed = []
    for url in where.endpoints:
        client = SignedClient(url, where.access_key, where.secret_key, region=where.region,
                              timeout=3.0, ca=where.ca)  # fmt: skip
        try:
            client.call("POST", SCANNER_PATH, {"speed": speed})
        except S3ClientError as exc:
            failed.append(f"{url}: {describe(exc)}")
    for line in failed:
        click.echo(f"error: {line}", err=True)
    click.echo(f"speed {speed} on {len(where.endpoints) - len(failed)} of "
               f"{len(where.endpoints)} nodes")  # fmt: skip
    if failed:
        sys.exit(1)
