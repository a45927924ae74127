"""The one walk over a folder of image files (ImageFolder's class folders, predict's folders): links
are followed, but never into a folder already visited, so a symlink loop (`a/up -> ..`) ends; the
walk is capped in entries and depth, so a class folder linked to /usr or /proc ends in one line
instead of minutes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from dltool.errors import DataError

# far above any image dataset's files and nesting, far below a walk of a system folder
MAX_ENTRIES = 1_000_000
MAX_DEPTH = 32
KINDS = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
         (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


def special_kind(mode: int) -> str | None:
    """What a file of `mode` (st_mode) is when it is no regular file or folder: reading a FIFO blocks
    and a device never ends, so neither is ever opened as an image or written over as an output."""
    return next((kind for test, kind in KINDS if test(mode)), None)


@dataclass
class Walk:
    """The image files found (sorted within each folder) and the links not followed, as (link, reason)."""

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def walk_images(folder: str | Path, extensions: tuple[str, ...], max_entries: int = MAX_ENTRIES,
                max_depth: int = MAX_DEPTH) -> Walk:
    """Image files under `folder` (hidden names skipped), depth first in name order.

    Args:
        folder: the folder to walk.
        extensions: lower-case suffixes with their dot.
        max_entries: files and folders looked at before the walk gives up.
        max_depth: folders nested below `folder` before the walk gives up.

    Raises:
        DataError: more than `max_entries` entries, or folders nested deeper than `max_depth`.
    """
    walk = Walk()
    top = os.fspath(folder)
    visited = {_identity(top): top}
    pending = [(top, 0)]
    seen = 0
    while pending:
        path, depth = pending.pop()
        entries = _entries(path)
        seen += len(entries)
        if seen > max_entries:
            raise DataError(f"{top}: more than {max_entries:,} files and folders under it (a link to a system "
                            "folder?); point the dataset at a folder of images")
        subfolders = []
        for entry in entries:
            if _is_dir(entry):
                subfolders.append(entry)
            elif entry.name.lower().endswith(extensions):
                kind = None if _is_file(entry) else _kind_of(entry)
                if kind is None:
                    walk.files.append(entry.path)
                else:
                    walk.skipped.append((entry.path, f"a {kind}, not an image file; not read"))
        for entry in reversed(subfolders):  # popped in name order
            key = _identity(entry.path)
            if key is None:
                continue  # gone, or no permission to look: it holds no readable image
            if key in visited:
                walk.skipped.append((entry.path, f"a link back to {visited[key]}, already scanned; not followed"))
                continue
            if depth + 1 > max_depth:
                raise DataError(f"{entry.path}: folders nested more than {max_depth} deep under {top}; "
                                "point the dataset at a folder of images")
            visited[key] = entry.path
            pending.append((entry.path, depth + 1))
    return walk


def _entries(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as found:
            return sorted((e for e in found if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return []  # a folder that cannot be listed holds no readable image


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link whose target may not be looked at
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _kind_of(entry: os.DirEntry) -> str | None:
    try:
        return special_kind(entry.stat().st_mode) or "broken link"
    except OSError:
        return "broken link"


def _identity(path: str) -> tuple[int, int] | None:
    """A folder's (device, inode), what tells that two paths reach the same folder."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
