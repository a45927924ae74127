"""Pictures beyond one run's curves.png: several runs overlaid (`dltool plot`, also while they train)
and the lr-find curve. Drawn as curves.png is (dltool.training.curves: matplotlib's Agg canvas, no pyplot);
eval's confusion matrix is drawn with matplotlib too, in dltool/eval_report.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from dltool.errors import ConfigError
from dltool.training.curves import best_epoch, draw_runs, new_figure, read_rows, save_png


def draw_lr_find(lrs: Sequence[float], losses: Sequence[float], suggested: float | None, how: str,
                 path: str | Path) -> Path:
    """Smoothed loss against learning rate (log axis), the suggestion marked and named."""
    figure = new_figure(6, 4)
    ax = figure.subplots()
    ax.plot(lrs, losses, color="C0")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.grid(alpha=0.3, which="both")
    if suggested is not None:
        ax.axvline(suggested, color="C3", linestyle="--", label=f"suggested lr {suggested:.3g} ({how})")
        ax.legend(fontsize="small")
    figure.tight_layout()
    return save_png(figure, Path(path))



def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, metric: str | None = None) -> Path:
    """Overlay the curves of `run_dirs` (also runs still training: their metrics.csv so far) in `out`.

    Raises:
        ConfigError: a path is not a run folder with at least one epoch, or `metric` is in none of them.
        Unwritable: the PNG could not be written.
    """
    paths = [Path(p) for p in run_dirs]
    runs = []
    for path in paths:
        rows = read_rows(path)
        if not rows:
            raise ConfigError(f"plot: {path} has no epochs to draw (no run folder with a metrics.csv row there; "
                              "one is written after each epoch)")
        names = [p.name for p in paths]
        runs.append((path.name if names.count(path.name) == 1 else str(path), rows, best_epoch(path)))
    return draw_runs(runs, out, metric)
