"""Fixtures shared by several test modules (each small and named for what it holds)."""

from __future__ import annotations

from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The quickstart run (embedded digits, 16x16 CNN) cut to 2 epochs on the CPU: its run folder."""
    from dltool.training.train import train

    folder = tmp_path_factory.mktemp("digits_run")
    return train(QUICKSTART, runs_dir=folder / "runs", name="digits",
                 overrides=["train.epochs=2", "train.device=cpu", "train.histograms=false"]).run_dir


@pytest.fixture
def make_checkpoint(tmp_path):
    """A factory: write a checkpoint by hand (as `dltool train` lays it out) with random weights.

    make_checkpoint(layers, input_shape, classes=10 digits, transforms=None, name="model.pt") -> path
    """
    import torch

    from dltool.config.load import config_from_data
    from dltool.models import build_model
    from dltool.store.checkpoint import save_checkpoint

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
