"""build_data and make_loader on the embedded digits: splits, shapes, reproducible batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dltool.config.load import config_from_data, load_config
from dltool.data import DataBundle, Loader, build_data, make_loader
from dltool.data.sources import stratified_split
from dltool.errors import DataError


@pytest.fixture(scope="module")
def quick():
    """The quickstart on the per-sample path (the in-memory one has its own tests)."""
    config = load_config("configs/quickstart.yaml", ["data.cache=none"])
    return config, build_data(config)


def test_quickstart_bundle(quick):
    config, bundle = quick
    assert isinstance(bundle, DataBundle)
    assert bundle.input_shape == (1, 16, 16)
    assert bundle.classes == [str(i) for i in range(10)]
    assert bundle.task == "classification"
    assert len(bundle.train) + len(bundle.val) == 1797
    assert len(bundle.val) == round(0.2 * 1797)
    assert bundle.test is None
    x, y = bundle.val[0]
    assert x.dtype == torch.float32 and x.shape == (1, 16, 16) and isinstance(y, int)


def test_digits_pixels_are_scaled_to_8_bit():
    from sklearn.datasets import load_digits

    from dltool.data.datasets import DigitsImages

    images = DigitsImages()
    image, target = images[0]
    assert image.mode == "L" and image.size == (8, 8)
    expected = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    assert np.array_equal(np.asarray(image), expected)
    assert target == 0 and images.pixels.max() == 255 and len(images) == 1797


def test_stratified_split_keeps_class_proportions():
    targets = [0] * 50 + [1] * 30 + [2] * 20
    train, val = stratified_split(targets, 0.2, seed=1)
    assert sorted(train + val) == list(range(100))
    assert Counter(targets[i] for i in val) == {0: 10, 1: 6, 2: 4}
    assert stratified_split(targets, 0.2, seed=1) == (train, val)
    assert stratified_split(targets, 0.2, seed=2) != (train, val)


def test_digits_split_is_stratified_and_stored(quick):
    config, bundle = quick
    counts = Counter(bundle.val.targets)
    total = Counter(bundle.train.targets) + counts
    for label, n in total.items():
        assert abs(counts[label] - 0.2 * n) <= 1
    assert bundle.split["method"] == "val_split"
    assert sorted(bundle.split["train"] + bundle.split["val"]) == list(range(1797))
    again = build_data(config.__class__(**{**config.__dict__, "seed": 5}), split_state=bundle.split)
    assert again.split == bundle.split
    assert bundle.sample_ids("val")[:1] == [f"index {bundle.split['val'][0]}"]


def test_same_seed_and_epoch_give_the_same_batches(quick):
    config, bundle = quick
    loader = make_loader(bundle.train, config.data, train=True, seed=0)
    assert isinstance(loader, Loader) and len(loader) == -(-len(bundle.train) // 32)
    loader.set_epoch(2)
    first = [b for _, b in zip(range(3), loader)]
    torch.manual_seed(123)
    other = make_loader(bundle.train, config.data, train=True, seed=0)
    other.set_epoch(2)
    second = [b for _, b in zip(range(3), other)]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    loader.set_epoch(3)
    x3, y3 = next(iter(loader))
    assert not torch.equal(y3, first[0][1])


def test_loader_leaves_global_rng_alone(quick):
    config, bundle = quick
    loader = make_loader(bundle.train, config.data, train=True, seed=0)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


def test_eval_loader_keeps_order(quick):
    config, bundle = quick
    loader = make_loader(bundle.val, config.data, train=False, seed=0)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == bundle.val.targets


def test_missing_test_split_is_a_data_error():
    config = config_from_data({"data": {"dataset": "Digits"}})
    with pytest.raises(DataError, match="Digits: has no test split"):
        build_data(config, splits=("test",))


def test_workers_give_the_same_batches_as_the_main_process(quick):
    config, bundle = quick
    workers = load_config("configs/quickstart.yaml", ["data.cache=none", "data.num_workers=2", "data.persistent_workers=true"])
    main, forked = (make_loader(bundle.train, c.data, train=True, seed=0) for c in (config, workers))
    for epoch in (0, 1):
        main.set_epoch(epoch)
        forked.set_epoch(epoch)
        for _, (x1, y1), (x2, y2) in zip(range(3), main, forked):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_balanced_sampler_draws_classes_equally():
    config = config_from_data({"data": {"dataset": "Digits", "sampler": "balanced", "batch_size": 256, "cache": "none"}})
    bundle = build_data(config)
    keep = [i for i, t in enumerate(bundle.train.targets) if t != 0 or i % 10 == 0]
    bundle.train.indices = [bundle.train.indices[i] for i in keep]
    bundle.train.targets = [bundle.train.targets[i] for i in keep]
    loader = make_loader(bundle.train, config.data, train=True, seed=3)
    drawn = Counter(torch.cat([y for _, y in loader]).tolist())
    assert Counter(bundle.train.targets)[0] < 20
    assert 0.6 < drawn[0] / (len(bundle.train) / 10) < 1.4


def test_mixup_in_the_loader_gives_soft_targets(quick):
    _, bundle = quick
    config = load_config("configs/quickstart.yaml", ["data.cache=none", "data.batch_transforms=[{MixUp: {alpha: 0.4}}]"])
    loader = make_loader(bundle.train, config.data, train=True, seed=0)
    x, y = next(iter(loader))
    assert y.shape == (32, 10) and y.dtype == torch.float32
    assert torch.allclose(y.sum(1), torch.ones(32))
    again = next(iter(make_loader(bundle.train, config.data, train=True, seed=0)))
    assert torch.equal(again[1], y) and torch.equal(again[0], x)
    assert next(iter(make_loader(bundle.val, config.data, train=False, seed=0)))[1].ndim == 1


@pytest.mark.parametrize("overrides, channels", [
    ([], 1), (["data.channels=3"], 3), (["model.input_shape=[3, 16, 16]"], 3),
])
def test_channels_follow_config_then_model_then_data(overrides, channels):
    bundle = build_data(load_config("configs/quickstart.yaml", overrides))
    assert bundle.channels == channels and bundle.input_shape == (channels, 16, 16)
    assert bundle.val[0][0].shape[0] == channels


def test_pin_memory_pins_only_for_cuda():
    config = config_from_data({"data": {"dataset": "Digits", "cache": "none", "pin_memory": True}})
    bundle = build_data(config)
    assert make_loader(bundle.val, config.data, train=False, seed=0, device="cpu").loader.pin_memory is False
    assert make_loader(bundle.val, config.data, train=False, seed=0, device="cuda").loader.pin_memory is True
