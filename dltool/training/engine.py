"""The training step and epoch: `train_batch`, `train_one_epoch` and `evaluate`, plain functions
over a run's parts (`StepParts`); the epochs around them are `dltool.training.loop.FitLoop`'s.

Metrics are summed on the device and read once per log interval, so the loop never waits on the
accelerator between steps. Progress goes to `dltool.training.callbacks.Callback` objects; the library itself never prints.
Where a run stands (epoch, step, batch within the epoch, partial sums, early-stopping counters)
is a `LoopState` of plain data, so a checkpoint can hold it and a resumed run continue exactly.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch import nn

from dltool.errors import RunFailed
from dltool.models.outputs import single_threshold, to_probabilities
from dltool.training import distributed
from dltool.training.callbacks import Callback
from dltool.training.optim import Schedule, current_lr
from dltool.training.runtime import EMA

SOFT_TARGET_LOSSES = (nn.BCEWithLogitsLoss, nn.BCELoss, nn.MultiLabelSoftMarginLoss)


@dataclass
class LoopState:
    """Where a run stands, as plain data: enough to continue it exactly."""

    epoch: int = 0                  # epochs completed
    step: int = 0                   # optimizer steps taken in the whole run
    batch: int = 0                  # batches done in the epoch under way (0 at an epoch boundary)
    sums: dict = field(default_factory=dict)  # the epoch under way's partial train sums
    train_seconds: float = 0.0
    train_samples: int = 0
    compile_seconds: float = 0.0
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    interrupted: bool = False
    splits: int = 1                 # each batch goes through forward/backward in this many parts (after OOM)
    history: list = field(default_factory=list)

    def to_data(self) -> dict:
        return asdict(self)

    @classmethod
    def from_data(cls, data: dict) -> LoopState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class StepOptions:
    """What one optimizer step does besides forward/backward (from TrainConfig)."""

    device: torch.device
    task: str = "classification"
    accumulate: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    amp: str = "none"
    channels_last: bool = False
    log_every: int = 10
    scaler: Any = None
    ema: EMA | None = None
    compile_pending: bool = False  # the first step compiles the model: timed apart from training
    eval_splits: int = 1  # evaluation batches go through the model in this many parts (after OOM)
    output: str = "softmax"  # what the outputs are (dltool.models.outputs): how they become probabilities

    def autocast(self) -> Any:
        dtype = amp_dtype(self.amp, self.device)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.device != self.device:
            # an asynchronous copy only from pinned memory: from pageable memory it would be staged anyway
            pinned = self.device.type == "cuda" and x.is_pinned()
            x, y = x.to(self.device, non_blocking=pinned), y.to(self.device, non_blocking=pinned)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


@dataclass
class StepParts:
    """What one training step works with: the model, what is called in its place (a compiled or
    DDP wrapper, or the model itself), the loss, the optimizer, its schedule and the step options."""

    model: nn.Module
    forward: nn.Module | Callable[[torch.Tensor], torch.Tensor] | None  # None: the model itself
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    opts: StepOptions


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of train.amp on `device`, None for full precision.

    `auto` is bf16 on a CUDA device that has it and full precision elsewhere: most CPUs emulate
    bf16 matrix products, which makes them many times slower than float32.
    """
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)


def fit_targets(loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """The targets in the form `loss_fn` takes: float and shaped like the output for regression,
    one-hot for BCE-style losses given class indices."""
    if task == "regression":
        return y.to(out.dtype).reshape(out.shape) if y.numel() == out.numel() else y.to(out.dtype)
    if out.dim() == 2 and out.shape[1] == 1:  # one output, class 1's: the target is 1 for class 1
        return (y[:, 1:] if y.is_floating_point() and y.dim() == 2 else y.reshape(-1, 1)).to(out.dtype)
    if isinstance(loss_fn, SOFT_TARGET_LOSSES) and not y.is_floating_point():
        return nn.functional.one_hot(y, out.shape[-1]).to(out.dtype)
    return y


class _Sums:
    """Running sums of loss, correct predictions (or absolute error) and samples, kept on the device."""

    def __init__(self, device: torch.device, start: dict | None = None, threshold: float = 0.0):
        start = start or {}
        self.threshold = threshold  # where a single output separates class 0 from class 1
        self.loss = torch.tensor(start.get("loss", 0.0), dtype=torch.float64, device=device)
        self.score = torch.tensor(start.get("score", 0.0), dtype=torch.float64, device=device)
        self.count = int(start.get("count", 0))

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor, task: str) -> None:
        n = out.shape[0]
        self.loss.add_(loss.detach(), alpha=n)
        if task == "regression":
            self.score += (out.detach().double().reshape(y.shape) - y.double()).abs().sum() / max(1, y[0].numel())
        else:
            labels = y.argmax(1) if y.is_floating_point() and y.dim() == 2 else y
            single = out.dim() == 2 and out.shape[1] == 1
            predicted = (out.detach()[:, 0] > self.threshold).long() if single else out.detach().argmax(1)
            self.score.add_((predicted == labels).sum())
        self.count += n

    def read(self, task: str, prefix: str) -> dict:
        n = max(1, self.count)
        key = "mae" if task == "regression" else "accuracy"
        return {f"{prefix}loss": self.loss.item() / n, f"{prefix}{key}": self.score.item() / n}

    def to_data(self) -> dict:
        return {"loss": self.loss.item(), "score": self.score.item(), "count": self.count}

    def all_reduce(self, samples: int = 0) -> int:
        """Sum over every process of a distributed run (nothing to do in one); returns `samples` summed too."""
        if distributed.current() is None:
            return samples
        packed = torch.stack([self.loss, self.score, torch.tensor(float(self.count), dtype=torch.float64,
                                                                  device=self.loss.device)])
        packed = distributed.all_reduce_sum(torch.cat([packed, packed.new_tensor([float(samples)])]))
        self.loss, self.score = packed[0].clone(), packed[1].clone()
        self.count = int(packed[2].item())
        return int(packed[3].item())


def train_one_epoch(parts: StepParts, loader: Iterable, state: LoopState, *, epoch: int,
                    callback: Callback = Callback(), stop: Callable[[], bool] = lambda: False) -> dict:
    """Train for one epoch (or the rest of it, from `state.batch`), updating `state` as it goes.

    Args:
        parts: the model, loss, optimizer and schedule (dltool.training.optim) and the step options
            (device, AMP, clipping, accumulation, EMA).
        loader: batches (x, y); `len(loader)` batches per epoch.
        state: the run's position; `state.batch` batches of this epoch are skipped (already done).
        epoch: 1-based epoch number (for messages).
        callback: receives progress every `opts.log_every` batches.
        stop: polled after every optimizer step; True ends the epoch early (state.interrupted).

    Returns:
        train_loss, train_accuracy (or train_mae), lr, samples, seconds of this epoch's training.

    Raises:
        RunFailed: the loss became NaN or infinite: on the CPU before the update is made, on CUDA at
            the next log interval (naming the first bad step; nothing after it is saved).
    """
    opts = parts.opts
    parts.model.train()
    batches = len(loader)
    sums = _Sums(opts.device, state.sums, single_threshold(opts.output))
    # reading a CPU scalar costs nothing; on CUDA it stalls; in a process group all must stop together
    check_each_step = opts.device.type == "cpu" and distributed.current() is None
    first_bad = torch.full((), -1, dtype=torch.long, device=opts.device)
    lr, started, samples, skip = current_lr(parts.optimizer), time.perf_counter(), 0, state.batch
    for batch, (x, y) in enumerate(loader):
        if batch < skip:
            continue
        check = functools.partial(_check_finite, check_each_step, epoch, batch, lr)
        done = train_batch(parts, x, y, state, batch=batch, batches=batches, epoch=epoch, callback=callback,
                           check=check)
        if not check_each_step:
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(done.loss), batch, first_bad)
        sums.add(done.loss, done.out, done.y, opts.task)
        samples += x.shape[0]
        if done.lr is not None:
            lr = done.lr
            state.batch = batch + 1
            if opts.compile_pending:
                state.compile_seconds, started, samples = _compiled(opts, started), time.perf_counter(), 0
            stopping = stop()
            if (batch + 1) % opts.log_every == 0 or batch + 1 == batches or stopping:
                _check_first_bad(first_bad, epoch, lr)
                callback.on_step(epoch, batch + 1, batches, _progress(sums, opts.task, samples, started))
            if stopping and batch + 1 < batches:
                state.interrupted = True
                break
    _check_first_bad(first_bad, epoch, lr)
    if opts.device.type == "cuda":
        torch.cuda.synchronize(opts.device)
    samples = sums.all_reduce(samples)
    state.sums = sums.to_data() if state.interrupted else {}
    return {**sums.read(opts.task, "train_"), "lr": lr, "samples": samples, "seconds": time.perf_counter() - started}


class Trained(NamedTuple):
    """One batch through `train_batch`: its outputs, its targets on the device, its loss, and the lr
    of the optimizer step it completed (None while gradients are still being accumulated)."""

    out: torch.Tensor
    y: torch.Tensor
    loss: torch.Tensor
    lr: float | None


def train_batch(parts: StepParts, x: torch.Tensor, y: torch.Tensor, state: LoopState, *, batch: int, batches: int,
                epoch: int = 0, callback: Callback = Callback(),
                check: Callable[[torch.Tensor], None] = lambda loss: None) -> Trained:
    """The training step every caller runs (train, tune trials, lr-find), one batch at a time:
    forward and backward under `opts` (AMP, the loss scaled for `opts.accumulate`, in parts after
    running out of memory) and, on the last batch of an accumulation group, clipping, the optimizer
    step (with warmup), EMA and a per-step schedule; `state.step` counts the optimizer steps.

    Args:
        batch: 0-based index of this batch in the epoch (accumulation groups start at multiples of
            `opts.accumulate`); batches: how many the epoch has (its last batch always steps).
        check: called with each loss before its backward (raise there to stop before the update).
    """
    opts, optimizer = parts.opts, parts.optimizer
    forward = parts.forward or parts.model
    x, y = opts.to_device(x, y)
    last = (batch + 1) % opts.accumulate == 0 or batch + 1 == batches
    distributed.sync_gradients(forward, last)
    if batch % opts.accumulate == 0:
        # zeroed before each step's first backward (not after the step), so the epoch's last
        # gradients stay readable for the histograms
        optimizer.zero_grad(set_to_none=True)
    out, loss = _learn_fitting(parts, x, y, state, callback, epoch, batch, check)
    if not last:
        return Trained(out, y, loss, None)
    lr = _optimizer_step(parts.model, optimizer, parts.schedule, opts, state.step)
    state.step += 1
    return Trained(out, y, loss, lr)


def _check_finite(active: bool, epoch: int, batch: int, lr: float, loss: torch.Tensor) -> None:
    if active and not math.isfinite(loss.item()):
        raise _non_finite(loss, epoch, batch, lr)


def _learn_fitting(parts: StepParts, x: torch.Tensor, y: torch.Tensor, state: LoopState, callback: Callback,
                   epoch: int, batch: int, check: Callable[[torch.Tensor], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """`_learn` in `state.splits` pieces; when the device runs out of memory, again in twice as many
    (kept for the rest of the run), as long as `_can_split` allows."""
    opts, forward = parts.opts, parts.forward or parts.model
    while True:
        try:
            return _learn(forward, parts.loss_fn, x, y, opts, state.splits, check)
        except torch.OutOfMemoryError:
            if not _can_split(opts, state.splits, x.shape[0], batch):
                raise
        # out of the except block, the failed attempt's tensors are free
        parts.optimizer.zero_grad(set_to_none=True)
        if opts.device.type == "cuda":
            torch.cuda.empty_cache()
        state.splits *= 2
        callback.on_message(f"{opts.device} ran out of memory at epoch {epoch}, step {batch + 1}: each batch now goes "
                            f"through forward and backward in {state.splits} parts (the same samples per step)")


def _learn(forward: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor, opts: StepOptions,
           pieces: int, check: Callable[[torch.Tensor], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and backward of one batch, in `pieces` when the whole does not fit in memory:
    each piece's loss is weighted by its share of the batch, so the gradients add up to the whole
    batch's (BatchNorm aside, which sees each piece's statistics). `check(loss)` runs before each
    backward. Returns the outputs and the batch's loss."""
    if pieces == 1:
        out, loss = _forward_loss(forward, loss_fn, x, y, opts)
        check(loss)
        _backward(loss / opts.accumulate if opts.accumulate > 1 else loss, opts.scaler)
        return out, loss
    outs, total = [], torch.zeros((), device=x.device)
    for xs, ys in zip(x.tensor_split(pieces), y.tensor_split(pieces)):
        if xs.shape[0] == 0:
            continue
        out, loss = _forward_loss(forward, loss_fn, xs, ys, opts)
        check(loss)
        share = loss * (xs.shape[0] / x.shape[0])
        _backward(share / opts.accumulate if opts.accumulate > 1 else share, opts.scaler)
        outs.append(out.detach())
        total = total + share.detach()
    return torch.cat(outs), total


def _can_split(opts: StepOptions, pieces: int, rows: int, batch: int) -> bool:
    """Whether a step that ran out of memory can be retried in twice as many pieces: the batch has
    rows to spare, its gradients are the only ones accumulated so far (the first batch of its
    step), and no other process waits on this one's backward."""
    return pieces * 2 <= rows and batch % opts.accumulate == 0 and distributed.current() is None


def _forward_loss(forward: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  opts: StepOptions) -> tuple[torch.Tensor, torch.Tensor]:
    with opts.autocast():
        out = forward(x)
        loss = loss_fn(out, fit_targets(loss_fn, out, y, opts.task))
    return out, (loss.mean() if loss.dim() else loss)


def _backward(loss: torch.Tensor, scaler: Any) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _optimizer_step(model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                    opts: StepOptions, step: int) -> float:
    """Clip, step (with the warmup factor), update EMA and per-step schedules."""
    if opts.scaler is not None and (opts.clip_grad_norm or opts.clip_grad_value):
        opts.scaler.unscale_(optimizer)
    if opts.clip_grad_norm:
        nn.utils.clip_grad_norm_(model.parameters(), opts.clip_grad_norm)
    if opts.clip_grad_value:
        nn.utils.clip_grad_value_(model.parameters(), opts.clip_grad_value)
    factor = schedule.warmup_factor(step)
    planned = [group["lr"] for group in optimizer.param_groups] if factor != 1.0 else None
    if planned is not None:
        for group, lr in zip(optimizer.param_groups, planned):
            group["lr"] = lr * factor
    used = current_lr(optimizer)
    if opts.scaler is not None:
        opts.scaler.step(optimizer)
        opts.scaler.update()
    else:
        optimizer.step()
    if planned is not None:
        for group, lr in zip(optimizer.param_groups, planned):
            group["lr"] = lr  # the schedule keeps its own value; warmup only scales this step
    if opts.ema is not None:
        opts.ema.update(model)
    if schedule.interval == "step":
        schedule.scheduler.step()
    return used


def _compiled(opts: StepOptions, started: float) -> float:
    if opts.device.type == "cuda":
        torch.cuda.synchronize(opts.device)
    opts.compile_pending = False
    return time.perf_counter() - started


def _non_finite(loss: torch.Tensor, epoch: int, batch: int, lr: float) -> RunFailed:
    return RunFailed(f"the loss became {loss.item()} at epoch {epoch}, step {batch + 1} (lr {lr:g}); "
                     "lower optimizer.lr, or set train.clip_grad_norm (the checkpoints keep the last good weights)")


def _check_first_bad(first_bad: torch.Tensor, epoch: int, lr: float) -> None:
    bad = distributed.first_bad_step(first_bad)
    if bad >= 0:
        error = _non_finite(torch.tensor(float("nan")), epoch, bad, lr)
        error.everywhere = distributed.current() is not None  # every rank found the same step
        raise error


def _progress(sums: _Sums, task: str, samples: int, started: float) -> dict:
    metrics = sums.read(task, "")
    metrics["samples_per_second"] = samples / max(1e-9, time.perf_counter() - started)
    return metrics


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: nn.Module, opts: StepOptions, *,
             collect: bool = False, callback: Callback = Callback(), epoch: int = 0) -> tuple[dict, dict | None]:
    """Loss and accuracy (top-1, top-5 with >= 5 classes) or MAE of `model` over `loader`.

    Args:
        collect: also return the class probabilities and targets (for PR curves).

    Returns:
        (metrics with keys val_loss, val_accuracy[, val_top5_accuracy] or val_mae;
         {"probs": (N, C), "targets": (N,)} on the CPU, or None).
    """
    model.eval()
    callback.on_eval_start(epoch, len(loader))
    sums, top5 = _Sums(opts.device, threshold=single_threshold(opts.output)), torch.zeros((), dtype=torch.long, device=opts.device)
    probs, targets, classes = [], [], 0
    for x, y in loader:
        x, y = opts.to_device(x, y)
        with opts.autocast():
            out = _outputs_fitting(model, x, opts, callback)
            loss = loss_fn(out, fit_targets(loss_fn, out, y, opts.task))
        loss = loss.float().mean()
        sums.add(loss, out, y, opts.task)
        if opts.task == "classification":
            classes = out.shape[1]
            if classes >= 5:
                top5 += (out.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            if collect:
                probs.append(to_probabilities(out, opts.output))
                targets.append(y)
    # each process saw its own shard of the validation set: the sums cover all of it once
    sums.all_reduce()
    top5 = distributed.all_reduce_sum(top5)
    collected = distributed.gather_collected({"probs": torch.cat(probs).cpu(), "targets": torch.cat(targets).cpu()}
                                             if probs else None)
    metrics = sums.read(opts.task, "val_")
    if classes >= 5:
        metrics["val_top5_accuracy"] = top5.item() / max(1, sums.count)
    return metrics, collected


def _outputs_fitting(model: nn.Module, x: torch.Tensor, opts: StepOptions, callback: Callback) -> torch.Tensor:
    """model(x) in `opts.eval_splits` parts; when the device runs out of memory, again in twice as
    many (kept for later evaluations), up to one sample per part."""
    while True:
        try:
            if opts.eval_splits == 1:
                return model(x)
            return torch.cat([model(part) for part in x.tensor_split(opts.eval_splits) if part.shape[0]])
        except torch.OutOfMemoryError:
            if opts.eval_splits >= x.shape[0]:
                raise RunFailed(f"{opts.device} ran out of memory in evaluation even one sample at a time; "
                                "use a smaller model or input size") from None
        # out of the except block, the failed attempt's tensors are free
        if opts.device.type == "cuda":
            torch.cuda.empty_cache()
        opts.eval_splits = min(opts.eval_splits * 2, x.shape[0])
        callback.on_message(f"{opts.device} ran out of memory in evaluation: each batch now goes through the model "
                            f"in {opts.eval_splits} parts")
