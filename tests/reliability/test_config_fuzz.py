"""Config fuzzing: configs mutated from the shipped ones through `dltool config` and `dltool shapes`.

No mutant may end in a traceback, and every refusal is one line on stderr.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dltool.cli import app

from .tools import TINY, record

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
SEEDS = [yaml.safe_load(p.read_text()) for p in CONFIGS] + [TINY]
# the normal suite leaves out the ResNet config: building its 11M parameters for each mutant takes
# seconds; the slow suite fuzzes every shipped config
LIGHT_SEEDS = [yaml.safe_load(p.read_text()) for p in CONFIGS if "resnet" not in p.name] + [TINY]
ODD_VALUES = [None, True, False, 0, -1, 1, 2 ** 63, -(2 ** 70), 10 ** 400, 1e308, float("nan"), float("inf"),
              -float("inf"), 0.5, "", "x", "num_classes", "os.system", "torch.nn.Module", "builtins.eval",
              "subprocess.Popen", "Conv2d", [], {}, [1, 2, 3], {"name": None}, {"name": 5}, {"": 1}, [[[]]],
              {"name": "Conv2d", "out_channels": -3}, "\x00", "é" * 50, "${HOME}", "../../etc/passwd"]


def paths(node, prefix=()):
    """Every (path, value) in a nested dict/list."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from paths(value, (*prefix, i))


def deep(depth: int, rng: random.Random):
    value = rng.choice([1, "ReLU", None])
    for _ in range(depth):
        value = [value] if rng.random() < 0.5 else {rng.choice(["name", "layers", "a"]): value}
    return value


def random_string(rng: random.Random) -> str:
    alphabet = "abcXYZ019._-: {}[]!&*#|>'\"\\\n\t%@`é"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))


def mutate_once(config: dict, rng: random.Random) -> None:
    """One mutation in place: delete a key, swap a type, put an odd value, nest deeply, or reshape a component."""
    path, _ = rng.choice(list(paths(config))[1:])
    *parents, last = path
    node = config
    for part in parents:
        node = node[part]
    kind = rng.randrange(7)
    if kind == 0:
        del node[last]
    elif kind == 1:
        node[last] = rng.choice(ODD_VALUES)
    elif kind == 2:
        node[last] = random_string(rng)
    elif kind == 3:
        node[last] = deep(rng.choice([3, 30, 300]), rng)
    elif kind == 4:
        value = node[last]
        node[last] = [value] if not isinstance(value, list) else {"name": value}
    elif kind == 5:
        # huge enough that torch refuses to allocate at once (a size of 1e6..1e12 would really allocate GBs)
        node[last] = rng.choice([10 ** rng.randint(15, 40), -(10 ** rng.randint(1, 30)), rng.uniform(-1e9, 1e9)])
    elif isinstance(node, dict):
        node[random_string(rng) or "k"] = rng.choice(ODD_VALUES)
    else:
        node.insert(rng.randint(0, len(node)), rng.choice(ODD_VALUES))


def mutant(index: int, seeds: list = SEEDS) -> dict:
    rng = random.Random(index)
    config = copy.deepcopy(rng.choice(seeds))
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        if not isinstance(config, dict) or not config:
            break
        mutate_once(config, rng)
    return config


def dump(config) -> str:
    try:
        return yaml.safe_dump(config, allow_unicode=True)
    except RecursionError:  # too deep for the emitter: write flow style by hand
        return repr(config).replace("None", "null").replace("True", "true").replace("False", "false")


def check_mutant(folder: Path, index: int, runner: CliRunner, with_data: bool = False, seeds: list = SEEDS) -> int:
    """Run one mutant through `config` and `shapes` (reading its dataset too when `with_data`);
    return how many commands refused it."""
    path = folder / f"mutant{index}.yaml"
    path.write_text(dump(mutant(index, seeds)), encoding="utf-8")
    refused = 0
    commands = [["config", str(path)], ["shapes", str(path), "--num-classes", "3"]]
    for command in commands + ([["shapes", str(path)]] if with_data else []):
        result = runner.invoke(app, command)
        context = f"mutant {index}: dltool {' '.join(command)}\n{path.read_text()[:2000]}"
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{context}\n{result.exception!r}")
        if result.exit_code != 0:
            lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
            assert result.exit_code == 2 and len(lines) == 1, f"{context}\n{result.stderr}"
            refused += 1
    return refused


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def test_a_hundred_mutants_never_crash(tmp_path, runner):
    refused = sum(check_mutant(tmp_path, i, runner, seeds=LIGHT_SEEDS) for i in range(100))
    assert refused > 50  # most mutants are wrong configs: the fuzzer reaches the checks
    record("configs_fuzzed", 100)


@pytest.mark.slow
def test_a_thousand_mutants_never_crash_even_reading_their_data(tmp_path, runner):
    refused = sum(check_mutant(tmp_path, 1000 + i, runner, with_data=True) for i in range(1000))
    record("configs_fuzzed", 1000)
    record("config_refusals", refused)


LENET = {"model": {"input_shape": [1, 16, 16], "layers": ["Flatten", {"Linear": {"out_features": 3}}]}}
# mutants the fuzzer found crashing (each a traceback before its fix), cut down, with the line now printed
REGRESSIONS = {
    "kernel_size_string": ({"model": {"input_shape": [1, 16, 16], "layers": [{"AvgPool2d": "-a#é"}, "Flatten"]}},
                           "AvgPool2d: cannot take an input of shape 1x16x16: avg_pool2d(): argument 'kernel_size' "
                           "(position 2) must be tuple of ints, not str"),
    "init_mode_a_list": ({**LENET, "model": {**LENET["model"], "layers": [{"Conv2d": {"out_channels": 2, "kernel_size": 3}},
                                                                           "Flatten"],
                                             "init": {"Conv2d": {"weight": {"name": "kaiming_normal", "mode": []}}}}},
                         "kaiming_normal: cannot initialise a tensor of shape [2, 1, 3, 3]: 'list' object has no "
                         "attribute 'lower'"),
    "init_not_a_mapping": ({**LENET, "model": {**LENET["model"], "init": "xavier"}},
                           "model.init: must be a mapping; got 'xavier'"),
    "negative_out_features": ({"model": {"input_shape": [4], "layers": [{"Linear": {"out_features": -100000}}]}},
                              "Linear: Trying to create tensor with negative dimension -100000: [-100000, 4]"),
    "huge_conv": ({"model": {"input_shape": [1, 8, 8], "layers": [{"Conv2d": {"out_channels": 10 ** 12,
                                                                              "kernel_size": 3}}]}},
                  "Conv2d: "),
    "dataset_root_list": ({"data": {"dataset": {"name": "CIFAR10", "root": ["data"]}}},
                          "CIFAR10: root must be a folder path; got ['data']"),
    "linear_data_seed_list": ({"data": {"dataset": {"name": "LinearData", "seed": [0]}}},
                              "LinearData: seed must be an integer >= 0; got [0]"),
    "linear_data_bias_string": ({"data": {"dataset": {"name": "LinearData", "bias": "x"}}},
                                "LinearData: bias and weight must be numbers; got bias 'x', weight None"),
    "fake_data_image_size_dict": ({"data": {"dataset": {"name": "FakeData", "image_size": [1, {"a": 1}, 8]}}},
                                  "FakeData: its arguments do not work: image_size must be [C, H, W] (C 1..4) or "
                                  "[H, W] of positive integers; got [1, {'a': 1}, 8]"),
    "fake_data_four_dims": ({"data": {"dataset": {"name": "FakeData", "image_size": [1, 1, 8, 8]}}},
                            "FakeData: its arguments do not work: image_size must be"),
    "normalize_mean_string": ({"data": {"dataset": {"name": "FakeData", "size": 8, "image_size": [1, 8, 8]},
                                        "transforms": {"eval": ["ToTensor", {"Normalize": {"mean": "ab", "std": [1]}}]}}},
                              "data.transforms: the transforms cannot process the first sample (too many dimensions "
                              "'str'); check their arguments"),
    "repeat_times_huge": ({"model": {"input_shape": [1, 8, 8], "layers": [
        {"Repeat": {"times": 10 ** 22, "layers": [{"Conv2d": {"out_channels": 8, "kernel_size": 3}}, "ReLU"]}},
        "Flatten"]}}, "Repeat: the model would have more than 10,000 layers; check Repeat's times"),
    "resize_to_a_billion": ({"data": {"dataset": {"name": "FakeData", "size": 8, "image_size": [1, 8, 8]},
                                      "transforms": {"train": [{"Resize": [10 ** 9]}, "ToTensor"],
                                                     "eval": ["ToTensor"]}}},
                            "data.transforms: the transforms cannot process the first sample"),
    "epochs_huge": ({**LENET, "train": {"epochs": 10 ** 40}},  # OneCycleLR's total steps overflowed a float
                    "train.epochs: must be an integer >= 1 and <= 1000000; got 1" + "0" * 40),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_mutants_that_crashed_now_get_one_line(tmp_path, runner, name):
    data, expected = REGRESSIONS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["shapes", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_deep_nesting_is_refused_in_the_file_and_in_overrides(tmp_path, runner):
    path = tmp_path / "deep.yaml"
    path.write_text("model: {layers: " + "[" * 200 + "1" + "]" * 200 + "}\n")
    result = runner.invoke(app, ["config", str(path)])
    assert result.stderr.strip() == f"error: {path}: nested more than 50 levels deep; a config needs far fewer"
    path.write_text("seed: 1\n")
    result = runner.invoke(app, ["config", str(path), "train.epochs=" + "[" * 60 + "]" * 60])
    assert result.exit_code == 2
    assert "the value is nested more than 50 levels deep" in result.stderr or "nested more than 50" in result.stderr


def test_an_import_path_as_a_name_is_refused_by_dltool_config(tmp_path, runner):
    path = tmp_path / "import.yaml"
    path.write_text("model:\n  layers:\n    - os.system\n")
    result = runner.invoke(app, ["config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {path}:3:7: model.layers.0: os.system: components are named by their registered name "
        "(Conv2d, SGD, ...), not an import path; nothing in a config imports code (dltool list shows the names)")


@pytest.mark.slow
def test_nesting_beyond_the_parser_is_refused(tmp_path, runner):
    path = tmp_path / "deeper.yaml"
    path.write_text("model: {layers: " + "[" * 3000 + "1" + "]" * 3000 + "}\n")
    result = runner.invoke(app, ["config", str(path)])
    assert result.stderr.strip() == f"error: {path}: invalid YAML: nested more than 50 levels deep"
