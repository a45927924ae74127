"""The layer registry: every layer class of `torch.nn` under its own name, plus dltool's composites.

Composite layers (`Sequential`, `Residual`, `Parallel`, `Repeat`, `TorchvisionModel`) hold other
layers, so they cannot be built before the shape that reaches them is known: their builders return
a plan that the stack builder finishes (see `dltool.models.builder`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from dltool.config.registry import LAYERS
from dltool.models.composite import Plan, fmt

# Containers dltool writes itself, abstract bases, and wrappers that are not layers.
NOT_LAYERS = {
    "Module", "Container", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict",
    "DataParallel", "RNNBase", "RNNCellBase",
}


def is_torch_layer(name: str, obj: Any) -> bool:
    """True for the public `torch.nn` classes a stack can hold (losses belong to the LOSSES registry)."""
    if not inspect.isclass(obj) or not issubclass(obj, nn.Module) or name.startswith("_"):
        return False
    if name in NOT_LAYERS or inspect.isabstract(obj):
        return False
    return not (issubclass(obj, nn.modules.loss._Loss) or name.endswith("Loss") or "Loss" in name)


def register_torch_layers() -> None:
    for name in sorted(dir(nn)):
        obj = getattr(nn, name)
        if is_torch_layer(name, obj):
            LAYERS.register(name, obj)


def composite(builder):
    """Mark a registered builder as returning a Plan (it needs the incoming shape to finish)."""
    builder.composite = True
    return builder


class SequentialPlan(Plan):
    def __init__(self, layers: tuple):
        self.layers = layers

    def build(self, stack, spec, shape):
        return stack.build_list(spec, None, self.layers, shape)


class ResidualPlan(Plan):
    def __init__(self, body: Any, shortcut: Any):
        self.body = body
        self.shortcut = shortcut

    def build(self, stack, spec, shape):
        body, body_shape = stack.build_list(spec, "body", self.body, shape)
        shortcut, short_shape = self._shortcut(stack, spec, shape, body_shape)
        if short_shape != body_shape:
            raise stack.shape_error(spec, (
                f"the body gives {fmt(body_shape)} but the shortcut gives {fmt(short_shape)}, so they "
                f"cannot be added; write shortcut: auto for a 1x1 convolution projection, or change the body"))
        return Residual(body, shortcut), body_shape

    def _shortcut(self, stack, spec, shape, body_shape):
        if isinstance(self.shortcut, str) and self.shortcut.lower() == "identity":
            return nn.Identity(), shape
        if isinstance(self.shortcut, str) and self.shortcut.lower() == "auto":
            if shape == body_shape:
                return nn.Identity(), shape
            return projection(stack, spec, shape, body_shape), body_shape
        if isinstance(self.shortcut, list):
            return stack.build_list(spec, "shortcut", self.shortcut, shape)
        raise stack.config_error(spec, f"shortcut must be identity, auto, or a list of layers; got {self.shortcut!r}")


def projection(stack, spec, shape: tuple[int, ...], target: tuple[int, ...]) -> nn.Module:
    """1x1 convolution (strided to the body's size) plus BatchNorm, as in ResNet's downsampling shortcut."""
    if len(shape) != 3 or len(target) != 3:
        raise stack.shape_error(spec, (
            f"shortcut: auto needs (C, H, W) shapes; the input is {fmt(shape)} and the body gives "
            f"{fmt(target)}; write the shortcut layers yourself"))
    stride_h, stride_w = _stride(shape[1], target[1]), _stride(shape[2], target[2])
    if stride_h is None or stride_w is None:
        raise stack.shape_error(spec, (
            f"shortcut: auto cannot map {fmt(shape)} onto {fmt(target)} with a strided 1x1 convolution; "
            f"write the shortcut layers yourself"))
    conv = nn.Conv2d(shape[0], target[0], kernel_size=1, stride=(stride_h, stride_w), bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(target[0]))


def _stride(size: int, target: int) -> int | None:
    for stride in range(1, size + 1):
        if (size - 1) // stride + 1 == target:
            return stride
    return None


class ParallelPlan(Plan):
    def __init__(self, branches: list, merge: str):
        self.branches = branches
        self.merge = merge

    def build(self, stack, spec, shape):
        if self.merge not in ("cat", "add"):
            raise stack.config_error(spec, f"merge must be cat or add; got {self.merge!r}")
        if not isinstance(self.branches, list) or not self.branches:
            raise stack.config_error(spec, "branches must be a non-empty list of layer lists")
        modules, shapes = [], []
        for i, branch in enumerate(self.branches):
            layers = branch if isinstance(branch, list) else [branch]
            module, out = stack.build_list(spec, f"branches.{i}", layers, shape)
            modules.append(module)
            shapes.append(out)
        return Parallel(modules, self.merge), self._merged(stack, spec, shapes)

    def _merged(self, stack, spec, shapes):
        listed = ", ".join(fmt(s) for s in shapes)
        if self.merge == "add":
            if any(s != shapes[0] for s in shapes):
                raise stack.shape_error(spec, f"merge: add needs equal branch shapes; the branches give {listed}")
            return shapes[0]
        if any(len(s) < 1 or s[1:] != shapes[0][1:] for s in shapes):
            raise stack.shape_error(spec, (
                f"merge: cat joins along channels, so all but the first size must agree; the branches give {listed}"))
        return (sum(s[0] for s in shapes), *shapes[0][1:])


class RepeatPlan(Plan):
    def __init__(self, times: int, layers: list):
        self.times = times
        self.layers = layers

    def build(self, stack, spec, shape):
        if isinstance(self.times, bool) or not isinstance(self.times, int) or self.times < 1:
            raise stack.config_error(spec, f"times must be an integer >= 1; got {self.times!r}")
        layers = self.layers if isinstance(self.layers, list) else [self.layers]
        stack.room_for(spec, self.times * len(layers))  # a huge `times` is refused before building any
        repeats = nn.Sequential()
        for r in range(self.times):
            module, shape = stack.build_list(spec, "layers", layers, shape, repetition=r)
            repeats.add_module(str(r), module)
        return repeats, shape


class Residual(nn.Module):
    """y = body(x) + shortcut(x)."""

    def __init__(self, body: nn.Module, shortcut: nn.Module):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class Parallel(nn.Module):
    """Runs every branch on the same input; concatenates along channels (dim 1) or adds."""

    def __init__(self, branches: list[nn.Module], merge: str = "cat"):
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = [branch(x) for branch in self.branches]
        if self.merge == "add":
            return torch.stack(outputs).sum(0)
        return torch.cat(outputs, dim=1)

    def extra_repr(self) -> str:
        return f"merge={self.merge!r}"


@LAYERS.register("Sequential")
@composite
def sequential(*layers: Any) -> Plan:
    """A nested list of layers, built one after another (module names 0, 1, ...)."""
    return SequentialPlan(layers)


@LAYERS.register("Residual")
@composite
def residual(body: list, shortcut: Any = "identity") -> Plan:
    """body(x) + shortcut(x); shortcut is identity, auto (1x1 conv + BatchNorm when shapes differ) or layers."""
    return ResidualPlan(body, shortcut)


@LAYERS.register("Parallel")
@composite
def parallel(branches: list, merge: str = "cat") -> Plan:
    """Every branch (a list of layers) on the same input, merged by cat (channels) or add."""
    return ParallelPlan(branches, merge)


@LAYERS.register("Repeat")
@composite
def repeat(times: int, layers: list) -> Plan:
    """`layers` repeated `times` times; every repetition has its own weights."""
    return RepeatPlan(times, layers)


@LAYERS.register("TorchvisionModel")
@composite
def torchvision_model(name: str, weights: str | None = None, freeze: Any = ()) -> Plan:
    """A torchvision classification model by name, its head resized to num_classes."""
    # imported here, not at the top: torchvision costs over a second and most stacks never need it
    from dltool.models.torchvision import TorchvisionPlan

    return TorchvisionPlan(name, weights, freeze)


@LAYERS.register("TimmModel")
@composite
def timm_model(name: str, pretrained: Any = False, freeze: Any = (), **kwargs: Any) -> Plan:
    """A timm model by name (extra [timm]); num_classes and in_chans from the data, kwargs to timm.create_model."""
    from dltool.models.timm import TimmPlan

    return TimmPlan(name, pretrained, freeze, kwargs)


register_torch_layers()
