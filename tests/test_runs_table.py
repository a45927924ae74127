"""dltool runs: every run folder under a directory with its status, read from its files and its lock."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dltool.cli import app
from dltool.cli.render_experiments import runs_table
from dltool.experiments.runs_table import FIELDS, list_runs
from dltool.training.run_folder import RunDir


@pytest.fixture
def runs(tmp_path, digits_run):
    """Four runs copied from one finished run: finished, failed, killed (no summary), running (locked)."""
    root = tmp_path / "runs"
    for name in ("a-finished", "b-failed", "c-killed", "d-running"):
        shutil.copytree(digits_run, root / name)
    summary = json.loads((root / "b-failed" / "summary.json").read_text())
    (root / "b-failed" / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    (root / "c-killed" / "summary.json").unlink()
    (root / "d-running" / "summary.json").unlink()
    for name, stamp in (("a-finished", 1000), ("b-failed", 2000), ("c-killed", 3000), ("d-running", 4000)):
        import os

        os.utime(root / name / "config.yaml", (stamp, stamp))
    (root / "not-a-run").mkdir()
    held = RunDir(root / "d-running").hold()
    yield root
    held.release()


def test_runs_lists_each_status_oldest_first(runs, digits_run):
    result = CliRunner().invoke(app, ["runs", str(runs), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["name"], r["status"]) for r in rows] == [
        ("a-finished", "finished"), ("b-failed", "failed"), ("c-killed", "interrupted"), ("d-running", "running")]
    assert all(tuple(r) == FIELDS for r in rows)
    summary = json.loads((digits_run / "summary.json").read_text())
    assert rows[0]["epochs_done"] == 2 and rows[0]["best_value"] == summary["best_value"]
    assert rows[0]["monitor"] == "val_accuracy" and rows[0]["train_seconds"] == summary["train_seconds"]
    assert rows[3]["epochs_done"] == 2  # what metrics.csv holds so far
    assert rows[3]["best_val_accuracy"] == pytest.approx(summary["best_val_accuracy"], rel=1e-5)


def render(rows, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(runs_table(rows, "runs"))
    return out.getvalue()


def test_runs_table_fits_a_narrow_terminal(runs):
    rows = list_runs(runs)
    narrow = render(rows, 60)
    assert max(len(line) for line in narrow.splitlines()) <= 60
    for word in ("finished", "failed", "interrupted", "running", "(best: val_accuracy)"):
        assert word in narrow  # statuses never fold; long names do
    wide = render(rows, 100)
    for name in ("a-finished", "b-failed", "c-killed", "d-running"):
        assert name in wide


def test_runs_finds_the_trials_of_a_study(tmp_path, digits_run):
    shutil.copytree(digits_run, tmp_path / "runs" / "study" / "trials" / "000")
    rows = list_runs(tmp_path / "runs")
    assert [r["name"] for r in rows] == ["study/trials/000"]


def test_runs_of_a_missing_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: runs: {tmp_path / 'nowhere'} is not a folder; give the folder that "
                                     "holds run folders (default: runs)")


def test_one_hostile_summary_leaves_the_other_runs_listed_and_says_why(tmp_path, digits_run):
    root = tmp_path / "runs"
    for name in ("deep", "strings", "good", "copied"):
        shutil.copytree(digits_run, root / name)
    (root / "deep" / "summary.json").write_text("[" * 100_000 + "]" * 100_000)
    summary = json.loads((root / "good" / "summary.json").read_text())
    (root / "strings" / "summary.json").write_text(json.dumps({**summary, "train_seconds": "12.5"}))
    shutil.rmtree(root / "copied" / "checkpoints")
    result = CliRunner().invoke(app, ["runs", str(root), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["good"]["status"] == "finished" and "reason" not in rows["good"]
    assert (rows["deep"]["status"], rows["deep"]["reason"]) == ("unreadable", "summary.json is nested too deep to read")
    assert rows["deep"]["epochs_done"] == 2  # from metrics.csv
    assert (rows["strings"]["status"], rows["strings"]["reason"]) == (
        "unreadable", "summary.json: train_seconds is '12.5', not a number")
    assert (rows["copied"]["status"], rows["copied"]["reason"]) == (
        "no checkpoints", "not resumable: checkpoints/ holds no last.pt or best.pt (a copied folder?)")
    result = CliRunner().invoke(app, ["runs", str(root)], terminal_width=120)
    assert result.exit_code == 0, result.output
    assert "deep: unreadable: summary.json is nested too deep to read" in result.stderr
    out = tmp_path / "all.png"
    result = CliRunner().invoke(app, ["plot", str(root / "deep"), str(root / "strings"), str(root / "good"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "warning: deep: summary.json is nested too deep to read; its best epoch is not marked",
        "warning: strings: summary.json: train_seconds is '12.5', not a number; its best epoch is not marked",
        f"wrote {out}"]


def test_runs_of_an_empty_folder_says_so(tmp_path):
    result = CliRunner().invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stderr.strip() == f"no runs in {tmp_path}"
