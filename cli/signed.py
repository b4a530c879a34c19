"""A small SigV4-signed HTTP client for the admin API (``/minigrid/admin/v1/...``).

The admin API is not S3, so it is not reached through boto3: each request is signed here with
the gateway's own pure SigV4 functions (:mod:`node.s3.sigv4`), the way MinIO's admin API is
signed (service ``s3``, the node's region). Bodies may be bytes (hashed and signed) or an
iterable of pieces (sent with ``UNSIGNED-PAYLOAD``), so tests can also use this client for raw
requests that boto3 would never send.

An https endpoint's certificate is verified against ``ca`` (else the system's trust store);
verification is never turned off.
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
from collections.abc import Callable, Iterable, Mapping
from urllib.parse import urlsplit

from cli.errors import S3ClientError
from node.s3 import sigv4

EMPTY_SHA256 = sigv4.EMPTY_SHA256
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def object_path(bucket: str, key: str = "") -> str:
    """The raw (encoded) path of a bucket or object, path-style."""
    path = "/" + sigv4.uri_encode(bucket) if bucket else "/"
    if key:
        path += "/" + sigv4.uri_encode(key, encode_slash=False)
    return path


class SignedClient:
    """Signed requests to one endpoint (``http(s)://host:port``), one connection each."""

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
        self._tls_context = ssl.create_default_context(cafile=ca) if self._tls else None

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
            raise connect_error(self.endpoint, exc) from exc
        if response.status not in expect:
            try:
                raise _error_from(response, method)
            finally:
                response.close()
                conn.close()
        return response

    def call(self, method: str, raw_path: str, query: Mapping[str, str] | None = None,
             expect: tuple[int, ...] = (200,)) -> bytes:  # fmt: skip
        """One signed request without a body; the whole answer."""
        response = self.request(method, raw_path, query, expect=expect)
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as exc:  # cut short: the node went away
            raise connect_error(self.endpoint, exc) from exc
        finally:
            response.close()


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


def _text(node: ET.Element, name: str) -> str:
    found = node.find(_NS + name)
    if found is None:
        found = node.find(name)
    return (found.text or "") if found is not None else ""


def connect_error(endpoint: str, exc: BaseException) -> S3ClientError:
    """The error for a request that got no answer: refused, timed out, dropped, TLS."""
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
    elif isinstance(exc, http.client.IncompleteRead):
        why = "the answer was cut short (the connection closed mid-answer)"
    else:
        why = str(exc) or type(exc).__name__
    return S3ClientError("Unreachable", f"cannot reach {endpoint}: {why}")


__all__ = ["SignedClient", "connect_error", "object_path"]
