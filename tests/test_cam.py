"""Grad-CAM heat maps: they lie where the evidence is, and `predict --cam` / `eval --cam` write them."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.inference.cam import HeatMaps, choose_layer

SIDE = 24  # the canvas; a digit (8x8) sits at one of its corners
CORNERS = {"top-left": (0, 0), "top-right": (0, SIDE - 8), "bottom-left": (SIDE - 8, 0),
           "bottom-right": (SIDE - 8, SIDE - 8)}
CONFIG = """
data:
  dataset: {name: ImageFolder, root: data, train: train, val: val}
  batch_size: 32
  transforms: {eval: [ToTensor]}
model:
  layers:
    - Conv2d: {out_channels: 16, kernel_size: 3, padding: 1}
    - ReLU
    - MaxPool2d: 2
    - Conv2d: {out_channels: 32, kernel_size: 3, padding: 1}
    - ReLU
    - AdaptiveMaxPool2d: 1
    - Flatten
    - Linear: {out_features: num_classes}
optimizer: {name: Adam, lr: 0.01}
train: {epochs: 6, device: cpu, threads: 1, histograms: false}
"""
LAYER = "GradCAM at layer 4 (ReLU, output [1, 32, 12, 12])"


def _canvas(digit: np.ndarray, corner: str) -> np.ndarray:
    canvas = np.zeros((SIDE, SIDE), np.uint8)
    top, left = CORNERS[corner]
    canvas[top:top + 8, left:left + 8] = (digit * 15).astype(np.uint8)
    return canvas


@pytest.fixture(scope="module")
def corner_run(tmp_path_factory):
    """A small CNN trained on digits 0-3 pasted at a random corner of a blank 24x24 canvas, and
    held-out pictures: {corner: path} with a digit the model did not train on."""
    from sklearn.datasets import load_digits

    from dltool.training.train import train

    root = tmp_path_factory.mktemp("corners")
    digits, rng = load_digits(), np.random.default_rng(0)
    keep = np.flatnonzero(digits.target < 4)
    for n, i in enumerate(keep[:-8]):
        folder = root / "data" / ("val" if n % 5 == 0 else "train") / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        corner = list(CORNERS)[rng.integers(4)]
        Image.fromarray(_canvas(digits.images[i], corner), "L").save(folder / f"{i}.png")
    held_out = {}
    for corner, i in zip(CORNERS, keep[-8:]):
        held_out[corner] = root / f"{corner}.png"
        Image.fromarray(_canvas(digits.images[i], corner), "L").save(held_out[corner])
    (root / "corners.yaml").write_text(CONFIG.replace("root: data", f"root: {root / 'data'}"))
    run = train(root / "corners.yaml", runs_dir=root / "runs", name="corners").run_dir
    return run, held_out


@pytest.mark.parametrize("method", ["GradCAM", "GradCAMPlusPlus"])
def test_the_heat_lies_on_the_digit_wherever_it_is(corner_run, method):
    from dltool.inference.predictors import CheckpointPredictor

    run, pictures = corner_run
    predictor = CheckpointPredictor.load(run, device="cpu")
    heat = HeatMaps(predictor.model, predictor.input_shape, predictor.device, method)
    batch = torch.stack([predictor.preprocess(str(path)) for path in pictures.values()])
    with torch.no_grad():
        predicted = predictor.model(batch).argmax(1).tolist()
    maps = heat.maps(batch, predicted)
    assert maps.shape == (4, SIDE, SIDE)
    for heat_map, corner in zip(maps, pictures):
        top, left = CORNERS[corner]
        quadrant = heat_map[max(0, top - 4):top + 12, max(0, left - 4):left + 12]  # the digit and its margin
        share = quadrant.sum() / heat_map.sum()
        assert share > 0.8, (method, corner, share)


def test_predict_writes_one_picture_per_image_and_names_the_layer(corner_run, tmp_path):
    run, pictures = corner_run
    result = CliRunner().invoke(app, ["predict", *map(str, pictures.values()), "--model", str(run),
                                      "--cam", str(tmp_path / "cams"), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == 4
    assert " ".join(result.stderr.split()) == f"wrote 4 heat maps into {tmp_path / 'cams'} ({LAYER})"
    written = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert written == sorted(f"{corner}_cam.png" for corner in CORNERS)
    with Image.open(tmp_path / "cams" / "top-left_cam.png") as picture:
        assert picture.format == "PNG" and picture.width >= 300
        pixels = np.asarray(picture.convert("RGB"), dtype=np.int16)
    assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 80).any()  # the heat is drawn in colour over the grey digit


def test_a_chosen_class_layer_and_method(corner_run, tmp_path):
    run, pictures = corner_run
    image = str(pictures["bottom-right"])
    ok = CliRunner().invoke(app, ["predict", image, "--model", str(run), "--cam", str(tmp_path), "--cam-class", "3",
                                  "--cam-layer", "2", "--cam-method", "gradcam++"])
    assert ok.exit_code == 0, ok.output
    assert "GradCAMPlusPlus at layer 2 (MaxPool2d, output [1, 16, 12, 12])" in " ".join(ok.stderr.split())
    assert (tmp_path / "bottom-right_cam.png").is_file()
    errors = {
        ("--cam-class", "7"): "error: --cam-class: the model has no class '7'; its classes: 0, 1, 2, 3",
        ("--cam-layer", "6"): "error: --cam-layer 6 (Flatten) has no spatial output (N, C, H, W) of its own; layers "
                              "that have one: 0, 1, 2, 3, 4",
        ("--cam-layer", "conv"): "error: --cam-layer: no layer 'conv' in this model; layers with a spatial output: "
                                 "0, 1, 2, 3, 4",
        ("--cam-method", "GradCm"): ("error: --cam-method: unknown method 'GradCm'; did you mean GradCAM or XGradCAM or EigenGradCAM? "
                                    "allowed: GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM, "),
    }
    for option, message in errors.items():
        result = CliRunner().invoke(app, ["predict", image, "--model", str(run), "--cam", str(tmp_path / "x"),
                                          *option])
        assert result.exit_code == 2 and " ".join(result.stderr.split()).startswith(message), \
            result.stderr
        assert not (tmp_path / "x").exists()


def test_eval_draws_the_true_and_the_predicted_class_of_mistakes(digits_run, tmp_path):
    result = CliRunner().invoke(app, ["eval", str(digits_run), "--cam", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    mistakes = json.loads((tmp_path / "metrics.json").read_text())["misclassified"]
    assert mistakes >= 1
    written = sorted((tmp_path / "cam").iterdir())
    assert [p.name[:4] for p in written] == ["001_", "002_"][:min(2, mistakes)]
    assert (f"wrote {len(written)} heat maps of misclassified samples into {tmp_path / 'cam'} (GradCAM at layer 7 "
            "(MaxPool2d, output [1, 32, 4, 4]))") in \
        " ".join(result.stderr.split())
    with Image.open(written[0]) as picture:
        assert picture.width >= 1.5 * picture.height  # two panels side by side


def test_exported_files_and_a_missing_package_are_one_line(corner_run, tmp_path, monkeypatch):
    run, pictures = corner_run
    image = str(pictures["top-left"])
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    result = CliRunner().invoke(app, ["predict", image, "--model", str(onnx), "--cam", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: --cam: {onnx} is an exported file, which has no gradients; give --model "
                                     "the run folder or its checkpoint")
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # as if grad-cam were not installed
    for args in (["predict", image, "--model", str(run), "--cam", str(tmp_path / "c")], ["eval", str(run), "--cam", "1"]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2
        assert result.stderr.strip() == ('error: --cam needs the grad-cam package, which is not installed: '
                                         'pip install "dltool[cam]"')
    assert not (tmp_path / "c").exists() and not (Path(run) / "eval").exists()


def test_the_default_layer_of_torchvision_models():
    import torchvision

    for build, expected in ((torchvision.models.resnet18, "layer4"), (torchvision.models.mobilenet_v3_small, "features")):
        model = build(num_classes=3).eval()
        layer = choose_layer(model, (3, 64, 64), torch.device("cpu"))
        assert layer.name == expected and layer.shape == (1, *layer.shape[1:2], 2, 2)
        maps = HeatMaps(model, (3, 64, 64), torch.device("cpu")).maps(torch.randn(2, 3, 64, 64), [0, 2])
        assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()


def test_a_regression_model_has_no_class_to_explain_or_average(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint(["Flatten", {"Linear": {"out_features": 1}}], classes=(), task="regression")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(image)
    expected = {("--cam", str(tmp_path / "c")): "error: --cam: a heat map explains a class; this checkpoint is a "
                                                "regression model",
                ("--tta", "crops"): "error: --tta averages class probabilities; this model is a regression model"}
    for option, message in expected.items():
        result = CliRunner().invoke(app, ["predict", str(image), "--model", str(checkpoint), *option])
        assert result.exit_code == 2 and result.stderr.strip() == message
