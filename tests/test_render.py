"""What `dltool data` and `dltool predict` draw, from the plain data the library returns: one golden
render each (names from files and folders shown as written, never read as markup)."""

from __future__ import annotations

import io

from rich.console import Console

from dltool.cli.render_data import render_data
from dltool.cli.render_predict import render_predict
from dltool.inference.predict import Prediction

DATA_GOLDEN = """\
[b]folder: 2 classes, input (3, 32, 32), split: stratified
photos decoded at a short side of 32
train: cached in memory
┏━━━━━━━━━━┳━━━━━━━┳━━━━━┓
┃ class    ┃ train ┃ val ┃
┡━━━━━━━━━━╇━━━━━━━╇━━━━━┩
│ cat      │     3 │   4 │
│ [red]dog │     7 │   0 │
│ total    │    10 │   4 │
└──────────┴───────┴─────┘
      1 files skipped
┏━━━━━━━━━━━━━┳━━━━━━━━━━━┓
┃ path        ┃ reason    ┃
┡━━━━━━━━━━━━━╇━━━━━━━━━━━┩
│ cat/[x].png │ truncated │
└─────────────┴───────────┘
Normalize: {mean: [0.1, 0.2, 0.3], std: [0.4, 0.5, 0.6]}
samples: samples.png
"""

PREDICT_GOLDEN = """\
┏━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━━━━━━┓
┃ file      ┃ prediction                 ┃ probability ┃ also                 ┃
┡━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━━━━━━┩
│ a/[x].png │ [b]cat                     │       0.900 │ dog 0.075, eel 0.025 │
│ b.png     │ cannot identify image file │             │                      │
│ c.png     │ 0.5, 1.25                  │             │                      │
└───────────┴────────────────────────────┴─────────────┴──────────────────────┘
"""


def drawn(renderable) -> list[str]:
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(renderable)
    return [line.rstrip() for line in console.file.getvalue().splitlines()]


def test_the_data_report_as_drawn():
    report = {
        "decode": {"short_side": 32, "text": "photos decoded at a short side of 32"}, "dataset": "[b]folder",
        "task": "classification", "classes": ["cat", "[red]dog"], "input_shape": [3, 32, 32], "channels": 3,
        "splits": {"train": {"samples": 10, "counts": {"cat": 3, "[red]dog": 7}, "reading": "cached in memory"},
                   "val": {"samples": 4, "counts": {"cat": 4}}},
        "split_method": "stratified", "bad_files": [{"path": "cat/[x].png", "reason": "truncated"}],
        "stats": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}, "grid": "samples.png"}
    assert drawn(render_data(report)) == DATA_GOLDEN.splitlines()
    plain = {**report, "decode": None, "bad_files": []}
    del plain["stats"], plain["grid"]
    assert drawn(render_data(plain)) == [DATA_GOLDEN.splitlines()[0], *DATA_GOLDEN.splitlines()[2:10]]


def test_the_predict_table_as_drawn():
    predictions = [
        Prediction("a/[x].png", top=[{"class": "[b]cat", "index": 0, "probability": 0.9},
                                     {"class": "dog", "index": 1, "probability": 0.075},
                                     {"class": "eel", "index": 2, "probability": 0.025}]),
        Prediction("b.png", error="cannot identify image file"), Prediction("c.png", value=[0.5, 1.25])]
    assert drawn(render_predict(predictions)) == PREDICT_GOLDEN.splitlines()
