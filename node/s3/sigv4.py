"""AWS Signature Version 4, the pure parts: no sockets, no aiohttp.

The gateway gathers a request's method, path, query and headers; this module builds the
canonical request and string to sign exactly as AWS documents them, derives the signing key
and compares signatures in constant time. It also signs aws-chunked chunks and trailers
(:class:`ChunkSigner`), whose signatures chain from the request's seed signature.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote

from node.s3 import errors

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_SKEW_SECONDS = 15 * 60

_SPACES = re.compile(r"\s+")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Scope:
    """The credential scope: ``<date>/<region>/<service>/aws4_request``."""

    date: str
    region: str
    service: str

    def __str__(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class Credential:
    access_key: str
    scope: Scope


@dataclass(frozen=True)
class Authorization:
    """A parsed ``Authorization: AWS4-HMAC-SHA256 ...`` header (or presigned query)."""

    credential: Credential
    signed_headers: tuple[str, ...]
    signature: str


def parse_credential(value: str) -> Credential:
    """``AKID/20150830/us-east-1/s3/aws4_request`` -> Credential."""
    parts = value.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request" or not all(parts[:4]):
        raise errors.auth_malformed(
            f"the Credential {value!r} is malformed; expecting "
            "'<access key>/<YYYYMMDD>/<region>/<service>/aws4_request'"
        )
    if not re.fullmatch(r"\d{8}", parts[1]):
        raise errors.auth_malformed(f"the credential date {parts[1]!r} is not YYYYMMDD")
    return Credential(parts[0], Scope(parts[1], parts[2], parts[3]))


def parse_authorization(header: str) -> Authorization:
    """Parse the Authorization header; AuthorizationHeaderMalformed if it is not SigV4."""
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise errors.auth_malformed(
            f"unsupported authorization algorithm {algorithm!r}; only {ALGORITHM} is accepted"
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise errors.auth_malformed(
                f"the authorization component {part.strip()!r} is malformed"
            )
        fields[name] = value
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing:
        raise errors.auth_malformed(f"the authorization header is missing {', '.join(missing)}")
    return Authorization(
        credential=parse_credential(fields["Credential"]),
        signed_headers=parse_signed_headers(fields["SignedHeaders"]),
        signature=fields["Signature"],
    )


def parse_signed_headers(value: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    if not value or any(not n or n != n.lower() for n in names):
        raise errors.auth_malformed(
            f"SignedHeaders {value!r} must be lowercase names joined by ';'"
        )
    return names


def parse_amz_date(value: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(value, AMZ_DATE_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise errors.access_denied(
            f"x-amz-date {value!r} is not in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'"
        ) from exc


def check_skew(amz_date: dt.datetime, now: float) -> None:
    """RequestTimeTooSkewed when the request's time is more than 15 minutes from ``now``."""
    skew = abs(amz_date.timestamp() - now)
    if skew > MAX_SKEW_SECONDS:
        server = dt.datetime.fromtimestamp(now, dt.UTC).strftime(AMZ_DATE_FORMAT)
        raise errors.time_skewed(
            "The difference between the request time and the server's time is too large: "
            f"request {amz_date.strftime(AMZ_DATE_FORMAT)}, server {server}"
        )


def uri_encode(text: str, *, encode_slash: bool = True) -> str:
    """Percent-encode everything except the unreserved characters (and ``/`` when allowed)."""
    return quote(text, safe="-_.~" if encode_slash else "-_.~/")


def canonical_uri(raw_path: str) -> str:
    """The canonical URI for S3: each segment of the decoded path encoded once."""
    return uri_encode(unquote(raw_path), encode_slash=False) or "/"


def query_pairs(raw_query: str) -> list[tuple[str, str]]:
    """Decode a raw query string into (name, value) pairs, keeping blanks (``?location``)."""
    pairs: list[tuple[str, str]] = []
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def canonical_query(pairs: Iterable[tuple[str, str]], *, exclude: str = "") -> str:
    encoded = sorted(
        (uri_encode(name), uri_encode(value)) for name, value in pairs if name != exclude
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(headers: Mapping[str, Sequence[str]], signed: Sequence[str]) -> str:
    """``name:value\\n`` for each signed header; values trimmed, inner spaces collapsed."""
    lines = []
    for name in signed:
        values = headers.get(name)
        if values is None:
            raise errors.access_denied(f"the signed header {name!r} is missing from the request")
        joined = ",".join(_SPACES.sub(" ", value.strip()) for value in values)
        lines.append(f"{name}:{joined}\n")
    return "".join(lines)


def canonical_request(
    method: str,
    raw_path: str,
    pairs: Iterable[tuple[str, str]],
    headers: Mapping[str, Sequence[str]],
    signed: Sequence[str],
    payload_hash: str,
    *,
    exclude_query: str = "",
) -> str:
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(pairs, exclude=exclude_query),
            canonical_headers(headers, signed),
            ";".join(signed),
            payload_hash,
        ]
    )


def string_to_sign(amz_date: str, scope: Scope, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


@lru_cache(maxsize=256)
def signing_key(secret: str, scope: Scope) -> bytes:
    """The derived key for one secret and scope (cached: it changes once a day)."""
    key = _hmac(f"AWS4{secret}".encode(), scope.date)
    key = _hmac(key, scope.region)
    key = _hmac(key, scope.service)
    return _hmac(key, "aws4_request")


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def signatures_equal(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode())


def sign_request(
    method: str, host: str, raw_path: str, query: Mapping[str, str], access_key: str,
    secret_key: str, region: str, now: dt.datetime, payload_hash: str = EMPTY_SHA256,
) -> dict[str, str]:
    """The headers that sign a request with SigV4 (``Authorization``, ``x-amz-date``,
    ``x-amz-content-sha256``; ``host`` is signed and must be sent as given)."""
    amz_date = now.strftime(AMZ_DATE_FORMAT)
    scope = Scope(now.strftime("%Y%m%d"), region, "s3")
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = sorted(headers)
    canonical = canonical_request(method, raw_path, list(query.items()),
                                  {k: [v] for k, v in headers.items()}, signed, payload_hash)
    signature = sign(signing_key(secret_key, scope), string_to_sign(amz_date, scope, canonical))
    return {
        "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date,
        "Authorization": f"{ALGORITHM} Credential={access_key}/{scope}, "
                         f"SignedHeaders={';'.join(signed)}, Signature={signature}",
    }  # fmt: skip


def presign_query(
    method: str, host: str, raw_path: str, query: Mapping[str, str], access_key: str,
    secret_key: str, region: str, now: dt.datetime, expires: int,
) -> dict[str, str]:
    """``query`` plus the ``X-Amz-*`` parameters of a presigned URL valid ``expires`` seconds
    (only ``host`` signed, the payload unsigned)."""
    amz_date = now.strftime(AMZ_DATE_FORMAT)
    scope = Scope(now.strftime("%Y%m%d"), region, "s3")
    params = {
        **query, "X-Amz-Algorithm": ALGORITHM, "X-Amz-Credential": f"{access_key}/{scope}",
        "X-Amz-Date": amz_date, "X-Amz-Expires": str(expires), "X-Amz-SignedHeaders": "host",
    }  # fmt: skip
    canonical = canonical_request(method, raw_path, list(params.items()), {"host": [host]},
                                  ["host"], UNSIGNED_PAYLOAD)  # fmt: skip
    params["X-Amz-Signature"] = sign(
        signing_key(secret_key, scope), string_to_sign(amz_date, scope, canonical)
    )
    return params


def is_sha256_hex(value: str) -> bool:
    return bool(_HEX64.match(value))


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class ChunkSigner:
    """Signatures of aws-chunked chunks and trailers, each chained from the previous one."""

    def __init__(self, key: bytes, amz_date: str, scope: Scope, seed_signature: str) -> None:
        self._key = key
        self._amz_date = amz_date
        self._scope = scope
        self.previous = seed_signature

    def chunk_signature(self, chunk_sha256_hex: str) -> str:
        text = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                self._amz_date,
                str(self._scope),
                self.previous,
                EMPTY_SHA256,
                chunk_sha256_hex,
            ]
        )
        return sign(self._key, text)

    def trailer_signature(self, trailer_lines: bytes) -> str:
        text = "\n".join(
            [
                "AWS4-HMAC-SHA256-TRAILER",
                self._amz_date,
                str(self._scope),
                self.previous,
                hashlib.sha256(trailer_lines).hexdigest(),
            ]
        )
        return sign(self._key, text)

    def verify_chunk(self, chunk_sha256_hex: str, given: str) -> bool:
        expected = self.chunk_signature(chunk_sha256_hex)
        self.previous = expected
        return signatures_equal(expected, given)

    def verify_trailer(self, trailer_lines: bytes, given: str) -> bool:
        expected = self.trailer_signature(trailer_lines)
        self.previous = expected
        return signatures_equal(expected, given)
