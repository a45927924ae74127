"""The `tune:` section (docs/config.md#search-space) read into plain data and checked before any trial runs:
the metric, the sampler and pruner by Optuna name, and the search space keyed by override paths."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from dltool.config.load import Config, load_config
from dltool.config.registry import suggest
from dltool.config.spec import located
from dltool.errors import ConfigError, DltoolError

KINDS = ("log", "float", "int", "choice")
SECTION_KEYS = ("metric", "sampler", "pruner", "space")
METRICS = ("val_accuracy", "val_loss", "val_top5_accuracy", "val_mae", "train_accuracy", "train_loss", "train_mae")
DEFAULT_SAMPLER = "TPESampler"
DEFAULT_PRUNER = "MedianPruner"


@dataclass(frozen=True)
class Param:
    """One searched value: its override path, how it is drawn, and the bounds or the choices."""

    key: str
    kind: str
    values: tuple

    def override(self, value: Any) -> str:
        """`key=value` as the command line takes it (JSON is YAML the config's loader reads back exactly)."""
        return f"{self.key}={json.dumps(value)}"


@dataclass(frozen=True)
class Component:
    """An Optuna sampler or pruner: its class name and keyword arguments."""

    name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TuneSpec:
    metric: str
    direction: str  # "maximize" or "minimize"
    sampler: Component
    pruner: Component | None
    space: tuple[Param, ...]


def read_tune(config: Config, overrides: Sequence[str] = ()) -> TuneSpec:
    """The config's `tune:` section, checked: each space entry is drawn the way it says and names
    an override path this config takes (tried at its bounds or with each of its choices).

    Raises:
        ConfigError: no `tune:` section, an unknown key, a bad metric, component or space entry;
            located by file, line and dotted key.
    """
    section, marks = config.tune, config.marks
    if section is None:
        raise ConfigError(f"{config.path}: no tune: section; add one with a space: of override paths to search "
                          "(see docs/config.md#search-space), e.g. tune: {space: {optimizer.lr: {log: [1.0e-4, 1.0e-1]}}}")
    for key in section:
        if key not in SECTION_KEYS:
            raise ConfigError(located(f"unknown key{suggest(str(key), SECTION_KEYS)} (allowed: "
                                      f"{', '.join(SECTION_KEYS)})", f"tune.{key}", marks))
    metric = _metric(section.get("metric"), config)
    space = _space(section.get("space"), marks)
    for param in space:
        _check_path(config, overrides, param)
    pruner = section.get("pruner", DEFAULT_PRUNER)
    return TuneSpec(metric=metric, direction="maximize" if "accuracy" in metric else "minimize",
                    sampler=_component(section.get("sampler", DEFAULT_SAMPLER), "tune.sampler", marks),
                    pruner=None if pruner is None else _component(pruner, "tune.pruner", marks), space=space)


def _metric(value: Any, config: Config) -> str:
    if value is None:
        monitor = config.train.monitor
        return "val_accuracy" if monitor == "auto" else monitor
    if value not in METRICS:
        raise ConfigError(located(f"{value!r} is not a metric a run measures{suggest(str(value), METRICS)} "
                                  f"(allowed: {', '.join(METRICS)})", "tune.metric", config.marks))
    return value


def _component(value: Any, key: str, marks: Any) -> Component:
    if isinstance(value, str) and value:
        return Component(value)
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return Component(value["name"], {k: v for k, v in value.items() if k != "name"})
    raise ConfigError(located(f"must be an Optuna class name, or a mapping with name: and its arguments; got {value!r}",
                              key, marks))


def _space(value: Any, marks: Any) -> tuple[Param, ...]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(located("must map override paths to what to search, e.g. optimizer.lr: {log: [1.0e-4, 1.0e-1]}"
                                  f"; got {value!r}", "tune.space", marks))
    return tuple(_param(str(path), entry, marks) for path, entry in value.items())


def _param(path: str, entry: Any, marks: Any) -> Param:
    key = f"tune.space.{path}"
    if not isinstance(entry, Mapping) or len(entry) != 1 or next(iter(entry)) not in KINDS:
        raise ConfigError(located(f"must be one of {{log: [low, high]}}, {{float: [low, high]}}, {{int: [low, high]}}, "
                                  f"{{choice: [a, b, ...]}}; got {entry!r}", key, marks))
    kind, values = next(iter(entry.items()))
    if kind == "choice":
        if not isinstance(values, list) or not values:
            raise ConfigError(located(f"choice: needs a non-empty list of values; got {values!r}", key, marks))
        if any(not (v is None or isinstance(v, (bool, int, float, str))) for v in values):
            raise ConfigError(located("choice: values must be numbers, strings, booleans or null; got "
                                      f"{values!r}", key, marks))
        return Param(path, kind, tuple(values))
    return Param(path, kind, _bounds(kind, values, key, marks))


def _bounds(kind: str, values: Any, key: str, marks: Any) -> tuple:
    number = int if kind == "int" else (int, float)
    if (not isinstance(values, list) or len(values) != 2
            or any(isinstance(v, bool) or not isinstance(v, number) or not math.isfinite(v) for v in values)):
        what = "integers" if kind == "int" else "numbers"
        raise ConfigError(located(f"{kind}: needs [low, high], two {what}; got {values!r}", key, marks))
    low, high = values
    if kind == "log" and low <= 0:
        raise ConfigError(located(f"log: range must be above 0 (it is searched on a log scale); got [{low}, {high}]",
                                  key, marks))
    if low >= high:
        raise ConfigError(located(f"{kind}: low must be below high; got [{low}, {high}]", key, marks))
    return (low, high)


def _check_path(config: Config, overrides: Sequence[str], param: Param) -> None:
    """Build the config as `train` would at each of the entry's bounds and choices: a path the config
    does not have, an argument its component lacks, or a value it refuses is an error now, naming the
    tune file and the entry, rather than a failed trial 7 naming the base config."""
    from dltool.training.check import check_config

    for value in param.values:
        try:
            check_config(load_config(Path(config.path), [*overrides, param.override(value)]))
        except DltoolError as exc:
            raise ConfigError(located(f"cannot be searched: {param.override(value)}: {_bare(str(exc))}",
                                      f"tune.space.{param.key}", config.marks)) from None


def _bare(message: str) -> str:
    """A config error without its place: the tune file's entry is the place to blame."""
    message = re.sub(r"^override '[^']*': ", "", message)
    message = re.sub(r"^(command line|[^\s:][^:]*:\d+(:\d+)?): ", "", message)
    return re.sub(r" \([^()]* set on the command line\)$", "", message)


def signature(spec: TuneSpec) -> dict:
    """What a study was begun with and must keep: the metric and every space entry, as plain data."""
    return {"metric": spec.metric, "space": {p.key: {p.kind: list(p.values)} for p in spec.space}}


def check_unchanged(began: dict, spec: TuneSpec, config: Config, study: str) -> None:
    """Refuse a tune section whose metric or space differs from the one study `study` began with:
    Optuna cannot mix the old trials' values with a new space, and the best trial would compare unlike runs.

    Raises:
        ConfigError: the first difference: which key, from what to what, and how to start afresh.
    """
    now = signature(spec)
    fresh = f"a new --name starts a new study (or put back what study {study!r} began with)"
    if began.get("metric") != now["metric"]:
        raise ConfigError(located(f"changed since study {study!r} began: {began.get('metric')} -> {now['metric']}; "
                                  f"{fresh}", "tune.metric", config.marks))
    old, new = began.get("space", {}), now["space"]
    for key in [*new, *(k for k in old if k not in new)]:
        if old.get(key) == new.get(key):
            continue
        before = _entry(old.get(key), "not searched")
        after = _entry(new.get(key), "no longer searched")
        where = f"tune.space.{key}" if key in new else "tune.space"
        what = f"{key}: " if key not in new else ""
        raise ConfigError(located(f"{what}changed since study {study!r} began: {before} -> {after}; {fresh}",
                                  where, config.marks))


def _entry(entry: dict | None, missing: str) -> str:
    if entry is None:
        return missing
    kind, values = next(iter(entry.items()))
    return f"{{{kind}: {json.dumps(values)}}}"
