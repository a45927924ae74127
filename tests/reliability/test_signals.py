"""Signals: SIGHUP (a closed terminal) saves and stops like SIGTERM, exit 129; an interruption's line
is not an error's; a hard stop during start-up does not claim a checkpoint it never saved."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
import torch
from typer.testing import CliRunner

from dltool.cli import app

from .test_lock import QUICKSTART, wait_for_rows
from .tools import dltool_command


@pytest.mark.parametrize("signum, code", [(signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_a_signal_saves_and_exits_with_one_line_without_error_prefix(tmp_path, signum, code):
    runs = tmp_path / "runs"
    process = subprocess.Popen(dltool_command("train", str(QUICKSTART), "train.epochs=300", "train.device=cpu",
                                              "--name", "s", "--runs-dir", str(runs), "--quiet"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(runs / "s", process, 1)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith(f"interrupted by {signal.Signals(signum).name} at "), stderr
    assert lines[0].endswith(f"; continue with: dltool train --resume {runs / 's'}"), stderr
    summary = json.loads((runs / "s" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["epochs_done"] == torch.load(runs / "s" / "checkpoints" / "last.pt", weights_only=True)["epoch"]


def test_a_hard_stop_during_start_up_says_nothing_was_saved(tmp_path, monkeypatch):
    import dltool.training.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dltool.training.train, "fresh_run", interrupted)
    result = CliRunner().invoke(app, ["train", str(QUICKSTART), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 130, result.output
    assert result.stderr.strip().splitlines() == [
        "interrupted: stopped at once during start-up, before the first checkpoint; nothing to resume"]
    monkeypatch.setattr(dltool.training.train, "resumed_run", interrupted)
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "runs" / "x"), "--quiet"])
    assert result.stderr.strip().splitlines() == [
        f"interrupted: stopped at once during start-up; {tmp_path / 'runs' / 'x'} keeps its last checkpoint"]
