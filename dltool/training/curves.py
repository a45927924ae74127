"""A run's training curves: metrics.csv read as numbers, and curves.png (loss and accuracy per epoch,
train and validation, best epoch marked) drawn with matplotlib's Agg canvas, imported lazily and
without pyplot. Every run writes it when it ends; `dltool plot` overlays runs with the same drawing.

Reading the numbers is apart from drawing them, so tests check the data.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

from dltool.errors import ConfigError
from dltool.store.writing import write_atomic


def read_rows(run_dir: str | Path) -> list[dict[str, float]]:
    """metrics.csv of `run_dir` as numbers, one dict per epoch; a run still training may have a
    last line cut short, which is skipped (as are cells left blank)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row = {key: _number(value) for key, value in raw.items() if key}
        if row.get("epoch") is not None:
            rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def _number(text: str | None) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def best_epoch(run_dir: str | Path) -> int | None:
    """The best epoch summary.json names, when the run has written one."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text()).get("best_epoch")
    except (OSError, ValueError, AttributeError):
        return None


def panels_for(rows: Sequence[dict], metric: str | None) -> list[str]:
    """The quantities drawn, one panel each: `metric` alone, or loss and accuracy (mae for a regression)."""
    if metric is not None:
        return [metric.removeprefix("train_").removeprefix("val_")] if metric.startswith(("train_", "val_")) \
            else [metric]
    keys = set().union(*rows) if rows else set()
    second = "mae" if {"train_mae", "val_mae"} & keys else "accuracy"
    return ["loss", second]


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn by Agg, without pyplot (half the import time, no global state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_png(figure: Any, path: Path) -> Path:
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    return write_atomic(path, png.getvalue())


def draw_runs(runs: Sequence[tuple[str, Sequence[dict], int | None]], path: str | Path,
              metric: str | None = None) -> Path:
    """One PNG with a panel per quantity; each run a colour, train dashed, validation solid, its
    best epoch a dot on the validation line.

    Args:
        runs: (label, rows from `read_rows`, best epoch or None) per run.
        path: the PNG to write.
        metric: one column (`val_accuracy`, `train_loss`, `lr`, ...) instead of loss and accuracy.

    Raises:
        ConfigError: `metric` is in none of the runs.
        Unwritable: the PNG could not be written.
    """
    from matplotlib.ticker import MaxNLocator

    panels = panels_for([r for _, rows, _ in runs for r in rows], metric)
    width = 5.5 * len(panels)
    figure = new_figure(width, 4)
    axes = figure.subplots(1, len(panels), squeeze=False)
    drawn = 0
    for ax, quantity in zip(axes[0], panels):
        for colour, (label, rows, best) in enumerate(runs):
            drawn += _draw_lines(ax, quantity, metric, label if len(runs) > 1 else "", rows, best, f"C{colour}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric or quantity)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if metric is not None and not drawn:
        raise ConfigError(f"--metric: no run has a column {metric!r} in its metrics.csv")
    if len(runs) == 1:
        label, _, best = runs[0]
        figure.suptitle(label if best is None else f"{label} (best epoch {best}: circled)")
    # fixed margins (in inches) rather than tight_layout, which draws the whole figure once more
    figure.subplots_adjust(left=1.0 / width, right=1 - 0.15 / width, bottom=0.12, top=0.88, wspace=0.35)
    return save_png(figure, Path(path))


def _draw_lines(ax: Any, quantity: str, metric: str | None, label: str, rows: Sequence[dict], best: int | None,
                colour: str) -> int:
    """Draw one run's lines for `quantity`; returns how many lines were drawn."""
    columns = [metric] if metric is not None and quantity == metric else [f"train_{quantity}", f"val_{quantity}"]
    drawn = 0
    for column in columns:
        points = [(r["epoch"], r[column]) for r in rows if column in r]
        if not points:
            continue
        xs, ys = zip(*points)
        style = "--" if column.startswith("train_") else "-"
        name = " ".join(part for part in (label, column) if part)
        ax.plot(xs, ys, style, color=colour, marker="." if len(xs) < 30 else None, label=name)
        drawn += 1
        if best is not None and not column.startswith("train_") and best in xs:
            ax.plot([best], [ys[xs.index(best)]], "o", color=colour, markersize=9, fillstyle="none")
            ax.axvline(best, color=colour, alpha=0.25, linestyle=":")
    return drawn


def write_curves(run_dir: str | Path) -> Path | None:
    """curves.png of one run (loss and accuracy per epoch, train and validation, best epoch
    marked); None when the run has no epoch yet."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    if not rows:
        return None
    return draw_runs([(run_dir.name, rows, best_epoch(run_dir))], run_dir / "curves.png")
