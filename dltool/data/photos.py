"""The decoded cache for image folders: every file decoded once, at the decode size, kept for later epochs.

The images live in one flat uint8 tensor in shared memory, so DataLoader worker processes read the
same pages (forked, or sent a handle when spawned) instead of each holding a copy. Whether a split
is cached is decided before any pixel is decoded, from the file headers: the decoded size of each
file (dltool.data.draft) summed over the split must fit what is left of the budget,
`data.photo_cache_mb` (default: a quarter of the machine's memory). Beyond it, files are decoded
on every access, as before.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

MB = 2**20
SHM = "/dev/shm"


def default_budget_mb() -> int:
    """A quarter of the machine's physical memory, in MB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 4 * 2**30
    return int(total // 4 // MB)


def shm_free() -> int:
    """Bytes free in the file system shared memory lives in (a tensor larger than that would crash
    the process when its pages are touched); unlimited where there is no such folder."""
    try:
        info = os.statvfs(SHM)
    except OSError:
        return 2**62
    return info.f_bavail * info.f_frsize


class Budget:
    """Bytes the caches of one build may still take (shared by its splits)."""

    def __init__(self, megabytes: int | None):
        self.megabytes = default_budget_mb() if megabytes is None else megabytes
        self.left = self.megabytes * MB

    def take(self, size: int) -> bool:
        """Reserve `size` bytes if they fit (also in the shared-memory file system); False (and
        nothing reserved) if not."""
        if self.megabytes == 0 or size > self.left or size > shm_free():
            return False
        self.left -= size
        return True

    def refusal(self, size: int) -> str:
        """Why a split of `size` decoded bytes is not cached, in words."""
        if self.megabytes == 0:
            return "data.photo_cache_mb: 0"
        if size <= self.left:
            return f"the decoded images need {size / MB:,.0f} MB, over the {shm_free() / MB:,.0f} MB free in {SHM}"
        return f"the decoded images need {size / MB:,.0f} MB, over what is left of data.photo_cache_mb {self.megabytes}"


class PhotoCache:
    """Decoded images as (PIL image, target) items, read from one shared uint8 tensor.

    Image i is `pixels[offsets[i]: offsets[i] + h*w*c]` in (H, W, C) order, of shape `shapes[i]`.
    """

    def __init__(self, pixels: Any, offsets: Sequence[int], shapes: Sequence[tuple[int, int, int]],
                 targets: list, note: str):
        self.pixels, self.offsets, self.shapes = pixels, list(offsets), list(shapes)
        self.targets, self.note = targets, note

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, index: int) -> tuple[Image.Image, Any]:
        h, w, c = self.shapes[index]
        start = self.offsets[index]
        flat = self.pixels.numpy()  # a view of the shared pages in this process
        array = flat[start:start + h * w * c].reshape((h, w) if c == 1 else (h, w, c))
        return Image.fromarray(array, mode="L" if c == 1 else "RGB"), self.targets[index]


def shared_pixels(size: int) -> Any:
    """A flat uint8 tensor of `size` bytes in shared memory."""
    import torch

    return torch.empty(max(1, size), dtype=torch.uint8).share_memory_()


def put(flat: np.ndarray, start: int, room: int, image: Image.Image) -> tuple[int, int, int] | None:
    """Copy `image` into `flat[start:start + room]`; its (H, W, C), or None when it does not fit."""
    array = np.asarray(image)
    if array.size > room:
        return None
    flat[start:start + array.size] = array.reshape(-1)
    return (array.shape[0], array.shape[1], 1 if array.ndim == 2 else array.shape[2])
