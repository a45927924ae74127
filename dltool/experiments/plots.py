"""`dltool plot`: several runs' curves overlaid in one picture, also while they train. Drawn as
curves.png is (dltool.training.curves: matplotlib's Agg canvas, no pyplot); the lr-find curve
(dltool.experiments.lrfind) and eval's confusion matrix (dltool/inference/eval_report.py) are drawn
with matplotlib too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from dltool.errors import ConfigError
from dltool.training.curves import draw_runs, picture_type, read_rows, read_summary


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
