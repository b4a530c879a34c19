"""Object metadata in headers: user metadata (``x-amz-meta-*``), system metadata
(Cache-Control, Content-Disposition, Content-Encoding, Content-Language, Expires), and the
headers an object is answered with.

**Non-ASCII user metadata** is handled as the S3 reference describes: a value sent as RFC 2047
encoded words (``=?UTF-8?B?w6k=?=``) is decoded before it is stored, and a stored value that is
not US-ASCII is answered RFC 2047 encoded (``=?UTF-8?B?...?=``), so it survives any HTTP stack.
A value sent as raw UTF-8 bytes is stored as the text it is. Names are stored in lowercase.
"""

from __future__ import annotations

import base64
import email.header
import email.utils
from collections.abc import Mapping

from multidict import CIMultiDictProxy

from node.s3 import errors
from storage.info import ObjectInfo
from storage.meta import SYSTEM_META

USER_META_PREFIX = "x-amz-meta-"
#: S3's limit on the user metadata of one object: names and values, 2 KiB in all.
MAX_USER_META_BYTES = 2048
#: The canonical spelling of each system metadata header in answers.
SYSTEM_HEADERS = {
    "cache-control": "Cache-Control",
    "content-disposition": "Content-Disposition",
    "content-encoding": "Content-Encoding",
    "content-language": "Content-Language",
    "expires": "Expires",
}
assert set(SYSTEM_HEADERS) == SYSTEM_META


def http_date(time_ns: int) -> str:
    """RFC 7231 date, e.g. ``Wed, 21 Oct 2015 07:28:00 GMT``."""
    return email.utils.formatdate(time_ns / 1e9, usegmt=True)


def _raw_text(value: str) -> str:
    """aiohttp hands header bytes over as UTF-8 with surrogate escapes (or Latin-1): turn a
    value that is really UTF-8 back into the text the client meant."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8")
    except UnicodeError:
        try:
            return value.encode("latin-1").decode("utf-8")
        except UnicodeError:
            return value


def decode_value(value: str) -> str:
    """A metadata value as it is stored: RFC 2047 encoded words decoded."""
    text = _raw_text(value)
    if "=?" not in text:
        return text
    try:
        pieces = email.header.decode_header(text)
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return text
    out = []
    for piece, charset in pieces:
        if isinstance(piece, bytes):
            try:
                out.append(piece.decode(charset or "ascii"))
            except (LookupError, UnicodeDecodeError):
                return text
        else:
            out.append(piece)
    return "".join(out)


def encode_value(value: str) -> str:
    """A stored value as it is answered: as is when US-ASCII, else RFC 2047 (UTF-8, base64)."""
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")).decode() + "?="


def user_meta(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    """The ``x-amz-meta-*`` headers of a request, checked against S3's 2 KiB limit."""
    meta: dict[str, str] = {}
    for name in {n.lower() for n in headers if n.lower().startswith(USER_META_PREFIX)}:
        short = name[len(USER_META_PREFIX) :]
        if not short:
            raise errors.invalid_argument("a user metadata header needs a name after x-amz-meta-")
        meta[short] = ",".join(decode_value(v) for v in headers.getall(name))
    size = sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())
    if size > MAX_USER_META_BYTES:
        raise errors.S3Error(
            "MetadataTooLarge",
            f"Your metadata headers are {size} bytes; the limit is {MAX_USER_META_BYTES}.",
            400,
        )
    return meta


def system_meta(headers: Mapping[str, str]) -> dict[str, str]:
    """The system metadata headers of a request (those it has), as they are stored."""
    return {name: _raw_text(headers[name]) for name in SYSTEM_META if name in headers}


def object_headers(info: ObjectInfo) -> dict[str, str]:
    """The headers that describe an object in a GET, HEAD or copy answer (no length)."""
    headers = {
        "Content-Type": info.content_type,
        "ETag": f'"{info.etag}"',
        "Last-Modified": http_date(info.mod_time_ns),
        "Accept-Ranges": "bytes",
    }
    for name, value in info.sys_meta.items():
        headers[SYSTEM_HEADERS[name]] = encode_value(value)
    for name, value in info.user_meta.items():
        headers[USER_META_PREFIX + name] = encode_value(value)
    if info.tags:
        headers["x-amz-tagging-count"] = str(len(info.tags))
    return headers


def checksum_headers(info: ObjectInfo, *, whole: bool = True) -> dict[str, str]:
    """``x-amz-checksum-<algorithm>`` and ``x-amz-checksum-type`` for ``ChecksumMode``.

    ``whole`` false (a range or one part of the object) answers nothing, as S3 does for a
    range: the stored checksum is of the whole object."""
    if not whole:
        return {}
    found = {f"x-amz-checksum-{alg}": value for alg, value in info.checksums.items() if value}
    if found:
        found["x-amz-checksum-type"] = info.checksum_type or "FULL_OBJECT"
    return found
