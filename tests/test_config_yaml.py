"""The config's YAML reading: numbers as YAML 1.2 reads them, duplicate keys, alias bombs."""

import time
from pathlib import Path

import pytest
from test_config import error_of, write
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import load_config

CIFAR_VGG = Path(__file__).parents[1] / "configs" / "cifar10_vgg.yaml"

NUMBERS = [("1e-3", 0.001), ("1E-3", 0.001), ("3e-4", 0.0003), ("-1e5", -100000.0), ("1.0e-3", 0.001),
           (".5", 0.5), ("+1e3", 1000.0), ("2.5", 2.5)]


@pytest.mark.parametrize("text, number", NUMBERS)
def test_numbers_in_a_file_are_read_as_yaml_1_2_reads_them(tmp_path, text, number):
    config = load_config(write(tmp_path, f"optimizer: {{name: SGD, lr: 0.1, weight_decay: {text}}}\n"))
    value = config.optimizer.kwargs["weight_decay"]
    assert type(value) is float and value == number


@pytest.mark.parametrize("text, number", NUMBERS)
def test_numbers_in_an_override_are_read_as_yaml_1_2_reads_them(tmp_path, text, number):
    config = load_config(write(tmp_path, "optimizer: {name: SGD, lr: 0.1}\n"), [f"optimizer.weight_decay={text}"])
    value = config.optimizer.kwargs["weight_decay"]
    assert type(value) is float and value == number


@pytest.mark.parametrize("text, number", NUMBERS[:3])
def test_numbers_in_a_base_file_are_read_as_yaml_1_2_reads_them(tmp_path, text, number):
    write(tmp_path, f"optimizer: {{name: Adam, lr: {text}}}\n", "common.yaml")
    config = load_config(write(tmp_path, "base: common.yaml\nseed: 1\n"))
    assert config.optimizer.kwargs["lr"] == number


@pytest.mark.parametrize("text", ["10", "-3", "0", "+7"])
def test_integers_stay_integers(tmp_path, text):
    path = write(tmp_path, f"optimizer: {{name: SGD, lr: 1, momentum: {text}}}\n")
    config = load_config(path, [f"optimizer.dampening={text}"])
    for value in (config.optimizer.kwargs["momentum"], config.optimizer.kwargs["dampening"]):
        assert type(value) is int and value == int(text)


@pytest.mark.parametrize("text", ["1e", "e3", "1e-", "0x1p3", "1.2.3", "1e3abc"])
def test_text_that_is_not_a_number_stays_text(tmp_path, text):
    path = write(tmp_path, f"data:\n  dataset: {{name: ImageFolder, root: '{text}'}}\nseed: 0\n")
    config = load_config(path, [f"data.dataset.root={text}"])
    assert config.data.dataset.kwargs["root"] == text


def test_a_learning_rate_written_as_3e_4_validates(tmp_path):
    path = write(tmp_path, "model:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\n"
                           "optimizer: {name: Adam, lr: 3e-4}\n")
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 0, result.output
    assert "lr: 0.0003" in result.stdout


def test_config_command_reads_an_exponent_on_the_command_line(tmp_path):
    path = write(tmp_path, "model:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\n"
                           "optimizer: {name: Adam, lr: 0.1}\n")
    result = CliRunner().invoke(app, ["config", str(path), "optimizer.lr=1e-3"])
    assert result.exit_code == 0, result.output
    assert "lr: 0.001" in result.stdout


def test_a_duplicate_key_names_both_lines(tmp_path):
    path = write(tmp_path, "seed: 0\ndata:\n  batch_size: 8\n  val_split: 0.3\n  batch_size: 16\n")
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path}:5:3: data.batch_size: duplicate key (first at line 3)"


def test_a_duplicate_key_in_a_base_file_names_that_file(tmp_path):
    base = write(tmp_path, "train:\n  epochs: 3\n  epochs: 4\n", "common.yaml")
    child = write(tmp_path, "base: common.yaml\nseed: 1\n")
    assert error_of(child) == f"{base}:3:3: train.epochs: duplicate key (first at line 2)"


def test_a_duplicate_top_level_section_is_refused(tmp_path):
    path = write(tmp_path, "seed: 0\ntrain: {epochs: 2}\nseed: 1\n")
    assert error_of(path) == f"{path}:3:1: seed: duplicate key (first at line 1)"


def test_a_duplicate_key_in_an_override_value_is_refused(tmp_path):
    path = write(tmp_path, "seed: 0\n")
    assert error_of(path, ["optimizer={name: SGD, lr: 0.1, lr: 0.2}"]) == (
        "override 'optimizer={name: SGD, lr: 0.1, lr: 0.2}':1:22: optimizer.lr: duplicate key (first at line 1)")


def test_merge_keys_may_set_a_key_again():
    config = load_config(CIFAR_VGG)
    assert config.model.layers[2].kwargs["layers"][0]["Conv2d"]["out_channels"] == 128


def bomb(levels: int) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\nseed: 0\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_one_line_at_once(tmp_path, levels):
    path = write(tmp_path, bomb(levels))
    assert len(path.read_bytes()) < 600
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["config", str(path)])
    elapsed = time.perf_counter() - started
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {path}: the YAML expands to more than 100,000 values through "
                                     "aliases (&/*); a config needs far fewer")
    assert elapsed < 2


def test_an_alias_bomb_in_a_base_file_or_an_override_is_refused(tmp_path):
    base = write(tmp_path, bomb(9), "common.yaml")
    child = write(tmp_path, "base: common.yaml\n")
    assert error_of(child).startswith(f"{base}: the YAML expands to more than 100,000 values")
    value = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x, x]"] + ["*a"] * 9) + "]"
    override = "seed=" + "{b: &b " + value + ", c: &c [" + ", ".join(["*b"] * 10) + "], d: &d [" + \
        ", ".join(["*c"] * 10) + "], e: [" + ", ".join(["*d"] * 10) + "]}"
    message = error_of(write(tmp_path, "seed: 0\n"), [override])
    assert message == f"override {override!r}: the YAML expands to more than 100,000 values through aliases (&/*); " \
                      "a config needs far fewer"


def test_anchors_and_aliases_that_a_config_needs_still_work(tmp_path):
    path = write(tmp_path, "data:\n  transforms:\n    train: &tf [ToTensor, {Normalize: {mean: [0.5], std: [0.5]}}]\n"
                           "    eval: *tf\n")
    config = load_config(path)
    assert config.data.transforms.train == config.data.transforms.eval
    assert [s.name for s in config.data.transforms.eval] == ["ToTensor", "Normalize"]


def test_a_run_trains_with_a_learning_rate_written_as_3e_4(tmp_path):
    path = write(tmp_path, "model:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\n"
                           "optimizer: {name: Adam, lr: 3e-4}\ntrain:\n  epochs: 1\n  histograms: false\n")
    result = CliRunner().invoke(app, ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--quiet",
                                      "scheduler={name: StepLR, gamma: 5e-1}"])
    assert result.exit_code == 0, result.output
    saved = load_config(tmp_path / "runs" / "cfg" / "config.yaml")
    assert saved.optimizer.kwargs["lr"] == 0.0003
    assert saved.scheduler.kwargs["gamma"] == 0.5


def test_only_the_config_loader_reads_exponents_as_numbers():
    import yaml

    import dltool.config.load  # noqa: F401  (its loader is defined; PyYAML's own must stay as it was)

    assert yaml.safe_load("classes: [1e3, 3e-4]") == {"classes": ["1e3", "3e-4"]}


@pytest.mark.parametrize("number", ["9" * 5000, "0x" + "f" * 5000])
def test_an_integer_longer_than_python_reads_is_one_located_line(tmp_path, number):
    path = write(tmp_path, f"train:\n  epochs: {number}\n")
    assert error_of(path) == f"{path}:2:11: invalid YAML: an integer of more than 4,300 digits; write a smaller number"
    override = error_of(write(tmp_path, "train: {epochs: 1}\n", "ok.yaml"), [f"train.epochs={number}"])
    assert override == (f"override 'train.epochs={number}': the value is not valid YAML (an integer of more than "
                        "4,300 digits; write a smaller number)")
    assert load_config(path.with_name("ok.yaml"), ["train.epochs=12"]).train.epochs == 12
