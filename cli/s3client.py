"""The CLI's S3 side: boto3, and its transfer manager (s3transfer) for the bytes.

This is the machinery the aws cli uses, so the object commands behave as a real S3 client
does: uploads above :data:`MULTIPART_THRESHOLD` go up as a multipart upload in parallel parts,
downloads above it come down as parallel ranged GETs (each checked against the object's ETag
with ``If-Match``), and every request is retried on throttling, 5xx answers and dropped
connections (botocore's ``standard`` retry mode).

:class:`S3` wraps one botocore client with the few calls the commands make and one error
type: whatever botocore or s3transfer raise comes out as :class:`~cli.errors.S3ClientError`
with S3's error code. A HEAD has no body to name its error, so a 404 on an object is resolved
to ``NoSuchBucket`` or ``NoSuchKey`` by asking about the bucket, the way GET names it.

An https endpoint's certificate is verified against ``Endpoint.ca`` (else the system's trust
store); verification is never turned off.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore import exceptions as botocore_errors
from botocore.config import Config
from s3transfer import exceptions as transfer_errors
from s3transfer.manager import TransferManager

from cli.errors import S3ClientError, describe

MIB = 1 << 20
#: Uploads and downloads at least this big go in parts (s3transfer's default, as the aws cli).
MULTIPART_THRESHOLD = 8 * MIB
PART_SIZE = 8 * MIB
#: Parts (or files) in flight at once, and HTTP connections kept to the endpoint.
CONCURRENCY = 10
#: Attempts per request, the first one included (the aws cli's default in standard mode).
ATTEMPTS = 3
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
#: S3's limit on the keys of one DeleteObjects request.
DELETE_BATCH = 1000

# Status codes for errors that arrive without a body (HEAD), as S3 names them.
_BARE_STATUS = {
    "301": "PermanentRedirect",
    "400": "BadRequest",
    "403": "AccessDenied",
    "404": "NotFound",
    "405": "MethodNotAllowed",
    "412": "PreconditionFailed",
    "416": "InvalidRange",
    "500": "InternalError",
    "501": "NotImplemented",
    "503": "ServiceUnavailable",
}


@dataclass(frozen=True)
class Endpoint:
    """One S3 endpoint and the keys to sign for it."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    #: The CA bundle an https endpoint is verified against (None: the system's trust store).
    ca: str | None = None


@dataclass(frozen=True)
class Bucket:
    name: str
    created: str


@dataclass(frozen=True)
class ObjectStat:
    """What HEAD (or a listing) says about an object."""

    key: str
    size: int
    etag: str
    last_modified: str
    content_type: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    #: System metadata the object was stored with (``cache_control``, ``content_encoding``...).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Prefix:
    """A common prefix of a one-level listing (a "directory")."""

    prefix: str


def timestamp(value: dt.datetime | str | None) -> str:
    """A date as S3 writes it in XML: ``2026-11-21T07:11:14.000Z`` (UTC)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    utc = value.astimezone(dt.UTC)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


_SYSTEM_HEADERS = {
    "CacheControl": "cache_control",
    "ContentDisposition": "content_disposition",
    "ContentEncoding": "content_encoding",
    "ContentLanguage": "content_language",
    "ExpiresString": "expires",
    "StorageClass": "storage_class",
}


def translate(exc: BaseException, endpoint: str) -> S3ClientError | None:
    """The CLI's error for anything boto3 or s3transfer raise (None: not theirs)."""
    if isinstance(exc, S3ClientError):
        return exc
    if isinstance(exc, botocore_errors.ClientError):
        error = exc.response.get("Error", {})
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(error.get("Code") or status)
        code = _BARE_STATUS.get(code, code)
        message = str(error.get("Message") or code)
        return S3ClientError(code, message, status)
    if isinstance(exc, transfer_errors.S3DownloadFailedError) and isinstance(
        exc.__cause__ or exc.__context__, botocore_errors.ClientError
    ):  # s3transfer's word for a ranged GET refused by If-Match (412), among others
        return translate(exc.__cause__ or exc.__context__, endpoint)
    if isinstance(exc, transfer_errors.RetriesExceededError):
        return translate(exc.last_exception, endpoint) or S3ClientError("Unreachable", str(exc))
    if isinstance(exc, botocore_errors.SSLError):
        return _tls_error(exc, endpoint)
    if isinstance(exc, botocore_errors.ConnectTimeoutError | botocore_errors.ReadTimeoutError):
        return S3ClientError("Timeout", f"{endpoint} did not answer in time")
    if isinstance(exc, botocore_errors.EndpointConnectionError):
        return S3ClientError("Unreachable", f"cannot reach {endpoint}: connection refused")
    if isinstance(exc, botocore_errors.ConnectionClosedError | botocore_errors.ConnectionError):
        return S3ClientError("Unreachable", f"cannot reach {endpoint}: the connection was dropped")
    if isinstance(exc, botocore_errors.ResponseStreamingError
                  | botocore_errors.IncompleteReadError):  # fmt: skip
        return S3ClientError("Unreachable", f"the connection to {endpoint} broke off mid-answer")
    if isinstance(exc, botocore_errors.ParamValidationError):
        return S3ClientError("InvalidParameter", str(exc).replace("\n", " "))
    if isinstance(exc, botocore_errors.BotoCoreError):
        return S3ClientError(type(exc).__name__, str(exc))
    return None


def _tls_error(exc: BaseException, endpoint: str) -> S3ClientError:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        reason = text.split("certificate verify failed:", 1)[-1].split(")")[0].strip()
        return S3ClientError(
            "TLSVerifyFailed",
            f"cannot reach {endpoint}: its certificate is not trusted ({reason}); "
            f"give the cluster's CA with --tls-ca",
        )
    return S3ClientError("TLSFailed", f"cannot reach {endpoint}: TLS failed ({text})")


def make_client(endpoint: Endpoint, *, timeout: float = READ_TIMEOUT,
                attempts: int = ATTEMPTS) -> Any:  # fmt: skip
    """A botocore S3 client for ``endpoint``: path-style, SigV4, standard retries."""
    if endpoint.ca is not None and not Path(endpoint.ca).is_file():
        raise S3ClientError("BadCA", f"the CA bundle {endpoint.ca} does not exist; "
                                     f"give the cluster's CA file with --tls-ca")  # fmt: skip
    session = boto3.session.Session()
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": attempts},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=timeout,
        max_pool_connections=CONCURRENCY,
        user_agent_extra="minigrid-cli",
    )
    try:
        return session.client(
            "s3",
            endpoint_url=endpoint.url,
            region_name=endpoint.region,
            aws_access_key_id=endpoint.access_key,
            aws_secret_access_key=endpoint.secret_key,
            verify=endpoint.ca if endpoint.ca is not None else True,
            config=config,
        )
    except ValueError as exc:  # botocore's "Invalid endpoint: ..."
        raise S3ClientError("BadEndpoint", f"{exc}: write it as http(s)://host:port") from exc


class S3:
    """The S3 calls the object commands make, through one botocore client."""

    def __init__(self, endpoint: Endpoint, *, timeout: float = READ_TIMEOUT,
                 attempts: int = ATTEMPTS) -> None:  # fmt: skip
        self.endpoint = endpoint
        self._timeout = timeout
        self._attempts = attempts
        self._client: Any = None
        self._etags: dict[tuple[str, str], str] = {}
        self._etags_lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The botocore client, made on first use: loading it costs a few hundred ms that a
        command refused for its arguments should not pay."""
        if self._client is None:
            self._client = make_client(self.endpoint, timeout=self._timeout,
                                       attempts=self._attempts)  # fmt: skip
            self._watch_etags()
        return self._client

    # --- errors -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Raise whatever boto3 raises inside as :class:`S3ClientError`."""
        try:
            yield
        except Exception as exc:
            translated = translate(exc, self.endpoint.url)
            if translated is None:
                raise
            raise translated from exc

    def not_found(self, bucket: str, key: str) -> S3ClientError:
        """The error for an object a HEAD did not find: its bucket, or the key, is missing."""
        try:
            with self.errors():
                self.client.head_bucket(Bucket=bucket)
        except S3ClientError as exc:
            if exc.status == 404:
                return S3ClientError("NoSuchBucket", "The specified bucket does not exist.", 404)
            return exc
        return S3ClientError("NoSuchKey", "The specified key does not exist.", 404)

    def named(self, exc: S3ClientError, bucket: str, key: str) -> S3ClientError:
        """``exc``, with a bare 404 about ``bucket/key`` resolved to S3's own code."""
        if exc.code == "NotFound" and key:
            return self.not_found(bucket, key)
        if exc.code == "NotFound":
            return S3ClientError("NoSuchBucket", "The specified bucket does not exist.", 404)
        return exc

    # --- buckets ------------------------------------------------------------------------------

    def list_buckets(self) -> list[Bucket]:
        """Every bucket, following ListBuckets' continuation tokens."""
        buckets: list[Bucket] = []
        token: str | None = None
        with self.errors():
            while True:
                page = self.client.list_buckets(**({"ContinuationToken": token} if token else {}))
                buckets += [Bucket(b["Name"], timestamp(b.get("CreationDate")))
                            for b in page.get("Buckets", [])]  # fmt: skip
                token = page.get("ContinuationToken")
                if not token:
                    return buckets

    def make_bucket(self, bucket: str) -> None:
        """Create ``bucket``; ``BucketAlreadyOwnedByYou`` if it exists. S3 answers 200 to an
        owner re-creating a bucket in us-east-1, so the CLI asks first to be able to say so."""
        if self.bucket_exists(bucket):
            raise S3ClientError("BucketAlreadyOwnedByYou", f"bucket {bucket} already exists", 409)
        with self.errors():
            self.client.create_bucket(Bucket=bucket)

    def bucket_exists(self, bucket: str) -> bool:
        try:
            with self.errors():
                self.client.head_bucket(Bucket=bucket)
        except S3ClientError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def remove_bucket(self, bucket: str) -> None:
        with self.errors():
            self.client.delete_bucket(Bucket=bucket)

    # --- objects ------------------------------------------------------------------------------

    def head(self, bucket: str, key: str) -> ObjectStat:
        """The object's size, ETag, dates and metadata (``NoSuchKey``/``NoSuchBucket``)."""
        try:
            with self.errors():
                answer = self.client.head_object(Bucket=bucket, Key=key)
        except S3ClientError as exc:
            raise self.named(exc, bucket, key) from exc
        headers = {name: str(answer[field_]) for field_, name in _SYSTEM_HEADERS.items()
                   if answer.get(field_)}  # fmt: skip
        return ObjectStat(
            key=key,
            size=int(answer.get("ContentLength", 0)),
            etag=str(answer.get("ETag", "")).strip('"'),
            last_modified=timestamp(answer.get("LastModified")),
            content_type=str(answer.get("ContentType", "")),
            metadata=dict(answer.get("Metadata", {})),
            headers=headers,
        )

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.head(bucket, key)
        except S3ClientError as exc:
            if exc.code == "NoSuchKey":
                return False
            raise
        return True

    def listing(self, bucket: str, prefix: str = "", delimiter: str = ""
                ) -> Iterator[ObjectStat | Prefix]:  # fmt: skip
        """Every object (and, with a delimiter, every common prefix) under ``prefix``, in
        pages of ListObjectsV2; within a page, prefixes come before objects."""
        args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if delimiter:
            args["Delimiter"] = delimiter
        with self.errors():
            for page in self.client.get_paginator("list_objects_v2").paginate(**args):
                for common in page.get("CommonPrefixes", []):
                    yield Prefix(common["Prefix"])
                for item in page.get("Contents", []):
                    yield ObjectStat(
                        key=item["Key"],
                        size=int(item.get("Size", 0)),
                        etag=str(item.get("ETag", "")).strip('"'),
                        last_modified=timestamp(item.get("LastModified")),
                    )

    def objects(self, bucket: str, prefix: str = "") -> Iterator[ObjectStat]:
        """Every object under ``prefix``, at any depth."""
        for entry in self.listing(bucket, prefix):
            if isinstance(entry, ObjectStat):
                yield entry

    def delete(self, bucket: str, key: str) -> None:
        with self.errors():
            self.client.delete_object(Bucket=bucket, Key=key)

    def delete_many(self, bucket: str, keys: Iterable[str]) -> Iterator[tuple[str, str | None]]:
        """Delete ``keys`` in DeleteObjects batches; yields ``(key, None)`` for each deleted
        key and ``(key, "reason (Code)")`` for each the server refused."""
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == DELETE_BATCH:
                yield from self._delete_batch(bucket, batch)
                batch = []
        if batch:
            yield from self._delete_batch(bucket, batch)

    def _delete_batch(self, bucket: str, keys: list[str]) -> Iterator[tuple[str, str | None]]:
        with self.errors():
            answer = self.client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        refused = {
            str(e.get("Key")): describe(
                S3ClientError(str(e.get("Code")), str(e.get("Message"))), bucket, str(e.get("Key"))
            )
            for e in answer.get("Errors", [])
        }
        for key in keys:
            yield key, refused.get(key)

    def presign_get(self, bucket: str, key: str, seconds: int) -> str:
        """A URL anyone can GET the object with, for ``seconds`` (query-string SigV4)."""
        with self.errors():
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
            )
        return url

    def abort_uploads(self, bucket: str) -> int:
        """Abort every multipart upload in progress in ``bucket``; how many there were."""
        aborted = 0
        with self.errors():
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket
            ):
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    # --- transfers ----------------------------------------------------------------------------

    def transfer_config(self) -> TransferConfig:
        return TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=PART_SIZE,
            max_concurrency=CONCURRENCY,
            use_threads=True,
        )

    def transfer_manager(self) -> TransferManager:
        """s3transfer's manager over this client (multipart, ranged GETs, retries)."""
        manager: TransferManager = create_transfer_manager(self.client, self.transfer_config())
        return manager

    def stored_etag(self, bucket: str, key: str) -> str:
        """The ETag the server answered when this client last wrote ``bucket/key`` ("" if
        none was seen)."""
        with self._etags_lock:
            return self._etags.get((bucket, key), "")

    def _watch_etags(self) -> None:
        """Keep the ETag of every object this client writes, from the answers themselves, so
        an upload can report it without another request."""
        events = self.client.meta.events
        for operation in ("PutObject", "CompleteMultipartUpload", "CopyObject"):
            events.register(f"before-parameter-build.s3.{operation}", _remember_target)
            events.register(f"after-call.s3.{operation}", self._remember_etag)

    def _remember_etag(self, parsed: dict[str, Any], context: dict[str, Any],
                       **_: Any) -> None:  # fmt: skip
        target = context.get("minigrid_target")
        etag = parsed.get("ETag") or parsed.get("CopyObjectResult", {}).get("ETag")
        if target is not None and etag:
            with self._etags_lock:
                self._etags[target] = str(etag).strip('"')


def _remember_target(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    context["minigrid_target"] = (params.get("Bucket"), params.get("Key"))


__all__ = [
    "CONCURRENCY",
    "MULTIPART_THRESHOLD",
    "S3",
    "Bucket",
    "Endpoint",
    "ObjectStat",
    "Prefix",
    "S3ClientError",
    "describe",
    "make_client",
    "timestamp",
    "translate",
]
