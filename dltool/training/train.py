"""`train()`: config -> data, model, loss, optimizer, schedule -> fit -> run directory.

A fresh run and a resumed one differ only in where their parts come from: the YAML (with a new
run folder) or a checkpoint (with its run folder, its split, and every state it saved).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

import dltool
from dltool.config.load import Config, apply_override, config_from_data, load_config
from dltool.config.spec import Marks
from dltool.errors import CheckpointError, ConfigError, DltoolError, Interrupted, RunFailed, Unwritable
from dltool.models import with_model_defaults
from dltool.training import distributed
from dltool.training.callbacks import Callback, Callbacks
from dltool.training.engine import FitPlan, LoopState, fit
from dltool.training.firststep import check_first_step
from dltool.training.loggers import MlflowLogger
from dltool.training.loggers import require as require_loggers
from dltool.training.optim import replay
from dltool.training.parts import Parts, build_parts
from dltool.training.run_folder import RunDir, metric_columns, never_saved, resume_checkpoint, run_dir_of
from dltool.training.runtime import (
    StopSignal,
    keep_freed_memory,
    num_threads,
    resolve_device,
    rng_state,
    set_rng_state,
)

# what a resumed run restores besides the model and its config
RESUME_KEYS = ("optimizer", "scheduler", "rng", "split", "input_shape", "task", "classes", "loop")


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run leaves: its folder, summary.json's content, its rows."""

    run_dir: Path
    summary: dict
    history: list = field(default_factory=list)


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
        callbacks: progress hooks (see dltool.training.engine.Callback).

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
        return Session.resumed(resume, overrides, callback).run()
    config, note = with_model_defaults(fresh_config(config, overrides))
    require_loggers(config)
    if note:
        callback.on_message(note)
    return Session.fresh(config, runs_dir, name or config.stem, callback).run()


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


class Session:
    """One run being trained: its parts, its folder, and what it saves."""

    def __init__(self, parts: Parts, run: RunDir | None, callback: Callback):
        self.parts, self.rundir = parts, run
        self.config, self.bundle, self.device = parts.config, parts.bundle, parts.device
        self.input_shape, self.classes, self.task, self.split = parts.input_shape, parts.classes, parts.task, parts.split
        self.callback = callback if distributed.is_main() else Callback()
        self.model, self.loss_fn, self.optimizer, self.schedule = parts.model, parts.loss_fn, parts.optimizer, parts.schedule
        self.train_loader, self.val_loader, self.opts = parts.train_loader, parts.val_loader, parts.opts
        self.monitor, self.mode = parts.monitor, parts.mode
        self.state = LoopState()
        self.board = None
        self.tracker = None  # the MLflow run, when train.loggers names mlflow
        self.ended = "FAILED"  # how the MLflow run ends: FINISHED, KILLED (interrupted) or FAILED
        self.collected = None
        self.resume_rng: dict | None = None

    @classmethod
    def fresh(cls, config: Config, runs_dir: str | Path, name: str, callback: Callback,
              split_state: dict | None = None, folder: Path | None = None) -> Session:
        """A new run: data from the config, a new run folder with config.yaml written first (or,
        given `folder`, that run folder again: a run started over)."""
        parts = build_parts(config, split=split_state)  # a config that fails to build leaves no folder
        bundle = parts.bundle
        session = cls(parts, None, callback)
        # one batch through copies: a config that cannot train leaves no folder either
        for note in check_first_step(parts):
            callback.on_message(note)
        columns = metric_columns(bundle.task, len(bundle.classes))
        if folder is None:
            session.rundir = distributed.create_run_dir(lambda: RunDir.take(runs_dir, name, columns))
        else:
            session.rundir = distributed.own_run_dir(RunDir(folder, columns)).hold()
        try:
            if folder is not None:
                session.rundir.remove_stale_temps()
                session.rundir.keep_metrics_until(0)
            session.rundir.write_config(config.to_data())
            session.rundir.write_bad_files(bundle.bad_files)
        except BaseException:
            # a new folder whose first file could not be written goes (the place was unusable from the start)
            session.rundir.abandon() if folder is None else session.rundir.release()
            raise
        return session

    @classmethod
    def resumed(cls, target: str | Path, overrides: Sequence[str], callback: Callback) -> Session:
        """A run continued from its checkpoint: same config (train.* overrides allowed), same split."""
        from dltool.data import build_data
        from dltool.store.checkpoint import load_checkpoint

        if never_saved(Path(target)):  # refuses a folder whose last.pt is gone but whose work is there
            return cls.started_over(Path(target), overrides, callback)
        path = resume_checkpoint(target)
        checkpoint = load_checkpoint(path)
        missing = [key for key in RESUME_KEYS if key not in checkpoint]
        if missing:
            raise CheckpointError(f"{path}: cannot resume from it: it lacks {', '.join(missing)} (only a checkpoint "
                                  "`dltool train` wrote can be resumed; eval and predict can still use it)")
        config = _resumed_config(checkpoint, overrides, path)
        distributed.join(resolve_device(config.train.device, config.marks))
        with distributed.main_first():
            bundle = build_data(config, split_state=checkpoint["split"])
        columns = metric_columns(checkpoint["task"], len(checkpoint["classes"]))
        run = distributed.own_run_dir(RunDir(run_dir_of(path), columns)).hold()
        try:
            run.remove_stale_temps()
            parts = build_parts(config, bundle=bundle, input_shape=checkpoint["input_shape"], split=checkpoint["split"],
                                pretrained=False)
            session = cls(parts, run, callback)
            session.restore(checkpoint)
            run.write_config(config.to_data())  # what the run now is (train.* overrides applied)
        except BaseException:
            run.release()
            raise
        return session

    @classmethod
    def started_over(cls, folder: Path, overrides: Sequence[str], callback: Callback) -> Session:
        """A run killed before its first checkpoint, started again in its own folder from its
        config.yaml (train.* overrides allowed): there is nothing to continue, so epoch 1 again."""
        for text in overrides:
            _check_resume_override(text)
        return cls.fresh(load_config(folder / "config.yaml", overrides), folder.parent, folder.name, callback,
                         folder=folder)

    def restore(self, checkpoint: dict) -> None:
        """Load every saved state; a changed train.epochs re-plans the schedule from where the run is."""
        from dltool.store.checkpoint import load_weights

        ema = self.opts.ema
        load_weights(self.model, checkpoint.get("train_model", checkpoint["model"]), checkpoint["path"])
        if ema is not None and "ema" in checkpoint:
            ema.load_state_dict(checkpoint["ema"])
        elif ema is not None:  # train.ema switched on at resume: the average starts from the weights
            ema.module.load_state_dict(self.model.state_dict())
        if self.opts.scaler is not None and checkpoint.get("scaler"):
            self.opts.scaler.load_state_dict(checkpoint["scaler"])
        self.state = LoopState.from_data(checkpoint["loop"])
        self.state.interrupted = self.state.stopped_early = False
        if not distributed.is_main():
            self.state.sums = {}  # the saved partial sums are all ranks' together: rank 0 carries them
        planned = checkpoint["config"]["train"]["epochs"]
        if self.config.train.epochs == planned or self.schedule.interval == "plateau":
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.schedule.load_state_dict(checkpoint["scheduler"])
        else:
            replay(self.schedule, self.state.step if self.schedule.interval == "step" else self.state.epoch)
            planned_lrs = [group["lr"] for group in self.optimizer.param_groups]
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            for group, lr in zip(self.optimizer.param_groups, planned_lrs):
                group["lr"] = lr
        self.resume_rng = distributed.own_rng(checkpoint)  # each rank's dropout continues as it would have
        set_rng_state(self.resume_rng)
        self.rundir.saved["last"] = checkpoint["loop"]
        self.rundir.keep_metrics_until(self.state.epoch)

    def checkpoint(self) -> dict:
        """The checkpoint dict (docs/run-folder.md#checkpoint): plain data and tensors only."""
        ema = self.opts.ema
        weights = (ema.module if ema is not None else self.model).state_dict()
        state = {
            "model": weights, "optimizer": self.optimizer.state_dict(), "scheduler": self.schedule.state_dict(),
            "epoch": self.state.epoch, "step": self.state.step, "config": self.config.to_data(),
            "classes": self.classes, "metrics": self.state.history[-1] if self.state.history else {},
            "rng": rng_state(), "versions": {"dltool": dltool.__version__, "torch": str(torch.__version__)},
            "split": self.split, "input_shape": list(self.input_shape), "task": self.task,
            "loop": self.state.to_data(), "monitor": self.monitor, "output": self.opts.output,
        }
        if ema is not None:
            state["train_model"] = self.model.state_dict()
            state["ema"] = ema.state_dict()
        if self.opts.scaler is not None:
            state["scaler"] = self.opts.scaler.state_dict()
        ranks = distributed.gather_rng(state["rng"])
        if ranks is not None:
            state["rank_rng"] = ranks
        return _on_cpu(state)

    def save(self, *, best: bool) -> None:
        """last.pt (and best.pt); refuses to write weights that are not finite."""
        state = self.checkpoint()
        for key in ("model", "train_model"):
            bad = [n for n, t in state.get(key, {}).items() if t.is_floating_point() and not torch.isfinite(t).all()]
            if bad:
                raise RunFailed(f"epoch {self.state.epoch}: weight {bad[0]} is not finite; not saved "
                                f"(the checkpoints keep the last good weights); lower optimizer.lr")
        self.rundir.save(state, best=best)

    def on_epoch_end(self, state: LoopState, row: dict, better: bool, collected: dict | None) -> None:
        # the row goes first: a kill between the two leaves a row that resume drops and rewrites,
        # never a checkpointed epoch without its row
        self.rundir.append_metrics(row)
        self.save(best=better)
        self.board.epoch(row, row["epoch"])
        if self.tracker is not None:
            self.tracker.epoch(row)
        if self.config.train.histograms:
            self.board.histograms(self.model, row["epoch"])
        self.board.flush()
        self.collected = collected

    def on_interrupt(self, state: LoopState) -> None:
        self.save(best=False)

    def run(self) -> TrainResult:
        """Fit to the configured epochs and finish the run folder; the folder is released at the end.

        Raises:
            RunFailed, Interrupted: see `train`; a write the disk refused during the run is a RunFailed
            too, after summary.json says what the checkpoints hold.
        """
        keep_freed_memory()
        with num_threads(self.config.train.threads):
            try:
                try:
                    return self._run()
                except Unwritable as exc:
                    raise RunFailed(f"{exc}; {self._kept()}") from None
            except RunFailed as exc:
                self._write_failed_summary(exc)
                raise
            finally:
                if self.board is not None:
                    with contextlib.suppress(DltoolError):  # a failure closing it was reported first
                        self.board.close()
                self._write_curves()
                if self.tracker is not None:
                    self.tracker.finish(self.ended)  # after curves.png and summary.json are written
                self.rundir.release()
                distributed.leave()

    def _run(self) -> TrainResult:
        from dltool.training.board import Board

        if self.resume_rng is None:
            self.save(best=False)  # first of all: a folder without last.pt is one that never trained
        # a resumed run drops the events written after its checkpoint; a run started over, all of them
        purge = self.state.epoch + 1 if self.state.epoch else (0 if self.rundir.tb.exists() else None)
        main, loggers = distributed.is_main(), self.config.train.loggers
        self.board = Board(self.rundir.tb, purge_step=purge) if main and "tensorboard" in loggers \
            else distributed.Silent()
        if main and "mlflow" in loggers:
            self.tracker = MlflowLogger(self.rundir.path, self.callback.on_message)
            self.tracker.start(self.config.to_data(), resumed=self.resume_rng is not None)
        if self.resume_rng is None:
            self._start_board()
        self.callback.on_fit_start(self._info())
        if getattr(self.train_loader, "path", ""):
            self.callback.on_message(self.train_loader.path)  # which loading path, and why
        if self.bundle.val is None and self.resume_rng is None and self.config.train.monitor == "auto":
            self.callback.on_message("no validation split (data.val_split: 0): the best checkpoint follows "
                                     "train_loss")
        with StopSignal() as signalled:
            request = signalled.or_asked(self.callback.stop_reason)  # a signal, or a callback (a pruned trial)
            stop = distributed.shared_stop(request, self.config.train.log_every)
            state = self._fit(stop)
        asked = state.interrupted and signalled.requested is None  # by a callback: an ending, not an interruption
        state.interrupted = state.interrupted and not asked
        summary = self._summary(self.callback.stop_reason() if asked else
                                "interrupted" if state.interrupted else "finished")
        if distributed.current() is not None:
            summary["replica_sha256"] = distributed.replica_digests(self.model)
        if state.interrupted:
            self.ended = "KILLED"
            self.board.close()
            self.rundir.write_summary(summary)
            where = f"epoch {state.epoch + 1}, batch {state.batch}" if state.batch else f"the end of epoch {state.epoch}"
            stopped = Interrupted(f"interrupted by {stop.requested} at {where}; saved {self.rundir.last}; "
                                  f"continue with: dltool train --resume {self.rundir.path}")
            stopped.everywhere = distributed.current() is not None  # all ranks stopped together
            if stop.requested == "SIGHUP":
                stopped.exit_code = 129  # as a shell reports a process its hangup ended
            raise stopped
        self._finish_board(summary)
        self.board.close()
        self.rundir.write_summary(summary)
        self.ended = "FINISHED"
        self.callback.on_fit_end(summary)
        return TrainResult(self.rundir.path, summary, list(state.history))

    def _write_curves(self) -> None:
        """curves.png, however the run ended; drawn after training, outside its timed path. A picture
        the disk refuses never fails the run that its checkpoints hold."""
        from dltool.training.curves import write_curves

        if distributed.is_main():
            with contextlib.suppress(DltoolError, OSError):
                write_curves(self.rundir.path)

    def _kept(self) -> str:
        saved = self.rundir.saved.get("last")
        kept = f"last.pt holds epoch {saved['epoch']}" if saved else "no checkpoint was saved"
        return f"{kept}; continue with: dltool train --resume {self.rundir.path}"

    def _write_failed_summary(self, exc: RunFailed) -> None:
        """summary.json as the checkpoints are after a failure (never the epochs they do not hold)."""
        last = LoopState.from_data(self.rundir.saved["last"]) if self.rundir.saved.get("last") else LoopState()
        best = self.rundir.saved.get("best")
        best = LoopState.from_data(best) if best and best["epoch"] > last.epoch else last
        try:
            self.rundir.write_summary({**self._summary("failed", last, best), "error": str(exc)})
        except (DltoolError, OSError):  # the full disk that failed a save may refuse the summary too
            with contextlib.suppress(OSError):
                (self.rundir.path / "summary.json").unlink()  # no summary rather than a wrong one

    def _fit(self, stop: StopSignal) -> LoopState:
        cfg = self.config.train
        plan = FitPlan(epochs=cfg.epochs, seed=distributed.rank_seed(self.config.seed), monitor=self.monitor,
                       mode=self.mode, patience=cfg.patience, min_delta=cfg.min_delta, unfreeze_at=cfg.unfreeze_at,
                       on_epoch_end=self.on_epoch_end, on_interrupt=self.on_interrupt, resume_rng=self.resume_rng)
        try:
            return fit(self.parts, self.train_loader, self.val_loader, plan, state=self.state, callback=self.callback,
                       stop=stop)
        except torch.OutOfMemoryError:
            raise RunFailed(self._out_of_memory()) from None

    def _out_of_memory(self) -> str:
        size, accumulate = self.config.data.batch_size, self.config.train.accumulate
        where = f"epoch {self.state.epoch + 1}, step {self.state.step + 1}"
        if self.state.splits > 1:
            where += f", even with each batch in {self.state.splits} parts"
        same_step = (f", with train.accumulate={accumulate * 2} to keep {size * accumulate} samples per optimizer step"
                     if size % 2 == 0 else "")
        advice = (f"lower data.batch_size (try data.batch_size={size // 2}{same_step})" if size > 1
                  else "use a smaller model or input size")
        return (f"{self.device} ran out of memory at {where} with data.batch_size={size}; {advice} "
                "(the checkpoints keep the last saved epoch)")

    def _start_board(self) -> None:
        from dltool.config.load import dump_yaml

        self.board.text("config", dump_yaml(self.config.to_data()))
        self.train_loader.set_epoch(1)
        x, _ = next(iter(self.train_loader))
        self.board.images(x)
        problem = self.board.graph(self.model, x[:1].to(self.device))
        self.board.flush()
        if problem:
            self.callback.on_message(problem)

    def _finish_board(self, summary: dict) -> None:
        if self.collected is not None and self.classes:
            self.board.pr_curves(self.collected["probs"], self.collected["targets"], self.classes, self.state.epoch)
        final = {f"final_{k}": v for k, v in summary["final"].items() if v is not None}
        best = {"best_value": summary["best_value"]} if summary["best_value"] is not None else {}
        self.board.hparams(self.config.to_data(), {**final, **best})

    def _info(self) -> dict:
        return {"run_dir": str(self.rundir.path), "device": str(self.device), "epochs": self.config.train.epochs,
                "start_epoch": self.state.epoch + 1, "batches": len(self.train_loader),
                "train_samples": len(self.bundle.train), "val_samples": len(self.bundle.val) if self.bundle.val else 0,
                "params": sum(p.numel() for p in self.model.parameters()), "monitor": self.monitor}

    def _summary(self, status: str, state: LoopState | None = None, best: LoopState | None = None) -> dict:
        """summary.json's content for `state` (default: where the run stands), its best epoch from
        `best` (default: the same state)."""
        state = state or self.state
        best = best or state
        history = state.history
        best_row = next((r for r in best.history if r["epoch"] == best.best_epoch), {})
        last = history[-1] if history else {}
        final_keys = ("val_loss", "val_accuracy", "val_top5_accuracy", "val_mae")
        return {
            "status": status, "best_epoch": best.best_epoch, "best_val_accuracy": best_row.get("val_accuracy"),
            "epochs_done": state.epoch, "train_seconds": round(state.train_seconds, 4),
            "train_samples_per_second": round(state.train_samples / state.train_seconds, 1) if state.train_seconds else None,
            "final": {k: last.get(k) for k in final_keys if k in last or k in ("val_loss", "val_accuracy")},
            "monitor": self.monitor, "mode": self.mode, "best_value": best.best,
            "stopped_early": state.stopped_early, "compile_seconds": round(state.compile_seconds, 3),
            "batch_splits": state.splits,
            "device": str(self.device), "task": self.task, "classes": len(self.classes),
            "train_samples": len(self.bundle.train), "val_samples": len(self.bundle.val) if self.bundle.val else 0,
            "bad_files": len(self.bundle.bad_files), "steps": state.step, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self._scale(),
        }

    def _scale(self) -> dict:
        """Processes, and samples per optimizer step over all of them (data.batch_size is per process)."""
        group = distributed.current()
        world_size = group.world_size if group is not None else 1
        return {"world_size": world_size,
                "global_batch_size": self.config.data.batch_size * world_size * self.config.train.accumulate}


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


def _on_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value
