"""Class-activation heat maps (`predict --cam DIR`, `eval --cam N`) through the grad-cam package.

A heat map weighs one layer's activations by how much they raise one class's score, so it shows
where in the image the evidence for that class lies. The layer is by default the last one whose
output is still spatial ((N, C, H, W) with more than one position), found by running one input
through the model with forward hooks, so the choice works for any nn.Module: our stacks,
torchvision and timm models. An exported file has no gradients: heat maps need the checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dltool.config.registry import suggest
from dltool.errors import ConfigError, MissingExtra

EXTRA = 'pip install "dltool[cam]"'
# The methods of pytorch_grad_cam that take (model, target_layers) and a class to explain.
METHODS = ("GradCAM", "GradCAMPlusPlus", "HiResCAM", "XGradCAM", "LayerCAM", "GradCAMElementWise", "EigenCAM",
           "EigenGradCAM", "ScoreCAM", "AblationCAM", "KPCA_CAM", "FEM", "ShapleyCAM")
ALIASES = {"gradcam++": "GradCAMPlusPlus", "grad-cam": "GradCAM", "grad-cam++": "GradCAMPlusPlus"}
BATCH = 16  # images per heat-map pass (each needs its activations and gradients kept)


def import_gradcam(what: str) -> Any:
    """The pytorch_grad_cam package, or a one-line error naming the extra that installs it."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise MissingExtra(f"{what} needs the grad-cam package, which is not installed: {EXTRA}") from None
    return pytorch_grad_cam


def method_name(name: str) -> str:
    """The library's name of a method, given in any case (GradCAM++ for GradCAMPlusPlus too).

    Raises:
        ConfigError: not a method dltool offers.
    """
    by_lower = {m.lower(): m for m in METHODS} | ALIASES
    found = by_lower.get(name.lower())
    if found is None:
        hint = suggest(name, METHODS)
        raise ConfigError(f"--cam-method: unknown method {name!r}{hint}{' ' if hint else '; '}"
                          f"allowed: {', '.join(METHODS)}")
    return found


def refuse_exported(model_path: str | Path) -> None:
    """Raises ConfigError for an ONNX or TorchScript file: heat maps need the gradients of a checkpoint."""
    from dltool.inference.kinds import CHECKPOINT, file_kind

    path = Path(model_path)
    if file_kind(path) != CHECKPOINT:
        raise ConfigError(f"--cam: {path} is an exported file, which has no gradients; give --model the run "
                          "folder or its checkpoint")


@dataclass(frozen=True)
class Layer:
    """A layer a heat map can be drawn at: its dotted name in the model, type and output shape."""

    name: str
    module: Any
    shape: tuple[int, ...]

    def describe(self) -> str:
        return f"layer {self.name or '(the model)'} ({type(self.module).__name__}, output {list(self.shape)})"


def spatial_layers(model: Any, input_shape: Sequence[int], device: Any) -> list[Layer]:
    """The layers whose output is (N, C, H, W) with H * W > 1, in the order their outputs are ready
    (a block after the layers inside it). A module called twice in one forward pass (a shared ReLU)
    is left out: its activations would be ambiguous."""
    import torch

    done: list[tuple[str, Any, tuple[int, ...]]] = []
    calls: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(module: Any, _inputs: Any, output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                done.append((name, module, tuple(output.shape)))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model.eval()
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
    return [Layer(n, m, s) for n, m, s in done
            if calls[n] == 1 and len(s) == 4 and s[2] * s[3] > 1]


def choose_layer(model: Any, input_shape: Sequence[int], device: Any, name: str | None = None) -> Layer:
    """The layer a heat map is drawn at: `name` (a dotted name of model.named_modules()), else the last
    layer with a spatial output.

    Raises:
        ConfigError: an unknown name, a layer without a spatial output, or a model without one.
    """
    layers = spatial_layers(model, input_shape, device)
    names = [layer.name for layer in layers]
    if name is None:
        if not layers:
            raise ConfigError("--cam: this model has no layer with a spatial output (N, C, H, W); a heat map "
                              "needs one")
        return layers[-1]
    found = next((layer for layer in layers if layer.name == name), None)
    if found is not None:
        return found
    modules = dict(model.named_modules())
    listed = ", ".join(names[-8:]) or "none"
    if name in modules:
        raise ConfigError(f"--cam-layer {name} ({type(modules[name]).__name__}) has no spatial output (N, C, H, W) "
                          f"of its own; layers that have one: {listed}")
    raise ConfigError(f"--cam-layer: no layer {name!r} in this model{suggest(name, names)}; layers with a "
                      f"spatial output: {listed}")


class ClassScore:
    """The score a heat map explains: the output of class `index` (a single binary output counts for
    class 1 and, negated, for class 0)."""

    def __init__(self, index: int):
        self.index = index

    def __call__(self, out: Any) -> Any:
        if out.shape[-1] == 1:
            return out[..., 0] if self.index == 1 else -out[..., 0]
        return out[..., self.index]


class HeatMaps:
    """A model ready to draw heat maps at one layer with one method."""

    def __init__(self, model: Any, input_shape: Sequence[int], device: Any, method: str = "GradCAM",
                 layer: str | None = None):
        library = import_gradcam("--cam")
        self.method = method_name(method)
        self.model = model
        self.device = device
        self.layer = choose_layer(model, input_shape, device, layer)
        self.factory = getattr(library, self.method)

    def describe(self) -> str:
        return f"{self.method} at {self.layer.describe()}"

    def maps(self, batch: Any, classes: Sequence[int]) -> np.ndarray:
        """(N, H, W) heat maps, each scaled to 0..1, of `batch` (N, C, H, W) for one class per image."""
        import torch

        for parameter in self.model.parameters():
            parameter.requires_grad_(True)  # a frozen backbone still passes gradients to its activations
        quiet = io.StringIO()
        with torch.enable_grad(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            cam = self.factory(model=self.model, target_layers=[self.layer.module])
            try:
                heat = cam(input_tensor=batch.to(self.device), targets=[ClassScore(int(i)) for i in classes])
            finally:
                cam.activations_and_grads.release()
        return np.nan_to_num(np.asarray(heat, dtype=np.float32))

    def probabilities(self, batch: Any, output: str) -> Any:
        """(N, classes) probabilities of a plain forward pass (for the titles)."""
        import torch

        from dltool.models.outputs import to_probabilities

        with torch.no_grad():
            return to_probabilities(self.model(batch.to(self.device)), output).cpu()


class PredictCams:
    """`predict --cam DIR`: a checkpoint opened for heat maps, checked before any image is classified."""

    def __init__(self, model_path: str | Path, *, device: str = "auto", method: str = "GradCAM",
                 layer: str | None = None, cam_class: str | None = None):
        """Open the checkpoint and choose the layer, so that every mistake in the options is found first.

        Raises:
            ConfigError: an exported file, a regression model, an unknown method, layer or class.
            MissingExtra: grad-cam is not installed.
        """
        refuse_exported(model_path)
        import_gradcam("--cam")
        method_name(method)
        from dltool.inference.predictors import CheckpointPredictor

        self.predictor = CheckpointPredictor.load(model_path, device)
        if self.predictor.task == "regression":
            raise ConfigError("--cam: a heat map explains a class; this checkpoint is a regression model")
        self.class_index = None if cam_class is None else _class_index(cam_class, self.predictor.classes)
        self.heat = HeatMaps(self.predictor.model, self.predictor.input_shape, self.predictor.device, method, layer)

    def write(self, predictions: Sequence[Any], out_dir: str | Path) -> list[Path]:
        """One PNG per classified image into `out_dir`: the input with its heat map and, in the title,
        the predicted class and probability (and the class shown, with --cam-class)."""
        done = [p for p in predictions if p.error is None and p.top]
        names = _file_names([p.path for p in done])
        inputs = [str(self.predictor.path), *(p.path for p in done)]
        written = []
        for start in range(0, len(done), BATCH):
            chunk = done[start:start + BATCH]
            written += self._write_chunk(chunk, names[start:start + BATCH], Path(out_dir), inputs)
        return written

    def _write_chunk(self, chunk: Sequence[Any], names: Sequence[str], out_dir: Path, inputs: list[str]) -> list[Path]:
        import torch

        from dltool.inference.cam_pictures import display_image, draw
        from dltool.store.writing import write_output

        batch = torch.stack([self.predictor.preprocess(p.path) for p in chunk])
        shown = [self.class_index if self.class_index is not None else p.top[0]["index"] for p in chunk]
        heat = self.heat.maps(batch, shown)
        probs = self.heat.probabilities(batch, self.predictor.output)
        written = []
        for i, prediction in enumerate(chunk):
            best = prediction.top[0]
            title = f"predicted: {best['class']} ({best['probability']:.2f})"
            if self.class_index is not None:
                title += f"\nheat map of: {self.predictor.classes[shown[i]]} ({float(probs[i, shown[i]]):.2f})"
            png = draw(display_image(batch[i].numpy()), [(heat[i], title)], heading=Path(prediction.path).name)
            written.append(write_output(out_dir / names[i], png, inputs, option="--cam"))
        return written


def eval_cams(result: Any, count: int, out_dir: str | Path, *, method: str = "GradCAM",
              layer: str | None = None) -> tuple[list[Path], str]:
    """`eval --cam N`: heat maps of the N most confident mistakes into `out_dir`/cam/, the true and
    the predicted class side by side. Returns the files written and the method and layer used.

    Raises:
        ConfigError: an unknown method or layer; a regression model.
        MissingExtra: grad-cam is not installed.
    """
    import torch

    from dltool.inference.cam_pictures import display_image, draw
    from dltool.store.writing import write_output

    if result.task == "regression":
        raise ConfigError("--cam: a heat map explains a class; this checkpoint is a regression model")
    device = next(result.model.parameters()).device
    sample = result.samples[0][0]
    heat = HeatMaps(result.model, tuple(sample.shape), device, method, layer)
    written = []
    for rank, row in enumerate(result.misclassified()[:count], 1):
        x = result.samples[row["index"]][0][None]
        truth, guess = result.classes.index(row["true"]), result.classes.index(row["predicted"])
        maps = heat.maps(torch.cat([x, x]), [truth, guess])
        panels = [(maps[0], f"true: {row['true']} ({row['true_probability']:.2f})"),
                  (maps[1], f"predicted: {row['predicted']} ({row['confidence']:.2f})")]
        png = draw(display_image(x[0].cpu().numpy()), panels, heading=row["sample"])
        name = f"{rank:03d}_{_safe(Path(row['sample']).stem)}.png"
        written.append(write_output(Path(out_dir) / "cam" / name, png, [result.checkpoint], option="--out"))
    return written, heat.describe()


def _class_index(name: str, classes: Sequence[str]) -> int:
    if name in classes:
        return list(classes).index(name)
    lowered = [c.lower() for c in classes]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
    raise ConfigError(f"--cam-class: the model has no class {name!r}{suggest(name, classes)}; its classes: {shown}")


def _file_names(paths: Sequence[str]) -> list[str]:
    """`<stem>_cam.png` per input; a stem seen before gets -2, -3, ..."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = _safe(Path(path).stem)
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}_cam.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}_cam.png")
    return names


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"
