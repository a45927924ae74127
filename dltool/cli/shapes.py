"""`dltool shapes`: where the model's input shape and class count come from (a config, or a run's
checkpoint), and the table the rows are rendered as. The rows themselves are measured in
`dltool.models.shapes`; only the command and its rendering live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from dltool.errors import CheckpointError, ConfigError, ShapeError
from dltool.models.builder import collect_shapes
from dltool.models.shapes import ShapeReport, ShapeRow


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
    from dltool.config.load import load_config
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
        from dltool.training.firststep import check_transforms

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
    from dltool.models.builder import build_model
    from dltool.training.firststep import declared_shape_error

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
    from dltool.store.checkpoint import checkpoint_config, load_checkpoint

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


def render_table(report: ShapeReport | None, rows: Sequence[ShapeRow] | None = None, title: str = "dltool shapes"):
    """A rich Table of the rows, with totals and parameter memory when a full report is given."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from dltool.cli.text import plain

    rows = report.rows if report is not None else list(rows or [])
    caption = f"parameter memory {human_bytes(report.param_bytes)}" if report is not None else None
    table = Table(title=title, caption=caption, show_footer=report is not None, box=box.SIMPLE_HEAD)
    footers = ["", "total", "", "", *(_totals(report) if report is not None else ["", "", ""])]
    columns = [("#", "right"), ("layer", "left"), ("type", "left"), ("output shape", "left"),
               ("params", "right"), ("trainable", "right"), ("mult-adds", "right")]
    cells = [("", "input", "", _shape(report.input_shape), "", "", "")] if report is not None else []
    cells += [(str(row.index), "  " * (row.depth - 1) + plain(row.name), plain(_built(row)), _shape(row.output_shape),
               f"{row.params:,}", f"{row.trainable_params:,}", human(row.mult_adds)) for row in rows]
    types = max([4, *(len(plain(row.type)) for row in rows)])
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
        table.add_row(*(escape(text) for text in cell))  # a layer name from a checkpoint is not markup
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
