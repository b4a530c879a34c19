"""The ``minigrid`` command."""

from __future__ import annotations

import click

from .admin import admin
from .cluster import cluster
from .fault import fault
from .grid import grid
from .heal import heal, scanner
from .lab import lab
from .node import node
from .objects import COMMANDS


@click.group()
@click.version_option(package_name="minigrid-cluster")
def main() -> None:
    """minigrid: an erasure-coded object store whose nodes talk over a websocket grid."""


main.add_command(grid)
main.add_command(node)
main.add_command(cluster)
admin.add_command(heal)
admin.add_command(scanner)
main.add_command(admin)
main.add_command(fault)
main.add_command(lab)
for command in COMMANDS:
    main.add_command(command)

if __name__ == "__main__":
    main()
