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


def test_plot_draws_only_the_metric_asked_and_names_runs_lacking_it(tmp_path, digits_run):
    from dltool.training.curves import read_rows, runs_figure

    other = tmp_path / "no-val"
    shutil.copytree(digits_run, other)
    lines = (other / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if not name.startswith("val_")]
    (other / "metrics.csv").write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    out = tmp_path / "made" / "here" / "acc.png"
    result = CliRunner().invoke(app, ["plot", str(digits_run), str(other), "--metric", "val_accuracy",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "warning: no-val: no column 'val_accuracy' in its metrics.csv; not drawn", f"wrote {out}"]
    png_size(out)
    figure = runs_figure([("digits", read_rows(digits_run), 2)], "val_accuracy")
    assert [line.get_label() for line in figure.axes[0].get_lines() if not line.get_label().startswith("_")] \
        == ["val_accuracy"]


def test_the_legend_sits_outside_the_curves_and_epoch_ticks_are_whole(digits_run):
    from dltool.training.curves import read_rows, runs_figure

    rows = read_rows(digits_run)
    figure = runs_figure([(f"run{i}", rows, 2) for i in range(6)])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in figure.axes:
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.get_window_extent(renderer)) and legend.y0 >= 0  # below it, in the picture
        assert all(tick == int(tick) for tick in ax.get_xticks())


def test_a_folds_folder_draws_each_fold_and_a_jpg_is_a_jpeg(tmp_path, digits_run):
    folds = tmp_path / "cv"
    for fold in ("fold-1", "fold-2"):
        shutil.copytree(digits_run, folds / fold)
    out = tmp_path / "folds.jpg"
    result = CliRunner().invoke(app, ["plot", str(folds), "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.format == "JPEG"
    from dltool.experiments.plots import _labelled

    assert [label for _, label in _labelled([folds])] == ["cv/fold-1", "cv/fold-2"]
    result = CliRunner().invoke(app, ["plot", str(digits_run), "--out", str(tmp_path / "x.gif")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: --out: {tmp_path / 'x.gif'}: a picture's name ends in one of .png, "
                                     ".jpg, .jpeg, .svg, .pdf")


def test_plot_and_lr_find_out_where_no_file_can_go_is_one_line(tmp_path, digits_run):
    result = CliRunner().invoke(app, ["plot", str(digits_run), "--out", "/proc/x.png"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: cannot write /proc/x.png: its folder takes no new files; write elsewhere"
    (tmp_path / "file").write_text("")
    result = CliRunner().invoke(app, ["lr-find", str(QUICKSTART), "--out", str(tmp_path / "file" / "x.png")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: --out: cannot write {tmp_path / 'file' / 'x.png'}: a file stands "
                                     "where a folder of that path should be")
