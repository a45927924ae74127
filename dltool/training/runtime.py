"""What a run needs from its process: the device, seeds and random states, weight EMA, and signals."""

from __future__ import annotations

import contextlib
import copy
import os
import random
import signal
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from dltool.config.spec import Marks, located
from dltool.errors import ConfigError


def resolve_device(name: str, marks: Marks | None = None) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`.

    Raises:
        ConfigError: an unknown device, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(located(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N", "train.device", marks)) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(located(f"unsupported device {name!r}; allowed: auto, cpu, cuda, cuda:N", "train.device", marks))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise ConfigError(located(f"{name}: no CUDA device is available here; use cpu or auto", "train.device", marks))
        if (device.index or 0) >= count:
            raise ConfigError(located(f"{name}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})",
                                      "train.device", marks))
    return device


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Deterministic kernels when asked; otherwise let cuDNN pick the fastest ones."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run the block on `threads` CPU threads (None: as the process is), then restore the count.

    Training and evaluation of one run share this: the same thread count gives the same float
    sums, so evaluating a checkpoint reproduces the loss training recorded for it.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -1, -3, 32 * 2**20


def keep_freed_memory() -> bool:
    """Let the C allocator keep freed tensor memory for the next step (glibc only; elsewhere nothing).

    glibc gives every block above its mmap threshold (128 KiB at start, raised only as such blocks
    are freed) pages of its own and returns them to the system when the block is freed. A CPU
    training step frees and allocates its activation buffers again each time, so with the
    threshold low every step pays page faults to get zeroed pages back: 10-20% of the step time of
    a LeNet on the digits. With the threshold at its maximum (32 MiB) and the trim threshold above
    it, those buffers are reused from the heap, as in a process that has done nothing else before
    its loop.

    Returns:
        Whether the allocator took the setting.
    """
    if not hasattr(os, "confstr") or "glibc" not in (_confstr("CS_GNU_LIBC_VERSION") or ""):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and libc.mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX))


def _confstr(name: str) -> str | None:
    try:
        return os.confstr(name)
    except (ValueError, OSError):
        return None


def derived_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that depends on (seed, keys) only."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, dtype=np.uint32)[0])


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed every RNG from (seed, epoch): an epoch's dropout and noise do not depend on what ran before."""
    seed_all(derived_seed(seed, epoch, 0x5EED))


def rng_state() -> dict:
    """Every random state of the process, as tensors and plain data (weights_only-loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EMA:
    """Exponential moving average of a model's weights (evaluated and saved in its place)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        ema = [p for p in self.module.parameters()]
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema, live, 1.0 - self.decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "model": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]
        self.module.load_state_dict(state["model"])


class StopSignal:
    """SIGINT/SIGTERM/SIGHUP ask the loop to stop after the current step; a second SIGINT stops at once.
    SIGHUP (a closed terminal or SSH session) is one too, so the run saves instead of vanishing.

    The handler only sets a flag: saving happens in the loop, never inside the handler. Outside the
    main thread (where Python refuses signal handlers) this does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def or_asked(self, asked: Callable[[], str | None]) -> StopRequest:
        """This signal, or code asking the run to end (`asked` returns the reason, else None)."""
        return StopRequest(self, asked)


class StopRequest:
    """A signal, or code asking the run to end (a pruned search trial's callback): the first one asked.
    `asked` returns the reason, or None; it is polled after every step."""

    def __init__(self, signalled: StopSignal, asked: Callable[[], str | None]):
        self.signalled, self.asked = signalled, asked

    @property
    def requested(self) -> str | None:
        return self.signalled.requested or self.asked()

    def __call__(self) -> bool:
        return self.requested is not None
