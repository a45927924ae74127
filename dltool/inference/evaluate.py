"""`dltool eval`: a checkpoint measured on the very split and eval transforms of its run.

The forward pass is the training engine's own `evaluate` (same loader, loss, autocast and
accuracy arithmetic), so evaluating `best.pt` gives exactly the validation accuracy that training
recorded for it. Its outputs are recorded on the way to derive per-class precision, recall and
F1, the confusion matrix and the misclassified samples (or MSE, MAE and R^2 for regression).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dltool.errors import ConfigError, DataError
from dltool.inference.kinds import require_checkpoint
from dltool.models.outputs import DEFAULT as DEFAULT_OUTPUT
from dltool.models.outputs import to_probabilities
from dltool.store.checkpoint import load_checkpoint, rebuild_model

SPLITS = ("val", "test", "train")
# Overrides that choose other data than the run's: its stored split no longer applies.
NEW_DATA_KEYS = ("data.dataset", "data.val_split")
# Overrides that re-split the run's own data: alone, they mix trained-on images into the validation set.
SPLIT_KEYS = ("data.val_split",)


@dataclass
class EvalResult:
    """Everything `dltool eval` reports. `outputs` are logits (classification) or predictions, one
    row per sample in dataset order; `ids` name the samples (path or "index N")."""

    checkpoint: str
    split: str
    task: str
    classes: list[str]
    metrics: dict
    ids: list[str]
    targets: torch.Tensor
    outputs: torch.Tensor
    per_class: list[dict] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    output: str = DEFAULT_OUTPUT  # what the outputs are (dltool.models.outputs)
    tta: dict | None = None  # with --tta: {"mode", "views", "metrics"} of the averaged prediction
    model: Any = field(default=None, repr=False, compare=False)  # for heat maps (eval --cam)
    samples: Any = field(default=None, repr=False, compare=False)  # the split's dataset, in `ids` order

    @property
    def probabilities(self) -> torch.Tensor:
        """(N, classes) class probabilities, as the run's loss implies (a single output: [1 - p, p])."""
        return to_probabilities(self.outputs, self.output)

    def averages(self) -> dict[str, dict]:
        """Macro (unweighted mean over classes) and weighted (by support) precision, recall, F1."""
        total = sum(row["support"] for row in self.per_class) or 1
        result = {}
        for name, weight in (("macro", lambda row: 1 / len(self.per_class)),
                             ("weighted", lambda row: row["support"] / total)):
            result[name] = {key: sum(weight(row) * row[key] for row in self.per_class)
                            for key in ("precision", "recall", "f1")}
        return result

    def misclassified(self) -> list[dict]:
        """The wrong predictions, most confident first: sample, true and predicted class, confidence."""
        probs = self.probabilities
        confidence, predicted = probs.max(1)
        wrong = (predicted != self.targets).nonzero().flatten().tolist()
        rows = [{"sample": self.ids[i], "index": i, "true": self.classes[int(self.targets[i])],
                 "predicted": self.classes[int(predicted[i])], "confidence": float(confidence[i]),
                 "true_probability": float(probs[i, int(self.targets[i])])} for i in wrong]
        return sorted(rows, key=lambda row: -row["confidence"])

    def to_json(self) -> dict:
        """docs/outputs.md: loss, accuracy, top5_accuracy, per_class, confusion_matrix, samples."""
        if self.task == "regression":
            return {**self.metrics, "samples": len(self.ids), "split": self.split, "checkpoint": self.checkpoint}
        averages = self.averages()
        return {**self.metrics, "per_class": self.per_class, "confusion_matrix": self.confusion,
                "samples": len(self.ids), "macro_avg": averages["macro"], "weighted_avg": averages["weighted"],
                "misclassified": len(self.misclassified()), "classes": self.classes, "split": self.split,
                "checkpoint": self.checkpoint, **({"tta": self.tta} if self.tta else {})}


class Recorder(nn.Module):
    """Wraps a model and keeps every output it produces (detached, on the CPU)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.outputs.append(out.detach().cpu())
        return out


def evaluate_checkpoint(target: str | Path, overrides: Sequence[str] = (), *, split: str = "val",
                        batch_size: int | None = None, device: str = "auto", tta: str | None = None) -> EvalResult:
    """Evaluate a checkpoint (or a run folder's best.pt, else last.pt) on one split of its data.

    Args:
        target: a checkpoint file or a run folder.
        overrides: `data.*` KEY=VALUE settings, e.g. another folder to evaluate on.
        split: val, test or train.
        batch_size: evaluation batch size (default: the run's).
        device: auto, cpu, cuda or cuda:N.
        tta: also measure the probabilities averaged over views (dltool.inference.tta): flip, crops.

    Raises:
        CheckpointError: the checkpoint is unsafe, damaged or does not fit its model, or the file is an
            exported model (named as what it is).
        ConfigError: a bad override, split or device.
        DataError: the data is missing, or does not match the model's classes or input shape.
    """
    if split not in SPLITS:
        raise ConfigError(f"--split: unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    require_checkpoint(target, "eval")
    checkpoint = load_checkpoint(target)
    model, config = rebuild_model(checkpoint)
    modes = _tta_modes(tta, checkpoint)
    data_config, bundle = _load_split(checkpoint, config, overrides, split, batch_size)
    if modes:
        from dltool.inference.tta import check_flips

        check_flips(modes, data_config)  # with the overrides: data.flip_invariant=true is said on the command line
    kind = checkpoint.get("output", DEFAULT_OUTPUT)  # older checkpoints: softmax, as always
    metrics, outputs = _forward(model, config, data_config, bundle, split, _device(device), kind)
    targets = _targets(bundle.dataset(split), bundle.task)
    result = EvalResult(checkpoint=checkpoint["path"], split=split, task=bundle.task, classes=list(bundle.classes),
                        metrics={}, ids=bundle.sample_ids(split), targets=targets, outputs=outputs, output=kind,
                        model=model, samples=bundle.dataset(split))
    if modes:
        from dltool.inference.tta import describe, views
        from dltool.inference.tta_model import Averaged

        tta_metrics, tta_outputs = _forward(Averaged(model, modes, kind), config, data_config, bundle, split,
                                            _device(device), kind)
        shape = checkpoint["input_shape"]
        result.tta = {"mode": describe(modes), "views": len(views(modes, shape[-2], shape[-1])),
                      "metrics": classification_metrics(tta_metrics, tta_outputs, targets)}
    if bundle.task == "regression":
        result.metrics = regression_metrics(metrics["val_loss"], outputs, targets)
    else:
        result.metrics = classification_metrics(metrics, outputs, targets)
        result.confusion = confusion_matrix(result.probabilities.argmax(1), targets, len(bundle.classes))
        result.per_class = per_class(result.confusion, bundle.classes)
    return result


def _tta_modes(tta: str | None, checkpoint: dict) -> tuple[str, ...]:
    """The --tta modes; refused for a regression model."""
    if tta is None:
        return ()
    from dltool.inference.tta import parse_mode

    modes = parse_mode(tta)
    if checkpoint.get("task", "classification") == "regression":
        raise ConfigError("--tta averages class probabilities; this checkpoint is a regression model")
    return modes


def _load_split(checkpoint: dict, config: Any, overrides: Sequence[str], split: str,
                batch_size: int | None) -> tuple[Any, Any]:
    """(config for the data, DataBundle with `split`): the run's own split unless overrides choose
    other data; the train split too when the loss weighs classes by their training counts."""
    from dltool.data import build_data

    _check_split_overrides(overrides, split)
    data_config = _with_overrides(checkpoint, overrides)
    if batch_size is not None:
        data = dataclasses.replace(data_config.data, eval_batch_size=batch_size)
        data_config = dataclasses.replace(data_config, data=data)
    same_data = not any(o.split("=", 1)[0].startswith(NEW_DATA_KEYS) for o in overrides)
    splits = (split, "train") if _balanced(config) and split != "train" else (split,)
    bundle = build_data(data_config, splits=splits, split_state=checkpoint.get("split") if same_data else None)
    _check_fits(bundle, checkpoint)
    return data_config, bundle


def _check_split_overrides(overrides: Sequence[str], split: str) -> None:
    """A new validation split of the run's own data would hold images the model trained on.

    Raises:
        ConfigError: a split-changing override without other data and without --split test/train.
    """
    keys = [text.split("=", 1)[0] for text in overrides]
    other_data = any(key.startswith("data.dataset") for key in keys)
    resplit = next((text for text, key in zip(overrides, keys) if key in SPLIT_KEYS), None)
    if resplit is not None and not other_data and split == "val":
        raise ConfigError(f"override {resplit!r}: a new split of the run's own data would put images the model "
                          "trained on into the validation set; eval keeps the run's split unless other data is "
                          "given (e.g. data.dataset.root=other/folder) or --split test or train is asked")


def _balanced(config: Any) -> bool:
    return config.loss.kwargs.get("weight") == "balanced"


def _forward(model: nn.Module, config: Any, data_config: Any, bundle: Any, split: str,
             device: torch.device, output: str) -> tuple[dict, torch.Tensor]:
    """The engine's evaluate over the split, set up as training set it up: (metrics, outputs)."""
    from dltool.data import make_loader
    from dltool.training.engine import StepOptions, evaluate
    from dltool.training.optim import build_loss
    from dltool.training.runtime import num_threads

    counts = _class_counts(bundle.train, len(bundle.classes)) if _balanced(config) else None
    loss_fn = build_loss(config.loss, counts).to(device)
    loader = make_loader(bundle.dataset(split), data_config.data, train=False, seed=data_config.seed,
                         device=str(device))
    opts = StepOptions(device=device, task=bundle.task, amp=config.train.amp, channels_last=config.train.channels_last,
                       output=output)
    layout = torch.channels_last if config.train.channels_last else torch.preserve_format
    recorder = Recorder(model.to(device, memory_format=layout))
    with num_threads(config.train.threads):  # as training measured it: the same sums, the same loss
        metrics, _ = evaluate(recorder, loader, loss_fn, opts)
    return metrics, torch.cat(recorder.outputs) if recorder.outputs else torch.empty(0)


def _with_overrides(checkpoint: dict, overrides: Sequence[str]) -> Any:
    """The checkpoint's config with `data.*` overrides applied (the model and training stay fixed)."""
    from dltool.config.load import apply_override, validate
    from dltool.config.spec import Mark, Marks

    data = copy.deepcopy(checkpoint["config"])
    marks = Marks({"": Mark(f"{checkpoint['path']} (stored config)")})
    for text in overrides:
        key = text.split("=", 1)[0]
        if not key.startswith("data."):
            raise ConfigError(f"override {text!r}: eval takes data.* settings only (the checkpoint fixes the "
                              "model and training); e.g. data.dataset.root=other/folder")
        apply_override(data, marks, text)
    return validate(data, marks, path=None)


def _check_fits(bundle: Any, checkpoint: dict) -> None:
    if bundle.task != checkpoint.get("task", bundle.task):
        raise DataError(f"the data is {bundle.task} but the model was trained for {checkpoint['task']}")
    if bundle.task == "classification" and list(bundle.classes) != list(checkpoint["classes"]):
        raise DataError(f"the data has classes {_few(bundle.classes)} but the model was trained on "
                        f"{_few(checkpoint['classes'])}; evaluate on data with the same classes")
    if list(bundle.input_shape) != list(checkpoint["input_shape"]):
        raise DataError(f"the data gives inputs of shape {list(bundle.input_shape)} after its eval transforms, "
                        f"but the model takes {list(checkpoint['input_shape'])}")


def _few(names: Sequence[str]) -> str:
    return "[" + ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "") + "]"


def _device(name: str) -> torch.device:
    from dltool.training.runtime import resolve_device

    try:
        return resolve_device(name)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("train.device", "--device", 1)) from None


def _class_counts(dataset: Any, classes: int) -> list[int]:
    counts = [0] * classes
    for target in dataset.targets:
        counts[int(target)] += 1
    return counts


def _targets(dataset: Any, task: str) -> torch.Tensor:
    if task == "regression":
        return torch.tensor([[float(v) for v in torch.as_tensor(t).flatten()] for t in dataset.targets])
    return torch.tensor([int(t) for t in dataset.targets], dtype=torch.long)


def classification_metrics(engine_metrics: dict, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """loss, accuracy and top5_accuracy as the engine measured them; below five classes top-5 is
    left out, as training leaves it out (every class is among the top five: it would always be 1)."""
    metrics = {"loss": engine_metrics["val_loss"], "accuracy": engine_metrics["val_accuracy"]}
    if "val_top5_accuracy" in engine_metrics:
        metrics["top5_accuracy"] = engine_metrics["val_top5_accuracy"]
    return metrics


def regression_metrics(loss: float, outputs: torch.Tensor, targets: torch.Tensor) -> dict:
    """loss, MSE, MAE and R^2 (1 - residual / total sum of squares, over all output values)."""
    predicted = outputs.double().reshape(targets.shape)
    truth = targets.double()
    residual = ((predicted - truth) ** 2).sum()
    total = ((truth - truth.mean(0)) ** 2).sum()
    r2 = float(1 - residual / total) if total > 0 else float("nan")
    return {"loss": loss, "mse": float(((predicted - truth) ** 2).mean()),
            "mae": float((predicted - truth).abs().mean()), "r2": r2}


def confusion_matrix(predicted: torch.Tensor, targets: torch.Tensor, classes: int) -> list[list[int]]:
    """counts[true][predicted]."""
    flat = torch.bincount(targets * classes + predicted, minlength=classes * classes)
    return flat.reshape(classes, classes).tolist()


def per_class(confusion: list[list[int]], classes: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support of each class (0.0 where undefined, as scikit-learn)."""
    matrix = torch.tensor(confusion, dtype=torch.float64).reshape(len(classes), len(classes))
    hits = matrix.diagonal()
    predicted, support = matrix.sum(0), matrix.sum(1)
    rows = []
    for i, name in enumerate(classes):
        precision = float(hits[i] / predicted[i]) if predicted[i] else 0.0
        recall = float(hits[i] / support[i]) if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": int(support[i])})
    return rows


def default_out_dir(checkpoint: str | Path, split: str = "val") -> Path:
    """The run folder's eval/ for the validation split, eval-test/ or eval-train/ for the others (a
    checkpoint outside a run: beside it), so one split's report never replaces another's."""
    from dltool.store.checkpoint import resolve_checkpoint
    from dltool.training.run_folder import run_dir_of

    folder = "eval" if split == "val" else f"eval-{split}"
    return run_dir_of(resolve_checkpoint(checkpoint)) / folder
