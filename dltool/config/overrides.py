"""KEY=VALUE overrides from the command line: dotted keys into the YAML, list indexes from either
end, `+` to append, a new name replacing a component."""

from __future__ import annotations

from typing import Any

import yaml

from dltool.config.inherit import component_name
from dltool.config.spec import COMMAND_LINE, Mark, Marks
from dltool.config.yaml_read import MAX_DEPTH, check_depth, load_document
from dltool.errors import ConfigError, first_line

APPEND = "+"  # the last part of an override key that appends to a list: model.layers.+=Dropout


def apply_override(data: dict, marks: Marks, text: str) -> None:
    """Apply one `dotted.key=value` (value parsed as YAML) to `data` in place.

    A bare component name on the way (`loss: CrossEntropyLoss`) becomes `{name: ...}` so that its
    arguments can be set (`loss.label_smoothing=0.1`). List indexes may count from the end (`-1`),
    and `+` as the last part appends (`model.layers.+=Dropout`). `KEY.name=NEW` on a component
    replaces it: the old one's arguments belong to the old name.
    """
    where = f"override {text!r}"
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{where}: expected KEY=VALUE with a dotted key, like train.epochs=3")
    value = _override_value(raw, where, key)
    parts = key.split(".")
    node: Any = data
    path: list[str] = []  # the key's parts with list positions as indexes from the start
    for depth, part in enumerate(parts[:-1]):
        node, part = _descend(node, part, parts[depth + 1], where, ".".join(parts[: depth + 1]))
        path.append(part)
    path.append(_assign(node, parts[-1], value, where, key))
    key = ".".join(path)
    if parts[-1] == "name" and isinstance(node, dict) and len(node) == 1:
        key = ".".join(path[:-1]) or key  # a component replaced: its old arguments' marks go too
    for stale in [k for k in marks if k == key or k.startswith(key + ".")]:
        del marks[stale]
    parts_so_far = ""
    for part in path:
        parts_so_far = f"{parts_so_far}.{part}" if parts_so_far else part
        marks.setdefault(parts_so_far, Mark(COMMAND_LINE))
    marks[key] = Mark(COMMAND_LINE)


def _assign(node: Any, last: str, value: Any, where: str, key: str) -> str:
    """Set `last` of `node` to `value`; return the part as written into the key (an index from the start)."""
    if isinstance(node, list):
        if last == APPEND:
            node.append(value)
            return str(len(node) - 1)
        i = _index(node, last, where, key)
        node[i] = value
        return str(i)
    if last == APPEND:
        raise ConfigError(f"{where}: {key.rpartition('.')[0] or key} is not a list; {APPEND} appends to a list")
    if last == "name" and component_name(node) is not None:
        old = component_name(node)
        if not (isinstance(value, str) and isinstance(old, str) and value.lower() == old.lower()):
            node.clear()
        elif "name" not in node:
            return last  # {Adam: {...}}.name=Adam: it is that already
    node[last] = value
    return last


def _override_value(raw: str, where: str, key: str) -> Any:
    """The value of an override, read by the config's own loader (so `1e-3` is a number here too)."""
    if not raw.strip():
        return None
    try:
        value, _ = load_document(raw, where, key)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: the value is not valid YAML ({first_line(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: the value is nested more than {MAX_DEPTH} levels deep") from None
    check_depth(value, where)
    return value


def _descend(node: Any, part: str, next_part: str, where: str, key: str) -> tuple[Any, str]:
    """The child `part` of `node` to go on from, and `part` as an index from the start in a list."""
    if isinstance(node, list):
        i = _index(node, part, where, key)
        node[i] = _as_section(node[i], next_part)
        return _arguments_of(node[i], next_part), str(i)
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: {key} is a value, not a section")
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    elif isinstance(child, str):
        child = node[part] = _as_section(child, next_part)
    elif not isinstance(child, (dict, list)):
        raise ConfigError(f"{where}: {key} is a value ({child!r}), not a section")
    return _arguments_of(child, next_part), part


def _arguments_of(node: Any, next_part: str) -> Any:
    """For a one-key component (`{ImageFolder: {root: a}}`), the mapping that holds its arguments,
    so that `data.dataset.root=b` reaches `root` without naming the component."""
    if not isinstance(node, dict) or len(node) != 1 or "name" in node or next_part in (*node, "name"):
        return node
    (name, inner), = node.items()
    if not (isinstance(name, str) and name[:1].isupper()) or not isinstance(inner, (dict, type(None))):
        return node
    if inner is None:
        inner = node[name] = {}
    return inner


def _as_section(value: Any, next_part: str) -> Any:
    """A bare component name opened up so that one of its arguments can be set."""
    if not isinstance(value, str):
        return value
    return {value: {}} if next_part == value else {"name": value}


def _index(node: list, part: str, where: str, key: str) -> int:
    """A list position (negative ones count from the end) as an index from the start."""
    n = len(node)
    try:
        i = int(part)
    except ValueError:
        raise ConfigError(f"{where}: {key} is a list; use an index 0..{n - 1} (-1 for the last item), "
                          f"or {APPEND} as the last part to append") from None
    if not -n <= i < n:
        raise ConfigError(f"{where}: {key}: index {i} is out of range (the list has {n} items)")
    return i % n
