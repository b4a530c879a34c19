"""Bucket and object name validation, and mapping names to paths on a drive.

An object key becomes a directory path inside its bucket's volume: the key ``photos/cat.jpg``
lives in ``<drive>/<bucket>/photos/cat.jpg/`` with its metadata file and data directories
inside. Names that begin with :data:`RESERVED_PREFIX` are the drive's own, so no key segment
may start with it. Every rule here exists so that no name can reach outside the drive.
"""

from __future__ import annotations

import os
import re

from storage.errors import InvalidName

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
RESERVED_PREFIX = "__mg."
META_FILE = "__mg.meta"
DIR_META_FILE = "__mg.dirmeta"
DATA_DIR_PREFIX = "__mg.data."
SHARD_FILE = "shard"
SYSTEM_VOLUME = ".minigrid.sys"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def validate_bucket(name: str) -> str:
    """Check a bucket name against the S3 naming rules and return it."""
    if not isinstance(name, str) or not _BUCKET_RE.match(name):
        raise InvalidName(
            f"bucket name {name!r} must be 3-63 characters of lowercase letters, digits, dots "
            "and hyphens, beginning and ending with a letter or digit"
        )
    if ".." in name or ".-" in name or "-." in name:
        raise InvalidName(f"bucket name {name!r} has adjacent dots or a dot next to a hyphen")
    if _IPV4_RE.match(name):
        raise InvalidName(f"bucket name {name!r} must not look like an IP address")
    if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3")):
        raise InvalidName(f"bucket name {name!r} uses a reserved prefix or suffix")
    return name


def validate_object(key: str) -> str:
    """Check an object key and return it.

    Keys are UTF-8, at most 1024 bytes, with no NUL, no leading ``/``, no empty, ``.`` or
    ``..`` segment and no segment longer than 255 bytes. A single trailing ``/`` is allowed
    (a "folder" marker).
    """
    if not isinstance(key, str) or not key:
        raise InvalidName("object key must be a non-empty string")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidName(f"object key {key!r} is not valid UTF-8") from exc
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidName(f"object key is {len(raw)} bytes; the limit is {MAX_KEY_BYTES}")
    if "\x00" in key:
        raise InvalidName("object key must not contain NUL")
    if key.startswith("/"):
        raise InvalidName(f"object key {key!r} must not be absolute")
    if "\\" in key:
        raise InvalidName(f"object key {key!r} must not contain a backslash")
    body = key[:-1] if key.endswith("/") else key
    for segment in body.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidName(f"object key {key!r} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidName(f"object key {key!r} has a segment over {MAX_SEGMENT_BYTES} bytes")
        if segment.startswith(RESERVED_PREFIX):
            raise InvalidName(f"object key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix only needs to be a bounded string without NUL."""
    if "\x00" in prefix or len(prefix.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidName("listing prefix must be at most 1024 bytes with no NUL")
    return prefix


def object_location(key: str) -> tuple[str, str]:
    """Return ``(directory relative to the volume, metadata file name)`` for a key.

    ``a/b`` keeps its metadata in ``a/b/__mg.meta``; the folder marker ``a/b/`` keeps its
    metadata in ``a/b/__mg.dirmeta``, so both can exist side by side.
    """
    validate_object(key)
    if key.endswith("/"):
        return key[:-1], DIR_META_FILE
    return key, META_FILE


def safe_join(root: str, *parts: str) -> str:
    """Join ``parts`` under ``root`` and refuse any result that escapes it."""
    root_abs = os.path.abspath(root)
    joined = os.path.abspath(os.path.join(root_abs, *parts))
    if joined != root_abs and not joined.startswith(root_abs + os.sep):
        raise InvalidName(f"path {os.path.join(*parts)!r} escapes the drive")
    return joined
