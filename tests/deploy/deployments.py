"""The node commands that compose/ and compose/k8s/ would run, read from those very files.

No container engine is needed: the compose file, its ``.env.example``, the Dockerfile and the
Kubernetes manifests are parsed here into :class:`NodeCommand`s (the full command line each
container runs, its environment, its drive mount points and published ports), which the tests
check through the CLI's own parser and run in network namespaces.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
K8S_DIR = COMPOSE_DIR / "k8s"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$\$")


@dataclass(frozen=True)
class NodeCommand:
    """One node as a deployment runs it."""

    name: str  # the compose service or the pod
    hostname: str  # its stable DNS name, as the other nodes know it
    argv: list[str]  # the whole command line: ["minigrid", "node", "run", ...]
    env: dict[str, str]
    mounts: list[str] = field(default_factory=list)  # drive mount points in the container
    volumes: list[str] = field(default_factory=list)  # what is mounted there (volume names)
    ports: list[str] = field(default_factory=list)  # "HOST:CONTAINER" published on the host


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (comments and blank lines skipped), as docker compose reads them."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``$$``, through nested lists and maps."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            return env.get(match.group(1)) or (match.group(2) or "")

        return _VARIABLE.sub(replace, value)
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    return value


@dataclass(frozen=True)
class Dockerfile:
    base_images: list[str]
    user: str
    entrypoint: list[str]
    healthcheck: list[str]


def read_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    """The few instructions the tests check (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    instructions = [line.strip() for line in joined.splitlines()
                    if line.strip() and not line.strip().startswith("#")]  # fmt: skip
    bases = [line.split()[1] for line in instructions if line.startswith("FROM ")]
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    entry = [json.loads(line[len("ENTRYPOINT"):]) for line in instructions
             if line.startswith("ENTRYPOINT ")]  # fmt: skip
    checks = [line for line in instructions if line.startswith("HEALTHCHECK ")]
    health = json.loads(checks[-1].split(" CMD ", 1)[1]) if checks else []
    return Dockerfile(bases, users[-1] if users else "", entry[-1] if entry else [], health)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose file, interpolated with ``.env.example`` (then ``env``) like ``docker
    compose`` does with ``.env``."""
    values = read_dotenv(ENV_EXAMPLE)
    values.update(env or {})
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    loaded: dict[str, Any] = interpolate(raw, values)
    return loaded


def compose_nodes(env: dict[str, str] | None = None) -> list[NodeCommand]:
    """Every minigrid node service of the compose file, as its container runs it."""
    values = read_dotenv(ENV_EXAMPLE)
    values.update(env or {})
    compose = load_compose(env)
    entrypoint = read_dockerfile().entrypoint
    nodes = []
    for name, service in compose["services"].items():
        if "build" not in service:
            continue  # prometheus, grafana
        node_env = dict(values) if service.get("env_file") else {}
        node_env.update({k: str(v) for k, v in service.get("environment", {}).items()})
        volumes = [v.split(":") for v in service.get("volumes", [])]
        nodes.append(NodeCommand(
            name=name, hostname=service["hostname"],
            argv=[*entrypoint, *service["command"]], env=node_env,
            mounts=[target for _, target in volumes], volumes=[source for source, _ in volumes],
            ports=[str(p) for p in service.get("ports", [])],
        ))  # fmt: skip
    return nodes


def load_k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in args and env values."""
    pattern = r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)"
    return re.sub(pattern, lambda m: env.get(m.group(1), m.group(0)), text)


def k8s_nodes() -> list[NodeCommand]:
    """Every pod of the StatefulSet, as it would run (``$(POD_NAME)`` expanded, the Secret's
    example values for the credentials)."""
    docs = load_k8s()
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet"]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    spec = statefulset["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    entrypoint = read_dockerfile().entrypoint
    nodes = []
    for ordinal in range(spec["replicas"]):
        pod = f"{statefulset['metadata']['name']}-{ordinal}"
        env: dict[str, str] = {}
        for source in container.get("envFrom", []):
            env.update(secrets[source["secretRef"]["name"]])
        for item in container["env"]:
            if "value" in item:
                env[item["name"]] = _expand(str(item["value"]), env)
            elif item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
                env[item["name"]] = pod
        args = [_expand(arg, env) for arg in container["args"]]
        mounts = container["volumeMounts"]
        nodes.append(NodeCommand(
            name=pod, hostname=f"{pod}.{spec['serviceName']}",
            argv=[*entrypoint, *args], env=env,
            mounts=[m["mountPath"] for m in mounts],
            volumes=[f"{m['name']}-{pod}" for m in mounts],  # a claim per pod and template
        ))  # fmt: skip
    return nodes


__all__ = [
    "COMPOSE_DIR",
    "DOCKERFILE",
    "ENV_EXAMPLE",
    "NodeCommand",
    "compose_nodes",
    "interpolate",
    "k8s_nodes",
    "load_compose",
    "load_k8s",
    "read_dockerfile",
    "read_dotenv",
]
