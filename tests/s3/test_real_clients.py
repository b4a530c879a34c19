"""Real S3 clients against the gateway, run as a user would run them: the aws cli (``aws s3 cp``
up and down and ``aws s3 sync``) and s3cmd with a default-style configuration (its bucket
location ``US``, which it signs with). Both come from the test extras (pyproject.toml)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.s3.helpers import ACCESS_KEY, MIB, SECRET_KEY, GatewayServer, payload

BIN = Path(sys.executable).parent
TIMEOUT = 240


def _tool(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: install the test extras (pip install -e '.[test]')")
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def aws_env(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    return env


def aws(server: GatewayServer, env: dict[str, str], *args: str) -> str:
    return run([str(_tool("aws")), "--endpoint-url", server.url, *args], env)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_aws_cli_cp_up_and_down_40_mb(server: GatewayServer, aws_env: dict[str, str],
                                      tmp_path: Path) -> None:  # fmt: skip
    source, back = tmp_path / "forty.bin", tmp_path / "back.bin"
    source.write_bytes(os.urandom(40 * 1000 * 1000))
    aws(server, aws_env, "s3", "mb", "s3://aws-cli")
    aws(server, aws_env, "s3", "cp", str(source), "s3://aws-cli/dir/forty.bin")  # multipart
    listed = aws(server, aws_env, "s3", "ls", "s3://aws-cli/dir/")
    assert "forty.bin" in listed and str(40 * 1000 * 1000) in listed
    aws(server, aws_env, "s3", "cp", "s3://aws-cli/dir/forty.bin", str(back))
    assert digest(back) == digest(source)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_aws_cli_sync(server: GatewayServer, aws_env: dict[str, str], tmp_path: Path) -> None:
    tree, mirror = tmp_path / "tree", tmp_path / "mirror"
    files = {
        "a.txt": b"alpha",
        "sub/b.bin": payload(3 * MIB, 1),
        "sub/deeper/c": b"",
        "é ü.txt": b"x",
    }
    for name, data in files.items():
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_bytes(data)
    aws(server, aws_env, "s3", "mb", "s3://aws-sync")
    aws(server, aws_env, "s3", "sync", str(tree), "s3://aws-sync/backup")
    # A second sync with nothing changed uploads nothing.
    assert "upload:" not in aws(server, aws_env, "s3", "sync", str(tree), "s3://aws-sync/backup")
    (tree / "a.txt").write_bytes(b"alpha, changed")
    again = aws(server, aws_env, "s3", "sync", str(tree), "s3://aws-sync/backup")
    assert again.count("upload:") == 1 and "a.txt" in again
    aws(server, aws_env, "s3", "sync", "s3://aws-sync/backup", str(mirror))
    for name in files:
        assert (mirror / name).read_bytes() == (tree / name).read_bytes(), name


@pytest.fixture
def s3cmd_config(server: GatewayServer, tmp_path: Path) -> Path:
    """s3cmd's own defaults (bucket_location US, SigV4), pointed at the gateway."""
    host = f"127.0.0.1:{server.port}"
    config = tmp_path / "s3cfg"
    config.write_text(
        "[default]\n"
        f"access_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\n"
        f"host_base = {host}\nhost_bucket = {host}\n"
        "bucket_location = US\nuse_https = False\nsignature_v2 = False\n"
    )
    return config


def s3cmd(config: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return run([sys.executable, str(_tool("s3cmd")), "-c", str(config), *args], env)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_s3cmd_with_a_default_style_config(s3cmd_config: Path, tmp_path: Path) -> None:
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_bytes(b"hello from s3cmd")
    big.write_bytes(payload(20 * MIB, 2))  # over s3cmd's 15 MB multipart threshold
    s3cmd(s3cmd_config, "mb", "s3://s3cmd-bucket")
    info = s3cmd(s3cmd_config, "info", "s3://s3cmd-bucket")  # GetBucketLocation
    assert "Location:" in info
    s3cmd(s3cmd_config, "put", str(small), "s3://s3cmd-bucket/small.txt")
    s3cmd(s3cmd_config, "put", str(big), "s3://s3cmd-bucket/big.bin")
    listed = s3cmd(s3cmd_config, "ls", "s3://s3cmd-bucket")
    assert "s3://s3cmd-bucket/small.txt" in listed and "s3://s3cmd-bucket/big.bin" in listed
    for name, original in (("small.txt", small), ("big.bin", big)):
        back = tmp_path / f"back-{name}"
        s3cmd(s3cmd_config, "get", f"s3://s3cmd-bucket/{name}", str(back))
        assert digest(back) == digest(original), name
    s3cmd(s3cmd_config, "del", "s3://s3cmd-bucket/small.txt")
    assert "small.txt" not in s3cmd(s3cmd_config, "ls", "s3://s3cmd-bucket")
