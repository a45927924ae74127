"""`train()`: config -> parts -> a Run (loop, hooks, run folder) -> TrainResult.

A fresh run and a resumed one differ only in where their parts come from: the YAML (with a new
run folder) or a checkpoint (with its run folder, its split, and every state it saved). Both are
made by `dltool.training.parts.build_parts` and trained by `dltool.training.run.Run`.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from dltool.config.load import Config, apply_override, config_from_data, load_config
from dltool.config.spec import Marks
from dltool.errors import CheckpointError, ConfigError
from dltool.models import with_model_defaults
from dltool.training import distributed
from dltool.training.callbacks import Callback, Callbacks
from dltool.training.checkpointing import restore
from dltool.training.firststep import check_first_step
from dltool.training.loggers import require as require_loggers
from dltool.training.parts import build_parts
from dltool.training.run import Fresh, Resumed, Run, TrainResult
from dltool.training.run_folder import RunDir, metric_columns, never_saved, resume_checkpoint, run_dir_of
from dltool.training.runtime import set_rng_state

# what a resumed run restores besides the model and its config
RESUME_KEYS = ("optimizer", "scheduler", "rng", "split", "input_shape", "task", "classes", "loop")


def train(config: Config | str | Path | None = None, *, runs_dir: str | Path = "runs", name: str | None = None,
          resume: str | Path | None = None, overrides: Sequence[str] = (), callbacks: Sequence[Callback] | None = None) -> TrainResult:
    """Train a model as `config` says and write its run folder (docs/run-folder.md).

    Args:
        config: a Config, or the path of a YAML config (None with `resume`).
        runs_dir: where run folders go; the folder is `name` (default: the config's stem), then -2, -3, ...
        name: the run folder's name.
        resume: a run folder or checkpoint to continue; its config is used, and `overrides` may
            change `train.*` keys only (e.g. `train.epochs=30` to extend the run).
        overrides: KEY=VALUE strings applied on top of the config.
        callbacks: hooks called beside the run's own (dltool.training.callbacks.Callback): progress, a trial's reporter.

    Returns:
        A TrainResult.

    Raises:
        ConfigError, DataError, ShapeError, CheckpointError: bad input.
        RunFailed: a non-finite loss (the checkpoints keep the last good weights).
        Interrupted: SIGINT/SIGTERM; last.pt was saved and the message says how to resume.
    """
    callback = Callbacks(callbacks or ())
    check_config_or_resume(config, resume)
    if resume is not None:
        return resumed_run(resume, overrides, callback).run()
    config, note = with_model_defaults(fresh_config(config, overrides))
    require_loggers(config)
    if note:
        callback.on_message(note)
    return fresh_run(config, runs_dir, name or config.stem, callback).run()


def fresh_config(config: Config | str | Path | None, overrides: Sequence[str]) -> Config:
    """The Config a fresh run trains: loaded from its file with `overrides`, or given loaded."""
    if config is None:
        raise ConfigError("train: give a config file, or --resume RUN_OR_CKPT")
    if not isinstance(config, Config):
        config = load_config(config, overrides)
    elif overrides:
        raise ConfigError("train: overrides apply to a config file; this config is loaded already")
    return config


def check_config_or_resume(config: Any, resume: Any) -> None:
    """A config given with --resume would be silently unused: refuse the pair.

    Raises:
        ConfigError: both are given.
    """
    if resume is not None and config is not None:
        shown = config.path if isinstance(config, Config) and getattr(config, "path", None) else config
        raise ConfigError(f"train: give either a config or --resume, not both: a resumed run keeps the config it was "
                          f"trained with, so {shown} would not be used; to change train.* keys, put them after "
                          f"--resume: dltool train --resume {resume} train.epochs=30")


def fresh_run(config: Config, runs_dir: str | Path, name: str, callback: Callback, split: dict | None = None,
              folder: Path | None = None) -> Run:
    """A new run: its parts from the config, checked with one batch, then a new run folder with
    config.yaml written first (or, given `folder`, that run folder again: a run started over).

    Args:
        split: a split record for the data to repeat (a fold of `--folds`).
    """
    parts = build_parts(config, split=split)  # a config that fails to build leaves no folder
    # one batch through copies: a config that cannot train leaves no folder either
    for note in check_first_step(parts):
        callback.on_message(note)
    columns = metric_columns(parts.task, len(parts.classes))
    if folder is None:
        rundir = distributed.create_run_dir(lambda: RunDir.take(runs_dir, name, columns))
    else:
        rundir = distributed.own_run_dir(RunDir(folder, columns)).hold()
    try:
        if folder is not None:
            rundir.remove_stale_temps()
            rundir.keep_metrics_until(0)
        rundir.write_config(config.to_data())
        rundir.write_bad_files(parts.bundle.bad_files)
        return Run(parts, rundir, callback, Fresh())
    except BaseException:
        # a new folder whose first file could not be written goes (the place was unusable from the start)
        rundir.abandon() if folder is None else rundir.release()
        raise


def resumed_run(target: str | Path, overrides: Sequence[str], callback: Callback) -> Run:
    """A run continued from its checkpoint: same config (train.* overrides allowed), same split,
    every saved state loaded into its parts."""
    if never_saved(Path(target)):  # refuses a folder whose last.pt is gone but whose work is there
        return started_over(Path(target), overrides, callback)
    path = resume_checkpoint(target)
    checkpoint = _resumable(path)
    config = _resumed_config(checkpoint, overrides, path)
    parts = build_parts(config, split=checkpoint["split"], input_shape=checkpoint["input_shape"], pretrained=False)
    parts = replace(parts, split=checkpoint["split"])  # the run keeps the split record it began with
    columns = metric_columns(checkpoint["task"], len(checkpoint["classes"]))
    rundir = distributed.own_run_dir(RunDir(run_dir_of(path), columns)).hold()
    try:
        rundir.remove_stale_temps()
        state = restore(parts, checkpoint)
        rng = distributed.own_rng(checkpoint)  # each rank's dropout continues as it would have
        set_rng_state(rng)
        rundir.saved["last"] = checkpoint["loop"]
        rundir.keep_metrics_until(state.epoch)
        run = Run(parts, rundir, callback, Resumed(rng), state)
        rundir.write_config(config.to_data())  # what the run now is (train.* overrides applied)
    except BaseException:
        rundir.release()
        raise
    return run


def started_over(folder: Path, overrides: Sequence[str], callback: Callback) -> Run:
    """A run killed before its first checkpoint, started again in its own folder from its
    config.yaml (train.* overrides allowed): there is nothing to continue, so epoch 1 again."""
    for text in overrides:
        _check_resume_override(text)
    return fresh_run(load_config(folder / "config.yaml", overrides), folder.parent, folder.name, callback,
                     folder=folder)


def _resumable(path: Path) -> dict:
    """The checkpoint at `path`, refused unless it holds every state a resumed run restores."""
    from dltool.store.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it: it lacks {', '.join(missing)} (only a checkpoint "
                              "`dltool train` wrote can be resumed; eval and predict can still use it)")
    return checkpoint


def _check_resume_override(text: str) -> None:
    if not text.startswith("train."):
        raise ConfigError(f"override {text!r}: on --resume only train.* keys can change "
                          "(the data, model and optimizer are those the checkpoint was trained with)")


def _resumed_config(checkpoint: dict, overrides: Sequence[str], path: Path) -> Config:
    """The checkpoint's config with `train.*` overrides applied."""
    data = copy.deepcopy(checkpoint["config"])
    for text in overrides:
        _check_resume_override(text)
        apply_override(data, Marks(), text)
    config = config_from_data(data, source=str(path))
    loop = checkpoint["loop"]
    done, planned = loop["epoch"], checkpoint["config"]["train"]["epochs"]
    stopped_early = loop.get("stopped_early") and config.train.epochs == planned
    if config.train.epochs <= done and loop["batch"]:
        raise ConfigError(f"--resume: {path} has done {done} epochs and part of epoch {done + 1}; "
                          f"train.epochs={config.train.epochs} would end before it; give train.epochs={done + 1} or more")
    if (config.train.epochs <= done and not loop["batch"]) or stopped_early:
        how = f"stopped early after {done} epochs" if stopped_early else f"has finished its {done} epochs"
        raise ConfigError(f"--resume: {path} {how}; to train on, extend it: "
                          f"dltool train --resume {run_dir_of(path)} train.epochs={done + 10}")
    return config
