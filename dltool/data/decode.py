"""Robust image decoding: any file a phone, scanner or editor writes -> an 8-bit 'L' or 'RGB' image.

EXIF orientation is applied; alpha is composited over black; palette, CMYK, 1-bit and the other
modes are converted; 16-bit and 32-bit images are scaled to the 8-bit range (not clipped). A pixel
limit guards against decompression bombs. Files are only ever opened for reading.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dltool.data.draft import draft, shrink
from dltool.data.walk import special_kind
from dltool.errors import ImageError, first_line

SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
WIDE = SIXTEEN_BIT | {"I", "F"}


@dataclass(frozen=True)
class Header:
    """What opening a file without decoding it tells: format, size and mode."""

    format: str
    width: int
    height: int
    mode: str


def read_header(path: str, max_pixels: int) -> Header:
    """Open `path` without decoding its pixels.

    Raises:
        ImageError: empty, unreadable, not an image, or larger than `max_pixels`.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror or exc})") from None
    kind = special_kind(info.st_mode)
    if kind is not None:  # never opened: a FIFO blocks the reader, /dev/zero never ends
        raise ImageError(f"{path}: a {kind}, not an image file")
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(f"{path}: a folder, not an image file")
    size = info.st_size
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    with _opened(path, max_pixels) as image:
        return Header(image.format or "?", image.width, image.height, image.mode)


def load_image(path: str, max_pixels: int, short_side: int | None = None) -> Image.Image:
    """Decode `path` into an upright 8-bit 'L' (grayscale sources) or 'RGB' image: in full, or, given
    `short_side`, a JPEG reduced to it (dltool.data.draft: drafted, then resized); other formats
    are decoded in full.

    Raises:
        ImageError: the file is empty, truncated, not an image, or has more than `max_pixels` pixels.
    """
    read_header(path, max_pixels)
    with _opened(path, max_pixels) as image, warnings.catch_warnings():
        # Pillow warns of damaged metadata (EXIF, TIFF tags) in files whose pixels still decode:
        # the file is used, and a warning per file would flood stderr
        warnings.simplefilter("ignore", UserWarning)
        reduce = short_side is not None and image.format == "JPEG"
        if reduce:
            draft(image, short_side)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot decode ({first_line(exc)})") from None
        image = to_8bit(ImageOps.exif_transpose(image))
        return shrink(image, short_side) if reduce else image


class _opened:
    """Image.open with the pixel limit and one error type; closes the file on exit."""

    def __init__(self, path: str, max_pixels: int):
        self.path, self.max_pixels = path, max_pixels
        self.image: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                warnings.simplefilter("ignore", UserWarning)  # damaged metadata: see load_image
                self.image = Image.open(self.path)
        except UnidentifiedImageError:
            raise ImageError(f"{self.path}: not an image (no known image format)") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{self.path}: too many pixels for Pillow's decompression-bomb guard "
                             f"({first_line(exc)})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{self.path}: cannot open ({first_line(exc)})") from None
        pixels = self.image.width * self.image.height
        if pixels > self.max_pixels:
            self.image.close()
            raise ImageError(f"{self.path}: {self.image.width}x{self.image.height} = {pixels} pixels is over "
                             f"data.max_image_pixels={self.max_pixels} (a guard against decompression bombs)")
        return self.image

    def __exit__(self, *exc_info: object) -> None:
        if self.image is not None:
            self.image.close()


def to_8bit(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit 'L' (if the source has no colour) or 'RGB'."""
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode in WIDE:
        return Image.fromarray(_scale_wide(np.asarray(image), mode), mode="L")
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "RGB")
        mode = image.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _flatten_alpha(image)
    return image.convert("RGB")


def _scale_wide(pixels: np.ndarray, mode: str) -> np.ndarray:
    """16-bit values map 0..65535 -> 0..255; 32-bit ints and floats scale by their range."""
    values = pixels.astype(np.float64)
    if mode in SIXTEEN_BIT or (mode == "I" and values.min(initial=0) >= 0 and values.max(initial=0) <= 65535):
        scaled = values / 257.0
    elif mode == "F" and values.min(initial=0) >= 0 and values.max(initial=0) <= 1:
        scaled = values * 255.0
    else:
        low, high = values.min(initial=0), values.max(initial=0)
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite over black: transparent pixels become background, not whatever colour they hid."""
    gray = image.mode in ("LA", "La")
    image = image.convert("LA" if gray else "RGBA")
    target = "L" if gray else "RGB"
    background = Image.new(target, image.size, 0)
    background.paste(image.convert(target), mask=image.getchannel("A"))
    return background
