"""The one way dltool writes a file it leaves behind (run files, eval reports): atomically, with no
temporary file left after any failure, and with one line naming the path when the place refuses
the write (a full disk, a read-only mount, no permission, a name too long)."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from dltool.errors import Unwritable
from dltool.store.checkpoint import fsync_folder

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
}


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
    """Write `data` to `path` so that a crash leaves the old file or the new one, never a torn or
    empty one: a temp file in the same folder, fsynced, then renamed over `path`.

    Raises:
        Unwritable: the place refused the write; the temp file is gone and `path` is as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with writing(path, advice):
        try:
            with open(tmp, "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    fsync_folder(path.parent)
    return path


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
