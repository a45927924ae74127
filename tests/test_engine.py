"""The loop (dltool.training.engine) and its parts (dltool.training.optim, dltool.training.runtime) on tiny in-memory data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dltool.config.registry import LOSSES, OPTIMIZERS, SCHEDULERS
from dltool.config.spec import parse_spec
from dltool.errors import RegistryError, RunFailed
from dltool.training.callbacks import Callback
from dltool.training.engine import LoopState, StepOptions, StepParts, evaluate, train_one_epoch
from dltool.training.loop import FitLoop, FitPlan
from dltool.training.optim import build_loss, build_optimizer, build_scheduler, replay
from dltool.training.runtime import EMA, rng_state, seed_all, set_rng_state

CPU = torch.device("cpu")


def blobs(n: int = 120, classes: int = 5, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, 1, 4, 4, generator=g) * 0.3 + y[:, None, None, None].float()
    return TensorDataset(x, y)


def mlp(classes: int = 5) -> nn.Module:
    seed_all(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(16, classes))


def sgd(model: nn.Module, lr: float = 0.1, **extra) -> torch.optim.Optimizer:
    return build_optimizer(parse_spec({"name": "SGD", "lr": lr, "momentum": 0.9, **extra}, "optimizer"), model)


def step_parts(model, opt, schedule, opts=None, loss_fn=None) -> StepParts:
    return StepParts(model, None, loss_fn or nn.CrossEntropyLoss(), opt, schedule, opts or StepOptions(CPU))


def run_fit(epochs: int, state: LoopState | None = None, parts=None, **plan_extra):
    model, opt, schedule = parts or _parts(epochs)
    loader = DataLoader(blobs(), batch_size=16)
    plan = FitPlan(epochs=epochs, seed=0, monitor="val_accuracy", mode="max", **plan_extra)
    state = FitLoop(step_parts(model, opt, schedule, StepOptions(CPU, log_every=2)), loader, loader, plan,
                    state=state).run()
    return model, opt, schedule, state


def _parts(epochs: int):
    model = mlp()
    opt = sgd(model)
    return model, opt, build_scheduler(parse_spec("OneCycleLR", "scheduler"), opt, epochs, 8, warmup_epochs=0.5)


def test_fit_reports_the_documented_metrics_and_learns():
    _, _, _, state = run_fit(3)
    row = state.history[-1]
    assert set(row) == {"epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                        "val_top5_accuracy", "epoch_seconds", "samples_per_second"}
    assert row["val_accuracy"] > 0.4 and row["val_top5_accuracy"] == 1.0  # chance is 0.2; 5 classes: top-5 is all
    assert state.epoch == 3 and state.step == 24 and state.best_epoch >= 1


def test_fit_continued_from_its_state_is_bit_identical():
    full, *_ = run_fit(3)
    model, opt, schedule, state = run_fit(1, parts=_parts(3))
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), schedule.state_dict(), state.to_data()))
    model2, opt2, schedule2 = _parts(3)
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    schedule2.load_state_dict(saved[2])
    resumed, *_ = run_fit(3, state=LoopState.from_data(saved[3]), parts=(model2, opt2, schedule2))
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_stop_request_ends_the_epoch_after_the_current_step():
    seen = []
    model, opt, schedule = _parts(2)
    loader = DataLoader(blobs(), batch_size=16)
    state = LoopState()
    train_one_epoch(step_parts(model, opt, schedule), loader, state, epoch=1,
                    stop=lambda: (seen.append(1), len(seen) >= 2)[1])  # polled once per step
    assert state.interrupted and state.batch == 2 and state.step == 2 and state.sums["count"] == 32


def test_non_finite_loss_stops_within_one_step_naming_epoch_and_step():
    model = mlp()
    opt = sgd(model, lr=1e12)
    loader = DataLoader(blobs(), batch_size=16)
    state = LoopState()
    with pytest.raises(RunFailed, match=r"the loss became (nan|inf) at epoch 4, step (\d+) \(lr 1e\+12\)") as failed:
        train_one_epoch(step_parts(model, opt, build_scheduler(None, opt, 1, 8)), loader, state, epoch=4)
    step = int(str(failed.value).split("step ")[1].split(" ")[0])
    assert state.step == step - 1  # no update was made with the bad loss


def test_accumulating_two_half_batches_equals_one_full_batch():
    results = []
    for batch_size, accumulate in ((32, 1), (16, 2)):
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
        torch.manual_seed(0)
        model[1].reset_parameters()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        loader = DataLoader(blobs(64), batch_size=batch_size)
        train_one_epoch(step_parts(model, opt, build_scheduler(None, opt, 1, 2), StepOptions(CPU, accumulate=accumulate)),
                        loader, LoopState(), epoch=1)
        results.append(model[1].weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


def test_regression_reports_loss_and_mae():
    x = torch.randn(64, 1, 2, 2)
    y = x.flatten(1).sum(1, keepdim=True)
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    metrics, _ = evaluate(model, loader, nn.MSELoss(), StepOptions(CPU, task="regression"))
    assert set(metrics) == {"val_loss", "val_mae"}
    with torch.no_grad():
        expected = (model(x) - y).abs().mean().item()
    assert metrics["val_mae"] == pytest.approx(expected, rel=1e-5)


def test_early_stopping_stops_after_patience_epochs_without_improvement():
    model = mlp()
    opt = sgd(model, lr=1e-9)  # nothing changes: no epoch after the first improves
    *_, state = run_fit(10, parts=(model, opt, build_scheduler(None, opt, 10, 8)), patience=2, min_delta=0.5)
    assert state.stopped_early and state.epoch == 3 and state.best_epoch == 1


def test_ema_follows_the_weights_with_its_decay():
    model = nn.Linear(2, 1)
    ema = EMA(model, 0.9)
    before = ema.module.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, before + 0.1)


def test_rng_state_round_trips_through_plain_data(tmp_path):
    seed_all(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert __import__("random").random() == expected[1]
    assert __import__("numpy").random.rand() == expected[2]


def test_every_torch_loss_optimizer_and_scheduler_is_registered():
    assert {"CrossEntropyLoss", "MSELoss", "L1Loss", "BCEWithLogitsLoss", "HuberLoss", "KLDivLoss"} <= set(LOSSES.names())
    assert {"SGD", "Adam", "AdamW", "RMSprop", "LBFGS", "NAdam", "RAdam", "Adagrad"} <= set(OPTIMIZERS.names())
    assert {"OneCycleLR", "CosineAnnealingLR", "StepLR", "ReduceLROnPlateau", "SequentialLR", "CyclicLR"} <= set(SCHEDULERS.names())


@pytest.mark.parametrize("name", ["ConstantLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "CyclicLR",
                                  "ExponentialLR", "LinearLR", "MultiStepLR", "OneCycleLR", "PolynomialLR",
                                  "ReduceLROnPlateau", "StepLR"])
def test_every_scheduler_builds_with_run_defaults_and_saves_as_plain_data(name, tmp_path):
    model = mlp()
    schedule = build_scheduler(parse_spec(name, "scheduler"), sgd(model), 10, 8)
    expected = {"OneCycleLR": "step", "CyclicLR": "step", "ReduceLROnPlateau": "plateau"}.get(name, "epoch")
    assert schedule.interval == expected
    torch.save(schedule.state_dict(), tmp_path / "s.pt")
    torch.load(tmp_path / "s.pt", weights_only=True)


def test_nested_schedulers_and_warmup():
    opt = sgd(mlp())
    spec = parse_spec({"name": "SequentialLR", "milestones": [2],
                       "schedulers": [{"LinearLR": {"start_factor": 0.1, "total_iters": 2}}, "CosineAnnealingLR"]},
                      "scheduler")
    schedule = build_scheduler(spec, opt, 10, 8, warmup_epochs=0.5)
    assert schedule.warmup_steps == 4
    assert [schedule.warmup_factor(s) for s in (0, 3, 4)] == [0.25, 1.0, 1.0]


def test_replay_follows_a_longer_plan_from_where_the_run_is():
    opt = sgd(mlp(), lr=1.0)
    schedule = build_scheduler(parse_spec("CosineAnnealingLR", "scheduler"), opt, 4, 8)
    replay(schedule, 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


def test_param_groups_by_name_and_layer_type():
    model = mlp()
    spec = parse_spec({"name": "AdamW", "lr": 0.01, "weight_decay": 0.05,
                       "param_groups": [{"params": ["*.bias", "*Norm*.*"], "weight_decay": 0.0}]}, "optimizer")
    opt = build_optimizer(spec, model)
    decayed, exempt = opt.param_groups
    assert [p.shape for p in decayed["params"]] == [(16, 16), (5, 16)]
    assert len(exempt["params"]) == 4 and exempt["weight_decay"] == 0.0 and decayed["weight_decay"] == 0.05


def test_a_parameter_group_that_matches_nothing_is_an_error():
    spec = parse_spec({"name": "SGD", "lr": 0.1, "param_groups": [{"params": ["backbone.*"], "lr": 0.01}]}, "optimizer")
    with pytest.raises(RegistryError, match=r"optimizer.param_groups.0: params \['backbone.\*'\] match no parameter "
                                            r"\(names look like: 1.weight, 1.bias, 2.weight"):
        build_optimizer(spec, mlp())


def test_balanced_loss_weights_from_class_counts():
    loss = build_loss(parse_spec({"name": "CrossEntropyLoss", "weight": "balanced"}, "loss"), [10, 30, 60])
    torch.testing.assert_close(loss.weight, torch.tensor([10 / 3, 10 / 9, 10 / 18]))
    with pytest.raises(RegistryError, match="weight: balanced needs a classification dataset"):
        build_loss(parse_spec({"name": "CrossEntropyLoss", "weight": "balanced"}, "loss"), None)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_step(self, epoch, batch, batches, metrics):
        self.calls.append((epoch, batch, sorted(metrics)))


def test_progress_reaches_the_callback_every_log_interval():
    model, opt, schedule = _parts(1)
    recorder = Recorder()
    train_one_epoch(step_parts(model, opt, schedule, StepOptions(CPU, log_every=3)), DataLoader(blobs(), batch_size=16),
                    LoopState(), epoch=1, callback=recorder)
    assert [c[1] for c in recorder.calls] == [3, 6, 8]
    assert recorder.calls[0][2] == ["accuracy", "loss", "samples_per_second"]


def test_first_signal_asks_to_stop_and_a_second_sigint_stops_at_once():
    import os
    import signal

    from dltool.training.runtime import StopSignal

    before = signal.getsignal(signal.SIGINT)
    with StopSignal() as stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop() and stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_parameter_group_option_the_optimizer_lacks_is_an_error():
    spec = parse_spec({"name": "SGD", "lr": 0.1, "param_groups": [{"params": ["*.bias"], "weight_decy": 0}]}, "optimizer")
    with pytest.raises(RegistryError, match=r"optimizer.param_groups.0.weight_decy: SGD has no option 'weight_decy'; "
                                            r"did you mean weight_decay\? \(allowed: params, lr, momentum"):
        build_optimizer(spec, mlp())


def test_a_parameter_group_option_that_is_no_number_is_an_error():
    for value in ["Conv2d", True, [0.1]]:
        spec = parse_spec({"name": "SGD", "lr": 0.1, "param_groups": [{"params": ["*.bias"], "lr": value}]}, "optimizer")
        with pytest.raises(RegistryError) as refused:
            build_optimizer(spec, mlp())
        assert str(refused.value) == f"optimizer.param_groups.0.lr: must be a number; got {value!r}"
    spec = parse_spec({"name": "SGD", "lr": 0.1, "param_groups": [{"params": ["*.bias"], "lr": 1, "momentum": 0.5}]},
                      "optimizer")
    assert build_optimizer(spec, mlp()).param_groups[1]["lr"] == 1  # an int is a number


def test_fused_is_chosen_for_cuda_only_where_the_optimizer_can_take_it():
    model = nn.Linear(2, 1)
    asked = build_optimizer(parse_spec({"name": "Adam", "foreach": True}, "optimizer"), model, device=torch.device("cuda"))
    assert asked.defaults["foreach"] is True and not asked.defaults["fused"]
    assert not build_optimizer(parse_spec("Adam", "optimizer"), model, device=torch.device("cpu")).defaults["fused"]


def test_to_device_keeps_batches_already_there_and_applies_channels_last():
    opts = StepOptions(device=torch.device("cpu"), channels_last=True)
    x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    moved, targets = opts.to_device(x, y)
    assert moved.is_contiguous(memory_format=torch.channels_last) and targets is y


class LoopHooks(Callback):
    def __init__(self):
        self.calls = []

    def on_epoch_start(self, epoch, epochs, batches):
        self.calls.append(("epoch_start", epoch))

    def on_eval_start(self, epoch, batches):
        self.calls.append(("eval_start", epoch))

    def on_epoch_end(self, epoch, row, improved):
        self.calls.append(("epoch_end", epoch))

    def on_interrupt(self):
        self.calls.append(("interrupt",))


def test_the_loop_owns_its_state_and_calls_its_hooks_in_order():
    model, opt, schedule = _parts(3)
    loader = DataLoader(blobs(), batch_size=16)
    hooks, polls = LoopHooks(), []
    loop = FitLoop(step_parts(model, opt, schedule), loader, loader,
                   FitPlan(epochs=3, seed=0, monitor="val_accuracy", mode="max"), hooks=hooks)
    # polled after each of the 8 steps of an epoch and at its end: the 11th poll is epoch 2's second step
    state = loop.run(stop=lambda: (polls.append(1), len(polls) >= 11)[1])
    assert hooks.calls == [("epoch_start", 1), ("eval_start", 1), ("epoch_end", 1), ("epoch_start", 2), ("interrupt",)]
    assert state is loop.state and state.interrupted and (state.epoch, state.batch, state.step) == (1, 2, 10)
    assert loop.collected is not None and loop.collected["probs"].shape == (120, 5)
