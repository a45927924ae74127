"""The parts of a run, built once from a config: data, model, loss, optimizer, schedule, step options.

One function, `build_parts`, makes them for every caller: a fresh run, a resumed one (which then
loads its checkpoint's states into them), a run per fold or per tune trial, `dltool lr-find`,
`dltool config` and the first-step check. The order it builds them in is the order their random
draws were always made in, so a run from the same config starts bit for bit the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from dltool.config.load import Config
from dltool.config.spec import located
from dltool.data.bundle import DataBundle
from dltool.errors import ConfigError
from dltool.models.outputs import output_kind
from dltool.training import distributed
from dltool.training.engine import StepOptions, StepParts
from dltool.training.optim import build_loss, build_optimizer, build_scheduler, monitor_mode
from dltool.training.runtime import EMA, configure_backends, resolve_device, seed_all


@dataclass
class Parts(StepParts):
    """Everything a run trains with: the step's parts (model, forward, loss, optimizer, schedule,
    step options) and the data they learn from, with what the run watches."""

    config: Config
    bundle: DataBundle          # the datasets, classes, task, split
    input_shape: tuple
    classes: list
    split: dict                 # the split record a checkpoint keeps (a resumed run repeats it)
    device: torch.device
    train_loader: Any
    val_loader: Any | None
    steps_per_epoch: int
    monitor: str
    mode: str

    @property
    def task(self) -> str:
        """"classification" or "regression", as the data says."""
        return self.bundle.task


def build_parts(config: Config, *, bundle: DataBundle | None = None, input_shape: Any = None, split: dict | None = None,
                pretrained: bool = True) -> Parts:
    """Every part of a run from `config`, on this process's device (under torchrun, in its group).

    Args:
        bundle: the data, when the caller has built it already; else built here (on rank 0 first).
        input_shape: the model's input shape (a resumed run's checkpoint has it); default: the data's.
        split: a split record for the data to repeat (a fold of `--folds`), when it is built here.
        pretrained: whether a model with pretrained weights reads them (a resumed run's come from
            its checkpoint instead: not read, nor downloaded, again).

    Raises:
        ConfigError, DataError, ShapeError, RegistryError: what the config asks for cannot be built.
    """
    from dltool.data import build_data
    from dltool.models import build_model, resolve_input_shape

    device = resolve_device(config.train.device, config.marks)
    if bundle is None:
        distributed.join(device)
        with distributed.main_first():
            bundle = build_data(config, split_state=split)
    input_shape = tuple(input_shape if input_shape is not None else resolve_input_shape(config, data=bundle))
    group = distributed.join(device)  # under torchrun: this rank's device, in the process group
    device = group.device if group is not None else device
    configure_backends(device, config.train.deterministic)
    seed_all(config.seed)
    classes = list(bundle.classes)
    model = build_model(config.model, input_shape, len(classes) or None, pretrained=pretrained)
    model = model.to(device, memory_format=torch.channels_last if config.train.channels_last else torch.preserve_format)
    loss_fn = build_loss(config.loss, _class_counts(bundle, classes)).to(device)
    optimizer = build_optimizer(config.optimizer, model, device=device)
    train_loader, val_loader = _loaders(config, bundle, device)
    steps_per_epoch = math.ceil(len(train_loader) / config.train.accumulate)
    monitor = _monitor_name(config, bundle)
    mode = monitor_mode(monitor, config.train.mode)
    schedule = build_scheduler(config.scheduler, optimizer, config.train.epochs, steps_per_epoch,
                               interval=config.train.scheduler_interval, warmup_epochs=config.train.warmup_epochs,
                               mode=mode)
    _check_monitor(config, bundle, monitor)
    opts = _step_options(config, model, device, bundle.task)
    forward = distributed.replicate(model, compile=config.train.compile)
    return Parts(model=model, forward=forward, loss_fn=loss_fn, optimizer=optimizer, schedule=schedule, opts=opts,
                 config=config, bundle=bundle, input_shape=input_shape, classes=classes, split=bundle.split,
                 device=device, train_loader=train_loader, val_loader=val_loader, steps_per_epoch=steps_per_epoch,
                 monitor=monitor, mode=mode)


def _class_counts(bundle: DataBundle, classes: list) -> list[int]:
    """Train samples per class (for `weight: balanced`); empty for regression."""
    counts = [0] * len(classes)
    for target in bundle.train.targets if classes else ():
        counts[int(target)] += 1
    return counts


def _loaders(config: Config, bundle: DataBundle, device: torch.device) -> tuple[Any, Any]:
    from dltool.data import make_loader

    data, seed = config.data, config.seed
    group = distributed.current()
    shard = {"rank": group.rank, "world_size": group.world_size} if group is not None else {}
    train = make_loader(bundle.train, data, train=True, seed=seed, device=str(device), **shard)
    if len(train) == 0:
        raise ConfigError(_no_full_batch(len(bundle.train), group, config))
    val = (make_loader(bundle.val, data, train=False, seed=seed, device=str(device), **shard)
           if bundle.val else None)
    return train, val


def _monitor_name(config: Config, bundle: DataBundle) -> str:
    monitor = config.train.monitor
    if monitor == "auto":
        if bundle.val is None:
            return "train_loss"
        return "val_loss" if bundle.task == "regression" else "val_accuracy"
    return monitor


def _check_monitor(config: Config, bundle: DataBundle, monitor: str) -> None:
    """train.monitor names a metric this run measures."""
    key = "mae" if bundle.task == "regression" else "accuracy"
    allowed = ["train_loss", f"train_{key}"]
    if bundle.val is not None:
        allowed += ["val_loss", f"val_{key}"] + (["val_top5_accuracy"] if len(bundle.classes) >= 5 else [])
    if monitor not in allowed:
        raise ConfigError(located(f"{monitor!r} is not measured in this run; allowed: auto, {', '.join(allowed)}",
                                  "train.monitor", config.marks))


def _step_options(config: Config, model: torch.nn.Module, device: torch.device, task: str) -> StepOptions:
    cfg = config.train
    scaler = torch.amp.GradScaler(device.type) if cfg.amp == "fp16" else None
    return StepOptions(
        device=device, task=task, accumulate=cfg.accumulate, clip_grad_norm=cfg.clip_grad_norm,
        clip_grad_value=cfg.clip_grad_value, amp=cfg.amp, channels_last=cfg.channels_last,
        log_every=cfg.log_every, scaler=scaler, ema=EMA(model, cfg.ema) if cfg.ema else None,
        compile_pending=cfg.compile, output=output_kind(config))


def _no_full_batch(samples: int, group: Any, config: Config) -> str:
    """The error for data.drop_last with fewer train samples (per process) than one batch: an epoch
    of no steps."""
    data = config.data
    per_process = math.ceil(samples / group.world_size) if group else samples
    count = f"the {samples} training samples" + (f" ({per_process} per process)" if group else "")
    return located(f"{data.batch_size} is more than {count}, and data.drop_last drops the incomplete batch: no "
                   f"step would run; use data.batch_size={max(1, per_process)} or less, or data.drop_last: false",
                   "data.batch_size", config.marks)
