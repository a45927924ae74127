"""`model.init` (layer type -> torch.nn.init scheme) and `freeze` (parameter-name patterns).

    model:
      init:
        Conv2d: {name: kaiming_normal, mode: fan_out, nonlinearity: relu}   # bias -> zeros
        Linear: uniform_fan_in                                            # U(-1/sqrt(d), 1/sqrt(d))
        BatchNorm2d: {weight: ones, bias: zeros}
      freeze: ["0.*", "!0.fc.*"]        # fnmatch on parameter names; `!` keeps matches trainable
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from dltool.config.registry import LAYERS, suggest
from dltool.config.spec import Marks, Spec, located, parse_spec
from dltool.errors import ConfigError, first_line


def uniform_fan_in(tensor: torch.Tensor, fan_in: int | None = None) -> torch.Tensor:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): keeps the output variance near the input's (torch's Linear default)."""
    if fan_in is None:
        fan_in = tensor.shape[1] * math.prod(tensor.shape[2:]) if tensor.dim() >= 2 else tensor.numel()
    bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


SCHEMES: dict[str, Callable] = {
    "kaiming_normal": nn.init.kaiming_normal_, "kaiming_uniform": nn.init.kaiming_uniform_,
    "xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_,
    "normal": nn.init.normal_, "trunc_normal": nn.init.trunc_normal_, "uniform": nn.init.uniform_,
    "uniform_fan_in": uniform_fan_in, "constant": nn.init.constant_, "zeros": nn.init.zeros_,
    "ones": nn.init.ones_, "dirac": nn.init.dirac_, "orthogonal": nn.init.orthogonal_,
    "eye": nn.init.eye_, "sparse": nn.init.sparse_,
}


def apply_init(module: nn.Module, init: Mapping[str, Any], marks: Marks | None = None) -> None:
    """Re-initialise the weights (and biases) of every layer of each type named in `init`.

    A scheme alone sets the weight and zeros the bias (uniform_fan_in draws the bias from the same
    range, as torch does); `{weight: ..., bias: ...}` sets each explicitly.

    Raises:
        ConfigError: unknown layer type or scheme, a type the model does not contain, or a scheme
            that does not fit the tensor (e.g. kaiming on a 1-D BatchNorm weight).
    """
    for type_name, value in init.items():
        key = f"model.init.{type_name}"
        canonical = LAYERS.canonical(str(type_name), Spec(str(type_name), key=key, marks=marks))
        layers = [m for m in module.modules() if type(m).__name__ == canonical]
        if not layers:
            raise ConfigError(located(f"the model has no {canonical} layer to initialise", key, marks))
        weight_spec, bias_spec = _schemes(value, key, marks)
        for layer in layers:
            _init_layer(layer, weight_spec, bias_spec)


def _schemes(value: Any, key: str, marks: Marks | None) -> tuple[Spec | None, Spec | None]:
    if isinstance(value, Mapping) and set(value) <= {"weight", "bias"} and value:
        weight = parse_spec(value["weight"], f"{key}.weight", marks) if "weight" in value else None
        bias = parse_spec(value["bias"], f"{key}.bias", marks) if "bias" in value else None
    else:
        weight = parse_spec(value, key, marks)
        bias = Spec("uniform_fan_in" if _name(weight) == "uniform_fan_in" else "zeros", key=key, marks=marks)
    for spec in (weight, bias):
        if spec is not None and _name(spec) not in SCHEMES:
            raise ConfigError(spec.error(
                f"unknown init scheme{suggest(spec.name, SCHEMES)} (allowed: {', '.join(SCHEMES)})"))
    return weight, bias


def _name(spec: Spec) -> str:
    return spec.name.lower().rstrip("_")


def _init_layer(layer: nn.Module, weight_spec: Spec | None, bias_spec: Spec | None) -> None:
    weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
    if weight_spec is not None and isinstance(weight, torch.Tensor):
        _apply(weight_spec, weight)
    if bias_spec is not None and isinstance(bias, torch.Tensor):
        if _name(bias_spec) == "uniform_fan_in" and isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            fan_in = weight.shape[1] * math.prod(weight.shape[2:])
            uniform_fan_in(bias, fan_in)
        else:
            _apply(bias_spec, bias)


def _apply(spec: Spec, tensor: torch.Tensor) -> None:
    try:
        with torch.no_grad():
            SCHEMES[_name(spec)](tensor, *spec.args, **spec.kwargs)
    except (TypeError, ValueError, AttributeError, RuntimeError) as exc:  # its arguments, from the config
        reason = first_line(exc)
        raise ConfigError(spec.error(f"cannot initialise a tensor of shape {list(tensor.shape)}: {reason}")) from None


def apply_freeze(module: nn.Module, patterns: Sequence[str], marks: Marks | None, key: str) -> list[str]:
    """Set requires_grad=False on parameters whose names match a pattern (a leading `!` re-enables).

    Patterns apply in order, like .gitignore lines. Returns the names of the frozen parameters.

    Raises:
        ConfigError: a pattern matches no parameter (the message lists some names).
    """
    names = [name for name, _ in module.named_parameters()]
    params = dict(module.named_parameters())
    for i, pattern in enumerate(patterns):
        where = f"{key}.{i}"
        if not isinstance(pattern, str) or not pattern.strip("!"):
            raise ConfigError(located(f"a freeze pattern must be a non-empty string; got {pattern!r}", where, marks))
        keep = pattern.startswith("!")
        matched = fnmatch.filter(names, pattern[1:] if keep else pattern)
        if not matched:
            sample = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise ConfigError(located(f"pattern {pattern!r} matches no parameter (names look like: {sample})", where, marks))
        for name in matched:
            params[name].requires_grad_(keep)
    return [name for name in names if not params[name].requires_grad]
