"""`dltool predict --model FILE.onnx`: classify with an exported file through onnxruntime alone.

Nothing here imports torch or torchvision: the file carries its classes and its eval preprocessing
(dltool.inference.plan) in its metadata, images go through PIL and numpy
(dltool.inference.preprocess_numpy), and every batch runs through one onnxruntime session. A cold
one-image predict so costs a fraction of `import torch`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dltool.errors import CheckpointError, ConfigError, MissingExtra, first_line
from dltool.inference.preprocess_numpy import NumpyPreprocess, checked_input

EXTRA = 'pip install "dltool[onnx]"'
ORT_ERRORS = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "EngineError", "RuntimeException",
              "InvalidProtobuf", "ModelLoaded", "NotImplemented", "InvalidGraph", "EPFail")


def import_onnxruntime(what: str) -> Any:
    """onnxruntime, or a one-line error naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtra(f"{what} needs onnxruntime, which is not installed: {EXTRA}") from None
    return onnxruntime


def ort_errors(ort: Any) -> tuple[type, ...]:
    """The exception classes onnxruntime raises for a bad model or input (none derives from RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(getattr(state, name) for name in ORT_ERRORS if hasattr(state, name))


def providers(ort: Any, device: str) -> list[str]:
    """Execution providers for --device: the CPU for auto and cpu, CUDA where onnxruntime has it."""
    if device in ("auto", "cpu"):
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(f"--device: {device!r} is not available to onnxruntime here "
                      f"(it has {', '.join(ort.get_available_providers())}); use auto or cpu")


def open_session(path: Path, device: str = "cpu") -> tuple[Any, dict[str, str]]:
    """An onnxruntime session of `path` and the file's metadata.

    Raises:
        CheckpointError: missing, damaged, or not an ONNX model.
        MissingExtra: onnxruntime is not installed.
    """
    ort = import_onnxruntime("predict --model FILE.onnx")
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # a CLI run: no busy-waiting threads
    try:
        session = ort.InferenceSession(str(path), options, providers=providers(ort, device))
    except ort_errors(ort) as exc:
        reason = first_line(exc).split(":", 3)[-1].strip()[:160]
        raise CheckpointError(f"{path}: not a readable ONNX model ({reason}); export it again with "
                              "`dltool export RUN --format onnx`") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


def read_metadata(metadata: dict[str, str], source: str) -> tuple[list[str], str, str, dict]:
    """(classes, task, output kind, preprocess plan) from an exported file's metadata; a file
    without `output` holds logits (softmax), as every checkpoint did before its `output` key.

    Raises:
        CheckpointError: the file was not written by `dltool export` (a key is missing or not JSON).
    """
    try:
        classes = json.loads(metadata["classes"])
        plan = json.loads(metadata["preprocess"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: has no dltool metadata ({exc}); only files written by "
                              "`dltool export` carry the classes and preprocessing predict needs") from None
    return list(classes), metadata.get("task", "classification"), metadata.get("output", "softmax"), plan


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


def top_entries(outputs: np.ndarray, classes: Sequence[str], task: str, topk: int,
                kind: str = "softmax") -> list[tuple[list[dict] | None, list[float] | None]]:
    """(top entries, None) per row for a classifier, (None, outputs) for a regressor, as
    dltool.inference.predict.Predictor.classify gives them."""
    outputs = outputs.astype(np.float32).reshape(len(outputs), -1)
    if task == "regression":
        return [(None, [float(v) for v in row]) for row in outputs]
    probs = to_probabilities(outputs, kind)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :min(topk, probs.shape[1])]
    return [([{"class": classes[int(i)], "index": int(i), "probability": float(row[i])} for i in ix], None)
            for row, ix in zip(probs, order)]


class OnnxPredictor:
    """An exported ONNX file ready to classify files: one session, its classes and preprocessing."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        self.path = str(model_path)
        self.session, metadata = open_session(Path(model_path), device)
        self.classes, self.task, self.output, plan = read_metadata(metadata, self.path)
        self.read = NumpyPreprocess(plan, self.path)
        self.input_shape = self.read.input_shape
        self.input_name = self.session.get_inputs()[0].name

    def load(self, path: str) -> np.ndarray:
        """The model input for one file.

        Raises:
            ImageError: unreadable, or a shape after the eval transforms that the model does not take.
        """
        return checked_input(self.read(path), self.input_shape, path)

    def classify(self, inputs: list[np.ndarray], topk: int) -> list[tuple[list[dict] | None, list[float] | None]]:
        """Top entries (or regression outputs) for a batch of loaded inputs."""
        batch = np.ascontiguousarray(np.stack(inputs), dtype=np.float32)
        (outputs,) = self.session.run(None, {self.input_name: batch})[:1]
        return top_entries(np.asarray(outputs), self.classes, self.task, topk, self.output)
