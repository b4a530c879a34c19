"""The node's HTTP limits, against real one-node processes with small configured limits.

Nothing here sleeps to synchronise: each test waits for the server to close a socket, for a
file to appear or vanish, or for a log line, with a generous upper bound.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.cluster import readiness
from tests.cluster.helpers import TMP_AREA, wait_for
from tests.s3.helpers import ACCESS_KEY, MIB, SECRET_KEY, payload, send, signed_headers
from tests.s3.test_admission import head_bytes, read_body, read_head

WAIT = 30.0


class OneNode:
    """One node process with four drives in ``root``, on a socket this test bound."""

    def __init__(self, root: Path, *, open_files: int | None = None, **options: Any) -> None:
        self.root = root
        self.open_files = open_files
        self.options = options
        self.drives = [root / f"d{i}" for i in range(4)]
        self.log = root / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        flags = [
            "--nodes", f"{self.url}={','.join(map(str, self.drives))}", "--node", "0",
            "--secret", "grid-secret", "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY,
            "--listen-fd", str(sock.fileno()), "--log-file", str(self.log),
        ]  # fmt: skip
        for name, value in self.options.items():
            flags += ["--" + name.replace("_", "-"), str(value)]
        # Lower the open-file limit inside the child, before the node starts.
        code = (
            "import resource, sys\n"
            f"limit = {self.open_files!r}\n"
            "if limit: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))\n"
            "from cli.main import main\n"
            "sys.argv = ['minigrid', 'node', 'run', *sys.argv[1:]]\n"
            "main()\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIGRID_")}
        with open(self.root / "stdout.log", "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code, *flags], pass_fds=[sock.fileno()],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        sock.close()
        wait_for(lambda: self.alive() and readiness(self.url)[0], WAIT, "the node to be ready")

    def alive(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"the node exited:\n{self.log_text()[-3000:]}")
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(WAIT)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_lines(self, text: str) -> list[str]:
        return [line for line in self.log_text().splitlines() if text in line]

    def open_fds(self) -> int:
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def temporary_files(self) -> list[str]:
        """Everything in the drives' temporary areas (writes in progress)."""
        found = []
        for drive in self.drives:
            for folder, _dirs, files in os.walk(drive / TMP_AREA):
                found += [os.path.join(folder, name) for name in files]
        return found

    def signed(self, method: str, path: str, body: bytes = b"") -> Any:
        extra = {"Content-Length": str(len(body))} if body else {}
        headers = signed_headers(self.port, method, path, hashlib.sha256(body).hexdigest(), extra)
        return send(self.port, method, path, headers, body)

    def serves(self) -> bool:
        """A signed request gets its answer (the node is not refusing or out of descriptors)."""
        try:
            return bool(self.signed("GET", "/").status == 200)
        except OSError:
            return False


@contextlib.contextmanager
def running(root: Path, **options: Any) -> Iterator[OneNode]:
    """A started node; stopped afterwards, and its log must hold no traceback."""
    root.mkdir(parents=True, exist_ok=True)
    node = OneNode(root, **options)
    try:
        node.start()
        yield node
    finally:
        node.stop()
    assert "Traceback" not in node.log_text(), node.log_text()[-3000:]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneNode]:
    """A node with short header and body timeouts."""
    with running(tmp_path_factory.mktemp("limits"), header_timeout=2, body_timeout=2) as node:
        yield node


def closed_by_server(sock: socket.socket, timeout: float = WAIT) -> bytes:
    """Wait until the server closes ``sock``; everything it sent before that."""
    sock.settimeout(timeout)
    received = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not piece:
            return received
        received += piece


def test_a_client_dribbling_its_headers_is_cut_off(node: OneNode) -> None:
    sock = socket.create_connection(("127.0.0.1", node.port))
    with sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        closed = False
        deadline = time.monotonic() + WAIT
        while not closed and time.monotonic() < deadline:
            # One more header byte whenever the server has said nothing for a moment.
            if select.select([sock], [], [], 0.1)[0]:
                closed = sock.recv(1) == b""
                break
            try:
                sock.send(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
        assert closed, "the server kept a connection that never finished its request head"
    idle = socket.create_connection(("127.0.0.1", node.port))
    with idle:
        assert closed_by_server(idle) == b""  # nothing sent at all: closed the same way
    assert node.serves()


def test_a_malformed_request_is_one_line_without_traceback(node: OneNode) -> None:
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        answer = closed_by_server(sock)
    assert answer.split(b" ")[1] == b"400", answer[:100]  # aiohttp's own answer
    [line] = wait_for(lambda: node.log_lines("Error handling request"), WAIT, "the log line")
    assert "LineTooLong" in line and "Got more than 8190 bytes" in line, line
    assert "Traceback" not in node.log_text()


def test_a_stalled_put_is_aborted_and_its_temporary_files_removed(node: OneNode) -> None:
    assert node.signed("PUT", "/stalled").status == 200
    path = "/stalled/object"
    headers = signed_headers(node.port, "PUT", path, "UNSIGNED-PAYLOAD",
                             {"Content-Length": str(8 * MIB)})  # fmt: skip
    sock = socket.create_connection(("127.0.0.1", node.port))
    with sock:
        sock.sendall(head_bytes("PUT", path, headers) + payload(3 * MIB, seed=1))
        # The upload has begun: its shards are in the drives' temporary areas ...
        wait_for(node.temporary_files, WAIT, "the upload's temporary shard files")
        # ... and then the client sends nothing more.
        answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"<Code>RequestTimeout</Code>" in answer
    assert node.temporary_files() == []
    assert node.signed("HEAD", path).status == 404
    assert node.serves()


def test_a_get_whose_client_stops_reading_is_dropped(node: OneNode) -> None:
    assert node.signed("PUT", "/unread").status == 200
    data = payload(24 * MIB, seed=4)
    assert node.signed("PUT", "/unread/big", data).status == 200
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once
    with sock:
        sock.connect(("127.0.0.1", node.port))
        headers = signed_headers(node.port, "GET", "/unread/big", "UNSIGNED-PAYLOAD")
        sock.sendall(head_bytes("GET", "/unread/big", headers))
        # The client reads nothing, so the server's writes stop; after the body timeout it
        # gives up on this client.
        wait_for(lambda: node.log_lines("read nothing for"), WAIT, "the server to give up")
        received = closed_by_server(sock)
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received) < len(data)  # the connection ended before the object did
    assert node.serves()


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_an_aws_chunked_body_longer_than_declared_is_cut_off(node: OneNode) -> None:
    assert node.signed("PUT", "/overlong").status == 200
    path = "/overlong/object"
    declared = 2 * MIB + 5
    headers = signed_headers(node.port, "PUT", path, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", {
        "Content-Encoding": "aws-chunked", "Content-Length": str(1 << 40),
        "X-Amz-Decoded-Content-Length": str(declared)})  # fmt: skip
    piece = chunk(payload(64 * 1024, seed=2))
    sent = 0
    sock = socket.create_connection(("127.0.0.1", node.port))
    with sock:
        sock.sendall(head_bytes("PUT", path, headers))
        while not select.select([sock], [], [], 0)[0]:  # keep sending until it answers
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(piece)
            assert sent < 256 * MIB, "the server kept reading far past the declared length"
        answer = closed_by_server(sock)
    assert sent >= declared  # it answered only once the body went past its length
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"<Code>IncompleteBody</Code>" in answer and b"x-amz-decoded-content-length" in answer
    wait_for(lambda: node.temporary_files() == [], WAIT, "the temporary files to go")
    assert node.signed("HEAD", path).status == 404


def test_entity_too_large_on_a_node(node: OneNode) -> None:
    path = "/overlong/huge"
    headers = signed_headers(node.port, "PUT", path, "UNSIGNED-PAYLOAD",
                             {"Content-Length": str(5 * 1024 * MIB + 1)})  # fmt: skip
    with socket.create_connection(("127.0.0.1", node.port), timeout=WAIT) as sock:
        sock.sendall(head_bytes("PUT", path, headers))
        status, response_headers, rest = read_head(sock)
        assert status == 400
        assert b"EntityTooLarge" in read_body(sock, response_headers, rest)


def test_connection_cap(tmp_path: Path) -> None:
    cap, extra = 16, 300
    with running(tmp_path / "cap", max_connections=cap, header_timeout=60) as node:
        baseline = node.open_fds()
        held: list[socket.socket] = []
        refused = 0
        try:
            for _ in range(cap + extra):
                sock = socket.create_connection(("127.0.0.1", node.port), timeout=WAIT)
                if select.select([sock], [], [], 0)[0]:  # answered already: refused
                    refused += refused_at_once(sock)
                else:
                    held.append(sock)

            def settled() -> bool:  # every refusal seen (the 503s come without a request)
                nonlocal refused
                for sock in [s for s in held if select.select([s], [], [], 0)[0]]:
                    held.remove(sock)
                    refused += refused_at_once(sock)
                return refused >= extra

            wait_for(settled, WAIT, f"{extra} connections over the cap to be refused")
            assert len(held) <= cap
            for sock in held:  # the ones let in are still open, waiting for a request
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
            assert node.open_fds() <= baseline + cap + 4
        finally:
            for sock in held:
                sock.close()
        wait_for(node.serves, WAIT, "the node to serve again once the connections closed")
        lines = node.log_lines("connection limit reached")
        assert 1 <= len(lines) <= 2, lines  # one line a minute, not one per connection


def refused_at_once(sock: socket.socket) -> int:
    with sock:
        answer = closed_by_server(sock)
    assert answer.startswith(b"HTTP/1.1 503") and b"SlowDown" in answer, answer[:200]
    return 1


def test_emfile_is_logged_once_per_interval(tmp_path: Path) -> None:
    with running(tmp_path / "emfile", open_files=80, header_timeout=60) as node:
        sockets: list[socket.socket] = []
        try:
            for _ in range(120):  # more than the node has descriptors left
                sockets.append(socket.create_connection(("127.0.0.1", node.port), timeout=WAIT))
            wait_for(lambda: node.log_lines("cannot accept connections"), WAIT,
                     "the accept error to be logged")  # fmt: skip
        finally:
            for sock in sockets:
                sock.close()
        wait_for(node.serves, WAIT, "the node to serve again once the connections closed")
        [line] = node.log_lines("cannot accept connections")
        assert "EMFILE" in line and "open-file limit is 80" in line
        assert not node.log_lines("out of system resource")  # asyncio's own message
        assert node.log_lines("max_connections 1024 needs about")  # the warning at startup


def test_limits_are_configuration_options(tmp_path: Path) -> None:
    from node.config import ConfigError, load_config

    base = {"nodes": f"http://127.0.0.1:1={tmp_path}/a,{tmp_path}/b,{tmp_path}/c,{tmp_path}/d",
            "node": "0", "secret": "s", "access_key": "a", "secret_key": "b"}  # fmt: skip
    config = load_config(None, env={}, flags=base)
    assert (config.max_connections, config.header_timeout, config.body_timeout) == (1024, 15, 30)
    env = {"MINIGRID_MAX_CONNECTIONS": "10", "MINIGRID_BODY_TIMEOUT": "2.5"}
    config = load_config(None, env=env, flags={**base, "header_timeout": 0.5})
    assert (config.max_connections, config.header_timeout, config.body_timeout) == (10, 0.5, 2.5)
    for bad in ({"max_connections": 0}, {"body_timeout": "-1"}, {"header_timeout": "inf"}):
        with pytest.raises(ConfigError, match="must be a positive number"):
            load_config(None, env={}, flags={**base, **bad})
