"""Object handlers: PutObject, GetObject and HeadObject (ranges, ``partNumber``, conditions,
checksums), object tagging and GetObjectAttributes. Each takes the gateway and the call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from node.s3 import conditions, errors, headers, tagging, xml
from node.s3 import routes as s3_routes
from node.s3.call import Call
from node.s3.ranges import ByteRange, parse_range
from storage.errors import ObjectNotFound
from storage.info import ObjectInfo
from storage.meta import MAX_PARTS, ObjectMeta
from storage.put import PutOptions

if TYPE_CHECKING:
    from node.s3.gateway import S3Gateway

RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}
ATTRIBUTES = frozenset({"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"})
MAX_ATTRIBUTE_PARTS = 1000


# --- writing --------------------------------------------------------------------------------


def storage_precondition(
    request_headers: Mapping[str, str],
) -> Callable[[ObjectMeta | None], None] | None:
    """The If-None-Match / If-Match check of a write, for the object layer to run under the
    key's lock (None for a plain write)."""
    check = conditions.write_precondition(request_headers)
    if check is None:
        return None
    return lambda current: check(current.etag if current is not None else None)


async def early_precondition(gateway: S3Gateway, call: Call) -> None:
    """Check a conditional write before its body is read, so a refused client uploads
    nothing (the object layer checks again under the lock at the commit)."""
    check = conditions.write_precondition(call.request.headers)
    if check is None:
        return
    try:
        info = await gateway.layer.head_object(call.bucket, call.key)
    except ObjectNotFound:
        check(None)
        return
    check(info.etag)


async def put_object(gateway: S3Gateway, call: Call) -> web.Response:
    request = call.request
    user_meta = headers.user_meta(request.headers)
    tags = tagging.from_header(request.headers.get("x-amz-tagging", ""))
    await early_precondition(gateway, call)
    body = gateway.body(call)
    options = PutOptions(
        sys_meta=headers.system_meta(request.headers),
        tags=tags,
        checksums=lambda: body.checksum_values,
        checksum_type="FULL_OBJECT" if call.plan and call.plan.echo_algorithms else "",
        precondition=storage_precondition(request.headers),
    )
    info = await gateway.layer.put_object(
        call.bucket,
        call.key,
        body,
        size=body.size,
        content_type=request.headers.get("Content-Type", "application/octet-stream"),
        user_meta=user_meta,
        options=options,
    )
    extra = {"ETag": f'"{info.etag}"'}
    for algorithm, value in body.checksum_values.items():
        extra[f"x-amz-checksum-{algorithm}"] = value
    if body.checksum_values:
        extra["x-amz-checksum-type"] = "FULL_OBJECT"
    return web.Response(status=200, headers=call.headers(extra))


# --- reading --------------------------------------------------------------------------------


def part_number(call: Call) -> int | None:
    text = call.query.get("partNumber")
    if text is None:
        return None
    try:
        number = int(text)
        if not 1 <= number <= MAX_PARTS:
            raise ValueError
    except ValueError as exc:
        raise errors.invalid_argument(
            f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive"
        ) from exc
    return number


class ReadPlan:
    """What a GET or HEAD answers, decided from the object's metadata: conditions first,
    then the part or range."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.wanted = parse_range(call.request.headers.get("Range"))
        self.part = part_number(call)
        if self.part is not None and self.wanted is not None:
            raise errors.invalid_request(
                "Cannot specify both Range header and partNumber query parameter"
            )
        self.span: tuple[int, int] | None = None
        self.info: ObjectInfo | None = None

    def choose(self, info: ObjectInfo) -> tuple[int, int | None]:
        """For ``ObjectLayer.get_object``: check the conditions, resolve the span."""
        self.info = info
        conditions.check_read(self.call.request.headers, info)
        if self.part is not None:
            span = info.part_span(self.part)
            if span is None:
                raise errors.S3Error(
                    "InvalidPartNumber", "The requested partnumber is not satisfiable", 416,
                    extra={"size": str(info.size)},
                )  # fmt: skip
            self.span = span
        else:
            self.span = resolve(self.wanted, info.size)
        if self.span is None:
            return 0, None
        return self.span

    @property
    def status(self) -> int:
        return 206 if self.span is not None else 200

    def headers(self, info: ObjectInfo) -> dict[str, str]:
        answer = headers.object_headers(info)
        span = self.span
        answer["Content-Length"] = str(span[1] if span else info.size)
        if span is not None:
            offset, length = span
            last = offset + length - 1
            answer["Content-Range"] = (
                f"bytes {offset}-{last}/{info.size}" if length else f"bytes */{info.size}"
            )
        if self.part is not None and info.parts:
            # S3 answers the part count only to a request for one part.
            answer["x-amz-mp-parts-count"] = str(len(info.parts))
        if self.call.request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
            whole = span is None or (self.part is not None and len(info.parts) <= 1)
            answer.update(headers.checksum_headers(info, whole=whole))
        query = self.call.query
        for param, header in RESPONSE_OVERRIDES.items():
            if param in query:
                answer[header] = query[param]
        return answer


def resolve(wanted: ByteRange | None, size: int) -> tuple[int, int] | None:
    """``(offset, length)`` of a satisfiable range; None for the whole object."""
    if wanted is None:
        return None
    span = wanted.resolve(size)
    if span is None:
        raise errors.S3Error(
            "InvalidRange", "The requested range is not satisfiable", 416,
            extra={"size": str(size)},
        )  # fmt: skip
    return span


async def head_object(gateway: S3Gateway, call: Call) -> web.Response:
    plan = ReadPlan(call)
    info = await gateway.layer.head_object(call.bucket, call.key)
    plan.choose(info)
    return web.Response(status=plan.status, headers=call.headers(plan.headers(info)))


async def get_object(gateway: S3Gateway, call: Call) -> web.StreamResponse:
    plan = ReadPlan(call)
    reader = await gateway.layer.get_object(call.bucket, call.key, choose=plan.choose)
    async with reader:
        return await gateway.stream(call, reader, plan.status, plan.headers(reader.info))


# --- tagging and attributes -----------------------------------------------------------------


async def get_tagging(gateway: S3Gateway, call: Call) -> web.Response:
    info = await gateway.layer.head_object(call.bucket, call.key)
    return gateway.xml_response(call, xml.tagging(info.tags))


async def put_tagging(gateway: S3Gateway, call: Call) -> web.Response:
    document = await gateway.body(call).read_small(s3_routes.MAX_TAGGING_BODY)
    tags = tagging.from_document(document)
    await gateway.layer.put_tags(call.bucket, call.key, tags)
    return web.Response(status=200, headers=call.headers())


async def delete_tagging(gateway: S3Gateway, call: Call) -> web.Response:
    await gateway.layer.put_tags(call.bucket, call.key, {})
    return web.Response(status=204, headers=call.headers())


def _max_parts(text: str | None) -> int:
    if text is None:
        return MAX_ATTRIBUTE_PARTS
    try:
        value = int(text)
        if value < 0:
            raise ValueError
    except ValueError as exc:
        raise errors.invalid_argument("x-amz-max-parts must be a whole number") from exc
    return min(value, MAX_ATTRIBUTE_PARTS)


async def get_attributes(gateway: S3Gateway, call: Call) -> web.Response:
    request_headers = call.request.headers
    names = {
        name.strip()
        for value in request_headers.getall("x-amz-object-attributes", [])
        for name in value.split(",")
        if name.strip()
    }
    if not names:
        raise errors.invalid_argument("x-amz-object-attributes must name at least one attribute")
    unknown = names - ATTRIBUTES
    if unknown:
        raise errors.invalid_argument(
            f"Invalid attribute name specified: {sorted(unknown)[0][:60]}"
        )
    marker_text = request_headers.get("x-amz-part-number-marker", "0")
    if not marker_text.isdigit():
        raise errors.invalid_argument("x-amz-part-number-marker must be a whole number")
    info = await gateway.layer.head_object(call.bucket, call.key)
    conditions.check_read(request_headers, info)
    body = xml.object_attributes(
        info, names, part_marker=int(marker_text),
        max_parts=_max_parts(request_headers.get("x-amz-max-parts")),
    )  # fmt: skip
    return gateway.xml_response(call, body, {"Last-Modified": headers.http_date(info.mod_time_ns)})
