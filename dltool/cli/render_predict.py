"""The `dltool predict` table (its --format table, printed on stdout): each file's top classes with
their probabilities, its regression output, or why it could not be classified."""

from __future__ import annotations

from typing import Sequence

from rich.markup import escape
from rich.table import Table

from dltool.inference.predict import Prediction


def render_predict(predictions: Sequence[Prediction]) -> Table:
    """A rich table: each file's top classes with probabilities, or its error in red."""
    table = Table()
    table.add_column("file", overflow="fold")
    table.add_column("prediction")
    table.add_column("probability", justify="right")
    table.add_column("also")
    for p in predictions:
        if p.error is not None:
            table.add_row(escape(p.path), f"[red]{escape(p.error)}[/red]", "", "")
        elif p.value is not None:
            table.add_row(escape(p.path), ", ".join(f"{v:.4g}" for v in p.value), "", "")
        else:
            best, rest = p.top[0], p.top[1:]
            also = ", ".join(f"{escape(t['class'])} {t['probability']:.3f}" for t in rest)
            table.add_row(escape(p.path), escape(best["class"]), f"{best['probability']:.3f}", also)
    return table
