"""What a dataset builder returns: its raw splits (images before transforms) and how to split them.

A builder registered in DATASETS returns a `Source`; `build_data` loads the splits it needs from
it, scans image files, splits off validation data and applies the transforms.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class RawSplit:
    """One split before transforms.

    `items[i]` gives (PIL image or image tensor, target), unless `paths` is set: then the items are
    image files that `build_data` scans and decodes. `keys[i]` names sample i in a stored split
    (an int index, or a path relative to the dataset root). `modes` holds the PIL mode of each
    scanned file.
    """

    items: Sequence[Any] | None
    targets: list
    keys: list[Hashable]
    classes: list[str]
    paths: list[str] | None = None
    modes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class Source:
    """A dataset: the splits it has (loaded on demand) and whether it is classification or regression.

    `images` is False for datasets of feature vectors (LinearData): their samples get no channel
    conversion and no image transforms.
    """

    name: str
    loaders: dict[str, Callable[[], RawSplit]]
    task: str = "classification"
    root: str | None = None
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    images: bool = True

    def has(self, split: str) -> bool:
        return split in self.loaders

    def load(self, split: str) -> RawSplit:
        return self.loaders[split]()


def stratified_split(targets: Sequence[Any], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): `fraction` of every class to val, chosen by a generator seeded with `seed`.

    Per-class counts are rounded (largest remainder) so that the val total is round(fraction * n),
    and no class gives all its samples to val. Regression targets split unstratified.
    """
    rng = np.random.default_rng(seed)
    n = len(targets)
    if n and not _is_label(targets[0]):
        order = rng.permutation(n)
        cut = int(round(fraction * n))
        return sorted(order[cut:].tolist()), sorted(order[:cut].tolist())
    by_class: dict[Any, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(t, []).append(i)
    quotas = _quotas({c: len(ix) for c, ix in by_class.items()}, fraction, int(round(fraction * n)))
    train, val = [], []
    for label in sorted(by_class, key=str):
        members = np.asarray(by_class[label])[rng.permutation(len(by_class[label]))]
        val.extend(members[: quotas[label]].tolist())
        train.extend(members[quotas[label]:].tolist())
    return sorted(train), sorted(val)


def _is_label(value: Any) -> bool:
    return isinstance(value, (int, np.integer, str))


def _quotas(counts: dict, fraction: float, total: int) -> dict:
    """Largest-remainder rounding of fraction * count per class, summing to `total`."""
    exact = {c: fraction * k for c, k in counts.items()}
    quotas = {c: int(np.floor(x)) for c, x in exact.items()}
    spare = total - sum(quotas.values())
    for c in sorted(exact, key=lambda c: (quotas[c] - exact[c], str(c))):
        if spare <= 0:
            break
        if quotas[c] < counts[c] - 1:
            quotas[c] += 1
            spare -= 1
    return quotas


def class_counts(targets: Sequence[Any], classes: Sequence[str]) -> dict[str, int]:
    """Samples per class name, in class order (empty for regression)."""
    if not classes:
        return {}
    counts = Counter(int(t) for t in targets)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}
