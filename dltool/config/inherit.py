"""`base:` inheritance: a config file on top of the one it names, merged key by key (components
merge only with themselves)."""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any

from dltool.config.schema import Config
from dltool.config.spec import Marks, Spec, located
from dltool.config.yaml_read import parse_yaml
from dltool.errors import ConfigError, with_location


def load_yaml_tree(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[dict, Marks]:
    """Safe-load `path`, following `base:` (relative to the including file); mappings merge deeply."""
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise ConfigError(f"{path}: base: inheritance loops ({chain})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    data, marks = parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(with_location("a config must be a mapping of sections (data:, model:, ...)", str(path), None, 1, 1))
    base = data.pop("base", None)
    if base is None:
        return data, marks
    if not isinstance(base, str) or not base:
        raise ConfigError(located("base: must be a path to another YAML file", "base", marks))
    base_path = path.parent / base
    if not base_path.exists():
        raise ConfigError(located(f"base file not found: {base_path}", "base", marks))
    parent, parent_marks = load_yaml_tree(base_path, (*_seen, resolved))
    return deep_merge(parent, data, parent_marks, marks, "")


def deep_merge(base: dict, over: dict, base_marks: Marks, over_marks: Marks, key: str) -> tuple[dict, Marks]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists too) is replaced.

    A component (loss, optimizer, scheduler, data.dataset) merges only with itself: one whose
    name changes (`{name: RMSprop, alpha: 0.9}` under `{name: Adam, lr: 0.001}`) replaces the
    base's, whose arguments belong to the old name; arguments alone (`{lr: 0.1}`) over a bare
    name (`Adam`) are that name's arguments.
    """
    merged = dict(base)
    marks = Marks(base_marks)
    for name, value in over.items():
        child = f"{key}.{name}" if key else str(name)
        old = merged.get(name)
        if isinstance(value, dict) and isinstance(old, dict) and not _replaces(child, old, value):
            merged[name], sub = deep_merge(old, value, base_marks, over_marks, child)
            marks.update(sub)
        else:
            if child in component_keys() and isinstance(old, str) and isinstance(value, dict) \
                    and component_name(value) is None:
                value = {"name": old, **value}
            merged[name] = value
            for stale in [k for k in marks if k == child or k.startswith(child + ".")]:
                del marks[stale]
        marks.update({k: m for k, m in over_marks.items() if k == child or k.startswith(child + ".")})
    return merged, marks


def _replaces(key: str, old: dict, new: dict) -> bool:
    """True when component `new` is another component than `old` (another name, or written in the
    other mapping form), so that merging their arguments would mix two components."""
    if key not in component_keys():
        return False
    old_name, new_name = component_name(old), component_name(new)
    if old_name is None or new_name is None:
        return False
    return str(old_name).lower() != str(new_name).lower() or ("name" in old) != ("name" in new)


def component_name(value: Any) -> Any:
    """The name of a component mapping (`{name: X, ...}` or `{X: ...}`, X capitalised), else None."""
    if not isinstance(value, dict):
        return None
    if "name" in value:
        return value["name"]
    if len(value) == 1:
        (name,) = value
        if isinstance(name, str) and name[:1].isupper():
            return name
    return None


@functools.cache
def component_keys(cls: type | None = None, prefix: str = "") -> frozenset[str]:
    """The dotted keys of the Config that hold one component (a Spec): loss, data.dataset, ..."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    keys: set[str] = set()
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        hint = hints[f.name]
        kinds = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union \
            else [hint]
        if Spec in kinds:
            keys.add(prefix + f.name)
        elif dataclasses.is_dataclass(kinds[0]):
            keys |= component_keys(kinds[0], f"{prefix}{f.name}.")
    return frozenset(keys)
