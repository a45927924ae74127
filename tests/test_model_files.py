"""Model files from elsewhere: a TorchScript program runs only with --trust-program, whatever its name;
eval and export name an exported file as what it is; hostile metadata in an ONNX file or a checkpoint
is refused in one line naming the field, before any image is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.store.checkpoint import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
MLP = ["Flatten", {"Linear": {"out_features": 16}}, "ReLU", {"Linear": {"out_features": "num_classes"}}]
PLAN = {"mode": "L", "channels": 1, "input_shape": [1, 8, 8], "max_pixels": 89_478_485,
        "steps": [{"op": "resize", "size": [8, 8], "max_size": None, "interpolation": "bilinear"},
                  {"op": "to_array"}, {"op": "to_float", "divide_by": 255}]}
NOT_EXPORTED = "; the file was not written by `dltool export` or was changed since, so it is not used"


def invoke(*args):
    return CliRunner().invoke(app, [*map(str, args)])


class Program(torch.nn.Module):
    """A TorchScript file posing as a model: loading it creates `<path>.load`, predicting `<path>.run`."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.seen = 0

    def forward(self, x):
        written = torch.from_file(self.path + ".run", shared=True, size=4, dtype=torch.uint8)
        return x.flatten(1)[:, :10] + written.sum().float() * 0

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        self.seen = int(torch.from_file(self.path + ".load", shared=True, size=4, dtype=torch.uint8).sum())


@pytest.fixture
def program(tmp_path):
    """(best.pt: a TorchScript program carrying dltool's metadata, the sentinel path, an 8x8 image)."""
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "best.pt"
    extra = {"classes": json.dumps(list("0123456789")), "preprocess": json.dumps(PLAN)}
    torch.jit.save(torch.jit.script(Program(str(sentinel))), str(path), _extra_files=extra)
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 128).save(image)
    assert not list(tmp_path.glob("sentinel*"))
    return path, sentinel, image


def refused_program(path) -> str:
    return (f"error: {path}: a TorchScript program: loading it runs the code inside it, so it was not loaded; "
            "if you trust where it came from, run it knowingly with --trust-program (an ONNX export runs no code)")


@pytest.mark.parametrize("name", ["best.pt", "model.onnx", "weights.bin"])
def test_a_torchscript_program_is_never_run_without_trust_program(program, name):
    path, sentinel, image = program
    renamed = path.rename(path.with_name(name))
    result = invoke("predict", image, "--model", renamed)
    assert result.exit_code == 2
    assert result.output.strip() == refused_program(renamed)
    assert not list(sentinel.parent.glob("sentinel*"))


def test_with_trust_program_the_program_runs(program):
    path, sentinel, image = program
    result = invoke("predict", image, "--model", path, "--trust-program", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [entry["class"] for entry in json.loads(result.stdout)[0]["top"]][:1] == ["0"]
    assert Path(f"{sentinel}.load").exists() and Path(f"{sentinel}.run").exists()


@pytest.mark.parametrize("command", ["eval", "export"])
def test_eval_and_export_say_what_a_program_is_and_which_command_takes_it(program, command):
    path, sentinel, _ = program
    result = invoke(command, path)
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {path}: a TorchScript program (loading it runs the code inside it), which {command} does not "
        f"take; it goes to `dltool predict IMAGE --model {path} --trust-program`, only if you trust where it "
        "came from")
    assert not list(sentinel.parent.glob("sentinel*"))


def test_eval_names_an_onnx_file(tmp_path):
    path = onnx_file(tmp_path)
    result = invoke("eval", path)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {path}: an ONNX model file, which eval does not take; it goes to "
                                     f"`dltool predict IMAGE --model {path}`")


def onnx_file(folder: Path, name: str = "model.onnx", outputs: int = 10, **metadata: str) -> Path:
    """A real ONNX classifier of 8x8 grey images (Flatten, MatMul) with dltool's metadata, overridden by `metadata`."""
    weights = numpy_helper.from_array(np.ones((64, outputs), dtype=np.float32) / 64, "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["output"])],
        "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", outputs])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    props = {"classes": json.dumps(list("0123456789")), "preprocess": json.dumps(PLAN), **metadata}
    helper.set_model_props(model, props)
    path = folder / name
    onnx.save(model, str(path))
    return path


def _plan(**changes) -> str:
    return json.dumps({**PLAN, **changes})


def _steps(*steps) -> str:
    return json.dumps({**PLAN, "steps": list(steps)})


HOSTILE = {
    "empty classes": ({"classes": "[]"}, "classes: empty, but a classifier needs its class names"),
    "classes a dict": ({"classes": '{"a": 1}'}, "classes: {'a': 1} is not a list of class names (strings)"),
    "classes null": ({"classes": "null"}, "classes: None is not a list of class names (strings)"),
    "classes not strings": ({"classes": json.dumps(list(range(10)))},
                            "classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] is not a list of class names (strings)"),
    "classes too few": ({"classes": '["a", "b", "c"]'}, "classes: 3 names, but the model has 10 outputs"),
    "unknown mode": ({"preprocess": _plan(mode="XYZ")}, "preprocess.mode: 'XYZ' is not one of L, RGB"),
    "negative resize": ({"preprocess": _steps({"op": "resize", "size": [-8, 8]}, {"op": "to_array"})},
                        "preprocess.steps.0.size: [-8, 8] is not [size] or [height, width] of positive sizes "
                        "within 89478485 pixels"),
    "huge resize": ({"preprocess": _steps({"op": "resize", "size": [100000, 100000]}, {"op": "to_array"})},
                    "preprocess.steps.0.size: [100000, 100000] is not [size] or [height, width] of positive sizes "
                    "within 89478485 pixels"),
    "huge crop": ({"preprocess": _steps({"op": "center_crop", "size": [100000, 100000]})},
                  "preprocess.steps.0.size: [100000, 100000] is not [height, width] of positive sizes within "
                  "89478485 pixels"),
    "unknown op": ({"preprocess": _steps({"op": "exec", "code": "x"})},
                   "preprocess.steps.0: {'op': 'exec', 'code': 'x'} is not a step; known ops: convert, resize, "
                   "center_crop, to_array, to_float, normalize"),
    "unknown field": ({"preprocess": _steps({"op": "to_array", "then": 1})},
                      "preprocess.steps.0: to_array takes no fields; unknown then"),
    "zero std": ({"preprocess": _steps({"op": "to_array"}, {"op": "to_float"},
                                       {"op": "normalize", "mean": [0.5], "std": [0]})},
                 "preprocess.steps.2.std: a standard deviation of 0"),
    "nested deep": ({"preprocess": "[" * 100_000 + "]" * 100_000},
                    "preprocess: JSON nested more than 8 levels deep"),
    "plan a list": ({"preprocess": "[1, 2]"}, "preprocess: [1, 2] is not a plan (a JSON object)"),
    "input shape": ({"preprocess": _plan(input_shape=[1, -8, 8])},
                    "preprocess.input_shape: [1, -8, 8] is not [channels, height, width] of positive sizes within "
                    "89478485 pixels"),
    "unknown task": ({"task": "shell"}, "task: 'shell' is not one of classification, regression"),
    "unknown output": ({"output": "eval"}, "output: 'eval' is not one of softmax, sigmoid, probabilities, log_softmax"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_onnx_metadata_is_one_line_naming_the_field(tmp_path, case):
    metadata, message = HOSTILE[case]
    path = onnx_file(tmp_path, **metadata)
    fifo = tmp_path / "never-read.png"
    import os

    os.mkfifo(fifo)  # an image opened by mistake would block this test: the model must be refused first
    result = invoke("predict", fifo, "--model", path)
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {path}: metadata {message}{NOT_EXPORTED}"


def test_sound_metadata_predicts_and_an_onnx_file_is_known_by_content(tmp_path):
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 128).save(image)
    for name in ("model.onnx", "model.pt"):
        result = invoke("predict", image, "--model", onnx_file(tmp_path, name), "--format", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)[0]["top"][0]["probability"] == pytest.approx(0.1)


def test_an_input_shape_the_graph_does_not_take_is_refused(tmp_path):
    path = onnx_file(tmp_path, preprocess=_plan(input_shape=[3, 8, 8], mode="RGB"))
    result = invoke("predict", tmp_path, "--model", path)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {path}: metadata preprocess.input_shape [3, 8, 8] does not fit the "
                                     f"model's input [1, 8, 8]{NOT_EXPORTED}")


def _hostile_checkpoint(make_checkpoint, tmp_path, change) -> Path:
    state = load_checkpoint(make_checkpoint(MLP, (1, 8, 8), transforms=["ToTensor"]))
    state.pop("path")
    change(state)
    path = tmp_path / "hostile.pt"
    torch.save(state, path)  # a plain dict, as anyone can write one
    return path


@pytest.mark.parametrize("transform, shown", [
    ({"Resize": [100000, 100000]}, "[100000, 100000]"),
    ({"Resize": -5}, "-5"),
    ({"CenterCrop": 0}, "0"),
    ({"Pad": 100000}, "100000"),
])
def test_a_checkpoints_hostile_eval_transform_is_refused_before_any_image(make_checkpoint, tmp_path, transform, shown):
    def change(state):
        state["config"]["data"]["transforms"]["eval"] = [transform, "ToTensor"]

    path = _hostile_checkpoint(make_checkpoint, tmp_path, change)
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    result = invoke("predict", tmp_path / "digit.png", "--model", path)
    assert result.exit_code == 2
    name = next(iter(transform))
    assert result.output.strip() == (f"error: {path}: stored config: data.transforms.eval.0: {name} size {shown} is "
                                     "not positive or makes images of more than 89478485 pixels; the checkpoint is "
                                     "not used")


def test_a_checkpoints_classes_that_are_not_names_are_refused(make_checkpoint, tmp_path):
    path = _hostile_checkpoint(make_checkpoint, tmp_path, lambda state: state.update(classes=list(range(10))))
    result = invoke("predict", tmp_path, "--model", path)
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: {path}: classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] is not a list of "
                                     "class names (strings); the checkpoint is not used")
