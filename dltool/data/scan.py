"""The scan before training: every image file is checked once, and the broken ones are set aside.

Each file is decoded in full: a file can open, fit the pixel limit and end the way a complete file
of its format ends, and still hold pixel data that does not decode (a flipped bit in a PNG or JPEG
stream). Only a full decode finds those before training, instead of in the middle of an epoch.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from dltool.data.decode import load_image
from dltool.data.sources import RawSplit
from dltool.errors import ImageError


class DecodedFiles:
    """Image files as (image, target) items, decoded on access."""

    def __init__(self, paths: list[str], targets: list, max_pixels: int):
        self.paths, self.targets, self.max_pixels = paths, targets, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        return load_image(self.paths[index], self.max_pixels), self.targets[index]


def check_file(path: str, max_pixels: int) -> tuple[str | None, str | None]:
    """(mode, None) for a usable image file, (None, reason) for a broken one."""
    try:
        return load_image(path, max_pixels).mode, None
    except ImageError as exc:
        return None, str(exc).removeprefix(f"{path}: ")


def scan_split(raw: RawSplit, max_pixels: int) -> tuple[RawSplit, list[tuple[str, str]]]:
    """Keep the usable files of a file split; return it (items ready to decode) and the bad files.

    The returned split's `modes` holds each kept file's mode, for choosing the channel count.
    """
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: check_file(p, max_pixels), raw.paths))
    keep = [i for i, (mode, _) in enumerate(results) if mode is not None]
    bad = [(raw.paths[i], reason) for i, (mode, reason) in enumerate(results) if mode is None]
    paths = [raw.paths[i] for i in keep]
    targets = [raw.targets[i] for i in keep]
    scanned = RawSplit(DecodedFiles(paths, targets, max_pixels), targets, [raw.keys[i] for i in keep],
                       raw.classes, paths=paths, modes=[results[i][0] for i in keep])
    return scanned, bad
