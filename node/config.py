"""The node's configuration: one set of names for a file, the environment and flags.

Every option has one name. In a config file (JSON, or TOML when the name ends in ``.toml``) it
is the key (``access_key``); in the environment it is ``MINIGRID_`` plus the name in capitals
(``MINIGRID_ACCESS_KEY``); on the command line it is ``--`` plus the name with dashes
(``--access-key``). Flags win over the environment, which wins over the file.

The configuration lists **every** node of the cluster, each with its URL and drives, so that
every node builds the same ordered list of drives (:func:`drive_order`) and so the same erasure
sets. ``node`` says which entry this process is (its index, or its URL).

The layout is planned without any network round trip: the deployment ID comes from the
configuration, and the drive in global position ``p`` always gets the drive ID
``uuid5(deployment, "drive-p")`` (:func:`planned_formats`). Each node formats its own blank
drives at startup and refuses to start on a drive that holds another deployment or another
slot, so nodes that start at the same time can never disagree on the format.
"""

from __future__ import annotations

import json
import os
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final
from urllib.parse import urlsplit

from node.http_limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
)
from storage.errors import StorageError
from storage.format import FormatInfo
from storage.placement import MAX_SET_DRIVES, MIN_SET_DRIVES, check_parity, default_parity

ENV_PREFIX: Final = "MINIGRID_"
PROFILES: Final = ("fast", "minio")
HEAL_SPEEDS: Final = ("fastest", "fast", "default", "slow", "slowest")
LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")


class ConfigError(ValueError):
    """The configuration is missing something or contradicts itself."""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the cluster: its URL (``http://127.0.0.1:9000``) and its drive paths."""

    url: str
    drives: tuple[str, ...]

    @property
    def host(self) -> str:
        """The grid host string, ``127.0.0.1:9000``."""
        return urlsplit(self.url).netloc

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "drives": list(self.drives)}


@dataclass(frozen=True)
class Option:
    """One configuration option: its name, its kind and what it is for."""

    name: str
    kind: str  # "str", "int", "float", "bool", "onoff", "nodes" or "node"
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: Final[tuple[Option, ...]] = (
    Option("nodes", "nodes", "every node: 'URL=DRIVE,DRIVE' entries separated by spaces or ';'"),
    Option("node", "node", "which node this process is: its index in nodes, or its URL"),
    Option("secret", "str", "the cluster secret shared by every node (grid authentication)", True),
    Option("access_key", "str", "the S3 access key"),
    Option("secret_key", "str", "the S3 secret key", True),
    Option("admin_access_key", "str", "the admin access key (also valid for S3)"),
    Option("admin_secret_key", "str", "the admin secret key", True),
    Option("region", "str", "the S3 region requests must be signed for (us-east-1)"),
    Option("deployment_id", "str", "the deployment ID (derived from nodes when empty)"),
    Option("parity", "int", "parity shards per erasure set (default: by set size)"),
    Option("set_drive_count", "int", "drives per erasure set, 4-16 (default: chosen)"),
    Option("profile", "str", "grid liveness profile: fast or minio"),
    Option("listen", "str", "address to bind, host:port (default: from this node's URL)"),
    Option("listen_fd", "int", "serve on this already-listening socket (used by cluster up)"),
    Option("log_file", "str", "append the log here instead of stderr"),
    Option("log_level", "str", "debug, info, warning or error"),
    Option(
        "log_format",
        "str",
        "text (default): one readable line per event; json: one JSON object per line with "
        "time, level, node, component and event",
    ),
    Option("allow_faults", "bool", "allow fault injection through the admin API"),
    Option(
        "fsync",
        "onoff",
        "on (default): shards and metadata reach the disk before a write is acknowledged; "
        "off: faster, but a power cut can lose acknowledged writes (labs, benchmarks)",
    ),
    Option("max_connections", "int", "most HTTP connections open at once (1024); more get 503"),
    Option(
        "header_timeout",
        "float",
        "seconds a connection may take to send a request head, or stay idle (15)",
    ),
    Option(
        "body_timeout",
        "float",
        "seconds an S3 request or response body may send or read nothing (30)",
    ),
    Option(
        "liveness_scale",
        "float",
        "multiply the profile's ping, silence and stream timings (labs: minio at 0.1) (1)",
    ),
    Option(
        "tcp_keepidle",
        "int",
        "grid sockets: seconds idle before TCP keepalive's first probe (15; below NAT timeouts)",
    ),
    Option("tcp_keepintvl", "int", "grid sockets: seconds between TCP keepalive probes (5)"),
    Option(
        "grid_queue_mib",
        "int",
        "MiB of data a grid connection queues before senders wait for room (32)",
    ),
    Option(
        "heal_speed",
        "str",
        "pace of the scanner and the drive healer: fastest, fast, default, slow or slowest",
    ),
    Option("scanner_deep", "bool", "the scanner verifies every bitrot hash of every object"),
    Option("scanner_interval", "float", "seconds the scanner rests between cycles (1)"),
    Option("drive_check_interval", "float", "seconds between checks for blank drives (10)"),
    Option("mrf_delay", "float", "seconds MRF waits after a failure before it heals (1)"),
    Option(
        "stale_upload_age",
        "float",
        "seconds after which the scanner aborts an unfinished multipart upload (86400: a day)",
    ),
    Option(
        "unsafe_inline_heal",
        "bool",
        "UNSAFE: hash and erasure-code ON THE EVENT LOOP to starve grid pings on purpose "
        "(the missed-ping lab); never use it for real data",
    ),
    Option("unsafe_heal_slice_mib", "int", "MiB of work per unsafe slice on the loop (256)"),
    Option("tls_cert", "str", "PEM certificate (chain): serve S3, admin and the grid over TLS"),
    Option("tls_key", "str", "PEM private key of tls_cert"),
    Option(
        "tls_ca",
        "str",
        "PEM CA bundle that peers' certificates are verified against (default: the system's)",
    ),
)
_BY_NAME: Final = {option.name: option for option in OPTIONS}
#: Keys a config file may hold that the node itself ignores (cluster.json keeps its
#: bookkeeping of processes under "cluster").
IGNORED_FILE_KEYS: Final = frozenset({"cluster", "version"})


@dataclass(frozen=True)
class NodeConfig:
    """A node's whole configuration; build it with :func:`load_config`."""

    nodes: tuple[NodeSpec, ...]
    node: int
    secret: str
    access_key: str
    secret_key: str
    admin_access_key: str
    admin_secret_key: str
    region: str = "us-east-1"
    deployment_id: str = ""
    parity: int | None = None
    set_drive_count: int | None = None
    profile: str = "fast"
    listen: str = ""
    listen_fd: int | None = None
    log_file: str = ""
    log_level: str = "info"
    log_format: str = "text"
    allow_faults: bool = False
    fsync: bool = True
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    liveness_scale: float = 1.0
    tcp_keepidle: int = 15
    tcp_keepintvl: int = 5
    grid_queue_mib: int = 32
    heal_speed: str = "default"
    scanner_deep: bool = False
    scanner_interval: float = 1.0
    drive_check_interval: float = 10.0
    mrf_delay: float = 1.0
    stale_upload_age: float = 86_400.0
    unsafe_inline_heal: bool = False
    unsafe_heal_slice_mib: int = 256
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    layout: Layout = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_tls(self)
        object.__setattr__(self, "layout", plan_layout(self))

    @property
    def tls(self) -> bool:
        """Whether the node serves (and dials) over TLS."""
        return bool(self.tls_cert)

    @property
    def me(self) -> NodeSpec:
        return self.nodes[self.node]

    @property
    def host(self) -> str:
        return self.me.host

    @property
    def hosts(self) -> list[str]:
        return [spec.host for spec in self.nodes]

    def listen_address(self) -> tuple[str, int]:
        """``(host, port)`` to bind: ``listen`` when given, else this node's URL."""
        text = self.listen or self.host
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"listen address {text!r} is not host:port")
        return host.strip("[]"), int(port)

    def public_dict(self) -> dict[str, Any]:
        """The configuration with every secret replaced by ``***`` (for the admin API)."""
        out: dict[str, Any] = {}
        for option in OPTIONS:
            value = getattr(self, option.name)
            if option.kind == "nodes":
                value = [spec.to_dict() for spec in value]
            elif option.kind == "onoff":
                value = "on" if value else "off"
            out[option.name] = "***" if option.secret and value else value
        return out


# --- parsing ----------------------------------------------------------------------------------


def parse_nodes(value: object) -> tuple[NodeSpec, ...]:
    """Nodes from a file's list of ``{"url", "drives"}`` maps, or the ``URL=D,D ...`` text form."""
    entries: list[NodeSpec] = []
    if isinstance(value, str):
        for item in value.replace(";", " ").split():
            url, sep, drives = item.partition("=")
            if not sep:
                raise ConfigError(f"node {item!r} is not URL=DRIVE,DRIVE")
            entries.append(NodeSpec(url, tuple(d for d in drives.split(",") if d)))
    elif isinstance(value, list | tuple):
        for item in value:
            if isinstance(item, NodeSpec):
                entries.append(item)
            elif isinstance(item, str):
                entries.extend(parse_nodes(item))
            elif isinstance(item, Mapping) and "url" in item and "drives" in item:
                entries.append(NodeSpec(str(item["url"]), tuple(str(d) for d in item["drives"])))
            else:
                raise ConfigError(f"node entry {item!r} needs 'url' and 'drives'")
    else:
        raise ConfigError("nodes must be a list of {url, drives} or 'URL=DRIVE,DRIVE ...'")
    for spec in entries:
        parts = urlsplit(spec.url)
        if parts.scheme not in ("http", "https") or not parts.port or parts.path not in ("", "/"):
            raise ConfigError(f"node URL {spec.url!r} must look like http://host:port")
        if not spec.drives:
            raise ConfigError(f"node {spec.url} has no drives")
        for drive in spec.drives:
            if not os.path.isabs(drive):
                raise ConfigError(f"drive {drive!r} of {spec.url} must be an absolute path")
    return tuple(entries)


def _convert(option: Option, value: object) -> object:
    if value is None:
        return None
    if option.kind == "nodes":
        return parse_nodes(value)
    if option.kind in ("bool", "onoff"):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off") or (text == "" and option.kind == "bool"):
            return False
        wanted = "on or off" if option.kind == "onoff" else "true or false"
        raise ConfigError(f"{option.name} must be {wanted}, not {value!r}")
    if option.kind in ("int", "float"):
        if isinstance(value, str) and not value.strip():
            return None
        try:
            return int(str(value)) if option.kind == "int" else float(str(value))
        except ValueError:
            kind = "a whole number" if option.kind == "int" else "a number"
            raise ConfigError(f"{option.name} must be {kind}, not {value!r}") from None
    return str(value)


def read_config_file(path: str) -> dict[str, Any]:
    """The options in a JSON or TOML file; unknown keys are an error (they are usually typos)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a map of options")
    unknown = sorted(set(data) - set(_BY_NAME) - IGNORED_FILE_KEYS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown option(s) {', '.join(unknown)}")
    return {key: value for key, value in data.items() if key in _BY_NAME}


def load_config(
    file: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, object] | None = None,
) -> NodeConfig:
    """Merge the file, the environment (``MINIGRID_*``) and flags (``None`` = not given)."""
    env = os.environ if env is None else env
    file = file or env.get(ENV_PREFIX + "CONFIG") or None
    merged: dict[str, object] = {}
    if file:
        merged.update(read_config_file(file))
    for option in OPTIONS:
        if option.env in env:
            merged[option.name] = env[option.env]
    for name, value in (flags or {}).items():
        if value is not None:
            merged[name] = value
    values = {name: _convert(_BY_NAME[name], value) for name, value in merged.items()}
    return _build(values)


def _build(values: dict[str, object]) -> NodeConfig:
    missing = [
        name
        for name in ("nodes", "node", "secret", "access_key", "secret_key")
        if values.get(name) in (None, "")
    ]
    if missing:
        hints = ", ".join(f"{n} ({_BY_NAME[n].flag} or {_BY_NAME[n].env})" for n in missing)
        raise ConfigError(f"missing configuration: {hints}")
    nodes = values["nodes"]
    assert isinstance(nodes, tuple)
    values["node"] = _node_index(nodes, str(values["node"]))
    values.setdefault("admin_access_key", values["access_key"])
    values.setdefault("admin_secret_key", values["secret_key"])
    profile = values.get("profile", "fast")
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
    level = str(values.get("log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    values["log_level"] = level
    log_format = str(values.get("log_format", "text")).lower()
    if log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format must be text or json, not {values.get('log_format')!r}")
    values["log_format"] = log_format
    speed = values.get("heal_speed", "default")
    if speed not in HEAL_SPEEDS:
        raise ConfigError(f"heal_speed must be one of {', '.join(HEAL_SPEEDS)}, not {speed!r}")
    _check_limits(values)
    known = {f.name for f in fields(NodeConfig) if f.init}
    try:
        return NodeConfig(**{k: v for k, v in values.items() if k in known})  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _check_limits(values: dict[str, object]) -> None:
    """Limits and intervals must be positive (and finite): a zero would refuse or spin."""
    for name in (
        "max_connections",
        "header_timeout",
        "body_timeout",
        "scanner_interval",
        "drive_check_interval",
        "stale_upload_age",
        "liveness_scale",
        "tcp_keepidle",
        "tcp_keepintvl",
        "grid_queue_mib",
        "unsafe_heal_slice_mib",
    ):
        value = values.get(name)
        if value is None:
            values.pop(name, None)
        elif not isinstance(value, int | float) or not 0 < value < float("inf"):
            raise ConfigError(f"{name} must be a positive number, not {value!r}")


def _node_index(nodes: tuple[NodeSpec, ...], which: str) -> int:
    if which.isdigit():
        index = int(which)
        if index >= len(nodes):
            raise ConfigError(f"node {index} is out of range: there are {len(nodes)} nodes")
        return index
    for index, spec in enumerate(nodes):
        if which.rstrip("/") == spec.url.rstrip("/") or which == spec.host:
            return index
    raise ConfigError(f"node {which!r} is not one of the configured nodes")


def check_tls(config: NodeConfig) -> None:
    """TLS is all or nothing: with a certificate every node URL is https, without one none is
    (a node dials every peer the same way)."""
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("tls_cert and tls_key go together: give both, or neither")
    schemes = {urlsplit(spec.url).scheme for spec in config.nodes}
    if config.tls_cert and schemes != {"https"}:
        raise ConfigError("with tls_cert, every node URL must be https://")
    if not config.tls_cert and "https" in schemes:
        raise ConfigError(
            "https:// node URLs need tls_cert and tls_key (--tls-cert, --tls-key or "
            "MINIGRID_TLS_CERT, MINIGRID_TLS_KEY)"
        )
    for name in ("tls_cert", "tls_key", "tls_ca"):
        path = getattr(config, name)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{name} {path} is not a file")


# --- layout -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The cluster's drives in global order, cut into erasure sets."""

    drives: tuple[tuple[int, str], ...]  # (node index, drive path) in global position order
    set_drive_count: int
    parity: int
    deployment_id: str

    @property
    def set_count(self) -> int:
        return len(self.drives) // self.set_drive_count

    def sets(self) -> list[list[int]]:
        """Global positions, set by set."""
        size = self.set_drive_count
        return [list(range(i, i + size)) for i in range(0, len(self.drives), size)]


def drive_order(nodes: tuple[NodeSpec, ...]) -> tuple[tuple[int, str], ...]:
    """Every drive as ``(node index, path)``: each node's first drive, then each second, ...

    Interleaving the nodes this way spreads every erasure set over as many nodes as possible
    when there is more than one set (a node's drives are not all in the same set)."""
    order: list[tuple[int, str]] = []
    for depth in range(max(len(spec.drives) for spec in nodes)):
        for index, spec in enumerate(nodes):
            if depth < len(spec.drives):
                order.append((index, spec.drives[depth]))
    return tuple(order)


def choose_set_size(total: int, node_count: int) -> int:
    """The largest set size of 4-16 that divides the drives, preferring one that spreads
    evenly over the nodes (a multiple or divisor of the node count), as MinIO does."""
    sizes = [s for s in range(MAX_SET_DRIVES, MIN_SET_DRIVES - 1, -1) if total % s == 0]
    if not sizes:
        raise ConfigError(f"{total} drives cannot be cut into erasure sets of 4-16 drives")
    even = [s for s in sizes if s % node_count == 0 or node_count % s == 0]
    return (even or sizes)[0]


def plan_layout(config: NodeConfig) -> Layout:
    if not config.nodes:
        raise ConfigError("the configuration lists no nodes")
    hosts = [spec.host for spec in config.nodes]
    if len(set(hosts)) != len(hosts):
        raise ConfigError("two nodes have the same host:port")
    order = drive_order(config.nodes)
    size = config.set_drive_count or choose_set_size(len(order), len(config.nodes))
    if not MIN_SET_DRIVES <= size <= MAX_SET_DRIVES or len(order) % size:
        raise ConfigError(f"{len(order)} drives cannot form sets of {size} (4-16 each)")
    parity = default_parity(size) if config.parity is None else config.parity
    try:
        check_parity(size, parity)
    except StorageError as exc:
        raise ConfigError(str(exc)) from exc
    deployment = config.deployment_id or derive_deployment_id(config.nodes)
    return Layout(order, size, parity, deployment)


def derive_deployment_id(nodes: tuple[NodeSpec, ...]) -> str:
    """A deployment ID that every node computes the same from the same node list."""
    text = "|".join(f"{spec.url}={','.join(spec.drives)}" for spec in nodes)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "minigrid:" + text))


def planned_formats(layout: Layout) -> list[FormatInfo]:
    """The format of the drive at every global position (pure: every node computes the same)."""
    try:
        namespace = uuid.UUID(layout.deployment_id)
    except ValueError:
        namespace = uuid.uuid5(uuid.NAMESPACE_OID, layout.deployment_id)
    ids = [str(uuid.uuid5(namespace, f"drive-{p}")) for p in range(len(layout.drives))]
    sets = tuple(tuple(ids[p] for p in positions) for positions in layout.sets())
    return [FormatInfo(layout.deployment_id, drive_id, sets) for drive_id in ids]


__all__ = [
    "OPTIONS",
    "ConfigError",
    "Layout",
    "NodeConfig",
    "NodeSpec",
    "Option",
    "choose_set_size",
    "drive_order",
    "load_config",
    "parse_nodes",
    "plan_layout",
    "planned_formats",
]
