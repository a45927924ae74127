"""Pictures beyond one run's curves.png: several runs overlaid (`dltool plot`, also while they train)
and the lr-find curve. Drawn as curves.png is (dltool.training.curves: matplotlib's Agg canvas, no pyplot);
eval's confusion matrix is drawn with matplotlib too, in dltool/eval_report.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from dltool.errors import ConfigError
from dltool.training.curves import draw_runs, new_figure, picture_type, read_rows, read_summary, save_picture


def draw_lr_find(result: Any, path: str | Path) -> Path:
    """An lr-find result (dltool.experiments.lrfind.LrFindResult) drawn: loss against learning rate,
    both on log axes: each step's loss faint, the running median bold, the y range cut where the loss rose past its start (the divergence would flatten the
    rest), the lr where it diverged and the suggestion marked and named. Written to `path` under
    the rule of every --out (dltool.store.writing.write_output)."""
    from dltool.store.writing import write_output

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


@dataclass
class Plotted:
    """What `dltool plot` wrote, and the runs it could not draw (one line each)."""

    path: Path
    notes: list[str] = field(default_factory=list)


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, metric: str | None = None) -> Plotted:
    """Overlay the curves of `run_dirs` (also runs still training: their metrics.csv so far) in `out`;
    a folds or tune folder stands for its folds or trials, one line each.

    Raises:
        ConfigError: a path holds no run with at least one epoch, `metric` is in none of them, `out`
            is a place no picture may go (see dltool.store.writing.check_output) or names no picture type.
        Unwritable: the picture could not be written.
    """
    from dltool.store.writing import prepare_output, write_output

    runs, notes = [], []
    for path, label in _labelled(run_dirs):
        summary, problem = read_summary(path)
        runs.append((label, read_rows(path), summary.get("best_epoch")))
        if problem:
            notes.append(f"{label}: {problem}; its best epoch is not marked")
    picture_type(out)
    prepare_output(out)
    if metric is not None:
        lacking = [label for label, rows, _ in runs if not any(metric in row for row in rows)]
        if len(lacking) < len(runs):
            notes += [f"{label}: no column {metric!r} in its metrics.csv; not drawn" for label in lacking]
            runs = [run for run in runs if run[0] not in lacking]
    written = draw_runs(runs, out, metric, write=write_output)
    return Plotted(written, notes)


def _labelled(run_dirs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Each run folder to draw with its label: its name, or its path where names repeat; the folds or
    trials of a folder that is no run itself, labelled folder/fold."""
    from dltool.experiments.runs_table import find_runs

    found = []
    for given in map(Path, run_dirs):
        inner = [] if not given.is_dir() or read_rows(given) else [p for p in find_runs(given) if read_rows(p)]
        if not inner and not read_rows(given):
            raise ConfigError(f"plot: {given} has no epochs to draw (no run folder with a metrics.csv row there; "
                              "one is written after each epoch)")
        found += [(p, f"{given.name}/{p.relative_to(given)}") for p in inner] or [(given, given.name)]
    labels = [label for _, label in found]
    return [(p, label if labels.count(label) == 1 else str(p)) for p, label in found]
