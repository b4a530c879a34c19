"""The ``minigrid`` command."""

from __future__ import annotations

import click

from .grid import grid


@click.group()
@click.version_option(package_name="minigrid-cluster")
def main() -> None:
    """minigrid: an erasure-coded object store whose nodes talk over a websocket grid."""


main.add_command(grid)
