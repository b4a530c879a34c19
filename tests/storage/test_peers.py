"""An object layer over 4 in-process nodes × 2 drives, and the peer table that follows the grid.

Each node serves its two LocalDrives over the grid and builds its own ObjectLayer over all 8
drives of the set: its own two directly, the other six as RemoteDrives from its peer table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from minigrid import GridConfig, Manager, State
from minigrid.testing import LocalGrid, local_grid
from storage import peers as peers_module
from storage.drive import Drive
from storage.drive_service import serve_drives
from storage.errors import DriveOffline, ObjectNotFound, ReadQuorum
from storage.local import LocalDrive
from storage.objects import ObjectLayer
from storage.peers import PeerTable
from storage.remote import RemoteDrive
from storage.testing import FaultyDrive
from tests.conftest import eventually
from tests.storage.storage_helpers import MIB, chunks_of, payload, read_all
from tests.storage.test_remote_drive import loop_errors_checked

NODES = 4
PATHS = ("/d0", "/d1")
SIZES = {"empty": 0, "small": 1024, "large": 5 * MIB}
# Reconnects quick enough for a test, but slow enough that a dropped peer stays down for a
# moment (the first redial waits 0.3-0.6s).
QUICK_RECONNECT = GridConfig(backoff_initial=0.3, backoff_cap=0.5)


@dataclass
class Node:
    manager: Manager
    local: list[LocalDrive]
    peers: PeerTable
    drives: list[Drive]  # the set, in global order: node 0's drives, node 1's, ...
    layer: ObjectLayer
    served: list[FaultyDrive]  # what its peers reach over the grid: its local drives, wrapped

    def remote_drives(self, host: str) -> list[RemoteDrive]:
        return [d for d in self.drives if isinstance(d, RemoteDrive) and d.host == host]


@dataclass
class Cluster:
    grid: LocalGrid
    nodes: list[Node]

    @property
    def hosts(self) -> list[str]:
        return self.grid.hosts


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, config: GridConfig | None = None) -> AsyncIterator[Cluster]:
    local = [
        [await LocalDrive.open(str(tmp_path / f"n{n}" / path.strip("/"))) for path in PATHS]
        for n in range(NODES)
    ]
    # What each node serves its peers: its local drives, wrapped so a test can hold calls.
    wrapped = [[FaultyDrive(drive) for drive in drives] for drives in local]
    served: Iterator[list[FaultyDrive]] = iter(wrapped)

    def register(manager: Manager) -> None:
        serve_drives(manager, dict(zip(PATHS, next(served), strict=True)))

    async with loop_errors_checked(), local_grid(NODES, register=register, config=config) as grid:
        nodes: list[Node] = []
        for n, manager in enumerate(grid.managers):
            peers = PeerTable(manager)
            drives: list[Drive] = []
            for owner in range(NODES):
                for index, path in enumerate(PATHS):
                    if owner == n:
                        drives.append(local[n][index])  # a local drive is never used over the grid
                    else:
                        drives.append(peers.remote_drive(grid.hosts[owner], path))
            # Node 0 formats every drive over the grid; the others read the formats back.
            layer = await ObjectLayer.open(
                drives, len(drives), hedge_floor=0.05, rejoin=peers.rejoin
            )
            nodes.append(Node(manager, local[n], peers, drives, layer, wrapped[n]))
        yield Cluster(grid, nodes)
        for node in nodes:
            node.peers.close()


async def put_all(layer: ObjectLayer, prefix: str = "") -> dict[str, bytes]:
    stored = {}
    for name, size in SIZES.items():
        data = payload(size, seed=size)
        await layer.put_object("bkt", f"{prefix}{name}", chunks_of(data, 256 * 1024), size=size)
        stored[f"{prefix}{name}"] = data
    return stored


async def stop_node(c: Cluster, n: int, watchers: list[int]) -> None:
    """Close node ``n``'s manager; wait until the ``watchers`` see its drives offline."""
    await c.grid.managers[n].close()
    host = c.hosts[n]
    await eventually(
        lambda: not any(d.is_online() for w in watchers for d in c.nodes[w].remote_drives(host)),
        what=f"node {n}'s drives offline",
    )


@pytest.mark.asyncio
async def test_object_round_trip_across_four_nodes(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        layer = c.nodes[0].layer
        assert layer.sets[0].data == 4 and layer.sets[0].parity == 4
        await layer.make_bucket("bkt")
        stored = await put_all(layer)
        for node in c.nodes:  # every node reads what node 0 wrote
            for key, data in stored.items():
                assert await read_all(node.layer, "bkt", key) == data
            assert (await node.layer.head_object("bkt", "large")).size == 5 * MIB
        ranged = await read_all(c.nodes[2].layer, "bkt", "large", MIB - 3, MIB + 10)
        assert ranged == stored["large"][MIB - 3 : 2 * MIB + 7]
        listed = await c.nodes[3].layer.list_objects("bkt")
        assert [o.key for o in listed.objects] == sorted(SIZES)
        assert [b.name for b in await c.nodes[1].layer.list_buckets()] == ["bkt"]
        for key in stored:
            await c.nodes[1].layer.delete_object("bkt", key)
        with pytest.raises(ObjectNotFound):
            await c.nodes[2].layer.head_object("bkt", "small")
        assert (await c.nodes[0].layer.list_objects("bkt")).objects == []
        # Shards really are spread over every node's drives, and no upload is left behind.
        for node in c.nodes:
            for drive in node.local:
                assert not list((Path(drive.root) / ".minigrid.sys" / "tmp").iterdir())


@pytest.mark.asyncio
async def test_get_survives_two_nodes_down(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.nodes[0].layer.make_bucket("bkt")
        stored = await put_all(c.nodes[0].layer)
        await stop_node(c, 2, watchers=[0, 1])
        await stop_node(c, 3, watchers=[0, 1])
        for reader in (0, 1):
            for key, data in stored.items():
                assert await read_all(c.nodes[reader].layer, "bkt", key) == data
        listed = await c.nodes[1].layer.list_objects("bkt")
        assert [o.key for o in listed.objects] == sorted(SIZES)


@pytest.mark.asyncio
async def test_put_with_one_node_down(tmp_path: Path) -> None:
    async with cluster(tmp_path) as c:
        await c.nodes[0].layer.make_bucket("bkt")
        await stop_node(c, 3, watchers=[0, 1, 2])
        stored = await put_all(c.nodes[0].layer, prefix="degraded-")
        for reader in (1, 2):
            for key, data in stored.items():
                assert await read_all(c.nodes[reader].layer, "bkt", key) == data
        # Node 3's drives were skipped, not called: nothing of the new objects is there.
        for drive in c.nodes[3].local:
            assert not (Path(drive.root) / "bkt" / "degraded-large").exists()


@pytest.mark.asyncio
async def test_peer_table_marks_drives_offline_at_once_and_logs_each_change_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="storage.peers")
    async with cluster(tmp_path, QUICK_RECONNECT) as c:
        node = c.nodes[0]
        await node.layer.make_bucket("bkt")
        stored = await put_all(node.layer)
        host = c.hosts[2]
        drives = node.remote_drives(host)
        conn = node.manager.connection(host)
        assert node.peers.is_online(host) and all(d.is_online() for d in drives)
        caplog.clear()

        # The drives are offline by the time the grid has told anyone the connection is down.
        seen_offline: list[bool] = []

        def check(changed: object, old: State, new: State, cause: str) -> None:
            if changed is conn and old is State.CONNECTED:
                seen_offline.append(not any(d.is_online() for d in drives))

        node.manager.state_listeners.append(check)
        conn.drop()
        await conn.wait_state(State.ERROR, timeout=5)
        assert seen_offline == [True]
        assert not node.peers.is_online(host)
        snapshot = node.peers.snapshot()[host]
        assert not snapshot.online and snapshot.changes == 1
        assert snapshot.drives == tuple(d.endpoint for d in drives)
        assert snapshot.last_cause.startswith("reset")

        # 50 operations on the offline drives: each fails at once, without a grid call (no
        # await happens, so the peer cannot come back in between) and without a log line.
        for drive in drives * 25:
            with pytest.raises(DriveOffline):
                await drive.read_metadata("bkt", "small")
        # The object layer skips the offline drives (or finds them back): reads still work.
        results = await asyncio.gather(
            *(node.layer.head_object("bkt", key) for key in list(stored) * 5),
            *(read_all(node.layer, "bkt", "small") for _ in range(10)),
        )
        assert len(results) == 25

        await node.manager.wait_connected(timeout=10)
        assert node.peers.is_online(host) and all(d.is_online() for d in drives)
        assert await read_all(node.layer, "bkt", "large") == stored["large"]
        snapshot = node.peers.snapshot()[host]
        assert snapshot.as_dict()["online"] is True and snapshot.changes == 2

        assert not [r for r in caplog.records if r.name.startswith("storage.remote")]
        lines = [r.getMessage() for r in caplog.records if r.name == "storage.peers"]
        mine = [line for line in lines if line.startswith(f"peer {host} ")]
        assert len(mine) == 2, lines
        assert mine[0].startswith(f"peer {host} offline (")
        assert mine[1].startswith(f"peer {host} back online after ")
        # Node 2 saw node 0 go away too, once, and come back, once.
        theirs = [line for line in lines if line.startswith(f"peer {c.hosts[0]} ")]
        assert len(theirs) == 2, lines


@pytest.mark.asyncio
async def test_a_node_that_loses_every_peer_at_once_waits_for_them_to_redial(
    tmp_path: Path,
) -> None:
    """What a node thawed after SIGSTOP sees: every session gone together, the requests that
    queued while it was frozen arriving the same moment. They wait for the redials (the first
    comes after 0.3-0.6 s here), not fail short of a quorum."""
    async with cluster(tmp_path, QUICK_RECONNECT) as c:
        node = c.nodes[0]
        await node.layer.make_bucket("bkt")
        stored = await put_all(node.layer)
        conns = [node.manager.connection(host) for host in c.hosts[1:]]
        for conn in conns:
            conn.drop()
        for conn in conns:
            await conn.wait_state(State.ERROR, timeout=5)
        assert node.layer.sets[0].online() == 2  # 2 of 8: the read quorum is 4, the write 5
        async with asyncio.timeout(30):
            info, data = await asyncio.gather(
                node.layer.head_object("bkt", "large"), read_all(node.layer, "bkt", "small")
            )
        assert info.size == 5 * MIB and data == stored["small"]
        assert all(node.peers.is_online(host) for host in c.hosts[1:])


@pytest.mark.asyncio
async def test_a_peer_lost_longer_ago_is_not_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cluster(tmp_path, QUICK_RECONNECT) as c:
        node = c.nodes[0]
        await node.layer.make_bucket("bkt")
        await put_all(node.layer)
        # Any wait would be an hour; a peer counts as lost "long ago" at once.
        monkeypatch.setattr(peers_module, "REJOIN_WAIT", 3600.0)
        monkeypatch.setattr(peers_module, "REJOIN_WINDOW", -1.0)
        for host in c.hosts[1:]:
            node.manager.connection(host).drop()
        for host in c.hosts[1:]:
            await node.manager.connection(host).wait_state(State.ERROR, timeout=5)
        async with asyncio.timeout(30):
            with pytest.raises(ReadQuorum):
                await node.layer.head_object("bkt", "large")
        # Only drives on peers can come back: this node's own two are not worth a wait either.
        monkeypatch.setattr(peers_module, "REJOIN_WINDOW", 3600.0)
        local_only = [d for d in node.drives if not isinstance(d, RemoteDrive)]
        async with asyncio.timeout(30):
            await node.peers.rejoin(local_only, 1)


@pytest.mark.asyncio
async def test_a_metadata_read_cut_off_by_the_sessions_closing_is_made_again(
    tmp_path: Path,
) -> None:
    """The other half of a thaw: calls already sent when every session closes fail with
    DriveOffline. The read is made once more after the redials, not failed short of a quorum."""
    async with cluster(tmp_path, QUICK_RECONNECT) as c:
        node = c.nodes[0]
        await node.layer.make_bucket("bkt")
        await put_all(node.layer)
        remote = [drive for other in c.nodes[1:] for drive in other.served]
        holds = [drive.hold("read_metadata") for drive in remote]
        try:
            async with asyncio.timeout(30):
                head = asyncio.create_task(node.layer.head_object("bkt", "large"))
                await eventually(
                    lambda: sum(d.held["read_metadata"] for d in remote) == 6,
                    what="node 0's six remote metadata reads held by its peers",
                )
                for host in c.hosts[1:]:
                    node.manager.connection(host).drop()
                for host in c.hosts[1:]:
                    await node.manager.connection(host).wait_state(State.ERROR, timeout=5)
                for held in holds:
                    held.set()
                assert (await head).size == 5 * MIB
        finally:
            for held in holds:
                held.set()
        # Asked again: the six cut off, then at least the three remote drives a write quorum
        # needs once the first peers are back (the last peer may still be redialling).
        assert sum(d.calls["read_metadata"] for d in remote) >= 6 + 3
