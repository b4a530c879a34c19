"""Multipart upload handlers: CreateMultipartUpload, UploadPart, CompleteMultipartUpload,
AbortMultipartUpload, ListParts and ListMultipartUploads (UploadPartCopy is in
:mod:`node.s3.copy`).

Checksums: an upload created with ``x-amz-checksum-algorithm`` gets that algorithm computed
(and, when the client sent it, verified) for every part; completing it stores the object's
checksum as the upload's ``x-amz-checksum-type`` says: ``COMPOSITE`` (the checksum of the parts'
checksums, ``-N``) or ``FULL_OBJECT`` (the parts' CRCs combined).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from node.s3 import checksum, errors, headers, tagging, xml
from node.s3 import routes as s3_routes
from node.s3.body import VerifiedBody
from node.s3.call import Call
from node.s3.objects import early_precondition, part_number, storage_precondition
from storage.errors import InvalidPart
from storage.list_objects import MAX_KEYS
from storage.meta import PartInfo, UploadRecord
from storage.put import PutOptions

if TYPE_CHECKING:
    from node.s3.gateway import S3Gateway


def upload_algorithm(record: UploadRecord) -> str:
    """The checksum algorithm the upload was created with ("" for none)."""
    return next(iter(record.meta.checksums), "")


def _checksum_choice(call: Call) -> tuple[str, str]:
    request_headers = call.request.headers
    algorithm = request_headers.get("x-amz-checksum-algorithm", "").lower()
    kind = request_headers.get("x-amz-checksum-type", "").upper()
    if algorithm and algorithm not in checksum.KNOWN:
        raise errors.invalid_request(f"Checksum algorithm {algorithm[:40]!r} is not supported")
    if kind and not algorithm:
        raise errors.invalid_request("x-amz-checksum-type needs x-amz-checksum-algorithm")
    if algorithm:
        kind = kind or checksum.DEFAULT_TYPE[algorithm]
        if kind not in checksum.ALLOWED_TYPES[algorithm]:
            raise errors.invalid_request(
                f"The {algorithm.upper()} algorithm does not support the {kind} checksum type"
            )
    return algorithm, kind


async def create(gateway: S3Gateway, call: Call) -> web.Response:
    await gateway.drain(call)
    request_headers = call.request.headers
    algorithm, kind = _checksum_choice(call)
    upload_id = await gateway.layer.create_multipart(
        call.bucket,
        call.key,
        content_type=request_headers.get("Content-Type", "application/octet-stream"),
        user_meta=headers.user_meta(request_headers),
        options=PutOptions(
            sys_meta=headers.system_meta(request_headers),
            tags=tagging.from_header(request_headers.get("x-amz-tagging", "")),
            checksum_type=kind,
        ),
        checksum_algorithm=algorithm,
    )
    extra = {}
    if algorithm:
        extra = {"x-amz-checksum-algorithm": algorithm.upper(), "x-amz-checksum-type": kind}
    return gateway.xml_response(call, xml.initiate_upload(call.bucket, call.key, upload_id), extra)


def upload_id(call: Call) -> str:
    return call.query.get("uploadId", "")


async def _with_checksum(
    source: AsyncIterator[bytes] | VerifiedBody, running: checksum.PayloadChecksum | None
) -> AsyncIterator[bytes]:
    async for chunk in source:
        if running is not None:
            running.update(chunk)
        yield chunk


def part_checksums(
    record: UploadRecord,
    sent: Callable[[], dict[str, str]],
    running: checksum.PayloadChecksum | None,
) -> Callable[[], dict[str, str]]:
    """The checksums a part keeps: those the client sent (already verified), and the upload's
    algorithm computed here when the client did not send it."""

    def values() -> dict[str, str]:
        found = dict(sent())
        if running is not None:
            found[running.algorithm] = running.digest_b64()
        return found

    return values


def part_headers(part: PartInfo) -> dict[str, str]:
    answer = {"ETag": f'"{part.etag}"'}
    for algorithm, value in part.checksums.items():
        answer[f"x-amz-checksum-{algorithm}"] = value
    return answer


async def upload_part(gateway: S3Gateway, call: Call) -> web.Response:
    number = part_number(call)
    assert number is not None
    record = await gateway.layer.get_multipart(call.bucket, call.key, upload_id(call))
    body = gateway.body(call)
    algorithm = upload_algorithm(record)
    sent = call.plan.echo_algorithms if call.plan is not None else []
    running = checksum.PayloadChecksum(algorithm) if algorithm and algorithm not in sent else None
    part = await gateway.layer.upload_part(
        call.bucket, call.key, record.upload_id, number, _with_checksum(body, running),
        size=body.size, checksums=part_checksums(record, lambda: body.checksum_values, running),
    )  # fmt: skip
    return web.Response(status=200, headers=call.headers(part_headers(part)))


def object_checksums(
    record: UploadRecord, sent: Sequence[dict[str, str]], whole: dict[str, str]
) -> Callable[[Sequence[PartInfo]], dict[str, str]]:
    """``finish`` for the object layer: check the part checksums the client listed, and make
    the object's checksum from the parts' (composite or full object)."""
    algorithm = upload_algorithm(record)
    kind = record.meta.checksum_type or checksum.DEFAULT_TYPE.get(algorithm, "")

    def finish(parts: Sequence[PartInfo]) -> dict[str, str]:
        for part, given in zip(parts, sent, strict=True):
            for name, value in given.items():
                if part.checksums.get(name) not in (None, value):
                    raise InvalidPart(f"part {part.number}'s {name} checksum does not match")
        if not algorithm:
            return {}
        values = [part.checksums.get(algorithm, "") for part in parts]
        if not all(values):
            raise errors.invalid_request(f"a part has no {algorithm} checksum")
        if kind == "COMPOSITE":
            value = checksum.composite(algorithm, values)
        else:
            value = checksum.full_object(
                algorithm, [(v, p.size) for v, p in zip(values, parts, strict=True)]
            )
        claimed = whole.get(algorithm)
        if claimed is not None and claimed.strip() != value:
            raise errors.bad_digest(
                f"The {algorithm.upper()} you specified for the object did not match the "
                "calculated checksum."
            )
        return {algorithm: value}

    return finish


async def complete(gateway: S3Gateway, call: Call) -> web.StreamResponse:
    document = await gateway.body(call).read_small(s3_routes.MAX_COMPLETE_BODY)
    wanted, sent = xml.parse_complete(document)
    record = await gateway.layer.get_multipart(call.bucket, call.key, upload_id(call))
    await early_precondition(gateway, call)
    whole = {
        algorithm: value
        for name, value in call.request.headers.items()
        if (algorithm := checksum.algorithm_of(name)) is not None
    }
    finish = object_checksums(record, sent, whole)
    precondition = storage_precondition(call.request.headers)
    location = f"{call.request.scheme}://{call.request.host}/{call.bucket}/{call.key}"

    async def assemble() -> bytes:
        info = await gateway.layer.complete_multipart(
            call.bucket, call.key, record.upload_id, wanted, finish=finish,
            precondition=precondition,
        )  # fmt: skip
        return xml.complete_upload(location, call.bucket, call.key, info)

    # Assembling a big object can outlast a client's read timeout: kept alive as S3 does.
    return await gateway.long_xml(call, assemble())


async def abort(gateway: S3Gateway, call: Call) -> web.Response:
    await gateway.layer.abort_multipart(call.bucket, call.key, upload_id(call))
    return web.Response(status=204, headers=call.headers())


def _count(text: str | None, name: str, default: int = MAX_KEYS, most: int = MAX_KEYS) -> int:
    if text is None:
        return default
    try:
        value = int(text)
        if value < 0:
            raise ValueError
    except ValueError as exc:
        raise errors.invalid_argument(f"{name} {text[:20]!r} must be a whole number") from exc
    return min(value, most)


async def list_parts(gateway: S3Gateway, call: Call) -> web.Response:
    max_parts = _count(call.query.get("max-parts"), "max-parts")
    marker = _count(call.query.get("part-number-marker"), "part-number-marker", 0, 10_000)
    record, parts = await gateway.layer.list_parts(call.bucket, call.key, upload_id(call))
    later = [part for part in parts if part.number > marker]
    page = later[:max_parts]
    body = xml.list_parts(
        call.bucket, record, page, owner_id=call.owner, marker=marker, max_parts=max_parts,
        truncated=len(later) > len(page),
    )  # fmt: skip
    return gateway.xml_response(call, body)


async def list_uploads(gateway: S3Gateway, call: Call) -> web.Response:
    query = call.query
    prefix = query.get("prefix", "")
    delimiter = query.get("delimiter", "")
    key_marker = query.get("key-marker", "")
    id_marker = query.get("upload-id-marker", "") if key_marker else ""
    max_uploads = _count(query.get("max-uploads"), "max-uploads")
    url_encode = xml.url_encoding(query.get("encoding-type"))
    records = await gateway.layer.list_multipart_uploads(call.bucket)
    after = _after_markers(records, key_marker, id_marker)
    uploads: list[UploadRecord] = []
    prefixes: list[str] = []
    truncated = False
    for record in after:
        if not record.key.startswith(prefix):
            continue
        common = _common_prefix(record.key, prefix, delimiter)
        if common is not None and prefixes and prefixes[-1] == common:
            continue
        if len(uploads) + len(prefixes) >= max_uploads:
            truncated = True
            break
        if common is not None:
            prefixes.append(common)
        else:
            uploads.append(record)
    body = xml.list_uploads(
        call.bucket, uploads, prefixes, owner_id=call.owner, prefix=prefix,
        delimiter=delimiter, key_marker=key_marker, upload_id_marker=id_marker,
        max_uploads=max_uploads, truncated=truncated, url_encode=url_encode,
    )  # fmt: skip
    return gateway.xml_response(call, body)


def _after_markers(
    records: Sequence[UploadRecord], key_marker: str, id_marker: str
) -> list[UploadRecord]:
    """The uploads after the markers, in listing order (key, then start time)."""
    if not key_marker:
        return list(records)
    out: list[UploadRecord] = []
    passed_id = not id_marker
    for record in records:
        if record.key < key_marker:
            continue
        if record.key == key_marker:
            if not id_marker:
                continue
            if not passed_id:
                passed_id = record.upload_id == id_marker
                continue
        out.append(record)
    return out


def _common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    if not delimiter:
        return None
    found = key.find(delimiter, len(prefix))
    return key[: found + len(delimiter)] if found >= 0 else None
