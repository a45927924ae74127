"""torchvision datasets through DATASETS: MNIST read from IDX files, offline download errors, and
the `dltool data` command."""

from __future__ import annotations

import gzip
import json
import struct
import urllib.request
from urllib.error import URLError

import numpy as np
import pytest
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import config_from_data
from dltool.data import build_data
from dltool.errors import DataError


def write_idx(root, train=30, test=10, compress=True):
    """MNIST-format IDX files (images and labels, train and t10k) in root/MNIST/raw/."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes()
            path = raw / f"{prefix}-{kind}-ubyte"
            if compress:
                path = path.with_name(path.name + ".gz")
                payload = gzip.compress(payload)
            path.write_bytes(payload)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_reads_idx_files(tmp_path, compress):
    test_images, test_labels = write_idx(tmp_path, compress=compress)
    config = config_from_data({"data": {"dataset": {"name": "MNIST", "root": str(tmp_path)}, "val_split": 0.2}})
    bundle = build_data(config, splits=("train", "val", "test"))
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 10)
    assert bundle.classes[0] == "0 - zero" and bundle.input_shape == (1, 28, 28) and bundle.channels == 1
    x, y = bundle.test[3]
    assert y == int(test_labels[3])
    assert np.array_equal((x[0] * 255).round().byte().numpy(), test_images[3])


def test_offline_download_is_one_line_data_error(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(mnist, "download_and_extract_archive", offline)
    config = config_from_data({"data": {"dataset": {"name": "MNIST", "root": str(tmp_path), "download": True}}})
    with pytest.raises(DataError) as info:
        build_data(config)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"MNIST: dataset files not found under '{tmp_path}' and the download failed")
    assert f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz into {tmp_path}/MNIST/raw/" in message


def test_offline_mnist_cli_exits_2(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as mnist

    monkeypatch.setattr(mnist, "download_and_extract_archive", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    result = CliRunner().invoke(app, ["data", "configs/quickstart.yaml", "data.dataset.name=MNIST",
                                      f"data.dataset.root={tmp_path}", "data.dataset.download=true"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MNIST: dataset files not found")
    assert "Traceback" not in result.output


def test_missing_cifar_names_the_archive(tmp_path):
    config = config_from_data({"data": {"dataset": {"name": "CIFAR10", "root": str(tmp_path)}}})
    with pytest.raises(DataError, match=r"put cifar-10-python.tar.gz \(from https://.*\) into .* or extract it to .*cifar-10-batches-py"):
        build_data(config)


def test_fakedata_has_its_own_arguments():
    config = config_from_data({"data": {"dataset": {"name": "FakeData", "size": 20, "image_size": [3, 8, 8],
                                                    "num_classes": 4}}})
    bundle = build_data(config)
    assert bundle.input_shape == (3, 8, 8) and bundle.classes == ["0", "1", "2", "3"]
    assert len(bundle.train) + len(bundle.val) == 20


def test_data_command_counts_add_up_to_1797():
    result = CliRunner().invoke(app, ["data", "configs/quickstart.yaml", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["splits"]["train"]["samples"] + report["splits"]["val"]["samples"] == 1797
    counted = sum(report["splits"]["train"]["counts"].values()) + sum(report["splits"]["val"]["counts"].values())
    assert counted == 1797 and report["input_shape"] == [1, 16, 16] and report["bad_files"] == []


def test_data_command_table_stats_and_grid(tmp_path):
    grid = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["data", "configs/quickstart.yaml", "--stats", "--show", "10", "--out", str(grid)])
    assert result.exit_code == 0, result.output
    assert "1438" in result.output and "359" in result.output
    assert "Normalize: {mean: [0.3055], std: [0.3187]}" in result.output
    from PIL import Image

    with Image.open(grid) as image:
        assert image.size == (8 * 96, 2 * 110)


def test_data_grid_into_a_place_that_refuses_it_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    grid = blocker / "grid.png"  # a folder that cannot be made: its parent is a file
    result = CliRunner().invoke(app, ["data", "configs/quickstart.yaml", "--show", "4", "--out", str(grid)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: --out: cannot write {grid}: ") and result.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_fakedata_gives_torchvisions_images_without_touching_the_global_rng():
    import torch
    import torchvision.datasets as tvd

    from dltool.data.datasets import FakeData

    theirs = tvd.FakeData(12, (3, 5, 4), num_classes=6, random_offset=7)
    ours = FakeData(12, (3, 5, 4), num_classes=6, random_offset=7)
    for i in range(12):
        (a, t), (b, u) = theirs[i], ours[i]
        assert t == u and np.array_equal(np.asarray(a), np.asarray(b))
    assert ours.targets == [theirs[i][1] for i in range(12)]
    with pytest.raises(IndexError):
        ours[12]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    ours[3]
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch, existing):
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # a real connection, refused at once: offline anywhere
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    # urlopen builds its opener once, reading the proxies then: the one built here goes when the test ends
    monkeypatch.setattr(urllib.request, "_opener", None)
    root = tmp_path / "data"
    if existing:
        (root / "kept").mkdir(parents=True)
    config = config_from_data({"data": {"dataset": {"name": "MNIST", "root": str(root), "download": True}}})
    with pytest.raises(DataError, match="the download failed"):
        build_data(config)
    assert sorted(p.name for p in root.iterdir()) == ["kept"] if existing else not root.exists()
