"""`dltool predict`: classify image files, folders and globs with a checkpoint alone.

Images are read exactly as training read its eval samples (dltool.inference.plan_torch.ImageReader: the same
decoding, channel conversion and eval transforms), batched, and run under `torch.inference_mode`.
A file that cannot be read gets an error entry and the others are still classified.

Every model file goes through the one Predictor interface (dltool.inference.predictors); OPENERS
below picks the implementation by the file's content: an ONNX file through onnxruntime, so torch is
imported only for checkpoints; a TorchScript file only with trust_program, since it is a program.
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from dltool.errors import CheckpointError, ConfigError, ImageError
from dltool.inference import kinds
from dltool.inference.predictors import CheckpointPredictor, Predictor


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


def predict(inputs: Sequence[str], model_path: str | Path, *, topk: int = 5, batch_size: int = 64,
            device: str = "auto", tta: str | None = None, trust_program: bool = False,
            on_progress: Callable[[int, int], None] | None = None) -> list[Prediction]:
    """Classify every image the inputs name, in batches; unreadable inputs get an error entry.

    The files of the next batch are decoded and preprocessed in threads (PIL decodes without the
    GIL) while the model runs the current one.

    Args:
        inputs: files, folders (searched recursively for image files) and glob patterns.
        model_path: a checkpoint file, a run folder (best.pt, else last.pt), or an exported file.
        topk: how many classes to list per image.
        batch_size: images per forward pass.
        device: auto, cpu, cuda or cuda:N.
        tta: average each image's probabilities over views (dltool.inference.tta): flip, crops.
        trust_program: run a TorchScript file (a program); without it, such a file is refused.
        on_progress: called with (inputs done, inputs in all) after every batch.

    Returns:
        One Prediction per file found (or per input that named nothing), in input order.

    Raises:
        CheckpointError: the model file is unsafe, damaged, inconsistent, or an untrusted program.
        ConfigError: topk, batch_size or device is out of range; --tta asks for flips the run refuses.
    """
    if topk < 1 or batch_size < 1:
        raise ConfigError(f"--topk and --batch-size must be >= 1; got {topk} and {batch_size}")
    predictor = open_predictor(model_path, device, trust_program=trust_program)
    classify = predictor.classify
    if tta is not None:
        from dltool.inference import tta as augment

        modes = augment.parse_mode(tta)
        if predictor.task == "regression":
            raise ConfigError("--tta averages class probabilities; this model is a regression model")
        augment.check_flips(modes, getattr(predictor, "config", None))

        def classify(tensors: list, k: int) -> list:
            return augment.classify(predictor, tensors, k, modes)
    found = expand_inputs(inputs)
    chunks = list(_chunks(found, batch_size))
    results: list[Prediction] = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:

        def submit(k: int) -> list:  # chunk k read in the pool (nothing past the last)
            return [pool.submit(_read, predictor, item) for item in chunks[k]] if k < len(chunks) else []

        pending = submit(0)
        for k in range(len(chunks)):
            read = [future.result() for future in pending]
            pending = submit(k + 1)
            results += [prediction for prediction, _ in read]
            ready = [(prediction, x) for prediction, x in read if x is not None]
            if ready:
                rows = classify([x for _, x in ready], topk)
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
        return prediction, predictor.preprocess(path)
    except ImageError as exc:
        prediction.error = _without_path(str(exc), path)
        return prediction, None


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


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _without_path(message: str, path: str) -> str:
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# A spreadsheet runs a cell that begins with one of these as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def as_text_cell(text: str) -> str:
    """`text` as a spreadsheet shows it rather than runs it: a single quote before a formula start
    (`=cmd|' /C calc'!A0.png` -> `'=cmd|' /C calc'!A0.png`), as OWASP recommends."""
    return "'" + text if text.startswith(FORMULA_START) else text


def to_csv_rows(predictions: Sequence[Prediction]) -> list[list[Any]]:
    """Rows of path, rank, class, index, probability, error (one per listed class, or one per error).
    File names, class names and errors go through `as_text_cell`; the numbers dltool writes do not."""
    rows: list[list[Any]] = [["path", "rank", "class", "index", "probability", "error"]]
    for p in predictions:
        path = as_text_cell(p.path)
        if p.error is not None:
            rows.append([path, "", "", "", "", as_text_cell(p.error)])
        elif p.value is not None:
            rows.append([path, "", "", "", " ".join(f"{v:.6g}" for v in p.value), ""])
        else:
            rows += [[path, rank, as_text_cell(t["class"]), t["index"], f"{t['probability']:.6f}", ""]
                     for rank, t in enumerate(p.top, 1)]
    return rows

