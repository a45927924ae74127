import textwrap

import pytest
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import ModelConfig, load_config
from dltool.config.registry import LAYERS
from dltool.config.spec import parse_spec
from dltool.errors import CheckpointError, ConfigError, DltoolError, ShapeError
from dltool.models import build_model, resolve_input_shape
from dltool.models.builder import collect_shapes
from dltool.models.init import apply_freeze, apply_init

LENET = """\
model:
  input_shape: [1, 28, 28]
  layers:
    - Conv2d: {in_channels: 1, out_channels: 6, kernel_size: 5, padding: 2}
    - Sigmoid
    - AvgPool2d: {kernel_size: 2, stride: 2}
    - Conv2d: {in_channels: 6, out_channels: 16, kernel_size: 5}
    - Sigmoid
    - AvgPool2d: {kernel_size: 2, stride: 2}
    - Flatten
    - Linear: {in_features: IN, out_features: 120}
    - Sigmoid
    - Linear: {in_features: 120, out_features: 84}
    - Sigmoid
    - Linear: {in_features: 84, out_features: 10}
"""


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def model_of(layers, input_shape, num_classes=None):
    specs = tuple(parse_spec(v, f"model.layers.{i}") for i, v in enumerate(layers))
    return build_model(ModelConfig(layers=specs), input_shape, num_classes)


def torch_lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))


def torch_shapes(net, x):
    shapes = []
    for layer in net:
        x = layer(x)
        shapes.append(list(x.shape))
    return shapes


def test_lenet_shapes_match_torch_layer_for_layer(tmp_path):
    config = load_config(write(tmp_path, LENET.replace("IN", "400")))
    report = collect_shapes(config, (1, 28, 28), batch_size=64)
    expected = torch_shapes(torch_lenet(), torch.zeros(64, 1, 28, 28))
    assert [row.output_shape for row in report.rows] == expected
    assert [row.params for row in report.rows] == [sum(p.numel() for p in m.parameters()) for m in torch_lenet()]
    assert report.total_params == 61706


def test_lenet_with_every_input_size_left_out_builds_the_same(tmp_path):
    text = LENET.replace("in_channels: 1, ", "").replace("in_channels: 6, ", "").replace("in_features: IN, ", "")
    text = text.replace("in_features: 120, ", "").replace("in_features: 84, ", "")
    assert "in_" not in text
    explicit = collect_shapes(load_config(write(tmp_path, LENET.replace("IN", "400"), "a.yaml")), (1, 28, 28), 64)
    inferred = collect_shapes(load_config(write(tmp_path, text, "b.yaml")), (1, 28, 28), 64)
    assert [(r.name, r.type, r.output_shape, r.params) for r in inferred.rows] == \
           [(r.name, r.type, r.output_shape, r.params) for r in explicit.rows]
    model = build_model(load_config(tmp_path / "b.yaml").model, (1, 28, 28), None)
    assert list(model.state_dict()) == list(torch_lenet().state_dict())


def test_wrong_in_features_exits_2_with_layer_sizes_and_fix(tmp_path):
    path = write(tmp_path, LENET.replace("IN", "300"))
    result = CliRunner().invoke(app, ["shapes", str(path), "--batch-size", "64"])
    assert result.exit_code == 2
    assert result.stdout == ""
    error = result.stderr.strip().splitlines()[-1]
    assert error == (f"error: {path}:11:7: model.layers.7: Linear: in_features is 300 but the input has 400 "
                     "features (16x5x5 flattened); write in_features: 400 or leave it out")
    assert "[64, 400]" in result.stderr and "Flatten" in result.stderr
    assert "Traceback" not in result.output


def test_shape_error_rows_hold_the_layers_before_it(tmp_path):
    config = load_config(write(tmp_path, LENET.replace("IN", "300")))
    with pytest.raises(ShapeError) as caught:
        collect_shapes(config, (1, 28, 28), batch_size=8)
    assert [r.name for r in caught.value.rows] == ["0", "1", "2", "3", "4", "5", "6"]
    assert caught.value.rows[-1].output_shape == [8, 400]


@pytest.mark.parametrize("layers, shape, message", [
    ([{"Conv2d": {"out_channels": 4, "kernel_size": 3}}, {"Linear": {"out_features": 10}}], (1, 8, 8),
     "model.layers.1: Linear: the input is 4x6x6, not flat; add Flatten before this layer (it then gets 144 features)"),
    (["Flatten", {"Conv2d": {"out_channels": 4, "kernel_size": 3}}], (1, 8, 8),
     "model.layers.1: Conv2d: needs a (C, H, W) input but gets 64 flattened features; remove the Flatten "
     "before it or move it after this layer"),
    ([{"Conv2d": {"out_channels": 4, "kernel_size": 5}}], (1, 3, 3),
     "model.layers.0: Conv2d: kernel_size 5x5 is larger than the 3x3 input (padding 0x0); use a smaller "
     "kernel, add padding, or downsample less before it"),
    ([{"MaxPool2d": 4}], (2, 3, 3),
     "model.layers.0: MaxPool2d: kernel_size 4x4 is larger than the 3x3 input (padding 0x0); use a smaller "
     "kernel, add padding, or downsample less before it"),
    ([{"Conv2d": [3, 4, 3]}], (1, 8, 8),
     "model.layers.0: Conv2d: in_channels is 3 but the input has 1 channel (shape 1x8x8); write in_channels: 1 "
     "or leave it out"),
    ([{"BatchNorm2d": 5}], (4, 8, 8),
     "model.layers.0: BatchNorm2d: num_features is 5 but the input has 4 channels (shape 4x8x8); write "
     "num_features: 4 or leave it out"),
    ([{"LayerNorm": [[4, 4]]}], (2, 8, 8),
     "model.layers.0: LayerNorm: normalized_shape is [4, 4] but the input is 2x8x8; it must match the trailing "
     "sizes, e.g. normalized_shape: 8, or leave it out"),
    (["Flatten", "LSTM"], (1, 4, 4),
     "model.layers.1: LSTM: RNNBase.__init__() missing 2 required positional arguments: 'input_size' and 'hidden_size'"),
    (["Flatten", {"LSTMCell": {"hidden_size": 3}}], (1, 4, 4),
     "model.layers.1: LSTMCell: returns tuple, not one tensor; a layer in a stack must return one tensor"),
])
def test_shape_errors_say_which_layer_and_what_to_do(layers, shape, message):
    with pytest.raises(DltoolError) as caught:
        model_of(layers, shape)
    assert str(caught.value) == message


def test_torch_positional_forms_work_with_or_without_the_first_size():
    model = model_of(["Flatten", {"Linear": [16, 5]}, {"Linear": [3]}], (1, 4, 4))
    assert (model[1].in_features, model[1].out_features, model[2].in_features, model[2].out_features) == (16, 5, 5, 3)
    model = model_of([{"Conv2d": [6, 3]}], (2, 9, 9))
    assert (model[0].in_channels, model[0].out_channels, model[0].kernel_size) == (2, 6, (3, 3))


def test_num_classes_is_resolved_and_the_output_checked():
    model = model_of(["Flatten", {"Linear": {"out_features": "num_classes"}}], (1, 4, 4), num_classes=7)
    assert model(torch.zeros(2, 1, 4, 4)).shape == (2, 7)
    with pytest.raises(ShapeError, match=r"model.layers.1: Linear: the model's output is 5 per sample but the "
                                         r"dataset has 7 classes; end with Linear: \{out_features: num_classes\}"):
        model_of(["Flatten", {"Linear": {"out_features": 5}}], (1, 4, 4), num_classes=7)
    with pytest.raises(ConfigError, match="num_classes is not known here"):
        model_of(["Flatten", {"Linear": {"out_features": "num_classes"}}], (1, 4, 4), num_classes=None)


def test_quickstart_builds_for_digits_input():
    config = load_config("configs/quickstart.yaml")
    model = build_model(config.model, (1, 16, 16), 10)
    assert model(torch.zeros(3, 1, 16, 16)).shape == (3, 10)
    assert model.output_shape == (10,)


def test_input_shape_comes_from_config_then_cli_then_data(tmp_path):
    config = load_config(write(tmp_path, "model:\n  layers: [Flatten]\n"))
    assert resolve_input_shape(config, "3,8,8") == (3, 8, 8)
    assert resolve_input_shape(config, None, type("Bundle", (), {"input_shape": (1, 16, 16)})()) == (1, 16, 16)
    with pytest.raises(ConfigError) as caught:
        resolve_input_shape(config)
    assert str(caught.value) == (f"{tmp_path / 'cfg.yaml'}:1:1: model: the input shape is unknown; set "
                                 "model.input_shape (e.g. [1, 28, 28]) or pass --input-shape C,H,W")
    with_shape = load_config(write(tmp_path, "model:\n  input_shape: [1, 4, 4]\n  layers: [Flatten]\n", "b.yaml"))
    assert resolve_input_shape(with_shape, "3,8,8") == (1, 4, 4)


def test_residual_identity_and_auto_projection_shapes_and_keys():
    block = {"Residual": {"body": [{"Conv2d": {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1}},
                                   "BatchNorm2d", "ReLU", {"Conv2d": {"out_channels": 8, "kernel_size": 3, "padding": 1}}],
                          "shortcut": "auto"}}
    model = model_of([{"Residual": {"body": [{"Conv2d": {"out_channels": 4, "kernel_size": 3, "padding": 1}}]}}, block],
                     (4, 8, 8))
    assert model.output_shape == (8, 4, 4)
    keys = list(model.state_dict())
    assert "0.body.0.weight" in keys and "1.body.3.weight" in keys
    assert "1.shortcut.0.weight" in keys and model[1].shortcut[0].stride == (2, 2)
    x = torch.randn(2, 4, 8, 8)
    model.eval()
    assert torch.allclose(model[0](x), model[0].body(x) + x)


def test_residual_whose_shapes_do_not_add_says_so():
    with pytest.raises(ShapeError) as caught:
        model_of([{"Residual": {"body": [{"Conv2d": {"out_channels": 8, "kernel_size": 1}}]}}], (4, 8, 8))
    assert str(caught.value) == ("model.layers.0: Residual: the body gives 8x8x8 but the shortcut gives 4x8x8, so "
                                 "they cannot be added; write shortcut: auto for a 1x1 convolution projection, "
                                 "or change the body")


def test_error_inside_a_composite_points_at_the_nested_yaml_line(tmp_path):
    path = write(tmp_path, """\
        model:
          input_shape: [4, 8, 8]
          layers:
            - Residual:
                body:
                  - Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
                  - BatchNorm2d: 5
        """)
    with pytest.raises(ShapeError) as caught:
        build_model(load_config(path).model, (4, 8, 8), None)
    assert str(caught.value).startswith(f"{path}:7:13: model.layers.0.Residual.body.1: BatchNorm2d: num_features is 5")


def test_parallel_concatenates_or_adds_branches():
    inception = {"Parallel": {"branches": [[{"Conv2d": {"out_channels": 2, "kernel_size": 1}}],
                                           [{"Conv2d": {"out_channels": 3, "kernel_size": 3, "padding": 1}}],
                                           [{"MaxPool2d": {"kernel_size": 3, "stride": 1, "padding": 1}}]]}}
    model = model_of([inception], (4, 8, 8))
    assert model.output_shape == (9, 8, 8)
    assert model(torch.zeros(2, 4, 8, 8)).shape == (2, 9, 8, 8)
    assert "0.branches.1.0.weight" in model.state_dict()
    added = model_of([{"Parallel": {"branches": [["Identity"], ["ReLU"]], "merge": "add"}}], (4, 8, 8))
    x = torch.randn(1, 4, 8, 8)
    assert torch.allclose(added(x), x + x.relu())
    with pytest.raises(ShapeError, match="merge: add needs equal branch shapes; the branches give 4x8x8, 4x4x4"):
        model_of([{"Parallel": {"branches": [["Identity"], [{"MaxPool2d": 2}]], "merge": "add"}}], (4, 8, 8))


def test_repeat_gives_each_repetition_its_own_weights():
    model = model_of([{"Repeat": {"times": 3, "layers": [{"Conv2d": {"out_channels": 5, "kernel_size": 3, "padding": 1}},
                                                       "ReLU"]}}], (2, 6, 6))
    assert model.output_shape == (5, 6, 6)
    assert [model[0][r][0].in_channels for r in range(3)] == [2, 5, 5]
    assert model[0][1][0].weight.data_ptr() != model[0][2][0].weight.data_ptr()
    assert "0.2.0.weight" in model.state_dict()


def test_a_model_of_more_than_ten_thousand_layers_is_refused_before_it_is_built(tmp_path):
    with pytest.raises(ConfigError) as caught:
        model_of([{"Repeat": {"times": 10 ** 22, "layers": ["ReLU"]}}], (2, 4, 4))
    assert str(caught.value) == ("model.layers.0: Repeat: the model would have more than 10,000 layers; "
                                 "check Repeat's times and the size of nested lists")
    path = write(tmp_path, """\
        model:
          input_shape: [2, 4, 4]
          layers:
            - Repeat: {times: 2, layers: [{Repeat: {times: 20000, layers: [ReLU]}}]}
        """)
    result = CliRunner().invoke(app, ["shapes", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {path}:4:35: model.layers.0.Repeat.layers.0: Repeat: the model would have more than 10,000 "
        "layers; check Repeat's times and the size of nested lists")


def test_sequential_and_yaml_anchors_reuse_a_block(tmp_path):
    path = write(tmp_path, """\
        model:
          layers:
            - Sequential: &block
                - Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
                - ReLU
            - Sequential: *block
            - Flatten
        """)
    model = build_model(load_config(path).model, (1, 4, 4), None)
    assert model.output_shape == (64,)
    assert model[1][0].in_channels == 4 and "1.0.weight" in model.state_dict()


def test_torchvision_resnet18_matches_torchvision_parameters():
    model = model_of([{"TorchvisionModel": {"name": "resnet18", "weights": None}}], (3, 64, 64), num_classes=10)
    own = torchvision.models.resnet18(num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in own.parameters()) == 11_181_642
    assert [k.split(".", 1)[1] for k in model.state_dict()] == list(own.state_dict())


def test_torchvision_weights_from_file_and_hub_cache(tmp_path, monkeypatch):
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = model_of([{"TorchvisionModel": {"name": "resnet18", "weights": str(tmp_path / "r18.pth"),
                                            "freeze": "backbone"}}], (3, 32, 32), num_classes=4)
    assert torch.equal(model[0].conv1.weight, source.conv1.weight)
    assert model[0].fc.out_features == 4
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.fc.weight", "0.fc.bias"]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    cached = model_of([{"TorchvisionModel": {"name": "resnet18", "weights": "DEFAULT"}}], (3, 32, 32), 4)
    assert torch.equal(cached[0].layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_torchvision_weights_offline_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def offline(url, dst, progress=True):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(CheckpointError) as caught:
        model_of([{"TorchvisionModel": {"name": "resnet18", "weights": "DEFAULT"}}], (3, 32, 32), 4)
    target = tmp_path / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(caught.value) == (
        "model.layers.0: TorchvisionModel: cannot download the resnet18 weights (<urlopen error [Errno -3] "
        "Temporary failure in name resolution>); download https://download.pytorch.org/models/resnet18-f37072fd.pth "
        f"and put it at {target}, or set weights: path/to/resnet18-f37072fd.pth")


def test_rebuilding_for_a_checkpoint_needs_no_weights_file(tmp_path, monkeypatch):
    def offline(url, dst, progress=True):
        raise OSError("offline")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    layers = (parse_spec({"TorchvisionModel": {"name": "resnet18", "weights": "DEFAULT"}}, "model.layers.0"),)
    model = build_model(ModelConfig(layers=layers), (3, 32, 32), 4, pretrained=False)
    assert model[0].fc.out_features == 4
    assert not (tmp_path / "checkpoints").exists()


def test_torchvision_model_needs_three_channels_and_a_known_name():
    with pytest.raises(ShapeError, match="resnet18 takes 3-channel images .* but the input is 1x32x32; set data.channels: 3"):
        model_of([{"TorchvisionModel": {"name": "resnet18"}}], (1, 32, 32), 10)
    with pytest.raises(ConfigError, match="unknown model 'resnet19'; did you mean resnet18"):
        model_of([{"TorchvisionModel": {"name": "resnet19"}}], (3, 32, 32), 10)


def test_init_schemes_apply_by_layer_type_with_errors_that_suggest():
    torch.manual_seed(0)
    model = model_of([{"Conv2d": {"out_channels": 4, "kernel_size": 3}}, "BatchNorm2d", "Flatten",
                      {"Linear": {"out_features": 3}}], (2, 6, 6))
    apply_init(model, {"Conv2d": "zeros", "batchnorm2d": {"weight": {"constant": 0.5}},
                       "Linear": "uniform_fan_in"})
    assert model[0].weight.abs().sum() == 0 and model[0].bias.abs().sum() == 0
    assert torch.all(model[1].weight == 0.5) and torch.all(model[1].bias == 0)
    bound = 1 / 64 ** 0.5
    assert model[3].weight.abs().max() <= bound and model[3].bias.abs().max() <= bound
    apply_init(model, {"Conv2d": {"name": "kaiming_normal", "mode": "fan_out", "nonlinearity": "relu"}})
    assert model[0].weight.std() > 0 and model[0].bias.abs().sum() == 0
    with pytest.raises(ConfigError, match=r"model.init.Conv2d: kaimin_normal: unknown init scheme; did you mean kaiming_normal or kaiming_uniform or xavier_normal\? \(allowed: kaiming_normal, "):
        apply_init(model, {"Conv2d": "kaimin_normal"})
    with pytest.raises(ConfigError, match=r"model.init.Conv2: unknown layer 'Conv2'; did you mean Conv2d"):
        apply_init(model, {"Conv2": "zeros"})
    with pytest.raises(ConfigError, match="model.init.Conv3d: the model has no Conv3d layer to initialise"):
        apply_init(model, {"Conv3d": "zeros"})
    with pytest.raises(ConfigError, match="BatchNorm2d: kaiming_normal: cannot initialise a tensor of shape \\[4\\]"):
        apply_init(model, {"BatchNorm2d": "kaiming_normal"})


def test_model_init_and_freeze_from_config(tmp_path):
    path = write(tmp_path, """\
        model:
          layers:
            - Conv2d: {out_channels: 4, kernel_size: 3}
            - Flatten
            - Linear: {out_features: 2}
          init: {Linear: zeros}
          freeze: ["0.*"]
        """)
    model = build_model(load_config(path).model, (1, 5, 5), None)
    assert model[2].weight.abs().sum() == 0
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["0.weight", "0.bias"]
    path.write_text(path.read_text().replace('"0.*"', '"9.*"'))
    with pytest.raises(ConfigError) as caught:
        build_model(load_config(path).model, (1, 5, 5), None)
    assert str(caught.value) == (f"{path}:7:12: model.freeze.0: pattern '9.*' matches no parameter (names look "
                                 "like: 0.weight, 0.bias, 2.weight, 2.bias)")


def test_freeze_patterns_apply_in_order_with_negation():
    model = model_of([{"Linear": {"out_features": 3}}, {"Linear": {"out_features": 2}}], (4,))
    frozen = apply_freeze(model, ["*", "!1.*"], None, key="model.freeze")
    assert frozen == ["0.weight", "0.bias"]


# Every registered layer, built from a minimal spec on a suitable input (timm's test-every-model pattern).
ARGS = {  # first key contained in the name wins, so specific keys come first
    "Adaptive": {"output_size": 2}, "FractionalMaxPool": {"kernel_size": 2, "output_ratio": 0.5},
    "AvgPool": {"kernel_size": 2}, "MaxPool": {"kernel_size": 2}, "LPPool": {"norm_type": 2, "kernel_size": 2},
    "ConstantPad": {"padding": 1, "value": 0.0}, "Pad": {"padding": 1}, "Conv": {"out_channels": 2, "kernel_size": 3}, "Linear": {"out_features": 3},
    "ChannelShuffle": {"groups": 2}, "LRN": {"size": 3}, "LocalResponseNorm": {"size": 2},
    "GroupNorm": {"num_groups": 2}, "Cell": {"hidden_size": 5}, "PixelShuffle": {"upscale_factor": 2},
    "PixelUnshuffle": {"downscale_factor": 2}, "Threshold": {"threshold": 0.1, "value": 0.0},
    "TransformerEncoderLayer": {"nhead": 2}, "Unflatten": {"dim": 1, "unflattened_size": [2, 4]},
    "Upsampl": {"scale_factor": 2}, "Unfold": {"kernel_size": 2}, "Fold": {"output_size": [4, 4], "kernel_size": 2},
    "Parallel": {"branches": [["ReLU"], ["Identity"]]}, "Repeat": {"times": 2, "layers": ["ReLU"]},
    "Residual": {"body": ["ReLU"]}, "TorchvisionModel": {"name": "squeezenet1_1"},
    "TimmModel": {"name": "test_resnet"},
}
SHAPES = {"1d": (4, 8), "2d": (4, 8, 8), "3d": (4, 6, 6, 6)}
SPECIAL_SHAPES = {"Linear": (8,), "LazyLinear": (8,), "Cell": (8,), "TransformerEncoderLayer": (5, 8),
                  "Unflatten": (8,), "Fold": (8, 9), "TorchvisionModel": (3, 64, 64), "TimmModel": (3, 32, 32),
                  "PixelShuffle": (4, 4, 4),
                  "BatchNorm1d": (4, 8)}
NOT_STACKABLE = {  # a stack passes one tensor in and takes one tensor out
    "Bilinear": "takes two inputs", "CosineSimilarity": "takes two inputs", "PairwiseDistance": "takes two inputs",
    "MultiheadAttention": "takes query, key and value", "Transformer": "takes source and target",
    "TransformerDecoderLayer": "takes target and memory", "TransformerDecoder": "takes a decoder layer object",
    "TransformerEncoder": "takes an encoder layer object", "MaxUnpool1d": "takes pooling indices",
    "MaxUnpool2d": "takes pooling indices", "MaxUnpool3d": "takes pooling indices",
    "Embedding": "takes integer indices", "EmbeddingBag": "takes integer indices",
    "RNN": "returns (output, hidden)", "LSTM": "returns (output, (h, c))", "GRU": "returns (output, hidden)",
    "LSTMCell": "returns (h, c)",
}


def minimal(name):
    kwargs = next((v for k, v in ARGS.items() if k in name), {})
    shape = next((v for k, v in SPECIAL_SHAPES.items() if k == name or (k == "Cell" and name.endswith("Cell"))), None)
    if shape is None:
        shape = next((v for k, v in SHAPES.items() if name.endswith(k)), (4, 8, 8))
    if name == "Sequential":
        return {name: ["ReLU"]}, shape
    return ({name: kwargs} if kwargs else name), shape


@pytest.mark.parametrize("name", LAYERS.names())
def test_every_registered_layer_builds_from_a_minimal_spec(name):
    value, shape = minimal(name)
    if name in NOT_STACKABLE:
        with pytest.raises(DltoolError) as caught:
            model_of([value], shape)
        assert "\n" not in str(caught.value) and str(caught.value).startswith(f"model.layers.0: {name}")
        return
    model = model_of([value], shape)
    model.train()
    out = model(torch.randn(2, *shape))
    assert isinstance(model[0], nn.Module)
    assert tuple(out.shape) == (2, *model.output_shape)
