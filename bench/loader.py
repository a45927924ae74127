"""Loader throughput: dltool's in-memory path against a per-sample torchvision DataLoader, as ratios
measured in one process.

    python bench/loader.py [--repeat N] [--threads T]

Two datasets, each read for whole epochs (shuffled, training transforms), alternating the two
loaders N times; the median samples/s of each counts:
- digits: the embedded 1,797 digits with configs/quickstart.yaml's train transforms (Resize 16,
  RandomAffine, ToTensor, Normalize), batch 32;
- cifar: 5,000 CIFAR-sized images (FakeData, 3x32x32) with padded random crop, horizontal flip,
  ToTensor, Normalize, batch 128.
The baseline is what a user writes by hand: a dataset holding the decoded images (as CIFAR10 holds
its arrays) whose __getitem__ makes a PIL image and applies the torchvision v2 pipeline, read by
torch's DataLoader (num_workers=0, shuffle=True). The in-memory path's one-off cache build is
reported apart. Target: ratio >= 50x on both.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dltool.config.load import config_from_data, load_config
from dltool.data import build_data, make_loader
from dltool.data.memory import MemoryLoader

TARGET = 50.0
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
CIFAR_TRAIN = [{"RandomCrop": {"size": 32, "padding": 4}}, {"RandomHorizontalFlip": 0.5}, "ToTensor",
               {"Normalize": {"mean": CIFAR_MEAN, "std": CIFAR_STD}}]


class HeldImages(Dataset):
    """Decoded uint8 images (N, H, W[, C]) made into PIL images and transformed one at a time."""

    def __init__(self, pixels: np.ndarray, targets: list[int], transform: Any):
        self.pixels, self.targets, self.transform = pixels, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.pixels[index])), self.targets[index]


def epoch_rate(loader: Any, epoch: int) -> float:
    """Samples per second over one full epoch of `loader`."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    samples, start = 0, time.perf_counter()
    for x, _ in loader:
        samples += x.shape[0]
    return samples / (time.perf_counter() - start)


def setup(config: Any) -> tuple[MemoryLoader, DataLoader, float]:
    """(in-memory loader, per-sample DataLoader, seconds the cache took to build) for the train split."""
    train = build_data(config, splits=("train",)).train
    start = time.perf_counter()
    held = make_loader(train, config.data, train=True, seed=0)
    built = time.perf_counter() - start
    assert isinstance(held, MemoryLoader)
    pixels = np.stack([np.asarray(train.raw_image(i)) for i in range(len(train))])
    baseline = DataLoader(HeldImages(pixels, train.targets, train.transform), batch_size=config.data.batch_size,
                          shuffle=True, num_workers=0)
    return held, baseline, built


def compare(name: str, config: Any, repeat: int) -> float:
    held, baseline, built = setup(config)
    epoch_rate(held, 0)
    fast, slow = [], []
    for epoch in range(1, repeat + 1):
        slow.append(epoch_rate(baseline, epoch))
        fast.append(epoch_rate(held, epoch))
    ratio = statistics.median(fast) / statistics.median(slow)
    verdict = "ok" if ratio >= TARGET else "under target"
    print(f"{name:<7} DataLoader {statistics.median(slow):>9.0f} samples/s   in-memory {statistics.median(fast):>10.0f} "
          f"samples/s   ratio {ratio:.0f}x (target >= {TARGET:.0f}x: {verdict}); cache built in {built:.2f} s",
          flush=True)
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    digits = load_config("configs/quickstart.yaml", ["data.cache=ram", "data.val_split=0.2"])
    cifar = config_from_data({"data": {
        "dataset": {"name": "FakeData", "size": 5000, "image_size": [3, 32, 32], "num_classes": 10},
        "batch_size": 128, "cache": "ram", "transforms": {"train": CIFAR_TRAIN}}})
    compare("digits", digits, args.repeat)
    compare("cifar", cifar, args.repeat)
    print(f"{args.threads} torch thread(s)")


if __name__ == "__main__":
    main()
