"""The epochs of a run: `FitLoop` owns where the run stands and calls its hooks at named points.

Each epoch is `dltool.training.engine.train_one_epoch` and, with a validation split, `evaluate`;
the loop keeps the `LoopState` (epochs and steps done, the best value, early-stopping counters)
and tells its hooks (`dltool.training.callbacks.Callback`) what happened: `on_epoch_start`,
`on_step`, `on_eval_start`, `on_epoch_end`, `on_message`, and `on_interrupt` when a stop request
ends the run before its last epoch. What a run does at those points (checkpoints, metrics.csv,
TensorBoard, MLflow, the progress display) is in its hooks, never here.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from dltool.training import distributed
from dltool.training.callbacks import Callback
from dltool.training.engine import LoopState, StepParts, evaluate, train_one_epoch
from dltool.training.optim import Schedule
from dltool.training.runtime import seed_epoch, set_rng_state


@dataclass
class FitPlan:
    """What the loop runs: the epochs, the metric it watches and when it stops early."""

    epochs: int
    seed: int
    monitor: str
    mode: str
    patience: int | None = None
    min_delta: float = 0.0
    unfreeze_at: int | None = None
    resume_rng: dict | None = None  # random states to restore when continuing inside an epoch


class FitLoop:
    """Trains `parts` from `state` to `plan.epochs`, early stopping, or a stop request.

    Attributes:
        state: where the run stands (updated as it goes; a checkpoint saves it).
        collected: the last validation's class probabilities and targets (for PR curves), or None.
    """

    def __init__(self, parts: StepParts, train_loader: Any, val_loader: Any | None, plan: FitPlan, *,
                 state: LoopState | None = None, hooks: Callback | None = None):
        self.parts, self.train_loader, self.val_loader, self.plan = parts, train_loader, val_loader, plan
        self.state = state if state is not None else LoopState()
        self.hooks = hooks if hooks is not None else Callback()
        self.collected: dict | None = None

    def run(self, stop: Callable[[], bool] = lambda: False) -> LoopState:
        """Run the epochs left; `stop` is polled after every optimizer step and every epoch.

        Returns:
            The final LoopState (history holds one row per epoch; `interrupted` after a stop request).

        Raises:
            RunFailed: a non-finite loss.
        """
        state, plan = self.state, self.plan
        for epoch in range(state.epoch + 1, plan.epochs + 1):
            trained, started = self._train(epoch, stop)
            if state.interrupted:
                self.hooks.on_interrupt()
                return state
            self._end_epoch(epoch, trained, started)
            if plan.patience is not None and state.bad_epochs >= plan.patience:
                state.stopped_early = True
                self.hooks.on_message(f"early stopping: {plan.monitor} did not improve for {plan.patience} epochs")
                break
            if stop() and epoch < plan.epochs:  # after the last epoch there is nothing left to resume
                state.interrupted = True
                self.hooks.on_interrupt()
                break
        return state

    def _train(self, epoch: int, stop: Callable[[], bool]) -> tuple[dict, float]:
        plan, state = self.plan, self.state
        if start_epoch(self.parts.model, self.train_loader, plan.seed, epoch, plan.unfreeze_at):
            self.hooks.on_message(f"epoch {epoch}: unfroze all parameters (train.unfreeze_at={plan.unfreeze_at})")
        if state.batch and plan.resume_rng is not None:
            set_rng_state(plan.resume_rng)
        self.hooks.on_epoch_start(epoch, plan.epochs, len(self.train_loader))
        started = time.perf_counter()
        trained = train_one_epoch(self.parts, self.train_loader, state, epoch=epoch, callback=self.hooks, stop=stop)
        state.train_seconds += trained["seconds"]
        state.train_samples += trained["samples"]
        return trained, started

    def _end_epoch(self, epoch: int, trained: dict, started: float) -> None:
        """Validate, step the epoch schedule, record the epoch's row, and tell the hooks."""
        opts, state = self.parts.opts, self.state
        evaluated = opts.ema.module if opts.ema is not None else self.parts.model
        distributed.sync_buffers(evaluated)
        metrics, self.collected = {}, None
        if self.val_loader is not None:
            metrics, self.collected = evaluate(evaluated, self.val_loader, self.parts.loss_fn, opts, collect=True,
                                               callback=self.hooks, epoch=epoch)
        train_metrics = {k: v for k, v in trained.items() if k.startswith("train_")}
        step_epoch_schedule(self.parts.schedule, {**metrics, **train_metrics}, self.plan.monitor)
        row = {"epoch": epoch, "lr": trained["lr"], **train_metrics, **metrics,
               "epoch_seconds": time.perf_counter() - started,
               "samples_per_second": trained["samples"] / max(1e-9, trained["seconds"])}
        state.epoch, state.batch, state.sums = epoch, 0, {}
        better = _record(state, row, self.plan)
        self.hooks.on_epoch_end(epoch, row, better)


def improved(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether `value` beats `best` by more than `min_delta` in direction `mode`."""
    if best is None:
        return not math.isnan(value)
    return value > best + min_delta if mode == "max" else value < best - min_delta


def step_epoch_schedule(schedule: Schedule, metrics: dict, monitor: str) -> None:
    """Advance an epoch-wise schedule (ReduceLROnPlateau with the monitored metric)."""
    if schedule.interval == "epoch":
        schedule.scheduler.step()
    elif schedule.interval == "plateau":
        schedule.scheduler.step(metrics[monitor])


def start_epoch(model: nn.Module, loader: Any, seed: int, epoch: int, unfreeze_at: int | None) -> bool:
    """Seed the RNGs and the loader for `epoch`; unfreeze every parameter once `unfreeze_at` epochs are done.

    Returns:
        True when this call unfroze parameters.
    """
    seed_epoch(seed, epoch)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    if unfreeze_at is not None and epoch > unfreeze_at:
        frozen = [p for p in model.parameters() if not p.requires_grad]
        for param in frozen:
            param.requires_grad_(True)
        return bool(frozen)
    return False


def _record(state: LoopState, row: dict, plan: FitPlan) -> bool:
    """Add `row` to the history and update best/bad-epoch counters; True when the monitor improved."""
    state.history.append(row)
    value = row[plan.monitor]
    if improved(value, state.best, plan.mode, plan.min_delta):
        state.best, state.best_epoch, state.bad_epochs = value, row["epoch"], 0
        return True
    state.bad_epochs += 1
    return False
