"""File datasets: `ImageFolder` (a subfolder per class) and `ImageList` (a CSV/TSV/TXT of path,label).

Both only list files; `build_data` scans and decodes them. Nothing under the root is written.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

from dltool.config.registry import DATASETS
from dltool.data.sources import RawSplit, Source
from dltool.data.walk import special_kind, walk_images
from dltool.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
VAL_ALIASES = ("val", "valid", "validation")
HEADER_WORDS = {"label", "labels", "class", "category", "target", "y", "value"}


@DATASETS.register()
def ImageFolder(root: str, train: str = "train", val: str | None = None, test: str = "test",
                extensions: list[str] | None = None) -> Source:
    """Images in class subfolders: `root/train/<class>/...` plus `val/` (or `valid/`, `validation/`)
    and `test/` when present, else `root/<class>/...` split by data.val_split."""
    base = Path(root)
    if not base.is_dir():
        kind = _kind(base)
        if kind is not None:
            raise DataError(f"ImageFolder: root {root} is a {kind}, not a folder; give the folder of class folders")
        raise DataError(f"ImageFolder: root folder not found: {root}{_absolute(base)}")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in (extensions or IMG_EXTENSIONS))
    train_dir = base / train
    skipped: list[tuple[str, str]] = []  # links the walk did not follow; the scan adds its bad files
    if not train_dir.is_dir():
        classes = _class_names(base)
        return Source("ImageFolder", {"train": _folder_loader(base, base, classes, exts, skipped)}, root=str(base),
                      bad_files=skipped)
    classes = _class_names(train_dir)
    loaders = {"train": _folder_loader(base, train_dir, classes, exts, skipped)}
    val_dir = base / val if val else next((base / a for a in VAL_ALIASES if (base / a).is_dir()), None)
    if val and not val_dir.is_dir():
        raise DataError(f"ImageFolder: val folder not found: {val_dir}{_absolute(val_dir)}")
    if val_dir is not None:
        loaders["val"] = _folder_loader(base, val_dir, classes, exts, skipped)
    if (base / test).is_dir():
        loaders["test"] = _folder_loader(base, base / test, classes, exts, skipped)
    return Source("ImageFolder", loaders, root=str(base), bad_files=skipped)


def _kind(path: Path) -> str | None:
    """What stands at `path` when it is there but no folder: a FIFO, a device, a file; None if nothing."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return special_kind(mode) or "file"


def _absolute(path: Path) -> str:
    """Where a relative path was looked for: the working directory, not the config file's folder."""
    if path.is_absolute():
        return ""
    return f" (looked for {path.resolve()}: a relative root is taken from the working directory)"


def _class_names(folder: Path) -> list[str]:
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"ImageFolder: no class subfolders in {folder} (expected {folder}/<class>/<image>)")
    return classes


def _folder_loader(base: Path, folder: Path, classes: list[str], exts: tuple,
                   skipped: list[tuple[str, str]]) -> Callable[[], RawSplit]:
    def load() -> RawSplit:
        extra = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
                       and e.name not in classes)
        if extra:
            raise DataError(f"ImageFolder: {folder} has class folders that the train split lacks: {', '.join(extra)}")
        paths, targets = [], []
        for index, name in enumerate(classes):
            found = _image_files(folder / name, exts, skipped)
            if (folder / name).is_dir() and not found:
                raise DataError(f"ImageFolder: class folder {folder / name} has no image files ({', '.join(exts)})")
            paths += found
            targets += [index] * len(found)
        keys = [Path(p).relative_to(base).as_posix() for p in paths]
        return RawSplit(None, targets, keys, classes, paths=paths)

    return load


def _image_files(folder: Path, exts: tuple, skipped: list[tuple[str, str]]) -> list[str]:
    if not folder.is_dir():
        return []
    walk = walk_images(folder, exts)
    skipped += walk.skipped
    return walk.files


@DATASETS.register()
def ImageList(file: str, val: str | None = None, test: str | None = None, root: str | None = None,
              delimiter: str | None = None, task: str = "classification") -> Source:
    """A list file of `path,label` rows (CSV, TSV or whitespace TXT; header optional). Paths are
    relative to the list file's folder (or `root`); classes are the sorted labels. `task: regression`
    reads labels as numbers. `val:` / `test:` name list files of the other splits."""
    if task not in ("classification", "regression"):
        raise DataError(f"ImageList: task must be classification or regression; got {task!r}")
    lists = {name: Path(path) for name, path in (("train", file), ("val", val), ("test", test)) if path}
    rows = {name: _read_list(path, Path(root) if root else path.parent, delimiter) for name, path in lists.items()}
    classes = [] if task == "regression" else _sorted_labels({label for r in rows.values() for _, label in r})
    loaders = {name: _list_loader(name, rows[name], Path(root) if root else path.parent, classes, task)
               for name, path in lists.items()}
    return Source("ImageList", loaders, task=task, root=str(Path(root) if root else lists["train"].parent))


def _read_list(file: Path, folder: Path, delimiter: str | None) -> list[tuple[str, str]]:
    path = str(file)
    kind = _kind(file)
    if kind not in (None, "file"):  # reading a FIFO would block, a device never end
        raise DataError(f"ImageList: list file {path} is a {kind}, not a file")
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"ImageList: cannot read list file {path} ({getattr(exc, 'strerror', None) or exc})") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise DataError(f"ImageList: list file {path} has no rows (expected path,label per line)")
    sep = delimiter or _guess_delimiter(file, lines[0])
    rows = list(csv.reader(lines, delimiter=sep)) if sep != " " else [line.split() for line in lines]
    for number, row in enumerate(rows, 1):
        if len(row) < 2 or not row[0].strip():
            raise DataError(f"{path}:{number}: expected path{sep!r}label; got {lines[number - 1]!r}")
    if _is_header(rows, folder):
        rows = rows[1:]
    return [(r[0].strip(), r[1].strip()) for r in rows]


def _is_header(rows: list[list[str]], folder: Path) -> bool:
    """A first row whose label is a column name, or whose path is no file while the next row's is."""
    if rows[0][1].strip().lower() in HEADER_WORDS:
        return True
    return len(rows) > 1 and not (folder / rows[0][0].strip()).is_file() and (folder / rows[1][0].strip()).is_file()


def _guess_delimiter(file: Path, first: str) -> str:
    if file.suffix.lower() == ".tsv" or "\t" in first:
        return "\t"
    if file.suffix.lower() == ".csv" or "," in first:
        return ","
    return ";" if ";" in first else " "


def _sorted_labels(labels: set[str]) -> list[str]:
    """Numbers in numeric order, other labels alphabetically."""
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)


def _list_loader(name: str, entries: list, base: Path, classes: list[str], task: str) -> Callable[[], RawSplit]:
    def load() -> RawSplit:
        index = {c: i for i, c in enumerate(classes)}
        paths, targets, keys = [], [], []
        for path, label in entries:
            if task == "regression":
                try:
                    target = float(label)
                except ValueError:
                    raise DataError(f"ImageList: {name} label {label!r} of {path} is not a number") from None
            else:
                target = index[label]
            paths.append(str(base / path))
            targets.append(target)
            keys.append(path)
        return RawSplit(None, targets, keys, classes, paths=paths)

    return load
