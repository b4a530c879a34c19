"""The S3 XML documents the gateway answers with (built as text; all values escaped)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from node.s3 import errors
from storage.objects import BucketInfo, ListResult, ObjectInfo, PartInfo, UploadRecord

MAX_DELETE_KEYS = 1000
MAX_COMPLETE_PARTS = 10_000

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
_HEAD = DECLARATION


def iso8601(time_ns: int) -> str:
    """``2009-10-12T17:50:30.000Z``, the timestamp format S3 XML uses."""
    moment = dt.datetime.fromtimestamp(time_ns / 1e9, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _el(name: str, value: str | int | bool) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{name}>{escape(str(value))}</{name}>"


def _document(root: str, parts: Iterable[str]) -> bytes:
    return (f'{_HEAD}<{root} xmlns="{NAMESPACE}">' + "".join(parts) + f"</{root}>").encode()


def error(
    code: str, message: str, resource: str, request_id: str, extra: Mapping[str, str] | None = None
) -> bytes:
    parts = [_el("Code", code), _el("Message", message), _el("Resource", resource)]
    parts += [_el(name, value) for name, value in (extra or {}).items()]
    parts.append(_el("RequestId", request_id))
    return (_HEAD + "<Error>" + "".join(parts) + "</Error>").encode()


def list_buckets(
    buckets: Sequence[BucketInfo],
    owner_id: str,
    *,
    prefix: str | None = None,
    continuation_token: str | None = None,
) -> bytes:
    owner = "<Owner>" + _el("ID", owner_id) + _el("DisplayName", owner_id) + "</Owner>"
    items = "".join(
        "<Bucket>" + _el("Name", b.name) + _el("CreationDate", iso8601(b.created_ns)) + "</Bucket>"
        for b in buckets
    )
    parts = [owner, f"<Buckets>{items}</Buckets>"]
    if continuation_token is not None:
        parts.append(_el("ContinuationToken", continuation_token))
    if prefix is not None:
        parts.append(_el("Prefix", prefix))
    return _document("ListAllMyBucketsResult", parts)


def location(region: str) -> bytes:
    # us-east-1 is the one region S3 reports as an empty constraint.
    text = "" if region == "us-east-1" else escape(region)
    return f'{_HEAD}<LocationConstraint xmlns="{NAMESPACE}">{text}</LocationConstraint>'.encode()


class _Encoder:
    """Keys in listings, URL-encoded when the client asked for ``encoding-type=url``."""

    def __init__(self, url: bool) -> None:
        self.url = url

    def __call__(self, text: str) -> str:
        return quote(text, safe="/") if self.url else text


def owner(owner_id: str, tag: str = "Owner") -> str:
    """``<Owner><ID/><DisplayName/></Owner>``: every key sees every bucket here, so the owner
    is the access key that asked."""
    return f"<{tag}>" + _el("ID", owner_id) + _el("DisplayName", owner_id) + f"</{tag}>"


def _checksum_algorithm(info: ObjectInfo) -> str:
    found = [alg.upper() for alg, value in info.checksums.items() if value]
    parts = [_el("ChecksumAlgorithm", alg) for alg in found]
    if found:
        parts.append(_el("ChecksumType", info.checksum_type or "FULL_OBJECT"))
    return "".join(parts)


def _contents(objects: Sequence[ObjectInfo], enc: _Encoder, owner_id: str | None) -> list[str]:
    return [
        "<Contents>"
        + _el("Key", enc(o.key))
        + _el("LastModified", iso8601(o.mod_time_ns))
        + _el("ETag", f'"{o.etag}"')
        + _checksum_algorithm(o)
        + _el("Size", o.size)
        + (owner(owner_id) if owner_id is not None else "")
        + _el("StorageClass", "STANDARD")
        + "</Contents>"
        for o in objects
    ]


def _prefixes(prefixes: Sequence[str], enc: _Encoder) -> list[str]:
    return [f"<CommonPrefixes>{_el('Prefix', enc(p))}</CommonPrefixes>" for p in prefixes]


def list_objects_v2(
    bucket: str,
    result: ListResult,
    *,
    prefix: str,
    delimiter: str,
    max_keys: int,
    start_after: str,
    continuation_token: str | None,
    url_encode: bool,
    owner_id: str | None = None,
) -> bytes:
    enc = _Encoder(url_encode)
    parts = [_el("Name", bucket), _el("Prefix", enc(prefix))]
    if delimiter:
        parts.append(_el("Delimiter", enc(delimiter)))
    if start_after:
        parts.append(_el("StartAfter", enc(start_after)))
    if continuation_token is not None:
        parts.append(_el("ContinuationToken", continuation_token))
    if result.next_token is not None:
        parts.append(_el("NextContinuationToken", result.next_token))
    parts += [
        _el("KeyCount", len(result.objects) + len(result.prefixes)),
        _el("MaxKeys", max_keys),
        _el("IsTruncated", result.is_truncated),
    ]
    if url_encode:
        parts.append(_el("EncodingType", "url"))
    parts += _contents(result.objects, enc, owner_id) + _prefixes(result.prefixes, enc)
    return _document("ListBucketResult", parts)


def list_objects_v1(
    bucket: str,
    result: ListResult,
    *,
    prefix: str,
    delimiter: str,
    max_keys: int,
    marker: str,
    url_encode: bool,
    owner_id: str | None = None,
) -> bytes:
    enc = _Encoder(url_encode)
    parts = [
        _el("Name", bucket),
        _el("Prefix", enc(prefix)),
        _el("Marker", enc(marker)),
        _el("MaxKeys", max_keys),
        _el("IsTruncated", result.is_truncated),
    ]
    if delimiter:
        parts.append(_el("Delimiter", enc(delimiter)))
    if result.is_truncated:
        last = max([o.key for o in result.objects] + list(result.prefixes))
        parts.append(_el("NextMarker", enc(last)))
    if url_encode:
        parts.append(_el("EncodingType", "url"))
    parts += _contents(result.objects, enc, owner_id) + _prefixes(result.prefixes, enc)
    return _document("ListBucketResult", parts)


def parse_delete(document: bytes) -> tuple[list[str], bool]:
    """The keys and the Quiet flag of a DeleteObjects request body."""
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as exc:
        raise errors.malformed_xml(f"the Delete document does not parse: {exc}") from exc
    if _local(root.tag) != "Delete":
        raise errors.malformed_xml("the request body must be a <Delete> document")
    keys: list[str] = []
    quiet = False
    for child in root:
        name = _local(child.tag)
        if name == "Quiet":
            quiet = (child.text or "").strip().lower() == "true"
        elif name == "Object":
            key = next((c.text for c in child if _local(c.tag) == "Key"), None)
            if not key:
                raise errors.malformed_xml("every <Object> needs a <Key>")
            keys.append(key)
    if not keys or len(keys) > MAX_DELETE_KEYS:
        raise errors.malformed_xml(f"a Delete document names 1-{MAX_DELETE_KEYS} objects")
    return keys, quiet


def delete_result(deleted: Sequence[str], failed: Sequence[tuple[str, errors.S3Error]]) -> bytes:
    parts = [f"<Deleted>{_el('Key', key)}</Deleted>" for key in deleted]
    parts += [
        "<Error>"
        + _el("Key", key)
        + _el("Code", error.code)
        + _el("Message", error.message)
        + "</Error>"
        for key, error in failed
    ]
    return _document("DeleteResult", parts)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


# --- multipart uploads ----------------------------------------------------------------------


def initiate_upload(bucket: str, key: str, upload_id: str) -> bytes:
    parts = [_el("Bucket", bucket), _el("Key", key), _el("UploadId", upload_id)]
    return _document("InitiateMultipartUploadResult", parts)


def _checksum_elements(checksums: Mapping[str, str], checksum_type: str = "") -> list[str]:
    names = {"crc32": "ChecksumCRC32", "crc32c": "ChecksumCRC32C", "crc64nvme": "ChecksumCRC64NVME",
             "sha1": "ChecksumSHA1", "sha256": "ChecksumSHA256"}  # fmt: skip
    parts = [_el(names[alg], value) for alg, value in checksums.items() if value]
    if parts and checksum_type:
        parts.append(_el("ChecksumType", checksum_type))
    return parts


def complete_upload(location: str, bucket: str, key: str, info: ObjectInfo) -> bytes:
    parts = [_el("Location", location), _el("Bucket", bucket), _el("Key", key),
             _el("ETag", f'"{info.etag}"')]  # fmt: skip
    parts += _checksum_elements(info.checksums, info.checksum_type or "FULL_OBJECT")
    return _document("CompleteMultipartUploadResult", parts)


def parse_complete(document: bytes) -> tuple[list[tuple[int, str]], list[dict[str, str]]]:
    """The ``(part number, ETag)`` list of a CompleteMultipartUpload body, and each part's
    checksums (algorithm -> value) as the client sent them."""
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as exc:
        raise errors.malformed_xml(
            f"the CompleteMultipartUpload document does not parse: {exc}"
        ) from exc
    if _local(root.tag) != "CompleteMultipartUpload":
        raise errors.malformed_xml("the request body must be a <CompleteMultipartUpload> document")
    parts: list[tuple[int, str]] = []
    sums: list[dict[str, str]] = []
    for child in root:
        if _local(child.tag) != "Part":
            continue
        fields = {_local(c.tag): (c.text or "").strip() for c in child}
        try:
            number = int(fields["PartNumber"])
            etag = fields["ETag"]
        except (KeyError, ValueError) as exc:
            raise errors.malformed_xml("every <Part> needs a <PartNumber> and an <ETag>") from exc
        parts.append((number, etag.strip('"')))
        sums.append({name.removeprefix("Checksum").lower(): value for name, value in fields.items()
                     if name.startswith("Checksum") and name != "ChecksumType"})  # fmt: skip
    if not parts:
        raise errors.malformed_xml("a CompleteMultipartUpload document names at least one part")
    if len(parts) > MAX_COMPLETE_PARTS:
        raise errors.malformed_xml(
            f"a CompleteMultipartUpload names at most {MAX_COMPLETE_PARTS} parts"
        )
    return parts, sums


def list_parts(
    bucket: str,
    record: UploadRecord,
    parts: Sequence[PartInfo],
    *,
    owner_id: str,
    marker: int,
    max_parts: int,
    truncated: bool,
) -> bytes:
    algorithm = next(iter(record.meta.checksums), "")
    body = [_el("Bucket", bucket), _el("Key", record.key), _el("UploadId", record.upload_id),
            owner(owner_id, "Initiator"), owner(owner_id), _el("StorageClass", "STANDARD"),
            _el("PartNumberMarker", marker)]  # fmt: skip
    if parts:
        body.append(_el("NextPartNumberMarker", parts[-1].number))
    body += [_el("MaxParts", max_parts), _el("IsTruncated", truncated)]
    if algorithm:
        body.append(_el("ChecksumAlgorithm", algorithm.upper()))
        body.append(_el("ChecksumType", record.meta.checksum_type or "COMPOSITE"))
    for part in parts:
        body.append(
            "<Part>" + _el("PartNumber", part.number)
            + _el("LastModified", iso8601(part.mod_time_ns)) + _el("ETag", f'"{part.etag}"')
            + _el("Size", part.size) + "".join(_checksum_elements(part.checksums)) + "</Part>"
        )  # fmt: skip
    return _document("ListPartsResult", body)


def list_uploads(
    bucket: str,
    uploads: Sequence[UploadRecord],
    prefixes: Sequence[str],
    *,
    owner_id: str,
    prefix: str,
    delimiter: str,
    key_marker: str,
    upload_id_marker: str,
    max_uploads: int,
    truncated: bool,
    url_encode: bool,
) -> bytes:
    enc = _Encoder(url_encode)
    body = [_el("Bucket", bucket), _el("KeyMarker", enc(key_marker)),
            _el("UploadIdMarker", upload_id_marker)]  # fmt: skip
    if truncated and uploads:
        body += [_el("NextKeyMarker", enc(uploads[-1].key)),
                 _el("NextUploadIdMarker", uploads[-1].upload_id)]  # fmt: skip
    body += [_el("Prefix", enc(prefix))]
    if delimiter:
        body.append(_el("Delimiter", enc(delimiter)))
    body += [_el("MaxUploads", max_uploads), _el("IsTruncated", truncated)]
    if url_encode:
        body.append(_el("EncodingType", "url"))
    for record in uploads:
        algorithm = next(iter(record.meta.checksums), "")
        body.append(
            "<Upload>" + _el("Key", enc(record.key)) + _el("UploadId", record.upload_id)
            + owner(owner_id, "Initiator") + owner(owner_id) + _el("StorageClass", "STANDARD")
            + _el("Initiated", iso8601(record.initiated_ns))
            + (_el("ChecksumAlgorithm", algorithm.upper()) if algorithm else "")
            + "</Upload>"
        )  # fmt: skip
    body += _prefixes(prefixes, enc)
    return _document("ListMultipartUploadsResult", body)


# --- copy, tagging, attributes --------------------------------------------------------------


def copy_result(info: ObjectInfo, root: str = "CopyObjectResult") -> bytes:
    parts = [_el("ETag", f'"{info.etag}"'), _el("LastModified", iso8601(info.mod_time_ns))]
    parts += _checksum_elements(info.checksums, info.checksum_type)
    return _document(root, parts)


def copy_part_result(part: PartInfo) -> bytes:
    parts = [_el("ETag", f'"{part.etag}"'), _el("LastModified", iso8601(part.mod_time_ns))]
    parts += _checksum_elements(part.checksums)
    return _document("CopyPartResult", parts)


def tagging(tags: Mapping[str, str]) -> bytes:
    items = "".join(
        "<Tag>" + _el("Key", key) + _el("Value", value) + "</Tag>" for key, value in tags.items()
    )
    return _document("Tagging", [f"<TagSet>{items}</TagSet>"])


def object_attributes(
    info: ObjectInfo, wanted: set[str], *, part_marker: int, max_parts: int
) -> bytes:
    body: list[str] = []
    if "ETag" in wanted:
        body.append(_el("ETag", info.etag))
    if "Checksum" in wanted and any(info.checksums.values()):
        body.append("<Checksum>" + "".join(_checksum_elements(
            info.checksums, info.checksum_type or "FULL_OBJECT")) + "</Checksum>")  # fmt: skip
    if "ObjectParts" in wanted and info.parts:
        later = [p for p in info.parts if p.number > part_marker]
        page = later[:max_parts]
        body.append("<ObjectParts>" + _el("PartsCount", len(info.parts))
                    + _el("PartNumberMarker", part_marker)
                    + (_el("NextPartNumberMarker", page[-1].number) if page else "")
                    + _el("MaxParts", max_parts) + _el("IsTruncated", len(later) > len(page))
                    + "".join("<Part>" + _el("PartNumber", p.number) + _el("Size", p.size)
                              + "".join(_checksum_elements(p.checksums)) + "</Part>"
                              for p in page)
                    + "</ObjectParts>")  # fmt: skip
    if "StorageClass" in wanted:
        body.append(_el("StorageClass", "STANDARD"))
    if "ObjectSize" in wanted:
        body.append(_el("ObjectSize", info.size))
    return _document("GetObjectAttributesResponse", body)


def url_encoding(text: str | None) -> bool:
    """True for ``encoding-type=url``; InvalidArgument for any other value."""
    if text is None:
        return False
    if text.lower() != "url":
        raise errors.invalid_argument(f"encoding-type {text[:20]!r} is not 'url'")
    return True
