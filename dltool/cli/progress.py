"""How `dltool train` shows a run on stderr: a live rich bar per epoch, or plain lines when stderr is
not a terminal, and a summary table at the end. The library reports through Callback hooks; only
this module draws."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from dltool.cli.text import plain, safe
from dltool.training.callbacks import Callback


def rate(value: float | None) -> str:
    """A throughput as people read it, the same in every line and table: 30,130 (not 3.013e+04), 12.5."""
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def epoch_line(row: dict, epochs: int, improved: bool) -> str:
    """One epoch as text: `epoch 3/15  loss 0.285 acc 92.5%  val_loss 0.298 val_acc 90.5%  1,349 samples/s  1.1 s`."""
    parts = [f"epoch {row['epoch']}/{epochs}", f"loss {row['train_loss']:.4f}"]
    if "train_accuracy" in row:
        parts.append(f"acc {100 * row['train_accuracy']:.1f}%")
    if "train_mae" in row:
        parts.append(f"mae {row['train_mae']:.4g}")
    if "val_loss" in row:
        parts.append(f"val_loss {row['val_loss']:.4f}")
    if "val_accuracy" in row:
        parts.append(f"val_acc {100 * row['val_accuracy']:.2f}%")
    if "val_top5_accuracy" in row:
        parts.append(f"top5 {100 * row['val_top5_accuracy']:.1f}%")
    if "val_mae" in row:
        parts.append(f"val_mae {row['val_mae']:.4g}")
    parts += [f"lr {row['lr']:.3g}", f"{rate(row['samples_per_second'])} samples/s", f"{row['epoch_seconds']:.1f} s"]
    return "  ".join(parts) + ("  *" if improved else "")


class PlainProgress(Callback):
    """A line per epoch (and per message): for logs, pipes and CI."""

    def __init__(self, console: Console):
        self.console = console
        self.epochs = 0

    def on_fit_start(self, info: dict) -> None:
        self.epochs = info["epochs"]
        self.console.print(f"run {safe(info['run_dir'])}: {info['train_samples']} train / {info['val_samples']} val samples, "
                           f"{info['params']:,} parameters, {info['device']}, epochs {info['start_epoch']}..{self.epochs}",
                           highlight=False, soft_wrap=True)

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        self.console.print(epoch_line(row, self.epochs, improved), highlight=False, soft_wrap=True)

    def on_message(self, text: str) -> None:
        self.console.print(plain(text), markup=False, highlight=False, soft_wrap=True)


class RichProgress(PlainProgress):
    """A live bar for the epoch under way (loss, accuracy, samples/s, ETA), a kept line per epoch."""

    def __init__(self, console: Console):
        super().__init__(console)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console, transient=True,
            auto_refresh=False)  # redrawn on each update: no refresh thread taking a core from the steps
        self.task: Any = None

    def on_fit_start(self, info: dict) -> None:
        super().on_fit_start(info)
        self.progress.start()

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self._drop_task()
        self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=batches, stats="")
        self.progress.refresh()

    def on_step(self, epoch: int, batch: int, batches: int, metrics: dict) -> None:
        score = (f"acc {100 * metrics['accuracy']:.1f}%" if "accuracy" in metrics else f"mae {metrics['mae']:.4g}")
        stats = f"loss {metrics['loss']:.4f}  {score}  {rate(metrics['samples_per_second'])} samples/s"
        self.progress.update(self.task, completed=batch, stats=stats, refresh=True)

    def on_eval_start(self, epoch: int, batches: int) -> None:
        self.progress.update(self.task, description=f"epoch {epoch}/{self.epochs} validating", refresh=True)

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        self._drop_task()
        self.progress.console.print(epoch_line(row, self.epochs, improved), highlight=False, soft_wrap=True)

    def on_fit_end(self, summary: dict) -> None:
        self.close()

    def _drop_task(self) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None

    def close(self) -> None:
        self._drop_task()
        self.progress.stop()


def make_progress(console: Console, quiet: bool = False) -> PlainProgress | None:
    """RichProgress on a terminal, PlainProgress otherwise, None when quiet."""
    if quiet:
        return None
    return RichProgress(console) if console.is_terminal else PlainProgress(console)


def summary_table(summary: dict, run_dir: Any) -> Table:
    """The end-of-run table: best epoch, final metrics, time and throughput."""
    table = Table(title=f"run {safe(run_dir)}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    rows = [("status", summary.get("status")), ("epochs", summary.get("epochs_done"))]
    if "folds" not in summary:
        rows.append(("best epoch", f"{summary.get('best_epoch')} ({summary.get('monitor')} {_fmt(summary.get('best_value'))})"))
    rows += [(key.replace("_", " "), _fmt(value)) for key, value in (summary.get("final") or {}).items()]
    rows += [("train time", f"{summary.get('train_seconds', 0):.1f} s"),
             ("throughput", f"{rate(summary.get('train_samples_per_second'))} samples/s")]
    if summary.get("compile_seconds"):
        rows.append(("compile time", f"{summary['compile_seconds']:.1f} s"))
    if summary.get("batch_splits", 1) > 1:
        rows.append(("batch split", f"in {summary['batch_splits']} parts (out of memory)"))
    if "folds" in summary:
        rows.append((f"{summary['monitor']} over folds", f"{_fmt(summary['mean'])} ± {_fmt(summary['std'])}"))
    for what, value in rows:
        table.add_row(safe(what), safe(value))
    return table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)

