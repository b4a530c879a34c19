"""Fixtures for the console tests: a 4-node cluster with faults allowed, and a real browser.

The browser is the system's Chromium (``apt-get install chromium``, which ``.ci/run`` does as
root), driven by Playwright through its ``executable_path``: nothing is downloaded at run time.
Without either, the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.cluster import pid_alive
from tests.cluster.helpers import LocalCluster

#: Quick pacing: a wiped drive is noticed within half a second; the heal speed is set per test.
OPTIONS = {
    "allow_faults": "true",
    "fsync": "off",
    "drive_check_interval": 0.5,
    "mrf_delay": 0.2,
    "scanner_interval": 0.5,
}
BROWSERS = ("chromium", "chromium-browser")
#: Where to copy each screenshot too, besides the test's own tmp directory (read at import:
#: the suite's environment fixture clears MINIGRID_* variables, not this one).
SHOTS_COPY = os.environ.get("CONSOLE_SHOTS", "")


def system_chromium() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def faulty_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A 4 x 2 cluster started with ``--allow-faults``; thawed and stopped afterwards."""
    cluster = LocalCluster(tmp_path_factory.mktemp("console"), options=OPTIONS)
    try:
        cluster.start()
        yield cluster
    finally:
        pids = [(p.pid, p.ticks) for p in cluster.load().processes] if cluster.file else []
        cluster.stop()  # thaws every node first
        assert not any(pid_alive(pid, ticks) for pid, ticks in pids), "a node outlived stop"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless system Chromium under Playwright (skips, saying why, without them)."""
    executable = system_chromium()
    if executable is None:
        pytest.skip("no system Chromium: as root, .ci/run installs it (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Shots:
    """Saves screenshots under the test's tmp directory (and to ``$CONSOLE_SHOTS`` if set)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.saved: list[Path] = []

    def take(self, page: Any, name: str) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.saved.append(path)
        if SHOTS_COPY:
            Path(SHOTS_COPY).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(SHOTS_COPY) / path.name)
        return path


@pytest.fixture
def shots(tmp_path: Path) -> Shots:
    return Shots(tmp_path)
