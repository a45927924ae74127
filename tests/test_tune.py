"""dltool tune on the embedded digits: tiny trials (1-2 epochs of the quickstart CNN), a handful each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dltool.cli import app

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
ROOT = Path(__file__).resolve().parent.parent


def write_config(tmp_path: Path, tune: dict, epochs: int = 2, lr: float = 1e-6, name: str = "search") -> Path:
    """The quickstart cut to `epochs`, starting from a hopeless learning rate, with `tune`."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "base": str(QUICKSTART), "optimizer": {"name": "Adam", "lr": lr},
        "train": {"epochs": epochs, "device": "cpu", "histograms": False}, "tune": tune}))
    return path


LR_SPACE = {"sampler": {"name": "TPESampler", "seed": 0}, "pruner": None,
            "space": {"optimizer.lr": {"log": [3.0e-3, 3.0e-2]}}}


def run_tune(config: Path, runs: Path, *args: str):
    return CliRunner().invoke(app, ["tune", str(config), "--runs-dir", str(runs), *args])


def study_trials(folder: Path) -> list:
    import optuna

    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")
    return study.get_trials()


def test_search_beats_a_bad_learning_rate_and_a_rerun_continues(tmp_path):
    from dltool.training.train import train

    config = write_config(tmp_path, LR_SPACE)
    bad = train(config, runs_dir=tmp_path / "plain", name="bad").summary["best_value"]
    runs = tmp_path / "runs"
    result = run_tune(config, runs, "--trials", "4", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["study"] == "search" and report["metric"] == "val_accuracy" and report["direction"] == "maximize"
    assert report["storage"] == f"sqlite:///{(runs / 'search' / 'study.db').resolve()}"
    assert [t["number"] for t in report["trials"]] == [0, 1, 2, 3]
    assert all(t["state"] == "COMPLETE" for t in report["trials"])
    assert report["best_value"] > bad + 0.3  # 2 epochs at lr 1e-6 barely move off chance
    best_lr = report["best_params"]["optimizer.lr"]
    assert 3e-3 <= best_lr <= 3e-2
    folder = runs / "search"
    assert sorted(p.name for p in (folder / "trials").iterdir()) == ["000", "001", "002", "003"]
    assert all((folder / "trials" / n / "summary.json").exists() for n in ("000", "003"))
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert "tune" not in best and best["optimizer"] == {"Adam": {"lr": best_lr}}
    lines = (folder / "trials.csv").read_text().splitlines()
    assert lines[0] == "number,state,val_accuracy,optimizer.lr,seconds,run_dir" and len(lines) == 5

    again = run_tune(config, runs, "--trials", "6", "--quiet")  # the study holds 4: two more
    assert again.exit_code == 0, again.output
    assert [t.number for t in study_trials(folder)] == [0, 1, 2, 3, 4, 5]
    assert sorted(p.name for p in (folder / "trials").iterdir()) == ["000", "001", "002", "003", "004", "005"]
    done = run_tune(config, runs, "--trials", "3", "--quiet")  # already there: no trial runs
    assert done.exit_code == 0 and len(study_trials(folder)) == 6


def test_pruning_stops_a_hopeless_trial_and_keeps_its_folder(tmp_path):
    tune = {"pruner": {"name": "ThresholdPruner", "lower": 0.5},
            "space": {"optimizer.lr": {"choice": [1.0e-7]}}}
    config = write_config(tmp_path, tune, epochs=4)
    result = run_tune(config, tmp_path / "runs", "--trials", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [t["state"] for t in report["trials"]] == ["PRUNED"] and report["best_trial"] is None
    run = tmp_path / "runs" / "search" / "trials" / "000"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["epochs_done"] == 1  # stopped after its first epoch of 4
    assert (run / "checkpoints" / "last.pt").exists() and (run / "curves.png").exists()
    assert len((run / "metrics.csv").read_text().splitlines()) == 2
    assert not (tmp_path / "runs" / "search" / "best.yaml").exists()
    assert "no trial completed yet: no best.yaml" in result.stderr


def test_workers_share_one_study_and_stop_at_exactly_the_trials_asked(tmp_path):
    config = write_config(tmp_path, {**LR_SPACE, "sampler": "RandomSampler"}, epochs=3)
    runs = tmp_path / "runs"
    result = run_tune(config, runs, "--trials", "6", "--workers", "2")
    assert result.exit_code == 0, result.output
    trials = study_trials(runs / "search")
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 6  # never 7: the last place goes to one process
    assert all(t.state.name == "PRUNED" and "run_dir" not in t.user_attrs for t in trials if t not in counted)
    folders = [t.user_attrs["run_dir"] for t in counted]
    assert sorted(Path(f).name for f in folders) == sorted(p.name for p in (runs / "search" / "trials").iterdir())
    assert [Path(f).name for f in folders] == [f"{t.number:03d}" for t in counted]  # never name-2: no folder twice
    assert len({t.user_attrs["worker"] for t in counted}) == 2  # both processes ran trials
    assert (runs / "search" / "worker-1.log").exists()
    for trial in counted:  # the progress of the first process names every trial, the helper's too
        assert f"trial {trial.number} COMPLETE val_accuracy" in result.stderr
    assert "[6/6]" in result.stderr and "[7/6]" not in result.stderr
    assert len((runs / "search" / "trials.csv").read_text().splitlines()) == 7


@pytest.mark.slow  # two fresh processes (~5 s of imports each) and a wait for the heartbeat: ~35 s
def test_kill_9_then_rerun_finishes_the_study(tmp_path):
    config = write_config(tmp_path, {**LR_SPACE, "sampler": "RandomSampler"}, epochs=3)
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "dltool", "tune", str(config), "--trials", "2", "--runs-dir", str(runs),
               "--heartbeat", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = runs / "search" / "trials" / "000" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not metrics.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)  # mid-trial: after its first epoch, before its last
    process.wait()
    assert [t.state.name for t in study_trials(runs / "search")] == ["RUNNING"]
    time.sleep(2.5)  # past the grace period of two heartbeats
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = study_trials(runs / "search")
    assert trials[0].state.name == "FAIL"
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert trials[1].params == trials[0].params  # the killed trial was retried with its values


BAD_SPACES = [
    ({"model.layers.99.Dropout": {"float": [0.0, 0.5]}},
     "tune.space.model.layers.99.Dropout: cannot be searched: model.layers.99.Dropout=0.0: "
     "model.layers.99: index 99 is out of range (the list has 13 items)"),
    ({"data.batch_size": {"choice": []}}, "tune.space.data.batch_size: choice: needs a non-empty list of values; got []"),
    ({"optimizer.lr": {"log": [0, 0.1]}},
     "tune.space.optimizer.lr: log: range must be above 0 (it is searched on a log scale); got [0, 0.1]"),
    ({"optimizer.lr": {"float": [0.1, 0.01]}}, "tune.space.optimizer.lr: float: low must be below high; got [0.1, 0.01]"),
    ({"train.epochs": {"int": [3, 3]}}, "tune.space.train.epochs: int: low must be below high; got [3, 3]"),
    ({"optimizer.lr": {"uniform": [0.1, 1]}}, "tune.space.optimizer.lr: must be one of {log: [low, high]}"),
]


@pytest.mark.parametrize("space,message", BAD_SPACES)
def test_bad_space_entries_are_located_before_any_trial(tmp_path, space, message):
    config = write_config(tmp_path, {"space": space})
    result = run_tune(config, tmp_path / "runs", "--trials", "2")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: {config}:") and message in line, line
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "search" / "trials").exists()


def test_tune_needs_a_tune_section_and_known_optuna_names(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"base": str(QUICKSTART)}))
    result = run_tune(plain, tmp_path / "runs", "--trials", "1")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {plain}: no tune: section; add one")
    config = write_config(tmp_path, {"sampler": "TPESamplr", "space": LR_SPACE["space"]})
    result = run_tune(config, tmp_path / "runs", "--trials", "1")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {config}:")
    assert "search.yaml:10:3: tune.sampler: unknown sampler 'TPESamplr'; did you mean TPESampler or " in result.stderr
    config = write_config(tmp_path, {"metric": "val_acc", "space": LR_SPACE["space"]})
    result = run_tune(config, tmp_path / "runs", "--trials", "1")
    assert result.exit_code == 2 and "tune.metric: 'val_acc' is not a metric a run measures" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before the study's folder is made


def test_train_ignores_the_tune_section(tmp_path):
    from dltool.config.load import load_config

    config = load_config(write_config(tmp_path, LR_SPACE))
    assert config.tune["space"] == LR_SPACE["space"]
    assert "tune" not in load_config(QUICKSTART).to_data()


@pytest.mark.parametrize("name", ["../escaped", "/tmp/dltool-abs-study", "..", "a/b"])
@pytest.mark.parametrize("command", ["tune", "train"])
def test_every_command_taking_name_keeps_it_inside_runs_dir(tmp_path, command, name):
    config = write_config(tmp_path, LR_SPACE)
    result = CliRunner().invoke(app, [command, str(config), "--runs-dir", str(tmp_path / "runs"), "--name", name,
                                      *(["--trials", "1"] if command == "tune" else [])])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: --name: {name!r} is not a folder name (no slashes, not . or ..); "
                                     "it names a folder inside --runs-dir")
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/dltool-abs-study").exists()


def test_trials_below_one_is_one_line(tmp_path):
    result = run_tune(write_config(tmp_path, LR_SPACE), tmp_path / "runs", "--trials", "0")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: --trials: must be 1 or more (finished trials the study should hold); got 0"
