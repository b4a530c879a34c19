"""Lost quorum as a client sees it: 503 ServiceUnavailable naming the quorum, nothing half-done."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from node.s3.errors import from_exception
from storage import errors as storage_errors
from tests.s3.helpers import GatewayServer, client


@pytest.fixture(scope="module")
def faulty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """A gateway over four FaultyDrive-wrapped drives (2 data + 2 parity, write quorum 3)."""
    server = GatewayServer(str(tmp_path_factory.mktemp("faulty")), faulty=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def no_retry(faulty_server: GatewayServer) -> Iterator[Any]:
    s3 = client(faulty_server.url, retries={"total_max_attempts": 1})
    yield s3
    s3.close()


def test_lost_write_quorum_is_503_and_reads_still_work(
    faulty_server: GatewayServer, no_retry: Any, tmp_path: Path
) -> None:
    s3 = no_retry
    s3.create_bucket(Bucket="quorum")
    s3.put_object(Bucket="quorum", Key="before", Body=b"old")
    for drive in faulty_server.drives[:2]:
        drive.offline = True
    try:
        with pytest.raises(ClientError) as refused:
            s3.put_object(Bucket="quorum", Key="during", Body=b"x" * 300_000)
        error = refused.value.response["Error"]
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert error["Code"] == "ServiceUnavailable"
        assert error["Message"].startswith("write quorum not reached:")
        # Two of four drives still hold k = 2 shards: reads keep working.
        assert s3.get_object(Bucket="quorum", Key="before")["Body"].read() == b"old"
    finally:
        for drive in faulty_server.drives:
            drive.offline = False
    with pytest.raises(ClientError) as absent:
        s3.head_object(Bucket="quorum", Key="during")
    assert absent.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_lost_read_quorum_is_503(faulty_server: GatewayServer, no_retry: Any) -> None:
    s3 = no_retry
    s3.create_bucket(Bucket="reads")
    s3.put_object(Bucket="reads", Key="k", Body=b"data")
    for drive in faulty_server.drives[:3]:
        drive.offline = True
    try:
        with pytest.raises(ClientError) as refused:
            s3.get_object(Bucket="reads", Key="k")
    finally:
        for drive in faulty_server.drives:
            drive.offline = False
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert refused.value.response["Error"]["Message"].startswith("read quorum not reached:")


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (storage_errors.BucketNotFound("b"), "NoSuchBucket", 404),
        (storage_errors.ObjectNotFound("k"), "NoSuchKey", 404),
        (storage_errors.BucketExists("b"), "BucketAlreadyOwnedByYou", 409),
        (storage_errors.BucketNotEmpty("b"), "BucketNotEmpty", 409),
        (storage_errors.InvalidRange("r"), "InvalidRange", 416),
        (storage_errors.InvalidName("n"), "InvalidArgument", 400),
        (storage_errors.IncompleteBody("i"), "IncompleteBody", 400),
        (storage_errors.WriteQuorum("w"), "ServiceUnavailable", 503),
        (storage_errors.ReadQuorum("r"), "ServiceUnavailable", 503),
        (storage_errors.FileCorrupt("c"), "InternalError", 500),
        (RuntimeError("bug"), "InternalError", 500),
    ],
)
def test_error_mapping(exc: Exception, code: str, status: int) -> None:
    error = from_exception(exc)
    assert (error.code, error.status) == (code, status)
