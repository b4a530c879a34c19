"""A local Tahoe-LAFS grid on 127.0.0.1, for ``object_io.py --compare tahoe``.

Tahoe-LAFS is installed from PyPI (``tahoe-lafs``, version ``TAHOE_VERSION``) into its own venv,
``.bench/tahoe-venv/`` under the repository root (git-ignored), the first time it is needed;
later runs reuse it. It is never a dependency of the project.

:class:`TahoeGrid` creates, in a temporary directory, an introducer, ``servers`` storage nodes
and one client node (the gateway whose web API is used), each a ``tahoe run`` process in its own
process group, and stops every one of them on exit (SIGTERM to the group, SIGKILL after a
timeout), also after an error. ``tahoe run`` also exits by itself when its stdin closes, so a
killed benchmark does not leave a grid behind.

Uploads and downloads go through the client's web API with curl (``PUT /uri``, an immutable
file; ``GET /uri/<cap>``), see :func:`curl_put` and :func:`curl_get`, which ``object_io.py``
also uses against minigrid's S3 gateway.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TAHOE_VERSION = "1.20.0"
VENV = ROOT / ".bench" / "tahoe-venv"
STOP_TIMEOUT = 10.0
#: How long the client may take to connect to the introducer and to every storage server.
CONNECT_TIMEOUT = 120.0


@dataclass(frozen=True)
class Encoding:
    """Tahoe's encoding parameters: ``needed`` of ``total`` shares rebuild a file, and an
    upload succeeds only once its shares are spread over ``happy`` distinct servers."""

    needed: int
    total: int
    happy: int

    @property
    def expansion(self) -> float:
        return self.total / self.needed

    def as_dict(self) -> dict[str, int]:
        return {"shares.needed": self.needed, "shares.total": self.total,
                "shares.happy": self.happy}  # fmt: skip


def encoding_for(data: int, parity: int, servers: int) -> Encoding:
    """The encoding that mirrors minigrid's ``data`` + ``parity`` erasure set on ``servers``
    storage nodes: the same k and N (so the same expansion, N / k), and ``happy`` as high as
    the servers allow (every server must hold shares, as every minigrid node holds shards)."""
    if data < 1 or parity < 0 or servers < 1:
        raise ValueError(f"need data >= 1, parity >= 0, servers >= 1, not {data}, {parity}, "
                         f"{servers}")  # fmt: skip
    total = data + parity
    return Encoding(needed=data, total=total, happy=min(servers, total))


def tahoe_cfg(
    *, nickname: str, tub_port: int | None, web_port: int | None, encoding: Encoding
) -> str:
    """The ``tahoe.cfg`` of one node of the local grid: a storage node listens on ``tub_port``
    on 127.0.0.1 only; the client (``tub_port`` None) listens for nothing but its web API on
    ``web_port`` and offers no storage. Every node has the encoding it would upload with.

    A pure function, so the test suite can check it without Tahoe installed."""
    config = configparser.ConfigParser(interpolation=None)
    config.optionxform = str  # type: ignore[assignment,method-assign]  # keep the keys' case
    config["node"] = {
        "nickname": nickname,
        "reveal-IP-address": "true",
        "web.port": "" if web_port is None else f"tcp:{web_port}:interface=127.0.0.1",
        "tub.port": "disabled" if tub_port is None else f"tcp:{tub_port}:interface=127.0.0.1",
        "tub.location": "disabled" if tub_port is None else f"tcp:127.0.0.1:{tub_port}",
    }
    storage = tub_port is not None
    config["client"] = {key: str(value) for key, value in encoding.as_dict().items()}
    # Tahoe refuses shares when free space falls under reserved_space; 1 GiB by default.
    config["storage"] = {"enabled": "true" if storage else "false", "reserved_space": "100M"}
    config["helper"] = {"enabled": "false"}
    lines: list[str] = []
    for section in config.sections():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in config[section].items())
        lines.append("")
    return "\n".join(lines)


def _progress(message: str) -> None:
    print(f"[tahoe] {message}", file=sys.stderr, flush=True)


def ensure_tahoe(venv: Path = VENV, version: str = TAHOE_VERSION) -> Path:
    """The ``tahoe`` executable of ``venv``, installing ``tahoe-lafs==version`` from PyPI into
    a new venv there first if it is missing or another version."""
    tahoe = venv / "bin" / "tahoe"
    if tahoe.exists() and installed_version(tahoe) == version:
        return tahoe
    _progress(f"installing tahoe-lafs=={version} into {venv} (first use; a few minutes)")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", f"tahoe-lafs=={version}"],
        check=True, stdout=sys.stderr,
    )  # fmt: skip
    found = installed_version(tahoe)
    if found != version:
        raise RuntimeError(f"{tahoe} reports version {found!r} after installing {version}")
    _progress(f"tahoe-lafs {found} installed")
    return tahoe


def installed_version(tahoe: Path) -> str | None:
    """What ``tahoe --version`` says (``tahoe-lafs/1.20.0`` → ``1.20.0``); None if it fails."""
    try:
        out = subprocess.run([str(tahoe), "--version"], capture_output=True, text=True,
                             timeout=60, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()[0] if out.strip() else ""
    return first.partition("/")[2] or None


def segment_size(tahoe: Path) -> int | None:
    """The installed Tahoe's default maximum segment size for immutable files (1 MiB in 1.20;
    128 KiB before 1.19), asked of its own Python; None if that fails."""
    code = "from allmydata.interfaces import DEFAULT_IMMUTABLE_MAX_SEGMENT_SIZE as s; print(s)"
    try:
        out = subprocess.run([str(tahoe.parent / "python"), "-c", code], capture_output=True,
                             text=True, timeout=60, check=True).stdout  # fmt: skip
        return int(out.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def free_port() -> int:
    """A port nothing listens on now (Tahoe wants a fixed port in its config, not 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class _Node:
    name: str
    folder: Path
    process: subprocess.Popen[bytes] | None = None


@dataclass
class TahoeGrid:
    """An introducer, ``servers`` storage nodes and a client node, on 127.0.0.1 under
    ``folder``. Use as a context manager: every process is stopped on exit."""

    tahoe: Path
    folder: Path
    servers: int
    encoding: Encoding
    web_port: int = 0
    nodes: list[_Node] = field(default_factory=list)

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def __enter__(self) -> TahoeGrid:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _tahoe(self, *args: str) -> None:
        done = subprocess.run([str(self.tahoe), *args], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        if done.returncode:
            raise RuntimeError(f"tahoe {' '.join(args)} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-1000:]}")  # fmt: skip

    def _run(self, node: _Node) -> None:
        log = open(self.folder / f"{node.name}.log", "wb")  # noqa: SIM115 (the child owns it)
        # stdin stays an open pipe: "tahoe run" exits when it closes (so when we die).
        node.process = subprocess.Popen(
            [str(self.tahoe), "run", str(node.folder)], stdin=subprocess.PIPE,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.nodes.append(node)

    def _start(self) -> None:
        intro_port = free_port()
        intro = _Node("introducer", self.folder / "introducer")
        self._tahoe("create-introducer", "--port", f"tcp:{intro_port}:interface=127.0.0.1",
                    "--location", f"tcp:127.0.0.1:{intro_port}", str(intro.folder))  # fmt: skip
        self._run(intro)
        furl = self._wait_file(intro.folder / "private" / "introducer.furl", intro)
        _progress(f"introducer up; starting {self.servers} storage nodes and a client")
        # Each "tahoe create-*" spends seconds importing Tahoe: run them side by side.
        with ThreadPoolExecutor(max_workers=self.servers + 1) as pool:
            nodes = list(pool.map(lambda i: self._create(i == self.servers, i, furl),
                                  range(self.servers + 1)))  # fmt: skip
        for node in nodes:
            self._run(node)
        self.wait_for_servers(CONNECT_TIMEOUT)

    def _create(self, client: bool, index: int, furl: str) -> _Node:
        """``tahoe create-node``/``create-client`` (the node's keys folder and its introducer
        list), then :func:`tahoe_cfg` writes the configuration."""
        name = "client" if client else f"storage{index}"
        node = _Node(name, self.folder / name)
        tub_port = None if client else free_port()
        web_port = free_port() if client else None
        if client:
            self._tahoe("create-client", "--introducer", furl, "--webport", "none",
                        str(node.folder))  # fmt: skip
        else:
            self._tahoe("create-node", "--introducer", furl, "--webport", "none", "--port",
                        f"tcp:{tub_port}:interface=127.0.0.1", "--location",
                        f"tcp:127.0.0.1:{tub_port}", str(node.folder))  # fmt: skip
        if web_port is not None:
            self.web_port = web_port
        (node.folder / "tahoe.cfg").write_text(
            tahoe_cfg(nickname=name, tub_port=tub_port, web_port=web_port, encoding=self.encoding)
        )
        return node

    def _wait_file(self, path: Path, node: _Node, timeout: float = CONNECT_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive(node)
            if path.exists() and path.read_text().strip():
                return path.read_text().strip()
            time.sleep(0.2)
        raise TimeoutError(f"{node.name} did not write {path} within {timeout:.0f} s")

    def _check_alive(self, node: _Node) -> None:
        if node.process is not None and node.process.poll() is not None:
            log = (self.folder / f"{node.name}.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"tahoe {node.name} exited ({node.process.returncode}):\n{log}")

    def welcome(self) -> dict[str, Any]:
        """The client's welcome page as JSON (``GET /?t=json``)."""
        with urllib.request.urlopen(self.web_url + "/?t=json", timeout=10) as response:
            return dict(json.loads(response.read()))

    def connected_servers(self) -> int:
        """Storage servers the client is connected to and has the version of (usable)."""
        try:
            servers = self.welcome()["servers"]
        except (OSError, urllib.error.URLError, ValueError):
            return 0
        return sum(1 for s in servers
                   if str(s.get("connection_status", "")).lower().startswith("connected")
                   and s.get("version"))  # fmt: skip

    def wait_for_servers(self, timeout: float) -> None:
        """Poll the client's web API until it sees every storage server."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for node in self.nodes:
                self._check_alive(node)
            seen = self.connected_servers()
            if seen >= self.servers:
                _progress(f"client connected to {seen} storage servers")
                return
            time.sleep(0.25)
        raise TimeoutError(f"the Tahoe client saw {seen} of {self.servers} storage servers "
                           f"after {timeout:.0f} s (logs in {self.folder})")  # fmt: skip

    def pids(self) -> list[int]:
        return [n.process.pid for n in self.nodes if n.process is not None]

    def stop(self) -> None:
        """SIGTERM every node's process group, SIGKILL what is left after a timeout."""
        running = [n.process for n in self.nodes if n.process and n.process.poll() is None]
        for process in running:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        for node in self.nodes:
            if node.process is not None and node.process.stdin is not None:
                node.process.stdin.close()
        self.nodes.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


# --- curl, for both systems ------------------------------------------------------------------

#: curl's defaults otherwise. Its "Expect: 100-continue" on large uploads stays: both servers
#: answer it at once (aiohttp and Twisted alike), and removing it with ``-H Expect:`` would
#: make curl sign an empty "expect" header it then does not send (S3 rejects that).
CURL = ("curl", "--silent", "--show-error", "--fail-with-body", "--http1.1")


def curl(*args: str) -> str:
    """Run curl with ``args``; its stdout, or a RuntimeError with the server's answer."""
    done = subprocess.run([*CURL, *args], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"curl {args[-1]} failed ({done.returncode}): "
                           f"{done.stderr.strip()} {done.stdout.strip()[:500]}")  # fmt: skip
    return done.stdout


def curl_put(url: str, source: Path, extra: tuple[str, ...] = ()) -> str:
    """PUT the file ``source`` to ``url`` with curl; returns the response body."""
    return curl(*extra, "-T", str(source), url)


def curl_get(url: str, target: Path, extra: tuple[str, ...] = ()) -> None:
    """GET ``url`` into the file ``target`` with curl."""
    curl(*extra, "-o", str(target), url)


def tahoe_put(grid: TahoeGrid, source: Path) -> str:
    """Upload ``source`` as an immutable file (``PUT /uri``); returns its read cap."""
    cap = curl_put(grid.web_url + "/uri", source).strip()
    if not cap.startswith("URI:CHK:"):
        raise RuntimeError(f"Tahoe answered the upload with {cap[:200]!r}, not a CHK cap")
    return cap


def tahoe_get(grid: TahoeGrid, cap: str, target: Path) -> None:
    """Download the immutable file ``cap`` (``GET /uri/<cap>``) into ``target``."""
    curl_get(f"{grid.web_url}/uri/{urllib.parse.quote(cap, safe='')}", target)


def chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while piece := handle.read(size):
            yield piece


# --- the comparison ---------------------------------------------------------------------------

MIB = 1 << 20
#: ``object_io.py --compare tahoe`` asks for this many times Tahoe's throughput, each way.
TAHOE_TARGET = 4.0
SIGV4 = "aws:amz:us-east-1:s3"


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used so far (``/proc/PID/stat``)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def _write_source(path: Path, size: int) -> None:
    """Fresh random bytes for every round: Tahoe's convergent encryption would find the
    shares of a repeated file already stored and skip writing them."""
    with open(path, "wb") as handle:
        left = size
        while left:
            piece = os.urandom(min(left, 16 * MIB))
            handle.write(piece)
            left -= len(piece)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    for piece in chunks(path):
        digest.update(piece)
    return digest.hexdigest()


@dataclass
class _Minigrid:
    """The S3 gateway of node 0 of a minigrid cluster, through curl's own SigV4 signing."""

    url: str
    user: str

    def _auth(self) -> tuple[str, ...]:
        # UNSIGNED-PAYLOAD, as the CLI's client and object_io's cluster mode send it.
        return ("--aws-sigv4", SIGV4, "--user", self.user,
                "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD")  # fmt: skip

    def make_bucket(self, bucket: str) -> None:
        curl(*self._auth(), "-X", "PUT", f"{self.url}/{bucket}")

    def put(self, key: str, source: Path) -> None:
        curl_put(f"{self.url}/{key}", source, self._auth())

    def get(self, key: str, target: Path) -> None:
        curl_get(f"{self.url}/{key}", target, self._auth())

    def delete(self, key: str) -> None:
        curl(*self._auth(), "-X", "DELETE", f"{self.url}/{key}")


def _timed(action: Callable[[], None], pids: list[int]) -> tuple[float, float]:
    """Wall seconds and the CPU seconds ``pids`` spent while ``action()`` ran."""
    cpu = _cpu_seconds(pids)
    started = time.perf_counter()
    action()
    return time.perf_counter() - started, _cpu_seconds(pids) - cpu


def _median(values: list[float]) -> float:
    return statistics.median(values)


@dataclass
class _Round:
    """One round's file in both systems: minigrid's key and, once put, Tahoe's read cap."""

    grid: TahoeGrid
    minigrid: _Minigrid
    key: str
    cap: str = ""

    def put(self, system: str, source: Path) -> None:
        if system == "tahoe":
            self.cap = tahoe_put(self.grid, source)
        else:
            self.minigrid.put(self.key, source)

    def get(self, system: str, target: Path) -> None:
        if system == "tahoe":
            tahoe_get(self.grid, self.cap, target)
        else:
            self.minigrid.get(self.key, target)


def _compare_rounds(
    grid: TahoeGrid,
    minigrid: _Minigrid,
    node_pids: list[int],
    folder: Path,
    size: int,
    rounds: int,
) -> dict[str, dict[str, list[float]]]:
    """Every round: a new file, put to both systems, then got back from both (the order of the
    systems alternates), each checked byte for byte by SHA-256 after its timing ended."""
    times: dict[str, dict[str, list[float]]] = {
        system: {"put": [], "get": [], "put_cpu": [], "get_cpu": []}
        for system in ("tahoe", "minigrid")
    }  # fmt: skip
    pids = {"tahoe": grid.pids(), "minigrid": node_pids}
    source, back = folder / "source.bin", folder / "back.bin"
    for index in range(rounds):
        _write_source(source, size)
        expected = _sha256(source)
        order = ["tahoe", "minigrid"] if index % 2 == 0 else ["minigrid", "tahoe"]
        one = _Round(grid, minigrid, f"bench/tahoe-compare-{index}")
        for verb in ("put", "get"):
            for system in order:
                if verb == "put":
                    wall, cpu = _timed(partial(one.put, system, source), pids[system])
                else:
                    wall, cpu = _timed(partial(one.get, system, back), pids[system])
                    if _sha256(back) != expected:
                        raise RuntimeError(f"{system} returned different bytes in round {index}")
                times[system][verb].append(wall)
                times[system][f"{verb}_cpu"].append(cpu)
                _progress(f"round {index + 1}/{rounds}: {system} {verb} {wall:.2f} s")
        minigrid.delete(one.key)
    source.unlink()
    back.unlink(missing_ok=True)
    return times


def compare_tahoe(
    size_mib: int,
    rounds: int,
    parity: int,
    servers: int = 4,
    version: str = TAHOE_VERSION,
    fsync: bool = True,
) -> dict[str, Any]:
    """``object_io.py --compare tahoe``: ``size_mib`` put and got through Tahoe-LAFS's web API
    and through minigrid's S3 gateway (a 4 x 2 cluster, fsync on unless ``fsync`` is False),
    with curl for both, alternating, ``rounds`` times; medians. See benchmarks/README.md."""
    import tempfile

    from cli.cluster import cluster_up, stop_nodes

    tahoe = ensure_tahoe(version=version)
    data = 8 - parity
    encoding = encoding_for(data, parity, servers)
    size = size_mib * MIB
    with tempfile.TemporaryDirectory(prefix="objio-tahoe-") as tmp:
        folder = Path(tmp)
        (folder / "tahoe").mkdir()
        cluster = None
        try:
            with TahoeGrid(tahoe, folder / "tahoe", servers, encoding) as grid:
                _progress("starting the minigrid cluster (4 nodes x 2 drives)")
                cluster = cluster_up(folder / "minigrid", nodes=4, drives=2, base_port=0,
                                     parity=parity, fsync=fsync).cluster  # fmt: skip
                config = cluster.config
                minigrid = _Minigrid(cluster.urls[0],
                                     f"{config['access_key']}:{config['secret_key']}")  # fmt: skip
                minigrid.make_bucket("bench")
                node_pids = [p.pid for p in cluster.processes if p.pid is not None]
                times = _compare_rounds(grid, minigrid, node_pids, folder, size, rounds)
        finally:
            if cluster is not None:
                stop_nodes(cluster)
    result = compare_result(times, size_mib, rounds, servers, encoding, version, fsync)
    result["tahoe_encoding"]["max_segment_size"] = segment_size(tahoe)
    return result


def compare_result(
    times: dict[str, dict[str, list[float]]],
    size_mib: int,
    rounds: int,
    servers: int,
    encoding: Encoding,
    version: str,
    fsync: bool = True,
) -> dict[str, Any]:
    """The JSON keys (see benchmarks/README.md) from every round's seconds and CPU seconds.
    A ratio is minigrid over Tahoe: > 1 means minigrid is faster or uses less CPU."""
    mbps = {f"{system}_{verb}_mbps": round(size_mib / _median(times[system][verb]), 1)
            for system in ("tahoe", "minigrid") for verb in ("put", "get")}  # fmt: skip
    result: dict[str, Any] = {"mode": "compare-tahoe", "size_mib": size_mib, "rounds": rounds,
                              "cpus": os.cpu_count(), "client": "curl", **mbps}  # fmt: skip
    for verb in ("put", "get"):
        tahoe, ours = times["tahoe"][verb], times["minigrid"][verb]
        result[f"{verb}_vs_tahoe"] = round(_median(tahoe) / _median(ours), 2)
        # Each round put (or got) the same file through both, back to back.
        result[f"{verb}_vs_tahoe_rounds"] = [
            round(t / o, 2) for t, o in zip(tahoe, ours, strict=True)
        ]
        cpu = _median(times["tahoe"][f"{verb}_cpu"]) / max(
            _median(times["minigrid"][f"{verb}_cpu"]), 0.01
        )
        result[f"{verb}_cpu_vs_tahoe"] = round(cpu, 2)
    result["tahoe_target"] = TAHOE_TARGET
    result["tahoe_put_target_met"] = result["put_vs_tahoe"] >= TAHOE_TARGET
    result["tahoe_get_target_met"] = result["get_vs_tahoe"] >= TAHOE_TARGET
    result["tahoe_version"] = version
    result["tahoe_encoding"] = {**encoding.as_dict(), "expansion": encoding.expansion,
                                "storage_servers": servers}  # fmt: skip
    result["minigrid_layout"] = {
        "nodes": 4, "drives_per_node": 2, "data": encoding.needed,
        "parity": encoding.total - encoding.needed, "fsync": fsync, "tls": False,
    }  # fmt: skip
    for system in ("tahoe", "minigrid"):
        for verb in ("put", "get"):
            result[f"{system}_{verb}_cpu_s"] = round(_median(times[system][f"{verb}_cpu"]), 2)
            result[f"{system}_{verb}_rounds_s"] = [round(t, 3) for t in times[system][verb]]
    return result
