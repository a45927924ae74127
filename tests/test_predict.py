import csv
import io
import json
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import config_from_data
from dltool.data import build_data
from dltool.inference.evaluate import evaluate_checkpoint
from dltool.inference.predict import expand_inputs
from dltool.inference.predictors import CheckpointPredictor
from dltool.store.checkpoint import load_checkpoint

LENET = [{"Conv2d": {"out_channels": 6, "kernel_size": 5, "padding": 2}}, "Sigmoid",
         {"AvgPool2d": {"kernel_size": 2, "stride": 2}}, {"Conv2d": {"out_channels": 16, "kernel_size": 5}}, "Sigmoid",
         {"AvgPool2d": {"kernel_size": 2, "stride": 2}}, "Flatten", {"Linear": {"out_features": 120}}, "Sigmoid",
         {"Linear": {"out_features": 84}}, "Sigmoid", {"Linear": {"out_features": "num_classes"}}]
LENET_EVAL = [{"Resize": [28, 28]}, "ToTensor", {"Normalize": {"mean": [0.5], "std": [0.5]}}]


def _predict(*args):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


@pytest.fixture(scope="module")
def val_bundle(digits_run):
    checkpoint = load_checkpoint(digits_run)
    config = config_from_data(checkpoint["config"])
    return build_data(config, splits=("val",), split_state=checkpoint["split"])


def test_predict_gives_the_probabilities_eval_computes(digits_run, val_bundle, tmp_path):
    evaluated = evaluate_checkpoint(digits_run, device="cpu")
    for i in range(64):  # eval's first batch, in the same order
        val_bundle.val.raw_image(i).save(tmp_path / f"{i:03d}.png")
    predictor = CheckpointPredictor.load(digits_run, device="cpu")
    for i in range(0, 64, 9):
        assert torch.equal(predictor.preprocess(str(tmp_path / f"{i:03d}.png")), val_bundle.val[i][0])
    result = _predict(tmp_path, "--model", digits_run, "--format", "json", "--topk", "10", "--batch-size", "64")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert [p["path"] for p in predictions] == [str(tmp_path / f"{i:03d}.png") for i in range(64)]
    probabilities = evaluated.probabilities
    for i, p in enumerate(predictions):
        got = torch.zeros(10)
        for entry in p["top"]:
            got[entry["index"]] = entry["probability"]
        assert torch.equal(got, probabilities[i])


def test_upscaled_digits_through_a_copied_checkpoint(digits_run, val_bundle, tmp_path):
    run = shutil.copytree(digits_run, tmp_path / "run")
    (run / "config.yaml").unlink()
    model = tmp_path / "elsewhere" / "model.pt"
    model.parent.mkdir()
    shutil.copy(run / "checkpoints" / "best.pt", model)
    shutil.rmtree(run)
    images = tmp_path / "images"
    images.mkdir()
    truth = {}
    for i in range(0, len(val_bundle.val), 12):
        path = images / f"digit{i}.png"
        val_bundle.val.raw_image(i).resize((32, 32), Image.BILINEAR).convert("RGB").save(path)
        truth[str(path)] = str(val_bundle.val.targets[i])
    result = _predict(images / "*.png", "--model", model, "--format", "json", "--topk", "1", "--device", "cpu")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert len(predictions) == len(truth) == 30
    correct = sum(p["top"][0]["class"] == truth[p["path"]] for p in predictions)
    assert correct >= 27


def test_unreadable_inputs_get_an_entry_and_the_rest_still_come_out(make_checkpoint, tmp_path):
    model = make_checkpoint(LENET, (1, 28, 28), transforms=LENET_EVAL)
    (tmp_path / "notes.txt").write_text("not an image\n")
    Image.new("L", (8, 8), 200).save(tmp_path / "ok.png")
    result = _predict(tmp_path / "notes.txt", tmp_path / "ok.png", tmp_path / "gone.png", "--model", model,
                      "--format", "json", "--topk", "3")
    assert result.exit_code == 2
    entries = json.loads(result.stdout)
    assert entries[0] == {"path": str(tmp_path / "notes.txt"), "error": "not an image (no known image format)"}
    assert entries[2] == {"path": str(tmp_path / "gone.png"), "error": "no such file or folder"}
    top = entries[1]["top"]
    assert [list(t) for t in top] == [["class", "index", "probability"]] * 3
    assert sum(t["probability"] for t in top) <= 1 and top[0]["probability"] >= top[1]["probability"]
    assert result.stderr.strip().splitlines() == [
        f"error: 2 of 3 inputs could not be classified (first: {tmp_path / 'notes.txt'}: not an image (no known "
        "image format))"]


def test_a_text_file_alone_is_one_line(make_checkpoint, tmp_path):
    model = make_checkpoint(LENET, (1, 28, 28), transforms=LENET_EVAL)
    (tmp_path / "notes.txt").write_text("not an image\n")
    result = _predict(tmp_path / "notes.txt", "--model", model, "--format", "csv")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'notes.txt'}: not an image (no known image format)"]
    assert "Traceback" not in result.output


def test_folders_recurse_and_globs_expand(tmp_path):
    for name in ("a/1.png", "a/b/2.JPG", "a/b/skip.txt", "c/3.bmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    found = expand_inputs([str(tmp_path / "a"), str(tmp_path / "c" / "*.bmp"), str(tmp_path / "*.gif"),
                           str(tmp_path / "empty")])
    assert [(p.removeprefix(str(tmp_path)), e) for p, e in found] == [
        ("/a/1.png", None), ("/a/b/2.JPG", None), ("/c/3.bmp", None),
        ("/*.gif", "no file matches this pattern"),
        ("/empty", "folder holds no image files (.jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp, .gif)")]


def test_csv_and_table_formats(make_checkpoint, tmp_path):
    model = make_checkpoint(LENET, (1, 28, 28), transforms=LENET_EVAL)
    for i in range(3):
        Image.new("RGB", (20 + i, 30), (i * 80, 10, 200)).save(tmp_path / f"{i}.png")
    result = _predict(tmp_path, "--model", model, "--format", "csv", "--topk", "2", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["path", "rank", "class", "index", "probability", "error"]
    assert [(r[0].removeprefix(str(tmp_path) + "/"), r[1]) for r in rows[1:]] == [
        ("0.png", "1"), ("0.png", "2"), ("1.png", "1"), ("1.png", "2"), ("2.png", "1"), ("2.png", "2")]
    table = _predict(tmp_path / "0.png", "--model", model)
    assert table.exit_code == 0 and "probability" in table.stdout and "0.png" in table.stdout
    bad = _predict(tmp_path / "0.png", "--model", model, "--format", "xml")
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --format: unknown format 'xml'; allowed: table, json, csv"


def test_colour_and_grey_files_give_the_same_answer_to_a_grey_model(make_checkpoint, tmp_path):
    model = make_checkpoint(LENET, (1, 28, 28), transforms=LENET_EVAL)
    grey = Image.effect_noise((24, 24), 60)
    grey.save(tmp_path / "grey.png")
    grey.convert("RGB").save(tmp_path / "colour.png")
    predictor = CheckpointPredictor.load(model, device="cpu")
    assert torch.equal(predictor.preprocess(str(tmp_path / "grey.png")), predictor.preprocess(str(tmp_path / "colour.png")))


def test_a_size_the_model_cannot_take_is_named(make_checkpoint, tmp_path):
    model = make_checkpoint(["Flatten", {"Linear": {"out_features": "num_classes"}}], (1, 8, 8))
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    Image.new("L", (16, 16)).save(tmp_path / "big.png")
    result = _predict(tmp_path, "--model", model, "--format", "json")
    assert result.exit_code == 2
    big, small = json.loads(result.stdout)
    assert big["error"] == ("gives an input of shape [1, 16, 16] after the run's eval transforms, but the model takes "
                            "[1, 8, 8] (add a Resize to data.transforms.eval)")
    assert "top" in small


def test_cold_predict_imports_nothing_heavy(make_checkpoint, tmp_path):
    model = make_checkpoint(LENET, (1, 28, 28), transforms=LENET_EVAL)
    Image.new("L", (8, 8), 100).save(tmp_path / "one.png")
    code = ("import sys\nfrom dltool.cli import app\n"
            f"sys.argv = ['dltool', 'predict', {str(tmp_path / 'one.png')!r}, '--model', {str(model)!r}, '--format', 'json']\n"
            "try:\n    app()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "heavy = [m for m in ('torchvision', 'tensorboard', 'sklearn', 'matplotlib') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["path"] == str(tmp_path / "one.png")


def test_regression_checkpoint_gives_values(make_checkpoint, tmp_path):
    model = make_checkpoint(["Flatten", {"Linear": {"out_features": 2}}], (1, 4, 4), classes=(), task="regression",
                            transforms=[{"Resize": [4, 4]}, "ToTensor"])
    Image.new("L", (9, 9), 30).save(tmp_path / "a.png")
    result = _predict(tmp_path / "a.png", "--model", model, "--format", "json")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.stdout)
    assert list(entry) == ["path", "value"] and len(entry["value"]) == 2


def test_torchvision_backbone_checkpoint_needs_no_pretrained_file(make_checkpoint, tmp_path, monkeypatch):
    model = make_checkpoint([{"TorchvisionModel": {"name": "squeezenet1_1"}}], (3, 32, 32), classes=("a", "b", "c"),
                            transforms=[{"Resize": [32, 32]}, "ToTensor"])
    state = torch.load(model, weights_only=True)
    state["config"]["model"]["layers"][0]["TorchvisionModel"]["weights"] = "DEFAULT"
    torch.save(state, model)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-hub"))
    Image.new("L", (40, 30), 90).save(tmp_path / "grey.png")
    result = _predict(tmp_path / "grey.png", "--model", model, "--format", "json", "--topk", "5")
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout)[0]["top"]
    assert sorted(t["class"] for t in top) == ["a", "b", "c"]
