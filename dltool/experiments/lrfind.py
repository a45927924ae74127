"""`dltool lr-find`: the learning-rate range test (Smith, 2015; fastai's lr_find, Lightning's LR finder).

The config's own parts (data, model, loss, optimizer) make one optimizer step per learning rate on
an exponential ramp from `start` to `end`, through train's own step; the loss is recorded until its
running median diverges. Nothing
is saved: the model and optimizer are thrown away, and no run folder is written; the one file
written is the picture of the loss against the lr (`draw_lr_find`).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dltool.errors import ConfigError, DataError

DIVERGED = 4.0           # stop once the running median of the loss is this many times its lowest
SMOOTHING_DECADES = 0.15  # the curve is a running median over this much of the ramp either side
FELL = 0.02              # a descent: the curve's minimum lies this far (a fraction) below its start; the
                         # course CNN with plain SGD falls only ~3% before its lr turns unstable
BELOW_MINIMUM = 3.0      # the suggestion: the minimum's lr divided by this ...
BELOW_DIVERGENCE = 10.0  # ... or, with no descent, the lr where the loss diverged divided by this


@dataclass
class LrFindResult:
    """Learning rates tried, the loss after each (smoothed, and as measured), where the loss
    diverged (None when it never did), the suggestion and how it was chosen."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    raw_losses: list[float] = field(default_factory=list)
    diverged_at: float | None = None
    suggested_lr: float | None = None
    how: str = ""
    plot: Path | None = None

    def to_json(self) -> dict:
        return {"suggested_lr": self.suggested_lr, "how": self.how, "lrs": self.lrs, "losses": self.losses,
                "raw_losses": self.raw_losses, "diverged_at": self.diverged_at,
                "plot": str(self.plot) if self.plot else None}


def lr_find(config_path: str | Path, overrides: Sequence[str] = (), *, start: float = 1e-7, end: float = 10.0,
            steps: int = 400, out: str | Path | None = None) -> LrFindResult:
    """Run the range test and draw loss against lr (suggestion marked) into `out`.

    Args:
        config_path: the YAML config (its scheduler is not used: the ramp is the schedule).
        overrides: KEY=VALUE applied to it.
        start, end: the first and last learning rate of the ramp (0 < start < end).
        steps: optimizer steps, one per learning rate (each takes `train.accumulate` mini-batches; the
            train data is gone through again if it is short).
        out: the PNG (default: <config name>-lr-find.png in the current folder).

    Raises:
        ConfigError: bad arguments or config. DataError: no training data.
    """
    from dltool.config.load import load_config
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
    result.suggested_lr, result.how = suggest_lr(result.lrs, result.losses, result.diverged_at)
    result.plot = draw_lr_find(result, out)
    return result


def _range_test(config: Any, start: float, end: float, steps: int) -> LrFindResult:
    """The ramp, one optimizer step per lr, each made by the engine's own `train_batch` (AMP,
    accumulation over `train.accumulate` batches, clipping, EMA, the configured loss)."""
    from dataclasses import replace

    from dltool.data import build_data
    from dltool.training.engine import LoopState, train_batch
    from dltool.training.parts import build_parts
    from dltool.training.runtime import num_threads

    # the ramp is the schedule: no scheduler and no warmup scale the lr it sets
    config = replace(config, scheduler=None, train=replace(config.train, warmup_epochs=0.0))
    bundle = build_data(config)
    if not len(bundle.train):
        raise DataError(f"{config.path}: lr-find needs training data; the train split is empty")
    parts = build_parts(config, bundle=bundle)  # without a scheduler or warmup: Schedule(None, "none")
    optimizer, accumulate = parts.optimizer, parts.opts.accumulate
    shares = [group["lr"] / optimizer.defaults["lr"] for group in optimizer.param_groups]  # param_groups' own lrs
    ratio = (end / start) ** (1 / (steps - 1))
    result, state, lowest = LrFindResult(), LoopState(), math.inf
    half = max(1, round(SMOOTHING_DECADES / math.log10(ratio)))  # steps either side in the smoothing
    batches = _batches(parts.train_loader, steps * accumulate)
    parts.model.train()
    with num_threads(config.train.threads):
        for step in range(steps):
            lr = min(end, start * ratio ** step)
            for group, share in zip(optimizer.param_groups, shares):
                group["lr"] = lr * share
            loss = 0.0
            for batch in range(accumulate):  # one optimizer step, as train makes it
                x, y = next(batches)
                done = train_batch(parts, x, y, state, batch=batch, batches=accumulate)
                loss += done.loss.item() / accumulate
            if not math.isfinite(loss):
                result.diverged_at = lr
                break
            result.lrs.append(lr)
            result.raw_losses.append(loss)
            recent = statistics.median(result.raw_losses[-(2 * half + 1):])  # the running median, as it stands
            lowest = min(lowest, recent)
            if recent > DIVERGED * lowest:
                result.diverged_at = lr
                break
    result.losses = smooth(result.raw_losses, half)
    return result


def smooth(values: Sequence[float], half: int) -> list[float]:
    """The running median over `half` values either side (fewer at the ends): no lag, unlike a
    moving average, and a single spike moves it little."""
    return [statistics.median(values[max(0, i - half):i + half + 1]) for i in range(len(values))]


def _batches(loader: Any, count: int):
    """`count` mini-batches, going through the loader again (a new epoch's order) when it runs out."""
    given, epoch = 0, 1
    while given < count:
        loader.set_epoch(epoch)
        for batch in loader:
            yield batch
            given += 1
            if given == count:
                return
        epoch += 1


def suggest_lr(lrs: Sequence[float], losses: Sequence[float], diverged_at: float | None = None) -> tuple[float | None, str]:
    """The suggested optimizer.lr, by the rule that bench/lrfind_validate.py checks (training at it
    reaches what the shipped configs' own rates reach): a third of the lr where the smoothed loss is
    lowest, when it fell there (by `FELL` of where it started); when it never fell, a tenth of the lr
    where it diverged. Never below the first lr tried, never above the last.

    Returns:
        (lr, how it was chosen); (None, why not) when the curve gives no answer.
    """
    if len(lrs) < 2:
        return None, "the loss diverged at once; try a lower --start"
    lowest = min(range(len(losses)), key=losses.__getitem__)
    if losses[lowest] <= (1 - FELL) * losses[0]:
        lr, how = lrs[lowest] / BELOW_MINIMUM, f"the lowest loss's lr / {BELOW_MINIMUM:g}"
    elif diverged_at is not None:
        lr, how = diverged_at / BELOW_DIVERGENCE, (f"the loss did not fall before it diverged at lr {diverged_at:.3g}; "
                                                   f"that / {BELOW_DIVERGENCE:g}")
    else:
        return None, "the loss neither fell nor diverged; try a wider --start/--end or more --steps"
    if lr < lrs[0]:
        return lrs[0], how + ", raised to the first lr tried (the loss was lowest near --start: try a lower one)"
    return min(lr, lrs[-1]), how


def draw_lr_find(result: LrFindResult, path: str | Path) -> Path:
    """Loss against learning rate, both on log axes: each step's loss faint, the running median
    bold, the y range cut where the loss rose past its start (the divergence would flatten the
    rest), the lr where it diverged and the suggestion marked and named. Written to `path` under
    the rule of every --out (dltool.store.writing.write_output)."""
    from dltool.store.writing import write_output
    from dltool.training.curves import new_figure, save_picture

    figure = new_figure(6, 4)
    ax = figure.subplots()
    positive = [loss for loss in result.raw_losses + result.losses if loss > 0]
    if positive and len(positive) == len(result.raw_losses) + len(result.losses):
        from matplotlib.ticker import LogFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))  # 2, 3 rather than 2x10^0
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        low = min(positive)
        ax.set_ylim(low / 1.2, max(result.losses[0] * 1.5, low * 2))
    ax.plot(result.lrs, result.raw_losses, color="C0", alpha=0.3, linewidth=0.8, label="loss at each step")
    ax.plot(result.lrs, result.losses, color="C0", label="running median")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    if result.diverged_at is not None:
        ax.axvline(result.diverged_at, color="0.5", linestyle=":", label=f"diverged at {result.diverged_at:.3g}")
    if result.suggested_lr is not None:
        ax.axvline(result.suggested_lr, color="C3", linestyle="--", label=f"suggested lr {result.suggested_lr:.3g}")
    ax.legend(fontsize="small", loc="best")
    figure.tight_layout()
    return save_picture(figure, Path(path), write_output)
