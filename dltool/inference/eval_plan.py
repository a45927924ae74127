"""A checkpoint's eval preprocessing described once: the eval transform list compiled to typed
steps that each runtime executes (dltool.inference.plan_torch with PIL and torch,
dltool.inference.plan_numpy with PIL and numpy) and that exported model files carry.

A plan is a JSON-ready dict: the PIL `mode` images are converted to after decoding (as training
converted them), `channels`, the model's `input_shape`, `max_pixels` (the decoding limit),
`short_side` (images decoded reduced to it, as dltool.data.draft does; null or absent: in full) and
`steps`, from a decoded PIL image to a float (C, H, W) array:

    {"op": "convert", "mode": "L"|"RGB"}              PIL conversion
    {"op": "resize", "size": [h, w] | [short] | null, "max_size": n | null, "interpolation": "bilinear"}
    {"op": "center_crop", "size": [h, w]}             zero-padded where the image is smaller
    {"op": "to_array"}                                uint8 (C, H, W)
    {"op": "to_float", "divide_by": 255} | {"op": "to_float", "multiply_by": 1/255} | {"op": "to_float"}
    {"op": "normalize", "mean": [...], "std": [...]}  (x - mean) / std per channel

Those are the operations an exported file may hold (OPS). Three more run in torch only, so an
eval list that needs them is run natively by `eval` and `predict` but refused by `dltool export`,
naming the step: {"op": "gray", "channels": 1|3} and {"op": "rgb"} (Grayscale and RGB on an
array) and {"op": "to_dtype", "dtype": "float64", "scale": false} (torchvision's to_dtype between
dtypes other than uint8 -> float32). A list with any other step has no plan: torch hands it to
torchvision, export refuses it.

The rules every runtime shares (CenterCrop's padding and window here; Resize's output size in
dltool.data.draft, which decodes photos at the size a Resize needs) and the PIL half of the steps
are written here once.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from PIL import Image, ImageOps

from dltool.config.spec import Spec
from dltool.data.draft import decode_size, resized_size
from dltool.errors import DltoolError

# PIL resampling filters for torchvision's InterpolationMode values (torchvision's pil_modes_mapping).
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}
INTERPOLATIONS = tuple(PIL_FILTERS)
# The steps an exported file may hold: op -> {field: required}.
OPS: dict[str, dict[str, bool]] = {
    "convert": {"mode": True},
    "resize": {"size": True, "max_size": False, "interpolation": False},
    "center_crop": {"size": True},
    "to_array": {},
    "to_float": {"divide_by": False, "multiply_by": False},
    "normalize": {"mean": True, "std": True},
}
TO_PIL = "only on a PIL image (put it before ToTensor)"
TORCH_ONLY = {"gray": TO_PIL, "rgb": TO_PIL, "to_dtype": "only uint8 images and float32 tensors are exported"}

# What flows between steps: a PIL image, else the dtype name of an array (C, H, W).
PIL = "pil"
# Value bits of the integer dtypes torchvision's to_dtype scales between (uint16 is left to it).
VALUE_BITS = {"uint8": 8, "int8": 7, "int16": 15, "int32": 31, "int64": 63}
FLOATS = ("float16", "bfloat16", "float32", "float64")
DTYPE_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "short": "int16", "int": "int32",
                 "long": "int64"}
MODES = {1: "L", 3: "RGB"}


class Unplannable(DltoolError):
    """An eval transform that the steps cannot describe (or, for an export, that a file cannot carry)."""


def build_plan(config: Any, input_shape: Sequence[int]) -> dict:
    """The plan an exported file carries, for a checkpoint's Config and input shape.

    Raises:
        Unplannable: a step of data.transforms.eval (or its arguments) has no plain-data form.
    """
    from dltool.data.transform_lists import transform_specs

    specs = transform_specs(config.data.transforms)[1]
    mode = image_mode(config, input_shape, specs)
    return {"mode": mode, "channels": len(mode), "input_shape": list(input_shape),
            "max_pixels": config.data.max_image_pixels, "short_side": decode_size(config.data).short_side,
            "steps": compile_steps(specs, exported=True)}


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


def compile_steps(specs: Sequence[Spec], exported: bool = False) -> list[dict]:
    """The eval transform list as steps, from a decoded PIL image to a float (C, H, W) array.

    Args:
        specs: the eval transform list.
        exported: allow only the steps an exported file may hold (OPS).

    Raises:
        Unplannable: a transform (or its arguments, or the input it would get) has no step, naming it.
    """
    steps: list[dict] = []
    kind = PIL
    for spec in specs:
        added, kind = _compile(spec, kind)
        refused = [step["op"] for step in added if step["op"] not in OPS] if exported else []
        if refused:
            raise Unplannable(_refused(spec, TORCH_ONLY[refused[0]]))
        steps += added
    if kind == PIL:
        steps.append({"op": "to_array"})
        kind = "uint8"
    return steps + _to_unit_float(kind)[0]


def _compile(spec: Spec, kind: str) -> tuple[list[dict], str]:
    factory = COMPILERS.get(spec.name.lower())
    if factory is None:
        raise Unplannable(_refused(spec, "it has no plain-data form an exported model can carry"))
    args = spec.args
    if len(args) >= 2 and spec.name.lower() in ("resize", "centercrop") and all(isinstance(a, int) for a in args):
        args = (list(args),)  # `Resize: [28, 28]` means size=[28, 28], as dltool.data.transforms reads it
    try:
        inspect.signature(factory).bind(kind, *args, **spec.kwargs)
        return factory(kind, *args, **spec.kwargs)
    except (TypeError, ValueError) as exc:
        raise Unplannable(_refused(spec, str(exc))) from None


def _refused(spec: Spec, why: str) -> str:
    where = f"{spec.key}: " if spec.key else ""
    return f"{where}eval transform {spec.name} cannot be exported: {why}"


def _sizes(size: Any, lengths: tuple[int, ...]) -> list[int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size]
    if not (isinstance(size, (list, tuple)) and len(size) in lengths and all(isinstance(s, int) for s in size)):
        raise ValueError(f"size must be an int or [h, w]; got {size!r}")
    return list(size)


def _resize(kind: str, size: Any = None, interpolation: Any = "bilinear", max_size: int | None = None,
            antialias: bool | None = True) -> tuple[list[dict], str]:
    if kind != PIL:
        raise ValueError(TO_PIL)
    if not (size is None and isinstance(max_size, int)):
        size = _sizes(size, (1, 2))
    mode = str(getattr(interpolation, "value", interpolation)).lower()
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
    if size is not None and len(size) == 2 and max_size is not None:
        raise ValueError("max_size goes with one size only")
    return [{"op": "resize", "size": size, "max_size": max_size, "interpolation": mode}], PIL


def _center_crop(kind: str, size: Any) -> tuple[list[dict], str]:
    size = _sizes(size, (1, 2))
    return [{"op": "center_crop", "size": [size[0], size[-1]]}], kind


def _grayscale(kind: str, num_output_channels: int = 1) -> tuple[list[dict], str]:
    if num_output_channels not in (1, 3):
        raise ValueError(f"num_output_channels must be 1 or 3; got {num_output_channels!r}")
    if kind != PIL:
        return [{"op": "gray", "channels": num_output_channels}], kind
    steps = [{"op": "convert", "mode": "L"}]
    return steps + ([{"op": "convert", "mode": "RGB"}] if num_output_channels == 3 else []), PIL


def _rgb(kind: str) -> tuple[list[dict], str]:
    return [{"op": "convert", "mode": "RGB"} if kind == PIL else {"op": "rgb"}], kind


def _to_unit_float(kind: str) -> tuple[list[dict], str]:
    """ToTensor's scaling: uint8 / 255 as the classic ToTensor computes it, other integers as v2's to_dtype."""
    if kind in FLOATS:
        return [], kind
    if kind == "uint8":
        return [{"op": "to_float", "divide_by": 255}], "float32"
    return [{"op": "to_dtype", "dtype": "float32", "scale": True}], "float32"


def _to_tensor(kind: str) -> tuple[list[dict], str]:
    steps = [{"op": "to_array"}] if kind == PIL else []
    added, kind = _to_unit_float("uint8" if kind == PIL else kind)
    return steps + added, kind


def _to_image(kind: str) -> tuple[list[dict], str]:
    return ([{"op": "to_array"}], "uint8") if kind == PIL else ([], kind)


def dtype_name(value: Any) -> str:
    """The canonical name ('float32', 'uint8', ...) of a dtype given as text or a torch dtype.

    Raises:
        ValueError: a dtype the steps do not convert to.
    """
    name = str(value).removeprefix("torch.")
    name = DTYPE_ALIASES.get(name, name)
    if name not in FLOATS and name not in VALUE_BITS:
        raise ValueError(f"dtype must be one of {', '.join((*FLOATS, *VALUE_BITS))}; got {value!r}")
    return name


def _to_dtype(kind: str, dtype: Any = "float32", scale: bool = False) -> tuple[list[dict], str]:
    dtype = dtype_name(dtype)
    if kind in (PIL, dtype):
        return [], kind
    if kind == "uint8" and dtype == "float32":
        return [{"op": "to_float", "multiply_by": 1.0 / 255} if scale else {"op": "to_float"}], dtype
    return [{"op": "to_dtype", "dtype": dtype, "scale": bool(scale)}], dtype


def _convert_image_dtype(kind: str, dtype: Any = "float32") -> tuple[list[dict], str]:
    return _to_dtype(kind, dtype, scale=True)


def _normalize(kind: str, mean: Any, std: Any, inplace: bool = False) -> tuple[list[dict], str]:
    if kind not in FLOATS:
        raise ValueError("only on a float tensor (put ToTensor before it)")
    if not all(_floats(std)):
        raise ValueError("std must not be 0")
    return [{"op": "normalize", "mean": _floats(mean), "std": _floats(std)}], kind


def _floats(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _identity(kind: str) -> tuple[list[dict], str]:
    return [], kind


# transform name (lower case) -> compiler(input kind, the transform's arguments) -> (steps, output kind)
COMPILERS: dict[str, Callable[..., tuple[list[dict], str]]] = {
    "resize": _resize, "centercrop": _center_crop, "grayscale": _grayscale, "rgb": _rgb,
    "totensor": _to_tensor, "toimage": _to_image, "piltotensor": _to_image, "todtype": _to_dtype,
    "convertimagedtype": _convert_image_dtype, "normalize": _normalize, "identity": _identity,
    "topuretensor": _identity,
}


def crop_window(height: int, width: int, crop_h: int, crop_w: int) -> tuple[tuple[int, int, int, int], int, int]:
    """torchvision's center_crop of a height x width image: the zero padding (left, top, right,
    bottom) where the image is smaller than the crop, then the crop's top and left in the padded image."""
    pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
    padding = (pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2)
    return padding, int(round((height + pad_h - crop_h) / 2.0)), int(round((width + pad_w - crop_w) / 2.0))


def resizer(step: dict) -> Callable[[Image.Image], Image.Image]:
    """A resize step on a PIL image (PIL's filters antialias, as torchvision's Resize on PIL does)."""
    size, max_size = step["size"], step.get("max_size")
    resample = PIL_FILTERS[step.get("interpolation", "bilinear")]

    def resize(image: Image.Image) -> Image.Image:
        height, width = resized_size(image.height, image.width, size, max_size)
        if (height, width) == (image.height, image.width):
            return image
        return image.resize((width, height), resample=resample)

    return resize


def cropper(size: Sequence[int], pad: Callable[[Any, tuple[int, int, int, int]], Any]) -> Callable[[Any], Any]:
    """A center_crop step on a PIL image or on an array (C, H, W) that `pad(array, (left, top,
    right, bottom))` zero-pads in the runtime's own library."""
    crop_h, crop_w = size

    def crop(image: Any) -> Any:
        is_pil = isinstance(image, Image.Image)
        height, width = (image.height, image.width) if is_pil else image.shape[-2:]
        padding, top, left = crop_window(height, width, crop_h, crop_w)
        if is_pil:
            if any(padding):
                bands = len(image.getbands())
                image = ImageOps.expand(image, border=padding, fill=0 if bands == 1 else (0,) * bands)
            return image.crop((left, top, left + crop_w, top + crop_h))
        if any(padding):
            image = pad(image, padding)
        return image[..., top:top + crop_h, left:left + crop_w]

    return crop


# op -> the step as a function of its fields, for the steps every runtime runs with PIL alone
PIL_STEPS: dict[str, Callable[[dict], Callable]] = {
    "convert": lambda step: lambda image: image.convert(step["mode"]),
    "resize": resizer,
}


def executable(steps: Sequence[dict], array_steps: dict[str, Callable[[dict], Callable]]) -> list[Callable]:
    """The steps as functions image -> image: PIL_STEPS here, the others from a runtime's `array_steps`.

    Raises:
        ValueError, KeyError, TypeError: a step that is not one of theirs, or not with their fields.
    """
    functions = []
    for step in steps:
        op = step["op"]
        build = PIL_STEPS.get(op) or array_steps.get(op)
        if build is None:
            raise ValueError(f"unknown step {op!r}")
        functions.append(build(step))
    return functions
