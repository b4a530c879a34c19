"""The S3 gateway: path-style S3 over HTTP, on top of an :class:`ObjectLayer`.

``S3Gateway(layer, credentials).add_routes(app)`` adds the catch-all routes ``/``,
``/{bucket}`` and ``/{bucket}/{key}``; the node adds its own ``/minigrid/...`` and ``/metrics``
routes first, so they win. Every request is authenticated with SigV4 (no anonymous access).
Bodies are streamed both ways: PUT bodies flow from ``request.content`` into
``put_object`` and GET responses from the ``ObjectReader`` into a ``StreamResponse``, so memory
does not grow with object size (and ``client_max_size`` does not matter).

A request goes through two steps:

1. **Admission** (:meth:`S3Gateway._admit`), from the request line and headers alone: the
   signature, the route (:mod:`node.s3.routes`: an operation the gateway does not build is
   ``NotImplemented`` here, before any handler runs), the bucket name and the declared body
   size. aiohttp runs it as the routes' ``expect_handler`` when the client sent
   ``Expect: 100-continue``, so ``100 Continue`` goes out only to an admitted request and a
   refused client never sends its body.
2. **The handler** of the route, which reads the body if it has one.

Exceptions become S3 XML errors in one place, :meth:`S3Gateway._answer_error`, through
:func:`node.s3.errors.from_exception`. Logging follows the project's rule: a real 500 gets
its traceback; a 501, a 503 or a client that went away gets one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from node.s3 import conditions, copy, errors, multipart, objects, xml
from node.s3 import routes as s3_routes
from node.s3.auth import Authenticated, Authenticator
from node.s3.body import DEFAULT_IDLE_TIMEOUT, BodyPlan, VerifiedBody, plan_body
from node.s3.call import Call
from node.services import Route, Routes
from storage.errors import BucketExists, InvalidName, ObjectNotFound
from storage.names import validate_bucket
from storage.objects import MAX_KEYS, ObjectLayer, ObjectReader

log = logging.getLogger(__name__)

RESERVED_BUCKET = "minigrid"
MAX_LIST_BUCKETS = 10_000
#: Regions a client may sign for that mean the gateway's default region: s3cmd's default
#: bucket location is ``US``, which MinIO (and S3's own history) takes as us-east-1.
REGION_ALIASES = {"US": "us-east-1"}
XML_TYPE = "application/xml"
#: How long answering an error may take before the connection is dropped instead.
ERROR_SEND_TIMEOUT = 5.0
#: A long operation not done after this many seconds is answered 200 at once and kept alive.
KEEPALIVE_AFTER = 1.0
#: ... with a space this often, well inside any client's read timeout (boto3's is 60 s).
KEEPALIVE_EVERY = 5.0
CLIENT_CLOSED = 499  # nginx's status for "the client closed the request"; never sent


class _ClientStalled(Exception):
    """The client stopped reading a response body."""


_CALL = web.RequestKey("minigrid_s3_call", Call)
Handler = Callable[[Call], Awaitable[web.StreamResponse]]


def _client_went_away(exc: BaseException) -> bool:
    """The client hung up: a reset, a broken pipe, or aiohttp's "connection lost"."""
    return isinstance(exc, ConnectionError)


class S3Gateway:
    """Path-style S3 with SigV4 over an object layer.

    ``credentials`` maps access key IDs to secret keys; every request must be signed with one
    of them. ``region`` is the only region requests may be scoped to. ``body_timeout`` is the
    longest a request body may send nothing (``RequestTimeout``), and a response body may go
    unread (the connection is dropped). ``clock`` (seconds since the epoch) is there for tests
    of the 15-minute skew check.
    """

    def __init__(
        self,
        layer: ObjectLayer,
        credentials: Mapping[str, str],
        *,
        region: str = "us-east-1",
        body_timeout: float = DEFAULT_IDLE_TIMEOUT,
        clock: Callable[[], float] = time.time,
        keepalive_after: float = KEEPALIVE_AFTER,
        keepalive_every: float = KEEPALIVE_EVERY,
    ) -> None:
        if not credentials:
            raise ValueError("the S3 gateway needs at least one access key")
        self.layer = layer
        self.region = region
        self.body_timeout = body_timeout
        self.keepalive_after = keepalive_after
        self.keepalive_every = keepalive_every
        #: Answers being kept alive with spaces right now (see :meth:`long_xml`).
        self.kept_alive = 0
        self._auth = Authenticator(
            credentials, region, clock,
            aliases={alias for alias, name in REGION_ALIASES.items() if name == region},
        )  # fmt: skip
        #: S3 requests being served now (the healer yields to them).
        self.inflight = 0
        self._handlers: dict[str, Handler] = {
            "ListBuckets": self._list_buckets,
            "CreateBucket": self._create_bucket,
            "HeadBucket": self._head_bucket,
            "DeleteBucket": self._delete_bucket,
            "ListObjects": self._list_objects,
            "GetBucketLocation": self._get_bucket_location,
            "DeleteObjects": self._delete_objects,
            "PutObject": lambda call: objects.put_object(self, call),
            "GetObject": lambda call: objects.get_object(self, call),
            "HeadObject": lambda call: objects.head_object(self, call),
            "DeleteObject": self._delete_object,
            "CopyObject": lambda call: copy.copy_object(self, call),
            "UploadPartCopy": lambda call: copy.upload_part_copy(self, call),
            "GetObjectTagging": lambda call: objects.get_tagging(self, call),
            "PutObjectTagging": lambda call: objects.put_tagging(self, call),
            "DeleteObjectTagging": lambda call: objects.delete_tagging(self, call),
            "GetObjectAttributes": lambda call: objects.get_attributes(self, call),
            "CreateMultipartUpload": lambda call: multipart.create(self, call),
            "UploadPart": lambda call: multipart.upload_part(self, call),
            "CompleteMultipartUpload": lambda call: multipart.complete(self, call),
            "AbortMultipartUpload": lambda call: multipart.abort(self, call),
            "ListParts": lambda call: multipart.list_parts(self, call),
            "ListMultipartUploads": lambda call: multipart.list_uploads(self, call),
        }
        unmatched = set(self._handlers) ^ {route.operation for route in s3_routes.ROUTES}
        assert not unmatched, f"routes and handlers differ: {sorted(unmatched)}"

    # --- the service protocol (node.services) -------------------------------------------------

    name = "s3"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def routes(self) -> Routes:
        """The catch-all S3 routes: the node serves them after every other service's."""
        return Routes(
            public=[
                Route("*", path, self.handle, expect_handler=self._expect)
                for path in ("/", "/{bucket}", "/{bucket}/", "/{bucket}/{key:.+}")
            ]
        )

    def info(self) -> dict[str, Any]:
        return {"s3": {"inflight": self.inflight, "region": self.region}}

    def add_routes(self, app: web.Application) -> None:
        """Add the catch-all S3 routes. Add the node's own routes before calling this."""
        for route in self.routes().public:
            app.router.add_route(
                route.method, route.path, route.handler, expect_handler=route.expect_handler
            )

    # --- admission ----------------------------------------------------------------------------

    async def _expect(self, request: web.Request) -> None:
        """aiohttp's hook for ``Expect:``, run before anything reads the body.

        Admit the request first; only an admitted one gets ``100 Continue``. A refused one
        gets no interim answer, so a client that waits for it (as ``Expect`` asks) never sends
        the body, and the handler answers the refusal at once.
        """
        call = self._admit(request)
        request[_CALL] = call
        if call.refused is not None or request.version != HttpVersion11:
            return
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise web.HTTPExpectationFailed(text="only Expect: 100-continue is understood")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response

    def _admit(self, request: web.Request) -> Call:
        """Decide from the request line and headers whether to serve it, and how."""
        call = Call(
            request=request,
            request_id=secrets.token_hex(8).upper(),
            bucket=request.match_info.get("bucket", ""),
            key=request.match_info.get("key", ""),
        )
        try:
            call.auth = self._auth.authenticate(request)
            resource = s3_routes.resource_of(call.bucket, call.key)
            call.route = s3_routes.resolve(
                request.method, resource, request.rel_url.query, request.headers
            )
            if call.bucket:
                self._check_bucket_name(call.bucket)
            call.plan = self._plan_body(call, call.route, call.auth)
        except Exception as exc:
            call.refused = exc
        return call

    @staticmethod
    def _plan_body(call: Call, route: s3_routes.Route, auth: Authenticated) -> BodyPlan | None:
        """The body plan for a route that takes a body, refusing one declared too large."""
        body = route.body
        if body is None or (not body.required and not call.request.body_exists):
            return None
        plan = plan_body(call.request, auth)
        if plan.size > body.limit:
            if body.too_large == "EntityTooLarge":
                raise errors.entity_too_large(plan.size, body.limit)
            raise errors.max_message_length_exceeded(plan.size, body.limit)
        return plan

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

    # --- the one boundary -------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one S3 request: the gateway's one boundary, where errors become S3 XML."""
        call = request.get(_CALL) or self._admit(request)
        self.inflight += 1
        try:
            if call.refused is not None:
                raise call.refused
            assert call.route is not None
            return await self._handlers[call.route.operation](call)
        except asyncio.CancelledError:
            log.info("s3 %s: cancelled (the client went away or the node is stopping)",
                     call.describe())  # fmt: skip
            raise
        except Exception as exc:
            return await self._answer_error(call, exc)
        finally:
            self.inflight -= 1

    async def _answer_error(self, call: Call, exc: Exception) -> web.StreamResponse:
        if isinstance(exc, conditions.NotModified):
            headers = call.headers(conditions.not_modified_headers(exc.info))
            return web.Response(status=304, headers=headers)
        if _client_went_away(exc):
            reason = str(exc) or type(exc).__name__
            log.info("s3 %s: the client went away (%s)", call.describe(), reason)
            return web.Response(status=CLIENT_CLOSED, reason="Client Closed Request")
        if isinstance(exc, web.RequestPayloadError):  # aiohttp could not frame the body
            exc = errors.incomplete_body(f"the request body is malformed: {exc}")
        error = errors.from_exception(exc)
        self._log_error(call, error, exc)
        response = self._error_response(call, error)
        if error.close:
            return await self._answer_then_close(call, response)
        if not call.request.content.at_eof():
            # The body was not (all) read: the connection cannot carry another request.
            response.force_close()
        return response

    @staticmethod
    def _log_error(call: Call, error: errors.S3Error, exc: Exception) -> None:
        if error.status == 500 and not isinstance(exc, errors.S3Error):
            log.error("s3 %s: %s", call.describe(), error, exc_info=exc)
        elif error.status >= 500:
            level = logging.INFO if error.status == 501 else logging.WARNING
            log.log(level, "s3 %s: %d %s", call.describe(), error.status, error)
        elif error.close:
            log.info("s3 %s: %s; closing the connection", call.describe(), error)

    async def _answer_then_close(self, call: Call, response: web.Response) -> web.Response:
        """Send the error, then close the connection instead of reading the rest of the body."""
        response.force_close()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(ERROR_SEND_TIMEOUT):
                await response.prepare(call.request)
                await response.write_eof()
        call.request.protocol.force_close()
        return response

    def _error_response(self, call: Call, error: errors.S3Error) -> web.Response:
        headers = call.headers()
        if error.code == "InvalidRange" and "size" in error.extra:
            headers["Content-Range"] = f"bytes */{error.extra.pop('size')}"
        if call.request.method == "HEAD":
            return web.Response(status=error.status, headers=headers)
        body = xml.error(error.code, error.message, call.request.path, call.request_id, error.extra)
        headers["Content-Type"] = XML_TYPE
        return web.Response(status=error.status, body=body, headers=headers)

    # --- service and buckets ----------------------------------------------------------------

    async def _list_buckets(self, call: Call) -> web.Response:
        assert call.auth is not None
        query = call.request.rel_url.query
        prefix = query.get("prefix", "")
        after = query.get("continuation-token", "")
        limit = _max_buckets(query.get("max-buckets"))
        buckets = [
            b for b in await self.layer.list_buckets()
            if b.name != RESERVED_BUCKET and b.name.startswith(prefix) and b.name > after
        ]  # fmt: skip
        if query.get("bucket-region", self.region) != self.region:
            buckets = []  # every bucket here lives in the gateway's one region
        buckets.sort(key=lambda b: b.name)
        token = buckets[limit - 1].name if len(buckets) > limit else None
        body = xml.list_buckets(
            buckets[:limit], call.auth.access_key,
            prefix=prefix if "prefix" in query else None, continuation_token=token,
        )  # fmt: skip
        return self.xml_response(call, body)

    async def _create_bucket(self, call: Call) -> web.Response:
        # An optional CreateBucketConfiguration body is read (and verified) but not needed:
        # the gateway serves one region.
        if call.plan is not None:
            await self.body(call).read_small(s3_routes.MAX_CONFIG_BODY)
        try:
            await self.layer.make_bucket(call.bucket)
        except BucketExists:
            # S3 answers 200 to an owner re-creating a bucket in us-east-1 (its legacy
            # behaviour), and BucketAlreadyOwnedByYou in every other region.
            if self.region != "us-east-1":
                raise
        return web.Response(status=200, headers=call.headers({"Location": f"/{call.bucket}"}))

    async def _head_bucket(self, call: Call) -> web.Response:
        await self.layer.head_bucket(call.bucket)
        return web.Response(status=200, headers=call.headers({"x-amz-bucket-region": self.region}))

    async def _delete_bucket(self, call: Call) -> web.Response:
        await self.layer.delete_bucket(call.bucket)
        return web.Response(status=204, headers=call.headers())

    async def _get_bucket_location(self, call: Call) -> web.Response:
        await self.layer.head_bucket(call.bucket)
        return self.xml_response(call, xml.location(self.region))

    async def _delete_objects(self, call: Call) -> web.Response:
        document = await self.body(call).read_small(s3_routes.MAX_DELETE_BODY)
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
        return self.xml_response(call, xml.delete_result([] if quiet else deleted, failed))

    async def _list_objects(self, call: Call) -> web.Response:
        query = call.request.rel_url.query
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = _max_keys(query.get("max-keys"))
        url_encode = xml.url_encoding(query.get("encoding-type"))
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
                owner_id=call.owner if query.get("fetch-owner") == "true" else None,
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
                owner_id=call.owner,  # ListObjects (v1) always names the owner
            )
        return self.xml_response(call, body)

    # --- objects ----------------------------------------------------------------------------

    async def stream(
        self,
        call: Call,
        reader: ObjectReader,
        status: int,
        headers: Mapping[str, str],
    ) -> web.StreamResponse:
        """Stream a reader's bytes as the response body (headers already decided)."""
        chunks = aiter(reader)
        # Pull the first chunk before sending headers, so an early read failure is still
        # answered as an S3 error rather than a dropped connection.
        first = await anext(chunks, b"")
        response = web.StreamResponse(status=status, headers=call.headers(headers))
        response.content_length = reader.length
        await response.prepare(call.request)
        sent = 0
        try:
            if first:
                await self._send(response, first)
                sent += len(first)
            async for chunk in chunks:
                await self._send(response, chunk)
                sent += len(chunk)
        except ConnectionError:
            log.info("s3 %s: the client went away after %d of %d bytes",
                     call.describe(), sent, reader.length)  # fmt: skip
            return response
        except _ClientStalled:
            log.info("s3 %s: the client read nothing for %gs after %d of %d bytes; closing",
                     call.describe(), self.body_timeout, sent, reader.length)  # fmt: skip
        except Exception as exc:
            # Headers are out: the only way left to tell the client is a short body.
            error = errors.from_exception(exc)
            log.warning("s3 %s failed after %d of %d bytes, dropping the connection: %s",
                        call.describe(), sent, reader.length, error,
                        exc_info=exc if error.status == 500 else None)  # fmt: skip
        else:
            await response.write_eof()
            return response
        call.request.protocol.force_close()
        return response

    async def _send(self, response: web.StreamResponse, chunk: bytes) -> None:
        """Write one chunk; _ClientStalled when the client reads nothing for the body timeout."""
        try:
            async with asyncio.timeout(self.body_timeout):
                await response.write(chunk)
        except TimeoutError:
            raise _ClientStalled from None

    async def _delete_object(self, call: Call) -> web.Response:
        with contextlib.suppress(ObjectNotFound):  # S3 answers 204 whether or not it existed
            await self.layer.delete_object(call.bucket, call.key)
        return web.Response(status=204, headers=call.headers())

    # --- helpers ----------------------------------------------------------------------------

    def body(self, call: Call) -> VerifiedBody:
        """The request's verified body (the route takes one, and admission planned it)."""
        if call.plan is None:
            raise errors.missing_content_length()
        assert call.auth is not None
        return VerifiedBody(call.request, call.auth, call.plan, idle_timeout=self.body_timeout)

    async def drain(self, call: Call) -> None:
        """Read (and verify) an optional body a route ignores, so the connection stays usable."""
        if call.plan is not None:
            await self.body(call).read_small(s3_routes.MAX_CONFIG_BODY)

    async def long_xml(self, call: Call, work: Awaitable[bytes]) -> web.StreamResponse:
        """Answer an operation that can run for minutes (CompleteMultipartUpload) as S3 does.

        If ``work`` (which makes the XML document) is done within ``keepalive_after``, the
        answer is an ordinary one, errors included. Otherwise the 200 status and the XML
        declaration go out at once and a space every ``keepalive_every``, so the client's read
        timeout (60 s in boto3) cannot fire and make it retry an operation still running; the
        document follows, or an ``Error`` document, which S3 clients read as the failure of a
        200 for exactly these operations. The operation finishes even if the client leaves.
        """
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait({task}, timeout=self.keepalive_after)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            return self.xml_response(call, task.result())
        response = web.StreamResponse(status=200, headers=call.headers({"Content-Type": XML_TYPE}))
        self.kept_alive += 1
        try:
            await self._keep_alive(call, response, task)
        finally:
            self.kept_alive -= 1
        return response

    async def _keep_alive(
        self, call: Call, response: web.StreamResponse, task: asyncio.Future[bytes]
    ) -> None:
        try:
            await response.prepare(call.request)
            await self._send(response, xml.DECLARATION.encode())
            while not task.done():
                await asyncio.wait({task}, timeout=self.keepalive_every)
                if not task.done():
                    await self._send(response, b" ")
        except asyncio.CancelledError:  # the node is stopping
            task.cancel()
            raise
        except (ConnectionError, _ClientStalled) as exc:
            log.info("s3 %s: the client went away while the operation ran (%s); finishing it",
                     call.describe(), type(exc).__name__)  # fmt: skip
            with contextlib.suppress(Exception):
                await task
            call.request.protocol.force_close()
            return
        try:
            body = task.result()
        except Exception as exc:
            error = errors.from_exception(exc)
            self._log_error(call, error, exc)
            body = xml.error(error.code, error.message, call.request.path, call.request_id,
                             error.extra)  # fmt: skip
        with contextlib.suppress(ConnectionError, _ClientStalled):
            await self._send(response, body.removeprefix(xml.DECLARATION.encode()))
            await response.write_eof()

    @staticmethod
    def xml_response(
        call: Call, body: bytes, extra: Mapping[str, str] | None = None
    ) -> web.Response:
        headers = call.headers({"Content-Type": XML_TYPE, **(extra or {})})
        return web.Response(status=200, body=body, headers=headers)



def _max_buckets(text: str | None) -> int:
    if text is None:
        return MAX_LIST_BUCKETS
    try:
        value = int(text)
        if not 1 <= value <= MAX_LIST_BUCKETS:
            raise ValueError
    except ValueError as exc:
        raise errors.invalid_argument(
            f"max-buckets {text[:20]!r} must be a whole number from 1 to {MAX_LIST_BUCKETS}"
        ) from exc
    return value


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
