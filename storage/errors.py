"""The storage error hierarchy.

Every error a drive or the object layer raises is a :class:`StorageError` subclass. Each class
has a stable ``code`` (its class name), so a remote drive can carry an error across the wire as
``(code, message)`` and rebuild the same type on the other side with :func:`error_from_code`.

The classes are grouped by what the caller can do about them:

- drive availability (``DriveNotFound`` and its ``DriveOffline`` subclass, ``DriveFull``,
  ``UnformattedDrive``): try another drive;
- missing or damaged data (``FileNotFound``, ``FileCorrupt``): read another shard, queue a heal;
- volumes (``VolumeNotFound``, ``VolumeExists``, ``VolumeNotEmpty``);
- misuse (``InvalidName``, ``InvalidRange``, ``InvalidArgument``): fix the request;
- quorum (``WriteQuorum``, ``ReadQuorum``): not enough drives agreed;
- object-layer answers (``BucketNotFound``, ``ObjectNotFound``, ...), which the S3 gateway maps
  to HTTP status codes.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error raised by the storage package."""

    @property
    def code(self) -> str:
        """The stable name used to carry this error across the wire."""
        return type(self).__name__


# --- drive availability -------------------------------------------------------------------


class DriveNotFound(StorageError):
    """The drive is missing or cannot be reached."""


class DriveOffline(DriveNotFound):
    """The drive is known to be offline; the call failed at once without touching it."""


class DriveFull(StorageError):
    """The drive has no space (or no inodes) left."""


class UnformattedDrive(StorageError):
    """The drive holds no format file."""


class FormatMismatch(StorageError):
    """The drive's format file belongs to another deployment or layout."""


# --- data ---------------------------------------------------------------------------------


class FileNotFound(StorageError):
    """The metadata or shard file is not on this drive."""


class FileCorrupt(StorageError):
    """A checksum or bitrot hash did not match, or the file is truncated."""


# --- volumes ------------------------------------------------------------------------------


class VolumeNotFound(StorageError):
    """The volume (bucket directory) does not exist on this drive."""


class VolumeExists(StorageError):
    """The volume already exists on this drive."""


class VolumeNotEmpty(StorageError):
    """The volume still holds objects."""


# --- misuse -------------------------------------------------------------------------------


class InvalidName(StorageError):
    """A bucket or object name breaks the naming rules."""


class InvalidRange(StorageError):
    """A byte range lies outside the object."""


class InvalidArgument(StorageError):
    """Any other argument the storage layer refuses."""


# --- quorum -------------------------------------------------------------------------------


class WriteQuorum(StorageError):
    """Fewer drives than the write quorum accepted the write; it was rolled back."""


class ReadQuorum(StorageError):
    """Fewer drives than the read quorum answered consistently."""


# --- object layer -------------------------------------------------------------------------


class BucketNotFound(StorageError):
    """The bucket does not exist."""


class BucketExists(StorageError):
    """The bucket already exists."""


class BucketNotEmpty(StorageError):
    """The bucket still holds objects."""


class ObjectNotFound(StorageError):
    """The object does not exist."""


class IncompleteBody(StorageError):
    """The byte source ended before (or ran past) the declared size."""


class PreconditionFailed(StorageError):
    """A conditional write found the object in a state it was told not to overwrite."""


# --- multipart uploads ----------------------------------------------------------------------


class UploadNotFound(StorageError):
    """The multipart upload does not exist (never started, completed or aborted)."""


class InvalidPart(StorageError):
    """A part named to complete an upload was not uploaded, or its ETag does not match."""


class InvalidPartOrder(StorageError):
    """The parts named to complete an upload are not in ascending order."""


class PartTooSmall(StorageError):
    """A part other than the last is smaller than the minimum part size."""


def _all_subclasses(cls: type[StorageError]) -> list[type[StorageError]]:
    found: list[type[StorageError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


_CLASSES: list[type[StorageError]] = [StorageError, *_all_subclasses(StorageError)]
ERRORS_BY_CODE: dict[str, type[StorageError]] = {cls.__name__: cls for cls in _CLASSES}


def error_from_code(code: str, message: str) -> StorageError:
    """Rebuild an error carried across the wire; unknown codes become a plain StorageError."""
    cls = ERRORS_BY_CODE.get(code, StorageError)
    if cls is StorageError and code != "StorageError":
        return StorageError(f"{code}: {message}")
    return cls(message)
