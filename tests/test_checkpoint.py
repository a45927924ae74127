import os
import pickle
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from dltool.cli import app
from dltool.errors import CheckpointError
from dltool.store.checkpoint import load_checkpoint, rebuild_model, resolve_checkpoint, save_checkpoint

LINEAR = ["Flatten", {"Linear": {"out_features": "num_classes"}}]
CONV = [{"Conv2d": {"out_channels": 4, "kernel_size": 3}}, "ReLU", "Flatten",
        {"Linear": {"out_features": "num_classes"}}]


class Payload:
    """Unpickling this would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_save_is_atomic_and_round_trips(tmp_path):
    path = save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, tmp_path / "a" / "last.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]
    state = torch.load(path, weights_only=True)
    assert torch.equal(state["model"]["w"], torch.ones(2))


def test_rebuild_model_gives_the_saved_weights(make_checkpoint):
    path = make_checkpoint(CONV)
    model, config = rebuild_model(load_checkpoint(path))
    saved = torch.load(path, weights_only=True)["model"]
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())
    assert config.model.layers[0].name == "Conv2d"
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_weight_mismatch_is_one_line_naming_every_key(make_checkpoint, tmp_path):
    path = make_checkpoint(CONV)
    state = torch.load(path, weights_only=True)
    weights = state["model"]
    del weights["0.bias"]
    weights["9.weight"] = torch.zeros(1)
    weights["3.weight"] = torch.zeros(10, 5)
    save_checkpoint(state, path)
    with pytest.raises(CheckpointError) as info:
        rebuild_model(load_checkpoint(path))
    assert str(info.value) == (
        f"{path}: the weights do not fit the model rebuilt from its config; missing: 0.bias; "
        "unexpected: 9.weight; shape mismatch: 3.weight (checkpoint [10, 5], model [10, 144])")


def test_cuda_saved_checkpoint_loads_on_cpu(make_checkpoint, tmp_path, monkeypatch):
    source = torch.load(make_checkpoint(LINEAR), weights_only=True)
    # torch.save records each storage's device with location_tag: make it record cuda:0, as a GPU run does
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    path = save_checkpoint(source, tmp_path / "gpu.pt")
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    model, _ = rebuild_model(load_checkpoint(path))
    assert next(model.parameters()).device.type == "cpu"


def test_run_folder_resolves_to_best_then_last(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "run") == folder / "last.pt"
    (folder / "best.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path / "run") == folder / "best.pt"
    with pytest.raises(CheckpointError, match="no checkpoints/best.pt or checkpoints/last.pt"):
        resolve_checkpoint(tmp_path)


def _hostile_files(tmp_path, marker):
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.zeros(3)}, "config": {}}, good)
    data = good.read_bytes()
    files = {
        "zip_payload.pt": lambda p: torch.save({"model": Payload(marker), "config": {}}, p),
        "raw_payload.pt": lambda p: p.write_bytes(pickle.dumps({"model": Payload(marker)}, protocol=4)),
        "truncated.pt": lambda p: p.write_bytes(data[: len(data) // 2]),
        "random.pt": lambda p: p.write_bytes(bytes(range(7, 256)) * 20),
        "notes.txt": lambda p: p.write_text("these are my notes\n"),
        "empty.pt": lambda p: p.write_bytes(b""),
        "bare.pt": lambda p: torch.save({"0.weight": torch.zeros(2)}, p),
        "no_config.pt": lambda p: torch.save({"model": {"0.weight": torch.zeros(2)}, "epoch": 3}, p),
    }
    for name, write in files.items():
        write(tmp_path / name)
    return tmp_path


HOSTILE = {
    "zip_payload.pt": "refused to load: unpickling it would import posix.system, which can run code (nothing was "
                      "executed); dltool loads only tensors and plain data",
    "raw_payload.pt": "refused to load: unpickling it would import posix.system, which can run code (nothing was "
                      "executed); dltool loads only tensors and plain data",
    "truncated.pt": "damaged or truncated checkpoint (failed finding central directory); save or copy it again",
    "random.pt": "not a checkpoint: the file was not written by torch.save",
    "notes.txt": "not a checkpoint: the file was not written by torch.save",
    "empty.pt": "not a checkpoint: the file is empty or ends too early",
    "bare.pt": "not a dltool checkpoint: it holds a bare state_dict (weights only); dltool needs the checkpoint "
               "`dltool train` writes (it stores the model config)",
    "no_config.pt": "not a dltool checkpoint: it holds a dict without config; dltool needs the checkpoint "
                    "`dltool train` writes (it stores the model config)",
}


@pytest.mark.skipif(os.name != "posix", reason="the payload uses os.system's posix name")
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_files_are_refused_with_one_line(tmp_path, name):
    marker = tmp_path / "pwned"
    _hostile_files(tmp_path, marker)
    path = tmp_path / name
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: {HOSTILE[name]}"
    for command in (["eval", str(path)], ["predict", str(path), "--model", str(path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines() == [f"error: {path}: {HOSTILE[name]}"]
    assert not marker.exists()


def test_payload_is_not_run_by_the_installed_command(tmp_path):
    marker = tmp_path / "pwned"
    _hostile_files(tmp_path, marker)
    command = [os.path.join(os.path.dirname(sys.executable), "dltool"), "eval", str(tmp_path / "zip_payload.pt")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not marker.exists()
