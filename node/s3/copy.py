"""CopyObject and UploadPartCopy.

The source is named by ``x-amz-copy-source: /bucket/key`` (URL-encoded; ``?versionId=null`` is
the only version there is). Its ``x-amz-copy-source-if-*`` conditions are checked on the
version read. The copy streams the source's bytes into a new object (or part): the data is
read and erasure coded again, never held whole in memory.

CopyObject keeps the source's content type, user and system metadata (``COPY``, the default
``x-amz-metadata-directive``) or takes them from the request (``REPLACE``); tags likewise with
``x-amz-tagging-directive``. Copying an object onto itself is refused unless something changes
(``REPLACE``), as S3 does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING
from urllib.parse import unquote

from aiohttp import web

from node.s3 import checksum, conditions, errors, headers, tagging, xml
from node.s3.call import Call
from node.s3.multipart import part_checksums, upload_algorithm, upload_id
from node.s3.objects import early_precondition, part_number, storage_precondition
from node.s3.ranges import parse_range
from node.s3.routes import COPY_SOURCE, MAX_PUT_SIZE
from storage.errors import InvalidName
from storage.info import ObjectInfo
from storage.names import validate_bucket, validate_object
from storage.objects import ObjectReader
from storage.put import PutOptions

if TYPE_CHECKING:
    from node.s3.gateway import S3Gateway


def copy_source(call: Call) -> tuple[str, str]:
    """``(bucket, key)`` named by ``x-amz-copy-source``."""
    raw = call.request.headers.get(COPY_SOURCE)
    if raw is None:
        raw = next((v for n, v in call.query.items() if n.lower() == COPY_SOURCE), "")
    path, _, query = raw.partition("?")
    if query:
        name, _, value = query.partition("=")
        if name != "versionId" or value != "null":
            raise errors.not_implemented(
                "copying a version other than the null version is not built (no versioning)"
            )
    text = unquote(path).lstrip("/")
    bucket, _, key = text.partition("/")
    try:
        validate_bucket(bucket)
        validate_object(key)
    except InvalidName as exc:
        raise errors.invalid_argument(
            f"x-amz-copy-source {raw[:200]!r} must be /<bucket>/<key>: {exc}"
        ) from exc
    return bucket, key


def _directive(call: Call, name: str) -> str:
    value = call.request.headers.get(name, "COPY").upper()
    if value not in ("COPY", "REPLACE"):
        raise errors.invalid_argument(f"Unknown {name} {value[:20]!r}: use COPY or REPLACE")
    return value


async def _chunks(reader: ObjectReader) -> AsyncIterator[bytes]:
    async with reader:
        async for chunk in reader:
            yield chunk


def _too_large(info: ObjectInfo) -> None:
    if info.size > MAX_PUT_SIZE:
        raise errors.invalid_request(
            "The specified copy source is larger than the maximum allowable size for a copy "
            f"source: {MAX_PUT_SIZE}"
        )


async def copy_object(gateway: S3Gateway, call: Call) -> web.Response:
    await gateway.drain(call)
    source_bucket, source_key = copy_source(call)
    request_headers = call.request.headers
    metadata = _directive(call, "x-amz-metadata-directive")
    tag_directive = _directive(call, "x-amz-tagging-directive")
    same = (source_bucket, source_key) == (call.bucket, call.key)

    def choose(info: ObjectInfo) -> tuple[int, int | None]:
        conditions.check_copy_source(request_headers, info)
        _too_large(info)
        if same and metadata == "COPY" and tag_directive == "COPY":
            raise errors.invalid_request(
                "This copy request is illegal because it is trying to copy an object to itself "
                "without changing the object's metadata, storage class, website redirect "
                "location or encryption attributes."
            )
        return 0, None

    await early_precondition(gateway, call)
    reader = await gateway.layer.get_object(source_bucket, source_key, choose=choose)
    source = reader.info
    if metadata == "REPLACE":
        content_type = request_headers.get("Content-Type", "application/octet-stream")
        user_meta = headers.user_meta(request_headers)
        sys_meta = headers.system_meta(request_headers)
    else:
        content_type, user_meta, sys_meta = source.content_type, source.user_meta, source.sys_meta
    tags = (
        tagging.from_header(request_headers.get("x-amz-tagging", ""))
        if tag_directive == "REPLACE"
        else source.tags
    )
    algorithm = request_headers.get("x-amz-checksum-algorithm", "").lower() or next(
        (alg for alg, value in source.checksums.items() if value), ""
    )
    if algorithm and algorithm not in checksum.KNOWN:
        raise errors.invalid_request(f"Checksum algorithm {algorithm[:40]!r} is not supported")
    running = checksum.PayloadChecksum(algorithm) if algorithm else None

    async def data() -> AsyncIterator[bytes]:
        async for chunk in _chunks(reader):
            if running is not None:
                running.update(chunk)
            yield chunk

    info = await gateway.layer.put_object(
        call.bucket, call.key, data(), size=source.size, content_type=content_type,
        user_meta=user_meta,
        options=PutOptions(
            sys_meta=sys_meta, tags=tags,
            checksums=lambda: {running.algorithm: running.digest_b64()} if running else {},
            checksum_type="FULL_OBJECT" if running else "",
            precondition=storage_precondition(request_headers),
        ),
    )  # fmt: skip
    return gateway.xml_response(call, xml.copy_result(info))


def _source_range(call: Call, size: int) -> tuple[int, int]:
    header = call.request.headers.get("x-amz-copy-source-range")
    if header is None:
        return 0, size
    wanted = parse_range(header)
    if wanted is None or wanted.first is None or wanted.last is None:
        raise errors.invalid_argument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy"
        )
    if wanted.last >= size:
        raise errors.invalid_argument(
            f"Range specified is not valid for source object of size: {size}"
        )
    return wanted.first, wanted.last - wanted.first + 1


async def upload_part_copy(gateway: S3Gateway, call: Call) -> web.Response:
    await gateway.drain(call)
    number = part_number(call)
    assert number is not None
    source_bucket, source_key = copy_source(call)
    record = await gateway.layer.get_multipart(call.bucket, call.key, upload_id(call))
    request_headers = call.request.headers
    span: tuple[int, int] = (0, 0)

    def choose(info: ObjectInfo) -> tuple[int, int | None]:
        nonlocal span
        conditions.check_copy_source(request_headers, info)
        span = _source_range(call, info.size)
        if span[1] > MAX_PUT_SIZE:
            _too_large(info)
        return span

    reader = await gateway.layer.get_object(source_bucket, source_key, choose=choose)
    algorithm = upload_algorithm(record)
    running = checksum.PayloadChecksum(algorithm) if algorithm else None

    async def data() -> AsyncIterator[bytes]:
        async for chunk in _chunks(reader):
            if running is not None:
                running.update(chunk)
            yield chunk

    part = await gateway.layer.upload_part(
        call.bucket, call.key, record.upload_id, number, data(), size=span[1],
        checksums=part_checksums(record, dict, running),
    )  # fmt: skip
    return gateway.xml_response(call, xml.copy_part_result(part))
