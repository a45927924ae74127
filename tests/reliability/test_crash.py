"""kill -9 at random moments (inside the checkpoint write too): every restart resumes from the newest
complete checkpoint, no temp file outlives the run, and the final weights equal an uninterrupted run's."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dltool.errors import ConfigError
from dltool.store.checkpoint import load_checkpoint, save_checkpoint
from dltool.training.callbacks import Callback
from dltool.training.train import train

from .tools import TINY, record, weights_hash, write_config

PAUSE = "0.3"  # seconds each save holds its complete temp file before the rename
PAUSING = Path(__file__).with_name("pause_in_save.py")


def pausing_command(*args: str) -> list[str]:
    """`dltool ARGS` in a subprocess whose checkpoint saves pause PAUSE seconds before their rename."""
    return [sys.executable, str(PAUSING), PAUSE, *args]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("reference")
    result = train(write_config(folder), runs_dir=folder / "runs")
    return weights_hash(result.run_dir / "checkpoints" / "last.pt")


class StartEpoch(Callback):
    def __init__(self):
        self.start = None

    def on_fit_start(self, info: dict) -> None:
        self.start = info["start_epoch"]


def wait_until(condition, process: subprocess.Popen, timeout: float = 90) -> bool:
    """Poll `condition` until it holds (True) or the process ends (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run made no progress in time"
        time.sleep(0.01)
    return True


def temp_files(run: Path) -> list[Path]:
    return sorted(p for p in run.rglob(".*.tmp"))


def saved_epoch(run: Path) -> int:
    return load_checkpoint(run / "checkpoints" / "last.pt")["epoch"]


def kill_at(process: subprocess.Popen, run: Path, rng: random.Random, in_save: bool) -> bool:
    """Kill -9 `process` inside a checkpoint write, or at a random moment, once a first checkpoint exists
    (before it, there is nothing to resume and the run starts over).

    Returns:
        False when the run finished before the moment came.
    """
    last = run / "checkpoints" / "last.pt"
    if in_save:
        reached = wait_until(lambda: last.exists() and bool(temp_files(run / "checkpoints")), process)
    else:
        reached = wait_until(last.exists, process)
        time.sleep(rng.uniform(0.0, 2.5))
        reached = reached and process.poll() is None
    if not reached:
        process.wait()
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def crash_and_resume(folder: Path, seed: int, kills: int) -> dict:
    """Train TINY, kill it `kills` times (alternating inside a save and at random), resume each time,
    then finish in-process. Returns the figures and the final run folder."""
    rng = random.Random(seed)
    run = folder / "runs" / "tiny"
    command = pausing_command("train", str(write_config(folder)), "--runs-dir", str(folder / "runs"), "--quiet")
    done, newest, restarts = 0, 0, 0
    for i in range(kills):
        restarts += "--resume" in command
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not kill_at(process, run, rng, in_save=i % 2 == 0):
            assert process.returncode == 0, process.stderr.read()
            break
        process.stderr.close()
        done += 1
        epoch = saved_epoch(run)  # loadable: the kill never leaves a torn last.pt
        assert epoch >= newest
        newest = epoch
        command = pausing_command("train", "--resume", str(run), "--quiet")
    if saved_epoch(run) < TINY["train"]["epochs"]:
        start = StartEpoch()
        train(resume=run, callbacks=[start])
        assert start.start == newest + 1  # continued from the newest complete checkpoint
        restarts += 1
    return {"run": run, "kills": done, "resumes": restarts}


def assert_clean_finish(run: Path, reference: str) -> None:
    assert weights_hash(run / "checkpoints" / "last.pt") == reference
    assert temp_files(run) == []
    with open(run / "metrics.csv", newline="") as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    assert epochs == list(range(1, TINY["train"]["epochs"] + 1))


def test_kill_inside_a_save_and_at_random_then_resume_gives_the_same_weights(tmp_path, reference):
    figures = crash_and_resume(tmp_path, seed=1, kills=2)
    assert figures["kills"] >= 1
    assert_clean_finish(figures["run"], reference)
    record("kills", figures["kills"])
    record("resumes", figures["resumes"])


def test_a_kill_before_the_first_checkpoint_then_resume_starts_the_run_over(tmp_path, reference):
    run = tmp_path / "runs" / "tiny"
    command = pausing_command("train", str(write_config(tmp_path)), "--runs-dir", str(tmp_path / "runs"), "--quiet")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: bool(temp_files(run / "checkpoints")), process)  # inside the very first save
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "checkpoints" / "last.pt").exists() and (run / "config.yaml").exists()
    with pytest.raises(ConfigError, match=r"on --resume only train\.\* keys can change"):
        train(resume=run, overrides=["data.batch_size=8"])
    start = StartEpoch()
    train(resume=run, callbacks=[start])
    assert start.start == 1
    assert_clean_finish(run, reference)  # the same weights as a run never killed, in the same folder
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]
    record("kills", 1)
    record("resumes", 1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_many_kills_then_resume_gives_the_same_weights(tmp_path, reference, seed):
    figures = crash_and_resume(tmp_path, seed=100 + seed, kills=5)
    assert_clean_finish(figures["run"], reference)
    record("kills", figures["kills"])
    record("resumes", figures["resumes"])


def test_a_stale_temp_file_is_removed_by_the_next_save(tmp_path):
    stale = tmp_path / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp"
    other.write_text("mine")
    save_checkpoint({"model": {}, "config": {}}, tmp_path / "last.pt")
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


def test_resume_removes_temp_files_a_killed_run_left(tmp_path):
    config = write_config(tmp_path, data={**TINY, "train": {**TINY["train"], "epochs": 1}})
    run = train(config, runs_dir=tmp_path / "runs").run_dir
    leftovers = [run / "checkpoints" / ".best.pt.x1y2z3.tmp", run / ".metrics.csv.tmp"]
    for path in leftovers:
        path.write_bytes(b"torn")
    train(resume=run, overrides=["train.epochs=2"])
    assert temp_files(run) == []


def test_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, tmp_path / "last.pt")
    monkeypatch.undo()
    (_, temp), (_, src, dst), (_, folder) = calls
    assert Path(temp).name.startswith(".last.pt.") and temp.endswith(".tmp")
    assert (src, dst) == (temp, str(target))
    assert folder == str(tmp_path)
