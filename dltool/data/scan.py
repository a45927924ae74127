"""The scan before training: every image file is checked once, and the broken ones are set aside.

Each file is decoded in full: a file can open, fit the pixel limit and end the way a complete file
of its format ends, and still hold pixel data that does not decode (a flipped bit in a PNG or JPEG
stream). Only a full decode finds those before training, instead of in the middle of an epoch.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from dltool.data.decode import load_image, read_header
from dltool.data.draft import decoded_pixels
from dltool.data.photos import MB, Budget, PhotoCache, put, shared_pixels
from dltool.data.sources import RawSplit
from dltool.errors import ImageError


class DecodedFiles:
    """Image files as (image, target) items, decoded on access (at `short_side`, None: in full)."""

    def __init__(self, paths: list[str], targets: list, max_pixels: int, short_side: int | None = None,
                 note: str = ""):
        self.paths, self.targets, self.max_pixels = paths, targets, max_pixels
        self.short_side, self.note = short_side, note

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        return load_image(self.paths[index], self.max_pixels, self.short_side), self.targets[index]


def check_file(path: str, max_pixels: int, short_side: int | None = None) -> tuple[str | None, str | None]:
    """(mode, None) for a usable image file, (None, reason) for a broken one."""
    try:
        return load_image(path, max_pixels, short_side).mode, None
    except ImageError as exc:
        return None, str(exc).removeprefix(f"{path}: ")


def scan_split(raw: RawSplit, max_pixels: int, short_side: int | None = None,
               budget: Budget | None = None) -> tuple[RawSplit, list[tuple[str, str]]]:
    """Keep the usable files of a file split; return it (items ready to decode) and the bad files.

    Files are decoded at `short_side` (None: in full). When the decoded split fits `budget`, the
    images the scan decodes are kept (dltool.data.photos.PhotoCache) instead of decoded again on
    every access. The returned split's `modes` holds each kept file's mode, for choosing the
    channel count.
    """
    with ThreadPoolExecutor(max_workers=4) as pool:
        dimensions = list(pool.map(lambda p: _dimensions(p, max_pixels), raw.paths))
    sizes = [3 * decoded_pixels(*dimension, short_side) for dimension in dimensions]
    size = sum(sizes)
    at = f"at {short_side} px on the short side" if short_side is not None else "in full"
    if budget is not None and budget.take(size):
        pixels = shared_pixels(size)
        offsets, results = _scan_into(pixels.numpy(), raw.paths, sizes, max_pixels, short_side)
    else:
        pixels, offsets = None, []
        why = budget.refusal(size) if budget is not None else "no cache"
        note = f"images decoded {at} on every read, not cached: {why}"
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(lambda p: check_file(p, max_pixels, short_side), raw.paths))
    keep = [i for i, (mode, _) in enumerate(results) if mode is not None]
    bad = [(raw.paths[i], reason) for i, (mode, reason) in enumerate(results) if mode is None]
    paths = [raw.paths[i] for i in keep]
    targets = [raw.targets[i] for i in keep]
    if pixels is not None:
        note = f"images decoded once {at} into a {size / MB:,.1f} MB cache shared with the loader's workers"
        items: Any = PhotoCache(pixels, [offsets[i] for i in keep], [results[i][1] for i in keep], targets, note)
        modes = ["L" if results[i][1][2] == 1 else "RGB" for i in keep]
    else:
        items = DecodedFiles(paths, targets, max_pixels, short_side, note)
        modes = [results[i][0] for i in keep]
    scanned = RawSplit(items, targets, [raw.keys[i] for i in keep], raw.classes, paths=paths, modes=modes)
    return scanned, bad


def _scan_into(flat: Any, paths: list[str], sizes: list[int], max_pixels: int,
               short_side: int | None) -> tuple[list[int], list[tuple[Any, Any]]]:
    """Decode every file into its slot of `flat` (`sizes` bytes each): the slot offsets, and per
    file ("ok", (H, W, C)) or (None, reason)."""
    offsets = [0, *itertools.accumulate(sizes)][:-1]

    def decode(i: int) -> tuple[Any, Any]:
        try:
            image = load_image(paths[i], max_pixels, short_side)
        except ImageError as exc:
            return None, str(exc).removeprefix(f"{paths[i]}: ")
        shape = put(flat, offsets[i], sizes[i], image)
        return ("ok", shape) if shape is not None else (None, "decoded larger than its header says")

    with ThreadPoolExecutor(max_workers=4) as pool:
        return offsets, list(pool.map(decode, range(len(paths))))


def _dimensions(path: str, max_pixels: int) -> tuple[int, int, str]:
    try:
        header = read_header(path, max_pixels)
    except ImageError:
        return 0, 0, "?"
    return header.width, header.height, header.format
