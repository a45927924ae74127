"""The first-step check: a new user's configs that fail at the first batch get one located line,
exit 2 and no run folder; a config that trains starts exactly as it would have without the check."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dltool.cli import app

HEAD = """\
seed: 0
data:
  dataset: Digits
  batch_size: 32
"""
MODEL = """\
model:
  layers:
    - Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
    - ReLU
    - Flatten
    - Linear: {out_features: num_classes}
"""
TAIL = """\
optimizer: {name: SGD, lr: 0.01}
train: {epochs: 1, device: cpu, threads: 1}
"""


def train_cli(tmp_path, monkeypatch, text: str):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(text)
    return CliRunner().invoke(app, ["train", "cfg.yaml", "-q"])


def assert_refused(result, tmp_path, line: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {line}\n"
    assert not (tmp_path / "runs").exists()


def test_declared_input_shape_that_the_data_does_not_have(tmp_path, monkeypatch):
    text = HEAD + "model:\n  input_shape: [1, 28, 28]\n  layers:\n    - Flatten\n    - Linear: {out_features: 256}\n" \
        "    - ReLU\n    - Linear: {out_features: num_classes}\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:6:3: model.input_shape: [1, 28, 28], but the data's samples are [1, 8, 8] (after "
                   "data.transforms.train); leave model.input_shape out to take the data's shape, or resize the "
                   "images to it")


def test_eval_transforms_of_another_size_than_the_train_ones(tmp_path, monkeypatch):
    text = HEAD + "  transforms:\n    train: [ToTensor]\n    eval: [{Resize: [16, 16]}, ToTensor]\n" + MODEL + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:7:5: data.transforms.eval: gives samples of shape [1, 16, 16] but data.transforms.train "
                   "gives [1, 8, 8], and the model is built for one of them; make both lists end in the same size "
                   "(e.g. the same Resize)")


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_three_channel_normalize_on_one_channel_images(tmp_path, monkeypatch, cache):
    text = HEAD + f"  cache: {cache}\n  transforms:\n    train: [ToTensor, {{Normalize: {{mean: [0.5, 0.5, 0.5], " \
        "std: [0.5, 0.5, 0.5]}}]\n    eval: [ToTensor]\n" + MODEL + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:7:23: data.transforms.train.1: Normalize has 3 means for images with 1 channel (shape "
                   "[1, 8, 8] there); give 1 value each to mean and std (dltool data --stats prints them), or set "
                   "data.channels")


def test_one_value_normalize_fits_any_channels_and_three_fit_three(tmp_path, monkeypatch):
    text = HEAD + "  channels: 3\n  transforms:\n    train: [ToTensor, {Normalize: {mean: [0.5], std: [0.5]}}, " \
        "{Normalize: {mean: [0.1, 0.2, 0.3], std: [1, 1, 1]}}]\n    eval: [ToTensor]\n" + MODEL + TAIL
    result = train_cli(tmp_path, monkeypatch, text)
    assert result.exit_code == 0, result.output


def test_class_weights_for_another_number_of_classes(tmp_path, monkeypatch):
    text = HEAD + MODEL + "loss: {name: CrossEntropyLoss, weight: [1, 2]}\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:11:32: loss.weight: 2 class weights for 10 classes; give one per class, in class order, "
                   "or weight: balanced")


@pytest.mark.parametrize("loss", ["MSELoss", "L1Loss"])
def test_a_loss_for_numbers_on_class_labels(tmp_path, monkeypatch, loss):
    text = HEAD + MODEL + f"loss: {loss}\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   f"cfg.yaml:11:1: loss: {loss} compares outputs with numbers, but this dataset has class labels "
                   "(10 classes); use CrossEntropyLoss (or BCEWithLogitsLoss)")


def test_a_class_index_loss_on_regression_data(tmp_path, monkeypatch):
    text = ("data:\n  dataset: {name: LinearData, num_samples: 100, num_features: 2}\n"
            "model:\n  layers: [Flatten, {Linear: {out_features: 1}}]\nloss: CrossEntropyLoss\n" + TAIL)
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:5:1: loss: CrossEntropyLoss takes class indices, but this dataset has numeric targets "
                   "(regression); use MSELoss, L1Loss or HuberLoss")


def test_a_schedule_shorter_than_the_run(tmp_path, monkeypatch):
    text = HEAD + MODEL + "scheduler: {name: OneCycleLR, total_steps: 10}\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:11:1: scheduler: OneCycleLR cannot follow this run's 45 optimizer steps (1 epochs): "
                   "Tried to step 11 times. The specified number of total steps is 10")


def test_a_schedule_argument_that_breaks_an_epoch_schedule(tmp_path, monkeypatch):
    text = HEAD + MODEL + "scheduler: {name: StepLR, step_size: 0}\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:11:1: scheduler: StepLR cannot follow this run's 1 epochs: integer modulo by zero")


def test_pos_weight_of_another_length_than_the_outputs(tmp_path, monkeypatch):
    text = HEAD + MODEL + "loss: {name: BCEWithLogitsLoss, pos_weight: [1, 2, 3]}\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:11:33: loss.pos_weight: 3 values for 10 outputs per sample; give one, or one per output")


def test_any_other_loss_failure_is_one_line_naming_the_loss(tmp_path, monkeypatch):
    text = HEAD + MODEL + "loss: MultiLabelMarginLoss\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:11:1: loss: MultiLabelMarginLoss cannot take the model's outputs of shape [32, 10] with "
                   "targets of shape [32] (torch.int64): inconsistent target size: [32] for input of size: [32, 10]")


def test_every_parameter_frozen(tmp_path, monkeypatch):
    text = HEAD + MODEL + '  freeze: ["*"]\n' + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:11:3: model.freeze: every parameter is frozen (2610 in all), so training would change "
                   "nothing; leave some trainable (a `!pattern` keeps matches trainable) or set train.unfreeze_at")


def test_train_split_smaller_than_one_batch_with_drop_last(tmp_path, monkeypatch):
    text = HEAD.replace("batch_size: 32", "batch_size: 2000\n  drop_last: true") + MODEL + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:4:3: data.batch_size: 2000 is more than the 1438 training samples, and data.drop_last "
                   "drops the incomplete batch: no step would run; use data.batch_size=1438 or less, or "
                   "data.drop_last: false")


def test_torchvision_cutmix_or_mixup_recipe_trains(tmp_path, monkeypatch):
    text = HEAD + "  batch_transforms: [{RandomChoice: {transforms: [CutMix, MixUp]}}]\n" + MODEL + TAIL
    result = train_cli(tmp_path, monkeypatch, text)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "cfg" / "checkpoints" / "best.pt").exists()


def test_the_check_leaves_model_optimizer_and_random_states_as_they_were(tmp_path):
    from dltool.config.load import load_config
    from dltool.data import build_data
    from dltool.training.firststep import check_first_step
    from dltool.training.parts import build_parts
    from dltool.training.runtime import rng_state

    (tmp_path / "cfg.yaml").write_text(HEAD + MODEL.replace("    - ReLU\n", "    - BatchNorm2d\n    - ReLU\n")
                                       + "optimizer: {name: Adam, lr: 0.01}\nscheduler: OneCycleLR\n"
                                       "train: {epochs: 2, device: cpu}\n")
    config = load_config(tmp_path / "cfg.yaml")
    bundle = build_data(config)
    parts = build_parts(config, bundle=bundle, input_shape=bundle.input_shape)
    weights = {k: v.clone() for k, v in parts.model.state_dict().items()}
    optimizer, scheduler = repr(parts.optimizer.state_dict()), repr(parts.schedule.state_dict())
    before = rng_state()
    check_first_step(parts)
    after = rng_state()
    assert torch.equal(before["torch"], after["torch"])
    assert torch.equal(before["numpy"]["keys"], after["numpy"]["keys"]) and before["python"] == after["python"]
    assert all(torch.equal(weights[k], v) for k, v in parts.model.state_dict().items())
    assert all(p.grad is None for p in parts.model.parameters())
    assert repr(parts.optimizer.state_dict()) == optimizer and repr(parts.schedule.state_dict()) == scheduler


def test_label_smoothing_out_of_range_is_a_range_error(tmp_path, monkeypatch):
    text = HEAD + MODEL + "loss: {name: CrossEntropyLoss, label_smoothing: 1.5}\n" + TAIL
    assert_refused(train_cli(tmp_path, monkeypatch, text), tmp_path,
                   "cfg.yaml:11:32: loss.label_smoothing: label_smoothing must be between 0 and 1 (the share of "
                   "each target spread over the classes); got 1.5")


@pytest.mark.parametrize("layer, loss", [("Softmax", "CrossEntropyLoss"), ("LogSoftmax", "CrossEntropyLoss"),
                                         ("Softmax", "NLLLoss")])
def test_a_softmax_before_a_loss_that_takes_logits_is_warned_in_one_line(tmp_path, monkeypatch, layer, loss):
    text = HEAD + MODEL + f"    - {{{layer}: {{dim: 1}}}}\nloss: {loss}\n" + TAIL
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(text)
    result = CliRunner().invoke(app, ["train", "cfg.yaml"])
    assert result.exit_code == 0, result.output
    why = ("applies its own log-softmax to the outputs; drop the layer (eval and predict give probabilities either "
           "way)" if loss == "CrossEntropyLoss" else "takes log-probabilities; use LogSoftmax, or drop the layer and "
           "use CrossEntropyLoss")
    assert result.stderr.splitlines()[0] == f"warning: cfg.yaml:11:7: model.layers.4: the last layer is {layer}, " \
                                            f"but {loss} {why}"
