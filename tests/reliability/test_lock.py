"""One writer per run folder: `train` holds an OS lock on its folder for its whole life; a second
`train --resume` into it is refused with one line naming the holder; kill -9 frees it at once."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dltool.cli import app
from dltool.training.run_folder import RunDir
from dltool.training.train import train

from .tools import TINY, dltool_command, one_line_error, run_dltool, write_config

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
HOLDER = r"process {pid} \(started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{{4}}\)"


def epochs_in(run: Path) -> list[int]:
    with open(run / "metrics.csv", newline="", encoding="utf-8") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def wait_for_rows(run: Path, process: subprocess.Popen, rows: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ((run / "metrics.csv").exists() and len(epochs_in(run)) >= rows):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run wrote no metrics in time"
        time.sleep(0.05)


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    return train(write_config(tmp_path, data={**TINY, "train": {**TINY["train"], "epochs": 2}}),
                 runs_dir=tmp_path / "runs").run_dir


def test_resume_of_a_held_folder_exits_2_naming_the_holder_and_changes_nothing(tiny_run):
    before = {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file() and p.name != ".lock"}
    held = RunDir(tiny_run).hold()
    try:
        result = CliRunner().invoke(app, ["train", "--resume", str(tiny_run), "train.epochs=3", "--quiet"])
    finally:
        held.release()
    assert result.exit_code == 2, result.output
    line = one_line_error(result.stderr)
    assert re.fullmatch(f"error: {re.escape(str(tiny_run))} is being trained by {HOLDER.format(pid=os.getpid())}; "
                        "wait for it or stop it", line), line
    assert {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file() and p.name != ".lock"} == before
    result = CliRunner().invoke(app, ["train", "--resume", str(tiny_run), "train.epochs=3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert epochs_in(tiny_run) == [1, 2, 3]


def test_two_fresh_runs_with_one_name_get_name_and_name_2_while_the_first_is_held(tmp_path):
    config = write_config(tmp_path, data={**TINY, "train": {**TINY["train"], "epochs": 1}})
    first = RunDir.take(tmp_path / "runs", "same")
    try:
        result = CliRunner().invoke(app, ["train", str(config), "--name", "same", "--runs-dir",
                                          str(tmp_path / "runs"), "--quiet"])
    finally:
        first.release()
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["same", "same-2"]
    assert epochs_in(tmp_path / "runs" / "same-2") == [1]


def test_a_second_train_while_one_trains_is_refused_eval_works_and_the_first_writes_every_epoch_once(tmp_path):
    runs = tmp_path / "runs"
    first = subprocess.Popen(dltool_command("train", str(QUICKSTART), "train.epochs=300", "train.device=cpu",
                                            "--name", "r", "--runs-dir", str(runs), "--quiet"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(runs / "r", first, 1)
        others = [subprocess.Popen(dltool_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for args in (("train", "--resume", str(runs / "r"), "--quiet"),
                               ("eval", str(runs / "r"), "--json", "--device", "cpu", "--out", str(tmp_path / "eval")))]
        second, evaluated = (finished(p) for p in others)
        assert first.poll() is None, "the first run ended before the second was refused"
        os.kill(first.pid, signal.SIGTERM)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2, second.stderr
    assert re.fullmatch(f"error: {re.escape(str(runs / 'r'))} is being trained by {HOLDER.format(pid=first.pid)}; "
                        "wait for it or stop it", one_line_error(second.stderr))
    assert first.returncode == 130, stderr
    assert evaluated.returncode == 0, evaluated.stderr  # eval takes no lock and reads whole checkpoints
    assert 0 <= json.loads(evaluated.stdout)["accuracy"] <= 1
    done = epochs_in(runs / "r")
    assert done == list(range(1, len(done) + 1))
    finish = run_dltool("train", "--resume", str(runs / "r"), f"train.epochs={len(done) + 1}", "--quiet")
    assert finish.returncode == 0, finish.stderr
    assert epochs_in(runs / "r") == list(range(1, len(done) + 2))


def test_kill_9_frees_the_folder_for_an_immediate_resume(tmp_path):
    runs = tmp_path / "runs"
    process = subprocess.Popen(dltool_command("train", str(QUICKSTART), "train.epochs=3", "train.device=cpu",
                                              "--name", "k", "--runs-dir", str(runs), "--quiet"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(runs / "k", process, 1)
    finally:
        process.kill()  # SIGKILL: no handler, no cleanup; the lock file stays behind
        process.communicate(timeout=60)
    assert (runs / "k" / ".lock").read_text().startswith(f"process {process.pid} ")
    resumed = run_dltool("train", "--resume", str(runs / "k"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert epochs_in(runs / "k") == [1, 2, 3]
    assert [p for p in (runs / "k").rglob(".*.tmp")] == []


def test_a_run_started_over_takes_the_lock_too(tiny_run):
    for path in tiny_run.iterdir():
        if path.name not in ("config.yaml", ".lock"):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    held = RunDir(tiny_run).hold()
    try:
        result = CliRunner().invoke(app, ["train", "--resume", str(tiny_run), "--quiet"])
    finally:
        held.release()
    assert result.exit_code == 2, result.output
    assert re.fullmatch(f"error: {re.escape(str(tiny_run))} is being trained by {HOLDER.format(pid=os.getpid())}; "
                        "wait for it or stop it", one_line_error(result.stderr))
    assert sorted(p.name for p in tiny_run.iterdir()) == [".lock", "config.yaml"]
