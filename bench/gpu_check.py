"""Every CUDA path of dltool, run on this machine's GPU: one line per check with its figure.

    python bench/gpu_check.py [--budget SECONDS] [--only quickstart,amp,...]

Each check runs the installed `dltool` (the one beside this Python) in fresh processes, in a
temporary folder, with its own timeout; one failing check does not stop the others. No process
runs past `--budget` seconds (default 450, so that the whole script stays under 8 minutes): a check
cut short by it fails as timed out, and the checks after it are skipped. The checks:

- quickstart: `dltool train configs/quickstart.yaml train.device=cuda`, then `dltool eval` and
  `dltool predict` of that run on cuda (val accuracy, samples/s).
- amp: the ResNet-18 of configs/cifar10_resnet18.yaml on FakeData (3x32x32, 5,000 images, 10
  classes) with `train.amp: auto` (bf16) and `train.channels_last: true` against fp32: samples/s of
  each (epochs after the first) and their ratio; the bf16 run's loss must be finite and go down,
  and bf16 must not be clearly slower (under 0.9x).
  FakeData's labels are random, so only memorising lowers the loss: this check trains without
  augmentation, which would slow memorising.
- loader: `data.cache: ram` on cuda (the batches of both loaders are on the GPU, read through the
  library) against `data.cache: none`, with the config's augmentation: samples/s and ratio.
- pinned: `data.pin_memory` true against false with `data.cache: none` and 2 workers (the batches
  of the first are pinned): samples/s and ratio.
- oom: 224x224 images through the CIFAR ResNet-18, in a batch whose activations need about twice
  the GPU's free memory (sized from torch.cuda.mem_get_info() and each layer's output size; no
  more samples than keep each activation under 2**31 elements) with weights that fit: the run must end
  with its batch split (summary.json batch_splits > 1) or the one-line out-of-memory error (exit
  1), never a traceback.
- compile: `train.compile: true` on the bf16 ResNet: compile_seconds from summary.json and samples/s
  after compiling.
- nproc: `dltool train --nproc 2` (NCCL) when the machine has 2 GPUs or more.

At the end: "N passed, M failed, K skipped"; the exit code is 1 when a check failed. Without CUDA
the script prints one line saying so and exits 0.

`--cpu-dry-run` (not listed in --help) runs every check's commands on the CPU with tiny sizes and
prints no speed figures: it proves on a machine without a GPU that each command line is right.
Checks that cannot happen on a CPU (running out of GPU memory, NCCL, pinned batches) run the same
command and say what they could not check. `--probe NAME` is internal: the child process that
reads GPU memory or a loader's batches, so that this process never holds GPU memory itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
CIFAR_NORM = "{Normalize: {mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616]}}"
NO_AUGMENTATION = f"data.transforms.train=[ToTensor, {CIFAR_NORM}]"
OOM_INPUT = [3, 224, 224]  # the CIFAR ResNet keeps 224x224 through its first stage: ~0.4 GB per sample


class Failed(Exception):
    """A check that found something wrong (the message is its figure)."""


class Skipped(Exception):
    """A check that cannot run here (the message says why)."""


@dataclass(frozen=True)
class Result:
    status: str  # PASS, FAIL or SKIP
    what: str
    figure: str


@dataclass
class Env:
    """What every check shares: where it runs, on which device, at which sizes, until when."""

    dry: bool
    tmp: Path
    deadline: float
    dltool: str = str(Path(sys.executable).with_name("dltool"))
    gpus: int = 0
    runs: dict = field(default_factory=dict)  # name -> Run, for checks that compare with another's run

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def size(self, gpu: int, cpu: int) -> int:
        return cpu if self.dry else gpu


@dataclass(frozen=True)
class Run:
    folder: Path
    summary: dict
    rows: list  # metrics.csv, one dict per epoch

    def speed(self) -> float:
        """Median training samples/s of the epochs after the first (the first warms caches and kernels up)."""
        rows = self.rows[1:] or self.rows
        return statistics.median(float(r["samples_per_second"]) for r in rows)


# Processes ---------------------------------------------------------------------------------------


def run_process(env: Env, command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`command` in its own process group (killed whole, workers too, when it runs past `timeout`
    or the budget); a traceback on stderr fails the check."""
    limit = min(timeout, env.deadline - time.monotonic())
    if limit < 10:
        raise Skipped("the time budget is spent (--budget)")
    proc = subprocess.Popen(command, cwd=env.tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise Failed(f"timed out after {limit:.0f} s: {Path(command[0]).name} {command[1]}") from None
    if "Traceback (most recent call last)" in err:
        raise Failed(f"traceback from {Path(command[0]).name} {command[1]}: {last_line(err)}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def dltool(env: Env, args: list[str], timeout: float, *, check: bool = True) -> subprocess.CompletedProcess:
    """`dltool *args`; with `check`, any exit code but 0 fails the check."""
    done = run_process(env, [env.dltool, *args], timeout)
    if check and done.returncode != 0:
        raise Failed(f"dltool {args[0]} exited {done.returncode}: {last_line(done.stderr or done.stdout)}")
    return done


def train(env: Env, name: str, config: Path, overrides: list[str], timeout: float, *,
          options: tuple[str, ...] = (), check: bool = True) -> tuple[subprocess.CompletedProcess, Run | None]:
    """`dltool train` into env.tmp/runs/`name` on env.device; the run's summary and metrics when it
    wrote them. With `check`, any exit code but 0 fails the check."""
    args = ["train", str(config), *overrides, f"train.device={env.device}",
            "--runs-dir", str(env.tmp / "runs"), "--name", name, "-q", *options]
    done = dltool(env, args, timeout, check=check)
    folder = env.tmp / "runs" / name
    if not (folder / "summary.json").is_file():
        return done, None
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    run = Run(folder, json.loads((folder / "summary.json").read_text()), rows)
    env.runs[name] = run
    return done, run


def probe(env: Env, name: str, args: list[str], timeout: float) -> dict:
    """This script's `--probe name` in a child process: its one JSON line."""
    done = run_process(env, [sys.executable, str(Path(__file__).resolve()), "--probe", name, *args], timeout)
    if done.returncode != 0:
        raise Failed(f"probe {name} exited {done.returncode}: {last_line(done.stderr)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# Configs -----------------------------------------------------------------------------------------


def resnet_fake(env: Env, images: int, shape: list[int], name: str = "resnet_fake", batch: int = 128) -> Path:
    """configs/cifar10_resnet18.yaml with FakeData of `images` images of `shape` for CIFAR10, and no
    TensorBoard histograms (their per-epoch cost would blur the speed figures)."""
    dataset = {"name": "FakeData", "size": images, "image_size": shape, "num_classes": 10}
    path = env.tmp / f"{name}.yaml"
    path.write_text(f"base: {CONFIGS / 'cifar10_resnet18.yaml'}\n"
                    f"data:\n  dataset: {json.dumps(dataset)}\n  batch_size: {batch}\n"
                    "train:\n  histograms: false\n")
    return path


def resnet_data(env: Env) -> Path:
    """The CIFAR-sized ResNet on 5,000 FakeData images (40 in batches of 8 on a dry run)."""
    return resnet_fake(env, env.size(5000, 40), [3, 32, 32], batch=env.size(128, 8))


def epochs(env: Env, gpu: int) -> str:
    return f"train.epochs={env.size(gpu, 2)}"


def per_s(value: float, env: Env, label: str = "") -> str:
    """A speed figure, or nothing on a dry run (where speeds mean nothing)."""
    return "" if env.dry else f"{label} {value:,.0f} samples/s".strip()


def ratio(a: float, b: float, env: Env) -> str:
    return "" if env.dry else f"{a / b:.2f}x"


def join(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


# Checks ------------------------------------------------------------------------------------------


def check_quickstart(env: Env) -> str:
    _, run = train(env, "quickstart", CONFIGS / "quickstart.yaml", [], 150)
    accuracy = run.summary["best_val_accuracy"]
    if accuracy < 0.9:
        raise Failed(f"val accuracy {accuracy:.3f} < 0.9 (the quickstart promises about 0.98)")
    return join(f"val accuracy {accuracy:.3f}", per_s(run.summary["train_samples_per_second"], env))


def check_eval(env: Env) -> str:
    run = env.runs.get("quickstart") or _skip("the quickstart run did not finish")
    done = dltool(env, ["eval", str(run.folder), "--device", env.device, "--json"], 90)
    accuracy = json.loads(done.stdout)["accuracy"]
    recorded = run.summary["best_val_accuracy"]
    if abs(accuracy - recorded) > 0.01:
        raise Failed(f"eval accuracy {accuracy:.4f} differs from the recorded {recorded:.4f}")
    return f"accuracy {accuracy:.4f} (recorded in training {recorded:.4f})"


def check_predict(env: Env) -> str:
    run = env.runs.get("quickstart") or _skip("the quickstart run did not finish")
    folder, labels = write_digits(env.tmp / "digits", 20)
    done = dltool(env, ["predict", str(folder), "--model", str(run.folder), "--device", env.device,
                        "--format", "json"], 90)
    rows = json.loads(done.stdout)
    if len(rows) != len(labels):
        raise Failed(f"{len(rows)} predictions for {len(labels)} images")
    right = sum(row["top"][0]["class"] == labels[Path(row["path"]).name] for row in rows)
    if right < 0.8 * len(rows):
        raise Failed(f"{right}/{len(rows)} digits right")
    return f"{right}/{len(rows)} digits right"


def write_digits(folder: Path, count: int) -> tuple[Path, dict[str, str]]:
    """The first `count` embedded digits as 8x8 PNGs, and each file's true class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i in range(count):
        name = f"{i}.png"
        Image.fromarray(np.rint(digits.images[i] * 255 / 16).astype(np.uint8), "L").save(folder / name)
        labels[name] = str(digits.target[i])
    return folder, labels


def check_amp(env: Env) -> str:
    config, common = resnet_data(env), [epochs(env, 10), NO_AUGMENTATION, "data.cache=ram"]
    _, fp32 = train(env, "fp32", config, [*common, "train.amp=none", "train.channels_last=false"], 150)
    _, bf16 = train(env, "bf16", config, [*common, "train.amp=auto", "train.channels_last=true"], 150)
    losses = [float(r["train_loss"]) for r in bf16.rows]
    if not all(math.isfinite(x) for x in losses):
        raise Failed(f"bf16 train loss not finite: {losses}")
    if not env.dry and losses[-1] >= losses[0]:
        raise Failed(f"bf16 train loss did not go down: {' '.join(f'{x:.3f}' for x in losses)}")
    if not env.dry and bf16.speed() < 0.9 * fp32.speed():
        raise Failed(f"bf16+channels_last slower than fp32: {bf16.speed():,.0f} vs {fp32.speed():,.0f} samples/s")
    loss = f"bf16 loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    return join(per_s(fp32.speed(), env, "fp32"), per_s(bf16.speed(), env, "bf16+channels_last"),
                ratio(bf16.speed(), fp32.speed(), env), loss)


def check_loader(env: Env) -> str:
    config, common = resnet_data(env), [epochs(env, 3), "train.amp=auto", "train.channels_last=true"]
    seen = probe(env, "loader", [str(config), env.device, "ram", "auto"], 120)
    if seen["devices"] != [env.device] * 2:
        raise Failed(f"data.cache=ram batches on {seen['devices']} (train, val), not {env.device}")
    _, ram = train(env, "cache_ram", config, [*common, "data.cache=ram"], 150)
    _, none = train(env, "cache_none", config, [*common, "data.cache=none"], 150)
    return join(f"batches on {env.device}", per_s(ram.speed(), env, "ram"), per_s(none.speed(), env, "none"),
                ratio(ram.speed(), none.speed(), env))


def check_pinned(env: Env) -> str:
    config = resnet_data(env)
    common = [epochs(env, 3), "train.amp=auto", "train.channels_last=true", "data.cache=none", "data.num_workers=2"]
    pinned = probe(env, "loader", [str(config), env.device, "none", "true"], 120)["pinned"]
    if pinned != (env.device == "cuda"):
        raise Failed(f"data.pin_memory=true batches pinned: {pinned}")
    _, on = train(env, "pinned", config, [*common, "data.pin_memory=true"], 150)
    _, off = train(env, "pageable", config, [*common, "data.pin_memory=false"], 150)
    note = "batches pinned" if pinned else "CPU: nothing to pin"
    return join(note, per_s(on.speed(), env, "pinned"), per_s(off.speed(), env, "pageable"),
                ratio(on.speed(), off.speed(), env))


def check_oom(env: Env) -> str:
    shape = OOM_INPUT if not env.dry else [3, 16, 16]
    plan = probe(env, "memory", [str(CONFIGS / "cifar10_resnet18.yaml"), json.dumps(shape)], 120)
    batch = 8 if env.dry else oom_batch(plan)
    if not env.dry and plan["weight_bytes"] * 4 > plan["free"]:
        raise Failed(f"the weights do not fit: {plan['weight_bytes'] / 2**30:.1f} GiB")
    if not env.dry and batch * plan["activation_bytes"] <= plan["free"]:
        raise Skipped(f"{plan['free'] / 2**30:,.0f} GiB free: {'x'.join(map(str, shape))} images cannot exceed it")
    images = math.ceil(batch / 0.95) + 2  # 5% for validation, and a full first batch
    config = resnet_fake(env, images, shape, "resnet_oom")
    overrides = ["train.epochs=1", NO_AUGMENTATION, f"data.batch_size={batch}", "data.val_split=0.05",
                 "data.cache=ram", "train.amp=none", "train.channels_last=false", "model.input_shape=null"]
    done, run = train(env, "oom", config, overrides, 240, check=False)
    sized = f"batch {batch} of {'x'.join(map(str, shape))}"
    if not env.dry:
        sized += (f" (~{batch * plan['activation_bytes'] / 2**30:,.0f} GiB of activations, "
                  f"{plan['free'] / 2**30:,.0f} GiB free)")
    if done.returncode == 1 and "out of memory" in last_line(done.stderr):
        return f"{sized}: exit 1 with the error: {last_line(done.stderr)}"
    if done.returncode != 0 or run is None:
        raise Failed(f"{sized}: exit {done.returncode}: {last_line(done.stderr or done.stdout)}")
    splits = run.summary["batch_splits"]
    if env.dry:
        return f"{sized}: command ran, batch_splits {splits} (a CPU has no GPU memory to exceed)"
    if splits <= 1:
        raise Failed(f"{sized}: the batch fit (batch_splits 1): nothing was exceeded")
    return f"{sized}: split in {splits} parts, finished"


def oom_batch(plan: dict) -> int:
    """A batch whose activations need about twice the free GPU memory, at most as many samples as keep
    the largest activation under 2**31 elements (the limit of 32-bit indexing in many kernels)."""
    return min(math.ceil(2 * plan["free"] / plan["activation_bytes"]), (2**31 - 1) // plan["largest"])


def check_compile(env: Env) -> str:
    config = resnet_data(env)
    overrides = [epochs(env, 4), NO_AUGMENTATION, "data.cache=ram", "data.drop_last=true", "train.amp=auto",
                 "train.channels_last=true", "train.compile=true"]
    _, run = train(env, "compiled", config, overrides, 300)
    seconds = run.summary["compile_seconds"]
    if seconds <= 0:
        raise Failed("summary.json compile_seconds is 0: the model was not compiled")
    if env.dry:
        return f"compile {seconds:.1f} s"
    eager = env.runs.get("bf16")
    versus = f"{run.speed() / eager.speed():.2f}x eager bf16" if eager else ""
    return join(f"compile {seconds:.1f} s", per_s(run.speed(), env, "then"), versus)


def check_nproc(env: Env) -> str:
    if not env.dry and env.gpus < 2:
        raise Skipped(f"{env.gpus} GPU: --nproc 2 with NCCL needs 2")
    _, run = train(env, "nproc", CONFIGS / "quickstart.yaml", [epochs(env, 4)], 240, options=("--nproc", "2"))
    if run.summary["world_size"] != 2:
        raise Failed(f"world_size {run.summary['world_size']}, not 2")
    backend = "gloo (CPU)" if env.dry else "NCCL"
    return join(f"2 processes over {backend}", f"val accuracy {run.summary['best_val_accuracy']:.3f}",
                per_s(run.summary["train_samples_per_second"], env))


def _skip(reason: str):
    raise Skipped(reason)


# name (for --only) -> (what the output line says, the check)
CHECKS: dict[str, tuple[str, Callable[[Env], str]]] = {
    "quickstart": ("quickstart train", check_quickstart),
    "eval": ("quickstart eval", check_eval),
    "predict": ("quickstart predict", check_predict),
    "amp": ("ResNet-18 bf16+channels_last vs fp32", check_amp),
    "loader": ("in-memory loader (cache ram vs none)", check_loader),
    "pinned": ("pinned memory (pin_memory true vs false)", check_pinned),
    "oom": ("out-of-memory split", check_oom),
    "compile": ("train.compile", check_compile),
    "nproc": ("--nproc 2", check_nproc),
}


# Probes (run in a child process) -----------------------------------------------------------------


def probe_memory(config: str, shape: str) -> dict:
    """Free GPU memory, and the model's weight bytes and per-sample activation bytes at `shape` (the
    sum of every leaf layer's output: a lower bound of what training keeps), measured on the meta
    device so that nothing is allocated."""
    import torch

    from dltool.config.load import load_config
    from dltool.models import build_model

    free, total = torch.cuda.mem_get_info() if torch.cuda.is_available() else (0, 0)
    with torch.device("meta"):
        model = build_model(load_config(config).model, tuple(json.loads(shape)), 10)
        outputs = []
        for module in model.modules():
            if not list(module.children()):
                module.register_forward_hook(lambda m, i, o: outputs.append(o))
        model(torch.empty(1, *json.loads(shape)))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"free": free, "total": total, "weight_bytes": weights,
            "activation_bytes": sum(o.numel() * o.element_size() for o in outputs),
            "largest": max(o.numel() for o in outputs)}


def probe_loader(config: str, device: str, cache: str, pin: str) -> dict:
    """Where the first batch of the train and val loaders lands, and whether the train one is pinned."""
    from dltool.config.load import load_config
    from dltool.data.build import build_data
    from dltool.data.loaders import make_loader

    cfg = load_config(config, [f"data.cache={cache}", f"data.pin_memory={pin}"])
    bundle = build_data(cfg)
    batches = [next(iter(make_loader(dataset, cfg.data, train=train, seed=0, device=device)))
               for dataset, train in ((bundle.train, True), (bundle.val, False))]
    return {"devices": [x.device.type for x, _ in batches], "pinned": batches[0][0].is_pinned()}


PROBES = {"memory": probe_memory, "loader": probe_loader}


# Main --------------------------------------------------------------------------------------------


def run_check(env: Env, name: str) -> Result:
    """Check `name`, its line printed as soon as it is known."""
    what, fn = CHECKS[name]
    begun = time.monotonic()
    try:
        status, figure = "PASS", fn(env)
    except Failed as exc:
        status, figure = "FAIL", str(exc)
    except Skipped as exc:
        status, figure = "SKIP", str(exc)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, OSError) as exc:
        # what a check gets from output it did not expect: reported, and the other checks still run
        status, figure = "FAIL", f"{type(exc).__name__}: {exc}"
    print(f"{status:<5} {what:<42} {figure} [{time.monotonic() - begun:.0f} s]", flush=True)
    return Result(status, what, figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, help="seconds no process runs past (default 450; 1200 on a dry run)")
    parser.add_argument("--only", help=f"comma-separated checks to run, of: {', '.join(CHECKS)} (eval and predict "
                                       "use the quickstart's run)")
    parser.add_argument("--cpu-dry-run", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(PROBES[args.probe[0]](*args.probe[1:])))
        return 0
    asked = args.only.split(",") if args.only else list(CHECKS)
    unknown = [name for name in asked if name not in CHECKS]
    if unknown:
        parser.error(f"--only: unknown check {unknown[0]!r}; allowed: {', '.join(CHECKS)}")
    only = [name for name in CHECKS if name in asked]  # in their order: eval and predict follow quickstart
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("SKIP  no CUDA device here (torch.cuda.is_available() is False): nothing to check")
        return 0
    if not Path(Env.dltool).exists():
        print(f"FAIL  {Env.dltool} not found: install dltool into this Python environment first")
        return 1
    budget = args.budget or (1200 if args.cpu_dry_run else 450)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        env = Env(dry=args.cpu_dry_run, tmp=Path(tmp), deadline=started + budget,
                  gpus=0 if args.cpu_dry_run else torch.cuda.device_count())
        where = "CPU dry run, tiny sizes, no speed figures" if env.dry else \
            f"{env.gpus} x {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
        print(f"dltool GPU check: {where}", flush=True)
        results = [run_check(env, name) for name in only]
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {time.monotonic() - started:.0f} s")
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
