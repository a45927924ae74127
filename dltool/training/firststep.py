"""The first-step check: one real batch through a copy of the run before its folder exists.

Many mistakes pass every check on the config alone and only show once a batch meets the model:
a declared input shape the data does not have, eval transforms that give another size than the
train ones, a Normalize with more channels than the images, a loss that does not fit the targets,
class weights for the wrong number of classes, a schedule shorter than the run. Here one batch
goes through forward, loss, backward and an optimizer step, and the schedule through the whole
run's plan, on copies of the model, loss, optimizer and schedule, with every random state put
back afterwards: the run itself starts exactly as it would have. Whatever fails becomes one
located ConfigError naming the key it comes from. Errors only training can reveal (a loss that
diverges later, a device running out of memory) stay the run's own.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from dltool.config.spec import located
from dltool.errors import ConfigError, DltoolError, first_line
from dltool.training.parts import Parts
from dltool.training.runtime import rng_state, set_rng_state

# Losses that compare outputs with numbers: they do not take class labels.
VALUE_LOSSES = {"MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss", "GaussianNLLLoss", "PoissonNLLLoss"}
# Losses that take class indices: they do not take regression targets.
CLASS_INDEX_LOSSES = (nn.CrossEntropyLoss, nn.NLLLoss, nn.MultiMarginLoss)
# Longest schedule plan walked through (scheduler steps); a longer run is checked up to here.
MAX_PLAN_STEPS = 200_000


def check_first_step(parts: Parts) -> list[str]:
    """Run one batch of a run's parts through copies of them; raise what a user must fix.

    Args:
        parts: the Parts of a run not yet started (no run folder yet).

    Returns:
        Warnings, one line each: what trains, but badly (a Softmax before CrossEntropyLoss).

    Raises:
        ConfigError: one located line naming the config key the failure comes from.
    """
    config = parts.config
    check_transforms(config, parts.bundle)
    _check_loss_fits(config, parts.task, len(parts.classes), parts.loss_fn)
    notes = _probabilities_into_the_loss(config, parts.model, parts.loss_fn)
    _check_trainable(config, parts.model)
    saved = rng_state()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _one_step(parts)
            _check_plan(parts)
    except torch.OutOfMemoryError:
        pass  # the run's own out-of-memory handling (smaller parts, a located message) takes it from here
    finally:
        set_rng_state(saved)
    return notes


def _probabilities_into_the_loss(config: Any, model: nn.Module, loss_fn: nn.Module) -> list[str]:
    """A last Softmax (or LogSoftmax) layer before a loss that applies its own log-softmax (or, for
    NLLLoss, expects log-probabilities): it trains, slowly or not at all, with no error."""
    leaves = [m for m in model.modules() if not list(m.children())]
    last = leaves[-1] if leaves else None
    wrong = {nn.CrossEntropyLoss: (nn.Softmax, nn.LogSoftmax), nn.NLLLoss: (nn.Softmax,)}.get(type(loss_fn), ())
    if last is None or not isinstance(last, wrong):
        return []
    layer, loss = type(last).__name__, type(loss_fn).__name__
    if loss == "CrossEntropyLoss":
        why, fix = "applies its own log-softmax to the outputs", "drop the layer (eval and predict give " \
            "probabilities either way)"
    else:
        why, fix = "takes log-probabilities", "use LogSoftmax, or drop the layer and use CrossEntropyLoss"
    key = config.model.layers[-1].key if config.model.layers else "model"
    return ["warning: " + located(f"the last layer is {layer}, but {loss} {why}; {fix}", key, config.marks)]


def check_transforms(config: Any, bundle: Any) -> None:
    """Each listed transform on the first sample, one at a time: a Normalize with other channels
    than the image has there, or a transform that fails, is named by its own key (the lists of
    the splits `bundle` holds).

    Raises:
        ConfigError: located at the transform's key.
    """
    from dltool.data.transform_lists import transform_specs

    datasets = [d for d in (bundle.train, bundle.val, bundle.test) if d is not None and len(d)]
    if not datasets or not hasattr(datasets[0], "raw_image"):
        return
    image = datasets[0].raw_image(0)
    for specs, dataset in zip(transform_specs(config.data.transforms), (bundle.train, bundle.val or bundle.test)):
        if dataset is None:
            continue
        steps = getattr(dataset.transform, "transforms", [])
        if len(steps) == len(specs):
            with torch.random.fork_rng(devices=[]):
                _walk(image, specs, steps, config.marks)


def _walk(image: Any, specs: Any, steps: list, marks: Any) -> None:
    from torchvision.transforms.v2 import functional as F

    from dltool.data.transforms import to_float_tensor

    for spec, step in zip(specs, steps):
        channels = _channels_of(image, F)
        means = spec.kwargs.get("mean", spec.args[0] if spec.args else None)
        if spec.name.lower() == "normalize" and isinstance(means, list) and channels and len(means) not in (1, channels):
            shape = list(to_float_tensor(image).shape)
            raise ConfigError(located(
                f"Normalize has {len(means)} means for images with {channels} channel{'s' if channels > 1 else ''} "
                f"(shape {shape} there); give {channels} value{'s' if channels > 1 else ''} each to mean and std "
                "(dltool data --stats prints them), or set data.channels", spec.key, marks))
        try:
            image = step(image)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's transform is named by its key
            raise ConfigError(located(f"{spec.name} cannot process the first sample: {first_line(exc)}",
                                      spec.key, marks)) from None


def _channels_of(image: Any, F: Any) -> int | None:
    try:
        return F.get_dimensions(image)[0]
    except (TypeError, ValueError):
        return None


def _check_loss_fits(config: Any, task: str, classes: int, loss_fn: nn.Module) -> None:
    """A loss for numbers on class labels, or one for class indices on numbers; class weights that
    are not one per class."""
    spec, marks = config.loss, config.marks
    name = type(loss_fn).__name__
    if task == "classification" and name in VALUE_LOSSES:
        raise ConfigError(located(
            f"{name} compares outputs with numbers, but this dataset has class labels ({classes} classes); "
            "use CrossEntropyLoss (or BCEWithLogitsLoss)", spec.key, marks))
    if task == "regression" and isinstance(loss_fn, CLASS_INDEX_LOSSES):
        raise ConfigError(located(
            f"{name} takes class indices, but this dataset has numeric targets (regression); "
            "use MSELoss, L1Loss or HuberLoss", spec.key, marks))
    smoothing = getattr(loss_fn, "label_smoothing", None)
    if smoothing is not None and not 0 <= smoothing <= 1:
        raise ConfigError(located(f"label_smoothing must be between 0 and 1 (the share of each target spread over "
                                  f"the classes); got {smoothing}", f"{spec.key}.label_smoothing", marks))
    weight = getattr(loss_fn, "weight", None)
    if task == "classification" and isinstance(loss_fn, CLASS_INDEX_LOSSES) and weight is not None:
        if weight.numel() != classes:
            raise ConfigError(located(
                f"{weight.numel()} class weights for {classes} classes; give one per class, in class order, "
                "or weight: balanced", f"{spec.key}.weight", marks))


def _check_trainable(config: Any, model: nn.Module) -> None:
    params = list(model.parameters())
    if params and not any(p.requires_grad for p in params) and config.train.unfreeze_at is None:
        raise ConfigError(located(
            f"every parameter is frozen ({sum(p.numel() for p in params)} in all), so training would change "
            "nothing; leave some trainable (a `!pattern` keeps matches trainable) or set train.unfreeze_at",
            "model.freeze" if config.model.freeze else "model", config.marks))


def _one_step(parts: Parts) -> None:
    """Forward, loss, backward and an optimizer step of the first train batch, on copies."""
    from dltool.training.engine import fit_targets

    model, loss_fn, optimizer = copy.deepcopy((parts.model, parts.loss_fn, parts.optimizer))
    x, y = _first_batch(parts)
    opts = parts.opts
    x, y = opts.to_device(x, y)
    model.train()
    try:
        with opts.autocast():
            out = model(x)
    except DltoolError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(_forward_error(parts, x, exc)) from None
    _check_single_output(parts, out, loss_fn)
    _check_pos_weight(parts, out, loss_fn)
    try:
        with opts.autocast():
            loss = loss_fn(out, fit_targets(loss_fn, out, y, opts.task))
        loss = loss.mean() if loss.dim() else loss
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(located(
            f"{type(loss_fn).__name__} cannot take the model's outputs of shape {list(out.shape)} with targets of "
            f"shape {list(y.shape)} ({y.dtype}): {first_line(exc)}", parts.config.loss.key,
            parts.config.marks)) from None
    optimizer.zero_grad(set_to_none=True)
    try:
        loss.backward()
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(located(f"backward through the model failed: {first_line(exc)}", "model.layers",
                                  parts.config.marks)) from None
    try:
        type(optimizer).step(optimizer)  # not optimizer.step: a scheduler wraps it around the original optimizer
    except Exception as exc:  # noqa: BLE001
        spec = parts.config.optimizer
        raise ConfigError(located(f"{spec.name} cannot take a step: {first_line(exc)}", spec.key,
                                  parts.config.marks)) from None


def _check_single_output(parts: Parts, out: torch.Tensor, loss_fn: nn.Module) -> None:
    """One output per sample is a binary classifier's: only a loss on probabilities of class 1 fits it."""
    if parts.task != "classification" or out.dim() != 2 or out.shape[1] != 1:
        return
    if not isinstance(loss_fn, (nn.BCEWithLogitsLoss, nn.BCELoss)):
        config = parts.config
        raise ConfigError(located(
            f"{type(loss_fn).__name__} needs one output per class ({len(parts.classes)}); a single output "
            "(Linear: {out_features: 1}) goes with BCEWithLogitsLoss", config.loss.key, config.marks))


def _check_pos_weight(parts: Parts, out: torch.Tensor, loss_fn: nn.Module) -> None:
    """BCEWithLogitsLoss's pos_weight: one value, or one per output."""
    weight = getattr(loss_fn, "pos_weight", None)
    if weight is None or out.dim() != 2 or weight.numel() in (1, out.shape[1]):
        return
    config = parts.config
    raise ConfigError(located(f"{weight.numel()} values for {out.shape[1]} outputs per sample; give one, or one per "
                              "output", f"{config.loss.key}.pos_weight", config.marks))


def _first_batch(parts: Parts) -> tuple[torch.Tensor, torch.Tensor]:
    """The first batch of epoch 1, as the run will see it (the loader is reseeded before each epoch)."""
    config = parts.config
    parts.train_loader.set_epoch(1)
    try:
        return next(iter(parts.train_loader))
    except DltoolError:
        raise
    except Exception as exc:  # noqa: BLE001
        key = "data.batch_transforms" if config.data.batch_transforms else "data.transforms.train"
        raise ConfigError(located(f"the first train batch cannot be made: {first_line(exc)}", key,
                                  config.marks)) from None


def _forward_error(parts: Parts, x: torch.Tensor, exc: Exception) -> str:
    """Which key a failed forward pass comes from: the declared input shape, eval transforms that
    give another size than the train ones, or the layers themselves."""
    config, marks = parts.config, parts.config.marks
    sample, built_for = list(x.shape[1:]), list(parts.input_shape)
    if config.model.input_shape and built_for != sample:
        return declared_shape_error(built_for, sample, "data.transforms.train", marks)
    eval_shape = list(parts.bundle.input_shape)
    if eval_shape != sample:
        return located(f"gives samples of shape {eval_shape} but data.transforms.train gives {sample}, and the "
                       "model is built for one of them; make both lists end in the same size (e.g. the same Resize)",
                       "data.transforms.eval", marks)
    return located(f"the model cannot take a batch of shape {list(x.shape)}: {first_line(exc)}", "model.layers", marks)


def declared_shape_error(declared: list, sample: list, transforms_key: str, marks: Any) -> str:
    """The line for a model.input_shape that the model cannot take the data's samples of."""
    return located(f"{declared}, but the data's samples are {sample} (after {transforms_key}); leave "
                   "model.input_shape out to take the data's shape, or resize the images to it",
                   "model.input_shape", marks)


def _check_plan(parts: Parts) -> None:
    """The schedule stepped through the whole run on a copy: arguments that end it early (OneCycleLR's
    total_steps, ...) fail here rather than in the middle of the run."""
    schedule = parts.schedule
    if schedule.scheduler is None or schedule.interval == "plateau":
        return
    shared = {id(p): p for p in parts.model.parameters()}  # a schedule sets lrs only: the weights stay shared
    scheduler = copy.deepcopy(schedule.scheduler, shared)
    epochs = parts.config.train.epochs
    steps = epochs * parts.steps_per_epoch if schedule.interval == "step" else epochs
    spec = parts.config.scheduler
    try:
        for _ in range(min(steps, MAX_PLAN_STEPS)):
            scheduler.step()
    except Exception as exc:  # noqa: BLE001
        run = f"{steps} optimizer steps ({epochs} epochs)" if schedule.interval == "step" else f"{epochs} epochs"
        raise ConfigError(located(f"{spec.name} cannot follow this run's {run}: {first_line(exc)}", spec.key,
                                  parts.config.marks)) from None

