"""What `dltool eval` draws for the terminal: the summary, the per-class table, the confusion matrix
and the most confident mistakes, from the EvalResult (the report files are
`dltool.inference.eval_report`'s)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from dltool.inference.evaluate import EvalResult

# Wider confusion matrices are left to the CSV and PNG; a terminal cannot show them.
TABLE_CLASSES = 20
SHOWN_MISTAKES = 10


def render_eval(result: EvalResult) -> list[Any]:
    """Rich renderables for the terminal: summary, per-class table, confusion matrix, worst mistakes."""
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


def _summary(result: EvalResult) -> Table:
    tta = result.tta
    table = Table(title=f"{result.split}: {len(result.ids)} samples", show_header=tta is not None)
    table.add_column("metric")
    table.add_column("value", justify="right")
    if tta is not None:  # the plain and the averaged prediction side by side
        table.add_column(f"with --tta {tta['mode']} ({tta['views']} views)", justify="right")
    for key, value in result.metrics.items():
        extra = [f"{tta['metrics'][key]:.4f}"] if tta is not None and key in tta["metrics"] else []
        table.add_row(key, f"{value:.4f}", *extra)
    return table


def _per_class_table(result: EvalResult) -> Table:
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


def _confusion_table(result: EvalResult) -> Table:
    table = Table(title="confusion matrix", caption="rows: true class, columns: predicted")
    table.add_column("")
    for name in result.classes:
        table.add_column(escape(str(name)), justify="right")
    for i, (name, row) in enumerate(zip(result.classes, result.confusion)):
        cells = [f"[bold green]{count}[/]" if j == i else (str(count) if count else "[dim]0[/]")
                 for j, count in enumerate(row)]
        table.add_row(escape(str(name)), *cells)
    return table


def _mistakes_table(mistakes: list[dict], total: int) -> Table:
    table = Table(title="most confident mistakes", caption=f"{len(mistakes)} of {total}; all in misclassified.csv")
    for name in ("sample", "true", "predicted", "confidence"):
        table.add_column(name, justify="right" if name == "confidence" else "left")
    for m in mistakes:
        table.add_row(*(escape(str(m[key])) for key in ("sample", "true", "predicted")), f"{m['confidence']:.3f}")
    return table
