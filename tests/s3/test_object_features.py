"""CopyObject, conditional requests, metadata, tagging and checksums, each against the status
code and headers the S3 API reference documents."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import urllib.error
import urllib.request
import zlib
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.s3.helpers import ACCESS_KEY, SECRET_KEY, GatewayServer, client, send, signed_headers


def error(info: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = info.value.response
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), str(response["Error"]["Code"])


def status(response: dict[str, Any]) -> int:
    return int(response["ResponseMetadata"]["HTTPStatusCode"])


# --- conditional requests -------------------------------------------------------------------


def test_get_and_head_conditions(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"conditional")["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    before, after = modified - dt.timedelta(hours=1), modified + dt.timedelta(hours=1)
    for call in (s3.get_object, s3.head_object):
        assert status(call(Bucket=bucket, Key="c", IfMatch=etag)) == 200
        assert status(call(Bucket=bucket, Key="c", IfNoneMatch='"other"')) == 200
        assert status(call(Bucket=bucket, Key="c", IfModifiedSince=before)) == 200
        assert status(call(Bucket=bucket, Key="c", IfUnmodifiedSince=after)) == 200
        with pytest.raises(ClientError) as mismatch:
            call(Bucket=bucket, Key="c", IfMatch='"other"')
        assert error(mismatch)[0] == 412
        with pytest.raises(ClientError) as changed:
            call(Bucket=bucket, Key="c", IfUnmodifiedSince=before)
        assert error(changed)[0] == 412
        with pytest.raises(ClientError) as same:
            call(Bucket=bucket, Key="c", IfNoneMatch=etag)
        assert error(same)[0] == 304
        with pytest.raises(ClientError) as unchanged:
            call(Bucket=bucket, Key="c", IfModifiedSince=after)
        assert error(unchanged)[0] == 304
        # S3's precedence: If-Match true wins over If-Unmodified-Since false (200) ...
        both = call(Bucket=bucket, Key="c", IfMatch=etag, IfUnmodifiedSince=before)
        assert status(both) == 200
        # ... and If-None-Match false with If-Modified-Since true is 304.
        with pytest.raises(ClientError) as precedence:
            call(Bucket=bucket, Key="c", IfNoneMatch=etag, IfModifiedSince=before)
        assert error(precedence)[0] == 304
    with pytest.raises(ClientError) as failed:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"other"')
    assert error(failed) == (412, "PreconditionFailed")
    with pytest.raises(ClientError) as not_modified:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    headers = not_modified.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["etag"] == etag and "last-modified" in headers


def test_put_if_none_match_is_create_only(s3: Any, bucket: str) -> None:
    created = s3.put_object(Bucket=bucket, Key="once", Body=b"first", IfNoneMatch="*")
    assert status(created) == 200
    with pytest.raises(ClientError) as exists:
        s3.put_object(Bucket=bucket, Key="once", Body=b"second", IfNoneMatch="*")
    assert error(exists) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=bucket, Key="once")["Body"].read() == b"first"


def test_put_if_match_replaces_only_that_version(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="swap", Body=b"v1")["ETag"]
    with pytest.raises(ClientError) as other:
        s3.put_object(Bucket=bucket, Key="swap", Body=b"v2", IfMatch='"0123"')
    assert error(other) == (412, "PreconditionFailed")
    assert status(s3.put_object(Bucket=bucket, Key="swap", Body=b"v2", IfMatch=etag)) == 200
    assert s3.get_object(Bucket=bucket, Key="swap")["Body"].read() == b"v2"
    with pytest.raises(ClientError) as absent:
        s3.put_object(Bucket=bucket, Key="never", Body=b"v1", IfMatch=etag)
    assert error(absent) == (404, "NoSuchKey")


# --- copy -----------------------------------------------------------------------------------


def test_copy_keeps_or_replaces_metadata(s3: Any, bucket: str) -> None:
    s3.put_object(
        Bucket=bucket, Key="src", Body=b"copy me", ContentType="text/plain",
        Metadata={"colour": "blue"}, CacheControl="max-age=60", Tagging="a=1",
    )  # fmt: skip
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"copy me").hexdigest()}"'
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert (head["ContentType"], head["Metadata"], head["CacheControl"]) == (
        "text/plain", {"colour": "blue"}, "max-age=60"
    )  # fmt: skip
    assert s3.get_object_tagging(Bucket=bucket, Key="dst")["TagSet"] == [{"Key": "a", "Value": "1"}]
    s3.copy_object(
        Bucket=bucket, Key="dst2", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
        ContentType="application/x-new", Metadata={"shape": "round"},
        TaggingDirective="REPLACE", Tagging="b=2",
    )  # fmt: skip
    head = s3.head_object(Bucket=bucket, Key="dst2")
    assert (head["ContentType"], head["Metadata"]) == ("application/x-new", {"shape": "round"})
    assert "CacheControl" not in head
    assert s3.get_object_tagging(Bucket=bucket, Key="dst2")["TagSet"] == [
        {"Key": "b", "Value": "2"}
    ]
    assert s3.get_object(Bucket=bucket, Key="dst2")["Body"].read() == b"copy me"


def test_copy_onto_itself_needs_replace(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="self", Body=b"same bytes", Metadata={"v": "1"})
    source = {"Bucket": bucket, "Key": "self"}
    with pytest.raises(ClientError) as refused:
        s3.copy_object(Bucket=bucket, Key="self", CopySource=source)
    assert error(refused) == (400, "InvalidRequest")
    s3.copy_object(
        Bucket=bucket, Key="self", CopySource=source, MetadataDirective="REPLACE",
        Metadata={"v": "2"},
    )  # fmt: skip
    head = s3.head_object(Bucket=bucket, Key="self")
    assert head["Metadata"] == {"v": "2"}
    assert s3.get_object(Bucket=bucket, Key="self")["Body"].read() == b"same bytes"


def test_copy_source_conditions(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="cs", Body=b"source")["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="cs")["LastModified"]
    source = {"Bucket": bucket, "Key": "cs"}
    ok = s3.copy_object(Bucket=bucket, Key="cd", CopySource=source, CopySourceIfMatch=etag)
    assert status(ok) == 200
    for condition in (
        {"CopySourceIfMatch": '"other"'},
        {"CopySourceIfNoneMatch": etag},
        {"CopySourceIfModifiedSince": modified + dt.timedelta(hours=1)},
        {"CopySourceIfUnmodifiedSince": modified - dt.timedelta(hours=1)},
    ):
        with pytest.raises(ClientError) as failed:
            s3.copy_object(Bucket=bucket, Key="cd2", CopySource=source, **condition)
        assert error(failed) == (412, "PreconditionFailed"), condition
    with pytest.raises(ClientError) as absent:
        s3.head_object(Bucket=bucket, Key="cd2")
    assert error(absent)[0] == 404
    with pytest.raises(ClientError) as missing:
        s3.copy_object(Bucket=bucket, Key="cd3", CopySource={"Bucket": bucket, "Key": "none"})
    assert error(missing) == (404, "NoSuchKey")


# --- metadata -------------------------------------------------------------------------------


def test_system_metadata_is_stored_and_returned(s3: Any, bucket: str) -> None:
    expires = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    s3.put_object(
        Bucket=bucket, Key="sys", Body=b"{}", CacheControl="no-cache",
        ContentDisposition='attachment; filename="a.json"', ContentEncoding="identity",
        ContentLanguage="fr-CA", Expires=expires,
    )  # fmt: skip
    for answer in (
        s3.head_object(Bucket=bucket, Key="sys"),
        s3.get_object(Bucket=bucket, Key="sys"),
    ):
        assert answer["CacheControl"] == "no-cache"
        assert answer["ContentDisposition"] == 'attachment; filename="a.json"'
        assert answer["ContentEncoding"] == "identity"
        assert answer["ContentLanguage"] == "fr-CA"
        assert answer["Expires"] == expires


def put_raw_meta(server: GatewayServer, path: str, value: str) -> int:
    """PUT with ``x-amz-meta-name`` sent as raw UTF-8 bytes (boto3 refuses non-ASCII
    metadata; other clients send it as is)."""
    headers = signed_headers(
        server.port, "PUT", path, hashlib.sha256(b"").hexdigest(),
        {"x-amz-meta-name": value, "x-amz-meta-plain": "ok", "Content-Length": "0"},
    )  # fmt: skip
    raw = {name: (v.encode() if name == "x-amz-meta-name" else v) for name, v in headers.items()}
    return send(server.port, "PUT", path, raw).status  # type: ignore[arg-type]


def test_non_ascii_user_metadata_comes_back_rfc_2047_encoded(
    s3: Any, bucket: str, server: GatewayServer
) -> None:
    assert put_raw_meta(server, f"/{bucket}/utf8", "café ☕") == 200
    meta = s3.head_object(Bucket=bucket, Key="utf8")["Metadata"]
    # S3 stores non-ASCII values and answers them RFC 2047 encoded; the client decodes.
    assert meta["plain"] == "ok"
    encoded = "=?UTF-8?B?" + base64.b64encode("café ☕".encode()).decode() + "?="
    assert meta["name"] == encoded
    # A value sent RFC 2047 encoded is decoded before it is stored: the same answer.
    path = f"/{bucket}/encoded"
    headers = signed_headers(
        server.port, "PUT", path, hashlib.sha256(b"").hexdigest(),
        {"x-amz-meta-name": "=?utf-8?q?caf=C3=A9_=E2=98=95?=", "Content-Length": "0"},
    )  # fmt: skip
    assert send(server.port, "PUT", path, headers).status == 200
    assert s3.head_object(Bucket=bucket, Key="encoded")["Metadata"]["name"] == encoded


def test_user_metadata_over_2_kib_is_refused(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as big:
        s3.put_object(Bucket=bucket, Key="big-meta", Body=b"", Metadata={"k": "v" * 2100})
    assert error(big) == (400, "MetadataTooLarge")


# --- tagging --------------------------------------------------------------------------------


def test_tagging_put_get_delete(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="t", Body=b"tagged", Tagging="project=blue&stage=")
    assert s3.get_object(Bucket=bucket, Key="t")["TagCount"] == 2
    tags = s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("project", "blue"), ("stage", "")]
    modified = s3.head_object(Bucket=bucket, Key="t")["LastModified"]
    s3.put_object_tagging(
        Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "new", "Value": "é/+=.:_@ -"}]}
    )
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [
        {"Key": "new", "Value": "é/+=.:_@ -"}
    ]
    # Tagging changes neither the data nor Last-Modified.
    head = s3.head_object(Bucket=bucket, Key="t")
    assert head["LastModified"] == modified
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == b"tagged"
    deleted = s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert status(deleted) == 204
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    with pytest.raises(ClientError) as missing:
        s3.get_object_tagging(Bucket=bucket, Key="nope")
    assert error(missing) == (404, "NoSuchKey")


def test_tag_limits(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="limits", Body=b"")
    cases = [
        ([{"Key": f"k{n}", "Value": "v"} for n in range(11)], "BadRequest"),
        ([{"Key": "k" * 129, "Value": "v"}], "InvalidTag"),
        ([{"Key": "k", "Value": "v" * 257}], "InvalidTag"),
        ([{"Key": "k", "Value": "a"}, {"Key": "k", "Value": "b"}], "InvalidTag"),
        ([{"Key": "aws:reserved", "Value": "v"}], "InvalidTag"),
        ([{"Key": "bad*char", "Value": "v"}], "InvalidTag"),
    ]
    for tag_set, code in cases:
        with pytest.raises(ClientError) as refused:
            s3.put_object_tagging(Bucket=bucket, Key="limits", Tagging={"TagSet": tag_set})
        assert error(refused) == (400, code), tag_set
    with pytest.raises(ClientError) as header:
        s3.put_object(Bucket=bucket, Key="limits2", Body=b"", Tagging="aws:x=1")
    assert error(header) == (400, "InvalidTag")
    s3.put_object_tagging(
        Bucket=bucket, Key="limits",
        Tagging={"TagSet": [{"Key": f"k{n}", "Value": "v"} for n in range(10)]},
    )  # fmt: skip
    assert len(s3.get_object_tagging(Bucket=bucket, Key="limits")["TagSet"]) == 10


# --- checksums ------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256"])
def test_checksums_are_stored_and_returned(s3: Any, bucket: str, algorithm: str) -> None:
    body = b"checksummed body " * 1000
    put = s3.put_object(
        Bucket=bucket, Key=f"ck-{algorithm}", Body=body, ChecksumAlgorithm=algorithm
    )
    value = put[f"Checksum{algorithm}"]
    if algorithm == "CRC32":
        assert base64.b64decode(value) == zlib.crc32(body).to_bytes(4, "big")
    if algorithm == "SHA256":
        assert base64.b64decode(value) == hashlib.sha256(body).digest()
    plain = s3.head_object(Bucket=bucket, Key=f"ck-{algorithm}")
    assert f"Checksum{algorithm}" not in plain  # only with ChecksumMode
    for answer in (
        s3.head_object(Bucket=bucket, Key=f"ck-{algorithm}", ChecksumMode="ENABLED"),
        s3.get_object(Bucket=bucket, Key=f"ck-{algorithm}", ChecksumMode="ENABLED"),
    ):
        assert answer[f"Checksum{algorithm}"] == value
        assert answer["ChecksumType"] == "FULL_OBJECT"
    attributes = s3.get_object_attributes(
        Bucket=bucket, Key=f"ck-{algorithm}", ObjectAttributes=["Checksum", "ETag", "ObjectSize"]
    )
    assert attributes["Checksum"][f"Checksum{algorithm}"] == value
    assert attributes["ETag"] == hashlib.md5(body).hexdigest()
    assert attributes["ObjectSize"] == len(body)


@pytest.mark.parametrize("algorithm", ["crc32c", "crc64nvme", "sha1"])
def test_a_wrong_checksum_is_bad_digest(
    server: GatewayServer, s3: Any, bucket: str, algorithm: str
) -> None:
    body = b"the body"
    width = {"crc32c": 4, "crc64nvme": 8, "sha1": 20}[algorithm]
    wrong = base64.b64encode(b"\x01" * width).decode()
    path = f"/{bucket}/wrong-{algorithm}"
    headers = signed_headers(
        server.port, "PUT", path, hashlib.sha256(body).hexdigest(),
        {f"x-amz-checksum-{algorithm}": wrong, "Content-Length": str(len(body))},
    )  # fmt: skip
    answer = send(server.port, "PUT", path, headers, body)
    assert (answer.status, answer.code) == (400, "BadDigest")
    with pytest.raises(ClientError) as absent:
        s3.head_object(Bucket=bucket, Key=f"wrong-{algorithm}")
    assert error(absent)[0] == 404


def test_get_object_attributes_of_a_multipart_object(s3: Any, bucket: str) -> None:
    part = b"p" * (5 << 20)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="attrs", ChecksumAlgorithm="SHA256")
    done = []
    for number, data in enumerate([part, b"end"], start=1):
        answer = s3.upload_part(
            Bucket=bucket, Key="attrs", UploadId=upload["UploadId"], PartNumber=number,
            Body=data, ChecksumAlgorithm="SHA256",
        )  # fmt: skip
        done.append({"PartNumber": number, "ETag": answer["ETag"],
                     "ChecksumSHA256": answer["ChecksumSHA256"]})  # fmt: skip
    s3.complete_multipart_upload(
        Bucket=bucket, Key="attrs", UploadId=upload["UploadId"], MultipartUpload={"Parts": done}
    )
    attributes = s3.get_object_attributes(
        Bucket=bucket, Key="attrs", ObjectAttributes=["ObjectParts", "StorageClass"], MaxParts=1
    )
    parts = attributes["ObjectParts"]
    assert parts["TotalPartsCount"] == 2 and parts["IsTruncated"]
    assert parts["Parts"] == [{"PartNumber": 1, "Size": len(part),
                               "ChecksumSHA256": done[0]["ChecksumSHA256"]}]  # fmt: skip
    assert attributes["StorageClass"] == "STANDARD"


# --- listings, region and presigning ---------------------------------------------------------


def test_fetch_owner(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="owned", Body=b"")
    assert "Owner" not in s3.list_objects_v2(Bucket=bucket)["Contents"][0]
    listed = s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"][0]
    assert listed["Owner"]["ID"]
    assert s3.list_objects(Bucket=bucket)["Contents"][0]["Owner"]["ID"] == listed["Owner"]["ID"]
    assert s3.list_buckets()["Owner"]["ID"] == listed["Owner"]["ID"]


def test_list_buckets_pages(s3: Any) -> None:
    for suffix in ("x", "y", "z"):
        s3.create_bucket(Bucket=f"pages-{suffix}")
    first = s3.list_buckets(Prefix="pages-", MaxBuckets=2)
    assert [b["Name"] for b in first["Buckets"]] == ["pages-x", "pages-y"]
    rest = s3.list_buckets(Prefix="pages-", ContinuationToken=first["ContinuationToken"])
    assert [b["Name"] for b in rest["Buckets"]] == ["pages-z"]
    assert "ContinuationToken" not in rest


def test_region_us_is_us_east_1(server: GatewayServer) -> None:
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="US"
    )
    us = session.client("s3", endpoint_url=server.url,
                        config=Config(s3={"addressing_style": "path"}))  # fmt: skip
    us.create_bucket(Bucket="signed-for-us")
    us.put_object(Bucket="signed-for-us", Key="k", Body=b"US is us-east-1")
    assert us.get_object(Bucket="signed-for-us", Key="k")["Body"].read() == b"US is us-east-1"
    assert us.get_bucket_location(Bucket="signed-for-us")["LocationConstraint"] is None
    # Signed for another region: refused, naming the region to sign for instead (boto3 and
    # s3cmd then retry there by themselves).
    path = "/signed-for-us?list-type=2"
    headers = {"Host": f"127.0.0.1:{server.port}",
               "X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest()}  # fmt: skip
    request = AWSRequest(method="GET", url=f"{server.url}{path}", headers=headers)
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "eu-west-1").add_auth(request)
    wrong = send(server.port, "GET", path, dict(request.headers.items()))
    assert (wrong.status, wrong.code) == (400, "AuthorizationHeaderMalformed")
    assert b"<Region>us-east-1</Region>" in wrong.body


def test_presign_expires_out_of_range(s3: Any, server: GatewayServer, bucket: str) -> None:
    signer = client(server.url, signature_version="s3v4")
    url = signer.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=604801
    )
    assert "X-Amz-Expires=604801" in url
    # boto3 will not presign a negative expiry; the range is checked before the signature.
    for bad in (url, url.replace("X-Amz-Expires=604801", "X-Amz-Expires=-1")):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=10)
        assert refused.value.code == 400
        assert b"<Code>AuthorizationQueryParametersError</Code>" in refused.value.read()
