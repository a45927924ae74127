"""Losses, optimizers and learning-rate schedules: torch's own classes under their own names.

The registries are filled by walking `torch.nn.modules.loss`, `torch.optim` and
`torch.optim.lr_scheduler`, so every name a PyTorch user knows works in the YAML. The builders add
what YAML cannot say directly: `weight: balanced` for a loss, parameter groups chosen by name
pattern, and schedule arguments that follow from the run (T_max, total_steps, ...).
"""

from __future__ import annotations

import fnmatch
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn
from torch.optim import lr_scheduler

from dltool.config.registry import LOSSES, OPTIMIZERS, SCHEDULERS, suggest
from dltool.config.spec import Spec, located
from dltool.errors import RegistryError

# Schedules that must advance once per optimizer step rather than once per epoch.
PER_STEP = {"OneCycleLR", "CyclicLR"}
# Loss arguments that torch wants as tensors but YAML writes as lists.
TENSOR_ARGS = ("weight", "pos_weight")
# The optimizer argument that holds name-pattern parameter groups (dltool's, not torch's).
GROUP_KEY = "param_groups"


def _register_all() -> None:
    for name, obj in vars(nn.modules.loss).items():
        if inspect.isclass(obj) and issubclass(obj, nn.modules.loss._Loss) and not name.startswith("_"):
            LOSSES.register(name, obj)
    for name, obj in vars(torch.optim).items():
        if inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer:
            OPTIMIZERS.register(name, obj)
    for name, obj in vars(lr_scheduler).items():
        if (inspect.isclass(obj) and issubclass(obj, lr_scheduler.LRScheduler)
                and not name.startswith("_") and obj is not lr_scheduler.LRScheduler):
            SCHEDULERS.register(name, obj)


# What `_defaults` fills in for each scheduler (and dltool for every optimizer and scheduler), as
# `dltool list` shows it; a test keeps this table and `_defaults` in step.
FILLED = {
    "CosineAnnealingLR": {"T_max": "the run's length (train.epochs, or its steps when stepped per step)"},
    "CosineAnnealingWarmRestarts": {"T_0": "a third of the run"},
    "OneCycleLR": {"max_lr": "the optimizer's lr", "total_steps": "the run's steps"},
    "StepLR": {"step_size": "a third of the run"},
    "MultiStepLR": {"milestones": "1/2 and 3/4 of the run"},
    "ExponentialLR": {"gamma": "lr / 100 at the end of the run"},
    "CyclicLR": {"base_lr": "the optimizer's lr / 10", "max_lr": "the optimizer's lr",
                 "step_size_up": "half the run", "cycle_momentum": "true when the optimizer has momentum"},
    "LinearLR": {"total_iters": "the run's length"},
    "PolynomialLR": {"total_iters": "the run's length"},
    "ReduceLROnPlateau": {"mode": "train.monitor (max for accuracy, min for losses)"},
}


_register_all()
SCHEDULERS.supply("*", {"optimizer": "the run's optimizer"})
for _name, _arguments in FILLED.items():
    SCHEDULERS.supply(_name, _arguments)
OPTIMIZERS.supply("*", {"params": "the model's parameters"})


def build_loss(spec: Spec, class_counts: Sequence[int] | None = None) -> nn.Module:
    """Build the loss; `weight: balanced` weighs each class by n / (k * count), as scikit-learn does.

    Args:
        spec: the `loss:` component.
        class_counts: training samples per class (needed only for `weight: balanced`).

    Raises:
        RegistryError: unknown loss or argument, or `balanced` without class counts.
    """
    kwargs = dict(spec.kwargs)
    if kwargs.get("weight") == "balanced":
        if not class_counts:
            raise RegistryError(spec.error("weight: balanced needs a classification dataset with class counts"))
        counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
        kwargs["weight"] = counts.sum() / (len(counts) * counts)
    for key in TENSOR_ARGS:
        if isinstance(kwargs.get(key), list):
            kwargs[key] = torch.tensor(kwargs[key], dtype=torch.float32)
    loss = LOSSES.build(Spec(spec.name, spec.args, kwargs, key=spec.key, marks=spec.marks))
    return loss if isinstance(loss, nn.Module) else FunctionLoss(loss)


class FunctionLoss(nn.Module):
    """A loss function of the user's (`@register.loss` on a function) as a module, as the loop takes losses."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.function(outputs, targets)


def build_optimizer(spec: Spec, model: nn.Module, *, device: torch.device | None = None) -> torch.optim.Optimizer:
    """Build the optimizer over all of `model`'s parameters, split into `param_groups` if given.

    `param_groups` is a list of `{params: [patterns], <option>: value, ...}`. A pattern (fnmatch)
    matches a parameter by its name (`layers.0.weight`) or by its layer type and leaf name
    (`BatchNorm2d.weight`, `Linear.bias`), so `params: ["*.bias", "*Norm*.*"]` with
    `weight_decay: 0` exempts biases and normalisation layers from weight decay. The first group
    that matches a parameter takes it; the others stay in the default group. Frozen parameters are
    included (they have no gradient, so torch skips them) so that unfreezing needs no rebuild.

    Raises:
        RegistryError: unknown optimizer or argument; a group that matches no parameter.
    """
    kwargs = dict(spec.kwargs)
    groups_spec = kwargs.pop(GROUP_KEY, None) or []
    params = _param_groups(spec, model, groups_spec)
    cls = OPTIMIZERS.get(spec.name, spec)
    _check_group_options(spec, cls, groups_spec)
    if cls is torch.optim.SparseAdam:
        raise RegistryError(spec.error("needs sparse gradients (nn.Embedding(sparse=True)); use Adam or AdamW"))
    if cls is torch.optim.LBFGS:
        raise RegistryError(spec.error("re-evaluates the whole loss several times per step (a closure), "
                                       "which minibatch training does not do; use SGD, Adam or AdamW"))
    if (device is not None and device.type == "cuda" and "fused" in inspect.signature(cls).parameters
            and not kwargs.get("foreach") and not kwargs.get("differentiable")):  # fused refuses either
        kwargs.setdefault("fused", True)
    plain = Spec(spec.name, spec.args, kwargs, key=spec.key, marks=spec.marks)
    return OPTIMIZERS.build(plain, params)


def _param_groups(spec: Spec, model: nn.Module, groups_spec: Any) -> list[dict]:
    key = f"{spec.key}.{GROUP_KEY}" if spec.key else GROUP_KEY
    if not isinstance(groups_spec, list):
        raise RegistryError(located("must be a list of {params: [patterns], ...} mappings", key, spec.marks))
    named = list(_named_parameters(model))
    taken: set[str] = set()
    groups = []
    for i, group in enumerate(groups_spec):
        where = f"{key}.{i}"
        patterns = group.get("params") if isinstance(group, dict) else None
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not patterns:
            raise RegistryError(located("each group needs params: a list of name patterns like '*.bias'", where, spec.marks))
        chosen = [(n, p) for n, t, p in named if n not in taken and _matches(patterns, n, t)]
        if not chosen:
            names = ", ".join(n for n, _, _ in named[:6])
            raise RegistryError(located(f"params {patterns} match no parameter (names look like: {names}, ...)",
                                        where, spec.marks))
        taken.update(n for n, _ in chosen)
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": [p for _, p in chosen]})
    rest = [p for n, _, p in named if n not in taken]
    return ([{"params": rest}] if rest else []) + groups


def _check_group_options(spec: Spec, cls: type, groups: list) -> None:
    """A group may set what the optimizer takes (lr, weight_decay, momentum, ...), nothing else, and
    a number where the optimizer's own default is one."""
    parameters = inspect.signature(cls).parameters
    allowed = [n for n in parameters if n not in ("params", "self")]
    for i, group in enumerate(groups):
        for key, value in group.items():
            where = f"{spec.key}.{GROUP_KEY}.{i}.{key}" if spec.key else f"{GROUP_KEY}.{i}.{key}"
            if key != "params" and key not in allowed:
                raise RegistryError(located(f"{spec.name} has no option {key!r}{suggest(key, allowed)} "
                                            f"(allowed: params, {', '.join(allowed)})", where, spec.marks))
            if key != "params" and _is_number(parameters[key].default) and not _is_number(value):
                raise RegistryError(located(f"must be a number; got {value!r}", where, spec.marks))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _named_parameters(model: nn.Module):
    """(name, 'LayerType.leaf', parameter) for every parameter, shared ones once."""
    seen = set()
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{leaf}" if module_name else leaf
            yield name, f"{type(module).__name__}.{leaf}", param


def _matches(patterns: list, name: str, typed: str) -> bool:
    return any(fnmatch.fnmatchcase(name, str(p)) or fnmatch.fnmatchcase(typed, str(p)) for p in patterns)


@dataclass
class Schedule:
    """A scheduler with how it advances: `interval` is "step", "epoch", "plateau" (ReduceLROnPlateau,
    stepped once per epoch with the monitored metric) or "none". `warmup_steps` scale the lr linearly up to
    the scheduled value over the first optimizer steps."""

    scheduler: Any
    interval: str
    warmup_steps: int = 0

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)

    def warmup_factor(self, step: int) -> float:
        """The lr multiplier for 0-based optimizer step `step` (1.0 after warmup)."""
        if step >= self.warmup_steps:
            return 1.0
        return (step + 1) / self.warmup_steps


def build_scheduler(spec: Spec | None, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, *,
                    interval: str = "auto", warmup_epochs: float = 0.0, mode: str = "min") -> Schedule:
    """Build the lr schedule for a run of `epochs` x `steps_per_epoch` optimizer steps.

    Arguments the run determines are filled when the YAML leaves them out: CosineAnnealingLR
    `T_max` (the whole run), OneCycleLR `max_lr` (the optimizer's lr) and `total_steps`, StepLR
    `step_size` (a third of the run), MultiStepLR `milestones` (1/2 and 3/4), ExponentialLR `gamma`
    (lr / 100 at the end), CyclicLR `base_lr`/`max_lr`, ReduceLROnPlateau `mode`, and the
    `total_iters` of LinearLR/PolynomialLR/ConstantLR. OneCycleLR and CyclicLR advance per step,
    ReduceLROnPlateau on the monitored metric per epoch, the others per epoch unless
    `interval: step` says otherwise.

    Raises:
        RegistryError: unknown scheduler or argument.
    """
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if spec is None:
        return Schedule(None, "none", warmup)
    name = SCHEDULERS.canonical(spec.name, spec)
    if name == "ReduceLROnPlateau":
        kind = "plateau"
    elif name in PER_STEP or interval == "step":
        kind = "step"
    else:
        kind = "epoch"
    length = epochs * steps_per_epoch if kind == "step" else epochs
    extra = _defaults(name, optimizer, length, mode)
    kwargs = dict(spec.kwargs)
    if "schedulers" in kwargs:
        kwargs["schedulers"] = _children(spec, kwargs["schedulers"], optimizer, epochs, steps_per_epoch, mode)
    plain = Spec(spec.name, spec.args, kwargs, key=spec.key, marks=spec.marks)
    if name == "ChainedScheduler":
        built = SCHEDULERS.build(plain, optimizer=optimizer)  # its optimizer comes after the list
    else:
        built = SCHEDULERS.build(plain, optimizer, **extra)
    return Schedule(built, kind, warmup)


def _defaults(name: str, optimizer: torch.optim.Optimizer, length: int, mode: str) -> dict:
    lrs = [group["lr"] for group in optimizer.param_groups]
    lr = lrs[0] if len(set(lrs)) == 1 else lrs
    length = max(1, length)
    defaults = {
        "CosineAnnealingLR": {"T_max": length},
        "CosineAnnealingWarmRestarts": {"T_0": max(1, length // 3)},
        "OneCycleLR": {"max_lr": lr, "total_steps": length},
        "StepLR": {"step_size": max(1, length // 3)},
        "MultiStepLR": {"milestones": sorted({max(1, length // 2), max(1, length * 3 // 4)})},
        "ExponentialLR": {"gamma": 0.01 ** (1 / length)},
        "CyclicLR": {"base_lr": [x / 10 for x in lrs], "max_lr": lrs, "step_size_up": max(1, length // 2),
                     "cycle_momentum": "momentum" in optimizer.defaults and "betas" not in optimizer.defaults},
        "LinearLR": {"total_iters": length},
        "PolynomialLR": {"total_iters": length},
        "ReduceLROnPlateau": {"mode": mode},
    }
    return defaults.get(name, {})


def _children(spec: Spec, value: Any, optimizer, epochs: int, steps_per_epoch: int, mode: str) -> list:
    """The nested schedulers of SequentialLR / ChainedScheduler, each built like a top-level one."""
    if not isinstance(value, list):
        raise RegistryError(spec.error("schedulers must be a list of schedulers"))
    built = []
    for i, item in enumerate(value):
        child = build_scheduler(spec.child(item, f"schedulers.{i}"), optimizer, epochs, steps_per_epoch, mode=mode)
        built.append(child.scheduler)
    return built


def replay(schedule: Schedule, steps: int) -> None:
    """Advance a freshly built schedule by `steps` of its own intervals without training.

    Used when a resumed run changes `train.epochs`: the new plan is followed from the point the run
    has reached, as if the run had been started with the new length.
    """
    if schedule.scheduler is None or schedule.interval == "plateau":
        return
    with warnings.catch_warnings():
        # torch warns that the scheduler steps before the optimizer: here that is the point.
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(steps):
            schedule.scheduler.step()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The first group's learning rate (what the progress bar and metrics.csv show)."""
    value = optimizer.param_groups[0]["lr"]
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def monitor_mode(monitor: str, mode: str) -> str:
    """'max' for accuracy-like metrics, 'min' for losses and errors, unless `mode` says otherwise."""
    if mode != "auto":
        return mode
    return "max" if "accuracy" in monitor else "min"
