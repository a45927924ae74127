"""What the experiment commands draw for the terminal: tune's trials (a table, and a line per ended
trial) and the runs table, from the plain data the library returns; the CLI prints them on stderr.
Every value in a cell comes from a run folder, a summary.json or a study database, so its brackets
are escaped, never read as markup."""

from __future__ import annotations

from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table

STATUS_STYLE = {"finished": "green", "COMPLETE": "green", "running": "cyan", "RUNNING": "cyan",
                "interrupted": "yellow", "pruned": "dim", "PRUNED": "dim", "failed": "red", "FAIL": "red",
                "unreadable": "red", "no checkpoints": "yellow"}


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value: Any) -> str:
    """A value as the markup of a cell: its own brackets escaped."""
    return escape(_fmt(value))


def _styled(status: Any) -> str:
    style = STATUS_STYLE.get(status) if isinstance(status, str) else None
    return f"[{style}]{status}[/{style}]" if style else _cell(status)


def runs_table(rows: Sequence[dict], title: str) -> Table:
    """Name, status, epochs, best metric, train time, created; sized for a 60-column terminal too
    (the monitor goes into the title when every run shares it, long names fold)."""
    from rich import box

    monitors = {row["monitor"] for row in rows if row["monitor"]}
    shared = monitors.pop() if len(monitors) == 1 else None
    title = f"{title} (best: {_cell(shared)})" if shared else title
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("run", overflow="fold", ratio=1)
    table.add_column("status", no_wrap=True)
    table.add_column("ep", justify="right", no_wrap=True)
    table.add_column("best", overflow="fold", no_wrap=shared is not None)
    table.add_column("time", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for row in rows:
        best = "-" if row["best_value"] is None else f"{_cell(row['best_value'])} @{_cell(row['best_epoch'])}"
        if row["best_value"] is not None and not shared:
            best = f"{_cell(row['monitor'])} {best}"
        seconds = "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}s"
        table.add_row(_cell(row["name"]), _styled(row["status"]), _cell(row["epochs_done"]), best, seconds,
                      _cell(row["created"][5:16]))  # MM-DD HH:MM
    return table


def trials_table(trials: Sequence[dict], metric: str, best: int | None) -> Table:
    """One row per trial: number, state, value, each searched value; the best trial starred."""
    keys = sorted({key for trial in trials for key in trial["params"]})
    table = Table(title="trials", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("state")
    table.add_column(_cell(metric), justify="right")
    for key in keys:
        table.add_column(_cell(key), justify="right", overflow="fold")
    for trial in trials:
        mark = " *" if trial["number"] == best else ""
        table.add_row(f"{trial['number']}{mark}", _styled(trial["state"]), _cell(trial["value"]),
                      *(_cell(trial["params"].get(key)) for key in keys))
    return table


def trial_line(row: dict, metric: str, finished: int, trials: int) -> str:
    """One ended trial as a line: `trial 3 COMPLETE val_accuracy 0.981 optimizer.lr=0.0031 (12.0 s) [4/20]`."""
    values = " ".join(f"{key}={_fmt(value)}" for key, value in row["params"].items())
    seconds = f" ({row['seconds']:.1f} s)" if row.get("seconds") is not None else ""
    error = f": {row['error']}" if row.get("error") else ""
    return (f"trial {row['number']} {row['state']} {metric} {_fmt(row['value'])} {values}{seconds} "
            f"[{finished}/{trials}]{error}")
