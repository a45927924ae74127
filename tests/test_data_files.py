"""File datasets: ImageFolder and ImageList with odd modes and broken files, and robust decoding."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dltool.config.load import config_from_data
from dltool.data import build_data, make_loader
from dltool.data.decode import load_image, to_8bit
from dltool.errors import DataError, ImageError

RNG = np.random.default_rng(0)


def _rgb(size=(24, 20)) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make_messy_folder(root: Path) -> dict[str, Path]:
    """Two classes of odd-mode images plus a 0-byte file, a truncated JPEG and a text file named .png."""
    for name in ("ants", "bees"):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(4):
            _rgb().save(folder / f"rgb{i}.jpg")
        _rgb().convert("CMYK").save(folder / "cmyk.jpg")
        _rgb().convert("RGBA").save(folder / "rgba.png")
        _rgb().convert("P").save(folder / "palette.png")
        _rgb().convert("L").save(folder / "gray.png")
        Image.fromarray(RNG.integers(0, 65536, (20, 24)).astype(np.uint16)).save(folder / "deep.png")
    broken = {"empty": root / "ants" / "empty.jpg", "truncated": root / "bees" / "half.jpg",
              "text": root / "bees" / "notes.png"}
    broken["empty"].write_bytes(b"")
    whole = (root / "ants" / "rgb0.jpg").read_bytes()
    broken["truncated"].write_bytes(whole[: len(whole) // 2])
    broken["text"].write_text("not an image\n")
    return broken


def checksums(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def folder_config(root, **data):
    transforms = {"train": [{"Resize": [16, 16]}, "RandomHorizontalFlip", "ToTensor"]}
    return config_from_data({"data": {"dataset": {"name": "ImageFolder", "root": str(root)},
                                      "transforms": transforms, "batch_size": 4, **data}})


def test_messy_folder_builds_skips_broken_files_and_writes_nothing(tmp_path):
    broken = make_messy_folder(tmp_path / "pets")
    before = checksums(tmp_path / "pets")
    config = folder_config(tmp_path / "pets", val_split=0.25)
    bundle = build_data(config)
    reasons = dict(bundle.bad_files)
    assert set(reasons) == {str(p) for p in broken.values()}
    assert reasons[str(broken["empty"])] == "empty file (0 bytes)"
    assert reasons[str(broken["text"])] == "not an image (no known image format)"
    assert bundle.classes == ["ants", "bees"] and bundle.channels == 3 and bundle.input_shape == (3, 16, 16)
    assert len(bundle.train) + len(bundle.val) == 18
    loader = make_loader(bundle.train, config.data, train=True, seed=0)
    for x, _y in loader:
        assert x.shape[1:] == (3, 16, 16) and torch.isfinite(x).all()
    for i in range(len(bundle.val)):
        bundle.val[i]
    assert checksums(tmp_path / "pets") == before
    assert sorted(bundle.split["train"] + bundle.split["val"]) == sorted(
        p.relative_to(tmp_path / "pets").as_posix() for p in (tmp_path / "pets").rglob("*")
        if p.is_file() and str(p) not in reasons)


def test_split_state_reproduces_the_paths(tmp_path):
    make_messy_folder(tmp_path / "pets")
    first = build_data(folder_config(tmp_path / "pets"))
    again = build_data(config_from_data({**folder_config(tmp_path / "pets").to_data(), "seed": 9}),
                       split_state=first.split)
    assert again.sample_ids("val") == first.sample_ids("val")
    (tmp_path / "pets" / first.split["val"][0]).unlink()
    with pytest.raises(DataError, match="1 samples of the stored split are gone"):
        build_data(folder_config(tmp_path / "pets"), split_state=first.split)


def test_train_val_test_subfolders(tmp_path):
    for split, count in (("train", 3), ("valid", 2), ("test", 1)):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                _rgb().convert("L").save(tmp_path / split / name / f"{i}.png")
    bundle = build_data(folder_config(tmp_path), splits=("train", "val", "test"))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (6, 4, 2)
    assert bundle.channels == 1 and bundle.input_shape == (1, 16, 16)
    assert bundle.split["method"] == "dataset"
    assert bundle.sample_ids("test") == [str(tmp_path / "test" / "cat" / "0.png"), str(tmp_path / "test" / "dog" / "0.png")]


@pytest.mark.parametrize("case, message", [
    ("empty_class", "class folder .*/b has no image files"),
    ("one_class", "the train split has only one class \\('a'\\)"),
    ("no_usable", "the train split has no usable image file \\(2 unreadable"),
])
def test_unusable_folders_are_data_errors(tmp_path, case, message):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if case == "no_usable":
        (tmp_path / "a" / "x.png").write_bytes(b"")
        (tmp_path / "b" / "y.png").write_text("text")
    else:
        for i in range(3):
            _rgb().save(tmp_path / "a" / f"{i}.png")
    if case == "one_class":
        (tmp_path / "b").rmdir()
    with pytest.raises(DataError, match=message):
        build_data(folder_config(tmp_path))


def test_image_list_with_header_and_relative_paths(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = ["file,label"]
    for i in range(8):
        _rgb().save(images / f"{i}.png")
        rows.append(f"images/{i}.png,{'cat' if i % 2 else 'dog'}")
    rows.append("images/missing.png,cat")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    config = config_from_data({"data": {"dataset": {"name": "ImageList", "file": str(tmp_path / "labels.csv")},
                                        "val_split": 0.25}})
    bundle = build_data(config)
    assert bundle.classes == ["cat", "dog"]
    assert (len(bundle.train), len(bundle.val)) == (6, 2)
    assert [p for p, _ in bundle.bad_files] == [str(tmp_path / "images" / "missing.png")]
    assert bundle.train[0][0].shape == (3, 20, 24)


def test_image_list_regression_targets_are_float_tensors(tmp_path):
    lines = []
    for i in range(6):
        _rgb().save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png\t{i / 2}")
    (tmp_path / "ages.tsv").write_text("\n".join(lines))
    config = config_from_data({"data": {"dataset": {"name": "ImageList", "file": str(tmp_path / "ages.tsv"),
                                                    "task": "regression"}}})
    bundle = build_data(config)
    assert bundle.task == "regression" and bundle.classes == []
    _, target = bundle.train[0]
    assert target.dtype == torch.float32 and target.ndim == 0


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    image = load_image(str(tmp_path / "deep.png"), 10**6)
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 1, 128, 255]]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    image.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert load_image(str(tmp_path / "phone.jpg"), 10**6).size == (10, 30)


def test_alpha_palette_cmyk_and_bilevel_convert():
    rgba = Image.new("RGBA", (2, 1), (255, 255, 255, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    assert [to_8bit(rgba).getpixel((x, 0)) for x in (0, 1)] == [(0, 0, 0), (255, 0, 0)]
    assert to_8bit(Image.new("LA", (1, 1), (200, 255))).getpixel((0, 0)) == 200
    assert to_8bit(Image.new("1", (1, 1), 1)).getpixel((0, 0)) == 255
    assert to_8bit(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    assert to_8bit(Image.new("RGB", (1, 1), (0, 128, 0)).convert("P")).mode == "RGB"


def test_pixel_limit_guards_against_bombs(tmp_path):
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="10000 pixels is over data.max_image_pixels=5000"):
        load_image(str(tmp_path / "big.png"), 5000)
    buffer = io.BytesIO()
    Image.new("L", (4, 4)).save(buffer, "PNG")
    (tmp_path / "ok.png").write_bytes(buffer.getvalue())
    assert load_image(str(tmp_path / "ok.png"), 16).size == (4, 4)


def test_own_split_folders_record_and_reuse_their_paths(tmp_path):
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                _rgb().save(tmp_path / split / name / f"{i}.png")
    first = build_data(folder_config(tmp_path))
    assert first.split["val"] == ["val/cat/0.png", "val/cat/1.png", "val/cat/2.png",
                                  "val/dog/0.png", "val/dog/1.png", "val/dog/2.png"]
    _rgb().save(tmp_path / "val" / "cat" / "3.png")
    again = build_data(folder_config(tmp_path), split_state=first.split)
    assert again.split == first.split and len(again.val) == 6
    assert len(build_data(folder_config(tmp_path)).val) == 7


def test_a_relative_root_that_is_not_there_shows_the_absolute_path_tried(tmp_path, monkeypatch):
    (tmp_path / "project" / "configs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "project")
    config = config_from_data({"data": {"dataset": {"name": "ImageFolder", "root": "../folder"}}})
    with pytest.raises(DataError) as caught:
        build_data(config)
    assert str(caught.value) == (f"ImageFolder: root folder not found: ../folder (looked for {tmp_path / 'folder'}: "
                                 "a relative root is taken from the working directory)")
