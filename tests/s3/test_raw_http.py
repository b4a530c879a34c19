"""Requests a well-behaved client does not send: bad signatures, tampered bodies, no auth.

Each is signed with botocore's SigV4 signer (or not at all) and sent with http.client, and each
failed upload is checked to have left nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from storage.local import iter_upload_ids
from tests.s3.helpers import (
    MIB,
    GatewayServer,
    encode_signed_chunks,
    encode_unsigned_chunks,
    payload,
    send,
    signed_headers,
)


def no_uploads_in_progress(server: GatewayServer) -> bool:
    """Every drive's temporary area is empty: an aborted write left no shards behind."""
    assert server.layer is not None
    return all(not list(iter_upload_ids(drive)) for drive in server.layer.sets[0].drives)


def absent(s3: Any, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        return int(exc.response["ResponseMetadata"]["HTTPStatusCode"]) == 404
    return False


def put_signed(
    server: GatewayServer, path: str, body: bytes, content_sha256: str, **extra: str
) -> Any:
    headers = signed_headers(
        server.port, "PUT", path, content_sha256, {"Content-Length": str(len(body)), **extra}
    )
    return send(server.port, "PUT", path, headers, body)


def test_no_authorization_is_access_denied(server: GatewayServer, bucket: str) -> None:
    listed = send(server.port, "GET", "/", {})
    assert listed.status == 403
    assert listed.code == "AccessDenied"
    assert listed.headers["x-amz-request-id"]
    assert b"<RequestId>" in listed.body and b"<Resource>/</Resource>" in listed.body
    put = send(server.port, "PUT", f"/{bucket}/anon", {"Content-Length": "3"}, b"abc")
    assert put.code == "AccessDenied"
    head = send(server.port, "HEAD", f"/{bucket}/anon", {})
    assert head.status == 403
    assert head.body == b""


def test_node_routes_come_first_and_minigrid_is_reserved(server: GatewayServer) -> None:
    assert send(server.port, "GET", "/minigrid/health/live", {}).body == b"ok"
    path = "/minigrid"
    reserved = send(
        server.port, "PUT", path, signed_headers(server.port, "PUT", path, "UNSIGNED-PAYLOAD")
    )
    assert reserved.status == 400
    assert reserved.code == "InvalidBucketName"


@pytest.mark.parametrize("size", [100, 3 * MIB + 5], ids=["inline", "streamed"])
def test_sha256_mismatch_commits_nothing(
    server: GatewayServer, s3: Any, bucket: str, size: int
) -> None:
    s3.put_object(Bucket=bucket, Key="kept", Body=b"version one")
    body = payload(size, seed=size)
    claimed = hashlib.sha256(body + b"!").hexdigest()
    for key in ("fresh", "kept"):
        response = put_signed(server, f"/{bucket}/{key}", body, claimed)
        assert response.status == 400
        assert response.code == "XAmzContentSHA256Mismatch"
    assert absent(s3, bucket, "fresh")
    assert no_uploads_in_progress(server)
    assert s3.get_object(Bucket=bucket, Key="kept")["Body"].read() == b"version one"


def test_signed_payload_that_matches_is_stored(server: GatewayServer, s3: Any, bucket: str) -> None:
    body = payload(MIB + 17, seed=5)
    response = put_signed(server, f"/{bucket}/ok", body, hashlib.sha256(body).hexdigest())
    assert response.status == 200
    assert response.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == body


def chunked_headers(server: GatewayServer, path: str, mode: str, data: bytes, encoded_len: int,
                    **extra: str) -> dict[str, str]:  # fmt: skip
    return signed_headers(
        server.port,
        "PUT",
        path,
        mode,
        {
            "Content-Encoding": "aws-chunked",
            "Content-Length": str(encoded_len),
            "X-Amz-Decoded-Content-Length": str(len(data)),
            **extra,
        },
    )


def signed_chunked_put(
    server: GatewayServer, path: str, data: bytes, *, corrupt: str = "", trailer: bool = False
) -> Any:
    mode = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD" + ("-TRAILER" if trailer else "")
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    extra = {"X-Amz-Trailer": "x-amz-checksum-crc32"} if trailer else {}
    trailers = {"x-amz-checksum-crc32": crc} if trailer else None
    # The chunk signatures depend on the seed signature, which depends on the encoded length:
    # sign once to learn the length (it does not depend on the signatures' values), then again.
    probe = chunked_headers(server, path, mode, data, 0, **extra)
    size = len(encode_signed_chunks(data, 64 * 1024, headers=probe, trailer=trailers))
    headers = chunked_headers(server, path, mode, data, size, **extra)
    body = bytearray(encode_signed_chunks(data, 64 * 1024, headers=headers, trailer=trailers))
    if corrupt == "signature":  # one hex digit of the third chunk's signature
        at = body.index(b"chunk-signature=", body.index(b"chunk-signature=", 100) + 100) + 16
        at = body.index(b"chunk-signature=", at) + 16
        body[at] = ord("0") if body[at] != ord("0") else ord("1")
    elif corrupt == "data":  # a payload byte in the second chunk
        at = body.index(b"\r\n", body.index(b"\r\n") + 2 + 64 * 1024 + 2) + 2 + 500
        body[at] ^= 0xFF
    return send(server.port, "PUT", path, headers, bytes(body))


@pytest.mark.parametrize("trailer", [False, True], ids=["plain", "signed-trailer"])
def test_signed_chunked_upload(server: GatewayServer, s3: Any, bucket: str, trailer: bool) -> None:
    data = payload(2 * MIB + 999, seed=7)
    response = signed_chunked_put(server, f"/{bucket}/chunked", data, trailer=trailer)
    assert response.status == 200, response.body
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == data


@pytest.mark.parametrize("corrupt", ["signature", "data"])
def test_corrupted_chunk_commits_nothing(
    server: GatewayServer, s3: Any, bucket: str, corrupt: str
) -> None:
    data = payload(MIB + 3, seed=8)
    response = signed_chunked_put(server, f"/{bucket}/tampered", data, corrupt=corrupt)
    assert response.status == 403
    assert response.code == "SignatureDoesNotMatch"
    assert absent(s3, bucket, "tampered")
    assert no_uploads_in_progress(server)


def test_unsigned_trailer_with_wrong_crc_commits_nothing(
    server: GatewayServer, s3: Any, bucket: str
) -> None:
    data = payload(300_000, seed=9)
    body = encode_unsigned_chunks(data, 8192, {"x-amz-checksum-crc32": "AAAAAA=="})
    path = f"/{bucket}/badcrc"
    headers = chunked_headers(
        server, path, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", data, len(body),
        **{"X-Amz-Trailer": "x-amz-checksum-crc32"},
    )  # fmt: skip
    response = send(server.port, "PUT", path, headers, body)
    assert response.status == 400
    assert response.code == "BadDigest"
    assert absent(s3, bucket, "badcrc")
    assert no_uploads_in_progress(server)


def test_decoded_length_must_match(server: GatewayServer, s3: Any, bucket: str) -> None:
    data = b"x" * 1000
    body = encode_unsigned_chunks(data, 100)
    path = f"/{bucket}/short"
    headers = chunked_headers(server, path, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", data + b"!",
                              len(body))  # fmt: skip
    response = send(server.port, "PUT", path, headers, body)
    assert response.code == "IncompleteBody"
    assert absent(s3, bucket, "short")


def test_missing_content_length(server: GatewayServer, bucket: str) -> None:
    path = f"/{bucket}/nolength"
    headers = signed_headers(server.port, "PUT", path, "UNSIGNED-PAYLOAD",
                             {"Transfer-Encoding": "chunked"})  # fmt: skip

    def pieces() -> Iterator[bytes]:
        yield b"abc"

    response = send(server.port, "PUT", path, headers, pieces())
    assert response.status == 411
    assert response.code == "MissingContentLength"


def test_request_time_too_skewed(server: GatewayServer) -> None:
    server.clock_offset = 3600.0
    try:
        response = send(
            server.port, "GET", "/", signed_headers(server.port, "GET", "/", "UNSIGNED-PAYLOAD")
        )
    finally:
        server.clock_offset = 0.0
    assert response.status == 403
    assert response.code == "RequestTimeTooSkewed"


def test_signature_mismatch_shows_the_canonical_request(server: GatewayServer) -> None:
    headers = signed_headers(server.port, "GET", "/", "UNSIGNED-PAYLOAD", secret_key="wrong")
    response = send(server.port, "GET", "/", headers)
    assert response.code == "SignatureDoesNotMatch"
    assert b"<CanonicalRequest>GET\n/\n" in response.body


def test_unsupported_operations_say_so(server: GatewayServer, bucket: str) -> None:
    for method, path in [("GET", f"/{bucket}?acl"), ("GET", f"/{bucket}?versioning"),
                         ("PUT", f"/{bucket}/k?legal-hold")]:  # fmt: skip
        headers = signed_headers(server.port, method, path, "UNSIGNED-PAYLOAD")
        response = send(server.port, method, path, headers)
        assert response.status == 501, path
        assert response.code == "NotImplemented"
        assert b"is not built" in response.body


def test_create_bucket_without_a_body_or_length(server: GatewayServer, s3: Any) -> None:
    path = "/no-length-bucket"
    response = send(
        server.port, "PUT", path, signed_headers(server.port, "PUT", path, "UNSIGNED-PAYLOAD")
    )
    assert response.status == 200, response.body
    s3.head_bucket(Bucket="no-length-bucket")
