"""The S3 XML documents the gateway answers with (built as text; all values escaped)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from node.s3 import errors
from storage.objects import BucketInfo, ListResult, ObjectInfo

MAX_DELETE_KEYS = 1000

NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n'


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


def _contents(objects: Sequence[ObjectInfo], enc: _Encoder) -> list[str]:
    return [
        "<Contents>"
        + _el("Key", enc(o.key))
        + _el("LastModified", iso8601(o.mod_time_ns))
        + _el("ETag", f'"{o.etag}"')
        + _el("Size", o.size)
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
    parts += _contents(result.objects, enc) + _prefixes(result.prefixes, enc)
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
    parts += _contents(result.objects, enc) + _prefixes(result.prefixes, enc)
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
