"""`dltool predict`: classify image files, folders and globs with a checkpoint alone.

Images are read exactly as training read its eval samples (dltool.inference.preprocess.ImageReader: the same
decoding, channel conversion and eval transforms), batched, and run under `torch.inference_mode`.
A file that cannot be read gets an error entry and the others are still classified.

A model file from `dltool export` goes the same way through its own predictor (dltool.inference):
an .onnx file through onnxruntime, so this module imports torch only for checkpoints.
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from dltool.errors import ConfigError, ImageError
from dltool.inference.preprocess_numpy import checked_input

if TYPE_CHECKING:
    import torch


@dataclass
class Prediction:
    """One input: its top classes (or regression output), or why it could not be classified."""

    path: str
    top: list[dict] | None = None
    value: list[float] | None = None
    error: str | None = None

    def to_json(self) -> dict:
        """docs/outputs.md: {path, top: [{class, index, probability}]} or {path, error}."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        if self.value is not None:
            return {"path": self.path, "value": self.value}
        return {"path": self.path, "top": self.top}


def image_extensions() -> tuple[str, ...]:
    """The file extensions a folder input is searched for (those ImageFolder reads)."""
    from dltool.data.folders import IMG_EXTENSIONS

    return IMG_EXTENSIONS


def expand_inputs(inputs: Sequence[str]) -> list[tuple[str, str | None]]:
    """(path, error) for every file the inputs name: files as given, folders searched recursively
    for image files, glob patterns expanded. An input that names nothing gets an error entry."""
    found: list[tuple[str, str | None]] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            files = _folder_images(path)
            found += [(f, None) for f in files] or [(text, "folder holds no image files "
                                                    f"({', '.join(image_extensions())})")]
        elif path.exists():
            found.append((text, None))
        elif glob.has_magic(text):
            matches = sorted(glob.glob(text, recursive=True))
            files = [f for m in matches for f in (_folder_images(Path(m)) if os.path.isdir(m) else [m])]
            found += [(f, None) for f in files] or [(text, "no file matches this pattern")]
        else:
            found.append((text, "no such file or folder"))
    return found


def _folder_images(folder: Path) -> list[str]:
    """Image files under `folder`, links followed once each (dltool.data.walk: a loop ends, a walk
    into a system folder stops at its cap with one line)."""
    from dltool.data.walk import walk_images

    return sorted(walk_images(folder, tuple(image_extensions())).files)


class Predictor:
    """A checkpoint ready to classify files: its model, classes and image reader."""

    def __init__(self, model_path: str | Path, device: str = "auto"):
        from dltool.inference.preprocess import ImageReader
        from dltool.models.outputs import DEFAULT as DEFAULT_OUTPUT
        from dltool.store.checkpoint import load_checkpoint, rebuild_model
        from dltool.training.runtime import resolve_device

        checkpoint = load_checkpoint(model_path)
        model, config = rebuild_model(checkpoint)
        try:
            self.device = resolve_device(device)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("train.device", "--device", 1)) from None
        self.model = model.to(self.device)
        self.classes = list(checkpoint.get("classes") or [])
        self.task = checkpoint.get("task", "classification")
        self.output = checkpoint.get("output", DEFAULT_OUTPUT)  # older checkpoints: softmax, as always
        self.input_shape = tuple(checkpoint["input_shape"])
        self.read = ImageReader(config, self.input_shape)
        self.path = checkpoint["path"]

    def load(self, path: str) -> torch.Tensor:
        """The model input for one file.

        Raises:
            ImageError: unreadable, or a shape after the eval transforms that the model does not take.
        """
        return checked_input(self.read(path), self.input_shape, path)

    def classify(self, inputs: list, topk: int) -> list[tuple[list[dict] | None, list[float] | None]]:
        """(top entries, None) per row for a classifier, (None, outputs) for a regressor."""
        import torch

        from dltool.models.outputs import to_probabilities

        with torch.inference_mode():
            out = self.model(torch.stack(inputs).to(self.device)).float().cpu()
        if self.task == "regression":
            return [(None, row.flatten().tolist()) for row in out]
        probs = to_probabilities(out, self.output)
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [([{"class": self.classes[int(i)], "index": int(i), "probability": float(p)}
                  for p, i in zip(vs, ix)], None) for vs, ix in zip(values, indices)]


def predict(inputs: Sequence[str], model_path: str | Path, *, topk: int = 5, batch_size: int = 64,
            device: str = "auto", on_progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
    """Classify every image the inputs name, in batches; unreadable inputs get an error entry.

    The files of the next batch are decoded and preprocessed in threads (PIL decodes without the
    GIL) while the model runs the current one.

    Args:
        inputs: files, folders (searched recursively for image files) and glob patterns.
        model_path: a checkpoint file or a run folder (best.pt, else last.pt).
        topk: how many classes to list per image.
        batch_size: images per forward pass.
        device: auto, cpu, cuda or cuda:N.
        on_progress: called with (inputs done, inputs in all) after every batch.

    Returns:
        One Prediction per file found (or per input that named nothing), in input order.

    Raises:
        CheckpointError: the checkpoint is unsafe, damaged or does not fit its model.
        ConfigError: topk, batch_size or device is out of range.
    """
    if topk < 1 or batch_size < 1:
        raise ConfigError(f"--topk and --batch-size must be >= 1; got {topk} and {batch_size}")
    predictor = open_predictor(model_path, device)
    found = expand_inputs(inputs)
    chunks = list(_chunks(found, batch_size))
    results: list[Prediction] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pending = [pool.submit(_read, predictor, item) for item in (chunks[0] if chunks else [])]
        for k in range(len(chunks)):
            read = [future.result() for future in pending]
            pending = [pool.submit(_read, predictor, item) for item in (chunks[k + 1] if k + 1 < len(chunks) else [])]
            results += [prediction for prediction, _ in read]
            ready = [(prediction, x) for prediction, x in read if x is not None]
            if ready:
                rows = predictor.classify([x for _, x in ready], topk)
                for (prediction, _), (top, value) in zip(ready, rows):
                    prediction.top, prediction.value = top, value
            if on_progress is not None:
                on_progress(len(results), len(found))
    return results


def _read(predictor: Any, item: tuple[str, str | None]) -> tuple[Prediction, Any]:
    """(the Prediction of one input, its model input or None when it has an error)."""
    path, error = item
    prediction = Prediction(path, error=error)
    if error is not None:
        return prediction, None
    try:
        return prediction, predictor.load(path)
    except ImageError as exc:
        prediction.error = _without_path(str(exc), path)
        return prediction, None


def open_predictor(model_path: str | Path, device: str = "auto") -> Any:
    """The predictor for what --model names: an exported .onnx file (onnxruntime, no torch), an
    exported TorchScript file, or a dltool checkpoint or run folder."""
    if str(model_path).lower().endswith(".onnx"):
        from dltool.inference.onnx_predict import OnnxPredictor

        return OnnxPredictor(model_path, device)
    from dltool.inference.torchscript_predict import TorchScriptPredictor, is_torchscript

    if Path(model_path).is_file() and is_torchscript(model_path):
        return TorchScriptPredictor(model_path, device)
    return Predictor(model_path, device)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _without_path(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def to_csv_rows(predictions: Sequence[Prediction]) -> list[list[Any]]:
    """Rows of path, rank, class, index, probability, error (one per listed class, or one per error)."""
    rows: list[list[Any]] = [["path", "rank", "class", "index", "probability", "error"]]
    for p in predictions:
        if p.error is not None:
            rows.append([p.path, "", "", "", "", p.error])
        elif p.value is not None:
            rows.append([p.path, "", "", "", " ".join(f"{v:.6g}" for v in p.value), ""])
        else:
            rows += [[p.path, rank, t["class"], t["index"], f"{t['probability']:.6f}", ""]
                     for rank, t in enumerate(p.top, 1)]
    return rows


def render_table(predictions: Sequence[Prediction]) -> Any:
    """A rich table: each file's top classes with probabilities, or its error in red."""
    from rich.markup import escape
    from rich.table import Table

    table = Table()
    table.add_column("file", overflow="fold")
    table.add_column("prediction")
    table.add_column("probability", justify="right")
    table.add_column("also")
    for p in predictions:
        if p.error is not None:
            table.add_row(escape(p.path), f"[red]{escape(p.error)}[/red]", "", "")
        elif p.value is not None:
            table.add_row(escape(p.path), ", ".join(f"{v:.4g}" for v in p.value), "", "")
        else:
            best, rest = p.top[0], p.top[1:]
            also = ", ".join(f"{escape(t['class'])} {t['probability']:.3f}" for t in rest)
            table.add_row(escape(p.path), escape(best["class"]), f"{best['probability']:.3f}", also)
    return table
