"""What the registries hold, for `dltool list`."""

from __future__ import annotations

from dltool.config.registry import REGISTRIES, suggest
from dltool.errors import ConfigError


def _registry(kind: str):
    registry = REGISTRIES.get(kind.lower()) if kind else None
    if registry is None:
        raise ConfigError(f"unknown kind {kind!r}{suggest(kind, REGISTRIES)} (kinds: {', '.join(REGISTRIES)})")
    return registry


def registry_names(kind: str | None) -> list[str] | dict[str, list[str]]:
    """The names in one registry, or {kind: names} for all of them."""
    if kind is None:
        return {k: r.names() for k, r in REGISTRIES.items()}
    return _registry(kind).names()


def describe(kind: str | None, name: str) -> list[tuple[str, str]]:
    """(argument, default) rows for one registered entry."""
    if kind is None:
        raise ConfigError("name a kind first, e.g. `dltool list layers Conv2d`")
    registry = _registry(kind)
    rows = registry.parameters(registry.canonical(name))
    if registry.kind == "layers":  # sizes the stack builder infers from the incoming shape
        from dltool.models.builder import CHANNEL_ARGS, LAST_DIM_ARGS

        inferred = (*CHANNEL_ARGS, *LAST_DIM_ARGS)
        rows = [(arg, "filled in: the input shape" if arg in inferred else default) for arg, default in rows]
    return rows
