"""Checkpoints: atomic saves, safe loads (weights_only=True, always), run-directory resolution.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (docs/run-folder.md#checkpoint):
`model`, `optimizer`, `scheduler`, `epoch`, `step`, `config`, `classes`, `metrics`, `rng`, `versions`,
and `output`: what a classifier's outputs are (dltool.models.outputs; absent in older checkpoints: softmax).
"""

from __future__ import annotations

import functools
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

from dltool.config.usercode import check_code
from dltool.errors import CheckpointError, DltoolError, first_line
from dltool.store.writing import remove_stale_temps, replace_atomically

REQUIRED_KEYS = ("model", "config")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically (`dltool.store.writing.replace_atomically`), first removing
    the temp files of `path` that a killed save left.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    return replace_atomically(path, functools.partial(_torch_save, state))


def _torch_save(state: dict, handle: Any) -> None:
    import torch

    sink = _WriteSink(handle)
    try:
        torch.save(state, sink)
    except RuntimeError:
        if sink.error is not None:  # torch reports a failed write (disk full) as a RuntimeError
            raise sink.error from None
        raise


class _WriteSink:
    """The file torch.save writes to; it keeps the OSError of a failed write, which torch would hide."""

    def __init__(self, handle: Any):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def checkpoint_in(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` in a run folder's checkpoints/, then in the folder itself; None if absent."""
    candidates = [folder / "checkpoints" / name for name in names] + [folder / name for name in names]
    return next((c for c in candidates if c.is_file()), None)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file itself, or for a run directory its best.pt, else last.pt.

    Raises:
        CheckpointError: nothing there, or a run directory without checkpoints.
    """
    path = Path(path)
    if path.is_dir():
        found = checkpoint_in(path, ("best.pt", "last.pt"))
        if found is None:
            folds = sorted((d for d in path.glob("fold-*") if checkpoint_in(d, ("best.pt", "last.pt"))),
                           key=lambda d: (len(d.name), d.name))
            if folds:
                raise CheckpointError(f"{path}: a cross-validation run: each fold is a run of its own; give one of "
                                      f"{', '.join(str(d) for d in folds)}")
            raise CheckpointError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this folder")
        return found
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a dltool checkpoint with `torch.load(weights_only=True)`; nothing in the file is executed.

    Tensors saved on a GPU land on `map_location` (the CPU by default), so a checkpoint from a CUDA
    run loads on a machine without one.

    Raises:
        CheckpointError: unsafe (needs arbitrary unpickling), damaged, not a checkpoint, or not dltool's.
    """
    import torch

    path = resolve_checkpoint(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_refusal(path, exc)) from None
    except EOFError:
        raise CheckpointError(f"{path}: not a checkpoint: the file is empty or ends too early") from None
    except (RuntimeError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError, TypeError,
            IndexError) as exc:
        raise CheckpointError(_unreadable(path, exc)) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a dltool checkpoint (it holds a {type(state).__name__}, not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        bare = state and all(isinstance(v, torch.Tensor) for v in state.values())
        what = "a bare state_dict (weights only)" if bare else "a dict without " + " and ".join(missing)
        raise CheckpointError(f"{path}: not a dltool checkpoint: it holds {what}; dltool needs the "
                              "checkpoint `dltool train` writes (it stores the model config)")
    state["path"] = str(path)
    check_code(state.get("code"), str(path))
    return state


def _refusal(path: Path, exc: BaseException) -> str:
    """The message for a file torch's weights-only unpickler refused."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    name = found.group(1) if found else _pickled_global(path)
    if name is not None:
        return (f"{path}: refused to load: unpickling it would import {name}, which can run code "
                "(nothing was executed); dltool loads only tensors and plain data")
    return _unreadable(path, exc)


def _pickled_global(path: Path) -> str | None:
    """The first module.name a plain (non-zip) pickle file would import, read without executing it."""
    if zipfile.is_zipfile(path):
        return None
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
        # from memory: a random length field then reads what is there, not gigabytes
        for opcode, arg, _ in pickletools.genops(io.BytesIO(head)):
            if opcode.name in ("GLOBAL", "INST"):
                return str(arg).replace(" ", ".")
            if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                return f"{strings[-2]}.{strings[-1]}"
            if isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError, OSError):
        return None
    return None


def _unreadable(path: Path, exc: BaseException) -> str:
    if zipfile.is_zipfile(path) or "zip archive" in str(exc):
        return f"{path}: damaged or truncated checkpoint ({_short(exc)}); save or copy it again"
    return f"{path}: not a checkpoint: the file was not written by torch.save"


def _short(exc: BaseException) -> str:
    return first_line(exc).split(". ")[0].removeprefix("PytorchStreamReader failed reading zip archive: ")[:160]


def rebuild_model(checkpoint: dict) -> tuple[Any, Any]:
    """The model of a loaded checkpoint, rebuilt from its config and with its weights, in eval mode.

    Args:
        checkpoint: a dict from `load_checkpoint`.

    Returns:
        (model on the CPU, the checkpoint's Config).

    Raises:
        CheckpointError: the stored config or input shape is unusable, or the weights do not fit
            the rebuilt model (missing, unexpected or differently shaped tensors).
    """
    from dltool.models import build_model

    path = checkpoint.get("path", "checkpoint")
    config = checkpoint_config(checkpoint)
    shape = checkpoint.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
        raise CheckpointError(f"{path}: the checkpoint has no valid input_shape (got {shape!r})")
    classes = checkpoint.get("classes") or []
    try:
        # the stored state_dict replaces any pretrained weights: do not read or download them
        model = build_model(config.model, tuple(shape), len(classes) or None, pretrained=False)
    except DltoolError as exc:
        raise CheckpointError(f"{path}: cannot rebuild its model: {exc}") from None
    load_weights(model, checkpoint["model"], path)
    model.eval()
    return model, config


def checkpoint_config(checkpoint: dict) -> Any:
    """The validated Config stored in a checkpoint.

    Raises:
        CheckpointError: the stored config is missing or not valid.
    """
    from dltool.config.load import config_from_data

    path = checkpoint.get("path", "checkpoint")
    data = checkpoint.get("config")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the checkpoint holds no dltool config (config is {type(data).__name__})")
    if isinstance(data.get("data"), dict) and "decode" not in data["data"]:
        data = {**data, "data": {**data["data"], "decode": "full"}}  # saved before reduced decoding: in full
    try:
        return config_from_data(data, source=f"{path} (stored config)")
    except DltoolError as exc:
        raise CheckpointError(f"{path}: its stored config is not valid: {exc}") from None


def load_weights(model: Any, state: Any, path: str) -> None:
    """`model.load_state_dict(state)` strictly, with every mismatch named in one line.

    Raises:
        CheckpointError: missing, unexpected or differently shaped tensors.
    """
    import torch

    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: its model entry is not a state_dict of tensors")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (checkpoint {list(state[k].shape)}, model {list(expected[k].shape)})"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{label}: {_listed(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
    if problems:
        raise CheckpointError(f"{path}: the weights do not fit the model rebuilt from its config; "
                              + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _listed(keys: list[str], shown: int = 4) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more
