"""A CompleteMultipartUpload that outlasts the client's read timeout, as a 1 GiB one does on a
busy node: the gateway answers 200 at once and keeps the connection alive with spaces (as S3
does), then sends the result, or an Error document that clients read as a failure. Two
completions of one upload never run together.

Assembly is held with ``FaultyDrive.hold("assemble_parts")``, so "long" is a condition the test
controls, not a duration."""

from __future__ import annotations

import hashlib
import http.client
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from storage.testing import MIB, payload
from tests.cluster.helpers import wait_for
from tests.s3.helpers import GatewayServer, client, signed_headers

BUCKET = "long-complete"
KEEPALIVE = {"keepalive_after": 0.05, "keepalive_every": 0.05}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    gateway = GatewayServer(str(tmp_path_factory.mktemp("long")), faulty=True,
                            gateway_options=KEEPALIVE)  # fmt: skip
    gateway.start()
    gateway_client = client(gateway.url)
    gateway_client.create_bucket(Bucket=BUCKET)
    yield gateway
    gateway.stop()


@pytest.fixture
def s3(server: GatewayServer) -> Iterator[Any]:
    s3_client = client(server.url, retries={"total_max_attempts": 1})
    yield s3_client
    s3_client.close()


def _upload(s3: Any, key: str) -> tuple[str, bytes, bytes]:
    """An upload of two parts, not completed: its ID, the data and the Complete body."""
    data = payload(5 * MIB + 1000, seed=len(key))
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    for number, chunk in ((1, data[: 5 * MIB]), (2, data[5 * MIB :])):
        etag = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number,
                              Body=chunk)["ETag"]  # fmt: skip
        parts.append(f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag></Part>")
    body = f"<CompleteMultipartUpload>{''.join(parts)}</CompleteMultipartUpload>".encode()
    return upload_id, data, body


class _Hold:
    """Hold every drive's assemble_parts until released (from the test's thread)."""

    def __init__(self, server: GatewayServer) -> None:
        self.server = server
        self.events = [drive.hold("assemble_parts") for drive in server.drives]

    def waiting(self) -> int:
        return sum(drive.held["assemble_parts"] for drive in self.server.drives)

    def release(self) -> None:
        assert self.server.loop is not None
        for event in self.events:
            self.server.loop.call_soon_threadsafe(event.set)

    def done(self) -> None:
        for drive in self.server.drives:
            drive.holds.pop("assemble_parts", None)


def _start_complete(server: GatewayServer, key: str, upload_id: str,
                    body: bytes) -> http.client.HTTPConnection:  # fmt: skip
    path = f"/{BUCKET}/{key}?uploadId={upload_id}"
    headers = signed_headers(server.port, "POST", path, hashlib.sha256(body).hexdigest())
    # Every read must see a byte within this: the keep-alive spaces are what make that true.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("POST", path, body=body, headers=headers)
    return connection


def test_a_held_complete_is_answered_200_and_kept_alive_then_gets_its_result(
    server: GatewayServer, s3: Any
) -> None:
    upload_id, data, body = _upload(s3, "kept-alive")
    hold = _Hold(server)
    connection = None
    try:
        connection = _start_complete(server, "kept-alive", upload_id, body)
        response = connection.getresponse()  # while every assembly is still held
        assert response.status == 200
        # The 200 leaves after keepalive_after, maybe before the completion has read its part
        # lists and reached the (held) assembly: wait for it to get there.
        wait_for(lambda: hold.waiting() > 0, 10, "the assembly to be held")
        head = response.read(len(b'<?xml version="1.0" encoding="UTF-8"?>\n'))
        assert head.startswith(b"<?xml")
        assert response.read(5) == b"     "  # five keep-alive spaces, each inside the timeout
        assert hold.waiting() > 0
        hold.release()
        rest = response.read().decode()
    finally:
        if connection is not None:
            connection.close()
        hold.done()
        hold.release()
    assert "<CompleteMultipartUploadResult" in rest.strip(), rest
    etag = s3.head_object(Bucket=BUCKET, Key="kept-alive")["ETag"].strip('"')
    assert etag.endswith("-2") and etag in rest
    assert s3.get_object(Bucket=BUCKET, Key="kept-alive")["Body"].read() == data
    assert server.gateway is not None and server.gateway.kept_alive == 0


def test_a_complete_that_fails_after_the_200_sends_an_error_that_boto3_raises(
    server: GatewayServer, s3: Any
) -> None:
    upload_id, _, _ = _upload(s3, "fails-late")
    parts = s3.list_parts(Bucket=BUCKET, Key="fails-late", UploadId=upload_id)["Parts"]
    hold = _Hold(server)
    outcome: dict[str, Any] = {}

    def complete() -> None:
        try:
            s3.complete_multipart_upload(
                Bucket=BUCKET, Key="fails-late", UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]}
                                           for p in parts]},
            )  # fmt: skip
        except ClientError as exc:
            outcome["error"] = exc.response

    worker = threading.Thread(target=complete, daemon=True)
    worker.start()
    gateway = server.gateway
    assert gateway is not None
    try:
        wait_for(lambda: hold.waiting() == len(server.drives), 30, "every assembly held")
        wait_for(lambda: gateway.kept_alive == 1, 30, "the 200 to be sent")
        for drive in server.drives[:2]:  # a write quorum (3 of 4) can no longer commit
            drive.fail_rename = True
        hold.release()
        worker.join(30)
    finally:
        hold.done()
        hold.release()
        for drive in server.drives:
            drive.fail_rename = False
    assert not worker.is_alive()
    error = outcome["error"]
    assert error["Error"]["Code"] == "ServiceUnavailable", error
    assert error["Error"]["Message"].startswith("write quorum not reached"), error
    with pytest.raises(ClientError) as absent:
        s3.head_object(Bucket=BUCKET, Key="fails-late")
    assert absent.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_two_completions_of_one_upload_run_one_after_the_other(
    server: GatewayServer, s3: Any
) -> None:
    """A client that retries while the first completion still assembles: before, both took
    part files from each other's drives and both failed (DriveNotFound x4 in a 1 GiB run)."""
    upload_id, data, body = _upload(s3, "twice")
    hold = _Hold(server)
    try:
        first = _start_complete(server, "twice", upload_id, body)
        wait_for(lambda: hold.waiting() == len(server.drives), 30, "the first assembly held")
        second = _start_complete(server, "twice", upload_id, body)
        gateway = server.gateway
        assert gateway is not None
        wait_for(lambda: gateway.kept_alive == 2, 30, "both answered 200 and waiting")
        assert hold.waiting() == len(server.drives)  # the second waits for the first
        hold.release()
        answers = [conn.getresponse().read().decode() for conn in (first, second)]
        first.close()
        second.close()
    finally:
        hold.done()
        hold.release()
    assert "<CompleteMultipartUploadResult" in answers[0], answers[0]
    assert "<Code>NoSuchUpload</Code>" in answers[1], answers[1]
    assert s3.get_object(Bucket=BUCKET, Key="twice")["Body"].read() == data
