"""Models: the layer registry, the stack builder with shape inference, torchvision models, and the
layer-by-layer shape rows as data (rendered by the cli).

It may import data, config and errors; never store, training, inference or cli.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from dltool.config.spec import located, parse_spec
from dltool.errors import ConfigError


def build_model(model: Any, input_shape: tuple[int, ...], num_classes: int | None, *, pretrained: bool = True):
    """Build `model.layers` (a ModelConfig) for `input_shape`; see dltool.models.builder.build_model."""
    from dltool.models.builder import build_model as build

    return build(model, input_shape, num_classes, pretrained=pretrained)


def resolve_input_shape(config: Any, cli_shape: Any = None, data: Any = None) -> tuple[int, ...]:
    """The shape of one input sample (no batch dim): model.input_shape, else --input-shape, else the data's.

    Args:
        config: the Config.
        cli_shape: `--input-shape` as a tuple/list of ints or a "C,H,W" string, or None.
        data: a DataBundle, or None.

    Raises:
        ConfigError: none of them gives a shape, or the CLI shape is not a list of positive integers.
    """
    if config.model.input_shape:
        shape = tuple(config.model.input_shape)
        if any(s < 1 for s in shape):
            raise ConfigError(located(f"sizes must be >= 1, like [1, 28, 28]; got {list(shape)}",
                                      "model.input_shape", config.marks))
        return shape
    if cli_shape:
        return parse_shape(cli_shape)
    if data is not None and getattr(data, "input_shape", None):
        return tuple(data.input_shape)
    raise ConfigError(located(
        "the input shape is unknown; set model.input_shape (e.g. [1, 28, 28]) or pass --input-shape C,H,W",
        "model", config.marks))


def parse_shape(value: Any) -> tuple[int, ...]:
    """"1,28,28" (or a list of ints) -> (1, 28, 28)."""
    parts = value.replace("x", ",").split(",") if isinstance(value, str) else list(value)
    try:
        shape = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ConfigError(f"--input-shape: expected positive integers like 3,32,32; got {value!r}")
    return shape


def with_model_defaults(config: Any) -> tuple[Any, str | None]:
    """The config with the data defaults its pretrained model offers, and a note saying what they are.

    A `TimmModel` with `pretrained` weights (first in `model.layers`) and no `data.transforms.eval`:
    timm's eval preprocessing for those weights becomes data.transforms.eval (input size, mean, std,
    interpolation, crop), and data.channels becomes 3 when the config does not say. Any other config
    comes back as it is, with None.
    """
    spec = config.model.layers[0] if config.model.layers else None
    if spec is None or spec.name.lower() != "timmmodel" or config.data.transforms.eval is not None:
        return config, None
    if spec.kwargs.get("pretrained") in (None, False) or "name" not in spec.kwargs:
        return config, None
    from dltool.models.timm import eval_transforms

    channels = config.data.channels or 3
    steps = eval_transforms(spec.kwargs["name"], channels)
    if not steps:
        return config, None
    key = "data.transforms.eval"
    specs = tuple(parse_spec(step, f"{key}.{i}") for i, step in enumerate(steps))
    data = dataclasses.replace(config.data, channels=channels,
                               transforms=dataclasses.replace(config.data.transforms, eval=specs))
    shown = ", ".join(json.dumps(s.to_data()) for s in specs)
    return dataclasses.replace(config, data=data), (
        f"{key}: not given; using timm's preprocessing for the pretrained {spec.kwargs['name']}: {shown}")


__all__ = ["build_model", "resolve_input_shape", "parse_shape", "with_model_defaults"]
