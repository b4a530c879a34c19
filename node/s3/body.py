"""Request bodies: decoded, verified and streamed, never read whole into memory.

:class:`VerifiedBody` turns ``request.content`` into the object's bytes as an async iterator
for :meth:`ObjectLayer.put_object`. Every check (x-amz-content-sha256, aws-chunked chunk and
trailer signatures, Content-MD5, x-amz-checksum-*) completes before the iterator ends; a failure
raises from inside it, so the object layer aborts the write and nothing is committed.

Two checks bound what a client can make the node hold: a body that sends nothing for
``idle_timeout`` seconds fails with ``RequestTimeout``, and a body that carries more payload than
it declared fails with ``IncompleteBody`` the moment it does (an aws-chunked body at the size
line of the chunk that would pass ``x-amz-decoded-content-length``), not after it was all read.
Both ask the gateway to close the connection rather than read the rest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from node.s3 import checksum, errors, sigv4
from node.s3.auth import Authenticated
from node.s3.chunked import AwsChunkedDecoder, ChunkedError

MAX_TRAILERS = 4
DEFAULT_IDLE_TIMEOUT = 30.0


@dataclass
class BodyPlan:
    """What a PUT body is and how to check it, decided from the headers before reading."""

    size: int
    chunked: bool
    signed_chunks: bool
    trailer: bool
    sha256_hex: str | None = None
    md5_b64: str | None = None
    header_checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> base64
    trailer_algorithms: list[str] = field(default_factory=list)

    @property
    def echo_algorithms(self) -> list[str]:
        """The checksum algorithms the client sent, to repeat in the response."""
        return [*self.header_checksums, *self.trailer_algorithms]


def plan_body(request: web.Request, auth: Authenticated) -> BodyPlan:
    """Read the headers that describe the body; raise for missing or contradictory ones."""
    mode = auth.payload
    chunked = mode.startswith("STREAMING-")
    if chunked:
        size_text = request.headers.get("x-amz-decoded-content-length")
    else:
        size_text = request.headers.get("Content-Length")
    if size_text is None:
        raise errors.missing_content_length()
    try:
        size = int(size_text)
        if size < 0:
            raise ValueError
    except ValueError as exc:
        raise errors.invalid_argument(f"bad content length {size_text[:40]!r}") from exc
    plan = BodyPlan(
        size=size,
        chunked=chunked,
        signed_chunks=mode in (sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER),
        trailer=mode.endswith("-TRAILER"),
        sha256_hex=mode if sigv4.is_sha256_hex(mode) else None,
        md5_b64=request.headers.get("Content-MD5"),
    )
    if plan.md5_b64 is not None:
        try:
            if len(base64.b64decode(plan.md5_b64, validate=True)) != 16:
                raise ValueError
        except (binascii.Error, ValueError) as exc:
            raise errors.invalid_digest() from exc
    for name, value in request.headers.items():
        algorithm = checksum.algorithm_of(name)
        if algorithm is not None:
            plan.header_checksums[algorithm] = value
    if plan.trailer:
        plan.trailer_algorithms = _declared_trailers(request.headers.get("x-amz-trailer", ""))
    return plan


def _declared_trailers(header: str) -> list[str]:
    names = [n.strip().lower() for n in header.split(",") if n.strip()]
    if len(names) > MAX_TRAILERS:
        raise errors.invalid_request(f"at most {MAX_TRAILERS} trailers are accepted")
    algorithms = []
    for name in names:
        algorithm = checksum.algorithm_of(name)
        if algorithm is None:
            raise errors.invalid_request(f"unsupported trailer {name!r}: only x-amz-checksum-*")
        algorithms.append(algorithm)
    return algorithms


class _Checks:
    """Running digests of the decoded payload, compared when the body ends."""

    def __init__(self, plan: BodyPlan) -> None:
        self._plan = plan
        self._sha256: Any = hashlib.sha256() if plan.sha256_hex else None
        self._md5: Any = hashlib.md5() if plan.md5_b64 else None
        algorithms = dict.fromkeys(plan.echo_algorithms)
        self.checksums = {a: checksum.PayloadChecksum(a) for a in algorithms}
        self._running = [c for c in self.checksums.values() if c.supported]

    def update(self, piece: bytes) -> None:
        if self._sha256 is not None:
            self._sha256.update(piece)
        if self._md5 is not None:
            self._md5.update(piece)
        for running in self._running:
            running.update(piece)

    def finish(self, trailers: dict[str, str]) -> None:
        plan = self._plan
        if self._sha256 is not None and self._sha256.hexdigest() != plan.sha256_hex:
            raise errors.sha256_mismatch()
        if self._md5 is not None and base64.b64encode(self._md5.digest()).decode() != plan.md5_b64:
            raise errors.bad_digest("The Content-MD5 you specified did not match what we received.")
        given = dict(plan.header_checksums)
        for algorithm in plan.trailer_algorithms:
            value = trailers.get(checksum.HEADER_PREFIX + algorithm)
            if value is None:
                raise errors.invalid_request(
                    f"the declared trailer x-amz-checksum-{algorithm} was not sent"
                )
            given[algorithm] = value
        for algorithm, value in given.items():
            if not self.checksums[algorithm].matches(value):
                raise errors.bad_digest(
                    f"The {algorithm.upper()} you specified did not match the calculated checksum."
                )
        self.values = given


class VerifiedBody:
    """The decoded, verified payload of one request, as an async iterator of bytes.

    ``idle_timeout``: the longest wait for the next piece of the body (``RequestTimeout``)."""

    def __init__(
        self,
        request: web.Request,
        auth: Authenticated,
        plan: BodyPlan,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self._request = request
        self._plan = plan
        self._idle_timeout = idle_timeout
        self._checks = _Checks(plan)
        self._decoder: AwsChunkedDecoder | None = None
        if plan.chunked:
            signer = auth.chunk_signer() if plan.signed_chunks else None
            self._decoder = AwsChunkedDecoder(signer, trailer=plan.trailer, limit=plan.size)
        self.checksum_values: dict[str, str] = {}

    @property
    def size(self) -> int:
        """The decoded payload size the client declared."""
        return self._plan.size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        decoder = self._decoder
        received = 0
        try:
            async for raw in self._raw():
                for piece in decoder.feed(raw) if decoder is not None else (raw,):
                    received += len(piece)
                    if received > self._plan.size:  # belt and braces: the decoder stops first
                        raise errors.incomplete_body(
                            f"the body carries more than the {self._plan.size} bytes it declared",
                            close=True,
                        )
                    self._checks.update(piece)
                    yield piece
            if decoder is not None:
                decoder.end_of_input()
        except ChunkedError as exc:
            raise _chunked_error(exc) from exc
        self._checks.finish(decoder.trailers if decoder is not None else {})
        self.checksum_values = self._checks.values

    async def _raw(self) -> AsyncIterator[bytes]:
        """The request's bytes as they arrive, each wait bounded by the idle timeout."""
        content = self._request.content
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    raw = await content.readany()
            except TimeoutError:
                raise errors.request_timeout(self._idle_timeout) from None
            if not raw:
                return
            yield raw

    async def read_small(self, limit: int) -> bytes:
        """Read the whole (verified) body when it is known to be small, e.g. bucket config."""
        if self._plan.size > limit:
            raise errors.max_message_length_exceeded(self._plan.size, limit)
        parts = [piece async for piece in self]
        return b"".join(parts)


def _chunked_error(exc: ChunkedError) -> errors.S3Error:
    if exc.kind == "signature":
        return errors.signature_mismatch(str(exc))
    if exc.kind == "truncated":
        return errors.incomplete_body(str(exc))
    if exc.kind == "too_long":
        return errors.incomplete_body(str(exc), close=True)
    return errors.invalid_request(str(exc))
