"""The run directory (DESIGN.md section 3): config.yaml, metrics.csv, summary.json, checkpoints/, tb/.

    runs/x/config.yaml          written before training starts
    runs/x/metrics.csv          one row per epoch
    runs/x/summary.json         best epoch, final metrics, throughput
    runs/x/checkpoints/last.pt  every epoch and on interruption; best.pt when the monitor improves
    runs/x/tb/                  TensorBoard events (`tensorboard --logdir runs`)
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

from dltool.checkpoint import checkpoint_in, fsync_folder, remove_stale_temps, save_checkpoint
from dltool.config import dump_yaml
from dltool.errors import ConfigError, RunFailed

COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds",
           "samples_per_second")


def metric_columns(task: str, num_classes: int) -> tuple[str, ...]:
    """The documented columns, then the extra ones this kind of run measures."""
    if task == "regression":
        return (*COLUMNS, "train_mae", "val_mae")
    return (*COLUMNS, "val_top5_accuracy") if num_classes >= 5 else COLUMNS


class RunDir:
    """One run's folder and the files in it."""

    def __init__(self, path: str | Path, columns: Sequence[str] = COLUMNS):
        self.path = Path(path)
        self.columns = tuple(columns)

    @classmethod
    def create(cls, runs_dir: str | Path, name: str, columns: Sequence[str] = COLUMNS) -> RunDir:
        """A new folder `runs_dir/name`, or `name-2`, `name-3`, ... when taken (never reused).

        Raises:
            ConfigError: the name is not a plain folder name, or runs_dir cannot be created.
        """
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise ConfigError(f"--name: {name!r} is not a folder name (no slashes)")
        root = Path(runs_dir)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--runs-dir: cannot create {root}: {exc.strerror}") from None
        for i in range(1, 10_000):
            path = root / (name if i == 1 else f"{name}-{i}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return cls(path, columns)
        raise ConfigError(f"--runs-dir: {root} holds too many runs named {name}")

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def remove_stale_temps(self) -> None:
        """Delete temp files a killed run left in this folder and its checkpoints/ (before a resume)."""
        for folder in (self.path, self.checkpoints):
            remove_stale_temps(folder)

    def write_config(self, data: dict) -> None:
        _write_text(self.path / "config.yaml", dump_yaml(data))

    def write_bad_files(self, bad_files: Sequence[tuple[str, str]]) -> None:
        if bad_files:
            _write_text(self.path / "bad_files.txt", "".join(f"{path}\t{reason}\n" for path, reason in bad_files))

    def append_metrics(self, row: dict) -> None:
        """Add one epoch's row to metrics.csv (header first; unknown keys dropped, missing ones blank)."""
        target = self.path / "metrics.csv"
        new = not target.exists()
        with open(target, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k)) for k in self.columns})
            handle.flush()
            os.fsync(handle.fileno())

    def keep_metrics_until(self, epoch: int) -> None:
        """Drop rows after `epoch` (written by a run that died before its checkpoint): resume rewrites them."""
        target = self.path / "metrics.csv"
        if not target.exists():
            return
        with open(target, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            self.columns = tuple(rows[0].keys())
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(r for r in rows if str(r.get("epoch") or "").isdigit() and int(r["epoch"]) <= epoch)
        _write_text(target, out.getvalue())

    def write_summary(self, summary: dict) -> None:
        _write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def save(self, state: dict, *, best: bool) -> None:
        """Write last.pt (and best.pt when `best`), each atomically.

        Raises:
            RunFailed: the disk refused a write (full, read-only); the previous checkpoint is kept.
        """
        for path in (self.last, self.best) if best else (self.last,):
            try:
                save_checkpoint(state, path)
            except OSError as exc:
                reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
                raise RunFailed(f"cannot write checkpoint {path}: {reason} (the previous checkpoint is kept)") from None


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _write_text(path: Path, text: str) -> None:
    """Atomic write: a crash leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (`runs/x` for `runs/x/checkpoints/last.pt`)."""
    folder = checkpoint.parent
    return folder.parent if folder.name == "checkpoints" else folder


def never_saved(target: Path) -> bool:
    """A run folder (it has its config.yaml) that was stopped before its first checkpoint: `--resume`
    starts it over."""
    return target.is_dir() and (target / "config.yaml").is_file() and checkpoint_in(target, ("last.pt",)) is None


def resume_checkpoint(path: str | Path) -> Path:
    """The checkpoint `--resume` continues from: a file itself, or a run folder's checkpoints/last.pt.

    Raises:
        ConfigError: nothing to resume there.
    """
    path = Path(path)
    if path.is_dir():
        found = checkpoint_in(path, ("last.pt",))
        if found is None:
            raise ConfigError(f"--resume: {path} has no checkpoints/last.pt (was it a run folder?)")
        return found
    if not path.is_file():
        raise ConfigError(f"--resume: no such run folder or checkpoint: {path}")
    return path
