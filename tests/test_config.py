from pathlib import Path

import pytest
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import config_from_data, load_config
from dltool.config.spec import Spec, parse_spec
from dltool.errors import ConfigError

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


@pytest.mark.parametrize("value, expected", [
    ("ReLU", ("ReLU", (), {})),
    ({"name": "SGD", "lr": 0.1}, ("SGD", (), {"lr": 0.1})),
    ({"Conv2d": {"out_channels": 6}}, ("Conv2d", (), {"out_channels": 6})),
    ({"Conv2d": [1, 6, 5]}, ("Conv2d", (1, 6, 5), {})),
    ({"Dropout": 0.5}, ("Dropout", (0.5,), {})),
    ({"BatchNorm2d": None}, ("BatchNorm2d", (), {})),
    ({"Conv2d": {"args": [1, 6], "kernel_size": 5}}, ("Conv2d", (1, 6), {"kernel_size": 5})),
])
def test_every_component_form_normalises_to_one_spec(value, expected):
    spec = parse_spec(value, "model.layers.0")
    assert (spec.name, spec.args, dict(spec.kwargs)) == expected
    again = parse_spec(spec.to_data(), "model.layers.0")
    assert (again.name, again.args, dict(again.kwargs)) == expected


def test_a_component_in_no_accepted_form_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "model:\n  layers:\n    - {Conv2d: {}, ReLU: {}}\n")
    assert error_of(path) == (
        f"{path}:3:7: model.layers.0: expected a name, a one-key mapping like {{Conv2d: {{out_channels: 6}}}}, "
        "or a mapping with name: and its arguments; got a mapping with keys Conv2d, ReLU")


def test_quickstart_loads_into_typed_config():
    config = load_config(QUICKSTART)
    assert config.data.dataset.name == "Digits"
    assert config.model.layers[0].name == "Conv2d"
    mark = config.model.layers[0].mark  # where the first layer is written: `    - Conv2d: {...}`
    assert Path(mark.file) == QUICKSTART
    assert QUICKSTART.read_text().splitlines()[mark.line - 1][mark.column - 1:].startswith("Conv2d: ")
    assert config.train.epochs >= 1


def test_unknown_key_suggests_the_section_and_names_file_and_line(tmp_path):
    path = write(tmp_path, "seed: 1\ntrian:\n  epochs: 3\n")
    assert error_of(path) == (f"{path}:2:1: trian: unknown key; did you mean train? "
                              "(allowed: seed, data, model, loss, optimizer, scheduler, train, tune)")


def test_unknown_nested_key_suggests(tmp_path):
    path = write(tmp_path, "data:\n  batchsize: 3\n")
    message = error_of(path)
    assert message.startswith(f"{path}:2:3: data.batchsize: unknown key; did you mean batch_size")


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    path = write(tmp_path, "train:\n  epochs: [1, 2\nseed: 0\n")
    message = error_of(path)
    assert message == f"{path}:3:5: invalid YAML: expected ',' or ']', but got ':'"


@pytest.mark.parametrize("text, key, expected", [
    ("optimizer: {name: SGD, lr: -0.1}\n", "optimizer.lr", "must be a number > 0; got -0.1"),
    ("train:\n  epochs: 2.5\n", "train.epochs", "must be an integer >= 1 and <= 1000000; got 2.5"),
    ("train:\n  epochs: 0\n", "train.epochs", "must be an integer >= 1 and <= 1000000; got 0"),
    ("train:\n  epochs: true\n", "train.epochs", "must be an integer >= 1 and <= 1000000; got True"),
    ("data:\n  val_split: 1.0\n", "data.val_split", "must be a number >= 0 and < 1; got 1.0"),
    ("data:\n  batch_size: 0\n", "data.batch_size", "must be an integer >= 1; got 0"),
    ("train:\n  amp: fp8\n", "train.amp", "must be one of none | auto | bf16 | fp16; got 'fp8'"),
    ("data:\n  shuffle: 'yes'\n", "data.shuffle", "must be true or false; got 'yes'"),
])
def test_types_and_ranges_are_checked(tmp_path, text, key, expected):
    message = error_of(write(tmp_path, text))
    assert message.endswith(f"{key}: {expected}")


def test_missing_file_is_named(tmp_path):
    assert error_of(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_python_tags_are_refused_by_the_safe_loader(tmp_path):
    path = write(tmp_path, "seed: !!python/object/apply:os.system ['touch hacked']\n")
    assert "invalid YAML" in error_of(path)
    assert not (tmp_path / "hacked").exists()


def test_base_inherits_and_merges_mappings_and_replaces_lists(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "seed: 5\ndata:\n  batch_size: 8\n  val_split: 0.3\nmodel:\n  layers: [Flatten, {Linear: 10}]\n",
          "common.yaml")
    child = write(tmp_path / "sub", "base: ../common.yaml\ndata:\n  batch_size: 16\nmodel:\n  layers: [Flatten]\n")
    config = load_config(child)
    assert config.seed == 5
    assert (config.data.batch_size, config.data.val_split) == (16, 0.3)
    assert [s.name for s in config.model.layers] == ["Flatten"]


def test_error_in_a_base_file_points_into_that_file(tmp_path):
    base = write(tmp_path, "train:\n  epochs: -1\n", "common.yaml")
    child = write(tmp_path, "base: common.yaml\nseed: 1\n")
    assert error_of(child) == f"{base}:2:3: train.epochs: must be an integer >= 1 and <= 1000000; got -1"


def test_base_loop_is_refused(tmp_path):
    write(tmp_path, "base: b.yaml\n", "a.yaml")
    write(tmp_path, "base: a.yaml\n", "b.yaml")
    assert "base: inheritance loops" in error_of(tmp_path / "a.yaml")


def test_overrides_use_dotted_paths_list_indexes_and_yaml_values():
    config = load_config(QUICKSTART, [
        "train.epochs=3", "optimizer.lr=0.01", "model.layers.0.Conv2d.out_channels=32",
        "loss.label_smoothing=0.1", "data.transforms.eval.0.Resize=[20, 20]"])
    assert config.train.epochs == 3
    assert config.optimizer.kwargs["lr"] == 0.01
    assert config.model.layers[0].kwargs["out_channels"] == 32
    assert config.loss == config.loss and config.loss.kwargs == {"label_smoothing": 0.1}
    assert config.data.transforms.eval[0].args == (20, 20)


@pytest.mark.parametrize("override, expected", [
    ("trian.epochs=3", "command line: trian: unknown key; did you mean train?"),
    ("train.epochs=abc", "command line: train.epochs: must be an integer >= 1 and <= 1000000; got 'abc'"),
    ("epochs", "override 'epochs': expected KEY=VALUE with a dotted key, like train.epochs=3"),
    ("model.layers.99.x=1", "override 'model.layers.99.x=1': model.layers.99: index 99 is out of range"),
])
def test_bad_overrides_are_refused(override, expected):
    assert error_of(QUICKSTART, [override]).startswith(expected)


def test_to_data_round_trips_through_config_from_data():
    config = load_config(QUICKSTART, ["loss.label_smoothing=0.1"])
    again = config_from_data(config.to_data())
    assert again.to_data() == config.to_data()
    assert again == config


def test_defaults_live_in_the_dataclasses():
    config = config_from_data({})
    assert config.data.dataset.name == "Digits"
    assert isinstance(config.optimizer, Spec) and config.optimizer.name == "Adam"
    assert config.train.epochs == 10


def test_config_command_prints_resolved_yaml_and_json():
    runner = CliRunner()
    result = runner.invoke(app, ["config", str(QUICKSTART), "train.epochs=2"])
    assert result.exit_code == 0
    assert "epochs: 2" in result.stdout
    result = runner.invoke(app, ["config", str(QUICKSTART), "--json"])
    assert result.exit_code == 0
    assert '"dataset": "Digits"' in result.stdout


def test_config_command_error_is_one_line_exit_2(tmp_path):
    path = write(tmp_path, "optimizer: {name: SGD, lr: -1}\n")
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {path}:1:24: optimizer.lr: must be a number > 0; got -1"
    assert "Traceback" not in result.output


def test_override_reaches_the_arguments_of_a_one_key_component(tmp_path):
    path = write(tmp_path, "data:\n  dataset: {ImageFolder: {root: a}}\nmodel:\n  layers: [{Linear: {out_features: 3}}]\n")
    config = load_config(path, ["data.dataset.root=b", "data.batch_size=4", "model.layers.0.out_features=5"])
    assert config.data.dataset.name == "ImageFolder"
    assert config.data.dataset.kwargs == {"root": "b"}
    assert config.data.batch_size == 4
    assert config.model.layers[0].kwargs == {"out_features": 5}


@pytest.mark.parametrize("base, child, expected", [
    ("{name: RMSprop, alpha: 0.9}", "{name: Adam, lr: 1e-3}", ("Adam", {"lr": 0.001})),
    ("{RMSprop: {alpha: 0.9}}", "{Adam: {lr: 1e-3}}", ("Adam", {"lr": 0.001})),
    ("{RMSprop: {alpha: 0.9}}", "{name: Adam, lr: 1e-3}", ("Adam", {"lr": 0.001})),
    ("{name: RMSprop, alpha: 0.9}", "{Adam: {lr: 1e-3}}", ("Adam", {"lr": 0.001})),
    ("RMSprop", "{name: Adam, lr: 1e-3}", ("Adam", {"lr": 0.001})),
    ("{name: RMSprop, alpha: 0.9}", "SGD", ("SGD", {})),
    ("{name: Adam, lr: 0.1, eps: 1e-6}", "{name: adam, lr: 1e-3}", ("adam", {"lr": 0.001, "eps": 1e-6})),
    ("{Adam: {lr: 0.1, eps: 1e-6}}", "{Adam: {lr: 1e-3}}", ("Adam", {"lr": 0.001, "eps": 1e-6})),
    ("Adam", "{lr: 1e-3}", ("Adam", {"lr": 0.001})),
    ("{name: Adam, lr: 0.1}", "{lr: 1e-3}", ("Adam", {"lr": 0.001})),
])
def test_a_component_whose_name_changes_under_base_replaces_the_base_arguments(tmp_path, base, child, expected):
    write(tmp_path, f"optimizer: {base}\n", "common.yaml")
    config = load_config(write(tmp_path, f"base: common.yaml\noptimizer: {child}\n"))
    assert (config.optimizer.name, dict(config.optimizer.kwargs)) == expected


def test_a_renamed_dataset_and_loss_under_base_replace_their_arguments(tmp_path):
    write(tmp_path, "data:\n  dataset: {name: ImageFolder, root: pics}\n  batch_size: 8\n"
                    "loss: {name: CrossEntropyLoss, label_smoothing: 0.1}\n", "common.yaml")
    config = load_config(write(tmp_path, "base: common.yaml\ndata:\n  dataset: Digits\nloss: {name: NLLLoss}\n"))
    assert (config.data.dataset.name, dict(config.data.dataset.kwargs)) == ("Digits", {})
    assert (config.loss.name, dict(config.loss.kwargs)) == ("NLLLoss", {})
    assert config.data.batch_size == 8


def test_model_init_still_merges_key_by_key_under_base(tmp_path):
    write(tmp_path, "model:\n  init: {Conv2d: kaiming_normal}\n", "common.yaml")
    config = load_config(write(tmp_path, "base: common.yaml\nmodel:\n  init: {Linear: xavier_uniform}\n"))
    assert config.model.init == {"Conv2d": "kaiming_normal", "Linear": "xavier_uniform"}


@pytest.mark.parametrize("text, override, expected", [
    ("{name: RMSprop, alpha: 0.9}", "optimizer.name=Adam", ("Adam", {})),
    ("{RMSprop: {alpha: 0.9}}", "optimizer.name=Adam", ("Adam", {})),
    ("RMSprop", "optimizer.name=Adam", ("Adam", {})),
    ("{name: RMSprop, alpha: 0.9}", "optimizer=SGD", ("SGD", {})),
    ("{name: RMSprop, alpha: 0.9}", "optimizer.name=rmsprop", ("rmsprop", {"alpha": 0.9})),
    ("{RMSprop: {alpha: 0.9}}", "optimizer.name=RMSprop", ("RMSprop", {"alpha": 0.9})),
])
def test_a_component_renamed_by_an_override_drops_the_old_arguments(tmp_path, text, override, expected):
    config = load_config(write(tmp_path, f"optimizer: {text}\n"), [override])
    assert (config.optimizer.name, dict(config.optimizer.kwargs)) == expected


def test_a_renamed_component_validates_in_config(tmp_path):
    write(tmp_path, "optimizer: {name: RMSprop, alpha: 0.9}\n", "common.yaml")
    path = write(tmp_path, "base: common.yaml\nmodel:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\n"
                           "optimizer: {name: Adam, lr: 1e-3}\n")
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 0, result.output
    assert "alpha" not in result.stdout


def test_negative_indexes_count_from_the_end():
    config = load_config(QUICKSTART, ["model.layers.-1.Linear.out_features=4",
                                      "data.transforms.eval.-1.Normalize.std=[0.3]"])
    assert config.model.layers[-1].kwargs["out_features"] == 4
    assert config.data.transforms.eval[-1].kwargs["std"] == [0.3]
    last = len(config.model.layers) - 1
    assert config.marks[f"model.layers.{last}.Linear.out_features"].file == "command line"
    assert "model.layers.-1.Linear.out_features" not in config.marks


def test_plus_appends_to_a_list():
    before = load_config(QUICKSTART)
    config = load_config(QUICKSTART, ["model.layers.+=Dropout",
                                      "data.transforms.train.+={RandomHorizontalFlip: {p: 0.2}}",
                                      "model.layers.-1.Dropout=0.3"])
    assert len(config.model.layers) == len(before.model.layers) + 1
    assert (config.model.layers[-1].name, config.model.layers[-1].args) == ("Dropout", (0.3,))
    assert config.data.transforms.train[-1].name == "RandomHorizontalFlip"
    assert config.data.transforms.train[-1].kwargs == {"p": 0.2}


@pytest.mark.parametrize("override, expected", [
    ("model.layers.-99.x=1", "override 'model.layers.-99.x=1': model.layers.-99: index -99 is out of range"),
    ("train.+=3", "override 'train.+=3': train is not a list; + appends to a list"),
    ("model.layers.x.y=1", "override 'model.layers.x.y=1': model.layers.x is a list; use an index 0..12 "
                           "(-1 for the last item), or + as the last part to append"),
])
def test_bad_list_overrides_are_refused(override, expected):
    assert error_of(QUICKSTART, [override]).startswith(expected)


def test_an_override_error_blames_the_override_not_the_base_file(tmp_path):
    write(tmp_path, "data:\n  val_split: 0.2\ntrain:\n  epochs: 5\n", "common.yaml")
    path = write(tmp_path, "base: common.yaml\nmodel:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\n")
    result = CliRunner().invoke(app, ["config", str(path), "data.val_split=0.0001"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: command line: data.val_split: 0.0001 of 1797 samples leaves the val split "
                                     "empty; choose a val_split that leaves samples in both")
    result = CliRunner().invoke(app, ["config", str(path), "train.epochs=0"])
    assert result.stderr.strip() == "error: command line: train.epochs: must be an integer >= 1 and <= 1000000; got 0"


def test_a_component_error_names_the_arguments_an_override_set(tmp_path):
    path = write(tmp_path, "model:\n  layers:\n    - Flatten\n    - Linear: {out_features: num_classes}\n")
    result = CliRunner().invoke(app, ["config", str(path), "model.layers.-1.Linear.out_feature=4"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {path}:4:7: model.layers.1: Linear: unknown argument 'out_feature'; did you mean out_features or "
        "in_features? (allowed: in_features, out_features, bias, device, dtype) "
        "(model.layers.1.Linear.out_feature set on the command line)")
