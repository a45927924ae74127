"""Places that refuse writes, on real file systems (a small tmpfs, a read-only tmpfs: as root only)
and by injection: one line, exit 2 when the place was unusable from the start, exit 1 during a run
(after saving what can be saved), no temporary file left, summary.json agreeing with the checkpoints."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dltool.cli import app
from dltool.training.train import train

from .tools import TINY, one_line_error, read_only, write_config

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
SMALL = ["train.epochs=2", "train.device=cpu", "train.histograms=false"]


def invoke(*args: str):
    return CliRunner().invoke(app, [*args])


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob(".*.tmp"))


def assert_summary_agrees(run: Path) -> None:
    """summary.json says what last.pt and best.pt hold (or is absent; never wrong)."""
    if not (run / "summary.json").exists():
        return
    summary = json.loads((run / "summary.json").read_text())
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    assert summary["epochs_done"] == (torch.load(last, weights_only=True)["epoch"] if last.exists() else 0)
    assert summary["best_epoch"] == (torch.load(best, weights_only=True)["epoch"] if best.exists() else 0)


def test_a_run_on_a_312k_tmpfs_stops_with_one_line_and_an_agreeing_summary(tmpfs):
    runs = tmpfs("312k") / "runs"
    result = invoke("train", str(QUICKSTART), *SMALL, "--runs-dir", str(runs), "--quiet")
    assert result.exit_code == 1, result.output
    line = one_line_error(result.stderr)
    assert "no space left on device" in line and str(runs / "quickstart") in line, line
    assert temp_files(runs) == []
    assert_summary_agrees(runs / "quickstart")


def test_a_full_disk_at_the_start_exits_2_and_leaves_no_run_folder(tmpfs):
    fs = tmpfs("312k")
    (fs / "runs").mkdir()
    with pytest.raises(OSError):
        with open(fs / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    result = invoke("train", str(QUICKSTART), *SMALL, "--runs-dir", str(fs / "runs"), "--quiet")
    assert result.exit_code == 2, result.output
    line = one_line_error(result.stderr)
    assert line.startswith(f"error: cannot write {fs / 'runs' / 'quickstart'}") and "no space left on device" in line
    assert list((fs / "runs").iterdir()) == []


@pytest.mark.parametrize("exists", [True, False])
def test_runs_dir_on_a_read_only_mount_exits_2(tmpfs, exists):
    fs = tmpfs("64k")
    if exists:
        (fs / "runs").mkdir()
    read_only(fs)
    result = invoke("train", str(QUICKSTART), *SMALL, "--runs-dir", str(fs / "runs"), "--quiet")
    assert result.exit_code == 2, result.output
    where = fs / "runs" / "quickstart" if exists else fs / "runs"
    assert one_line_error(result.stderr) == (f"error: cannot write {where}: read-only file system; "
                                              "choose a writable --runs-dir")


def test_resume_on_a_read_only_mount_exits_2_and_changes_nothing(tmpfs):
    fs = tmpfs("4m")
    run = train(write_config(fs, data={**TINY, "train": {**TINY["train"], "epochs": 2}}), runs_dir=fs / "runs").run_dir
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    read_only(fs)
    result = invoke("train", "--resume", str(run), "train.epochs=3", "--quiet")
    assert result.exit_code == 2, result.output
    assert one_line_error(result.stderr).startswith(f"error: cannot write {run}: read-only file system; ")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_300_character_name_exits_2_and_leaves_nothing(tmp_path):
    name = "n" * 300
    result = invoke("train", str(QUICKSTART), *SMALL, "--runs-dir", str(tmp_path / "runs"), "--name", name, "--quiet")
    assert result.exit_code == 2, result.output
    assert one_line_error(result.stderr) == (f"error: cannot write {tmp_path / 'runs' / name}: file name too long; "
                                              "choose a shorter --name")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_folder_without_write_permission_exits_2(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name == "quickstart":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    result = invoke("train", str(QUICKSTART), *SMALL, "--runs-dir", str(tmp_path / "runs"), "--quiet")
    assert result.exit_code == 2, result.output
    assert one_line_error(result.stderr) == (f"error: cannot write {tmp_path / 'runs' / 'quickstart'}: "
                                              "permission denied; choose a writable --runs-dir")


def enospc_on_second_write_to(monkeypatch, name: str) -> None:
    """os.write to a file called `name` fails with ENOSPC from its second call on (a disk that filled)."""
    real, calls = os.write, []

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(name):
            calls.append(fd)
            if len(calls) >= 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


def test_a_metrics_row_the_disk_refuses_stops_the_run_keeping_the_good_rows(tmp_path, monkeypatch):
    config = write_config(tmp_path, data={**TINY, "train": {**TINY["train"], "epochs": 3}})
    enospc_on_second_write_to(monkeypatch, "metrics.csv")
    result = invoke("train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet")
    monkeypatch.undo()
    run = tmp_path / "runs" / "tiny"
    assert result.exit_code == 1, result.output
    assert one_line_error(result.stderr) == (
        f"error: cannot write {run / 'metrics.csv'}: no space left on device; free some space there, or write "
        f"elsewhere; last.pt holds epoch 1; continue with: dltool train --resume {run}")
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == ["epoch", "1"]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert temp_files(run) == []
    assert_summary_agrees(run)
    resumed = invoke("train", "--resume", str(run), "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == ["epoch", "1", "2", "3"]


def test_tensorboard_writer_thread_failure_is_one_line_not_a_thread_traceback(tmp_path, monkeypatch):
    from tensorboard.summary.writer.record_writer import RecordWriter

    real, seen = RecordWriter.write, []

    def write(self, data):
        if b"loss/train" in data:
            seen.append(1)
            if len(seen) >= 2:  # the disk fills while the events of epoch 2 are written
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(RecordWriter, "write", write)
    config = write_config(tmp_path, data={**TINY, "train": {**TINY["train"], "epochs": 3}})
    result = invoke("train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet")
    monkeypatch.undo()
    run = tmp_path / "runs" / "tiny"
    assert result.exit_code == 1, result.output
    assert "Exception in thread" not in result.output
    assert one_line_error(result.stderr) == (
        f"error: cannot write {run / 'tb'}: no space left on device; free some space there, or write elsewhere; "
        f"last.pt holds epoch 2; continue with: dltool train --resume {run}")
    assert temp_files(run) == []
    assert_summary_agrees(run)


def test_summary_agrees_with_the_checkpoints_after_a_failed_save(tmp_path, monkeypatch):
    import dltool.training.run_folder

    real = dltool.training.run_folder.save_checkpoint

    def full_from_epoch_3(state, path):
        if state["epoch"] >= 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(state, path)

    monkeypatch.setattr(dltool.training.run_folder, "save_checkpoint", full_from_epoch_3)
    config = write_config(tmp_path, data={**TINY, "train": {**TINY["train"], "epochs": 4}})
    result = invoke("train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet")
    monkeypatch.undo()
    run = tmp_path / "runs" / "tiny"
    assert result.exit_code == 1, result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_done"] == 2
    assert_summary_agrees(run)
