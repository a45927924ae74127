"""Strings from strangers: folder, file and class names and summary fields reach the terminal with
their markup shown literally and their control characters as escapes, and `predict --format csv`
writes no cell a spreadsheet would run. The attacks run for real: `python -m dltool` on a
pseudo-terminal, over files whose names carry escape sequences and rich markup."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from dltool.cli import app
from dltool.cli.text import SafeConsole, plain, safe

ROOT = Path(__file__).resolve().parent.parent
MARKUP = "[bold red]x[/]"  # rich reads it as a red "x"
# ESC sequences a terminal obeys (set the window title, clear the screen) and the one-byte C1 CSI:
# none of them is ever written by rich itself, so finding one raw in the output means a name got through
ESCAPES = "e\x1b]0;pwned\x07\x1b[2J\x9b5m"
SHOWN = r"e\x1b]0;pwned\x07\x1b[2J\x9b5m"  # what the terminal must show instead
RICH_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # rich's styles and cursor moves


def test_safe_escapes_markup_and_control_characters_and_keeps_printable_unicode():
    assert plain(ESCAPES) == SHOWN
    assert plain("a\nb\tc\x7fd\u202ee\udcff") == r"a\nb\tc\x7fd\u202ee\udcff"
    assert plain("chat 猫 café 😀") == "chat 猫 café 😀"
    assert safe(MARKUP) == r"\[bold red]x\[/]"
    assert safe("[bold]\x1b[31m") == r"\[bold]\x1b[31m"


def render(renderable, console_class=SafeConsole) -> str:
    out = io.StringIO()
    console_class(file=out, width=120, force_terminal=True, color_system="standard").print(renderable)
    return out.getvalue()


def test_the_console_shows_control_characters_in_any_table_cell_as_escapes_and_keeps_it_aligned():
    from rich.table import Table

    table = Table()
    table.add_column("name")
    table.add_row(ESCAPES)  # a cell that reached the table without safe()
    table.add_row("ok")
    assert "\x1b]" in render(table, Console)  # what a plain rich Console sends: the title is set
    shown = render(table, SafeConsole)
    assert not RICH_CODES.sub("", shown).count("\x1b") and "\x9b" not in shown and "\x07" not in shown
    lines = RICH_CODES.sub("", shown).splitlines()
    assert SHOWN in lines[3] and len({len(line) for line in lines}) == 1  # every row as wide as the box


def test_train_progress_and_summary_show_a_hostile_run_folder_literally():
    from dltool.cli.progress import PlainProgress, summary_table

    out = io.StringIO()
    console = SafeConsole(file=out, width=200, force_terminal=True)
    run_dir = f"runs/{MARKUP}{ESCAPES}"
    PlainProgress(console).on_fit_start({"run_dir": run_dir, "train_samples": 8, "val_samples": 2, "params": 10,
                                         "device": "cpu", "start_epoch": 1, "epochs": 1})
    PlainProgress(console).on_message(f"skipped {ESCAPES}\nerror: forged line")
    visible = RICH_CODES.sub("", out.getvalue())
    assert visible == (f"run runs/{MARKUP}{SHOWN}: 8 train / 2 val samples, 10 parameters, cpu, epochs 1..1\n"
                       f"skipped {SHOWN}\\nerror: forged line\n")
    table = RICH_CODES.sub("", render(summary_table({"status": "finished", "epochs_done": 1}, run_dir)))
    assert "\x1b" not in table
    assert re.sub(r"\s", "", f"run runs/{MARKUP}{SHOWN}") in re.sub(r"\s", "", table)  # the title may wrap


def test_tune_trials_from_a_shared_study_show_their_keys_values_and_states_literally():
    from dltool.cli.render_experiments import trial_line, trials_table

    trial = {"number": 0, "state": "[blink]\x1b[2J", "value": 0.5, "params": {MARKUP: f"[red]{ESCAPES}"}}
    visible = RICH_CODES.sub("", render(trials_table([trial], f"[u]{ESCAPES}", 0)))
    assert "\x1b" not in visible and "\x9b" not in visible
    assert all(text in visible for text in (MARKUP, r"[blink]\x1b[2J", f"[red]{SHOWN}", f"[u]{SHOWN}"))
    assert plain(trial_line(trial, "val_accuracy", 1, 4)) == (r"trial 0 [blink]\x1b[2J val_accuracy 0.5 "
                                                              f"{MARKUP}=[red]{SHOWN} [1/4]")


def on_terminal(args, cwd: Path) -> tuple[int, str]:
    """`python -m dltool ARGS` with stdin, stdout and stderr on a 200-column pseudo-terminal: its
    exit code and every byte it wrote there (decoded)."""
    leader, follower = pty.openpty()
    import fcntl

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 200, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE",
                                                            "TTY_INTERACTIVE", "COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    process = subprocess.Popen([sys.executable, "-m", "dltool", *map(str, args)], cwd=cwd, env=env,
                               stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    written = bytearray()
    try:
        while select.select([leader], [], [], 120)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            written += chunk
    finally:
        os.close(leader)
    return process.wait(timeout=60), written.decode("utf-8", "replace")


def shown_safely(output: str) -> str:
    """The text a user sees, after checking that no hostile sequence went to the terminal raw."""
    for raw in ("\x1b]", "\x1b[2J", "\x9b", "\x07"):
        assert raw not in output, (raw, output)
    visible = RICH_CODES.sub("", output)
    assert "\x1b" not in visible, visible
    return visible.replace("\r\n", "\n")


def test_runs_shows_hostile_run_folders_and_summary_fields_literally(tmp_path):
    for folder in (tmp_path / "runs" / "[bold red]x[" / "]", tmp_path / "runs" / ESCAPES):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.pt").write_bytes(b"")
        (folder / "config.yaml").write_text("seed: 0\n")
        (folder / "metrics.csv").write_text("epoch\n")
        (folder / "summary.json").write_text(json.dumps({"status": f"[blink]{ESCAPES}", "epochs_done": 3,
                                                         "best_epoch": 2, "monitor": f"[red]{ESCAPES}",
                                                         "best_value": 0.5}))
    code, output = on_terminal(["runs", "runs"], tmp_path)
    visible = shown_safely(output)
    assert code == 0
    rows = [line for line in visible.splitlines() if "[blink]" in line]
    assert len(rows) == 2 and any(MARKUP in row for row in rows) and any(row.strip().startswith(SHOWN) for row in rows)
    assert f"(best: [red]{SHOWN})" in visible


@pytest.fixture
def hostile_folder(tmp_path):
    """data/ with two class folders and image files named with markup and escape sequences, and one
    broken file: in class order "[bold red]x", ESCAPES."""
    data = tmp_path / "data"
    for c, name in enumerate(["[bold red]x", ESCAPES]):
        (data / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (200 * c, 30 * i, 90)).save(data / name / f"{i}[blink]{ESCAPES}.png")
    (data / ESCAPES / f"broken[bold]{ESCAPES}.png").write_text("not an image")
    return data


def test_data_shows_hostile_class_and_file_names_literally(tmp_path, hostile_folder):
    (tmp_path / "cfg.yaml").write_text(json.dumps({
        "data": {"dataset": {"name": "ImageFolder", "root": "data"}, "val_split": 0.4,
                 "transforms": {"train": [{"Resize": [8, 8]}, "ToTensor"], "eval": [{"Resize": [8, 8]}, "ToTensor"]}},
        "model": {"layers": ["Flatten", {"Linear": {"out_features": "num_classes"}}]}}))
    code, output = on_terminal(["data", "cfg.yaml"], tmp_path)
    visible = shown_safely(output)
    assert code == 0, visible
    lines = visible.splitlines()
    assert any("[bold red]x " in line for line in lines) and any(f"│ {SHOWN} " in line for line in lines)
    assert f"broken[bold]{SHOWN}.png" in visible


def test_eval_shows_hostile_class_and_sample_names_literally(tmp_path, hostile_folder, make_checkpoint):
    model = make_checkpoint(["Flatten", {"Linear": {"out_features": "num_classes"}}], (3, 8, 8),
                            classes=("[bold red]x", ESCAPES), transforms=[{"Resize": [8, 8]}, "ToTensor"],
                            dataset={"name": "ImageFolder", "root": str(hostile_folder)}, name="eval.pt")
    code, output = on_terminal(["eval", model, "--out", "report"], tmp_path)
    visible = shown_safely(output)
    assert code == 0, visible
    per_class = visible[visible.index("per class"):visible.index("confusion matrix")]
    assert "[bold red]x " in per_class and f"{SHOWN} " in per_class
    assert f"[blink]{SHOWN}.png" in visible[visible.index("most confident mistakes"):]


def test_predict_shows_hostile_file_and_class_names_literally_and_its_error_line_too(tmp_path, hostile_folder,
                                                                                    make_checkpoint):
    model = make_checkpoint(["Flatten", {"Linear": {"out_features": "num_classes"}}], (3, 8, 8),
                            classes=(MARKUP, ESCAPES), transforms=[{"Resize": [8, 8]}, "ToTensor"], name="predict.pt")
    code, output = on_terminal(["predict", f"data/{ESCAPES}", "--model", model, "--topk", "2"], tmp_path)
    visible = shown_safely(output)
    assert code == 2
    rows = [line for line in visible.splitlines() if f"[blink]{SHOWN}.png" in line]
    assert len(rows) == 5 and all(MARKUP in row and SHOWN in row.split(".png", 1)[1] for row in rows)
    assert visible.strip().splitlines()[-1] == (f"error: data/{SHOWN}/broken[bold]{SHOWN}.png: "
                                                "not an image (no known image format)")


def test_an_error_naming_a_hostile_path_is_one_literal_line(tmp_path):
    code, output = on_terminal(["config", f"{MARKUP}{ESCAPES}\nerror: forged.yaml"], tmp_path)
    visible = shown_safely(output)
    assert code == 2
    assert visible == f"error: config file not found: {MARKUP}{SHOWN}\\nerror: forged.yaml\n"


def test_predict_csv_neutralises_formula_cells_and_json_keeps_names_exact(tmp_path, make_checkpoint, monkeypatch):
    model = make_checkpoint(["Flatten", {"Linear": {"out_features": "num_classes"}}], (3, 8, 8),
                            classes=("=1+2", "-cat", "@SUM(A1)", "\tdog", "plain"),
                            transforms=[{"Resize": [8, 8]}, "ToTensor"], name="model.pt")
    monkeypatch.chdir(tmp_path)
    attack = "=cmd|' /C calc'!A0.png"  # the file C calc'!A0.png in the folder "=cmd|' "
    Path(attack).parent.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(attack)
    Path("+not an image.png").write_text("text")
    args = ["predict", attack, "+not an image.png", "--model", str(model), "--topk", "5"]
    result = CliRunner().invoke(app, [*args, "--format", "csv"])
    assert result.exit_code == 2
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert {row[0] for row in rows[1:6]} == {"'" + attack}
    assert sorted(row[2] for row in rows[1:6]) == ["'\tdog", "'-cat", "'=1+2", "'@SUM(A1)", "plain"]
    assert [float(row[4]) for row in rows[1:6]] == sorted((float(row[4]) for row in rows[1:6]), reverse=True)
    assert rows[6] == ["'+not an image.png", "", "", "", "", "not an image (no known image format)"]
    exact = json.loads(CliRunner().invoke(app, [*args, "--format", "json"]).stdout)
    assert exact[0]["path"] == attack and {t["class"] for t in exact[0]["top"]} == {"=1+2", "-cat", "@SUM(A1)",
                                                                                   "\tdog", "plain"}
    assert exact[1] == {"path": "+not an image.png", "error": "not an image (no known image format)"}


def test_predict_csv_writes_a_file_name_that_is_no_utf8_as_its_own_bytes(tmp_path, make_checkpoint, monkeypatch):
    model = make_checkpoint(["Flatten", {"Linear": {"out_features": "num_classes"}}], (3, 8, 8), classes=("a", "b"),
                            transforms=[{"Resize": [8, 8]}, "ToTensor"], name="model.pt")
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"img\xff.png")  # a Latin-1 file name on a UTF-8 system
    Image.new("RGB", (8, 8)).save(name)
    result = CliRunner().invoke(app, ["predict", name, "--model", str(model), "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes.splitlines()[1].startswith(b"img\xff.png,1,")
    table = CliRunner().invoke(app, ["predict", name, "--model", str(model)])
    assert table.exit_code == 0 and "img\\udcff.png" in table.stdout
