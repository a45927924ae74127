"""Loader: batches of (x, y) whose order and augmentation are a pure function of (seed, epoch).

The sampler hands each sample index out with its own seed, drawn from a generator seeded with
(seed, epoch); the dataset seeds the RNG with it before the random transforms. So the batches of an
epoch do not depend on the number of workers, on what ran before, or on the global RNG, and a run
resumed at an epoch boundary sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
import random
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from dltool.config.registry import TRANSFORMS, signature
from dltool.config.spec import Spec
from dltool.data.sampler import EpochSampler, epoch_seed
from dltool.data.usercode import check_pickles
from dltool.errors import DataError, RegistryError


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from its torch seed (which the loader derives from its own)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class Loader:
    """Iterable of (x, y) batches; `len()` is batches per epoch; call `set_epoch(e)` before each epoch."""

    def __init__(self, dataset: Any, loader: DataLoader, sampler: EpochSampler, seed: int,
                 batch_transform: Any = None, path: str = ""):
        self.dataset = dataset
        self.path = path  # which loading path this is and why, in one line
        self.loader = loader
        self.sampler = sampler
        self.seed = seed
        self.batch_transform = batch_transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass the batches of `epoch` (a pure function of the seed and `epoch`)."""
        self.epoch = epoch
        self.sampler.set_epoch(epoch)
        self.loader.generator.manual_seed(epoch_seed(self.seed, epoch, 3, self.sampler.rank))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.loader)
        in_process = self.loader.num_workers == 0
        for step in range(len(self.loader)):
            if in_process:
                # the dataset seeds the RNG per sample; keep the caller's RNG (dropout, init) untouched
                with torch.random.fork_rng(devices=[]):
                    x, y = next(batches)
            else:
                x, y = next(batches)
            if self.batch_transform is not None:
                with torch.random.fork_rng(devices=[]):
                    seed = epoch_seed(self.seed, self.epoch, 4 + step, self.sampler.rank)
                    torch.random.default_generator.manual_seed(seed)
                    x, y = self.batch_transform(x, y)
            yield x, y


def make_loader(dataset: Any, data: Any, *, train: bool, seed: int, device: str = "cpu",
                rank: int = 0, world_size: int = 1) -> Loader:
    """A Loader over `dataset` with the knobs of `data` (a DataConfig).

    With data.cache auto (when the decoded dataset fits data.cache_budget_mb and its transforms have
    a batched form) or ram, the dataset is held as one tensor on `device` and augmented per batch
    (`dltool.data.memory.MemoryLoader`, same protocol); otherwise a per-sample DataLoader is used.

    Args:
        dataset: a dataset of a DataBundle.
        data: the DataConfig (batch sizes, workers, sampler, batch transforms, ...).
        train: shuffle/balance, drop_last and batch transforms apply only when True.
        seed: the run's seed; with the epoch it fixes order and augmentation.
        device: where batches go; pin_memory "auto" pins for CUDA.
        rank, world_size: this process's shard of every epoch.
    """
    sampler = EpochSampler(dataset.targets, shuffle=train and data.shuffle,
                           balanced=train and data.sampler == "balanced", seed=seed,
                           rank=rank, world_size=world_size, with_seeds=train, pad=train)
    classes = len(getattr(dataset, "classes", []))
    batch_transform = build_batch_transform(data.batch_transforms, classes) if train else None
    not_held = "data.cache: none"
    if data.cache != "none":
        from dltool.data.memory import memory_loader

        held = memory_loader(dataset, data, sampler, train=train, seed=seed, device=device,
                             batch_transform=batch_transform)
        if not isinstance(held, str):
            return held
        not_held = held
    workers, why = worker_count(dataset, data)
    check_pickles(getattr(dataset, "items", None), workers)
    pin = str(device).startswith("cuda") and data.pin_memory in ("auto", True)  # pinned pages help CUDA copies only
    loader = DataLoader(
        dataset, batch_size=data.batch_size if train else (data.eval_batch_size or data.batch_size),
        sampler=sampler, num_workers=workers, drop_last=train and data.drop_last,
        pin_memory=pin, persistent_workers=data.persistent_workers and workers > 0,
        worker_init_fn=seed_worker if workers else None,
        generator=torch.Generator().manual_seed(epoch_seed(seed, 0, 3)),
    )
    source = getattr(getattr(dataset, "items", None), "note", "") or "samples read from the dataset"
    path = (f"data: {source}; transformed one sample at a time in {workers} worker process"
            f"{'' if workers == 1 else 'es'} ({why}), not held as one tensor ({not_held})")
    return Loader(dataset, loader, sampler, seed, batch_transform, path)


def worker_count(dataset: Any, data: Any) -> tuple[int, str]:
    """(DataLoader workers, why): data.num_workers when set, else one per CPU but the one that
    trains; 0 for the user's own dataset when it cannot be sent to worker processes."""
    if data.num_workers is not None:
        return data.num_workers, "data.num_workers"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = max(0, cpus - 1)
    try:
        check_pickles(getattr(dataset, "items", None), workers)
    except DataError:
        return 0, "the dataset does not pickle, so it stays in this process"
    return workers, f"{cpus} CPUs, one left for training; data.num_workers sets it"


def build_batch_transform(specs: Sequence[Any], num_classes: int) -> Any:
    """MixUp/CutMix (or any batch transform) with num_classes filled in; several: one per batch.
    Containers nest as torchvision's own recipe writes them (`RandomChoice: {transforms: [CutMix,
    MixUp]}`): each child is built here too, with num_classes filled in."""
    if not specs:
        return None
    built = [_batch_transform(spec, num_classes) for spec in specs]
    if len(built) == 1:
        return built[0]
    from torchvision.transforms import v2

    return v2.RandomChoice(built)


def _batch_transform(spec: Any, num_classes: int) -> Any:
    from dltool.data.transforms import CONTAINERS

    if TRANSFORMS.canonical(spec.name, spec) in CONTAINERS:
        args, kwargs = list(spec.args), dict(spec.kwargs)
        if "transforms" in kwargs:
            kwargs["transforms"] = _batch_children(spec, kwargs["transforms"], "transforms", num_classes)
        elif args:
            args[0] = _batch_children(spec, args[0], "0", num_classes)
        return TRANSFORMS.build(Spec(spec.name, tuple(args), kwargs, key=spec.key, marks=spec.marks))
    target = TRANSFORMS.get(spec.name, spec)
    extra = {"num_classes": num_classes} if "num_classes" in signature(target).parameters else {}
    return TRANSFORMS.build(spec, **extra)


def _batch_children(spec: Any, value: Any, key: str, num_classes: int) -> list:
    if not isinstance(value, list):
        raise RegistryError(spec.error(f"{key} must be a list of batch transforms, like [CutMix, MixUp]"))
    return [_batch_transform(spec.child(item, f"{key}.{i}"), num_classes) for i, item in enumerate(value)]
