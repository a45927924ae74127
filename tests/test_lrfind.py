"""dltool lr-find: the range test on the quickstart, its suggestion, its picture, and what it leaves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.experiments.lrfind import smooth, suggest_lr

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def test_lr_find_suggests_an_lr_that_trains_the_quickstart(tmp_path, monkeypatch):
    from dltool.training.train import train

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["lr-find", str(QUICKSTART), "train.device=cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"suggested_lr", "how", "lrs", "losses", "raw_losses", "diverged_at", "plot"}
    assert report["how"] == "the lowest loss's lr / 3"
    assert 1e-7 <= report["lrs"][0] < report["lrs"][-1] <= 10
    assert len(report["lrs"]) == len(report["losses"]) == len(report["raw_losses"])
    assert report["lrs"][0] <= report["suggested_lr"] <= report["lrs"][-1]
    if report["diverged_at"] is None:  # Adam with BatchNorm may stay bounded to the end, as on some CPUs
        assert len(report["lrs"]) == 400 and report["lrs"][-1] == pytest.approx(10)
    else:  # the ramp stopped where the loss diverged
        assert report["diverged_at"] >= report["lrs"][-1] and len(report["lrs"]) < 400  # a NaN is not kept
    assert all(math.isfinite(x) for x in report["losses"])
    assert report["plot"] == "quickstart-lr-find.png"
    with Image.open(tmp_path / "quickstart-lr-find.png") as image:
        assert image.format == "PNG" and image.width > 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["quickstart-lr-find.png"]  # no runs/, nothing else

    lr = report["suggested_lr"]
    run = train(QUICKSTART, runs_dir=tmp_path / "runs", overrides=[f"optimizer.lr={lr!r}", "train.device=cpu",
                                                                    "train.histograms=false"])
    assert run.summary["best_val_accuracy"] >= 0.97


def test_lr_find_out_and_text(tmp_path):
    out = tmp_path / "pictures" / "lr.png"
    out.parent.mkdir()
    result = CliRunner().invoke(app, ["lr-find", str(QUICKSTART), "--steps", "30", "--start", "1e-5", "--end", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("suggested lr ") and f"wrote {out}" in result.stderr
    assert f"try: dltool train {QUICKSTART} optimizer.lr=" in result.stderr
    assert out.exists() and result.stdout == ""


def test_lr_find_refuses_a_ramp_that_is_not_one(tmp_path):
    result = CliRunner().invoke(app, ["lr-find", str(QUICKSTART), "--start", "1", "--end", "0.1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: lr-find: --start must be above 0 and below --end; got --start 1.0 --end 0.1"
    result = CliRunner().invoke(app, ["lr-find", str(QUICKSTART), "--steps", "2"])
    assert result.exit_code == 2 and result.stderr.strip() == "error: lr-find: --steps must be 5 or more; got 2"


LRS = [10 ** (-6 + i * 0.25) for i in range(25)]  # 1e-6 .. 1


def test_suggestion_is_a_third_of_the_lowest_losss_lr():
    # flat, falling from index 8, lowest at 18, then rising
    losses = [2.0] * 8 + [1.9, 1.8, 1.6, 1.2, 0.6, 0.4, 0.35, 0.3, 0.28, 0.27, 0.26, 0.5, 1.5, 3.0, 5.0, 9.0, 20.0]
    lr, how = suggest_lr(LRS, losses, diverged_at=10 ** 0.25)
    assert how == "the lowest loss's lr / 3" and lr == LRS[18] / 3


def test_a_loss_that_never_fell_gives_a_tenth_of_where_it_diverged():
    losses = [2.0, 2.0, 1.98, 2.0, 2.01, 2.3, 4.0]  # within 2% of the start until it rose
    lr, how = suggest_lr(LRS[:7], losses, diverged_at=LRS[7])
    assert lr == LRS[7] / 10
    assert how == f"the loss did not fall before it diverged at lr {LRS[7]:.3g}; that / 10"


def test_the_suggestion_stays_inside_the_swept_range():
    lr, how = suggest_lr(LRS, [2.0, 1.0] + [1.5] * 23)  # lowest at the 2nd lr: a third of it is below --start
    assert lr == LRS[0]
    assert how == ("the lowest loss's lr / 3, raised to the first lr tried (the loss was lowest near --start: "
                   "try a lower one)")
    lr, _ = suggest_lr(LRS[:3], [1.0, 1.0, 1.0], diverged_at=1e3)  # a tenth of 1e3 is above the last lr
    assert lr == LRS[2]


def test_no_suggestion_when_the_curve_gives_none():
    assert suggest_lr([1e-3], [1.0]) == (None, "the loss diverged at once; try a lower --start")
    assert suggest_lr(LRS[:4], [1.0, 1.0, 1.0, 1.0]) == (
        None, "the loss neither fell nor diverged; try a wider --start/--end or more --steps")


def test_the_running_median_ignores_a_single_spike():
    assert smooth([1.0, 1.0, 9.0, 1.0, 1.0], 1) == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert smooth([3.0, 2.0, 1.0], 1) == [2.5, 2.0, 1.5]  # fewer values at the ends


def test_lr_find_steps_through_trains_own_step_with_accumulation(tmp_path, monkeypatch):
    from dltool.experiments.lrfind import lr_find
    from dltool.training import engine

    seen = []
    real = engine.train_batch

    def counting(*args, **kwargs):
        done = real(*args, **kwargs)
        seen.append((kwargs["batch"], kwargs["batches"], done.lr))
        return done

    monkeypatch.setattr(engine, "train_batch", counting)
    result = lr_find(QUICKSTART, ["train.device=cpu", "train.accumulate=3", "train.clip_grad_norm=1.0"],
                     start=1e-4, end=1e-2, steps=6, out=tmp_path / "lr.png")
    assert [(batch, batches) for batch, batches, _ in seen] == [(0, 3), (1, 3), (2, 3)] * 6
    stepped = [lr for _, _, lr in seen if lr is not None]  # the optimizer stepped on each group's third batch
    assert len(stepped) == len(result.lrs) == 6
    assert stepped == pytest.approx(result.lrs)
