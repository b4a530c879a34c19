"""S3 errors, and the one place storage errors become S3 errors.

An :class:`S3Error` carries what the client sees: the S3 error ``code``, the HTTP ``status``
and a human ``message``. :func:`from_exception` is the single boundary where the object layer's
:class:`~storage.errors.StorageError` types (and anything unexpected) are translated.
"""

from __future__ import annotations

from storage import errors as storage_errors


class S3Error(Exception):
    """An error answered to the client as S3 XML.

    ``close`` means the connection cannot carry another request after this answer (the
    client stalled, or sent more than it declared): the gateway answers, then closes it
    rather than reading the rest of the body.
    """

    def __init__(
        self,
        code: str,
        message: str,
        status: int,
        *,
        extra: dict[str, str] | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.extra = dict(extra or {})
        self.close = close


# Constructors for the codes the gateway answers, so call sites read as what went wrong.


def access_denied(message: str = "Access Denied.") -> S3Error:
    return S3Error("AccessDenied", message, 403)


def signature_mismatch(message: str, *, extra: dict[str, str] | None = None) -> S3Error:
    return S3Error("SignatureDoesNotMatch", message, 403, extra=extra)


def invalid_access_key(access_key: str) -> S3Error:
    return S3Error(
        "InvalidAccessKeyId",
        f"The AWS Access Key Id you provided ({access_key}) does not exist in our records.",
        403,
    )


def time_skewed(message: str) -> S3Error:
    return S3Error("RequestTimeTooSkewed", message, 403)


def auth_malformed(message: str, *, region: str | None = None) -> S3Error:
    extra = {"Region": region} if region is not None else None
    return S3Error("AuthorizationHeaderMalformed", message, 400, extra=extra)


def auth_query_error(message: str) -> S3Error:
    return S3Error("AuthorizationQueryParametersError", message, 400)


def invalid_argument(message: str) -> S3Error:
    return S3Error("InvalidArgument", message, 400)


def invalid_request(message: str) -> S3Error:
    return S3Error("InvalidRequest", message, 400)


def invalid_bucket_name(message: str) -> S3Error:
    return S3Error("InvalidBucketName", message, 400)


def missing_content_length() -> S3Error:
    return S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)


def sha256_mismatch() -> S3Error:
    return S3Error(
        "XAmzContentSHA256Mismatch",
        "The provided 'x-amz-content-sha256' header does not match what was computed.",
        400,
    )


def bad_digest(message: str) -> S3Error:
    return S3Error("BadDigest", message, 400)


def invalid_digest() -> S3Error:
    return S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.", 400)


def incomplete_body(message: str, *, close: bool = False) -> S3Error:
    return S3Error("IncompleteBody", message, 400, close=close)


def entity_too_large(size: int, limit: int) -> S3Error:
    return S3Error(
        "EntityTooLarge",
        f"Your proposed upload exceeds the maximum allowed object size: {size} bytes is over "
        f"the {limit} bytes a single PUT may carry.",
        400,
        extra={"ProposedSize": str(size), "MaxSizeAllowed": str(limit)},
    )


def max_message_length_exceeded(size: int, limit: int) -> S3Error:
    return S3Error(
        "MaxMessageLengthExceeded",
        f"Your request was too big: this request's body may be at most {limit} bytes, not {size}.",
        400,
    )


def request_timeout(seconds: float) -> S3Error:
    return S3Error(
        "RequestTimeout",
        "Your socket connection to the server was not read from or written to within the "
        f"timeout period ({seconds:g}s without a byte of the body).",
        400,
        close=True,
    )


def not_implemented(message: str) -> S3Error:
    return S3Error("NotImplemented", message, 501)


def method_not_allowed(message: str) -> S3Error:
    return S3Error("MethodNotAllowed", message, 405)


def malformed_xml(message: str) -> S3Error:
    return S3Error("MalformedXML", message, 400)


def invalid_range(message: str) -> S3Error:
    return S3Error("InvalidRange", message, 416)


def internal_error(message: str = "We encountered an internal error. Please try again.") -> S3Error:
    return S3Error("InternalError", message, 500)


def from_exception(exc: BaseException) -> S3Error:
    """Translate any exception raised while serving a request into the S3 error to answer."""
    if isinstance(exc, S3Error):
        return exc
    if not isinstance(exc, storage_errors.StorageError):
        return internal_error()
    text = str(exc)
    match exc:
        case storage_errors.BucketNotFound():
            return S3Error("NoSuchBucket", "The specified bucket does not exist.", 404)
        case storage_errors.ObjectNotFound():
            return S3Error("NoSuchKey", "The specified key does not exist.", 404)
        case storage_errors.BucketExists():
            return S3Error(
                "BucketAlreadyOwnedByYou",
                "Your previous request to create the named bucket succeeded and you already "
                "own it.",
                409,
            )
        case storage_errors.BucketNotEmpty():
            return S3Error("BucketNotEmpty", "The bucket you tried to delete is not empty.", 409)
        case storage_errors.InvalidRange():
            return invalid_range(f"The requested range is not satisfiable: {text}")
        case storage_errors.InvalidName():
            return invalid_argument(text)
        case storage_errors.InvalidArgument():
            return invalid_argument(text)
        case storage_errors.IncompleteBody():
            return incomplete_body(
                "You did not provide the number of bytes specified by the Content-Length "
                f"HTTP header: {text}"
            )
        case storage_errors.PreconditionFailed():
            return S3Error(
                "PreconditionFailed",
                "At least one of the pre-conditions you specified did not hold",
                412,
                extra={"Condition": "If-None-Match" if "None" in text else "If-Match"},
            )
        case storage_errors.UploadNotFound():
            return S3Error(
                "NoSuchUpload",
                "The specified multipart upload does not exist. The upload ID may be invalid, "
                "or the upload may have been aborted or completed.",
                404,
            )
        case storage_errors.InvalidPart():
            return S3Error(
                "InvalidPart",
                "One or more of the specified parts could not be found. The part may not have "
                f"been uploaded, or the specified entity tag may not match the part's: {text}",
                400,
            )
        case storage_errors.InvalidPartOrder():
            return S3Error("InvalidPartOrder", text, 400)
        case storage_errors.PartTooSmall():
            return S3Error(
                "EntityTooSmall",
                f"Your proposed upload is smaller than the minimum allowed object size: {text}",
                400,
            )
        case storage_errors.WriteQuorum():
            return S3Error("ServiceUnavailable", f"write quorum not reached: {text}", 503)
        case storage_errors.ReadQuorum():
            return S3Error("ServiceUnavailable", f"read quorum not reached: {text}", 503)
        case storage_errors.DriveFull():
            return S3Error("ServiceUnavailable", f"storage is full: {text}", 503)
        case _:
            return internal_error(f"storage error {exc.code}: {text}")
