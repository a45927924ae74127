"""Class probabilities as the loss implies them: predict and eval agree with the model's own
outputs for each usual setup, and a single-logit binary model trains, evaluates and predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.inference.predictors import CheckpointPredictor
from dltool.models.outputs import to_probabilities
from dltool.store.checkpoint import load_checkpoint, rebuild_model, save_checkpoint

# (final layers, loss, the output kind stored, model outputs -> probabilities of both classes)
SETUPS = {
    "cross_entropy": ([{"Linear": {"out_features": "num_classes"}}], "CrossEntropyLoss", "softmax",
                      lambda out: out.softmax(1)),
    "bce_one_logit": ([{"Linear": {"out_features": 1}}], "BCEWithLogitsLoss", "sigmoid",
                      lambda out: torch.cat([1 - out.sigmoid(), out.sigmoid()], 1)),
    "bce_two_logits": ([{"Linear": {"out_features": "num_classes"}}], "BCEWithLogitsLoss", "sigmoid",
                       lambda out: out.sigmoid()),
    "sigmoid_bce": ([{"Linear": {"out_features": 1}}, "Sigmoid"], "BCELoss", "probabilities",
                    lambda out: torch.cat([1 - out, out], 1)),
    "log_softmax_nll": ([{"Linear": {"out_features": "num_classes"}}, {"LogSoftmax": {"dim": 1}}], "NLLLoss",
                        "log_softmax", lambda out: out.exp()),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two classes of 8x8 grey images: dark cats and bright dogs."""
    root = tmp_path_factory.mktemp("binary") / "imgs"
    rng = np.random.default_rng(0)
    for name, level in (("cat", 60), ("dog", 190)):
        (root / name).mkdir(parents=True)
        for i in range(16):
            pixels = np.clip(level + rng.normal(0, 40, (8, 8)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(root / name / f"{i}.png")
    return root


def train_setup(tmp_path, images, setup: str):
    head, loss, _, _ = SETUPS[setup]
    config = {"seed": 0, "data": {"dataset": {"name": "ImageFolder", "root": str(images)}, "val_split": 0.25,
                                  "batch_size": 8},
              "model": {"layers": ["Flatten", {"Linear": {"out_features": 8}}, "ReLU", *head]},
              "loss": loss, "optimizer": {"name": "SGD", "lr": 0.1}, "train": {"epochs": 2, "device": "cpu"}}
    path = tmp_path / f"{setup}.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "-q"])
    assert result.exit_code == 0, result.output
    return tmp_path / "runs" / setup


@pytest.mark.parametrize("setup", list(SETUPS))
def test_predict_gives_the_probabilities_the_loss_implies(tmp_path, images, setup):
    run = train_setup(tmp_path, images, setup)
    checkpoint = load_checkpoint(run)
    assert checkpoint["output"] == SETUPS[setup][2]
    files = [str(images / "cat" / "0.png"), str(images / "dog" / "0.png")]
    result = CliRunner().invoke(app, ["predict", *files, "-m", str(run), "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.stdout)
    predictor = CheckpointPredictor.load(run, device="cpu")
    model, _ = rebuild_model(checkpoint)
    with torch.no_grad():
        expected = SETUPS[setup][3](model(torch.stack([predictor.preprocess(f) for f in files])))
    for row, probs in zip(predicted, expected):
        by_class = {entry["class"]: entry["probability"] for entry in row["top"]}
        assert set(by_class) == {"cat", "dog"}
        assert by_class["cat"] == pytest.approx(float(probs[0]), abs=1e-6)
        assert by_class["dog"] == pytest.approx(float(probs[1]), abs=1e-6)


@pytest.mark.parametrize("setup", ["bce_one_logit", "sigmoid_bce"])
def test_single_output_eval_agrees_with_training_and_thresholds_at_one_half(tmp_path, images, setup):
    run = train_setup(tmp_path, images, setup)
    summary = json.loads((run / "summary.json").read_text())
    result = CliRunner().invoke(app, ["eval", str(run / "checkpoints" / "last.pt"), "--json", "--device", "cpu",
                                      "--out", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["accuracy"] == summary["final"]["val_accuracy"]
    assert report["loss"] == pytest.approx(summary["final"]["val_loss"])
    assert "top5_accuracy" not in report  # two classes: training leaves top-5 out too
    matrix = torch.tensor(report["confusion_matrix"])
    assert matrix.shape == (2, 2) and matrix.trace().item() / report["samples"] == report["accuracy"]


def test_a_checkpoint_without_an_output_key_reads_as_softmax(tmp_path, images):
    run = train_setup(tmp_path, images, "bce_two_logits")
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    old = {k: v for k, v in checkpoint.items() if k not in ("output", "path")}
    save_checkpoint(old, tmp_path / "old.pt")
    file = str(images / "dog" / "1.png")
    result = CliRunner().invoke(app, ["predict", file, "-m", str(tmp_path / "old.pt"), "--format", "json",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    predictor = CheckpointPredictor.load(tmp_path / "old.pt", device="cpu")
    with torch.no_grad():
        expected = predictor.model(predictor.preprocess(file)[None]).softmax(1)[0]
    top = {entry["class"]: entry["probability"] for entry in json.loads(result.stdout)[0]["top"]}
    assert top["dog"] == pytest.approx(float(expected[1]), abs=1e-6)


def test_cross_entropy_on_a_single_output_is_refused_before_the_run(tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(
        f"data:\n  dataset: {{name: ImageFolder, root: {images}}}\nmodel:\n  layers: [Flatten, "
        "{Linear: {out_features: 1}}]\nloss: CrossEntropyLoss\ntrain: {epochs: 1, device: cpu}\n")
    result = CliRunner().invoke(app, ["train", "cfg.yaml", "-q"])
    assert result.exit_code == 2
    assert result.stderr == ("error: cfg.yaml:5:1: loss: CrossEntropyLoss needs one output per class (2); a single "
                             "output (Linear: {out_features: 1}) goes with BCEWithLogitsLoss\n")
    assert not (tmp_path / "runs").exists()


def test_single_output_probabilities_are_p_and_one_minus_p():
    logits = torch.tensor([[0.0], [2.0], [-1.0]])
    probs = to_probabilities(logits, "sigmoid")
    assert probs.shape == (3, 2)
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert torch.allclose(probs[:, 1], logits[:, 0].sigmoid())
