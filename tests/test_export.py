"""dltool export: ONNX and TorchScript files that compute what the checkpoint computes, carry its
classes and eval preprocessing, and refuse (in one line) what they cannot export faithfully."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import load_config
from dltool.data import build_data
from dltool.models import build_model
from dltool.store.checkpoint import load_checkpoint, save_checkpoint

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")  # deprecated, still supported
MLP = ["Flatten", {"Linear": {"out_features": 16}}, "ReLU", {"Linear": {"out_features": "num_classes"}}]


def _export(*args):
    return CliRunner().invoke(app, ["export", *map(str, args)])


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def quickstart_run(digits_run, tmp_path_factory):
    """This module's own copy of the session's quickstart run: the exports go into it, never into the
    run other modules read."""
    return Path(shutil.copytree(digits_run, tmp_path_factory.mktemp("export") / "digits"))


@pytest.fixture(scope="module")
def quickstart_files(quickstart_run):
    """The quickstart run exported to ONNX and TorchScript (default file names in the run folder)."""
    for fmt in ("onnx", "torchscript"):
        result = _export(quickstart_run, "--format", fmt)
        assert result.exit_code == 0, result.output
    return quickstart_run / "model.onnx", quickstart_run / "model.torchscript.pt"


def test_onnx_predictions_equal_the_checkpoints_on_the_quickstart_run(quickstart_run, quickstart_files, tmp_path):
    checkpoint = load_checkpoint(quickstart_run)
    bundle = build_data(load_config(quickstart_run / "config.yaml"), splits=("val",), split_state=checkpoint["split"])
    for i in range(0, len(bundle.val), 6):
        bundle.val.raw_image(i).save(tmp_path / f"{i:03d}.png")
    outputs = {}
    for model in (quickstart_run, *quickstart_files):
        trust = ["--trust-program"] if model.name.endswith(".torchscript.pt") else []
        result = CliRunner().invoke(app, ["predict", str(tmp_path), "--model", str(model), "--format", "json",
                                          "--topk", "10", *trust])
        assert result.exit_code == 0, result.output
        outputs[model] = json.loads(result.stdout)
    expected = outputs.pop(quickstart_run)
    assert len(expected) == 60
    for got in outputs.values():
        for a, b in zip(got, expected):
            assert a["path"] == b["path"] and a["top"][0]["index"] == b["top"][0]["index"]
            probabilities = {t["index"]: t["probability"] for t in b["top"]}
            assert all(abs(t["probability"] - probabilities[t["index"]]) <= 1e-4 for t in a["top"])


def test_the_files_carry_classes_preprocessing_and_config(quickstart_run, quickstart_files):
    onnx_path, script_path = quickstart_files
    checkpoint = load_checkpoint(quickstart_run)
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    extra = {"classes": "", "preprocess": "", "dltool_config": ""}
    torch.jit.load(str(script_path), _extra_files=extra)
    for meta in (props, extra):
        assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
        assert json.loads(meta["dltool_config"]) == checkpoint["config"]
        assert json.loads(meta["preprocess"]) == {
            "mode": "L", "channels": 1, "input_shape": [1, 16, 16], "max_pixels": checkpoint["config"]["data"]["max_image_pixels"],
            "short_side": 16,  # photos are decoded at the size the eval transforms need (data.decode: reduced)
            "steps": [{"op": "resize", "size": [16, 16], "max_size": None, "interpolation": "bilinear"},
                      {"op": "to_array"}, {"op": "to_float", "divide_by": 255},
                      {"op": "normalize", "mean": [0.3], "std": [0.4]}]}
    shape = _session(onnx_path).get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [1, 16, 16]  # a named, dynamic batch axis


def test_torchscript_and_onnx_agree_on_random_inputs(quickstart_files):
    onnx_path, script_path = quickstart_files
    scripted = torch.jit.load(str(script_path))
    session = _session(onnx_path)
    for batch in (1, 5, 33):
        x = torch.randn(batch, 1, 16, 16, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = scripted(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == (batch, 10) and np.abs(got - expected).max() <= 1e-4


def test_export_reports_what_it_checked(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint(MLP, (1, 8, 8))
    result = _export(checkpoint, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(tmp_path / "model.onnx") and report["exporter"] == "dynamo"
    assert report["inputs"] == "eval" and report["samples"] == 8 and report["max_difference"] <= 1e-4
    result = _export(checkpoint, "--format", "torchscript", "--out", tmp_path / "sub" / "m.pt")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {tmp_path / 'sub' / 'm.pt'} (torchscript via the trace exporter; ")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["m.pt"]


def test_without_the_runs_data_random_inputs_check_and_nothing_downloads(make_checkpoint, tmp_path):
    from dltool.inference.export import export

    root = tmp_path / "cifar"
    dataset = {"name": "CIFAR10", "root": str(root), "download": True}
    checkpoint = make_checkpoint(MLP, (3, 32, 32), dataset=dataset, transforms=["ToTensor"])
    result = export(checkpoint, "torchscript")
    assert result.source == "random" and result.samples == 8 and result.max_difference <= 1e-4
    assert not root.exists()


def test_a_model_torch_export_cannot_trace_falls_back_to_the_torchscript_based_exporter(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint(["Flatten", {"Linear": {"out_features": 16}}, "RReLU",
                                  {"Linear": {"out_features": "num_classes"}}], (1, 8, 8))
    result = _export(checkpoint, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["exporter"] == "torchscript"
    session = _session(tmp_path / "model.onnx")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].shape == (3, 10)


def test_a_layer_the_exporter_cannot_handle_is_named(make_checkpoint, tmp_path):
    # adaptive max pooling to a size that does not divide the input: neither exporter translates it
    layers = [{"Conv2d": {"out_channels": 4, "kernel_size": 3, "padding": 1}}, "ReLU",
              {"AdaptiveMaxPool2d": 3}, *MLP]
    checkpoint = make_checkpoint(layers, (1, 8, 8))
    # in a process of its own: the exporters write to file descriptors 1 and 2 directly, past CliRunner
    result = subprocess.run([sys.executable, "-m", "dltool", "export", str(checkpoint)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [(
        f"error: {checkpoint}: layer 2 (AdaptiveMaxPool2d) cannot be exported: ONNX export of operator "
        "adaptive_max_pool2d, output size that are not factor of input size.")]
    assert not (tmp_path / "model.onnx").exists()


def test_a_file_that_computes_something_else_is_not_written(make_checkpoint, tmp_path, monkeypatch):
    from dltool.inference import export

    checkpoint = make_checkpoint(MLP, (1, 8, 8))
    runner = export._onnx_runner
    monkeypatch.setattr(export, "_onnx_runner", lambda data: (lambda x: runner(data)(x) + 1e-3))
    result = _export(checkpoint)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [(
        f"error: {checkpoint}: the exported model's outputs differ from the checkpoint's by up to 0.001 "
        "(allowed 0.0001); nothing was written")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


@pytest.mark.parametrize("missing", ["onnx", "onnxscript", "onnxruntime"])
def test_without_the_extra_export_names_it(make_checkpoint, monkeypatch, missing):
    checkpoint = make_checkpoint(MLP, (1, 8, 8))
    monkeypatch.setitem(__import__("sys").modules, missing, None)
    result = _export(checkpoint)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: export --format onnx needs {missing}, which is not installed: "
                                     'pip install "dltool[onnx]"')


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite"], "--format: unknown format 'tflite'; allowed: onnx, torchscript"),
    (["--format", "torchscript", "--opset", "17"], "--opset applies to --format onnx only"),
])
def test_wrong_options_are_one_line(make_checkpoint, args, message):
    result = _export(make_checkpoint(MLP, (1, 8, 8)), *args)
    assert result.exit_code == 2 and result.output.strip() == f"error: {message}"


def test_an_out_path_that_cannot_be_a_file_is_refused_before_the_work(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint(MLP, (1, 8, 8))
    result = _export(checkpoint, "--out", tmp_path)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: --out: {tmp_path} is a folder; name the file to write, e.g. {tmp_path / 'model.onnx'}"
    result = _export(checkpoint, "--out", checkpoint / "m.onnx")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: --out: cannot write {checkpoint / 'm.onnx'}: a file stands where a "
                                     "folder of that path should be")


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 18, 20])
def test_each_opset_asked_is_the_opset_written_and_reported(make_checkpoint, tmp_path, opset):
    out = tmp_path / f"m{opset}.onnx"
    result = _export(make_checkpoint(MLP, (1, 8, 8)), "--opset", opset, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    opsets = {o.domain: o.version for o in onnx.load(str(out)).opset_import}
    assert opsets[""] == opset and json.loads(result.stdout)["opset"] == opset
    assert json.loads(result.stdout)["exporter"] == ("dynamo" if opset >= 18 else "torchscript")


def test_without_opset_the_opset_written_is_reported(make_checkpoint, tmp_path):
    result = _export(make_checkpoint(MLP, (1, 8, 8)), "--out", tmp_path / "m.onnx", "--json")
    assert result.exit_code == 0, result.output
    written = {o.domain: o.version for o in onnx.load(str(tmp_path / "m.onnx")).opset_import}[""]
    assert json.loads(result.stdout)["opset"] == written


@pytest.mark.parametrize("opset", [5, 99])
def test_an_opset_the_exporter_cannot_write_is_refused_before_the_work(make_checkpoint, tmp_path, opset):
    from torch.onnx import _constants

    result = _export(make_checkpoint(MLP, (1, 8, 8)), "--opset", opset, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: --opset: {opset} is not an opset this torch's ONNX exporter writes; "
                                     f"allowed: {_constants.ONNX_MIN_OPSET} to {_constants.ONNX_MAX_OPSET}")
    assert not (tmp_path / "m.onnx").exists()


def test_the_format_is_read_in_any_case(make_checkpoint, tmp_path):
    result = _export(make_checkpoint(MLP, (1, 8, 8)), "--format", "ONNX", "--out", tmp_path / "m.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["format"] == "onnx"
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))


def test_an_onnx_name_for_a_torchscript_file_is_refused(make_checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    result = _export(make_checkpoint(MLP, (1, 8, 8)), "--format", "torchscript", "--out", out)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: --out: {out} ends in .onnx but --format torchscript writes a "
                                     "TorchScript program; name it .pt (or ask for --format onnx)")
    assert not out.exists()


def test_an_exported_file_given_to_export_is_named(make_checkpoint, tmp_path):
    exported = tmp_path / "m.onnx"
    assert _export(make_checkpoint(MLP, (1, 8, 8)), "--out", exported).exit_code == 0
    result = _export(exported, "--out", tmp_path / "again.onnx")
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {exported}: an ONNX model file, which export does not take; it goes "
                                     f"to `dltool predict IMAGE --model {exported}`")


def _zoo_checkpoint(stem: str, tmp_path: Path) -> Path:
    """A checkpoint of config `stem` with its initial weights, on the zoo tests' local stand-in data."""
    from test_zoo import offline

    config = load_config(CONFIGS / f"{stem}.yaml", offline(stem, tmp_path))
    bundle = build_data(config, splits=("val",))
    torch.manual_seed(0)
    model = build_model(config.model, tuple(bundle.input_shape), len(bundle.classes) or None, pretrained=False)
    state = {"model": model.state_dict(), "config": config.to_data(), "classes": list(bundle.classes),
             "input_shape": list(bundle.input_shape), "task": bundle.task, "split": bundle.split}
    return save_checkpoint(state, tmp_path / f"{stem}.pt")


@pytest.mark.parametrize("stem", sorted(p.stem for p in CONFIGS.glob("*.yaml")))
def test_every_config_exports_and_checks(stem, tmp_path):
    from dltool.inference.export import export

    result = export(_zoo_checkpoint(stem, tmp_path), "onnx")
    assert result.path == tmp_path / f"{stem}.onnx" and result.exporter == "dynamo"
    assert result.source == "eval" and result.max_difference <= 1e-4
