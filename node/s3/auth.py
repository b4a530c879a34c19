"""Authenticating a request with AWS Signature V4 (header or presigned query).

This is the glue between aiohttp's request object and the pure :mod:`node.s3.sigv4`
functions: it gathers method, raw path, raw query and headers, checks the credential scope and
clock, and returns the verified :class:`Authenticated` context the body readers need.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from aiohttp import web

from node.s3 import errors, sigv4

MAX_PRESIGN_EXPIRES = 7 * 24 * 3600
_PAYLOAD_MODES = frozenset(
    {
        sigv4.UNSIGNED_PAYLOAD,
        sigv4.STREAMING_SIGNED,
        sigv4.STREAMING_SIGNED_TRAILER,
        sigv4.STREAMING_UNSIGNED_TRAILER,
    }
)


@dataclass(frozen=True)
class Authenticated:
    """Who signed the request, and what the body readers need to check its payload."""

    access_key: str
    signing_key: bytes
    scope: sigv4.Scope
    amz_date: str
    signature: str
    payload: str  # the x-amz-content-sha256 mode or hex digest

    def chunk_signer(self) -> sigv4.ChunkSigner:
        return sigv4.ChunkSigner(self.signing_key, self.amz_date, self.scope, self.signature)


class Authenticator:
    """Checks SigV4 signatures against a fixed set of access key -> secret key pairs."""

    def __init__(
        self,
        credentials: Mapping[str, str],
        region: str,
        clock: Callable[[], float],
        *,
        aliases: Collection[str] = (),
    ) -> None:
        self._credentials = dict(credentials)
        self._region = region
        #: Other names a signature may give the region (``US`` for us-east-1, as MinIO takes).
        self._regions = frozenset({region, *aliases})
        self._clock = clock

    def authenticate(self, request: web.Request) -> Authenticated:
        """Verify the request's signature; raise the S3 error to answer when it fails."""
        header = request.headers.get("Authorization")
        if header is None:
            if "X-Amz-Algorithm" in request.rel_url.query:
                return self._presigned(request)
            if "AWSAccessKeyId" in request.rel_url.query:
                raise errors.access_denied(
                    "Signature Version 2 presigned URLs are not supported; presign with "
                    "Signature Version 4 (boto3: Config(signature_version='s3v4'))."
                )
            raise errors.access_denied(
                "Anonymous access is not allowed: sign requests with AWS Signature Version 4."
            )
        parsed = sigv4.parse_authorization(header)
        amz_date = request.headers.get("x-amz-date")
        if amz_date is None:
            raise errors.access_denied("AWS authentication requires a valid x-amz-date header.")
        payload = request.headers.get("x-amz-content-sha256")
        if payload is None:
            raise errors.invalid_request(
                "Missing required header for this request: x-amz-content-sha256"
            )
        if payload not in _PAYLOAD_MODES and not sigv4.is_sha256_hex(payload):
            raise errors.invalid_argument(f"x-amz-content-sha256 {payload[:80]!r} is not valid")
        when = sigv4.parse_amz_date(amz_date)
        secret = self._check_credential(parsed.credential, amz_date)
        sigv4.check_skew(when, self._clock())
        return self._verify(request, parsed, secret, amz_date, payload, exclude_query="")

    def _presigned(self, request: web.Request) -> Authenticated:
        query = request.rel_url.query
        if query.get("X-Amz-Algorithm") != sigv4.ALGORITHM:
            raise errors.auth_malformed(f"X-Amz-Algorithm must be {sigv4.ALGORITHM}")
        try:
            credential = sigv4.parse_credential(query["X-Amz-Credential"])
            amz_date = query["X-Amz-Date"]
            expires = int(query["X-Amz-Expires"])
            parsed = sigv4.Authorization(
                credential,
                sigv4.parse_signed_headers(query["X-Amz-SignedHeaders"]),
                query["X-Amz-Signature"],
            )
        except (KeyError, ValueError) as exc:
            raise errors.auth_malformed(
                "a presigned URL needs X-Amz-Credential, X-Amz-Date, X-Amz-Expires, "
                "X-Amz-SignedHeaders and X-Amz-Signature"
            ) from exc
        if expires < 0:
            raise errors.auth_query_error("X-Amz-Expires must be non-negative")
        if expires > MAX_PRESIGN_EXPIRES:
            raise errors.auth_query_error("X-Amz-Expires must be less than a week (in seconds) "
                                          "that is 604800")  # fmt: skip
        secret = self._check_credential(credential, amz_date)
        signed_at = sigv4.parse_amz_date(amz_date).timestamp()
        now = self._clock()
        if now > signed_at + expires:
            raise errors.access_denied("Request has expired.")
        if signed_at > now + sigv4.MAX_SKEW_SECONDS:
            raise errors.access_denied("Request is not valid yet.")
        payload = query.get("X-Amz-Content-Sha256", sigv4.UNSIGNED_PAYLOAD)
        return self._verify(
            request, parsed, secret, amz_date, payload, exclude_query="X-Amz-Signature"
        )

    def _check_credential(self, credential: sigv4.Credential, amz_date: str) -> str:
        secret = self._credentials.get(credential.access_key)
        if secret is None:
            raise errors.invalid_access_key(credential.access_key)
        scope = credential.scope
        if scope.service != "s3":
            raise errors.auth_malformed(f"the service {scope.service!r} is wrong; expecting 's3'")
        if scope.region not in self._regions:
            # S3 names the right region in <Region>, and clients (s3cmd) retry with it.
            raise errors.auth_malformed(
                f"the region {scope.region!r} is wrong; expecting {self._region!r}",
                region=self._region,
            )
        if not amz_date.startswith(scope.date):
            raise errors.auth_malformed(
                f"the credential date {scope.date} is not the date of x-amz-date {amz_date}"
            )
        return secret

    def _verify(
        self,
        request: web.Request,
        parsed: sigv4.Authorization,
        secret: str,
        amz_date: str,
        payload: str,
        *,
        exclude_query: str,
    ) -> Authenticated:
        if "host" not in parsed.signed_headers:
            raise errors.access_denied("the host header must be signed")
        headers = {
            name: request.headers.getall(name)
            for name in parsed.signed_headers
            if name in request.headers
        }
        canonical = sigv4.canonical_request(
            request.method,
            request.rel_url.raw_path,
            sigv4.query_pairs(request.rel_url.raw_query_string),
            headers,
            parsed.signed_headers,
            payload,
            exclude_query=exclude_query,
        )
        scope = parsed.credential.scope
        to_sign = sigv4.string_to_sign(amz_date, scope, canonical)
        key = sigv4.signing_key(secret, scope)
        if not sigv4.signatures_equal(sigv4.sign(key, to_sign), parsed.signature):
            raise errors.signature_mismatch(
                "The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method.",
                extra={
                    "AWSAccessKeyId": parsed.credential.access_key,
                    "StringToSign": to_sign,
                    "CanonicalRequest": canonical,
                },
            )
        return Authenticated(
            parsed.credential.access_key, key, scope, amz_date, parsed.signature, payload
        )
