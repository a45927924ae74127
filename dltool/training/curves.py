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
from typing import Any, Callable, Sequence

from dltool.errors import ConfigError
from dltool.store.writing import WRITE_INTO, write_atomic


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


# the summary.json fields a reader uses, and the types dltool writes them with (bool is no number)
SUMMARY_TYPES = {"status": (str,), "epochs_done": (int,), "best_epoch": (int,), "monitor": (str,),
                 "best_value": (int, float), "best_val_accuracy": (int, float), "train_seconds": (int, float)}


def read_summary(run_dir: str | Path) -> tuple[dict, str | None]:
    """summary.json of `run_dir` and why it cannot be used: ({}, None) when there is none yet,
    ({}, reason) when it is no JSON object of the types dltool writes (nested 100,000 deep, numbers
    as strings), else (summary, None)."""
    try:
        text = (Path(run_dir) / "summary.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        return {}, f"summary.json cannot be read ({getattr(exc, 'strerror', None) or exc})"
    try:
        data = json.loads(text)
    except RecursionError:
        return {}, "summary.json is nested too deep to read"
    except ValueError as exc:
        return {}, f"summary.json is no JSON ({exc})"
    if not isinstance(data, dict):
        return {}, "summary.json holds no JSON object"
    for key, types in SUMMARY_TYPES.items():
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types)):
            return {}, f"summary.json: {key} is {_short(value)}, not {'text' if types == (str,) else 'a number'}"
    return data, None


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def best_epoch(run_dir: str | Path) -> int | None:
    """The best epoch summary.json names, when the run has written a readable one."""
    return read_summary(run_dir)[0].get("best_epoch")


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


# a picture's type follows its name: never PNG bytes under a .jpg name
PICTURE_TYPES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".svg": "svg", ".pdf": "pdf"}


def picture_type(path: str | Path, option: str = "--out") -> str:
    """The matplotlib format `path`'s suffix names.

    Raises:
        ConfigError: a suffix that names no picture type dltool draws.
    """
    if str(path) in WRITE_INTO:
        return "png"  # a picture piped on: PNG, the type every viewer reads
    kind = PICTURE_TYPES.get(Path(path).suffix.lower())
    if kind is None:
        raise ConfigError(f"{option}: {path}: a picture's name ends in one of {', '.join(PICTURE_TYPES)}")
    return kind


def save_picture(figure: Any, path: Path, write: Callable[[Path, bytes], Path] = write_atomic) -> Path:
    """Draw `figure` in the type its name says (a PNG for curves.png) and `write` it to `path`."""
    picture = io.BytesIO()
    figure.savefig(picture, format=picture_type(path), dpi=100)
    return write(path, picture.getvalue())


def draw_runs(runs: Sequence[tuple[str, Sequence[dict], int | None]], path: str | Path,
              metric: str | None = None, write: Callable[[Path, bytes], Path] = write_atomic) -> Path:
    """One picture with a panel per quantity; each run a colour, train dashed, validation solid, its
    best epoch a dot on the validation line.

    Args:
        runs: (label, rows from `read_rows`, best epoch or None) per run.
        path: the picture to write (its suffix says PNG, JPEG, SVG or PDF).
        metric: one column (`val_accuracy`, `train_loss`, `lr`, ...) instead of loss and accuracy.
        write: how the picture's bytes reach `path`.

    Raises:
        ConfigError: `metric` is in none of the runs, or `path` names no picture type.
        Unwritable: the picture could not be written.
    """
    picture_type(path)
    return save_picture(runs_figure(runs, metric), Path(path), write)


def runs_figure(runs: Sequence[tuple[str, Sequence[dict], int | None]], metric: str | None = None) -> Any:
    """The figure `draw_runs` writes; each panel's legend sits below it, so it never covers a curve."""
    from matplotlib.ticker import MaxNLocator

    panels = panels_for([r for _, rows, _ in runs for r in rows], metric)
    lines = len(runs) * (1 if metric is not None else 2)
    legend_rows = math.ceil(lines / 2)
    width, height = 5.5 * len(panels), 4 + 0.22 * legend_rows
    figure = new_figure(width, height)
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
            ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    if metric is not None and not drawn:
        raise ConfigError(f"--metric: no run has a column {metric!r} in its metrics.csv")
    if len(runs) == 1:
        label, _, best = runs[0]
        figure.suptitle(label if best is None else f"{label} (best epoch {best}: circled)")
    # fixed margins (in inches) rather than tight_layout, which draws the whole figure once more
    bottom = (0.75 + 0.22 * legend_rows) / height
    figure.subplots_adjust(left=1.0 / width, right=1 - 0.15 / width, bottom=bottom, top=1 - 0.45 / height,
                           wspace=0.35)
    return figure


def _draw_lines(ax: Any, quantity: str, metric: str | None, label: str, rows: Sequence[dict], best: int | None,
                colour: str) -> int:
    """Draw one run's lines for `quantity`; returns how many lines were drawn."""
    columns = [metric] if metric is not None else [f"train_{quantity}", f"val_{quantity}"]
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
