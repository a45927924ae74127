"""Reading YAML safely: one document, YAML 1.2 numbers, duplicate keys and alias bombs refused,
depth capped, and the line and column of every dotted key recorded for error messages."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import yaml

from dltool.config.spec import Mark, Marks
from dltool.errors import ConfigError, first_line, with_location

MAX_DEPTH = 50  # levels of nested mappings and lists a config may have
# Values a config may hold once YAML aliases (*name) are expanded: real configs hold a few hundred,
# and a nest of aliases ("billion laughs") would otherwise expand to billions in our own walks.
MAX_VALUES = 100_000


class ConfigLoader(yaml.SafeLoader):
    """The safe loader, reading numbers as YAML 1.2 does: `1e-3`, `3e-4`, `1.0e-3` and `+1e3` are
    floats (YAML 1.1, PyYAML's default, reads an exponent without a dot or sign as text)."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        """An integer, or a located error for one longer than Python converts to text (4,300 digits),
        also when written in hex, octal or binary (which Python reads without that limit)."""
        limit = sys.get_int_max_str_digits()
        try:
            value = super().construct_yaml_int(node)
        except ValueError:
            value = None
        if value is None or value.bit_length() > limit * math.log2(10):
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of more than {limit:,} digits; write a smaller number", node.start_mark)
        return value


ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def parse_yaml(text: str, file: str) -> tuple[Any, Marks]:
    """Safe-load one YAML document and record the line/column of every dotted key.

    Raises:
        ConfigError: invalid YAML, a duplicate key, or more than MAX_VALUES values once aliases expand.
    """
    try:
        data, node = load_document(text, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise ConfigError(with_location(f"invalid YAML: {problem}", file, None, line, column)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {first_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{file}: invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    check_depth(data, file)
    marks = Marks({"": Mark(file)})
    if node is not None:
        _record_marks(node, "", file, marks, depth=0)
    return data, marks


def load_document(text: str, file: str, key: str = "") -> tuple[Any, yaml.Node | None]:
    """(data, node) of one YAML document (the value of `key`), checked by `check_nodes` before it
    is constructed."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        check_nodes(node, file, key)
        return loader.construct_document(node), node
    finally:
        loader.dispose()


def check_nodes(root: yaml.Node, file: str, key: str = "") -> None:
    """Refuse duplicate keys in a mapping, and documents that expand to more than MAX_VALUES values.

    Each node is visited once (an alias is a second reference to the same node), so a nest of
    aliases costs as much as its text, not as much as its expansion.

    Raises:
        ConfigError: a key written twice in one mapping (both lines named), or too many values.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, key: str) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 1  # a node that refers to itself counts once
        if isinstance(node, yaml.MappingNode):
            _check_duplicates(node, key, file)
            children = [(v, child_key(key, k.value)) for k, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(v, child_key(key, i)) for i, v in enumerate(node.value)]
        else:
            children = []
        total = 1 + sum(size(child, child_key) for child, child_key in children)
        if total > MAX_VALUES:
            raise ConfigError(f"{file}: the YAML expands to more than {MAX_VALUES:,} values through "
                              "aliases (&/*); a config needs far fewer")
        sizes[id(node)] = total
        return total

    size(root, key)


def _check_duplicates(node: yaml.MappingNode, key: str, file: str) -> None:
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base` merges on purpose: its keys may be written again
        first = seen.setdefault((key_node.tag, key_node.value), key_node.start_mark)
        if first is not key_node.start_mark:
            mark = key_node.start_mark
            raise ConfigError(with_location(f"duplicate key (first at line {first.line + 1})", file,
                                            child_key(key, key_node.value), mark.line + 1, mark.column + 1))


def child_key(key: str, part: Any) -> str:
    return f"{key}.{part}" if key else str(part)


def check_depth(data: Any, where: str) -> None:
    """Refuse data nested deeper than any config needs (deeper data would exhaust Python's recursion).

    Raises:
        ConfigError: more than MAX_DEPTH levels of mappings and lists.
    """
    level, todo = 0, [data]
    while todo:
        todo = [v for node in todo if isinstance(node, (dict, list))
                for v in (node.values() if isinstance(node, dict) else node)]
        level += 1
        if level > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; a config needs far fewer")


def _record_marks(node: yaml.Node, key: str, file: str, marks: Marks, depth: int) -> None:
    if depth > 100:
        return
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = f"{key}.{key_node.value}" if key else str(key_node.value)
            marks[child] = Mark(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            _record_marks(value_node, child, file, marks, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{key}.{i}" if key else str(i)
            marks[child] = Mark(file, item.start_mark.line + 1, item.start_mark.column + 1)
            _record_marks(item, child, file, marks, depth + 1)
