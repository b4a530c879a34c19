"""Conditional requests, evaluated as S3 (and RFC 9110) does. Pure: no I/O.

**GET and HEAD** (:func:`check_read`), in this order:

1. ``If-Match`` present: an ETag that does not match is 412 PreconditionFailed. When it
   matches, ``If-Unmodified-Since`` is not looked at (S3: "If-Match true and
   If-Unmodified-Since false: 200").
2. Else ``If-Unmodified-Since`` after which the object changed: 412.
3. ``If-None-Match`` present: an ETag that matches is 304 Not Modified, whatever
   ``If-Modified-Since`` says (S3: "If-None-Match false and If-Modified-Since true: 304");
   one that does not match means ``If-Modified-Since`` is not looked at (RFC 9110 §13.2.2).
4. Else ``If-Modified-Since`` after which the object did not change: 304.

**PUT and CompleteMultipartUpload** (:func:`write_precondition`): ``If-None-Match: *`` makes the
write create-only (412 when the key exists); ``If-Match: <etag>`` makes it replace only that
version (404 NoSuchKey when there is no object, 412 on another ETag).

**CopyObject and UploadPartCopy** (:func:`check_copy_source`): the ``x-amz-copy-source-if-*``
headers, with the same precedence, on the source; every failure is 412.

Dates that do not parse are ignored, as RFC 9110 says. Times compare at one-second resolution
(HTTP dates have no finer one).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable, Mapping

from node.s3 import errors
from node.s3.headers import http_date
from storage.errors import ObjectNotFound, PreconditionFailed
from storage.info import ObjectInfo


class NotModified(Exception):
    """Answer 304 Not Modified (with the object's ETag and Last-Modified)."""

    def __init__(self, info: ObjectInfo) -> None:
        super().__init__("not modified")
        self.info = info


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return when.timestamp()


def etag_matches(header: str, etag: str) -> bool:
    """True when the ETag list in ``header`` names ``etag`` (or is ``*``); weak tags compare
    by their value, as S3 does."""
    for item in header.split(","):
        candidate = item.strip()
        if candidate == "*":
            return True
        candidate = candidate.removeprefix("W/").strip('"')
        if candidate == etag:
            return True
    return False


def _modified_after(info: ObjectInfo, seconds: float) -> bool:
    return info.mod_time_ns // 1_000_000_000 > int(seconds)


def precondition_failed(condition: str) -> errors.S3Error:
    return errors.S3Error(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        412,
        extra={"Condition": condition},
    )


def check_read(headers: Mapping[str, str], info: ObjectInfo) -> None:
    """Raise PreconditionFailed (412) or :class:`NotModified` (304) per the module docstring."""
    if_match = headers.get("If-Match")
    if if_match is not None:
        if not etag_matches(if_match, info.etag):
            raise precondition_failed("If-Match")
    else:
        since = _seconds(headers.get("If-Unmodified-Since"))
        if since is not None and _modified_after(info, since):
            raise precondition_failed("If-Unmodified-Since")
    if_none = headers.get("If-None-Match")
    if if_none is not None:
        if etag_matches(if_none, info.etag):
            raise NotModified(info)
        return
    since = _seconds(headers.get("If-Modified-Since"))
    if since is not None and not _modified_after(info, since):
        raise NotModified(info)


def not_modified_headers(info: ObjectInfo) -> dict[str, str]:
    return {"ETag": f'"{info.etag}"', "Last-Modified": http_date(info.mod_time_ns)}


def check_copy_source(headers: Mapping[str, str], info: ObjectInfo) -> None:
    """The ``x-amz-copy-source-if-*`` conditions on a copy's source; each failure is 412."""
    prefix = "x-amz-copy-source-if-"
    if_match = headers.get(prefix + "match")
    if if_match is not None:
        if not etag_matches(if_match, info.etag):
            raise precondition_failed("x-amz-copy-source-If-Match")
    else:
        since = _seconds(headers.get(prefix + "unmodified-since"))
        if since is not None and _modified_after(info, since):
            raise precondition_failed("x-amz-copy-source-If-Unmodified-Since")
    if_none = headers.get(prefix + "none-match")
    if if_none is not None:
        if etag_matches(if_none, info.etag):
            raise precondition_failed("x-amz-copy-source-If-None-Match")
        return
    since = _seconds(headers.get(prefix + "modified-since"))
    if since is not None and not _modified_after(info, since):
        raise precondition_failed("x-amz-copy-source-If-Modified-Since")


def write_precondition(headers: Mapping[str, str]) -> Callable[[str | None], None] | None:
    """The check a conditional write makes, given the ETag of the object there now (None
    when there is none), or None for a plain write.

    NotImplemented for an ``If-None-Match`` other than ``*`` (S3 allows only that)."""
    if_none = headers.get("If-None-Match")
    if_match = headers.get("If-Match")
    if if_none is None and if_match is None:
        return None
    if if_none is not None and if_none.strip() != "*":
        raise errors.not_implemented(
            "If-None-Match on a write takes only '*' (create the object only if it does not exist)"
        )

    def check(current: str | None) -> None:
        if if_none is not None and current is not None:
            raise PreconditionFailed("If-None-Match: the object exists")
        if if_match is not None:
            if current is None:
                raise ObjectNotFound("If-Match: the object does not exist")
            if not etag_matches(if_match, current):
                raise PreconditionFailed("If-Match: the object's ETag differs")

    return check
