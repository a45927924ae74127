"""TimmModel: timm's small test models (random weights, small inputs, offline) through the builder and
every command that uses a model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import ModelConfig, load_config
from dltool.config.spec import parse_spec
from dltool.errors import CheckpointError, ConfigError
from dltool.models import build_model, with_model_defaults

timm = pytest.importorskip("timm")

CONFIG = """\
    seed: 0
    data:
      dataset: Digits
      batch_size: 64
      transforms:
        eval: [ {Resize: [32, 32]}, ToTensor, {Normalize: {mean: [0.3], std: [0.4]}} ]
    model:
      layers:
        - TimmModel: {name: test_resnet, drop_rate: 0.1}
    optimizer: {name: Adam, lr: 0.01}
    train: {epochs: 1, device: cpu, threads: 1, histograms: false}
    """


def model_of(layer: dict, shape: tuple[int, ...], classes: int | None = 4, pretrained: bool = True):
    config = ModelConfig(layers=(parse_spec(layer, "model.layers.0"),))
    return build_model(config, shape, classes, pretrained=pretrained)


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def offline_env(tmp_path: Path) -> dict:
    """A process that cannot reach the Hugging Face hub and has an empty cache."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}


def test_channels_and_classes_come_from_the_data_and_backbone_freezes_all_but_timms_classifier():
    model = model_of({"TimmModel": {"name": "test_resnet", "drop_rate": 0.1, "freeze": "backbone"}}, (1, 32, 32))
    assert model.output_shape == (4,)
    timm_model = model[0]
    assert timm_model.conv1[0].in_channels == 1 and timm_model.drop_rate == 0.1
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.fc.weight", "0.fc.bias"]
    head = model_of({"TimmModel": {"name": "test_efficientnet", "freeze": "backbone"}}, (3, 24, 24), 3)
    assert [n for n, p in head.named_parameters() if p.requires_grad] == ["0.classifier.weight", "0.classifier.bias"]


def test_a_fixed_size_model_is_made_for_the_input_size():
    model = model_of({"TimmModel": {"name": "timm/test_vit"}}, (3, 32, 32))
    assert model.output_shape == (4,)
    assert tuple(model[0].patch_embed.img_size) == (32, 32)


def test_unknown_names_and_arguments_are_one_line_with_suggestions():
    with pytest.raises(ConfigError) as caught:
        model_of({"TimmModel": {"name": "resnet18x"}}, (3, 32, 32))
    assert str(caught.value) == ("model.layers.0: TimmModel: unknown timm model 'resnet18x'; did you mean resnet18 or "
                                 "resnet18d or skresnet18? (see `dltool list models --filter NAME`)")
    with pytest.raises(ConfigError) as caught:
        model_of({"TimmModel": {"name": "test_resnet", "drop_rat": 0.1}}, (3, 32, 32))
    assert str(caught.value) == "model.layers.0: TimmModel: ResNet.__init__() got an unexpected keyword argument 'drop_rat'"


def test_pretrained_weights_from_a_file_load_and_a_checkpoint_rebuild_needs_no_file(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_resnet")
    torch.save(source.state_dict(), tmp_path / "w.pth")
    layer = {"TimmModel": {"name": "test_resnet", "pretrained": str(tmp_path / "w.pth")}}
    model = model_of(layer, (3, 32, 32), 5)
    assert torch.equal(model[0].conv1[0].weight, source.conv1[0].weight)
    assert model[0].fc.out_features == 5
    (tmp_path / "w.pth").unlink()
    rebuilt = model_of(layer, (3, 32, 32), 5, pretrained=False)  # as eval, predict and --resume rebuild it
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    with pytest.raises(CheckpointError, match=r"TimmModel: pretrained: weights file .*w.pth not found"):
        model_of(layer, (3, 32, 32), 5)


def test_a_pretrained_run_resumes_without_its_weights_file(tmp_path):
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "w.pth")
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(CONFIG).replace("drop_rate: 0.1", "pretrained: w.pth"))
    result = invoke("train", tmp_path / "cfg.yaml", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    (tmp_path / "w.pth").unlink()
    result = invoke("train", "--resume", tmp_path / "runs" / "cfg", "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "cfg" / "summary.json").read_text())["epochs_done"] == 2


def test_pretrained_offline_is_one_line(tmp_path):
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(CONFIG).replace("drop_rate: 0.1", "pretrained: true"))
    done = subprocess.run([sys.executable, "-m", "dltool", "config", str(tmp_path / "cfg.yaml")], capture_output=True,
                          text=True, env=offline_env(tmp_path), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'cfg.yaml'}:9:7: model.layers.0: ")
    assert lines[0].endswith("TimmModel: cannot load timm's test_resnet weights (An error happened while trying to "
                             "locate the file on the Hub and we cannot find the requested files in the local cache. "
                             "Please check your connection and try again or make sure your Internet connection is "
                             "on.); run once online to fill the Hugging Face cache (HF_HOME), or set pretrained: "
                             "path/to/weights.pth, or pretrained: false")


def test_pretrained_weights_offer_their_eval_preprocessing_and_config_prints_it(tmp_path):
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "w.pth")
    text = textwrap.dedent(CONFIG).replace("drop_rate: 0.1", "pretrained: w.pth")
    text = "".join(line for line in text.splitlines(keepends=True) if "transforms:" not in line and "eval:" not in line)
    (tmp_path / "cfg.yaml").write_text(text)
    config, note = with_model_defaults(load_config(tmp_path / "cfg.yaml"))
    expected = [{"Resize": {"size": 168, "interpolation": "bilinear"}}, {"CenterCrop": {"size": [160, 160]}},
                "ToTensor", {"Normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}]
    assert config.to_data()["data"]["transforms"]["eval"] == expected
    assert config.data.channels == 3
    assert note.startswith("data.transforms.eval: not given; using timm's preprocessing for the pretrained test_resnet: "
                           '{"Resize": {"size": 168, "interpolation": "bilinear"}}')
    result = invoke("config", tmp_path / "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"]["transforms"]["eval"] == expected
    assert note in result.stderr
    given = load_config(tmp_path / "cfg.yaml", ["data.transforms.eval=[ToTensor]"])
    assert with_model_defaults(given) == (given, None)


def test_train_resume_eval_predict_export_shapes_on_a_timm_model(tmp_path):
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(CONFIG))
    runs = tmp_path / "runs"
    result = invoke("train", tmp_path / "cfg.yaml", "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    run = runs / "cfg"
    result = invoke("train", "--resume", run, "train.epochs=2")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "summary.json").read_text())["epochs_done"] == 2
    result = invoke("eval", run, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 359
    Image.effect_noise((8, 8), 60).save(tmp_path / "digit.png")
    result = invoke("predict", tmp_path / "digit.png", "--model", run, "--format", "json", "--topk", "10")
    assert result.exit_code == 0, result.output
    from_checkpoint = json.loads(result.stdout)[0]["top"]
    result = invoke("export", run, "--format", "onnx")
    assert result.exit_code == 0, result.output
    code = ("import json, sys\nfrom dltool.cli import app\n"
            f"sys.argv = ['dltool', 'predict', {str(tmp_path / 'digit.png')!r}, '--model', "
            f"{str(run / 'model.onnx')!r}, '--format', 'json', '--topk', '10']\n"
            "try:\n    app()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    from_onnx = json.loads(done.stdout)[0]["top"]
    assert [t["index"] for t in from_onnx] == [t["index"] for t in from_checkpoint]
    assert from_onnx[0]["probability"] == pytest.approx(from_checkpoint[0]["probability"], abs=1e-4)
    result = invoke("shapes", tmp_path / "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    shapes = json.loads(result.stdout)
    assert shapes["input_shape"] == [1, 1, 32, 32] and shapes["layers"][-1]["output_shape"] == [1, 10]
    assert shapes["total_params"] == sum(p.numel() for p in timm.create_model("test_resnet", in_chans=1,
                                                                            num_classes=10).parameters())


def test_list_models_holds_timms_names_with_a_filter():
    result = invoke("list", "models", "--filter", "test_vit*", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == ["timm/test_vit", "timm/test_vit2", "timm/test_vit3", "timm/test_vit4",
                                         "timm/test_vit_relpos"]
    result = invoke("list", "models", "--filter", "RESNET18", "--json")
    assert json.loads(result.stdout) == ["resnet18", "timm/legacy_seresnet18", "timm/resnet18", "timm/resnet18d",
                                         "timm/seresnet18", "timm/skresnet18"]
    result = invoke("list", "models", "timm/resnet18d")
    assert result.exit_code == 0, result.output
    assert "'bicubic'" in result.stderr and "(3, 224, 224)" in result.stderr


def test_without_timm_a_timm_model_is_one_line_naming_the_extra(tmp_path):
    (tmp_path / "cfg.yaml").write_text(textwrap.dedent(CONFIG))
    code = ("import sys\nsys.modules['timm'] = None\nfrom dltool.cli import app\n"
            f"sys.argv = ['dltool'] + {sys.argv[:0]!r} + sys.argv[1:]\napp()\n")
    done = subprocess.run([sys.executable, "-c", code, "config", str(tmp_path / "cfg.yaml")], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == 'error: TimmModel needs timm, which is not installed: pip install "dltool[timm]"'
    listed = subprocess.run([sys.executable, "-c", code, "list", "models"], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert 'timm\'s models (TimmModel) need timm: pip install "dltool[timm]"' in listed.stderr
    assert "timm/" not in listed.stderr
