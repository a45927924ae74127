"""The eval plan: one description of the eval transforms, its shared rules against torchvision's,
the steps only torch runs refused by export, and both executors reading the same steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2.functional import _geometry

from dltool.config.load import config_from_data
from dltool.config.spec import parse_spec
from dltool.data.draft import resized_size
from dltool.errors import CheckpointError
from dltool.inference.eval_plan import Unplannable, build_plan, compile_steps, crop_window
from dltool.inference.plan_numpy import NumpyPreprocess
from dltool.inference.plan_torch import Preprocess


def _specs(items):
    return [parse_spec(item, f"data.transforms.eval.{i}") for i, item in enumerate(items)]


@pytest.mark.parametrize("size", [[20], [9, 13], [64], None])
@pytest.mark.parametrize("max_size", [None, 30, 80])
@pytest.mark.parametrize(("height", "width"), [(31, 47), (60, 23), (8, 8), (1, 500)])
def test_resized_size_is_torchvisions(size, max_size, height, width):
    if (size is None and max_size is None) or (size is not None and len(size) == 2 and max_size is not None):
        return
    if size is not None and max_size is not None and max_size <= size[0]:
        return  # torchvision refuses a max_size not above the size
    expected = _geometry._compute_resized_output_size((height, width), size, max_size)
    assert list(resized_size(height, width, size, max_size)) == expected


@pytest.mark.parametrize(("height", "width"), [(8, 8), (31, 47), (5, 12), (12, 5)])
@pytest.mark.parametrize(("crop_h", "crop_w"), [(6, 6), (8, 10), (40, 36), (3, 20)])
def test_crop_window_is_torchvisions_center_crop(height, width, crop_h, crop_w):
    image = torch.arange(height * width, dtype=torch.float32).view(1, height, width) + 1
    (left, top, right, bottom), y, x = crop_window(height, width, crop_h, crop_w)
    padded = torch.nn.functional.pad(image, [left, right, top, bottom])
    ours = padded[..., y:y + crop_h, x:x + crop_w]
    assert torch.equal(ours, _geometry.center_crop_image(image, [crop_h, crop_w]))


EXPORTABLE = [
    [{"Resize": [16, 16]}, "ToTensor", {"Normalize": {"mean": [0.3], "std": [0.4]}}],
    [{"Resize": 26}, {"CenterCrop": 24}, "ToTensor"],
    [{"CenterCrop": [40, 36]}, "ToImage", {"ToDtype": {"dtype": "float32", "scale": True}}],
    ["PILToTensor", {"CenterCrop": 12}, "ConvertImageDtype"],
]


@pytest.mark.parametrize("items", EXPORTABLE, ids=lambda items: "-".join(map(str, items))[:50])
def test_the_exported_steps_are_the_ones_torch_runs_and_numpy_replays(items, tmp_path):
    config = config_from_data({"data": {"dataset": "Digits", "transforms": {"eval": items}}})
    plan = build_plan(config, (1, 16, 16))
    ours = Preprocess(_specs(items))
    assert ours.steps == plan["steps"]
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (23, 31), dtype=np.uint8), "L").save(path)
    expected = ours(Image.open(path).convert("L")).numpy()
    got = NumpyPreprocess(plan)(str(path))
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize(("items", "message"), [
    (["ToTensor", {"Grayscale": 1}], r"data.transforms.eval.1: eval transform Grayscale cannot be exported: only on a PIL"),
    (["ToTensor", "RGB"], r"eval.1: eval transform RGB cannot be exported: only on a PIL image"),
    (["PILToTensor", {"ToDtype": "float64"}], r"eval.1: eval transform ToDtype cannot be exported: only uint8"),
])
def test_steps_only_torch_runs_are_refused_by_export(items, message):
    specs = _specs(items)
    assert Preprocess(specs).native  # eval and predict still run them without torchvision
    with pytest.raises(Unplannable, match=message):
        compile_steps(specs, exported=True)


@pytest.mark.parametrize(("items", "message"), [
    ([{"Resize": [8, 8]}, "ToTensor", {"Resize": 4}], r"eval.2: eval transform Resize cannot be exported: only on"),
    ([{"Normalize": [[0.5], [0.5]]}], r"eval.0: eval transform Normalize cannot be exported: only on a float"),
    ([{"ToDtype": "uint16"}], r"eval.0: eval transform ToDtype cannot be exported: dtype must be one of"),
])
def test_steps_without_a_description_go_to_torchvision(items, message):
    specs = _specs(items)
    assert not Preprocess(specs).native
    with pytest.raises(Unplannable, match=message):
        compile_steps(specs)


def test_a_file_holding_a_torch_only_step_is_not_a_plan():
    plan = {"mode": "L", "input_shape": [1, 4, 4], "steps": [{"op": "to_array"}, {"op": "gray", "channels": 1}]}
    with pytest.raises(CheckpointError, match="model file: its preprocess metadata is not a dltool plan"):
        NumpyPreprocess(plan)
