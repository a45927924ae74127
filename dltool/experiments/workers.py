"""The processes of one study and the count they share.

`--trials N` means exactly N finished (complete or pruned) trials in the study, however many
processes on however many machines work on it: a process starts a trial only while the finished
trials and those running elsewhere leave room for it, and a trial that two processes started at the
same moment for the last place is pruned at once as surplus (no folder, not counted, not listed).
A trial whose process was killed keeps its place until its heartbeats stop; it is then failed and
retried with the same values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from dltool.errors import Interrupted, RunFailed

FINISHED = ("COMPLETE", "PRUNED")
SURPLUS = "surplus"  # the user attribute of a trial pruned before it ran because the study was full
MAX_FAILED_IN_A_ROW = 5
POLL_SECONDS = 0.5
WORKER_ENV = "DLTOOL_TUNE_WORKER"  # set in each --workers helper: its index, which moves its sampler's seed on


@dataclass(frozen=True)
class Counts:
    finished: int
    running: int


def counted(trials: Sequence[Any]) -> list:
    """The trials that count: all but the surplus ones."""
    return [t for t in trials if not t.user_attrs.get(SURPLUS)]


def counts(study: Any) -> Counts:
    trials = counted(study.get_trials(deepcopy=False))
    return Counts(sum(t.state.name in FINISHED for t in trials), sum(t.state.name == "RUNNING" for t in trials))


def finished_count(study: Any) -> int:
    return counts(study).finished


def is_surplus(study: Any, number: int, target: int) -> bool:
    """Whether trial `number` (just started) has no place left: the finished trials and the running
    ones started before it already make `target`. Every process judges a trial the same way."""
    trials = counted(study.get_trials(deepcopy=False))
    finished = sum(t.state.name in FINISHED for t in trials)
    before = sum(t.state.name == "RUNNING" and t.number < number for t in trials)
    return finished + before >= target


class StudyLoop:
    """Runs this process's trials until the study holds `target` finished ones; reports every
    worker's trials as they end (`on_trial(row, finished)`), each once."""

    def __init__(self, optuna: Any, study: Any, objective: Callable, target: int, mine: list[int],
                 on_trial: Callable, row: Callable[[Any], dict], stop: Any):
        self.optuna, self.study, self.objective, self.target = optuna, study, objective, target
        self.mine = mine  # the numbers of the trials this process ran (the objective adds them), surplus ones excepted
        self.on_trial, self.row, self.stop = on_trial, row, stop
        self.reported = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self.failed_in_a_row = 0
        self.checked = 0  # how many of `mine` were looked at

    def run(self) -> None:
        """Raises:
            RunFailed: MAX_FAILED_IN_A_ROW of this process's trials in a row failed.
            Interrupted: a signal asked the study to stop between trials.
            optuna.exceptions.StorageInternalError: the study's database refused a write.
        """
        while True:
            self.report()
            if self.stop():
                raise Interrupted(f"interrupted by {self.stop.requested} between trials")
            now = counts(self.study)
            if now.finished >= self.target:
                return
            if now.finished + now.running >= self.target:  # every place taken: wait for one to end or go stale
                self._fail_stale()
                time.sleep(POLL_SECONDS)
                continue
            self._one_trial()
            self._check_failures()

    def _one_trial(self) -> None:
        """One trial through Optuna (heartbeats, stale trials, retries). A database write that fails
        after the trial surfaces from Optuna as an AssertionError over the StorageInternalError."""
        try:
            self.study.optimize(self.objective, n_trials=1, catch=(RunFailed,), gc_after_trial=False)
        except AssertionError as exc:
            if isinstance(exc.__context__, self.optuna.exceptions.StorageInternalError):
                raise exc.__context__  # noqa: B904 (keeps its cause: the database's own words)
            raise

    def _fail_stale(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
            self.optuna.storages.fail_stale_trials(self.study)

    def report(self) -> None:
        """A line (`on_trial`) for each trial of any process that ended since the last call."""
        trials = counted(self.study.get_trials(deepcopy=False))
        finished = sum(t.state.name in FINISHED for t in trials)
        for trial in trials:
            if trial.state.is_finished() and trial.number not in self.reported:
                self.reported.add(trial.number)
                self.on_trial(self.row(trial), finished)

    def _check_failures(self) -> None:
        if len(self.mine) == self.checked:  # no trial of this process ran (a surplus one was pruned)
            return
        self.checked = len(self.mine)
        last = self.study.get_trials(deepcopy=False)[self.mine[-1]]
        if last.state.name == "FAIL":
            self.failed_in_a_row += 1
        elif last.state.is_finished():
            self.failed_in_a_row = 0
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise RunFailed(f"tune: {self.failed_in_a_row} trials in a row failed (last: trial {last.number}: "
                            f"{last.user_attrs.get('error', 'see its run folder')}); narrow tune.space")


def start_helpers(argv: Sequence[str], count: int, folder: Path) -> list[subprocess.Popen]:
    """`count` more processes on the same study; each writes its messages to folder/worker-K.log.
    They share this process's group, so a Ctrl-C in the terminal reaches them too."""
    helpers = []
    for i in range(1, count + 1):
        with open(folder / f"worker-{i}.log", "ab") as log:
            helpers.append(subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            env={**os.environ, WORKER_ENV: str(i)}))
    return helpers


def worker_index() -> int:
    """0 in the process the user started, K in its K-th --workers helper."""
    value = os.environ.get(WORKER_ENV, "0")
    return int(value) if value.isdigit() else 0


def stop_helpers(helpers: Sequence[subprocess.Popen]) -> None:
    """Ask the helpers still running to stop as an interrupted run does (SIGTERM: each saves its trial
    and its results), and wait for them."""
    for helper in helpers:
        if helper.poll() is None:
            helper.send_signal(signal.SIGTERM)
    for helper in helpers:
        helper.wait()
