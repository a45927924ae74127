"""Build `model.layers` into a module by carrying the shape forward, layer by layer.

Each layer is built with the sizes the incoming shape determines (`in_channels`, `in_features`,
`num_features`, ...) and run once on a zero tensor of that shape, so the next layer knows what
arrives. Module names follow YAML positions (`3.body.0`), which keeps state_dict keys stable.
Shapes here never include the batch dimension.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import torch
from torch import nn

from dltool.config.registry import LAYERS, signature
from dltool.config.spec import Spec, located, parse_spec
from dltool.errors import ConfigError, RegistryError, ShapeError, first_line
from dltool.models.composite import fmt
from dltool.models.shapes import ShapeReport, measure, module_rows

# Channel-first layers and the (unbatched) ranks they take.
RANKS = {"Conv": {"1": (2,), "2": (3,), "3": (4,)}, "ConvTranspose": {"1": (2,), "2": (3,), "3": (4,)},
         "BatchNorm": {"1": (1, 2), "2": (3,), "3": (4,)}}
WANTED = {1: "(C)", 2: "(C, L)", 3: "(C, H, W)", 4: "(C, D, H, W)"}
CHANNEL_ARGS = ("in_channels", "num_features", "num_channels")
LAST_DIM_ARGS = ("in_features", "input_size", "d_model", "embed_dim", "normalized_shape")
PROBE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


class LayerStack(nn.Sequential):
    """The built model: an nn.Sequential that also records its input and output shapes (no batch dim)."""

    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()


def build_model(model, input_shape: tuple[int, ...], num_classes: int | None, *, pretrained: bool = True) -> nn.Module:
    """Build `model.layers` for inputs of `input_shape` (C, H, W: no batch dim).

    Args:
        model: the ModelConfig (layers, init, freeze).
        input_shape: one sample's shape, e.g. (1, 28, 28).
        num_classes: what `num_classes` in the YAML means; None when the task has no classes.
        pretrained: load TorchvisionModel weights; False when a checkpoint's state_dict will
            replace them anyway (eval, predict, resume), so no weights file or network is needed.

    Returns:
        A LayerStack whose children are named "0", "1", ... after the YAML positions.

    Raises:
        ShapeError: a layer cannot take the shape arriving at it (`rows` holds the layers before it).
        ConfigError: a layer is unknown, or its arguments are wrong.
    """
    from dltool.models.init import apply_freeze, apply_init

    shape = tuple(int(s) for s in input_shape)
    if not model.layers:
        raise ConfigError("model.layers: is empty; list the layers, e.g. [Flatten, {Linear: {out_features: num_classes}}]")
    stack, net = Stack(num_classes, pretrained), LayerStack()
    net.input_shape = shape
    for i, spec in enumerate(model.layers):
        try:
            module, shape = stack.build_layer(spec, shape)
        except ShapeError as exc:
            raise with_rows(exc, net, input_shape) from None
        net.add_module(str(i), module)
    net.output_shape = shape
    check_output(model.layers[-1], shape, num_classes, net, input_shape)
    marks = model.layers[0].marks
    apply_init(net, model.init, marks)
    apply_freeze(net, model.freeze, marks, key="model.freeze")
    return net


def with_rows(exc: ShapeError, partial: nn.Module, input_shape: tuple[int, ...]) -> ShapeError:
    """Attach the shape rows of the layers built so far (and the partial model, for other batch sizes)."""
    exc.rows = module_rows(partial, input_shape, batch_size=1) if len(partial) else []
    exc.partial = partial
    return exc


def check_output(spec: Spec, shape: tuple[int, ...], num_classes: int | None, net, input_shape) -> None:
    """A classifier must end in one score per class, or in one for class 1 of two (a binary
    classifier with BCEWithLogitsLoss, or Sigmoid and BCELoss)."""
    if num_classes is None or shape == (num_classes,) or (num_classes == 2 and shape == (1,)):
        return
    hint = "add Flatten and " if len(shape) > 1 else ""
    message = (f"the model's output is {fmt(shape)} per sample but the dataset has {num_classes} classes; "
               f"{hint}end with Linear: {{out_features: num_classes}}")
    raise with_rows(ShapeError(spec.error(message)), net, input_shape)


# Far above any real network (a ResNet-152 written as a stack has under 600 layers), and low enough
# that a mistyped Repeat count is refused at once instead of building layers for hours.
MAX_LAYERS = 10_000


class Stack:
    """Builds layers and lists of layers for one model; composite plans call back into it."""

    def __init__(self, num_classes: int | None, pretrained: bool = True):
        self.num_classes = num_classes
        self.pretrained = pretrained
        self.flattened: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.built = 0  # layers built so far, against MAX_LAYERS

    def room_for(self, spec: Spec, count: int) -> None:
        """Refuse `count` more layers, before building them, if they take the model past MAX_LAYERS."""
        if self.built + count > MAX_LAYERS:
            raise self.config_error(spec, f"the model would have more than {MAX_LAYERS:,} layers; "
                                          "check Repeat's times and the size of nested lists")

    def build_layer(self, spec: Spec, shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
        """Build one layer for an input of `shape`; return the module and its output shape."""
        target = LAYERS.get(spec.name, spec)
        spec = self.resolve_classes(spec)
        if getattr(target, "composite", False):
            return LAYERS.build(spec).build(self, spec, shape)
        self.room_for(spec, 1)
        self.built += 1
        args, extra = self.inferred(target, spec, shape)
        return self.build_leaf(target, spec, args, extra, shape)

    def build_leaf(self, target: Any, spec: Spec, args: tuple, extra: dict,
                   shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
        """A layer that holds no others, with the sizes inferred from `shape` (`args`, `extra`)."""
        module = LAYERS.build(spec, *args, **extra)
        self.check_kernel(module, spec, shape)
        out = probe(module, spec, shape)
        if len(out) == 1 and len(shape) > 1:
            self.flattened[out] = shape
        return module, out

    def build_list(self, spec: Spec, field: str | None, items: Any, shape: tuple[int, ...],
                   repetition: int | None = None) -> tuple[nn.Sequential, tuple[int, ...]]:
        """Build the layers listed under `field` of a composite spec, one after another."""
        base = child_key(spec, field)
        if not isinstance(items, (list, tuple)) or not items:
            raise RegistryError(located(f"expected a non-empty list of layers; got {items!r}", base, spec.marks))
        body = nn.Sequential()
        for i, item in enumerate(items):
            child = parse_spec(item, f"{base}.{i}", spec.marks)
            try:
                module, shape = self.build_layer(child, shape)
            except ShapeError as exc:
                if repetition is not None and "(repetition" not in str(exc):
                    exc.args = (f"{exc} (repetition {repetition + 1})",)
                raise
            body.add_module(str(i), module)
        return body, shape

    def resolve_classes(self, spec: Spec) -> Spec:
        """Replace the word `num_classes` in the layer's arguments by the number of classes."""
        def resolve(value: Any) -> Any:
            if value != "num_classes":
                return value
            if self.num_classes is None:
                raise ConfigError(spec.error("num_classes is not known here (the task has no classes); write a number"))
            return self.num_classes

        return dataclasses.replace(spec, args=tuple(resolve(a) for a in spec.args),
                                   kwargs={k: resolve(v) for k, v in spec.kwargs.items()})

    def inferred(self, target: Callable, spec: Spec, shape: tuple[int, ...]) -> tuple[tuple, dict]:
        """Sizes the incoming shape determines: checked when written, supplied when left out.

        Returns positional arguments to put before the spec's own (when the user wrote torch's
        positional form without its first size, e.g. `Linear: [120]`) and keyword arguments.
        """
        try:
            params = list(signature(target).parameters.values())
        except (TypeError, ValueError):
            return (), {}
        positional = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD]
        required = [p.name for p in params if p.kind == p.POSITIONAL_OR_KEYWORD and p.default is p.empty
                    and p.name not in spec.kwargs]
        given = dict(zip(positional, spec.args))
        shift = bool(spec.args) and bool(positional) and positional[0] in (*CHANNEL_ARGS, *LAST_DIM_ARGS) \
            and positional[0] not in spec.kwargs and len(spec.args) < len(required)
        if shift:
            self.check_unambiguous(target, spec, shape, positional)
            given = dict(zip(positional[1:], spec.args))
        args, extra = (), {}
        if self.num_classes is not None and "num_classes" in (p.name for p in params) \
                and "num_classes" not in spec.kwargs and "num_classes" not in given:
            extra["num_classes"] = self.num_classes  # a whole model of the user's: sized to the data
        for name in (p.name for p in params):
            if name not in CHANNEL_ARGS and name not in LAST_DIM_ARGS:
                continue
            value = self.size_for(name, target, spec, shape)
            if name in spec.kwargs or name in given:
                self.check_given(name, spec.kwargs.get(name, given.get(name)), value, spec, shape)
            elif shift and name == positional[0]:
                args = (value,)
            else:
                extra[name] = value
        return args, extra

    def check_unambiguous(self, target: Callable, spec: Spec, shape: tuple[int, ...], positional: list) -> None:
        """`Conv2d: [1, 6]` on 1-channel input reads as out 1, kernel 6 (in_channels inferred), but
        was as likely meant as in 1, out 6 with the kernel left out: such a list must name its values."""
        if len(spec.args) < 2 or positional[0] not in CHANNEL_ARGS or len(positional) <= len(spec.args):
            return
        inferred = self.size_for(positional[0], target, spec, shape)
        if spec.args[0] != inferred:
            return
        first, second, third = positional[:3]
        values = list(spec.args)
        raise self.config_error(spec, (
            f"{values} is ambiguous: it reads as {second}={values[0]}, {third}={values[1]} with {first} inferred "
            f"({inferred}), but {first}={values[0]}, {second}={values[1]} with {third} left out looks the same; "
            f"name them, e.g. {{{second}: {values[1]}, {third}: 3}}, or give all three: "
            f"[{inferred}, {values[1]}, 3]"))

    def size_for(self, name: str, target: Callable, spec: Spec, shape: tuple[int, ...]) -> int:
        if name in CHANNEL_ARGS:
            check_rank(target, spec, shape)
            if not shape:
                raise self.shape_error(spec, "needs an input with a channel dimension but gets a scalar per sample")
            return shape[0]
        if not shape:
            raise self.shape_error(spec, "needs an input with a feature dimension but gets a scalar per sample")
        if name == "in_features" and len(shape) >= 3:
            raise self.shape_error(spec, (
                f"the input is {fmt(shape)}, not flat; add Flatten before this layer "
                f"(it then gets {math.prod(shape)} features)"))
        return shape[-1]

    def check_given(self, name: str, given: Any, value: int, spec: Spec, shape: tuple[int, ...]) -> None:
        if name == "normalized_shape":
            wanted = tuple(given) if isinstance(given, (list, tuple)) else (given,)
            if tuple(shape[-len(wanted):]) != wanted or len(wanted) > len(shape):
                raise self.shape_error(spec, (
                    f"normalized_shape is {list(wanted)} but the input is {fmt(shape)}; it must match the "
                    f"trailing sizes, e.g. normalized_shape: {shape[-1]}, or leave it out"))
            return
        if given == value:
            return
        if name == "in_features":
            origin = self.flattened.get(shape)
            what = f"{value} features" + (f" ({fmt(origin)} flattened)" if origin else "")
        elif name in CHANNEL_ARGS:
            what = f"{value} channel{'s' if value != 1 else ''} (shape {fmt(shape)})"
        else:
            what = f"size {value} in its last dimension (shape {fmt(shape)})"
        raise self.shape_error(spec, f"{name} is {given} but the input has {what}; write {name}: {value} or leave it out")

    def check_kernel(self, module: nn.Module, spec: Spec, shape: tuple[int, ...]) -> None:
        """A kernel larger than the (padded) input: say so instead of torch's message."""
        kernel = getattr(module, "kernel_size", None)
        padding = getattr(module, "padding", 0)
        if kernel is None or isinstance(padding, str) or "Adaptive" in type(module).__name__:
            return
        spatial = shape[1:]
        if not spatial:
            return
        kernel, padding = _per_dim(kernel, len(spatial)), _per_dim(padding, len(spatial))
        dilation = _per_dim(getattr(module, "dilation", 1), len(spatial))
        if not all(type(v) is int for v in (*kernel, *padding, *dilation)):
            return  # not numbers (`AvgPool2d: abc`): the probe reports what torch says of them
        reach = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
        if any(r > s + 2 * p for r, s, p in zip(reach, spatial, padding)):
            size = "x".join(map(str, kernel))
            raise self.shape_error(spec, (
                f"kernel_size {size} is larger than the {fmt(spatial)} input (padding "
                f"{'x'.join(map(str, padding))}); use a smaller kernel, add padding, or downsample less before it"))

    def shape_error(self, spec: Spec, message: str) -> ShapeError:
        return ShapeError(spec.error(message))

    def config_error(self, spec: Spec, message: str) -> ConfigError:
        return RegistryError(spec.error(message))


def check_rank(target: Callable, spec: Spec, shape: tuple[int, ...]) -> None:
    """Conv2d on a flattened input (and the like): name the rank it needs."""
    name = getattr(target, "__name__", "")
    match = re.fullmatch(r"(?:Lazy)?(ConvTranspose|Conv|BatchNorm)([123])d", name)
    if match is None:
        return
    ranks = RANKS[match.group(1)][match.group(2)]
    if len(shape) in ranks:
        return
    want = " or ".join(WANTED[r] for r in ranks)
    if len(shape) == 1 and ranks[-1] > 1:
        got = f"{shape[0]} flattened features; remove the Flatten before it or move it after this layer"
    else:
        got = fmt(shape)
    raise ShapeError(spec.error(f"needs a {want} input but gets {got}"))


def probe(module: nn.Module, spec: Spec, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Run `module` once on zeros of `shape` (batch of one, eval mode) and return its output shape."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *shape))
    except PROBE_ERRORS as exc:
        reason = first_line(exc) + LAYERS.where(spec.name, exc)
        raise ShapeError(spec.error(f"cannot take an input of shape {fmt(shape)}: {reason}")) from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ShapeError(spec.error(
            f"returns {type(out).__name__}, not one tensor; a layer in a stack must return one tensor"))
    if out.dim() == 0 or out.shape[0] != 1:
        raise ShapeError(spec.error(f"changes the batch dimension (output {fmt(tuple(out.shape))}); keep dim 0 as the batch"))
    return tuple(out.shape[1:])


def child_key(spec: Spec, field: str | None) -> str:
    """The dotted YAML key of the list under `field` of a composite, in whichever form it was written."""
    base = spec.key
    marks = spec.marks if spec.marks is not None else {}
    if f"{spec.key}.{spec.name}" in marks:
        base = f"{spec.key}.{spec.name}"
    if field is None:
        return f"{base}.args" if f"{base}.args" in marks else base
    return f"{base}.{field}"


def _per_dim(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return (value,) * n


def collect_shapes(config: Any, input_shape: Sequence[int], batch_size: int = 1, depth: int | None = None,
                   num_classes: int | None = None) -> ShapeReport:
    """Build the config's model and measure it on a zero batch of `batch_size` x `input_shape`.

    Args:
        config: the Config.
        input_shape: one sample's shape, without the batch dim.
        batch_size: the batch dim of the shapes and mult-adds.
        depth: how many levels of nested layers to list (None: all).
        num_classes: what `num_classes` means in the layers.

    Raises:
        ShapeError: a layer cannot take its input; `rows` holds the layers before it at `batch_size`.
    """
    try:
        # pretrained weights change no shape or count: leave them unread (works offline)
        model = build_model(config.model, tuple(input_shape), num_classes, pretrained=False)
    except ShapeError as exc:
        partial = getattr(exc, "partial", None)
        if partial is not None and len(partial):
            exc.rows = module_rows(partial, input_shape, batch_size, depth)
        raise
    return measure(model, input_shape, batch_size, depth)
