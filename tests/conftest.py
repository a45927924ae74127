"""Fixtures shared by several test modules (each small and named for what it holds)."""

from __future__ import annotations

import pytest

DIGITS_RUN_CONFIG = """\
seed: 0
data:
  dataset: Digits
  batch_size: 64
  transforms:
    train: [ {Resize: [16, 16]}, {RandomAffine: {degrees: 8}}, ToTensor, {Normalize: {mean: [0.3], std: [0.4]}} ]
    eval:  [ {Resize: [16, 16]}, ToTensor, {Normalize: {mean: [0.3], std: [0.4]}} ]
model:
  layers:
    - Conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
    - ReLU
    - MaxPool2d: 2
    - Flatten
    - Linear: {out_features: 32}
    - ReLU
    - Linear: {out_features: num_classes}
optimizer: {name: Adam, lr: 0.01}
train: {epochs: 2, device: cpu, histograms: false}
"""


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A finished 2-epoch run on the embedded digits (16x16 CNN): its run folder."""
    from dltool.train import train

    folder = tmp_path_factory.mktemp("digits_run")
    config = folder / "digits.yaml"
    config.write_text(DIGITS_RUN_CONFIG)
    return train(config, runs_dir=folder / "runs", name="digits").run_dir


@pytest.fixture
def make_checkpoint(tmp_path):
    """A factory: write a checkpoint by hand (as `dltool train` lays it out) with random weights.

    make_checkpoint(layers, input_shape, classes=10 digits, transforms=None, name="model.pt") -> path
    """
    import torch

    from dltool.checkpoint import save_checkpoint
    from dltool.config import config_from_data
    from dltool.models import build_model

    def make(layers, input_shape=(1, 8, 8), classes=tuple("0123456789"), transforms=None, name="model.pt",
             task="classification", dataset="Digits"):
        data = {"dataset": dataset}
        if transforms is not None:
            data["transforms"] = {"eval": transforms}
        config = config_from_data({"data": data, "model": {"layers": layers}})
        torch.manual_seed(0)
        model = build_model(config.model, tuple(input_shape), len(classes) or None)
        state = {"model": model.state_dict(), "config": config.to_data(), "classes": list(classes),
                 "input_shape": list(input_shape), "task": task, "split": {"method": "dataset"}, "epoch": 1}
        return save_checkpoint(state, tmp_path / name)

    return make
