"""Eval-time preprocessing shared by `eval` and `predict`: the checkpoint's eval transforms applied
to one decoded image.

The deterministic transforms an eval list holds (Resize, CenterCrop, Grayscale, RGB, ToTensor,
ToImage, PILToTensor, ToDtype, ConvertImageDtype, Normalize, Identity, ToPureTensor) run here on
PIL and torch directly, with the same operations torchvision.transforms.v2 performs, so the
result is identical bit for bit. `import torchvision` costs over a second at start-up, which
would triple the time of a one-image `dltool predict`; a list with any other step (or a step on
an input type not handled here, like Resize on a tensor) is built by torchvision instead.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
from PIL import Image, ImageOps

from dltool.config.spec import Spec
from dltool.data.draft import decode_size
from dltool.data.transform_lists import transform_specs
from dltool.inference.preprocess_numpy import resized_size

# PIL resampling filters for torchvision's InterpolationMode values (torchvision's pil_modes_mapping).
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}

# First parameters that take a sequence, as dltool.data.transforms reads them: `Resize: [28, 28]`.
SEQUENCE_FIRST = {"size"}

# What flows between steps: a PIL image, an integer tensor or a floating tensor.
PIL, INT, FLOAT = "pil", "int", "float"


class Unsupported(Exception):
    """A step this module does not run itself; the whole list goes to torchvision."""


# Value bits of the integer dtypes torchvision's to_dtype scales between (uint16 is left to it).
VALUE_BITS = {torch.uint8: 8, torch.int8: 7, torch.int16: 15, torch.int32: 31, torch.int64: 63}


def _max_value(dtype: torch.dtype) -> int:
    return 2 ** VALUE_BITS[dtype] - 1


def to_image(image: Any) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, H, W), as torchvision's pil_to_tensor."""
    import numpy as np

    tensor = torch.as_tensor(np.array(image, copy=True))
    return tensor.view(image.size[1], image.size[0], len(image.getbands())).permute((2, 0, 1))


def to_dtype(image: torch.Tensor, dtype: torch.dtype, scale: bool) -> torch.Tensor:
    """torchvision's to_dtype_image for the int->float, float->float and float->int cases."""
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
    shift = abs(VALUE_BITS[image.dtype] - VALUE_BITS[dtype])
    if VALUE_BITS[image.dtype] > VALUE_BITS[dtype]:
        return image.bitwise_right_shift(shift).to(dtype)
    return image.to(dtype).bitwise_left_shift_(shift)


def _resize(size: Any = None, interpolation: Any = "bilinear", max_size: int | None = None,
            antialias: bool | None = True) -> Callable:
    if isinstance(size, int):
        size = [size]
    elif isinstance(size, (list, tuple)) and len(size) in (1, 2):
        size = list(size)
    elif not (size is None and isinstance(max_size, int)):
        raise Unsupported("size")
    if len(size or ()) == 2 and max_size is not None:
        raise Unsupported("max_size with two sizes")
    mode = str(getattr(interpolation, "value", interpolation)).lower()
    if mode not in PIL_FILTERS:
        raise Unsupported("interpolation")

    def resize(image: Image.Image) -> Image.Image:
        height, width = resized_size(image.height, image.width, size, max_size)
        if (height, width) == (image.height, image.width):
            return image
        return image.resize((width, height), resample=PIL_FILTERS[mode])

    return _typed(resize, {PIL: PIL})


def _crop_box(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) in (1, 2) and all(isinstance(s, int) for s in size):
        return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    raise Unsupported("size")


def _center_crop(size: Any) -> Callable:
    crop_h, crop_w = _crop_box(size)

    def pad_ltrb(height: int, width: int) -> list[int]:
        return [(crop_w - width) // 2 if crop_w > width else 0, (crop_h - height) // 2 if crop_h > height else 0,
                (crop_w - width + 1) // 2 if crop_w > width else 0, (crop_h - height + 1) // 2 if crop_h > height else 0]

    def anchor(height: int, width: int) -> tuple[int, int]:
        return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))

    def crop_pil(image: Image.Image) -> Image.Image:
        if crop_h > image.height or crop_w > image.width:
            bands = len(image.getbands())
            image = ImageOps.expand(image, border=tuple(pad_ltrb(image.height, image.width)),
                                    fill=0 if bands == 1 else (0,) * bands)
            if (image.height, image.width) == (crop_h, crop_w):
                return image
        top, left = anchor(image.height, image.width)
        return image.crop((left, top, left + crop_w, top + crop_h))

    def crop_tensor(image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if crop_h > height or crop_w > width:
            left, top, right, bottom = pad_ltrb(height, width)
            image = torch.nn.functional.pad(image, [left, right, top, bottom], value=0.0)
            height, width = image.shape[-2:]
            if (height, width) == (crop_h, crop_w):
                return image
        top, left = anchor(height, width)
        return image[..., top:top + crop_h, left:left + crop_w]

    def crop(image: Any) -> Any:
        return crop_pil(image) if isinstance(image, Image.Image) else crop_tensor(image)

    return _typed(crop, {PIL: PIL, INT: INT, FLOAT: FLOAT})


def _grayscale(num_output_channels: int = 1) -> Callable:
    if num_output_channels not in (1, 3):
        raise Unsupported("num_output_channels")

    def gray_pil(image: Image.Image) -> Image.Image:
        image = image.convert("L")
        return image if num_output_channels == 1 else Image.merge("RGB", (image, image, image))

    def gray(image: Any) -> Any:
        return gray_pil(image) if isinstance(image, Image.Image) else _gray_tensor(image, num_output_channels)

    return _typed(gray, {PIL: PIL, INT: INT, FLOAT: FLOAT})


def _gray_tensor(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[-3] == 1:
        return image.clone() if channels == 1 else image.repeat(3, 1, 1)
    r, g, b = image.unbind(dim=-3)
    gray = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3).to(image.dtype)
    return gray.expand(image.shape) if channels == 3 else gray


def _rgb() -> Callable:
    def rgb(image: Any) -> Any:
        if isinstance(image, Image.Image):
            return image.convert(mode="RGB")
        return image if image.shape[-3] >= 3 else _gray_tensor(image, 3)

    return _typed(rgb, {PIL: PIL, INT: INT, FLOAT: FLOAT})


def _to_tensor() -> Callable:
    def to_tensor(image: Any) -> torch.Tensor:
        return to_unit_float(to_image(image) if isinstance(image, Image.Image) else image)

    return _typed(to_tensor, {PIL: FLOAT, INT: FLOAT, FLOAT: FLOAT})


def _to_image() -> Callable:
    return _typed(lambda image: to_image(image) if isinstance(image, Image.Image) else image,
                  {PIL: INT, INT: INT, FLOAT: FLOAT})


def _pil_to_tensor() -> Callable:
    return _typed(to_image, {PIL: INT})


def _to_dtype(dtype: Any = torch.float32, scale: bool = False) -> Callable:
    dtype = _dtype(dtype)
    if not (dtype.is_floating_point or dtype in VALUE_BITS):
        raise Unsupported("dtype")
    kind = FLOAT if dtype.is_floating_point else INT
    return _typed(lambda image: image if isinstance(image, Image.Image) else to_dtype(image, dtype, scale),
                  {PIL: PIL, INT: kind, FLOAT: kind})


def _convert_image_dtype(dtype: Any = torch.float32) -> Callable:
    return _to_dtype(dtype, scale=True)


def _normalize(mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> Callable:
    if not all(std):
        raise Unsupported("std of zero")

    def normalize(image: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
        s = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
        return image.sub(m).div_(s)

    return _typed(normalize, {FLOAT: FLOAT})


def _identity() -> Callable:
    return _typed(lambda image: image, {PIL: PIL, INT: INT, FLOAT: FLOAT})


def _dtype(value: Any) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).removeprefix("torch."), None) if isinstance(value, str) else None
    if not isinstance(found, torch.dtype):
        raise Unsupported("dtype")
    return found


def _typed(step: Callable, flow: dict[str, str]) -> Callable:
    """Attach to `step` what it takes and gives: {input kind: output kind}."""
    step.flow = flow
    return step


STEPS: dict[str, Callable[..., Callable]] = {
    "resize": _resize, "centercrop": _center_crop, "grayscale": _grayscale, "rgb": _rgb,
    "totensor": _to_tensor, "toimage": _to_image, "piltotensor": _pil_to_tensor, "todtype": _to_dtype,
    "convertimagedtype": _convert_image_dtype, "normalize": _normalize, "identity": _identity,
    "topuretensor": _identity,
}


def native_steps(specs: Sequence[Spec]) -> list[Callable]:
    """The list as PIL/torch steps, checked to chain from a PIL image to a tensor.

    Raises:
        Unsupported: a step (or an argument, or the type it would receive) is not handled here.
    """
    steps, kind = [], PIL
    for spec in specs:
        factory = STEPS.get(spec.name.lower())
        if factory is None:
            raise Unsupported(spec.name)
        args = spec.args
        params = list(inspect.signature(factory).parameters)
        if len(args) >= 2 and params and params[0] in SEQUENCE_FIRST and all(isinstance(a, int) for a in args):
            args = (list(args),)
        try:
            inspect.signature(factory).bind(*args, **spec.kwargs)
        except TypeError:
            raise Unsupported(spec.name) from None
        step = factory(*args, **spec.kwargs)
        if kind not in step.flow:
            raise Unsupported(f"{spec.name} on a {kind} input")
        kind = step.flow[kind]
        steps.append(step)
    return steps


class Preprocess:
    """A callable: decoded PIL image -> float tensor (C, H, W), the checkpoint's eval transforms.

    `native` tells whether it runs without torchvision.
    """

    def __init__(self, specs: Sequence[Spec]):
        self.specs = tuple(specs)
        try:
            self._steps: list[Callable] | None = native_steps(self.specs)
        except Unsupported:
            self._steps = None
        self.native = self._steps is not None
        self._pipeline: Callable | None = None

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if self._steps is None:
            return self._torchvision(image)
        for step in self._steps:
            image = step(image)
        return as_float_tensor(image)

    def _torchvision(self, image: Image.Image) -> torch.Tensor:
        from dltool.data.transforms import build_pipeline, to_float_tensor

        if self._pipeline is None:
            self._pipeline = build_pipeline(self.specs)
        return to_float_tensor(self._pipeline(image))


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 / 255 as the classic ToTensor computes it (dltool's ToTensor); others as v2."""
    if image.dtype == torch.uint8:
        return image.to(torch.float32).div(255)
    if image.is_floating_point():
        return image
    return to_dtype(image, torch.float32, True)


def as_float_tensor(image: Any) -> torch.Tensor:
    """The end of every pipeline: a plain float tensor (C, H, W), as dltool.data.transforms gives."""
    return to_unit_float(to_image(image) if isinstance(image, Image.Image) else image)


MODES = {1: "L", 3: "RGB"}


def image_mode(config: Any, input_shape: Sequence[int], specs: Sequence[Spec]) -> str:
    """The PIL mode ('L' or 'RGB') images were converted to before the eval transforms in training.

    As `build_data` chooses it: data.channels, else model.input_shape's channels, else what the
    images were; the model's input channels tell that unless a step (Grayscale, RGB) changes them,
    and then RGB is the conversion that gives the same result for grayscale and colour sources.
    """
    channels = config.data.channels
    declared = config.model.input_shape
    if channels is None and declared and declared[0] in MODES:
        channels = declared[0]
    if channels is None:
        converts = any(spec.name.lower() in ("grayscale", "rgb") for spec in specs)
        channels = input_shape[0] if not converts and input_shape[0] in MODES else 3
    return MODES[channels]


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
