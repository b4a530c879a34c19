"""compose/ and compose/k8s/ without a container engine: every node command is a valid
``minigrid node run`` (through the CLI's own parser), every node lists every node, nothing is
shared that must not be, and the health paths exist."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from cli.node import parse_run_args
from node.admin import AdminService
from node.config import NodeConfig
from tests.deploy.deployments import (
    COMPOSE_DIR,
    ENV_EXAMPLE,
    NodeCommand,
    compose_nodes,
    k8s_nodes,
    load_compose,
    load_k8s,
    read_dockerfile,
    read_dotenv,
)

HEALTH_PATHS = {
    route.path for route in AdminService(None, None).routes().public  # type: ignore[arg-type]
}
CREDENTIALS = ("MINIGRID_SECRET", "MINIGRID_ACCESS_KEY", "MINIGRID_SECRET_KEY",
               "MINIGRID_ADMIN_ACCESS_KEY", "MINIGRID_ADMIN_SECRET_KEY")  # fmt: skip


def config_of(node: NodeCommand) -> NodeConfig:
    """What the node would run with: its command through click's parser, in its environment."""
    assert node.argv[:3] == ["minigrid", "node", "run"], node.argv
    return parse_run_args(node.argv[3:], node.env)


def deployments() -> dict[str, list[NodeCommand]]:
    return {"compose": compose_nodes(), "k8s": k8s_nodes()}


@pytest.mark.parametrize("kind", ["compose", "k8s"])
def test_every_node_command_is_a_valid_node_run_that_lists_every_node(kind: str) -> None:
    nodes = deployments()[kind]
    assert len(nodes) == 4
    configs = [config_of(node) for node in nodes]
    hostnames = [node.hostname for node in nodes]
    assert len(set(hostnames)) == 4
    for index, (node, config) in enumerate(zip(nodes, configs, strict=True)):
        assert config.node == index and config.host == f"{node.hostname}:9000"
        assert [urlsplit(spec.url).hostname for spec in config.nodes] == hostnames
        assert config.me.drives == tuple(node.mounts), "the drives are the volumes' mount points"
        assert config.listen_address() == ("0.0.0.0", 9000)
        assert config.layout == configs[0].layout, "every node must plan the same layout"
        assert config.secret and config.access_key and config.admin_secret_key
        assert config.profile == "fast" and config.log_format == "json"
    assert configs[0].layout.set_count == 1 and configs[0].layout.set_drive_count == 8


@pytest.mark.parametrize("kind", ["compose", "k8s"])
def test_no_two_nodes_share_a_volume_or_a_host_port(kind: str) -> None:
    nodes = deployments()[kind]
    volumes = Counter(volume for node in nodes for volume in node.volumes)
    assert len(volumes) == 8 and set(volumes.values()) == {1}, volumes
    host_ports = [port.rsplit(":", 1)[0] for node in nodes for port in node.ports]
    assert len(host_ports) == len(set(host_ports))


def test_compose_publishes_one_node_and_declares_every_volume() -> None:
    compose = load_compose()
    published = {name: s["ports"] for name, s in compose["services"].items()
                 if s.get("ports") and "build" in s}  # fmt: skip
    assert published == {"node0": ["9000:9000"]}
    assert load_compose({"MINIGRID_S3_PORT": "19000"})["services"]["node0"]["ports"] == [
        "19000:9000"
    ]
    used = {volume for node in compose_nodes() for volume in node.volumes}
    assert used == set(compose["volumes"])


def test_the_liveness_profile_is_selectable() -> None:
    for profile in ("fast", "minio"):
        for node in compose_nodes({"MINIGRID_PROFILE": profile}):
            assert config_of(node).profile == profile
    with pytest.raises(Exception, match="profile"):
        config_of(compose_nodes({"MINIGRID_PROFILE": "sluggish"})[0])


def test_a_broken_command_is_caught_by_the_parser() -> None:
    node = compose_nodes()[0]
    with pytest.raises(click.UsageError):
        parse_run_args([*node.argv[3:], "--no-such-flag"], node.env)
    bad = NodeCommand(node.name, node.hostname, [*node.argv[:3], "--node", "http://nodeX:9000"],
                      node.env)  # fmt: skip
    with pytest.raises(Exception, match="not one of the configured nodes"):
        config_of(bad)


def test_credentials_come_from_the_env_file_and_none_is_committed() -> None:
    example = read_dotenv(ENV_EXAMPLE)
    for name in CREDENTIALS:
        assert example[name].startswith("change-me"), f"{name} must be a placeholder"
    compose = load_compose()
    for node in compose_nodes():
        service = compose["services"][node.name]
        assert service["env_file"] == ".env"
        assert not set(CREDENTIALS) & set(service["environment"]), "secrets only in .env"
    ignored = (COMPOSE_DIR.parent / ".gitignore").read_text().split()
    assert "compose/.env" in ignored
    assert not (COMPOSE_DIR / ".env").exists() or "compose/.env" in ignored


def test_dockerfile_runs_the_cli_as_a_non_root_user_with_a_health_check() -> None:
    dockerfile = read_dockerfile()
    assert all(image.startswith("python:3.11-slim") for image in dockerfile.base_images)
    assert dockerfile.user not in ("", "root", "0")
    assert dockerfile.entrypoint == ["minigrid"]
    url = re.search(r"http://127\.0\.0\.1:9000(/[^'\"]+)", " ".join(dockerfile.healthcheck))
    assert url is not None and url.group(1) == "/minigrid/health/ready"
    assert url.group(1) in HEALTH_PATHS


def _statefulset() -> dict[str, Any]:
    (found,) = [d for d in load_k8s() if d["kind"] == "StatefulSet"]
    return found


def test_k8s_statefulset_headless_service_claims_secret_and_probes() -> None:
    docs = load_k8s()
    statefulset = _statefulset()
    spec = statefulset["spec"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    headless = services[spec["serviceName"]]["spec"]
    assert headless["clusterIP"] == "None"
    # Without these, no pod is ever ready: readiness needs the peers, which need the DNS names.
    assert headless["publishNotReadyAddresses"] is True
    assert spec["podManagementPolicy"] == "Parallel"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    assert [m["name"] for m in container["volumeMounts"]] == claims
    assert container["readinessProbe"]["httpGet"]["path"] == "/minigrid/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/minigrid/health/live"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in HEALTH_PATHS
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    (source,) = container["envFrom"]
    secret = secrets[source["secretRef"]["name"]]
    assert set(secret["stringData"]) == set(CREDENTIALS)
    assert all(value.startswith("change-me") for value in secret["stringData"].values())
    for service in services.values():
        assert service["spec"]["selector"] == spec["selector"]["matchLabels"]


def test_prometheus_scrapes_every_node_and_grafana_is_provisioned() -> None:
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in HEALTH_PATHS
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"{node.hostname}:9000" for node in compose_nodes()]
    compose = load_compose()
    for service in ("prometheus", "grafana"):
        assert compose["services"][service]["profiles"] == ["monitoring"]
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "minigrid.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["uid"]}
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("grid links", "loop lag", "drive state", "s3 latency", "heal"):
        assert topic in titles, topic
