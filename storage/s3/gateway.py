"""The S3 gateway: path-style S3 over HTTP, on top of an :class:`ObjectLayer`.

``S3Gateway(layer, credentials).add_routes(app)`` adds the catch-all routes ``/``,
``/{bucket}`` and ``/{bucket}/{key}``; the node adds its own ``/minigrid/...`` and ``/metrics``
routes first, so they win. Every request is authenticated with SigV4 (no anonymous access).
Bodies are streamed both ways: PUT bodies flow from ``request.content`` into
``put_object`` and GET responses from the ``ObjectReader`` into a ``StreamResponse``, so memory
does not grow with object size (and ``client_max_size`` does not matter).

Exceptions become S3 XML errors in one place, :meth:`S3Gateway._handle`, through
:func:`storage.s3.errors.from_exception`.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from storage.errors import InvalidName, InvalidRange, ObjectNotFound
from storage.names import validate_bucket
from storage.objects import MAX_KEYS, ObjectInfo, ObjectLayer, ObjectReader
from storage.s3 import errors, xml
from storage.s3.auth import Authenticated, Authenticator
from storage.s3.body import VerifiedBody, plan_body
from storage.s3.ranges import ByteRange, parse_range

log = logging.getLogger(__name__)

RESERVED_BUCKET = "minigrid"
MAX_USER_META_BYTES = 2048
MAX_CONFIG_BODY = 64 * 1024
MAX_DELETE_BODY = 1024 * 1024  # S3's own limit: 1000 keys of up to 1 KiB each
XML_TYPE = "application/xml"

# Subresources S3 has and this gateway does not build, and what to call them in the error.
_UNSUPPORTED = {
    "uploads": "multipart upload",
    "uploadId": "multipart upload",
    "partNumber": "multipart upload",
    "acl": "ACLs",
    "policy": "bucket policies",
    "versioning": "versioning",
    "versions": "versioning",
    "versionId": "versioning",
    "tagging": "tagging",
    "lifecycle": "lifecycle rules",
    "cors": "CORS configuration",
    "website": "website hosting",
    "encryption": "server-side encryption configuration",
    "object-lock": "object lock",
    "retention": "object lock",
    "legal-hold": "object lock",
    "notification": "event notifications",
    "replication": "replication",
    "logging": "access logging",
    "attributes": "GetObjectAttributes",
    "select": "S3 Select",
    "restore": "restore",
}
_RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


class StreamAborted(Exception):
    """A GET failed after its headers were sent; the connection is dropped, not answered."""


@dataclass
class _Call:
    """One request being served."""

    request: web.Request
    request_id: str
    bucket: str
    key: str
    auth: Authenticated | None = None

    def headers(self, extra: Mapping[str, str] | None = None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers["x-amz-request-id"] = self.request_id
        headers["x-amz-id-2"] = self.request_id
        headers["Server"] = "minigrid"
        headers.update(extra or {})
        return headers


def http_date(time_ns: int) -> str:
    """RFC 7231 date, e.g. ``Wed, 21 Oct 2015 07:28:00 GMT``."""
    return email.utils.formatdate(time_ns / 1e9, usegmt=True)


class S3Gateway:
    """Path-style S3 with SigV4 over an object layer.

    ``credentials`` maps access key IDs to secret keys; every request must be signed with one
    of them. ``region`` is the only region requests may be scoped to. ``clock`` (seconds since
    the epoch) is there for tests of the 15-minute skew check.
    """

    def __init__(
        self,
        layer: ObjectLayer,
        credentials: Mapping[str, str],
        *,
        region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not credentials:
            raise ValueError("the S3 gateway needs at least one access key")
        self.layer = layer
        self.region = region
        self._auth = Authenticator(credentials, region, clock)

    def add_routes(self, app: web.Application) -> None:
        """Add the catch-all S3 routes. Add the node's own routes before calling this."""
        app.router.add_route("*", "/", self._handle)
        app.router.add_route("*", "/{bucket}", self._handle)
        app.router.add_route("*", "/{bucket}/", self._handle)
        app.router.add_route("*", "/{bucket}/{key:.+}", self._handle)

    # --- the one boundary -------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        call = _Call(
            request=request,
            request_id=secrets.token_hex(8).upper(),
            bucket=request.match_info.get("bucket", ""),
            key=request.match_info.get("key", ""),
        )
        try:
            call.auth = self._auth.authenticate(request)
            return await self._dispatch(call)
        except StreamAborted:
            raise
        except Exception as exc:
            error = errors.from_exception(exc)
            if error.status >= 500:
                log.warning("s3 %s %s: %s", request.method, request.path, error, exc_info=exc)
            return self._error_response(call, error)

    def _error_response(self, call: _Call, error: errors.S3Error) -> web.Response:
        headers = call.headers()
        if error.code == "InvalidRange" and "size" in error.extra:
            headers["Content-Range"] = f"bytes */{error.extra.pop('size')}"
        if call.request.method == "HEAD":
            return web.Response(status=error.status, headers=headers)
        body = xml.error(error.code, error.message, call.request.path, call.request_id, error.extra)
        headers["Content-Type"] = XML_TYPE
        return web.Response(status=error.status, body=body, headers=headers)

    async def _dispatch(self, call: _Call) -> web.StreamResponse:
        method = call.request.method
        query = call.request.rel_url.query
        for name, feature in _UNSUPPORTED.items():
            if name in query and not (name == "versionId" and query[name] == "null"):
                raise errors.not_implemented(
                    f"{feature} is not built in the minigrid S3 gateway ({method} ?{name})"
                )
        if not call.bucket:
            if method != "GET":
                raise errors.method_not_allowed(f"{method} / is not an S3 operation")
            return await self._list_buckets(call)
        self._check_bucket_name(call.bucket)
        handlers = self._object_ops if call.key else self._bucket_ops
        handler = handlers().get(method)
        if handler is None:
            raise errors.method_not_allowed(f"{method} is not allowed on this resource")
        return await handler(call)

    def _bucket_ops(self) -> dict[str, Callable[[_Call], Awaitable[web.StreamResponse]]]:
        return {
            "GET": self._get_bucket,
            "PUT": self._create_bucket,
            "HEAD": self._head_bucket,
            "DELETE": self._delete_bucket,
            "POST": self._post_bucket,
        }

    async def _post_bucket(self, call: _Call) -> web.Response:
        if "delete" not in call.request.rel_url.query:
            raise errors.not_implemented(
                "POST on a bucket is only DeleteObjects (?delete) in the minigrid S3 gateway"
            )
        document = await self._body(call).read_small(MAX_DELETE_BODY)
        keys, quiet = xml.parse_delete(document)
        deleted: list[str] = []
        failed: list[tuple[str, errors.S3Error]] = []
        for key in keys:
            try:
                with contextlib.suppress(ObjectNotFound):
                    await self.layer.delete_object(call.bucket, key)
                deleted.append(key)
            except Exception as exc:
                failed.append((key, errors.from_exception(exc)))
        return self._xml(call, xml.delete_result([] if quiet else deleted, failed))

    def _object_ops(self) -> dict[str, Callable[[_Call], Awaitable[web.StreamResponse]]]:
        return {
            "GET": self._get_object,
            "PUT": self._put_object,
            "HEAD": self._head_object,
            "DELETE": self._delete_object,
        }

    @staticmethod
    def _check_bucket_name(bucket: str) -> None:
        if bucket == RESERVED_BUCKET:
            raise errors.invalid_bucket_name(
                f"The bucket name {RESERVED_BUCKET!r} is reserved for the node's own routes."
            )
        try:
            validate_bucket(bucket)
        except InvalidName as exc:
            raise errors.invalid_bucket_name(str(exc)) from exc

    # --- service and buckets ----------------------------------------------------------------

    async def _list_buckets(self, call: _Call) -> web.Response:
        assert call.auth is not None
        buckets = [b for b in await self.layer.list_buckets() if b.name != RESERVED_BUCKET]
        return self._xml(call, xml.list_buckets(buckets, call.auth.access_key))

    async def _create_bucket(self, call: _Call) -> web.Response:
        # An optional CreateBucketConfiguration body is read (and verified) but not needed:
        # the gateway serves one region.
        if call.request.body_exists:
            await self._body(call).read_small(MAX_CONFIG_BODY)
        await self.layer.make_bucket(call.bucket)
        return web.Response(status=200, headers=call.headers({"Location": f"/{call.bucket}"}))

    async def _head_bucket(self, call: _Call) -> web.Response:
        await self.layer.head_bucket(call.bucket)
        return web.Response(status=200, headers=call.headers({"x-amz-bucket-region": self.region}))

    async def _delete_bucket(self, call: _Call) -> web.Response:
        await self.layer.delete_bucket(call.bucket)
        return web.Response(status=204, headers=call.headers())

    async def _get_bucket(self, call: _Call) -> web.Response:
        query = call.request.rel_url.query
        if "location" in query:
            await self.layer.head_bucket(call.bucket)
            return self._xml(call, xml.location(self.region))
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = _max_keys(query.get("max-keys"))
        url_encode = _encoding_type(query.get("encoding-type"))
        if query.get("list-type") == "2":
            token = query.get("continuation-token")
            start_after = query.get("start-after", "")
            result = await self.layer.list_objects(
                call.bucket, prefix, delimiter, start_after, max_keys, token
            )
            body = xml.list_objects_v2(
                call.bucket,
                result,
                prefix=prefix,
                delimiter=delimiter,
                max_keys=max_keys,
                start_after=start_after,
                continuation_token=token,
                url_encode=url_encode,
            )
        else:
            marker = query.get("marker", "")
            result = await self.layer.list_objects(call.bucket, prefix, delimiter, marker, max_keys)
            body = xml.list_objects_v1(
                call.bucket,
                result,
                prefix=prefix,
                delimiter=delimiter,
                max_keys=max_keys,
                marker=marker,
                url_encode=url_encode,
            )
        return self._xml(call, body)

    # --- objects ----------------------------------------------------------------------------

    async def _put_object(self, call: _Call) -> web.Response:
        request = call.request
        if "x-amz-copy-source" in request.headers:
            raise errors.not_implemented("CopyObject is not built in the minigrid S3 gateway")
        user_meta = _user_meta(request)
        content_type = request.headers.get("Content-Type", "application/octet-stream")
        body = self._body(call)
        info = await self.layer.put_object(
            call.bucket,
            call.key,
            body,
            size=body.size,
            content_type=content_type,
            user_meta=user_meta,
        )
        extra = {"ETag": f'"{info.etag}"'}
        for algorithm, value in body.checksum_values.items():
            extra[f"x-amz-checksum-{algorithm}"] = value
        return web.Response(status=200, headers=call.headers(extra))

    async def _head_object(self, call: _Call) -> web.Response:
        info = await self.layer.head_object(call.bucket, call.key)
        wanted = parse_range(call.request.headers.get("Range"))
        span = _resolve(wanted, info.size)
        headers = call.headers(_object_headers(call, info, span))
        return web.Response(status=206 if span else 200, headers=headers)

    async def _get_object(self, call: _Call) -> web.StreamResponse:
        wanted = parse_range(call.request.headers.get("Range"))
        if wanted is None:
            reader = await self.layer.get_object(call.bucket, call.key)
            span = None
        elif wanted.suffix is not None:
            info = await self.layer.head_object(call.bucket, call.key)
            span = _resolve(wanted, info.size)
            assert span is not None
            reader = await self.layer.get_object(call.bucket, call.key, span[0], span[1])
        else:
            reader = await self._open_range(call, wanted)
            span = (reader.offset, reader.length)
        async with reader:
            return await self._stream(call, reader, span)

    async def _open_range(self, call: _Call, wanted: ByteRange) -> ObjectReader:
        assert wanted.first is not None
        length = None if wanted.last is None else wanted.last - wanted.first + 1
        try:
            reader = await self.layer.get_object(call.bucket, call.key, wanted.first, length)
        except InvalidRange:
            # The offset lies past the end; answer 416 with the object's size.
            info = await self.layer.head_object(call.bucket, call.key)
            _resolve(wanted, info.size)
            raise
        if reader.length == 0:
            await reader.aclose()
            _resolve(wanted, reader.info.size)
        return reader

    async def _stream(
        self, call: _Call, reader: ObjectReader, span: tuple[int, int] | None
    ) -> web.StreamResponse:
        chunks = aiter(reader)
        # Pull the first chunk before sending headers, so an early read failure is still
        # answered as an S3 error rather than a dropped connection.
        first = await anext(chunks, b"")
        response = web.StreamResponse(
            status=206 if span else 200,
            headers=call.headers(_object_headers(call, reader.info, span)),
        )
        response.content_length = reader.length
        await response.prepare(call.request)
        try:
            if first:
                await response.write(first)
            async for chunk in chunks:
                await response.write(chunk)
        except ConnectionResetError:
            log.debug("s3 GET %s/%s: the client went away", call.bucket, call.key)
            return response
        except Exception as exc:
            log.warning("s3 GET %s/%s failed mid-stream: %s", call.bucket, call.key, exc)
            raise StreamAborted(f"GET {call.bucket}/{call.key} failed mid-stream") from exc
        await response.write_eof()
        return response

    async def _delete_object(self, call: _Call) -> web.Response:
        with contextlib.suppress(ObjectNotFound):  # S3 answers 204 whether or not it existed
            await self.layer.delete_object(call.bucket, call.key)
        return web.Response(status=204, headers=call.headers())

    # --- helpers ----------------------------------------------------------------------------

    def _body(self, call: _Call) -> VerifiedBody:
        assert call.auth is not None
        return VerifiedBody(call.request, call.auth, plan_body(call.request, call.auth))

    @staticmethod
    def _xml(call: _Call, body: bytes) -> web.Response:
        return web.Response(status=200, body=body, headers=call.headers({"Content-Type": XML_TYPE}))


def _resolve(wanted: ByteRange | None, size: int) -> tuple[int, int] | None:
    """``(offset, length)`` of a satisfiable range; None for the whole object."""
    if wanted is None:
        return None
    span = wanted.resolve(size)
    if span is None:
        raise errors.S3Error(
            "InvalidRange",
            "The requested range is not satisfiable",
            416,
            extra={"size": str(size)},
        )
    return span


def _object_headers(call: _Call, info: ObjectInfo, span: tuple[int, int] | None) -> dict[str, str]:
    headers = {
        "Content-Type": info.content_type,
        "Content-Length": str(span[1] if span else info.size),
        "ETag": f'"{info.etag}"',
        "Last-Modified": http_date(info.mod_time_ns),
        "Accept-Ranges": "bytes",
    }
    if span is not None:
        offset, length = span
        headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{info.size}"
    for name, value in info.user_meta.items():
        headers[f"x-amz-meta-{name}"] = value
    query = call.request.rel_url.query
    for param, header in _RESPONSE_OVERRIDES.items():
        if param in query:
            headers[header] = query[param]
    return headers


def _user_meta(request: web.Request) -> dict[str, str]:
    meta: dict[str, str] = {}
    for name in {n.lower() for n in request.headers if n.lower().startswith("x-amz-meta-")}:
        meta[name[len("x-amz-meta-") :]] = ",".join(request.headers.getall(name))
    size = sum(len(k) + len(v) for k, v in meta.items())
    if size > MAX_USER_META_BYTES:
        raise errors.S3Error(
            "MetadataTooLarge",
            f"Your metadata headers are {size} bytes; the limit is {MAX_USER_META_BYTES}.",
            400,
        )
    return meta


def _max_keys(text: str | None) -> int:
    if text is None:
        return MAX_KEYS
    try:
        value = int(text)
        if value < 0:
            raise ValueError
    except ValueError as exc:
        raise errors.invalid_argument(f"max-keys {text[:20]!r} must be a whole number") from exc
    return min(value, MAX_KEYS)


def _encoding_type(text: str | None) -> bool:
    if text is None:
        return False
    if text.lower() != "url":
        raise errors.invalid_argument(f"encoding-type {text[:20]!r} is not 'url'")
    return True
