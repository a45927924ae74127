"""One run: its parts, its loop and its folder, tied together from the first hook to summary.json.

How a run begins is a value of its own: `Fresh` (epoch 1, in a new folder or one started over) or
`Resumed` (from a checkpoint, with the random states it saved). `dltool.training.train` makes the
parts and the folder for either, and a `Run` trains them: the loop (dltool.training.loop) with the
run's hooks (dltool.training.hooks) and the caller's, inside the stop signals, then the summary.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dltool.errors import DltoolError, Interrupted, RunFailed, Unwritable
from dltool.training import distributed
from dltool.training.callbacks import Callback, Callbacks
from dltool.training.engine import LoopState
from dltool.training.hooks import run_hooks
from dltool.training.loop import FitLoop, FitPlan
from dltool.training.parts import Parts
from dltool.training.run_folder import RunDir
from dltool.training.runtime import StopSignal, keep_freed_memory, num_threads


@dataclass(frozen=True)
class Fresh:
    """A run from epoch 1 (in a new folder, or in its own folder started over): its first
    checkpoint is written before its first step, and TensorBoard gets its config, images and graph."""


@dataclass(frozen=True)
class Resumed:
    """A run continued from its checkpoint; `rng` is the random state it saved (this rank's own)."""

    rng: dict


Start = Fresh | Resumed


@dataclass
class TrainResult:
    """What a finished (or early-stopped) run leaves: its folder, summary.json's content, its rows."""

    run_dir: Path
    summary: dict
    history: list = field(default_factory=list)


class Run:
    """The parts of one run trained by its loop into its folder; `run()` once.

    Args:
        parts: built by dltool.training.parts.build_parts (a resumed run's states loaded into them).
        rundir: the run folder, held by this process.
        callback: the caller's hooks (progress, a tune trial's reporter); rank 0's only.
        start: Fresh or Resumed.
        state: where a resumed run stands (from its checkpoint); a fresh one starts at LoopState().
    """

    def __init__(self, parts: Parts, rundir: RunDir, callback: Callback, start: Start,
                 state: LoopState | None = None):
        cfg = parts.config.train
        self.parts, self.rundir, self.start = parts, rundir, start
        self.callback = callback if distributed.is_main() else Callback()
        plan = FitPlan(epochs=cfg.epochs, seed=distributed.rank_seed(parts.config.seed), monitor=parts.monitor,
                       mode=parts.mode, patience=cfg.patience, min_delta=cfg.min_delta, unfreeze_at=cfg.unfreeze_at,
                       resume_rng=start.rng if isinstance(start, Resumed) else None)
        self.loop = FitLoop(parts, parts.train_loader, parts.val_loader, plan, state=state)
        self.hooks = Callbacks(run_hooks(parts, rundir, self.loop, fresh=isinstance(start, Fresh),
                                         on_message=self.callback.on_message))
        self.loop.hooks = Callbacks([self.hooks, self.callback])
        self.outcome = "failed"  # how it ended, for on_close: finished, interrupted or failed

    @property
    def state(self) -> LoopState:
        return self.loop.state

    def run(self) -> TrainResult:
        """Fit to the configured epochs and finish the run folder; the folder is released at the end.

        Raises:
            RunFailed, Interrupted: see `dltool.training.train.train`; a write the disk refused during
            the run is a RunFailed too, after summary.json says what the checkpoints hold.
        """
        keep_freed_memory()
        with num_threads(self.parts.config.train.threads):
            try:
                try:
                    return self._run()
                except Unwritable as exc:
                    raise RunFailed(f"{exc}; {self._kept()}") from None
            except RunFailed as exc:
                self._write_failed_summary(exc)
                raise
            finally:
                try:
                    self.loop.hooks.on_close(self.outcome)
                finally:  # the folder is let go even when a hook fails to close
                    self.rundir.release()
                    distributed.leave()

    def _run(self) -> TrainResult:
        parts, fresh = self.parts, isinstance(self.start, Fresh)
        self.loop.hooks.on_fit_start(self._info())
        if getattr(parts.train_loader, "path", ""):
            self.callback.on_message(parts.train_loader.path)  # which loading path, and why
        if parts.bundle.val is None and fresh and parts.config.train.monitor == "auto":
            self.callback.on_message("no validation split (data.val_split: 0): the best checkpoint follows "
                                     "train_loss")
        with StopSignal() as signalled:
            request = signalled.or_asked(self.callback.stop_reason)  # a signal, or a callback (a pruned trial)
            stop = distributed.shared_stop(request, parts.config.train.log_every)
            state = self._fit(stop)
        # a callback's request (a pruned trial) is an ending, not an interruption; a signal here or on
        # another process is one
        asked = self.callback.stop_reason() if state.interrupted and signalled.requested is None else None
        state.interrupted = state.interrupted and asked is None
        summary = self._summary(asked or ("interrupted" if state.interrupted else "finished"))
        if distributed.current() is not None:
            summary["replica_sha256"] = distributed.replica_digests(parts.model)
        if state.interrupted:
            self.outcome = "interrupted"
            self.rundir.write_summary(summary)
            raise self._interrupted(state, stop.requested)
        self.hooks.on_fit_end(summary)
        self.rundir.write_summary(summary)
        self.outcome = "finished"
        self.callback.on_fit_end(summary)
        return TrainResult(self.rundir.path, summary, list(state.history))

    def _fit(self, stop: Callable[[], bool]) -> LoopState:
        try:
            return self.loop.run(stop)
        except torch.OutOfMemoryError:
            raise RunFailed(self._out_of_memory()) from None

    def _interrupted(self, state: LoopState, requested: str | None) -> Interrupted:
        where = f"epoch {state.epoch + 1}, batch {state.batch}" if state.batch else f"the end of epoch {state.epoch}"
        stopped = Interrupted(f"interrupted by {requested} at {where}; saved {self.rundir.last}; "
                              f"continue with: dltool train --resume {self.rundir.path}")
        stopped.everywhere = distributed.current() is not None  # all ranks stopped together
        if requested == "SIGHUP":
            stopped.exit_code = 129  # as a shell reports a process its hangup ended
        return stopped

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

    def _out_of_memory(self) -> str:
        size, accumulate = self.parts.config.data.batch_size, self.parts.config.train.accumulate
        state = self.state
        where = f"epoch {state.epoch + 1}, step {state.step + 1}"
        if state.splits > 1:
            where += f", even with each batch in {state.splits} parts"
        same_step = (f", with train.accumulate={accumulate * 2} to keep {size * accumulate} samples per optimizer step"
                     if size % 2 == 0 else "")
        advice = (f"lower data.batch_size (try data.batch_size={size // 2}{same_step})" if size > 1
                  else "use a smaller model or input size")
        return (f"{self.parts.device} ran out of memory at {where} with data.batch_size={size}; {advice} "
                "(the checkpoints keep the last saved epoch)")

    def _info(self) -> dict:
        parts = self.parts
        return {"run_dir": str(self.rundir.path), "device": str(parts.device), "epochs": parts.config.train.epochs,
                "start_epoch": self.state.epoch + 1, "batches": len(parts.train_loader),
                "train_samples": len(parts.bundle.train), "val_samples": len(parts.bundle.val) if parts.bundle.val else 0,
                "params": sum(p.numel() for p in parts.model.parameters()), "monitor": parts.monitor}

    def _summary(self, status: str, state: LoopState | None = None, best: LoopState | None = None) -> dict:
        """summary.json's content for `state` (default: where the run stands), its best epoch from
        `best` (default: the same state)."""
        parts = self.parts
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
            "monitor": parts.monitor, "mode": parts.mode, "best_value": best.best,
            "stopped_early": state.stopped_early, "compile_seconds": round(state.compile_seconds, 3),
            "batch_splits": state.splits,
            "device": str(parts.device), "task": parts.task, "classes": len(parts.classes),
            "train_samples": len(parts.bundle.train), "val_samples": len(parts.bundle.val) if parts.bundle.val else 0,
            "bad_files": len(parts.bundle.bad_files), "steps": state.step, "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self._scale(),
        }

    def _scale(self) -> dict:
        """Processes, and samples per optimizer step over all of them (data.batch_size is per process)."""
        group = distributed.current()
        world_size = group.world_size if group is not None else 1
        config = self.parts.config
        return {"world_size": world_size,
                "global_batch_size": config.data.batch_size * world_size * config.train.accumulate}
