"""Walking a volume directory in key order, for one drive's page of a listing.

Keys map to directories (see :mod:`storage.names`), so a plain directory walk does not come
out in key order: ``a-b`` sorts before ``a/c`` even though ``a`` is listed first. At each
level the walk therefore orders an object ``N`` by ``N`` and its subtree by ``N/``, which gives
exactly the order of the full keys.

With a delimiter, keys collapse into common prefixes; a subtree that lies wholly inside one
common prefix is reported without being entered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from storage.drive import ListEntry, ListPage
from storage.errors import FileCorrupt
from storage.meta import ObjectMeta, decode_meta
from storage.names import DIR_META_FILE, META_FILE, RESERVED_PREFIX

_OBJECT, _DIR_OBJECT, _TREE = 0, 1, 2


def collapse(key: str, prefix: str, delimiter: str) -> tuple[str, bool]:
    """The listing entry for ``key``: itself, or its common prefix when it has a delimiter."""
    if delimiter:
        found = key.find(delimiter, len(prefix))
        if found >= 0:
            return key[: found + len(delimiter)], True
    return key, False


def _read_meta(path: str) -> ObjectMeta | None:
    try:
        with open(path, "rb") as handle:
            return decode_meta(handle.read()).for_listing()
    except (OSError, FileCorrupt):
        return None


def _walk(
    directory: str, rel: str, prefix: str, delimiter: str, start_after: str
) -> Iterator[ListEntry]:
    items: list[tuple[str, int, str]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(RESERVED_PREFIX) or not entry.is_dir(follow_symlinks=False):
                    continue
                key = rel + name
                tree = key + "/"
                if key.startswith(prefix) and os.path.exists(os.path.join(entry.path, META_FILE)):
                    items.append((key, _OBJECT, entry.path))
                if tree.startswith(prefix) or prefix.startswith(tree):
                    if tree.startswith(prefix) and os.path.exists(
                        os.path.join(entry.path, DIR_META_FILE)
                    ):
                        items.append((tree, _DIR_OBJECT, entry.path))
                    if start_after < tree or start_after.startswith(tree):
                        items.append((tree, _TREE, entry.path))
    except (FileNotFoundError, NotADirectoryError):
        return
    items.sort()
    for key, kind, path in items:
        if kind == _TREE:
            common, whole = _subtree_prefix(key, prefix, delimiter)
            if whole:
                # Only a subtree holding at least one object makes a common prefix.
                if any(True for _ in _walk(path, key, key, "", "")):
                    yield ListEntry(name=common, is_prefix=True)
            else:
                yield from _walk(path, key, prefix, delimiter, start_after)
            continue
        meta_name = META_FILE if kind == _OBJECT else DIR_META_FILE
        yield ListEntry(name=key, meta=_read_meta(os.path.join(path, meta_name)))


def _subtree_prefix(tree: str, prefix: str, delimiter: str) -> tuple[str, bool]:
    """When every key under ``tree`` collapses to one common prefix, return it."""
    if not delimiter or len(tree) <= len(prefix):
        return "", False
    found = tree.find(delimiter, len(prefix))
    if found >= 0 and found + len(delimiter) <= len(tree):
        return tree[: found + len(delimiter)], True
    return "", False


def walk_page(
    volume_dir: str, prefix: str, delimiter: str, start_after: str, limit: int
) -> ListPage:
    """Up to ``limit`` entries after ``start_after`` under ``prefix``.

    Keys are collapsed into common prefixes at ``delimiter`` when one is given.
    """
    entries: list[ListEntry] = []
    last = ""
    for entry in _walk(volume_dir, "", prefix, delimiter, start_after):
        name, is_prefix = collapse(entry.name, prefix, delimiter)
        if name <= start_after or (is_prefix and name == last):
            continue
        if len(entries) == limit:
            return ListPage(entries=entries, truncated=True)
        entries.append(entry if not is_prefix else ListEntry(name=name, is_prefix=True))
        last = name
    return ListPage(entries=entries, truncated=False)
