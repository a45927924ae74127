import pytest

from dltool.errors import RegistryError
from dltool.registry import Registry
from dltool.spec import Marks, Mark, parse_spec


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
