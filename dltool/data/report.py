"""`dltool data`: what a config's data section gives (classes, counts, bad files, sample shape),
per-channel statistics for Normalize, and a PNG grid of augmented training samples."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image, ImageDraw

from dltool.config.registry import DATASETS, TRANSFORMS
from dltool.data.build import build_data
from dltool.data.bundle import DataBundle
from dltool.data.sources import class_counts
from dltool.data.transform_lists import transform_specs
from dltool.data.transforms import build_pipeline, to_float_tensor
from dltool.errors import DataError

TILE = 96


def inspect_data(config: Any, *, stats: bool = False, show: int = 0, out: Path | None = None,
                 write: Callable[[Path, bytes], Any] | None = None) -> dict:
    """Build the config's data and describe it as plain data.

    Args:
        config: a validated Config.
        stats: add per-channel mean/std of the train split after the eval transforms without
            Normalize (the numbers to put in Normalize).
        show: write a grid of this many augmented train samples to `out`.
        out: the PNG path for `show` (default: <config stem>-samples.png).
        write: how the PNG's bytes reach `out` (the CLI passes dltool.store.writing.write_atomic).

    Returns:
        {"decode": {"short_side", "text"} (null for datasets that are no image files), "dataset", "task",
        "classes", "input_shape", "channels", "splits": {name: {"samples", "counts", "reading" (how its
        files are read: cached or not, and why)}}, "split_method", "bad_files": [{"path", "reason"}]}
        plus "stats" and "grid".
    """
    wanted = ("train", "val", "test") if DATASETS.build(config.data.dataset).has("test") else ("train", "val")
    bundle = build_data(config, splits=wanted)
    report = summarize(bundle, wanted)
    if (stats or show) and len(bundle.input_shape) < 2:
        raise DataError(f"{bundle.dataset_name}: --stats and --show describe images; "
                        f"this dataset holds feature vectors of shape {list(bundle.input_shape)}")
    if stats:
        mean, std = channel_stats(bundle.train, unnormalized_eval(config))
        report["stats"] = {"mean": mean, "std": std}
    if show:
        path = Path(out) if out else Path(f"{config.stem}-samples.png")
        write(path, grid_png(bundle, show, config.seed))
        report["grid"] = str(path)
    return report


def summarize(bundle: DataBundle, splits: tuple[str, ...]) -> dict:
    """Classes and counts per split, bad files and the sample shape, as plain data."""
    per_split = {}
    for name in splits:
        dataset = getattr(bundle, name)
        per_split[name] = {"samples": len(dataset), "counts": class_counts(dataset.targets, bundle.classes)}
        note = getattr(getattr(dataset, "items", None), "note", "")
        if note:
            per_split[name]["reading"] = note
    decode = bundle.decode
    return {
        "decode": None if decode is None else {"short_side": decode.short_side, "text": decode.describe()},
        "dataset": bundle.dataset_name, "task": bundle.task, "classes": bundle.classes,
        "input_shape": list(bundle.input_shape), "channels": bundle.channels, "splits": per_split,
        "split_method": bundle.split.get("method"),
        "bad_files": [{"path": p, "reason": r} for p, r in bundle.bad_files],
    }


def unnormalized_eval(config: Any) -> Any:
    """The eval pipeline without its Normalize steps: what the numbers for Normalize are taken on."""
    _, eval_specs = transform_specs(config.data.transforms)
    return build_pipeline([s for s in eval_specs if TRANSFORMS.canonical(s.name, s) != "Normalize"])


def channel_stats(dataset: Any, pipeline: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and std over every pixel of the dataset's images after `pipeline`."""
    total = squares = None
    pixels = 0
    for i in range(len(dataset)):
        x = to_float_tensor(pipeline(dataset.raw_image(i))).double().flatten(1)  # C, H*W
        total = x.sum(1) if total is None else total + x.sum(1)
        squares = (x * x).sum(1) if squares is None else squares + (x * x).sum(1)
        pixels += x.shape[1]
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp_min(0).sqrt()
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]


def grid_png(bundle: DataBundle, count: int, seed: int) -> bytes:
    """A PNG of `count` augmented train samples (train transforms, fixed seed) with their labels."""
    dataset = bundle.train
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(dataset), generator=generator)[:count].tolist()
    seeds = torch.randint(0, 2**62, (len(picks),), generator=generator).tolist()
    columns = min(8, len(picks))
    rows = -(-len(picks) // columns)
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    with torch.random.fork_rng(devices=[]):
        for n, (index, sample_seed) in enumerate(zip(picks, seeds)):
            x, target = dataset[(index, sample_seed)]
            left, top = (n % columns) * TILE, (n // columns) * (TILE + 14)
            sheet.paste(_tile(x), (left, top))
            draw.text((left + 3, top + TILE), _label(bundle, target), fill="black")
    png = io.BytesIO()
    sheet.save(png, format="PNG")
    return png.getvalue()


def _tile(x: torch.Tensor) -> Image.Image:
    """A (C, H, W) float tensor, stretched to 0..255 (it may be normalized), as a TILE-sized image."""
    x = x.detach().float()
    x = (x - x.min()) / (x.max() - x.min()).clamp_min(1e-8)
    array = (x * 255).round().byte()
    image = Image.fromarray(array[0].numpy(), "L") if array.shape[0] == 1 else \
        Image.fromarray(array[:3].permute(1, 2, 0).contiguous().numpy(), "RGB")
    image.thumbnail((TILE, TILE))
    scale = max(1, TILE // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST).convert("RGB")


def _label(bundle: DataBundle, target: Any) -> str:
    if bundle.classes:
        return bundle.classes[int(target)][:14]
    return f"{float(target):.3g}"

