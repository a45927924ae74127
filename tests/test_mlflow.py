"""train.loggers: [mlflow]: runs in a real local store and on a real `mlflow server`, tune's trials as
child runs, and a server stopped mid-run costing one line while training goes on."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dltool.cli import app
from dltool.training.callbacks import Callback
from dltool.training.train import train

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

CONFIG = """\
    seed: 0
    data: {dataset: Digits, batch_size: 128}
    model:
      layers: [Flatten, {Linear: {out_features: 16}}, ReLU, {Linear: {out_features: num_classes}}]
    optimizer: {name: Adam, lr: 0.01}
    train: {epochs: 2, device: cpu, threads: 1, loggers: [mlflow]}
    """


@pytest.fixture
def config(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(CONFIG))
    return path


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def only_run(client: MlflowClient, name: str):
    experiment = client.get_experiment_by_name("dltool")
    (run,) = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == name]
    return run


def rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, path))


def test_a_run_goes_to_the_local_store_beside_the_runs_and_resume_continues_it(config, tmp_path):
    runs = tmp_path / "runs"
    result = invoke("train", config, "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    run_dir = runs / "cfg"
    assert not (run_dir / "tb").exists()  # loggers without tensorboard: no event files
    client = MlflowClient(f"sqlite:///{runs / 'mlflow' / 'mlflow.db'}")
    run = only_run(client, "cfg")
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.Adam.lr"] == "0.01" and run.data.params["train.loggers"] == "['mlflow']"
    assert run.data.tags["dltool.run_dir"] == str(run_dir.resolve())
    written = rows(run_dir)
    logged = history(client, run.info.run_id, "val_accuracy")
    assert [s for s, _ in logged] == [int(r["epoch"]) for r in written] == [1, 2]
    assert [v for _, v in logged] == pytest.approx([float(r["val_accuracy"]) for r in written], rel=1e-5)
    assert [s for s, _ in history(client, run.info.run_id, "train_loss")] == [1, 2]
    assert artifacts(client, run.info.run_id) == ["checkpoints", "curves.png", "summary.json"]
    assert artifacts(client, run.info.run_id, "checkpoints") == ["checkpoints/best.pt"]
    assert run.info.artifact_uri.startswith((runs / "mlflow" / "artifacts").resolve().as_uri())
    local = Path(run.info.artifact_uri.removeprefix("file://")) / "summary.json"
    assert json.loads(local.read_text()) == json.loads((run_dir / "summary.json").read_text())

    assert invoke("eval", run_dir).exit_code == 0
    result = invoke("train", "--resume", run_dir, "train.epochs=3")
    assert result.exit_code == 0, result.output
    resumed = only_run(client, "cfg")  # the same MLflow run, one epoch longer
    assert resumed.info.run_id == run.info.run_id and resumed.info.status == "FINISHED"
    assert [s for s, _ in history(client, run.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert "eval/metrics.json" in artifacts(client, run.info.run_id, "eval")


def test_tune_logs_each_trial_as_a_child_run_of_the_studys_run(config, tmp_path):
    data = yaml.safe_load(config.read_text())
    data["train"]["epochs"] = 1
    data["tune"] = {"metric": "val_accuracy", "pruner": None, "space": {"optimizer.lr": {"choice": [0.01, 0.02]}}}
    config.write_text(yaml.safe_dump(data))
    result = invoke("tune", config, "--trials", "2", "--name", "s", "--runs-dir", tmp_path / "runs", "--json")
    assert result.exit_code == 0, result.output
    trials = json.loads(result.stdout)["trials"]  # nothing of MLflow's on stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow' / 'mlflow.db'}")
    study = only_run(client, "s")
    assert study.info.status == "FINISHED" and "best_value" in study.data.metrics
    assert artifacts(client, study.info.run_id) == ["best.yaml", "trials.csv"]
    experiment = client.get_experiment_by_name("dltool").experiment_id
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{study.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == ["000", "001"]
    drawn = {f"{t['number']:03d}": str(t["params"]["optimizer.lr"]) for t in trials}
    assert {r.info.run_name: r.data.params["optimizer.Adam.lr"] for r in children} == drawn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """A real `mlflow server` on a free port (its own process group, so that stopping it stops all of it)."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy, whatever the env says
    deadline = time.monotonic() + 120
    while True:
        try:
            with direct.open(url + "/health", timeout=2):
                break
        except OSError:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not start: " + (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(0.5)

    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)

    yield url, stop
    stop()
    log.close()


class StopServerAfterEpoch(Callback):
    """Reads what the server holds after epoch 1 was logged, then stops the server."""

    def __init__(self, url: str, stop):
        self.url, self.stop, self.seen, self.messages = url, stop, None, []

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        if epoch == 1:
            client = MlflowClient(self.url)
            run = only_run(client, "down")
            self.seen = history(client, run.info.run_id, "val_loss")
            self.stop()

    def on_message(self, text: str) -> None:
        self.messages.append(text)


def test_a_real_server_gets_the_run_and_stopping_it_mid_run_costs_one_line(config, tmp_path, server, monkeypatch):
    url, stop = server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    runs = tmp_path / "runs"
    result = invoke("train", config, "--runs-dir", runs, "--name", "up")
    assert result.exit_code == 0, result.output
    client = MlflowClient(url)
    up = only_run(client, "up")
    assert up.info.status == "FINISHED" and [s for s, _ in history(client, up.info.run_id, "val_loss")] == [1, 2]
    assert artifacts(client, up.info.run_id) == ["checkpoints", "curves.png", "summary.json"]
    assert not (runs / "mlflow").exists()  # MLFLOW_TRACKING_URI wins over the local store

    watcher = StopServerAfterEpoch(url, stop)
    done = train(config, runs_dir=runs, name="down", overrides=["train.epochs=3"], callbacks=[watcher])
    assert done.summary["status"] == "finished" and done.summary["epochs_done"] == 3
    first = rows(done.run_dir)[0]
    assert [s for s, _ in watcher.seen] == [1]
    assert watcher.seen[0][1] == pytest.approx(float(first["val_loss"]), rel=1e-5)
    assert [int(r["epoch"]) for r in rows(done.run_dir)] == [1, 2, 3]  # the run folder holds every row
    failed = [m for m in watcher.messages if m.startswith("mlflow")]
    assert failed == [f"mlflow: cannot log epoch 2 at {url} (Connection refused); training goes on without mlflow, "
                      f"and {done.run_dir} keeps every row"]


def test_a_server_that_is_down_from_the_start_is_one_line_and_the_run_trains(config, tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    messages = []

    class Messages(Callback):
        def on_message(self, text: str) -> None:
            messages.append(text)

    done = train(config, runs_dir=tmp_path / "runs", name="x", callbacks=[Messages()])
    assert done.summary["status"] == "finished" and len(rows(done.run_dir)) == 2
    assert [m for m in messages if "mlflow" in m] == [
        f"mlflow: cannot start a run at {url} (Connection refused); training goes on without mlflow, "
        f"and {done.run_dir} keeps every row"]


def test_without_mlflow_a_config_that_logs_to_it_is_one_line_and_others_never_import_it(config, tmp_path):
    code = ("import sys\nblock = sys.argv.pop(1) == 'block'\nif block:\n    sys.modules['mlflow'] = None\n"
            "from dltool.cli import app\nsys.argv[0] = 'dltool'\ntry:\n    app()\nexcept SystemExit as exc:\n"
            "    assert block or 'mlflow' not in sys.modules, 'mlflow imported'\n    raise\n")
    done = subprocess.run([sys.executable, "-c", code, "block", "train", str(config), "--runs-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ('error: train.loggers: mlflow needs mlflow, which is not installed: '
                                   'pip install "dltool[mlflow]"')
    assert not (tmp_path / "r").exists()
    plain = config.read_text().replace("loggers: [mlflow]", "loggers: [tensorboard], epochs: 1").replace("epochs: 2, ", "")
    config.write_text(plain)
    done = subprocess.run([sys.executable, "-c", code, "free", "train", str(config), "--runs-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "cfg" / "tb").is_dir()
