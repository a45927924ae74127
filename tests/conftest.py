"""Fixtures shared by several test modules (each small and named for what it holds)."""

from __future__ import annotations

from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The quickstart run (embedded digits, 16x16 CNN) cut to 2 epochs on the CPU: its run folder.
    Every test reads it as trained: one that writes into a run (an eval's default report, an export)
    writes into its own copy, and the session checks at its end that nothing was added or changed."""
    from dltool.training.train import train

    folder = tmp_path_factory.mktemp("digits_run")
    run = train(QUICKSTART, runs_dir=folder / "runs", name="digits",
                overrides=["train.epochs=2", "train.device=cpu", "train.histograms=false"]).run_dir
    trained = _files(run)
    yield run
    assert _files(run) == trained, "a test wrote into the shared digits_run; give it a copy of its own"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def make_checkpoint(tmp_path):
    """A factory: write a checkpoint by hand (as `dltool train` lays it out) with random weights.

    make_checkpoint(layers, input_shape, classes=10 digits, transforms=None, name="model.pt") -> path
    """
    import torch

    from dltool.config.load import config_from_data
    from dltool.models import build_model
    from dltool.store.checkpoint import save_checkpoint

    def make(layers, input_shape=(1, 8, 8), classes=tuple("0123456789"), transforms=None, name="model.pt",
             task="classification", dataset="Digits"):
        data = {"dataset": dataset}
        if transforms is not None:
            data["transforms"] = {"eval": transforms}
        config = config_from_data({"data": data, "model": {"layers": layers}})
        torch.manual_seed(0)
        model = build_model(config.model, tuple(input_shape), len(classes) or None)
        state = {"model": model.state_dict(), "config": config.to_data(), "classes": list(classes),
                 "input_shape": list(input_shape), "task": task, "split": {"method": "dataset"}, "epoch": 1}
        return save_checkpoint(state, tmp_path / name)

    return make


@pytest.fixture(scope="session")
def pg_server():
    """One throw-away PostgreSQL server for the session (tests/pg_server.py); skips, saying why, where
    no server binaries or no psycopg are installed."""
    from pg_server import NoServer, PgServer

    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip('psycopg is not installed (pip install -e ".[postgres]")')
    try:
        server = PgServer().start()
    except NoServer as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return pg_server.database()


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size) -> a fresh tmpfs folder of `size` (unmounted after the test); skips unless root."""
    import os
    import subprocess

    mounted = []

    def make(size: str = "312k") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        folder = tmp_path / f"fs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)
