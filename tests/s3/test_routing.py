"""S3 routing: every subresource S3 publishes, with every method, on a bucket and an object.

Each request is signed (so it is not refused for want of a signature) and carries a body that
differs from the stored objects, so a request routed to the wrong handler (PutObject, DeleteBucket,
DeleteObject, CreateBucket ...) would change what the test looks at afterwards.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator

import pytest

from node.s3 import routes
from tests.s3.helpers import GatewayServer, RawResponse, send, signed_headers

# The subresources of the S3 API reference (one entry per query name; the last ones combine
# them or give them values, as clients send them).
S3_SUBRESOURCES = [
    "abac", "accelerate", "acl", "analytics", "annotation", "attributes", "cors", "delete",
    "encryption", "intelligent-tiering", "inventory", "legal-hold", "lifecycle", "location",
    "logging", "metadataAnnotationTable", "metadataConfiguration", "metadataInventoryTable",
    "metadataJournalTable", "metadataTable", "metrics", "notification", "object-lock",
    "ownershipControls", "partNumber", "policy", "policyStatus", "publicAccessBlock",
    "renameObject", "replication", "requestPayment", "restore", "retention", "select",
    "session", "tagging", "torrent", "uploadId", "uploads", "versionId", "versioning",
    "versions", "website",
    "uploadId=2~abc&partNumber=1", "select&select-type=2", "analytics&id=report",
    "partNumber=1", "versionId=3HL4kqtJlcpXroDTDmJ", "tagging&versionId=null",
]  # fmt: skip
METHODS = ["GET", "PUT", "POST", "DELETE", "HEAD"]
# The (method, target, query) triples the gateway builds, and the status (and S3 error code,
# "" for none) they answer here: each is a real operation run on the wrong input, so none
# may change the bucket's objects.
IMPLEMENTED = {
    ("POST", "bucket", "delete"): (400, "MalformedXML"),  # the body is not a Delete document
    ("GET", "bucket", "location"): (200, ""),
    ("GET", "bucket", "uploads"): (200, ""),
    ("GET", "object", "attributes"): (400, "InvalidArgument"),  # no x-amz-object-attributes
    ("GET", "object", "partNumber"): (400, "InvalidArgument"),  # no part number given
    ("HEAD", "object", "partNumber"): (400, ""),
    ("GET", "object", "tagging"): (200, ""),
    ("PUT", "object", "tagging"): (400, "MalformedXML"),
    ("DELETE", "object", "tagging"): (204, ""),
    ("GET", "object", "uploadId"): (404, "NoSuchUpload"),
    ("POST", "object", "uploadId"): (400, "MalformedXML"),
    ("DELETE", "object", "uploadId"): (404, "NoSuchUpload"),
    ("POST", "object", "uploads"): (200, ""),  # starts an upload; the objects stay as they are
    ("PUT", "object", "uploadId=2~abc&partNumber=1"): (404, "NoSuchUpload"),
    ("GET", "object", "partNumber=1"): (206, ""),
    ("HEAD", "object", "partNumber=1"): (206, ""),
    ("GET", "object", "tagging&versionId=null"): (200, ""),
    ("PUT", "object", "tagging&versionId=null"): (400, "MalformedXML"),
    ("DELETE", "object", "tagging&versionId=null"): (204, ""),
    ("POST", "absent-bucket", "delete"): (400, "MalformedXML"),
    ("GET", "absent-bucket", "location"): (404, "NoSuchBucket"),
    ("GET", "absent-bucket", "uploads"): (404, "NoSuchBucket"),
}
BODY = b"<NotAnObject>this must never be stored</NotAnObject>"
_buckets = itertools.count()


def signed(server: GatewayServer, method: str, path: str, body: bytes = b"",
           **extra: str) -> RawResponse:  # fmt: skip
    headers = signed_headers(
        server.port, method, path, hashlib.sha256(body).hexdigest(),
        {"Content-Length": str(len(body)), **extra} if body else extra,
    )  # fmt: skip
    return send(server.port, method, path, headers, body)


def state(server: GatewayServer, bucket: str) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Every bucket's name, and this bucket's objects with their ETags and sizes."""
    assert server.layer is not None
    layer = server.layer
    names = [b.name for b in server.run(layer.list_buckets())]
    listed = server.run(layer.list_objects(bucket, "", "", "", 1000))
    return names, [(o.key, o.etag, o.size) for o in listed.objects]


@pytest.fixture(scope="module")
def filled(server: GatewayServer) -> Iterator[str]:
    """A bucket holding two objects; the tests must leave it exactly as it is."""
    bucket = f"routing-{os.getpid()}-{next(_buckets)}"
    assert signed(server, "PUT", f"/{bucket}").status == 200
    for key, data in (("obj", b"first object"), ("dir/other", b"second object")):
        assert signed(server, "PUT", f"/{bucket}/{key}", data).status == 200
    yield bucket


@pytest.mark.parametrize("target", ["bucket", "object", "absent-bucket"])
@pytest.mark.parametrize("query", S3_SUBRESOURCES)
def test_every_subresource_and_method(
    server: GatewayServer, filled: str, query: str, target: str
) -> None:
    before = state(server, filled)
    path = {"bucket": f"/{filled}", "object": f"/{filled}/obj",
            "absent-bucket": "/never-created-bucket"}[target]  # fmt: skip
    name = query.split("&")[0].split("=")[0]
    for method in METHODS:
        body = BODY if method in ("PUT", "POST") else b""
        response = signed(server, method, f"{path}?{query}", body)
        where = f"{method} {path}?{query}"
        expected = IMPLEMENTED.get((method, target, query))
        if expected is not None:
            assert response.status == expected[0], (where, response.body)
            assert response.code == expected[1], (where, response.body)
        else:
            assert response.status == 501, (where, response.body)
            if method != "HEAD":
                assert response.code == "NotImplemented", where
                assert name.encode() in response.body, (where, response.body)
        assert state(server, filled) == before, f"{where} changed the bucket"


def test_the_501_names_the_s3_operation(server: GatewayServer, filled: str) -> None:
    response = signed(server, "DELETE", f"/{filled}?publicAccessBlock")
    assert b"DeletePublicAccessBlock (DELETE ?publicAccessBlock on a bucket)" in response.body
    response = signed(server, "PUT", f"/{filled}/obj?retention", BODY)
    assert b"PutObjectRetention (PUT ?retention on an object)" in response.body
    version = signed(server, "GET", f"/{filled}/obj?tagging&versionId=3HL4kqtJ")
    assert version.status == 501 and b"GetObjectTagging of a version" in version.body
    assert (
        b"GET ?partNumber&amp;uploadId on an object is not an operation"
        in signed(server, "GET", f"/{filled}/obj?uploadId=1&partNumber=2").body
    )
    assert (
        b"POST ?acl on a bucket is not an operation"
        in signed(server, "POST", f"/{filled}?acl", BODY).body
    )


def test_unknown_parameters_are_ignored_on_reads(server: GatewayServer, filled: str) -> None:
    got = signed(server, "GET", f"/{filled}/obj?cache-buster=17&x-id=GetObject")
    assert (got.status, got.body) == (200, b"first object")
    listed = signed(server, "GET", f"/{filled}?ACL&futureThing=1")  # not ?acl: a parameter
    assert listed.status == 200 and b"<Key>obj</Key>" in listed.body
    overridden = signed(server, "GET", f"/{filled}/obj?response-content-type=text%2Fplain")
    assert overridden.headers["Content-Type"] == "text/plain"
    assert signed(server, "GET", f"/{filled}/obj?versionId=null").body == b"first object"


def test_unknown_parameters_are_refused_on_writes(server: GatewayServer, filled: str) -> None:
    before = state(server, filled)
    for method, path in [("DELETE", f"/{filled}/obj?futureSubresource"),
                         ("DELETE", f"/{filled}?PublicAccessBlock"),
                         ("PUT", f"/{filled}/obj?futureSubresource=1"),
                         ("POST", f"/{filled}?delete&futureSubresource")]:  # fmt: skip
        response = signed(server, method, path, BODY if method != "DELETE" else b"")
        assert response.status == 501, path
        assert b"refuses unknown query names" in response.body
    assert state(server, filled) == before


def test_sdk_and_null_version_parameters_are_accepted_on_writes(
    server: GatewayServer, filled: str
) -> None:
    assert signed(server, "PUT", f"/{filled}/sdk?x-id=PutObject", b"via sdk").status == 200
    assert signed(server, "GET", f"/{filled}/sdk").body == b"via sdk"
    assert signed(server, "DELETE", f"/{filled}/sdk?versionId=null").status == 204
    assert signed(server, "GET", f"/{filled}/sdk").code == "NoSuchKey"


@pytest.mark.parametrize(
    ("method", "path"),
    [("PATCH", "/{b}"), ("PUT", "/"), ("DELETE", "/"), ("POST", "/{b}/obj"), ("OPTIONS", "/{b}")],
)
def test_method_not_allowed(server: GatewayServer, filled: str, method: str, path: str) -> None:
    before = state(server, filled)
    response = signed(server, method, path.format(b=filled))
    assert response.status == 405
    assert response.code == "MethodNotAllowed"
    assert state(server, filled) == before


def test_list_buckets_parameters(server: GatewayServer, filled: str) -> None:
    for suffix in ("a", "b", "c"):
        assert signed(server, "PUT", f"/lbp-{os.getpid()}-{suffix}").status == 200
    prefix = f"lbp-{os.getpid()}-"
    first = signed(server, "GET", f"/?prefix={prefix}&max-buckets=2")
    assert first.body.count(b"<Name>") == 2 and b"<ContinuationToken>" in first.body
    token = first.body.split(b"<ContinuationToken>")[1].split(b"<")[0].decode()
    rest = signed(server, "GET", f"/?prefix={prefix}&continuation-token={token}")
    assert rest.body.count(b"<Name>") == 1 and f"{prefix}c".encode() in rest.body
    assert b"<Name>" not in signed(server, "GET", "/?bucket-region=eu-west-3").body
    assert signed(server, "GET", "/?max-buckets=0").code == "InvalidArgument"


def test_route_table_is_consistent() -> None:
    keys = [route.key for route in routes.ROUTES]
    assert len(keys) == len(set(keys))
    for route in routes.ROUTES:
        assert route.selectors <= routes.SUBRESOURCES | {routes.COPY_SOURCE}
        assert routes.operation_name(route.method, route.resource, route.selectors) == (
            route.operation
        )
    for method, _resource, selectors in routes.NOT_BUILT:
        assert method in routes.S3_METHODS
        assert selectors <= routes.SUBRESOURCES | {routes.COPY_SOURCE}


def test_metrics_label_comes_from_the_table() -> None:
    assert routes.operation_for("GET", "/b", ["policyStatus"]) == "GetBucketPolicyStatus"
    assert routes.operation_for("DELETE", "/b", ["publicAccessBlock"]) == "DeletePublicAccessBlock"
    assert routes.operation_for("GET", "/b/k", {"versionId": "null"}) == "GetObject"
    assert routes.operation_for("PATCH", "/b", []) == "Other"
