"""The TRANSFORMS registry: every v2 transform builds from YAML forms and runs on an image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as classic
from torchvision import tv_tensors
from torchvision.transforms import v2

from dltool.config.registry import TRANSFORMS
from dltool.config.spec import parse_spec
from dltool.data.transform_lists import deterministic_part
from dltool.data.transforms import ToTensor, build_pipeline, build_transform, to_float_tensor
from dltool.errors import RegistryError

# Arguments for the transforms that have required ones, written as a YAML user would.
ARGS = {
    "CenterCrop": [8], "Compose": {"transforms": ["RandomHorizontalFlip"]}, "FiveCrop": [8],
    "GaussianBlur": [3], "JPEG": {"quality": 80}, "Normalize": {"mean": [0.5] * 3, "std": [0.5] * 3},
    "Pad": [2], "RandomAdjustSharpness": [2.0], "RandomAffine": {"degrees": 10}, "RandomCrop": [8],
    "RandomApply": {"transforms": [{"ColorJitter": {"brightness": 0.3}}], "p": 0.5},
    "RandomChoice": {"transforms": ["RandomHorizontalFlip", "RandomVerticalFlip"]},
    "RandomOrder": {"transforms": ["RandomHorizontalFlip", "RandomVerticalFlip"]},
    "RandomPosterize": {"bits": 4}, "RandomResize": {"min_size": 8, "max_size": 12},
    "RandomResizedCrop": [8], "RandomRotation": 15, "RandomShortestSize": {"min_size": 8},
    "RandomSolarize": {"threshold": 100}, "Resize": [12, 12], "ScaleJitter": {"target_size": [16, 16]},
    "TenCrop": [8], "ToDtype": {"dtype": "float32", "scale": True},
    "UniformTemporalSubsample": {"num_samples": 1},
    "ConvertBoundingBoxFormat": {"format": "XYXY"}, "SetClampingMode": {"clamping_mode": "soft"},
}
# Detection, batch and code-taking transforms: built elsewhere or not applicable to a lone image.
NOT_FOR_ONE_IMAGE = {"ClampBoundingBoxes", "ClampKeyPoints", "ConvertBoundingBoxFormat", "CutMix", "MixUp",
                     "RandomIoUCrop", "SanitizeBoundingBoxes", "SanitizeKeyPoints", "SetClampingMode",
                     "Lambda", "LinearTransformation", "UniformTemporalSubsample"}


# The same transforms as ARGS, built by hand the way torchvision's documentation writes them.
BY_HAND = {
    "CenterCrop": lambda: v2.CenterCrop(8), "Compose": lambda: v2.Compose([v2.RandomHorizontalFlip()]),
    "FiveCrop": lambda: v2.FiveCrop(8), "GaussianBlur": lambda: v2.GaussianBlur(3), "JPEG": lambda: v2.JPEG(quality=80),
    "Normalize": lambda: v2.Normalize(mean=[0.5] * 3, std=[0.5] * 3), "Pad": lambda: v2.Pad(2),
    "RandomAdjustSharpness": lambda: v2.RandomAdjustSharpness(2.0), "RandomAffine": lambda: v2.RandomAffine(degrees=10),
    "RandomCrop": lambda: v2.RandomCrop(8),
    "RandomApply": lambda: v2.RandomApply([v2.ColorJitter(brightness=0.3)], p=0.5),
    "RandomChoice": lambda: v2.RandomChoice([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]),
    "RandomOrder": lambda: v2.RandomOrder([v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]),
    "RandomPosterize": lambda: v2.RandomPosterize(bits=4), "RandomResize": lambda: v2.RandomResize(8, 12),
    "RandomResizedCrop": lambda: v2.RandomResizedCrop(8), "RandomRotation": lambda: v2.RandomRotation(15),
    "RandomShortestSize": lambda: v2.RandomShortestSize(min_size=8),
    "RandomSolarize": lambda: v2.RandomSolarize(threshold=100), "Resize": lambda: v2.Resize([12, 12]),
    "ScaleJitter": lambda: v2.ScaleJitter(target_size=[16, 16]), "TenCrop": lambda: v2.TenCrop(8),
    "ToDtype": lambda: v2.ToDtype(torch.float32, scale=True),
    "ToTensor": lambda: lambda image: image.as_subclass(torch.Tensor).float().div(255),  # as the classic one
}


def spec_for(name):
    return parse_spec({name: ARGS[name]} if name in ARGS else name, "data.transforms.train.0")


def plain_tensors(out) -> list[torch.Tensor]:
    """A transform's output (one image, a tuple of crops, a PIL image) as plain tensors."""
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [torch.from_numpy(np.array(o)) if isinstance(o, Image.Image) else o.as_subclass(torch.Tensor)
            for o in outs]


@pytest.mark.parametrize("name", [n for n in TRANSFORMS.names() if n not in NOT_FOR_ONE_IMAGE])
def test_every_transform_builds_and_runs(name):
    """The YAML form builds torchvision's transform of that name with those arguments: on the same
    image and seed it gives exactly what the transform built by hand gives."""
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8))  # ElasticTransform pads 20
    if name == "Normalize":
        image = v2.ToDtype(torch.float32, scale=True)(image)
    built = build_transform(spec_for(name))
    by_hand = BY_HAND[name]() if name in BY_HAND else getattr(v2, name)()
    assert type(built) is (ToTensor if name == "ToTensor" else type(by_hand))
    torch.manual_seed(1)
    out = built(image)
    torch.manual_seed(1)
    expected = plain_tensors(by_hand(image))
    assert to_float_tensor(out[0] if isinstance(out, (tuple, list)) else out).shape[0] in (1, 3)
    assert [o.shape for o in plain_tensors(out)] == [e.shape for e in expected]
    assert all(torch.equal(o, e) for o, e in zip(plain_tensors(out), expected))


def test_registry_holds_every_v2_transform_and_totensor():
    names = set(TRANSFORMS.names())
    assert {"RandomResizedCrop", "ColorJitter", "Normalize", "MixUp", "CutMix", "ToImage", "ToTensor"} <= names
    assert TRANSFORMS.canonical("totensor") == "ToTensor"


def test_totensor_matches_the_classic_one():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    ours = build_transform(parse_spec("ToTensor", "t"))(image)
    expected = classic.ToTensor()(image)
    assert ours.dtype == torch.float32 and ours.shape == (3, 5, 7)
    assert torch.equal(ours.as_subclass(torch.Tensor), expected)


def test_list_value_of_resize_is_the_size():
    resize = build_transform(parse_spec({"Resize": [16, 12]}, "t"))
    assert list(resize.size) == [16, 12]
    rotate = build_transform(parse_spec({"RandomRotation": [-5, 5]}, "t"))
    assert list(rotate.degrees) == [-5.0, 5.0]


def test_text_arguments_become_torch_objects():
    resize = build_transform(parse_spec({"Resize": {"size": 8, "interpolation": "nearest"}}, "t"))
    assert resize.interpolation == v2.InterpolationMode.NEAREST
    to_dtype = build_transform(parse_spec({"ToDtype": {"dtype": "float16"}}, "t"))
    assert to_dtype.dtype == torch.float16


def test_bad_arguments_are_located_errors():
    with pytest.raises(RegistryError, match=r"data.transforms.train.0: Resize: unknown argument 'sise'; did you mean size\?"):
        build_transform(parse_spec({"Resize": {"sise": 8}}, "data.transforms.train.0"))
    with pytest.raises(RegistryError, match="unknown interpolation 'cubicle'"):
        build_transform(parse_spec({"Resize": {"size": 8, "interpolation": "cubicle"}}, "t"))
    with pytest.raises(RegistryError, match="unknown transform 'RandomFlip'"):
        build_transform(parse_spec("RandomFlip", "t"))


def test_eval_default_keeps_the_deterministic_part():
    train = [parse_spec(v, f"t.{i}") for i, v in enumerate(
        [{"RandomResizedCrop": [24]}, "RandomHorizontalFlip", "ToTensor", {"Normalize": {"mean": [0.5], "std": [0.5]}}])]
    kept = [s.name for s in deterministic_part(train)]
    assert kept == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    out = build_pipeline(deterministic_part(train))(Image.new("L", (40, 30)))
    assert out.shape == (1, 24, 24)


def test_pipeline_output_is_always_a_float_tensor():
    image = Image.new("RGB", (4, 3), (255, 0, 0))
    x = to_float_tensor(build_pipeline([])(image))
    assert x.dtype == torch.float32 and x.shape == (3, 3, 4) and x[0].max() == 1.0
    assert type(to_float_tensor(tv_tensors.Image(torch.zeros(1, 2, 2, dtype=torch.uint8)))) is torch.Tensor


def test_to_unit_float_is_float32_over_255_for_every_byte():
    from dltool.data.transforms import to_unit_float

    values = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    out = to_unit_float(values)
    assert out.dtype == torch.float32 and torch.equal(out, values.to(torch.float32) / 255)
