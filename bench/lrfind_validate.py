"""Does lr-find's suggestion train? For each config: `dltool lr-find` (defaults), then the config's
own training (its epochs, scheduler and all) once at its shipped optimizer.lr and once at the
suggestion, and the validation metric each reaches (best val accuracy; val MSE for a regression).

    python bench/lrfind_validate.py [CONFIG ...] [--lrs 0.01,0.1]

Without CONFIGs: the shipped configs that run offline on embedded data and the two learner's
configs in bench/. `--lrs` trains the configs at those rates too (to see where the good range is).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ["configs/quickstart.yaml", "configs/digits_logistic.yaml", "configs/linear_regression.yaml",
           "bench/lrfind_cnn.yaml", "bench/lrfind_linreg.yaml"]
DEVICE = ["train.device=cpu"]


def trained(config: Path, lr: float, folder: Path) -> tuple[str, float]:
    """The metric's name and the value a run of `config` at `lr` reaches (NaN when it diverged)."""
    from dltool.errors import RunFailed
    from dltool.training.train import train

    try:
        run = train(config, runs_dir=folder, overrides=[f"optimizer.lr={lr!r}", *DEVICE])
    except RunFailed:
        return "", math.nan
    if run.summary.get("monitor") == "val_loss":
        return "val MSE", min(row["val_loss"] for row in run.history)
    return "val acc", run.summary["best_val_accuracy"]


def shipped_lr(config: Path) -> float:
    from dltool.config.load import load_config

    return float(load_config(config).optimizer.kwargs["lr"])


def row(config: Path, label: str, extra: list[float], folder: Path) -> list[str]:
    from dltool.experiments.lrfind import lr_find

    found = lr_find(config, DEVICE, out=folder / f"{config.stem}-lr-find.png")
    shipped = shipped_lr(config)
    name, at_shipped = trained(config, shipped, folder)
    _, at_suggested = trained(config, found.suggested_lr, folder)
    cells = [label, name, f"{shipped:.3g}", f"{at_shipped:.4g}", f"{found.suggested_lr:.3g}",
             f"{at_suggested:.4g}", found.how]
    cells += [f"{lr:g}: {trained(config, lr, folder)[1]:.4g}" for lr in extra]
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", default=CONFIGS)
    parser.add_argument("--lrs", default="", help="comma-separated extra rates to train each config at")
    args = parser.parse_args()
    extra = [float(x) for x in args.lrs.split(",") if x]
    print("| config | metric | shipped lr | at shipped | suggested lr | at suggested | rule |"
          + "".join(" extra |" for _ in extra))
    print("|---" * (7 + len(extra)) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            path = Path(config) if Path(config).is_absolute() else ROOT / config
            label = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            print("| " + " | ".join(row(path, label, extra, Path(tmp))) + " |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
