"""The in-memory path: same output as the per-sample path for fixed transforms, same distribution
for random ones, same (seed, epoch) -> same batches, and the fallbacks."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dltool.config.load import load_config
from dltool.data import Loader, build_data, make_loader
from dltool.data.batched import _inverse_affine, batched_op, warp
from dltool.data.memory import MemoryLoader
from dltool.errors import DataError

QUICK = "configs/quickstart.yaml"


@pytest.fixture(scope="module")
def quick():
    config = load_config(QUICK)
    return config, build_data(config)


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def test_eval_batches_equal_the_per_sample_path(quick):
    config, bundle = quick
    held = make_loader(bundle.val, config.data, train=False, seed=0)
    plain = make_loader(bundle.val, load_config(QUICK, ["data.cache=none"]).data, train=False, seed=0)
    assert isinstance(held, MemoryLoader) and isinstance(plain, Loader) and len(held) == len(plain)
    for (x1, y1), (x2, y2) in zip(held, plain):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_train_batches_depend_only_on_seed_and_epoch(quick):
    config, bundle = quick
    first, second = (make_loader(bundle.train, config.data, train=True, seed=4) for _ in range(2))
    assert isinstance(first, MemoryLoader) and len(first) == -(-len(bundle.train) // 32)
    first.set_epoch(3)
    second.set_epoch(3)
    torch.manual_seed(99)
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x_epoch3, _ = next(iter(first))
    first.set_epoch(4)
    assert not torch.equal(next(iter(first))[0], x_epoch3)


def test_train_statistics_match_the_per_sample_path(quick):
    config, bundle = quick
    held = make_loader(bundle.train, config.data, train=True, seed=0)
    plain = make_loader(bundle.train, load_config(QUICK, ["data.cache=none"]).data, train=True, seed=0)
    x_held = torch.cat([x for x, _ in held])
    x_plain = torch.cat([x for _, (x, _) in zip(range(12), plain)])
    assert x_held.shape[1:] == x_plain.shape[1:] == (1, 16, 16)
    assert abs(x_held.mean() - x_plain.mean()) < 0.05
    assert abs(x_held.std() - x_plain.std()) < 0.05


def test_unbatchable_transform_falls_back_or_refuses(quick):
    _, bundle = quick
    blur = '[{Resize: [16, 16]}, {GaussianBlur: 3}, ToTensor]'
    config = load_config(QUICK, [f"data.transforms.train={blur}"])
    rebuilt = build_data(config)
    assert isinstance(make_loader(rebuilt.train, config.data, train=True, seed=0), Loader)
    forced = load_config(QUICK, [f"data.transforms.train={blur}", "data.cache=ram"])
    with pytest.raises(DataError, match="data.cache: ram: cannot hold this dataset in memory: GaussianBlur has no batched form"):
        make_loader(rebuilt.train, forced.data, train=True, seed=0)
    small = load_config(QUICK, ["data.cache_budget_mb=0"])
    assert isinstance(make_loader(bundle.val, small.data, train=False, seed=0), Loader)


def test_mixup_on_the_memory_path(quick):
    _, bundle = quick
    config = load_config(QUICK, ["data.batch_transforms=[{CutMix: {alpha: 1.0}}]"])
    x, y = next(iter(make_loader(bundle.train, config.data, train=True, seed=0)))
    assert y.shape == (32, 10) and torch.allclose(y.sum(1), torch.ones(32))


def test_batched_affine_equals_torchvision_for_the_same_parameters():
    x = torch.rand(3, 2, 12, 10)
    params = [(12.0, [2.0, -1.0], 1.1, [5.0, 0.0]), (-30.0, [0.0, 3.0], 0.8, [0.0, 4.0]), (0.0, [0.0, 0.0], 1.0, [0.0, 0.0])]
    angle, tx, ty, scale, shear_x, shear_y = (torch.tensor(c, dtype=torch.float64) for c in
                                              zip(*[(a, t[0], t[1], s, sh[0], sh[1]) for a, t, s, sh in params]))
    theta = _inverse_affine(angle, tx, ty, scale, (shear_x, shear_y)).float()
    unsheared = _inverse_affine(angle, tx, ty, scale).float()
    assert torch.equal(unsheared[2], theta[2])
    ours = warp(x, theta, "nearest")
    assert torch.equal(warp(x, _inverse_affine(*(v.numpy() for v in (angle, tx, ty, scale)),
                                               (shear_x.numpy(), shear_y.numpy())), "nearest"), ours)
    for i, (angle, translate, scale, shear) in enumerate(params):
        expected = F.affine(x[i], angle=angle, translate=translate, scale=scale, shear=shear)
        assert torch.equal(ours[i], expected)


def test_batched_rotation_equals_torchvision_for_the_same_angle():
    x = torch.rand(1, 3, 10, 12)
    angle = torch.tensor([17.0], dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    theta = _inverse_affine(-angle, zero, zero, zero + 1).float()
    assert torch.equal(warp(x, theta, "nearest")[0], F.rotate(x[0], 17.0))
    bilinear = F.rotate(x[0], 17.0, interpolation=v2.InterpolationMode.BILINEAR)
    assert torch.allclose(warp(x, theta, "bilinear")[0], bilinear, atol=1e-6)
    angles = batched_op(v2.RandomRotation([-40, 10]))(torch.ones(2000, 1, 9, 9), generator())
    assert angles.shape == (2000, 1, 9, 9) and (angles == 0).any()


def test_hue_grayscale_and_invert_batched():
    x = torch.rand(2, 3, 6, 6)
    from dltool.data.batched import _adjust

    assert torch.allclose(_adjust(x, 3, torch.tensor([0.1, -0.2]).view(-1, 1, 1, 1))[1], F.adjust_hue(x[1], -0.2), atol=1e-6)
    gray = batched_op(v2.RandomGrayscale(p=1.0))(x, generator())
    assert torch.allclose(gray, F.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6)
    assert torch.equal(batched_op(v2.RandomInvert(p=1.0))(x, generator()), 1.0 - x)


def test_flip_and_erasing_rates_follow_p():
    x = torch.arange(16.0).view(1, 1, 1, 16).expand(4000, 1, 1, 16).contiguous()
    flipped = batched_op(v2.RandomHorizontalFlip(p=0.3))(x, generator())
    rate = (flipped[:, 0, 0, 0] == 15).float().mean().item()
    assert abs(rate - 0.3) < 0.03
    erased = batched_op(v2.RandomErasing(p=0.4, value=-1))(torch.zeros(4000, 1, 8, 8), generator())
    assert abs((erased == -1).flatten(1).any(1).float().mean().item() - 0.4) < 0.03


def test_padded_random_crop_takes_every_offset_uniformly():
    x = torch.arange(64.0).view(1, 1, 8, 8).expand(5000, 1, 8, 8).contiguous()
    out = batched_op(v2.RandomCrop(8, padding=2))(x, generator())
    padded = torch.nn.functional.pad(x[0], (2, 2, 2, 2))
    offsets = {}
    for crop in out[:500]:
        matches = [(i, j) for i in range(5) for j in range(5) if torch.equal(padded[:, i:i + 8, j:j + 8], crop)]
        assert matches
        offsets[matches[0]] = offsets.get(matches[0], 0) + 1
    assert len(offsets) == 25 and max(offsets.values()) < 45


def test_color_jitter_brightness_factor_range():
    x = torch.full((3000, 3, 4, 4), 0.5)
    out = batched_op(v2.ColorJitter(brightness=0.4))(x, generator())
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert abs(factors.mean().item() - 1.0) < 0.02 and abs(factors.std().item() - 0.8 / math.sqrt(12)) < 0.02


def test_random_resized_crop_shapes_and_full_crop():
    x = torch.rand(6, 3, 20, 20)
    out = batched_op(v2.RandomResizedCrop(8))(x, generator())
    assert out.shape == (6, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    whole = batched_op(v2.RandomResizedCrop(20, scale=(1.0, 1.0), ratio=(1.0, 1.0)))(x, generator())
    assert torch.allclose(whole, x, atol=1e-6)


def test_fakedata_cache_is_the_same_in_every_fresh_build():
    from dltool.config.load import config_from_data

    spec = {"data": {"dataset": {"name": "FakeData", "size": 64, "image_size": [3, 6, 6], "num_classes": 4},
                     "cache": "ram", "batch_size": 16, "transforms": {"train": ["ToTensor"], "eval": ["ToTensor"]}}}
    config = config_from_data(spec)
    batches = []
    for _ in range(2):
        loader = make_loader(build_data(config).train, config.data, train=True, seed=1)
        assert isinstance(loader, MemoryLoader)
        loader.set_epoch(1)
        batches.append(list(loader))
    plain = config_from_data({**spec, "data": {**spec["data"], "cache": "none"}})
    loader = make_loader(build_data(plain).train, plain.data, train=True, seed=1)
    loader.set_epoch(1)
    for (x1, y1), (x2, y2), (x3, y3) in zip(*batches, loader):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1, x3) and torch.equal(y1, y3)


def test_crop_and_flip_run_fused_on_the_uint8_images():
    from dltool.data.memory import plan

    crop, mirror = v2.RandomCrop(6, padding=2, fill=9), v2.RandomHorizontalFlip(0.5)
    once, raw_ops, ops = plan(v2.Compose([v2.Resize(6), crop, mirror, v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]))
    assert len(once) == 2 and len(raw_ops) == 1 and ops == []  # Resize, and the crop's padding
    images = torch.randint(0, 256, (300, 2, 6, 6), dtype=torch.uint8)
    fused = raw_ops[0](once[1](images), generator(3))
    g = generator(3)
    apart = batched_op(mirror)(batched_op(crop)(images.float(), g), g)  # 0..255 floats: the fill is 9 in both
    assert fused.dtype == torch.uint8 and torch.equal(fused.float(), apart)
    assert (fused == 9).any() and (fused[:, :, 2:4, 2:4] != images[:, :, 2:4, 2:4]).any()
    _, raw_ops, ops = plan(v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), crop, mirror]))
    assert raw_ops == [] and len(ops) == 1  # after the conversion: on floats, still one gather


def test_crops_picked_straight_from_the_cache_equal_crops_of_the_batch():
    from dltool.data.batched import Crop

    cache = torch.randint(0, 256, (50, 3, 9, 7), dtype=torch.uint8)
    index = torch.tensor([4, 4, 49, 0, 17])
    for flip_p in (None, 0.5):
        crop = Crop(5, 4, flip_p)
        assert torch.equal(crop.select(crop.hold(cache), index, generator(2)), crop(cache[index], generator(2)))
    whole = Crop(9, 7, 1.0)
    picked = whole.select(whole.hold(cache), index, generator(2))  # the whole image, every one mirrored
    assert torch.equal(picked, cache[index].flip(-1))
