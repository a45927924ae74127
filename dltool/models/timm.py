"""timm's models as a layer: `TimmModel` (extra `[timm]`).

    - TimmModel: {name: resnet18d, drop_rate: 0.1, freeze: backbone}

`name` is any model timm lists (`dltool list models --filter resnet`), optionally with a weights
tag (`resnet18d.ra2_in1k`); further arguments go to `timm.create_model`. `num_classes` and
`in_chans` come from the data. `pretrained` is false (random init), true (timm's weights, from the
Hugging Face cache, downloaded there when online) or the path of a weights file. `freeze: backbone`
freezes all but the classifier timm names for the model (`get_classifier`); a list of patterns
works as for `TorchvisionModel`.

timm is imported only when a TimmModel is built or listed.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

from torch import nn

from dltool.config.registry import suggest
from dltool.config.spec import Spec
from dltool.errors import CheckpointError, MissingExtra, RegistryError, ShapeError, first_line
from dltool.models.composite import Plan, fmt
from dltool.models.init import apply_freeze

EXTRA = 'pip install "dltool[timm]"'
PREFIX = "timm/"  # how `dltool list models` writes timm's names beside torchvision's
# what timm's creation refuses arguments with (an unknown keyword, a value out of range)
CREATE_ERRORS = (TypeError, ValueError, AssertionError, KeyError)


def import_timm(what: str = "TimmModel") -> Any:
    """The timm module.

    Raises:
        MissingExtra: timm is not installed (the message names the extra).
    """
    try:
        import timm
    except ImportError:
        raise MissingExtra(f"{what} needs timm, which is not installed: {EXTRA}") from None
    return timm


def model_names() -> list[str]:
    """Every model name timm lists."""
    return import_timm("listing timm's models").list_models()


def architecture(name: Any, spec: Spec) -> str:
    """`name` checked against timm's list: the architecture (no `timm/` prefix, no weights tag).

    Raises:
        RegistryError: timm has no such model (the closest names suggested).
    """
    timm = import_timm()
    text = str(name).removeprefix(PREFIX)
    arch = text.split(".", 1)[0]
    if not timm.models.is_model(arch):
        raise RegistryError(spec.error(f"unknown timm model {text!r}{suggest(arch, timm.list_models())} "
                                       "(see `dltool list models --filter NAME`)"))
    return text


class TimmPlan(Plan):
    def __init__(self, name: str, pretrained: Any, freeze: Any, kwargs: dict):
        self.name, self.pretrained, self.freeze, self.kwargs = name, pretrained, freeze, kwargs

    def build(self, stack, spec, shape):
        from dltool.models.builder import child_key, probe

        name = architecture(self.name, spec)
        if len(shape) != 3:
            raise ShapeError(spec.error(f"{name} takes images (C, H, W) but the input is {fmt(shape)}"))
        model = create(name, self.pretrained if stack.pretrained else False, stack.num_classes, shape, self.kwargs,
                       spec)
        patterns = self.freeze
        if patterns == "backbone":
            patterns = ["*", *(f"!{head}.*" for head in head_names(model))]
        elif isinstance(patterns, str):
            patterns = [patterns]
        apply_freeze(model, list(patterns or ()), spec.marks, key=child_key(spec, "freeze"))
        return model, probe(model, spec, shape)


def create(name: str, pretrained: Any, num_classes: int | None, shape: tuple[int, ...], kwargs: dict,
           spec: Spec) -> nn.Module:
    """timm's `name` for inputs of `shape` with `num_classes` outputs; weights as `pretrained` says.

    A model of a fixed input size (ViTs) is made for the input's height and width; timm resizes
    its position embeddings when it loads weights made for another size.
    """
    timm = import_timm()
    sizes = {"in_chans": shape[0], **({"num_classes": num_classes} if num_classes is not None else {})}
    extra = {**sizes, **kwargs}  # written in the YAML, they win (and the probe checks them)
    config = timm.models.get_pretrained_cfg(name.split(".", 1)[0])
    if config is not None and config.fixed_input_size and "img_size" not in extra:
        extra["img_size"] = tuple(shape[1:])
    load = {}
    if pretrained not in (None, False):
        load["pretrained"] = True
        if not isinstance(pretrained, bool):
            load["pretrained_cfg_overlay"] = {"file": str(weights_file(pretrained, spec))}
    try:
        with _quiet_hub():
            return timm.create_model(name, **load, **extra)
    except OSError as exc:  # the hub or its cache (offline), or the weights file
        if not load:
            raise
        raise CheckpointError(spec.error(
            f"cannot load timm's {name} weights ({first_line(exc)}); run once online to fill the Hugging Face "
            f"cache (HF_HOME), or set pretrained: path/to/weights.pth, or pretrained: false")) from None
    except RuntimeError as exc:
        if not load:
            raise RegistryError(spec.error(first_line(exc))) from None
        raise CheckpointError(spec.error(f"timm's {name} weights do not fit: {first_line(exc)}")) from None
    except CREATE_ERRORS as exc:  # an argument the model does not take, or a value it refuses
        raise RegistryError(spec.error(first_line(exc))) from None


def weights_file(value: Any, spec: Spec) -> Path:
    """The path `pretrained:` names, relative to the config file when not found as written.

    Raises:
        CheckpointError: `pretrained` is neither true, false nor an existing file.
    """
    if not isinstance(value, str) or not value:
        raise CheckpointError(spec.error(f"pretrained must be true, false or the path of a weights file; got {value!r}"))
    candidates = [Path(value).expanduser()]
    if spec.mark.file and not Path(value).is_absolute():
        candidates.append(Path(spec.mark.file).parent / value)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise CheckpointError(spec.error(f"pretrained: weights file {value} not found"))
    return found


def head_names(model: nn.Module) -> list[str]:
    """The modules timm names as the model's classifier (`get_classifier`; several for distilled heads)."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    return [name for name, module in model.named_modules() if any(module is head for head in heads) and name]


def eval_transforms(name: Any, channels: int | None = None) -> list[dict]:
    """timm's eval preprocessing for the pretrained weights of `name`, as dltool transforms (plain data):
    Resize (the input size over crop_pct), CenterCrop, ToTensor, Normalize with the weights' mean and std.

    `channels` 1 averages the mean and std to one value (a grayscale dataset). Returns [] when timm
    holds no data config for the model.
    """
    timm = import_timm()
    text = str(name).removeprefix(PREFIX)
    config = timm.models.get_pretrained_cfg(text)
    if config is None:
        return []
    _, height, width = config.input_size
    crop_pct = config.crop_pct or 1.0
    interpolation = config.interpolation or "bilinear"
    mean, std = [round(v, 6) for v in config.mean], [round(v, 6) for v in config.std]
    if channels == 1:
        mean, std = [round(sum(mean) / len(mean), 6)], [round(sum(std) / len(std), 6)]
    if config.crop_mode == "squash":
        resize = [math.floor(height / crop_pct), math.floor(width / crop_pct)]
    else:
        resize = math.floor(min(height, width) / crop_pct)
    return [{"Resize": {"size": resize, "interpolation": interpolation}},
            {"CenterCrop": {"size": [height, width]}}, "ToTensor", {"Normalize": {"mean": mean, "std": std}}]


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """The Hugging Face hub's retry lines stay off the terminal: a failure is reported in one line."""
    try:
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:
        yield
        return
    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity_error()
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)
