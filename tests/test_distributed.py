"""Data-parallel training on CPU with gloo: `train --nproc 2` equals one process with twice the batch,
two torchrun launchers on loopback, a stop on one rank stops all, NaN stops all, sharding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dltool.cli import app
from dltool.data.sampler import EpochSampler
from dltool.training.distributed import FollowerRunDir, state_digest
from dltool.training.launch import exit_code, free_port, launcher_args
from dltool.training.run_folder import RunDir
from dltool.training.train import train

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
# 1,438 train samples (an even number: rank r's batch k of B/2 is samples r, r+2, ... of the
# one-process batch k of B, the short last batch included) and 359 validation samples (odd: one
# rank validates one sample more); no BatchNorm, dropout or random augmentation
LINEAR = {
    "seed": 0,
    "data": {"dataset": "Digits", "val_split": 0.2, "batch_size": 32, "shuffle": False, "cache": "ram",
             "transforms": {"train": ["ToTensor"], "eval": ["ToTensor"]}},
    "model": {"layers": ["Flatten", {"Linear": {"out_features": 32}}, "ReLU", {"Linear": {"out_features": "num_classes"}}]},
    "optimizer": {"name": "SGD", "lr": 0.1, "momentum": 0.9},
    "train": {"epochs": 2, "device": "cpu", "threads": 1, "histograms": False},
}


def write_config(folder: Path, dropout: float | None = None, **train_changes) -> Path:
    data = yaml.safe_load(yaml.safe_dump(LINEAR))
    data["train"].update(train_changes)
    if dropout is not None:
        data["model"]["layers"].insert(3, {"Dropout": dropout})
    path = folder / "linear.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def dltool(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dltool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def last_model(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_processes_with_half_the_batch_match_one_process(tmp_path):
    config = write_config(tmp_path)
    done = dltool("train", str(config), "--nproc", "2", "--runs-dir", "runs", "--name", "ddp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    single = train(config, runs_dir=tmp_path / "single", name="one", overrides=["data.batch_size=64"])

    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["ddp"]  # one run folder, written by rank 0
    run = tmp_path / "runs" / "ddp"
    ddp_weights, one_weights = last_model(run), last_model(single.run_dir)
    assert list(ddp_weights) == list(one_weights) == ["1.weight", "1.bias", "3.weight", "3.bias"]  # no "module."
    for key in one_weights:
        torch.testing.assert_close(ddp_weights[key], one_weights[key], atol=1e-5, rtol=0)
    ddp = summary(run)
    assert ddp["world_size"] == 2 and ddp["global_batch_size"] == 64 and ddp["steps"] == single.summary["steps"]
    assert single.summary["world_size"] == 1 and single.summary["global_batch_size"] == 64
    # both ranks hash their own weights at the end; rank 0's are the checkpoint's
    assert ddp["replica_sha256"] == [state_digest(ddp_weights)] * 2
    # every validation sample counted once: the accuracy is k/359 and equals the single process's
    assert ddp["val_samples"] == 359
    accuracy = ddp["final"]["val_accuracy"]
    assert abs(accuracy * 359 - round(accuracy * 359)) < 1e-9
    assert accuracy == single.summary["final"]["val_accuracy"]
    assert abs(ddp["final"]["val_loss"] - single.summary["final"]["val_loss"]) < 1e-5
    assert done.stderr.count("epoch 2/2") == 1  # progress from rank 0 only


def test_two_launchers_on_loopback_train_the_quickstart(tmp_path):
    port = str(free_port())
    launchers = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                          "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", port,
                          "-m", "dltool", "train", str(QUICKSTART), "train.epochs=1", "train.device=cpu",
                          "data.cache=none", "--runs-dir", "runs", "--name", "quick", "--quiet"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    try:
        outputs = [launcher.communicate(timeout=120)[0] for launcher in launchers]
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                launcher.kill()
    assert [launcher.returncode for launcher in launchers] == [0, 0], outputs
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["quick"]
    result = summary(tmp_path / "runs" / "quick")
    assert (result["status"], result["epochs_done"], result["world_size"]) == ("finished", 1, 2)
    assert result["global_batch_size"] == 64 and result["val_samples"] == 359
    assert len(set(result["replica_sha256"])) == 1  # BatchNorm statistics too: rank 0's are shared
    assert result["final"]["val_accuracy"] > 0.5


def test_validation_shards_cover_every_sample_once_and_training_shards_are_even():
    targets = list(range(7))
    val = [EpochSampler(targets, shuffle=False, balanced=False, seed=0, rank=r, world_size=3, with_seeds=False,
                        pad=False) for r in range(3)]
    assert sorted(i for s in val for i in s.order()) == targets
    assert [len(s) for s in val] == [3, 2, 2] == [len(s.order()) for s in val]
    train_shards = [EpochSampler(targets, shuffle=True, balanced=False, seed=0, rank=r, world_size=3) for r in range(3)]
    for sampler in train_shards:
        sampler.set_epoch(1)
    items = [list(s) for s in train_shards]
    assert [len(i) for i in items] == [3, 3, 3] == [len(s) for s in train_shards]
    assert set(i for shard in items for i, _ in shard) == set(targets)
    seeds = [seed for shard in items for _, seed in shard]
    assert len(set(seeds)) == len(seeds)  # each rank augments its samples with its own seeds


def test_single_process_sampler_is_unchanged_by_sharding_support():
    one = EpochSampler(list(range(10)), shuffle=True, balanced=False, seed=3)
    one.set_epoch(2)
    whole = list(one)
    two = [EpochSampler(list(range(10)), shuffle=True, balanced=False, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for sampler in two:
        sampler.set_epoch(2)
    assert list(two[0]) == whole[0::2] and list(two[1]) == whole[1::2]


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_follower_run_dir_writes_nothing(tmp_path):
    """Rank 0 created the folder, holds it and wrote its files; another rank's every write and folder
    operation leaves them byte for byte as they are."""
    main = RunDir.take(tmp_path / "runs", "x")
    main.write_config({"seed": 0})
    main.append_metrics({"epoch": 1, "lr": 0.1})
    main.write_summary({"status": "running"})
    main.save({"model": {"w": torch.ones(2)}, "config": {"seed": 0}, "epoch": 1}, best=True)
    before = files_in(main.path)
    run = FollowerRunDir(main.path, main.columns)
    assert run.hold() is run  # rank 0 holds the folder's lock: taking it here would raise RunBusy
    run.write_config({"seed": 1})
    run.write_bad_files([("a.png", "truncated")])
    run.append_metrics({"epoch": 2, "lr": 0.05})
    run.keep_metrics_until(0)
    run.write_summary({"status": "finished"})
    run.save({"model": {"w": torch.zeros(2)}, "config": {"seed": 1}, "epoch": 2}, best=True)
    run.release()
    run.abandon()
    assert files_in(main.path) == before
    assert sorted(before) == [".lock", "checkpoints/best.pt", "checkpoints/last.pt", "config.yaml", "metrics.csv",
                              "summary.json"]
    main.release()


def test_launcher_arguments_and_exit_codes():
    assert launcher_args(2, ["cfg.yaml", "train.epochs=1"], 1234) == [
        "--nnodes", "1", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "1234",
        "-m", "dltool", "train", "cfg.yaml", "train.epochs=1"]

    def failures(*codes):
        return {rank: SimpleNamespace(exitcode=code) for rank, code in enumerate(codes)}

    assert exit_code(failures(130, 130)) == 130
    assert exit_code(failures(1, -15)) == 1  # rank 0 failed; the launcher stopped rank 1
    assert exit_code(failures(2, 2)) == 2
    assert exit_code(failures(1, 130)) == 1  # a real failure outranks the interruption it caused
    assert exit_code(failures(-9)) == 1


def test_nproc_refuses_folds_and_reports_a_bad_config_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    folds = CliRunner().invoke(app, ["train", str(config), "--nproc", "2", "--folds", "3"])
    assert folds.exit_code == 2
    assert "--folds trains its folds one after another in one process; not with --nproc" in folds.stderr
    bad = CliRunner().invoke(app, ["train", str(config), "optimizer.lr=-1", "--nproc", "2"])
    assert bad.exit_code == 2 and bad.stderr.count("error:") == 1 and "optimizer.lr" in bad.stderr
    assert not (tmp_path / "runs").exists()


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    """The pid of the worker of `launcher` that torchrun gave RANK=`rank`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == launcher.pid and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no worker with RANK={rank}")


def test_sigterm_on_one_rank_stops_all_then_resume_matches_an_uninterrupted_run(tmp_path):
    config = write_config(tmp_path, dropout=0.2, epochs=400)  # each rank restores its own dropout RNG
    launcher = subprocess.Popen([sys.executable, "-m", "dltool", "train", str(config), "--nproc", "2",
                                 "--runs-dir", "runs", "--name", "stopped", "--quiet"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "stopped"
    try:
        rank1 = _rank_pid(launcher, 1)
        deadline = time.monotonic() + 60
        while not (run / "metrics.csv").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(rank1, signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 130, stderr
    assert "interrupted by a stop request on another process" in stderr  # rank 0, told by rank 1
    assert stderr.count("interrupted by") == 1  # rank 1 stopped too, without saying it again
    assert summary(run)["status"] == "interrupted"
    loop = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["loop"]
    epochs = loop["epoch"] + (2 if loop["batch"] else 1)
    resumed = dltool("train", "--resume", str(run), f"train.epochs={epochs}", "--nproc", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    straight = dltool("train", str(config), f"train.epochs={epochs}", "--nproc", "2", "--runs-dir", "runs",
                      "--name", "straight", "--quiet", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    assert summary(run)["replica_sha256"] == summary(tmp_path / "runs" / "straight")["replica_sha256"]


@pytest.mark.slow
def test_a_non_finite_loss_stops_every_rank_with_exit_1(tmp_path):
    config = write_config(tmp_path)
    done = dltool("train", str(config), "optimizer.lr=1000000000000", "--nproc", "2", "--runs-dir", "runs",
                  "--name", "nan", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("error: the loss became nan at epoch 1") == 1  # both ranks stop; rank 0 says why
    result = summary(tmp_path / "runs" / "nan")
    assert result["status"] == "failed" and "the loss became nan" in result["error"]


@pytest.mark.slow
def test_accumulated_micro_batches_across_two_processes_match_one_process(tmp_path):
    config = write_config(tmp_path, accumulate=2)  # micro-batches average locally, then across ranks
    done = dltool("train", str(config), "data.batch_size=16", "--nproc", "2", "--runs-dir", "runs", "--name", "ddp",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    single = train(config, runs_dir=tmp_path / "single", name="one")
    ddp_weights, one_weights = last_model(tmp_path / "runs" / "ddp"), last_model(single.run_dir)
    for key in one_weights:
        torch.testing.assert_close(ddp_weights[key], one_weights[key], atol=1e-5, rtol=0)
    assert summary(tmp_path / "runs" / "ddp")["global_batch_size"] == single.summary["global_batch_size"] == 64


def test_an_error_all_ranks_raised_together_is_printed_by_rank_0_only(capsys):
    import typer

    from dltool.cli.commands import user_errors
    from dltool.errors import Interrupted, RunFailed

    shared = Interrupted("interrupted by SIGTERM at epoch 2, batch 3")
    shared.everywhere = True
    own = RunFailed("cuda:1 ran out of memory at epoch 1, step 1")  # this rank's alone: every rank says its own
    # rank 0 says it and ends with its code; the others end quietly with 0, so the launcher lets rank 0 finish
    for error, main_process, printed, code in [(shared, True, True, 130), (shared, False, False, 0),
                                               (own, False, True, 1)]:
        with pytest.raises(typer.Exit) as exited, user_errors(main_process):
            raise error
        assert exited.value.exit_code == code
        assert (str(error) in capsys.readouterr().err) == printed
