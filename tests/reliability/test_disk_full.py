"""A disk that fills up during a checkpoint write: the previous checkpoint stays byte-identical and
loadable, the temp file goes, and `dltool train` stops with one line (exit 1)."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from typer.testing import CliRunner

from dltool.cli import app
from dltool.store.checkpoint import load_checkpoint, save_checkpoint

from .tools import TINY, write_config


class FullDisk:
    """A file whose writes fail with ENOSPC once `room` bytes are written, as on a full disk."""

    def __init__(self, handle, room: int):
        self.handle, self.room, self.written = handle, room, 0

    def write(self, data) -> int:
        size = len(memoryview(data).cast("B"))
        if self.written + size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.written += size
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def fill_disk(monkeypatch, room: int) -> None:
    """Make every file opened through os.fdopen (as save_checkpoint opens its temp file) a FullDisk."""
    real = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: FullDisk(real(fd, *args, **kwargs), room))


@pytest.mark.parametrize("room", [0, 100, 4096, 60_000])
def test_enospc_keeps_the_previous_checkpoint_and_removes_the_temp_file(tmp_path, monkeypatch, room):
    path = save_checkpoint({"model": {"w": torch.arange(4.0)}, "config": {"seed": 1}}, tmp_path / "last.pt")
    before = path.read_bytes()
    fill_disk(monkeypatch, room)
    with pytest.raises(OSError) as info:
        save_checkpoint({"model": {"w": torch.zeros(50_000)}, "config": {"seed": 2}}, path)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert load_checkpoint(path)["config"] == {"seed": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_train_stops_with_one_line_when_the_disk_fills(tmp_path, monkeypatch):
    import dltool.training.run_folder

    config = write_config(tmp_path, data={**TINY, "train": {**TINY["train"], "epochs": 3}})
    real_save, saves = dltool.training.run_folder.save_checkpoint, []

    def save_until_full(state, path):
        saves.append(state["epoch"])
        if state["epoch"] == 2:  # epochs 0 and 1 are saved; the disk is full at epoch 2
            fill_disk(monkeypatch, 1000)
        return real_save(state, path)

    monkeypatch.setattr(dltool.training.run_folder, "save_checkpoint", save_until_full)
    last = tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt"
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.strip().splitlines() == [
        f"error: cannot write checkpoint {last}: no space left on device (the previous checkpoint is kept)"]
    assert load_checkpoint(last)["epoch"] == 1
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []
