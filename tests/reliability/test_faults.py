"""NaN and out-of-memory injected into training and evaluation steps: a NaN stops the run within one
step with finite weights; out of memory splits the batch and goes on, or says in one line what to change."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import dltool.training.engine
from dltool.cli import app
from dltool.errors import RunFailed

from .tools import TINY, write_config


def run(tmp_path):
    config = write_config(tmp_path, data={**TINY, "scheduler": None, "train": {**TINY["train"], "epochs": 3}})
    return CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs"), "--quiet"])


def count_forwards(monkeypatch, inject):
    """Patch the training step's forward pass: `inject(step, out, loss)` may replace the loss or raise."""
    real, calls = dltool.training.engine._forward_loss, []

    def forward_loss(*args):
        out, loss = real(*args)
        calls.append(len(calls) + 1)
        return out, inject(len(calls), out, loss)

    monkeypatch.setattr(dltool.training.engine, "_forward_loss", forward_loss)
    return calls


def saved(tmp_path) -> dict:
    return torch.load(tmp_path / "runs" / "tiny" / "checkpoints" / "last.pt", weights_only=True)


def finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_nan_loss_at_step_k_stops_that_step_with_finite_weights(tmp_path, monkeypatch):
    k = 7  # epoch 2, its 2nd batch (5 batches per epoch)
    calls = count_forwards(monkeypatch, lambda step, out, loss: loss * float("nan") if step == k else loss)
    result = run(tmp_path)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: the loss became nan at epoch 2, step 2 (lr 0.05); lower optimizer.lr, or set train.clip_grad_norm "
        "(the checkpoints keep the last good weights)"]
    assert len(calls) == k  # not one forward pass after the bad one
    state = saved(tmp_path)
    assert state["epoch"] == 1 and finite(state)


def test_nan_weights_after_step_k_stop_the_next_step(tmp_path, monkeypatch):
    k = 3
    real_step, steps = dltool.training.engine._optimizer_step, []

    def poisoned_step(model, *args):
        used = real_step(model, *args)
        steps.append(1)
        if len(steps) == k:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        return used

    monkeypatch.setattr(dltool.training.engine, "_optimizer_step", poisoned_step)
    result = run(tmp_path)
    assert result.exit_code == 1 and "the loss became nan at epoch 1, step 4" in result.stderr
    assert len(steps) == k  # the step after the poisoned update found the NaN before updating
    assert finite(saved(tmp_path))


def test_out_of_memory_once_splits_each_batch_in_two_and_the_run_goes_on(tmp_path, monkeypatch):
    sizes = []

    def oom(step, out, loss):
        sizes.append(out.shape[0])
        if step == 3:  # the third batch, whole
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss

    count_forwards(monkeypatch, oom)
    config = write_config(tmp_path, data={**TINY, "scheduler": None, "train": {**TINY["train"], "epochs": 3}})
    result = CliRunner().invoke(app, ["train", str(config), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.stderr
    assert ("cpu ran out of memory at epoch 1, step 3: each batch now goes through forward and backward in 2 parts "
            "(the same samples per step)") in result.stderr
    assert sizes[:5] == [16, 16, 16, 8, 8] and max(sizes[5:]) <= 8  # the retried batch in halves, then every batch
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["batch_splits"] == 2
    assert "batch split" in result.stderr and "in 2 parts (out of memory)" in result.stderr  # the end-of-run table
    assert saved(tmp_path)["loop"]["splits"] == 2  # a resumed run starts with the split it needed
    assert finite(saved(tmp_path))


def test_the_parts_of_a_split_batch_give_the_whole_batch_gradient():
    from dltool.training.engine import StepOptions, _learn

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = torch.randn(13, 6), torch.randint(0, 3, (13,))
    grads = []
    for parts in (1, 4):
        model.zero_grad(set_to_none=True)
        _, loss = _learn(model, torch.nn.CrossEntropyLoss(), x, y, StepOptions(torch.device("cpu")), parts, lambda _: None)
        grads.append((loss, [p.grad.clone() for p in model.parameters()]))
    (whole_loss, whole), (split_loss, split) = grads
    assert torch.allclose(whole_loss, split_loss, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, split))


def test_out_of_memory_that_splitting_cannot_cure_says_to_lower_the_batch_size(tmp_path, monkeypatch):
    def oom(step, out, loss):
        if step >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return loss

    count_forwards(monkeypatch, oom)
    result = run(tmp_path)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stderr.strip().splitlines() == [
        "error: cpu ran out of memory at epoch 1, step 3, even with each batch in 16 parts with data.batch_size=16; "
        "lower data.batch_size (try data.batch_size=8, with train.accumulate=2 to keep 16 samples per optimizer "
        "step) (the checkpoints keep the last saved epoch)"]
    assert saved(tmp_path)["epoch"] == 0
    assert '"status": "failed"' in (tmp_path / "runs" / "tiny" / "summary.json").read_text()


class SmallBatchesOnly(torch.nn.Module):
    """A linear model that 'runs out of memory' on more than `limit` samples at once."""

    def __init__(self, limit: int):
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.limit = torch.nn.Linear(6, 5), limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return self.linear(x)


def test_evaluation_out_of_memory_splits_its_batches_and_gives_the_same_metrics():
    from dltool.training.callbacks import Callback
    from dltool.training.engine import StepOptions, evaluate

    class Messages(Callback):
        def __init__(self):
            self.texts = []

        def on_message(self, text):
            self.texts.append(text)

    torch.manual_seed(1)
    batches = [(torch.randn(16, 6), torch.randint(0, 5, (16,))) for _ in range(3)] + [(torch.randn(5, 6),
                                                                                       torch.randint(0, 5, (5,)))]
    whole, _ = evaluate(SmallBatchesOnly(10 ** 6), batches, torch.nn.CrossEntropyLoss(), StepOptions(torch.device("cpu")))
    opts, messages = StepOptions(torch.device("cpu")), Messages()
    split, _ = evaluate(SmallBatchesOnly(4), batches, torch.nn.CrossEntropyLoss(), opts, callback=messages)
    assert opts.eval_splits == 4 and messages.texts == [
        "cpu ran out of memory in evaluation: each batch now goes through the model in 2 parts",
        "cpu ran out of memory in evaluation: each batch now goes through the model in 4 parts"]
    assert split.keys() == whole.keys() and all(abs(split[k] - whole[k]) < 1e-6 for k in whole)
    with pytest.raises(RunFailed, match="^cpu ran out of memory in evaluation even one sample at a time; use a "
                                        "smaller model or input size$"):
        evaluate(SmallBatchesOnly(0), batches, torch.nn.CrossEntropyLoss(), StepOptions(torch.device("cpu")))
