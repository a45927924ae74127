"""`dltool shapes`: where the model's input shape and class count come from (a config, or a run's
checkpoint), and the rows of the model built for them. The rows are measured in
`dltool.models.shapes`; `dltool.cli.render_shapes` draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from dltool.errors import CheckpointError, ConfigError, ShapeError
from dltool.models.builder import collect_shapes
from dltool.models.shapes import ShapeReport


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
    from dltool.models import parse_shape, resolve_input_shape, with_model_defaults

    cli_shape = parse_shape(input_shape) if input_shape else None
    if Path(path).is_dir() or Path(path).suffix in (".pt", ".pth"):
        config, shape, num_classes = _from_run(path, overrides)
        return collect_shapes(config, cli_shape or shape, batch_size, depth, num_classes)
    config, _ = with_model_defaults(load_config(path, overrides))  # the input size its eval transforms give
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
    """True when a layer's arguments mention num_classes or it is a TorchvisionModel or TimmModel (head size)."""
    def mentions(value: Any) -> bool:
        if isinstance(value, str):
            return value == "num_classes" or value.lower() in ("torchvisionmodel", "timmmodel")
        if isinstance(value, dict):
            return any(mentions(k) or mentions(v) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return any(mentions(v) for v in value)
        return False

    return any(mentions(spec.to_data()) for spec in layers)


def _load_data(config: Any) -> Any:
    from dltool.data import build_data

    return build_data(config, splits=("val",))
