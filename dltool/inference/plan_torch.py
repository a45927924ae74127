"""The eval plan (dltool.inference.eval_plan) executed with PIL and torch: how `eval` and `predict`
read an image file into the tensor the model was trained on.

Each step does what torchvision.transforms.v2 does (the same PIL calls, the same torch operations
in the same order), so the result is identical bit for bit. `import torchvision` costs over a
second at start-up, which would triple the time of a one-image `dltool predict`; a list the plan
cannot describe (Pad, a blur, Resize on a tensor) is built by torchvision instead.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from dltool.config.spec import Spec
from dltool.data.draft import decode_size
from dltool.data.transform_lists import transform_specs
from dltool.inference.eval_plan import (
    VALUE_BITS,
    Unplannable,
    compile_steps,
    cropper,
    executable,
    image_mode,
)


def to_image(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, H, W), as torchvision's pil_to_tensor."""
    tensor = torch.as_tensor(np.array(image, copy=True))
    return tensor.view(image.size[1], image.size[0], len(image.getbands())).permute((2, 0, 1))


def _max_value(dtype: torch.dtype) -> int:
    return 2 ** VALUE_BITS[str(dtype).removeprefix("torch.")] - 1


def to_dtype(image: torch.Tensor, dtype: torch.dtype, scale: bool) -> torch.Tensor:
    """torchvision's to_dtype_image for the int->float, float->float, float->int and int->int cases."""
    if image.dtype == dtype:
        return image
    if not scale:
        return image.to(dtype)
    if image.is_floating_point():
        if dtype.is_floating_point:
            return image.to(dtype)
        return image.mul(float(_max_value(dtype)) + 1.0 - 1e-3).to(dtype)
    if dtype.is_floating_point:
        return image.to(dtype).mul_(1.0 / _max_value(image.dtype))
    source, target = (VALUE_BITS[str(d).removeprefix("torch.")] for d in (image.dtype, dtype))
    if source > target:
        return image.bitwise_right_shift(source - target).to(dtype)
    return image.to(dtype).bitwise_left_shift_(target - source)


def _gray(image: Any, channels: int) -> Any:
    """torchvision's rgb_to_grayscale of a tensor (C, H, W)."""
    if image.shape[-3] == 1:
        return image.clone() if channels == 1 else image.repeat(3, 1, 1)
    r, g, b = image.unbind(dim=-3)
    gray = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3).to(image.dtype)
    return gray.expand(image.shape) if channels == 3 else gray


def _pad(image: torch.Tensor, padding: tuple[int, int, int, int]) -> torch.Tensor:
    left, top, right, bottom = padding
    return torch.nn.functional.pad(image, [left, right, top, bottom], value=0.0)


def _to_float(divide_by: float | None, multiply_by: float | None) -> Callable:
    def to_float(image: torch.Tensor) -> torch.Tensor:
        x = image.to(torch.float32)
        if divide_by is not None:
            return x.div_(divide_by)
        return x.mul_(multiply_by) if multiply_by is not None else x

    return to_float


def _normalize(mean: list[float], std: list[float]) -> Callable:
    def normalize(image: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
        s = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
        return image.sub(m).div_(s)

    return normalize


# op -> the step as a function of its fields, for the steps on tensors (eval_plan.PIL_STEPS: on PIL images)
ARRAY_STEPS: dict[str, Callable[[dict], Callable]] = {
    "center_crop": lambda step: cropper(step["size"], _pad),
    "to_array": lambda step: to_image,
    "to_float": lambda step: _to_float(step.get("divide_by"), step.get("multiply_by")),
    "normalize": lambda step: _normalize(step["mean"], step["std"]),
    "gray": lambda step: lambda image: _gray(image, step["channels"]),
    "rgb": lambda step: lambda image: image if image.shape[-3] >= 3 else _gray(image, 3),
    "to_dtype": lambda step: lambda image: to_dtype(image, getattr(torch, step["dtype"]), step["scale"]),
}


class Preprocess:
    """A callable: decoded PIL image -> float tensor (C, H, W), the checkpoint's eval transforms.

    `native` tells whether it runs without torchvision (the list has a plan).
    """

    def __init__(self, specs: Sequence[Spec]):
        self.specs = tuple(specs)
        try:
            self.steps: list[dict] | None = compile_steps(self.specs)
        except Unplannable:
            self.steps = None
        self.native = self.steps is not None
        self._run = executable(self.steps or (), ARRAY_STEPS)
        self._pipeline: Callable | None = None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self.steps is None:
            return self._torchvision(image)
        for step in self._run:
            image = step(image)
        return image

    def _torchvision(self, image: Image.Image) -> torch.Tensor:
        from dltool.data.transforms import build_pipeline, to_float_tensor

        if self._pipeline is None:
            self._pipeline = build_pipeline(self.specs)
        return to_float_tensor(self._pipeline(image))


class ImageReader:
    """Reads an image file as training read it: decoded robustly, converted to the training mode,
    then the eval transforms. One instance serves both `eval` samples and `predict` files."""

    def __init__(self, config: Any, input_shape: Sequence[int]):
        specs = transform_specs(config.data.transforms)[1]
        self.preprocess = Preprocess(specs)
        self.mode = image_mode(config, input_shape, specs)
        self.max_pixels = config.data.max_image_pixels
        self.short_side = decode_size(config.data).short_side

    def __call__(self, path: str) -> torch.Tensor:
        """The model input (C, H, W) for the file at `path`.

        Raises:
            ImageError: the file cannot be read as an image.
        """
        from dltool.data.decode import load_image

        image = load_image(str(path), self.max_pixels, self.short_side)
        if image.mode != self.mode:
            image = image.convert(self.mode)
        return self.preprocess(image)
