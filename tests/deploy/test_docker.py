"""``docker compose up`` for real, where a container engine exists (marked ``container``).

Without one (as on the project's CI machine) the test is skipped and says why; the namespace
test (test_netns.py) runs the same node commands without containers."""

from __future__ import annotations

import json
import random
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.signed import SignedClient
from tests.deploy.deployments import COMPOSE_FILE, ENV_EXAMPLE, read_dotenv
from tests.deploy.test_netns import s3_client


def engine_reason() -> str:
    """Why ``docker compose`` cannot run here, or "" if it can."""
    if shutil.which("docker") is None:
        return "no container engine here (docker not found): compose is checked without it"
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30)
    if info.returncode != 0:
        return "no container engine here: the docker CLI is installed but no daemon answers"
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        return "the docker engine runs but the 'docker compose' plugin is missing"
    return ""


REASON = engine_reason()
pytestmark = [
    pytest.mark.container,
    pytest.mark.slow,
    pytest.mark.skipif(bool(REASON), reason=REASON or "runs"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def compose_up(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    env = read_dotenv(ENV_EXAMPLE)
    for name in env:
        if env[name].startswith("change-me"):
            env[name] = secrets.token_hex(24)
    env["MINIGRID_S3_PORT"] = str(free_port())
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    project = f"minigrid-test-{secrets.token_hex(4)}"
    base = ["docker", "compose", "-p", project, "-f", str(COMPOSE_FILE), "--env-file",
            str(env_file)]  # fmt: skip
    # compose reads env_file: .env beside the compose file; give it this run's values.
    local_env = COMPOSE_FILE.parent / ".env"
    assert not local_env.exists(), "compose/.env exists: this test will not overwrite it"
    shutil.copy(env_file, local_env)
    try:
        subprocess.run([*base, "up", "-d", "--build", "--wait", "--wait-timeout", "180"],
                       check=True, timeout=900)  # fmt: skip
        yield f"http://127.0.0.1:{env['MINIGRID_S3_PORT']}", env
    finally:
        subprocess.run([*base, "down", "-v", "--timeout", "20"], timeout=300)
        local_env.unlink(missing_ok=True)


def test_docker_compose_up_serves_a_round_trip(compose_up: tuple[str, dict[str, str]]) -> None:
    url, env = compose_up
    client = s3_client(url, env["MINIGRID_ACCESS_KEY"], env["MINIGRID_SECRET_KEY"])
    client.create_bucket(Bucket="compose")
    data = random.Random(7).randbytes(2 * (1 << 20))
    client.put_object(Bucket="compose", Key="file.bin", Body=data)
    assert client.get_object(Bucket="compose", Key="file.bin")["Body"].read() == data
    admin = SignedClient(url, env["MINIGRID_ADMIN_ACCESS_KEY"], env["MINIGRID_ADMIN_SECRET_KEY"])
    frame = json.loads(admin.call("GET", "/minigrid/admin/v1/top", {"count": "1"}))
    assert len(frame["nodes"]) == 4 and all(n.get("ready") for n in frame["nodes"])
