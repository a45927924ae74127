"""MLflow for a run (`train.loggers: [tensorboard, mlflow]`, extra `[mlflow]`).

The run becomes an MLflow run of the same name: the flattened config as params, every metrics row
at its epoch, and summary.json, curves.png, checkpoints/best.pt and the eval report (when there is
one) as artifacts when it ends. A `dltool tune` study is a run of its own and its trials its child
runs. The tracking URI is MLFLOW_TRACKING_URI, else a local store in `mlflow/` beside the run
folders (`mlflow.db` and `artifacts/`). The run folder stays the source of truth: a store that
cannot be reached or refuses a call is reported in one line and left alone, and training goes on.

mlflow is imported only when a run or study is configured to use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from dltool.errors import MissingExtra, first_line

EXTRA = 'pip install "dltool[mlflow]"'
EXPERIMENT = "dltool"  # unless MLFLOW_EXPERIMENT_NAME names another
RUN_TAG = "dltool.run_dir"
STUDY_TAG = "dltool.study"
PARENT_TAG = "mlflow.parentRunId"  # what makes a run a child run in MLflow
MAX_PARAMS = 100  # per log_batch call, MLflow's limit
MAX_PARAM_LENGTH = 6000
# A server that is down fails within seconds instead of MLflow's minutes of retries (a user's own
# settings of these variables win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@dataclass(frozen=True)
class Place:
    """Where runs go: the tracking URI, the experiment, and the parent run of child runs (or None)."""

    uri: str
    experiment_id: str
    parent_run_id: str | None = None


_parent: contextvars.ContextVar[Place | None] = contextvars.ContextVar("dltool_mlflow_parent", default=None)


@contextlib.contextmanager
def child_runs_of(place: Place | None) -> Iterator[None]:
    """Runs trained inside the block become child runs of `place`'s run (a tune study's)."""
    token = _parent.set(place)
    try:
        yield
    finally:
        _parent.reset(token)


def tracking_uri(runs_dir: Path) -> str:
    """MLFLOW_TRACKING_URI, else the local store in runs_dir/mlflow."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(runs_dir) / 'mlflow' / 'mlflow.db').resolve()}"


def require(config: Any) -> None:
    """Refuse, before a run folder exists, a config that logs to mlflow without mlflow installed.

    Raises:
        MissingExtra: mlflow is not installed (the message names the extra).
    """
    if "mlflow" in config.train.loggers:
        _mlflow()


def _mlflow() -> Any:
    try:
        import mlflow  # noqa: F401 - the client below needs the package
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MissingExtra(f"train.loggers: mlflow needs mlflow, which is not installed: {EXTRA}") from None
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return MlflowClient


def _errors() -> tuple[type[BaseException], ...]:
    """What the client raises for a store that is down, refuses a call, or cannot be written."""
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError)


def _client(uri: str) -> Any:
    """A client on `uri` (for a local store, its folder made first)."""
    client_class = _mlflow()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return client_class(tracking_uri=uri)


def _experiment(client: Any, uri: str) -> str:
    """The experiment's id, made on first use (in a local store, its artifacts beside its database)."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def _find(client: Any, experiment_id: str, tag: str, value: str) -> str | None:
    """The id of the newest run in the experiment whose `tag` is `value`, else None."""
    text = value.replace("\\", "\\\\").replace("'", "\\'")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tag}` = '{text}'", max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


class MlflowLogger:
    """One run folder as an MLflow run. Every call that the store refuses ends the logger: one message
    through `on_message`, then it does nothing more (the run folder holds everything)."""

    def __init__(self, run_dir: Path, on_message: Callable[[str], None]):
        self.run_dir, self.on_message = Path(run_dir), on_message
        place = _parent.get()
        self.uri = place.uri if place is not None else tracking_uri(self.run_dir.parent)
        self.parent = place.parent_run_id if place is not None else None
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, config: dict, resumed: bool) -> None:
        """Open the run (a resumed run continues its MLflow run when the store has it); params once."""
        with self._guard("cannot start a run"):
            self.client = _client(self.uri)
            place = _parent.get()
            experiment = place.experiment_id if place is not None else _experiment(self.client, self.uri)
            path = str(self.run_dir.resolve())
            self.run_id = _find(self.client, experiment, RUN_TAG, path) if resumed else None
            if self.run_id is not None:
                self.client.update_run(self.run_id, status="RUNNING")
                return
            tags = {RUN_TAG: path, **({PARENT_TAG: self.parent} if self.parent else {})}
            self.run_id = self.client.create_run(experiment, run_name=self.run_dir.name, tags=tags).info.run_id
            self._params(config)

    def epoch(self, row: dict) -> None:
        """The row's numbers as metrics at step `epoch`."""
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        with self._guard("cannot log epoch " + str(row.get("epoch"))):
            stamp = _now_ms()
            metrics = [Metric(key, float(value), stamp, int(row["epoch"])) for key, value in row.items()
                       if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool)]
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str) -> None:
        """The run's files as artifacts, and its end: FINISHED, FAILED or KILLED."""
        if self.run_id is None:
            return
        with self._guard("cannot log the run's files"):
            for name in ("summary.json", "curves.png"):
                if (self.run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.run_dir / name))
            if (self.run_dir / "checkpoints" / "best.pt").is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / "checkpoints" / "best.pt"), "checkpoints")
            if (self.run_dir / "eval").is_dir():
                self.client.log_artifacts(self.run_id, str(self.run_dir / "eval"), "eval")
            _terminate(self.client, self.run_id, status)

    def _params(self, config: dict) -> None:
        from mlflow.entities import Param

        from dltool.training.board import flatten

        params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in flatten(config).items()]
        for start in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[start:start + MAX_PARAMS])

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            with _quiet():
                yield
        except _errors() as exc:
            self.run_id = None
            self.on_message(f"mlflow: {what} at {_shown(self.uri)} ({_reason(exc)}); training goes on without "
                            f"mlflow, and {self.run_dir} keeps every row")


def study_run(config: Any, runs_dir: Path, study: Any) -> Place | None:
    """The MLflow run of a tune study whose config logs to mlflow (made once, its id kept in the
    study so that every worker and rerun finds it), as the Place of its trials' child runs; None
    when the config does not log to mlflow or the store cannot be reached (the trials then try alone)."""
    if "mlflow" not in config.train.loggers:
        return None
    uri = tracking_uri(runs_dir)
    _mlflow()
    with contextlib.suppress(*_errors()), _quiet():
        client = _client(uri)
        experiment = _experiment(client, uri)
        run_id = study.user_attrs.get("mlflow_run_id")
        if run_id is None:
            tags = {STUDY_TAG: study.study_name}
            run_id = client.create_run(experiment, run_name=study.study_name, tags=tags).info.run_id
            study.set_user_attr("mlflow_run_id", run_id)
        return Place(uri, experiment, run_id)
    return None


def finish_study_run(place: Place | None, folder: Path, best_value: float | None) -> None:
    """The study's trials.csv and best.yaml as artifacts of its run, and its best value as a metric."""
    if place is None:
        return
    with contextlib.suppress(*_errors()), _quiet():
        client = _client(place.uri)
        for name in ("trials.csv", "best.yaml"):
            if (folder / name).is_file():
                client.log_artifact(place.parent_run_id, str(folder / name))
        if best_value is not None:
            client.log_metric(place.parent_run_id, "best_value", float(best_value))
        _terminate(client, place.parent_run_id, "FINISHED")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No log lines of MLflow's ("Creating initial MLflow database tables...") or of the HTTP
    library's retries on the terminal: a failure is reported once, by the caller."""
    loggers = [logging.getLogger(name) for name in ("mlflow", "urllib3", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _terminate(client: Any, run_id: str, status: str) -> None:
    # the client writes links to the run on stdout, where commands print their data
    with contextlib.redirect_stdout(io.StringIO()):
        client.set_terminated(run_id, status)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


def _shown(uri: str) -> str:
    """The URI without a password in it."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _reason(exc: BaseException) -> str:
    """The reason in a few words: a refused connection as such, else the first line, shortened."""
    text = str(exc).strip()
    refused = re.search(r"Failed to establish a new connection: \[Errno -?\d+\] ([^'\"()]+)", text)
    if refused:
        return refused.group(1).strip()
    line = first_line(exc)
    return line if len(line) <= 200 else line[:197] + "..."
