"""`dltool predict --model FILE.pt` with a TorchScript file from `dltool export --format torchscript`:
the file's own classes and preprocessing plan (its `_extra_files`), images through PIL and numpy
as on the ONNX path, the batch through `torch.jit.load`'s module."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import numpy as np

from dltool.errors import CheckpointError, first_line
from dltool.inference.onnx_predict import read_metadata, top_entries
from dltool.inference.preprocess_numpy import NumpyPreprocess, checked_input

EXTRA_FILES = ("classes", "preprocess", "task", "output", "dltool_config")


def is_torchscript(path: str | Path) -> bool:
    """Whether `path` is a TorchScript archive (it holds code/), not a torch.save checkpoint."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name or name.endswith("constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class TorchScriptPredictor:
    """An exported TorchScript file ready to classify files."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        import torch

        from dltool.errors import ConfigError
        from dltool.training.runtime import resolve_device

        self.path = str(model_path)
        extra = {name: "" for name in EXTRA_FILES}
        try:
            self.device = resolve_device(device)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("train.device", "--device", 1)) from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; it still loads
                self.model = torch.jit.load(self.path, map_location=self.device, _extra_files=extra)
        except (RuntimeError, ValueError) as exc:
            first = first_line(exc)[:160]
            raise CheckpointError(f"{self.path}: not a readable TorchScript file ({first})") from None
        metadata = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items() if v}
        self.classes, self.task, self.output, plan = read_metadata(metadata, self.path)
        self.read = NumpyPreprocess(plan, self.path)
        self.input_shape = self.read.input_shape

    def load(self, path: str) -> np.ndarray:
        """The model input for one file (as OnnxPredictor.load)."""
        return checked_input(self.read(path), self.input_shape, path)

    def classify(self, inputs: list[np.ndarray], topk: int) -> list[tuple[list[dict] | None, list[float] | None]]:
        """Top entries (or regression outputs) for a batch of loaded inputs."""
        import torch

        with torch.inference_mode():
            outputs = self.model(torch.from_numpy(np.stack(inputs)).to(self.device)).float().cpu().numpy()
        return top_entries(outputs, self.classes, self.task, topk, self.output)
