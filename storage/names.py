"""Validation of every name that becomes part of a path on a drive, and safe path joining.

An object key becomes a directory path inside its bucket's volume: the key ``photos/cat.jpg``
lives in ``<drive>/<bucket>/photos/cat.jpg/`` with its metadata file and data directories
inside. Names that begin with :data:`RESERVED_PREFIX` are the drive's own, so no key segment
may start with it. Every rule here exists so that no name can reach outside the drive.

The names a drive takes are: a volume (a bucket name, :func:`validate_bucket`), an object key
(:func:`validate_object`), an upload ID and a data directory (both a UUID in 32 lowercase hex
characters, :func:`validate_upload_id` and :func:`validate_data_dir`), and the listing
strings (prefix, delimiter, marker: :func:`validate_list_text`). They arrive from S3 clients
and from grid peers alike, so the drive service checks them on arrival and
:class:`~storage.local.LocalDrive` checks them again where it builds a path.
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
_UUID_HEX_RE = re.compile(r"^[0-9a-f]{32}$")
_SHOWN_CHARS = 80


def shown(value: object) -> str:
    """``repr(value)``, cut short: an error message must not echo a megabyte a peer sent."""
    text = repr(value)
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"


def validate_bucket(name: str) -> str:
    """Check a bucket name against the S3 naming rules and return it."""
    if not isinstance(name, str) or not _BUCKET_RE.match(name):
        raise InvalidName(
            f"bucket name {shown(name)} must be 3-63 characters of lowercase letters, digits, dots "
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
        raise InvalidName(f"object key {shown(key)} is not valid UTF-8") from exc
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidName(f"object key is {len(raw)} bytes; the limit is {MAX_KEY_BYTES}")
    if "\x00" in key:
        raise InvalidName("object key must not contain NUL")
    if key.startswith("/"):
        raise InvalidName(f"object key {shown(key)} must not be absolute")
    if "\\" in key:
        raise InvalidName(f"object key {shown(key)} must not contain a backslash")
    body = key[:-1] if key.endswith("/") else key
    for segment in body.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidName(f"object key {shown(key)} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
            raise InvalidName(
                f"object key {shown(key)} has a segment over {MAX_SEGMENT_BYTES} bytes"
            )
        if segment.startswith(RESERVED_PREFIX):
            raise InvalidName(
                f"object key {shown(key)} uses the reserved prefix {RESERVED_PREFIX!r}"
            )
    return key


def validate_list_text(value: str, what: str = "listing prefix") -> str:
    """A listing prefix, delimiter or marker: a string of at most 1024 UTF-8 bytes, no NUL.

    These are compared with keys, never joined into a path, so ``../`` in a prefix is harmless
    (it matches no key); only their size and NUL are checked.
    """
    if not isinstance(value, str):
        raise InvalidName(f"{what} must be a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidName(f"{what} {shown(value)} is not valid UTF-8") from exc
    if "\x00" in value or size > MAX_KEY_BYTES:
        raise InvalidName(f"{what} must be at most {MAX_KEY_BYTES} bytes with no NUL")
    return value


def validate_prefix(prefix: str) -> str:
    """A listing prefix only needs to be a bounded string without NUL."""
    return validate_list_text(prefix, "listing prefix")


def _validate_uuid_hex(value: str, what: str) -> str:
    if not isinstance(value, str) or not _UUID_HEX_RE.match(value):
        raise InvalidName(f"{what} {shown(value)} must be a UUID as 32 lowercase hex characters")
    return value


def validate_data_dir(data_dir: str) -> str:
    """A data directory name (the version of an object): a UUID in 32 lowercase hex characters.

    It becomes the path ``<object dir>/__mg.data.<data dir>``, which is renamed into place and
    removed with everything under it, so nothing else may ever pass.
    """
    return _validate_uuid_hex(data_dir, "data dir")


def validate_upload_id(upload_id: str) -> str:
    """An upload ID (a write in progress): a UUID in 32 lowercase hex characters.

    It names the directory ``.minigrid.sys/tmp/<upload id>`` that holds a write until it is
    committed, and that is removed afterwards.
    """
    return _validate_uuid_hex(upload_id, "upload id")


def data_dir_path(object_dir: str, data_dir: str) -> str:
    """The path of data directory ``data_dir`` inside ``object_dir`` (checked, and kept inside)."""
    return safe_join(object_dir, DATA_DIR_PREFIX + validate_data_dir(data_dir))


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
    """Join ``parts`` under ``root`` and refuse any result that escapes it (or holds a NUL)."""
    if any("\x00" in part for part in parts):
        raise InvalidName("a path must not contain NUL")
    root_abs = os.path.abspath(root)
    joined = os.path.abspath(os.path.join(root_abs, *parts))
    if joined != root_abs and not joined.startswith(root_abs + os.sep):
        raise InvalidName(f"path {shown(os.path.join(*parts))} escapes the drive")
    return joined
