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
    trials = study_trials(folder)
    assert [t.number for t in trials] == [0, 1, 2, 3, 4, 5]
    first = [t.params["optimizer.lr"] for t in trials[:4]]
    assert not {t.params["optimizer.lr"] for t in trials[4:]} & set(first)  # new points, not the seed's first ones
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
    config = write_config(tmp_path, LR_SPACE, epochs=3)  # a seeded sampler
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
    assert len({t.params["optimizer.lr"] for t in counted}) == 6  # each with its own seed: no point drawn twice
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
    ({"optimizer.learning_rate": {"log": [1.0e-4, 1.0e-1]}},
     "search.yaml:11:5: tune.space.optimizer.learning_rate: cannot be searched: optimizer.learning_rate=0.0001: "
     "optimizer: Adam: unknown argument 'learning_rate' (allowed: params, lr, betas,"),
    ({"model.layers.2.Dropout": {"float": [0.0, 0.5]}},
     "search.yaml:11:5: tune.space.model.layers.2.Dropout: cannot be searched: model.layers.2.Dropout=0.0: "
     "model.layers.2: ReLU: unknown argument 'Dropout' (allowed: inplace)"),
    ({"model.layers.11.Dropout": {"float": [0.0, 1.5]}},
     "tune.space.model.layers.11.Dropout: cannot be searched: model.layers.11.Dropout=1.5: model.layers.11: "
     "Dropout: dropout probability has to be between 0 and 1, but got 1.5"),
    ({"data.batch_size": {"choice": [32, 0, 64]}},
     "tune.space.data.batch_size: cannot be searched: data.batch_size=0: data.batch_size: must be an integer >= 1"),
]


@pytest.mark.parametrize("space,message", BAD_SPACES)
def test_bad_space_entries_are_located_before_any_trial(tmp_path, space, message):
    config = write_config(tmp_path, {"space": space})
    result = run_tune(config, tmp_path / "runs", "--trials", "2")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: {config}:") and message in line, line
    assert len(result.stderr.strip().splitlines()) == 1
    assert "set on the command line" not in line and str(QUICKSTART) not in line  # the tune file is to blame
    assert not (tmp_path / "runs").exists()  # nothing created: no folder, no study


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


def tune_process(config: Path, runs: Path, *args: str, **popen) -> subprocess.Popen:
    """`dltool tune CONFIG --runs-dir RUNS ARGS` as its own process (stderr captured as text)."""
    command = [sys.executable, "-m", "dltool", "tune", str(config), "--runs-dir", str(runs), *args]
    return subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, **popen)


def load(url: str, name: str = "search") -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials()


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
import optuna
from dltool.experiments.storage import open_study, resolve
url, go = resolve(sys.argv[1]), Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
open_study(optuna, url, "s", "maximize", optuna.pruners.NopPruner(), 10, 2, sys.argv[1])
"""


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_many_processes_open_a_new_study_at_the_same_moment(tmp_path, request, database):
    url = request.getfixturevalue("pg_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, url, str(go)], env=env, text=True,
                                  stderr=subprocess.PIPE) for _ in range(6)]
    time.sleep(3)  # every process waits at the line, its imports done
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, "\n".join(errors)
    import optuna

    assert optuna.get_all_study_names(storage=url) == ["s"]


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_tune_commands_started_together_on_a_new_study_share_it(tmp_path, request, database):
    config = write_config(tmp_path, {**LR_SPACE, "sampler": "RandomSampler"}, epochs=2)
    runs = tmp_path / "runs"
    url = request.getfixturevalue("pg_url") if database == "postgresql" else None
    storage = ["--storage", url] if url else []
    processes = [tune_process(config, runs, "--trials", "4", "--name", "search", "--quiet", *storage)
                 for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], "\n".join(errors)
    trials = load(url or f"sqlite:///{runs / 'search' / 'study.db'}")
    counted = [t for t in trials if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in counted] == ["COMPLETE"] * 4
    assert len({t.user_attrs["worker"] for t in counted}) == 2  # both started, both ran trials
    assert all(Path(t.user_attrs["run_dir"], "summary.json").exists() for t in counted)


def test_kill_9_one_machine_mid_trial_then_restart_it_on_postgresql(tmp_path, pg_url):
    config = write_config(tmp_path, {**LR_SPACE, "sampler": "RandomSampler"}, epochs=3)
    machines = [tmp_path / "a", tmp_path / "b"]  # each "machine" keeps its own run folders
    args = ("--trials", "3", "--storage", pg_url, "--name", "search", "--heartbeat", "1", "--quiet")
    victim = tune_process(config, machines[0], *args)
    metrics = machines[0] / "search" / "trials"
    deadline = time.monotonic() + 120
    while not list(metrics.glob("*/metrics.csv")) and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    other = tune_process(config, machines[1], *args)
    os.kill(victim.pid, signal.SIGKILL)  # after a trial's first epoch, before its last
    victim.wait()
    assert "RUNNING" in [t.state.name for t in load(pg_url)]
    again = tune_process(config, machines[0], *args)
    errors = [p.communicate(timeout=300)[1] for p in (other, again)]
    assert [other.returncode, again.returncode] == [0, 0], "\n".join(errors)
    trials = [t for t in load(pg_url) if not t.user_attrs.get("surplus")]
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states and "FAIL" in states
    for trial in trials:
        if trial.state.name == "COMPLETE":
            assert Path(trial.user_attrs["run_dir"], "summary.json").exists()  # on the machine that ran it
    killed = next(t for t in trials if t.state.name == "FAIL")
    assert any(t.params == killed.params for t in trials if t.state.name == "COMPLETE")  # retried with its values


def test_a_missing_database_driver_names_the_extra(tmp_path, monkeypatch):
    config = write_config(tmp_path, LR_SPACE)
    for module in ("psycopg", "pymysql"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    for url, extra in [("postgresql://me:pw@db.example/study", "postgres"), ("mysql://me@db.example/study", "mysql")]:
        result = run_tune(config, tmp_path / "runs", "--trials", "1", "--storage", url)
        assert result.exit_code == 2, result.output
        shown = url.replace(":pw@", ":***@")
        driver = "psycopg" if extra == "postgres" else "pymysql"
        assert result.stderr.strip() == (f"error: --storage: {shown} needs the {driver} driver, which is not "
                                         f'installed: pip install "dltool[{extra}]"')
    assert not (tmp_path / "runs").exists()


def test_storage_secrets_never_show_and_an_in_memory_study_is_refused(tmp_path):
    pytest.importorskip("psycopg")
    from pg_server import free_port

    config = write_config(tmp_path, LR_SPACE)
    port = free_port()
    url = f"postgresql://me:urlsecret@127.0.0.1:{port}/study?password=querysecret&sslmode=disable"
    result = run_tune(config, tmp_path / "runs", "--trials", "1", "--storage", url)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert line.startswith(f"error: --storage: cannot open postgresql://me:***@127.0.0.1:{port}/study"
                           "?password=***&sslmode=disable: ") and len(line.splitlines()) == 1, line
    assert "secret" not in result.output
    for memory in ("sqlite:///:memory:", "sqlite://"):
        result = run_tune(config, tmp_path / "runs", "--trials", "1", "--storage", memory)
        assert result.exit_code == 2
        assert result.stderr.strip() == (
            f"error: --storage: {memory} is an in-memory database, which each process keeps to itself and "
            "loses when it ends; give a file (sqlite:///study.db) or leave --storage out (runs/NAME/study.db)")
    assert not (tmp_path / "runs").exists()


def test_a_study_on_a_nearly_full_disk_ends_with_one_line(tmp_path, tmpfs):
    config = write_config(tmp_path, {**LR_SPACE, "pruner": None})
    runs = tmpfs("400k") / "runs"
    result = run_tune(config, runs, "--trials", "3")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "StorageInternalError" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: tune: the study's database sqlite:///{runs.resolve() / 'search' / 'study.db'} refused "
                      "a write: database or disk is full; free space there (or reach the server again) and run the "
                      "same dltool tune command to go on"]


def test_a_changed_space_is_refused_before_any_trial(tmp_path):
    space = {"pruner": None, "space": {"data.batch_size": {"choice": [16, 32]}}}
    config = write_config(tmp_path, space, epochs=1)
    runs = tmp_path / "runs"
    assert run_tune(config, runs, "--trials", "1", "--quiet").exit_code == 0
    changed = write_config(tmp_path, {**space, "space": {"data.batch_size": {"choice": [16, 32, 64]}}}, epochs=1)
    result = run_tune(changed, runs, "--trials", "2")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (
        f"error: {changed}:12:5: tune.space.data.batch_size: changed since study 'search' began: "
        "{choice: [16, 32]} -> {choice: [16, 32, 64]}; a new --name starts a new study (or put back what study "
        "'search' began with)")
    assert len(study_trials(runs / "search")) == 1  # no trial added, failed or not
    renamed = write_config(tmp_path, {**space, "space": {"data.batch_size": {"choice": [32]}, "optimizer.lr":
                                                         {"log": [1.0e-3, 1.0e-2]}}}, epochs=1)
    result = run_tune(renamed, runs, "--trials", "2")
    assert result.exit_code == 2 and "tune.space.data.batch_size: changed since study 'search' began: " \
        "{choice: [16, 32]} -> {choice: [32]}" in result.stderr
    assert len(study_trials(runs / "search")) == 1


def wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("target", ["group", "main"])
def test_ctrl_c_writes_what_finished_and_says_how_to_go_on(tmp_path, target):
    config = write_config(tmp_path, {**LR_SPACE, "sampler": "RandomSampler", "pruner": None}, epochs=4)
    runs = tmp_path / "runs"
    process = tune_process(config, runs, "--trials", "6", "--workers", "2", start_new_session=True)
    trials = runs / "search" / "trials"

    def one_done_and_another_running() -> bool:
        done = [p for p in trials.glob("*/summary.json") if json.loads(p.read_text())["status"] == "finished"]
        return bool(done) and len(list(trials.glob("*/metrics.csv"))) > len(done)

    wait_for(one_done_and_another_running, process)
    if target == "group":  # Ctrl-C in a terminal: the signal goes to every process of the command
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr
    folder = runs / "search"
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGINT: the study holds ") and last.endswith(
        f"wrote {folder / 'best.yaml'} and {folder / 'trials.csv'}; run the same dltool tune command again to go "
        "on with the study"), stderr
    rows = (folder / "trials.csv").read_text().splitlines()[1:]
    assert any(",COMPLETE," in row for row in rows) and yaml.safe_load((folder / "best.yaml").read_text())
    states = [t.state.name for t in study_trials(folder)]
    assert "RUNNING" not in states  # the helper stopped too, its trial marked failed
    assert states.count("COMPLETE") == sum(",COMPLETE," in row for row in rows)
