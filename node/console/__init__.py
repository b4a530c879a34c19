"""The live web console at ``/minigrid/console`` (see :mod:`node.console.service`)."""

from node.console.service import ConsoleService

__all__ = ["ConsoleService"]
