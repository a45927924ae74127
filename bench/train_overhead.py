"""dltool's training throughput against the best hand-written loop, as a ratio measured in one process.

    python bench/train_overhead.py [--repeat N] [--epochs E] [--threads T]

Runs bench/plain_loop.py's loop and `dltool train bench/lenet_digits28.yaml` (the same LeNet,
digits at 28x28, batch 64, Adam, data held in memory) in turn, N times each, on T torch threads
for both, after one warm-up run of each. Compares samples per second in training steps only:
summary.json's train_samples_per_second against the plain loop's; the ratio printed is the median
of the rounds' ratios (the two runs of a round are adjacent in time, so load drift cancels). The
plain loop trains on all 1,797 images, dltool on its 80% train split; per-sample rates compare
the same work.
Target: ratio >= 0.98.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import plain_loop  # noqa: E402

CONFIG = HERE / "lenet_digits28.yaml"
TARGET = 0.98


def dltool_rate(runs_dir: Path, name: str, epochs: int, threads: int) -> float:
    """`dltool train` on the benchmark config; summary.json's train_samples_per_second."""
    from dltool.cli import app

    args = ["train", str(CONFIG), f"train.epochs={epochs}", f"train.threads={threads}",
            "--runs-dir", str(runs_dir), "--name", name, "--quiet"]
    with contextlib.redirect_stderr(io.StringIO()):
        app(args=args, standalone_mode=False)
    return json.loads((runs_dir / name / "summary.json").read_text())["train_samples_per_second"]


def plain_rate(epochs: int, threads: int) -> float:
    torch.set_num_threads(threads)
    return plain_loop.train(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=6)  # many rounds: on a shared machine one round varies by 10%
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    plain, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        plain_rate(1, args.threads)
        dltool_rate(runs, "warmup", 1, args.threads)
        for i in range(args.repeat):
            plain.append(plain_rate(args.epochs, args.threads))
            ours.append(dltool_rate(runs, f"run{i}", args.epochs, args.threads))
            print(f"round {i + 1}: plain {plain[-1]:.0f} samples/s, dltool {ours[-1]:.0f} samples/s, "
                  f"ratio {ours[-1] / plain[-1]:.3f}", flush=True)
    # each round's two runs are adjacent in time: their ratio cancels the machine's drifting load
    paired = statistics.median(o / p for o, p in zip(ours, plain))
    verdict = "ok" if paired >= TARGET else "under target"
    print(f"plain loop  {statistics.median(plain):.0f} samples/s (median of {args.repeat})")
    print(f"dltool      {statistics.median(ours):.0f} samples/s (median of {args.repeat})")
    print(f"ratio {paired:.3f} (median of the rounds' ratios; target >= {TARGET}: {verdict}; ratio of the "
          f"medians {statistics.median(ours) / statistics.median(plain):.3f}), {args.threads} thread(s)")


if __name__ == "__main__":
    main()
