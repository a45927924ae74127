"""`dltool tune`: an Optuna study over the config's `tune:` section, each trial an ordinary run.

    runs/NAME/study.db          the study (SQLite) unless --storage names another database
    runs/NAME/trials/NNN/       one full run folder per trial (NNN: the trial's number)
    runs/NAME/best.yaml         the config with the best values, the tune: section removed
    runs/NAME/trials.csv        one row per trial: number, state, value, params, run folder

Several processes (--workers, or the same command on other machines with one --storage URL)
share the study: Optuna hands out trial numbers, so no two trials share a folder. A trial whose
process died stops sending heartbeats, is marked failed and retried with the same values.
"""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from dltool.config.load import dump_yaml, load_config
from dltool.config.spec import located
from dltool.errors import ConfigError, Interrupted, RunFailed, first_line
from dltool.experiments.space import Component, Param, TuneSpec, read_tune
from dltool.store.writing import folder_name, write_atomic, writing
from dltool.training.callbacks import Callback
from dltool.training.loggers import child_runs_of, finish_study_run, study_run

FINISHED = ("COMPLETE", "PRUNED")
MAX_FAILED_IN_A_ROW = 5
RETRIES = 2


@dataclass
class TuneResult:
    """What `tune` leaves: the study's place, its best trial, and every trial as plain data."""

    study: str
    storage: str
    metric: str
    direction: str
    best_value: float | None
    best_params: dict
    best_trial: int | None
    trials: list[dict] = field(default_factory=list)
    folder: Path | None = None

    def to_json(self) -> dict:
        return {"study": self.study, "storage": self.storage, "metric": self.metric, "direction": self.direction,
                "best_value": self.best_value, "best_params": self.best_params, "best_trial": self.best_trial,
                "trials": self.trials}


class TrialReporter(Callback):
    """Feeds the metric of every epoch to the trial (and so to the pruner); asks the run to stop
    when the pruner says the trial cannot win."""

    def __init__(self, trial: Any, metric: str, direction: str):
        self.trial, self.metric, self.direction = trial, metric, direction
        self.best: float | None = None
        self.pruned_at: int | None = None

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        value = row.get(self.metric)
        if value is None:
            measured = ", ".join(k for k in row if k.startswith(("train_", "val_")))
            raise ConfigError(f"tune.metric: {self.metric!r} is not measured in these runs; they measure {measured}")
        better = max if self.direction == "maximize" else min
        self.best = value if self.best is None else better(self.best, value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch

    def stop_reason(self) -> str | None:
        return "pruned" if self.pruned_at is not None else None


def default_storage(runs_dir: str | Path, name: str) -> str:
    return f"sqlite:///{(Path(runs_dir) / name / 'study.db').resolve()}"


def tune(config_path: str | Path, trials: int, *, storage: str | None = None, name: str | None = None,
         runs_dir: str | Path = "runs", overrides: Sequence[str] = (), workers: int = 1, heartbeat: int = 10,
         on_start: Callable[[int], None] | None = None,
         on_trial: Callable[[dict, int, str], None] | None = None) -> TuneResult:
    """Run trials until the study holds `trials` finished (complete or pruned) ones, then write
    best.yaml and trials.csv.

    Args:
        config_path: the YAML config with a `tune:` section.
        trials: finished trials the study should hold; a rerun continues towards it.
        storage: an Optuna RDB URL (sqlite:///..., postgresql://...); default runs_dir/name/study.db.
        name: the study's name and folder (default: the config's file name).
        runs_dir: where the study's folder goes.
        overrides: KEY=VALUE applied to every trial (before the trial's own values).
        workers: processes on this machine: this one and workers - 1 `dltool tune ... --quiet` subprocesses.
        heartbeat: seconds between a trial's heartbeats; a trial silent for twice that is failed and retried.
        on_start: called with the study's finished count once it is open and the config checked.
        on_trial: called with each trial's row (see `trial_row`), the study's finished count and the metric
            when a trial this process ran ends.

    Raises:
        ConfigError: no or bad `tune:` section, a bad storage URL, --trials below 1, a --name that is
            no plain folder name; before any trial runs.
        RunFailed: MAX_FAILED_IN_A_ROW trials in a row failed.
        Interrupted: a signal stopped the running trial (marked failed; a rerun goes on with the study).
    """
    if trials < 1:
        raise ConfigError(f"--trials: must be 1 or more (finished trials the study should hold); got {trials}")
    optuna = _optuna()
    base = load_config(config_path, overrides)
    spec = read_tune(base, overrides)
    name = folder_name(name if name is not None else base.stem)
    sampler = _build(optuna.samplers, spec.sampler, "tune.sampler", base.marks)
    pruner = _build(optuna.pruners, spec.pruner, "tune.pruner", base.marks) if spec.pruner else optuna.pruners.NopPruner()
    folder = Path(runs_dir) / name
    with writing(folder, "choose a writable --runs-dir"):
        folder.mkdir(parents=True, exist_ok=True)
    url = storage or default_storage(runs_dir, name)
    study = _study(optuna, spec.direction, sampler, pruner, name, url, heartbeat)
    tracked = study_run(base, Path(runs_dir), study)  # train.loggers: mlflow: trials are its child runs
    started: list[int] = []  # the numbers of the trials this process ran
    objective = _objective(optuna, spec, Path(config_path), overrides, folder / "trials", started)
    if on_start is not None:
        on_start(finished_count(study))
    argv = [sys.executable, "-m", "dltool", "tune", str(config_path), "--trials", str(trials), "--storage", url,
            "--name", name, "--runs-dir", str(runs_dir), "--heartbeat", str(heartbeat), "--quiet", *overrides]
    helpers = _start_workers(argv, workers - 1, folder)
    try:
        with child_runs_of(tracked):
            _optimize(study, objective, trials, started,
                      lambda row, done: on_trial and on_trial(row, done, spec.metric))
    finally:
        for helper in helpers:
            helper.wait()
    result = write_results(study, spec, Path(config_path), overrides, folder, url)
    finish_study_run(tracked, folder, result.best_value)
    return result


def _start_workers(argv: Sequence[str], count: int, folder: Path) -> list[subprocess.Popen]:
    """`count` more processes on the same study; each writes its messages to folder/worker-K.log."""
    helpers = []
    for i in range(1, count + 1):
        with open(folder / f"worker-{i}.log", "ab") as log:
            helpers.append(subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log))
    return helpers


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the CLI shows each trial, a failed one with its error
    return optuna


def _study(optuna: Any, direction: str, sampler: Any, pruner: Any, name: str, url: str, heartbeat: int) -> Any:
    """The study in `url`, created on first use; every process opens it the same way."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and have been since 2.x
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                                 grace_period=2 * heartbeat, **_retry(optuna))
        return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction=direction,
                                   sampler=sampler, pruner=pruner)
    except (SQLAlchemyError, ImportError) as exc:
        first = first_line(exc)
        raise ConfigError(f"--storage: cannot open {redact(url)}: {first}") from None


def _retry(optuna: Any) -> dict:
    """Retry a trial whose process died, under the name this Optuna version gives the callback."""
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        return {"heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=RETRIES)}


def _build(module: Any, component: Component, key: str, marks: Any) -> Any:
    """An Optuna sampler or pruner by its class name (any case), with its arguments."""
    import inspect

    from dltool.config.registry import suggest

    names = [n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("Base") and n[0].isupper()]
    found = {n.lower(): n for n in names}.get(component.name.lower())
    if found is None:
        raise ConfigError(located(f"unknown {key.split('.')[1]} {component.name!r}{suggest(component.name, names)} "
                                  f"(allowed: {', '.join(sorted(names))})", key, marks))
    try:
        return getattr(module, found)(**component.kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(located(f"{found} refuses its arguments {dict(component.kwargs)}: {exc}", key, marks)) from None


def redact(url: str) -> str:
    """The storage URL without its password, as it may be shown or written."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _objective(optuna: Any, spec: TuneSpec, config_path: Path, overrides: Sequence[str], trials_dir: Path,
               started: list[int]) -> Callable:
    from dltool.training.train import train

    def objective(trial: Any) -> float:
        started.append(trial.number)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        values = {param.key: _draw(trial, param) for param in spec.space}
        run_name = f"{trial.number:03d}"
        trial.set_user_attr("run_dir", str(trials_dir / run_name))
        reporter = TrialReporter(trial, spec.metric, spec.direction)
        try:
            result = train(config_path, runs_dir=trials_dir, name=run_name, callbacks=[reporter],
                           overrides=[*overrides, "tune=", *(p.override(values[p.key]) for p in spec.space)])
        except RunFailed as exc:
            trial.set_user_attr("error", str(exc))
            raise
        except Interrupted as exc:
            trial.set_user_attr("error", str(exc))
            stopped = Interrupted(f"{exc}; or go on with the study: run the same dltool tune command again "
                                  "(this trial is marked failed)")
            stopped.exit_code = exc.exit_code
            raise stopped from None
        trial.set_user_attr("run_dir", str(result.run_dir))
        if result.summary["status"] == "pruned":
            raise optuna.TrialPruned(f"pruned at epoch {reporter.pruned_at}")
        return reporter.best

    return objective


def _draw(trial: Any, param: Param) -> Any:
    if param.kind == "choice":
        return trial.suggest_categorical(param.key, list(param.values))
    if param.kind == "int":
        return trial.suggest_int(param.key, *param.values)
    return trial.suggest_float(param.key, *param.values, log=param.kind == "log")


def finished_count(study: Any) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED)


def _optimize(study: Any, objective: Callable, trials: int, started: list[int], on_trial: Callable) -> None:
    """One trial at a time, counting the study's finished trials (all processes' together) before each."""
    failed_in_a_row = 0
    while finished_count(study) < trials:
        count = len(started)
        study.optimize(objective, n_trials=1, catch=(RunFailed,), gc_after_trial=False)
        if len(started) == count:
            continue
        last = study.get_trials(deepcopy=False)[started[-1]]
        failed_in_a_row = failed_in_a_row + 1 if last.state.name == "FAIL" else 0
        on_trial(trial_row(last), finished_count(study))
        if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise RunFailed(f"tune: {failed_in_a_row} trials in a row failed (last: trial {last.number}: "
                            f"{last.user_attrs.get('error', 'see its run folder')}); narrow tune.space")


def trial_row(trial: Any) -> dict:
    """One trial as plain data: number, state, value, params by override path, run folder."""
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": dict(trial.params),
            "run_dir": trial.user_attrs.get("run_dir"), "worker": trial.user_attrs.get("worker"),
            "error": trial.user_attrs.get("error"),
            "seconds": round(trial.duration.total_seconds(), 1) if trial.duration is not None else None}


def write_results(study: Any, spec: TuneSpec, config_path: Path, overrides: Sequence[str], folder: Path,
                  url: str) -> TuneResult:
    """trials.csv and (once a trial completed) best.yaml; the result as plain data."""
    rows = [trial_row(t) for t in study.get_trials(deepcopy=False)]
    keys = [p.key for p in spec.space]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", spec.metric, *keys, "seconds", "run_dir"])
    for row in rows:
        writer.writerow([row["number"], row["state"], "" if row["value"] is None else row["value"],
                         *(row["params"].get(k, "") for k in keys), row["seconds"] or "", row["run_dir"] or ""])
    write_atomic(folder / "trials.csv", out.getvalue())
    best = _best(study)
    if best is not None:
        chosen = [f"{key}={_json(value)}" for key, value in best.params.items()]
        data = load_config(config_path, [*overrides, "tune=", *chosen]).to_data()
        write_atomic(folder / "best.yaml", f"# best of study {study.study_name}: trial {best.number}, "
                                           f"{spec.metric} {best.value}\n" + dump_yaml(data))
    return TuneResult(study=study.study_name, storage=redact(url), metric=spec.metric, direction=spec.direction,
                      best_value=best.value if best else None, best_params=dict(best.params) if best else {},
                      best_trial=best.number if best else None, trials=[{k: r[k] for k in
                      ("number", "state", "value", "params", "run_dir")} for r in rows], folder=folder)


def _best(study: Any) -> Any:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
