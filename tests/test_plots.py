"""Pictures: curves.png of every run (also an interrupted one), dltool plot over several runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.training.callbacks import Callback
from dltool.training.curves import panels_for, read_rows

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_a_finished_run_has_its_curves(digits_run):
    width, height = png_size(digits_run / "curves.png")
    assert width > height > 200  # two panels side by side: loss, accuracy
    rows = read_rows(digits_run)
    assert [r["epoch"] for r in rows] == [1.0, 2.0] and {"train_loss", "val_accuracy"} <= set(rows[0])
    assert panels_for(rows, None) == ["loss", "accuracy"]
    assert panels_for(rows, "val_loss") == ["loss"]


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        raise KeyboardInterrupt  # as a second Ctrl-C does: no saving in the loop, out at once


def test_an_interrupted_run_still_draws_its_curves(tmp_path):
    from dltool.training.train import train

    with pytest.raises(KeyboardInterrupt):
        train(QUICKSTART, runs_dir=tmp_path, name="cut", callbacks=[StopAfterFirstEpoch()],
              overrides=["train.epochs=3", "train.device=cpu", "train.histograms=false"])
    assert png_size(tmp_path / "cut" / "curves.png")[0] > 0


def test_plot_overlays_two_runs(tmp_path, digits_run):
    other = tmp_path / "other"
    shutil.copytree(digits_run, other)
    (other / "summary.json").unlink()  # as a run still training: metrics.csv so far
    out = tmp_path / "both.png"
    result = CliRunner().invoke(app, ["plot", str(digits_run), str(other), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == f"wrote {out}"
    assert png_size(out)[0] > 600
    one = tmp_path / "lr.png"
    result = CliRunner().invoke(app, ["plot", str(digits_run), "--metric", "lr", "--out", str(one)])
    assert result.exit_code == 0, result.output
    assert png_size(one)[0] < png_size(out)[0]  # one panel


def test_plot_errors_are_one_line(tmp_path, digits_run):
    result = CliRunner().invoke(app, ["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: plot: {tmp_path} has no epochs to draw (no run folder with a "
                                     "metrics.csv row there; one is written after each epoch)")
    result = CliRunner().invoke(app, ["plot", str(digits_run), "--metric", "val_f1", "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --metric: no run has a column 'val_f1' in its metrics.csv"
    assert not (tmp_path / "x.png").exists()
