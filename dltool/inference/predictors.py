"""One interface for every model file `predict` takes, and the table that picks its implementation.

A Predictor is opened by `load` (the file checked, its classes and preprocessing read once), turns
an image file into the model's input with `preprocess`, runs a batch with `run`, and names its
`classes`. The table goes from the file's kind (dltool.inference.kinds, told by content) to the
implementation: a checkpoint (torch), an ONNX file (onnxruntime, no torch) or a TorchScript file,
which is a program and runs only when the caller trusts it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np

from dltool.errors import CheckpointError, ConfigError
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
        from dltool.inference.preprocess_numpy import checked_input

        return checked_input(self.read(file), self.input_shape, file)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """(N, classes) class probabilities of (N, outputs) outputs, as the file's `output` says."""
        from dltool.inference.onnx_predict import to_probabilities

        return to_probabilities(outputs, self.output)

    def classify(self, inputs: list, topk: int) -> list[tuple[list[dict] | None, list[float] | None]]:
        """(top entries, None) per row for a classifier, (None, outputs) for a regressor."""
        from dltool.inference.onnx_predict import top_rows

        outputs = self.run(inputs).astype(np.float32).reshape(len(inputs), -1)
        if self.task == "regression":
            return [(None, [float(v) for v in row]) for row in outputs]
        width = outputs.shape[1]
        if len(self.classes) not in (width, 2 if width == 1 else -1):
            raise CheckpointError(f"{self.path}: names {len(self.classes)} classes but its model gives {width} "
                                  "outputs; the file is inconsistent")
        return [(top, None) for top in top_rows(self.probabilities(outputs), self.classes, topk)]


def device_of(device: str) -> Any:
    """The torch device for --device (its errors name --device, not train.device)."""
    from dltool.training.runtime import resolve_device

    try:
        return resolve_device(device)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("train.device", "--device", 1)) from None


class CheckpointPredictor(Predictor):
    """A dltool checkpoint (or run folder): its model rebuilt from its config, images read as its
    eval samples were (dltool.inference.preprocess.ImageReader)."""

    kind = kinds.CHECKPOINT

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> CheckpointPredictor:
        from dltool.data.specs import transform_specs
        from dltool.inference.metadata import Invalid, check_classes, check_eval_transforms
        from dltool.inference.preprocess import ImageReader
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


def _torchscript(path: str | Path, device: str, trust_program: bool) -> Predictor:
    if not trust_program:
        raise CheckpointError(f"{path}: a TorchScript program: loading it runs the code inside it, so it was not "
                              "loaded; if you trust where it came from, run it knowingly with --trust-program "
                              "(an ONNX export runs no code)")
    from dltool.inference.torchscript_predict import TorchScriptPredictor

    return TorchScriptPredictor.load(path, device)


def _onnx(path: str | Path, device: str, trust_program: bool) -> Predictor:
    from dltool.inference.onnx_predict import OnnxPredictor

    return OnnxPredictor.load(path, device)


def _checkpoint(path: str | Path, device: str, trust_program: bool) -> Predictor:
    return CheckpointPredictor.load(path, device)


# file kind -> how `predict` opens it
OPENERS: dict[str, Callable[[str | Path, str, bool], Predictor]] = {
    kinds.CHECKPOINT: _checkpoint, kinds.ONNX: _onnx, kinds.TORCHSCRIPT: _torchscript,
}


def open_predictor(path: str | Path, device: str = "auto", *, trust_program: bool = False) -> Predictor:
    """The predictor for what --model names, chosen by the file's content, whatever its name.

    Args:
        path: a checkpoint, run folder, or exported ONNX or TorchScript file.
        device: auto, cpu, cuda or cuda:N.
        trust_program: load a TorchScript file, which runs its code (never without it).

    Raises:
        CheckpointError: the file is damaged, hostile, inconsistent, or a TorchScript program not trusted.
    """
    return OPENERS[kinds.file_kind(path)](path, device, trust_program)

