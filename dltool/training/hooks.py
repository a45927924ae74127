"""The hooks a run attaches to its loop: checkpoints and metrics.csv, MLflow, TensorBoard, curves.png.

Each is a `dltool.training.callbacks.Callback`, attached in this order (`on_close` goes the other
way): a checkpoint is on disk before anything reports its epoch, and MLflow takes curves.png and
summary.json as artifacts once they are written.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from dltool.errors import DltoolError
from dltool.training import distributed
from dltool.training.callbacks import Callback
from dltool.training.checkpointing import finite_checkpoint
from dltool.training.loop import FitLoop
from dltool.training.parts import Parts
from dltool.training.run_folder import RunDir

MLFLOW_STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class Checkpoints(Callback):
    """metrics.csv and the checkpoints: last.pt before a fresh run's first step (a folder without it
    never trained), then each epoch's row and last.pt (best.pt too when the monitor improved), and
    last.pt when a stop request ends the run."""

    def __init__(self, parts: Parts, rundir: RunDir, loop: FitLoop, *, fresh: bool):
        self.parts, self.rundir, self.loop, self.fresh = parts, rundir, loop, fresh

    def on_fit_start(self, info: dict) -> None:
        if self.fresh:
            self.save(best=False)

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        # the row goes first: a kill between the two leaves a row that resume drops and rewrites,
        # never a checkpointed epoch without its row
        self.rundir.append_metrics(row)
        self.save(best=improved)

    def on_interrupt(self) -> None:
        self.save(best=False)

    def save(self, *, best: bool) -> None:
        """last.pt (and best.pt); refuses to write weights that are not finite."""
        self.rundir.save(finite_checkpoint(self.parts, self.loop.state), best=best)


class TensorBoard(Callback):
    """TensorBoard events (dltool.training.board), on rank 0 when train.loggers names tensorboard: a
    fresh run's config, images and graph first, a row per epoch, and the hyperparameters with the
    final metrics (and PR curves) at the end."""

    def __init__(self, parts: Parts, rundir: RunDir, loop: FitLoop, *, fresh: bool,
                 on_message: Callable[[str], None]):
        self.parts, self.rundir, self.loop, self.fresh, self.on_message = parts, rundir, loop, fresh, on_message
        self.board = distributed.Silent()

    def on_fit_start(self, info: dict) -> None:
        from dltool.training.board import Board

        epoch = self.loop.state.epoch
        # a resumed run drops the events written after its checkpoint; a run started over, all of them
        purge = epoch + 1 if epoch else (0 if self.rundir.tb.exists() else None)
        if distributed.is_main() and "tensorboard" in self.parts.config.train.loggers:
            self.board = Board(self.rundir.tb, purge_step=purge)
            if self.fresh:
                self._start()

    def _start(self) -> None:
        from dltool.config.load import dump_yaml

        parts = self.parts
        self.board.text("config", dump_yaml(parts.config.to_data()))
        parts.train_loader.set_epoch(1)
        x, _ = next(iter(parts.train_loader))
        self.board.images(x)
        problem = self.board.graph(parts.model, x[:1].to(parts.device))
        self.board.flush()
        if problem:
            self.on_message(problem)

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        self.board.epoch(row, epoch)
        if self.parts.config.train.histograms:
            self.board.histograms(self.parts.model, epoch)
        self.board.flush()

    def on_fit_end(self, summary: dict) -> None:
        collected, classes = self.loop.collected, self.parts.classes
        if collected is not None and classes:
            self.board.pr_curves(collected["probs"], collected["targets"], classes, self.loop.state.epoch)
        final = {f"final_{k}": v for k, v in summary["final"].items() if v is not None}
        best = {"best_value": summary["best_value"]} if summary["best_value"] is not None else {}
        self.board.hparams(self.parts.config.to_data(), {**final, **best})
        self.board.close()

    def on_close(self, outcome: str) -> None:
        with contextlib.suppress(DltoolError):  # a failure closing it was reported first
            self.board.close()


class Curves(Callback):
    """curves.png, however the run ended; drawn after training, outside its timed path. A picture
    the disk refuses never fails the run that its checkpoints hold."""

    def __init__(self, rundir: RunDir):
        self.rundir = rundir

    def on_close(self, outcome: str) -> None:
        from dltool.training.curves import write_curves

        if distributed.is_main():
            with contextlib.suppress(DltoolError, OSError):
                write_curves(self.rundir.path)


class Mlflow(Callback):
    """The run as an MLflow run (dltool.training.loggers), on rank 0 when train.loggers names mlflow:
    opened (a resumed run continues its own), a row per epoch, and its files and status at the end."""

    def __init__(self, parts: Parts, rundir: RunDir, *, fresh: bool, on_message: Callable[[str], None]):
        from dltool.training.loggers import MlflowLogger

        self.parts, self.fresh = parts, fresh
        self.tracker = MlflowLogger(rundir.path, on_message)

    def on_fit_start(self, info: dict) -> None:
        self.tracker.start(self.parts.config.to_data(), resumed=not self.fresh)

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        self.tracker.epoch(row)

    def on_close(self, outcome: str) -> None:
        self.tracker.finish(MLFLOW_STATUS[outcome])  # after curves.png and summary.json are written


def run_hooks(parts: Parts, rundir: RunDir, loop: FitLoop, *, fresh: bool,
              on_message: Callable[[str], None]) -> list[Callback]:
    """The hooks of one run, in the order they are called."""
    hooks: list[Callback] = [Checkpoints(parts, rundir, loop, fresh=fresh)]
    if distributed.is_main() and "mlflow" in parts.config.train.loggers:
        hooks.append(Mlflow(parts, rundir, fresh=fresh, on_message=on_message))
    return [*hooks, TensorBoard(parts, rundir, loop, fresh=fresh, on_message=on_message), Curves(rundir)]
