"""The CLI as a process on a terminal: Ctrl-C mid-transfer, progress bars on a pseudo-terminal,
and big transfers through s3transfer (multipart uploads, parallel ranged GETs).

A transfer is held mid-way by a proxy in front of a node (:mod:`tests.cluster.proxy`): the test
waits until the proxy has let its budget of bytes through, so "mid-transfer" is a state, not a
moment guessed with a sleep.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from rich.filesize import decimal

from cli.errors import Interrupted
from cli.locations import Job, Local, Remote
from cli.progress import Bar, Bars
from cli.s3client import S3, Endpoint
from cli.transfer import Runner
from tests.cluster.helpers import MIB, LocalCluster, metrics_text, payload, wait_for
from tests.cluster.proxy import StallProxy

BUCKET = "terminal"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.fixture(scope="module")
def s3(cluster: LocalCluster) -> Any:
    client = cluster.boto(0)
    client.create_bucket(Bucket=BUCKET)
    return client


def cli_env(cluster: LocalCluster, endpoint: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINIGRID_")}
    env["MINIGRID_DATA_DIR"] = str(cluster.root)
    if endpoint is not None:
        env["MINIGRID_ENDPOINT"] = endpoint
    env.update(extra)
    return env


def start_cli(cluster: LocalCluster, *args: str, endpoint: str | None = None,
              **kwargs: Any) -> subprocess.Popen[bytes]:  # fmt: skip
    """``minigrid ARGS`` as its own process (stdout and stderr piped unless given)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args],
                            env=cli_env(cluster, endpoint), **kwargs)  # fmt: skip


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """CLI processes a test started; killed afterwards if a test failed before they ended."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)  # reaps it and closes its pipes


def part_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".part")]


def node_host(cluster: LocalCluster, node: int = 0) -> str:
    return cluster.urls[node].split("://", 1)[1]


# --- Ctrl-C -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_during_a_download(cluster: LocalCluster, s3: Any, tmp_path: Path,
                                  processes: list[subprocess.Popen[bytes]]) -> None:  # fmt: skip
    s3.put_object(Bucket=BUCKET, Key="down.bin", Body=payload(20 * MIB, seed=40))
    target = tmp_path / "down.bin"
    target.write_bytes(b"the old content")
    with StallProxy(node_host(cluster), direction="down", budget=3 * MIB) as proxy:
        process = start_cli(cluster, "get", f"{BUCKET}/down.bin", str(target),
                            endpoint=proxy.url)  # fmt: skip
        processes.append(process)
        assert proxy.stalled.wait(30), "the download never started"
        assert part_files(tmp_path), "mid-transfer, the temporary file is there"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    text = err.decode()
    assert process.returncode == 130, text
    assert f"aborted (Ctrl-C): {target} is unchanged (the download did not complete)" in text
    assert "Traceback" not in text and "Aborted!" not in text
    assert target.read_bytes() == b"the old content"
    assert part_files(tmp_path) == []


def test_ctrl_c_during_an_upload(cluster: LocalCluster, s3: Any, tmp_path: Path,
                                 processes: list[subprocess.Popen[bytes]]) -> None:  # fmt: skip
    s3.put_object(Bucket=BUCKET, Key="up.bin", Body=b"the old object")
    source = tmp_path / "up.bin"
    source.write_bytes(payload(6 * MIB, seed=41))
    with StallProxy(node_host(cluster), direction="up", budget=2 * MIB) as proxy:
        process = start_cli(cluster, "put", str(source), f"{BUCKET}/up.bin", endpoint=proxy.url)
        processes.append(process)
        assert proxy.stalled.wait(30), "the upload never started"
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    text = err.decode()
    assert process.returncode == 130, text
    assert f"aborted (Ctrl-C): s3://{BUCKET}/up.bin is unchanged (the upload did not complete)" \
        in text  # fmt: skip
    assert "Traceback" not in text
    assert s3.get_object(Bucket=BUCKET, Key="up.bin")["Body"].read() == b"the old object"
    # The proxy dropped the half-sent PUT: the node threw its temporary shards away.
    wait_for(lambda: cluster.temp_files() == [], 20, "the drives' temporary areas to empty")


def test_ctrl_c_cancels_transfers_in_flight(cluster: LocalCluster, s3: Any,
                                            tmp_path: Path) -> None:  # fmt: skip
    """In process: Ctrl-C while the planner is still listing, with a download already
    running; the transfer threads stop in time, nothing is renamed into place."""
    data = payload(24 * MIB, seed=42)
    s3.put_object(Bucket=BUCKET, Key="flowing.bin", Body=data)
    config = cluster.config
    client = S3(Endpoint(cluster.urls[1], config["access_key"], config["secret_key"]))
    target = tmp_path / "flowing.bin"

    def jobs() -> Iterator[Job]:
        yield Job(Remote(BUCKET, "flowing.bin"), Local(str(target)))
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stopped:
        Runner(client, Bars(), report=lambda line: None).run(jobs())
    assert stopped.value.lines == [f"{target} is unchanged (the download did not complete)"]
    assert not stopped.value.hard  # the threads noticed the cancel between pieces
    assert not target.exists()
    assert part_files(tmp_path) == []


# --- progress bars ----------------------------------------------------------------------------


def run_on_terminal(cluster: LocalCluster, *args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (120 x 40); its exit status and what the
    terminal showed, without escape sequences."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = cli_env(cluster, TERM="xterm-256color", COLUMNS="120")
    process = subprocess.Popen([sys.executable, "-m", "cli.main", *args],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=follower, env=env)  # fmt: skip
    os.close(follower)
    shown = bytearray()
    try:
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                raise AssertionError("the CLI wrote nothing to the terminal for 30 s")
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        process.wait(30)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)  # reaps it and closes its pipes
    assert process.stdout is not None
    process.stdout.close()
    return process.returncode, ANSI.sub("", shown.decode(errors="replace"))


@pytest.mark.slow
def test_progress_bar_per_transfer_on_a_terminal_only(cluster: LocalCluster, s3: Any,
                                                      tmp_path: Path) -> None:  # fmt: skip
    size = 3 * MIB + 5
    source = tmp_path / "shown.bin"
    source.write_bytes(payload(size, seed=43))
    total = decimal(size).split()  # e.g. ["3.1", "MB"], as rich's DownloadColumn writes it
    done = f"{total[0]}/{total[0]} {total[1]}"

    status, shown = run_on_terminal(cluster, "put", str(source), f"{BUCKET}/shown.bin")
    assert status == 0, shown
    assert f"put s3://{BUCKET}/shown.bin" in shown and done in shown
    status, shown = run_on_terminal(cluster, "get", f"{BUCKET}/shown.bin",
                                    str(tmp_path / "back.bin"))  # fmt: skip
    assert status == 0, shown
    assert f"get s3://{BUCKET}/shown.bin" in shown and done in shown
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()

    quiet = start_cli(cluster, "put", str(source), f"{BUCKET}/quiet.bin")
    out, err = quiet.communicate(timeout=60)
    assert quiet.returncode == 0, err
    assert err == b""  # not a terminal: no bar, no escape sequences
    assert out.decode().startswith(f"{source} -> s3://{BUCKET}/quiet.bin: {size} bytes")


def test_progress_on_a_terminal_for_a_recursive_copy(cluster: LocalCluster, s3: Any,
                                                     tmp_path: Path) -> None:  # fmt: skip
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(5):
        (folder / f"f{index}.bin").write_bytes(payload(200_000, seed=44 + index))
    status, shown = run_on_terminal(cluster, "cp", "-r", str(folder), f"s3://{BUCKET}/many/")
    assert status == 0, shown
    assert "total" in shown and "1.0/1.0 MB" in shown  # 5 x 200 kB, under one bar for all


# --- big transfers ----------------------------------------------------------------------------


def _ranged_gets(url: str) -> int:
    found = re.search(r'minigrid_s3_requests_total\{api="GetObject",status="206"\} ([\d.e+]+)',
                      metrics_text(url))  # fmt: skip
    return int(float(found.group(1))) if found else 0


@pytest.mark.slow
def test_forty_megabytes_up_in_parts_and_down_in_ranges(cluster: LocalCluster, s3: Any,
                                                        tmp_path: Path) -> None:  # fmt: skip
    data = payload(40 * MIB, seed=45)
    source = tmp_path / "forty.bin"
    source.write_bytes(data)
    up = cluster.cli("put", "--endpoint", cluster.urls[0], str(source), f"{BUCKET}/forty.bin")
    assert up.exit_code == 0, up.output
    etag = s3.head_object(Bucket=BUCKET, Key="forty.bin")["ETag"].strip('"')
    assert etag.endswith("-5")  # a multipart upload of 8 MiB parts, as the aws cli sends
    assert f", etag {etag}" in up.stdout

    before = _ranged_gets(cluster.urls[0])
    target = tmp_path / "back.bin"
    down = cluster.cli("get", "--endpoint", cluster.urls[0], f"{BUCKET}/forty.bin",
                       str(target))  # fmt: skip
    assert down.exit_code == 0, down.output
    assert target.read_bytes() == data
    assert _ranged_gets(cluster.urls[0]) - before >= 5  # 8 MiB ranges


def test_a_big_upload_from_stdin_streams_in_parts(cluster: LocalCluster, s3: Any) -> None:
    data = payload(20 * MIB, seed=46)
    process = start_cli(cluster, "put", "-", f"{BUCKET}/piped.bin", stdin=subprocess.PIPE)
    out, err = process.communicate(data, timeout=120)
    assert process.returncode == 0, err
    assert f"stdin -> s3://{BUCKET}/piped.bin: {len(data)} bytes" in out.decode()
    assert s3.head_object(Bucket=BUCKET, Key="piped.bin")["ETag"].strip('"').endswith("-3")
    assert s3.get_object(Bucket=BUCKET, Key="piped.bin")["Body"].read() == data


def test_an_interrupted_multipart_upload_is_aborted(cluster: LocalCluster, s3: Any,
                                                    tmp_path: Path) -> None:  # fmt: skip
    source = tmp_path / "parts.bin"
    source.write_bytes(payload(24 * MIB, seed=47))
    config = cluster.config
    client = S3(Endpoint(cluster.urls[2], config["access_key"], config["secret_key"]))
    started = threading.Event()

    class Ticker(Bars):
        def add(self, label: str, total: int | None) -> Bar:
            return _Started(started)

    def jobs() -> Iterator[Job]:
        yield Job(Local(str(source)), Remote(BUCKET, "parts.bin"), size=24 * MIB)
        assert started.wait(60), "no part went up"
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as stopped:
        Runner(client, Ticker(), report=lambda line: None).run(jobs())
    assert stopped.value.lines == [
        f"s3://{BUCKET}/parts.bin is unchanged (the upload did not complete)"
    ]
    with pytest.raises(ClientError):
        s3.head_object(Bucket=BUCKET, Key="parts.bin")

    def no_upload_left() -> bool:
        uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        return not [u for u in uploads if u["Key"] == "parts.bin"]

    wait_for(no_upload_left, 20, "the multipart upload to be aborted")


class _Started(Bar):
    def __init__(self, started: threading.Event) -> None:
        self._started = started

    def advance(self, amount: int) -> None:
        self._started.set()


@pytest.mark.slow
def test_an_object_replaced_mid_download_is_not_mixed(cluster: LocalCluster, s3: Any,
                                                      tmp_path: Path,
                                                      processes: list[subprocess.Popen[bytes]],
                                                      ) -> None:  # fmt: skip
    """Eleven 8 MiB ranges: ten go out at once and are held by the proxy; the object is
    replaced; the eleventh carries If-Match with the first ETag and is refused."""
    s3.put_object(Bucket=BUCKET, Key="moving.bin", Body=payload(81 * MIB, seed=48))
    target = tmp_path / "moving.bin"
    with StallProxy(node_host(cluster), direction="down", budget=1 * MIB) as proxy:
        process = start_cli(cluster, "get", f"{BUCKET}/moving.bin", str(target),
                            endpoint=proxy.url)  # fmt: skip
        processes.append(process)
        assert proxy.stalled.wait(30), "the download never started"
        s3.put_object(Bucket=BUCKET, Key="moving.bin", Body=b"a new version")
        proxy.release()
        _, err = process.communicate(timeout=120)
    text = err.decode()
    assert process.returncode == 1, text
    assert f"s3://{BUCKET}/moving.bin changed while it was being copied" in text
    assert "(PreconditionFailed)" in text
    assert not target.exists()
    assert part_files(tmp_path) == []
