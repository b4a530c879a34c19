"""Shared test helpers: wait on conditions, never on fixed sleeps (see minigrid.testing), and
keep the developer's own configuration out of every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from minigrid.testing import wait_until as eventually

__all__ = ["eventually"]


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the developer's ~/.aws files and AWS_* and MINIGRID_* variables out of the tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MINIGRID_"))}
    for name in saved:
        del os.environ[name]
    empty = tmp_path_factory.mktemp("aws") / "none"
    os.environ["AWS_CONFIG_FILE"] = str(empty)
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(empty)
    yield
    for name in [k for k in os.environ if k.startswith(("AWS_", "MINIGRID_"))]:
        del os.environ[name]
    os.environ.update(saved)
