"""What `dltool eval` writes: metrics.json, confusion_matrix.csv/.png, misclassified.csv. Collecting the
numbers is dltool.inference.evaluate's job, drawing them for the terminal dltool.cli.render_eval's; this
module only writes them.

The report folder is written as a whole: its files go into a new folder beside it, which is then
renamed into place, so a killed eval leaves the earlier report or the new one, never a mix."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from dltool.errors import Unwritable
from dltool.inference.evaluate import EvalResult
from dltool.store.writing import fsync_folder, writing

REPORT_FILES = ("metrics.json", "confusion_matrix.csv", "misclassified.csv", "confusion_matrix.png")


def prepare_report_dir(out_dir: str | Path) -> Path:
    """The report folder, checked before the evaluation's work: a new folder or an earlier report
    (a symlink is followed), in a place that takes a new folder.

    Raises:
        Unwritable: `out_dir` is a file or holds other files than a report, or its place refuses writes.
    """
    out = Path(os.path.realpath(out_dir)) if os.path.islink(out_dir) else Path(out_dir)
    if out.exists() and not out.is_dir():
        raise Unwritable(f"cannot write the report into {out_dir}: it is a file; give --out a folder")
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES)
        if foreign:
            raise Unwritable(f"cannot write the report into {out_dir}: it holds files that are not an eval report "
                             f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}), which the report "
                             "would replace; give --out a new folder")
    try:
        with writing(out_dir, "give --out a folder you can write to"):
            out.parent.mkdir(parents=True, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except (FileExistsError, NotADirectoryError):
        raise Unwritable(f"cannot write the report into {out_dir}: a part of that path is a file; give --out a "
                         "folder") from None
    return out


def write_outputs(result: EvalResult, out_dir: str | Path) -> list[Path]:
    """Write the report as a whole: its files into a new folder beside `out_dir`, which then takes
    the place of `out_dir` (an earlier report is replaced all at once, never mixed with this one).

    Returns:
        The paths of the files, inside `out_dir`.

    Raises:
        Unwritable: as prepare_report_dir, or the place refuses the files (nothing is changed then).
    """
    out = prepare_report_dir(out_dir)
    for stale in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):  # left by a killed eval
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        names = [_write(staging, out, name, data) for name, data in report_files(result)]
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]


def report_files(result: EvalResult) -> list[tuple[str, str | bytes]]:
    """(file name, content) of each report file."""
    files: list[tuple[str, str | bytes]] = [("metrics.json", json.dumps(result.to_json(), indent=2) + "\n")]
    if result.task == "classification":
        files.append(("confusion_matrix.csv", _csv(["true \\ predicted", *result.classes],
                                                   [[name, *row] for name, row in zip(result.classes, result.confusion)])))
        files.append(("misclassified.csv", _csv(["sample", "true", "predicted", "confidence", "true_probability"],
                                                [[m["sample"], m["true"], m["predicted"], f"{m['confidence']:.6f}",
                                                  f"{m['true_probability']:.6f}"] for m in result.misclassified()])))
        files.append(("confusion_matrix.png", draw_confusion(result.confusion, result.classes)))
    return files


def _write(staging: Path, out: Path, name: str, data: str | bytes) -> str:
    """Write one file into the staging folder, fsynced; a refusal names the file's final place."""
    with writing(out / name), open(staging / name, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    return name


def _swap_in(staging: Path, out: Path) -> None:
    """`staging` renamed to `out`; an earlier report is first moved aside, then removed."""
    fsync_folder(staging)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        os.replace(out, old)  # an empty folder is replaced by rename
    os.replace(staging, out)
    fsync_folder(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _csv(header: list, rows: list[list]) -> str:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue()


def draw_confusion(confusion: list[list[int]], classes: list[str]) -> bytes:
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
    return png.getvalue()

