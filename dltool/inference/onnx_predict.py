"""`dltool predict --model FILE.onnx`: classify with an exported file through onnxruntime alone.

Nothing here imports torch or torchvision: the file carries its classes and its eval preprocessing
(dltool.inference.eval_plan) in its metadata, images go through PIL and numpy
(dltool.inference.plan_numpy), and every batch runs through one onnxruntime session. A cold
one-image predict so costs a fraction of `import torch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dltool.errors import CheckpointError, ConfigError, MissingExtra, first_line
from dltool.inference.kinds import ONNX
from dltool.inference.metadata import NOT_USED, Invalid, check_classes
from dltool.inference.predictors import Predictor, read_exported_into

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


def session_options(ort: Any) -> Any:
    """The onnxruntime options of every dltool session: quiet, and no busy-waiting threads (a CLI run)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: Path, device: str = "cpu") -> tuple[Any, dict[str, str]]:
    """An onnxruntime session of `path` and the file's metadata.

    Raises:
        CheckpointError: missing, damaged, or not an ONNX model.
        MissingExtra: onnxruntime is not installed.
    """
    ort = import_onnxruntime("predict --model FILE.onnx")
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    try:
        session = ort.InferenceSession(str(path), session_options(ort), providers=providers(ort, device))
    except ort_errors(ort) as exc:
        reason = first_line(exc).split(":", 3)[-1].strip()[:160]
        raise CheckpointError(f"{path}: not a readable ONNX model ({reason}); export it again with "
                              "`dltool export RUN --format onnx`") from None
    return session, dict(session.get_modelmeta().custom_metadata_map)


class OnnxPredictor(Predictor):
    """An exported ONNX file ready to classify files: one session, its checked classes and preprocessing."""

    kind = ONNX

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> OnnxPredictor:
        self = cls()
        self.path = str(path)
        self.session, metadata = open_session(Path(path), device)
        read_exported_into(self, metadata)
        model_input, model_output = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = model_input.name
        _check_dims(self.path, model_input.shape[1:], list(self.input_shape))
        width = model_output.shape[-1] if len(model_output.shape) == 2 else None
        if isinstance(width, int):
            try:
                check_classes(self.classes, self.task, width)
            except Invalid as exc:
                raise CheckpointError(f"{self.path}: metadata {exc}; {NOT_USED}") from None
        return self

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        batch = np.ascontiguousarray(np.stack(inputs), dtype=np.float32)
        (outputs,) = self.session.run(None, {self.input_name: batch})[:1]
        return np.asarray(outputs)


def _check_dims(path: str, dims: list, expected: list[int]) -> None:
    """The graph's fixed input sizes agree with the metadata's (a named, free size agrees with any)."""
    if len(dims) != len(expected) or any(isinstance(d, int) and d != e for d, e in zip(dims, expected)):
        raise CheckpointError(f"{path}: metadata preprocess.input_shape {expected} does not fit the model's "
                              f"input {dims}; {NOT_USED}")
