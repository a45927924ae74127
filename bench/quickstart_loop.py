"""configs/quickstart.yaml written as a PyTorch course teaches it: a Dataset of PIL images with
torchvision transforms, a DataLoader, the same CNN, loss, optimizer and one-cycle schedule, the
validation split measured after every epoch and the best weights saved with torch.save.

    python bench/quickstart_loop.py [--epochs N] [--json]

Prints training samples per second (time in training steps, data loading included, like
summary.json) and the best validation accuracy.
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
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2


class Digits(Dataset):
    def __init__(self, pixels: np.ndarray, targets: np.ndarray, transform: v2.Transform):
        self.pixels, self.targets, self.transform = pixels, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.pixels[i], mode="L")), int(self.targets[i])


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))


def loaders(seed: int) -> tuple[DataLoader, DataLoader]:
    digits = load_digits()
    pixels = np.rint(digits.images * 255 / 16).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(pixels))
    cut = int(0.8 * len(pixels))
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.3], [0.4])]
    train_tf = v2.Compose([v2.Resize((16, 16)), v2.RandomAffine(degrees=10, translate=(0.1, 0.1)), *tail])
    eval_tf = v2.Compose([v2.Resize((16, 16)), *tail])
    train = Digits(pixels[order[:cut]], digits.target[order[:cut]], train_tf)
    val = Digits(pixels[order[cut:]], digits.target[order[cut:]], eval_tf)
    return DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=256)


def train(epochs: int, seed: int = 0, save_to: Path | None = None) -> dict:
    torch.manual_seed(seed)
    train_loader, val_loader = loaders(seed)
    model = cnn()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=epochs * len(train_loader))
    seconds, samples, best = 0.0, 0, -1.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, y in train_loader:
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            samples += len(y)
        seconds += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val_loader)
        score = correct / len(val_loader.dataset)
        if score > best and save_to is not None:
            torch.save(model.state_dict(), save_to)
        best = max(best, score)
    return {"samples_per_second": samples / seconds, "best_val_accuracy": best}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(args.epochs, save_to=Path(tmp) / "best.pt")
    if args.json:
        print(json.dumps(result))
    else:
        print(f"quickstart loop: {result['samples_per_second']:.0f} samples/s, "
              f"best val accuracy {result['best_val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
