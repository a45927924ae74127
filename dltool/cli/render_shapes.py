"""The `dltool shapes` table: a ShapeReport's rows drawn with rich (the rows come from
`dltool.training.inspect_model`)."""

from __future__ import annotations

from typing import Sequence

from dltool.models.shapes import ShapeReport, ShapeRow


def render_table(report: ShapeReport | None, rows: Sequence[ShapeRow] | None = None, title: str = "dltool shapes"):
    """A rich Table of the rows, with totals and parameter memory when a full report is given."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from dltool.cli.text import plain

    rows = report.rows if report is not None else list(rows or [])
    caption = f"parameter memory {human_bytes(report.param_bytes)}" if report is not None else None
    table = Table(title=title, caption=caption, show_footer=report is not None, box=box.SIMPLE_HEAD)
    footers = ["", "total", "", "", *(_totals(report) if report is not None else ["", "", ""])]
    columns = [("#", "right"), ("layer", "left"), ("type", "left"), ("output shape", "left"),
               ("params", "right"), ("trainable", "right"), ("mult-adds", "right")]
    cells = [("", "input", "", _shape(report.input_shape), "", "", "")] if report is not None else []
    cells += [(str(row.index), "  " * (row.depth - 1) + plain(row.name), plain(_built(row)), _shape(row.output_shape),
               f"{row.params:,}", f"{row.trainable_params:,}", human(row.mult_adds)) for row in rows]
    types = max([4, *(len(plain(row.type)) for row in rows)])
    for i, ((header, justify), footer) in enumerate(zip(columns, footers)):
        # On a narrow terminal the layer names may shrink and the build arguments wrap under their
        # type: numbers and shapes are never cut.
        widest = max([len(header), len(footer), *(len(c[i]) for c in cells)])
        if header == "type":
            table.add_column(header, justify=justify, footer=footer, no_wrap=False, min_width=types)
        else:
            table.add_column(header, justify=justify, footer=footer, no_wrap=True,
                             min_width=min(widest, 12) if header == "layer" else widest)
    for cell in cells:
        table.add_row(*(escape(text) for text in cell))  # a layer name from a checkpoint is not markup
    if all(row.params == row.trainable_params for row in rows):
        table.columns.pop(5)  # every parameter trains: a trainable column would only repeat params
    return table


def _built(row: ShapeRow) -> str:
    """`Conv2d(1, 6, kernel_size=(5, 5), stride=(1, 1))`: what a positional shorthand meant, made visible."""
    return f"{row.type}({row.arguments})" if row.arguments else row.type


def _totals(report: ShapeReport) -> list[str]:
    return [f"{report.total_params:,}", f"{report.trainable_params:,}", human(report.total_mult_adds)]


def _shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def human(count: int) -> str:
    """1_814_083_000 -> '1.81 G'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def human_bytes(count: int) -> str:
    """44_726_568 -> '42.65 MB' (powers of 1024)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"
