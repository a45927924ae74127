import io
import json
import textwrap

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dltool.cli import app
from dltool.cli.render_shapes import render_table
from dltool.config.load import load_config
from dltool.models.builder import collect_shapes

TINY = """\
model:
  input_shape: [1, 6, 6]
  layers:
    - Conv2d: {out_channels: 2, kernel_size: 3}
    - BatchNorm2d
    - Residual:
        body: [ReLU, {Conv2d: {out_channels: 2, kernel_size: 1}}]
    - Flatten
    - Linear: {out_features: 3}
"""


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_rows_params_and_torchinfo_style_mult_adds(tmp_path):
    report = collect_shapes(load_config(write(tmp_path, TINY)), (1, 6, 6), batch_size=4)
    rows = {row.name: row for row in report.rows}
    assert list(rows) == ["0", "1", "2", "2.body", "2.body.0", "2.body.1", "2.shortcut", "3", "4"]
    assert rows["0"].output_shape == [4, 2, 4, 4] and rows["4"].output_shape == [4, 3]
    # conv: (weight + bias) x batch x output positions; others: parameters x batch
    assert rows["0"].mult_adds == (18 + 2) * 4 * 16
    assert rows["1"].mult_adds == 4 * 4
    assert rows["2.body.1"].mult_adds == (4 + 2) * 4 * 16 == rows["2"].mult_adds
    assert rows["4"].mult_adds == (32 * 3 + 3) * 4
    assert report.total_mult_adds == sum(rows[n].mult_adds for n in ("0", "1", "2", "4"))
    assert report.total_params == 20 + 4 + 6 + 99 == report.trainable_params
    assert report.param_bytes == report.total_params * 4


def test_depth_limits_nested_rows(tmp_path):
    report = collect_shapes(load_config(write(tmp_path, TINY)), (1, 6, 6), depth=1)
    assert [row.name for row in report.rows] == ["0", "1", "2", "3", "4"]
    assert report.rows[2].params == 6


def test_resnet18_totals_agree_with_torchinfo(tmp_path):
    path = write(tmp_path, "model:\n  layers:\n    - TorchvisionModel: {name: resnet18, weights: null}\n")
    report = collect_shapes(load_config(path), (3, 224, 224), num_classes=1000, depth=1)
    assert report.total_params == 11_689_512  # torchinfo: 11,689,512 params, 1.81 G mult-adds
    assert abs(report.total_mult_adds - 1.81e9) / 1.81e9 < 0.01


def test_shapes_json_is_exactly_the_documented_document(tmp_path):
    result = CliRunner().invoke(app, ["shapes", str(write(tmp_path, TINY)), "--json", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["input_shape", "layers", "total_params", "trainable_params", "total_mult_adds"]
    assert data["input_shape"] == [2, 1, 6, 6]
    assert list(data["layers"][0]) == ["index", "name", "type", "output_shape", "params", "trainable_params",
                                       "mult_adds", "arguments"]
    assert data["layers"][-1] == {"index": 8, "name": "4", "type": "Linear", "output_shape": [2, 3], "params": 99,
                                  "trainable_params": 99, "mult_adds": 198, "arguments": "32, 3"}
    assert data["total_params"] == 129
    assert result.stderr == ""


def test_shapes_takes_the_input_shape_from_the_dataset():
    result = CliRunner().invoke(app, ["shapes", "configs/quickstart.yaml", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["input_shape"] == [1, 1, 16, 16]
    assert data["layers"][-1]["output_shape"] == [1, 10]


def test_input_shape_option_and_its_errors(tmp_path):
    path = write(tmp_path, "data: {dataset: Digits}\nmodel:\n  layers: [Flatten, {Linear: {out_features: 4}}]\n")
    result = CliRunner().invoke(app, ["shapes", str(path), "--input-shape", "3,8,8", "--json"])
    assert json.loads(result.stdout)["layers"][0]["output_shape"] == [1, 192]
    result = CliRunner().invoke(app, ["shapes", str(path), "--input-shape", "3,x8"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --input-shape: expected positive integers like 3,32,32; got '3,x8'"


def test_input_shape_option_wins_over_model_input_shape(tmp_path):
    path = write(tmp_path, "model:\n  input_shape: [1, 28, 28]\n  layers: [Flatten, {Linear: {out_features: 4}}]\n")
    result = CliRunner().invoke(app, ["shapes", str(path), "--input-shape", "3,8,8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input_shape"] == [1, 3, 8, 8]


def test_declared_input_shape_the_data_does_not_fit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, """\
        data: {dataset: Digits}
        model:
          input_shape: [1, 28, 28]
          layers: [Flatten, {Linear: {out_features: 256}}, ReLU, {Linear: {out_features: num_classes}}]
        """)
    result = CliRunner().invoke(app, ["shapes", "cfg.yaml"])
    assert result.exit_code == 2
    assert result.stderr == ("error: cfg.yaml:3:3: model.input_shape: [1, 28, 28], but the data's samples are "
                             "[1, 8, 8] (after data.transforms.eval); leave model.input_shape out to take the data's "
                             "shape, or resize the images to it\n")


def test_declared_input_shape_that_a_global_pool_makes_fit_is_kept(tmp_path):
    path = write(tmp_path, """\
        data: {dataset: Digits}
        model:
          input_shape: [1, 28, 28]
          layers: [{Conv2d: {out_channels: 4, kernel_size: 3}}, {AdaptiveAvgPool2d: 1}, Flatten,
                   {Linear: {out_features: num_classes}}]
        """)
    result = CliRunner().invoke(app, ["shapes", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["input_shape"] == [1, 1, 28, 28]


def test_num_classes_option_avoids_reading_a_missing_dataset(tmp_path):
    path = write(tmp_path, f"""\
        data:
          dataset: {{name: MNIST, root: {tmp_path / 'absent'}}}
        model:
          input_shape: [1, 28, 28]
          layers: [Flatten, {{Linear: {{out_features: num_classes}}}}]
        """)
    assert CliRunner().invoke(app, ["shapes", str(path)]).exit_code == 2
    result = CliRunner().invoke(app, ["shapes", str(path), "--num-classes", "10", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layers"][-1]["output_shape"] == [1, 10]


def test_shape_error_with_json_leaves_stdout_empty(tmp_path):
    path = write(tmp_path, TINY.replace("out_features: 3", "in_features: 7, out_features: 3"))
    result = CliRunner().invoke(app, ["shapes", str(path), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip().endswith(
        "model.layers.4: Linear: in_features is 7 but the input has 32 features (2x4x4 flattened); "
        "write in_features: 32 or leave it out")


def test_shapes_of_a_run_use_its_stored_config_shape_and_classes(tmp_path):
    from dltool.models import build_model
    from dltool.store.checkpoint import save_checkpoint

    config = load_config(write(tmp_path, TINY.replace("out_features: 3", "out_features: num_classes")))
    model = build_model(config.model, (1, 6, 6), 4)
    data = config.to_data()
    data["model"]["input_shape"] = None
    save_checkpoint({"model": model.state_dict(), "config": data, "classes": list("abcd"), "input_shape": [1, 6, 6]},
                    tmp_path / "run" / "checkpoints" / "best.pt")
    result = CliRunner().invoke(app, ["shapes", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["input_shape"] == [1, 1, 6, 6] and document["layers"][-1]["output_shape"] == [1, 4]
    result = CliRunner().invoke(app, ["shapes", str(tmp_path / "run"), "train.epochs=2"])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'run'}: KEY=VALUE overrides apply to a config file, not to a run"


GOLDEN = """\
                                 dltool shapes

  #   layer   type                          output shape   params   mult-adds
 ─────────────────────────────────────────────────────────────────────────────
      input                                 [1, 1, 6, 6]
  0   0       Conv2d(1, 2, kernel_size=3)   [1, 2, 4, 4]       20         320
  1   1       Flatten                       [1, 32]             0           0
  2   2       Linear(32, 3)                 [1, 3]             99          99

      total                                                   119         419

                            parameter memory 476 B
"""


def test_table_render(tmp_path):
    path = write(tmp_path, "model:\n  input_shape: [1, 6, 6]\n  layers: [{Conv2d: {out_channels: 2, kernel_size: 3}}, "
                           "Flatten, {Linear: {out_features: 3}}]\n")
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(render_table(collect_shapes(load_config(path), (1, 6, 6))))
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    assert lines == [line.rstrip() for line in GOLDEN.splitlines()]


@pytest.mark.parametrize("depth", ["0", "-1"])
def test_depth_must_be_positive(tmp_path, depth):
    result = CliRunner().invoke(app, ["shapes", str(write(tmp_path, TINY)), "--depth", depth])
    assert result.exit_code == 2
    assert f"Invalid value for '--depth': {depth} is not in the range x>=1." in result.stderr
    assert result.stdout == ""  # refused before any table


@pytest.mark.parametrize("written, shown", [
    ("{Conv2d: [6, 5]}", "Conv2d(1, 6, kernel_size=5)"),
    ("{Conv2d: [1, 6, 5]}", "Conv2d(1, 6, kernel_size=5)"),
    ("{Conv2d: {out_channels: 6, kernel_size: 3, padding: 1}}", "Conv2d(1, 6, kernel_size=3, padding=1)"),
    ("{MaxPool2d: 2}", "MaxPool2d(kernel_size=2, stride=2)"),
    ("Flatten, {Linear: {out_features: 4, bias: false}}", "Linear(64, 4, bias=False)"),
    ("{BatchNorm2d: {}}", "BatchNorm2d(1)"),
    ("{Dropout: 0.25}", "Dropout(p=0.25)"),
])
def test_each_layer_shows_the_arguments_it_was_built_with(tmp_path, written, shown):
    path = write(tmp_path, f"model:\n  input_shape: [1, 8, 8]\n  layers: [{written}]\n")
    report = collect_shapes(load_config(path), (1, 8, 8))
    assert (report.rows[-1].type, report.rows[-1].arguments) == (shown.split("(")[0], shown.split("(", 1)[1][:-1])
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render_table(report))
    last = [line for line in console.file.getvalue().splitlines() if line.strip()][-3]  # the last layer's row
    assert last.split()[:3] == [str(report.rows[-1].index), report.rows[-1].name, shown.split()[0]]
    assert f" {shown} " in last


def test_a_positional_list_whose_reading_is_ambiguous_is_refused(tmp_path):
    path = write(tmp_path, "model:\n  input_shape: [1, 8, 8]\n  layers:\n    - Conv2d: [1, 6]\n    - Flatten\n")
    result = CliRunner().invoke(app, ["shapes", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {path}:4:7: model.layers.0: Conv2d: [1, 6] is ambiguous: it reads as out_channels=1, kernel_size=6 "
        "with in_channels inferred (1), but in_channels=1, out_channels=6 with kernel_size left out looks the same; "
        "name them, e.g. {out_channels: 6, kernel_size: 3}, or give all three: [1, 6, 3]\n")


def test_shapes_names_a_normalize_with_more_channels_than_the_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, """\
        data:
          dataset: Digits
          transforms:
            eval: [ToTensor, {Normalize: {mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}}]
        model:
          layers: [Flatten, {Linear: {out_features: num_classes}}]
        """)
    result = CliRunner().invoke(app, ["shapes", "cfg.yaml"])
    assert result.exit_code == 2
    assert result.stderr == ("error: cfg.yaml:4:22: data.transforms.eval.1: Normalize has 3 means for images with 1 "
                             "channel (shape [1, 8, 8] there); give 1 value each to mean and std (dltool data --stats "
                             "prints them), or set data.channels\n")
