"""Memory stays flat however large the object: bodies stream in both directions."""

from __future__ import annotations

import base64
import hashlib
import http.client
import tracemalloc
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.s3.helpers import MIB, GatewayServer, payload, signed_headers

CHUNK = payload(MIB, seed=42)


def chunked_body(total: int) -> Iterator[bytes]:
    """An aws-chunked body with a CRC32 trailer, framed lazily from one repeated chunk."""
    crc = 0
    for pos in range(0, total, len(CHUNK)):
        piece = CHUNK[: total - pos]
        crc = zlib.crc32(piece, crc)
        yield f"{len(piece):x}\r\n".encode()
        yield piece
        yield b"\r\n"
    trailer = base64.b64encode(crc.to_bytes(4, "big"))
    yield b"0\r\nx-amz-checksum-crc32:" + trailer + b"\r\n\r\n"


def encoded_length(total: int) -> int:
    return sum(len(part) for part in chunked_body(total))


def put_and_get(server: GatewayServer, bucket: str, total: int) -> tuple[int, int]:
    path = f"/{bucket}/big-{total}"
    headers = signed_headers(
        server.port,
        "PUT",
        path,
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        {
            "Content-Encoding": "aws-chunked",
            "Content-Length": str(encoded_length(total)),
            "X-Amz-Decoded-Content-Length": str(total),
            "X-Amz-Trailer": "x-amz-checksum-crc32",
        },
    )
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    tracemalloc.start()
    try:
        connection.request("PUT", path, body=chunked_body(total), headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        get_headers = signed_headers(server.port, "GET", path, "UNSIGNED-PAYLOAD")
        connection.request("GET", path, headers=get_headers)
        response = connection.getresponse()
        digest: Any = hashlib.md5()
        received = 0
        while piece := response.read(256 * 1024):
            digest.update(piece)
            received += len(piece)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        connection.close()
    assert received == total
    assert response.headers["ETag"] == f'"{digest.hexdigest()}"'
    return put_peak, get_peak


@pytest.mark.timeout(60)
def test_put_and_get_memory_does_not_grow_with_size(server: GatewayServer, bucket: str) -> None:
    small_put, small_get = put_and_get(server, bucket, 4 * MIB)
    big_put, big_get = put_and_get(server, bucket, 48 * MIB)
    # A few 1 MiB blocks and their shards in flight, never the object.
    assert big_put < 16 * MIB, (small_put, big_put)
    assert big_get < 16 * MIB, (small_get, big_get)
