"""K-fold cross-validation: one complete run per fold under one folder, and the spread of the metric.

    runs/x/config.yaml
    runs/x/fold-1/ ... runs/x/fold-K/   each an ordinary run folder (resumable on its own)
    runs/x/summary.json                 the monitored metric per fold, its mean and standard deviation

The folds partition the samples a normal run would split into train and validation (the dataset's
own train split when it has a validation split of its own), stratified by class.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from dltool.config.load import Config
from dltool.errors import ConfigError, DataError
from dltool.training.callbacks import Callback, Callbacks
from dltool.training.run_folder import RunDir


def fold_splits(bundle: Any, folds: int, seed: int) -> list[dict]:
    """The split record of each fold, in the form `build_data(split_state=...)` repeats.

    Raises:
        DataError: fewer samples (or, stratified, fewer samples of some class) than folds.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    parts = [bundle.train] + ([bundle.val] if bundle.split.get("method") == "val_split" else [])
    keys = [key for part in parts for key in part.keys]
    targets = [int(t) if bundle.classes else 0 for part in parts for t in part.targets]
    if len(keys) < folds:
        raise DataError(f"--folds {folds}: only {len(keys)} samples to divide")
    if bundle.classes:
        smallest = min(targets.count(c) for c in set(targets))
        if smallest < folds:
            raise DataError(f"--folds {folds}: the smallest class has {smallest} samples; use --folds {max(2, smallest)} or fewer")
        splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(folds, shuffle=True, random_state=seed)
    plain = [int(k) if not isinstance(k, str) else k for k in keys]
    return [{"method": "val_split", "val_split": 1 / folds, "seed": seed, "fold": i + 1, "folds": folds,
             "train": [plain[j] for j in train], "val": [plain[j] for j in val]}
            for i, (train, val) in enumerate(splitter.split(plain, targets))]


def train_folds(config: Config | str | Path | None, folds: int, *, runs_dir: str | Path = "runs",
                name: str | None = None, overrides: Sequence[str] = (),
                callbacks: Sequence[Callback] | None = None) -> Any:
    """`dltool train --folds K`: the config a fresh run would train, then one run per fold.

    K-fold calls into `dltool.training.train`, never the other way round.

    Raises:
        ConfigError: under torchrun or --nproc (the folds run one after another in one process).
        Others as `dltool.training.train.train`.
    """
    from dltool.training import distributed
    from dltool.training.train import fresh_config

    config = fresh_config(config, overrides)
    if distributed.launched():
        raise ConfigError("--folds trains its folds one after another in one process; not under torchrun or --nproc")
    return cross_validate(config, folds, runs_dir=runs_dir, name=name or config.stem,
                          callback=Callbacks(callbacks or ()))


def cross_validate(config: Config, folds: int, *, runs_dir: str | Path, name: str, callback: Callback) -> Any:
    """Train one run per fold and summarise the monitored metric over the folds.

    Returns:
        A TrainResult for the parent folder (summary: per-fold values, mean, std).

    Raises:
        ConfigError: fewer than 2 folds. Others as `dltool.training.train.train`.
    """
    from dltool.data import build_data
    from dltool.training.run import TrainResult
    from dltool.training.train import fresh_run

    if folds < 2:
        raise ConfigError(f"--folds: must be 2 or more; got {folds}")
    bundle = build_data(config)
    splits = fold_splits(bundle, folds, config.seed)
    parent = RunDir.create(runs_dir, name)
    parent.write_config(config.to_data())
    parent.write_bad_files(bundle.bad_files)
    results = []
    for split in splits:
        callback.on_message(f"fold {split['fold']}/{folds}: {len(split['train'])} train, {len(split['val'])} val samples")
        results.append(fresh_run(config, parent.path, f"fold-{split['fold']}", callback, split=split).run())
    summary = _summary(results, folds)
    parent.write_summary(summary)
    return TrainResult(parent.path, summary, [])


def _summary(results: list, folds: int) -> dict:
    values = [r.summary["best_value"] for r in results]
    seconds = sum(r.summary["train_seconds"] for r in results)
    samples = sum(r.summary["train_samples"] * r.summary["epochs_done"] for r in results)
    return {
        "status": "finished", "folds": folds, "monitor": results[0].summary["monitor"],
        "mean": statistics.fmean(values), "std": statistics.stdev(values), "values": values,
        "runs": [{"fold": i + 1, "run_dir": str(r.run_dir), "best_epoch": r.summary["best_epoch"],
                  "best_value": r.summary["best_value"], "final": r.summary["final"]} for i, r in enumerate(results)],
        "best_val_accuracy": _mean([r.summary["best_val_accuracy"] for r in results]),
        "epochs_done": sum(r.summary["epochs_done"] for r in results), "train_seconds": round(seconds, 3),
        "train_samples_per_second": round(samples / seconds, 1) if seconds else None,
        "final": {key: _mean([r.summary["final"].get(key) for r in results]) for key in ("val_loss", "val_accuracy")},
        "bad_files": results[0].summary["bad_files"],
    }


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None
