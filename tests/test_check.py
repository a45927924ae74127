"""`dltool config` gives every error `train` gives before its first step (dltool/check.py)."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import dump_yaml, load_config

CONFIGS = Path(__file__).parents[1] / "configs"
HEAD = "model:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\n"
FOLDER = "data:\n  dataset: {name: ImageFolder, root: pics}\n"
ALLOWED_CONV = ("(allowed: in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, "
                "padding_mode, device, dtype)")


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line
    return line.replace(str(path), "cfg.yaml")


@pytest.mark.parametrize("text, expected", [
    ("model:\n  input_shape: [1, 8, 8]\n  layers: [Flatten, {Linaer: {out_features: 10}}]\n",
     "cfg.yaml:3:21: model.layers.1: unknown layer 'Linaer'; did you mean Linear or Bilinear or LazyLinear? "
     "(see `dltool list layers`)"),
    (FOLDER + "model:\n  layers: [{Conv2d: {out_chanels: 4, kernel_size: 3}}, Flatten, {Linear: {out_features: 3}}]\n",
     "cfg.yaml:4:12: model.layers.0: Conv2d: unknown argument 'out_chanels'; did you mean out_channels or "
     f"in_channels? {ALLOWED_CONV}"),
    (FOLDER + "model:\n  layers:\n    - Residual:\n"
     "        body: [{Conv2d: {out_channels: 4, kernel_size: 3, paddin: 1}}]\n"
     "    - Flatten\n    - Linear: {out_features: num_classes}\n",
     "cfg.yaml:6:16: model.layers.0.Residual.body.0: Conv2d: unknown argument 'paddin'; did you mean padding or "
     f"padding_mode? {ALLOWED_CONV}"),
    (HEAD + "optimizer: {name: Adamm, lr: 0.1}\n",
     "cfg.yaml:3:1: optimizer: unknown optimizer 'Adamm'; did you mean Adam or RAdam or NAdam? "
     "(see `dltool list optimizers`)"),
    (HEAD + "optimizer: {name: SGD, lr: 0.1, momentum: -1}\n",
     "cfg.yaml:3:1: optimizer: SGD: Invalid momentum value: -1"),
    (HEAD + "scheduler: {name: StepLR, step_sise: 2}\n",
     "cfg.yaml:3:1: scheduler: StepLR: unknown argument 'step_sise'; did you mean step_size? "
     "(allowed: optimizer, step_size, gamma, last_epoch)"),
    (HEAD + "loss: {name: CrossEntropyLoss, label_smothing: 0.1}\n",
     "cfg.yaml:3:1: loss: CrossEntropyLoss: unknown argument 'label_smothing'; did you mean label_smoothing? "
     "(allowed: weight, size_average, ignore_index, reduce, reduction, label_smoothing)"),
    ("data:\n  transforms:\n    train: [{RandomHorizontalFlp: {}}, ToTensor]\n" + HEAD,
     "cfg.yaml:3:13: data.transforms.train.0: unknown transform 'RandomHorizontalFlp'; did you mean "
     "RandomHorizontalFlip or RandomVerticalFlip or RandomCrop? (see `dltool list transforms`)"),
    (FOLDER + "  transforms:\n    eval: [ToTensor, {Normalize: {mean: [0.5], sd: [0.5]}}]\n" + HEAD,
     "cfg.yaml:4:22: data.transforms.eval.1: Normalize: unknown argument 'sd'; did you mean std? "
     "(allowed: mean, std, inplace)"),
    (HEAD + "data:\n  batch_transforms: [{MixUp: {alpah: 0.2}}]\n",
     "cfg.yaml:4:22: data.batch_transforms.0: MixUp: unknown argument 'alpah'; did you mean alpha? "
     "(allowed: alpha, num_classes, labels_getter)"),
    ("data:\n  dataset: {name: ImageFolder, roots: pics}\n" + HEAD,
     "cfg.yaml:2:3: data.dataset: ImageFolder: unknown argument 'roots'; did you mean root? "
     "(allowed: root, train, val, test, extensions)"),
    ("data:\n  dataset: {name: ImageFoldr, root: pics}\n" + HEAD,
     "cfg.yaml:2:3: data.dataset: unknown dataset 'ImageFoldr'; did you mean ImageFolder or ImageList? "
     "(see `dltool list datasets`)"),
])
def test_config_names_the_first_wrong_name_or_argument_in_every_section(tmp_path, text, expected):
    assert config_error(tmp_path, text) == f"error: {expected}"


def test_config_checks_shapes_on_an_embedded_dataset(tmp_path):
    text = "model:\n  layers: [Flatten, {Linear: {in_features: 100, out_features: 10}}]\n"
    assert config_error(tmp_path, text) == (
        "error: cfg.yaml:2:21: model.layers.1: Linear: in_features is 100 but the input has 64 features "
        "(1x8x8 flattened); write in_features: 64 or leave it out")


def test_config_checks_the_embedded_dataset_classes_against_the_head(tmp_path):
    text = "model:\n  layers: [Flatten, {Linear: {out_features: 3}}]\n"
    assert config_error(tmp_path, text) == (
        "error: cfg.yaml:2:21: model.layers.1: Linear: the model's output is 3 per sample but the dataset has "
        "10 classes; end with Linear: {out_features: num_classes}")


def test_config_checks_shapes_when_the_input_shape_is_given(tmp_path):
    text = FOLDER + ("model:\n  input_shape: [3, 32, 32]\n  layers: [{Conv2d: {out_channels: 6, kernel_size: 5}}, "
                     "Flatten, {Linear: {out_features: num_classes}}, {Linear: {in_features: 3, out_features: 2}}]\n")
    assert config_error(tmp_path, text) == (
        "error: cfg.yaml:5:105: model.layers.3: Linear: in_features is 3 but the input has 2 features; "
        "write in_features: 2 or leave it out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_config_checks_the_device(tmp_path):
    assert config_error(tmp_path, HEAD + "train:\n  device: cuda\n") == (
        "error: cfg.yaml:4:3: train.device: cuda: no CUDA device is available here; use cpu or auto")


def test_a_folder_dataset_is_not_read_by_config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(FOLDER + "model:\n  layers: [{Conv2d: {out_channels: 4, kernel_size: 3}}, Flatten, "
                             "{Linear: {out_features: num_classes}}]\noptimizer:\n  name: SGD\n  lr: 0.1\n"
                             "  param_groups: [{params: ['*.bias'], weight_decay: 0}]\n")
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "pics").exists()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_pass_and_print_the_resolved_config_unchanged(name):
    path = CONFIGS / name
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 0, result.output
    assert result.stdout == dump_yaml(load_config(path).to_data())


DIGITS = "seed: 0\ndata:\n  dataset: Digits\n  batch_size: 32\n"
SMALL_CNN = ("model:\n  layers:\n    - Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}\n    - ReLU\n"
             "    - Flatten\n    - Linear: {out_features: num_classes}\n")


@pytest.mark.parametrize("text, expected", [
    (DIGITS + "  transforms:\n    train: [ToTensor, {Normalize: {mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}]\n"
     "    eval: [ToTensor]\n" + SMALL_CNN,
     "cfg.yaml:6:23: data.transforms.train.1: Normalize has 3 means for images with 1 channel (shape [1, 8, 8] "
     "there); give 1 value each to mean and std (dltool data --stats prints them), or set data.channels"),
    (DIGITS + "  transforms:\n    train: [ToTensor]\n    eval: [{Resize: [16, 16]}, ToTensor]\n" + SMALL_CNN,
     "cfg.yaml:7:5: data.transforms.eval: gives samples of shape [1, 16, 16] but data.transforms.train gives "
     "[1, 8, 8], and the model is built for one of them; make both lists end in the same size (e.g. the same "
     "Resize)"),
], ids=["normalize-channels", "eval-size"])
def test_config_takes_trains_first_step_on_an_embedded_dataset(tmp_path, monkeypatch, text, expected):
    """What only one real batch reveals: `config` says it in the very line `train` would."""
    assert config_error(tmp_path, text) == f"error: {expected}"
    monkeypatch.chdir(tmp_path)
    trained = CliRunner().invoke(app, ["train", "cfg.yaml", "-q", "train.device=cpu"])
    assert trained.exit_code == 2 and trained.stderr == f"error: {expected}\n"

