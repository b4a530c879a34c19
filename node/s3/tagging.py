"""Object tags: the ``x-amz-tagging`` header and the ``Tagging`` document, checked against
S3's rules (at most 10 tags; keys of 1-128 and values of 0-256 Unicode characters, letters,
digits, spaces and ``+ - = . _ : / @``; no duplicate keys; no ``aws:`` prefix)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import parse_qsl
from xml.etree import ElementTree

from node.s3 import errors
from storage.meta import MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, MAX_TAGS

_ALLOWED = re.compile(r"^[\w\s+\-=._:/@]*$", re.UNICODE)
MAX_TAGGING_BODY = 64 * 1024


def invalid_tag(message: str) -> errors.S3Error:
    return errors.S3Error("InvalidTag", message, 400)


def check(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The tags as a map, or the S3 error for the first rule they break."""
    tags: dict[str, str] = {}
    for key, value in pairs:
        if key in tags:
            raise invalid_tag("Cannot provide multiple Tags with the same key")
        if not 1 <= len(key) <= MAX_TAG_KEY_CHARS:
            raise invalid_tag(
                "The TagKey you have provided is invalid: it must be 1-"
                f"{MAX_TAG_KEY_CHARS} characters"
            )
        if len(value) > MAX_TAG_VALUE_CHARS:
            raise invalid_tag(
                "The TagValue you have provided is invalid: it must be at most "
                f"{MAX_TAG_VALUE_CHARS} characters"
            )
        if not _ALLOWED.match(key) or not _ALLOWED.match(value):
            raise invalid_tag(
                "The TagKey or TagValue you have provided has characters S3 does not allow"
            )
        if key.lower().startswith("aws:"):
            raise invalid_tag("Your TagKey cannot be prefixed with aws:")
        tags[key] = value
    if len(tags) > MAX_TAGS:
        raise errors.S3Error("BadRequest", f"Object tags cannot be greater than {MAX_TAGS}", 400)
    return tags


def from_header(header: str) -> dict[str, str]:
    """``x-amz-tagging: k1=v1&k2=v2`` (URL query encoding)."""
    try:
        pairs = parse_qsl(header, keep_blank_values=True, strict_parsing=bool(header))
    except ValueError as exc:
        raise invalid_tag(f"The x-amz-tagging header is not a URL-encoded query: {exc}") from exc
    return check(pairs)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def from_document(document: bytes) -> dict[str, str]:
    """``<Tagging><TagSet><Tag><Key/><Value/></Tag>...</TagSet></Tagging>``."""
    try:
        root = ElementTree.fromstring(document)
    except ElementTree.ParseError as exc:
        raise errors.malformed_xml(f"the Tagging document does not parse: {exc}") from exc
    if _local(root.tag) != "Tagging":
        raise errors.malformed_xml("the request body must be a <Tagging> document")
    tag_sets = [child for child in root if _local(child.tag) == "TagSet"]
    if len(tag_sets) != 1:
        raise errors.malformed_xml("a Tagging document holds one <TagSet>")
    pairs: list[tuple[str, str]] = []
    for tag in tag_sets[0]:
        if _local(tag.tag) != "Tag":
            raise errors.malformed_xml("a <TagSet> holds only <Tag> elements")
        fields = {_local(child.tag): child.text or "" for child in tag}
        if "Key" not in fields or "Value" not in fields:
            raise errors.malformed_xml("every <Tag> needs a <Key> and a <Value>")
        pairs.append((fields["Key"], fields["Value"]))
    return check(pairs)
