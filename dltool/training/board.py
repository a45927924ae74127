"""TensorBoard events for a run: scalars, images, graph, histograms, text, PR curves, hparams.

tensorboard is imported only when a Board is made, so nothing else pays for it. A write the disk
refuses (full, read-only), in any method or in the writer's own thread, is one Unwritable naming
the folder: the thread's failure is kept for the next call instead of printed as a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dltool.errors import Unwritable, first_line
from dltool.store.writing import refusal, refused

SCALARS = {
    "train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val", "val_top5_accuracy": "accuracy/val_top5", "train_mae": "mae/train",
    "val_mae": "mae/val", "lr": "lr", "samples_per_second": "throughput/samples_per_second",
    "epoch_seconds": "time/epoch_seconds",
}


class Board:
    """A SummaryWriter on `log_dir`; `purge_step` drops events a killed run wrote past its checkpoint."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir, self.failed, self.closed = Path(log_dir), False, False
        _quiet_writer_threads()
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)
        self._bins: torch.Tensor | None = None

    def text(self, tag: str, text: str) -> None:
        # TensorBoard renders text as markdown: indenting keeps the YAML verbatim
        self.writer.add_text(tag, "\n".join("    " + line for line in text.splitlines()), 0)

    def images(self, x: torch.Tensor, max_images: int = 64) -> None:
        """A grid of the first training batch after transforms, each image scaled to [0, 1] for display."""
        from torchvision.utils import make_grid

        x = x[:max_images].detach().float().cpu()
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            return
        grid = make_grid(x, nrow=8, normalize=True, scale_each=True, pad_value=1.0)
        self.writer.add_image("train/first_batch", grid, 0)

    def graph(self, model: nn.Module, example: torch.Tensor) -> str | None:
        """The model's graph, traced in eval mode without touching its state or the RNG.

        Returns:
            None, or why the model could not be traced (the run goes on without a graph).
        """
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's warnings are about tracing, not the run
                self.writer.add_graph(model, example)
        except (RuntimeError, TypeError, ValueError) as exc:
            return f"TensorBoard graph skipped: {first_line(exc)[:200]}"
        finally:
            model.train(was_training)
        return None

    def epoch(self, row: dict, step: int) -> None:
        for key, tag in SCALARS.items():
            if row.get(key) is not None:
                self.writer.add_scalar(tag, row[key], step)

    def histograms(self, model: nn.Module, step: int) -> None:
        """Weights and (the epoch's last) gradients of every parameter."""
        if self._bins is None:
            self._bins = torch.tensor(self.writer.default_bins, dtype=torch.float64)
        for name, param in model.named_parameters():
            for kind, values in (("weights", param), ("gradients", param.grad)):
                binned = histogram(values, self._bins) if values is not None else None
                if binned is not None:
                    self.writer.add_histogram_raw(f"{kind}/{name}", global_step=step, **binned)

    def flush(self) -> None:
        """Write every queued event now: the writer's thread then has nothing to do while training
        steps run (on a 2-core CPU it would take a core from them)."""
        self.writer.flush()

    def pr_curves(self, probs: torch.Tensor, targets: torch.Tensor, classes: Sequence[str], step: int) -> None:
        """One precision-recall curve per class, one-vs-rest, on the validation predictions."""
        labels = targets.argmax(1) if targets.dim() == 2 else targets
        for index, name in enumerate(classes):
            self.writer.add_pr_curve(f"pr/{index}_{name}", labels == index, probs[:, index], step)

    def hparams(self, config: dict, metrics: dict) -> None:
        """Config values against final metrics (the HPARAMS tab), in this run's own event file."""
        from torch.utils.tensorboard.summary import hparams

        values = flatten(config)
        final = {f"hparam/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        experiment, start, end = hparams(values, final)
        # add_hparams would open a second writer in a sub-folder; the run's own file keeps tb/ whole
        writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            writer.add_summary(summary)
        for key, value in final.items():
            self.writer.add_scalar(key, value)

    def close(self) -> None:
        """Flush and close the event file, once; after a failure already reported, quietly.

        Raises:
            Unwritable: the last events could not be written (and nothing had failed before).
        """
        if self.closed:
            return
        self.closed = True
        try:
            self.writer.close()
        except OSError as exc:
            for writer in (self.writer.all_writers or {}).values():
                with contextlib.suppress(OSError, AttributeError):
                    writer.event_writer._general_file_writer.close()
            self.writer.all_writers = self.writer.file_writer = None
            if not refused(exc):
                raise
            if not self.failed:
                raise Unwritable(refusal(self.log_dir, exc)) from None


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> {dotted.key: int | float | str | bool}; lists and specs become their text."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, (bool, int, float, str)):
        return {prefix: data}
    return {prefix: str(data)}


def histogram(values: torch.Tensor, bins: torch.Tensor) -> dict | None:
    """`SummaryWriter.add_histogram_raw`'s arguments for `values`, binned as `add_histogram` bins
    them (`bins`: its default_bins), or None when no value falls in a bin (all NaN).

    Computed by torch: `add_histogram` takes a dot product through numpy's BLAS, whose worker
    threads then spin beside the training threads well into the next epoch.
    """
    v = values.detach().flatten().to("cpu", torch.float64)
    if v.numel() == 0:
        return None
    counts = torch.histogram(v, bins=bins).hist
    filled = counts.nonzero().flatten()
    if filled.numel() == 0:
        return None
    first, last = int(filled[0]), int(filled[-1])
    # TensorBoard stores right bin edges only: the empty bin left of the first one keeps its left edge
    counts = torch.cat([counts.new_zeros(1), counts[: last + 1]]) if first == 0 else counts[first - 1: last + 1]
    return {"min": float(v.min()), "max": float(v.max()), "num": v.numel(), "sum": float(v.sum()),
            "sum_squares": float(v.dot(v)), "bucket_limits": bins[first: last + 2].tolist(),
            "bucket_counts": counts.tolist()}

def _watched(method: Any) -> Any:
    """`method` with a refused write (here or in the writer thread) turned into one Unwritable line."""
    @functools.wraps(method)
    def watched(self: Board, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            if not refused(exc):
                raise
            self.failed = True
            raise Unwritable(refusal(self.log_dir, exc)) from None
    return watched


# every method that writes (all but close, which reports a failure once and then closes quietly)
for _name, _method in list(vars(Board).items()):
    if callable(_method) and (_name == "__init__" or not _name.startswith("_")) and _name != "close":
        setattr(Board, _name, _watched(_method))


def _quiet_writer_threads() -> None:
    """Keep the event writer thread's OSError from printing "Exception in thread ..." with its
    traceback: the writer raises the same error again on the next call, where Board reports it."""
    previous = threading.excepthook
    if getattr(previous, "dltool_quiet", False):
        return

    def hook(args: Any) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and issubclass(args.exc_type, OSError)):
            previous(args)

    hook.dltool_quiet = True
    threading.excepthook = hook
