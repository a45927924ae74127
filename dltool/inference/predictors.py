"""One interface for every model file `predict` takes, and its checkpoint implementation.

A Predictor is opened by `load` (the file checked, its classes and preprocessing read once), turns
an image file into the model's input with `preprocess`, runs a batch with `run`, and names its
`classes`; `classify` (shared) turns outputs into top classes. The implementations: a checkpoint
(here, torch), an ONNX file (dltool.inference.onnx_predict: onnxruntime, no torch) and a TorchScript
file (dltool.inference.torchscript_predict). dltool.inference.predict holds the table from a file's
kind to its implementation. Nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np

from dltool.errors import CheckpointError, ConfigError, ImageError
from dltool.inference import kinds


class Predictor(Protocol):
    """A model file ready to classify image files."""

    path: str
    classes: list[str]
    task: str
    output: str  # what the outputs are (dltool.models.outputs)
    input_shape: tuple[int, ...]
    read: Callable[[str], Any]  # image file -> the eval transforms' result
    kind: ClassVar[str]

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Predictor:
        """Open the file: its model, classes and preprocessing, each checked."""
        ...

    def run(self, inputs: list) -> np.ndarray:
        """(N, outputs) float32 outputs for a batch of preprocessed inputs."""
        ...

    def preprocess(self, file: str) -> Any:
        """The model input for the image at `file`.

        Raises:
            ImageError: unreadable, or a shape after the eval transforms that the model does not take.
        """
        return checked_input(self.read(file), self.input_shape, file)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """(N, classes) class probabilities of (N, outputs) outputs, as the file's `output` says."""
        return to_probabilities(outputs, self.output)

    def classify(self, inputs: list, topk: int) -> list[tuple[list[dict] | None, list[float] | None]]:
        """(top entries, None) per row for a classifier, (None, outputs) for a regressor."""
        outputs = self.run(inputs).astype(np.float32).reshape(len(inputs), -1)
        if self.task == "regression":
            return [(None, [float(v) for v in row]) for row in outputs]
        width = outputs.shape[1]
        if len(self.classes) not in (width, 2 if width == 1 else -1):
            raise CheckpointError(f"{self.path}: names {len(self.classes)} classes but its model gives {width} "
                                  "outputs; the file is inconsistent")
        return [(top, None) for top in top_rows(self.probabilities(outputs), self.classes, topk)]


def checked_input(x: Any, input_shape: Sequence[int], path: str) -> Any:
    """`x` (a tensor or an array) if the model takes its shape.

    Raises:
        ImageError: a shape after the eval transforms that the model does not take.
    """
    if tuple(x.shape) != tuple(input_shape):
        raise ImageError(f"{path}: gives an input of shape {list(x.shape)} after the run's eval transforms, "
                         f"but the model takes {list(input_shape)} (add a Resize to data.transforms.eval)")
    return x


def to_probabilities(outputs: np.ndarray, kind: str) -> np.ndarray:
    """(N, classes) probabilities from (N, outputs) model outputs of `kind` (softmax: logits,
    sigmoid: independent logits, log_softmax, probabilities); a single output p becomes [1 - p, p]."""
    if kind == "sigmoid":
        probs = 1 / (1 + np.exp(-outputs))
    elif kind == "log_softmax":
        probs = np.exp(outputs)
    elif kind == "probabilities":
        probs = outputs
    else:
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
    return np.concatenate([1 - probs, probs], axis=1) if probs.shape[1] == 1 else probs


def top_rows(probs: np.ndarray, classes: Sequence[str], topk: int) -> list[list[dict]]:
    """Each row's `topk` most probable classes: {class, index, probability}, most probable first."""
    order = np.argsort(-probs, axis=1, kind="stable")[:, :min(topk, probs.shape[1])]
    return [[{"class": classes[int(i)], "index": int(i), "probability": float(row[i])} for i in ix]
            for row, ix in zip(probs, order)]


def read_exported_into(predictor: Any, metadata: dict[str, str]) -> None:
    """Set an exported file's classes, task, output and numpy preprocessing from its checked metadata.

    Raises:
        CheckpointError: the metadata is missing, damaged or not what `dltool export` writes.
    """
    from dltool.inference.metadata import read_exported
    from dltool.inference.plan_numpy import NumpyPreprocess

    found = read_exported(metadata, predictor.path)
    predictor.classes, predictor.task, predictor.output = found.classes, found.task, found.output
    predictor.read = NumpyPreprocess(found.plan, predictor.path)
    predictor.input_shape = predictor.read.input_shape


def device_of(device: str) -> Any:
    """The torch device for --device (its errors name --device, not train.device)."""
    from dltool.training.runtime import resolve_device

    try:
        return resolve_device(device)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("train.device", "--device", 1)) from None


class CheckpointPredictor(Predictor):
    """A dltool checkpoint (or run folder): its model rebuilt from its config, images read as its
    eval samples were (dltool.inference.plan_torch.ImageReader)."""

    kind = kinds.CHECKPOINT

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> CheckpointPredictor:
        from dltool.data.transform_lists import transform_specs
        from dltool.inference.metadata import Invalid, check_classes, check_eval_transforms
        from dltool.inference.plan_torch import ImageReader
        from dltool.models.outputs import DEFAULT as DEFAULT_OUTPUT
        from dltool.store.checkpoint import load_checkpoint, rebuild_model

        self = cls()
        checkpoint = load_checkpoint(path)
        self.path = checkpoint["path"]
        self.task = checkpoint.get("task", "classification")
        self.classes = checkpoint.get("classes") or []
        try:
            check_classes(self.classes, self.task, named=False)
        except Invalid as exc:
            raise CheckpointError(f"{self.path}: {exc}; the checkpoint is not used") from None
        model, config = rebuild_model(checkpoint)
        check_eval_transforms(transform_specs(config.data.transforms)[1], self.path)
        self.device = device_of(device)
        self.model = model.to(self.device)
        self.output = checkpoint.get("output", DEFAULT_OUTPUT)  # older checkpoints: softmax, as always
        self.input_shape = tuple(checkpoint["input_shape"])
        self.read = ImageReader(config, self.input_shape)
        self.config = config  # the run's: --tta checks its flips, --cam its layers
        return self

    def run(self, inputs: list) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.stack(inputs).to(self.device)).float().cpu().numpy()

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """As eval computes them (torch), so that predict and eval agree to the last bit."""
        import torch

        from dltool.models.outputs import to_probabilities

        return to_probabilities(torch.from_numpy(outputs), self.output).numpy()
