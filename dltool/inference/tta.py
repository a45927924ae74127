"""Test-time augmentation: a model's class probabilities averaged over a few views of each input.

`--tta` (or `--tta flip`) averages the original and its horizontal flip; `--tta crops` the original
and five crops (the four corners and the centre, each 7/8 of the side, scaled back to the input
size); `--tta flip,crops` all of those and their mirror images. The views are described once as
plain data (`View`) and replayed by two interpreters: torch for checkpoints (whole batches, inside
`eval`'s forward pass) and numpy for exported ONNX files, which never import torch.

Flips are refused where the run's config says they change the class (`data.flip_invariant: false`)
and warned about (TtaWarning) where its training transforms never flipped an image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from dltool.errors import ConfigError, TtaWarning
from dltool.inference.predictors import top_rows

MODES = ("flip", "crops")
CROP_SHARE = 0.875  # the side of a crop, as a share of the input's side (224 of 256, as ImageNet's crops)
FLIPS = "randomhorizontalflip"


@dataclass(frozen=True)
class View:
    """One view of an input: a crop box (top, left, height, width) scaled back to the input size, or
    None for the whole input; then a horizontal flip or not."""

    box: tuple[int, int, int, int] | None = None
    flip: bool = False


def parse_mode(text: str) -> tuple[str, ...]:
    """The modes `--tta TEXT` asks for: flip, crops, or both (`flip,crops`).

    Raises:
        ConfigError: an unknown mode (e.g. an input path taken as the option's value).
    """
    parts = tuple(part.strip().lower() for part in str(text).split(",") if part.strip())
    unknown = [part for part in parts if part not in MODES]
    if unknown or not parts:
        raise ConfigError(f"--tta: unknown mode {text!r}; allowed: flip, crops, flip,crops (--tta alone means flip; "
                          "before the inputs write it as --tta=MODE)")
    return tuple(mode for mode in MODES if mode in parts)


def views(modes: Sequence[str], height: int, width: int) -> list[View]:
    """The views of an input of `height` x `width` that `modes` ask for; the original comes first."""
    boxes: list[tuple[int, int, int, int] | None] = [None]
    if "crops" in modes:
        h, w = max(1, round(height * CROP_SHARE)), max(1, round(width * CROP_SHARE))
        # torchvision's FiveCrop order: top-left, top-right, bottom-left, bottom-right, centre
        corners = [(0, 0), (0, width - w), (height - h, 0), (height - h, width - w),
                   ((height - h) // 2, (width - w) // 2)]
        boxes += [(top, left, h, w) for top, left in corners]
    flips = (False, True) if "flip" in modes else (False,)
    return [View(box, flip) for flip in flips for box in boxes]


def describe(modes: Sequence[str]) -> str:
    """`flip`, `crops` or `flip,crops`, as the report names the augmentation."""
    return ",".join(modes)


def check_flips(modes: Sequence[str], config: Any) -> None:
    """Refuse flips the run's config says change the class; warn when training never flipped.

    Args:
        modes: the parsed --tta modes.
        config: the run's Config (None for an exported file, which carries no training config).

    Raises:
        ConfigError: flips asked for and `data.flip_invariant` is false.
    """
    if "flip" not in modes or config is None:
        return
    invariant = config.data.flip_invariant
    if invariant is False:
        raise ConfigError("--tta flip: this run's config sets data.flip_invariant: false (a mirrored image may be "
                          "another class); use --tta crops")
    train = config.data.transforms.train or ()
    if invariant is None and not any(_names_flip(spec) for spec in train):
        warnings.warn("--tta flip: the training transforms have no RandomHorizontalFlip, so the model never saw "
                      "flipped images; set data.flip_invariant: true if flips keep the class, or use --tta crops",
                      TtaWarning, stacklevel=2)


def _names_flip(value: Any) -> bool:
    """Whether a transform spec (RandomApply, RandomChoice and other containers included) names a flip."""
    name = getattr(value, "name", None)
    if isinstance(name, str) and name.lower() == FLIPS:
        return True
    if isinstance(value, str):
        return value.lower() == FLIPS
    if isinstance(value, dict):
        return any(_names_flip(k) or _names_flip(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_names_flip(item) for item in value)
    return any(_names_flip(part) for part in (getattr(value, "args", ()), getattr(value, "kwargs", {})))


def apply_numpy(x: np.ndarray, view: View) -> np.ndarray:
    """One view of a (..., H, W) array, as `apply_torch` computes it (bilinear, half-pixel centres)."""
    if view.box is not None:
        top, left, h, w = view.box
        x = _resize_numpy(x[..., top:top + h, left:left + w], x.shape[-2], x.shape[-1])
    if view.flip:
        x = x[..., ::-1]
    return np.ascontiguousarray(x, dtype=np.float32)


def _resize_numpy(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch's interpolate(mode="bilinear", align_corners=False) in numpy, one axis at a time."""
    return _lerp_axis(_lerp_axis(x.astype(np.float32), height, -2), width, -1)


def _lerp_axis(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = x.shape[axis]
    source = np.maximum((np.arange(size, dtype=np.float32) + 0.5) * (n / size) - 0.5, 0)
    low = np.minimum(np.floor(source).astype(np.int64), n - 1)
    high = np.minimum(low + 1, n - 1)
    weight = (source - low).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = size
    weight = weight.reshape(shape)
    return np.take(x, low, axis=axis) * (1 - weight) + np.take(x, high, axis=axis) * weight


def apply_torch(x: Any, view: View) -> Any:
    """One view of a (N, C, H, W) tensor."""
    import torch.nn.functional as F

    if view.box is not None:
        top, left, h, w = view.box
        x = F.interpolate(x[..., top:top + h, left:left + w], size=tuple(x.shape[-2:]), mode="bilinear",
                          align_corners=False)
    return x.flip(-1) if view.flip else x


def classify(predictor: Any, inputs: list, topk: int, modes: Sequence[str]) -> list[tuple[list[dict], None]]:
    """`predictor.classify` with each input's probabilities averaged over its views.

    Works for every predictor (checkpoint, TorchScript, ONNX): the views go through its own
    `classify` asking for every class, and the probabilities are averaged class by class.
    """
    height, width = predictor.input_shape[-2:]
    shown = views(modes, height, width)
    batch = [_apply(x, view) for x in inputs for view in shown]
    probs = np.zeros((len(batch), len(predictor.classes)))
    for row, (top, _) in zip(probs, predictor.classify(batch, len(predictor.classes))):
        for entry in top:
            row[entry["index"]] = entry["probability"] / len(shown)
    averaged = probs.reshape(len(inputs), len(shown), -1).sum(axis=1)  # view by view, in order
    return [(top, None) for top in top_rows(averaged, predictor.classes, topk)]


def _apply(x: Any, view: View) -> Any:
    if isinstance(x, np.ndarray):
        return apply_numpy(x, view)
    return apply_torch(x[None], view)[0]

