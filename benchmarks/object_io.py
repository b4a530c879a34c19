"""Object put/get throughput next to the erasure-coding bound, printed as one JSON object.

    python benchmarks/object_io.py --mode inprocess [--sizes 64,256] [--rounds 3]

Every put is measured **with and without fsync in the same run**, round by round (the order
alternates each round): ``put_mbps_fsync`` is the default configuration (shards and metadata
fdatasync'ed, directories fsync'ed), ``put_mbps_nofsync`` the same put with ``--fsync off``,
and ``fsync_put_ratio`` is fsync / nofsync. ``put_mbps`` (and the put target) is the default,
fsync on; gets are read from the fsync-on drives. Then ``--small-puts`` 4 KiB objects (stored
inline, so each put is one metadata commit per drive: the case where syncing costs most) are
put one after another, and ``small_puts_per_s_fsync``/``_nofsync`` and ``small_fsync_ratio``
report the rate.

``--mode inprocess`` runs two 8-drive sets (4+4) of local drives, one with fsync and one
without, in a temporary directory inside this process. ``ec_bound_mbps`` is measured in the
same run: zfec encoding plus the bitrot hash of the same bytes, on one core, with no I/O. It is
the speed the put path would reach if erasure coding were the only work. The targets are
put >= 0.7 x bound and get >= 0.7 x bound (issue 17).

``--mode cluster`` starts two local clusters of 4 node processes x 2 drives (4+4) on 127.0.0.1
with ``minigrid cluster up`` in a temporary directory, one with fsync on and one with
``--fsync off``, and puts and gets each object through the S3 path of node 0 with the CLI's
SigV4 client (``UNSIGNED-PAYLOAD``, 1 MiB writes; reads in 1 MiB pieces that are thrown away).
``ec_bound_mbps`` is measured in the same run, as above. While each put runs, every node's
VmRSS is sampled from ``/proc/PID/status``; the peak of each node is reported per size, and
``node_peak_rss_mb`` is the one during the 256 MiB put (the last size), for the fsync-on
cluster. The targets are put >= 0.5 x bound and get >= 0.5 x bound (issue 17), and RSS flat
across sizes.

``--multipart-mib`` (1024 by default, 0: skip) adds, in the same cluster run (fsync on), a
file of that size put and got twice: with one PUT and one GET (the CLI's client), and through
boto3's ``upload_file`` and ``download_file`` with the default ``TransferConfig`` (multipart
upload of 8 MiB parts, ten threads; ranged GETs of 8 MiB in parallel), each checked to come
back whole. They are reported under ``multipart``.

``--compare tahoe`` runs only the comparison with Tahoe-LAFS (``tahoe_grid.py``): a local Tahoe
grid (an introducer, ``--tahoe-servers`` storage nodes and a client node, encoding k = data
shards and N = data + parity, so the same expansion) next to one 4 x 2 minigrid cluster (fsync
on); each round a new ``--compare-mib`` file is put to and got from both, alternating, with
curl as the client of both (Tahoe's web API ``PUT /uri`` and ``GET /uri/<cap>``; minigrid's S3
path with curl's SigV4). Tahoe is installed from PyPI into ``.bench/tahoe-venv/`` on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage import bitrot
from storage.erasure import DEFAULT_BLOCK_SIZE, Erasure
from storage.local import LocalDrive
from storage.objects import ObjectLayer

MIB = 1 << 20


def make_blocks(size: int) -> list[bytes]:
    """The object's bytes as 1 MiB chunks, the way an upload arrives."""
    pattern = os.urandom(16 * MIB)
    return [
        pattern[(i * MIB) % len(pattern) : (i * MIB) % len(pattern) + MIB][: size - i * MIB]
        for i in range(-(-size // MIB))
    ]


def ec_bound(blocks: list[bytes], data: int, parity: int) -> float:
    """MB/s of zfec encoding plus hashing every shard, single-threaded, no I/O."""
    erasure = Erasure(data, parity, DEFAULT_BLOCK_SIZE)
    started = time.perf_counter()
    for block in blocks:
        for shard in erasure.encode(block):
            bitrot.digest(shard)
    elapsed = time.perf_counter() - started
    return sum(len(b) for b in blocks) / MIB / elapsed


async def _source(blocks: list[bytes]) -> AsyncIterator[bytes]:
    for block in blocks:
        yield block


FSYNC_MODES = (("fsync", True), ("nofsync", False))


def _order(round_index: int) -> list[tuple[str, bool]]:
    """Alternate which mode goes first, so neither always runs on a warmer page cache."""
    return list(FSYNC_MODES) if round_index % 2 == 0 else list(reversed(FSYNC_MODES))


def _fsync_keys(put_times: dict[str, list[float]], size_mib: float) -> dict[str, Any]:
    """``put_mbps_fsync``, ``put_mbps_nofsync``, their ratio and every round's seconds."""
    fsync = size_mib / statistics.median(put_times["fsync"])
    nofsync = size_mib / statistics.median(put_times["nofsync"])
    return {
        "put_mbps_fsync": round(fsync, 1),
        "put_mbps_nofsync": round(nofsync, 1),
        "fsync_put_ratio": round(fsync / nofsync, 3),
        "put_rounds_s_fsync": [round(t, 3) for t in put_times["fsync"]],
        "put_rounds_s_nofsync": [round(t, 3) for t in put_times["nofsync"]],
    }


SMALL_SIZE = 4096  # stored inline: one metadata file per drive, no shard file


def _small_keys(rates: dict[str, list[float]], count: int) -> dict[str, Any]:
    """Sequential small puts per second with and without fsync (medians across rounds)."""
    if not count:
        return {}
    fsync = statistics.median(rates["fsync"])
    nofsync = statistics.median(rates["nofsync"])
    return {
        "small_object_bytes": SMALL_SIZE,
        "small_puts_per_round": count,
        "small_puts_per_s_fsync": round(fsync, 1),
        "small_puts_per_s_nofsync": round(nofsync, 1),
        "small_fsync_ratio": round(fsync / nofsync, 3),
    }


def _summarise(
    result: dict[str, Any], totals: dict[str, float], bound: float, targets: tuple[float, float]
) -> None:
    """Whole-run keys. ``put_mbps`` is the default configuration (fsync on)."""
    mib = totals["bytes"] / MIB
    result["put_mbps"] = round(mib / totals["fsync"], 1)
    result["put_mbps_fsync"] = result["put_mbps"]
    result["put_mbps_nofsync"] = round(mib / totals["nofsync"], 1)
    result["fsync_put_ratio"] = round(result["put_mbps_fsync"] / result["put_mbps_nofsync"], 3)
    result["get_mbps"] = round(mib / totals["get"], 1)
    result["ec_bound_mbps"] = round(bound, 1)
    result["put_ratio"] = round(result["put_mbps"] / bound, 3)
    result["put_ratio_nofsync"] = round(result["put_mbps_nofsync"] / bound, 3)
    result["get_ratio"] = round(result["get_mbps"] / bound, 3)
    result["put_target_met"] = result["put_ratio"] >= targets[0]
    result["get_target_met"] = result["get_ratio"] >= targets[1]


async def _small_puts_inprocess(
    layers: dict[str, ObjectLayer], rounds: int, count: int
) -> dict[str, list[float]]:
    body = os.urandom(SMALL_SIZE)
    rates: dict[str, list[float]] = {name: [] for name, _ in FSYNC_MODES}
    for round_index in range(rounds if count else 0):
        for name, _ in _order(round_index):
            started = time.perf_counter()
            for index in range(count):
                await layers[name].put_object("bench", f"small/{index}", body, size=SMALL_SIZE)
            rates[name].append(count / (time.perf_counter() - started))
    return rates


async def run_inprocess(
    sizes_mib: list[int], rounds: int, drive_count: int, parity: int, small: int = 0
) -> dict[str, Any]:
    data_shards = drive_count - parity
    result: dict[str, Any] = {
        "mode": "inprocess",
        "drives": drive_count,
        "data": data_shards,
        "parity": parity,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "sizes": {},
    }
    bound_samples: list[float] = []
    totals = {"bytes": 0.0, "fsync": 0.0, "nofsync": 0.0, "get": 0.0}
    with tempfile.TemporaryDirectory(prefix="objio-") as tmp:
        layers: dict[str, ObjectLayer] = {}
        for name, fsync in FSYNC_MODES:
            drives = [
                await LocalDrive.open(os.path.join(tmp, name, f"d{i}"), fsync=fsync)
                for i in range(drive_count)
            ]
            layers[name] = await ObjectLayer.open(drives, drive_count, parity=parity)
            await layers[name].make_bucket("bench")
        layer = layers["fsync"]
        for size_mib in sizes_mib:
            blocks = make_blocks(size_mib * MIB)
            size = size_mib * MIB
            put_times: dict[str, list[float]] = {name: [] for name, _ in FSYNC_MODES}
            get_times: list[float] = []
            for round_index in range(rounds):
                bound_samples.append(ec_bound(blocks[:64], data_shards, parity))
                for name, _ in _order(round_index):
                    started = time.perf_counter()
                    await layers[name].put_object("bench", "object", _source(blocks), size=size)
                    put_times[name].append(time.perf_counter() - started)
                started = time.perf_counter()
                received = 0
                async with await layer.get_object("bench", "object") as reader:
                    async for chunk in reader:
                        received += len(chunk)
                get_times.append(time.perf_counter() - started)
                if received != size:
                    raise RuntimeError(f"read {received} bytes of {size}")
                for name, _ in FSYNC_MODES:
                    await layers[name].delete_object("bench", "object")
            get_median = statistics.median(get_times)
            totals["bytes"] += size
            totals["get"] += get_median
            for name, _ in FSYNC_MODES:
                totals[name] += statistics.median(put_times[name])
            result["sizes"][f"{size_mib}MiB"] = {
                "put_mbps": round(size_mib / statistics.median(put_times["fsync"]), 1),
                "get_mbps": round(size_mib / get_median, 1),
                **_fsync_keys(put_times, size_mib),
                "get_rounds_s": [round(t, 3) for t in get_times],
            }
        result["hedges"] = layer.stats.hedges
        result.update(_small_keys(await _small_puts_inprocess(layers, rounds, small), small))
    _summarise(result, totals, statistics.median(bound_samples), (0.7, 0.7))
    return result


class _BlockReader(io.RawIOBase):
    """The object's blocks as a file, so the client streams them without joining them."""

    def __init__(self, blocks: list[bytes]) -> None:
        self._blocks = blocks
        self._index = 0
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._index >= len(self._blocks):
            return b""
        block = self._blocks[self._index]
        end = len(block) if size < 0 else min(len(block), self._offset + size)
        piece = block[self._offset : end]
        self._offset = end
        if self._offset >= len(block):
            self._index, self._offset = self._index + 1, 0
        return piece


CHUNK = 1 << 20


class _RawS3:
    """A single streaming PUT (``UNSIGNED-PAYLOAD``, 1 MiB pieces) and a single GET, signed
    by hand: the plain path, without boto3's own costs, to measure the node against."""

    def __init__(self, client: Any) -> None:
        from cli.signed import object_path

        self._client = client
        self._path = object_path

    def make_bucket(self, bucket: str) -> None:
        self._client.call("PUT", self._path(bucket))

    def put_object(self, bucket: str, key: str, source: Any, size: int) -> None:
        pieces = iter(lambda: source.read(CHUNK), b"")
        self._client.request("PUT", self._path(bucket, key), body=pieces, length=size).close()

    def get_object(self, bucket: str, key: str) -> Any:
        return self._client.request("GET", self._path(bucket, key))

    def delete_object(self, bucket: str, key: str) -> None:
        self._client.call("DELETE", self._path(bucket, key), expect=(204, 200))


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _RssSampler:
    """Samples the peak VmRSS of some processes on a thread, every 10 ms."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peaks = [0.0] * len(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, pid in enumerate(self.pids):
                self.peaks[i] = max(self.peaks[i], _rss_mb(pid))
            self._stop.wait(0.01)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _file_of(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, 64 * MIB))
            handle.write(piece)
            left -= len(piece)


def _multipart_row(cluster: Any, client: Any, size_mib: int, folder: Path) -> dict[str, Any]:
    """One object of ``size_mib`` through a single PUT/GET and through boto3's transfer
    manager (default configuration), on the same cluster, one after the other."""
    import boto3
    from botocore.config import Config

    size = size_mib * MIB
    source, back = folder / "multipart-source.bin", folder / "multipart-back.bin"
    _file_of(source, size)
    row: dict[str, Any] = {"size_mib": size_mib}
    started = time.perf_counter()
    with open(source, "rb") as handle:
        client.put_object("bench", "single", handle, size)
    row["single_put_mbps"] = round(size_mib / (time.perf_counter() - started), 1)
    started = time.perf_counter()
    response = client.get_object("bench", "single")
    received = 0
    while piece := response.read1(MIB):
        received += len(piece)
    response.close()
    row["single_get_mbps"] = round(size_mib / (time.perf_counter() - started), 1)
    if received != size:
        raise RuntimeError(f"single GET read {received} bytes of {size}")
    client.delete_object("bench", "single")
    config = cluster.config
    s3 = boto3.session.Session(
        aws_access_key_id=config["access_key"],
        aws_secret_access_key=config["secret_key"],
        region_name="us-east-1",
    ).client("s3", endpoint_url=cluster.urls[0], config=Config(s3={"addressing_style": "path"}))
    started = time.perf_counter()
    s3.upload_file(str(source), "bench", "multipart")
    row["upload_file_mbps"] = round(size_mib / (time.perf_counter() - started), 1)
    head = s3.head_object(Bucket="bench", Key="multipart")
    row["parts"] = int(head["ETag"].strip('"').rpartition("-")[2])
    started = time.perf_counter()
    s3.download_file("bench", "multipart", str(back))
    row["download_file_mbps"] = round(size_mib / (time.perf_counter() - started), 1)
    if back.stat().st_size != size:
        raise RuntimeError(f"download_file wrote {back.stat().st_size} bytes of {size}")
    s3.delete_object(Bucket="bench", Key="multipart")
    source.unlink()
    back.unlink()
    return row


def run_cluster(
    sizes_mib: list[int], rounds: int, parity: int, small: int = 0, multipart_mib: int = 0
) -> dict[str, Any]:
    """Put and get through two real 4 x 2 clusters' S3 path, one with fsync on (the default)
    and one with ``--fsync off``, side by side; see the module docstring."""
    from cli.cluster import ClusterFile, cluster_up, stop_nodes
    from cli.signed import SignedClient

    data_shards = 8 - parity
    result: dict[str, Any] = {
        "mode": "cluster",
        "nodes": 4,
        "drives_per_node": 2,
        "data": data_shards,
        "parity": parity,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "sizes": {},
    }
    bound_samples: list[float] = []
    totals = {"bytes": 0.0, "fsync": 0.0, "nofsync": 0.0, "get": 0.0}
    with tempfile.TemporaryDirectory(prefix="objio-cluster-") as tmp:
        clusters: dict[str, ClusterFile] = {}
        try:
            for name, fsync in FSYNC_MODES:
                clusters[name] = cluster_up(
                    Path(tmp) / name, nodes=4, drives=2, base_port=0, parity=parity, fsync=fsync
                ).cluster
            pids = {
                name: [p.pid for p in cluster.processes if p.pid is not None]
                for name, cluster in clusters.items()
            }
            result["node_idle_rss_mb"] = [round(_rss_mb(pid), 1) for pid in pids["fsync"]]
            clients = {}
            for name, cluster in clusters.items():
                config = cluster.config
                clients[name] = _RawS3(SignedClient(cluster.urls[0], config["access_key"],
                                                    config["secret_key"], timeout=300))  # fmt: skip
                clients[name].make_bucket("bench")
            client = clients["fsync"]
            for size_mib in sizes_mib:
                blocks = make_blocks(size_mib * MIB)
                size = size_mib * MIB
                put_times: dict[str, list[float]] = {name: [] for name, _ in FSYNC_MODES}
                get_times: list[float] = []
                peaks = [0.0] * len(pids["fsync"])
                for round_index in range(rounds):
                    bound_samples.append(ec_bound(blocks[:64], data_shards, parity))
                    for name, _ in _order(round_index):
                        with _RssSampler(pids[name]) as sampler:
                            started = time.perf_counter()
                            clients[name].put_object("bench", "object", _BlockReader(blocks), size)
                            put_times[name].append(time.perf_counter() - started)
                        if name == "fsync":
                            peaks = [max(a, b) for a, b in zip(peaks, sampler.peaks, strict=True)]
                    started = time.perf_counter()
                    response = client.get_object("bench", "object")
                    received = 0
                    while piece := response.read1(CHUNK):
                        received += len(piece)
                    response.close()
                    get_times.append(time.perf_counter() - started)
                    if received != size:
                        raise RuntimeError(f"read {received} bytes of {size}")
                    for name, _ in FSYNC_MODES:
                        clients[name].delete_object("bench", "object")
                get_median = statistics.median(get_times)
                totals["bytes"] += size
                totals["get"] += get_median
                for name, _ in FSYNC_MODES:
                    totals[name] += statistics.median(put_times[name])
                result["sizes"][f"{size_mib}MiB"] = {
                    "put_mbps": round(size_mib / statistics.median(put_times["fsync"]), 1),
                    "get_mbps": round(size_mib / get_median, 1),
                    **_fsync_keys(put_times, size_mib),
                    "get_rounds_s": [round(t, 3) for t in get_times],
                    "node_peak_rss_mb": [round(p, 1) for p in peaks],
                }
                result["node_peak_rss_mb"] = [round(p, 1) for p in peaks]
            body = os.urandom(SMALL_SIZE)
            rates: dict[str, list[float]] = {name: [] for name, _ in FSYNC_MODES}
            for round_index in range(rounds if small else 0):
                for name, _ in _order(round_index):
                    started = time.perf_counter()
                    for index in range(small):
                        clients[name].put_object(
                            "bench", f"small/{index}", io.BytesIO(body), SMALL_SIZE
                        )
                    rates[name].append(small / (time.perf_counter() - started))
            result.update(_small_keys(rates, small))
            if multipart_mib:
                result["multipart"] = _multipart_row(
                    clusters["fsync"], client, multipart_mib, Path(tmp)
                )
        finally:
            for cluster in clusters.values():
                stop_nodes(cluster)
    _summarise(result, totals, statistics.median(bound_samples), (0.5, 0.5))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["inprocess", "cluster"], default="inprocess")
    parser.add_argument("--sizes", default="64,256", help="object sizes in MiB, comma separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drives", type=int, default=8)
    parser.add_argument("--parity", type=int, default=4)
    parser.add_argument(
        "--small-puts", type=int, default=200, help="4 KiB puts per round and mode; 0: none"
    )
    parser.add_argument(
        "--multipart-mib", type=int, default=1024,
        help="cluster mode: one file of this size through single PUT/GET and boto3's "
        "upload_file/download_file; 0: none",
    )  # fmt: skip
    parser.add_argument(
        "--compare", choices=["tahoe"],
        help="instead of the modes: put and get one file through Tahoe-LAFS's web API and "
        "through a 4 x 2 minigrid cluster, with curl, alternating (installs Tahoe into "
        ".bench/tahoe-venv on first use)",
    )  # fmt: skip
    parser.add_argument("--compare-mib", type=int, default=64, help="--compare: file size, MiB")
    parser.add_argument(
        "--tahoe-servers", type=int, default=4, help="--compare tahoe: storage nodes (4 or 8)"
    )
    parser.add_argument(
        "--compare-fsync", choices=["on", "off"], default="on",
        help="--compare: minigrid's fsync (Tahoe's storage servers never fsync)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.compare == "tahoe":
        from tahoe_grid import compare_tahoe

        result = compare_tahoe(
            args.compare_mib, args.rounds, args.parity, args.tahoe_servers,
            fsync=args.compare_fsync == "on",
        )  # fmt: skip
    elif args.mode == "cluster":
        if args.drives != 8:
            parser.error("--mode cluster always runs 4 nodes x 2 drives")
        result = run_cluster(sizes, args.rounds, args.parity, args.small_puts, args.multipart_mib)
    else:
        result = asyncio.run(
            run_inprocess(sizes, args.rounds, args.drives, args.parity, args.small_puts)
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
