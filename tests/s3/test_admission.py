"""Admission before the body: ``Expect: 100-continue``, the 5 GiB PUT limit, and the log lines
of refused requests and of clients that hang up.

The requests are written on raw sockets, so the test sees exactly which bytes the gateway sends
before the body (``100 Continue`` or the final answer) and controls whether a body follows.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping

import pytest

from node.s3.routes import MAX_PUT_SIZE
from tests.s3.helpers import MIB, SECRET_KEY, GatewayServer, payload, send, signed_headers
from tests.s3.test_raw_http import no_uploads_in_progress

WAIT = 30.0  # an upper bound for the server's answer, never a pause


def head_bytes(method: str, path: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The next response head on ``sock``: status, headers, and whatever followed it."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise AssertionError(f"the server closed the connection after {data!r}")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, rest


def read_body(sock: socket.socket, headers: Mapping[str, str], rest: bytes) -> bytes:
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        rest += piece
    return rest[:length]


@pytest.fixture
def connect(server: GatewayServer) -> Iterator[Callable[[], socket.socket]]:
    opened: list[socket.socket] = []

    def make() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=WAIT)
        opened.append(sock)
        return sock

    yield make
    for sock in opened:
        sock.close()


def expect_put(server: GatewayServer, path: str, size: int, **extra: str) -> bytes:
    headers = signed_headers(server.port, "PUT", path, "UNSIGNED-PAYLOAD",
                             {"Content-Length": str(size), **extra})  # fmt: skip
    headers["Expect"] = "100-continue"
    return head_bytes("PUT", path, headers)


def test_100_continue_only_after_admission(
    server: GatewayServer, bucket: str, connect: Callable[[], socket.socket]
) -> None:
    data = payload(2 * MIB + 3, seed=31)
    sock = connect()
    sock.sendall(expect_put(server, f"/{bucket}/admitted", len(data)))
    status, _, _ = read_head(sock)
    assert status == 100  # only now does the client send the body
    sock.sendall(data)
    status, headers, rest = read_head(sock)
    assert status == 200, read_body(sock, headers, rest)
    assert send(server.port, "GET", f"/{bucket}/admitted",
                signed_headers(server.port, "GET", f"/{bucket}/admitted",
                               "UNSIGNED-PAYLOAD")).body == data  # fmt: skip


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("wrong signature", 403, "SignatureDoesNotMatch"),
        ("expired presigned URL", 403, "AccessDenied"),
        ("unbuilt subresource", 501, "NotImplemented"),
        ("over 5 GiB", 400, "EntityTooLarge"),
    ],
)
def test_refused_before_100_continue_and_no_body_read(
    server: GatewayServer, bucket: str, connect: Callable[[], socket.socket],
    case: str, status: int, code: str,
) -> None:  # fmt: skip
    path = f"/{bucket}/refused"
    size = 8 * MIB
    if case == "wrong signature":
        headers = signed_headers(server.port, "PUT", path, "UNSIGNED-PAYLOAD",
                                 {"Content-Length": str(size)},
                                 secret_key="not " + SECRET_KEY)  # fmt: skip
        request = head_bytes("PUT", path, {**headers, "Expect": "100-continue"})
    elif case == "expired presigned URL":
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=minigrid-test%2F20200101%2F"
            "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&"
            "X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64
        )
        request = head_bytes("PUT", f"{path}?{query}", {
            "Host": f"127.0.0.1:{server.port}", "Content-Length": str(size),
            "Expect": "100-continue"})  # fmt: skip
    elif case == "unbuilt subresource":
        request = expect_put(server, f"{path}?retention", size)
    else:
        size = MAX_PUT_SIZE + 1
        request = expect_put(server, path, size)
    sock = connect()
    sock.sendall(request)
    answer, headers, rest = read_head(sock)  # the final answer, with no body sent at all
    assert answer == status
    assert f"<Code>{code}</Code>".encode() in read_body(sock, headers, rest)
    assert headers["connection"].lower() == "close"  # the body was never read
    assert no_uploads_in_progress(server)


def test_entity_too_large_is_answered_before_the_body(
    server: GatewayServer, bucket: str, connect: Callable[[], socket.socket]
) -> None:
    """No Expect header: the client starts sending, and gets the answer at once anyway."""
    plain = connect()
    plain.sendall(head_bytes("PUT", f"/{bucket}/big", signed_headers(
        server.port, "PUT", f"/{bucket}/big", "UNSIGNED-PAYLOAD",
        {"Content-Length": str(MAX_PUT_SIZE + 1)})) + b"x" * 1000)  # fmt: skip
    status, headers, rest = read_head(plain)
    body = read_body(plain, headers, rest)
    assert (status, b"<Code>EntityTooLarge</Code>" in body) == (400, True)
    assert f"<ProposedSize>{MAX_PUT_SIZE + 1}</ProposedSize>".encode() in body
    chunked = connect()
    chunked.sendall(head_bytes("PUT", f"/{bucket}/big", signed_headers(
        server.port, "PUT", f"/{bucket}/big", "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        {"Content-Length": "100", "Content-Encoding": "aws-chunked",
         "X-Amz-Decoded-Content-Length": str(MAX_PUT_SIZE + 1)})))  # fmt: skip
    status, headers, rest = read_head(chunked)
    assert b"<Code>EntityTooLarge</Code>" in read_body(chunked, headers, rest)


def test_exactly_5_gib_is_admitted(
    server: GatewayServer, bucket: str, connect: Callable[[], socket.socket]
) -> None:
    sock = connect()
    sock.sendall(expect_put(server, f"/{bucket}/five", MAX_PUT_SIZE))
    status, _, _ = read_head(sock)
    assert status == 100
    sock.close()  # hang up instead of sending 5 GiB
    wait(lambda: no_uploads_in_progress(server), "the abandoned upload to be cleaned up")


def wait(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def gateway_records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    """The gateway's own log records that mention ``text`` (not aiohttp's access log)."""
    return [r for r in caplog.records if r.name.startswith("node.") and text in r.getMessage()]


def test_a_501_is_one_line_without_traceback(
    server: GatewayServer, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = f"/{bucket}?publicAccessBlock"
    response = send(server.port, "DELETE", path,
                    signed_headers(server.port, "DELETE", path, "UNSIGNED-PAYLOAD"))  # fmt: skip
    assert response.status == 501
    wait(lambda: bool(gateway_records(caplog, "publicAccessBlock")), "the 501 log line")
    [record] = gateway_records(caplog, "publicAccessBlock")
    assert record.levelno == logging.INFO and record.exc_info is None
    assert "\n" not in record.getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("how", ["reset", "close"])
def test_a_client_hanging_up_mid_body_is_one_line(
    server: GatewayServer, bucket: str, connect: Callable[[], socket.socket],
    caplog: pytest.LogCaptureFixture, how: str,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    path = f"/{bucket}/hangup-{how}"
    headers = signed_headers(server.port, "PUT", path, "UNSIGNED-PAYLOAD",
                             {"Content-Length": str(4 * MIB)})  # fmt: skip
    sock = connect()
    sock.sendall(head_bytes("PUT", path, headers) + payload(MIB + 100, seed=3))
    if how == "reset":  # SO_LINGER 0: a reset, as when a client process dies
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()
    wait(lambda: bool(gateway_records(caplog, "went away")), "the hang-up log line")
    wait(lambda: no_uploads_in_progress(server), "the upload's temporary files to go")
    [record] = gateway_records(caplog, "went away")
    assert path in record.getMessage() and record.exc_info is None
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not gateway_records(caplog, "InternalError")


def test_a_real_500_keeps_its_traceback(
    server: GatewayServer, bucket: str, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A bug (here: an exception the object layer never raises) is logged with its traceback."""
    assert server.layer is not None

    async def broken(name: str) -> None:
        raise RuntimeError(f"simulated bug while looking at {name}")

    monkeypatch.setattr(server.layer, "head_bucket", broken)
    caplog.set_level(logging.INFO)
    response = send(
        server.port,
        "HEAD",
        f"/{bucket}",
        signed_headers(server.port, "HEAD", f"/{bucket}", "UNSIGNED-PAYLOAD"),
    )
    assert response.status == 500  # fmt: skip
    wait(lambda: bool(gateway_records(caplog, "InternalError")), "the 500 log line")
    [record] = gateway_records(caplog, "InternalError")
    assert record.levelno == logging.ERROR and record.exc_info is not None
