"""TensorBoard events: histograms binned by torch exactly as SummaryWriter.add_histogram bins them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import make_histogram

from dltool.training.board import histogram


@pytest.fixture(scope="module")
def bins(tmp_path_factory) -> torch.Tensor:
    writer = SummaryWriter(log_dir=str(tmp_path_factory.mktemp("tb")))
    writer.close()
    return torch.tensor(writer.default_bins, dtype=torch.float64)


@pytest.mark.parametrize("values", [
    torch.randn(1000, generator=torch.Generator().manual_seed(0)),
    torch.rand(7, 5, generator=torch.Generator().manual_seed(1)) * 3,  # positive only: first bin above 0
    torch.zeros(10),
    torch.tensor([0.5]),
    torch.tensor([-2.0, -2.0, 1e-13, 4.0]),
], ids=["normal", "positive", "zeros", "one", "spread"])
def test_histogram_has_tensorboards_buckets(values, bins):
    expected = make_histogram(values.double().numpy(), bins.numpy())
    got = histogram(values, bins)
    assert got["bucket_limits"] == list(expected.bucket_limit)
    assert got["bucket_counts"] == list(expected.bucket)
    assert got["num"] == expected.num and got["min"] == expected.min and got["max"] == expected.max
    assert got["sum"] == pytest.approx(expected.sum, rel=1e-9, abs=1e-12)
    assert got["sum_squares"] == pytest.approx(expected.sum_squares, rel=1e-9)


def test_nothing_to_bin_gives_no_histogram(bins):
    assert histogram(torch.empty(0), bins) is None
    assert histogram(torch.full((3,), float("nan")), bins) is None


def run_events(tmp_path, train_line: str):
    """A 2-class FakeData run (8x8 images, one Linear) with `train_line` as its train section: its
    TensorBoard events, read back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dltool.training.train import train

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {dataset: {name: FakeData, size: 40, image_size: [1, 8, 8], num_classes: 2}, batch_size: 8,\n"
        "       transforms: {train: [ToTensor], eval: [ToTensor]}}\n"
        "model: {layers: [Flatten, {Linear: {out_features: num_classes}}]}\n"
        f"train: {train_line}\n")
    run = train(config, runs_dir=tmp_path / "runs").run_dir
    events = EventAccumulator(str(run / "tb"), size_guidance={"histograms": 0})
    events.Reload()
    return events


def test_histograms_are_written_when_asked_for(tmp_path):
    events = run_events(tmp_path, "{epochs: 2, device: cpu, histograms: true}")
    weights = events.Histograms("weights/1.weight")  # layer 0 is the Flatten
    assert [e.step for e in weights] == [1, 2]
    assert weights[-1].histogram_value.num == 2 * 64
    assert np.isclose(sum(weights[-1].histogram_value.bucket), 2 * 64)
    assert events.Histograms("gradients/1.bias")[-1].histogram_value.num == 2


def test_no_histograms_by_default(tmp_path):
    """They cost ~0.1 s per million parameters every epoch: a run writes them when asked to."""
    events = run_events(tmp_path, "{epochs: 1, device: cpu}")
    assert events.Tags()["histograms"] == []
    assert "loss/train" in events.Tags()["scalars"]
