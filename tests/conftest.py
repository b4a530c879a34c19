"""Shared test helpers: wait on conditions, never on fixed sleeps (see minigrid.testing)."""

from __future__ import annotations

from minigrid.testing import wait_until as eventually

__all__ = ["eventually"]
