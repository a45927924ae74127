"""Helpers of the reliability tests: a tiny run's config, weight hashes, and the figures the bench reads."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

# FakeData on the per-sample path is reproducible across processes, so a resumed run can be
# compared bit for bit with an uninterrupted one
TINY = {
    "seed": 0,
    "data": {"dataset": {"name": "FakeData", "size": 96, "image_size": [1, 8, 8], "num_classes": 5},
             "batch_size": 16, "cache": "none",
             "transforms": {"train": ["ToTensor", {"RandomHorizontalFlip": 0.5}], "eval": ["ToTensor"]}},
    "model": {"layers": [{"Conv2d": {"out_channels": 4, "kernel_size": 3, "padding": 1}}, "BatchNorm2d", "ReLU",
                         "Flatten", {"Dropout": 0.2}, {"Linear": {"out_features": "num_classes"}}]},
    "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
    "scheduler": "OneCycleLR",
    "train": {"epochs": 4, "device": "cpu", "log_every": 1, "histograms": False, "threads": 1},
}


def write_config(folder: Path, name: str = "tiny", data: dict | None = None) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data if data is not None else TINY))
    return path


def weights_hash(checkpoint: Path) -> str:
    """sha256 of a checkpoint's model tensors, in key order."""
    state = torch.load(checkpoint, weights_only=True)["model"]
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def dltool_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dltool", *args]


def run_dltool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`dltool ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(dltool_command(*args), capture_output=True, text=True, timeout=timeout)


def record(figure: str, amount: int) -> None:
    """Add `amount` to a figure in the file bench/reliability.py reads (DLTOOL_RELIABILITY_FIGURES)."""
    target = os.environ.get("DLTOOL_RELIABILITY_FIGURES")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"figure": figure, "amount": amount}) + "\n")


def one_line_error(stderr: str) -> str:
    """The single line a refused command prints; fails on a traceback or several lines."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


def read_only(folder: Path) -> None:
    """Remount the tmpfs at `folder` read-only (the `tmpfs` fixture unmounts it after the test)."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
