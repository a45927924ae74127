"""`dltool eval` report files: written as a whole folder, and a report folder that refuses them is one
line (exit 2): before the work where that can be known, else after the results were shown."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dltool.cli import app
from dltool.training.train import train

from .tools import TINY, one_line_error, read_only, write_config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("report_run")
    return train(write_config(folder, data={**TINY, "train": {**TINY["train"], "epochs": 1}}),
                 runs_dir=folder / "runs").run_dir


def evaluate(*args: str):
    return CliRunner().invoke(app, ["eval", *args, "--device", "cpu"])


def test_out_naming_a_file_exits_2_before_the_work(run, tmp_path):
    target = tmp_path / "report.txt"
    target.write_text("mine\n")
    result = evaluate(str(run), "--json", "--out", str(target))
    assert result.exit_code == 2, result.output
    assert one_line_error(result.stderr) == f"error: cannot write the report into {target}: it is a file; give --out a folder"
    assert result.stdout == ""
    assert target.read_text() == "mine\n"


def test_a_read_only_report_folder_exits_2_with_one_line(run, tmpfs):
    fs = tmpfs("64k")
    read_only(fs)
    result = evaluate(str(run), "--out", str(fs / "eval"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: cannot write {fs / 'eval'}: read-only file system; give --out a folder you can write to"]
    assert result.stderr.strip().splitlines() == errors  # before the work: nothing else was shown


def test_a_report_file_the_disk_refuses_leaves_the_previous_files_whole_and_no_temp_file(run, tmp_path, monkeypatch):
    out = tmp_path / "eval"
    assert evaluate(str(run), "--json", "--out", str(out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = os.fsync

    def full(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("/confusion_matrix.csv"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full)
    result = evaluate(str(run), "--json", "--out", str(out))
    monkeypatch.undo()
    assert result.exit_code == 2, result.output
    assert one_line_error(result.stderr) == (f"error: cannot write {out / 'confusion_matrix.csv'}: no space left on "
                                              "device; free some space there, or write elsewhere")
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temp file
    assert (out / "confusion_matrix.csv").read_bytes() == before["confusion_matrix.csv"]
    assert all(p.stat().st_size > 0 for p in out.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no half-written report folder beside it
