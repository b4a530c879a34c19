"""S3 request routing as data: which (method, resource, subresource) the gateway serves.

A request is routed by three things, never by a handler's guess:

- its **method**;
- its **resource**: the service (``/``), a bucket (``/b``) or an object (``/b/k``);
- its **selectors**: the query names that pick an S3 operation (``?acl``, ``?uploads``,
  ``?uploadId&partNumber``, ...), plus the ``x-amz-copy-source`` header that makes a PUT a
  copy. ``versionId`` selects too, except ``versionId=null``: every object here has exactly
  one version, the null version, so asking for it is a plain request.

:data:`ROUTES` has one row per operation the gateway builds. :func:`resolve` finds the row
whose key matches exactly, or raises the S3 error to answer: ``NotImplemented`` (501) naming
the selectors and, from :data:`NOT_BUILT`, the S3 operation they would be; or
``MethodNotAllowed`` (405) for a method S3 does not allow on that resource at all. So a
subresource the table does not list can never reach a plain handler.

Everything else in the query is a *parameter* of the operation (``prefix``, ``max-keys``,
``response-content-type``, the presigned ``X-Amz-*`` names ...). S3 ignores a parameter an
operation does not read, and so does the gateway on GET and HEAD. On PUT, POST and DELETE the
gateway is stricter than S3: every query name must be one the operation reads (or a signing or
SDK name, :data:`ALWAYS_ALLOWED`), because a name this table does not know may be a
subresource S3 added after it was written, and running it as a plain write could destroy data.

Adding an operation means adding a row to
:data:`ROUTES` (and its handler in the gateway); its line in :data:`NOT_BUILT` then stops
being used. The module is pure: no aiohttp.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from node.s3 import errors

GIB: Final = 1 << 30
#: S3's largest single PUT (larger objects need multipart upload).
MAX_PUT_SIZE: Final = 5 * GIB
MAX_CONFIG_BODY: Final = 64 * 1024
MAX_DELETE_BODY: Final = 1024 * 1024  # S3's own limit: 1000 keys of up to 1 KiB each
#: A CompleteMultipartUpload body: 10,000 parts of about 400 bytes each at most.
MAX_COMPLETE_BODY: Final = 4 * 1024 * 1024
MAX_TAGGING_BODY: Final = 64 * 1024

COPY_SOURCE: Final = "x-amz-copy-source"
#: Methods S3 has operations for; any other method is 405 MethodNotAllowed.
S3_METHODS: Final = frozenset({"GET", "PUT", "POST", "DELETE", "HEAD"})
#: Query names allowed on every request: the presigned-URL signature (``X-Amz-*``, and headers
#: an SDK hoisted into a presigned URL, ``x-amz-*``) and the operation hint SDKs append
#: (``x-id=PutObject``). They never select an operation.
ALWAYS_ALLOWED_PREFIXES: Final = ("x-amz-",)
ALWAYS_ALLOWED: Final = frozenset({"x-id"})


class Resource(enum.Enum):
    """What the path names."""

    SERVICE = "service"
    BUCKET = "bucket"
    OBJECT = "object"


# The query names that select an S3 operation: every subresource of the S3 API reference
# (2006-03-01), plus uploadId/partNumber/versionId, which select the multipart and versioned
# forms of object operations.
SUBRESOURCES: Final = frozenset(
    {
        "abac", "accelerate", "acl", "analytics", "annotation", "attributes", "cors", "delete",
        "encryption", "intelligent-tiering", "inventory", "legal-hold", "lifecycle",
        "location", "logging", "metadataAnnotationTable", "metadataConfiguration",
        "metadataInventoryTable", "metadataJournalTable", "metadataTable", "metrics",
        "notification", "object-lock", "ownershipControls", "partNumber", "policy",
        "policyStatus", "publicAccessBlock", "renameObject", "replication", "requestPayment",
        "restore", "retention", "select", "session", "tagging", "torrent", "uploadId",
        "uploads", "versionId", "versioning", "versions", "website",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Body:
    """What a route accepts as a request body: at most ``limit`` bytes; ``required`` means a
    length must be declared (``MissingContentLength`` otherwise). ``too_large`` is the S3
    error code for a declared length over the limit."""

    limit: int
    required: bool = True
    too_large: str = "MaxMessageLengthExceeded"


@dataclass(frozen=True)
class Route:
    """One operation the gateway builds, and the query parameters it reads."""

    operation: str
    method: str
    resource: Resource
    selectors: frozenset[str] = frozenset()
    params: frozenset[str] = frozenset()
    body: Body | None = None

    @property
    def key(self) -> tuple[str, Resource, frozenset[str]]:
        return (self.method, self.resource, self.selectors)


def _names(*names: str) -> frozenset[str]:
    return frozenset(names)


_LIST_PARAMS = _names("prefix", "delimiter", "max-keys", "encoding-type", "list-type",
                      "marker", "continuation-token", "start-after", "fetch-owner")  # fmt: skip
_RESPONSE_OVERRIDES = _names(
    "response-content-type", "response-content-language", "response-expires",
    "response-cache-control", "response-content-disposition", "response-content-encoding",
)  # fmt: skip
_SVC, _BKT, _OBJ = Resource.SERVICE, Resource.BUCKET, Resource.OBJECT
_READ_PARAMS = _RESPONSE_OVERRIDES | {"versionId"}
_UPLOADS_PARAMS = _names("prefix", "delimiter", "key-marker", "upload-id-marker", "max-uploads",
                         "encoding-type")  # fmt: skip
_PUT_BODY = Body(MAX_PUT_SIZE, too_large="EntityTooLarge")
_NO_BODY = Body(MAX_CONFIG_BODY, required=False)  # a body may come; it is read and ignored

#: Every operation the gateway builds. A request matches a row when its method, resource and
#: selectors are exactly the row's.
ROUTES: Final[tuple[Route, ...]] = (
    Route("ListBuckets", "GET", _SVC,
          params=_names("prefix", "max-buckets", "continuation-token", "bucket-region")),
    Route("CreateBucket", "PUT", _BKT, body=Body(MAX_CONFIG_BODY, required=False)),
    Route("HeadBucket", "HEAD", _BKT),
    Route("DeleteBucket", "DELETE", _BKT),
    Route("ListObjects", "GET", _BKT, params=_LIST_PARAMS),  # v1, or v2 with list-type=2
    Route("GetBucketLocation", "GET", _BKT, _names("location")),
    Route("DeleteObjects", "POST", _BKT, _names("delete"), body=Body(MAX_DELETE_BODY)),
    Route("PutObject", "PUT", _OBJ, body=_PUT_BODY),
    Route("GetObject", "GET", _OBJ, params=_READ_PARAMS),
    Route("GetObject", "GET", _OBJ, _names("partNumber"), params=_READ_PARAMS),
    Route("HeadObject", "HEAD", _OBJ, params=_READ_PARAMS),
    Route("HeadObject", "HEAD", _OBJ, _names("partNumber"), params=_READ_PARAMS),
    Route("DeleteObject", "DELETE", _OBJ, params=_names("versionId")),
    Route("CopyObject", "PUT", _OBJ, _names(COPY_SOURCE), body=_NO_BODY),
    Route("CreateMultipartUpload", "POST", _OBJ, _names("uploads"), body=_NO_BODY),
    Route("UploadPart", "PUT", _OBJ, _names("uploadId", "partNumber"), body=_PUT_BODY),
    Route("UploadPartCopy", "PUT", _OBJ, _names("uploadId", "partNumber", COPY_SOURCE),
          body=_NO_BODY),
    Route("CompleteMultipartUpload", "POST", _OBJ, _names("uploadId"),
          body=Body(MAX_COMPLETE_BODY)),
    Route("AbortMultipartUpload", "DELETE", _OBJ, _names("uploadId")),
    Route("ListParts", "GET", _OBJ, _names("uploadId"),
          params=_names("max-parts", "part-number-marker", "encoding-type")),
    Route("ListMultipartUploads", "GET", _BKT, _names("uploads"), params=_UPLOADS_PARAMS),
    Route("GetObjectTagging", "GET", _OBJ, _names("tagging"), params=_names("versionId")),
    Route("PutObjectTagging", "PUT", _OBJ, _names("tagging"), params=_names("versionId"),
          body=Body(MAX_TAGGING_BODY)),
    Route("DeleteObjectTagging", "DELETE", _OBJ, _names("tagging"), params=_names("versionId")),
    Route("GetObjectAttributes", "GET", _OBJ, _names("attributes"), params=_names("versionId")),
)  # fmt: skip


def _catalogue(
    resource: Resource, rows: Mapping[str, Mapping[str, str]]
) -> dict[tuple[str, Resource, frozenset[str]], str]:
    """``{"sel1&sel2": {method: operation}}`` -> ``{(method, resource, selectors): operation}``."""
    out = {}
    for selectors, by_method in rows.items():
        key = frozenset(filter(None, selectors.split("&")))
        for method, operation in by_method.items():
            out[(method, resource, key)] = operation
    return out


def _get_put_delete(name: str) -> dict[str, str]:
    return {"GET": f"Get{name}", "PUT": f"Put{name}", "DELETE": f"Delete{name}"}


def _get_put(name: str) -> dict[str, str]:
    return {"GET": f"Get{name}", "PUT": f"Put{name}"}


#: The S3 operations the gateway does not build, by (method, resource, selectors): only used
#: to name the operation in the 501 message. Taken from the S3 API reference.
NOT_BUILT: Final = {
    **_catalogue(_BKT, {
        "abac": _get_put("BucketAbac"),
        "accelerate": _get_put("BucketAccelerateConfiguration"),
        "acl": _get_put("BucketAcl"),
        "analytics": _get_put_delete("BucketAnalyticsConfiguration"),
        "cors": _get_put_delete("BucketCors"),
        "encryption": _get_put_delete("BucketEncryption"),
        "intelligent-tiering": _get_put_delete("BucketIntelligentTieringConfiguration"),
        "inventory": _get_put_delete("BucketInventoryConfiguration"),
        "lifecycle": {"GET": "GetBucketLifecycleConfiguration",
                      "PUT": "PutBucketLifecycleConfiguration",
                      "DELETE": "DeleteBucketLifecycle"},
        "logging": _get_put("BucketLogging"),
        "metadataConfiguration": {"POST": "CreateBucketMetadataConfiguration",
                                  "GET": "GetBucketMetadataConfiguration",
                                  "DELETE": "DeleteBucketMetadataConfiguration"},
        "metadataTable": {"POST": "CreateBucketMetadataTableConfiguration",
                          "GET": "GetBucketMetadataTableConfiguration",
                          "DELETE": "DeleteBucketMetadataTableConfiguration"},
        "metadataAnnotationTable": {"PUT": "UpdateBucketMetadataAnnotationTableConfiguration"},
        "metadataInventoryTable": {"PUT": "UpdateBucketMetadataInventoryTableConfiguration"},
        "metadataJournalTable": {"PUT": "UpdateBucketMetadataJournalTableConfiguration"},
        "metrics": _get_put_delete("BucketMetricsConfiguration"),
        "notification": _get_put("BucketNotificationConfiguration"),
        "object-lock": _get_put("ObjectLockConfiguration"),
        "ownershipControls": _get_put_delete("BucketOwnershipControls"),
        "policy": _get_put_delete("BucketPolicy"),
        "policyStatus": {"GET": "GetBucketPolicyStatus"},
        "publicAccessBlock": _get_put_delete("PublicAccessBlock"),
        "replication": _get_put_delete("BucketReplication"),
        "requestPayment": _get_put("BucketRequestPayment"),
        "session": {"GET": "CreateSession"},
        "tagging": _get_put_delete("BucketTagging"),
        "versioning": _get_put("BucketVersioning"),
        "versions": {"GET": "ListObjectVersions"},
        "website": _get_put_delete("BucketWebsite"),
        "": {"POST": "PostObject (browser form upload)"},
    }),
    **_catalogue(_OBJ, {
        "acl": _get_put("ObjectAcl"),
        "annotation": _get_put_delete("ObjectAnnotation"),
        "encryption": {"PUT": "UpdateObjectEncryption"},
        "legal-hold": _get_put("ObjectLegalHold"),
        "renameObject": {"PUT": "RenameObject"},
        "restore": {"POST": "RestoreObject"},
        "retention": _get_put("ObjectRetention"),
        "select": {"POST": "SelectObjectContent"},
        "torrent": {"GET": "GetObjectTorrent"},
        "versionId": {"GET": "GetObject of a version", "HEAD": "HeadObject of a version",
                      "DELETE": "DeleteObject of a version"},
    }),
}  # fmt: skip

_BY_KEY: Final = {route.key: route for route in ROUTES}
#: Versioned forms of the built operations: not built (the bucket has only the null version).
NOT_BUILT.update(
    {
        ("GET", _OBJ, frozenset({"partNumber", "versionId"})): "GetObject of one part of a version",
        (
            "HEAD",
            _OBJ,
            frozenset({"partNumber", "versionId"}),
        ): "HeadObject of one part of a version",
        ("GET", _OBJ, frozenset({"tagging", "versionId"})): "GetObjectTagging of a version",
        ("PUT", _OBJ, frozenset({"tagging", "versionId"})): "PutObjectTagging of a version",
        ("DELETE", _OBJ, frozenset({"tagging", "versionId"})): "DeleteObjectTagging of a version",
        ("GET", _OBJ, frozenset({"attributes", "versionId"})): "GetObjectAttributes of a version",
    }
)
assert len(_BY_KEY) == len(ROUTES), "two routes have the same key"
assert not set(_BY_KEY) & set(NOT_BUILT), "a built operation is still listed as not built"


def resource_of(bucket: str, key: str) -> Resource:
    """The resource a path names, from its bucket and key parts."""
    if not bucket:
        return Resource.SERVICE
    return Resource.OBJECT if key else Resource.BUCKET


def selectors_of(
    method: str, query: Mapping[str, str], headers: Mapping[str, str]
) -> frozenset[str]:
    """The query names (and header) that pick the operation; see the module docstring."""
    found = {name for name in query if name in SUBRESOURCES}
    if query.get("versionId") == "null":
        found.discard("versionId")
    # S3 honours x-amz-* headers hoisted into a presigned URL's query, so look there too.
    if method == "PUT" and (COPY_SOURCE in headers or _in_query(COPY_SOURCE, query)):
        found.add(COPY_SOURCE)
    return frozenset(found)


def _in_query(name: str, query: Iterable[str]) -> bool:
    return any(given.lower() == name for given in query)


def describe(selectors: Iterable[str]) -> str:
    """``?tagging``, ``?uploadId&partNumber``, ``x-amz-copy-source`` for messages."""
    names = sorted(selectors)
    query = [n for n in names if n != COPY_SOURCE]
    parts = ["?" + "&".join(query)] if query else []
    if COPY_SOURCE in names:
        parts.append(f"the {COPY_SOURCE} header")
    return " with ".join(parts)


def operation_name(method: str, resource: Resource, selectors: frozenset[str]) -> str | None:
    """The S3 operation name of a request, built or not (None when S3 has no such operation)."""
    route = _BY_KEY.get((method, resource, selectors))
    if route is not None:
        return route.operation
    return NOT_BUILT.get((method, resource, selectors))


def resolve(
    method: str, resource: Resource, query: Mapping[str, str], headers: Mapping[str, str]
) -> Route:
    """The route for a request, or the S3 error (501 or 405) to answer instead."""
    if method not in S3_METHODS:
        raise errors.method_not_allowed(f"{method} is not an S3 method")
    selectors = selectors_of(method, query, headers)
    route = _BY_KEY.get((method, resource, selectors))
    if route is None:
        raise _not_routed(method, resource, selectors)
    if method not in ("GET", "HEAD"):
        _check_params(route, query)
    return route


def _not_routed(method: str, resource: Resource, selectors: frozenset[str]) -> errors.S3Error:
    operation = NOT_BUILT.get((method, resource, selectors))
    what = f"{method} {describe(selectors)} on {_a(resource)}".replace("  ", " ")
    if operation is not None:
        return errors.not_implemented(
            f"{operation} ({what}) is not built in the minigrid S3 gateway"
        )
    if selectors:
        return errors.not_implemented(f"{what} is not an operation the minigrid S3 gateway builds")
    return errors.method_not_allowed(f"{method} is not allowed on {_a(resource)}")


def _a(resource: Resource) -> str:
    return {Resource.SERVICE: "the service", Resource.BUCKET: "a bucket",
            Resource.OBJECT: "an object"}[resource]  # fmt: skip


def _check_params(route: Route, query: Iterable[str]) -> None:
    unknown = sorted(
        name
        for name in query
        if name
        and name not in route.params
        and name not in route.selectors
        and name not in ALWAYS_ALLOWED
        and not name.lower().startswith(ALWAYS_ALLOWED_PREFIXES)
    )
    if unknown:
        names = ", ".join(f"?{name[:64]}" for name in unknown[:5])
        raise errors.not_implemented(
            f"{route.operation} does not take the query parameter(s) {names}; the minigrid S3 "
            "gateway refuses unknown query names on requests that change data, in case they "
            "name a subresource it does not build"
        )


def operation_for(method: str, path: str, query: Mapping[str, str] | Iterable[str]) -> str:
    """The operation name for metrics: a built or known S3 operation, else ``"Other"``.

    ``query`` is the request's query, or just its names (``versionId`` then counts as
    naming a version)."""
    bucket, _, key = path.lstrip("/").partition("/")
    names = query if isinstance(query, Mapping) else {name: "" for name in query}
    selectors = selectors_of(method, names, {})
    return operation_name(method, resource_of(bucket, key), selectors) or "Other"


__all__ = [
    "COPY_SOURCE",
    "MAX_PUT_SIZE",
    "NOT_BUILT",
    "ROUTES",
    "SUBRESOURCES",
    "Body",
    "Resource",
    "Route",
    "describe",
    "operation_for",
    "operation_name",
    "resolve",
    "resource_of",
    "selectors_of",
]
