"""One small registry class, and the registries dltool fills from torch, torchvision and itself.

Registries are filled lazily: the first lookup imports the modules that walk torch (so that
`dltool --help` imports no torch).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Iterable

from dltool.config.spec import Spec, located
from dltool.errors import RegistryError, first_line


class Registry:
    """Names (case-insensitive) -> builders, with close-match suggestions and argument checks."""

    def __init__(self, kind: str, fill: Iterable[str] = (), *, noun: str | None = None):
        self.kind = kind
        self.noun = noun or kind.removesuffix("s")
        self._fill = tuple(fill)
        self._filled = not self._fill
        self._entries: dict[str, tuple[str, Callable]] = {}
        self._refused: dict[str, tuple[str, str]] = {}
        self._supplied: dict[str, dict[str, str]] = {}
        self._sources: dict[str, str] = {}  # entries from the user's code: name -> the file or plugin

    def register(self, name: str | None = None, obj: Callable | None = None, *, source: str | None = None) -> Callable:
        """Register `obj` under `name` (default: its __name__); usable as a decorator.

        `source` names where an entry from the user's code comes from (a `--code` file, a plugin);
        such an entry may not take a name that a built-in or another source holds.

        Raises:
            ValueError: a built-in name (ignoring case) is taken already.
            RegistryError: a name from the user's code is taken already (both sources named).
        """
        def add(target: Callable) -> Callable:
            entry = name or target.__name__
            if source is not None:
                self._ensure_filled()
            if entry.lower() in self._entries:
                if source is None:
                    raise ValueError(f"{self.kind} registry already has {entry!r}")
                taken = self._entries[entry.lower()][0]
                raise RegistryError(f"{source}: {self.noun} {entry!r} collides with {taken!r} from "
                                    f"{self.source(taken)}; register it under another name, "
                                    f"e.g. @register.{self.noun}(\"My{entry}\")")
            self._entries[entry.lower()] = (entry, target)
            if source is not None:
                self._sources[entry.lower()] = source
            return target

        return add(obj) if obj is not None else add

    def remove(self, name: str) -> None:
        """Take an entry of the user's code out again (a caller that loads code files for a while)."""
        if name.lower() in self._sources:
            del self._entries[name.lower()], self._sources[name.lower()]

    def source(self, name: str) -> str:
        """Where entry `name` comes from: the user's file or plugin, or the module of a built-in."""
        own = self._sources.get(name.lower())
        if own is not None:
            return own
        target = self._entries[name.lower()][1]
        return f"built-in {getattr(target, '__module__', None) or 'dltool'}"

    def from_user(self, name: str) -> bool:
        """True for an entry that the user's code registered."""
        return name.lower() in self._sources

    def where(self, name: str, exc: BaseException) -> str:
        """' (in FILE:LINE)': the last line of the user's file that `exc` passed through, for an entry
        from their code (so a failure inside their block points at their line); else ''."""
        source = self._sources.get(name.lower())
        lines = [tb.tb_lineno for tb in _frames(exc.__traceback__) if tb.tb_frame.f_code.co_filename == source]
        return f" (in {source}:{lines[-1]})" if lines else ""

    def refuse(self, name: str, reason: str) -> None:
        """Leave `name` out of the listing and make naming it an error that says `reason` (an entry
        that needs what YAML cannot hold, such as a Python function)."""
        self._refused[name.lower()] = (name, reason)

    def supply(self, name: str, arguments: dict[str, str]) -> None:
        """Record the arguments dltool fills in for entry `name` ("*": every entry), each with what
        it fills them from, for `dltool list KIND NAME`."""
        self._supplied.setdefault(name.lower(), {}).update(arguments)

    def supplied(self, name: str) -> dict[str, str]:
        """Argument -> what dltool fills it from, for entry `name`."""
        self._ensure_filled()
        return {**self._supplied.get("*", {}), **self._supplied.get(name.lower(), {})}

    def __contains__(self, name: str) -> bool:
        self._ensure_filled()
        return isinstance(name, str) and name.lower() in self._entries and name.lower() not in self._refused

    def names(self) -> list[str]:
        self._ensure_filled()
        return sorted((entry for key, (entry, _) in self._entries.items() if key not in self._refused), key=str.lower)

    def canonical(self, name: str, spec: Spec | None = None) -> str:
        """The registered spelling of `name`."""
        return self._lookup(name, spec)[0]

    def get(self, name: str, spec: Spec | None = None) -> Callable:
        """The builder registered under `name` (any case).

        Raises:
            RegistryError: no such name; the message lists the closest names.
        """
        return self._lookup(name, spec)[1]

    def _lookup(self, name: str, spec: Spec | None) -> tuple[str, Callable]:
        self._ensure_filled()
        refused = self._refused.get(name.lower())
        if refused is not None:
            raise RegistryError(spec_error(spec, f"{refused[0]}: {refused[1]}"))
        found = self._entries.get(name.lower())
        if found is not None:
            return found
        message = f"unknown {self.noun} {name!r}"
        message += suggest(name, self.names()) + f" (see `dltool list {self.kind}`)"
        raise RegistryError(spec_error(spec, message))

    def build(self, spec: Spec, *args: Any, **extra: Any) -> Any:
        """Call the builder for `spec` with its arguments, plus `args`/`extra` supplied by dltool.

        Positional `args` come before the spec's own; `extra` keyword arguments fill what the
        user left out (a keyword written in the spec wins).

        Raises:
            RegistryError: an argument is unknown, missing or refused by the builder.
        """
        target = self.get(spec.name, spec)
        kwargs = {**extra, **spec.kwargs}
        check_arguments(target, (*args, *spec.args), kwargs, spec)
        try:
            return target(*args, *spec.args, **kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError) as exc:  # torch refuses some values with RuntimeError
            raise RegistryError(spec.error(first_line(exc) + self.where(spec.name, exc))) from exc

    def parameters(self, name: str) -> list[tuple[str, str]]:
        """(argument, default, 'required' or 'filled in: ...') for `dltool list KIND NAME`."""
        target = self.get(name)
        supplied = self.supplied(name)
        try:
            params = signature(target).parameters.values()
        except (TypeError, ValueError):
            return []
        rows = []
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                rows.append((("*" if p.kind == p.VAR_POSITIONAL else "**") + p.name, ""))
            elif p.name in supplied:
                rows.append((p.name, f"filled in: {supplied[p.name]}"))
            else:
                rows.append((p.name, "required" if p.default is p.empty else repr(p.default)))
        return rows

    def _ensure_filled(self) -> None:
        if not self._filled:
            self._filled = True
            for module in self._fill:
                importlib.import_module(module)


def signature(target: Callable) -> inspect.Signature:
    sig = inspect.signature(target)
    if inspect.isclass(target):
        params = list(sig.parameters.values())
        sig = sig.replace(parameters=[p for p in params if p.name != "self"])
    return sig


def check_arguments(target: Callable, args: tuple, kwargs: dict, spec: Spec) -> None:
    """Refuse keyword names the target does not take (with a suggestion) and missing/extra args."""
    try:
        sig = signature(target)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not takes_any:
        for key in kwargs:
            if key not in named:
                allowed = ", ".join(named) or "no arguments"
                raise RegistryError(spec.error(
                    f"unknown argument {key!r}{suggest(key, named)} (allowed: {allowed})"))
    try:
        sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise RegistryError(spec.error(first_line(exc))) from exc


def suggest(word: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' (or 'X or Y') for the closest choices, ignoring case, else ''."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(word).lower(), list(lowered), n=3, cutoff=0.6)
    if not close:
        return ""
    names = [lowered[c] for c in close]
    return "; did you mean " + " or ".join(names) + "?"


def spec_error(spec: Spec | None, message: str) -> str:
    return located(message, spec.key, spec.marks) if spec is not None else message


def _frames(tb: Any) -> Iterable[Any]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


LAYERS = Registry("layers", fill=["dltool.models.layers"])
TRANSFORMS = Registry("transforms", fill=["dltool.data.transforms"])
DATASETS = Registry("datasets", fill=["dltool.data.datasets"])
LOSSES = Registry("losses", fill=["dltool.training.optim"], noun="loss")
OPTIMIZERS = Registry("optimizers", fill=["dltool.training.optim"])
SCHEDULERS = Registry("schedulers", fill=["dltool.training.optim"])
MODELS = Registry("models", fill=["dltool.models.torchvision"])

REGISTRIES = {r.kind: r for r in (LAYERS, DATASETS, TRANSFORMS, LOSSES, OPTIMIZERS, SCHEDULERS, MODELS)}

# Entries that take a Python function: a config holds data only, so naming them is an error.
NO_CODE = "which a YAML config cannot hold (nothing in a config runs code)"
TRANSFORMS.refuse("Lambda", f"takes a Python function (lambd), {NO_CODE}; use the named transforms "
                            "(`dltool list transforms`)")
for _name in ("LambdaLR", "MultiplicativeLR"):
    SCHEDULERS.refuse(_name, f"takes a Python function (lr_lambda), {NO_CODE}; use StepLR, MultiStepLR, "
                             "ExponentialLR, LinearLR or SequentialLR")
