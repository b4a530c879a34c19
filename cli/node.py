"""``minigrid node run``: run one node in the foreground.

Every option of :data:`node.config.OPTIONS` is a flag here, with the same name as in a
config file and in the environment (``--access-key`` = ``access_key`` = ``MINIGRID_ACCESS_KEY``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import click

from node.config import OPTIONS, ConfigError, NodeConfig, Option, load_config
from node.process import run_node

AnyCallable = Callable[..., Any]


def _flag(option: Option) -> Callable[[AnyCallable], AnyCallable]:
    help_text = f"{option.help} [env {option.env}]"
    name = option.flag
    if option.kind == "bool":
        negative = "--no-" + name[2:]
        return click.option(f"{name}/{negative}", option.name, default=None, help=help_text)
    if option.kind == "onoff":
        choice = click.Choice(["on", "off"], case_sensitive=False)
        return click.option(name, option.name, type=choice, default=None, help=help_text)
    kind: Any = {"int": int, "float": float}.get(option.kind, str)
    return click.option(name, option.name, type=kind, default=None, help=help_text)


def _with_config_flags(command: AnyCallable) -> AnyCallable:
    for option in reversed(OPTIONS):
        command = _flag(option)(command)
    return command


@click.group()
def node() -> None:
    """Run a node of the cluster."""


@node.command("run")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="a JSON or TOML config file [env MINIGRID_CONFIG]")  # fmt: skip
@_with_config_flags
def run(config_file: str | None, **flags: Any) -> None:
    """Run one node: the grid, the S3 API, health, admin and metrics on one port.

    Fault injection stays off unless --allow-faults is given."""
    try:
        config = load_config(config_file, flags=flags)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(run_node(config))


def parse_run_args(args: Sequence[str], env: Mapping[str, str] | None = None) -> NodeConfig:
    """The configuration ``minigrid node run ARGS`` would start with in the environment ``env``,
    through this command's own parser (the deployment files are checked with it). Raises
    :class:`click.UsageError` for bad arguments and :class:`ConfigError` for a bad
    configuration."""
    with run.make_context("run", list(args)) as context:
        params = dict(context.params)
    config_file = params.pop("config_file")
    return load_config(config_file, env=env if env is not None else {}, flags=params)
