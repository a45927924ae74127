"""How `dltool train` draws a run: epoch lines, plain output off a terminal, the summary table."""

from __future__ import annotations

import io

from rich.console import Console

from dltool.cli.progress import PlainProgress, RichProgress, epoch_line, make_progress, summary_table

ROW = {"epoch": 3, "lr": 0.0025, "train_loss": 0.28457, "train_accuracy": 0.9249, "val_loss": 0.29767,
       "val_accuracy": 0.90529, "val_top5_accuracy": 0.9972, "epoch_seconds": 1.13, "samples_per_second": 1348.9}


def console(terminal: bool) -> Console:
    return Console(file=io.StringIO(), width=100, force_terminal=terminal, color_system=None)


def test_epoch_line():
    assert epoch_line(ROW, 15, improved=True) == (
        "epoch 3/15  loss 0.2846  acc 92.5%  val_loss 0.2977  val_acc 90.53%  top5 99.7%  lr 0.0025  "
        "1,349 samples/s  1.1 s  *")


def test_plain_progress_off_a_terminal_prints_one_line_per_epoch():
    out = console(False)
    progress = make_progress(out)
    assert type(progress) is PlainProgress
    progress.on_fit_start({"run_dir": "runs/x", "train_samples": 1438, "val_samples": 359, "params": 12345,
                           "device": "cpu", "start_epoch": 1, "epochs": 15})
    progress.on_step(3, 10, 45, {"loss": 0.3, "accuracy": 0.9, "samples_per_second": 1000.0})
    progress.on_epoch_end(3, ROW, False)
    assert out.file.getvalue().splitlines() == [
        "run runs/x: 1438 train / 359 val samples, 12,345 parameters, cpu, epochs 1..15",
        epoch_line(ROW, 15, False)]


def test_a_terminal_gets_the_live_bar_and_quiet_gets_nothing():
    assert type(make_progress(console(True))) is RichProgress
    assert make_progress(console(True), quiet=True) is None


def test_summary_table_golden():
    summary = {"status": "finished", "epochs_done": 8, "best_epoch": 6, "monitor": "val_accuracy", "best_value": 0.98607,
               "final": {"val_loss": 0.5981, "val_accuracy": 0.98329}, "train_seconds": 12.71,
               "train_samples_per_second": 30130.4}
    out = console(False)
    out.print(summary_table(summary, "runs/quickstart"))
    assert out.file.getvalue() == (
        "run runs/quickstart                       \n"
        "┌──────────────┬─────────────────────────┐\n"
        "│ status       │ finished                │\n"
        "│ epochs       │ 8                       │\n"
        "│ best epoch   │ 6 (val_accuracy 0.9861) │\n"
        "│ val loss     │ 0.5981                  │\n"
        "│ val accuracy │ 0.9833                  │\n"
        "│ train time   │ 12.7 s                  │\n"
        "│ throughput   │ 30,130 samples/s        │\n"
        "└──────────────┴─────────────────────────┘\n")


def test_throughput_reads_as_people_read_it():
    from dltool.cli.progress import rate

    assert [rate(30130.4), rate(1348.9), rate(905.2), rate(12.46), rate(None)] == ["30,130", "1,349", "905", "12.5", "-"]
