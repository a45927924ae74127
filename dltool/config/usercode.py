"""The user's own code: Python files given with `--code` and installed packages that declare the
entry-point group `dltool.plugins`. In them, `from dltool import register` and decorators put
layers, datasets, transforms, losses and whole models into the registries, under names a config
then uses like torch's own. A config never imports anything: code comes in only from here.

Each file becomes the module `dltool.code_<stem>_<hash>`. Its path is kept in the environment
(DLTOOL_CODE) that child processes inherit (DDP ranks, tune workers, DataLoader workers), and
`import dltool` there loads the same files, so the user's classes unpickle by that module name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from dltool.config.registry import DATASETS, LAYERS, LOSSES, TRANSFORMS, Registry
from dltool.errors import CodeChanged, CodeError, ConfigError, first_line

ENVIRONMENT = "DLTOOL_CODE"
PLUGIN_GROUP = "dltool.plugins"
PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


@dataclass
class CodeFile:
    """One source of the user's code: a `--code` file (path, sha256) or a plugin (path is its name)."""

    path: str
    sha256: str = ""
    plugin: bool = False
    names: list[str] = field(default_factory=list)


_files: dict[str, CodeFile] = {}  # by absolute path (plugins by "plugin NAME")
_loading: list[CodeFile] = []  # the source whose code runs now: registrations belong to it
_plugins_loaded = False


class Register:
    """`register.layer`, `.dataset`, `.transform`, `.loss`, `.model`: decorators, bare or with a name.

        @register.layer             # named SEBlock in the YAML
        class SEBlock(nn.Module): ...

        @register.layer("SE")       # named SE
        class SqueezeExcite(nn.Module): ...
    """

    def layer(self, target: Any = None) -> Any:
        """An nn.Module for `model.layers`; `in_channels`, `in_features`, `num_features` are filled in."""
        return _decorator(LAYERS, target, _as_is)

    def model(self, target: Any = None) -> Any:
        """A whole network (`model: {name: MyNet, ...}`); `num_classes` and `in_channels` are filled in."""
        return _decorator(LAYERS, target, _as_is)

    def dataset(self, target: Any = None) -> Any:
        """A map-style Dataset class whose items are (image, label)."""
        return _decorator(DATASETS, target, _dataset_builder)

    def transform(self, target: Any = None) -> Any:
        """A transform class (built with the YAML's arguments), or a function of the image."""
        return _decorator(TRANSFORMS, target, lambda fn: _function_builder(fn, inputs=1))

    def loss(self, target: Any = None) -> Any:
        """A loss class (an nn.Module built with the YAML's arguments), or a function (outputs, targets)."""
        return _decorator(LOSSES, target, lambda fn: _function_builder(fn, inputs=2))


register = Register()
KINDS = {"layer": LAYERS, "model": LAYERS, "dataset": DATASETS, "transform": TRANSFORMS, "loss": LOSSES}


def _decorator(registry: Registry, target: Any, builder: Callable[[Any], Any]) -> Any:
    if target is None or isinstance(target, str):
        return lambda obj: _add(registry, target, obj, builder)
    return _add(registry, None, target, builder)


def _add(registry: Registry, name: str | None, target: Any, builder: Callable[[Any], Any]) -> Any:
    source = _loading[-1] if _loading else None
    where = source.path if source is not None else getattr(target, "__module__", None) or "Python code"
    entry = name or target.__name__
    registry.register(entry, builder(target), source=where)
    if source is not None:
        source.names.append(entry)
    return target


def _as_is(target: Any) -> Any:
    return target


def _function_builder(target: Any, inputs: int) -> Any:
    """A class is built with the YAML's arguments; a function is used as it is, the YAML's arguments
    bound by keyword after its first `inputs` parameters (the image; or the outputs and targets)."""
    if inspect.isclass(target):
        return target
    sig = inspect.signature(target)
    params = [p.replace(kind=p.KEYWORD_ONLY) for p in list(sig.parameters.values())[inputs:]
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def build(**kwargs: Any) -> Any:
        return Bound(target, kwargs)

    build.__signature__ = sig.replace(parameters=params)
    build.__name__ = target.__name__
    build.__doc__ = target.__doc__
    return build


class Bound:
    """A user's function with the YAML's keyword arguments bound (picklable, unlike a closure)."""

    def __init__(self, function: Callable, kwargs: Mapping[str, Any]):
        self.function = function
        self.kwargs = dict(kwargs)

    def __call__(self, *inputs: Any) -> Any:
        return self.function(*inputs, **self.kwargs)

    def __repr__(self) -> str:
        return f"{self.function.__name__}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


def _dataset_builder(cls: Any) -> Any:
    """A DATASETS builder for the user's Dataset class, with its own signature (less `train`/`split`,
    which dltool passes per split). The data stage turns the class into a Source."""
    if not inspect.isclass(cls):
        raise ConfigError(f"@register.dataset: {cls!r} is not a class; register a Dataset class whose items "
                          "are (image, label)")
    sig = inspect.signature(cls)
    params = [p for p in sig.parameters.values() if p.name not in ("self", "train", "split", "transform")]

    def build(**kwargs: Any) -> Any:
        # by module name, as the registries fill themselves: the data stage is above this one
        return importlib.import_module("dltool.data.usercode").user_source(cls, kwargs)

    build.__signature__ = sig.replace(parameters=params)
    build.__name__ = cls.__name__
    build.__doc__ = cls.__doc__
    build.user_class = cls
    return build


def load_code(paths: Sequence[str | Path] = ()) -> list[CodeFile]:
    """Load the `--code` files (each once per process) and the installed plugins.

    Raises:
        ConfigError: a file is missing or not a Python file.
        CodeError: the file raised while loading (its traceback in `details`).
        RegistryError: a name it registers is taken (both sources named).
    """
    for path in paths:
        load_file(path)
    load_plugins()
    files = [f.path for f in _files.values() if not f.plugin]
    if files:
        os.environ[ENVIRONMENT] = os.pathsep.join(files)
    return list(_files.values())


def load_from_environment() -> None:
    """In a child process (DDP rank, tune worker, DataLoader worker): load what the parent loaded."""
    for path in filter(None, os.environ.get(ENVIRONMENT, "").split(os.pathsep)):
        if Path(path).is_file():
            load_file(path)


def load_file(path: str | Path) -> CodeFile:
    """Run one `--code` file as the module `dltool.code_<stem>_<hash>`; its registrations name it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--code {path}: no such file")
    if file.suffix != ".py":
        raise ConfigError(f"--code {path}: not a Python file (.py)")
    resolved = str(file.resolve())
    if resolved in _files:
        return _files[resolved]
    text = file.read_bytes()
    record = CodeFile(resolved, hashlib.sha256(text).hexdigest())
    module_name = f"dltool.code_{re.sub(r'[^0-9a-zA-Z_]', '_', file.stem)}_{record.sha256[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    _files[resolved] = record
    _run(record, lambda: spec.loader.exec_module(module))
    return record


def load_plugins() -> None:
    """Import every installed package's `dltool.plugins` entry point, once per process (as pytest
    loads its plugins); what they register names the plugin."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for point in entry_points(group=PLUGIN_GROUP):
        record = CodeFile(f"plugin {point.name} ({point.value})", plugin=True)
        _files[record.path] = record
        _run(record, point.load)


def _run(record: CodeFile, load: Callable[[], Any]) -> None:
    _loading.append(record)
    try:
        load()
    except ConfigError:
        raise
    except Exception as exc:
        what = f"{type(exc).__name__}: {first_line(exc)}".rstrip(": ") if str(exc).strip() else type(exc).__name__
        raise CodeError(f"{record.path}: loading this code failed ({what}); the traceback above is its own",
                        details=their_traceback(exc)) from None
    finally:
        _loading.pop()


def their_traceback(exc: BaseException) -> str:
    """The traceback of `exc` without dltool's frames and the import machinery's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(PACKAGE_DIR) and not f.filename.startswith("<frozen")]
    lines = ["Traceback (most recent call last):\n", *traceback.format_list(frames),
             *traceback.format_exception_only(type(exc), exc)]
    return "".join(lines).rstrip("\n")


def forget() -> None:
    """Unload every `--code` file: its names leave the registries, its module leaves sys.modules, and
    child processes no longer load it (for a program that runs several commands in one process)."""
    for record in [f for f in _files.values() if not f.plugin]:
        for registry in {id(r): r for r in KINDS.values()}.values():
            for name in record.names:
                registry.remove(name)
        for module in [m for m, value in sys.modules.items() if getattr(value, "__file__", None) == record.path]:
            del sys.modules[module]
        del _files[record.path]
    os.environ.pop(ENVIRONMENT, None)


def loaded() -> list[CodeFile]:
    """The sources loaded in this process."""
    return list(_files.values())


def code_record(config_data: Any) -> list[dict]:
    """What a run keeps of the user's code: each loaded source with the names the config uses.

    Args:
        config_data: the resolved config as plain data (names appear as strings and keys in it).
    """
    words = {w.lower() for w in _words(config_data)}
    return [{"path": f.path, "sha256": f.sha256, "plugin": f.plugin, "names": [n for n in f.names if n.lower() in words]}
            for f in _files.values() if not f.plugin or any(n.lower() in words for n in f.names)]


def _words(data: Any) -> Iterable[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield str(key)
            yield from _words(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _words(value)


def check_code(record: Any, where: str) -> None:
    """Before a run's checkpoint is used: the names it took from the user's code must be loaded.

    A file loaded with another hash than the run's is a CodeChanged warning, and the work goes on.

    Raises:
        ConfigError: a name is missing; one line names them, their file and the --code to add.
    """
    if not isinstance(record, list):
        return
    have = {n.lower(): f for f in _files.values() for n in f.names}
    for entry in record:
        names = [str(n) for n in entry.get("names", ())] if isinstance(entry, Mapping) else []
        missing = [n for n in names if n.lower() not in have]
        if missing:
            path = str(entry.get("path"))
            how = (f"install the package that provides it ({path})" if entry.get("plugin")
                   else f"add --code {path}")
            raise ConfigError(f"{where}: uses {', '.join(missing)} from {path}, which is not loaded; {how}")
        changed = {have[n.lower()].path for n in names if have[n.lower()].sha256 != entry.get("sha256")}
        for path in sorted(changed):
            if not entry.get("plugin"):
                warnings.warn(CodeChanged(f"{path} differs from the code {where} was trained with (sha256 "
                                          f"{str(entry.get('sha256'))[:12]} then, {_files[path].sha256[:12]} now); "
                                          "going on with it"), stacklevel=2)


def check_run_code(config_path: Path) -> None:
    """A run folder's config.yaml (lr-find, or a resume before the first checkpoint): its code/code.json
    names what it needs, checked as a checkpoint's record is."""
    record = config_path.parent / "code" / "code.json"
    if config_path.name != "config.yaml" or not record.is_file():
        return
    try:
        entries = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the record is for the reader; a damaged one leaves the names to the registries
    check_code(entries, str(config_path.parent))
