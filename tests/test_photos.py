"""Photos at the size the model needs: the decode size, reduced decoding of real JPEGs, the shared
decoded cache, worker counts, and eval / predict / export agreeing on the same photos."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import config_from_data
from dltool.config.spec import parse_spec
from dltool.data.decode import load_image
from dltool.data.draft import decode_size, list_need

BIG = 10**9


def _specs(*items):
    return [parse_spec(item, f"data.transforms.train.{i}") for i, item in enumerate(items)]


def _data(train, evaluate=None, **extra):
    transforms = {"train": train, **({"eval": evaluate} if evaluate is not None else {})}
    return config_from_data({"data": {"dataset": "Digits", "transforms": transforms, **extra}}).data


@pytest.mark.parametrize("items, need", [
    ([{"Resize": 256}, {"CenterCrop": 224}, "ToTensor"], 256),
    ([{"Resize": [128, 96]}, "ToTensor"], 128),
    ([{"RandomResizedCrop": 224}, "RandomHorizontalFlip", "ToTensor"], 915),  # scale 0.08, ratio 4/3
    ([{"RandomResizedCrop": {"size": 224, "scale": [0.5, 1.0]}}], 366),
    (["RandomHorizontalFlip", {"ColorJitter": {"brightness": 0.2}}, {"Resize": 64}], 64),
    ([{"RandomResize": {"min_size": 200, "max_size": 300}}], 300),
])
def test_the_need_comes_from_the_first_resizing_step(items, need):
    assert list_need(_specs(*items))[0] == need


def test_a_crop_at_the_photos_own_pixels_needs_the_full_image():
    assert list_need(_specs({"CenterCrop": 224}, {"Resize": 64})) == (
        None, "CenterCrop comes before any resizing step and works on the photo's own pixels")
    assert list_need(_specs("ToTensor")) == (None, "no step resizes the images")


def test_one_decode_size_per_config_the_larger_need_and_full_turns_it_off():
    data = _data([{"RandomResizedCrop": {"size": 112, "scale": [0.35, 1.0]}}, "ToTensor"],
                 [{"Resize": 128}, {"CenterCrop": 112}, "ToTensor"])
    assert decode_size(data).short_side == 219
    assert decode_size(data).describe() == ("photos decoded at 219 px on the short side (JPEGs larger than that, drafted "
                                            "by libjpeg; other formats in full): the most the train (219 px) and eval "
                                            "(128 px) transforms need")
    full = _data([{"Resize": 64}], decode="full")
    assert decode_size(full).describe() == "photos decoded in full: data.decode: full"
    cropped = _data([{"RandomCrop": 32}], [{"Resize": 32}])
    assert decode_size(cropped).describe() == ("photos decoded in full: data.transforms.train: RandomCrop comes "
                                               "before any resizing step and works on the photo's own pixels")


def _photo(size, seed=0):
    """A smooth, photo-like RGB picture (blocks of colour plus a gradient) of `size` (w, h)."""
    rng = np.random.default_rng(seed)
    w, h = size
    blocks = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:h, :w]
    ramp = np.linspace(0, 60, w)[None, :, None]
    return Image.fromarray(np.clip(blocks * 0.7 + ramp, 0, 255).astype(np.uint8))


def _jpegs(folder, sizes=((1200, 900), (900, 1200), (640, 480), (300, 200))):
    """Real JPEGs of several kinds: baseline, progressive, CMYK, EXIF-rotated, in two class folders."""
    paths = []
    for c, cls in enumerate(("a", "b")):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(sizes):
            image = _photo(size, seed=10 * c + i)
            if c:
                image = Image.fromarray(255 - np.asarray(image))
            path = folder / cls / f"{i}.jpg"
            kind = i % 4
            if kind == 1:
                image.save(path, quality=90, progressive=True)
            elif kind == 2:
                image.convert("CMYK").save(path, quality=90)
            elif kind == 3:
                exif = image.getexif()
                exif[0x0112] = 6  # rotated 90 degrees: shown upright after exif_transpose
                image.save(path, quality=90, exif=exif)
            else:
                image.save(path, quality=90)
            paths.append(path)
    return paths


def test_reduced_decoding_gives_the_short_side_asked_and_the_picture_of_a_full_decode(tmp_path):
    for path in _jpegs(tmp_path):
        full = load_image(str(path), BIG)
        reduced = load_image(str(path), BIG, 150)
        assert reduced.mode == "RGB"
        if min(full.size) <= 150:
            assert reduced.size == full.size
            continue
        assert min(reduced.size) == 150
        assert (reduced.width > reduced.height) == (full.width > full.height)  # EXIF orientation applied
        expected = full.resize(reduced.size, Image.BILINEAR)
        difference = np.abs(np.asarray(reduced, np.float32) - np.asarray(expected, np.float32)).mean()
        assert difference < 6, path  # the same picture, decoded at another scale
    _photo((800, 600)).save(tmp_path / "big.png")
    assert load_image(str(tmp_path / "big.png"), BIG, 150).size == (800, 600)  # other formats: in full, as before


def _folder_config(root, **data):
    return config_from_data({"data": {
        "dataset": {"name": "ImageFolder", "root": str(root)}, "val_split": 0.25, "batch_size": 4,
        "transforms": {"train": [{"RandomResizedCrop": {"size": 32, "scale": [0.35, 1.0]}}, "ToTensor"],
                       "eval": [{"Resize": 40}, {"CenterCrop": 32}, "ToTensor"]}, **data},
        "model": {"layers": [{"Conv2d": {"out_channels": 4, "kernel_size": 3}}, "ReLU",
                             {"AdaptiveAvgPool2d": 1}, "Flatten", {"Linear": {"out_features": "num_classes"}}]},
        "train": {"epochs": 1, "device": "cpu"}})


def test_the_cache_holds_each_photo_once_in_shared_memory_and_gives_what_decoding_gives(tmp_path):
    from dltool.data.build import build_data
    from dltool.data.photos import PhotoCache
    from dltool.data.scan import DecodedFiles

    _jpegs(tmp_path / "photos")
    cached = build_data(_folder_config(tmp_path / "photos"))
    streamed = build_data(_folder_config(tmp_path / "photos", photo_cache_mb=0))
    items = cached.train.items
    assert isinstance(items, PhotoCache) and items.pixels.is_shared()
    assert items.note == "images decoded once at 63 px on the short side into a 0.1 MB cache shared with the loader's workers"
    assert isinstance(streamed.train.items, DecodedFiles)
    assert streamed.train.items.note == ("images decoded at 63 px on the short side on every read, not cached: "
                                         "data.photo_cache_mb: 0")
    for i in range(len(cached.val)):
        assert np.array_equal(np.asarray(cached.val.raw_image(i)), np.asarray(streamed.val.raw_image(i)))


def test_beyond_the_budget_files_are_streamed_and_the_reason_given(tmp_path):
    from dltool.data.build import build_data

    _jpegs(tmp_path / "photos", sizes=((2000, 1500),) * 4)
    bundle = build_data(_folder_config(tmp_path / "photos", decode="full", photo_cache_mb=50))
    assert bundle.train.items.note == ("images decoded in full on every read, not cached: the decoded images "
                                       "need 69 MB, over what is left of data.photo_cache_mb 50")


def test_workers_default_to_one_per_cpu_but_one_and_the_config_wins(tmp_path, monkeypatch):
    from dltool.data.build import build_data
    from dltool.data.loaders import make_loader

    _jpegs(tmp_path / "photos")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    config = _folder_config(tmp_path / "photos")
    bundle = build_data(config)
    loader = make_loader(bundle.train, config.data, train=True, seed=0)
    assert loader.loader.num_workers == 3
    assert loader.path == (
        "data: images decoded once at 63 px on the short side into a 0.1 MB cache shared with the loader's workers; "
        "transformed one sample at a time in 3 worker processes (4 CPUs, one left for training; data.num_workers "
        "sets it), not held as one tensor (images differ in size after the fixed transforms)")
    assert sum(len(x) for x, _ in loader) == len(bundle.train)
    own = _folder_config(tmp_path / "photos", num_workers=0)
    assert make_loader(bundle.train, own.data, train=True, seed=0).loader.num_workers == 0


def test_tiny_images_keep_the_in_process_tensor_path(tmp_path):
    from dltool.data.build import build_data
    from dltool.data.loaders import make_loader
    from dltool.data.memory import MemoryLoader

    for cls in ("a", "b"):
        (tmp_path / "small" / cls).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "small" / cls / f"{i}.png")
    config = config_from_data({"data": {"dataset": {"name": "ImageFolder", "root": str(tmp_path / "small")},
                                        "transforms": {"train": ["RandomHorizontalFlip", "ToTensor"]}}})
    loader = make_loader(build_data(config).train, config.data, train=True, seed=0)
    assert isinstance(loader, MemoryLoader)
    assert loader.path.endswith("and transformed a batch at a time in this process (it fits data.cache_budget_mb)")


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """A model trained one epoch on real JPEGs, exported to ONNX and TorchScript: (folder, files)."""
    from dltool.training.train import train

    folder = tmp_path_factory.mktemp("photo_run")
    _jpegs(folder / "photos")
    (folder / "cfg.yaml").write_text(json.dumps(_folder_config(folder / "photos").to_data()))
    run = train(folder / "cfg.yaml", runs_dir=folder / "runs", name="photos").run_dir
    files = []
    for kind, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        result = _invoke("export", run, "--format", kind)
        assert result.exit_code == 0, result.output
        files.append(run / name)
    return folder, run, files


def test_eval_predict_and_exported_files_agree_on_the_same_photos(photo_run):
    from dltool.data.build import build_data
    from dltool.inference.plan_torch import ImageReader
    from dltool.store.checkpoint import checkpoint_config, load_checkpoint

    folder, run, (onnx, torchscript) = photo_run
    outputs = {}
    for model in (run, onnx, torchscript):
        trusted = ["--trust-program"] if model == torchscript else []  # our own export
        result = _invoke("predict", folder / "photos", "--model", model, "--format", "json", *trusted)
        assert result.exit_code == 0, result.output
        outputs[model] = {p["path"]: p["top"] for p in json.loads(result.stdout)}
    reference = outputs[run]
    assert len(reference) == 8
    for model in (onnx, torchscript):
        for path, top in outputs[model].items():
            assert top[0]["class"] == reference[path][0]["class"]
            assert abs(top[0]["probability"] - reference[path][0]["probability"]) < 1e-4
    checkpoint = load_checkpoint(run / "checkpoints" / "best.pt")
    config = checkpoint_config(checkpoint)
    reader = ImageReader(config, checkpoint["input_shape"])
    val = build_data(config, split_state=checkpoint["split"]).val  # what eval reads
    for i, path in enumerate(val.ids):
        assert reader.short_side == 63
        assert np.array_equal(val[i][0].numpy(), reader(path).numpy())


def test_the_exported_plan_says_how_images_are_decoded(photo_run):
    import onnxruntime as ort

    _, _, (onnx, _) = photo_run
    meta = ort.InferenceSession(str(onnx)).get_modelmeta().custom_metadata_map
    assert json.loads(meta["preprocess"])["short_side"] == 63


def test_a_checkpoint_from_before_reduced_decoding_still_decodes_in_full(make_checkpoint):
    import torch

    from dltool.store.checkpoint import checkpoint_config

    path = make_checkpoint(["Flatten", {"Linear": {"out_features": 10}}])
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["data"]["decode"]
    assert checkpoint_config(checkpoint).data.decode == "full"


def test_data_and_config_show_the_decode_size_and_the_cache(tmp_path):
    _jpegs(tmp_path / "photos")
    (tmp_path / "cfg.yaml").write_text(json.dumps(_folder_config(tmp_path / "photos").to_data()))
    result = _invoke("data", tmp_path / "cfg.yaml", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["decode"]["short_side"] == 63
    assert report["splits"]["train"]["reading"].startswith("images decoded once at 63 px on the short side into a")
    shown = _invoke("config", tmp_path / "cfg.yaml")
    assert shown.exit_code == 0
    assert ("photos decoded at 63 px on the short side (JPEGs larger than that, drafted by libjpeg; "
            "other formats in full): the most the train (63 px) and eval (40 px) transforms need") in shown.stderr


def test_predict_on_a_folder_decodes_in_threads_batch_after_batch_with_progress(photo_run, tmp_path):
    from dltool.inference.predict import predict

    folder, run, _ = photo_run
    whole = {p.path: p.top for p in predict([str(folder / "photos")], run, batch_size=64)}
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    seen = []
    batched = predict([str(folder / "photos"), str(tmp_path / "broken.jpg")], run, batch_size=3,
                      on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(3, 9), (6, 9), (9, 9)]
    assert [p.path for p in batched[:8]] == sorted(whole)
    for p in batched[:8]:
        assert p.top[0]["class"] == whole[p.path][0]["class"]
        assert abs(p.top[0]["probability"] - whole[p.path][0]["probability"]) < 1e-6
    assert batched[8].error is not None and batched[8].top is None


def _started_then_wait(started, go):
    started.set()  # the fork hooks have run by now
    go.wait(30)


def test_a_forked_worker_does_not_keep_the_run_folder_locked(tmp_path):
    import multiprocessing

    from dltool.errors import RunBusy
    from dltool.training.run_folder import RunDir

    (tmp_path / "run").mkdir()
    run = RunDir(tmp_path / "run").hold()
    context = multiprocessing.get_context("fork")
    started, go = context.Event(), context.Event()
    child = context.Process(target=_started_then_wait, args=(started, go))  # forked while the run is held
    child.start()
    try:
        assert started.wait(30)
        run.release()
        assert child.is_alive()
        RunDir(tmp_path / "run").hold().release()  # the live child holds no copy of the lock
        with pytest.raises(RunBusy):  # while a holder does keep the folder taken
            held = RunDir(tmp_path / "run").hold()
            RunDir(tmp_path / "run").hold()
        held.release()
    finally:
        go.set()
        child.join(30)


def test_a_cache_larger_than_the_shared_memory_free_is_not_made(tmp_path, monkeypatch):
    from dltool.data import photos
    from dltool.data.build import build_data

    _jpegs(tmp_path / "photos")
    monkeypatch.setattr(photos, "shm_free", lambda: 1000)
    bundle = build_data(_folder_config(tmp_path / "photos"))
    assert bundle.train.items.note == ("images decoded at 63 px on the short side on every read, not cached: the "
                                       "decoded images need 0 MB, over the 0 MB free in /dev/shm")
