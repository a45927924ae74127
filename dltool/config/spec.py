"""Component specs: the one internal form of every way a config names a component.

A component is written as a bare name (`ReLU`), a mapping with `name:` and keyword arguments
(`{name: SGD, lr: 0.1}`), a one-key mapping (`Conv2d: {out_channels: 6}`), whose value may also be
a list of positional arguments (`Conv2d: [1, 6, 5]`) or one scalar (`Dropout: 0.5`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from dltool.errors import ConfigError, with_location

COMMAND_LINE = "command line"  # the `file` of a Mark that a KEY=VALUE override set


@dataclass(frozen=True)
class Mark:
    """Where a value was written: file, 1-based line and column (None when unknown)."""

    file: str | None = None
    line: int | None = None
    column: int | None = None


class Marks(dict):
    """Dotted key -> Mark. Looking up a key that has no mark of its own falls back to its parent's."""

    def at(self, key: str) -> Mark:
        while key:
            if key in self:
                return self[key]
            key = key.rpartition(".")[0]
        return self.get("", Mark())


def located(message: str, key: str, marks: Marks | None) -> str:
    """`message` prefixed with the file, line, column and dotted key it concerns."""
    mark = marks.at(key) if marks is not None else Mark()
    return with_location(message, mark.file, key or None, mark.line, mark.column)


@dataclass(frozen=True)
class Spec:
    """A component: its registered name, positional and keyword arguments, and where it was written."""

    name: str
    args: tuple = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    key: str = field(default="", compare=False)
    marks: Marks | None = field(default=None, repr=False, compare=False)

    @property
    def mark(self) -> Mark:
        return self.marks.at(self.key) if self.marks is not None else Mark()

    def error(self, message: str) -> str:
        """`message` located at this spec, naming the component, and the arguments that overrides
        set in it (the line of the file is not all there is to blame then)."""
        return located(f"{self.name}: {message}{self._overridden()}", self.key, self.marks)

    def _overridden(self) -> str:
        if self.marks is None or not self.key or self.mark.file == COMMAND_LINE:
            return ""
        keys = [k for k, m in self.marks.items() if m.file == COMMAND_LINE and k.startswith(self.key + ".")]
        leaves = sorted(k for k in keys if not any(other.startswith(k + ".") for other in keys))
        return f" ({', '.join(leaves)} set on the command line)" if leaves else ""

    def child(self, value: Any, key: str) -> Spec:
        """Parse a nested component written under this one (e.g. a layer inside `Residual.body`)."""
        return parse_spec(value, f"{self.key}.{key}" if self.key else key, self.marks)

    def to_data(self) -> Any:
        """The spec as plain YAML data, in the shortest form that means the same."""
        if not self.args and not self.kwargs:
            return self.name
        if self.args and not self.kwargs:
            return {self.name: list(self.args)}
        if self.args:
            return {self.name: {"args": list(self.args), **self.kwargs}}
        return {self.name: dict(self.kwargs)}


FORMS = "a name, a one-key mapping like {Conv2d: {out_channels: 6}}, or a mapping with name: and its arguments"


def parse_spec(value: Any, key: str, marks: Marks | None = None) -> Spec:
    """Normalise any of the accepted component forms into a Spec.

    Raises:
        ConfigError: the value is not a component in any accepted form.
    """
    if isinstance(value, str) and value:
        return _checked(value, (), {}, key, marks)
    if isinstance(value, Mapping) and "name" in value:
        name = value["name"]
        kwargs = {k: v for k, v in value.items() if k != "name"}
        args = kwargs.pop("args", ())
        return _checked(name, args, kwargs, key, marks)
    if isinstance(value, Mapping) and len(value) == 1:
        (name, inner), = value.items()
        if inner is None:
            return _checked(name, (), {}, key, marks)
        if isinstance(inner, Mapping):
            kwargs = dict(inner)
            args = kwargs.pop("args", ())
            return _checked(name, args, kwargs, key, marks)
        if isinstance(inner, list):
            return _checked(name, inner, {}, key, marks)
        return _checked(name, (inner,), {}, key, marks)
    raise ConfigError(located(f"expected {FORMS}; got {_describe(value)}", key, marks))


def _checked(name: Any, args: Any, kwargs: dict, key: str, marks: Marks | None) -> Spec:
    if not isinstance(name, str) or not name:
        raise ConfigError(located(f"a component name must be a non-empty string; got {_describe(name)}", key, marks))
    if "." in name:
        last = name.rpartition(".")[2]
        hint = f"; did you mean {last}?" if last[:1].isupper() else ""  # a class in the user's --code file
        raise ConfigError(located(f"{name}: components are named by their registered name (Conv2d, SGD, ...), not "
                                  "an import path; nothing in a config imports code (dltool list shows the names)"
                                  + hint, key, marks))
    if not isinstance(args, (list, tuple)):
        args = (args,)
    for arg in kwargs:
        if not isinstance(arg, str):
            raise ConfigError(located(f"{name}: argument names must be strings; got {arg!r}", key, marks))
    return Spec(name, tuple(args), kwargs, key=key, marks=marks)


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return f"a mapping with keys {', '.join(map(str, value)) or '(none)'}"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
