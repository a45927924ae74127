"""predict --model FILE.onnx: the PIL + numpy preprocessing against the torch eval transforms, the
path that never imports torch, and the one-line errors of damaged files and a missing extra."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import config_from_data
from dltool.data.transform_lists import transform_specs
from dltool.data.transforms import build_pipeline, to_float_tensor
from dltool.inference.eval_plan import Unplannable, build_plan
from dltool.inference.plan_numpy import NumpyPreprocess

MLP = ["Flatten", {"Linear": {"out_features": 16}}, "ReLU", {"Linear": {"out_features": "num_classes"}}]
NORM3 = {"Normalize": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
# Eval lists of the shapes configs/ use, and the variants the exported plan must reproduce.
EVAL_LISTS = {
    "resize_pair": (1, [{"Resize": [16, 16]}, "ToTensor", {"Normalize": {"mean": [0.3], "std": [0.4]}}]),
    "resize_short_crop": (3, [{"Resize": 26}, {"CenterCrop": 24}, "ToTensor", NORM3]),
    "resize_short_only": (3, [{"Resize": 20}, "ToTensor", NORM3]),
    "crop_pads": (1, [{"CenterCrop": [40, 36]}, "ToTensor"]),
    "crop_after_tensor": (3, ["ToTensor", {"CenterCrop": 12}, NORM3]),
    "grayscale_three": (3, [{"Grayscale": 3}, {"Resize": [14, 10]}, "ToTensor"]),
    "bicubic_max_size": (3, [{"Resize": {"size": 18, "interpolation": "bicubic", "max_size": 24}}, "ToTensor"]),
    "to_image_to_dtype": (3, ["ToImage", {"ToDtype": {"dtype": "float32", "scale": True}}, NORM3]),
    "pil_to_tensor_convert": (1, ["PILToTensor", "ConvertImageDtype", {"Normalize": {"mean": [0.5], "std": [0.25]}}]),
    "to_tensor_only": (1, ["ToTensor"]),
}


def _images(folder):
    """Grayscale and colour files of different sizes and aspect ratios (noise, so resizing matters)."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(30, 22), (17, 31), (64, 48), (9, 9)]):
        grey = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
        colour = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        for kind, image in (("grey", grey), ("colour", colour)):
            paths.append(folder / f"{kind}{i}.png")
            image.save(paths[-1])
    return paths


@pytest.mark.parametrize("name", sorted(EVAL_LISTS))
def test_numpy_preprocessing_matches_the_torch_eval_transforms(name, tmp_path):
    channels, eval_list = EVAL_LISTS[name]
    config = config_from_data({"data": {"dataset": "Digits", "channels": channels,
                                        "transforms": {"eval": eval_list}}, "model": {"layers": MLP}})
    specs = transform_specs(config.data.transforms)[1]
    plan = json.loads(json.dumps(build_plan(config, (channels, 16, 16))))  # as the file stores it
    numpy_read, torch_pipeline = NumpyPreprocess(plan), build_pipeline(specs)
    for path in _images(tmp_path):
        expected = to_float_tensor(torch_pipeline(Image.open(path).convert(plan["mode"])))
        got = numpy_read(str(path))
        assert got.dtype == np.float32 and got.shape == tuple(expected.shape), name
        assert np.abs(got - expected.numpy()).max() <= 1e-6, (name, path.name)


def test_a_transform_without_a_plain_data_form_is_named():
    config = config_from_data({"data": {"dataset": "Digits", "transforms": {"eval": [{"Pad": 2}, "ToTensor"]}},
                               "model": {"layers": MLP}})
    with pytest.raises(Unplannable, match="eval transform Pad cannot be exported"):
        build_plan(config, (1, 12, 12))


@pytest.fixture
def onnx_model(make_checkpoint, tmp_path):
    """An exported ONNX MLP for 8x8 digits with a Resize/ToTensor/Normalize eval list, and a grey PNG."""
    checkpoint = make_checkpoint(MLP, (1, 8, 8), transforms=[{"Resize": [8, 8]}, "ToTensor",
                                                             {"Normalize": {"mean": [0.5], "std": [0.5]}}])
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "mlp.onnx")])
    assert result.exit_code == 0, result.output
    image = tmp_path / "digit.png"
    Image.fromarray(np.arange(144, dtype=np.uint8).reshape(12, 12) * 2, "L").save(image)
    return checkpoint, tmp_path / "mlp.onnx", image


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
sys.argv = ["dltool", *sys.argv[1:]]
from dltool.cli import main
try:
    main()
finally:
    assert "torch" not in sys.modules and "torchvision" not in sys.modules
"""


def test_onnx_predict_runs_with_torch_unimportable(onnx_model, tmp_path):
    checkpoint, model, image = onnx_model
    broken = tmp_path / "broken.png"
    broken.write_text("not an image")
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "predict", str(image), str(broken), "--model",
                           str(model), "--format", "json", "--topk", "3"], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    got = json.loads(done.stdout)
    expected = json.loads(CliRunner().invoke(app, ["predict", str(image), str(broken), "--model", str(checkpoint),
                                                   "--format", "json", "--topk", "3"]).stdout)
    assert got[1] == expected[1] and "error" in got[1]
    assert [t["index"] for t in got[0]["top"]] == [t["index"] for t in expected[0]["top"]]
    for a, b in zip(got[0]["top"], expected[0]["top"]):
        assert abs(a["probability"] - b["probability"]) <= 1e-4
    assert done.stderr.strip().splitlines() == [f"error: {broken}: {got[1]['error']}"]


def test_table_and_csv_come_out_as_for_a_checkpoint(onnx_model):
    checkpoint, model, image = onnx_model
    outputs = {(fmt, m): CliRunner().invoke(app, ["predict", str(image), "--model", str(m), "--format", fmt,
                                                  "--topk", "3"]) for fmt in ("csv", "table") for m in (checkpoint, model)}
    assert {key: result.exit_code for key, result in outputs.items()} == dict.fromkeys(outputs, 0)
    rows = {m: [line.split(",") for line in outputs["csv", m].stdout.splitlines()] for m in (checkpoint, model)}
    assert rows[model][0] == ["path", "rank", "class", "index", "probability", "error"]
    assert [r[:4] for r in rows[model]] == [r[:4] for r in rows[checkpoint]] and len(rows[model]) == 4
    table = {m: outputs["table", m].stdout.splitlines() for m in (checkpoint, model)}
    assert len(table[model]) == len(table[checkpoint]) and table[model][:3] == table[checkpoint][:3]


def test_a_damaged_onnx_file_is_one_line_exit_2(onnx_model, tmp_path):
    _, model, image = onnx_model
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(model.read_bytes()[:200])
    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(damaged)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [(
        f"error: {damaged}: not a readable ONNX model (Load model from {damaged} failed:Protobuf parsing "
        "failed.); export it again with `dltool export RUN --format onnx`")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_onnx_file_without_dltool_metadata_is_refused(tmp_path):
    model = torch.nn.Linear(4, 2)
    torch.onnx.export(model, (torch.zeros(1, 4),), str(tmp_path / "plain.onnx"), dynamo=False)
    image = tmp_path / "x.png"
    Image.new("L", (2, 2)).save(image)
    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(tmp_path / "plain.onnx")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {tmp_path / 'plain.onnx'}: has no dltool metadata ('classes'); "
                                    "only files written by `dltool export` carry")


def test_without_onnxruntime_predict_names_the_extra(onnx_model, monkeypatch):
    _, model, image = onnx_model
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(model)])
    assert result.exit_code == 2
    assert result.output.strip() == ('error: predict --model FILE.onnx needs onnxruntime, which is not installed: '
                                     'pip install "dltool[onnx]"')


def test_output_kinds_become_the_probabilities_torch_computes():
    from dltool.inference.predictors import to_probabilities

    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    single = logits[:, :1]
    expected = {"softmax": logits.softmax(1), "sigmoid": logits.sigmoid(), "log_softmax": logits.exp(),
                "probabilities": logits}
    for kind, probs in expected.items():
        assert np.abs(to_probabilities(logits.numpy(), kind) - probs.numpy()).max() <= 1e-6, kind
    binary = to_probabilities(single.numpy(), "sigmoid")
    assert binary.shape == (6, 2) and np.abs(binary[:, 1] - single.sigmoid()[:, 0].numpy()).max() <= 1e-6
    assert np.abs(binary.sum(1) - 1).max() <= 1e-6


def test_an_exported_file_says_what_its_outputs_are(make_checkpoint, tmp_path):
    from dltool.inference.export import export
    from dltool.inference.onnx_predict import OnnxPredictor
    from dltool.store.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(make_checkpoint(MLP, (1, 8, 8), classes=["no", "yes"]))
    state["output"] = "sigmoid"
    checkpoint = save_checkpoint(state, tmp_path / "binary.pt")
    predictor = OnnxPredictor.load(export(checkpoint, "onnx").path)
    assert predictor.output == "sigmoid" and predictor.classes == ["no", "yes"]
