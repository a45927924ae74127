"""Validation: plain YAML data checked against the Config dataclasses and built into them; unknown
keys get a did-you-mean, wrong values a located one-line error."""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import typing
from typing import Any, Literal, Mapping

from dltool.config.registry import suggest
from dltool.config.schema import Config, ModelConfig
from dltool.config.spec import Marks, Spec, located, parse_spec
from dltool.errors import ConfigError


def validate(data: Mapping, marks: Marks, path: str | None) -> Config:
    """Check `data` against the Config dataclasses and build them.

    Raises:
        ConfigError: unknown key (with a suggestion), wrong type, or value out of range.
    """
    data = _whole_model(data, marks)
    values = _validate_dataclass(Config, data, "", marks)
    config = Config(**values, path=path, marks=marks)
    _check_optimizer(config.optimizer)
    return config


def _whole_model(data: Mapping, marks: Marks) -> Mapping:
    """`model: {name: MyNet, width: 32, input_shape: ...}`: one network by name (the user's code
    registers it) is the one-layer stack `layers: [{name: MyNet, width: 32}]`."""
    model = data.get("model")
    if not isinstance(model, Mapping) or "name" not in model:
        return data
    if "layers" in model:
        raise ConfigError(located("give either name: (one whole network) or layers:, not both", "model.name", marks))
    own = {f.name for f in dataclasses.fields(ModelConfig)}
    layer = {k: v for k, v in model.items() if k not in own}
    for k in layer:
        if f"model.{k}" in marks:
            marks[f"model.layers.0.{k}"] = marks[f"model.{k}"]
    marks.setdefault("model.layers.0", marks.at("model"))
    return {**data, "model": {**{k: v for k, v in model.items() if k in own}, "layers": [layer]}}


def _validate_dataclass(cls: type, data: Any, key: str, marks: Marks) -> dict:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(located(f"must be a mapping of settings; got {_kind(data)}", key, marks))
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        child = f"{key}.{name}" if key else str(name)
        if name not in fields:
            allowed = ", ".join(fields)
            raise ConfigError(located(f"unknown key{suggest(str(name), fields)} (allowed: {allowed})", child, marks))
        values[name] = _validate_value(hints[name], value, child, marks, fields[name].metadata)
    return values


def _validate_value(hint: Any, value: Any, key: str, marks: Marks, checks: Mapping) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _validate_value(hint, value, key, marks, checks)
    if hint is Spec:
        return parse_spec(value, key, marks)
    if dataclasses.is_dataclass(hint):
        return hint(**_validate_dataclass(hint, value, key, marks))
    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        choices = " | ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in args)
        raise ConfigError(located(f"must be one of {choices}; got {value!r}", key, marks))
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(located(f"must be a list; got {_kind(value)}", key, marks))
        item = args[0]
        return tuple(_validate_value(item, v, f"{key}.{i}", marks, checks) for i, v in enumerate(value))
    if origin in (Mapping, dict, collections.abc.Mapping) or hint is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(located(f"must be a mapping; got {_kind(value)}", key, marks))
        return dict(value)
    return _scalar(hint, value, key, marks, checks)


def _scalar(hint: Any, value: Any, key: str, marks: Marks, checks: Mapping) -> Any:
    bounds = _describe_bounds(checks)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(located(f"must be true or false; got {value!r}", key, marks))
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(located(f"must be a string; got {value!r}", key, marks))
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(located(f"must be an integer{bounds}; got {value!r}", key, marks))
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(located(f"must be a number{bounds}; got {value!r}", key, marks))
        value = float(value)
    if not _in_bounds(value, checks):
        noun = "an integer" if hint is int else "a number"
        raise ConfigError(located(f"must be {noun}{bounds}; got {value!r}", key, marks))
    return value


def _in_bounds(value: float, checks: Mapping) -> bool:
    return (("min" not in checks or value >= checks["min"]) and ("max" not in checks or value <= checks["max"])
            and ("gt" not in checks or value > checks["gt"]) and ("lt" not in checks or value < checks["lt"]))


def _describe_bounds(checks: Mapping) -> str:
    words = {"min": ">=", "max": "<=", "gt": ">", "lt": "<"}
    parts = [f"{words[k]} {checks[k]}" for k in ("gt", "min", "lt", "max") if k in checks]
    return " " + " and ".join(parts) if parts else ""


def _check_optimizer(spec: Spec) -> None:
    lr = spec.kwargs.get("lr")
    if lr is None:
        return
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ConfigError(located(f"must be a number > 0; got {lr!r}", f"{spec.key}.lr", spec.marks))


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)
