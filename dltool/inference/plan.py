"""The eval preprocessing of a checkpoint as plain data, stored inside exported model files.

A plan is a JSON-ready dict: the PIL `mode` images are converted to after decoding (as training
converted them), `channels`, the model's `input_shape`, `max_pixels` (the decoding limit),
`short_side` (images decoded reduced to it, as dltool.data.draft does; null or absent: in full) and
`steps`, the eval transform list compiled to a handful of operations any runtime can reproduce:

    {"op": "convert", "mode": "L"|"RGB"}              PIL conversion
    {"op": "resize", "size": [h, w] | [short] | null, "max_size": n | null, "interpolation": "bilinear"}
    {"op": "center_crop", "size": [h, w]}             zero-padded where the image is smaller
    {"op": "to_array"}                                uint8 (C, H, W)
    {"op": "to_float", "divide_by": 255} | {"op": "to_float", "multiply_by": 1/255} | {"op": "to_float"}
    {"op": "normalize", "mean": [...], "std": [...]}  (x - mean) / std per channel

Every step torchvision-free eval preprocessing runs natively (dltool.inference.preprocess) compiles, except
dtype conversions to anything but float32 and Grayscale/RGB on tensors; those stop the export with
a line naming the step.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

from dltool.config.spec import Spec
from dltool.errors import DltoolError

# What flows between steps, as in dltool.inference.preprocess: a PIL image, a uint8 array, a float array.
PIL, INT, FLOAT = "pil", "int", "float"
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")


class Unplannable(DltoolError):
    """An eval transform that an exported file cannot carry as plain data."""


def build_plan(config: Any, input_shape: Sequence[int]) -> dict:
    """The plan of a checkpoint's Config and input shape.

    Raises:
        Unplannable: a step of data.transforms.eval (or its arguments) has no plain-data form.
    """
    from dltool.data.draft import decode_size
    from dltool.data.transform_lists import transform_specs
    from dltool.inference.preprocess import image_mode

    specs = transform_specs(config.data.transforms)[1]
    mode = image_mode(config, input_shape, specs)
    return {"mode": mode, "channels": len(mode), "input_shape": list(input_shape),
            "max_pixels": config.data.max_image_pixels, "short_side": decode_size(config.data).short_side,
            "steps": compile_steps(specs)}


def compile_steps(specs: Sequence[Spec]) -> list[dict]:
    """The eval transform list as plan steps, from a decoded PIL image to a float32 (C, H, W) array."""
    steps: list[dict] = []
    kind = PIL
    for spec in specs:
        factory = STEPS.get(spec.name.lower())
        if factory is None:
            raise Unplannable(_refused(spec, "it has no plain-data form an exported model can carry"))
        args = spec.args
        if len(args) >= 2 and spec.name.lower() in ("resize", "centercrop") and all(isinstance(a, int) for a in args):
            args = (list(args),)
        try:
            inspect.signature(factory).bind(kind, *args, **spec.kwargs)
            added, kind = factory(kind, *args, **spec.kwargs)
        except (TypeError, ValueError) as exc:
            raise Unplannable(_refused(spec, str(exc))) from None
        steps += added
    if kind == PIL:
        steps.append({"op": "to_array"})
    if kind != FLOAT:
        steps.append({"op": "to_float", "divide_by": 255})
    return steps


def _refused(spec: Spec, why: str) -> str:
    where = f"{spec.key}: " if spec.key else ""
    return f"{where}eval transform {spec.name} cannot be exported: {why}"


def _resize(kind: str, size: Any = None, interpolation: Any = "bilinear", max_size: int | None = None,
            antialias: bool | None = True) -> tuple[list[dict], str]:
    if kind != PIL:
        raise ValueError("only on a PIL image (put it before ToTensor)")
    if isinstance(size, int):
        size = [size]
    if not (size is None and isinstance(max_size, int)) and not (
            isinstance(size, (list, tuple)) and len(size) in (1, 2) and all(isinstance(s, int) for s in size)):
        raise ValueError(f"size must be an int or [h, w]; got {size!r}")
    mode = str(interpolation).lower()
    if mode not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}; got {interpolation!r}")
    if size is not None and len(size) == 2 and max_size is not None:
        raise ValueError("max_size goes with one size only")
    return [{"op": "resize", "size": list(size) if size is not None else None, "max_size": max_size,
             "interpolation": mode}], PIL


def _center_crop(kind: str, size: Any) -> tuple[list[dict], str]:
    if isinstance(size, int):
        size = [size, size]
    if not (isinstance(size, (list, tuple)) and len(size) in (1, 2) and all(isinstance(s, int) for s in size)):
        raise ValueError(f"size must be an int or [h, w]; got {size!r}")
    return [{"op": "center_crop", "size": [size[0], size[-1]]}], kind


def _grayscale(kind: str, num_output_channels: int = 1) -> tuple[list[dict], str]:
    if kind != PIL or num_output_channels not in (1, 3):
        raise ValueError("only on a PIL image, with 1 or 3 output channels")
    steps = [{"op": "convert", "mode": "L"}]
    return steps + ([{"op": "convert", "mode": "RGB"}] if num_output_channels == 3 else []), PIL


def _rgb(kind: str) -> tuple[list[dict], str]:
    if kind != PIL:
        raise ValueError("only on a PIL image (put it before ToTensor)")
    return [{"op": "convert", "mode": "RGB"}], PIL


def _to_tensor(kind: str) -> tuple[list[dict], str]:
    steps = [{"op": "to_array"}] if kind == PIL else []
    return steps + ([{"op": "to_float", "divide_by": 255}] if kind != FLOAT else []), FLOAT


def _to_image(kind: str) -> tuple[list[dict], str]:
    return ([{"op": "to_array"}], INT) if kind == PIL else ([], kind)


def _to_dtype(kind: str, dtype: Any = "float32", scale: bool = False) -> tuple[list[dict], str]:
    if str(dtype).removeprefix("torch.") not in ("float32", "float"):
        raise ValueError(f"only dtype float32 is exported; got {dtype!r}")
    if kind == PIL:
        return [], PIL
    if kind == FLOAT:
        return [], FLOAT
    return [{"op": "to_float", "multiply_by": 1.0 / 255} if scale else {"op": "to_float"}], FLOAT


def _convert_image_dtype(kind: str, dtype: Any = "float32") -> tuple[list[dict], str]:
    return _to_dtype(kind, dtype, scale=True)


def _normalize(kind: str, mean: Any, std: Any, inplace: bool = False) -> tuple[list[dict], str]:
    if kind != FLOAT:
        raise ValueError("only on a float tensor (put ToTensor before it)")
    if not all(_floats(std)):
        raise ValueError("std must not be 0")
    return [{"op": "normalize", "mean": _floats(mean), "std": _floats(std)}], FLOAT


def _floats(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _identity(kind: str) -> tuple[list[dict], str]:
    return [], kind


STEPS: dict[str, Callable[..., tuple[list[dict], str]]] = {
    "resize": _resize, "centercrop": _center_crop, "grayscale": _grayscale, "rgb": _rgb,
    "totensor": _to_tensor, "toimage": _to_image, "piltotensor": _to_image, "todtype": _to_dtype,
    "convertimagedtype": _convert_image_dtype, "normalize": _normalize, "identity": _identity,
    "topuretensor": _identity,
}
