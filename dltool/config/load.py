"""Config: safe YAML load with line marks, `base:` inheritance, KEY=VALUE overrides, and
validation into frozen dataclasses.

After `load_config` returns, the rest of dltool trusts the typed Config.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import math
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import yaml

from dltool.config.registry import suggest
from dltool.config.spec import COMMAND_LINE, Mark, Marks, Spec, located, parse_spec
from dltool.config.usercode import check_run_code
from dltool.errors import ConfigError, with_location

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


def _f(default: Any = None, *, factory: Any = None, **checks: Any) -> Any:
    """A dataclass field with range checks (`min`, `gt`, `lt`, `max`) in its metadata."""
    if factory is not None:
        return field(default_factory=factory, metadata=checks)
    return field(default=default, metadata=checks)


@dataclass(frozen=True)
class TransformsConfig:
    train: Optional[tuple[Spec, ...]] = None
    eval: Optional[tuple[Spec, ...]] = None


@dataclass(frozen=True)
class DataConfig:
    dataset: Spec = _f(factory=lambda: Spec("Digits"))
    val_split: float = _f(0.2, min=0, lt=1)  # 0: train on everything, no validation
    batch_size: int = _f(64, min=1)
    eval_batch_size: Optional[int] = _f(None, min=1)
    num_workers: Optional[int] = _f(None, min=0)  # None: CPU count - 1 on the per-sample path
    shuffle: bool = True
    drop_last: bool = False
    pin_memory: Literal["auto", True, False] = "auto"
    persistent_workers: bool = False
    sampler: Optional[Literal["balanced"]] = None
    channels: Optional[Literal[1, 3]] = None
    classes: Optional[tuple[Any, ...]] = None  # names or indices: keep those classes, relabelled 0..k-1
    transforms: TransformsConfig = _f(factory=TransformsConfig)
    batch_transforms: tuple[Spec, ...] = ()
    cache: Literal["auto", "ram", "none"] = "auto"
    cache_budget_mb: int = _f(2048, min=0)
    max_image_pixels: int = _f(89_478_485, min=1)
    decode: Literal["reduced", "full"] = "reduced"  # reduced: at the size the transforms need (data/draft.py)
    photo_cache_mb: Optional[int] = _f(None, min=0)  # None: a quarter of the machine's memory; 0: no cache


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple[Spec, ...] = ()
    input_shape: Optional[tuple[int, ...]] = None
    init: Mapping[str, Any] = _f(factory=dict)
    freeze: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(10, min=1)
    device: str = "auto"
    deterministic: bool = False
    monitor: str = "auto"
    mode: Literal["auto", "max", "min"] = "auto"
    patience: Optional[int] = _f(None, min=1)
    min_delta: float = _f(0.0, min=0)
    clip_grad_norm: Optional[float] = _f(None, gt=0)
    clip_grad_value: Optional[float] = _f(None, gt=0)
    accumulate: int = _f(1, min=1)
    amp: Literal["none", "auto", "bf16", "fp16"] = "none"
    ema: Optional[float] = _f(None, gt=0, lt=1)
    warmup_epochs: float = _f(0.0, min=0)
    scheduler_interval: Literal["auto", "epoch", "step"] = "auto"
    channels_last: bool = False
    compile: bool = False
    histograms: bool = False  # weight/gradient histograms each epoch: ~0.1 s per million parameters
    log_every: int = _f(10, min=1)
    unfreeze_at: Optional[int] = _f(None, min=1)
    threads: Optional[int] = _f(None, min=1)


@dataclass(frozen=True)
class Config:
    seed: int = _f(0, min=0)
    data: DataConfig = _f(factory=DataConfig)
    model: ModelConfig = _f(factory=ModelConfig)
    loss: Spec = _f(factory=lambda: Spec("CrossEntropyLoss"))
    optimizer: Spec = _f(factory=lambda: Spec("Adam", kwargs={"lr": 1e-3}))
    scheduler: Optional[Spec] = None
    train: TrainConfig = _f(factory=TrainConfig)
    tune: Optional[Mapping[str, Any]] = _f(None, omit_if_none=True)  # `dltool tune` reads it; `train` ignores it
    path: Optional[str] = field(default=None, compare=False, metadata={"internal": True})
    marks: Marks = field(default_factory=Marks, compare=False, repr=False, metadata={"internal": True})

    @property
    def stem(self) -> str:
        return Path(self.path).stem if self.path else "run"

    def to_data(self) -> dict:
        """The resolved config as plain YAML data (defaults filled in); `config_from_data` inverts it."""
        return _to_data(self)


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config, resolve `base:`, apply KEY=VALUE overrides and validate.

    Raises:
        ConfigError: the file is missing or unreadable, the YAML is invalid, or a value is wrong.
    """
    check_run_code(Path(path))
    data, marks = load_yaml_tree(Path(path))
    for text in overrides:
        apply_override(data, marks, text)
    return validate(data, marks, path=str(path))


def config_from_data(data: Mapping, source: str = "checkpoint") -> Config:
    """Validate plain config data (e.g. stored in a checkpoint)."""
    marks = Marks({"": Mark(source)})
    return validate(dict(data), marks, path=None)


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


# YAML with marks ---------------------------------------------------------------------------------


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


def parse_yaml(text: str, file: str) -> tuple[Any, Marks]:
    """Safe-load one YAML document and record the line/column of every dotted key.

    Raises:
        ConfigError: invalid YAML, a duplicate key, or more than MAX_VALUES values once aliases expand.
    """
    try:
        data, node = _load_document(text, file)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        line = mark.line + 1 if mark else None
        column = mark.column + 1 if mark else None
        raise ConfigError(with_location(f"invalid YAML: {problem}", file, None, line, column)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: invalid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{file}: invalid YAML: nested more than {MAX_DEPTH} levels deep") from None
    check_depth(data, file)
    marks = Marks({"": Mark(file)})
    if node is not None:
        _record_marks(node, "", file, marks, depth=0)
    return data, marks


def _load_document(text: str, file: str, key: str = "") -> tuple[Any, yaml.Node | None]:
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
            children = [(v, _child_key(key, k.value)) for k, v in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(v, _child_key(key, i)) for i, v in enumerate(node.value)]
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
                                            _child_key(key, key_node.value), mark.line + 1, mark.column + 1))


def _child_key(key: str, part: Any) -> str:
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
                    and _component_name(value) is None:
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
    old_name, new_name = _component_name(old), _component_name(new)
    if old_name is None or new_name is None:
        return False
    return str(old_name).lower() != str(new_name).lower() or ("name" in old) != ("name" in new)


def _component_name(value: Any) -> Any:
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


# Overrides ---------------------------------------------------------------------------------------


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
    if last == "name" and _component_name(node) is not None:
        old = _component_name(node)
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
        value, _ = _load_document(raw, where, key)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
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


# Validation --------------------------------------------------------------------------------------


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


def _to_data(obj: Any) -> Any:
    if isinstance(obj, Spec):
        return obj.to_data()
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("internal")
                and not (f.metadata.get("omit_if_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, tuple):
        return [_to_data(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _to_data(v) for k, v in obj.items()}
    return obj
