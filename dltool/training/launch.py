"""`dltool train CONFIG --nproc N`: N local training processes through torch's own launcher.

The same as `torchrun --nproc_per_node N -m dltool train CONFIG ...` on a free loopback port, with
the launcher's outcome turned into dltool's exit codes (0 done, 1 failed, 2 bad input, 130
interrupted after saving).
"""

from __future__ import annotations

import os
import socket
from typing import Sequence

from dltool.errors import ConfigError

INTERRUPTED = 130


def free_port() -> int:
    """A TCP port nothing listens on at the moment, on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_args(nproc: int, train_args: Sequence[str], port: int) -> list[str]:
    """torchrun's command line for `nproc` local processes running `dltool train *train_args`."""
    return ["--nnodes", "1", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(port), "-m", "dltool", "train", *train_args]


def exit_code(failures: dict) -> int:
    """dltool's exit code for failed workers: the error of a worker that failed by itself (2 for bad
    input, else 1), else 130 when they were interrupted and saved. Workers that the launcher stopped
    because another one failed end by its signal (a negative code) or as interrupted."""
    codes = [failure.exitcode for failure in failures.values()]
    errors = [code for code in codes if code > 0 and code != INTERRUPTED]
    if errors:
        return 2 if all(code == 2 for code in errors) else 1
    return INTERRUPTED if INTERRUPTED in codes else 1


def launch_local(nproc: int, train_args: Sequence[str]) -> int:
    """Run `dltool train *train_args` in `nproc` processes on this machine and wait for them.

    Args:
        nproc: processes to start (one per GPU on a CUDA machine).
        train_args: the `dltool train` arguments, without --nproc.

    Returns:
        The exit code for the whole run.

    Raises:
        ConfigError: this process was itself started by torchrun.
    """
    if "LOCAL_RANK" in os.environ:
        raise ConfigError("--nproc: this process was started by torchrun already; drop --nproc")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun would give each process one thread (and print a banner saying so); share the cores instead
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(launcher_args(nproc, train_args, free_port()))
    try:
        run(args)
    except ChildFailedError as exc:
        return exit_code(exc.failures)
    except SignalException:
        return INTERRUPTED  # the launcher passed the signal on; the workers saved and stopped
    return 0


def launch_train(nproc: int, config: str | None, overrides: Sequence[str], *, resume: str | None = None,
                 name: str | None = None, runs_dir: str = "runs", quiet: bool = False) -> int:
    """`dltool train` in `nproc` local processes; the config (or checkpoint) is checked here first, so a
    mistake in it is reported once rather than by every process.

    Returns:
        The exit code for the whole run (see `launch_local`).

    Raises:
        ConfigError, CheckpointError: bad config, overrides or resume target.
    """
    from pathlib import Path

    from dltool.config.load import load_config
    from dltool.training.run_folder import never_saved, resume_checkpoint

    if resume is not None:
        if not never_saved(Path(resume)):
            resume_checkpoint(resume)
        args = ["--resume", str(resume), *overrides]
    elif config is None:
        raise ConfigError("train: give a config file, or --resume RUN_OR_CKPT")
    else:
        load_config(config, overrides)
        args = [str(config), *overrides]
    args += ["--runs-dir", str(runs_dir)] + (["--name", name] if name else []) + (["--quiet"] if quiet else [])
    return launch_local(nproc, args)
