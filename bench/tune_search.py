"""The acceptance search of `dltool tune`: the quickstart with optimizer.lr log [1e-4, 1] and
data.batch_size choice [16, 32, 64, 128], N trials, timed in fresh processes.

    python bench/tune_search.py [--trials 20] [--settings workers1,workers2,nopruner]

Settings: `workers1` (one process, MedianPruner), `workers2` (--workers 2, MedianPruner),
`nopruner` (one process, pruner: null). For each: wall time, best val_accuracy, finished /
pruned / failed trials, and the epochs trained over all trials (what pruning saves).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPACE = {"optimizer.lr": {"log": [1.0e-4, 1.0]}, "data.batch_size": {"choice": [16, 32, 64, 128]}}
SETTINGS = {"workers1": (1, "MedianPruner"), "workers2": (2, "MedianPruner"), "nopruner": (1, None)}


def run(setting: str, trials: int, folder: Path) -> dict:
    workers, pruner = SETTINGS[setting]
    config = folder / f"{setting}.yaml"
    config.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "quickstart.yaml"),
                                      "tune": {"pruner": pruner, "space": SPACE}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dltool", "tune", str(config), "--trials", str(trials),
                           "--workers", str(workers), "--runs-dir", str(folder / "runs"), "--json", "--quiet"],
                          env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    report = json.loads(done.stdout)
    epochs = 0
    for trial in (folder / "runs" / setting / "trials").iterdir():
        summary = trial / "summary.json"
        if summary.exists():
            epochs += json.loads(summary.read_text())["epochs_done"]
    states = [t["state"] for t in report["trials"]]
    return {"setting": setting, "wall_seconds": round(seconds, 1), "best_val_accuracy": report["best_value"],
            "best_params": report["best_params"], "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"), "epochs_trained": epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--settings", default="workers1,workers2,nopruner")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings.split(","):
            print(json.dumps(run(setting, args.trials, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
