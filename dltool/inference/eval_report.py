"""What `dltool eval` shows and writes: rich tables, confusion_matrix.csv/.png, misclassified.csv,
metrics.json. Collecting the numbers is dltool.inference.evaluate's job; this module only presents them."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from dltool.errors import Unwritable
from dltool.inference.evaluate import EvalResult
from dltool.store.writing import write_output, writing

# Wider confusion matrices are left to the CSV and PNG; a terminal cannot show them.
TABLE_CLASSES = 20
SHOWN_MISTAKES = 10


def write_outputs(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """Write the report files into `out_dir` (created), each atomically; return their paths.

    Raises:
        Unwritable: `out_dir` is a file, or refuses writes (read-only, full, no permission).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Unwritable(f"cannot write the report into {out}: it is a file; give --out a folder")
    try:
        with writing(out, "give --out a folder you can write to"):
            out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise Unwritable(f"cannot write the report into {out}: a part of that path is a file; give --out a folder") from None
    written = [_write_json(out / "metrics.json", result.to_json())]
    if result.task == "classification":
        written.append(_write_csv(out / "confusion_matrix.csv", ["true \\ predicted", *result.classes],
                                  [[name, *row] for name, row in zip(result.classes, result.confusion)]))
        mistakes = result.misclassified()
        written.append(_write_csv(out / "misclassified.csv", ["sample", "true", "predicted", "confidence",
                                                              "true_probability"],
                                  [[m["sample"], m["true"], m["predicted"], f"{m['confidence']:.6f}",
                                    f"{m['true_probability']:.6f}"] for m in mistakes]))
        written.append(draw_confusion(result.confusion, result.classes, out / "confusion_matrix.png"))
    return written


def _write_json(path: Path, data: Any) -> Path:
    return write_output(path, json.dumps(data, indent=2) + "\n")


def _write_csv(path: Path, header: list, rows: list[list]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return write_output(path, text.getvalue())


def draw_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """A PNG heat map of the confusion matrix (matplotlib, as every dltool picture), each row shaded
    by its share of that true class, counts written in while the cells are large enough to read."""
    from matplotlib.figure import Figure  # Agg draws it; pyplot (and its global state) is not needed

    n = len(classes)
    shares = [[count / (sum(row) or 1) for count in row] for row in confusion]
    side = min(16.0, max(4.5, 0.45 * n + 2.5))
    figure = Figure(figsize=(side, side))
    ax = figure.subplots()
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(confusion):
        for j, count in enumerate(row):
            if count and n <= 30:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if shares[i][j] > 0.6 else "black")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    return write_output(path, png.getvalue())


def render(result: EvalResult) -> list[Any]:
    """Rich renderables for the terminal: summary, per-class table, confusion matrix, worst mistakes."""
    from rich.markup import escape

    heading = f"[bold]{escape(result.checkpoint)}[/bold]"
    if result.task == "regression":
        return [heading, _summary(result)]
    parts = [heading, _summary(result), _per_class_table(result)]
    if len(result.classes) <= TABLE_CLASSES:
        parts.append(_confusion_table(result))
    mistakes = result.misclassified()
    if mistakes:
        parts.append(_mistakes_table(mistakes[:SHOWN_MISTAKES], len(mistakes)))
    return parts


def _summary(result: EvalResult) -> Any:
    from rich.table import Table

    table = Table(title=f"{result.split}: {len(result.ids)} samples", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    return table


def _per_class_table(result: EvalResult) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="per class")
    for name in ("class", "precision", "recall", "f1", "support"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in result.per_class:
        table.add_row(escape(str(row["class"])), f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    table.rows[-1].end_section = True
    support = str(sum(row["support"] for row in result.per_class))
    for name, avg in result.averages().items():
        table.add_row(f"{name} avg", f"{avg['precision']:.3f}", f"{avg['recall']:.3f}", f"{avg['f1']:.3f}", support)
    return table


def _confusion_table(result: EvalResult) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="confusion matrix", caption="rows: true class, columns: predicted")
    table.add_column("")
    for name in result.classes:
        table.add_column(escape(str(name)), justify="right")
    for i, (name, row) in enumerate(zip(result.classes, result.confusion)):
        cells = [f"[bold green]{count}[/]" if j == i else (str(count) if count else "[dim]0[/]")
                 for j, count in enumerate(row)]
        table.add_row(escape(str(name)), *cells)
    return table


def _mistakes_table(mistakes: list[dict], total: int) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="most confident mistakes", caption=f"{len(mistakes)} of {total}; all in misclassified.csv")
    for name in ("sample", "true", "predicted", "confidence"):
        table.add_column(name, justify="right" if name == "confidence" else "left")
    for m in mistakes:
        table.add_row(*(escape(str(m[key])) for key in ("sample", "true", "predicted")), f"{m['confidence']:.3f}")
    return table
