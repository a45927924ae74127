"""Resume never destroys: a folder that lost last.pt but holds work is refused; a hand-edited
metrics.csv (a BOM, a torn last row) is read, a broken one refused; config.yaml says what the run is."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dltool.cli import app
from dltool.training.train import train

from .tools import TINY, one_line_error, write_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-epoch run of the tiny config (copied by each test that changes it)."""
    folder = tmp_path_factory.mktemp("finished")
    return train(write_config(folder, data={**TINY, "train": {**TINY["train"], "epochs": 2}}),
                 runs_dir=folder / "runs").run_dir


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "runs" / finished.name
    shutil.copytree(finished, copy)
    return copy


def resume(run: Path, *overrides: str):
    return CliRunner().invoke(app, ["train", "--resume", str(run), *overrides, "--quiet"])


def snapshot(run: Path) -> dict:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


def epochs(run: Path) -> list[str]:
    return [line.split(",")[0] for line in (run / "metrics.csv").read_text(encoding="utf-8").splitlines()[1:]]


def test_a_finished_run_without_last_pt_is_refused_and_kept(run):
    (run / "checkpoints" / "last.pt").unlink()
    before = snapshot(run)
    result = resume(run, "train.epochs=10")
    assert result.exit_code == 2, result.output
    new = run.with_name(f"{run.name}-2")
    best = run / "checkpoints" / "best.pt"
    assert one_line_error(result.stderr) == (
        f"error: --resume: {run} has no checkpoints/last.pt but holds best.pt and 2 rows of metrics.csv and "
        f"TensorBoard events in tb/; starting it over would destroy them, so nothing was changed; its best weights "
        f"are in {best} (dltool eval and predict use them); to train on from them in a new run: mkdir -p "
        f"{new}/checkpoints && cp {best} {new}/checkpoints/last.pt && dltool train --resume {new}")
    assert snapshot(run) == before


def test_the_new_run_the_refusal_suggests_trains_on_from_best_pt(run):
    (run / "checkpoints" / "last.pt").unlink()
    new = run.with_name(f"{run.name}-2")
    (new / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "checkpoints" / "best.pt", new / "checkpoints" / "last.pt")
    result = resume(new, "train.epochs=3")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((new / "config.yaml").read_text())["train"]["epochs"] == 3


def test_a_folder_holding_only_its_config_starts_over(run):
    for path in run.iterdir():
        if path.name != "config.yaml":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = resume(run)
    assert result.exit_code == 0, result.output
    assert epochs(run) == ["1", "2"]


def test_a_metrics_csv_saved_with_a_bom_keeps_its_rows_and_new_rows_get_their_epoch(run):
    metrics = run / "metrics.csv"
    metrics.write_bytes(b"\xef\xbb\xbf" + metrics.read_bytes())
    result = resume(run, "train.epochs=3")
    assert result.exit_code == 0, result.output
    assert epochs(run) == ["1", "2", "3"]


def test_a_torn_last_row_is_dropped_and_later_rows_are_whole(run):
    metrics = run / "metrics.csv"
    metrics.write_bytes(metrics.read_bytes() + b"3,0.01,1.2")  # killed while appending epoch 3's row
    result = resume(run, "train.epochs=4")
    assert result.exit_code == 0, result.output
    assert epochs(run) == ["1", "2", "3", "4"]
    width = len(metrics.read_text().splitlines()[0].split(","))
    assert all(len(line.split(",")) == width for line in metrics.read_text().splitlines())


def test_a_broken_row_in_the_middle_is_refused_and_nothing_is_rewritten(run):
    metrics = run / "metrics.csv"
    lines = metrics.read_bytes().split(b"\r\n")
    metrics.write_bytes(b"\r\n".join([lines[0], b"oops", *lines[1:]]))
    before = snapshot(run)
    result = resume(run, "train.epochs=3")
    assert result.exit_code == 2, result.output
    assert one_line_error(result.stderr) == (
        f"error: --resume: {metrics} line 2 is not a row of {len(lines[0].split(b','))} fields starting with the "
        "epoch number; fix or delete that line (no row was changed)")
    assert snapshot(run) == before


def test_config_yaml_is_rewritten_on_resume_and_written_again_when_deleted(run):
    (run / "config.yaml").unlink()
    result = resume(run, "train.epochs=3")
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 3
    assert epochs(run) == ["1", "2", "3"]
