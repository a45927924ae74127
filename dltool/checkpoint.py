"""Checkpoints: atomic writes, safe loads (weights_only=True, always), run-directory resolution.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (DESIGN.md section 4):
`model`, `optimizer`, `scheduler`, `epoch`, `step`, `config`, `classes`, `metrics`, `rng`, `versions`.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from dltool.errors import CheckpointError

REQUIRED_KEYS = ("model", "config")


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` to `path` atomically: temp file in the same folder, flush, fsync, rename, fsync folder.

    A crash at any moment leaves either the previous file or the new one, never a torn file.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file itself, or for a run directory its best.pt, else last.pt.

    Raises:
        CheckpointError: nothing there, or a run directory without checkpoints.
    """
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.pt", path / "checkpoints" / "last.pt",
                          path / "best.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path}: no checkpoints/best.pt or checkpoints/last.pt in this folder")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Load a dltool checkpoint with `torch.load(weights_only=True)`; nothing in the file is executed.

    Raises:
        CheckpointError: unsafe (needs arbitrary unpickling), damaged, not a checkpoint, or not dltool's.
    """
    import torch

    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0] if "weights_only" not in str(exc) else "it holds Python objects that weights_only loading refuses"
        raise CheckpointError(f"{path}: refused to load: {reason}; dltool only loads plain tensors and data") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (damaged or not written by torch.save): {_short(exc)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a dltool checkpoint (it holds a {type(state).__name__}, not a dict)")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        hint = " (a bare state_dict?)" if all(isinstance(v, torch.Tensor) for v in state.values()) else ""
        raise CheckpointError(f"{path}: not a dltool checkpoint{hint}: missing {', '.join(missing)}")
    state["path"] = str(path)
    return state


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
