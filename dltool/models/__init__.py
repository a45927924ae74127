"""Models: the layer registry, the stack builder with shape inference, torchvision models, and the
layer-by-layer shape rows as data (rendered by the cli).

It may import data, config and errors; never store, training, inference or cli.
"""

from __future__ import annotations

from typing import Any

from dltool.config.spec import located
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


__all__ = ["build_model", "resolve_input_shape", "parse_shape"]
