"""dltool.store.writing: atomic writes and appends that leave no temp file and no torn line, and the one
line a refused write becomes."""

from __future__ import annotations

import errno
import os

import pytest

from dltool.errors import Unwritable
from dltool.store.writing import append_synced, refusal, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old\n")
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_a_refused_write_keeps_the_old_file_removes_the_temp_file_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(Unwritable) as info:
        write_atomic(target, "new\n")
    monkeypatch.undo()
    assert str(info.value) == f"cannot write {target}: no space left on device; free some space there, or write elsewhere"
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_an_append_cut_short_by_a_full_disk_is_cut_back_to_the_last_whole_line(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    append_synced(target, "epoch,loss\n1,0.5\n")
    real = os.write

    def half_then_full(fd, data):
        if len(data) > 3:
            return real(fd, bytes(data[:3]))  # part of the row reaches the disk, then it is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(Unwritable, match="no space left on device"):
        append_synced(target, "2,0.25\n")
    monkeypatch.undo()
    assert target.read_text() == "epoch,loss\n1,0.5\n"


@pytest.mark.parametrize("code, advice", [
    (errno.EROFS, "write to a folder on a writable file system"),
    (errno.EACCES, "write to a folder you have write permission on"),
    (errno.ENAMETOOLONG, "choose a shorter name"),
])
def test_each_refusal_says_what_to_do(code, advice):
    assert refusal("runs/x", OSError(code, os.strerror(code))) == f"cannot write runs/x: {os.strerror(code).lower()}; {advice}"
