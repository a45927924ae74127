"""The in-memory path: a small dataset decoded once into one uint8 tensor, augmented a batch at a time.

The leading deterministic steps of a pipeline (Resize, CenterCrop, Pad, Grayscale) run once per
image while the cache is built, exactly as the per-sample path runs them; the rest (conversion to
float, Normalize, and the random transforms that `dltool.data.batched` knows) run on whole batches
on the training device. Per-sample order and sharding come from the same EpochSampler as the
per-sample path; random parameters come from a generator seeded with (seed, epoch).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dltool.data.batched import BUILDERS, MOVE_PIXELS, Crop, Op, batched_ops, unpadded
from dltool.data.photos import PhotoCache
from dltool.data.sampler import EpochSampler, epoch_seed
from dltool.data.scan import DecodedFiles
from dltool.data.transforms import ToTensor, to_unit_float
from dltool.errors import DataError

# Float pixels augmented at once at most (see MemoryLoader._batches_per_chunk)
CHUNK_BYTES = 2**20
ONCE = (v2.Resize, v2.CenterCrop, v2.Pad, v2.Grayscale, v2.RGB, v2.Identity)
CONVERSIONS = (ToTensor, v2.ToImage, v2.PILToTensor, v2.ToPureTensor)


def plan(transform: Any) -> tuple[list, list[Op], list[Op]] | str:
    """(steps run once per image, batched ops on the uint8 images, batched ops on the float ones)
    for a pipeline, or the name of the step that has no batched form.

    The steps before the conversion to float that only move pixels (crop, flip) run on the uint8
    batch: a quarter of the memory traffic, and the same result, as the conversion commutes with them.
    A first RandomCrop's fixed padding joins the steps run once, so the cache holds padded images.
    """
    steps = list(transform.transforms) if isinstance(transform, v2.Compose) else [transform]
    once = []
    while len(once) < len(steps) and isinstance(steps[len(once)], ONCE):
        once.append(steps[len(once)])
    rest = steps[len(once):]
    if rest and type(rest[0]) is v2.RandomCrop and _moves_pixels(rest[0]) and unpadded(rest[0]) is not None:
        pad, crop = unpadded(rest[0])  # pad once in the cache; each batch then only picks its crops
        once, rest = [*once, pad], [crop, *rest[1:]]
    raw = []
    while len(raw) < len(rest) and _moves_pixels(rest[len(raw)]):
        raw.append(rest[len(raw)])
    converted = [s for s in rest[len(raw):] if not (isinstance(s, CONVERSIONS) or _is_float_scaling(s))]
    raw_ops, ops = batched_ops(raw), batched_ops(converted)
    if isinstance(raw_ops, str) or isinstance(ops, str):
        return raw_ops if isinstance(raw_ops, str) else ops
    return once, raw_ops, ops


def _moves_pixels(step: Any) -> bool:
    if isinstance(step, v2.RandomCrop):
        return isinstance(step.fill, (int, float)) and float(step.fill).is_integer()  # a uint8 fill
    return isinstance(step, MOVE_PIXELS)


def _is_float_scaling(step: Any) -> bool:
    if isinstance(step, v2.ConvertImageDtype):
        return step.dtype == torch.float32
    if isinstance(step, v2.ToDtype):
        return step.dtype == torch.float32 and step.scale
    return False


def decode_all(dataset: Any, once: Sequence[Any], budget_bytes: int | None, copies: int = 1) -> torch.Tensor | str:
    """Every image of `dataset` after the `once` steps as one uint8 tensor (N, C, H, W), or why not
    (`copies` of it must fit `budget_bytes`)."""
    first = _decode(dataset, 0, once)
    if isinstance(first, str):
        return first
    size = len(dataset) * first.numel() * copies
    if budget_bytes is not None and size > budget_bytes:
        return f"the decoded dataset needs {size / 2**20:.0f} MB, over data.cache_budget_mb"
    images = torch.empty((len(dataset), *first.shape), dtype=torch.uint8)
    images[0] = first
    decoded, pool = _decoder(dataset, once)
    try:
        for i, image in enumerate(decoded, 1):
            if isinstance(image, str) or image.shape != first.shape:
                return image if isinstance(image, str) else "images differ in size after the fixed transforms"
            images[i] = image
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return images


def _decoder(dataset: Any, once: Sequence[Any]) -> tuple[Iterator[torch.Tensor | str], ThreadPoolExecutor | None]:
    """Images 1.. of `dataset` in order, and the thread pool decoding them (None: decoded in this thread).

    Only image files go to threads: PIL reads and decodes them without the GIL. Any other dataset
    decodes in order on this thread, because its items may draw from the global RNG (FakeData
    seeds it per image), which threads would interleave.
    """
    indices = range(1, len(dataset))
    if not isinstance(getattr(dataset, "items", None), (DecodedFiles, PhotoCache)):
        return (_decode(dataset, k, once) for k in indices), None
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    return pool.map(lambda k: _decode(dataset, k, once), indices), pool


def _decode(dataset: Any, index: int, once: Sequence[Any]) -> torch.Tensor | str:
    image = dataset.raw_image(index)
    for step in once:
        image = step(image)
    if isinstance(image, Image.Image):
        return F.pil_to_tensor(image)
    if image.dtype != torch.uint8:
        return "the images are not 8-bit"
    return image.as_subclass(torch.Tensor)


class MemoryLoader:
    """Iterable of (x, y) batches on `device` from a uint8 image cache; same protocol as Loader."""

    def __init__(self, dataset: Any, images: torch.Tensor, ops: list[Op], sampler: EpochSampler, *,
                 batch_size: int, drop_last: bool, seed: int, device: torch.device, batch_transform: Any = None,
                 raw_ops: Sequence[Op] = ()):
        self.dataset, self.raw_ops = dataset, list(raw_ops)
        # a first crop picks straight from what it holds: the images, and their mirror images if it flips
        self.crop = first_crop(self.raw_ops)
        self.held = self.crop.hold(images.to(device)) if self.crop is not None else images.to(device)
        self.images = self.held[:len(images)]
        self.targets = _targets_tensor(dataset.targets).to(device)
        self.ops, self.sampler = ops, sampler
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed
        self.device, self.batch_transform = device, batch_transform
        self.epoch = 0
        self.path = ""  # which loading path this is and why, in one line (set by memory_loader)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the batches of `epoch` (a pure function of the seed and `epoch`)."""
        self.epoch = epoch
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.tensor(self.sampler.order(), device=self.device)
        rank = self.sampler.rank  # each rank's batches get their own random crops and flips
        generator = torch.Generator(device=self.device).manual_seed(epoch_seed(self.seed, self.epoch, 5, rank))
        per_chunk = self._batches_per_chunk()
        for start in range(0, len(self), per_chunk):
            stop = min(start + per_chunk, len(self))
            index = order[start * self.batch_size: stop * self.batch_size]
            x, y = self._augment(index, generator), self.targets.index_select(0, index)
            for step in range(start, stop):
                part = slice((step - start) * self.batch_size, (step - start + 1) * self.batch_size)
                xb, yb = x[part], y[part]
                if self.batch_transform is not None:
                    with torch.random.fork_rng(devices=[]):
                        torch.random.default_generator.manual_seed(epoch_seed(self.seed, self.epoch, 4 + step, rank))
                        xb, yb = self.batch_transform(xb, yb)
                yield xb, yb

    def _batches_per_chunk(self) -> int:
        """How many batches to augment at once: every op costs a fixed few microseconds a call,
        more than the work itself on small images, so small batches go through together (up to
        CHUNK_BYTES of float pixels, which stay in the CPU's cache)."""
        batch_bytes = self.batch_size * self.images[0].numel() * 4
        return max(1, CHUNK_BYTES // max(1, batch_bytes))

    def _augment(self, index: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The images at `index` through the batched ops, as float32."""
        with _one_thread(self.device):
            if self.crop is not None:  # the images and their crops in one gather
                x = self.crop.select(self.held, index, generator)
            else:
                x = self.images.index_select(0, index)  # N, C, H, W uint8
            for op in self.raw_ops[1:] if self.crop is not None else self.raw_ops:
                x = op(x, generator)
            x = to_unit_float(x)  # in [0, 1], as ToTensor gives
            for op in self.ops:
                x = op(x, generator)
        return x


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run small CPU batch ops on one thread: waking the intra-op pool for each costs more than the
    op itself, and on a busy machine a parallel region can wait milliseconds for a descheduled thread."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def first_crop(raw_ops: Sequence[Op]) -> Crop | None:
    """The Crop that starts the uint8 ops, if one does (the loader then picks crops from its cache)."""
    return raw_ops[0] if raw_ops and isinstance(raw_ops[0], Crop) else None


def _targets_tensor(targets: Sequence[Any]) -> torch.Tensor:
    if targets and isinstance(targets[0], float):
        return torch.tensor(targets, dtype=torch.float32)
    return torch.tensor([int(t) for t in targets], dtype=torch.long)


def memory_loader(dataset: Any, data: Any, sampler: EpochSampler, *, train: bool, seed: int, device: str,
                  batch_transform: Any) -> MemoryLoader | str:
    """A MemoryLoader when data.cache allows it and the pipeline has a batched form, else why not.

    Raises:
        DataError: data.cache is "ram" but the dataset or its transforms cannot be held that way.
    """
    planned = plan(dataset.transform) if hasattr(dataset, "raw_image") else "the dataset"
    if isinstance(planned, str):
        return _refuse(data, f"{planned} has no batched form (batched: {', '.join(t.__name__ for t in BUILDERS)})")
    once, raw_ops, ops = planned
    budget = None if data.cache == "ram" else data.cache_budget_mb * 2**20
    crop = first_crop(raw_ops)
    images = decode_all(dataset, once, budget, copies=2 if crop is not None and crop.flip_p is not None else 1)
    if isinstance(images, str):
        return _refuse(data, images)
    batch_size = data.batch_size if train else (data.eval_batch_size or data.batch_size)
    held = MemoryLoader(dataset, images, ops, sampler, batch_size=batch_size, drop_last=train and data.drop_last,
                        seed=seed, device=torch.device(device), batch_transform=batch_transform, raw_ops=raw_ops)
    source = getattr(getattr(dataset, "items", None), "note", "") or "samples read from the dataset"
    held.path = (f"data: {source}; then held as one {images.numel() / 2**20:,.1f} MB uint8 tensor on {device} "
                 "and transformed a batch at a time in this process (it fits data.cache_budget_mb)")
    return held


def _refuse(data: Any, reason: str) -> str:
    if data.cache == "ram":
        raise DataError(f"data.cache: ram: cannot hold this dataset in memory: {reason}; use cache: auto or none")
    return reason
