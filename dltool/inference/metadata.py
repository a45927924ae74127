"""The metadata of a model file checked against what dltool itself writes, before any image is read.

An exported file (ONNX or TorchScript) carries `classes`, `preprocess` (a plan, dltool.inference.eval_plan),
`task` and `output`; a checkpoint carries its classes and its eval transforms. A file from elsewhere
may hold anything there: lists of the wrong length, unknown modes or operations, a resize to
100000x100000 that would fill the memory, or JSON nested deeper than Python's recursion limit.
Every field is checked here, and the first wrong one is named in one line.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

from dltool.errors import CheckpointError
from dltool.inference.eval_plan import INTERPOLATIONS, OPS

# PIL's decompression-bomb limit, dltool's default data.max_image_pixels: no resize, crop or pad of
# an eval list may produce more, whatever limit the file itself names.
PIXEL_CAP = 89_478_485
MAX_DEPTH = 8  # dltool's plans nest 4 deep: {"steps": [{"size": [h, w]}]}
MAX_TEXT = 4 << 20  # bytes of one metadata field
MAX_STEPS = 64
MODES = {"L": 1, "RGB": 3}
TASKS = ("classification", "regression")
OUTPUTS = ("softmax", "sigmoid", "probabilities", "log_softmax")


NOT_USED = "the file was not written by `dltool export` or was changed since, so it is not used"


class Invalid(ValueError):
    """A field that is not what dltool writes; the message names it."""


@dataclass
class Metadata:
    """An exported file's metadata, every field checked."""

    classes: list[str]
    task: str
    output: str
    plan: dict


def read_exported(metadata: dict[str, str], source: str) -> Metadata:
    """The checked metadata of an exported file; a file without `output` holds logits (softmax), as
    every checkpoint did before its `output` key.

    Raises:
        CheckpointError: a field is missing, is not JSON, or is not what `dltool export` writes.
    """
    if "classes" not in metadata or "preprocess" not in metadata:
        missing = "classes" if "classes" not in metadata else "preprocess"
        raise CheckpointError(f"{source}: has no dltool metadata ({missing!r}); only files written by "
                              "`dltool export` carry the classes and preprocessing predict needs")
    try:
        classes = parse_json(metadata["classes"], "classes")
        plan = parse_json(metadata["preprocess"], "preprocess")
        task = _choice(metadata.get("task", "classification"), TASKS, "task")
        output = _choice(metadata.get("output", "softmax"), OUTPUTS, "output")
        check_classes(classes, task)
        check_plan(plan)
    except Invalid as exc:
        raise CheckpointError(f"{source}: metadata {exc}; {NOT_USED}") from None
    return Metadata(list(classes), task, output, plan)


def parse_json(text: Any, field: str) -> Any:
    """`text` as JSON, refused before parsing when it is too long or nested too deep."""
    if not isinstance(text, str):
        raise Invalid(f"{field}: not text")
    if len(text) > MAX_TEXT:
        raise Invalid(f"{field}: {len(text)} characters, more than {MAX_TEXT} allowed")
    depth = nesting(text)
    if depth > MAX_DEPTH:
        raise Invalid(f"{field}: JSON nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise Invalid(f"{field}: not JSON ({exc})") from None


def nesting(text: str) -> int:
    """How deep brackets nest in JSON `text`, outside strings (stops counting past MAX_DEPTH)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                return deepest
        elif char in "]}":
            depth -= 1
    return deepest


def _choice(value: Any, allowed: Sequence[str], field: str) -> str:
    if value not in allowed:
        raise Invalid(f"{field}: {_shown(value)} is not one of {', '.join(allowed)}")
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_classes(classes: Any, task: str, outputs: int | None = None, named: bool = True) -> None:
    """A list of class names: strings, one per model output (two for a single output); `named`: a
    classifier's list may not be empty (a checkpoint's may: its model is built without names).

    Raises:
        Invalid: it is not a list of strings, or its length does not match `outputs`.
    """
    if not isinstance(classes, list) or not all(isinstance(name, str) for name in classes):
        raise Invalid(f"classes: {_shown(classes)} is not a list of class names (strings)")
    if named and task == "classification" and not classes:
        raise Invalid("classes: empty, but a classifier needs its class names")
    if outputs is not None and task == "classification" and len(classes) not in (outputs, 2 if outputs == 1 else -1):
        raise Invalid(f"classes: {len(classes)} names, but the model has {outputs} outputs")


def check_plan(plan: Any) -> None:
    """A preprocessing plan as dltool.inference.eval_plan writes it.

    Raises:
        Invalid: the first field that is not.
    """
    if not isinstance(plan, dict):
        raise Invalid(f"preprocess: {_shown(plan)} is not a plan (a JSON object)")
    mode = _choice(plan.get("mode"), tuple(MODES), "preprocess.mode")
    shape = plan.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_positive_int(s) for s in shape)
            and shape[1] * shape[2] <= PIXEL_CAP):
        raise Invalid(f"preprocess.input_shape: {_shown(shape)} is not [channels, height, width] of positive "
                      f"sizes within {PIXEL_CAP} pixels")
    limit = plan.get("max_pixels")
    if limit is not None and not _positive_int(limit):
        raise Invalid(f"preprocess.max_pixels: {_shown(limit)} is not a positive whole number")
    steps = plan.get("steps")
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        raise Invalid(f"preprocess.steps: not a list of at most {MAX_STEPS} steps")
    pixels = min(limit or PIXEL_CAP, PIXEL_CAP)
    channels = MODES[mode]
    for i, step in enumerate(steps):
        channels = _check_step(step, f"preprocess.steps.{i}", pixels, channels)


def _check_step(step: Any, where: str, pixels: int, channels: int) -> int:
    """Check one step; return the channels after it."""
    if not isinstance(step, dict) or step.get("op") not in OPS:
        raise Invalid(f"{where}: {_shown(step)} is not a step; known ops: {', '.join(OPS)}")
    op = step["op"]
    fields = OPS[op]
    extra = [key for key in step if key != "op" and key not in fields]
    missing = [key for key, required in fields.items() if required and key not in step]
    if extra or missing:
        raise Invalid(f"{where}: {op} takes {', '.join(fields) or 'no fields'}; "
                      + (f"unknown {', '.join(map(str, extra))}" if extra else f"missing {', '.join(missing)}"))
    if op == "convert":
        return MODES[_choice(step["mode"], tuple(MODES), f"{where}.mode")]
    if op == "resize":
        _check_resize(step, where, pixels)
    elif op == "center_crop":
        _check_size(step["size"], f"{where}.size", pixels, lengths=(2,))
    elif op == "to_float":
        for key in ("divide_by", "multiply_by"):
            if key in step and not (_number(step[key]) and step[key] > 0):
                raise Invalid(f"{where}.{key}: {_shown(step[key])} is not a positive number")
    elif op == "normalize":
        for key in ("mean", "std"):
            values = step[key]
            if not (isinstance(values, list) and len(values) in (1, channels) and all(_number(v) for v in values)):
                raise Invalid(f"{where}.{key}: {_shown(values)} is not a list of 1 or {channels} numbers")
        if not all(step["std"]):
            raise Invalid(f"{where}.std: a standard deviation of 0")
    return channels


def _check_resize(step: dict, where: str, pixels: int) -> None:
    max_size = step.get("max_size")
    if max_size is not None and not (_positive_int(max_size) and max_size * max_size <= pixels):
        raise Invalid(f"{where}.max_size: {_shown(max_size)} is not a positive size within {pixels} pixels")
    if step["size"] is None:
        if max_size is None:
            raise Invalid(f"{where}.size: null needs a max_size")
    else:
        _check_size(step["size"], f"{where}.size", pixels, lengths=(1, 2))
    _choice(step.get("interpolation", "bilinear"), INTERPOLATIONS, f"{where}.interpolation")


def _check_size(size: Any, where: str, pixels: int, lengths: tuple[int, ...]) -> None:
    if not (isinstance(size, list) and len(size) in lengths and all(_positive_int(s) for s in size)
            and size[0] * size[-1] <= pixels):
        forms = " or ".join({1: "[size]", 2: "[height, width]"}[n] for n in lengths)
        raise Invalid(f"{where}: {_shown(size)} is not {forms} of positive sizes within {pixels} pixels")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# eval transforms whose first argument (or `size`) is an output size, and those that pad
SIZED = {"resize", "centercrop", "randomcrop", "randomresizedcrop", "fivecrop", "tencrop"}
PADDED = {"pad"}


def check_eval_transforms(specs: Sequence[Any], source: str) -> None:
    """A checkpoint's stored eval transforms: every size positive and every padding non-negative,
    neither making images of more than PIXEL_CAP pixels.

    Raises:
        CheckpointError: naming the transform's key in the stored config.
    """
    for spec in specs:
        name = spec.name.lower()
        if name not in SIZED | PADDED:
            continue
        value = spec.kwargs.get("padding" if name in PADDED else "size", spec.args[0] if spec.args else None)
        if len(spec.args) >= 2 and all(isinstance(a, int) for a in spec.args):
            value = list(spec.args)
        max_size = spec.kwargs.get("max_size") if name == "resize" else None
        if not _fits(value, padding=name in PADDED) or (max_size is not None and not _fits(max_size, False)):
            where = spec.key or f"data.transforms.eval ({spec.name})"
            raise CheckpointError(f"{source}: stored config: {where}: {spec.name} size {_shown(value)} is not "
                                  f"positive or makes images of more than {PIXEL_CAP} pixels; the checkpoint "
                                  "is not used")


def _fits(value: Any, padding: bool) -> bool:
    sizes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sizes, (list, tuple)) or not sizes:
        return value is None and not padding  # Resize(size=None, max_size=...) is checked by torchvision
    if not all(_positive_int(s) or (padding and s == 0) for s in sizes):
        return False
    if padding:
        return (2 * max(sizes)) ** 2 <= PIXEL_CAP
    return sizes[0] * sizes[-1] <= PIXEL_CAP
