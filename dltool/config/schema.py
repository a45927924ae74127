"""The typed Config: frozen dataclasses with each key's type, default and range (docs/config.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from dltool.config.spec import Marks, Spec


def _f(default: Any = None, *, factory: Any = None, **checks: Any) -> Any:
    """A dataclass field with range checks (`min`, `gt`, `lt`, `max`) in its metadata."""
    if factory is not None:
        return field(default_factory=factory, metadata=checks)
    return field(default=default, metadata=checks)


@dataclass(frozen=True)
class TransformsConfig:
    train: Optional[tuple[Spec, ...]] = None
    eval: Optional[tuple[Spec, ...]] = None


@dataclass(frozen=True)
class DataConfig:
    dataset: Spec = _f(factory=lambda: Spec("Digits"))
    val_split: float = _f(0.2, min=0, lt=1)  # 0: train on everything, no validation
    batch_size: int = _f(64, min=1)
    eval_batch_size: Optional[int] = _f(None, min=1)
    num_workers: Optional[int] = _f(None, min=0)  # None: CPU count - 1 on the per-sample path
    shuffle: bool = True
    drop_last: bool = False
    pin_memory: Literal["auto", True, False] = "auto"
    persistent_workers: bool = False
    sampler: Optional[Literal["balanced"]] = None
    channels: Optional[Literal[1, 3]] = None
    classes: Optional[tuple[Any, ...]] = None  # names or indices: keep those classes, relabelled 0..k-1
    transforms: TransformsConfig = _f(factory=TransformsConfig)
    batch_transforms: tuple[Spec, ...] = ()
    cache: Literal["auto", "ram", "none"] = "auto"
    cache_budget_mb: int = _f(2048, min=0)
    max_image_pixels: int = _f(89_478_485, min=1)
    decode: Literal["reduced", "full"] = "reduced"  # reduced: at the size the transforms need (data/draft.py)
    photo_cache_mb: Optional[int] = _f(None, min=0)  # None: a quarter of the machine's memory; 0: no cache
    flip_invariant: Optional[bool] = None  # false: a mirrored image may be another class (--tta refuses flips)


@dataclass(frozen=True)
class ModelConfig:
    layers: tuple[Spec, ...] = ()
    input_shape: Optional[tuple[int, ...]] = None
    init: Mapping[str, Any] = _f(factory=dict)
    freeze: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _f(10, min=1, max=1_000_000)
    device: str = "auto"
    deterministic: bool = False
    monitor: str = "auto"
    mode: Literal["auto", "max", "min"] = "auto"
    patience: Optional[int] = _f(None, min=1)
    min_delta: float = _f(0.0, min=0)
    clip_grad_norm: Optional[float] = _f(None, gt=0)
    clip_grad_value: Optional[float] = _f(None, gt=0)
    accumulate: int = _f(1, min=1)
    amp: Literal["none", "auto", "bf16", "fp16"] = "none"
    ema: Optional[float] = _f(None, gt=0, lt=1)
    warmup_epochs: float = _f(0.0, min=0)
    scheduler_interval: Literal["auto", "epoch", "step"] = "auto"
    channels_last: bool = False
    compile: bool = False
    histograms: bool = False  # weight/gradient histograms each epoch: ~0.1 s per million parameters
    log_every: int = _f(10, min=1)
    unfreeze_at: Optional[int] = _f(None, min=1)
    threads: Optional[int] = _f(None, min=1)
    loggers: tuple[Literal["tensorboard", "mlflow"], ...] = ("tensorboard",)  # mlflow: extra [mlflow]


@dataclass(frozen=True)
class Config:
    seed: int = _f(0, min=0)
    data: DataConfig = _f(factory=DataConfig)
    model: ModelConfig = _f(factory=ModelConfig)
    loss: Spec = _f(factory=lambda: Spec("CrossEntropyLoss"))
    optimizer: Spec = _f(factory=lambda: Spec("Adam", kwargs={"lr": 1e-3}))
    scheduler: Optional[Spec] = None
    train: TrainConfig = _f(factory=TrainConfig)
    tune: Optional[Mapping[str, Any]] = _f(None, omit_if_none=True)  # `dltool tune` reads it; `train` ignores it
    path: Optional[str] = field(default=None, compare=False, metadata={"internal": True})
    marks: Marks = field(default_factory=Marks, compare=False, repr=False, metadata={"internal": True})

    @property
    def stem(self) -> str:
        return Path(self.path).stem if self.path else "run"

    def to_data(self) -> dict:
        """The resolved config as plain YAML data (defaults filled in); `config_from_data` inverts it."""
        return _to_data(self)


def _to_data(obj: Any) -> Any:
    if isinstance(obj, Spec):
        return obj.to_data()
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not f.metadata.get("internal")
                and not (f.metadata.get("omit_if_none") and getattr(obj, f.name) is None)}
    if isinstance(obj, tuple):
        return [_to_data(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: _to_data(v) for k, v in obj.items()}
    return obj
