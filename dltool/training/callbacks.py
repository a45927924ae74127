"""Hooks: the loop and the run call them at named points; the library itself never prints.

The progress display (dltool.cli.progress) and a tune trial's reporter are hooks a caller passes;
checkpoints, TensorBoard, curves.png and MLflow are hooks the run attaches itself
(dltool.training.hooks).
"""

from __future__ import annotations

from typing import Any, Iterable


class Callback:
    """Hooks the loop and the run call; subclass and override what you need (all do nothing by default).

    In the order a run calls them: `on_fit_start` once its folder and first checkpoint exist; per
    epoch `on_epoch_start`, `on_step` every `train.log_every` steps, `on_eval_start`, `on_epoch_end`;
    `on_interrupt` when a stop request ends the epochs early; `on_fit_end` with the summary of a
    run that ended without error (not of an interrupted one); `on_close` however the run ended.
    `on_message` carries a line for the user at any point.
    """

    def on_fit_start(self, info: dict) -> None: ...
    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None: ...
    def on_step(self, epoch: int, batch: int, batches: int, metrics: dict) -> None: ...
    def on_eval_start(self, epoch: int, batches: int) -> None: ...
    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None: ...
    def on_interrupt(self) -> None: ...
    def on_message(self, text: str) -> None: ...
    def on_fit_end(self, summary: dict) -> None: ...

    def on_close(self, outcome: str) -> None:
        """The run is over: "finished", "interrupted" or "failed"; release what the hook holds."""

    def stop_reason(self) -> str | None:
        """Why this callback asks the run to end now (polled after every step, so keep it cheap), e.g.
        "pruned" for a search trial that cannot win; None to go on. The run stops as after a signal,
        its checkpoint saved, but ends without error, its summary.json status set to the reason."""
        return None


class Callbacks(Callback):
    """Several callbacks called in order."""

    def __init__(self, callbacks: Iterable[Callback | None] = ()):
        self.callbacks = [c for c in callbacks if c is not None]

    def on_fit_start(self, info: dict) -> None:
        self._each("on_fit_start", info)

    def on_epoch_start(self, epoch: int, epochs: int, batches: int) -> None:
        self._each("on_epoch_start", epoch, epochs, batches)

    def on_step(self, epoch: int, batch: int, batches: int, metrics: dict) -> None:
        self._each("on_step", epoch, batch, batches, metrics)

    def on_eval_start(self, epoch: int, batches: int) -> None:
        self._each("on_eval_start", epoch, batches)

    def on_epoch_end(self, epoch: int, row: dict, improved: bool) -> None:
        self._each("on_epoch_end", epoch, row, improved)

    def on_interrupt(self) -> None:
        self._each("on_interrupt")

    def on_message(self, text: str) -> None:
        self._each("on_message", text)

    def on_fit_end(self, summary: dict) -> None:
        self._each("on_fit_end", summary)

    def on_close(self, outcome: str) -> None:
        """In the reverse order: a hook closes after those attached after it (as nested `with` blocks)."""
        for callback in reversed(self.callbacks):
            callback.on_close(outcome)

    def stop_reason(self) -> str | None:
        return next((r for r in (c.stop_reason() for c in self.callbacks) if r is not None), None)

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)
