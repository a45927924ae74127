"""The model zoo in configs/: every config validates, shows its shapes and trains two steps; the
ResNet and GoogLeNet configs compute what the same networks written in torch compute; model.init,
optimizer.param_groups and train.unfreeze_at do what the configs say."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from dltool.cli import app
from dltool.config.load import load_config
from dltool.models import build_model
from dltool.training.optim import build_optimizer
from dltool.training.train import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ALL = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
# Datasets that download: swapped for FakeData of the same image shape.
DOWNLOADED = {"MNIST": [1, 28, 28], "FashionMNIST": [1, 28, 28], "CIFAR10": [3, 32, 32]}
# What `dltool shapes` counts: a change to a network shows here.
PARAMS = {
    "cifar10_alexnet": 21_622_154, "cifar10_fast": 6_573_120, "cifar10_googlenet": 5_976_122,
    "cifar10_nin": 1_992_226, "cifar10_resnet18": 11_173_962, "cifar10_vgg": 9_756_426,
    "digits_logistic": 650, "fashion_mnist_mlp": 203_530, "imagefolder_finetune": 11_177_538,
    "linear_regression": 3, "mnist_lenet": 61_706, "quickstart": 38_378,
}
# Enough samples for two training steps of the config's own batch size or the one given here.
TWO_STEPS = {"digits_logistic": ["data.batch_size=720"], "quickstart": ["data.batch_size=720"],
             "linear_regression": ["data.dataset.num_samples=20", "data.batch_size=8"]}
FAST = ["train.epochs=1", "train.device=cpu", "train.histograms=false", "train.threads=1"]


def dataset_name(stem: str) -> str:
    dataset = load_config(CONFIGS / f"{stem}.yaml").data.dataset
    return dataset.name


def make_folder(root: Path, per_class: int = 4) -> Path:
    """root/train/{ants,bees} and root/val/{ants,bees} of small RGB images."""
    for split, count in (("train", per_class), ("val", 2)):
        for c, name in enumerate(("ants", "bees")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 30), (60 * c + 10 * i, 90, 200 - 30 * c)).save(folder / f"{i}.png")
    return root


def offline(stem: str, tmp_path: Path) -> list[str]:
    """Overrides that let config `stem` run here: local data in place of downloads and pretrained weights."""
    name = dataset_name(stem)
    if name in DOWNLOADED:
        fake = {"name": "FakeData", "size": 20, "image_size": DOWNLOADED[name], "num_classes": 10}
        return [f"data.dataset={json.dumps(fake)}", "data.val_split=0.2", "data.batch_size=8"]
    if name == "ImageFolder":
        root = make_folder(tmp_path / "hymenoptera")
        return [f"data.dataset.root={root}", "model.layers.0.TorchvisionModel.weights=null", "data.batch_size=4"]
    return TWO_STEPS.get(stem, [])


def test_the_zoo_holds_every_network_the_seeds_teach():
    assert set(ALL) == set(PARAMS)
    for stem in ALL:
        header = (CONFIGS / f"{stem}.yaml").read_text().splitlines()[0]
        assert header.startswith("# "), f"{stem}.yaml has no header comment"
        assert dataset_name(stem) in (*DOWNLOADED, "Digits", "LinearData", "ImageFolder")


@pytest.mark.parametrize("stem", ALL)
def test_config_validates_and_shapes_count_its_parameters(stem):
    runner = CliRunner()
    result = runner.invoke(app, ["config", str(CONFIGS / f"{stem}.yaml")])
    assert result.exit_code == 0, result.output
    classes = {"ImageFolder": ["--num-classes", "2"]}.get(dataset_name(stem), [])
    if dataset_name(stem) in DOWNLOADED:
        classes = ["--num-classes", "10"]
    result = runner.invoke(app, ["shapes", str(CONFIGS / f"{stem}.yaml"), "--json", *classes])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["total_params"] == PARAMS[stem]
    assert report["layers"][-1]["output_shape"][-1] == {"linear_regression": 1, "imagefolder_finetune": 2}.get(stem, 10)


@pytest.mark.parametrize("stem", ALL)
def test_config_trains_two_steps(stem, tmp_path):
    result = train(CONFIGS / f"{stem}.yaml", runs_dir=tmp_path / "runs", overrides=[*offline(stem, tmp_path), *FAST])
    summary = result.summary
    assert summary["status"] == "finished" and summary["steps"] == 2
    assert math.isfinite(result.history[-1]["train_loss"]) and math.isfinite(summary["final"]["val_loss"])
    assert (result.run_dir / "checkpoints" / "last.pt").is_file()


class Residual(nn.Module):
    """d2l's residual block with a BatchNorm after the 1x1 projection: relu(body(x) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


def resnet18(num_classes: int = 10) -> nn.Sequential:
    stem = [nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    blocks = []
    for cin, cout in ((64, 64), (64, 128), (128, 256), (256, 512)):
        blocks += [Residual(cin, cout, stride=1 if cin == cout else 2), Residual(cout, cout)]
    return nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


class Inception(nn.Module):
    """d2l's Inception block: four paths concatenated along channels."""

    def __init__(self, cin: int, c1: int, c2: tuple, c3: tuple, c4: int):
        super().__init__()
        self.p1_1 = nn.Conv2d(cin, c1, 1)
        self.p2_1, self.p2_2 = nn.Conv2d(cin, c2[0], 1), nn.Conv2d(c2[0], c2[1], 3, padding=1)
        self.p3_1, self.p3_2 = nn.Conv2d(cin, c3[0], 1), nn.Conv2d(c3[0], c3[1], 5, padding=2)
        self.p4_1, self.p4_2 = nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(cin, c4, 1)

    def forward(self, x):
        p1 = F.relu(self.p1_1(x))
        p2 = F.relu(self.p2_2(F.relu(self.p2_1(x))))
        p3 = F.relu(self.p3_2(F.relu(self.p3_1(x))))
        p4 = F.relu(self.p4_2(self.p4_1(x)))
        return torch.cat((p1, p2, p3, p4), dim=1)


def googlenet(num_classes: int = 10) -> nn.Sequential:
    def pool():
        return nn.MaxPool2d(3, stride=2, padding=1)

    b1 = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU()]  # the 32x32 stem in place of 7x7 stride 2 + pooling
    b2 = [nn.Conv2d(64, 64, 1), nn.ReLU(), nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), pool()]
    b3 = [Inception(192, 64, (96, 128), (16, 32), 32), Inception(256, 128, (128, 192), (32, 96), 64), pool()]
    b4 = [Inception(480, 192, (96, 208), (16, 48), 64), Inception(512, 160, (112, 224), (24, 64), 64),
          Inception(512, 128, (128, 256), (24, 64), 64), Inception(512, 112, (144, 288), (32, 64), 64),
          Inception(528, 256, (160, 320), (32, 128), 128), pool()]
    b5 = [Inception(832, 256, (160, 320), (32, 128), 128), Inception(832, 384, (192, 384), (48, 128), 128),
          nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*b1, *b2, *b3, *b4, *b5, nn.Linear(1024, num_classes))


def run_blocks(model: nn.Module, kinds: tuple, x: torch.Tensor) -> tuple[list, torch.Tensor]:
    """The output shape of every module of the given types, in the order they run, and the output."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
             for m in model.modules() if type(m).__name__ in kinds]
    with torch.no_grad():
        out = model(x)
    for hook in hooks:
        hook.remove()
    return shapes, out


@pytest.mark.parametrize("stem, reference, blocks", [
    ("cifar10_resnet18", resnet18, ("Residual",)),
    ("cifar10_googlenet", googlenet, ("Parallel", "Inception")),
])
def test_config_computes_what_the_torch_network_computes(stem, reference, blocks):
    ours = build_model(load_config(CONFIGS / f"{stem}.yaml").model, (3, 32, 32), 10).eval()
    theirs = reference().eval()
    ours_params, theirs_params = list(ours.parameters()), list(theirs.parameters())
    assert sum(p.numel() for p in ours_params) == sum(p.numel() for p in theirs_params) == PARAMS[stem]
    assert [p.shape for p in ours_params] == [p.shape for p in theirs_params]
    with torch.no_grad():
        for mine, same in zip(ours_params, theirs_params):
            same.copy_(mine)
    x = torch.randn(1, 3, 32, 32)
    (ours_shapes, ours_out), (theirs_shapes, theirs_out) = run_blocks(ours, blocks, x), run_blocks(theirs, blocks, x)
    assert ours_shapes == theirs_shapes and len(ours_shapes) == {"cifar10_resnet18": 8}.get(stem, 9)
    assert ours_out.shape == (1, 10) and torch.allclose(ours_out, theirs_out, atol=1e-5)


def test_model_init_applies_per_layer_type_as_the_configs_say():
    torch.manual_seed(0)
    lenet = load_config(CONFIGS / "mnist_lenet.yaml",
                        ["model.init={Conv2d: uniform_fan_in, Linear: uniform_fan_in}"]).model
    model = build_model(lenet, (1, 28, 28), 10)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for layer in layers:  # the seeds' U(-1/sqrt(d), 1/sqrt(d)), d = inputs per output
        bound = 1 / math.sqrt(layer.weight[0].numel())
        assert bound * 0.9 < layer.weight.abs().max() <= bound
        assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0
    xavier = build_model(load_config(CONFIGS / "mnist_lenet.yaml").model, (1, 28, 28), 10)
    for layer in [m for m in xavier.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]:
        fan_in, fan_out = layer.weight[0].numel(), layer.weight[:, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert bound * 0.8 < layer.weight.abs().max() <= bound and layer.bias.abs().sum() == 0
    mlp = build_model(load_config(CONFIGS / "fashion_mnist_mlp.yaml").model, (1, 28, 28), 10)
    assert mlp[1].weight.std().item() == pytest.approx(0.01, rel=0.05) and mlp[1].bias.abs().sum() == 0
    resnet = build_model(load_config(CONFIGS / "cifar10_resnet18.yaml").model, (3, 32, 32), 10)
    projection = resnet[8].shortcut[0]  # built by `shortcut: auto`: a Conv2d like the others
    assert projection.weight.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert resnet[18].weight.abs().max() <= 1 / math.sqrt(512)  # Linear keeps torch's own init


def finetune_config(tmp_path: Path, *overrides: str):
    root = make_folder(tmp_path / "hymenoptera")
    return load_config(CONFIGS / "imagefolder_finetune.yaml", [
        f"data.dataset.root={root}", "model.layers.0.TorchvisionModel.weights=null", *overrides])


def test_param_groups_give_the_backbone_a_lower_lr_and_norms_and_biases_no_decay(tmp_path):
    config = finetune_config(tmp_path)
    model = build_model(config.model, (3, 224, 224), 2)
    optimizer = build_optimizer(config.optimizer, model)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        head = name.startswith("0.fc.")
        no_decay = name.endswith(".bias") or ".bn" in name or ".downsample.1." in name
        assert group["lr"] == (1e-3 if head else 1e-4), name
        assert group["weight_decay"] == (0.0 if no_decay else 1e-4), name
        assert param.requires_grad == head, name  # freeze: backbone


def test_unfreeze_at_trains_the_backbone_only_after_that_many_epochs(tmp_path):
    from dltool.training.runtime import seed_all

    small = ["model.input_shape=[3, 32, 32]", "data.transforms.train=[{Resize: [32, 32]}, ToTensor]",
             "data.transforms.eval=[{Resize: [32, 32]}, ToTensor]", "data.batch_size=4", "train.unfreeze_at=1",
             "train.epochs=1", "train.device=cpu", "train.histograms=false", "train.threads=1"]
    config = finetune_config(tmp_path, *small)
    seed_all(config.seed)  # as train() does before it builds the model
    start = dict(build_model(config.model, (3, 32, 32), 2).named_parameters())
    first = train(config, runs_dir=tmp_path / "runs", name="ft")
    after_one = torch.load(first.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    moved = {name for name, p in start.items() if not torch.equal(after_one[name], p)}
    assert moved == {"0.fc.weight", "0.fc.bias"}
    train(resume=first.run_dir, overrides=["train.epochs=2"])
    after_two = torch.load(first.run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    frozen_before = [name for name in start if not name.startswith("0.fc.")]
    assert all(not torch.equal(after_two[name], after_one[name]) for name in frozen_before)


def test_linear_regression_learns_the_true_weight_and_bias(tmp_path):
    result = train(CONFIGS / "linear_regression.yaml", runs_dir=tmp_path / "runs", overrides=["train.histograms=false"])
    weights = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert torch.allclose(weights["1.weight"], torch.tensor([[2.0, -3.4]]), atol=0.01)
    assert weights["1.bias"].item() == pytest.approx(4.2, abs=0.01)
    assert result.summary["final"]["val_loss"] < 2e-4  # the noise variance is 1e-4
    evaluated = CliRunner().invoke(app, ["eval", str(result.run_dir), "--json"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["r2"] > 0.9999


def test_linear_data_is_a_regression_set_of_feature_vectors(tmp_path):
    from dltool.data import build_data
    from dltool.errors import DataError

    config = load_config(CONFIGS / "linear_regression.yaml", ["data.dataset.noise=0", "data.dataset.num_samples=50"])
    bundle = build_data(config)
    assert (bundle.task, bundle.classes, bundle.input_shape) == ("regression", [], (2,))
    assert (len(bundle.train), len(bundle.val)) == (40, 10)
    x, y = bundle.train[0]
    assert x.shape == (2,) and y.dtype == torch.float32
    assert y.item() == pytest.approx(2 * x[0].item() - 3.4 * x[1].item() + 4.2, abs=1e-5)
    with pytest.raises(DataError, match=r"LinearData: weight must be a list of num_features \(3\) numbers; got \[2, -3.4\]"):
        build_data(load_config(CONFIGS / "linear_regression.yaml", ["data.dataset.num_features=3"]))
    with pytest.raises(DataError, match="data.dataset: LinearData: holds feature vectors, not images; leave data.transforms out"):
        build_data(load_config(CONFIGS / "linear_regression.yaml", ["data.transforms.train=[ToTensor]"]))
    result = CliRunner().invoke(app, ["data", str(CONFIGS / "linear_regression.yaml"), "--stats"])
    assert result.exit_code == 2
    assert "LinearData: --stats and --show describe images; this dataset holds feature vectors of shape [2]" in result.output


def test_amp_auto_is_bf16_on_a_gpu_that_has_it_and_float32_on_cpu():
    from dltool.training.engine import amp_dtype

    assert load_config(CONFIGS / "cifar10_fast.yaml").train.amp == "auto"
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16  # asked for explicitly: CPU autocast
    assert amp_dtype("none", torch.device("cpu")) is None
    if torch.cuda.is_available():
        wanted = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        assert amp_dtype("auto", torch.device("cuda")) is wanted
