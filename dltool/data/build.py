"""build_data: dataset spec + transforms + split -> DataBundle of transformed datasets."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from dltool.config.registry import DATASETS
from dltool.config.spec import Spec, located
from dltool.data.bundle import NO_VAL, DataBundle
from dltool.data.draft import decode_size
from dltool.data.photos import Budget
from dltool.data.scan import scan_split
from dltool.data.sources import RawSplit, Source, stratified_split
from dltool.data.subset import subset_classes
from dltool.data.transform_lists import transform_specs
from dltool.data.transforms import build_pipeline, to_float_tensor
from dltool.errors import DataError, first_line

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
MODES = {1: "L", 3: "RGB"}


class TransformedDataset(Dataset):
    """A subset of a raw split with the channel conversion and a transform pipeline applied.

    An index may come as (index, seed): the global torch RNG is then seeded with `seed` before the
    random transforms run, which makes augmentation a pure function of the loader's (seed, epoch).
    """

    def __init__(self, raw: RawSplit, indices: Sequence[int], transform: Any, mode: str):
        self.items = raw.items
        self.indices = list(indices)
        self.transform = transform
        self.mode = mode
        self.classes = list(raw.classes)
        self.targets = [raw.targets[i] for i in self.indices]
        self.keys = [raw.keys[i] for i in self.indices]
        self.ids = [raw.paths[i] for i in self.indices] if raw.paths else [f"index {k}" for k in self.keys]

    def __len__(self) -> int:
        return len(self.indices)

    def raw_image(self, index: int) -> Any:
        """Sample `index` decoded and converted to the channel mode, before any transform."""
        image, _ = self.items[self.indices[index]]
        return convert_mode(image, self.mode)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, Any]:
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        image, target = self.items[self.indices[index]]
        if seed is not None:
            torch.random.default_generator.manual_seed(seed)  # CPU only: the CUDA RNG stays the caller's
        if isinstance(target, float):
            target = torch.tensor(target, dtype=torch.float32)
        return to_float_tensor(self.transform(convert_mode(image, self.mode))), target


def convert_mode(image: Any, mode: str) -> Any:
    """A PIL image in `mode` ('L' or 'RGB'); tensors are returned as they are."""
    if isinstance(image, Image.Image) and image.mode != mode:
        return image.convert(mode)
    return image


def build_data(config: Any, splits: Sequence[str] = ("train", "val"), split_state: dict | None = None) -> DataBundle:
    """Build the named splits of the configured dataset, transformed, with the split recorded.

    Args:
        config: a validated Config.
        splits: which of "train", "val", "test" to build (the others are None).
        split_state: the `split` of an earlier bundle (e.g. from a checkpoint): repeats that split.

    Returns:
        A DataBundle.

    Raises:
        DataError: the dataset is missing, empty, or lacks a requested split.
        RegistryError: an unknown dataset or transform, or a wrong argument.
    """
    data = config.data
    source: Source = DATASETS.build(data.dataset)
    decode = decode_size(data)
    reading = Reading(data.max_image_pixels, decode.short_side, Budget(data.photo_cache_mb))
    raws, split = _select(source, splits, data, config.seed, split_state, reading, config.marks)
    if data.classes is not None:
        raws = subset_classes(raws, data.classes, config.marks)
    if source.images:
        channels = _channels(config, raws)
        train_tf, eval_tf = _pipelines(data.transforms)
    else:
        channels = 1
        train_tf = eval_tf = _no_transforms(data.transforms, data.dataset)
    mode = MODES[channels]
    built = {name: TransformedDataset(raw, idx, train_tf if name == "train" else eval_tf, mode)
             for name, (raw, idx) in raws.items()}
    first_raw, _ = next(iter(raws.values()))
    sample = next(d for d in built.values() if len(d))
    input_shape = _first_sample_shape(sample, train_tf, eval_tf)
    return DataBundle(
        train=built.get("train"), val=built.get("val"), test=built.get("test"),
        classes=list(first_raw.classes), task=source.task, input_shape=input_shape, split=split,
        bad_files=list(source.bad_files), channels=channels, dataset_name=source.name,
        decode=decode if any(raw.paths for raw, _ in raws.values()) else None,
    )


def _select(source: Source, splits: Sequence[str], data: Any, seed: int,
            state: dict | None, reading: Reading, marks: Any = None) -> tuple[dict[str, tuple[RawSplit, list[int]]], dict]:
    """(raw split, indices) per requested split, and the plain-data record of the split used."""
    spec = data.dataset
    unknown = [s for s in splits if s not in ("train", "val", "test")]
    if unknown:
        raise DataError(f"unknown split {unknown[0]!r}; allowed: train, val, test")
    chosen: dict[str, tuple[RawSplit, list[int]]] = {}
    split: dict = {"method": "dataset"}
    own_val = source.has("val") and (state is None or state.get("method") != "val_split")
    for name in splits:
        if name == "test" or (name == "val" and own_val) or (name == "train" and own_val):
            chosen[name] = _whole(source, name, spec, reading)
    if own_val:
        split = _own_record(chosen, state, spec)
    elif "train" in splits or "val" in splits:
        base = _whole(source, "train", spec, reading)[0]
        train_idx, val_idx, split = _val_split(base, data.val_split, seed, state, spec)
        for name, idx in (("train", train_idx), ("val", val_idx)):
            if name == "val" and data.val_split == 0:  # val_split 0: no validation
                continue
            if name in splits and not idx:  # the fraction is to blame, wherever it was written
                raise DataError(located(f"{data.val_split} of {len(base)} samples leaves the {name} split empty; "
                                        "choose a val_split that leaves samples in both", "data.val_split", marks))
            if name in splits:
                chosen[name] = (base, idx)
    for name, (raw, idx) in chosen.items():
        _check_usable(name, raw, idx, spec)
    if not any(name in chosen for name in splits):
        raise DataError(NO_VAL)
    return {name: chosen[name] for name in splits if name in chosen}, split


class Reading(NamedTuple):
    """How the files of a build are read: the pixel limit, the decode size and the cache budget."""

    max_pixels: int
    short_side: int | None
    budget: Budget


def _whole(source: Source, name: str, spec: Spec, reading: Reading) -> tuple[RawSplit, list[int]]:
    if not source.has(name):
        have = ", ".join(source.loaders)
        raise DataError(spec.error(f"has no {name} split (it has: {have})"))
    raw = source.load(name)
    if raw.items is None:
        raw, bad = scan_split(raw, reading.max_pixels, reading.short_side, reading.budget)
        source.bad_files.extend(bad)
        _check_scanned(name, raw, bad, spec)
    return raw, list(range(len(raw)))


def _check_scanned(name: str, raw: RawSplit, bad: list, spec: Spec) -> None:
    if not raw.keys:
        detail = f" ({len(bad)} unreadable, first: {bad[0][0]}: {bad[0][1]})" if bad else ""
        raise DataError(spec.error(f"the {name} split has no usable image file{detail}"))
    if raw.classes and name == "train":
        present = set(raw.targets)
        empty = [c for i, c in enumerate(raw.classes) if i not in present]
        if empty:
            raise DataError(spec.error(f"class {empty[0]!r} has no usable image in the train split"))


def _val_split(base: RawSplit, fraction: float, seed: int, state: dict | None,
               spec: Spec) -> tuple[list[int], list[int], dict]:
    if state is not None and state.get("method") == "val_split":
        train_idx, val_idx = _positions(base, state["train"], state["val"], spec=spec)
        fraction, seed = state.get("val_split", fraction), state.get("seed", seed)
    else:
        train_idx, val_idx = stratified_split(base.targets, fraction, seed)
    record = {"method": "val_split", "val_split": fraction, "seed": seed,
              "train": [_plain(base.keys[i]) for i in train_idx], "val": [_plain(base.keys[i]) for i in val_idx]}
    return train_idx, val_idx, record


def _own_record(chosen: dict, state: dict | None, spec: Spec) -> dict:
    """A dataset with its own splits: file datasets record (and, given a state, reuse) their paths."""
    record: dict = {"method": "dataset"}
    for name in ("train", "val"):
        if name not in chosen or not chosen[name][0].paths:
            continue
        raw, indices = chosen[name]
        if state is not None and state.get("method") == "dataset" and name in state:
            indices = _positions(raw, state[name], spec=spec)[0]
            chosen[name] = (raw, indices)
        record[name] = [raw.keys[i] for i in indices]
    return record


def _positions(raw: RawSplit, *stored: list, spec: Spec) -> list[list[int]]:
    """The indices in `raw` of each stored list of keys.

    Raises:
        DataError: a stored sample is no longer there (or no longer readable).
    """
    position = {key: i for i, key in enumerate(raw.keys)}
    missing = [k for keys in stored for k in keys if k not in position]
    if missing:
        raise DataError(spec.error(f"{len(missing)} samples of the stored split are gone "
                                   f"(first: {missing[0]}); restore them to reuse that split"))
    return [[position[k] for k in keys] for keys in stored]


def _plain(key: Any) -> Any:
    return int(key) if not isinstance(key, str) else key


def _check_usable(name: str, raw: RawSplit, indices: list[int], spec: Spec) -> None:
    if not indices:
        raise DataError(spec.error(f"the {name} split has no samples"))
    if raw.classes and name == "train":
        present = {raw.targets[i] for i in indices}
        if len(present) < 2:
            raise DataError(spec.error(f"the train split has only one class ({raw.classes[next(iter(present))]!r}); "
                                       "a classifier needs at least two"))


def _channels(config: Any, raws: dict[str, tuple[RawSplit, list[int]]]) -> int:
    """data.channels, else the model's input channels, else 1 for grayscale data and 3 otherwise."""
    if config.data.channels is not None:
        return config.data.channels
    shape = config.model.input_shape
    if shape and shape[0] in MODES:
        return shape[0]
    raw, indices = next(iter(raws.values()))
    modes = getattr(raw, "modes", None)
    if modes is not None:
        return 1 if all(m in GRAY_MODES for m in modes) else 3
    image, _ = raw.items[indices[0]]
    if isinstance(image, Image.Image):
        return 1 if image.mode in GRAY_MODES else 3
    return 1 if image.shape[-3] == 1 else 3


def _first_sample_shape(sample: TransformedDataset, train_tf: Any, eval_tf: Any) -> tuple[int, ...]:
    """The shape of the first sample after the eval transforms; both pipelines are tried on it once, so
    arguments a transform takes unchecked (`Normalize: {mean: abc}`) fail here, not mid-training.

    Raises:
        DataError: a transform cannot process the sample.
    """
    try:
        image = sample.raw_image(0)
        with torch.random.fork_rng(devices=[]):  # the train pipeline draws: keep the caller's RNG as it was
            to_float_tensor(train_tf(image))
        return tuple(to_float_tensor(eval_tf(image)).shape)
    except (TypeError, ValueError, RuntimeError, MemoryError) as exc:
        reason = first_line(exc)
        raise DataError(f"data.transforms: the transforms cannot process the first sample ({reason}); "
                        "check their arguments") from None


def _no_transforms(transforms: Any, spec: Spec) -> Any:
    """Feature vectors pass through unchanged; image transforms cannot apply to them."""
    if transforms.train or transforms.eval:
        raise DataError(spec.error("holds feature vectors, not images; leave data.transforms out"))
    return v2.Identity()


def _pipelines(transforms: Any) -> tuple[Any, Any]:
    train_specs, eval_specs = transform_specs(transforms)
    return build_pipeline(train_specs), build_pipeline(eval_specs)
