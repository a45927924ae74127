"""`dltool predict --model FILE --trust-program` with a TorchScript file from `dltool export --format
torchscript`: the file's own classes and preprocessing plan (its `_extra_files`, checked as an ONNX
file's metadata), images through PIL and numpy as on the ONNX path, the batch through `torch.jit.load`'s
module. A TorchScript file is a program: loading it runs its code, so dltool.inference.predictors opens
it only when the user trusts it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from dltool.errors import CheckpointError, first_line
from dltool.inference.kinds import TORCHSCRIPT
from dltool.inference.predictors import Predictor, device_of, read_exported_into

EXTRA_FILES = ("classes", "preprocess", "task", "output")


class TorchScriptPredictor(Predictor):
    """An exported TorchScript file ready to classify files."""

    kind = TORCHSCRIPT

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> TorchScriptPredictor:
        import torch

        self = cls()
        self.path = str(path)
        self.device = device_of(device)
        extra = {name: "" for name in EXTRA_FILES}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript; it still loads
                self.model = torch.jit.load(self.path, map_location=self.device, _extra_files=extra)
        except (RuntimeError, ValueError) as exc:
            first = first_line(exc)[:160]
            raise CheckpointError(f"{self.path}: not a readable TorchScript file ({first})") from None
        metadata = {k: v.decode(errors="replace") if isinstance(v, bytes) else v
                    for k, v in extra.items() if v}
        read_exported_into(self, metadata)
        return self

    def run(self, inputs: list[np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(np.stack(inputs)).to(self.device)).float().cpu().numpy()
