"""A node that dies mid-answer (as the chaos soak kills them) gives the CLI's signed client a
clear S3ClientError, never an http.client exception that kills the caller's thread (the lab
sampler died of one in a fresh-clone CI run)."""

from __future__ import annotations

import socket
import threading

import pytest

from cli.errors import S3ClientError
from cli.signed import SignedClient


def _serve_one_cut_answer(listener: socket.socket) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)  # the request
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    # closed before the first chunk: the body is cut short


def test_an_answer_cut_short_is_an_s3_client_error() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = threading.Thread(target=_serve_one_cut_answer, args=(listener,), daemon=True)
    server.start()
    try:
        client = SignedClient(f"http://127.0.0.1:{port}", "access", "secret", timeout=10)
        with pytest.raises(S3ClientError) as cut:
            client.call("GET", "/minigrid/admin/v1/top")
        assert cut.value.code == "Unreachable"
        assert "cut short" in str(cut.value)
    finally:
        server.join(10)
        listener.close()
