"""`dltool runs`: the run folders under a directory and where each stands, as plain data.

A run's status comes from its summary.json (finished, interrupted, failed, pruned) unless a live
process holds its `.lock` (running); a folder a killed process left without a summary is
interrupted (it resumes from its last checkpoint). A finished or interrupted run without a checkpoint
(a copied folder) is "no checkpoints", and one whose summary.json cannot be used is "unreadable":
both carry a `reason`, and the other runs are listed as ever.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dltool.errors import ConfigError

FIELDS = ("name", "path", "status", "epochs_done", "best_epoch", "monitor", "best_value", "best_val_accuracy",
          "train_seconds", "created")


def is_running(run_dir: Path) -> bool:
    """Whether a live process holds the run folder's lock (see dltool.training.run_folder.RunDir.hold)."""
    import fcntl

    try:
        fd = os.open(run_dir / ".lock", os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken just now
    return False


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file() and ((path / ".lock").exists()
                                                                  or (path / "metrics.csv").exists())


def find_runs(root: str | Path) -> list[Path]:
    """Run folders at `root` or below it (a study's trials/NNN too), oldest first."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"runs: {root} is not a folder; give the folder that holds run folders (default: runs)")
    found = [p for p in [root, *root.rglob("*")] if is_run_dir(p)]
    return sorted(found, key=lambda p: (_created(p), str(p)))


def _created(path: Path) -> float:
    return (path / "config.yaml").stat().st_mtime if (path / "config.yaml").exists() else path.stat().st_mtime


def run_row(path: Path, root: Path) -> dict[str, Any]:
    """One run as the fields of `runs --json` (docs/outputs.md)."""
    from dltool.training.curves import read_rows, read_summary

    summary, problem = read_summary(path)
    status = "running" if is_running(path) else "unreadable" if problem else summary.get("status") or "interrupted"
    if status in ("finished", "interrupted") and not _has_checkpoint(path):
        status, problem = "no checkpoints", "not resumable: checkpoints/ holds no last.pt or best.pt (a copied folder?)"
    rows = read_rows(path) if status == "running" or not summary else []
    name = str(path.relative_to(root)) if path != root else path.name
    row = {"name": name, "path": str(path), "status": status, "created": time.strftime(
        "%Y-%m-%d %H:%M:%S", time.localtime(_created(path)))}
    if summary and status != "running":
        row.update({k: summary.get(k) for k in ("epochs_done", "best_epoch", "monitor", "best_value",
                                                "best_val_accuracy", "train_seconds")})
    else:  # what metrics.csv shows so far
        accuracy = [r for r in rows if "val_accuracy" in r]
        best = max(accuracy, key=lambda r: r["val_accuracy"], default=None)
        row.update({"epochs_done": int(rows[-1]["epoch"]) if rows else 0,
                    "best_epoch": int(best["epoch"]) if best else None, "monitor": "val_accuracy" if best else None,
                    "best_value": best["val_accuracy"] if best else None,
                    "best_val_accuracy": best["val_accuracy"] if best else None,
                    "train_seconds": round(sum(r.get("epoch_seconds", 0.0) for r in rows), 4) if rows else None})
    return {key: row.get(key) for key in FIELDS} | ({"reason": problem} if problem else {})


def _has_checkpoint(path: Path) -> bool:
    return any((path / "checkpoints" / name).is_file() for name in ("last.pt", "best.pt"))


def list_runs(root: str | Path = "runs") -> list[dict[str, Any]]:
    """Every run under `root`, oldest first, as `run_row` gives it."""
    root = Path(root)
    return [run_row(path, root) for path in find_runs(root)]
