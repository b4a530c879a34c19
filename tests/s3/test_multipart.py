"""Multipart upload through boto3: the transfer manager with its default configuration, and
each edge case against the status code and error S3 documents for it."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.s3.helpers import MIB, GatewayServer, client, payload

PART = 5 * MIB  # S3's smallest part (but the last)


def error(info: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    response = info.value.response
    return int(response["ResponseMetadata"]["HTTPStatusCode"]), str(response["Error"]["Code"])


def s3_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def staged_uploads(server: GatewayServer, bucket: str) -> list[list[str]]:
    """What each drive holds staged for ``bucket``'s uploads."""
    found = []
    for number in range(4):
        folder = Path(server.root) / f"d{number}" / ".minigrid.sys" / "multipart" / bucket
        found.append(sorted(os.listdir(folder)) if folder.is_dir() else [])
    return found


def upload_parts(s3: Any, bucket: str, key: str, parts: list[bytes]) -> tuple[str, list[Any]]:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    done = []
    for number, data in enumerate(parts, start=1):
        etag = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data
        )["ETag"]
        done.append({"PartNumber": number, "ETag": etag})
    return upload, done


def round_trip_file(s3: Any, bucket: str, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    source, copy = tmp_path / "source.bin", tmp_path / "copy.bin"
    source.write_bytes(data)
    s3.upload_file(str(source), bucket, "big/file.bin")  # default TransferConfig: 8 MiB parts
    head = s3.head_object(Bucket=bucket, Key="big/file.bin")
    assert head["ContentLength"] == size
    chunks = [data[i : i + 8 * MIB] for i in range(0, size, 8 * MIB)]
    assert head["ETag"] == s3_etag(chunks)
    s3.download_file(bucket, "big/file.bin", str(copy))  # parallel ranged GETs
    assert hashlib.sha256(copy.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_upload_and_download_file_of_40_mb(s3: Any, bucket: str, tmp_path: Path) -> None:
    round_trip_file(s3, bucket, tmp_path, 40 * 1000 * 1000)


@pytest.mark.slow
@pytest.mark.timeout(300)  # about 30s alone; far more on a loaded machine
def test_upload_and_download_file_of_300_mb(s3: Any, bucket: str, tmp_path: Path) -> None:
    round_trip_file(s3, bucket, tmp_path, 300 * 1000 * 1000)


def test_complete_reads_across_part_boundaries(s3: Any, bucket: str) -> None:
    parts = [payload(PART, 1), payload(PART + 7, 2), payload(1234, 3)]
    whole = b"".join(parts)
    upload, done = upload_parts(s3, bucket, "mp", parts)
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [
        (1, PART), (2, PART + 7), (3, 1234)
    ]  # fmt: skip
    result = s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=upload, MultipartUpload={"Parts": done}
    )
    assert result["ETag"] == s3_etag(parts)
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == whole
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["ETag"], o["Size"]) for o in listed] == [
        ("mp", s3_etag(parts), len(whole))
    ]
    for first, last in [(PART - 3, PART + 2), (0, len(whole) - 1), (2 * PART + 5, 2 * PART + 9)]:
        got = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={first}-{last}")
        assert got["Body"].read() == whole[first : last + 1]
        assert got["ContentRange"] == f"bytes {first}-{last}/{len(whole)}"
    second = s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)
    assert second["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert second["PartsCount"] == 3
    assert second["ContentRange"] == f"bytes {PART}-{2 * PART + 6}/{len(whole)}"
    assert second["Body"].read() == parts[1]
    head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=3)
    assert head["ContentLength"] == 1234 and head["PartsCount"] == 3
    assert "PartsCount" not in s3.head_object(Bucket=bucket, Key="mp")  # only for one part
    with pytest.raises(ClientError) as beyond:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=4)
    assert error(beyond) == (416, "InvalidPartNumber")
    # The upload is gone once complete, and so is everything it staged.
    with pytest.raises(ClientError) as gone:
        s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload)
    assert error(gone) == (404, "NoSuchUpload")


def test_missing_part_wrong_etag_and_order_are_refused(s3: Any, bucket: str) -> None:
    upload, done = upload_parts(s3, bucket, "edge", [payload(PART, 4), b"tail"])

    def complete(parts: list[Any]) -> pytest.ExceptionInfo[ClientError]:
        with pytest.raises(ClientError) as refused:
            s3.complete_multipart_upload(
                Bucket=bucket, Key="edge", UploadId=upload, MultipartUpload={"Parts": parts}
            )
        return refused

    assert error(complete([*done, {"PartNumber": 3, "ETag": done[0]["ETag"]}])) == (
        400, "InvalidPart"
    )  # fmt: skip
    wrong = [done[0], {"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}]
    assert error(complete(wrong)) == (400, "InvalidPart")
    assert error(complete([done[1], done[0]])) == (400, "InvalidPartOrder")
    # A failed complete changes nothing: the upload can still be completed.
    s3.complete_multipart_upload(
        Bucket=bucket, Key="edge", UploadId=upload, MultipartUpload={"Parts": done}
    )
    assert s3.head_object(Bucket=bucket, Key="edge")["ContentLength"] == PART + 4


def test_a_part_under_5_mib_is_refused_unless_last(s3: Any, bucket: str) -> None:
    upload, done = upload_parts(s3, bucket, "small", [b"a" * 1000, b"b" * 1000])
    with pytest.raises(ClientError) as small:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="small", UploadId=upload, MultipartUpload={"Parts": done}
        )
    assert error(small) == (400, "EntityTooSmall")
    # Completing with the small part alone (it is then the last) works.
    s3.complete_multipart_upload(
        Bucket=bucket, Key="small", UploadId=upload, MultipartUpload={"Parts": done[:1]}
    )
    assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == b"a" * 1000


def test_resending_a_part_replaces_it(s3: Any, bucket: str, server: GatewayServer) -> None:
    upload, done = upload_parts(s3, bucket, "again", [b"first version of part one"])
    second = s3.upload_part(
        Bucket=bucket, Key="again", UploadId=upload, PartNumber=1, Body=b"second version"
    )
    parts = s3.list_parts(Bucket=bucket, Key="again", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in parts] == [
        (1, second["ETag"], len(b"second version"))
    ]
    # Only the latest version's data is kept staged.
    for drive in staged_uploads(server, bucket):
        folder = Path(server.root)
        assert drive == [upload]
    stale = [{"PartNumber": 1, "ETag": done[0]["ETag"]}]
    with pytest.raises(ClientError) as old_etag:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="again", UploadId=upload, MultipartUpload={"Parts": stale}
        )
    assert error(old_etag) == (400, "InvalidPart")
    s3.complete_multipart_upload(
        Bucket=bucket, Key="again", UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": second["ETag"]}]},
    )  # fmt: skip
    assert s3.get_object(Bucket=bucket, Key="again")["Body"].read() == b"second version"
    assert folder.is_dir()


def test_abort_frees_everything(s3: Any, bucket: str, server: GatewayServer) -> None:
    upload, _ = upload_parts(s3, bucket, "aborted", [payload(PART, 5), b"rest"])
    assert all(drive == [upload] for drive in staged_uploads(server, bucket))
    deleted = s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=upload)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert staged_uploads(server, bucket) == [[], [], [], []]
    with pytest.raises(ClientError) as again:
        s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=upload)
    assert error(again) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as part:
        s3.upload_part(Bucket=bucket, Key="aborted", UploadId=upload, PartNumber=1, Body=b"x")
    assert error(part) == (404, "NoSuchUpload")
    with pytest.raises(ClientError) as absent:
        s3.head_object(Bucket=bucket, Key="aborted")
    assert error(absent)[0] == 404


def test_upload_ids_and_part_numbers_are_checked(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="ids")["UploadId"]
    for bogus in ["nope", "0" * 32, "../../etc"]:
        with pytest.raises(ClientError) as refused:
            s3.upload_part(Bucket=bucket, Key="ids", UploadId=bogus, PartNumber=1, Body=b"x")
        assert error(refused) == (404, "NoSuchUpload")
    # An upload ID belongs to its key.
    with pytest.raises(ClientError) as other_key:
        s3.list_parts(Bucket=bucket, Key="other", UploadId=upload)
    assert error(other_key) == (404, "NoSuchUpload")
    for number in (0, 10001):
        with pytest.raises(ClientError) as bad:
            s3.upload_part(Bucket=bucket, Key="ids", UploadId=upload, PartNumber=number, Body=b"x")
        assert error(bad) == (400, "InvalidArgument")
    s3.abort_multipart_upload(Bucket=bucket, Key="ids", UploadId=upload)


def test_list_parts_and_uploads_page(s3: Any, bucket: str) -> None:
    upload, _ = upload_parts(s3, bucket, "paged", [b"1", b"2", b"3"])
    first = s3.list_parts(Bucket=bucket, Key="paged", UploadId=upload, MaxParts=2)
    assert [p["PartNumber"] for p in first["Parts"]] == [1, 2] and first["IsTruncated"]
    rest = s3.list_parts(
        Bucket=bucket, Key="paged", UploadId=upload,
        PartNumberMarker=first["NextPartNumberMarker"],
    )  # fmt: skip
    assert [p["PartNumber"] for p in rest["Parts"]] == [3] and not rest["IsTruncated"]
    others = [s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"]
              for k in ("a/one", "a/two", "b")]  # fmt: skip
    listed = s3.list_multipart_uploads(Bucket=bucket)
    assert [(u["Key"], u["UploadId"]) for u in listed["Uploads"]] == [
        ("a/one", others[0]), ("a/two", others[1]), ("b", others[2]), ("paged", upload)
    ]  # fmt: skip
    page = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2)
    assert [u["Key"] for u in page["Uploads"]] == ["a/one", "a/two"] and page["IsTruncated"]
    after = s3.list_multipart_uploads(
        Bucket=bucket, KeyMarker=page["NextKeyMarker"], UploadIdMarker=page["NextUploadIdMarker"]
    )
    assert [u["Key"] for u in after["Uploads"]] == ["b", "paged"]
    folded = s3.list_multipart_uploads(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in folded["CommonPrefixes"]] == ["a/"]
    assert [u["Key"] for u in folded["Uploads"]] == ["b", "paged"]
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="a/")["Uploads"]] == [
        "a/one", "a/two"
    ]  # fmt: skip


def test_upload_part_copy_with_ranges(s3: Any, bucket: str) -> None:
    source = payload(PART + 100, 9)
    s3.put_object(Bucket=bucket, Key="source", Body=source)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    whole = s3.upload_part_copy(
        Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=1,
        CopySource={"Bucket": bucket, "Key": "source"},
    )  # fmt: skip
    ranged = s3.upload_part_copy(
        Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=2,
        CopySource={"Bucket": bucket, "Key": "source"}, CopySourceRange="bytes=10-19",
    )  # fmt: skip
    assert whole["CopyPartResult"]["ETag"] == f'"{hashlib.md5(source).hexdigest()}"'
    assert ranged["CopyPartResult"]["ETag"] == f'"{hashlib.md5(source[10:20]).hexdigest()}"'
    with pytest.raises(ClientError) as outside:
        s3.upload_part_copy(
            Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=3,
            CopySource={"Bucket": bucket, "Key": "source"},
            CopySourceRange=f"bytes=0-{len(source)}",
        )  # fmt: skip
    assert error(outside) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as condition:
        s3.upload_part_copy(
            Bucket=bucket, Key="assembled", UploadId=upload, PartNumber=3,
            CopySource={"Bucket": bucket, "Key": "source"}, CopySourceIfMatch='"nope"',
        )  # fmt: skip
    assert error(condition) == (412, "PreconditionFailed")
    s3.complete_multipart_upload(
        Bucket=bucket, Key="assembled", UploadId=upload,
        MultipartUpload={"Parts": [
            {"PartNumber": 1, "ETag": whole["CopyPartResult"]["ETag"]},
            {"PartNumber": 2, "ETag": ranged["CopyPartResult"]["ETag"]},
        ]},
    )  # fmt: skip
    got = s3.get_object(Bucket=bucket, Key="assembled")["Body"].read()
    assert got == source + source[10:20]


def test_complete_honours_if_none_match(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="taken", Body=b"already here")
    upload, done = upload_parts(s3, bucket, "taken", [b"would overwrite"])
    with pytest.raises(ClientError) as refused:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="taken", UploadId=upload, MultipartUpload={"Parts": done},
            IfNoneMatch="*",
        )  # fmt: skip
    assert error(refused) == (412, "PreconditionFailed")
    assert s3.get_object(Bucket=bucket, Key="taken")["Body"].read() == b"already here"


def test_multipart_checksums_composite_and_full_object(s3: Any, bucket: str) -> None:
    parts = [payload(PART, 11), payload(777, 12)]
    for algorithm, kind in [("CRC32", "COMPOSITE"), ("CRC32C", "FULL_OBJECT"),
                            ("SHA256", "COMPOSITE"), ("CRC64NVME", "FULL_OBJECT")]:  # fmt: skip
        key = f"sum-{algorithm}"
        upload = s3.create_multipart_upload(
            Bucket=bucket, Key=key, ChecksumAlgorithm=algorithm, ChecksumType=kind
        )["UploadId"]
        done = []
        for number, data in enumerate(parts, start=1):
            answer = s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data,
                ChecksumAlgorithm=algorithm,
            )  # fmt: skip
            done.append({"PartNumber": number, "ETag": answer["ETag"],
                         f"Checksum{algorithm}": answer[f"Checksum{algorithm}"]})  # fmt: skip
        s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": done}
        )
        head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        value = head[f"Checksum{algorithm}"]
        assert head["ChecksumType"] == kind
        if kind == "COMPOSITE":
            assert value.endswith("-2")
        else:
            # A full-object checksum is what a single PUT of the same bytes stores.
            single = s3.put_object(
                Bucket=bucket, Key=key + "-single", Body=b"".join(parts),
                ChecksumAlgorithm=algorithm,
            )  # fmt: skip
            assert value == single[f"Checksum{algorithm}"]


def test_an_upload_survives_a_restart(tmp_path: Path) -> None:
    first = GatewayServer(str(tmp_path))
    first.start()
    try:
        s3 = client(first.url)
        s3.create_bucket(Bucket="restart")
        upload, done = upload_parts(s3, "restart", "k", [payload(PART, 13)])
    finally:
        first.stop()
    second = GatewayServer(str(tmp_path))  # the same drives, a new process state
    second.start()
    try:
        s3 = client(second.url)
        assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="restart")["Uploads"]] == [
            upload
        ]
        tail = s3.upload_part(Bucket="restart", Key="k", UploadId=upload, PartNumber=2, Body=b"!")
        done.append({"PartNumber": 2, "ETag": tail["ETag"]})
        s3.complete_multipart_upload(
            Bucket="restart", Key="k", UploadId=upload, MultipartUpload={"Parts": done}
        )
        body = s3.get_object(Bucket="restart", Key="k")["Body"].read()
        assert body == payload(PART, 13) + b"!"
    finally:
        second.stop()


def test_multipart_over_https_with_checksum_trailers(s3_tls: Any, bucket: str) -> None:
    """Over HTTPS boto3 sends each part aws-chunked with a CRC32 trailer."""
    data = payload(9 * MIB + 17, 14)
    s3_tls.upload_fileobj(io.BytesIO(data), bucket, "tls-multipart")
    head = s3_tls.head_object(Bucket=bucket, Key="tls-multipart", ChecksumMode="ENABLED")
    assert head["ETag"].endswith('-2"')
    assert head["ChecksumCRC32"]
    assert s3_tls.get_object(Bucket=bucket, Key="tls-multipart")["Body"].read() == data
