"""The user's own code through every command: `--code` files and `dltool.plugins` entry points,
registered layers, datasets, transforms, losses and whole models, the run's record of its code,
and `data.classes`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from dltool.cli.commands import app
from dltool.config import usercode

BLOCKS = '''
import csv
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from dltool import register


@register.layer
class SEBlock(nn.Module):
    """Squeeze-excitation: in_channels comes from the incoming shape."""

    def __init__(self, in_channels, reduction=4):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, max(1, in_channels // reduction))
        self.fc2 = nn.Linear(max(1, in_channels // reduction), in_channels)

    def forward(self, x):
        w = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3))))))
        return x * w[:, :, None, None]


@register.dataset
class CsvImages(Dataset):
    def __init__(self, path):
        self.root = Path(path).parent
        with open(path) as f:
            self.rows = [(row["path"], int(row["label"])) for row in csv.DictReader(f)]
        self.classes = ["dark", "light"]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        path, label = self.rows[i]
        return Image.open(self.root / path).convert("L"), label


@register.transform
def brighten(image, amount=0.0):
    return (image + amount).clamp(0, 1)


@register.loss("SmoothCE")
class SmoothCrossEntropy(nn.Module):
    def __init__(self, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing

    def forward(self, outputs, targets):
        return nn.functional.cross_entropy(outputs, targets, label_smoothing=self.smoothing)


@register.model
class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), SEBlock(width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x):
        return self.body(x)
'''

CONFIG = """\
data:
  dataset: {name: CsvImages, path: data.csv}
  batch_size: 8
  transforms:
    train: [ToTensor, {brighten: {amount: 0.02}}]
    eval: [ToTensor]
model:
  layers:
    - Conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
    - SEBlock: {reduction: 2}
    - Flatten
    - Linear: {out_features: num_classes}
loss: {name: SmoothCE, smoothing: 0.05}
optimizer: {name: Adam, lr: 0.01}
train: {epochs: 2, device: cpu}
"""


@pytest.fixture(autouse=True)
def no_code_left():
    """Each test loads its own code: the registries, modules and environment are as before afterwards."""
    yield
    usercode.forget()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder as a learner has it: blocks.py, data.csv with 40 8x8 images (dark 0, light 1), cfg.yaml."""
    (tmp_path / "blocks.py").write_text(BLOCKS)
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    with open(tmp_path / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        for i in range(40):
            pixels = (rng.integers(0, 80, (8, 8)) + (i % 2) * 150).astype(np.uint8)
            Image.fromarray(pixels, "L").save(tmp_path / "images" / f"{i}.png")
            writer.writerow([f"images/{i}.png", i % 2])
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def dltool(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    env.pop(usercode.ENVIRONMENT, None)
    return subprocess.run([sys.executable, "-m", "dltool", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_shapes_shows_the_users_layer_with_its_inferred_in_channels(project):
    result = invoke("shapes", "cfg.yaml", "--code", "blocks.py", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["layers"]}
    assert rows["1"]["type"] == "SEBlock" and rows["1"]["output_shape"] == [1, 4, 8, 8]
    assert rows["1"]["params"] == (4 * 2 + 2) + (2 * 4 + 4)  # fc1 4->2, fc2 2->4: in_channels 4 inferred


def test_a_run_trains_evaluates_predicts_and_exports_with_the_users_code(project):
    trained = invoke("train", "cfg.yaml", "--code", "blocks.py", "--runs-dir", "runs", "--quiet")
    assert trained.exit_code == 0, trained.output
    run = project / "runs" / "cfg"
    record = json.loads((run / "code" / "code.json").read_text())
    digest = usercode.loaded()[0].sha256
    assert record == [{"path": str(project / "blocks.py"), "sha256": digest, "plugin": False,
                       "names": ["SEBlock", "CsvImages", "brighten", "SmoothCE"],
                       "copy": f"code/blocks-{digest[:8]}.py"}]
    assert (run / record[0]["copy"]).read_text() == BLOCKS
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # plain data: nothing to import
    assert state["code"][0]["names"] == ["SEBlock", "CsvImages", "brighten", "SmoothCE"]
    assert state["classes"] == ["dark", "light"]

    usercode.forget()
    refused = invoke("eval", str(run))
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: {run / 'checkpoints' / 'best.pt'}: uses SEBlock, CsvImages, brighten, SmoothCE from "
        f"{project / 'blocks.py'}, which is not loaded; add --code {project / 'blocks.py'}")
    evaluated = invoke("eval", str(run), "--code", "blocks.py", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["samples"] == 8
    assert json.loads(evaluated.stdout)["accuracy"] > 0.8
    predicted = invoke("predict", "images/1.png", "--model", str(run), "--code", "blocks.py", "--format", "json")
    assert predicted.exit_code == 0, predicted.output
    assert {t["class"] for t in json.loads(predicted.stdout)[0]["top"]} == {"dark", "light"}
    exported = invoke("export", str(run), "--code", "blocks.py", "--json")
    assert exported.exit_code == 0, exported.output

    usercode.forget()
    onnx = dltool("predict", "images/1.png", "--model", str(run / "model.onnx"), "--format", "json", cwd=project)
    assert onnx.returncode == 0, onnx.stderr
    assert json.loads(onnx.stdout)[0]["top"][0]["class"] == json.loads(predicted.stdout)[0]["top"][0]["class"]


def test_a_changed_code_file_is_one_warning_and_the_command_goes_on(project):
    assert invoke("train", "cfg.yaml", "--code", "blocks.py", "--runs-dir", "runs", "--quiet",
                  "train.epochs=1").exit_code == 0
    usercode.forget()
    old = usercode.CodeFile("", __import__("hashlib").sha256(BLOCKS.encode()).hexdigest()).sha256
    (project / "blocks.py").write_text(BLOCKS + "\n# tuned\n")
    result = invoke("eval", "runs/cfg", "--code", "blocks.py", "--json")
    assert result.exit_code == 0, result.output
    new = usercode.loaded()[0].sha256
    assert result.stderr.strip() == (
        f"warning: {project / 'blocks.py'} differs from the code runs/cfg/checkpoints/best.pt was trained with "
        f"(sha256 {old[:12]} then, {new[:12]} now); going on with it")


def test_a_whole_model_by_name_gets_num_classes_and_in_channels(project):
    (project / "model.yaml").write_text(CONFIG.split("model:")[0] + "model: {name: TinyNet, width: 4}\n"
                                        "train: {epochs: 1, device: cpu}\n")
    result = invoke("train", "model.yaml", "--code", "blocks.py", "--runs-dir", "runs", "--quiet")
    assert result.exit_code == 0, result.output
    state = torch.load(project / "runs" / "model" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["0.body.0.weight"].shape == (4, 1, 3, 3)  # in_channels 1 from the gray images
    assert state["model"]["0.body.5.weight"].shape == (2, 4)  # num_classes 2 from the dataset
    both = invoke("config", "model.yaml", "--code", "blocks.py", "model.layers=[Flatten]")
    assert both.exit_code == 2
    assert "model.name: give either name: (one whole network) or layers:, not both" in both.stderr


def test_an_exception_while_loading_shows_their_traceback_then_one_line(project):
    (project / "broken.py").write_text("from dltool import register\n\n\ndef helper():\n    return 1 / 0\n\n\n"
                                       "helper()\n")
    result = invoke("config", "cfg.yaml", "--code", "broken.py")
    assert result.exit_code == 2
    assert result.stderr == (
        "Traceback (most recent call last):\n"
        f'  File "{project / "broken.py"}", line 8, in <module>\n    helper()\n'
        f'  File "{project / "broken.py"}", line 5, in helper\n    return 1 / 0\n'
        + ("           ~~^~~\n" if sys.version_info >= (3, 11) else "")
        + "ZeroDivisionError: division by zero\n"
        f"error: {project / 'broken.py'}: loading this code failed (ZeroDivisionError: division by zero); "
        "the traceback above is its own\n")


def test_a_name_taken_by_a_built_in_or_another_file_names_both(project):
    (project / "clash.py").write_text("from torch import nn\nfrom dltool import register\n\n\n"
                                      "@register.layer\nclass Conv2d(nn.Module):\n    pass\n")
    builtin = invoke("config", "cfg.yaml", "--code", "clash.py")
    assert builtin.exit_code == 2
    assert builtin.stderr.strip() == (
        f"error: {project / 'clash.py'}: layer 'Conv2d' collides with 'Conv2d' from built-in "
        "torch.nn.modules.conv; register it under another name, e.g. @register.layer(\"MyConv2d\")")
    (project / "other.py").write_text("from torch import nn\nfrom dltool import register\n\n\n"
                                      "@register.layer(\"SEBlock\")\nclass Mine(nn.Module):\n    pass\n")
    other = invoke("config", "cfg.yaml", "--code", "blocks.py", "--code", "other.py")
    assert other.exit_code == 2
    assert other.stderr.strip() == (
        f"error: {project / 'other.py'}: layer 'SEBlock' collides with 'SEBlock' from {project / 'blocks.py'}; "
        "register it under another name, e.g. @register.layer(\"MySEBlock\")")


def test_a_config_never_imports_a_dotted_path(project):
    result = invoke("config", "cfg.yaml", "--code", "blocks.py", "model.layers.1=blocks.SEBlock")
    assert result.exit_code == 2
    assert result.stderr.strip().endswith("nothing in a config imports code (dltool list shows the names); "
                                          "did you mean SEBlock?")
    usercode.forget()
    missing = invoke("config", "cfg.yaml")
    assert missing.exit_code == 2
    assert "unknown dataset 'CsvImages'" in missing.stderr


def test_a_shape_mismatch_inside_the_users_block_names_block_index_file_and_line(project):
    (project / "bad.py").write_text("from torch import nn\nfrom dltool import register\n\n\n@register.layer\n"
                                    "class Squash(nn.Module):\n    def __init__(self, in_channels):\n"
                                    "        super().__init__()\n        self.fc = nn.Linear(in_channels + 1, 4)\n\n"
                                    "    def forward(self, x):\n        return self.fc(x.mean((2, 3)))\n")
    result = invoke("shapes", "cfg.yaml", "--code", "blocks.py", "--code", "bad.py",
                    "model.layers.1={Residual: {body: [Squash]}}")
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: command line: model.layers.1.body.0: Squash: cannot take an input of shape 4x8x8: ")
    assert line.endswith(f"(in {project / 'bad.py'}:12)")


DATASETS = '''
import numpy as np
import torch
from torch.utils.data import Dataset

from dltool import register


@register.dataset
class Stripes(Dataset):
    """train: bool, numpy images."""

    def __init__(self, train=True, size=24):
        self.size = size if train else 8
        self.classes = ["flat", "striped"]

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        image = np.zeros((8, 8), np.uint8)
        if i % 2:
            image[::2] = 200
        return image, i % 2


@register.dataset
class Noise(Dataset):
    """split: str, tensor images."""

    def __init__(self, split):
        self.count = {"train": 20, "val": 6, "test": 4}[split]

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        return torch.full((1, 8, 8), float(i % 3) / 2), i % 3


@register.dataset
class Unpicklable(Dataset):
    def __init__(self):
        self.make = lambda i: np.full((8, 8), 100 * (i % 2), np.uint8)

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return self.make(i), i % 2
'''


@pytest.mark.parametrize(("name", "counts"), [
    ("Stripes", {"train": {"flat": 12, "striped": 12}, "val": {"flat": 4, "striped": 4}}),
    ("Noise", {"train": {"0": 7, "1": 7, "2": 6}, "val": {"0": 2, "1": 2, "2": 2}, "test": {"0": 2, "1": 1, "2": 1}}),
])
def test_a_dataset_with_train_or_split_is_built_per_split_and_reported(project, name, counts):
    (project / "sets.py").write_text(DATASETS)
    result = invoke("data", "cfg.yaml", "--code", "blocks.py", "--code", "sets.py", f"data.dataset={name}", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split_method"] == "dataset" and report["input_shape"] == [1, 8, 8]
    assert {split: part["counts"] for split, part in report["splits"].items()} == counts


def test_num_workers_two_loads_the_users_dataset_in_workers_and_a_class_that_does_not_pickle_is_one_line(project):
    (project / "sets.py").write_text(DATASETS)
    ok = invoke("train", "cfg.yaml", "--code", "blocks.py", "--runs-dir", "runs", "--quiet", "data.num_workers=2",
                "data.cache=none", "train.epochs=1")
    assert ok.exit_code == 0, ok.output
    bad = invoke("train", "cfg.yaml", "--code", "blocks.py", "--code", "sets.py", "--runs-dir", "runs", "--quiet",
                 "data.dataset=Unpicklable", "data.num_workers=2", "data.cache=none", "train.epochs=1")
    assert bad.exit_code == 2
    assert bad.stderr.strip() == (
        "error: data.num_workers: 2 sends the dataset to worker processes, but Unpicklable does not pickle "
        "(AttributeError: Can't pickle local object 'Unpicklable.__init__.<locals>.<lambda>'); keep open files "
        "and lambdas out of its attributes, or set data.num_workers: 0")


def test_resume_after_kill_9_needs_the_code_again(project):
    slow = project / "slow.yaml"
    slow.write_text("base: cfg.yaml\ntrain: {epochs: 400}\n")
    process = subprocess.Popen([sys.executable, "-m", "dltool", "train", str(slow), "--code", "blocks.py",
                                "--runs-dir", "runs", "--quiet"], cwd=project, env=dict(os.environ),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = project / "runs" / "slow" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists()
    refused = invoke("train", "--resume", "runs/slow", "--quiet")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        f"error: runs/slow/checkpoints/last.pt: uses SEBlock, CsvImages, brighten, SmoothCE from "
        f"{project / 'blocks.py'}, which is not loaded; add --code {project / 'blocks.py'}")
    done = torch.load(last, weights_only=True)["epoch"]  # however far the killed run got on this machine
    resumed = invoke("train", "--resume", "runs/slow", f"train.epochs={done + 2}", "--code", "blocks.py", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((project / "runs" / "slow" / "summary.json").read_text())["epochs_done"] == done + 2
    usercode.forget()
    lr = invoke("lr-find", "runs/slow/config.yaml", "--steps", "5")
    assert lr.exit_code == 2
    assert lr.stderr.strip() == (f"error: runs/slow: uses SEBlock, CsvImages, brighten, SmoothCE from "
                                 f"{project / 'blocks.py'}, which is not loaded; add --code {project / 'blocks.py'}")


def test_nproc_2_ranks_import_the_code(project):
    done = dltool("train", "cfg.yaml", "--code", "blocks.py", "--nproc", "2", "--runs-dir", "runs", "--quiet",
                  "train.epochs=1", cwd=project)
    assert done.returncode == 0, done.stderr
    summary = json.loads((project / "runs" / "cfg" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert (project / "runs" / "cfg" / "code" / "code.json").exists()


def test_tune_workers_2_import_the_code(project):
    (project / "search.yaml").write_text(
        "base: cfg.yaml\ntrain: {epochs: 1}\ntune:\n  sampler: {name: RandomSampler, seed: 0}\n  pruner: null\n"
        "  space:\n    optimizer.lr: {log: [1.0e-3, 1.0e-1]}\n")
    done = dltool("tune", "search.yaml", "--code", "blocks.py", "--trials", "3", "--workers", "2", "--runs-dir", "runs",
                  "--quiet", "--json", cwd=project)
    assert done.returncode == 0, done.stderr
    trials = json.loads(done.stdout)["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    assert all((Path(t["run_dir"]) / "code" / "code.json").exists() for t in trials)


def test_a_plugin_package_registers_through_its_entry_point(project):
    site = project / "site"
    (site / "dltool_se").mkdir(parents=True)
    (site / "dltool_se" / "__init__.py").write_text(
        "from torch import nn\nfrom dltool import register\n\n\n@register.layer\nclass PluginGate(nn.Module):\n"
        "    def forward(self, x):\n        return x\n")
    info = site / "dltool_se-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dltool-se\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[dltool.plugins]\nse = dltool_se\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path(__file__).parents[1])])}
    listed = subprocess.run([sys.executable, "-m", "dltool", "list", "layers", "--json"], cwd=project,
                            capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "PluginGate" in json.loads(listed.stdout)


def test_data_classes_keeps_a_subset_relabelled_in_order_and_binary_works_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bin.yaml").write_text(
        "data: {dataset: Digits, classes: [8, 3]}\nmodel:\n  layers: [Flatten, {Linear: {out_features: 1}}]\n"
        "loss: BCEWithLogitsLoss\noptimizer: {name: Adam, lr: 0.01}\ntrain: {epochs: 8, device: cpu}\n")
    report = invoke("data", "bin.yaml", "--json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["classes"] == ["8", "3"]
    trained = invoke("train", "bin.yaml", "--runs-dir", "runs", "--quiet")
    assert trained.exit_code == 0, trained.output
    state = torch.load(tmp_path / "runs" / "bin" / "checkpoints" / "best.pt", weights_only=True)
    assert state["classes"] == ["8", "3"] and state["output"] == "sigmoid"
    assert json.loads((tmp_path / "runs" / "bin" / "summary.json").read_text())["best_val_accuracy"] > 0.9
    from sklearn.datasets import load_digits

    digits = load_digits()
    three = digits.images[list(digits.target).index(3)]
    Image.fromarray(np.rint(three * 255 / 16).astype(np.uint8), "L").save(tmp_path / "three.png")
    predicted = invoke("predict", "three.png", "--model", "runs/bin", "--format", "json")
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)[0]["top"][0]["class"] == "3"


@pytest.mark.parametrize(("classes", "message"), [
    ("[cat, 3]", "data.classes.0: no class named 'cat' (the dataset has: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"),
    ("[3, 3]", "data.classes.1: class '3' is listed twice"),
    ("[10, 3]", "data.classes.0: class index 10 is out of range; the dataset has 10 classes (0..9)"),
    ("[3]", "data.classes: list at least two classes (a classifier needs two)"),
])
def test_data_classes_refuses_unknown_repeated_and_single_classes(tmp_path, classes, message):
    (tmp_path / "c.yaml").write_text("data: {dataset: Digits}\n")
    result = invoke("data", str(tmp_path / "c.yaml"), f"data.classes={classes}")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: command line: {message}"


def test_the_example_in_docs_your_code_trains_as_written(tmp_path, monkeypatch):
    page = (Path(__file__).parents[1] / "docs" / "your-code.md").read_text()
    (tmp_path / "mycode.py").write_text(page.split("```python\n")[1].split("```")[0])
    (tmp_path / "tudui.yaml").write_text(page.split("```yaml\n")[1].split("```")[0])
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for label, name in enumerate(("ants", "bees")):
            folder = tmp_path / "data" / "hymenoptera_data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 100, (40, 48, 3)) + 120 * label
                Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    trained = invoke("train", "tudui.yaml", "--code", "mycode.py", "--runs-dir", "runs", "--quiet",
                     "train.epochs=1", "train.device=cpu")
    assert trained.exit_code == 0, trained.output
    state = torch.load(tmp_path / "runs" / "tudui" / "checkpoints" / "last.pt", weights_only=True)
    assert state["classes"] == ["ants", "bees"]
    assert state["model"]["0.model1.7.weight"].shape == (64, 1024)
    assert state["model"]["0.model1.8.weight"].shape == (2, 64)  # num_classes from the data
    evaluated = invoke("eval", "runs/tudui", "--code", "mycode.py", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["samples"] == 4


def test_a_loss_function_gets_the_yamls_arguments(project):
    (project / "focal.py").write_text(
        "import torch\nfrom torch import nn\nfrom dltool import register\n\n\n@register.loss\n"
        "def focal(outputs, targets, gamma=2.0):\n"
        "    ce = nn.functional.cross_entropy(outputs, targets, reduction='none')\n"
        "    return ((1 - torch.exp(-ce)) ** gamma * ce).mean()\n")
    listed = invoke("list", "losses", "focal", "--code", "focal.py", "--json")
    assert json.loads(listed.stdout) == [{"argument": "gamma", "default": "2.0"}]
    trained = invoke("train", "cfg.yaml", "--code", "blocks.py", "--code", "focal.py", "--runs-dir", "runs",
                     "--quiet", "loss={name: focal, gamma: 1.5}", "train.epochs=1")
    assert trained.exit_code == 0, trained.output
    wrong = invoke("config", "cfg.yaml", "--code", "blocks.py", "--code", "focal.py", "loss={name: focal, gama: 1}")
    assert wrong.exit_code == 2
    assert "focal: unknown argument 'gama'; did you mean gamma? (allowed: gamma)" in wrong.stderr


def test_a_block_that_torch_cannot_export_is_named_with_its_op(project):
    (project / "svd.py").write_text("import torch\nfrom torch import nn\nfrom dltool import register\n\n\n"
                                    "@register.layer\nclass Spectrum(nn.Module):\n    def forward(self, x):\n"
                                    "        return torch.linalg.svdvals(x)\n")
    code = ["--code", "blocks.py", "--code", "svd.py"]
    trained = invoke("train", "cfg.yaml", *code, "--runs-dir", "runs", "--quiet", "model.layers.1=Spectrum",
                     "train.epochs=1")
    assert trained.exit_code == 0, trained.output
    exported = invoke("export", "runs/cfg", *code)
    assert exported.exit_code == 1
    assert exported.stderr.strip().startswith(
        "error: runs/cfg/checkpoints/best.pt: layer 1 (Spectrum) cannot be exported: Exporting the operator "
        "'aten::linalg_svdvals' to ONNX opset version")
    assert not (project / "runs" / "cfg" / "model.onnx").exists()


def test_a_child_process_started_fresh_unpickles_the_users_dataset(project):
    """What a spawned DataLoader worker does: `import dltool` there loads the parent's code files."""
    import pickle

    usercode.load_code(["blocks.py"])
    from dltool.config.registry import DATASETS

    dataset = DATASETS.get("CsvImages").user_class("data.csv")
    (project / "dataset.pkl").write_bytes(pickle.dumps(dataset))
    env = {**os.environ, usercode.ENVIRONMENT: os.environ[usercode.ENVIRONMENT],
           "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.run([sys.executable, "-c", "import pickle; d = pickle.load(open('dataset.pkl', 'rb')); "
                            "print(type(d).__module__, len(d), d[1][1])"],
                           cwd=project, capture_output=True, text=True, env=env, timeout=120)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == [type(dataset).__module__, "40", "1"]
    assert type(dataset).__module__.startswith("dltool.code_blocks_")
