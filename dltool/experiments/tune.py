"""`dltool tune`: an Optuna study over the config's `tune:` section, each trial an ordinary run.

    runs/NAME/study.db          the study (SQLite) unless --storage names another database
    runs/NAME/trials/NNN/       one full run folder per trial (NNN: the trial's number)
    runs/NAME/best.yaml         the config with the best values, the tune: section removed
    runs/NAME/trials.csv        one row per trial: number, state, value, params, run folder

Several processes (--workers, or the same command on other machines with one --storage URL)
share the study: Optuna hands out trial numbers, so no two trials share a folder, and the count of
finished trials is the study's (dltool.experiments.workers). A trial whose process died stops sending
heartbeats, is marked failed and retried with the same values. A study remembers the metric and space
it began with and refuses a tune section that changed them.
"""

from __future__ import annotations

import csv
import io
import os
import re
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from dltool.config.load import dump_yaml, load_config
from dltool.config.spec import located
from dltool.errors import ConfigError, Interrupted, RunFailed
from dltool.experiments.space import Component, Param, TuneSpec, check_unchanged, read_tune, signature
from dltool.experiments.storage import database_failed, open_study, redact, resolve
from dltool.experiments.workers import (
    FINISHED,
    SURPLUS,
    StudyLoop,
    counted,
    finished_count,
    is_surplus,
    start_helpers,
    stop_helpers,
    worker_index,
)
from dltool.store.writing import folder_name, write_atomic, writing
from dltool.training.callbacks import Callback
from dltool.training.loggers import child_runs_of, finish_study_run, study_run
from dltool.training.runtime import StopSignal

RETRIES = 2  # a trial whose process died is retried with its values this many times
SPACE_ATTR = "dltool_tune"  # the study's user attribute holding the metric and space it began with


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
    """Run trials until the study holds exactly `trials` finished (complete or pruned) ones, then write
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
            when a trial of any process on the study ends.

    Raises:
        ConfigError: no or bad `tune:` section (each space entry is built at its bounds and choices), a
            space or metric changed since the study began, a bad or in-memory storage URL, --trials below 1,
            a --name that is no plain folder name; before any trial runs.
        MissingExtra: the storage URL's database driver is not installed.
        RunFailed: MAX_FAILED_IN_A_ROW trials in a row failed, or the study's database refused a write.
        Interrupted: a signal stopped the study; trials.csv and best.yaml were written for what finished.
    """
    if trials < 1:
        raise ConfigError(f"--trials: must be 1 or more (finished trials the study should hold); got {trials}")
    optuna = _optuna()
    base = load_config(config_path, overrides)
    spec = read_tune(base, overrides)
    name = folder_name(name if name is not None else base.stem)
    _build(optuna.samplers, spec.sampler, "tune.sampler", base.marks)  # its arguments, before anything exists
    pruner = _build(optuna.pruners, spec.pruner, "tune.pruner", base.marks) if spec.pruner else optuna.pruners.NopPruner()
    given = storage or default_storage(runs_dir, name)
    url = resolve(given)
    folder = Path(runs_dir) / name
    if storage:  # a server that cannot be reached leaves no folder behind
        study = open_study(optuna, url, name, spec.direction, pruner, heartbeat, RETRIES, given)
    with writing(folder, "choose a writable --runs-dir"):
        folder.mkdir(parents=True, exist_ok=True)
    if not storage:
        study = open_study(optuna, url, name, spec.direction, pruner, heartbeat, RETRIES, given)
    with StopSignal() as stop:
        try:
            return _run(optuna, study, spec, base, Path(config_path), overrides, folder, given,
                        Plan(trials, workers, heartbeat, str(runs_dir)), stop, on_start, on_trial)
        except optuna.exceptions.StorageInternalError as exc:
            raise database_failed(exc, given) from None


@dataclass(frozen=True)
class Plan:
    """How this command works on its study: the finished trials to reach, the processes, the heartbeat."""

    trials: int
    workers: int
    heartbeat: int
    runs_dir: str


def _run(optuna: Any, study: Any, spec: TuneSpec, base: Any, config_path: Path, overrides: Sequence[str],
         folder: Path, url: str, plan: Plan, stop: Any, on_start: Callable | None,
         on_trial: Callable | None) -> TuneResult:
    """Check the study against the tune section, run this process's trials (and start the helpers),
    and write the results, also when interrupted."""
    began = study.user_attrs.get(SPACE_ATTR)
    if began is None:
        study.set_user_attr(SPACE_ATTR, signature(spec))
    else:
        check_unchanged(began, spec, base, study.study_name)
    # seeded from the study too, so that a continued study draws new points rather than the first ones
    # again, and each --workers process its own
    study.sampler = _build(optuna.samplers, spec.sampler, "tune.sampler", base.marks,
                           len(study.get_trials()) + worker_index())
    tracked = study_run(base, Path(plan.runs_dir), study)  # train.loggers: mlflow: trials are its child runs
    mine: list[int] = []
    objective = _objective(optuna, spec, config_path, overrides, folder / "trials", mine, plan.trials, stop)
    if on_start is not None:
        on_start(finished_count(study))
    argv = [sys.executable, "-m", "dltool", "tune", str(config_path), "--trials", str(plan.trials), "--storage", url,
            "--name", study.study_name, "--runs-dir", plan.runs_dir, "--heartbeat", str(plan.heartbeat), "--quiet",
            *overrides]
    helpers = start_helpers(argv, plan.workers - 1, folder)
    loop = StudyLoop(optuna, study, objective, plan.trials, mine,
                     lambda row, done: on_trial and on_trial(row, done, spec.metric), trial_row, stop)
    try:
        with child_runs_of(tracked):
            loop.run()
    except (Interrupted, KeyboardInterrupt) as exc:
        stop_helpers(helpers)
        result = write_results(study, spec, config_path, overrides, folder, url)
        raise _interrupted(exc, stop, result) from None
    except BaseException:  # a failed study (a full disk, failed trials) stops its helpers too
        stop_helpers(helpers)
        raise
    for helper in helpers:
        helper.wait()
    loop.report()  # the helpers' last trials
    result = write_results(study, spec, config_path, overrides, folder, url)
    finish_study_run(tracked, folder, result.best_value)
    return result


def _interrupted(exc: BaseException, stop: Any, result: TuneResult) -> Interrupted:
    """One line: what stopped, what was written, how to go on."""
    named = re.match(r"interrupted by (\w+)", str(exc))
    how = stop.requested or (named.group(1) if named else "SIGINT" if isinstance(exc, KeyboardInterrupt) else None)
    done = sum(t["state"] in FINISHED for t in result.trials)
    wrote = result.folder / "trials.csv"
    if result.best_trial is not None:
        wrote = f"{result.folder / 'best.yaml'} and {wrote}"
    stopped = Interrupted(f"interrupted{f' by {how}' if how else ''}: the study holds {done} finished "
                          f"trial{'' if done == 1 else 's'}; "
                          f"wrote {wrote}; run the same dltool tune command again to go on with the study")
    stopped.exit_code = getattr(exc, "exit_code", 130)
    return stopped


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the CLI shows each trial, a failed one with its error
    return optuna


def _build(module: Any, component: Component, key: str, marks: Any, seed_offset: int = 0) -> Any:
    """An Optuna sampler or pruner by its class name (any case), with its arguments; an integer `seed`
    is moved on by `seed_offset`."""
    import inspect

    from dltool.config.registry import suggest

    names = [n for n, v in vars(module).items() if inspect.isclass(v) and not n.startswith("Base") and n[0].isupper()]
    found = {n.lower(): n for n in names}.get(component.name.lower())
    if found is None:
        raise ConfigError(located(f"unknown {key.split('.')[1]} {component.name!r}{suggest(component.name, names)} "
                                  f"(allowed: {', '.join(sorted(names))})", key, marks))
    kwargs = dict(component.kwargs)
    if isinstance(kwargs.get("seed"), int) and not isinstance(kwargs["seed"], bool):
        kwargs["seed"] += seed_offset
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's "experimental" notes on some samplers' arguments
            return getattr(module, found)(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(located(f"{found} refuses its arguments {dict(component.kwargs)}: {exc}", key, marks)) from None


def _objective(optuna: Any, spec: TuneSpec, config_path: Path, overrides: Sequence[str], trials_dir: Path,
               started: list[int], target: int, stop: Any) -> Callable:
    from dltool.training.train import train

    def objective(trial: Any) -> float:
        if is_surplus(trial.study, trial.number, target):  # another process took the last place first
            trial.set_user_attr(SURPLUS, True)
            raise optuna.TrialPruned("surplus: the study holds its trials")
        started.append(trial.number)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        values = {param.key: _draw(trial, param) for param in spec.space}
        run_name = f"{trial.number:03d}"
        trial.set_user_attr("run_dir", str(trials_dir / run_name))
        if stop():
            raise Interrupted(f"interrupted by {stop.requested} before trial {trial.number}")
        reporter = TrialReporter(trial, spec.metric, spec.direction)
        try:
            result = train(config_path, runs_dir=trials_dir, name=run_name, callbacks=[reporter],
                           overrides=[*overrides, "tune=", *(p.override(values[p.key]) for p in spec.space)])
        except (RunFailed, Interrupted) as exc:
            trial.set_user_attr("error", str(exc))
            raise
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


def trial_row(trial: Any) -> dict:
    """One trial as plain data: number, state, value, params by override path, run folder."""
    return {"number": trial.number, "state": trial.state.name, "value": trial.value, "params": dict(trial.params),
            "run_dir": trial.user_attrs.get("run_dir"), "worker": trial.user_attrs.get("worker"),
            "error": trial.user_attrs.get("error"),
            "seconds": round(trial.duration.total_seconds(), 1) if trial.duration is not None else None}


def write_results(study: Any, spec: TuneSpec, config_path: Path, overrides: Sequence[str], folder: Path,
                  url: str) -> TuneResult:
    """trials.csv and (once a trial completed) best.yaml; the result as plain data."""
    rows = [trial_row(t) for t in counted(study.get_trials(deepcopy=False))]
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
    complete = [t for t in counted(study.get_trials(deepcopy=False)) if t.state.name == "COMPLETE"]
    return study.best_trial if complete else None


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
