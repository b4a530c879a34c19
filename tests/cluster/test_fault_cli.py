"""Every ``minigrid fault`` command against a real cluster started with ``--allow-faults``.

Each test breaks something through the CLI, checks the effect where the nodes show it (their
links, loop lag, clock, drives) and ends with ``fault clear``. The refusal without
``--allow-faults`` is in ``test_objects.py``, on that module's ordinary cluster.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cli.adminclient import AdminClient, AdminError
from cli.fault import process_state
from minigrid.manager import should_dial
from tests.cluster.helpers import LocalCluster, metrics_text, payload, wait_for

pytestmark = pytest.mark.timeout(120)
OPTIONS = {"allow_faults": "true", "fsync": "off", "profile": "fast", "mrf_delay": "0.5"}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("faulty"), options=OPTIONS)
    try:
        cluster.start()
        cluster.boto(0).create_bucket(Bucket="bkt")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(faulty: LocalCluster) -> Iterator[LocalCluster]:
    """The module's cluster, whole again after each test (``fault clear`` is part of it)."""
    faulty.wait_all_drives(30)
    yield faulty
    cleared = faulty.cli("fault", "clear")
    assert cleared.exit_code == 0, cleared.output
    faulty.wait_all_drives(30)


def top(cluster: LocalCluster, node: int) -> dict[str, Any]:
    lines = AdminClient(cluster.load(), timeout=5).lines(node, "GET", "/top", scope="node",
                                                         count=1)  # fmt: skip
    snapshot: dict[str, Any] = lines[0]["nodes"][0]
    return snapshot


def link(cluster: LocalCluster, node: int, peer: int) -> dict[str, Any]:
    """Node ``node``'s view of its link to ``peer``; an empty dict while it does not answer."""
    host = cluster.urls[peer].split("://", 1)[1]
    try:
        links = top(cluster, node)["links"]
    except (AdminError, OSError):
        return {}
    return next(dict(each) for each in links if each["peer"] == host)


def state(cluster: LocalCluster, node: int, peer: int) -> str:
    return str(link(cluster, node, peer).get("state", "unknown"))


def listing(cluster: LocalCluster) -> list[dict[str, Any]]:
    result = cluster.cli("fault", "list", "--json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)["nodes"]
    return rows


def ok(cluster: LocalCluster, *args: str) -> str:
    result = cluster.cli("fault", *args)
    assert result.exit_code == 0, f"fault {' '.join(args)}: {result.output}"
    return result.stdout


def test_freeze_is_detected_and_thaw_brings_the_node_back(cluster: LocalCluster) -> None:
    # Which side of a pair dials is a hash of the two addresses, so with free ports a given
    # node may dial all its peers and never be dialled (about 1 time in 8). Freeze whichever
    # of nodes 2 and 3 more peers dial (one of them dials the other, so it has a dialer);
    # node 0 watches. Nodes 0 and 1 stay unfrozen for the partition tests, whose cause would
    # otherwise remember the stall.
    hosts = [url.split("://", 1)[1] for url in cluster.urls]
    dialers = {n: [m for m in range(4) if m != n and should_dial(hosts[m], hosts[n])]
               for n in (2, 3)}  # fmt: skip
    frozen = max(dialers, key=lambda n: len(dialers[n]))
    others = [n for n in range(4) if n != frozen]
    watcher = 0
    data = payload(300_000, seed=7)
    cluster.boto(watcher).put_object(Bucket="bkt", Key="thawed", Body=data)
    url = urlsplit(cluster.boto(frozen, signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": "bkt", "Key": "thawed"}, ExpiresIn=600))  # fmt: skip
    assert "SIGSTOP" in ok(cluster, "freeze", str(frozen))
    assert process_state(cluster.load(), frozen) == "frozen"
    assert f"node {frozen}: frozen" in ok(cluster, "list")
    wait_for(lambda: state(cluster, watcher, frozen) not in ("connected", "unknown"), 30,
             f"node {watcher} to give up on the frozen node {frozen}")  # fmt: skip

    seen = dict.fromkeys(dialers[frozen], 0)

    def dials_to_frozen() -> int:
        # A node's /top that does not answer in time reads as {} (no dials): keep the highest
        # count each node has shown, so a slow answer never makes the total go back.
        for n in seen:
            seen[n] = max(seen[n], int(link(cluster, n, frozen).get("dials", 0)))
        return sum(seen.values())

    # Let a redial hang on the frozen node until its dialer gives up (the kernel still
    # accepts; nobody answers): on thaw, the node finds that upgrade's connection gone.
    given_up = dials_to_frozen()
    wait_for(lambda: dials_to_frozen() >= given_up + 2, 60,
             f"a dial to node {frozen} to time out")  # fmt: skip
    # GETs sent to the frozen node wait in its kernel (the connection is accepted, the request
    # buffered). On thaw they arrive together with the news that every session was closed:
    # they wait for the redials instead of failing short of a read quorum (503).
    queued = [http.client.HTTPConnection(url.netloc, timeout=60) for _ in range(4)]
    try:
        for conn in queued:
            conn.request("GET", f"{url.path}?{url.query}")
        assert "SIGCONT" in ok(cluster, "thaw", str(frozen))
        for conn in queued:
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, data)
    finally:
        for conn in queued:
            conn.close()
    wait_for(lambda: state(cluster, watcher, frozen) == "connected", 30,
             f"node {frozen} to be back")  # fmt: skip
    # It says it was frozen, not the network: the cause is revised from network-silent once
    # the thawed node's first pong reports its stall (which may follow the reconnect).
    wait_for(lambda: "remote-stalled" in str(link(cluster, watcher, frozen).get("cause")), 30,
             f"node {watcher} to revise the cause to remote-stalled")  # fmt: skip
    wait_for(lambda: all(state(cluster, frozen, n) == "connected" for n in others), 30,
             f"node {frozen} to be connected to every peer")  # fmt: skip
    # Dials that waited while it was frozen, their dialers long gone, end quietly: before,
    # each left an unfinished upgrade and aiohttp logged "Call .prepare() first" with a
    # traceback.
    log_text = (cluster.root / "logs" / f"node{frozen}.log").read_text()
    assert "Traceback" not in log_text, log_text[-3000:]


def test_kill_and_restart_make_a_new_instance(cluster: LocalCluster) -> None:
    pid = cluster.pid(3)
    assert "SIGKILL" in ok(cluster, "kill", "3")
    wait_for(lambda: process_state(cluster.load(), 3) == "down", 10, "node 3 to die")
    assert "node 3: down" in ok(cluster, "list")
    assert "restarted" in ok(cluster, "restart", "3")
    assert process_state(cluster.load(), 3) == "running" and cluster.pid(3) != pid
    cluster.wait_all_drives(30)


@pytest.mark.parametrize("mode", ["reset", "silent"])
def test_partition_cuts_a_link_and_unpartition_restores_it(cluster: LocalCluster,
                                                           mode: str) -> None:  # fmt: skip
    assert "partitioned" in ok(cluster, "partition", "0", "1", "--mode", mode)
    wait_for(lambda: state(cluster, 0, 1) not in ("connected", "unknown"), 30,
             "node 0 to lose node 1")  # fmt: skip
    assert state(cluster, 0, 2) == "connected"  # only that pair is cut
    assert f"partitioned from {cluster.urls[1].split('://')[1]} ({mode})" in ok(cluster, "list")
    expected = "network-silent" if mode == "silent" else "reset"
    assert expected in link(cluster, 0, 1)["cause"]
    assert "partition" in ok(cluster, "unpartition")
    wait_for(lambda: state(cluster, 0, 1) == "connected", 30, "the link to come back")


def test_delay_adds_latency_to_what_a_node_sends(cluster: LocalCluster) -> None:
    assert "+300 ms" in ok(cluster, "delay", "1", "--ms", "300", "--jitter", "20")
    # Node 1's pongs to node 0 now take at least 280 ms (a lower bound: load only adds to it).
    wait_for(lambda: (link(cluster, 0, 1).get("rtt_s") or 0) >= 0.28, 30,
             "node 0's RTT to node 1 to show the delay")  # fmt: skip
    assert "delay out" in ok(cluster, "list")
    assert "no delay" in ok(cluster, "delay", "1", "--ms", "0")


def test_a_nat_shorter_than_the_ping_interval_breaks_the_flow(cluster: LocalCluster) -> None:
    before = int(link(cluster, 0, 1)["reconnects"])
    assert "NAT proxy" in ok(cluster, "nat", "0", "1", "--idle-timeout", "0.1", "--mode",
                             "reset")  # fmt: skip

    def forgotten() -> int:
        rows = listing(cluster)
        return sum(int(info.get("forgotten", 0)) for row in rows
                   for info in row.get("faults", {}).get("proxies", {}).values())  # fmt: skip

    # Pings go every 0.25 s each way: a NAT that forgets a flow idle 0.1 s resets it
    # between them.
    wait_for(lambda: forgotten() >= 1, 30, "the NAT to forget the idle flow")
    wait_for(lambda: int(link(cluster, 0, 1).get("reconnects", before)) > before, 30,
             "the session to be lost and redialled")  # fmt: skip


def test_loop_block_shows_as_loop_lag(cluster: LocalCluster) -> None:
    answer = json.loads(ok(cluster, "loop-block", "2", "--seconds", "1.5"))
    assert answer["loop_block"] == {"seconds": 1.5, "every": 0.0}
    wait_for(lambda: (top(cluster, 2).get("loop_lag_s") or 0) >= 1.4, 30,
             "node 2 to report its loop blocked")  # fmt: skip


def test_clock_jump_moves_the_wall_clock_only(cluster: LocalCluster) -> None:
    answer = json.loads(ok(cluster, "clock-jump", "1", "--seconds", "-3600"))
    assert answer["clock_offset_s"] == -3600
    s3 = cluster.boto(1)
    s3.put_object(Bucket="bkt", Key="jumped", Body=b"x")
    modified = s3.head_object(Bucket="bkt", Key="jumped")["LastModified"]
    behind = (dt.datetime.now(dt.UTC) - modified).total_seconds()
    assert 3500 < behind < 3700  # node 1 wrote it with a clock an hour behind
    assert "clock -3600s" in ok(cluster, "list")
    assert all(link(cluster, 1, peer)["state"] == "connected" for peer in (0, 2, 3))


def _slow_ops(cluster: LocalCluster, drive: str) -> float:
    """Operations on ``drive`` (node 0's) that took longer than 0.25 s, from node 0's metrics."""
    total = fast = 0.0
    for line in metrics_text(cluster.urls[0]).splitlines():
        if not line.startswith("minigrid_drive_operation_seconds") or f'{drive}"' not in line:
            continue
        if line.startswith("minigrid_drive_operation_seconds_count"):
            total += float(line.rsplit(" ", 1)[1])
        elif 'le="0.25"' in line:
            fast += float(line.rsplit(" ", 1)[1])
    return total - fast


def test_slow_drive_delays_every_operation(cluster: LocalCluster) -> None:
    drive = cluster.config["nodes"][0]["drives"][0]
    before = _slow_ops(cluster, drive)
    answer = json.loads(ok(cluster, "slow-drive", "0", "0", "--ms", "300"))
    assert answer["ms"] == 300
    assert "slow drive" in ok(cluster, "list")
    cluster.boto(0).put_object(Bucket="bkt", Key="slow", Body=b"y" * 1000)
    # Every operation on the drive now waits 300 ms first (a lower bound load cannot break);
    # the PUT itself may answer without it, once a write quorum of the others has.
    wait_for(lambda: _slow_ops(cluster, drive) > before, 30,
             "node 0's metrics to show slow operations on the slowed drive")  # fmt: skip


def _copies(cluster: LocalCluster, key: str) -> dict[Path, bytes]:
    found = {}
    for drive in cluster.drive_paths():
        for path in (drive / "bkt").rglob("*"):
            if path.is_file() and key in str(path.relative_to(drive)):
                found[path] = path.read_bytes()
    return found


def test_corrupt_flips_one_copy_and_reads_still_succeed(cluster: LocalCluster) -> None:
    body = payload(300_000, seed=3)
    s3 = cluster.boto(0)
    s3.put_object(Bucket="bkt", Key="victim", Body=body)
    before = _copies(cluster, "victim")
    answer = json.loads(ok(cluster, "corrupt", "bkt/victim", "--drive", "0"))
    after = _copies(cluster, "victim")
    changed = [path for path in before if after.get(path) != before[path]]
    assert changed == [Path(answer["corrupted"])]  # one file on drive 0, nothing else
    assert s3.get_object(Bucket="bkt", Key="victim")["Body"].read() == body


def test_wipe_drive_empties_it_and_healing_refills_it(cluster: LocalCluster) -> None:
    cluster.boto(0).put_object(Bucket="bkt", Key="refill", Body=payload(50_000, seed=4))
    drive = Path(cluster.config["nodes"][0]["drives"][1])
    assert any(drive.iterdir())
    answer = json.loads(ok(cluster, "wipe-drive", "0", "1"))
    assert answer["wiped"] == str(drive)
    wait_for(lambda: any((drive / "bkt").rglob("*refill*")) if (drive / "bkt").is_dir() else False,
             60, "the wiped drive to be healed back")  # fmt: skip


def test_list_shows_every_fault_and_clear_undoes_them(cluster: LocalCluster) -> None:
    ok(cluster, "partition", "2", "3")
    ok(cluster, "loop-block", "1", "--seconds", "0.05", "--every", "2")
    ok(cluster, "clock-jump", "0", "--seconds", "7200")
    ok(cluster, "slow-drive", "3", "1", "--ms", "5")
    ok(cluster, "freeze", "2")
    rows = listing(cluster)
    assert rows[2]["process"] == "frozen"
    assert rows[3]["faults"]["partitions"] and rows[3]["faults"]["slow_drives"]
    assert rows[1]["faults"]["loop_block"] and rows[0]["faults"]["clock_offset_s"] == 7200
    undone = ok(cluster, "clear")
    assert "node 2 thawed" in undone and "clock +7200s" in undone
    rows = listing(cluster)
    assert all(row["process"] == "running" for row in rows)
    assert not any(row["faults"]["partitions"] or row["faults"]["slow_drives"]
                   or row["faults"]["loop_block"] or row["faults"]["clock_offset_s"]
                   for row in rows)  # fmt: skip
    cluster.wait_all_drives(30)
    assert ok(cluster, "clear").strip() == "nothing to do"


def test_bad_fault_arguments_get_clear_errors(cluster: LocalCluster) -> None:
    wrong_node = cluster.cli("fault", "freeze", "9")
    assert wrong_node.exit_code == 1 and "node 9 does not exist" in wrong_node.stderr
    same = cluster.cli("fault", "partition", "1", "1")
    assert same.exit_code == 1 and "two different nodes" in same.stderr
    drive = cluster.cli("fault", "slow-drive", "0", "7", "--ms", "5")
    assert drive.exit_code == 1 and "drive must be" in drive.stderr
    assert os.environ.get("MINIGRID_DATA_DIR") is None  # the runner passed it, not the env
