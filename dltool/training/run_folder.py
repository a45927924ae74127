"""The run directory (docs/run-folder.md): config.yaml, metrics.csv, summary.json, checkpoints/, tb/.

    runs/x/config.yaml          written before training starts
    runs/x/metrics.csv          one row per epoch
    runs/x/summary.json         best epoch, final metrics, throughput
    runs/x/checkpoints/last.pt  every epoch and on interruption; best.pt when the monitor improves
    runs/x/tb/                  TensorBoard events (`tensorboard --logdir runs`)
    runs/x/code/                copies of the `--code` files the run loaded, and code.json
    runs/x/.lock                held (flock) by the one process training the run; names it

Every file goes through dltool.store.writing: atomic, and one line when the place refuses the write.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

from dltool.config.load import dump_yaml
from dltool.config.usercode import code_record
from dltool.errors import ConfigError, RunBusy, RunFailed
from dltool.store.checkpoint import checkpoint_in, save_checkpoint
from dltool.store.writing import append_synced, folder_name, remove_stale_temps, write_atomic, writing

COLUMNS = ("epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds",
           "samples_per_second")


def metric_columns(task: str, num_classes: int) -> tuple[str, ...]:
    """The documented columns, then the extra ones this kind of run measures."""
    if task == "regression":
        return (*COLUMNS, "train_mae", "val_mae")
    return (*COLUMNS, "val_top5_accuracy") if num_classes >= 5 else COLUMNS

HOLD_ADVICE = "a run is trained where it can write: free space, make its folder writable, or copy it somewhere writable"


# The lock files this process holds. A forked child (a DataLoader worker) would share each lock and
# keep the run folder taken after this process was killed; it closes its copies at once.
HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    for fd in HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunDir:
    """One run's folder and the files in it."""

    LOCK = ".lock"

    def __init__(self, path: str | Path, columns: Sequence[str] = COLUMNS):
        self.path = Path(path)
        self.columns = tuple(columns)
        self.saved: dict[str, dict] = {}  # "last"/"best": the loop state each checkpoint file holds now
        self._lock: int | None = None

    @classmethod
    def create(cls, runs_dir: str | Path, name: str, columns: Sequence[str] = COLUMNS) -> RunDir:
        """A new folder `runs_dir/name`, or `name-2`, `name-3`, ... when taken (never reused).

        Raises:
            ConfigError: the name is not a plain folder name, or runs_dir cannot be created.
            Unwritable: runs_dir refuses a new folder (read-only, no permission, full, name too long).
        """
        folder_name(name)
        root = Path(runs_dir)
        try:
            with writing(root, "choose a writable --runs-dir"):
                root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--runs-dir: cannot create {root}: {exc.strerror}") from None
        for i in range(1, 10_000):
            path = root / (name if i == 1 else f"{name}-{i}")
            try:
                with writing(path, _advice_for_new_folder(name)):
                    path.mkdir()
            except FileExistsError:
                continue
            return cls(path, columns)
        raise ConfigError(f"--runs-dir: {root} holds too many runs named {name}")

    @classmethod
    def take(cls, runs_dir: str | Path, name: str, columns: Sequence[str] = COLUMNS) -> RunDir:
        """`create` a new run folder and `hold` it; a folder that cannot be held is removed again."""
        run = cls.create(runs_dir, name, columns)
        try:
            return run.hold()
        except BaseException:
            run.abandon()
            raise

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def hold(self) -> RunDir:
        """Take the run folder for this process (an OS lock on `.lock`, held until `release` or the
        process ends, kill -9 included) and write who holds it there.

        Raises:
            RunBusy: a live process holds it (named in the message).
            Unwritable: the folder refuses writes (read-only, full, no permission).
        """
        import fcntl

        target = self.path / self.LOCK
        with writing(self.path, HOLD_ADVICE):
            fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                raise RunBusy(f"{self.path} is being trained by {holder}; wait for it or stop it") from None
            with writing(self.path, HOLD_ADVICE):
                os.ftruncate(fd, 0)
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                os.pwrite(fd, f"process {os.getpid()} (started {stamp})\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._lock = fd
        HELD_LOCKS.add(fd)
        return self

    def release(self) -> None:
        """Let the next process take the folder (the lock file stays: it is only ever locked, never
        trusted by its presence)."""
        if self._lock is not None:
            HELD_LOCKS.discard(self._lock)
            os.close(self._lock)  # closing drops the flock
            self._lock = None

    def abandon(self) -> None:
        """Release the folder and remove it when this process created it and it holds nothing else:
        a run whose first file could not be written leaves no folder behind."""
        self.release()
        for leftover in (self.path / self.LOCK, self.path / "config.yaml"):
            with contextlib.suppress(OSError):
                leftover.unlink()
        self.remove_stale_temps()
        with contextlib.suppress(OSError):
            self.path.rmdir()

    def remove_stale_temps(self) -> None:
        """Delete temp files a killed run left in this folder and its checkpoints/ (before a resume)."""
        for folder in (self.path, self.checkpoints):
            remove_stale_temps(folder)

    def write_config(self, data: dict) -> None:
        _write_text(self.path / "config.yaml", dump_yaml(data))
        self.write_code(code_record(data))

    def write_code(self, record: list[dict]) -> None:
        """code/: a copy of each `--code` file the run loaded, and code.json (path, sha256, the names
        the config uses). For the record: nothing ever runs these copies."""
        files = [entry for entry in record if not entry["plugin"]]
        if not files:
            return
        folder = self.path / "code"
        if not folder.exists():
            with writing(folder):
                folder.mkdir()
        for entry in files:
            source = Path(entry["path"])
            entry["copy"] = f"code/{source.stem}-{entry['sha256'][:8]}{source.suffix}"
            with contextlib.suppress(OSError):  # a file removed since it was loaded: its record stays
                write_atomic(self.path / entry["copy"], source.read_bytes())
        _write_text(folder / "code.json", json.dumps(record, indent=2) + "\n")

    def write_bad_files(self, bad_files: Sequence[tuple[str, str]]) -> None:
        if bad_files:
            _write_text(self.path / "bad_files.txt", "".join(f"{path}\t{reason}\n" for path, reason in bad_files))

    def append_metrics(self, row: dict) -> None:
        """Add one epoch's row to metrics.csv (header first; unknown keys dropped, missing ones blank).

        Raises:
            Unwritable: the disk refused the row; metrics.csv is as it was.
        """
        target = self.path / "metrics.csv"
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore")
        if not target.exists() or target.stat().st_size == 0:
            writer.writeheader()
        writer.writerow({k: _cell(row.get(k)) for k in self.columns})
        append_synced(target, out.getvalue())

    def keep_metrics_until(self, epoch: int) -> None:
        """Drop rows after `epoch` (written by a run that died before its checkpoint): resume rewrites them.

        Raises:
            ConfigError: a row that cannot be read (see `read_metrics`); nothing is rewritten.
        """
        target = self.path / "metrics.csv"
        if not target.exists():
            return
        header, rows = read_metrics(target)
        self.columns = header
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")  # as csv.DictWriter writes
        writer.writerow(header)
        writer.writerows(row for row in rows if int(row[0]) <= epoch)
        _write_text(target, out.getvalue())

    def write_summary(self, summary: dict) -> None:
        _write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def save(self, state: dict, *, best: bool) -> None:
        """Write best.pt (when `best`), then last.pt, each atomically. In that order a failure or a
        kill between the two leaves last.pt one epoch behind, and resuming from it redoes the epoch
        that best.pt holds; `saved` records what each file holds.

        Raises:
            RunFailed: the disk refused a write (full, read-only); the previous checkpoint is kept.
        """
        state = {**state, "code": code_record(state.get("config"))}  # plain data: loading it imports nothing
        for kind, path in (("best", self.best), ("last", self.last)) if best else (("last", self.last),):
            try:
                save_checkpoint(state, path)
            except OSError as exc:
                reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
                raise RunFailed(f"cannot write checkpoint {path}: {reason} (the previous checkpoint is kept)") from None
            self.saved[kind] = state.get("loop", {})


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _write_text(path: Path, text: str) -> None:
    write_atomic(path, text)


def _advice_for_new_folder(name: str) -> str:
    return "choose a shorter --name" if len(name) > 200 else "choose a writable --runs-dir"


def read_metrics(path: Path) -> tuple[tuple[str, ...], list[list[str]]]:
    """metrics.csv's header and rows, read as a hand-edited file may be: a UTF-8 BOM (Excel's "CSV
    UTF-8") is ignored, and a last row cut short by a kill (no line end, fields missing) is dropped.

    Raises:
        ConfigError: a row the file cannot hold (refused, rather than rewritten away).
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--resume: {path} is not UTF-8 text (byte {exc.start}); save it as CSV UTF-8") from None
    lines = list(csv.reader(io.StringIO(text)))
    header = tuple(lines[0]) if lines else ()
    if not header or header[0] != "epoch":
        raise ConfigError(f"--resume: {path} line 1 must be the header, starting with epoch; "
                          f"got {','.join(header)[:80]!r}")
    rows = [(number, row) for number, row in enumerate(lines[1:], start=2) if row]
    if rows and not text.endswith(("\n", "\r")) and len(rows[-1][1]) != len(header):
        rows.pop()  # torn: the run was killed while appending it, before its checkpoint
    for number, row in rows:
        if len(row) != len(header) or not row[0].isdigit():
            raise ConfigError(f"--resume: {path} line {number} is not a row of {len(header)} fields starting with "
                              "the epoch number; fix or delete that line (no row was changed)")
    return header, [row for _, row in rows]


def run_dir_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (`runs/x` for `runs/x/checkpoints/last.pt`)."""
    folder = checkpoint.parent
    return folder.parent if folder.name == "checkpoints" else folder


def never_saved(target: Path) -> bool:
    """A run folder (it has its config.yaml) that was stopped before its first checkpoint: `--resume`
    starts it over. The first checkpoint is saved before any other work, so a folder without last.pt
    that holds best.pt, metrics rows or TensorBoard events lost its last.pt after training.

    Raises:
        ConfigError: no last.pt, but work that starting over would destroy (nothing is changed).
    """
    if not (target.is_dir() and (target / "config.yaml").is_file() and checkpoint_in(target, ("last.pt",)) is None):
        return False
    work = _work_in(target)
    if not work:
        return True
    best = checkpoint_in(target, ("best.pt",))
    new = next(p for p in (target.with_name(f"{target.name}-{i}") for i in range(2, 10_000)) if not p.exists())
    keep = (f"its best weights are in {best} (dltool eval and predict use them); to train on from them in a new "
            f"run: mkdir -p {new}/checkpoints && cp {best} {new}/checkpoints/last.pt && dltool train --resume {new}"
            if best is not None else f"to train again, start a new run: dltool train {target / 'config.yaml'}")
    raise ConfigError(f"--resume: {target} has no checkpoints/last.pt but holds {' and '.join(work)}; starting "
                      f"it over would destroy them, so nothing was changed; {keep}")


def _work_in(target: Path) -> list[str]:
    """What a run folder holds of a run's results besides its config.yaml."""
    work = []
    if checkpoint_in(target, ("best.pt",)) is not None:
        work.append("best.pt")
    metrics = target / "metrics.csv"
    if metrics.is_file():
        with open(metrics, "rb") as handle:
            rows = sum(1 for line in handle if line.strip()) - 1
        if rows > 0:
            work.append(f"{rows} row{'s' if rows > 1 else ''} of metrics.csv")
    tb = target / "tb"
    if tb.is_dir() and any(p.is_file() for p in tb.rglob("*")):
        work.append("TensorBoard events in tb/")
    return work


def resume_checkpoint(path: str | Path) -> Path:
    """The checkpoint `--resume` continues from: a file itself, or a run folder's checkpoints/last.pt.

    Raises:
        ConfigError: nothing to resume there.
    """
    path = Path(path)
    if path.is_dir():
        found = checkpoint_in(path, ("last.pt",))
        if found is None:
            raise ConfigError(f"--resume: {path} has no checkpoints/last.pt (was it a run folder?)")
        return found
    if not path.is_file():
        raise ConfigError(f"--resume: no such run folder or checkpoint: {path}")
    return path
