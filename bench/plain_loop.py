"""The best hand-written loop for the overhead benchmark: LeNet on the embedded digits at 28x28.

The whole dataset is decoded and resized once and held as tensors; each step indexes a batch.
Prints training samples per second (time in training steps only, like summary.json).

    python bench/plain_loop.py [--epochs N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn


def lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, 10))


def digits_28() -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    pixels = np.round(digits.images * 255 / 16).astype(np.uint8)
    images = [np.asarray(Image.fromarray(p, mode="L").resize((28, 28), Image.BILINEAR)) for p in pixels]
    x = torch.from_numpy(np.stack(images)).unsqueeze(1).float().div_(255)  # N, 1, 28, 28
    return x, torch.from_numpy(digits.target).long()


def train(epochs: int, batch_size: int = 64, seed: int = 0) -> float:
    torch.manual_seed(seed)
    x, y = digits_28()
    model, loss_fn = lenet(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds, samples = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(x))
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(idx)
        seconds += time.perf_counter() - start
    return samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    print(f"plain loop: {train(args.epochs):.0f} samples/s")


if __name__ == "__main__":
    main()
