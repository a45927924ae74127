"""The user's own Dataset class (registered with `@register.dataset`) as a Source like the built-ins.

A class whose `__init__` takes `train` (torchvision's convention) is built with train=True for the
train split and train=False for the validation split; one that takes `split` is built with
"train", "val" and "test"; any other is built once and `data.val_split` splits it. Its items are
(image, label) with the image a PIL image, a numpy array or a tensor; `classes` names the classes.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from dltool.config.registry import DATASETS
from dltool.data.sources import RawSplit, Source
from dltool.errors import DataError, first_line


def user_source(cls: type, kwargs: dict) -> Source:
    """A Source whose splits construct `cls` with `kwargs` (plus `train`/`split` when it takes them)."""
    params = inspect.signature(cls).parameters
    if "train" in params:
        splits = {"train": {"train": True}, "val": {"train": False}}
    elif "split" in params:
        splits = {name: {"split": name} for name in ("train", "val", "test")}
    else:
        splits = {"train": {}}
    loaders = {name: _loader(cls, kwargs, extra) for name, extra in splits.items()}
    root = kwargs.get("root")
    return Source(cls.__name__, loaders, root=str(root) if isinstance(root, str) else None)


def _loader(cls: type, kwargs: dict, extra: dict) -> Callable[[], RawSplit]:
    def load() -> RawSplit:
        try:
            dataset = cls(**kwargs, **extra)
            items = UserItems(dataset)
            targets = _targets(dataset, items)
        except (TypeError, ValueError, OSError, KeyError, IndexError, RuntimeError) as exc:
            reason = first_line(exc)
            split = f" with {', '.join(f'{k}={v!r}' for k, v in extra.items())}" if extra else ""
            raise DataError(f"{cls.__name__}{split}: {reason}{DATASETS.where(cls.__name__, exc)}") from None
        return RawSplit(items, targets, list(range(len(items))), _classes(dataset, targets))

    return load


class UserItems:
    """The user's dataset, item for item, with numpy images turned into what the transforms take and
    labels into ints."""

    def __init__(self, dataset: Any):
        self.dataset = dataset
        self.length = len(dataset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(f"{type(self.dataset).__name__}[{index}]: returns {type(item).__name__}; a dataset "
                            "item must be (image, label)")
        image, label = item
        return as_image(image), int(label)


def as_image(image: Any) -> Any:
    """A PIL image stays; a uint8 array (H, W) or (H, W, 3|4) becomes one; other arrays and tensors
    become a (C, H, W) tensor."""
    if isinstance(image, np.ndarray):
        if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
            return Image.fromarray(image)
        image = torch.from_numpy(np.ascontiguousarray(image))
        if image.dim() == 3 and image.shape[2] in (1, 3) and image.shape[0] not in (1, 3):
            image = image.permute(2, 0, 1)
    if isinstance(image, torch.Tensor) and image.dim() == 2:
        image = image.unsqueeze(0)
    return image


def _targets(dataset: Any, items: UserItems) -> list[int]:
    for attr in ("targets", "labels"):
        found = getattr(dataset, attr, None)
        if found is not None and not callable(found) and len(found) == len(items):
            values = found.tolist() if hasattr(found, "tolist") else list(found)
            return [int(v) for v in values]
    return [items[i][1] for i in range(len(items))]


def _classes(dataset: Any, targets: list[int]) -> list[str]:
    classes = getattr(dataset, "classes", None)
    n = max(targets, default=-1) + 1
    if isinstance(classes, (list, tuple)) and len(classes) >= n and all(isinstance(c, str) for c in classes):
        return list(classes)
    return [str(i) for i in range(n)]


def check_pickles(items: Any, num_workers: int) -> None:
    """Worker processes get the dataset pickled: the user's must pickle.

    Raises:
        DataError: it does not; one line says so and what to do.
    """
    if not isinstance(items, UserItems) or num_workers == 0:
        return
    try:
        pickle.dumps(items.dataset)
    except Exception as exc:  # pickling raises TypeError, AttributeError, PicklingError, ...
        name = type(items.dataset).__name__
        raise DataError(f"data.num_workers: {num_workers} sends the dataset to worker processes, but {name} does "
                        f"not pickle ({type(exc).__name__}: {first_line(exc) if str(exc).strip() else ''}); keep "
                        "open files and lambdas out of its attributes, or set data.num_workers: 0") from None
