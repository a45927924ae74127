"""dltool.data.walk and the readers on top of it, attacked for real: symlink loops, deep nesting, a
class folder linked to a system folder, FIFOs and device files where images or a root should be."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import config_from_data
from dltool.data import build_data
from dltool.data.decode import load_image
from dltool.data.walk import walk_images
from dltool.errors import DataError, ImageError
from dltool.inference.predict import expand_inputs

PNG = (".png",)


def two_classes(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def folder_config(root: Path):
    return config_from_data({"data": {"dataset": {"name": "ImageFolder", "root": str(root)}, "val_split": 0.34,
                                      "transforms": {"train": [{"Resize": [8, 8]}, "ToTensor"]}}})


def test_a_symlink_loop_ends_and_is_named(tmp_path):
    root = two_classes(tmp_path / "data")
    (root / "a" / "up").symlink_to("..")
    walk = walk_images(root / "a", PNG)
    assert walk.files == [str(root / "a" / f"{i}.png") for i in range(3)] + \
        [str(root / "a" / "up" / "b" / f"{i}.png") for i in range(3)]
    assert walk.skipped == [(str(root / "a" / "up" / "a"), f"a link back to {root / 'a'}, already scanned; not followed")]
    (root / "b" / "again").symlink_to(root / "b")
    bundle = build_data(folder_config(root))
    assert (str(root / "b" / "again"), f"a link back to {root / 'b'}, already scanned; not followed") in bundle.bad_files


def test_dltool_data_shows_the_loop(tmp_path):
    import json

    import yaml

    root = two_classes(tmp_path / "data")
    (root / "a" / "up").symlink_to("..")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": {"name": "ImageFolder", "root": str(root)},
                                               "val_split": 0.34}, "model": {"layers": ["Flatten"]}}))
    result = CliRunner().invoke(app, ["data", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert {"path": str(root / "a" / "up" / "a"), "reason": f"a link back to {root / 'a'}, already scanned; "
            "not followed"} in json.loads(result.stdout)["bad_files"]


def test_the_walk_is_capped_in_depth_and_entries(tmp_path):
    deep = tmp_path / "deep"
    path = deep
    for i in range(5):
        path = path / f"d{i}"
    path.mkdir(parents=True)
    with pytest.raises(DataError) as info:
        walk_images(deep, PNG, max_depth=3)
    assert str(info.value) == (f"{deep / 'd0' / 'd1' / 'd2' / 'd3'}: folders nested more than 3 deep under {deep}; "
                               "point the dataset at a folder of images")
    linked = tmp_path / "cls"
    linked.symlink_to("/usr")
    with pytest.raises(DataError) as info:
        walk_images(linked, PNG, max_entries=1000)
    assert str(info.value) == (f"{linked}: more than 1,000 files and folders under it (a link to a system folder?); "
                               "point the dataset at a folder of images")


def test_a_fifo_or_device_is_never_read_as_an_image(tmp_path):
    root = two_classes(tmp_path / "data")
    os.mkfifo(root / "a" / "pipe.png")
    walk = walk_images(root / "a", PNG)
    assert walk.skipped == [(str(root / "a" / "pipe.png"), "a FIFO (named pipe), not an image file; not read")]
    assert len(build_data(folder_config(root)).train) > 0  # the scan does not block on the FIFO
    with pytest.raises(ImageError) as info:
        load_image(str(root / "a" / "pipe.png"), 10**6)
    assert str(info.value) == f"{root / 'a' / 'pipe.png'}: a FIFO (named pipe), not an image file"
    with pytest.raises(ImageError) as info:
        load_image("/dev/zero", 10**6)
    assert str(info.value) == "/dev/zero: a character device, not an image file"


def test_a_fifo_root_or_list_file_says_what_it_is(tmp_path):
    fifo = tmp_path / "root"
    os.mkfifo(fifo)
    with pytest.raises(DataError) as info:
        build_data(folder_config(fifo))
    assert str(info.value) == f"ImageFolder: root {fifo} is a FIFO (named pipe), not a folder; give the folder of class folders"
    config = config_from_data({"data": {"dataset": {"name": "ImageList", "file": str(fifo)}}})
    with pytest.raises(DataError) as info:
        build_data(config)
    assert str(info.value) == f"ImageList: list file {fifo} is a FIFO (named pipe), not a file"


def test_predict_folder_expansion_follows_links_once(tmp_path):
    root = two_classes(tmp_path / "data")
    (root / "a" / "up").symlink_to("..")
    found = expand_inputs([str(root)])
    assert [path for path, _ in found] == sorted(str(root / c / f"{i}.png") for c in "ab" for i in range(3))
