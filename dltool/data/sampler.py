"""The epoch sampler: which sample indices one rank sees in one epoch, and the seed each sample's
augmentation draws from, a pure function of (seed, epoch). Both loaders (the DataLoader path in
`loaders` and the in-memory path in `memory`) use it, so it lives apart from either.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int, stream: int = 0, rank: int = 0) -> int:
    """A 63-bit seed that depends on (seed, epoch, stream) only (and the rank, for ranks above 0)."""
    state = np.random.SeedSequence([seed, epoch, stream, *([rank] if rank else [])]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class EpochSampler(Sampler):
    """Indices for one epoch (shuffled, balanced or in order; sharded by rank), each with a seed.

    Sharded, rank r takes every world_size-th index from r. With `pad` (training) the epoch is
    first wrapped around to a multiple of world_size, so every rank runs the same number of
    steps; without it (validation) each sample is seen exactly once, by one rank.
    """

    def __init__(self, targets: Sequence[Any], *, shuffle: bool, balanced: bool, seed: int,
                 rank: int = 0, world_size: int = 1, with_seeds: bool = True, pad: bool = True):
        self.targets = list(targets)
        self.shuffle, self.balanced, self.seed = shuffle, balanced, seed
        self.rank, self.world_size, self.with_seeds, self.pad = rank, world_size, with_seeds, pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        """This epoch's sample indices for this rank."""
        return self._shard(self._epoch_order()).tolist()

    def _epoch_order(self) -> torch.Tensor:
        """This epoch's indices for all ranks (padded to a multiple of world_size when `pad`)."""
        n = len(self.targets)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        if self.balanced:
            order = torch.multinomial(balanced_weights(self.targets), n, replacement=True, generator=generator)
        elif self.shuffle:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1 and self.pad:
            per_rank = -(-n // self.world_size)
            order = order.repeat(-(-per_rank * self.world_size // max(n, 1)))[: per_rank * self.world_size]
        return order

    def _shard(self, values: torch.Tensor) -> torch.Tensor:
        return values[self.rank:: self.world_size] if self.world_size > 1 else values

    def __iter__(self) -> Iterator[Any]:
        order = self._epoch_order()
        if not self.with_seeds:
            return iter(self._shard(order).tolist())
        # seeds are drawn for the whole epoch, then sharded: each sample's augmentation differs from rank to rank
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 1))
        seeds = torch.randint(0, 2**62, (len(order),), generator=generator)
        return iter(zip(self._shard(order).tolist(), self._shard(seeds).tolist()))

    def __len__(self) -> int:
        n = len(self.targets)
        if self.world_size == 1 or self.pad:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))


def balanced_weights(targets: Sequence[Any]) -> torch.Tensor:
    """Per-sample weight 1 / (samples of its class): every class is drawn equally often."""
    labels = [int(t) for t in targets]
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[t] for t in labels], dtype=torch.double)
