"""Data-parallel training through torch.distributed: one process per device, started by torchrun.

Under torchrun (RANK, WORLD_SIZE and LOCAL_RANK in the environment) `dltool train` joins the
process group (NCCL on CUDA, gloo on CPU), trains the model wrapped in DistributedDataParallel on
its shard of every epoch, and agrees with the other processes on everything that decides what
happens next: the run folder, the metrics (summed over all processes), a stop request, a
non-finite loss. Only rank 0 writes the run folder. Outside torchrun every helper here does
nothing, so a single process runs exactly as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from dltool.errors import ConfigError
from dltool.training.run_folder import RunDir
from dltool.training.runtime import derived_seed

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Group:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def main(self) -> bool:
        return self.rank == 0


_group: Group | None = None


def launched() -> bool:
    """Whether torchrun (or another launcher setting its variables) started this process."""
    return all(key in os.environ for key in ENV)


def current() -> Group | None:
    """The group this process joined, or None in a single-process run."""
    return _group


def is_main() -> bool:
    """True on rank 0 and in a single-process run: the process that writes the run folder."""
    return _group is None or _group.main


def join(device: torch.device) -> Group | None:
    """Join the process group when launched by torchrun (once; later calls return the same group).

    Args:
        device: the device the config asks for; a CUDA device becomes cuda:LOCAL_RANK.

    Returns:
        The Group, or None outside torchrun.

    Raises:
        ConfigError: LOCAL_RANK names a GPU this machine does not have.
    """
    global _group
    if _group is not None or not launched():
        return _group
    import torch.distributed as dist

    rank, world_size, local_rank = (int(os.environ[key]) for key in ENV)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"torchrun: LOCAL_RANK {local_rank} but this machine has {torch.cuda.device_count()} "
                              "CUDA device(s); start at most that many processes per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    _group = Group(rank, world_size, local_rank, device, dist.get_backend())
    return _group


def leave() -> None:
    """Leave the process group (after the run, whatever its outcome)."""
    global _group
    if _group is None:
        return
    import torch.distributed as dist

    _group = None
    if dist.is_initialized():
        dist.destroy_process_group()


def rank_seed(seed: int) -> int:
    """The seed of this process's random streams (dropout, noise): rank 0 keeps the run's seed."""
    return seed if is_main() else derived_seed(seed, _group.rank, 0xDD9)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over every process (in place); itself in a single-process run."""
    if _group is not None:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def first_bad_step(first_bad: torch.Tensor) -> int:
    """The earliest batch (any process) whose loss was not finite, or -1; `first_bad` holds -1 for none."""
    if _group is None:
        return int(first_bad.item())
    import torch.distributed as dist

    never = torch.iinfo(torch.long).max
    earliest = torch.where(first_bad < 0, never, first_bad).to(_group.device)
    dist.all_reduce(earliest, op=dist.ReduceOp.MIN)
    step = int(earliest.item())
    return -1 if step == never else step


def gather_collected(collected: dict | None) -> dict | None:
    """Every process's validation probabilities and targets, concatenated in rank order, on rank 0
    (the one that draws the PR curves); None on the others."""
    if _group is None:
        return collected
    import torch.distributed as dist

    parts: list[Any] | None = [None] * _group.world_size if _group.main else None
    dist.gather_object(collected, parts, dst=0)
    parts = [p for p in parts or [] if p is not None]
    if not parts:
        return None
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def sync_buffers(module: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics), so all evaluate and save the same model."""
    if _group is None:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def state_digest(state: dict) -> str:
    """SHA-256 of a state_dict's names and tensor bytes (CPU, contiguous): equal digests, equal weights."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def replica_digests(model: nn.Module) -> list[str]:
    """Each process's `state_digest` of `model`, in rank order (one entry in a single-process run)."""
    sync_buffers(model)
    mine = state_digest(model.state_dict())
    if _group is None:
        return [mine]
    import torch.distributed as dist

    digests: list[Any] = [None] * _group.world_size
    dist.all_gather_object(digests, mine)
    return digests


class Replicated:
    """The model's forward through DistributedDataParallel: gradients averaged over every process.

    DDP fixes at construction which parameters it synchronises, so when the set that requires
    grad changes (train.unfreeze_at) the wrapper is rebuilt; every process sees the change at the
    same step, which keeps the rebuild (a collective) in step too.
    """

    def __init__(self, model: nn.Module, group: Group, *, compile: bool = False):
        self.model, self.group, self.compile = model, group, compile
        self._wrap()

    def _trainable(self) -> tuple[bool, ...]:
        return tuple(p.requires_grad for p in self.model.parameters())

    def _wrap(self) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.wrapped_for = self._trainable()
        device_ids = [self.group.device.index] if self.group.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.forward = torch.compile(self.ddp) if self.compile else self.ddp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._trainable() != self.wrapped_for:
            self._wrap()
        return self.forward(x)


def sync_gradients(forward: Any, sync: bool) -> None:
    """Whether the next backward through `forward` averages gradients across processes: not for the
    micro-batches that train.accumulate adds up before a step (DDP's no_sync, set before the forward)."""
    if isinstance(forward, Replicated):
        forward.ddp.require_backward_grad_sync = sync


def replicate(model: nn.Module, *, compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the loop calls instead of `model`: a Replicated forward in a process group, a compiled
    model with train.compile, else None (the model itself)."""
    if _group is not None:
        return Replicated(model, _group, compile=compile)
    return torch.compile(model) if compile else None


class SharedStop:
    """A stop request agreed by every process: a signal on any rank stops all of them at the same step.

    The flag is summed over the processes every `every` calls (on CPU every call; on CUDA once per
    log interval, since reading the result waits for the device). Every process calls it the same
    number of times, so the reductions line up.
    """

    def __init__(self, stop: Callable[[], bool], every: int = 1):
        self.stop, self.every = stop, every
        self.calls = 0
        self.agreed = False

    @property
    def requested(self) -> str | None:
        mine = getattr(self.stop, "requested", None)
        return mine or ("a stop request on another process" if self.agreed else None)

    def __call__(self) -> bool:
        if _group is None:
            return self.stop()
        self.calls += 1
        if not self.agreed and self.calls % self.every == 0:
            flag = torch.tensor([1.0 if self.stop() else 0.0], device=_group.device)
            self.agreed = all_reduce_sum(flag).item() > 0
        return self.agreed


def shared_stop(stop: Callable[[], bool], log_every: int) -> SharedStop:
    """`stop` agreed across the process group (itself, in effect, in a single process)."""
    every = 1 if _group is None or _group.device.type == "cpu" else log_every
    return SharedStop(stop, every)


class FollowerRunDir(RunDir):
    """The run folder as seen by ranks other than 0: its paths, and writes that do nothing."""

    def write_config(self, data: dict) -> None: ...
    def write_bad_files(self, bad_files: Any) -> None: ...
    def append_metrics(self, row: dict) -> None: ...
    def keep_metrics_until(self, epoch: int) -> None: ...
    def write_summary(self, summary: dict) -> None: ...
    def save(self, state: dict, *, best: bool) -> None: ...

    def hold(self) -> RunDir:  # rank 0 holds the folder for all ranks
        return self

    def release(self) -> None: ...
    def abandon(self) -> None: ...


def own_run_dir(run: RunDir) -> RunDir:
    """`run` on rank 0; elsewhere the same folder without its writes."""
    return run if is_main() else FollowerRunDir(run.path, run.columns)


def create_run_dir(create: Callable[[], RunDir]) -> RunDir:
    """Rank 0 creates the run folder (choosing name, name-2, ...) and tells the others which it is.

    Raises:
        ConfigError: the folder could not be created (raised on every rank, so all stop).
    """
    if _group is None:
        return create()
    import torch.distributed as dist

    run, message = None, [None]
    if _group.main:
        try:
            run = create()
            message = [(str(run.path), list(run.columns))]
        except ConfigError as exc:
            message = [str(exc)]
    dist.broadcast_object_list(message, src=0)
    if isinstance(message[0], str):
        raise ConfigError(message[0])
    return run if run is not None else FollowerRunDir(message[0][0], message[0][1])


class Silent:
    """Stands in for the TensorBoard writer on ranks other than 0: every method does nothing."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return _nothing


def _nothing(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 of each machine runs the block first (downloads, caches), the others after it."""
    if _group is not None and _group.local_rank != 0:
        _barrier()
    yield
    if _group is not None and _group.local_rank == 0:
        _barrier()


def _barrier() -> None:
    import torch.distributed as dist

    if _group.device.type == "cuda":
        dist.barrier(device_ids=[_group.device.index])
    else:
        dist.barrier()


def gather_rng(state: dict) -> list[dict] | None:
    """Every process's random state, in rank order, for the checkpoint; None in a single process."""
    if _group is None:
        return None
    import torch.distributed as dist

    states: list[Any] = [None] * _group.world_size
    dist.all_gather_object(states, state)
    return states


def own_rng(checkpoint: dict) -> dict:
    """This process's random state in `checkpoint`: its own when as many processes saved it, else rank 0's."""
    states = checkpoint.get("rank_rng")
    if _group is not None and states and len(states) == _group.world_size:
        return states[_group.rank]
    return checkpoint["rng"]
