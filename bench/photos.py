"""Phone photos: `dltool train` with its shipped defaults against a plain torchvision loop, as ratios
measured in one run.

    python bench/photos.py [--count 400] [--epochs 3] [--rounds 2] [--small]

A folder of `--count` generated 3000x2250 JPEGs in two classes (train/ and val/, 80/20; kept in
/tmp/dltool-bench-photos for the next run) is trained on by
- dltool: `dltool train photos.yaml` in a fresh process, nothing but the dataset, transforms, model,
  batch size and epochs set (decoding, cache and workers are dltool's defaults);
- plain: the loop a user writes (`python bench/photos.py --plain`): torchvision ImageFolder and
  DataLoader(num_workers=2, shuffle=True) with the same transforms, model, optimizer, batch size and
  epochs, validation after every epoch and the best model saved.
The two alternate `--rounds` times. Reported per round: train samples/s (train steps only), whole
process seconds, final validation accuracy, and peak memory (PSS summed over the process and its
workers, sampled every 0.2 s). Goals: >= 2x the plain loop's throughput, <= 0.8x its whole time,
accuracy within a few points.

Then `dltool predict` on the whole folder against a plain batched script (DataLoader, 2 workers,
batches of 64, the eval transforms): images/s over the whole process.

`--small` adds the small-image folders (200 32x32 PNGs; 200 JPEGs of 160-400 px): dltool's defaults
against the same run with the previous defaults (data.decode=full data.photo_cache_mb=0
data.num_workers=0), whole process seconds and samples/s; goal: no slower.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path("/tmp/dltool-bench-photos")
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
TRAIN = [{"RandomResizedCrop": {"size": 112, "scale": [0.35, 1.0]}}, "RandomHorizontalFlip", "ToTensor",
         {"Normalize": {"mean": MEAN, "std": STD}}]
EVAL = [{"Resize": 128}, {"CenterCrop": 112}, "ToTensor", {"Normalize": {"mean": MEAN, "std": STD}}]
LAYERS = [{"Conv2d": {"out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1}}, "BatchNorm2d", "ReLU",
          {"Conv2d": {"out_channels": 32, "kernel_size": 3, "stride": 2, "padding": 1}}, "BatchNorm2d", "ReLU",
          {"Conv2d": {"out_channels": 64, "kernel_size": 3, "stride": 2, "padding": 1}}, "ReLU",
          {"AdaptiveAvgPool2d": 1}, "Flatten", {"Linear": {"out_features": 2}}]
BATCH = 32


def photo(rng: np.random.Generator, cls: int, size: tuple[int, int]) -> np.ndarray:
    """A photo-like picture (w, h): soft shapes over a gradient, sensor-like noise; class 1 is
    tinted cool and class 0 warm, with a bright disc on the side of its class."""
    w, h = size
    small = rng.normal(0, 40, (h // 64 + 2, w // 64 + 2, 3))
    from PIL import Image

    base = np.asarray(Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC),
                      np.float32)
    tint = np.array([30, 0, -30] if cls == 0 else [-30, 0, 30], np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    cx = w * (0.3 if cls == 0 else 0.7) + rng.normal(0, w * 0.05)
    cy = h * rng.uniform(0.3, 0.7)
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.15 * h) ** 2)[..., None] * 60
    noise = rng.normal(0, 5, (h, w, 1))
    return np.clip(base + tint + disc + noise, 0, 255).astype(np.uint8)


def make_folder(root: Path, count: int, sizes: list[tuple[int, int]], fmt: str = "jpg") -> Path:
    """`count` images in root/{train,val}/{warm,cool}; made once, reused when complete."""
    done = root / "done.txt"
    if done.is_file() and done.read_text() == str(count):
        return root
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        cls = i % 2
        split = "val" if i % 5 == 4 else "train"
        folder = root / split / ("warm", "cool")[cls]
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(photo(rng, cls, sizes[i % len(sizes)]))
        image.save(folder / f"{i:04d}.{fmt}", **({"quality": 92} if fmt == "jpg" else {}))
    done.write_text(str(count))
    return root


def config_text(folder: Path, epochs: int) -> str:
    return json.dumps({"data": {"dataset": {"name": "ImageFolder", "root": str(folder)}, "batch_size": BATCH,
                                "transforms": {"train": TRAIN, "eval": EVAL}},
                       "model": {"layers": LAYERS}, "optimizer": {"name": "Adam", "lr": 0.003},
                       "train": {"epochs": epochs, "device": "cpu"}})


def tree_pss(pid: int) -> int:
    """PSS bytes of `pid` and every process below it (shared pages counted once overall)."""
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def timed(command: list[str], cwd: Path) -> tuple[float, int, str]:
    """(wall seconds, peak PSS bytes, stdout) of one process run to its end."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def watch() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], tree_pss(process.pid))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, err = process.communicate()
    seconds = time.perf_counter() - start
    watcher.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{err[-2000:]}")
    return seconds, peak[0], out + err


def run_dltool(work: Path, folder: Path, epochs: int, name: str, overrides: list[str] = ()) -> dict:
    cfg = work / "photos.yaml"
    cfg.write_text(config_text(folder, epochs))
    seconds, peak, output = timed([sys.executable, "-m", "dltool", "train", str(cfg), "--runs-dir",
                                   str(work / "runs"), "--name", name, *overrides], ROOT)
    summary = json.loads((work / "runs" / name / "summary.json").read_text())
    line = next((x for x in output.splitlines() if x.startswith("data: ")), "")
    return {"seconds": seconds, "peak_mb": peak / 2**20, "samples_per_second": summary["train_samples_per_second"],
            "val_accuracy": summary["final"]["val_accuracy"], "path": line}


def run_plain(work: Path, folder: Path, epochs: int) -> dict:
    seconds, peak, output = timed([sys.executable, __file__, "--plain", str(folder), "--epochs", str(epochs),
                                   "--out", str(work / "plain.pt")], ROOT)
    result = json.loads(output.strip().splitlines()[-1])
    return {"seconds": seconds, "peak_mb": peak / 2**20, **result}


def plain(folder: Path, epochs: int, out: Path) -> None:
    """The loop a user writes from the tutorials; prints one JSON line of its figures."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    torch.manual_seed(0)
    norm = T.Normalize(MEAN, STD)
    train_tf = T.Compose([T.RandomResizedCrop(112, scale=(0.35, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(128), T.CenterCrop(112), T.ToTensor(), norm])
    train_set = datasets.ImageFolder(str(folder / "train"), train_tf)
    val_set = datasets.ImageFolder(str(folder / "val"), eval_tf)
    train_loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, num_workers=2)
    val_loader = DataLoader(val_set, batch_size=BATCH, num_workers=2)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    loss_fn = nn.CrossEntropyLoss()
    train_seconds, samples, best, accuracy = 0.0, 0, -1.0, 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, y in train_loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
            samples += len(y)
        train_seconds += time.perf_counter() - start
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val_loader:
                correct += (model(x).argmax(1) == y).sum().item()
        accuracy = correct / len(val_set)
        if accuracy > best:
            best = accuracy
            torch.save(model.state_dict(), out)
    print(json.dumps({"samples_per_second": samples / train_seconds, "val_accuracy": accuracy}))


def plain_predict(folder: Path) -> None:
    """A plain batched predict script: every JPEG under `folder` through the eval transforms, 2
    DataLoader workers, batches of 64; prints the number of images."""
    import torch
    from PIL import Image
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    files = sorted(folder.rglob("*.jpg"))
    tf = T.Compose([T.Resize(128), T.CenterCrop(112), T.ToTensor(), T.Normalize(MEAN, STD)])
    model = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, 2)).eval()
    loader = DataLoader(files, batch_size=64, num_workers=2,
                        collate_fn=lambda paths: torch.stack([tf(Image.open(p).convert("RGB")) for p in paths]))
    done = 0
    with torch.no_grad():
        for x in loader:
            done += len(model(x).softmax(1))
    print(done)


def compare_predict(work: Path, folder: Path, run: Path) -> None:
    count = len(list(folder.rglob("*.jpg")))
    ours, _, _ = timed([sys.executable, "-m", "dltool", "predict", str(folder), "--model", str(run),
                        "--format", "csv"], ROOT)
    theirs, _, _ = timed([sys.executable, __file__, "--plain-predict", str(folder)], ROOT)
    print(f"predict {count} photos: {count / ours:.1f} vs {count / theirs:.1f} images/s, whole process "
          f"({theirs / ours:.2f}x)", flush=True)


def compare_phone(work: Path, count: int, epochs: int, rounds: int) -> None:
    folder = make_folder(CACHE / f"phone-{count}", count, [(3000, 2250), (2250, 3000)])
    rows = []
    for r in range(rounds):
        pair = {}
        for side in (("plain", "dltool") if r % 2 == 0 else ("dltool", "plain")):
            pair[side] = (run_plain(work, folder, epochs) if side == "plain"
                          else run_dltool(work, folder, epochs, f"phone-{r}"))
        rows.append(pair)
        d, p = pair["dltool"], pair["plain"]
        print(f"round {r + 1}: throughput {d['samples_per_second']:.1f} vs {p['samples_per_second']:.1f} samples/s "
              f"({d['samples_per_second'] / p['samples_per_second']:.2f}x); whole {d['seconds']:.1f} vs "
              f"{p['seconds']:.1f} s ({d['seconds'] / p['seconds']:.2f}x); val accuracy {d['val_accuracy']:.3f} vs "
              f"{p['val_accuracy']:.3f}; peak memory {d['peak_mb']:.0f} vs {p['peak_mb']:.0f} MB", flush=True)
    print(rows[-1]["dltool"]["path"])
    speed = statistics.median(r["dltool"]["samples_per_second"] / r["plain"]["samples_per_second"] for r in rows)
    whole = statistics.median(r["dltool"]["seconds"] / r["plain"]["seconds"] for r in rows)
    print(f"phone photos, median of {rounds}: throughput {speed:.2f}x (goal >= 2), whole process {whole:.2f}x "
          f"(goal <= 0.8)")
    compare_predict(work, folder, work / "runs" / f"phone-{rounds - 1}")


def compare_small(work: Path, epochs: int) -> None:
    previous = ["data.decode=full", "data.photo_cache_mb=0", "data.num_workers=0"]
    sizes = {"png32": [(32, 32)], "jpg160-400": [(160, 120), (400, 300), (300, 400), (240, 180)]}
    for name, dims in sizes.items():
        fmt = "png" if name.startswith("png") else "jpg"
        folder = make_folder(CACHE / name, 200, dims, fmt)
        now = run_dltool(work, folder, epochs, f"{name}-now")
        before = run_dltool(work, folder, epochs, f"{name}-before", previous)
        print(f"{name}: whole {now['seconds']:.1f} vs {before['seconds']:.1f} s "
              f"({now['seconds'] / before['seconds']:.2f}x); throughput {now['samples_per_second']:.0f} vs "
              f"{before['samples_per_second']:.0f} samples/s "
              f"({now['samples_per_second'] / before['samples_per_second']:.2f}x) (goal: whole <= 1.0x)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--plain", type=Path)
    parser.add_argument("--plain-predict", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.plain_predict is not None:
        plain_predict(args.plain_predict)
        return
    if args.plain is not None:
        plain(args.plain, args.epochs, args.out)
        return
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    with tempfile.TemporaryDirectory() as work:
        compare_phone(Path(work), args.count, args.epochs, args.rounds)
        if args.small:
            compare_small(Path(work), args.epochs)


if __name__ == "__main__":
    main()
