"""A run's checkpoint as a dict (docs/run-folder.md#checkpoint), and its states loaded back into parts.

`checkpoint_of` and `restore` are each other's inverse: a run resumed from what the first wrote
continues bit for bit as it would have gone on.
"""

from __future__ import annotations

from typing import Any

import torch

import dltool
from dltool.errors import RunFailed
from dltool.training import distributed
from dltool.training.engine import LoopState
from dltool.training.optim import replay
from dltool.training.parts import Parts
from dltool.training.runtime import rng_state


def checkpoint_of(parts: Parts, state: LoopState) -> dict:
    """The checkpoint dict of `parts` where the run stands (`state`): plain data and tensors only, on the CPU."""
    ema, scaler = parts.opts.ema, parts.opts.scaler
    weights = (ema.module if ema is not None else parts.model).state_dict()
    saved = {
        "model": weights, "optimizer": parts.optimizer.state_dict(), "scheduler": parts.schedule.state_dict(),
        "epoch": state.epoch, "step": state.step, "config": parts.config.to_data(),
        "classes": parts.classes, "metrics": state.history[-1] if state.history else {},
        "rng": rng_state(), "versions": {"dltool": dltool.__version__, "torch": str(torch.__version__)},
        "split": parts.split, "input_shape": list(parts.input_shape), "task": parts.task,
        "loop": state.to_data(), "monitor": parts.monitor, "output": parts.opts.output,
    }
    if ema is not None:
        saved["train_model"] = parts.model.state_dict()
        saved["ema"] = ema.state_dict()
    if scaler is not None:
        saved["scaler"] = scaler.state_dict()
    ranks = distributed.gather_rng(saved["rng"])
    if ranks is not None:
        saved["rank_rng"] = ranks
    return _on_cpu(saved)


def finite_checkpoint(parts: Parts, state: LoopState) -> dict:
    """`checkpoint_of`, refusing weights that are not finite.

    Raises:
        RunFailed: a weight is NaN or infinite (the checkpoints on disk keep the last good ones).
    """
    saved = checkpoint_of(parts, state)
    for key in ("model", "train_model"):
        bad = [n for n, t in saved.get(key, {}).items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise RunFailed(f"epoch {state.epoch}: weight {bad[0]} is not finite; not saved "
                            f"(the checkpoints keep the last good weights); lower optimizer.lr")
    return saved


def restore(parts: Parts, checkpoint: dict) -> LoopState:
    """Load every state `checkpoint` saved into `parts`; a changed train.epochs re-plans the schedule
    from where the run is.

    Returns:
        Where the run stands, ready to continue (not interrupted, not stopped early).
    """
    from dltool.store.checkpoint import load_weights

    ema, scaler, optimizer, schedule = parts.opts.ema, parts.opts.scaler, parts.optimizer, parts.schedule
    load_weights(parts.model, checkpoint.get("train_model", checkpoint["model"]), checkpoint["path"])
    if ema is not None and "ema" in checkpoint:
        ema.load_state_dict(checkpoint["ema"])
    elif ema is not None:  # train.ema switched on at resume: the average starts from the weights
        ema.module.load_state_dict(parts.model.state_dict())
    if scaler is not None and checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    state = LoopState.from_data(checkpoint["loop"])
    state.interrupted = state.stopped_early = False
    if not distributed.is_main():
        state.sums = {}  # the saved partial sums are all ranks' together: rank 0 carries them
    planned = checkpoint["config"]["train"]["epochs"]
    if parts.config.train.epochs == planned or schedule.interval == "plateau":
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["scheduler"])
    else:
        replay(schedule, state.step if schedule.interval == "step" else state.epoch)
        planned_lrs = [group["lr"] for group in optimizer.param_groups]
        optimizer.load_state_dict(checkpoint["optimizer"])
        for group, lr in zip(optimizer.param_groups, planned_lrs):
            group["lr"] = lr
    return state


def _on_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value
