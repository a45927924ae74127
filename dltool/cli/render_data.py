"""The `dltool data` report drawn for the terminal: the summary line, the class counts per split,
the skipped files, and the Normalize numbers and sample grid when asked for (the report itself is
plain data from `dltool.data.report.inspect_data`)."""

from __future__ import annotations

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def render_data(report: dict) -> Group:
    """The report as one rich renderable (the CLI prints it on stderr). Class names and file paths
    come from the data's folders and files: their brackets are shown, never read as markup."""
    splits = list(report["splits"])
    head = (f"[bold]{escape(report['dataset'])}[/bold]: {len(report['classes']) or 'no'} classes, "
            f"input {tuple(report['input_shape'])}, split: {report['split_method']}")
    parts: list = [head]
    if report.get("decode"):
        parts.append(Text(report["decode"]["text"]))
    parts += [Text(f"{name}: {split['reading']}") for name, split in report["splits"].items() if "reading" in split]
    parts.append(_counts_table(report, splits))
    if report["bad_files"]:
        parts.append(_bad_files_table(report["bad_files"]))
    if "stats" in report:
        parts.append(f"Normalize: {{mean: {report['stats']['mean']}, std: {report['stats']['std']}}}")
    if "grid" in report:
        parts.append(f"samples: {escape(report['grid'])}")
    return Group(*parts)


def _counts_table(report: dict, splits: list[str]) -> Table:
    """One row per class, one column per split, and the totals."""
    table = Table()
    table.add_column("class")
    for name in splits:
        table.add_column(name, justify="right")
    for name in report["classes"]:
        table.add_row(escape(name), *(str(report["splits"][s]["counts"].get(name, 0)) for s in splits))
    table.add_row("[bold]total[/bold]", *(f"[bold]{report['splits'][s]['samples']}[/bold]" for s in splits))
    return table


def _bad_files_table(bad_files: list[dict]) -> Table:
    """The files the dataset skipped, each with why."""
    bad = Table(title=f"{len(bad_files)} files skipped")
    bad.add_column("path")
    bad.add_column("reason")
    for row in bad_files:
        bad.add_row(escape(row["path"]), escape(row["reason"]))
    return bad
