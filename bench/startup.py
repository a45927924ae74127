"""Start-up cost of the CLI, as ratios to `python -c "import torch"` measured in the same run.

    python bench/startup.py [--repeat N]

Cold `dltool predict one.png --model <LeNet checkpoint>` (target <= 1.3x), the same through the
exported ONNX file, `--model lenet.onnx` (target <= 0.6x; needs `pip install "dltool[onnx]"`), and
`dltool --help` (target <= 0.15x). A round runs each command once in a fresh process, back to back
(torch, predict, onnx, help); the ratio of each round is printed as the median and the worst over N
rounds (the targets hold for every round, not on average). The LeNet checkpoint (random weights,
Resize/ToTensor/Normalize eval transforms) is written to a temporary folder, as `dltool train` would
lay it out, and exported with `dltool export`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LENET = [{"Conv2d": {"out_channels": 6, "kernel_size": 5, "padding": 2}}, "Sigmoid",
         {"AvgPool2d": {"kernel_size": 2, "stride": 2}}, {"Conv2d": {"out_channels": 16, "kernel_size": 5}}, "Sigmoid",
         {"AvgPool2d": {"kernel_size": 2, "stride": 2}}, "Flatten", {"Linear": {"out_features": 120}}, "Sigmoid",
         {"Linear": {"out_features": 84}}, "Sigmoid", {"Linear": {"out_features": "num_classes"}}]
EVAL = [{"Resize": [28, 28]}, "ToTensor", {"Normalize": {"mean": [0.5], "std": [0.5]}}]
TARGETS = {"predict": 1.3, "onnx": 0.6, "help": 0.15}


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """A LeNet checkpoint for the embedded digits and one 8x8 PNG."""
    import torch
    from PIL import Image

    from dltool.config.load import config_from_data
    from dltool.models import build_model
    from dltool.store.checkpoint import save_checkpoint

    config = config_from_data({"data": {"dataset": "Digits", "transforms": {"eval": EVAL}},
                               "model": {"layers": LENET}})
    model = build_model(config.model, (1, 28, 28), 10)
    state = {"model": model.state_dict(), "config": config.to_data(), "classes": [str(i) for i in range(10)],
             "input_shape": [1, 28, 28], "task": "classification", "split": {"method": "dataset"},
             "versions": {"torch": str(torch.__version__)}}
    checkpoint = save_checkpoint(state, folder / "lenet.pt")
    image = folder / "one.png"
    Image.new("L", (8, 8), 128).save(image)
    return checkpoint, image


def wall(command: list[str]) -> float:
    """Wall seconds of one fresh process running `command` (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    dltool = str(Path(sys.executable).with_name("dltool"))
    if not os.path.exists(dltool):
        sys.exit(f"{dltool} not found: install dltool into this Python environment first")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, image = write_inputs(Path(tmp))
        onnx_file = Path(tmp) / "lenet.onnx"
        subprocess.run([dltool, "export", str(checkpoint), "--out", str(onnx_file)], check=True)
        commands = {
            "torch": [sys.executable, "-c", "import torch"],
            "predict": [dltool, "predict", str(image), "--model", str(checkpoint), "--format", "json", "--device", "cpu"],
            "onnx": [dltool, "predict", str(image), "--model", str(onnx_file), "--format", "json"],
            "help": [dltool, "--help"],
        }
        for command in commands.values():
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # warm the file cache
        rounds = [{name: wall(command) for name, command in commands.items()} for _ in range(args.repeat)]
    torch_seconds = [r["torch"] for r in rounds]
    print(f"import torch            {statistics.median(torch_seconds):.3f} s (median of {args.repeat})")
    for name, label in (("predict", "dltool predict (cold)"), ("onnx", "predict .onnx (cold)"),
                        ("help", "dltool --help")):
        # each round's runs are adjacent in time: their ratio cancels the machine's drifting load
        ratios = [r[name] / r["torch"] for r in rounds]
        worst = max(ratios)
        verdict = "ok" if worst <= TARGETS[name] else "over target"
        print(f"{label:<23}{statistics.median(r[name] for r in rounds):.3f} s  ratio {statistics.median(ratios):.2f}x "
              f"median, {worst:.2f}x worst of {args.repeat} rounds  (target <= {TARGETS[name]}x in every round: "
              f"{verdict})")

if __name__ == "__main__":
    main()
