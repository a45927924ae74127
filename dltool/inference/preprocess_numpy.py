"""A preprocessing plan (dltool.inference.plan) run with PIL and numpy alone: what an exported
model needs to classify a file without torch or torchvision.

Each operation does what dltool.inference.preprocess does with torch (the same PIL calls for resizing,
cropping and conversion; float32 arithmetic in the same order), so the arrays match the torch eval
transforms to within 1e-6 per pixel.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from dltool.errors import CheckpointError, ImageError

# PIL resampling filters for torchvision's InterpolationMode values (as dltool.inference.preprocess.PIL_FILTERS).
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}


class NumpyPreprocess:
    """A callable: file path -> float32 array (C, H, W), as the checkpoint's eval transforms give it."""

    def __init__(self, plan: dict, source: str = "model file"):
        try:
            self.mode = plan["mode"]
            self.max_pixels = plan.get("max_pixels")
            self.short_side = plan.get("short_side")  # absent in files exported before reduced decoding
            self.input_shape = tuple(plan["input_shape"])
            self.steps = [_step(step) for step in plan["steps"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: its preprocess metadata is not a dltool plan ({exc})") from None

    def __call__(self, path: str) -> np.ndarray:
        """The model input for the file at `path`.

        Raises:
            ImageError: the file cannot be read as an image.
        """
        from dltool.data.decode import load_image

        image: Any = load_image(str(path), self.max_pixels, self.short_side)
        if image.mode != self.mode:
            image = image.convert(self.mode)
        for step in self.steps:
            image = step(image)
        return image


def _step(step: dict) -> Callable[[Any], Any]:
    op = step["op"]
    if op == "convert":
        return lambda image: image.convert(step["mode"])
    if op == "resize":
        return _resize(step["size"], step.get("max_size"), PIL_FILTERS[step.get("interpolation", "bilinear")])
    if op == "center_crop":
        return _center_crop(*step["size"])
    if op == "to_array":
        return to_array
    if op == "to_float":
        return _to_float(step.get("divide_by"), step.get("multiply_by"))
    if op == "normalize":
        mean = np.asarray(step["mean"], dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(step["std"], dtype=np.float32).reshape(-1, 1, 1)
        return lambda x: (x - mean) / std
    raise ValueError(f"unknown step {op!r}")


def to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 array (C, H, W), as torchvision's pil_to_tensor."""
    array = np.array(image, copy=True)
    return array.reshape(image.size[1], image.size[0], len(image.getbands())).transpose(2, 0, 1)


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


def _resize(size: list[int] | None, max_size: int | None, resample: int) -> Callable:
    def resize(image: Image.Image) -> Image.Image:
        height, width = resized_size(image.height, image.width, size, max_size)
        if (height, width) == (image.height, image.width):
            return image
        return image.resize((width, height), resample=resample)

    return resize


def _center_crop(crop_h: int, crop_w: int) -> Callable:
    """torchvision's center_crop: zero padding where the input is smaller, then the centred box."""

    def pad_ltrb(height: int, width: int) -> tuple[int, int, int, int]:
        return ((crop_w - width) // 2 if crop_w > width else 0, (crop_h - height) // 2 if crop_h > height else 0,
                (crop_w - width + 1) // 2 if crop_w > width else 0, (crop_h - height + 1) // 2 if crop_h > height else 0)

    def crop(image: Any) -> Any:
        is_pil = isinstance(image, Image.Image)
        height, width = (image.height, image.width) if is_pil else image.shape[-2:]
        if crop_h > height or crop_w > width:
            left, top, right, bottom = pad_ltrb(height, width)
            if is_pil:
                bands = len(image.getbands())
                image = ImageOps.expand(image, border=(left, top, right, bottom), fill=0 if bands == 1 else (0,) * bands)
            else:
                image = np.pad(image, ((0, 0), (top, bottom), (left, right)))
            height, width = (image.height, image.width) if is_pil else image.shape[-2:]
            if (height, width) == (crop_h, crop_w):
                return image
        top, left = round((height - crop_h) / 2.0), round((width - crop_w) / 2.0)
        if is_pil:
            return image.crop((left, top, left + crop_w, top + crop_h))
        return image[..., top:top + crop_h, left:left + crop_w]

    return crop


def _to_float(divide_by: float | None, multiply_by: float | None) -> Callable[[np.ndarray], np.ndarray]:
    def to_float(array: np.ndarray) -> np.ndarray:
        x = array.astype(np.float32)
        if divide_by is not None:
            return x / np.float32(divide_by)
        if multiply_by is not None:
            return x * np.float32(multiply_by)
        return x

    return to_float


def checked_input(x: Any, input_shape: Sequence[int], path: str) -> Any:
    """`x` (a tensor or an array) if the model takes its shape.

    Raises:
        ImageError: a shape after the eval transforms that the model does not take.
    """
    if tuple(x.shape) != tuple(input_shape):
        raise ImageError(f"{path}: gives an input of shape {list(x.shape)} after the run's eval transforms, "
                         f"but the model takes {list(input_shape)} (add a Resize to data.transforms.eval)")
    return x
