"""dltool lr-find: the range test on the quickstart, its suggestion, its picture, and what it leaves."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.experiments.lrfind import suggest_lr

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def test_lr_find_suggests_an_lr_that_trains_the_quickstart(tmp_path, monkeypatch):
    from dltool.training.train import train

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["lr-find", str(QUICKSTART), "train.device=cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"suggested_lr", "how", "lrs", "losses", "plot"}
    assert report["how"] in ("steepest descent", "minimum / 10")
    assert 1e-7 <= report["lrs"][0] < report["lrs"][-1] <= 10 and len(report["lrs"]) == len(report["losses"])
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


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = [10 ** (-6 + i * 0.25) for i in range(25)]  # 1e-6 .. 1
    # flat, then falling fastest at index 11 (central difference 0.6 - 1.6), lowest at 18, then diverging
    losses = [2.0] * 8 + [1.9, 1.8, 1.6, 1.2, 0.6, 0.4, 0.35, 0.3, 0.28, 0.27, 0.26, 0.5, 1.5, 3.0, 5.0, 9.0, 20.0]
    lr, how = suggest_lr(lrs, losses)
    assert how == "steepest descent" and lr == lrs[11]


def test_suggestion_falls_back_to_the_minimum_over_ten():
    lrs = [1e-3, 1e-2, 1e-1, 1.0]
    lr, how = suggest_lr(lrs, [1.0, 0.5, 2.0, 9.0])  # too few points before the minimum for a slope
    assert how == "minimum / 10" and lr == 1e-2 / 10
    assert suggest_lr([1e-3], [1.0]) == (None, "")
