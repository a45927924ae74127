import pytest

from dltool.config.registry import Registry
from dltool.config.spec import Mark, Marks, parse_spec
from dltool.errors import RegistryError


class Conv:
    def __init__(self, in_channels, out_channels, kernel_size=3, padding=0):
        self.args = (in_channels, out_channels, kernel_size, padding)


@pytest.fixture
def registry():
    reg = Registry("layers")
    reg.register(obj=Conv)
    reg.register("ReLU", obj=lambda inplace=False: ("relu", inplace))
    return reg


def test_lookup_ignores_case(registry):
    assert registry.get("conv") is Conv
    assert registry.canonical("relu") == "ReLU"
    assert "CONV" in registry


def test_duplicate_names_are_refused_ignoring_case(registry):
    with pytest.raises(ValueError, match="already has 'CONV'"):
        registry.register("CONV", obj=Conv)


def test_unknown_name_suggests_close_matches(registry):
    spec = parse_spec("Cnv", "model.layers.2", Marks({"model.layers.2": Mark("cfg.yaml", 7, 7)}))
    with pytest.raises(RegistryError) as info:
        registry.get("Cnv", spec)
    assert str(info.value) == ("cfg.yaml:7:7: model.layers.2: unknown layer 'Cnv'; did you mean Conv? "
                               "(see `dltool list layers`)")


def test_build_passes_extra_arguments_and_spec_wins(registry):
    spec = parse_spec({"Conv": {"out_channels": 6, "padding": 2}}, "model.layers.0")
    built = registry.build(spec, in_channels=1, padding=0)
    assert built.args == (1, 6, 3, 2)


def test_misspelt_argument_gets_a_suggestion(registry):
    spec = parse_spec({"Conv": {"out_chanels": 6}}, "model.layers.0")
    with pytest.raises(RegistryError) as info:
        registry.build(spec, in_channels=1)
    assert str(info.value) == ("model.layers.0: Conv: unknown argument 'out_chanels'; did you mean out_channels or "
                               "in_channels? (allowed: in_channels, out_channels, kernel_size, padding)")


def test_missing_and_surplus_positional_arguments_are_one_line(registry):
    with pytest.raises(RegistryError, match="missing a required argument: 'out_channels'"):
        registry.build(parse_spec("Conv", "model.layers.0"), in_channels=1)
    with pytest.raises(RegistryError, match="too many positional arguments"):
        registry.build(parse_spec({"Conv": [1, 2, 3, 4, 5]}, "model.layers.0"))


def test_parameters_lists_defaults(registry):
    assert registry.parameters("conv") == [("in_channels", "required"), ("out_channels", "required"),
                                           ("kernel_size", "3"), ("padding", "0")]


def test_registry_fills_lazily_on_first_lookup(monkeypatch):
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name: imported.append(name))
    reg = Registry("things", fill=["some.module"])
    assert imported == []
    assert reg.names() == []
    assert imported == ["some.module"]


@pytest.mark.parametrize("kind, noun", [("layers", "layer"), ("transforms", "transform"), ("datasets", "dataset"),
                                        ("losses", "loss"), ("optimizers", "optimizer"),
                                        ("schedulers", "scheduler"), ("models", "model")])
def test_unknown_name_uses_the_singular_noun_of_every_kind(kind, noun):
    from dltool.config.registry import REGISTRIES

    with pytest.raises(RegistryError) as info:
        REGISTRIES[kind].get("Zzzqqq")
    assert str(info.value) == f"unknown {noun} 'Zzzqqq' (see `dltool list {kind}`)"


def test_unknown_loss_in_a_config_is_one_line_with_a_suggestion(tmp_path):
    from typer.testing import CliRunner

    from dltool.cli import app

    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\nloss: CrossEntropy\n")
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert line.startswith(f"error: {path}:3:1: loss: unknown loss 'CrossEntropy'; did you mean CrossEntropyLoss")
    assert line.endswith("(see `dltool list losses`)") and "\n" not in line


def test_listing_says_what_dltool_fills_in():
    from dltool.cli.listing import describe

    rows = dict(describe("schedulers", "StepLR"))
    assert rows["step_size"] == "filled in: a third of the run"
    assert rows["optimizer"] == "filled in: the run's optimizer"
    assert rows["gamma"] == "0.1"
    assert dict(describe("optimizers", "SGD"))["params"] == "filled in: the model's parameters"
    assert dict(describe("layers", "Conv2d"))["in_channels"] == "filled in: the input shape"
    assert dict(describe("layers", "Conv2d"))["out_channels"] == "required"


def test_the_filled_in_table_matches_what_the_scheduler_builder_fills():
    import torch

    from dltool.training.optim import FILLED, _defaults

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    for name in FILLED:
        assert set(_defaults(name, optimizer, 12, "min")) == set(FILLED[name]), name


@pytest.mark.parametrize("kind, name, argument", [("transforms", "Lambda", "lambd"),
                                                  ("schedulers", "LambdaLR", "lr_lambda"),
                                                  ("schedulers", "MultiplicativeLR", "lr_lambda")])
def test_entries_that_need_a_python_function_are_not_listed_and_are_refused(tmp_path, kind, name, argument):
    from typer.testing import CliRunner

    from dltool.cli import app
    from dltool.cli.listing import registry_names

    assert name not in registry_names(kind)
    assert name not in registry_names(None)[kind]
    result = CliRunner().invoke(app, ["list", kind, name])
    assert result.exit_code == 2
    assert result.stderr.strip().startswith(f"error: {name}: takes a Python function ({argument}), which a YAML "
                                            "config cannot hold (nothing in a config runs code); use ")


def test_a_scheduler_that_needs_a_python_function_is_a_located_error_in_a_config(tmp_path):
    from typer.testing import CliRunner

    from dltool.cli import app

    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\n"
                    "scheduler: {name: LambdaLR, lr_lambda: 'lambda e: 0.9'}\n")
    result = CliRunner().invoke(app, ["config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {path}:3:1: scheduler: LambdaLR: takes a Python function (lr_lambda), which a YAML config cannot "
        "hold (nothing in a config runs code); use StepLR, MultiStepLR, ExponentialLR, LinearLR or SequentialLR")
