"""A small, synchronous S3 client with AWS Signature V4, for the ``minigrid`` object commands.

It speaks plain ``http.client`` and streams both ways, so memory stays flat for any object
size:

- **PUT** sends the body from a file in 1 MiB pieces with ``x-amz-content-sha256:
  UNSIGNED-PAYLOAD``: the headers are signed, the body is not, so the file is read once (no
  SHA-256 pass before the upload). ``Content-Length`` is the file size; the gateway checks that
  exactly that many bytes arrive.
- **GET** returns the response, to be read in pieces.

The signing itself reuses the gateway's pure SigV4 functions (:mod:`node.s3.sigv4`), so the
client and the server build the canonical request with the same code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import http.client
import json
import socket
import ssl
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import urlsplit

from node.s3 import sigv4

CHUNK = 1 << 20
EMPTY_SHA256 = sigv4.EMPTY_SHA256
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3ClientError(Exception):
    """An S3 error answer (``code`` as S3 names it), or a failure to reach the endpoint."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class ObjectStat:
    key: str
    size: int
    etag: str
    last_modified: str
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Listing:
    objects: list[ObjectStat]
    prefixes: list[str]
    next_token: str | None


def _text(node: ET.Element, name: str) -> str:
    found = node.find(_NS + name)
    if found is None:
        found = node.find(name)
    return (found.text or "") if found is not None else ""


def _all(node: ET.Element, name: str) -> list[ET.Element]:
    return node.findall(_NS + name) or node.findall(name)


def object_path(bucket: str, key: str = "") -> str:
    """The raw (encoded) path of a bucket or object, path-style."""
    path = "/" + sigv4.uri_encode(bucket) if bucket else "/"
    if key:
        path += "/" + sigv4.uri_encode(key, encode_slash=False)
    return path


class S3Client:
    """Signed requests to one endpoint (``http://host:port``)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        region: str = "us-east-1",
        timeout: float = 60.0,
        clock: Callable[[], dt.datetime] | None = None,
        ca: str | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise S3ClientError("BadEndpoint", f"endpoint {endpoint!r} is not http(s)://host:port")
        self.endpoint = endpoint.rstrip("/")
        self._tls = parts.scheme == "https"
        self._host = parts.netloc
        self.access_key = access_key
        self._secret_key = secret_key
        self.region = region
        self.timeout = timeout
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        #: For https: the CA bundle the endpoint's certificate is verified against (None: the
        #: system's trust store). The certificate and the host name are always checked.
        self.ca = ca
        self._tls_context = ssl.create_default_context(cafile=ca) if self._tls else None

    # --- signing ------------------------------------------------------------------------------

    def sign(
        self, method: str, raw_path: str, query: Mapping[str, str], payload_hash: str
    ) -> dict[str, str]:
        """The headers that authenticate a request (Host, x-amz-date, ..., Authorization)."""
        now = self._clock()
        amz_date = now.strftime(sigv4.AMZ_DATE_FORMAT)
        scope = sigv4.Scope(now.strftime("%Y%m%d"), self.region, "s3")
        headers = {
            "host": self._host,
            "x-amz-content-sha256": payload_hash,
            "x-amz-date": amz_date,
        }
        signed = sorted(headers)
        canonical = sigv4.canonical_request(
            method, raw_path, list(query.items()), {k: [v] for k, v in headers.items()},
            signed, payload_hash,
        )  # fmt: skip
        to_sign = sigv4.string_to_sign(amz_date, scope, canonical)
        signature = sigv4.sign(sigv4.signing_key(self._secret_key, scope), to_sign)
        headers["authorization"] = (
            f"{sigv4.ALGORITHM} Credential={self.access_key}/{scope}, "
            f"SignedHeaders={';'.join(signed)}, Signature={signature}"
        )
        headers["Host"] = headers.pop("host")
        return headers

    # --- requests -----------------------------------------------------------------------------

    def _connection(self) -> http.client.HTTPConnection:
        if self._tls:
            return http.client.HTTPSConnection(
                self._host, timeout=self.timeout, context=self._tls_context
            )
        return http.client.HTTPConnection(self._host, timeout=self.timeout)

    def request(
        self,
        method: str,
        raw_path: str,
        query: Mapping[str, str] | None = None,
        *,
        body: bytes | Iterable[bytes] | None = None,
        length: int | None = None,
        headers: Mapping[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> http.client.HTTPResponse:
        """Send one signed request; return the response (to read), or raise S3ClientError."""
        query = dict(query or {})
        if isinstance(body, bytes | bytearray):
            payload_hash = hashlib.sha256(body).hexdigest()
            length = len(body)
        elif body is None:
            payload_hash = EMPTY_SHA256
        else:
            payload_hash = sigv4.UNSIGNED_PAYLOAD
        all_headers = self.sign(method, raw_path, query, payload_hash)
        all_headers.update(headers or {})
        if length is not None:
            all_headers["Content-Length"] = str(length)
        # One connection per request: with "Connection: close", closing the response closes
        # the socket too, and there is no stale kept-alive connection to retry on.
        all_headers["Connection"] = "close"
        url = raw_path + ("?" + sigv4.canonical_query(query.items()) if query else "")
        conn = self._connection()
        try:
            # The server may answer (an error) before taking the whole body and close its
            # side; its answer says more than the broken pipe does.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.request(method, url, body=body, headers=all_headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _connect_error(self.endpoint, exc) from exc
        if response.status not in expect:
            try:
                raise _error_from(response, method)
            finally:
                response.close()
                conn.close()
        return response

    def call(self, method: str, raw_path: str, query: Mapping[str, str] | None = None,
              expect: tuple[int, ...] = (200,)) -> bytes:  # fmt: skip
        response = self.request(method, raw_path, query, expect=expect)
        try:
            return response.read()
        finally:
            response.close()

    # --- operations ---------------------------------------------------------------------------

    def list_buckets(self) -> list[tuple[str, str]]:
        """``(name, creation date)`` of every bucket."""
        root = ET.fromstring(self.call("GET", "/"))
        return [
            (_text(b, "Name"), _text(b, "CreationDate"))
            for buckets in _all(root, "Buckets")
            for b in _all(buckets, "Bucket")
        ]

    def make_bucket(self, bucket: str) -> None:
        """Create a bucket; BucketAlreadyOwnedByYou when it exists. S3 answers 200 to an owner
        re-creating a bucket in us-east-1, so the CLI asks first to be able to say so."""
        response = self.request("HEAD", object_path(bucket), expect=(200, 404))
        found = response.status == 200
        response.close()
        if found:
            raise S3ClientError("BucketAlreadyOwnedByYou", f"bucket {bucket} already exists", 409)
        self.call("PUT", object_path(bucket))

    def delete_bucket(self, bucket: str) -> None:
        self.call("DELETE", object_path(bucket), expect=(204, 200))

    def list_objects(
        self, bucket: str, prefix: str = "", delimiter: str = "", token: str | None = None
    ) -> Listing:
        query = {"list-type": "2", "prefix": prefix}
        if delimiter:
            query["delimiter"] = delimiter
        if token:
            query["continuation-token"] = token
        root = ET.fromstring(self.call("GET", object_path(bucket), query))
        objects = [
            ObjectStat(
                key=_text(item, "Key"),
                size=int(_text(item, "Size") or 0),
                etag=_text(item, "ETag").strip('"'),
                last_modified=_text(item, "LastModified"),
            )
            for item in _all(root, "Contents")
        ]
        prefixes = [_text(p, "Prefix") for p in _all(root, "CommonPrefixes")]
        truncated = _text(root, "IsTruncated") == "true"
        token = _text(root, "NextContinuationToken") if truncated else None
        return Listing(objects, prefixes, token)

    def iter_objects(self, bucket: str, prefix: str = "", delimiter: str = "") -> Iterator[Listing]:
        """Every page of a listing."""
        token: str | None = None
        while True:
            page = self.list_objects(bucket, prefix, delimiter, token)
            yield page
            if page.next_token is None:
                return
            token = page.next_token

    def head_object(self, bucket: str, key: str) -> ObjectStat:
        response = self.request("HEAD", object_path(bucket, key))
        response.read()
        response.close()
        return _stat_from(key, response)

    def put_object(
        self,
        bucket: str,
        key: str,
        source: IO[bytes],
        size: int,
        *,
        content_type: str = "application/octet-stream",
        progress: Callable[[int], None] | None = None,
    ) -> str:
        """Upload ``size`` bytes from ``source`` in pieces; returns the ETag."""

        def pieces() -> Iterator[bytes]:
            remaining = size
            while remaining > 0:
                piece = source.read(min(CHUNK, remaining))
                if not piece:
                    raise S3ClientError("IncompleteBody", "the file shrank while uploading")
                remaining -= len(piece)
                if progress is not None:
                    progress(len(piece))
                yield piece

        response = self.request(
            "PUT", object_path(bucket, key), body=pieces(), length=size,
            headers={"Content-Type": content_type},
        )  # fmt: skip
        response.read()
        response.close()
        return (response.getheader("ETag") or "").strip('"')

    def get_object(
        self, bucket: str, key: str, byte_range: str | None = None
    ) -> http.client.HTTPResponse:
        """The response of a GET, to read in pieces (``read(CHUNK)``) and close."""
        headers = {"Range": byte_range} if byte_range else None
        return self.request("GET", object_path(bucket, key), headers=headers, expect=(200, 206))

    def delete_object(self, bucket: str, key: str) -> None:
        self.call("DELETE", object_path(bucket, key), expect=(204, 200))


def _stat_from(key: str, response: http.client.HTTPResponse) -> ObjectStat:
    meta = {
        name[len("x-amz-meta-") :]: value
        for name, value in response.getheaders()
        if name.lower().startswith("x-amz-meta-")
    }
    return ObjectStat(
        key=key,
        size=int(response.getheader("Content-Length") or 0),
        etag=(response.getheader("ETag") or "").strip('"'),
        last_modified=response.getheader("Last-Modified") or "",
        content_type=response.getheader("Content-Type") or "",
        metadata=meta,
    )


_STATUS_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NotFound",
    409: "Conflict",
    503: "ServiceUnavailable",
}


def _error_from(response: http.client.HTTPResponse, method: str) -> S3ClientError:
    body = b"" if method == "HEAD" else response.read(64 * 1024)
    code, message = _STATUS_CODES.get(response.status, "HTTPError"), response.reason
    if body.startswith(b"{"):  # the admin API answers errors in JSON
        try:
            doc = json.loads(body)
            return S3ClientError(str(doc.get("code", code)), str(doc.get("error", message)),
                                 response.status)  # fmt: skip
        except ValueError:
            pass
    if body:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            message = body.decode(errors="replace")[:200]
        else:
            code = _text(root, "Code") or code
            message = _text(root, "Message") or message
    return S3ClientError(code, message, response.status)


def _connect_error(endpoint: str, exc: BaseException) -> S3ClientError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return S3ClientError(
            "TLSVerifyFailed",
            f"cannot reach {endpoint}: its certificate is not trusted ({exc.verify_message}); "
            f"give the cluster's CA with --tls-ca",
        )
    if isinstance(exc, ssl.SSLError):
        return S3ClientError("TLSFailed", f"cannot reach {endpoint}: TLS failed ({exc.reason})")
    if isinstance(exc, ConnectionRefusedError):
        why = "connection refused"
    elif isinstance(exc, socket.timeout | TimeoutError):
        why = "timed out"
    elif isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
        why = "the connection was dropped"
    else:
        why = str(exc) or type(exc).__name__
    return S3ClientError("Unreachable", f"cannot reach {endpoint}: {why}")


def describe(exc: S3ClientError, bucket: str = "", key: str = "") -> str:
    """A short, clear line for the user, e.g. ``bucket "x" does not exist (NoSuchBucket)``."""
    name = f"{bucket}/{key}" if key else bucket
    known: dict[str, str] = {
        "NoSuchBucket": f'bucket "{bucket}" does not exist',
        "NoSuchKey": f'object "{name}" does not exist',
        "NotFound": f'{"object" if key else "bucket"} "{name}" does not exist',
        "BucketAlreadyOwnedByYou": f'bucket "{bucket}" already exists',
        "BucketAlreadyExists": f'bucket "{bucket}" already exists',
        "BucketNotEmpty": f'bucket "{bucket}" is not empty',
        "SignatureDoesNotMatch": "the secret key does not match the access key",
        "InvalidAccessKeyId": "the access key is not known to the cluster",
    }
    text = known.get(exc.code, exc.message)
    return f"{text} ({exc.code})"


def response_headers(response: http.client.HTTPResponse) -> dict[str, Any]:
    return {name.lower(): value for name, value in response.getheaders()}


__all__ = [
    "CHUNK",
    "Listing",
    "ObjectStat",
    "S3Client",
    "S3ClientError",
    "describe",
    "object_path",
]
