"""What the registries hold, for `dltool list`."""

from __future__ import annotations

import fnmatch
import importlib.util

from dltool.config.registry import REGISTRIES, suggest
from dltool.errors import ConfigError


def _registry(kind: str):
    registry = REGISTRIES.get(kind.lower()) if kind else None
    if registry is None:
        raise ConfigError(f"unknown kind {kind!r}{suggest(kind, REGISTRIES)} (kinds: {', '.join(REGISTRIES)})")
    return registry


def registry_names(kind: str | None, pattern: str | None = None) -> list[str] | dict[str, list[str]]:
    """The names in one registry, or {kind: names} for all of them; only those matching `pattern`
    (wildcards; a plain word matches anywhere in the name, any case). `models` also holds timm's
    models, as `timm/NAME`, when timm is installed."""
    if kind is None:
        return {k: registry_names(k, pattern) for k in REGISTRIES}
    registry = _registry(kind)
    names = matching(registry.names(), pattern)
    if registry.kind == "models" and timm_installed():
        from dltool.models.timm import PREFIX, model_names

        names += [PREFIX + name for name in matching(model_names(), pattern)]
    return names


def matching(names: list[str], pattern: str | None) -> list[str]:
    if not pattern:
        return names
    wanted = pattern.lower() if any(c in pattern for c in "*?[") else f"*{pattern.lower()}*"
    return [name for name in names if fnmatch.fnmatchcase(name.lower(), wanted)]


def timm_installed() -> bool:
    return importlib.util.find_spec("timm") is not None


def describe(kind: str | None, name: str) -> list[tuple[str, str]]:
    """(argument, default) rows for one registered entry."""
    if kind is None:
        raise ConfigError("name a kind first, e.g. `dltool list layers Conv2d`")
    registry = _registry(kind)
    if registry.kind == "models" and name.lower().startswith("timm/"):
        return timm_rows(name)
    rows = registry.parameters(registry.canonical(name))
    if registry.kind == "layers":  # sizes the stack builder infers from the incoming shape
        from dltool.models.builder import CHANNEL_ARGS, LAST_DIM_ARGS

        inferred = (*CHANNEL_ARGS, *LAST_DIM_ARGS)
        rows = [(arg, "filled in: the input shape" if arg in inferred else default) for arg, default in rows]
    return rows


def timm_rows(name: str) -> list[tuple[str, str]]:
    """TimmModel's own arguments, then the data config of the model's pretrained weights."""
    from dltool.config.spec import Spec
    from dltool.models.timm import architecture, import_timm

    text = architecture(name, Spec("TimmModel"))
    rows = [("name", repr(text)), ("pretrained", "False"), ("freeze", "()"),
            ("num_classes, in_chans", "filled in: the data"), ("**kwargs", "")]
    config = import_timm().models.get_pretrained_cfg(text)
    if config is not None:
        rows += [(f"weights {key}", repr(getattr(config, key)))
                 for key in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")]
    return rows
