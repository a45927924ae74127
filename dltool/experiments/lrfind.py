"""`dltool lr-find`: the learning-rate range test (Smith, 2015; fastai's lr_find, Lightning's LR finder).

The config's own data, model, loss and optimizer take one mini-batch per learning rate on an
exponential ramp from `start` to `end`; the smoothed loss is recorded until it diverges. Nothing
is saved: the model and optimizer are thrown away, and no run folder is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dltool.errors import ConfigError, DataError

SMOOTHING = 0.98  # exponential moving average of the loss, debiased as in Adam
DIVERGED = 4.0    # stop once the smoothed loss is this many times its lowest value


@dataclass
class LrFindResult:
    """Learning rates tried, the smoothed loss after each, the suggestion and how it was chosen."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggested_lr: float | None = None
    how: str = ""
    plot: Path | None = None

    def to_json(self) -> dict:
        return {"suggested_lr": self.suggested_lr, "how": self.how, "lrs": self.lrs, "losses": self.losses,
                "plot": str(self.plot) if self.plot else None}


def lr_find(config_path: str | Path, overrides: Sequence[str] = (), *, start: float = 1e-7, end: float = 10.0,
            steps: int = 100, out: str | Path | None = None) -> LrFindResult:
    """Run the range test and draw loss against lr (suggestion marked) into `out`.

    Args:
        config_path: the YAML config (its scheduler is not used: the ramp is the schedule).
        overrides: KEY=VALUE applied to it.
        start, end: the first and last learning rate of the ramp (0 < start < end).
        steps: mini-batches, one per learning rate (the train data is gone through again if it is short).
        out: the PNG (default: <config name>-lr-find.png in the current folder).

    Raises:
        ConfigError: bad arguments or config. DataError: no training data.
    """
    from dltool.config.load import load_config
    from dltool.experiments.plots import draw_lr_find
    from dltool.store.writing import prepare_output
    from dltool.training.curves import picture_type

    if not 0 < start < end or not math.isfinite(end):
        raise ConfigError(f"lr-find: --start must be above 0 and below --end; got --start {start} --end {end}")
    if steps < 5:
        raise ConfigError(f"lr-find: --steps must be 5 or more; got {steps}")
    config = load_config(config_path, overrides)
    out = Path(out) if out is not None else Path(f"{config.stem}-lr-find.png")
    picture_type(out)
    prepare_output(out, inputs=[config_path])
    result = _range_test(config, start, end, steps)
    result.suggested_lr, result.how = suggest_lr(result.lrs, result.losses)
    result.plot = draw_lr_find(result.lrs, result.losses, result.suggested_lr, result.how, out)
    return result


def _range_test(config: Any, start: float, end: float, steps: int) -> LrFindResult:
    from dltool.data import build_data
    from dltool.models import resolve_input_shape
    from dltool.training.callbacks import Callback
    from dltool.training.engine import fit_targets
    from dltool.training.runtime import num_threads
    from dltool.training.train import Session

    bundle = build_data(config)
    if not len(bundle.train):
        raise DataError(f"{config.path}: lr-find needs training data; the train split is empty")
    session = Session(config, bundle, resolve_input_shape(config, data=bundle), None, Callback())
    model, optimizer, opts = session.model, session.optimizer, session.opts
    ratio = (end / start) ** (1 / (steps - 1))
    result, average, lowest = LrFindResult(), 0.0, math.inf
    model.train()
    with num_threads(config.train.threads):
        for step, (x, y) in enumerate(_batches(session.train_loader, steps)):
            lr = min(end, start * ratio ** step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = opts.to_device(x, y)
            out = model(x)
            loss = session.loss_fn(out, fit_targets(session.loss_fn, out, y, session.task))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            if not math.isfinite(value):
                break
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smoothed = average / (1 - SMOOTHING ** (step + 1))
            result.lrs.append(lr)
            result.losses.append(smoothed)
            lowest = min(lowest, smoothed)
            if smoothed > DIVERGED * lowest:
                break
    return result


def _batches(loader: Any, steps: int):
    """`steps` mini-batches, going through the loader again (a new epoch's order) when it runs out."""
    given, epoch = 0, 1
    while given < steps:
        loader.set_epoch(epoch)
        for batch in loader:
            yield batch
            given += 1
            if given == steps:
                return
        epoch += 1


def suggest_lr(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float | None, str]:
    """The lr where the smoothed loss falls fastest (per log-lr), before its minimum and past the
    first tenth of the ramp (where the average is still settling); else the minimum's lr / 10.

    Returns:
        (lr, "steepest descent" or "minimum / 10"); (None, "") when fewer than 2 points were recorded.
    """
    if len(lrs) < 2:
        return None, ""
    lowest = min(range(len(losses)), key=losses.__getitem__)
    skip = max(1, len(lrs) // 10)
    if lowest - skip >= 3:
        logs = [math.log10(lr) for lr in lrs]
        slopes = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(skip, lowest)]
        steepest = skip + min(range(len(slopes)), key=slopes.__getitem__)
        if slopes[steepest - skip] < 0:
            return lrs[steepest], "steepest descent"
    return lrs[lowest] / 10, "minimum / 10"
