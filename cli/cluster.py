"""``minigrid cluster up | status | down``: a local cluster of node processes on 127.0.0.1.

``up`` writes everything about the cluster into ``DIR/cluster.json`` (mode 0600): the node
configuration that every node reads (``minigrid node run --config DIR/cluster.json --node N``),
the generated secrets and keys, and under ``"cluster"`` the processes (PID, start time, log).

How the nodes are started:

- the CLI binds every node's port itself first, so a taken port fails at once and is named;
  each node inherits its bound socket (``--listen-fd``), so nothing can take the port between
  the check and the node's start (and ``--base-port 0`` gives free ports);
- each node is a new session (``setsid``), detached from the terminal, with stdin from
  /dev/null and stdout/stderr appended to ``DIR/logs/nodeN.log``;
- everything ``up`` writes is owner-only: the directories 0700, ``cluster.json`` and the logs
  0600 (the nodes themselves run with umask 077);
- ``up`` returns once every node's ``/minigrid/health/ready`` answers 200, or fails within the
  timeout naming the node, its log and the log's last lines (and stops what it started).

With ``--tls`` (chosen when the cluster is created) ``up`` makes a private CA and one certificate
per node in ``DIR/tls`` (keys 0600, see :mod:`minigrid.tls`), the node URLs are ``https://``,
each node gets its own ``--tls-cert``/``--tls-key``, and ``cluster.json`` records the CA as
``tls_ca``: the nodes verify each other with it, and the CLI verifies the nodes with it.

A PID is trusted only together with the process's start time from ``/proc/PID/stat``, so a
reused PID is never mistaken for a node (and never signalled).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import string
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from cli.netns import NetnsError, Topology, pick_subnet, sweep, tag_for, unavailable
from minigrid.tls import KeyPair, issue_certificate, make_ca
from node.config import OPTIONS, ConfigError, choose_set_size

CLUSTER_FILE = "cluster.json"
DEFAULT_DATA_DIR = ".minigrid"
DATA_DIR_ENV = "MINIGRID_DATA_DIR"
UP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RESTART_BIND_GRACE = 5.0
HOST = "127.0.0.1"
PRIVATE_UMASK = 0o077
OPTION_NAMES = frozenset(option.name for option in OPTIONS)
#: Options ``cluster up`` decides itself: the layout, the identities and the keys.
FIXED_OPTIONS = frozenset(
    {"nodes", "node", "deployment_id", "secret", "access_key", "secret_key",
     "admin_access_key", "admin_secret_key", "listen", "listen_fd", "log_file"}
)  # fmt: skip
TLS_DIR = "tls"


class ClusterError(Exception):
    """The cluster cannot do what was asked; the message says why and what to do."""


def resolve_data_dir(option: str | None) -> Path:
    """``--data-dir``, else ``$MINIGRID_DATA_DIR``, else ``./.minigrid``."""
    return Path(option or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).absolute()


def command_hint(command: str, data_dir: Path) -> str:
    """How to run ``minigrid COMMAND`` on the cluster in ``data_dir``: with ``--data-dir``
    unless it is the default ``./.minigrid``, so the hint works when copied as it is."""
    if data_dir == Path(DEFAULT_DATA_DIR).absolute():
        return f"minigrid {command}"
    return f"minigrid {command} --data-dir {shlex.quote(str(data_dir))}"


# --- processes --------------------------------------------------------------------------------


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def pid_alive(pid: int | None, ticks: int | None) -> bool:
    """Whether ``pid`` is still the process that was started (same start time), not a zombie."""
    if not pid:
        return False
    # Reap it if it is our own child that has exited (tests start nodes in-process).
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


@dataclass
class NodeProcess:
    node: int
    pid: int | None = None
    ticks: int | None = None
    log: str = ""

    def alive(self) -> bool:
        return pid_alive(self.pid, self.ticks)

    def signal(self, signum: int) -> bool:
        """Send ``signum`` if the process is still the node; False if it was not running."""
        if not self.alive():
            return False
        assert self.pid is not None
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "pid": self.pid, "start_ticks": self.ticks, "log": self.log}


# --- cluster.json -----------------------------------------------------------------------------


def _key(length: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def new_credentials() -> dict[str, str]:
    upper = string.ascii_uppercase + string.digits
    mixed = string.ascii_letters + string.digits
    return {
        "secret": secrets.token_hex(32),
        "access_key": "MG" + _key(18, upper),
        "secret_key": _key(40, mixed),
        "admin_access_key": "MGADMIN" + _key(13, upper),
        "admin_secret_key": _key(40, mixed),
    }


@dataclass
class ClusterFile:
    """``DIR/cluster.json``: the node configuration plus the local processes."""

    path: Path
    config: dict[str, Any]
    processes: list[NodeProcess] = field(default_factory=list)
    created: str = ""
    #: ``cluster up --netns``: the namespaces, bridge and addresses made (see cli.netns).
    netns: dict[str, Any] | None = None

    @property
    def data_dir(self) -> Path:
        return self.path.parent

    @property
    def urls(self) -> list[str]:
        return [str(node["url"]) for node in self.config["nodes"]]

    def log_path(self, node: int) -> Path:
        return self.data_dir / "logs" / f"node{node}.log"

    @property
    def tls(self) -> bool:
        """Whether the nodes serve TLS (their URLs are https://)."""
        return all(url.startswith("https://") for url in self.urls)

    @property
    def ca(self) -> str | None:
        """The CA the nodes' certificates are verified against (None: plaintext cluster)."""
        return str(self.config["tls_ca"]) if self.config.get("tls_ca") else None

    def node_tls(self, node: int) -> KeyPair:
        """Where node ``node``'s certificate and key are."""
        folder = self.data_dir / TLS_DIR
        return KeyPair(folder / f"node{node}.crt", folder / f"node{node}.key")

    @classmethod
    def load(cls, data_dir: Path) -> ClusterFile | None:
        path = data_dir / CLUSTER_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClusterError(f"cannot read {path}: {exc}") from exc
        local = raw.pop("cluster", {})
        raw.pop("version", None)
        processes = [
            NodeProcess(int(p["node"]), p.get("pid"), p.get("start_ticks"), str(p.get("log", "")))
            for p in local.get("processes", [])
        ]
        return cls(path, raw, processes, str(local.get("created", "")), local.get("netns"))

    @property
    def topology(self) -> Topology | None:
        """The namespaces of a ``--netns`` cluster (None: processes on 127.0.0.1)."""
        return Topology.from_dict(self.netns) if self.netns else None

    def save(self) -> None:
        """Write atomically, readable by the owner only (it holds the secrets)."""
        document = {
            "version": 1,
            **self.config,
            "cluster": {
                "data_dir": str(self.data_dir),
                "created": self.created,
                "processes": [p.to_dict() for p in self.processes],
                **({"netns": self.netns} if self.netns else {}),
            },
        }
        tmp = self.path.with_name(f".{CLUSTER_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def process(self, node: int) -> NodeProcess:
        for entry in self.processes:
            if entry.node == node:
                return entry
        entry = NodeProcess(node, log=str(self.log_path(node)))
        self.processes.append(entry)
        self.processes.sort(key=lambda p: p.node)
        return entry


def new_cluster(
    data_dir: Path,
    nodes: int,
    drives: int,
    ports: list[int],
    parity: int | None,
    profile: str,
    fsync: bool | None = None,
    tls: bool = False,
    options: Mapping[str, Any] | None = None,
    hosts: list[str] | None = None,
) -> ClusterFile:
    scheme = "https" if tls else "http"
    hosts = hosts or [HOST] * len(ports)
    node_list = [
        {
            "url": f"{scheme}://{hosts[n]}:{port}",
            "drives": [str(data_dir / f"node{n}" / f"d{d}") for d in range(drives)],
        }
        for n, port in enumerate(ports)
    ]
    config: dict[str, Any] = {
        "nodes": node_list,
        "deployment_id": str(uuid.uuid4()),
        **new_credentials(),
        "region": "us-east-1",
        "profile": profile,
    }
    if parity is not None:
        config["parity"] = parity
    if fsync is not None:
        config["fsync"] = "on" if fsync else "off"
    if tls:
        config["tls_ca"] = str(data_dir / TLS_DIR / "ca.crt")
    for name, value in (options or {}).items():
        if name not in OPTION_NAMES or name in FIXED_OPTIONS:
            raise ClusterError(f"{name!r} is not a node option cluster up can set")
        config[name] = value
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return ClusterFile(data_dir / CLUSTER_FILE, config, [], created)


def ensure_certificates(cluster: ClusterFile) -> None:
    """Make the private CA and each node's certificate, where they do not exist yet."""
    folder = cluster.data_dir / TLS_DIR
    ca = KeyPair(folder / "ca.crt", folder / "ca.key")
    if not (ca.cert.exists() and ca.key.exists()):
        ca = make_ca(folder, name=f"minigrid private CA ({cluster.data_dir.name})")
    for node, url in enumerate(cluster.urls):
        pair = cluster.node_tls(node)
        if not (pair.cert.exists() and pair.key.exists()):
            host = url.split("://", 1)[1].rsplit(":", 1)[0]
            issue_certificate(ca, folder, f"node{node}", [host])


# --- starting ---------------------------------------------------------------------------------


def bind_port(port: int, node: int, grace: float = 0.0) -> socket.socket:
    """A listening socket on 127.0.0.1:port (0 = any free port), or a clear error.

    ``grace``: keep trying this long while the port is in use. The connections of a node that
    was just killed linger in the kernel for a moment and can hold its port."""
    deadline = time.monotonic() + grace
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            break
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            error = exc
        if error.errno == errno.EADDRINUSE:
            raise ClusterError(
                f"port {port} (node {node}) is already in use: stop what uses it, or pick "
                f"other ports with --base-port"
            ) from error
        raise ClusterError(f"cannot listen on {HOST}:{port} (node {node}): {error}") from error
    sock.listen(1024)
    return sock


def bind_ports(ports: dict[int, int], grace: float = 0.0) -> dict[int, socket.socket]:
    """Bind every node's port (``{node: port}``), or none of them."""
    sockets: dict[int, socket.socket] = {}
    try:
        for node, port in ports.items():
            sockets[node] = bind_port(port, node, grace)
    except ClusterError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def spawn_node(cluster: ClusterFile, node: int, sock: socket.socket | None) -> NodeProcess:
    """Start node ``node`` detached, on the already-listening ``sock``; with no socket (a
    ``--netns`` cluster) the node binds its own address inside its namespace."""
    entry = cluster.process(node)
    log_path = cluster.log_path(node)
    log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = sock.fileno() if sock is not None else -1
    argv = [
        sys.executable, "-m", "cli.main", "node", "run",
        "--config", str(cluster.path), "--node", str(node),
    ]  # fmt: skip
    executable = sys.executable
    topology = cluster.topology
    if topology is not None:  # `ip netns exec` execs the node: the PID stays the node's
        executable = shutil.which("ip") or "/usr/sbin/ip"
        argv = ["ip", "netns", "exec", topology.namespace(node), *argv]
    else:
        argv += ["--listen-fd", str(fd)]
    if cluster.tls:
        pair = cluster.node_tls(node)
        argv += ["--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]
    # The node takes its configuration from cluster.json alone: MINIGRID_* variables meant for
    # the object commands (MINIGRID_ACCESS_KEY, ...) must not override it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIGRID_")}
    env["PYTHONUNBUFFERED"] = "1"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with os.fdopen(log_fd, "ab") as log:
        os.fchmod(log_fd, 0o600)  # a log left by an older version may be world-readable
        log.write(f"--- starting node {node} at {dt.datetime.now().isoformat()}\n".encode())
    if fd >= 0:
        os.set_inheritable(fd, True)
    try:
        pid = os.posix_spawn(
            executable,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o600),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ],
            setsid=True,
        )  # fmt: skip
    finally:
        if fd >= 0:
            os.set_inheritable(fd, False)
    entry.pid, entry.ticks, entry.log = pid, start_ticks(pid), str(log_path)
    return entry


def tls_context(ca: str | None) -> ssl.SSLContext:
    """What the CLI verifies a node's certificate with: ``ca``, or the system's trust store."""
    return ssl.create_default_context(cafile=ca)


def http_json(url: str, timeout: float = 1.0, ca: str | None = None) -> tuple[int, dict[str, Any]]:
    """GET ``url``: ``(status, JSON body)``; status 0 when there is no answer. An https URL's
    certificate is verified against ``ca`` (or the system's trust store)."""
    context = tls_context(ca) if url.startswith("https://") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read() or b"{}")
        except ValueError:
            body = {}
        exc.close()
        return exc.code, body
    except (OSError, ValueError) as exc:
        cause = getattr(exc, "reason", exc)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return 0, {"reason": f"its certificate is not trusted ({cause.verify_message}); "
                                 "give the cluster's CA with --tls-ca"}  # fmt: skip
        return 0, {"reason": f"no answer: {cause}"}


def readiness(url: str, timeout: float = 1.0, ca: str | None = None) -> tuple[bool, dict[str, Any]]:
    status, body = http_json(url + "/minigrid/health/ready", timeout, ca)
    return status == 200, body


def log_tail(path: str | Path, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:])


def wait_ready(cluster: ClusterFile, timeout: float) -> None:
    """Wait until every node answers ready; fail naming the first node that did not."""
    deadline = time.monotonic() + timeout
    pending = dict(enumerate(cluster.urls))
    last: dict[int, dict[str, Any]] = {}
    while pending:
        for node, url in list(pending.items()):
            entry = cluster.process(node)
            if not entry.alive():
                raise ClusterError(
                    f"node {node} ({url}) exited during startup; its log {entry.log} ends:\n"
                    f"{log_tail(entry.log)}"
                )
            ok, body = readiness(
                url, timeout=min(1.0, max(0.1, deadline - time.monotonic())), ca=cluster.ca
            )
            if ok:
                del pending[node]
            else:
                last[node] = body
        if not pending:
            return
        if time.monotonic() >= deadline:
            node = min(pending)
            entry = cluster.process(node)
            reason = last.get(node, {}).get("reason", "no answer")
            raise ClusterError(
                f"node {node} ({pending[node]}) did not become ready within {timeout:.0f}s "
                f"({reason}); its log {entry.log} ends:\n{log_tail(entry.log)}"
            )
        time.sleep(0.1)


@dataclass
class UpResult:
    cluster: ClusterFile
    started: list[int]
    already_running: bool


def cluster_up(
    data_dir: Path,
    *,
    nodes: int | None = None,
    drives: int | None = None,
    base_port: int | None = None,
    parity: int | None = None,
    profile: str | None = None,
    tls: bool | None = None,
    timeout: float = UP_TIMEOUT,
    fsync: bool | None = None,
    options: Mapping[str, Any] | None = None,
    netns: bool | None = None,
) -> UpResult:
    """Start the cluster in ``data_dir`` (create it if new); start only nodes that are down.

    ``fsync`` None leaves the nodes' default (on) for a new cluster. ``tls`` (when creating):
    serve TLS with certificates from a new private CA. ``options`` (when creating): more node
    options for ``cluster.json`` (labs and tests: heal speed, intervals, profiles, ...).
    ``netns`` (when creating, root only): each node in its own network namespace, with its own
    address on a bridge (see :mod:`cli.netns`).
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data_dir / "logs").mkdir(mode=0o700, exist_ok=True)
    cluster = ClusterFile.load(data_dir)
    sockets: dict[int, socket.socket | None]
    if cluster is None:
        cluster, sockets = _create(data_dir, nodes, drives, base_port, parity, profile, fsync,
                                   bool(tls), options, bool(netns))  # fmt: skip
    else:
        _check_same(cluster, nodes, drives, base_port, parity, profile, fsync, tls, netns)
        for name, value in (options or {}).items():
            if str(cluster.config.get(name)) != str(value):
                raise ClusterError(
                    f"a cluster already exists in {cluster.data_dir} with {name}="
                    f"{cluster.config.get(name)!r}; options apply only when a cluster is created"
                )
        down = [n for n in range(len(cluster.urls)) if not cluster.process(n).alive()]
        topology = cluster.topology
        if topology is not None:
            _ensure_topology(topology, bool(down))
            sockets = dict.fromkeys(down)
        else:
            wanted = {n: int(cluster.urls[n].rsplit(":", 1)[1]) for n in down}
            sockets = dict(bind_ports(wanted, grace=RESTART_BIND_GRACE))
    started = sorted(sockets)
    try:
        if cluster.tls:
            ensure_certificates(cluster)
        cluster.save()
        for n in started:
            spawn_node(cluster, n, sockets[n])
            cluster.save()  # after each start, so no PID is ever lost
    finally:
        for sock in sockets.values():
            if sock is not None:
                sock.close()
    try:
        wait_ready(cluster, timeout)
    except ClusterError:
        stop_nodes(cluster, started)
        raise
    return UpResult(cluster, started, already_running=not started)


def _create(data_dir: Path, nodes: int | None, drives: int | None, base_port: int | None,
            parity: int | None, profile: str | None, fsync: bool | None, tls: bool,
            options: Mapping[str, Any] | None, netns: bool,
            ) -> tuple[ClusterFile, dict[int, socket.socket | None]]:  # fmt: skip
    """A new cluster.json, and the listening sockets its nodes inherit (none with netns)."""
    count, per_node = nodes or 4, drives or 2
    try:
        choose_set_size(count * per_node, count)
    except ConfigError as exc:
        raise ClusterError(f"{count} nodes x {per_node} drives: {exc}") from exc
    base = 9000 if base_port is None else base_port
    if not netns:
        bound = bind_ports({n: base + n if base else 0 for n in range(count)})
        ports = [bound[n].getsockname()[1] for n in range(count)]
        cluster = new_cluster(data_dir, count, per_node, ports, parity, profile or "fast",
                              fsync, tls=tls, options=options)  # fmt: skip
        return cluster, dict(bound)
    reason = unavailable()
    if reason:
        raise ClusterError(f"--netns: {reason}")
    tag = tag_for(data_dir)
    try:
        topology = Topology(tag, pick_subnet(tag), count)
    except NetnsError as exc:
        raise ClusterError(f"--netns: {exc}") from exc
    hosts = [topology.address(n) for n in range(count)]
    cluster = new_cluster(data_dir, count, per_node, [base or 9000] * count, parity,
                          profile or "fast", fsync, tls=tls, options=options,
                          hosts=hosts)  # fmt: skip
    cluster.netns = topology.to_dict()
    _ensure_topology(topology, True)
    return cluster, dict.fromkeys(range(count))


def _ensure_topology(topology: Topology, needed: bool) -> None:
    """Make the namespaces and the bridge if they are not there (after a ``down``)."""
    if not needed or Path(f"/run/netns/{topology.namespace(0)}").exists():
        return
    try:
        topology.create()
    except NetnsError as exc:
        raise ClusterError(f"--netns: {exc}") from exc


def _parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs from ``-o``; the nodes check each value when they start."""
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in OPTION_NAMES:
            raise click.BadParameter(
                f"{pair!r}: give NAME=VALUE with a node option name (see 'minigrid node run "
                "--help')",
                param_hint="-o/--option",
            )
        options[name] = value
    return options


def _check_same(
    cluster: ClusterFile,
    nodes: int | None,
    drives: int | None,
    base_port: int | None,
    parity: int | None,
    profile: str | None,
    fsync: bool | None = None,
    tls: bool | None = None,
    netns: bool | None = None,
) -> None:
    config = cluster.config
    have = {
        "--nodes": len(config["nodes"]),
        "--drives": len(config["nodes"][0]["drives"]),
        "--base-port": int(config["nodes"][0]["url"].rsplit(":", 1)[1]),
        "--parity": config.get("parity"),
        "--profile": config.get("profile", "fast"),
        "--fsync": config.get("fsync", "on"),
        "--tls": cluster.tls,
        "--netns": cluster.netns is not None,
    }
    wanted = {"--nodes": nodes, "--drives": drives, "--base-port": base_port,
              "--parity": parity, "--profile": profile,
              "--fsync": None if fsync is None else ("on" if fsync else "off"),
              "--tls": tls, "--netns": netns}  # fmt: skip
    for flag, value in wanted.items():
        if value is None or (flag == "--base-port" and value == 0) or value == have[flag]:
            continue
        raise ClusterError(
            f"a cluster already exists in {cluster.data_dir} with {_as_flag(flag, have[flag])}; "
            f"run '{command_hint('cluster down', cluster.data_dir)}' and remove the directory "
            f"to start a different one"
        )


def _as_flag(flag: str, value: object) -> str:
    """How a setting reads on the command line: ``--tls``, ``--no-tls``, ``--nodes 4``."""
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value}"


# --- stopping ---------------------------------------------------------------------------------


def _wait_gone(entries: list[NodeProcess], timeout: float) -> list[NodeProcess]:
    deadline = time.monotonic() + timeout
    alive = [e for e in entries if e.alive()]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [e for e in alive if e.alive()]
    return alive


def stop_nodes(cluster: ClusterFile, nodes: list[int] | None = None) -> list[int]:
    """SIGTERM each node's process, SIGKILL what is left after a timeout; returns the nodes
    that were running. Their PIDs are cleared from cluster.json."""
    chosen = [p for p in cluster.processes if nodes is None or p.node in nodes]
    running = [p for p in chosen if p.signal(signal.SIGTERM)]
    for entry in running:  # a frozen (SIGSTOPped) node must wake up to see its SIGTERM
        entry.signal(signal.SIGCONT)
    left = _wait_gone(running, STOP_TIMEOUT)
    for entry in left:
        entry.signal(signal.SIGKILL)
    still = _wait_gone(left, STOP_TIMEOUT)
    if still:
        raise ClusterError(f"processes {[e.pid for e in still]} did not stop, even with SIGKILL")
    for entry in chosen:
        entry.pid, entry.ticks = None, None
    cluster.save()
    return [e.node for e in running]


# --- status -----------------------------------------------------------------------------------


def cluster_status(cluster: ClusterFile) -> list[dict[str, Any]]:
    rows = []
    for node, url in enumerate(cluster.urls):
        entry = cluster.process(node)
        alive = entry.alive()
        ready, body = readiness(url, ca=cluster.ca) if alive else (False, {"reason": "not running"})
        rows.append(
            {
                "node": node,
                "url": url,
                "pid": entry.pid if alive else None,
                "alive": alive,
                "ready": ready,
                "drives_online": body.get("drives_online"),
                "drives": body.get("drives"),
                "reason": body.get("reason", ""),
                "log": entry.log or str(cluster.log_path(node)),
            }
        )
    return rows


# --- commands ---------------------------------------------------------------------------------

data_dir_option = click.option(
    "--data-dir", default=None, metavar="DIR",
    help=f"the cluster's directory [env {DATA_DIR_ENV}; default ./{DEFAULT_DATA_DIR}]",
)  # fmt: skip


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _require(data_dir: Path) -> ClusterFile:
    try:
        cluster = ClusterFile.load(data_dir)
    except ClusterError as exc:
        _fail(str(exc))
        raise AssertionError from exc  # not reached
    if cluster is None:
        _fail(f"no cluster in {data_dir} (start one with "
              f"'{command_hint('cluster up', data_dir)}')")
    assert cluster is not None
    return cluster


@click.group()
def cluster() -> None:
    """Start, inspect and stop a local cluster on 127.0.0.1."""


@cluster.command()
@click.option("--nodes", type=click.IntRange(1, 32), default=None, help="node processes [4]")
@click.option("--drives", type=click.IntRange(1, 16), default=None, help="drives per node [2]")
@data_dir_option
@click.option("--base-port", type=click.IntRange(0, 65535), default=None,
              help="port of node 0; node N listens on base+N (0 = free ports) [9000]")
@click.option("--parity", type=int, default=None, help="parity shards per set [by set size]")
@click.option("--profile", type=click.Choice(["fast", "minio"]), default=None,
              help="grid liveness profile [fast]")
@click.option("--tls/--no-tls", default=None,
              help="serve S3, admin and the grid over TLS, with a private CA in DIR/tls [no]")
@click.option("--timeout", type=float, default=UP_TIMEOUT, show_default=True,
              help="seconds to wait for every node to be ready")  # fmt: skip
@click.option("--fsync", type=click.Choice(["on", "off"]), default=None,
              help="off: faster writes a power cut can lose (labs, benchmarks) [on]")
@click.option("-o", "--option", "options", multiple=True, metavar="NAME=VALUE",
              help="another node option for a new cluster, e.g. -o heal_speed=fast "
                   "(any 'minigrid node run' option, by its config name)")
@click.option("--allow-faults", is_flag=True, default=False,
              help="let 'minigrid fault' break the nodes (a new cluster; same as "
                   "-o allow_faults=true)")
@click.option("--netns", is_flag=True, default=None,
              help="root: each node in its own network namespace with its own address on a "
                   "bridge (a new cluster)")  # fmt: skip
def up(
    nodes: int | None,
    drives: int | None,
    data_dir: str | None,
    base_port: int | None,
    parity: int | None,
    profile: str | None,
    tls: bool | None,
    timeout: float,
    fsync: str | None,
    options: tuple[str, ...],
    allow_faults: bool,
    netns: bool | None,
) -> None:
    """Start the nodes in the background and wait until the cluster is ready.

    Running it again is harmless: it starts only the nodes that are not running."""
    os.umask(PRIVATE_UMASK)  # whatever this command writes is the owner's alone
    folder = resolve_data_dir(data_dir)
    chosen = _parse_options(options)
    if allow_faults:
        chosen["allow_faults"] = "true"
    try:
        result = cluster_up(folder, nodes=nodes, drives=drives, base_port=base_port,
                            parity=parity, profile=profile, tls=tls, timeout=timeout,
                            fsync=None if fsync is None else fsync == "on",
                            options=chosen, netns=netns)  # fmt: skip
    except ClusterError as exc:
        _fail(str(exc))
        return
    urls = result.cluster.urls
    if result.already_running:
        click.echo(f"already running: {len(urls)} nodes, all ready ({folder})")
        _echo_hints(folder)
        return
    restarted = "" if len(result.started) == len(urls) else f" (started nodes {result.started})"
    click.echo(f"cluster ready: {len(urls)} nodes{restarted}")
    for node, url in enumerate(urls):
        click.echo(f"  node {node}  {url}")
    click.echo(f"credentials and PIDs: {result.cluster.path}")
    if result.cluster.ca:
        click.echo(f"TLS: nodes' certificates are signed by {result.cluster.ca}")
    click.echo(f"logs: {folder / 'logs'}")
    _echo_console(result.cluster)
    _echo_hints(folder)


def _echo_console(loaded: ClusterFile) -> None:
    """A one-time sign-in link to node 0's live console (see :mod:`cli.console`)."""
    from cli.console import console_link  # cli.console reaches cli.cluster through cli.admin

    config = loaded.config
    try:
        link = console_link(loaded.urls[0], str(config["admin_access_key"]),
                            str(config["admin_secret_key"]), str(config.get("region", "us-east-1")),
                            loaded.ca)  # fmt: skip
    except ValueError as exc:
        click.echo(f"console: no sign-in link ({exc})")
        return
    click.echo(f"console (a one-time sign-in link, good for 15 minutes): {link}")
    click.echo(f"another link: {command_hint('console', loaded.data_dir)}")


def _echo_hints(folder: Path) -> None:
    click.echo(f"status: {command_hint('cluster status', folder)}")
    click.echo(f"stop:   {command_hint('cluster down', folder)}")


@cluster.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status(data_dir: str | None, as_json: bool) -> None:
    """Show every node: PID, alive, ready and drives online."""
    folder = resolve_data_dir(data_dir)
    rows = cluster_status(_require(folder))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        sys.exit(0 if all(row["ready"] for row in rows) else 1)
    table = Table(title="minigrid cluster")
    for column in ("node", "url", "pid", "alive", "ready", "drives online", "note"):
        table.add_column(column)
    for row in rows:
        drives = "-" if row["drives"] is None else f"{row['drives_online']}/{row['drives']}"
        table.add_row(
            str(row["node"]), row["url"], str(row["pid"] or "-"), _yes(row["alive"]),
            _yes(row["ready"]), drives, "" if row["ready"] else str(row["reason"]),
        )  # fmt: skip
    Console().print(table)
    if not all(row["alive"] for row in rows):
        click.echo(f"start the nodes that are down: {command_hint('cluster up', folder)}")
    if not all(row["ready"] for row in rows):
        sys.exit(1)


def _yes(value: bool) -> str:
    return "[green]yes[/]" if value else "[red]no[/]"


@cluster.command()
@data_dir_option
@click.option("--force", is_flag=True,
              help="after a crash: also kill whatever runs in the cluster's namespaces and "
                   "remove every namespace, link and rule named for it")  # fmt: skip
def down(data_dir: str | None, force: bool) -> None:
    """Stop every node by its PID (SIGTERM, then SIGKILL after a timeout); a --netns cluster's
    namespaces, bridge and rules are removed too."""
    folder = resolve_data_dir(data_dir)
    try:
        loaded = ClusterFile.load(folder)
    except ClusterError as exc:
        if not force:
            _fail(str(exc))
        loaded = None
    if loaded is None and not force:
        _require(folder)
    stopped: list[int] = []
    if loaded is not None:
        try:
            stopped = stop_nodes(loaded)
        except ClusterError as exc:
            if not force:
                _fail(str(exc))
        topology = loaded.topology
        if topology is not None:
            topology.destroy()
            loaded.netns = {**topology.to_dict(), "routers": {}}
            loaded.save()
    removed = sweep(tag_for(folder)) if force and os.geteuid() == 0 else []
    click.echo(f"stopped {len(stopped)} node(s)" if stopped else "no node was running")
    if removed:
        click.echo(f"removed {len(removed)} leftover namespace(s) and link(s)")
    click.echo(f"the data stays in {folder}; start it again: {command_hint('cluster up', folder)}")


__all__ = [
    "ClusterError",
    "ClusterFile",
    "NodeProcess",
    "cluster",
    "cluster_status",
    "cluster_up",
    "command_hint",
    "pid_alive",
    "resolve_data_dir",
    "stop_nodes",
]
