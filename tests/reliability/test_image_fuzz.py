"""Image fuzzing: mutated files (truncations, bit flips, odd modes, EXIF orientations, a 20k x 20k
bomb) through `dltool predict` and a short training run on an ImageFolder. No crash; each bad file is
reported once; no bad file gets a prediction or a place in training; the files are never modified."""

from __future__ import annotations

import hashlib
import io
import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.data.decode import load_image
from dltool.errors import ImageError
from dltool.training.train import train

from .tools import record

MAX_PIXELS = 89_478_485  # data.max_image_pixels's default
LAYERS = ["Flatten", {"Linear": {"out_features": "num_classes"}}]
EVAL = [{"Resize": [8, 8]}, "ToTensor"]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A PNG whose header promises width x height 8-bit gray pixels, in a few hundred bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def originals(rng: np.random.Generator) -> list[tuple[str, bytes]]:
    """Valid files in many formats, modes and orientations: (suffix, bytes)."""
    rgb = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8), "RGB")
    gray = rgb.convert("L")
    files = [(".png", encoded(rgb, "PNG")), (".png", encoded(gray, "PNG")), (".jpg", encoded(rgb, "JPEG")),
             (".bmp", encoded(rgb, "BMP")), (".gif", encoded(rgb.convert("P"), "GIF")),
             (".png", encoded(rgb.convert("RGBA"), "PNG")), (".png", encoded(gray.convert("LA"), "PNG")),
             (".png", encoded(gray.convert("1"), "PNG")), (".jpg", encoded(rgb.convert("CMYK"), "JPEG")),
             (".tif", encoded(Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16)), "TIFF")),
             (".png", encoded(Image.fromarray(rng.integers(0, 65536, (12, 10), dtype=np.uint16)), "PNG")),
             (".tif", encoded(Image.fromarray(rng.random((12, 10), dtype=np.float32)), "TIFF")),
             (".webp", encoded(rgb, "WEBP"))]
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        files.append((".jpg", encoded(rgb, "JPEG", exif=exif.tobytes())))
    return files


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A damaged copy: truncated, bit-flipped, overwritten, emptied, or left whole."""
    kind = rng.randrange(6)
    if kind == 0:
        return data[: rng.randrange(len(data))]
    if kind in (1, 2):
        out = bytearray(data)
        for _ in range(rng.choice([1, 2, 8, 32])):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        return bytes(out)
    if kind == 3:
        start = rng.randrange(len(data))
        return data[:start] + rng.randbytes(rng.randint(1, 64)) + data[start + 64:]
    if kind == 4:
        return rng.choice([b"", rng.randbytes(rng.randint(1, 300)), data[:8]])
    return data


def build_corpus(folder: Path, count: int, seed: int) -> list[Path]:
    """`count` files in two class folders (a/, b/), plus the bomb."""
    rng = random.Random(seed)
    sources = originals(np.random.default_rng(seed))
    files = []
    for i in range(count):
        suffix, data = sources[i % len(sources)]
        path = folder / "ab"[i % 2] / f"{i:05d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(mutate(data, rng) if i >= len(sources) * 2 else data)
        files.append(path)
    (folder / "a" / "bomb.png").write_bytes(bomb())
    return [*files, folder / "a" / "bomb.png"]


def readable(path: Path) -> bool:
    """The oracle: dltool's decoder reads the file, or refuses it with ImageError (nothing else)."""
    try:
        load_image(str(path), MAX_PIXELS)
    except ImageError:
        return False
    return True


def checksums(files: list[Path]) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def fuzz_predict(folder: Path, model: Path, files: list[Path]) -> tuple[int, int]:
    """`dltool predict --format json` over every file: one entry each, an error exactly for the unreadable."""
    result = CliRunner().invoke(app, ["predict", *map(str, files), "--model", str(model), "--format", "json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    entries = json.loads(result.stdout)
    assert [e["path"] for e in entries] == [str(p) for p in files]
    bad = [p for p in files if not readable(p)]
    assert [e["path"] for e in entries if "error" in e] == [str(p) for p in bad]
    assert all("top" in e for e in entries if "error" not in e)
    assert result.exit_code == (2 if bad else 0)
    assert len(result.stderr.strip().splitlines()) == 1
    return len(files), len(bad)


def fuzz_training(folder: Path, files: list[Path]) -> None:
    """One epoch on the fuzzed ImageFolder: each bad file in bad_files.txt once, every good one used."""
    config = folder / "fuzz.yaml"
    config.write_text(json.dumps({
        "data": {"dataset": {"name": "ImageFolder", "root": str(folder / "images")}, "batch_size": 32,
                 "transforms": {"train": EVAL, "eval": EVAL}, "channels": 1},
        "model": {"layers": LAYERS}, "optimizer": {"name": "SGD", "lr": 0.01},
        "train": {"epochs": 1, "device": "cpu", "histograms": False, "threads": 1}}))
    result = train(config, runs_dir=folder / "runs")
    bad = sorted(str(p) for p in files if not readable(p))
    listed = (result.run_dir / "bad_files.txt").read_text().splitlines() if bad else []
    assert sorted(line.split("\t")[0] for line in listed) == bad
    summary = result.summary
    assert summary["train_samples"] + summary["val_samples"] == len(files) - len(bad)
    assert summary["bad_files"] == len(bad)


def run_fuzz(tmp_path: Path, make_checkpoint, count: int, seed: int) -> None:
    files = build_corpus(tmp_path / "images", count, seed)
    before = checksums(files)
    model = make_checkpoint(LAYERS, input_shape=(1, 8, 8), classes=("a", "b"), transforms=EVAL)
    total, bad = fuzz_predict(tmp_path, model, files)
    fuzz_training(tmp_path, files)
    assert checksums(files) == before
    assert 0 < bad < total
    record("images_fuzzed", total)
    record("bad_images", bad)


def test_a_few_hundred_fuzzed_images(tmp_path, make_checkpoint):
    run_fuzz(tmp_path, make_checkpoint, count=300, seed=0)


@pytest.mark.slow
def test_two_thousand_fuzzed_images(tmp_path, make_checkpoint):
    run_fuzz(tmp_path, make_checkpoint, count=2000, seed=1)


def test_the_bomb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb())
    assert len(path.read_bytes()) < 1000
    with pytest.raises(ImageError, match=r"too many pixels for Pillow's decompression-bomb guard \(Image size "
                                         r"\(400000000 pixels\)"):
        load_image(str(path), MAX_PIXELS)
    path.write_bytes(bomb(10_000, 10_000))  # under Pillow's own limit: dltool's data.max_image_pixels refuses it
    with pytest.raises(ImageError, match="10000x10000 = 100000000 pixels is over data.max_image_pixels=89478485"):
        load_image(str(path), MAX_PIXELS)


def test_a_complete_looking_file_with_broken_pixel_data_is_set_aside_by_the_scan(tmp_path):
    from dltool.data.scan import check_file

    data = bytearray(encoded(Image.new("L", (64, 64), 7), "PNG"))
    data[data.index(b"IDAT") + 6] ^= 0xFF  # damage the compressed pixels; the file still ends with IEND
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    mode, reason = check_file(str(path), MAX_PIXELS)
    assert mode is None and reason.startswith("cannot decode (")


def test_damaged_metadata_warnings_stay_off_stderr(tmp_path, make_checkpoint):
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(Image.new("RGB", (10, 12), 50), "JPEG", exif=exif.tobytes())
    start = data.index(b"Exif")
    path = tmp_path / "odd_exif.jpg"
    path.write_bytes(data[:start + 20] + b"\xff" * 8 + data[start + 28:])
    model = make_checkpoint(LAYERS, input_shape=(1, 8, 8), classes=("a", "b"), transforms=EVAL)
    result = CliRunner().invoke(app, ["predict", str(path), "--model", str(model), "--format", "json"])
    assert "Warning" not in result.stderr
