import csv
import json
import shutil

import pytest
import torch
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support
from typer.testing import CliRunner

from dltool.cli import app
from dltool.inference.evaluate import evaluate_checkpoint

KEYS = ["loss", "accuracy", "top5_accuracy", "per_class", "confusion_matrix", "samples"]


def _eval_json(*args):
    result = CliRunner().invoke(app, ["eval", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def own_run(digits_run, tmp_path):
    """A copy of the session's quickstart run for a test that writes its default report folders into
    the run: the run other tests read stays as trained."""
    return shutil.copytree(digits_run, tmp_path / "digits")


@pytest.fixture(scope="module")
def evaluated(digits_run):
    return evaluate_checkpoint(digits_run, device="cpu")


def test_best_and_last_give_exactly_the_recorded_accuracy(digits_run, tmp_path):
    summary = json.loads((digits_run / "summary.json").read_text())
    best = _eval_json(digits_run, "--out", tmp_path / "best")
    assert list(best)[:6] == KEYS
    assert best["accuracy"] == summary["best_val_accuracy"]
    last = _eval_json(digits_run / "checkpoints" / "last.pt", "--out", tmp_path / "last")
    assert last["accuracy"] == summary["final"]["val_accuracy"]
    assert last["loss"] == summary["final"]["val_loss"]
    assert last["top5_accuracy"] == summary["final"]["val_top5_accuracy"]


def test_evaluation_runs_on_the_threads_the_run_trained_on(digits_run, monkeypatch):
    """The same thread count as training makes the same float sums: eval's loss is the recorded one
    on any machine, whatever the process's own thread count."""
    import dltool.training.engine

    seen = []
    engine_evaluate = dltool.training.engine.evaluate

    def counting(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return engine_evaluate(*args, **kwargs)

    monkeypatch.setattr(dltool.training.engine, "evaluate", counting)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        evaluate_checkpoint(digits_run, device="cpu")
        assert seen == [1]  # the quickstart sets train.threads: 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_report_numbers_agree_with_each_other_and_scikit_learn(evaluated):
    report = evaluated.to_json()
    matrix = torch.tensor(report["confusion_matrix"])
    assert report["samples"] == len(evaluated.ids) == int(matrix.sum()) == 359
    assert matrix.trace().item() / report["samples"] == report["accuracy"]
    predicted = evaluated.outputs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(evaluated.targets, predicted, zero_division=0)
    for i, row in enumerate(report["per_class"]):
        assert row["class"] == str(i)
        assert row["precision"] == pytest.approx(precision[i]) and row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i]) and row["support"] == support[i]
    macro = precision_recall_fscore_support(evaluated.targets, predicted, average="macro", zero_division=0)
    assert report["macro_avg"]["f1"] == pytest.approx(macro[2])
    weighted = precision_recall_fscore_support(evaluated.targets, predicted, average="weighted", zero_division=0)
    assert report["weighted_avg"]["recall"] == pytest.approx(weighted[1])


def test_files_written_to_the_run_eval_folder(own_run):
    result = CliRunner().invoke(app, ["eval", str(own_run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "per class" in result.stderr and "confusion matrix" in result.stderr
    out = own_run / "eval"
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.csv", "confusion_matrix.png", "metrics.json", "misclassified.csv"]
    rows = list(csv.reader(open(out / "confusion_matrix.csv")))
    assert rows[0] == ["true \\ predicted", *"0123456789"] and len(rows) == 11
    mistakes = list(csv.DictReader(open(out / "misclassified.csv")))
    report = json.loads((out / "metrics.json").read_text())
    assert len(mistakes) == report["misclassified"] == report["samples"] - sum(
        report["confusion_matrix"][i][i] for i in range(10))
    confidences = [float(m["confidence"]) for m in mistakes]
    assert confidences == sorted(confidences, reverse=True)
    assert all(m["sample"].startswith("index ") and m["true"] != m["predicted"] for m in mistakes)
    with Image.open(out / "confusion_matrix.png") as image:
        assert image.format == "PNG" and image.width > 100


def test_mistake_rows_name_the_right_samples(evaluated, digits_run):
    from dltool.data.datasets import DigitsImages

    targets = DigitsImages().targets
    for row in evaluated.misclassified():
        assert str(targets[int(row["sample"].split()[1])]) == row["true"]


def test_checkpoint_copied_elsewhere_writes_next_to_itself(digits_run, tmp_path):
    copy = tmp_path / "best.pt"
    shutil.copy(digits_run / "checkpoints" / "best.pt", copy)
    result = CliRunner().invoke(app, ["eval", str(copy), "--batch-size", "50"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "misclassified.csv").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--split", "test"], "{ckpt} (stored config): data.dataset: Digits: has no test split (it has: train)"),
    (["--split", "holdout"], "--split: unknown split 'holdout'; allowed: val, test, train"),
    (["model.layers.0.Conv2d.out_channels=4"], "override 'model.layers.0.Conv2d.out_channels=4': eval takes data.* "
     "settings only (the checkpoint fixes the model and training); e.g. data.dataset.root=other/folder"),
    (["data.transforms.eval=[ToTensor]"], "the data gives inputs of shape [1, 8, 8] after its eval transforms, "
     "but the model takes [1, 16, 16]"),
    (["--device", "cuda:7"], "--device: cuda:7: "),
    (["data.val_split=0.5"], "override 'data.val_split=0.5': a new split of the run's own data would put images the "
     "model trained on into the validation set; eval keeps the run's split unless other data is given (e.g. "
     "data.dataset.root=other/folder) or --split test or train is asked"),
])
def test_bad_requests_are_one_line(digits_run, tmp_path, args, message):
    if args[0] == "--device" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    result = CliRunner().invoke(app, ["eval", str(digits_run), *args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    message = message.format(ckpt=digits_run / "checkpoints" / "best.pt")
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}")


def test_train_split_and_data_overrides(digits_run, tmp_path):
    report = _eval_json(digits_run, "--split", "train", "data.eval_batch_size=100", "--out", tmp_path)
    assert report["samples"] == 1797 - 359
    assert report["split"] == "train"


def test_a_resplit_is_allowed_when_the_train_split_is_asked(digits_run, tmp_path):
    report = _eval_json(digits_run, "--split", "train", "data.val_split=0.5", "--out", tmp_path)
    assert report["samples"] == 899  # a new half-and-half split of the 1797 images


REGRESSION = """\
data:
  dataset: {{name: ImageList, file: {file}, task: regression}}
  val_split: 0.25
  transforms: {{eval: [ToTensor]}}
model:
  layers: [Flatten, {{Linear: {{out_features: 1}}}}]
loss: MSELoss
optimizer: {{name: SGD, lr: 0.01}}
train: {{epochs: 1, device: cpu, histograms: false}}
"""


def test_regression_reports_mse_mae_r2(tmp_path):
    from dltool.training.train import train

    lines = []
    for i in range(16):
        Image.new("L", (4, 4), color=i * 16).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png,{i / 4}")
    (tmp_path / "values.csv").write_text("\n".join(lines))
    (tmp_path / "reg.yaml").write_text(REGRESSION.format(file=tmp_path / "values.csv"))
    run = train(tmp_path / "reg.yaml", runs_dir=tmp_path / "runs", name="reg").run_dir
    report = _eval_json(run, "--out", tmp_path / "out")
    assert list(report)[:5] == ["loss", "mse", "mae", "r2", "samples"]
    assert report["samples"] == 4
    assert report["loss"] == pytest.approx(report["mse"])
    summary = json.loads((run / "summary.json").read_text())
    assert report["mae"] == pytest.approx(summary["final"]["val_mae"])


def _folder(root, classes, per_class=5):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (10, 12), (40 * c, 20 * i, 100)).save(root / name / f"{i}.png")
    return root


def test_data_overrides_evaluate_another_folder(make_checkpoint, tmp_path):
    first = _folder(tmp_path / "first", ["cat", "dog"])
    other = _folder(tmp_path / "other", ["cat", "dog"], per_class=10)
    model = make_checkpoint(["Flatten", {"Linear": {"out_features": "num_classes"}}], (3, 8, 8), classes=("cat", "dog"),
                            transforms=[{"Resize": [8, 8]}, "ToTensor"],
                            dataset={"name": "ImageFolder", "root": str(first)})
    report = _eval_json(model, f"data.dataset.root={other}", "--out", tmp_path / "out")
    assert report["samples"] == 4 and report["classes"] == ["cat", "dog"]
    assert sum(row["support"] for row in report["per_class"]) == 4
    mistakes = list(csv.DictReader(open(tmp_path / "out" / "misclassified.csv")))
    assert all(m["sample"].startswith(str(other)) for m in mistakes)
    _folder(tmp_path / "third", ["car", "bus"])
    result = CliRunner().invoke(app, ["eval", str(model), f"data.dataset.root={tmp_path / 'third'}"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: the data has classes [bus, car] but the model was trained on [cat, dog]; "
                                     "evaluate on data with the same classes")


def _hand_result():
    from dltool.inference.evaluate import EvalResult, confusion_matrix, per_class

    targets = torch.tensor([0, 0, 1, 2, 2])
    outputs = torch.tensor([[3.0, 0, 0], [2.0, 1, 0], [4.0, 0, 0], [0, 0, 5.0], [0, 2.0, 0]])
    confusion = confusion_matrix(outputs.argmax(1), targets, 3)
    return EvalResult(checkpoint="ck.pt", split="val", task="classification", classes=["ant", "bee", "cat"],
                      metrics={"loss": 0.5, "accuracy": 0.6, "top5_accuracy": 1.0},
                      ids=["a.png", "b.png", "c.png", "d.png", "e.png"], targets=targets, outputs=outputs,
                      per_class=per_class(confusion, ["ant", "bee", "cat"]), confusion=confusion)


def test_classes_never_predicted_score_zero_as_scikit_learn():
    result = _hand_result()
    assert result.confusion == [[2, 0, 0], [1, 0, 0], [0, 1, 1]]
    precision, recall, f1, support = precision_recall_fscore_support(
        result.targets, result.outputs.argmax(1), zero_division=0)
    assert [r["precision"] for r in result.per_class] == pytest.approx(list(precision))
    assert [r["f1"] for r in result.per_class] == pytest.approx(list(f1))
    assert [m["sample"] for m in result.misclassified()] == ["c.png", "e.png"]


def test_render_shows_tables_and_worst_mistakes():
    import io

    from rich.console import Console

    from dltool.cli.render_eval import render_eval

    console = Console(file=io.StringIO(), width=100)
    for part in render_eval(_hand_result()):
        console.print(part)
    text = console.file.getvalue()
    assert text.startswith("ck.pt\n") and "│ accuracy      │ 0.6000 │" in text
    assert "│ bee          │     0.000 │  0.000 │ 0.000 │       1 │" in text
    assert "│ macro avg    │     0.556 │  0.500 │ 0.489 │       5 │" in text
    assert "│ c.png  │ bee  │ ant       │      0.965 │" in text
    assert "2 of 2; all in misclassified.csv" in text and "│ cat │   0 │   1 │   1 │" in text


def test_eval_of_a_cross_validation_run_names_its_fold_folders(tmp_path, monkeypatch):
    from dltool.training.folds import train_folds

    monkeypatch.chdir(tmp_path)
    (tmp_path / "kfold.yaml").write_text(
        "data:\n  dataset: {name: FakeData, size: 40, image_size: [1, 4, 4], num_classes: 2}\n  batch_size: 8\n"
        "model:\n  layers: [Flatten, {Linear: {out_features: num_classes}}]\ntrain: {epochs: 1, device: cpu}\n")
    train_folds("kfold.yaml", 2, runs_dir="runs")
    result = CliRunner().invoke(app, ["eval", "runs/kfold", "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr == ("error: runs/kfold: a cross-validation run: each fold is a run of its own; give one of "
                             "runs/kfold/fold-1, runs/kfold/fold-2\n")


def _report(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_out_that_cannot_take_the_report_is_refused_before_the_work(digits_run, tmp_path):
    file = tmp_path / "report.txt"
    file.write_text("mine\n")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "notes.txt").write_text("mine\n")
    for out, why in ((file, "it is a file; give --out a folder"),
                     (mixed, "it holds files that are not an eval report (notes.txt), which the report would "
                             "replace; give --out a new folder")):
        result = CliRunner().invoke(app, ["eval", str(digits_run), "--json", "--out", str(out)])
        assert result.exit_code == 2
        assert result.stdout == ""  # refused before the evaluation, not after printing it
        assert result.stderr.strip() == f"error: cannot write the report into {out}: {why}"
    assert file.read_text() == "mine\n" and (mixed / "notes.txt").read_text() == "mine\n"


def test_each_split_writes_its_own_report_folder(own_run):
    val = CliRunner().invoke(app, ["eval", str(own_run), "--json"])
    assert val.exit_code == 0, val.output
    before = _report(own_run / "eval")
    train = CliRunner().invoke(app, ["eval", str(own_run), "--json", "--split", "train"])
    assert train.exit_code == 0, train.output
    assert _report(own_run / "eval") == before
    assert json.loads((own_run / "eval-train" / "metrics.json").read_text())["split"] == "train"
    assert json.loads(before["metrics.json"])["split"] == "val"


def test_a_killed_eval_leaves_the_earlier_report_whole(digits_run, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "report"
    assert CliRunner().invoke(app, ["eval", str(digits_run), "--out", str(out), "--split", "train"]).exit_code == 0
    before = _report(out)
    # the same eval on the validation split, killed (SIGKILL) right after its second report file
    script = ("import os, signal, sys\n"
              "import dltool.inference.eval_report as report\n"
              "write = report._write\n"
              "def killed(staging, out, name, data):\n"
              "    write(staging, out, name, data)\n"
              "    if name == 'confusion_matrix.csv': os.kill(os.getpid(), signal.SIGKILL)\n"
              "    return name\n"
              "report._write = killed\n"
              "from dltool.cli.commands import main\n"
              "sys.argv = ['dltool', 'eval', sys.argv[1], '--out', sys.argv[2]]\n"
              "main()\n")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", script, str(digits_run), str(out)], env=env, capture_output=True)
    assert done.returncode == -9, done.stderr.decode()
    assert _report(out) == before  # not a mix of the train report and the killed validation one
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report.")]  # its unfinished copy
    result = CliRunner().invoke(app, ["eval", str(digits_run), "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["split"] == "val"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # the next eval removed it
