"""The console in a real browser (headless system Chromium under Playwright) on a real cluster.

Each test signs in with a one-time link (as ``cluster up`` prints), clicks the page's own
buttons, and waits on what the page shows (Playwright's ``expect``: polling with a timeout,
never a fixed sleep). A screenshot of each state goes to the test's tmp directory (and to
``$CONSOLE_SHOTS`` when set).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.console import console_link
from tests.cluster.helpers import LocalCluster, payload, wait_for
from tests.console.conftest import Shots

pytestmark = pytest.mark.timeout(180)

#: The fast profile detects a silent peer within about 5 s; a loaded machine (two cores shared
#: with other test runs) gets room on top. This bounds the wait, it does not time anything.
DETECTION = 25_000
#: The causes a frozen peer's disconnect can name (minigrid.liveness): network-silent (its loop
#: was healthy at last contact), remote-stalled (a pong carried a stall), or local-stalled (this
#: node's own timers ran late, as they can on a loaded machine).
CAUSES = re.compile(r"down: (network-silent|remote-stalled|local-stalled)")


def sign_in_link(cluster: LocalCluster, node: int = 0) -> str:
    """A one-time sign-in link, made as ``cluster up`` and ``minigrid console`` make it."""
    config = cluster.config
    return console_link(cluster.urls[node], str(config["admin_access_key"]),
                        str(config["admin_secret_key"]), str(config.get("region", "us-east-1")))


@pytest.fixture
def page(browser: Any, faulty_cluster: LocalCluster) -> Iterator[Any]:
    """A page signed in to node 0's console; the test fails if the page's script threw."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(sign_in_link(faulty_cluster))
    yield page
    page.close()
    assert errors == [], f"the page's script failed: {errors}"


def more_than(locator: Any, count: int) -> Any:
    """A locator that exists once ``locator`` matches more than ``count`` elements."""
    return locator.nth(count)


def links(page: Any, state: str) -> Any:
    return page.locator(f'#ring .link[data-state="{state}"]')


def test_sign_in_shows_four_nodes_and_six_links_connected(page: Any, shots: Shots) -> None:
    from playwright.sync_api import expect

    expect(page).to_have_title("minigrid console")
    expect(page.locator("#ring .node")).to_have_count(4)
    expect(links(page, "connected")).to_have_count(6, timeout=20_000)
    expect(page.locator("#feed-state")).to_have_text("live")
    expect(page.locator("#faults-badge")).to_have_text("faults allowed")
    expect(page.locator('#ring .node[data-state="up"]')).to_have_count(4)
    # Every link is labelled with its round trip and last-seen age.
    for label in page.locator("#ring .link text").all():
        expect(label).to_contain_text(re.compile(r"rtt \d.*seen .* ago"))
    expect(page.locator("#drives tbody tr.drive")).to_have_count(8)
    expect(page.locator('#drives tbody tr.drive[data-state="ok"]')).to_have_count(8)
    expect(page.locator('#timeline li[data-kind="connect"]').first).to_be_visible()
    shots.take(page, "1-signed-in-all-connected")


@pytest.mark.slow
def test_freeze_a_node_with_its_button_then_thaw_it(
    page: Any, shots: Shots, faulty_cluster: LocalCluster
) -> None:
    from playwright.sync_api import expect

    expect(links(page, "connected")).to_have_count(6, timeout=20_000)
    card = page.locator('#nodes .card[data-index="3"]')
    freeze = card.locator('button[data-action="freeze"]')
    expect(freeze).to_be_enabled(timeout=10_000)  # the serving node has seen node 3's process
    lost = page.locator('#timeline li[data-kind="disconnect"][data-peer="3"]')
    before = lost.count()
    freeze.click()
    expect(page.locator("#action-result")).to_have_attribute("data-ok", "true")
    expect(card).to_have_attribute("data-process", "stopped", timeout=10_000)
    # Node 3's three links go down; the other three stay up.
    for other in (0, 1, 2):
        expect(page.locator(f'#ring .link[data-a="{other}"][data-b="3"]')).to_have_attribute(
            "data-state", "down", timeout=DETECTION)
    expect(links(page, "connected")).to_have_count(3)
    # The timeline names the cause of a disconnect from node 3 (newest first), and the click.
    expect(more_than(lost, before)).to_be_attached(timeout=DETECTION)
    expect(lost.first).to_contain_text(CAUSES)
    expect(page.locator('#timeline li[data-kind="fault"]').filter(
        has_text="frozen").first).to_be_visible()
    expect(page.locator('#ring .link[data-a="0"][data-b="3"] text')).to_contain_text("DOWN")
    shots.take(page, "2-node3-frozen-links-down")

    back = page.locator('#timeline li[data-kind="connect"][data-peer="3"]')
    before = back.count()
    thaw = card.locator('button[data-action="thaw"]')
    expect(thaw).to_be_enabled()
    thaw.click()
    expect(links(page, "connected")).to_have_count(6, timeout=DETECTION)
    expect(card).to_have_attribute("data-process", "running")
    expect(more_than(back, before)).to_be_attached()  # a reconnect, in the timeline
    # Node 3's drives, offline to the serving node while it was frozen, come back too.
    expect(page.locator('#drives tbody tr.drive[data-state="ok"]')).to_have_count(8,
                                                                                  timeout=20_000)
    shots.take(page, "3-node3-thawed-links-back")


@pytest.mark.slow
def test_wipe_a_drive_shows_healing_then_ok(
    page: Any, shots: Shots, faulty_cluster: LocalCluster
) -> None:
    from playwright.sync_api import expect

    cluster = faulty_cluster
    s3 = cluster.boto()
    s3.create_bucket(Bucket="wiped")
    for n in range(40):  # past the inline limit: shard files to rebuild on the new drive
        s3.put_object(Bucket="wiped", Key=f"obj/{n}", Body=payload(300_000, seed=n))
    expect(links(page, "connected")).to_have_count(6, timeout=20_000)
    # Slow the heal through the console's own control, so its progress stays on screen.
    page.select_option("#scanner-speed", "slowest")
    page.click('#actions-panel button[data-action="scanner"]')
    expect(page.locator("#action-result")).to_have_attribute("data-ok", "true")
    row = page.locator('#drives tr.drive[data-node="2"][data-drive="0"]')
    expect(row).to_have_attribute("data-state", "ok")
    wiped = str(cluster.config["nodes"][2]["drives"][0])
    healed = page.locator('#timeline li[data-kind="heal"][data-node="2"]').filter(
        has_text=re.compile(re.escape(wiped) + " healed:"))
    before = healed.count()
    page.once("dialog", lambda dialog: dialog.accept())  # "Wipe node 2's drive d0?"
    row.locator('button[data-action="wipe-drive"]').click()
    expect(page.locator("#action-result")).to_have_attribute("data-ok", "true")
    expect(row).to_have_attribute("data-state", "healing", timeout=30_000)
    expect(row.locator("td.heal")).to_contain_text("healed", timeout=30_000)
    shots.take(page, "4-drive-wiped-healing")
    page.select_option("#scanner-speed", "fastest")
    page.click('#actions-panel button[data-action="scanner"]')
    expect(row).to_have_attribute("data-state", "ok", timeout=90_000)
    expect(more_than(healed, before)).to_be_attached()  # "drive ... healed: N objects ..."
    shots.take(page, "5-drive-healed-ok")
    assert wait_for(lambda: _all_readable(cluster), 30, "every object to read back")


def _all_readable(cluster: LocalCluster) -> bool:
    s3 = cluster.boto()
    return all(s3.get_object(Bucket="wiped", Key=f"obj/{n}")["Body"].read()
               == payload(300_000, seed=n) for n in range(40))  # fmt: skip


@pytest.fixture
def safe_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """One node with four drives, started *without* ``--allow-faults``."""
    cluster = LocalCluster(tmp_path / "safe", nodes=1, drives=4, parity=2,
                           options={"fsync": "off"})  # fmt: skip
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_without_allow_faults_the_fault_buttons_are_off_and_say_why(
    browser: Any, safe_cluster: LocalCluster, shots: Shots
) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(sign_in_link(safe_cluster))
    expect(page.locator("#feed-state")).to_have_text("live", timeout=20_000)
    expect(page.locator("#faults-badge")).to_have_text("faults off")
    expect(page.locator("#faults-off")).to_be_visible()
    expect(page.locator("#faults-off")).to_contain_text("--allow-faults")
    wipe = page.locator('#drives tr.drive button[data-action="wipe-drive"]')
    expect(wipe).to_have_count(4)
    for button in [*wipe.all(), page.locator('button[data-action="partition"]'),
                   page.locator('button[data-action="loop-block"]')]:  # fmt: skip
        expect(button).to_be_disabled()
        expect(button).to_have_attribute("title", re.compile("--allow-faults"))
    # What is not a fault stays available: a heal, the scanner's speed.
    expect(page.locator('button[data-action="heal"]')).to_be_enabled()
    shots.take(page, "6-faults-off")
    # A click sent anyway (a forged request from this session) is refused by the node itself.
    answer = page.evaluate("""async () => {
        const csrf = document.querySelector('meta[name="csrf"]').content;
        const r = await fetch("/minigrid/console/action", {method: "POST",
            headers: {"Content-Type": "application/json", "X-Console-CSRF": csrf},
            body: JSON.stringify({action: "wipe-drive", node: 0, drive: 1})});
        return await r.json();
    }""")
    assert answer["ok"] is False
    assert answer["calls"][0]["status"] == 403
    assert answer["calls"][0]["answer"]["code"] == "FaultsDisabled"
    page.close()
