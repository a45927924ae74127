"""`dltool train` end to end: exact resume (after an interruption, SIGINT and SIGKILL), NaN stops, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dltool.cli import app
from dltool.errors import ConfigError, Interrupted
from dltool.training.callbacks import Callback
from dltool.training.train import train

TINY = {
    "seed": 0,
    # the per-sample path with its per-sample seeding (the Digits test below covers the cache)
    "data": {"dataset": {"name": "FakeData", "size": 96, "image_size": [1, 8, 8], "num_classes": 5},
             "batch_size": 16, "cache": "none", "transforms": {"train": ["ToTensor", {"RandomHorizontalFlip": 0.5}], "eval": ["ToTensor"]}},
    "model": {"layers": [{"Conv2d": {"out_channels": 4, "kernel_size": 3, "padding": 1}}, "BatchNorm2d", "ReLU",
                         "Flatten", {"Dropout": 0.2}, {"Linear": {"out_features": "num_classes"}}]},
    "optimizer": {"name": "SGD", "lr": 0.05, "momentum": 0.9},
    "scheduler": "OneCycleLR",
    "train": {"epochs": 3, "device": "cpu", "log_every": 1, "histograms": False, "threads": 1},
}


def write_config(folder: Path, name: str = "tiny", **changes) -> Path:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    for dotted, value in changes.items():
        node = data
        *path, last = dotted.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class SignalAt(Callback):
    """Sends SIGINT to this process at a given (epoch, batch): the real interruption path.

    The loop sees the signal at its next step, so a mid-epoch batch must leave at least one more
    step in the epoch."""

    def __init__(self, epoch: int, batch: int | None):
        self.epoch, self.batch = epoch, batch

    def on_step(self, epoch, batch, batches, metrics):
        if (epoch, batch) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGINT)

    def on_epoch_end(self, epoch, row, improved):
        if self.batch is None and epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run of the tiny config."""
    folder = tmp_path_factory.mktemp("reference")
    result = train(write_config(folder), runs_dir=folder / "runs")
    return result


@pytest.mark.parametrize("epoch,batch", [(1, None), (2, 3)], ids=["epoch-end", "mid-epoch"])
def test_interrupted_then_resumed_is_bit_identical(tmp_path, reference, epoch, batch):
    with pytest.raises(Interrupted, match=r"saved .*last.pt; continue with: dltool train --resume .*runs/tiny$"):
        train(write_config(tmp_path), runs_dir=tmp_path / "runs", callbacks=[SignalAt(epoch, batch)])
    result = train(resume=tmp_path / "runs" / "tiny")
    assert_same_weights(weights(reference.run_dir), weights(result.run_dir))
    assert result.history == [] or result.summary["epochs_done"] == 3
    rows = (result.run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["epoch", "1", "2", "3"]
    ref_rows = (reference.run_dir / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[2:6] for r in rows] == [r.split(",")[2:6] for r in ref_rows]  # same losses and accuracies


def test_in_memory_data_resumes_bit_identically_from_mid_epoch(tmp_path):
    changes = {"data__dataset": "Digits", "data__cache": "ram", "data__batch_size": 64, "train__epochs": 2,
               "data__transforms": {"train": ["ToTensor", {"RandomCrop": {"size": 8, "padding": 1}}], "eval": ["ToTensor"]}}
    uninterrupted = train(write_config(tmp_path, name="a", **changes), runs_dir=tmp_path / "runs")
    with pytest.raises(Interrupted):
        train(write_config(tmp_path, name="b", **changes), runs_dir=tmp_path / "runs", callbacks=[SignalAt(2, 7)])
    resumed = train(resume=tmp_path / "runs" / "b")
    assert_same_weights(weights(uninterrupted.run_dir), weights(resumed.run_dir))
    assert uninterrupted.history[-1]["val_accuracy"] > 0.5


def test_resume_of_a_finished_run_says_how_to_extend(reference):
    with pytest.raises(ConfigError, match=r"has finished its 3 epochs; to train on, extend it: "
                                          r"dltool train --resume .* train.epochs=13"):
        train(resume=reference.run_dir)


def test_resume_accepts_only_train_overrides(reference):
    with pytest.raises(ConfigError, match=r"override 'optimizer.lr=0.1': on --resume only train.\* keys can change"):
        train(resume=reference.run_dir, overrides=["optimizer.lr=0.1"])


def test_extending_a_run_replans_the_schedule(tmp_path):
    short = train(write_config(tmp_path, scheduler="CosineAnnealingLR", train__epochs=2), runs_dir=tmp_path / "runs")
    extended = train(resume=short.run_dir, overrides=["train.epochs=4"])
    lrs = [float(line.split(",")[1]) for line in (extended.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    # epochs 1-2 ran under the 2-epoch cosine, 3-4 follow the 4-epoch cosine from where the run stood
    # (epoch e of a T-epoch cosine from 0.05: 0.05 * (1 + cos(pi * e / T)) / 2)
    assert lrs == pytest.approx([0.05, 0.025, 0.025, 0.05 * (1 - 2 ** -0.5) / 2], rel=1e-3)
    assert extended.summary["epochs_done"] == 4


def run_cli(config: Path, runs: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dltool", "train", str(config), "--runs-dir", str(runs), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_epoch(run_dir: Path, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.csv"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run wrote no epoch in time"
        time.sleep(0.05)


SLOW = {"data__dataset": "Digits", "data__cache": "ram", "data__batch_size": 64, "train__epochs": 10}


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slow")
    return train(write_config(folder, **SLOW), runs_dir=folder / "runs")


def test_sigkill_after_the_first_checkpoint_then_resume_is_bit_identical(tmp_path, slow_reference):
    process = run_cli(write_config(tmp_path, **SLOW), tmp_path / "runs", "--quiet")
    wait_for_first_epoch(tmp_path / "runs" / "tiny", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = train(resume=tmp_path / "runs" / "tiny")
    assert_same_weights(weights(slow_reference.run_dir), weights(result.run_dir))


def test_sigint_exits_130_with_a_loadable_checkpoint_and_resume_works(tmp_path, slow_reference):
    process = run_cli(write_config(tmp_path, **SLOW), tmp_path / "runs")
    wait_for_first_epoch(tmp_path / "runs" / "tiny", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert f"continue with: dltool train --resume {tmp_path / 'runs' / 'tiny'}" in stderr.replace("\n", "")
    state = torch.load(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] >= 1
    result = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "runs" / "tiny"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert_same_weights(weights(slow_reference.run_dir), weights(tmp_path / "runs" / "tiny"))


def test_absurd_lr_stops_with_exit_1_and_finite_saved_weights(tmp_path):
    config = write_config(tmp_path, optimizer={"name": "SGD", "lr": 1e30}, scheduler=None)
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 1
    assert "error: the loss became" in result.output and "at epoch 1, step" in result.output
    for name in ("last.pt",):
        state = torch.load(tmp_path / "runs" / "tiny" / "checkpoints" / name, weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    summary = (tmp_path / "runs" / "tiny" / "summary.json").read_text()
    assert '"status": "failed"' in summary


def test_cli_train_prints_epoch_lines_and_a_summary_off_a_terminal(tmp_path):
    config = write_config(tmp_path, train__epochs=1)
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--name", "x"])
    assert result.exit_code == 0, result.output
    assert "epoch 1/1  loss " in result.output and "samples/s" in result.output
    assert "best epoch" in result.output
    assert (tmp_path / "runs" / "x" / "checkpoints" / "best.pt").exists()


def test_cli_train_without_config_or_resume_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["train"])
    assert result.exit_code == 2
    assert "give a config file, or --resume RUN_OR_CKPT" in result.output


def test_unknown_monitor_is_a_config_error(tmp_path):
    config = write_config(tmp_path, train__monitor="val_f1")
    with pytest.raises(ConfigError, match=r"train.monitor: 'val_f1' is not measured in this run; allowed: auto, "
                                          r"train_loss, train_accuracy, val_loss, val_accuracy, val_top5_accuracy"):
        train(config, runs_dir=tmp_path / "runs")


def test_k_fold_cross_validation_runs_one_sub_run_per_fold(tmp_path):
    config = write_config(tmp_path, scheduler=None, train__epochs=1,
                          model={"layers": ["Flatten", {"Linear": {"out_features": "num_classes"}}]})
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--folds", "3", "-q"])
    assert result.exit_code == 0, result.output
    parent = tmp_path / "runs" / "tiny"
    summary = __import__("json").loads((parent / "summary.json").read_text())
    assert summary["folds"] == 3 and len(summary["values"]) == 3 and summary["monitor"] == "val_accuracy"
    assert summary["mean"] == pytest.approx(sum(summary["values"]) / 3)
    assert summary["std"] >= 0
    val_sets = [set(torch.load(parent / f"fold-{i}" / "checkpoints" / "last.pt", weights_only=True)["split"]["val"])
                for i in (1, 2, 3)]
    assert sum(len(v) for v in val_sets) == len(set().union(*val_sets)) == 96  # the folds partition the data


OPTION_SETS = {
    "ema+accumulate+clip": {"train__epochs": 2, "train__ema": 0.9, "train__accumulate": 2, "train__clip_grad_norm": 1.0,
                            "train__clip_grad_value": 0.5},
    "bf16+channels_last+warmup+plateau": {"train__epochs": 2, "train__amp": "bf16", "train__channels_last": True,
                                          "train__warmup_epochs": 0.5, "scheduler": "ReduceLROnPlateau"},
    "param_groups+unfreeze": {"optimizer": {"name": "AdamW", "lr": 0.01, "param_groups": [
        {"params": ["*.bias", "*Norm*.*"], "weight_decay": 0.0}]}, "model__freeze": ["0.*"], "train__unfreeze_at": 1,
        "train__epochs": 2},
}


@pytest.mark.parametrize("changes", OPTION_SETS.values(), ids=OPTION_SETS.keys())
def test_training_options_resume_bit_identically_from_mid_epoch(tmp_path, changes):
    uninterrupted = train(write_config(tmp_path, name="a", **changes), runs_dir=tmp_path / "runs")
    with pytest.raises(Interrupted):
        train(write_config(tmp_path, name="b", **changes), runs_dir=tmp_path / "runs", callbacks=[SignalAt(2, 2)])
    resumed = train(resume=tmp_path / "runs" / "b")
    assert_same_weights(weights(uninterrupted.run_dir), weights(resumed.run_dir))
    assert uninterrupted.history[-1]["val_loss"] == resumed.history[-1]["val_loss"]


def test_regression_run_reports_loss_and_mae_and_monitors_val_loss(tmp_path):
    from PIL import Image

    rows = []
    for i in range(24):
        Image.new("L", (4, 4), 10 * i).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i / 24:.4f}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    config = write_config(tmp_path, scheduler=None, loss="MSELoss", train__epochs=2,
                          data={"dataset": {"name": "ImageList", "file": str(tmp_path / "list.csv"), "task": "regression"},
                                "batch_size": 8, "transforms": {"train": ["ToTensor"], "eval": ["ToTensor"]}},
                          model={"layers": ["Flatten", {"Linear": {"out_features": 1}}]})
    result = train(config, runs_dir=tmp_path / "runs")
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["train_mae", "val_mae"]
    assert result.summary["monitor"] == "val_loss" and result.summary["best_val_accuracy"] is None
    assert set(result.summary["final"]) == {"val_loss", "val_accuracy", "val_mae"}
    assert result.summary["final"]["val_mae"] > 0


def test_a_config_that_cannot_build_leaves_no_run_folder(tmp_path):
    config = write_config(tmp_path, train__device="cuda:7")
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert "train.device: cuda:7:" in result.output
    assert not (tmp_path / "runs" / "tiny").exists()


@pytest.mark.parametrize("cache", ["none", "ram"])
def test_drop_last_with_fewer_samples_than_a_batch_is_a_config_error(tmp_path, cache):
    config = write_config(tmp_path, data__batch_size=128, data__drop_last=True, data__cache=cache)
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "batch_size:" in text)
    assert result.output.strip().splitlines()[-1] == (
        f"error: {config}:{line}:3: data.batch_size: 128 is more than the 77 training samples, and "
        "data.drop_last drops the incomplete batch: no step would run; use data.batch_size=77 or less, or "
        "data.drop_last: false")
    assert not (tmp_path / "runs" / "tiny").exists()


def test_ema_can_be_switched_on_when_resuming(tmp_path):
    short = train(write_config(tmp_path, train__epochs=1), runs_dir=tmp_path / "runs")
    resumed = train(resume=short.run_dir, overrides=["train.epochs=2", "train.ema=0.5"])
    state = torch.load(resumed.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["ema"]["updates"] == 5 and state["ema"]["decay"] == 0.5
    assert not torch.equal(state["model"]["5.weight"], state["train_model"]["5.weight"])


def test_cli_config_with_resume_is_refused_and_overrides_after_resume_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    short = train(write_config(tmp_path, train__epochs=1), runs_dir="runs")
    write_config(tmp_path, name="other", train__epochs=5)
    result = CliRunner().invoke(app, ["train", "other.yaml", "--resume", "runs/tiny", "-q"])
    assert result.exit_code == 2
    assert result.stderr == ("error: train: give either a config or --resume, not both: a resumed run keeps the "
                             "config it was trained with, so other.yaml would not be used; to change train.* keys, "
                             "put them after --resume: dltool train --resume runs/tiny train.epochs=30\n")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["tiny"]
    result = CliRunner().invoke(app, ["train", "--resume", "runs/tiny", "train.epochs=2", "-q"])
    assert result.exit_code == 0, result.output
    assert (short.run_dir / "metrics.csv").read_text().splitlines()[-1].startswith("2,")


def test_val_split_zero_trains_on_everything_and_says_so_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, data__val_split=0, train__epochs=2)
    result = CliRunner().invoke(app, ["train", "tiny.yaml"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("no validation split (data.val_split: 0): the best checkpoint follows train_loss\n") == 1
    summary = yaml.safe_load((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["monitor"] == "train_loss" and summary["val_samples"] == 0 and summary["train_samples"] == 96
    result = CliRunner().invoke(app, ["eval", "runs/tiny", "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr == ("error: data.val_split: 0: every sample is for training, there is no validation split; "
                             "use --split train, or other data (e.g. data.dataset.root=other/folder)\n")


class Hooks(Callback):
    """Records the named hooks a run calls, in order (steps and messages left out)."""

    def __init__(self):
        self.calls = []

    def on_fit_start(self, info):
        self.calls.append("fit_start")

    def on_epoch_end(self, epoch, row, improved):
        self.calls.append(f"epoch_end {epoch}")

    def on_interrupt(self):
        self.calls.append("interrupt")

    def on_fit_end(self, summary):
        self.calls.append(f"fit_end {summary['status']}")

    def on_close(self, outcome):
        self.calls.append(f"close {outcome}")


def test_a_run_calls_the_callers_hooks_at_their_named_points(tmp_path):
    hooks = Hooks()
    train(write_config(tmp_path, train__epochs=2), runs_dir=tmp_path / "runs", callbacks=[hooks])
    assert hooks.calls == ["fit_start", "epoch_end 1", "epoch_end 2", "fit_end finished", "close finished"]
    hooks = Hooks()
    with pytest.raises(Interrupted):
        train(write_config(tmp_path, name="b"), runs_dir=tmp_path / "runs", callbacks=[SignalAt(1, None), hooks])
    assert hooks.calls == ["fit_start", "epoch_end 1", "interrupt", "close interrupted"]  # no fit_end: not finished
