"""The one way dltool writes a file it leaves behind (run files, eval reports): atomically, with no
temporary file left after any failure, and with one line naming the path when the place refuses
the write (a full disk, a read-only mount, no permission, a name too long).

A file a user names with `--out` goes through `write_output`, which adds the rule of what such a file
may replace: never the command's own input, a run's files or a checkpoint; never a device node or
FIFO (except /dev/stdout and /dev/stderr, written into); a symlink is followed and its target replaced.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import stat
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from dltool.data.walk import special_kind
from dltool.errors import ConfigError, Unwritable

# what to do about each way a place can refuse a write
ADVICE = {
    errno.ENOSPC: "free some space there, or write elsewhere",
    errno.EDQUOT: "free some space there, or write elsewhere",
    errno.EROFS: "write to a folder on a writable file system",
    errno.EACCES: "write to a folder you have write permission on",
    errno.EPERM: "write to a folder you have write permission on",
    errno.ENAMETOOLONG: "choose a shorter name",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "give a file name, not a folder",
    errno.ELOOP: "its symlinks form a loop; choose another path",
}

# what a run folder holds (dltool.training.run_folder); its own files are never an output's place
RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "curves.png", ".lock")
# special files a user plainly means to write into rather than replace
WRITE_INTO = {"/dev/stdout": 1, "/dev/stderr": 2, "/dev/fd/1": 1, "/dev/fd/2": 2}


def refused(exc: BaseException) -> bool:
    """Whether `exc` says the place cannot be written (rather than a bug or a missing file)."""
    return isinstance(exc, OSError) and exc.errno in ADVICE


def refusal(path: str | Path, exc: OSError, advice: str | None = None) -> str:
    """The one line for a refused write: what, where, and what to do."""
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    return f"cannot write {path}: {reason}; {advice or ADVICE.get(exc.errno, 'write elsewhere')}"


@contextlib.contextmanager
def writing(path: str | Path, advice: str | None = None) -> Iterator[None]:
    """Turn a refused write inside the block into Unwritable naming `path`; other errors pass."""
    try:
        yield
    except OSError as exc:
        if not refused(exc):
            raise
        raise Unwritable(refusal(path, exc, advice)) from None


def write_atomic(path: str | Path, data: str | bytes, advice: str | None = None) -> Path:
    """Write `data` to `path` through `replace_atomically`.

    Raises:
        Unwritable: the place refused the write; the temp file is gone and `path` is as it was.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with writing(path, advice):
        return replace_atomically(path, lambda handle: handle.write(payload))


def replace_atomically(path: str | Path, fill: Callable[[BinaryIO], object]) -> Path:
    """The one way dltool replaces a file: `fill` writes the new content into a temp file beside
    `path` (`.NAME.<random>.tmp`, created exclusively), which is flushed, fsynced and renamed over
    `path`, and then the folder is fsynced. A crash at any moment leaves the old file or the new one,
    never a torn or empty one; the rename puts a new file in place and never writes into what was
    there (a FIFO or device node named `path` is not opened).

    Raises:
        OSError: the write failed (or `fill` raised it); the temp file is gone and `path` is as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(folder: Path, name: str | None = None) -> None:
    """Delete the temp files (of file `name`, or of any file) that a writer killed before its rename left.

    One process writes a run's files, so a temp file found here is never one still being written.
    """
    pattern = f".{glob.escape(name)}.*.tmp" if name else ".*.tmp"
    for stale in folder.glob(pattern):
        with contextlib.suppress(OSError):
            stale.unlink()


def append_synced(path: str | Path, text: str) -> None:
    """Append `text` to `path` and fsync it; a refused write cuts the file back to where it was, so
    no torn line is left for the next append to run into.

    Raises:
        Unwritable: the place refused the write; the file is as it was.
    """
    payload = memoryview(text.encode("utf-8"))
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                while payload:
                    payload = payload[os.write(fd, payload):]
                os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def folder_name(name: str, option: str = "--name") -> str:
    """`name` when it is a plain folder name, the one rule of every command that takes --name: a run
    or study folder goes inside --runs-dir, never beside or above it.

    Raises:
        ConfigError: `name` is empty, `.` or `..`, or holds a slash or a NUL character.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ConfigError(f"{option}: {name!r} is not a folder name (no slashes, not . or ..); "
                          "it names a folder inside --runs-dir")
    return name


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), option: str = "--out") -> Path:
    """The file an output named `path` replaces: `path` itself, or the file its symlinks lead to.

    Args:
        path: the place the user named.
        inputs: the files the command reads (its config, checkpoint): never written over.
        option: the option that named `path`, for the message.

    Raises:
        ConfigError: `path` is a folder, a device node, FIFO or socket, the command's own input, a
            file of a run folder, or a checkpoint.
        Unwritable: `path` cannot be looked at (a symlink loop, no permission).
    """
    path = Path(path)
    if str(path) in WRITE_INTO:
        return path
    target = Path(os.path.realpath(path))
    if str(target) == os.path.abspath(path):
        target = path  # no link on the way: keep the name as the user gave it
    try:
        info = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return target  # a new file (or one whose folder cannot be made: prepare_output says so)
    except OSError as exc:
        raise Unwritable(refusal(path, exc)) from None
    named = path if target is path else f"{path} (a link to {target})"
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{option}: {named} is a folder; name the file to write in it")
    kind = special_kind(info.st_mode)
    if kind is not None:
        raise ConfigError(f"{option}: {named} is a {kind}, not a file; dltool writes only regular files "
                              "(or into /dev/stdout); choose a file path")
    for source in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target):
                raise ConfigError(f"{option}: {named} is this command's own input; write to another file")
    run = _run_of(target)
    if run is not None:
        raise ConfigError(f"{option}: {named} is a file of the run folder {run}, which dltool never replaces; "
                          "write to another file")
    if _is_checkpoint(target):
        raise ConfigError(f"{option}: {named} is a checkpoint, which dltool never replaces; write to another file")
    return target


def _run_of(file: Path) -> Path | None:
    """The run folder `file` belongs to (one of its own files, or anything under its checkpoints/)."""
    folder = file.parent
    if folder.name == "checkpoints" and _is_run(folder.parent):
        return folder.parent
    return folder if file.name in RUN_FILES and _is_run(folder) else None


def _is_run(folder: Path) -> bool:
    """A run folder by its files: config.yaml beside checkpoints/ or metrics.csv."""
    return (folder / "config.yaml").is_file() and ((folder / "checkpoints").is_dir()
                                                   or (folder / "metrics.csv").is_file())


def _is_checkpoint(file: Path) -> bool:
    """A torch.save archive (data.pkl, no code/): a checkpoint, not a TorchScript export."""
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any("/code/" in n for n in names)


def prepare_output(path: str | Path, inputs: Iterable[str | Path] = (), option: str = "--out") -> Path:
    """`check_output`, then the target's folder created: checked before a command's work, not after it.

    Raises:
        ConfigError, Unwritable: as check_output, or the folder cannot be created.
    """
    target = check_output(path, inputs, option)
    if str(target) in WRITE_INTO:
        return target
    try:
        with writing(path):
            target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{option}: cannot write {path}: a file stands where a folder of that path should be") from None
    return target


def write_output(path: str | Path, data: str | bytes, inputs: Iterable[str | Path] = (),
                 option: str = "--out") -> Path:
    """Write a file the user named (`--out`) under the rule of `check_output`; its folder is created.

    Returns:
        The file written (a symlink's target).

    Raises:
        ConfigError, Unwritable: as prepare_output, or the place refuses the write.
    """
    target = prepare_output(path, inputs, option)
    if str(target) in WRITE_INTO:
        _write_into(WRITE_INTO[str(target)], data.encode("utf-8") if isinstance(data, str) else data, path)
        return target
    try:
        return write_atomic(target, data)
    except FileNotFoundError:
        # a folder that exists but takes no new files (/proc, /sys)
        raise Unwritable(f"cannot write {path}: its folder takes no new files; write elsewhere") from None


def _write_into(fd: int, payload: bytes, path: str | Path) -> None:
    """Write into the process's own stdout or stderr: opening /dev/stdout anew would truncate a file
    the shell redirected it to, and bytes still in Python's buffers would come after these."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    view = memoryview(payload)
    with writing(path):
        while view:
            view = view[os.write(fd, view):]
