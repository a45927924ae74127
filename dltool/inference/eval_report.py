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
from dltool.store.writing import write_atomic, writing

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
    return write_atomic(path, json.dumps(data, indent=2) + "\n")


def _write_csv(path: Path, header: list, rows: list[list]) -> Path:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return write_atomic(path, text.getvalue())


def draw_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """A PNG heat map of the confusion matrix, each row shaded by its share of that true class."""
    from PIL import Image, ImageDraw, ImageFont

    n = len(classes)
    cell = max(18, min(48, 900 // max(1, n)))
    font = ImageFont.load_default()
    label = max(8 * max(len(c) for c in classes), 24) + 16
    size = (label + n * cell + 8, label + n * cell + 8)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((label, 2), "predicted ->", fill="black", font=font)
    draw.text((2, 2), "true", fill="black", font=font)
    for i, row in enumerate(confusion):
        total = sum(row) or 1
        draw.text((4, label + i * cell + cell // 3), classes[i], fill="black", font=font)
        for j, count in enumerate(row):
            share = count / total
            shade = int(255 - 200 * share)
            x, y = label + j * cell, label + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            if count and cell >= 24:
                draw.text((x + 3, y + cell // 3), str(count), fill="white" if share > 0.6 else "black", font=font)
        draw.text((label + i * cell + 3, label - 14), classes[i][: max(1, cell // 7)], fill="black", font=font)
    png = io.BytesIO()
    image.save(png, format="PNG")
    return write_atomic(path, png.getvalue())


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
    from rich.table import Table

    table = Table(title="per class")
    for name in ("class", "precision", "recall", "f1", "support"):
        table.add_column(name, justify="left" if name == "class" else "right")
    for row in result.per_class:
        table.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                      str(row["support"]))
    table.rows[-1].end_section = True
    support = str(sum(row["support"] for row in result.per_class))
    for name, avg in result.averages().items():
        table.add_row(f"{name} avg", f"{avg['precision']:.3f}", f"{avg['recall']:.3f}", f"{avg['f1']:.3f}", support)
    return table


def _confusion_table(result: EvalResult) -> Any:
    from rich.table import Table

    table = Table(title="confusion matrix", caption="rows: true class, columns: predicted")
    table.add_column("")
    for name in result.classes:
        table.add_column(name, justify="right")
    for i, (name, row) in enumerate(zip(result.classes, result.confusion)):
        cells = [f"[bold green]{count}[/]" if j == i else (str(count) if count else "[dim]0[/]")
                 for j, count in enumerate(row)]
        table.add_row(name, *cells)
    return table


def _mistakes_table(mistakes: list[dict], total: int) -> Any:
    from rich.table import Table

    table = Table(title="most confident mistakes", caption=f"{len(mistakes)} of {total}; all in misclassified.csv")
    for name in ("sample", "true", "predicted", "confidence"):
        table.add_column(name, justify="right" if name == "confidence" else "left")
    for m in mistakes:
        table.add_row(m["sample"], m["true"], m["predicted"], f"{m['confidence']:.3f}")
    return table
