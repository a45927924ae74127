"""The DATASETS registry: the embedded `Digits`, the synthetic `LinearData`, torchvision's classification datasets by their own
names and arguments, and the file datasets (`ImageFolder`, `ImageList`, in `dltool.data.folders`).

Each builder returns a `Source`; `build_data` turns it into transformed train/val/test datasets.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
from typing import Any, Callable
from urllib.error import URLError

import numpy as np
import torch
import torchvision.datasets as tvd
from PIL import Image
from torchvision.transforms.functional import to_pil_image

from dltool.config.registry import DATASETS
from dltool.data import folders  # noqa: F401  (registers ImageFolder and ImageList)
from dltool.data.idx import GZIP_AWARE
from dltool.data.sources import RawSplit, Source
from dltool.errors import DataError, first_line

# Datasets that take `train: bool`; the others below take `split:` with these values per split.
TRAIN_FLAG = ("MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "CIFAR10", "CIFAR100", "USPS")
SPLIT_ARG = {
    "SVHN": {"train": "train", "test": "test"},
    "STL10": {"train": "train", "test": "test"},
    "Flowers102": {"train": "train", "val": "val", "test": "test"},
    "Food101": {"train": "train", "test": "test"},
    "DTD": {"train": "train", "val": "val", "test": "test"},
    "FER2013": {"train": "train", "test": "test"},
    "GTSRB": {"train": "train", "test": "test"},
    "OxfordIIITPet": {"train": "trainval", "test": "test"},
    "Country211": {"train": "train", "val": "valid", "test": "test"},
    "FGVCAircraft": {"train": "train", "val": "val", "test": "test"},
    "StanfordCars": {"train": "train", "test": "test"},
    "Imagenette": {"train": "train", "val": "val"},
    "PCAM": {"train": "train", "val": "val", "test": "test"},
}
SINGLE = ("FakeData", "SEMEION", "EuroSAT", "Caltech256", "SUN397")
# Arguments dltool sets itself: the split, and the transforms it applies after channel conversion.
OWN_ARGS = {"train", "split", "transform", "target_transform", "transforms", "loader"}


FAKE_MAX = 1_000_000


class FakeData(tvd.FakeData):
    """torchvision's FakeData, image for image, each drawn from a generator of its own.

    torchvision's seeds the global RNG per image with `torch.manual_seed` (which also records a
    stack trace for lazy CUDA seeding, costly per sample) and so cannot be read from threads.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        shape = self.image_size
        if not (isinstance(shape, (list, tuple)) and len(shape) in (2, 3) and all(_is_count(s) for s in shape)
                and (len(shape) == 2 or shape[0] <= 4)):
            raise ValueError(f"image_size must be [C, H, W] (C 1..4) or [H, W] of positive integers; got {shape!r}")
        if not _is_count(self.size) or self.size > FAKE_MAX:
            raise ValueError(f"size must be an integer 1..{FAKE_MAX} (each label is drawn up front); got {self.size!r}")
        if not _is_count(self.num_classes):
            raise ValueError(f"num_classes must be an integer >= 1; got {self.num_classes!r}")
        if not (type(self.random_offset) is int and 0 <= self.random_offset < 2 ** 62):
            raise ValueError(f"random_offset must be an integer >= 0; got {self.random_offset!r}")

    def _draw(self, index: int) -> tuple[torch.Tensor, int]:
        if index >= len(self):
            raise IndexError(f"FakeData index {index} out of range ({len(self)} images)")
        generator = torch.Generator().manual_seed(index + self.random_offset)
        image = torch.randn(*self.image_size, generator=generator)
        return image, int(torch.randint(0, self.num_classes, size=(1,), generator=generator)[0])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, target = self._draw(index)
        image = to_pil_image(image)
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    @functools.cached_property
    def targets(self) -> list[int]:
        return [self._draw(i)[1] for i in range(len(self))]


READERS = {**GZIP_AWARE, "FakeData": FakeData}


class DigitsImages:
    """The scikit-learn digits as 8x8 'L' images, ink bright on dark like MNIST."""

    def __init__(self) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        # values are 0..16; scale to the 0..255 range of an 8-bit image
        self.pixels = np.rint(digits.images * 255.0 / 16.0).astype(np.uint8)
        self.targets = [int(t) for t in digits.target]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.pixels[index], mode="L"), self.targets[index]


@DATASETS.register()
def Digits() -> Source:
    """The 1,797 8x8 handwritten digits shipped inside scikit-learn (no download), classes "0".."9"."""

    def load() -> RawSplit:
        images = DigitsImages()
        return RawSplit(images, images.targets, list(range(len(images))), [str(i) for i in range(10)])

    return Source("Digits", {"train": load})


class LinearPoints:
    """Samples of y = X w + b + noise: (features, a float tensor (num_features,), target float)."""

    def __init__(self, num_samples: int, weight: torch.Tensor, bias: float, noise: float, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.features = torch.randn(num_samples, len(weight), generator=generator)
        targets = self.features @ weight + bias + noise * torch.randn(num_samples, generator=generator)
        self.targets = targets.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        return self.features[index], self.targets[index]


@DATASETS.register()
def LinearData(num_samples: int = 1000, num_features: int = 2, noise: float = 0.01, seed: int = 0,
               weight: list | None = None, bias: float = 4.2) -> Source:
    """Synthetic linear regression, y = X w + b + N(0, noise^2), X ~ N(0, 1); `weight` defaults to
    values drawn from N(0, 2^2) with `seed`. A regression task on feature vectors (no images)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise DataError(f"LinearData: num_samples must be an integer >= 2; got {num_samples!r}")
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise DataError(f"LinearData: num_features must be an integer >= 1; got {num_features!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise >= 0:
        raise DataError(f"LinearData: noise must be a number >= 0; got {noise!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63 - 1:
        raise DataError(f"LinearData: seed must be an integer >= 0; got {seed!r}")
    if not _is_number(bias) or not all(_is_number(w) for w in (weight if isinstance(weight, list) else [])):
        raise DataError(f"LinearData: bias and weight must be numbers; got bias {bias!r}, weight {weight!r}")
    if weight is None:
        true_weight = 2 * torch.randn(num_features, generator=torch.Generator().manual_seed(seed + 1))
    elif isinstance(weight, list) and len(weight) == num_features:
        true_weight = torch.tensor(weight, dtype=torch.float32)
    else:
        raise DataError(f"LinearData: weight must be a list of num_features ({num_features}) numbers; got {weight!r}")

    def load() -> RawSplit:
        points = LinearPoints(num_samples, true_weight, float(bias), float(noise), seed)
        return RawSplit(points, points.targets, list(range(num_samples)), [])

    return Source("LinearData", {"train": load}, task="regression", images=False)


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 < value < 2 ** 62


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _vision_builder(cls: type) -> Callable[..., Source]:
    """A builder for the torchvision dataset `cls`, taking its arguments except split and transforms."""
    name = cls.__name__
    sig = inspect.signature(cls)
    params = [p for p in sig.parameters.values() if p.name not in OWN_ARGS or (name == "EMNIST" and p.name == "split")]
    params = [p if p.kind == p.VAR_KEYWORD else
              p.replace(kind=p.KEYWORD_ONLY, **({"default": "data"} if p.name == "root" else {})) for p in params]

    reader = READERS.get(name, cls)

    def build(**kwargs: Any) -> Source:
        loaders = {split: _split_loader(reader, kwargs, extra) for split, extra in _split_args(name).items()}
        return Source(name, loaders, root=str(kwargs.get("root", "data")))

    build.__signature__ = sig.replace(parameters=params)
    build.__name__ = name
    build.__doc__ = f"torchvision.datasets.{name}: " + (inspect.getdoc(cls) or "").split("\n")[0]
    return build


def _split_args(name: str) -> dict[str, dict]:
    if name in TRAIN_FLAG:
        return {"train": {"train": True}, "test": {"train": False}}
    if name in SPLIT_ARG:
        return {ours: {"split": theirs} for ours, theirs in SPLIT_ARG[name].items()}
    return {"train": {}}


def _split_loader(cls: type, kwargs: dict, extra: dict) -> Callable[[], RawSplit]:
    def load() -> RawSplit:
        args = {**kwargs, **extra}
        if "root" in inspect.signature(cls).parameters:
            args.setdefault("root", "data")
            if not isinstance(args["root"], str):
                raise DataError(f"{cls.__name__}: root must be a folder path; got {args['root']!r}")
        dataset = _construct(cls, args)
        try:
            targets = _targets(dataset)
        except (TypeError, ValueError, RuntimeError) as exc:  # arguments torchvision takes unchecked (FakeData)
            raise DataError(f"{cls.__name__}: its arguments do not work: {first_line(exc)}") from None
        return RawSplit(dataset, targets, list(range(len(targets))), _classes(dataset, targets))

    return load


def _construct(cls: type, kwargs: dict) -> Any:
    root = kwargs.get("root")
    before = _entries(root) if isinstance(root, str) else None
    try:
        return cls(**kwargs)
    except (URLError, OSError) as exc:
        _remove_new(root, before)
        raise DataError(_missing_message(cls, kwargs, exc)) from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{cls.__name__}: its arguments do not work: {first_line(exc)}") from None
    except RuntimeError as exc:
        text = str(exc).lower()
        if "not found" in text or "download" in text or "corrupted" in text:
            _remove_new(root, before)
            raise DataError(_missing_message(cls, kwargs, exc)) from None
        raise


def _entries(root: str) -> set[str] | None:
    """What stands in `root` and one level below it (None: no root yet): where a download puts its
    folders (root/MNIST/raw) and archives, listed without walking a large dataset beneath."""
    if not os.path.isdir(root):
        return None
    found = set()
    for name in os.listdir(root):
        path = os.path.join(root, name)
        found.add(path)
        if os.path.isdir(path) and not os.path.islink(path):
            found.update(os.path.join(path, inner) for inner in os.listdir(path))
    return found


def _remove_new(root: Any, before: set[str] | None) -> None:
    """Remove what a failed download created in `root` (all of it when the root is new), so no empty
    data/MNIST/raw is left to look like a dataset."""
    if not isinstance(root, str) or not os.path.isdir(root):
        return
    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for path in sorted((_entries(root) or set()) - before):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            with contextlib.suppress(OSError):
                os.unlink(path)


def _missing_message(cls: type, kwargs: dict, exc: BaseException) -> str:
    name = cls.__name__
    root = str(kwargs.get("root", "data"))
    reason = first_line(exc).rstrip(":")
    if kwargs.get("download"):
        how, then = "the download failed", "or run again where there is network"
    else:
        how, then = "download is off", "or set download: true where there is network"
    where = "" if os.path.isabs(root) else f" (that is {os.path.abspath(root)})"
    return f"{name}: dataset files not found under {root!r}{where} and {how} ({reason}); {_file_hint(cls, root)}, {then}"


def _file_hint(cls: type, root: str) -> str:
    name = cls.__name__
    resources = getattr(cls, "resources", None)
    if isinstance(resources, dict):
        resources = [r for pair in resources.values() for r in pair]
    if isinstance(resources, list):
        files = ", ".join(os.path.basename(str(r[0])) for r in resources)
        return f"put {files} into {os.path.join(root, name, 'raw')}{os.sep}"
    if name == "EMNIST":
        return f"put the idx files of {cls.url} into {os.path.join(root, name, 'raw')}{os.sep}"
    if isinstance(getattr(cls, "split_list", None), dict):
        files = ", ".join(entry[1] for entry in cls.split_list.values())
        return f"put {files} into {root}{os.sep}"
    if hasattr(cls, "filename") and hasattr(cls, "base_folder"):
        return (f"put {cls.filename} (from {cls.url}) into {root}{os.sep} "
                f"or extract it to {os.path.join(root, cls.base_folder)}{os.sep}")
    if isinstance(getattr(cls, "filename", None), str):
        return f"put {cls.filename} into {root}{os.sep}"
    return f"put the files that torchvision.datasets.{name} expects under {root}{os.sep}"


def _targets(dataset: Any) -> list:
    for attr in ("targets", "labels", "_labels", "y"):
        found = getattr(dataset, attr, None)
        if found is not None and not callable(found) and len(found) == len(dataset):
            values = found.tolist() if hasattr(found, "tolist") else list(found)
            return [int(v) for v in values]
    if hasattr(dataset, "_samples") and len(dataset._samples) == len(dataset):
        return [int(s[1]) for s in dataset._samples]
    return [int(dataset[i][1]) for i in range(len(dataset))]


def _classes(dataset: Any, targets: list) -> list[str]:
    classes = getattr(dataset, "classes", None)
    n = max(targets, default=-1) + 1
    if isinstance(classes, (list, tuple)) and len(classes) >= n and all(isinstance(c, str) for c in classes):
        return list(classes)
    n = max(n, int(getattr(dataset, "num_classes", 0) or 0))
    return [str(i) for i in range(n)]


def _register_torchvision() -> None:
    for name in (*TRAIN_FLAG, *SPLIT_ARG, *SINGLE):
        cls = getattr(tvd, name, None)
        if cls is not None:
            DATASETS.register(name, _vision_builder(cls))


_register_torchvision()
