"""torchvision's classification models: the MODELS registry and the `TorchvisionModel` layer.

    - TorchvisionModel: {name: resnet18, weights: DEFAULT, freeze: backbone}

`weights` is null (random init), a weights name of that model (DEFAULT, IMAGENET1K_V1, ...) read
from the torch hub cache (downloaded there when online), or a path to a .pth state_dict. The
classifier head is resized to `num_classes`; `freeze` is `backbone` (all but the new head) or a
list of parameter-name patterns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from dltool.config.registry import MODELS
from dltool.errors import CheckpointError, ShapeError, first_line
from dltool.models.composite import Plan, fmt
from dltool.models.init import apply_freeze

IMAGENET_CLASSES = 1000
AUX_HEADS = ("aux1.", "aux2.", "AuxLogits.")


def register_torchvision_models() -> None:
    for name in torchvision.models.list_models(module=torchvision.models):
        MODELS.register(name, torchvision.models.get_model_builder(name))


class TorchvisionPlan(Plan):
    def __init__(self, name: str, weights: str | None, freeze: Any):
        self.name = name
        self.weights = weights
        self.freeze = freeze

    def build(self, stack, spec, shape):
        from dltool.models.builder import child_key, probe

        name = MODELS.canonical(str(self.name), spec)
        if len(shape) != 3 or shape[0] != 3:
            raise ShapeError(spec.error(
                f"{name} takes 3-channel images (3, H, W) but the input is {fmt(shape)}; "
                f"set data.channels: 3 (and resize the images) or use a stack of layers"))
        model, heads = create(name, self.weights, stack.num_classes, spec, load=stack.pretrained)
        patterns = self.freeze
        if patterns == "backbone":
            patterns = ["*", *(f"!{head}.*" for head in heads)]
        elif isinstance(patterns, str):
            patterns = [patterns]
        apply_freeze(model, list(patterns or ()), spec.marks, key=child_key(spec, "freeze"))
        return model, probe(model, spec, shape)


def create(name: str, weights: Any, num_classes: int | None, spec, load: bool = True) -> tuple[nn.Module, list[str]]:
    """Build model `name` with `weights` and a head of `num_classes`; return it and the head names.

    With `load` False the model has the structure those weights need but keeps its random init.
    """
    builder = MODELS.get(name)
    extra = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    if weights is None:
        classes = {"num_classes": num_classes} if num_classes is not None else {}
        model = builder(weights=None, **classes, **extra)
        return model, head_names(model, num_classes or IMAGENET_CLASSES)
    if name in ("googlenet", "inception_v3"):
        extra["transform_input"] = True
    model = builder(weights=None, **extra)
    heads = head_names(model, IMAGENET_CLASSES)
    file_classes = None
    if load:
        state = read_weights(name, weights, spec)
        file_classes = _head_size(state, heads)
        if file_classes is not None and file_classes != IMAGENET_CLASSES:
            replace_heads(model, heads, file_classes)
        load_weights(model, state, spec)
    if num_classes is not None and num_classes != (file_classes or IMAGENET_CLASSES):
        replace_heads(model, heads, num_classes)
    return model, heads


def head_names(model: nn.Module, classes: int) -> list[str]:
    """The classifier layers: Linear (or 1x1 Conv2d, as in SqueezeNet) layers with `classes` outputs."""
    return [name for name, m in model.named_modules()
            if (isinstance(m, nn.Linear) and m.out_features == classes)
            or (isinstance(m, nn.Conv2d) and m.out_channels == classes)]


def replace_heads(model: nn.Module, heads: list[str], classes: int) -> None:
    for name in heads:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if isinstance(old, nn.Linear):
            new = nn.Linear(old.in_features, classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(old.in_channels, classes, old.kernel_size, old.stride, old.padding,
                            bias=old.bias is not None)
        setattr(parent, attr, new)


def read_weights(name: str, weights: Any, spec) -> dict:
    """A state_dict from a weights name (hub cache, downloaded when missing) or a file path."""
    if not isinstance(weights, str) or not weights:
        raise CheckpointError(spec.error(f"weights must be null, a weights name like DEFAULT, or a path; got {weights!r}"))
    enum = torchvision.models.get_model_weights(name)
    members = {key.upper(): value for key, value in enum.__members__.items()}
    if weights.upper() in members:
        return _load_file(_hub_file(name, members[weights.upper()], spec), spec)
    path = _weights_path(weights, spec)
    if path is None:
        choices = ", ".join(enum.__members__)
        raise CheckpointError(spec.error(f"weights {weights!r} is neither a file nor a weights name of {name} ({choices})"))
    return _load_file(path, spec)


def _hub_file(name: str, entry: Any, spec) -> Path:
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(entry.url).name
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(entry.url, str(path), progress=False)
    except OSError as exc:
        reason = first_line(exc)
        raise CheckpointError(spec.error(
            f"cannot download the {name} weights ({reason}); download {entry.url} and put it at {path}, "
            f"or set weights: path/to/{path.name}")) from None
    return path


def _weights_path(weights: str, spec) -> Path | None:
    candidates = [Path(weights).expanduser()]
    if spec.mark.file and not Path(weights).is_absolute():
        candidates.append(Path(spec.mark.file).parent / weights)
    return next((p for p in candidates if p.is_file()), None)


def _load_file(path: Path, spec) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        reason = first_line(exc)
        raise CheckpointError(spec.error(f"cannot read weights file {path}: {reason}")) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(spec.error(f"{path} does not hold a state_dict of tensors"))
    return state


def _head_size(state: dict, heads: list[str]) -> int | None:
    for head in heads:
        weight = state.get(f"{head}.weight")
        if isinstance(weight, torch.Tensor):
            return int(weight.shape[0])
    return None


def load_weights(model: nn.Module, state: dict, spec) -> None:
    """Load strictly, except for auxiliary heads (GoogLeNet, Inception) that dltool leaves out."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()
        raise CheckpointError(spec.error(f"the weights do not fit: {reason[1].strip() if len(reason) > 1 else reason[0]}")) from None
    unexpected = [k for k in result.unexpected_keys if not k.startswith(AUX_HEADS)]
    if result.missing_keys or unexpected:
        what = (f"missing {result.missing_keys[:3]}" if result.missing_keys else "") + \
               (f" unexpected {unexpected[:3]}" if unexpected else "")
        raise CheckpointError(spec.error(f"the weights do not fit this model: {what.strip()}"))


register_torchvision_models()
