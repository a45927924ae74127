"""The TRANSFORMS registry: every `torchvision.transforms.v2` transform by its own name, plus
`ToTensor` as the seeds write it, and the builders that turn YAML lists into pipelines.

YAML cannot hold Python objects, so a few argument kinds are accepted as text: `interpolation:
bilinear` (an InterpolationMode), `dtype: float32` (a torch dtype), and nested transform lists for
the containers (`RandomApply: {transforms: [...], p: 0.5}`).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dltool.config.registry import TRANSFORMS
from dltool.config.spec import Spec
from dltool.errors import RegistryError

CONTAINERS = {"Compose", "RandomApply", "RandomChoice", "RandomOrder"}

# v2.ToTensor is deprecated (it warns on every build); dltool's ToTensor below has its result.
SKIPPED = {"Transform", "ToTensor"}

# First parameters that take a sequence: `Resize: [28, 28]` means size=[28, 28], as the seeds
# write it, not size=28 followed by interpolation=28.
SEQUENCE_FIRST = {"size", "degrees", "kernel_size", "padding"}


class ToTensor(v2.ToImage):
    """PIL image or uint8 array -> float32 tensor (C, H, W) in [0, 1], bit for bit the classic ToTensor."""

    _transformed_types = (*v2.ToImage._transformed_types, tv_tensors.Image)

    def transform(self, inpt: Any, params: dict) -> Any:
        return to_unit_float(super().transform(inpt, params))


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 / 255 (as the classic ToTensor computes it); other dtypes scaled by v2."""
    if image.dtype == torch.uint8:
        # the values of float32(x) / 255; converting first, then dividing in place, is faster than
        # one mixed-dtype division
        return image.to(torch.float32).div_(255)
    if image.is_floating_point():
        return image
    return F.to_dtype(image, torch.float32, scale=True)


def _dtype(value: Any) -> Any:
    if isinstance(value, str):
        found = getattr(torch, value.removeprefix("torch."), None)
        if not isinstance(found, torch.dtype):
            raise ValueError(f"unknown dtype {value!r}; use e.g. float32, float16, uint8")
        return found
    return value


def _interpolation(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return v2.InterpolationMode(value.lower())
        except ValueError:
            modes = ", ".join(m.value for m in v2.InterpolationMode)
            raise ValueError(f"unknown interpolation {value!r}; allowed: {modes}") from None
    return value


COERCE: dict[str, Callable[[Any], Any]] = {"dtype": _dtype, "interpolation": _interpolation}


def _wrap(cls: type) -> Callable:
    """A builder for `cls` that turns YAML text into the objects it takes, with `cls`'s signature."""
    sig = inspect.signature(cls)

    @functools.wraps(cls, updated=())
    def build(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind_partial(*args, **kwargs)
        for name, convert in COERCE.items():
            if name in bound.arguments:
                bound.arguments[name] = convert(bound.arguments[name])
        return cls(*bound.args, **bound.kwargs)

    build.__signature__ = sig
    return build


def _register_v2() -> None:
    for name in dir(v2):
        obj = getattr(v2, name)
        if inspect.isclass(obj) and issubclass(obj, v2.Transform) and name not in SKIPPED:
            TRANSFORMS.register(name, _wrap(obj))
    TRANSFORMS.register("ToTensor", ToTensor)


def build_transform(spec: Spec) -> Any:
    """Build one transform from its spec; container transforms get their nested lists built too.

    Raises:
        RegistryError: unknown name or argument.
    """
    name = TRANSFORMS.canonical(spec.name, spec)
    if name in CONTAINERS:
        spec = _with_children(spec)
    elif _is_sequence_first(name, spec):
        spec = Spec(spec.name, (list(spec.args),), spec.kwargs, key=spec.key, marks=spec.marks)
    return TRANSFORMS.build(spec)


def _is_sequence_first(name: str, spec: Spec) -> bool:
    if len(spec.args) < 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in spec.args):
        return False
    params = list(inspect.signature(TRANSFORMS.get(name)).parameters)
    return bool(params) and params[0] in SEQUENCE_FIRST


def _with_children(spec: Spec) -> Spec:
    args = list(spec.args)
    kwargs = dict(spec.kwargs)
    if "transforms" in kwargs:
        kwargs["transforms"] = _children(spec, kwargs["transforms"], "transforms")
    elif args:
        args[0] = _children(spec, args[0], "0")
    return Spec(spec.name, tuple(args), kwargs, key=spec.key, marks=spec.marks)


def _children(spec: Spec, value: Any, key: str) -> list:
    if not isinstance(value, list):
        raise RegistryError(spec.error(f"{key} must be a list of transforms"))
    return [build_transform(spec.child(item, f"{key}.{i}")) for i, item in enumerate(value)]


def build_pipeline(specs: Sequence[Spec]) -> v2.Transform:
    """A v2.Compose of the listed transforms (an empty list gives the identity)."""
    return v2.Compose([build_transform(s) for s in specs]) if specs else v2.Identity()


def to_float_tensor(image: Any) -> torch.Tensor:
    """The end of every pipeline: a float tensor (C, H, W), whatever the user's list returned."""
    if not isinstance(image, torch.Tensor):
        image = F.to_image(image)
    return to_unit_float(image.as_subclass(torch.Tensor))


_register_v2()
