"""Layer-by-layer shapes, parameter counts and mult-adds: collected with forward hooks, rendered apart.

Mult-adds are counted as torchinfo counts them, on layers without children: a convolution costs
its parameter count times the output's batch and spatial size (channels already sit in the
weight); any other layer with a weight or bias costs its parameter count per batch row; layers
without parameters cost nothing.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from dltool.errors import CheckpointError, ConfigError, ShapeError


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
        """The `shapes --json` document (DESIGN.md section 5)."""
        layers = [{k: v for k, v in asdict(row).items() if k != "depth"} for row in self.rows]  # arguments last
        return {"input_shape": self.input_shape, "layers": layers, "total_params": self.total_params,
                "trainable_params": self.trainable_params, "total_mult_adds": self.total_mult_adds}


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
    from dltool.models.builder import build_model

    try:
        # pretrained weights change no shape or count: leave them unread (works offline)
        model = build_model(config.model, tuple(input_shape), num_classes, pretrained=False)
    except ShapeError as exc:
        partial = getattr(exc, "partial", None)
        if partial is not None and len(partial):
            exc.rows = module_rows(partial, input_shape, batch_size, depth)
        raise
    return measure(model, input_shape, batch_size, depth)


def shapes_for_config(path: str, overrides: Sequence[str] = (), *, batch_size: int = 1,
                      input_shape: Any = None, depth: int | None = None,
                      num_classes: int | None = None) -> ShapeReport:
    """`dltool shapes`: load the config, find the input shape and class count, collect the rows.

    `path` is a YAML config, or a run directory / checkpoint (its stored config, input shape and
    classes). For a config the dataset is read only when needed: no model.input_shape and no
    `input_shape`, or layers that mention num_classes (TorchvisionModel resizes its head to it)
    and no `num_classes` is given.

    Raises:
        ConfigError: the config is wrong or the input shape cannot be found.
        ShapeError: a layer cannot take its input.
        DataError: the dataset is needed but cannot be read.
        CheckpointError: a run's checkpoint cannot be read.
    """
    from dltool.config import load_config
    from dltool.models import parse_shape, resolve_input_shape

    cli_shape = parse_shape(input_shape) if input_shape else None
    if Path(path).is_dir() or Path(path).suffix in (".pt", ".pth"):
        config, shape, num_classes = _from_run(path, overrides)
        return collect_shapes(config, cli_shape or shape, batch_size, depth, num_classes)
    config = load_config(path, overrides)
    data = None
    if not (config.model.input_shape or cli_shape) or (num_classes is None and needs_classes(config.model.layers)):
        data = _load_data(config)
    shape = cli_shape or resolve_input_shape(config, None, data)  # --input-shape wins over model.input_shape
    if num_classes is None and data is not None and data.classes:
        num_classes = len(data.classes)
    if data is not None:
        from dltool.firststep import check_transforms

        check_transforms(config, data)
    if data is not None and not cli_shape and tuple(data.input_shape) != shape:
        _check_takes_data(config, shape, tuple(data.input_shape), num_classes)
    return collect_shapes(config, shape, batch_size, depth, num_classes)


def _check_takes_data(config: Any, declared: tuple, sample: tuple, num_classes: int | None) -> None:
    """A model built for model.input_shape must still take the data's samples (a global pooling
    layer lets it); one zero batch of the data's shape tells.

    Raises:
        ConfigError: the model cannot take the data's samples.
    """
    from dltool.firststep import declared_shape_error
    from dltool.models.builder import build_model

    try:
        model = build_model(config.model, declared, num_classes, pretrained=False).eval()
    except ShapeError:
        return  # collect_shapes reports it, with the table up to the failing layer
    try:
        with torch.no_grad():
            model(torch.zeros(1, *sample))
    except Exception:  # noqa: BLE001 - any failure means the declared shape does not fit the data
        raise ConfigError(declared_shape_error(list(declared), list(sample), "data.transforms.eval",
                                               config.marks)) from None


def _from_run(path: str, overrides: Sequence[str]) -> tuple[Any, tuple[int, ...], int | None]:
    from dltool.checkpoint import checkpoint_config, load_checkpoint

    if overrides:
        raise ConfigError(f"{path}: KEY=VALUE overrides apply to a config file, not to a run")
    checkpoint = load_checkpoint(path)
    shape = checkpoint.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise CheckpointError(f"{checkpoint['path']}: the checkpoint has no input_shape; pass --input-shape C,H,W")
    return checkpoint_config(checkpoint), tuple(shape), len(checkpoint.get("classes") or []) or None


def needs_classes(layers: Sequence[Any]) -> bool:
    """True when a layer's arguments mention num_classes or it is a TorchvisionModel (head size)."""
    def mentions(value: Any) -> bool:
        if isinstance(value, str):
            return value == "num_classes" or value.lower() == "torchvisionmodel"
        if isinstance(value, dict):
            return any(mentions(k) or mentions(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return any(mentions(v) for v in value)
        return False

    return any(mentions(spec.to_data()) for spec in layers)


def _load_data(config: Any) -> Any:
    from dltool.data import build_data

    return build_data(config, splits=("val",))


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


def render_table(report: ShapeReport | None, rows: Sequence[ShapeRow] | None = None, title: str = "dltool shapes"):
    """A rich Table of the rows, with totals and parameter memory when a full report is given."""
    from rich import box
    from rich.table import Table

    rows = report.rows if report is not None else list(rows or [])
    caption = f"parameter memory {human_bytes(report.param_bytes)}" if report is not None else None
    table = Table(title=title, caption=caption, show_footer=report is not None, box=box.SIMPLE_HEAD)
    footers = ["", "total", "", "", *(_totals(report) if report is not None else ["", "", ""])]
    columns = [("#", "right"), ("layer", "left"), ("type", "left"), ("output shape", "left"),
               ("params", "right"), ("trainable", "right"), ("mult-adds", "right")]
    cells = [("", "input", "", _shape(report.input_shape), "", "", "")] if report is not None else []
    cells += [(str(row.index), "  " * (row.depth - 1) + row.name, _built(row), _shape(row.output_shape),
               f"{row.params:,}", f"{row.trainable_params:,}", human(row.mult_adds)) for row in rows]
    types = max([4, *(len(row.type) for row in rows)])
    for i, ((header, justify), footer) in enumerate(zip(columns, footers)):
        # On a narrow terminal the layer names may shrink and the build arguments wrap under their
        # type: numbers and shapes are never cut.
        widest = max([len(header), len(footer), *(len(c[i]) for c in cells)])
        if header == "type":
            table.add_column(header, justify=justify, footer=footer, no_wrap=False, min_width=types)
        else:
            table.add_column(header, justify=justify, footer=footer, no_wrap=True,
                             min_width=min(widest, 12) if header == "layer" else widest)
    for cell in cells:
        table.add_row(*cell)
    if all(row.params == row.trainable_params for row in rows):
        table.columns.pop(5)  # every parameter trains: a trainable column would only repeat params
    return table


def _built(row: ShapeRow) -> str:
    """`Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))`: what a positional shorthand meant, made visible."""
    return f"{row.type}({row.arguments})" if row.arguments else row.type


def _totals(report: ShapeReport) -> list[str]:
    return [f"{report.total_params:,}", f"{report.trainable_params:,}", human(report.total_mult_adds)]


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def human(count: int) -> str:
    """1_814_083_000 -> '1.81 G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def human_bytes(count: int) -> str:
    """44_726_568 -> '42.65 MB' (powers of 1024)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"
