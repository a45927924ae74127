"""`dltool export`: a checkpoint's model as one deployable file, checked before it is kept.

The model is rebuilt from the checkpoint alone (dltool.store.checkpoint.rebuild_model), in eval mode on
the CPU, and written with a dynamic batch axis:

- ONNX through torch's own exporter: the dynamo-based one (torch.export + onnxscript), which is
  torch's default and supported path; where it cannot take a model (a layer torch.export cannot
  trace, such as RReLU), the TorchScript-based exporter (dynamo=False), which torch keeps for
  such models. The file's metadata holds `classes` (JSON list), `preprocess` (the eval transforms
  as a plain-data plan, dltool.inference.eval_plan), `task`, `output` (what the outputs are: softmax
  logits unless the checkpoint says otherwise) and `dltool_config` (the resolved config).
- TorchScript through `torch.jit.trace` (`torch.jit.script` where tracing fails), with the same
  metadata in `_extra_files`, so `torch.jit.load` runs it without dltool.

Before the file is written, the exported model and the checkpoint's model run on a batch of real
inputs (eval samples where the run's data can be read, else random inputs of the model's shape)
and on its first input alone (the batch axis is dynamic): outputs that differ by more than 1e-4
are an error and nothing is written. The file is written atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dltool.errors import ConfigError, DltoolError, ExportError, MissingExtra, first_line

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4
CHECK_SAMPLES = 8
EXTRA = 'pip install "dltool[onnx]"'
# The dynamo-based exporter writes opset 18 and up; below, it writes 18 whatever was asked.
DYNAMO_MIN_OPSET = 18


@dataclass
class ExportResult:
    """What `export` wrote and how it checked it."""

    path: Path
    format: str
    exporter: str
    max_difference: float
    samples: int
    source: str  # "eval" (samples of the run's eval data) or "random"
    opset: int | None = None  # the opset written (ONNX only)

    def to_json(self) -> dict:
        return {"path": str(self.path), "format": self.format, "exporter": self.exporter, "opset": self.opset,
                "max_difference": self.max_difference, "samples": self.samples, "inputs": self.source}


def export(target: str | Path, fmt: str = "onnx", out: str | Path | None = None,
           opset: int | None = None) -> ExportResult:
    """Export the checkpoint (or a run folder's best.pt) to `fmt`, check it, and write it.

    Args:
        target: a checkpoint file or a run folder (best.pt, else last.pt).
        fmt: "onnx" or "torchscript" (any case).
        out: the file to write (default: next to the run folder or checkpoint, see default_out).
        opset: the ONNX opset, within opset_range() (default: the exporter's).

    Returns:
        An ExportResult.

    Raises:
        ConfigError: an unknown format, --opset with torchscript or out of range, an .onnx name for
            TorchScript.
        MissingExtra: onnx, onnxscript or onnxruntime is not installed (ONNX only).
        CheckpointError: the checkpoint cannot be read or rebuilt, or is an exported file.
        Unplannable: an eval transform has no plain-data form.
        ExportError: a layer cannot be exported, or the file computes something else.
    """
    fmt = check_options(fmt, out, opset)
    from dltool.inference.eval_plan import build_plan
    from dltool.inference.kinds import require_checkpoint
    from dltool.store.checkpoint import load_checkpoint, rebuild_model

    require_checkpoint(target, "export")
    checkpoint = load_checkpoint(target)
    read = Path(checkpoint["path"])
    path = prepare_out(Path(out) if out is not None else default_out(Path(target), read, fmt), read)
    model, config = rebuild_model(checkpoint)
    plan = build_plan(config, checkpoint["input_shape"])
    metadata = {"classes": json.dumps(list(checkpoint.get("classes") or [])), "preprocess": json.dumps(plan),
                "task": checkpoint.get("task", "classification"), "output": checkpoint.get("output", "softmax"),
                "dltool_config": json.dumps(checkpoint["config"])}
    inputs, source = check_inputs(checkpoint, config)
    writer = _onnx if fmt == "onnx" else _torchscript
    data, exporter, difference, written = writer(model, inputs, metadata, opset, checkpoint["path"])
    from dltool.store.writing import write_output

    path = write_output(path, data, inputs=[read])
    return ExportResult(path, fmt, exporter, difference, len(inputs), source, written)


def check_options(fmt: str, out: str | Path | None, opset: int | None) -> str:
    """The format in lower case, once the options agree with each other and with this torch.

    Raises:
        ConfigError: an unknown format, --opset with torchscript or outside the exporter's range, or
            an .onnx --out for a TorchScript file.
        MissingExtra: a package the ONNX export needs is absent.
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--format: unknown format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise ConfigError("--opset applies to --format onnx only")
    if fmt == "torchscript" and out is not None and str(out).lower().endswith(".onnx"):
        raise ConfigError(f"--out: {out} ends in .onnx but --format torchscript writes a TorchScript program; "
                          "name it .pt (or ask for --format onnx)")
    if fmt == "onnx":
        require_onnx()
        low, high = opset_range()
        if opset is not None and not low <= opset <= high:
            raise ConfigError(f"--opset: {opset} is not an opset this torch's ONNX exporter writes; allowed: "
                              f"{low} to {high}")
    return fmt


def opset_range() -> tuple[int, int]:
    """The lowest and highest ONNX opset torch.onnx exports to."""
    from torch.onnx import _constants

    return (getattr(_constants, "ONNX_MIN_OPSET", 7), getattr(_constants, "ONNX_MAX_OPSET", 20))


def require_onnx() -> None:
    """Raises MissingExtra naming the extra when a package the ONNX export needs is absent."""
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise MissingExtra(f"export --format onnx needs {name}, which is not installed: {EXTRA}") from None


def prepare_out(path: Path, source: Path) -> Path:
    """`path`, its folder created, checked before the export's work rather than after it.

    Raises:
        ConfigError: `path` is a folder, a device node or FIFO, the checkpoint `source`, a run's file or
            a checkpoint, or a file stands where its folder should be.
        Unwritable: the place refuses writes.
    """
    from dltool.store.writing import prepare_output

    if path.is_dir():
        raise ConfigError(f"--out: {path} is a folder; name the file to write, e.g. {path / 'model.onnx'}")
    return prepare_output(path, inputs=[source])


def default_out(target: Path, checkpoint: Path, fmt: str) -> Path:
    """runs/x/model.onnx for a run folder; beside the checkpoint, with its stem, for a file."""
    if target.is_dir():
        return target / f"model{SUFFIXES[fmt]}"
    return checkpoint.with_name(checkpoint.stem + SUFFIXES[fmt])


def check_inputs(checkpoint: dict, config: Any) -> tuple[Any, str]:
    """(batch, "eval") of up to CHECK_SAMPLES eval samples where the run's data can be read,
    else (batch, "random") of the model's input shape; at least two rows (the batch axis is dynamic)."""
    import torch

    shape = tuple(checkpoint["input_shape"])
    samples = _eval_samples(checkpoint, config, shape)
    if samples is not None:
        return samples, "eval"
    return torch.randn((CHECK_SAMPLES, *shape), generator=torch.Generator().manual_seed(0)), "random"


def _eval_samples(checkpoint: dict, config: Any, shape: tuple) -> Any:
    import torch

    from dltool.config.load import config_from_data
    from dltool.data import build_data

    try:
        with _quiet():
            config = config_from_data(_without_download(checkpoint["config"]))
            bundle = build_data(config, splits=("val",), split_state=checkpoint.get("split"))
            split = bundle.val
            count = min(CHECK_SAMPLES, len(split)) if split is not None else 0
            rows = [split[i][0] for i in range(count)]
    except (DltoolError, OSError):  # data not on this machine: random inputs check the file instead
        return None
    if len(rows) < 2 or any(tuple(r.shape) != shape for r in rows):
        return None
    return torch.stack(rows).float()


def _without_download(data: dict) -> dict:
    """The stored config with `download: false`: a check never fetches a dataset that is not here.
    The dataset is stored as {name: ..., download: ...} or in the one-key form {CIFAR10: {...}}."""
    dataset = data.get("data", {}).get("dataset")
    if not isinstance(dataset, dict):
        return data
    if "name" not in dataset and len(dataset) == 1 and isinstance(next(iter(dataset.values())), dict):
        name, arguments = next(iter(dataset.items()))
        dataset = {name: {**arguments, "download": False}} if arguments.get("download") else dataset
    elif dataset.get("download"):
        dataset = {**dataset, "download": False}
    return {**data, "data": {**data["data"], "dataset": dataset}}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' progress lines and warnings off the user's terminal (the library never prints)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), _silenced_fds():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _silenced_fds() -> Iterator[None]:
    """File descriptors 1 and 2 on /dev/null: the TorchScript-based exporter prints its graph on a
    failure from C++ and through handlers bound to the original streams, past redirect_stderr."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _onnx(model: Any, inputs: Any, metadata: dict, opset: int | None,
          source: str) -> tuple[bytes, str, float, int]:
    import onnx

    proto, exporter = None, "dynamo"
    if opset is None or opset >= DYNAMO_MIN_OPSET:
        # torch.export raises many types; the older exporter then gets its turn
        with contextlib.suppress(Exception):
            proto = _onnx_dynamo(model, inputs, opset)
    if proto is None:
        exporter = "torchscript"
        try:
            proto = _onnx_legacy(model, inputs, opset)
        except Exception:  # noqa: BLE001 - the layer search below gives the user the cause
            from dltool.inference.locate import failing_layer

            raise ExportError(f"{source}: {failing_layer(model, inputs, onnx_exports)}") from None
    written = {entry.domain: entry.version for entry in proto.opset_import}.get("")
    if opset is not None and written != opset:
        raise ExportError(f"{source}: the {exporter} exporter wrote opset {written} where --opset {opset} was "
                          "asked; nothing was written")
    onnx.helper.set_model_props(proto, metadata)
    data = proto.SerializeToString()
    difference = compare(model, inputs, _onnx_runner(data), source)
    return data, exporter, difference, written


def _onnx_dynamo(model: Any, inputs: Any, opset: int | None) -> Any:
    import torch

    options = {"opset_version": opset} if opset is not None else {}
    with _quiet():
        program = torch.onnx.export(model, (inputs,), None, dynamo=True, verbose=False, report=False,
                                    input_names=["input"], output_names=["output"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), **options)
    return program.model_proto


def _onnx_legacy(model: Any, inputs: Any, opset: int | None) -> Any:
    import onnx
    import torch

    buffer = io.BytesIO()
    options = {"opset_version": opset} if opset is not None else {}
    with _quiet():
        torch.onnx.export(model, (inputs,), buffer, dynamo=False, input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **options)
    return onnx.load_from_string(buffer.getvalue())


def onnx_exports(module: Any, args: tuple) -> str | None:
    """None when `module` exports to ONNX with `args` through either exporter, else why not."""
    import torch

    buffer = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(module, args, buffer, dynamo=False)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        reason = _reason(exc)
    try:
        with _quiet():
            torch.onnx.export(module, args, None, dynamo=True, verbose=False, report=False)
        return None
    except Exception:  # noqa: BLE001
        return reason


def _reason(exc: BaseException) -> str:
    return first_line(exc).split(" Please feel free")[0].removeprefix("Unsupported: ")[:200]


def _onnx_runner(data: bytes) -> Callable[[Any], Any]:
    import onnxruntime as ort

    from dltool.inference.onnx_predict import session_options

    session = ort.InferenceSession(data, session_options(ort), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _torchscript(model: Any, inputs: Any, metadata: dict, opset: int | None,
                 source: str) -> tuple[bytes, str, float, None]:
    import torch

    exporter = "trace"
    try:
        with _quiet(), torch.no_grad():
            scripted = torch.jit.trace(model, inputs, check_trace=False)
    except Exception:  # noqa: BLE001 - tracing fails in many ways; scripting gets its turn
        exporter = "script"
        try:
            with _quiet():
                scripted = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - the layer search below gives the user the cause
            from dltool.inference.locate import failing_layer

            raise ExportError(f"{source}: {failing_layer(model, inputs, torchscript_exports)}") from None
    buffer = io.BytesIO()
    with _quiet():
        torch.jit.save(scripted, buffer, _extra_files=metadata)
        data = buffer.getvalue()
        loaded = torch.jit.load(io.BytesIO(data), map_location="cpu")
    return data, exporter, compare(model, inputs, lambda x: loaded(x), source), None


def torchscript_exports(module: Any, args: tuple) -> str | None:
    """None when `module` traces (or scripts) with `args`, else why not."""
    import torch

    try:
        with _quiet(), torch.no_grad():
            torch.jit.trace(module, args, check_trace=False)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        reason = _reason(exc)
    try:
        with _quiet():
            torch.jit.script(module)
        return None
    except Exception:  # noqa: BLE001
        return reason


def compare(model: Any, inputs: Any, run: Callable[[Any], Any], source: str) -> float:
    """The largest absolute difference between the checkpoint's model and the exported one, on the
    batch and on its first row alone.

    Raises:
        ExportError: it exceeds TOLERANCE.
    """
    import numpy as np
    import torch

    difference = 0.0
    with torch.no_grad():
        for batch in (inputs, inputs[:1]):
            expected = model(batch).float().numpy()
            got = np.asarray(run(batch), dtype=np.float32)
            if got.shape != expected.shape:
                raise ExportError(f"{source}: the exported model gives outputs of shape {list(got.shape)} for a "
                                  f"batch of {len(batch)}, the checkpoint's model {list(expected.shape)}")
            difference = max(difference, float(np.abs(got - expected).max()))
    if not difference <= TOLERANCE:
        raise ExportError(f"{source}: the exported model's outputs differ from the checkpoint's by up to "
                          f"{difference:.3g} (allowed {TOLERANCE:g}); nothing was written")
    return difference
