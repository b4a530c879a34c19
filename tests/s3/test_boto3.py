"""The gateway as a real S3 client sees it: boto3 with its default configuration."""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.s3.helpers import MIB, OTHER_KEY, OTHER_SECRET, GatewayServer, client, payload


def error_code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def status(info: pytest.ExceptionInfo[ClientError]) -> int:
    return int(info.value.response["ResponseMetadata"]["HTTPStatusCode"])


# --- buckets -------------------------------------------------------------------------------


def test_bucket_create_head_list_delete(s3: Any) -> None:
    s3.create_bucket(Bucket="life-cycle")
    s3.head_bucket(Bucket="life-cycle")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert "life-cycle" in names
    assert s3.get_bucket_location(Bucket="life-cycle")["LocationConstraint"] is None
    s3.put_object(Bucket="life-cycle", Key="kept", Body=b"still here")
    # In us-east-1, S3 answers 200 to an owner re-creating a bucket, and changes nothing.
    again = s3.create_bucket(Bucket="life-cycle")
    assert again["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert s3.get_object(Bucket="life-cycle", Key="kept")["Body"].read() == b"still here"
    s3.delete_object(Bucket="life-cycle", Key="kept")
    s3.delete_bucket(Bucket="life-cycle")
    with pytest.raises(ClientError) as gone:
        s3.head_bucket(Bucket="life-cycle")
    assert status(gone) == 404
    assert "life-cycle" not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


def test_delete_non_empty_bucket_is_refused(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="keep", Body=b"x")
    with pytest.raises(ClientError) as refused:
        s3.delete_bucket(Bucket=bucket)
    assert error_code(refused) == "BucketNotEmpty"
    assert status(refused) == 409
    s3.delete_object(Bucket=bucket, Key="keep")
    s3.delete_bucket(Bucket=bucket)


def test_missing_bucket_and_key_codes(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as no_bucket:
        s3.get_object(Bucket="no-such-bucket", Key="k")
    assert error_code(no_bucket) == "NoSuchBucket"
    with pytest.raises(ClientError) as no_bucket_list:
        s3.list_objects_v2(Bucket="no-such-bucket")
    assert error_code(no_bucket_list) == "NoSuchBucket"
    with pytest.raises(ClientError) as no_key:
        s3.get_object(Bucket=bucket, Key="absent")
    assert error_code(no_key) == "NoSuchKey"
    assert status(no_key) == 404
    with pytest.raises(ClientError) as head_missing:
        s3.head_object(Bucket=bucket, Key="absent")
    assert status(head_missing) == 404


def test_invalid_and_reserved_bucket_names(s3: Any, server: GatewayServer) -> None:
    with pytest.raises(ClientError) as reserved:
        s3.create_bucket(Bucket="minigrid")
    assert error_code(reserved) == "InvalidBucketName"
    assert "reserved" in reserved.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as bad:
        s3.create_bucket(Bucket="Bad_Name")
    assert error_code(bad) == "InvalidBucketName"


# --- objects -------------------------------------------------------------------------------


def test_put_get_head_delete(s3: Any, bucket: str) -> None:
    body = b"hello, minigrid"
    put = s3.put_object(Bucket=bucket, Key="dir/hello.txt", Body=body)
    etag = f'"{hashlib.md5(body).hexdigest()}"'
    assert put["ETag"] == etag
    got = s3.get_object(Bucket=bucket, Key="dir/hello.txt")
    assert got["Body"].read() == body
    assert got["ETag"] == etag
    assert got["ContentLength"] == len(body)
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    head = s3.head_object(Bucket=bucket, Key="dir/hello.txt")
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == etag
    assert head["LastModified"].tzinfo is not None
    s3.delete_object(Bucket=bucket, Key="dir/hello.txt")
    with pytest.raises(ClientError) as gone:
        s3.head_object(Bucket=bucket, Key="dir/hello.txt")
    assert status(gone) == 404
    # S3 answers 204 for a key that was never there.
    deleted = s3.delete_object(Bucket=bucket, Key="never-was")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_empty_object_and_odd_keys(s3: Any, bucket: str) -> None:
    keys = ["empty", "with space/and+plus", "ünïcødé/ключ", "folder/"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b""
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(keys)


def test_metadata_and_content_type_round_trip(s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket,
        Key="meta",
        Body=b"{}",
        ContentType="application/json",
        Metadata={"owner": "ada", "purpose": "tests"},
    )
    head = s3.head_object(Bucket=bucket, Key="meta")
    assert head["ContentType"] == "application/json"
    assert head["Metadata"] == {"owner": "ada", "purpose": "tests"}
    got = s3.get_object(Bucket=bucket, Key="meta", ResponseContentDisposition="attachment")
    assert got["Metadata"] == {"owner": "ada", "purpose": "tests"}
    assert got["ContentDisposition"] == "attachment"


def test_range_reads(s3: Any, bucket: str) -> None:
    data = payload(3 * MIB + 123, seed=1)
    s3.put_object(Bucket=bucket, Key="ranged", Body=data)
    cases = {
        "bytes=0-9": (0, 10),
        "bytes=1048570-1048600": (1048570, 31),  # across a 1 MiB block edge
        f"bytes={len(data) - 5}-": (len(data) - 5, 5),
        "bytes=-100": (len(data) - 100, 100),
        f"bytes=10-{len(data) + 50}": (10, len(data) - 10),  # clamped to the end
    }
    for header, (offset, length) in cases.items():
        got = s3.get_object(Bucket=bucket, Key="ranged", Range=header)
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206, header
        assert got["ContentRange"] == f"bytes {offset}-{offset + length - 1}/{len(data)}"
        assert got["ContentLength"] == length
        assert got["Body"].read() == data[offset : offset + length], header
    with pytest.raises(ClientError) as beyond:
        s3.get_object(Bucket=bucket, Key="ranged", Range=f"bytes={len(data)}-")
    assert error_code(beyond) == "InvalidRange"
    assert status(beyond) == 416
    with pytest.raises(ClientError) as far_beyond:
        s3.get_object(Bucket=bucket, Key="ranged", Range=f"bytes={len(data) + 10}-{len(data) + 20}")
    assert error_code(far_beyond) == "InvalidRange"


def test_range_on_small_inline_object(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="small", Body=b"0123456789")
    got = s3.get_object(Bucket=bucket, Key="small", Range="bytes=-3")
    assert got["Body"].read() == b"789"
    with pytest.raises(ClientError) as empty_suffix:
        s3.get_object(Bucket=bucket, Key="small", Range="bytes=-0")
    assert status(empty_suffix) == 416


def test_multi_mib_round_trip_default_config(s3: Any, bucket: str) -> None:
    data = payload(6 * MIB + 7, seed=2)
    s3.put_object(Bucket=bucket, Key="big", Body=data)
    got = s3.get_object(Bucket=bucket, Key="big")
    assert got["Body"].read() == data
    assert got["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_default_https_client_sends_aws_chunked_with_crc32_trailer(
    s3_tls: Any, s3: Any, bucket: str
) -> None:
    """Over HTTPS, boto3 >= 1.36 streams PutObject as aws-chunked with a CRC32 trailer."""
    sent: list[dict[str, str]] = []
    s3_tls.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append({k: _text(v) for k, v in request.headers.items()}),
    )
    data = payload(5 * MIB + 3, seed=3)
    put = s3_tls.put_object(Bucket=bucket, Key="chunked", Body=data)
    headers = {k.lower(): v for k, v in sent[0].items()}
    assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert headers["x-amz-trailer"] == "x-amz-checksum-crc32"
    assert put["ChecksumCRC32"] == base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    got = s3_tls.get_object(Bucket=bucket, Key="chunked")
    assert got["Body"].read() == data
    assert s3.get_object(Bucket=bucket, Key="chunked", Range="bytes=-4")["Body"].read() == data[-4:]


def test_content_md5_mismatch_is_bad_digest(s3: Any, bucket: str) -> None:
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    with pytest.raises(ClientError) as bad:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"payload", ContentMD5=wrong)
    assert error_code(bad) == "BadDigest"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="md5")


def test_checksum_header_mismatch_is_bad_digest(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as bad:
        s3.put_object(Bucket=bucket, Key="crc", Body=b"payload", ChecksumCRC32="AAAAAA==")
    assert error_code(bad) == "BadDigest"
    put = s3.put_object(Bucket=bucket, Key="sha", Body=b"payload", ChecksumAlgorithm="SHA256")
    assert put["ChecksumSHA256"]


# --- listing -------------------------------------------------------------------------------


def test_list_objects_v2_prefix_delimiter_and_pages(s3: Any, bucket: str) -> None:
    keys = ["a.txt", "b/1", "b/2", "b/c/3", "d/4", "e"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    everything = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in everything["Contents"]] == keys
    assert everything["KeyCount"] == len(keys)
    assert everything["IsTruncated"] is False
    assert everything["Contents"][0]["Size"] == len("a.txt")
    assert everything["Contents"][0]["ETag"] == f'"{hashlib.md5(b"a.txt").hexdigest()}"'

    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a.txt", "e"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["b/", "d/"]
    assert top["KeyCount"] == 4

    under_b = s3.list_objects_v2(Bucket=bucket, Prefix="b/", Delimiter="/")
    assert [o["Key"] for o in under_b["Contents"]] == ["b/1", "b/2"]
    assert [p["Prefix"] for p in under_b["CommonPrefixes"]] == ["b/c/"]

    after = s3.list_objects_v2(Bucket=bucket, StartAfter="b/2")
    assert [o["Key"] for o in after["Contents"]] == ["b/c/3", "d/4", "e"]

    seen: list[str] = []
    pages = 0
    kwargs: dict[str, Any] = {"Bucket": bucket, "MaxKeys": 2}
    while True:
        page = s3.list_objects_v2(**kwargs)
        pages += 1
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        assert page["KeyCount"] == 2
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    assert seen == keys
    assert pages == 3

    paginator = s3.get_paginator("list_objects_v2")
    prefixes = [
        p["Prefix"]
        for page in paginator.paginate(
            Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 1}
        )
        for p in page.get("CommonPrefixes", [])
    ]
    assert prefixes == ["b/", "d/"]


def test_list_objects_v1(s3: Any, bucket: str) -> None:
    for key in ["k1", "k2", "k3"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    first = s3.list_objects(Bucket=bucket, MaxKeys=2)
    assert [o["Key"] for o in first["Contents"]] == ["k1", "k2"]
    assert first["IsTruncated"] is True
    rest = s3.list_objects(Bucket=bucket, Marker="k2")
    assert [o["Key"] for o in rest["Contents"]] == ["k3"]


# --- authentication ------------------------------------------------------------------------


def test_wrong_secret_is_signature_mismatch(server: GatewayServer, bucket: str) -> None:
    wrong = client(server.url, secret_key="not-the-secret")
    with pytest.raises(ClientError) as listed:
        wrong.list_buckets()
    assert error_code(listed) == "SignatureDoesNotMatch"
    assert status(listed) == 403
    with pytest.raises(ClientError) as put:
        wrong.put_object(Bucket=bucket, Key="nope", Body=b"data")
    assert error_code(put) == "SignatureDoesNotMatch"


def test_unknown_access_key(server: GatewayServer) -> None:
    stranger = client(server.url, access_key="nobody")
    with pytest.raises(ClientError) as denied:
        stranger.list_buckets()
    assert error_code(denied) == "InvalidAccessKeyId"
    assert status(denied) == 403


def test_second_credential_works(server: GatewayServer, bucket: str) -> None:
    other = client(server.url, access_key=OTHER_KEY, secret_key=OTHER_SECRET)
    other.put_object(Bucket=bucket, Key="by-other", Body=b"1")
    assert other.get_object(Bucket=bucket, Key="by-other")["Body"].read() == b"1"


def test_wrong_region_is_malformed_authorization(server: GatewayServer) -> None:
    import boto3
    from botocore.config import Config

    from tests.s3.helpers import ACCESS_KEY, SECRET_KEY

    elsewhere = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="eu-west-1"
    ).client("s3", endpoint_url=server.url, config=Config(s3={"addressing_style": "path"}))
    with pytest.raises(ClientError) as wrong:
        elsewhere.list_buckets()
    assert error_code(wrong) == "AuthorizationHeaderMalformed"
    assert "us-east-1" in wrong.value.response["Error"]["Message"]


def test_presigned_get(s3: Any, server: GatewayServer, bucket: str) -> None:
    import urllib.error
    import urllib.request

    s3.put_object(Bucket=bucket, Key="shared", Body=b"presigned body")
    # boto3 presigns with Signature Version 2 unless told otherwise; the gateway wants v4.
    v2_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared"})
    with pytest.raises(urllib.error.HTTPError) as v2:
        urllib.request.urlopen(v2_url, timeout=10)
    assert v2.value.code == 403
    assert b"Signature Version 4" in v2.value.read()
    v2.value.close()
    s3 = client(server.url, signature_version="s3v4")
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "shared"}, ExpiresIn=60
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned body"
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "uploaded"}, ExpiresIn=60
    )
    request = urllib.request.Request(put_url, data=b"via presigned put", method="PUT")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert s3.get_object(Bucket=bucket, Key="uploaded")["Body"].read() == b"via presigned put"
    tampered = url.replace("Key=shared", "Key=other").replace("/shared?", "/other?")
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(tampered, timeout=10)
    assert denied.value.code == 403
    denied.value.close()


def test_delete_objects(s3: Any, bucket: str) -> None:
    for key in ["x/1", "x/2", "y"]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    result = s3.delete_objects(
        Bucket=bucket,
        Delete={"Objects": [{"Key": "x/1"}, {"Key": "x/2"}, {"Key": "never"}, {"Key": "../bad"}]},
    )
    assert sorted(d["Key"] for d in result["Deleted"]) == ["never", "x/1", "x/2"]
    assert [e["Key"] for e in result["Errors"]] == ["../bad"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["y"]


def test_unbuilt_operations_name_themselves(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as refused:
        s3.put_object_retention(
            Bucket=bucket,
            Key="k",
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": "2030-01-01"},
        )
    assert error_code(refused) == "NotImplemented"
    assert status(refused) == 501
    message = refused.value.response["Error"]["Message"]
    assert "PutObjectRetention (PUT ?retention on an object) is not built" in message


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
