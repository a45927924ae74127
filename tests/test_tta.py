"""Test-time augmentation: the views, their two interpreters, and `--tta` on eval and predict."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.errors import ConfigError
from dltool.inference import tta
from dltool.inference.tta_model import Averaged
from dltool.store.checkpoint import load_checkpoint, save_checkpoint

MLP = ["Flatten", {"Linear": {"out_features": 16}}, "ReLU", {"Linear": {"out_features": "num_classes"}}]
NO_FLIPS = ("warning: --tta flip: the training transforms have no RandomHorizontalFlip, so the model never saw "
            "flipped images; set data.flip_invariant: true if flips keep the class, or use --tta crops")


def _run(*args):
    return CliRunner().invoke(app, [*map(str, args)])


def test_modes_and_their_views():
    assert tta.parse_mode("flip") == ("flip",)
    assert tta.parse_mode("crops,FLIP") == ("flip", "crops")
    assert [len(tta.views(tta.parse_mode(m), 16, 16)) for m in ("flip", "crops", "flip,crops")] == [2, 6, 12]
    crops = tta.views(("crops",), 16, 16)
    assert crops[0] == tta.View() and crops[1:] == [tta.View((0, 0, 14, 14)), tta.View((0, 2, 14, 14)),
                                                    tta.View((2, 0, 14, 14)), tta.View((2, 2, 14, 14)),
                                                    tta.View((1, 1, 14, 14))]
    with pytest.raises(ConfigError) as raised:
        tta.parse_mode("img.png")
    assert str(raised.value) == ("--tta: unknown mode 'img.png'; allowed: flip, crops, flip,crops (--tta alone "
                                 "means flip; before the inputs write it as --tta=MODE)")


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 13, 21)])
def test_numpy_views_equal_torch_views(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for view in tta.views(("flip", "crops"), *shape[1:]):
        expected = tta.apply_torch(torch.from_numpy(x)[None], view)[0].numpy()
        np.testing.assert_allclose(tta.apply_numpy(x, view), expected, atol=1e-5)


@pytest.mark.parametrize("output,width", [("softmax", 4), ("log_softmax", 4), ("sigmoid", 1), ("probabilities", 3)])
def test_averaged_outputs_carry_the_mean_probability(output, width):
    from dltool.models.outputs import to_probabilities

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, width))
    if output == "log_softmax":
        model.append(torch.nn.LogSoftmax(1))
    if output == "probabilities":
        model.append(torch.nn.Softmax(1))
    x = torch.randn(5, 1, 8, 8)
    shown = tta.views(("flip", "crops"), 8, 8)
    expected = torch.stack([to_probabilities(model(tta.apply_torch(x, v)), output) for v in shown]).mean(0)
    got = to_probabilities(Averaged(model, ("flip", "crops"), output)(x), output)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_eval_reports_metrics_with_and_without(digits_run, tmp_path):
    plain = _run("eval", digits_run, "--json", "--out", tmp_path / "plain", "--device", "cpu")
    crops = _run("eval", digits_run, "--json", "--tta", "crops", "--out", tmp_path / "tta", "--device", "cpu")
    assert plain.exit_code == 0 and crops.exit_code == 0, crops.output
    before, after = json.loads(plain.stdout), json.loads(crops.stdout)
    assert after["accuracy"] == before["accuracy"] and after["loss"] == before["loss"]
    assert after["tta"]["mode"] == "crops" and after["tta"]["views"] == 6
    assert set(after["tta"]["metrics"]) == {"loss", "accuracy", "top5_accuracy"}
    assert 0.5 < after["tta"]["metrics"]["accuracy"] <= 1 and after["tta"]["metrics"]["loss"] != before["loss"]
    assert json.loads((tmp_path / "tta" / "metrics.json").read_text())["tta"] == after["tta"]
    table = _run("eval", digits_run, "--tta", "crops", "--out", tmp_path / "tta", "--device", "cpu")
    assert "with --tta crops (6 views)" in table.stderr


def test_flips_warn_without_flipped_training_and_are_refused_where_they_change_the_class(digits_run, tmp_path):
    warned = _run("eval", digits_run, "--tta", "flip", "--json", "--out", tmp_path / "a", "--device", "cpu")
    assert warned.exit_code == 0 and NO_FLIPS in " ".join(warned.stderr.split())
    said = _run("eval", digits_run, "data.flip_invariant=true", "--tta", "flip", "--json", "--out", tmp_path / "b")
    assert said.exit_code == 0 and "warning" not in said.stderr
    refused = _run("eval", digits_run, "data.flip_invariant=false", "--tta", "flip,crops", "--out", tmp_path / "c")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == ("error: --tta flip: this run's config sets data.flip_invariant: false (a "
                                      "mirrored image may be another class); use --tta crops")
    assert not (tmp_path / "c").exists()

    checkpoint = load_checkpoint(digits_run)
    checkpoint["config"]["data"]["flip_invariant"] = False
    mirrored = save_checkpoint({k: v for k, v in checkpoint.items() if k != "path"}, tmp_path / "digits.pt")
    image = tmp_path / "seven.png"
    Image.fromarray(np.eye(8, dtype=np.uint8) * 200, "L").save(image)
    result = _run("predict", image, "--model", mirrored, "--tta", "flip")
    assert result.exit_code == 2 and "data.flip_invariant: false" in result.stderr
    assert _run("predict", image, "--model", mirrored, "--tta", "crops").exit_code == 0


def test_flip_tta_makes_a_prediction_mirror_invariant(digits_run, tmp_path):
    picture = np.zeros((8, 8), np.uint8)
    picture[1:7, 1] = picture[1, 1:5] = 220  # an asymmetric stroke: its mirror is another picture
    Image.fromarray(picture, "L").save(tmp_path / "a.png")
    Image.fromarray(picture[:, ::-1].copy(), "L").save(tmp_path / "b.png")

    def probabilities(*extra):
        result = _run("predict", tmp_path / "a.png", tmp_path / "b.png", "--model", digits_run, "--topk", "10",
                      "--format", "json", *extra)
        assert result.exit_code == 0, result.output
        return [{t["index"]: t["probability"] for t in p["top"]} for p in json.loads(result.stdout)]

    plain = probabilities()
    assert plain[0] != pytest.approx(plain[1], abs=1e-3)
    a, b = probabilities("--tta", "flip")
    assert a == pytest.approx(b, abs=1e-6) and sum(a.values()) == pytest.approx(1, abs=1e-5)
    alone = probabilities("--tta")  # --tta alone, last: flip
    assert alone[0] == pytest.approx(a, abs=1e-6) and alone[1] == pytest.approx(b, abs=1e-6)
    bare = _run("predict", tmp_path / "a.png", "--tta", "--model", digits_run, "--topk", "10", "--format", "json")
    assert bare.exit_code == 0, bare.output  # --tta alone before another option: flip
    assert {t["index"]: t["probability"] for t in json.loads(bare.stdout)[0]["top"]} == pytest.approx(a, abs=1e-6)


def test_an_onnx_file_averages_the_views_as_its_checkpoint(make_checkpoint, tmp_path):
    checkpoint = make_checkpoint(MLP, (1, 8, 8), transforms=["ToTensor", {"Normalize": {"mean": [0.5], "std": [0.5]}}])
    exported = _run("export", checkpoint, "--out", tmp_path / "mlp.onnx")
    assert exported.exit_code == 0, exported.output
    image = tmp_path / "digit.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3, "L").save(image)
    outputs = []
    for model in (checkpoint, tmp_path / "mlp.onnx"):
        result = _run("predict", image, "--model", model, "--tta", "flip,crops", "--format", "json", "--topk", "10")
        assert result.exit_code == 0, result.output
        outputs.append({t["index"]: t["probability"] for t in json.loads(result.stdout)[0]["top"]})
        assert (NO_FLIPS in " ".join(result.stderr.split())) == (model == checkpoint)  # an exported file has no config
    assert outputs[0] == pytest.approx(outputs[1], abs=1e-5)


def test_a_bad_mode_is_one_line(digits_run, tmp_path):
    result = _run("eval", digits_run, "--tta", "mirror", "--out", tmp_path)
    assert result.exit_code == 2 and result.stderr.strip().startswith("error: --tta: unknown mode 'mirror'; allowed:")
