"""`dltool config`'s check: build every part that `train` builds before its first step, through the
same builders, so that a config `config` passes fails no sooner than training itself.

Data is read only where it comes with dltool (Digits, LinearData): there the check is train's own
first-step check (every part built, one batch through copies of them). Elsewhere the model is built for
`model.input_shape` when the config gives one; without it only the names and arguments of the
layers are checked (the sizes a shape would infer are taken as given).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from dltool.config.registry import DATASETS, check_arguments
from dltool.config.spec import Spec
from dltool.errors import ShapeError
from dltool.models.builder import Stack

# Datasets that ship with dltool: building them reads nothing from disk or network.
EMBEDDED = {"digits", "lineardata"}
# What `num_classes` means in the layers and batch transforms when no data says how many classes.
STAND_IN_CLASSES = 2


def check_config(config: Any) -> None:
    """Build the device, data (when embedded), transforms, model, loss, optimizer, batch transforms
    and schedule of `config`, and drop them.

    Raises:
        ConfigError: an unknown name or argument (with the closest names), or a value a builder refuses.
        ShapeError: a layer cannot take the shape arriving at it (when the input shape is known).
        DataError: an embedded dataset cannot give a sample through the transforms.
    """
    from dltool.training.loggers import require
    from dltool.training.runtime import resolve_device

    resolve_device(config.train.device, config.marks)
    require(config)
    data = _embedded_data(config)
    if data is not None:
        _first_step(config, data)
        return
    _check_dataset(config.data.dataset)
    _check_transforms(config.data.transforms)
    _check_training(config, _check_model(config))


def _embedded_data(config: Any) -> Any:
    """The DataBundle of a dataset that ships with dltool (cheap to build), else None."""
    from dltool.data import build_data

    if config.data.dataset.name.lower() not in EMBEDDED:
        return None
    return build_data(config)


def _first_step(config: Any, data: Any) -> None:
    """With the data at hand, exactly what `train` does before its run folder exists: every part
    built and one batch taken through copies of them (dltool.training.firststep)."""
    from dltool.training.firststep import check_first_step
    from dltool.training.parts import build_parts

    check_first_step(build_parts(config, bundle=data))


def _check_dataset(spec: Spec) -> None:
    """The dataset's name and arguments, without building it (that would read or download data)."""
    target = DATASETS.get(spec.name, spec)
    check_arguments(target, tuple(spec.args), dict(spec.kwargs), spec)


def _check_transforms(transforms: Any) -> None:
    from dltool.data.transform_lists import transform_specs
    from dltool.data.transforms import build_pipeline

    for specs in transform_specs(transforms):
        build_pipeline(specs)


def _check_model(config: Any) -> nn.Module | None:
    """The model as `train` builds it when `model.input_shape` is given (returned, with a stand-in
    class count); else the layers' names and arguments only (None)."""
    from dltool.models import build_model, resolve_input_shape

    model_config = config.model
    if model_config.input_shape:
        layers = tuple(_without_class_word(spec) for spec in model_config.layers)
        return build_model(dataclasses.replace(model_config, layers=layers), resolve_input_shape(config), None,
                           pretrained=False)
    ArgumentsOnly(STAND_IN_CLASSES, pretrained=False).check(model_config.layers)
    return None


def _check_training(config: Any, model: nn.Module | None) -> None:
    """Loss, optimizer, batch transforms and schedule, built as `train` builds them."""
    from dltool.data.loaders import build_batch_transform
    from dltool.training.optim import build_loss, build_optimizer, build_scheduler, monitor_mode

    build_loss(config.loss, [1] * STAND_IN_CLASSES)
    optimizer_spec = config.optimizer
    if model is None:
        # a stand-in model: its parameters cannot match the real model's parameter-group patterns
        kwargs = {k: v for k, v in optimizer_spec.kwargs.items() if k != "param_groups"}
        optimizer_spec = dataclasses.replace(optimizer_spec, kwargs=kwargs)
        model = nn.Linear(1, 1)
    optimizer = build_optimizer(optimizer_spec, model)
    build_batch_transform(config.data.batch_transforms, STAND_IN_CLASSES)
    train = config.train
    monitor = train.monitor if train.monitor != "auto" else "val_loss"
    build_scheduler(config.scheduler, optimizer, train.epochs, 1, interval=train.scheduler_interval,
                    warmup_epochs=train.warmup_epochs, mode=monitor_mode(monitor, train.mode))


def _without_class_word(spec: Spec) -> Spec:
    """`spec` with the word num_classes replaced by a stand-in count (nested layers too)."""
    def replace(value: Any) -> Any:
        if value == "num_classes":
            return STAND_IN_CLASSES
        if isinstance(value, dict):
            return {k: replace(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(replace(v) for v in value)
        return value

    return dataclasses.replace(spec, args=replace(spec.args), kwargs=replace(dict(spec.kwargs)))


class ArgumentsOnly(Stack):
    """The stack builder, checking each layer's name and arguments (composites' nested layers too)
    where the input shape is unknown: sizes the shape would give are taken as 1, nothing is run."""

    SHAPE = (3, 32, 32)

    def check(self, layers: tuple[Spec, ...]) -> None:
        shape = self.SHAPE
        for spec in layers:
            try:
                _, shape = self.build_layer(spec, shape)
            except ShapeError:
                return  # only a real input shape can say whether a shape is wrong

    def build_leaf(self, target: Any, spec: Spec, args: tuple, extra: dict,
                   shape: tuple[int, ...]) -> tuple[nn.Module, tuple[int, ...]]:
        check_arguments(target, (*args, *spec.args), {**extra, **spec.kwargs}, spec)
        return nn.Identity(), shape

    def size_for(self, name: str, target: Any, spec: Spec, shape: tuple[int, ...]) -> int:
        return 1

    def check_given(self, name: str, given: Any, value: int, spec: Spec, shape: tuple[int, ...]) -> None:
        return None
