"""Hostile files: pickle payloads, damaged checkpoints, another model's weights, YAML tags that would
run code, and configs naming import paths. Every command refuses each with exit 2 and one line, and
no payload runs (a sentinel file would appear)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from dltool.cli import app
from dltool.training.train import train

from .tools import TINY, one_line_error, record, run_dltool, write_config

IMPORT_PATHS = ["os.system", "torch.nn.Module", "builtins.eval", "subprocess.Popen", "posix.system",
                "torch.load", "torch.nn.modules.conv.Conv2d"]


# files that are fine for some commands: shapes reads only the stored config; eval, predict and
# shapes need only the model, not the training state
USABLE_BY = {"other_architecture.pt": ("eval", "predict", "train"), "hand_made_without_training_state.pt": ("train",)}


class Payload:
    """Unpickling this runs `touch <sentinel>`."""

    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """A real one-epoch run, and hostile checkpoints and configs built around it."""
    folder = tmp_path_factory.mktemp("hostile")
    sentinel = folder / "SENTINEL"
    run = train(write_config(folder, data={**TINY, "train": {**TINY["train"], "epochs": 1}}),
                runs_dir=folder / "runs").run_dir
    good = run / "checkpoints" / "last.pt"
    data = good.read_bytes()
    state = torch.load(good, weights_only=True)
    other = {**state, "model": {"0.weight": torch.zeros(7, 1, 5, 5), "9.bias": torch.zeros(2)}}
    hand_made = {"model": state["model"], "config": state["config"], "classes": state["classes"],
                 "input_shape": state["input_shape"], "task": state["task"]}
    checkpoints = {
        "payload_zip.pt": lambda p: torch.save({"model": Payload(sentinel), "config": {}}, p),
        "payload_raw.pt": lambda p: p.write_bytes(pickle.dumps({"model": Payload(sentinel)}, protocol=2)),
        "payload_in_config.pt": lambda p: torch.save({**state, "config": {"seed": Payload(sentinel)}}, p),
        "truncated.pt": lambda p: p.write_bytes(data[: len(data) * 2 // 3]),
        "truncated_head.pt": lambda p: p.write_bytes(data[:100]),
        "random.pt": lambda p: p.write_bytes(random.Random(0).randbytes(4096)),
        # a pickle whose first opcode claims 2**62 bytes follow: reading it must not try to allocate them
        "huge_length.pt": lambda p: p.write_bytes(b"\x80\x04\x8e" + (2 ** 62).to_bytes(8, "little") + b"xy"),
        "other_architecture.pt": lambda p: torch.save(other, p),
        "hand_made_without_training_state.pt": lambda p: torch.save(hand_made, p),
    }
    for name, write in checkpoints.items():
        write(folder / name)
    image = folder / "digit.png"
    Image.new("L", (8, 8), 128).save(image)
    return {"folder": folder, "sentinel": sentinel, "image": image, "checkpoints": sorted(checkpoints)}


def hostile_configs(folder: Path, sentinel: Path) -> list[Path]:
    """YAML with python tags, and components named by import paths, in every place a name goes."""
    touch = f"touch {sentinel}"
    texts = {
        "tag_apply": f"seed: !!python/object/apply:os.system [{touch!r}]\n",
        "tag_layer": f"model:\n  layers:\n    - !!python/object/apply:os.system [{touch!r}]\n",
        "tag_name": "optimizer: !!python/name:os.system\n",
        "tag_new": f"data: !!python/object/new:subprocess.Popen [[touch, {str(sentinel)!r}]]\n",
        "tag_module": "loss: !!python/module:os\n",
    }
    places = {
        "layer": lambda name: {"model": {"layers": [{name: {"args": ["touch"]}}, "Flatten"]}},
        "bare_layer": lambda name: {"model": {"layers": [name]}},
        "optimizer": lambda name: {"optimizer": {"name": name, "lr": 0.1}},
        "dataset": lambda name: {"data": {"dataset": {"name": name, "args": [f"touch {sentinel}"]}}},
        "transform": lambda name: {"data": {"transforms": {"eval": [{name: [touch]}]}}},
        "loss": lambda name: {"loss": name},
        "scheduler": lambda name: {"scheduler": {"name": name}},
    }
    paths = []
    for name, text in texts.items():
        path = folder / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
    for place, make in places.items():
        for dotted in IMPORT_PATHS:
            data = {**TINY, **make(dotted)}
            if place in ("layer", "bare_layer"):
                data["model"]["input_shape"] = [1, 8, 8]
            path = folder / f"{place}_{dotted.replace('.', '_')}.yaml"
            path.write_text(yaml.safe_dump(data))
            paths.append(path)
    return paths


def refused(result, command: list[str]) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), (command, result.exception)
    assert result.exit_code == 2, (command, result.output)
    return one_line_error(result.stderr)


def checkpoint_commands(path: Path, image: Path, runs: Path) -> list[list[str]]:
    return [["eval", str(path)], ["predict", str(image), "--model", str(path)],
            ["train", "--resume", str(path), "--quiet"], ["shapes", str(path)]]


def test_hostile_checkpoints_are_refused_by_every_command(corpus):
    runner, checked = CliRunner(), 0
    for name in corpus["checkpoints"]:
        path = corpus["folder"] / name
        for command in checkpoint_commands(path, corpus["image"], corpus["folder"] / "runs"):
            if command[0] not in USABLE_BY.get(name, command[0]):
                continue
            line = refused(runner.invoke(app, command), command)
            assert str(path) in line, (command, line)
            checked += 1
    assert not corpus["sentinel"].exists()
    record("hostile_inputs", checked)


def test_hostile_configs_are_refused_by_every_command(corpus, tmp_path):
    runner, checked = CliRunner(), 0
    for path in hostile_configs(tmp_path, corpus["sentinel"]):
        for command in (["config", str(path)], ["shapes", str(path)],
                        ["train", str(path), "--runs-dir", str(tmp_path / "runs"), "--quiet"]):
            refused(runner.invoke(app, command), command)
            checked += 1
    assert not corpus["sentinel"].exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    record("hostile_inputs", checked)


def test_payloads_do_not_run_in_the_installed_command(corpus, tmp_path):
    configs = hostile_configs(tmp_path, corpus["sentinel"])
    for args in (["train", "--resume", str(corpus["folder"] / "payload_zip.pt")],
                 ["predict", str(corpus["image"]), "--model", str(corpus["folder"] / "payload_raw.pt")],
                 ["train", str(configs[0]), "--runs-dir", str(tmp_path / "runs")],
                 ["shapes", str(configs[1])]):
        done = run_dltool(*args)
        assert done.returncode == 2, done.stderr
        one_line_error(done.stderr)
    assert not corpus["sentinel"].exists()
