"""dltool's training against the same work written by hand, on configs this script does not tune.

    python bench/train_overhead.py [--repeat N]

Two pairs, each run as the user runs it (a fresh process, the config as shipped, nothing but
--runs-dir added):
  quickstart  `dltool train configs/quickstart.yaml`  vs  bench/quickstart_loop.py (Dataset +
              DataLoader + torchvision transforms, the way the PyTorch courses write it)
  lenet28     `dltool train bench/lenet_digits28.yaml` (dltool's defaults: no threads, histograms
              or cache key)  vs  bench/plain_loop.py (the data held as tensors: the fastest loop)
each at the machine's default thread count and with OMP_NUM_THREADS=1 for both processes.

Two figures per pair: training samples per second (summary.json's train_samples_per_second over
the loop's, time in training steps only; target >= 0.95) and whole-process wall time (dltool's
over the loop's, start-up and everything included; target <= 1.2). A round runs the two processes
of a pair back to back, so the machine's drifting load cancels in their ratio; the figure printed
is the median of the rounds' ratios, with the range.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAIRS = {
    "quickstart": (HERE.parent / "configs" / "quickstart.yaml", HERE / "quickstart_loop.py"),
    "lenet28": (HERE / "lenet_digits28.yaml", HERE / "plain_loop.py"),
}
TARGETS = {"rate": 0.95, "wall": 1.2}


def timed(command: list[str], env: dict) -> tuple[float, str]:
    """(wall seconds, stdout) of one fresh process, which must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return time.perf_counter() - start, done.stdout


def one_round(pair: str, env: dict, runs: Path, tag: str) -> dict:
    """Both sides of `pair` once: their rates and wall times."""
    config, loop = PAIRS[pair]
    dltool = str(Path(sys.executable).with_name("dltool"))
    plain_wall, out = timed([sys.executable, str(loop), "--json"], env)
    plain = json.loads(out)
    ours_wall, _ = timed([dltool, "train", str(config), "--runs-dir", str(runs), "--name", tag], env)
    summary = json.loads((runs / tag / "summary.json").read_text())
    return {"rate": summary["train_samples_per_second"] / plain["samples_per_second"], "wall": ours_wall / plain_wall,
            "ours": summary["train_samples_per_second"], "plain": plain["samples_per_second"],
            "ours_wall": ours_wall, "plain_wall": plain_wall,
            "accuracy": (summary["best_val_accuracy"], plain["best_val_accuracy"])}


def report(pair: str, threads: str, rounds: list[dict]) -> None:
    for key, label, better in (("rate", "train samples/s", ">="), ("wall", "whole process", "<=")):
        values = [r[key] for r in rounds]
        median = statistics.median(values)
        ok = median >= TARGETS[key] if better == ">=" else median <= TARGETS[key]
        print(f"{pair:<11} {threads:<8} {label:<16} ratio {median:.3f} (rounds {min(values):.2f}-{max(values):.2f}; "
              f"target {better} {TARGETS[key]}: {'ok' if ok else 'missed'})")
    ours = statistics.median(r["ours"] for r in rounds)
    plain = statistics.median(r["plain"] for r in rounds)
    walls = (statistics.median(r["ours_wall"] for r in rounds), statistics.median(r["plain_wall"] for r in rounds))
    accuracy = rounds[-1]["accuracy"]
    print(f"{'':<20} dltool {ours:.0f} samples/s, {walls[0]:.1f} s, val {accuracy[0]:.3f}; "
          f"by hand {plain:.0f} samples/s, {walls[1]:.1f} s, val {accuracy[1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    args = parser.parse_args()
    default_env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    settings = {f"default ({os.cpu_count()} cores)": default_env, "1 thread": {**default_env, "OMP_NUM_THREADS": "1"}}
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(tmp)
        for pair in args.pairs:  # warm the file cache for both sides
            one_round(pair, default_env, runs, f"{pair}-warmup")
        for i in range(args.repeat):
            for threads, env in settings.items():
                for pair in args.pairs:
                    r = one_round(pair, env, runs, f"{pair}-{len(results)}-{i}-{threads[0]}")
                    results.setdefault((pair, threads), []).append(r)
                    print(f"round {i + 1} {pair} {threads}: rate {r['rate']:.3f} ({r['ours']:.0f} vs {r['plain']:.0f} "
                          f"samples/s), wall {r['wall']:.3f} ({r['ours_wall']:.1f} vs {r['plain_wall']:.1f} s)",
                          flush=True)
    print()
    for (pair, threads), rounds in results.items():
        report(pair, threads, rounds)


if __name__ == "__main__":
    main()
