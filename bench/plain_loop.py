"""The best hand-written loop for the LeNet-28 benchmark: LeNet on the embedded digits at 28x28.

The whole dataset is decoded and resized once and held as tensors; each step indexes a batch.
Like the run it is compared with (bench/lenet_digits28.yaml), it trains on a seeded 80% split,
measures the other 20% after every epoch and saves the best weights with torch.save. Prints
training samples per second (time in training steps only, like summary.json) and the best
validation accuracy.

    python bench/plain_loop.py [--epochs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

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


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + 256]).argmax(1) == y[i:i + 256]).sum()) for i in range(0, len(x), 256))
    model.train()
    return correct / len(x)


def train(epochs: int, batch_size: int = 64, seed: int = 0, save_to: Path | None = None) -> dict:
    torch.manual_seed(seed)
    x, y = digits_28()
    order = torch.randperm(len(x))
    cut = int(0.8 * len(x))
    x_train, y_train, x_val, y_val = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    model, loss_fn = lenet(), nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seconds, samples, best = 0.0, 0, -1.0
    for _ in range(epochs):
        shuffled = torch.randperm(len(x_train))
        start = time.perf_counter()
        for i in range(0, len(x_train), batch_size):
            idx = shuffled[i:i + batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(idx)
        seconds += time.perf_counter() - start
        score = accuracy(model, x_val, y_val)
        if score > best and save_to is not None:
            torch.save(model.state_dict(), save_to)
        best = max(best, score)
    return {"samples_per_second": samples / seconds, "best_val_accuracy": best}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(args.epochs, save_to=Path(tmp) / "best.pt")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"plain loop: {result['samples_per_second']:.0f} samples/s, "
              f"best val accuracy {result['best_val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
