"""Reduced decoding: photos decoded at the size the transforms need, not at the size the camera wrote.

A 3000x2250 photo trained at 224 pixels is shrunk by the first transform anyway. From a config's
transform lists this module works out, once, the smallest short side that still gives every step
the pixels it needs (`decode_size`); a JPEG is then decoded by libjpeg at 1/2, 1/4 or 1/8 of its
size (PIL's `Image.draft`, never below that short side), then resized to it (`shrink`); other
formats are decoded in full, as before. Training, eval, predict and exported models all decode the same way: the size is
part of the eval preprocessing plan.

The need of each list is set by its first step that resizes (a Resize, RandomResizedCrop,
RandomResize or RandomShortestSize); the steps before it must not depend on the pixel scale
(flips, rotations, colour changes, conversions). Anything else first (a crop or pad at the photo's
own pixels, a blur whose kernel counts pixels) needs the full image, and decoding stays full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from PIL import Image

from dltool.config.spec import Spec

# Steps whose result is the same whatever the scale the image was decoded at (before the resize).
NEUTRAL = {
    "randomhorizontalflip", "randomverticalflip", "randomrotation", "colorjitter", "grayscale", "rgb",
    "randomgrayscale", "randomautocontrast", "randomequalize", "randominvert", "randomposterize",
    "randomsolarize", "randomchannelpermutation", "randomphotometricdistort", "totensor", "toimage",
    "piltotensor", "todtype", "convertimagedtype", "normalize", "identity", "topuretensor",
}
FILE_DATASETS = ("imagefolder", "imagelist")
RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop defaults
SCALE = (0.08, 1.0)


@dataclass(frozen=True)
class DecodeSize:
    """How a config decodes its images: `short_side` (None: in full) and why, in words."""

    short_side: int | None
    reason: str

    def describe(self) -> str:
        """One line for `dltool data` and `dltool config`."""
        if self.short_side is None:
            return f"photos decoded in full: {self.reason}"
        return (f"photos decoded at {self.short_side} px on the short side (JPEGs larger than that, drafted "
                f"by libjpeg; other formats in full): {self.reason}")


def decode_size(data: Any) -> DecodeSize:
    """The decode size of a DataConfig: the larger need of its train and eval lists.

    `data.decode: full`, or a list that needs the photo's own pixels, decodes in full.
    """
    from dltool.data.transform_lists import transform_specs

    if data.decode == "full":
        return DecodeSize(None, "data.decode: full")
    train, evaluate = transform_specs(data.transforms)
    needs = []
    for name, specs in (("train", train), ("eval", evaluate)):
        need, why = list_need(specs)
        if need is None:
            return DecodeSize(None, f"data.transforms.{name}: {why}")
        needs.append(need)
    return DecodeSize(max(needs), f"the most the train ({needs[0]} px) and eval ({needs[1]} px) transforms need")


def reads_files(data: Any) -> bool:
    """Whether a DataConfig's dataset is image files (the ones the decode size applies to)."""
    return data.dataset.name.lower() in FILE_DATASETS


def list_need(specs: Sequence[Spec]) -> tuple[int | None, str]:
    """(the short side a transform list needs, why); None when it needs the full image."""
    for spec in specs:
        name = spec.name.lower()
        if name in NEUTRAL:
            continue
        need = _resize_need(name, spec)
        if need is None:
            return None, f"{spec.name} comes before any resizing step and works on the photo's own pixels"
        return need, f"{spec.name}"
    return None, "no step resizes the images"


def _argument(spec: Spec, name: str, position: int, default: Any = None) -> Any:
    if name in spec.kwargs:
        return spec.kwargs[name]
    args = spec.args
    if position == 0 and len(args) >= 2 and all(isinstance(a, int) for a in args):
        return list(args)  # `Resize: [28, 28]` as the seeds write it
    return args[position] if len(args) > position else default


def _sides(size: Any) -> tuple[int, int] | None:
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) in (1, 2) and all(isinstance(s, int) for s in size):
        return size[0], size[-1]
    return None


def _resize_need(name: str, spec: Spec) -> int | None:
    if name == "resize":
        size, max_size = _argument(spec, "size", 0), _argument(spec, "max_size", 2)
        sides = _sides(size)
        if sides is None:
            return max_size if isinstance(max_size, int) and size is None else None
        return max(sides)  # [h, w] stretches: the short side may become either
    if name == "randomresizedcrop":
        return _crop_need(_sides(_argument(spec, "size", 0)), _argument(spec, "scale", 1, SCALE),
                          _argument(spec, "ratio", 2, RATIO))
    if name == "randomresize":
        high = _argument(spec, "max_size", 1)
        return high if isinstance(high, int) else None
    if name == "randomshortestsize":
        low = _argument(spec, "min_size", 0)
        low = [low] if isinstance(low, int) else low
        return max(low) if isinstance(low, (list, tuple)) and low and all(isinstance(s, int) for s in low) else None
    return None


def _crop_need(sides: tuple[int, int] | None, scale: Any, ratio: Any) -> int | None:
    """The short side at which RandomResizedCrop's smallest crop still has its output's pixels.

    A crop of area fraction s and aspect r (w/h) of a square image of side S is S*sqrt(s*r) wide
    and S*sqrt(s/r) high; a longer image only has more pixels. So S >= h*sqrt(r_max/s_min) and
    S >= w/sqrt(r_min*s_min).
    """
    try:
        low, r_min, r_max = float(min(scale)), float(min(ratio)), float(max(ratio))
    except (TypeError, ValueError):
        return None
    if sides is None or not (low > 0 and r_min > 0):
        return None
    h, w = sides
    return math.ceil(max(h * math.sqrt(r_max / low), w / math.sqrt(r_min * low)) - 1e-9)


def draft(image: Image.Image, short_side: int) -> None:
    """Ask libjpeg for the largest 1/2, 1/4 or 1/8 scale that keeps both sides >= `short_side`.
    Call on a freshly opened JPEG, before it is loaded."""
    if min(image.size) > short_side:
        image.draft(None, (short_side, short_side))


def shrink(image: Image.Image, short_side: int) -> Image.Image:
    """`image` resized (bilinear, antialiased) so its short side is `short_side`, when it is larger;
    the long side as torchvision's Resize(short_side) computes it."""
    if min(image.size) <= short_side:
        return image
    height, width = resized_size(image.height, image.width, [short_side], None)
    return image.resize((width, height), resample=Image.BILINEAR)


def decoded_pixels(width: int, height: int, image_format: str, short_side: int | None) -> int:
    """Pixels of a width x height image of `image_format` once decoded at `short_side` (an upper
    bound: drafting may round the long side one pixel up)."""
    if short_side is None or image_format != "JPEG" or min(width, height) <= short_side:
        return width * height
    return short_side * (max(resized_size(height, width, [short_side], None)) + 1)


def resized_size(height: int, width: int, size: list[int] | None, max_size: int | None) -> tuple[int, int]:
    """The (height, width) torchvision's Resize gives an image of that size."""
    short, long = (width, height) if width <= height else (height, width)
    if size is None:
        new_short, new_long = int(max_size * short / long), max_size
    elif len(size) == 1:
        new_short, new_long = size[0], int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
    else:
        return size[0], size[1]
    return (new_long, new_short) if width <= height else (new_short, new_long)
