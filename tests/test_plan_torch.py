import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from dltool.config.load import config_from_data
from dltool.config.spec import parse_spec
from dltool.data import build_data
from dltool.data import transforms as tv
from dltool.data.build import _pipelines
from dltool.data.transform_lists import transform_specs
from dltool.inference.eval_plan import image_mode
from dltool.inference.plan_torch import Preprocess

NATIVE_LISTS = [
    [{"Resize": [28, 28]}, "ToTensor", {"Normalize": {"mean": [0.5], "std": [0.5]}}],
    [{"Resize": 20}, {"CenterCrop": 16}, "ToTensor"],
    [{"Resize": {"size": 17, "max_size": 30, "interpolation": "bicubic"}}, {"CenterCrop": [40, 12]}, "ToImage",
     {"ToDtype": {"dtype": "float32", "scale": True}}, {"Normalize": [[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]}],
    [{"Grayscale": 3}, {"Resize": {"size": [9, 13], "interpolation": "lanczos"}}, "PILToTensor",
     {"CenterCrop": [12, 15]}, {"ConvertImageDtype": "float32"}],
    [{"Grayscale": 1}, {"Resize": {"size": [10, 10], "interpolation": "nearest"}}],
    ["RGB", {"Resize": {"size": 11, "interpolation": "box"}}, "ToTensor", {"Grayscale": 1}, "Identity"],
    ["ToTensor", {"Grayscale": 3}, {"CenterCrop": 5}, "ToPureTensor"],
    ["PILToTensor", {"ToDtype": "float64"}, {"Normalize": [[0.5], [0.25]]}],
    [{"Resize": {"size": [12, 12], "interpolation": "hamming"}}, "PILToTensor", "ToTensor"],
    [],
]


def _images(mode):
    rng = np.random.default_rng(0)
    for height, width in ((8, 8), (31, 47), (60, 23)):
        shape = (height, width) if mode == "L" else (height, width, 3)
        yield Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _specs(items):
    return [parse_spec(item, f"data.transforms.eval.{i}") for i, item in enumerate(items)]


@pytest.mark.parametrize("items", NATIVE_LISTS, ids=lambda items: "-".join(map(str, items))[:60] or "empty")
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_native_steps_match_torchvision_bit_for_bit(items, mode):
    specs = _specs(items)
    ours, theirs = Preprocess(specs), tv.build_pipeline(specs)
    assert ours.native
    for image in _images(mode):
        if "Normalize" in str(items) and "0.3" in str(items) and mode == "L":
            continue  # three means for one channel: torchvision refuses it too
        expected = tv.to_float_tensor(theirs(image))
        got = ours(image)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert torch.equal(got, expected)


@pytest.mark.parametrize("items", [
    [{"Pad": 2}, "ToTensor"],
    ["ToTensor", {"Resize": [10, 10]}],
    [{"GaussianBlur": {"kernel_size": 3, "sigma": 1.0}}, "ToTensor"],
])
def test_other_lists_go_to_torchvision_with_the_same_result(items):
    specs = _specs(items)
    ours = Preprocess(specs)
    assert not ours.native
    for image in _images("RGB"):
        assert torch.equal(ours(image), tv.to_float_tensor(tv.build_pipeline(specs)(image)))


@pytest.mark.parametrize("transforms", [
    {},
    {"train": [{"RandomResizedCrop": 24}, {"RandomHorizontalFlip": 0.5}, "ToTensor", {"Normalize": [[0.5], [0.5]]}]},
    {"train": [{"RandomCrop": {"size": 20, "padding": 2}}, {"randomrotation": 5}, "totensor"]},
    {"train": [{"ColorJitter": {"brightness": 0.2}}], "eval": [{"Resize": 12}, "ToTensor"]},
    {"eval": [{"CenterCrop": 6}]},
])
def test_eval_specs_are_the_ones_build_data_uses(transforms):
    config = config_from_data({"data": {"transforms": transforms}})
    ours = transform_specs(config.data.transforms)[1]
    train, expected = _pipelines(config.data.transforms)
    assert repr(tv.build_pipeline(ours)) == repr(expected)


@pytest.mark.parametrize(("data", "model", "input_shape", "mode"), [
    ({}, {}, (1, 16, 16), "L"),
    ({}, {}, (3, 16, 16), "RGB"),
    ({"channels": 3}, {}, (1, 16, 16), "RGB"),
    ({}, {"input_shape": [1, 8, 8]}, (1, 8, 8), "L"),
    ({"transforms": {"eval": [{"Grayscale": 1}, "ToTensor"]}}, {}, (1, 8, 8), "RGB"),
])
def test_image_mode(data, model, input_shape, mode):
    config = config_from_data({"data": data, "model": model})
    assert image_mode(config, input_shape, transform_specs(config.data.transforms)[1]) == mode


def test_digits_eval_samples_are_rebuilt_exactly():
    config = config_from_data({"data": {"transforms": {"eval": [{"Resize": [16, 16]}, "ToTensor",
                                                                {"Normalize": [[0.3], [0.4]]}]}}})
    bundle = build_data(config, splits=("val",))
    specs = transform_specs(config.data.transforms)[1]
    assert image_mode(config, bundle.input_shape, specs) == "L"
    ours = Preprocess(specs)
    for i in range(0, len(bundle.val), 50):
        assert torch.equal(ours(bundle.val.raw_image(i)), bundle.val[i][0])


def test_native_preprocessing_does_not_import_torchvision():
    code = ("import sys\nfrom PIL import Image\nfrom dltool.inference.plan_torch import Preprocess\n"
            "from dltool.config.spec import parse_spec\n"
            "specs = [parse_spec(s, 'x') for s in ({'Resize': [28, 28]}, 'ToTensor', {'Normalize': [[0.5], [0.5]]})]\n"
            "out = Preprocess(specs)(Image.new('L', (8, 8)))\n"
            "assert tuple(out.shape) == (1, 28, 28)\n"
            "assert 'torchvision' not in sys.modules, 'torchvision was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
