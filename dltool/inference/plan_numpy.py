"""The eval plan (dltool.inference.eval_plan) an exported file carries, executed with PIL and numpy
alone: what an exported model needs to classify a file without torch or torchvision.

The PIL steps are the ones dltool.inference.plan_torch runs; the array steps do its float32
arithmetic in the same order, so the arrays match the torch eval transforms to within 1e-6 per pixel.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image

from dltool.errors import CheckpointError
from dltool.inference.eval_plan import cropper, executable


class NumpyPreprocess:
    """A callable: file path -> float32 array (C, H, W), as the checkpoint's eval transforms give it."""

    def __init__(self, plan: dict, source: str = "model file"):
        try:
            self.mode = plan["mode"]
            self.max_pixels = plan.get("max_pixels")
            self.short_side = plan.get("short_side")  # absent in files exported before reduced decoding
            self.input_shape = tuple(plan["input_shape"])
            self.steps = executable(plan["steps"], ARRAY_STEPS)
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


def to_array(image: Image.Image) -> np.ndarray:
    """PIL image -> uint8 array (C, H, W), as torchvision's pil_to_tensor."""
    array = np.array(image, copy=True)
    return array.reshape(image.size[1], image.size[0], len(image.getbands())).transpose(2, 0, 1)


def _pad(array: np.ndarray, padding: tuple[int, int, int, int]) -> np.ndarray:
    left, top, right, bottom = padding
    return np.pad(array, ((0, 0), (top, bottom), (left, right)))


def _to_float(divide_by: float | None, multiply_by: float | None) -> Callable[[np.ndarray], np.ndarray]:
    def to_float(array: np.ndarray) -> np.ndarray:
        x = array.astype(np.float32)
        if divide_by is not None:
            return x / np.float32(divide_by)
        return x * np.float32(multiply_by) if multiply_by is not None else x

    return to_float


def _normalize(mean: list[float], std: list[float]) -> Callable[[np.ndarray], np.ndarray]:
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return lambda x: (x - m) / s


# op -> the step as a function of its fields, for the steps on arrays (eval_plan.PIL_STEPS: on PIL
# images); together, the steps an exported file may hold (eval_plan.OPS)
ARRAY_STEPS: dict[str, Callable[[dict], Callable]] = {
    "center_crop": lambda step: cropper(step["size"], _pad),
    "to_array": lambda step: to_array,
    "to_float": lambda step: _to_float(step.get("divide_by"), step.get("multiply_by")),
    "normalize": lambda step: _normalize(step["mean"], step["std"]),
}
