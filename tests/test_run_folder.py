"""The run directory: its files and their keys, run names, and what TensorBoard reads back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from dltool.errors import ConfigError
from dltool.training.run_folder import COLUMNS, RunDir, resume_checkpoint
from dltool.training.train import train

CONFIG = {
    "seed": 0,
    "data": {"dataset": {"name": "FakeData", "size": 60, "image_size": [1, 8, 8], "num_classes": 3},
             "batch_size": 16, "transforms": {"train": ["ToTensor"], "eval": ["ToTensor"]}},
    "model": {"layers": [{"Conv2d": {"out_channels": 2, "kernel_size": 3}}, "ReLU", "Flatten",
                         {"Linear": {"out_features": "num_classes"}}]},
    "optimizer": {"name": "Adam", "lr": 0.01},
    "train": {"epochs": 2, "device": "cpu", "threads": 1, "histograms": True},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs")
    path = folder / "small.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return train(path, runs_dir=folder / "runs").run_dir


def test_run_folder_layout(run):
    assert run.name == "small"
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoints", "config.yaml", "curves.png", "metrics.csv",
                                                    "summary.json", "tb"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert yaml.safe_load((run / "config.yaml").read_text())["optimizer"] == {"Adam": {"lr": 0.01}}


def test_metrics_csv_has_the_documented_columns_one_row_per_epoch(run):
    with open(run / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == COLUMNS
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["samples_per_second"]) > 0 and 0 <= float(r["val_accuracy"]) <= 1 for r in rows)


def test_summary_json_keys(run):
    summary = json.loads((run / "summary.json").read_text())
    assert {"best_epoch", "best_val_accuracy", "epochs_done", "train_seconds", "train_samples_per_second",
            "final", "bad_files"} <= set(summary)
    assert set(summary["final"]) == {"val_loss", "val_accuracy"}
    assert summary["epochs_done"] == 2 and summary["status"] == "finished" and summary["bad_files"] == 0
    # train_seconds is rounded to milliseconds, which is coarse for a run this small
    assert summary["train_samples_per_second"] == pytest.approx(48 * 2 / summary["train_seconds"], rel=0.1)


def test_best_checkpoint_loads_with_weights_only_and_holds_the_contract_keys(run):
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "step", "config", "classes", "metrics", "rng", "versions",
            "split", "input_shape", "task"} <= set(state)
    assert state["input_shape"] == [1, 8, 8] and state["task"] == "classification" and len(state["classes"]) == 3
    assert state["metrics"]["epoch"] == state["epoch"]
    assert set(state["versions"]) == {"dltool", "torch"}


def test_tensorboard_events_hold_every_kind(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "images": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr",
            "throughput/samples_per_second"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("loss/val")] == [1, 2]
    assert tags["images"] == ["train/first_batch"]
    assert tags["graph"] is True
    assert any(t.startswith("weights/") for t in tags["histograms"])
    assert any(t.startswith("gradients/") for t in tags["histograms"])
    assert "config/text_summary" in tags["tensors"]
    assert sum(t.startswith("pr/") for t in tags["tensors"]) == 3
    plugins = events.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins


def test_run_names_count_up_and_never_reuse_a_folder(tmp_path):
    names = [RunDir.create(tmp_path, "x").path.name for _ in range(3)]
    assert names == ["x", "x-2", "x-3"]
    with pytest.raises(ConfigError, match=r"--name: 'a/b' is not a folder name \(no slashes, not \. or \.\.\); it names a folder inside --runs-dir"):
        RunDir.create(tmp_path, "a/b")


def test_metrics_after_the_checkpointed_epoch_are_dropped_on_resume(tmp_path):
    run = RunDir.create(tmp_path, "r")
    for epoch in (1, 2, 3):
        run.append_metrics({"epoch": epoch, "lr": 0.1, "train_loss": 1.0 / epoch})
    run.keep_metrics_until(2)
    lines = (run.path / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch", "1", "2"]
    assert lines[2] == "2,0.1,0.5,,,,,"


def test_resume_target_is_a_run_folder_or_a_file(tmp_path):
    with pytest.raises(ConfigError, match=r"--resume: .* has no checkpoints/last.pt \(was it a run folder\?\)"):
        resume_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match=r"--resume: no such run folder or checkpoint: .*nope"):
        resume_checkpoint(tmp_path / "nope")


def test_files_the_scan_skipped_are_listed_in_bad_files_txt(tmp_path):
    from PIL import Image

    for label, shade in (("cat", 40), ("dog", 200)):
        folder = tmp_path / "images" / label
        folder.mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), shade + i).save(folder / f"{i}.png")
    (tmp_path / "images" / "dog" / "broken.png").write_bytes(b"not an image")
    config = {**CONFIG, "data": {"dataset": {"name": "ImageFolder", "root": str(tmp_path / "images")},
                                 "batch_size": 4, "val_split": 0.25,
                                 "transforms": {"train": ["ToTensor"], "eval": ["ToTensor"]}},
              "train": {"epochs": 1, "device": "cpu"}}
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(config))
    run = train(path, runs_dir=tmp_path / "runs").run_dir
    lines = (run / "bad_files.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(tmp_path / "images" / "dog" / "broken.png") + "\t")
    assert json.loads((run / "summary.json").read_text())["bad_files"] == 1
