"""The ``minigrid`` command."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, NoReturn

import click

from .admin import admin
from .cluster import cluster
from .console import console
from .copying import COMMANDS as COPY_COMMANDS
from .errors import Interrupted, StdoutClosed
from .fault import fault
from .grid import grid
from .heal import heal, scanner
from .lab import lab
from .node import node
from .objects import COMMANDS as OBJECT_COMMANDS

#: The exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130
#: The exit status when the reader of stdout went away (128 + SIGPIPE, as cat(1)).
STDOUT_CLOSED = 141


class MinigridGroup(click.Group):
    """click's group, with Ctrl-C and a closed stdout handled as a command-line tool should:
    one line saying what was left unchanged and status 130 (click would print ``Aborted!``
    and exit 1), or a quiet exit when ``| head`` stops reading."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as exc:
            _interrupted(exc.lines, hard=exc.hard)
        except KeyboardInterrupt:
            _interrupted([], hard=_transfer_threads_alive())
        except (StdoutClosed, BrokenPipeError):
            _stdout_closed()


def _interrupted(lines: list[str], *, hard: bool) -> NoReturn:
    click.echo("", err=True)  # the terminal's ^C leaves the cursor mid-line
    click.echo("aborted (Ctrl-C)" + (": " + lines[0] if lines else ""), err=True)
    for line in lines[1:]:
        click.echo(f"  {line}", err=True)
    if hard:
        # A transfer thread is stuck in a read that Ctrl-C cannot reach (a stalled server);
        # its temporary file is already gone, and waiting for it would hang the terminal.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    sys.exit(INTERRUPTED)


def _transfer_threads_alive() -> bool:
    main_thread = threading.main_thread()
    return any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not main_thread)


def _stdout_closed() -> NoReturn:
    """Point stdout at /dev/null (so the flush at exit does not fail again) and leave."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(STDOUT_CLOSED)


@click.group(cls=MinigridGroup)
@click.version_option(package_name="minigrid-cluster")
def main() -> None:
    """minigrid: an erasure-coded object store whose nodes talk over a websocket grid."""


main.add_command(grid)
main.add_command(node)
main.add_command(cluster)
admin.add_command(heal)
admin.add_command(scanner)
main.add_command(admin)
main.add_command(console)
main.add_command(fault)
main.add_command(lab)
for command in (*OBJECT_COMMANDS, *COPY_COMMANDS):
    main.add_command(command)

if __name__ == "__main__":
    main()
