"""The CLI's one error type for anything a server said no to, or could not be reached for.

Both the boto3 side (:mod:`cli.s3client`) and the admin signer (:mod:`cli.signed`) translate
their failures into :class:`S3ClientError`, whose ``code`` is S3's error code (``NoSuchKey``,
``NoSuchBucket``, ``AccessDenied``, ...) or one of the CLI's own for a connection that failed
(``Unreachable``, ``TLSVerifyFailed``, ``TLSFailed``, ``Timeout``) or a request that was never
sent (``InvalidParameter``). :func:`describe` turns one into the line the user reads.
"""

from __future__ import annotations


class S3ClientError(Exception):
    """An S3 (or admin API) error answer, or a failure to reach the endpoint."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message
        self.status = status


class Interrupted(Exception):
    """Ctrl-C stopped a command; ``lines`` say what was left as it was.

    ``hard``: a transfer thread did not stop in time, so the process must exit without
    waiting for it (see :mod:`cli.transfer`)."""

    def __init__(self, lines: list[str], *, hard: bool = False) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines
        self.hard = hard


class StdoutClosed(Exception):
    """Whoever read stdout went away (``minigrid cat KEY | head``)."""


def describe(exc: S3ClientError, bucket: str = "", key: str = "") -> str:
    """A short, clear line for the user, e.g. ``bucket "x" does not exist (NoSuchBucket)``."""
    name = f"{bucket}/{key}" if key else bucket
    known: dict[str, str] = {
        "NoSuchBucket": f'bucket "{bucket}" does not exist',
        "NoSuchKey": f'object "{name}" does not exist',
        "BucketAlreadyOwnedByYou": f'bucket "{bucket}" already exists',
        "BucketAlreadyExists": f'bucket "{bucket}" already exists',
        "BucketNotEmpty": f'bucket "{bucket}" is not empty (rb --force deletes its objects too)',
        "SignatureDoesNotMatch": "the secret key does not match the access key",
        "InvalidAccessKeyId": "the access key is not known to the cluster",
    }
    text = known.get(exc.code, exc.message) if bucket or exc.code not in _NAMED else exc.message
    return f"{text} ({exc.code})"


# Codes whose sentence needs a bucket name: without one, the server's own message is clearer.
_NAMED = frozenset({"NoSuchBucket", "NoSuchKey", "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists", "BucketNotEmpty"})  # fmt: skip

__all__ = ["Interrupted", "S3ClientError", "StdoutClosed", "describe"]
