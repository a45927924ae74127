"""Layer-by-layer shapes, parameter counts and mult-adds: collected with forward hooks, rendered apart.

Mult-adds are counted as torchinfo counts them, on layers without children: a convolution costs
its parameter count times the output's batch and spatial size (channels already sit in the
weight); any other layer with a weight or bias costs its parameter count per batch row; layers
without parameters cost nothing.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn


@dataclass
class ShapeRow:
    """One layer: position, module name (as in the state_dict), type, output shape with batch dim."""

    index: int
    name: str
    type: str
    output_shape: list[int]
    params: int
    trainable_params: int
    mult_adds: int
    depth: int = field(default=1, repr=False)
    arguments: str = ""  # what the layer was built with, defaults left out, e.g. "1, 6, kernel_size=5"


@dataclass
class ShapeReport:
    input_shape: list[int]
    rows: list[ShapeRow]
    total_params: int
    trainable_params: int
    total_mult_adds: int
    param_bytes: int

    def to_json(self) -> dict:
        """The `shapes --json` document (docs/outputs.md)."""
        layers = [{k: v for k, v in asdict(row).items() if k != "depth"} for row in self.rows]  # arguments last
        return {"input_shape": self.input_shape, "layers": layers, "total_params": self.total_params,
                "trainable_params": self.trainable_params, "total_mult_adds": self.total_mult_adds}


def measure(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, depth: int | None = None) -> ShapeReport:
    """A ShapeReport for an already built model."""
    rows, mult_adds = _run(model, input_shape, batch_size, depth)
    params = list(model.parameters())
    return ShapeReport(
        input_shape=[batch_size, *input_shape], rows=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        total_mult_adds=mult_adds,
        param_bytes=sum(p.numel() * p.element_size() for p in params))


def module_rows(model: nn.Module, input_shape: Sequence[int], batch_size: int = 1,
                depth: int | None = None) -> list[ShapeRow]:
    """The rows alone (used for the table printed up to a failing layer)."""
    return _run(model, input_shape, batch_size, depth)[0]


def _run(model: nn.Module, input_shape: Sequence[int], batch_size: int, depth: int | None) -> tuple[list[ShapeRow], int]:
    names = {module: name for name, module in model.named_modules() if name}
    order: list[nn.Module] = []
    outputs: dict[nn.Module, list[int]] = {}
    macs: dict[str, int] = {}

    def before(module, _inputs):
        if module not in outputs and module not in order:
            order.append(module)

    def after(module, _inputs, output):
        shape = _shape_of(output)
        outputs.setdefault(module, shape)
        if not any(True for _ in module.children()):
            macs[names[module]] = macs.get(names[module], 0) + leaf_mult_adds(module, shape)

    handles = [m.register_forward_pre_hook(before) for m in names] + [m.register_forward_hook(after) for m in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(batch_size, *input_shape))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rows = [_row(i, names[m], m, outputs.get(m, []), macs) for i, m in enumerate(
        m for m in order if depth is None or names[m].count(".") < depth)]
    return rows, sum(macs.values())


def _row(index: int, name: str, module: nn.Module, shape: list[int], macs: dict[str, int]) -> ShapeRow:
    params = list(module.parameters())
    prefix = name + "."
    return ShapeRow(
        index=index, name=name, type=type(module).__name__, output_shape=shape,
        params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        mult_adds=sum(v for k, v in macs.items() if k == name or k.startswith(prefix)),
        depth=name.count(".") + 1, arguments=built_arguments(module))


def built_arguments(module: nn.Module) -> str:
    """The constructor arguments a layer holds, as torch's own repr writes them: the sizes that
    lead the call positionally, the others by name where they differ from their default
    (`1, 6, kernel_size=5`), so what a positional shorthand meant is visible."""
    try:
        params = list(inspect.signature(type(module).__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return ""
    parts, positional = [], True
    for param in params:
        positional = positional and param.name in SIZE_ARGS
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) or not hasattr(module, param.name):
            continue
        value = _plain_value(getattr(module, param.name), param.default)
        if value is _SKIP or (param.default is not param.empty and value == param.default):
            continue
        parts.append(repr(value) if positional else f"{param.name}={value!r}")
    return ", ".join(parts)


# The sizes torch's repr writes positionally (Conv2d(1, 6, kernel_size=...), Linear(96, 10), BatchNorm2d(16)).
SIZE_ARGS = {"in_channels", "out_channels", "in_features", "out_features", "num_features"}


_SKIP = object()


def _plain_value(value: Any, default: Any) -> Any:
    """A held argument as it was most likely written: (5, 5) as 5; a bias parameter as True/False."""
    if isinstance(default, bool) and (value is None or isinstance(value, torch.Tensor)):
        return value is not None
    if isinstance(value, (torch.Tensor, nn.Module)) or callable(value):
        return _SKIP
    if isinstance(value, tuple) and value and all(v == value[0] for v in value) and not isinstance(default, tuple):
        return value[0]
    return value


def leaf_mult_adds(module: nn.Module, output_shape: list[int]) -> int:
    """torchinfo's count for one call of a layer without children."""
    if not output_shape:
        return 0
    total = 0
    for name, param in module.named_parameters(recurse=False):
        if name in ("weight", "bias"):
            if "Conv" in type(module).__name__:
                total += param.numel() * math.prod(output_shape[:1] + output_shape[2:])
            else:
                total += param.numel() * output_shape[0]
        elif "weight" in name or "bias" in name:
            total += param.numel() * math.prod(output_shape[:2])
    return total


def _shape_of(output: Any) -> list[int]:
    if isinstance(output, torch.Tensor):
        return list(output.shape)
    if isinstance(output, (tuple, list)) and output:
        return _shape_of(output[0])
    if isinstance(output, dict) and output:
        return _shape_of(next(iter(output.values())))
    return []
